"""GLiClass (uni-encoder) zero-shot text classification: settings, prompt and torch model."""
