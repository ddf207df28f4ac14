"""Tiny random-weight GLiClass checkpoints, built and saved by the reference package ``gliclass``.

Test helper (not a test module). ``build_gliclass_checkpoint`` writes a checkpoint folder (tens of kB)
with ``gliclass.GLiClassModel.save_pretrained`` and a WordPiece tokenizer written locally, so parity
tests need no download. ``run_reference`` runs the reference pipeline on such a folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

Encoder = Literal["bert", "deberta", "modernbert"]
MARKERS = ["<<LABEL>>", "<<SEP>>", "<<EXAMPLE>>"]

TEXTS = [
    "One day I will see the world and travel to every country.",
    "The new phone has a great camera but the battery life is poor.",
    "Goal!",
    "The team won the match after a late goal in extra time, and the coach said the league title is close now.",
    "Parliament voted on the new law.",
    "My laptop keeps crashing whenever I open the software; the internet support could not help me at all.",
    "I dream of a holiday by the sea.",
    "Elections are coming and the government ministers are nervous about the vote in the city.",
]
LABELS = ["travel", "dreams", "sport", "technology", "politics"]
PROMPT = "Classify the topic of this text:"
EXAMPLES = [
    {"text": "A late goal in extra time", "labels": ["sport"]},
    {"text": "The minister and the elections", "labels": ["politics", "news"]},
]
_CORPUS = [
    *TEXTS,
    PROMPT,
    *(e["text"] for e in EXAMPLES),
    "A trip abroad, a flight to a city far away. Labels: news",
    "Football, tennis, a player scores; computers and smart devices. I wish for hopes at night.",
    " ".join(LABELS),
]
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-()\""


def _tokenizer(workdir: Path):
    """A lower-casing WordPiece tokenizer from a vocab.txt written here (deterministic ids),
    with the three GLiClass markers appended as special tokens, as the reference's train.py does."""
    from transformers import BertTokenizerFast

    chars = sorted(set(_CHARS) | {c for t in _CORPUS for c in t.lower() if not c.isspace()})
    words = sorted({w.strip(".,;:!?'\"()").lower() for t in _CORPUS for w in t.split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    vocab += ["##" + c for c in chars if c.isalnum()] + [w for w in words if w not in chars]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 ignores BertTokenizerFast(vocab_file=...): load the folder instead
    tok = BertTokenizerFast.from_pretrained(str(workdir), do_lower_case=True)
    assert len(tok) == len(vocab)
    tok.add_tokens(MARKERS, special_tokens=True)
    return tok


def _encoder_config(encoder: Encoder, vocab_size: int, pad_token_id: int):
    tiny = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=256, pad_token_id=pad_token_id)
    if encoder == "bert":
        from transformers import BertConfig

        return BertConfig(**tiny)
    if encoder == "deberta":
        from transformers import DebertaV2Config

        return DebertaV2Config(**tiny, type_vocab_size=0, relative_attention=True, position_buckets=32,
                               max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                               position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True)
    if encoder == "modernbert":
        from transformers import ModernBertConfig

        return ModernBertConfig(**tiny, global_attn_every_n_layers=2, local_attention=16,
                                cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3)
    raise ValueError(f"unknown encoder {encoder!r}")


def build_gliclass_checkpoint(path: Path, encoder: Encoder = "bert", seed: int = 0, **layout: Any) -> Path:
    """Write a tiny random GLiClass uni-encoder checkpoint to ``path`` with the reference package.

    ``layout`` holds ``GLiClassModelConfig`` keywords (prompt_first, pooling_strategy, scorer_type, ...).
    Every parameter whose name has no "norm" in it, except ``logit_scale``, is re-drawn from N(0, 0.2),
    so that logits are spread out. Deterministic for a given (encoder, seed, layout).
    """
    from gliclass import GLiClassModel, GLiClassModelConfig

    path = Path(path)
    tok = _tokenizer(path / "_wordpiece")
    base = len(tok) - len(MARKERS)
    torch.manual_seed(seed)
    config = GLiClassModelConfig(
        encoder_config=_encoder_config(encoder, len(tok), tok.pad_token_id),
        encoder_model=f"tiny-random-{encoder}",  # must be a str: the reference does Path(encoder_model_name)
        class_token_index=base, text_token_index=base + 1, example_token_index=base + 2,
        problem_type="multi_label_classification",
        **layout,
    )
    model = GLiClassModel(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name.lower() or name.endswith("logit_scale"):
                continue
            parameter.normal_(0.0, 0.2)
    model.eval()
    model.save_pretrained(str(path))
    if encoder == "modernbert":
        tok.model_input_names = ["input_ids", "attention_mask"]  # ModernBERT takes no token_type_ids
    tok.save_pretrained(str(path))
    return path


@dataclass
class ReferenceRun:
    """What the reference pipeline returned for a list of texts."""

    scores: list[list[float]]  # every label's score, in label order (sigmoid, or softmax for single-label)
    predictions: list[list[dict]]  # the pipeline's own output (labels over threshold, or the argmax)
    input_ids: list[list[int]]  # prepare_inputs ids of each text alone (no padding)
    strings: list[str]  # prepare_input's string of each text


@lru_cache(maxsize=None)
def reference_pipeline(folder: str):
    """The reference model and tokenizer loaded from ``folder``, wrapped in its pipeline (cached)."""
    from gliclass import GLiClassModel, ZeroShotClassificationPipeline
    from transformers import AutoTokenizer

    model = GLiClassModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return ZeroShotClassificationPipeline(model, tokenizer, classification_type="multi-label", device="cpu",
                                          progress_bar=False)


def run_reference(
    folder: Path,
    texts: Sequence[str],
    labels: Sequence[str] | Sequence[Sequence[str]],
    *,
    prompt: Optional[str] = None,
    examples: Optional[list[dict]] = None,
    threshold: float = 0.5,
    classification_type: str = "multi-label",
    batch_size: int = 8,
) -> ReferenceRun:
    """Run ``gliclass.ZeroShotClassificationPipeline`` on ``folder``; labels shared or one list per text."""
    pipe = reference_pipeline(str(folder))
    texts, labels = list(texts), [list(x) if not isinstance(x, str) else x for x in labels]
    per_text = not isinstance(labels[0], str)
    kwargs = dict(batch_size=batch_size, classification_type=classification_type, prompt=prompt,
                  examples=examples)
    with torch.no_grad():
        predictions = pipe(texts, labels, threshold=threshold, **kwargs)
        everything = pipe(texts, labels, threshold=threshold, return_hierarchical=True, **kwargs)
    scores = []
    for i, by_label in enumerate(everything):
        own = labels[i] if per_text else labels
        assert len(set(own)) == len(own), "duplicate labels collapse in the reference's score map"
        scores.append([by_label[label] for label in own])
    input_ids, strings = [], []
    for i, text in enumerate(texts):
        own = labels[i] if per_text else labels
        enc = pipe.pipe.prepare_inputs([text], own, same_labels=True, examples=examples, prompt=prompt)
        input_ids.append(enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist())
        strings.append(pipe.pipe.prepare_input(text, own, examples=examples, prompt=prompt))
    return ReferenceRun(scores, predictions, input_ids, strings)


if __name__ == "__main__":  # a demo: build one checkpoint and classify the sample texts
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        for enc in ("bert", "deberta", "modernbert"):
            t0 = time.perf_counter()
            folder = build_gliclass_checkpoint(Path(tmp) / enc, enc, prompt_first=True)
            built = time.perf_counter() - t0
            run = run_reference(folder, TEXTS[:3], LABELS, threshold=0.0, batch_size=1)
            print(enc, f"built in {built:.2f}s", [[round(s, 3) for s in row] for row in run.scores])
