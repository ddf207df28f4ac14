"""The GLiClass checkpoint folder format (written by the reference's ``save_pretrained``).

A checkpoint is ``config.json`` (``model_type: "GLiClass"``, the head settings and the
encoder's Hugging Face config under ``encoder_config``), ``model.safetensors`` (else
``pytorch_model.bin``) and the tokenizer files with the ``<<LABEL>>``, ``<<SEP>>`` and
``<<EXAMPLE>>`` markers; reading goes through :mod:`..core.checkpoint`.
"""
import json
import logging
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from ..core.checkpoint import (
    CONFIG,
    SAFETENSORS,
    CheckpointError,
    build_encoder,
    check_family,
    embedding_key,
    load_pretrained_encoder,
    load_state,
    check_markers,
    load_tokenizer,
    read_json,
    read_weights,
    resize_token_embeddings,
    write_weights,
)
from .config import GLiClassSettings, encoder_config
from .model import GLiClassModel
from .prompt import EXAMPLE, LABEL, SEP

logger = logging.getLogger(__name__)

HUB_PATTERNS = (CONFIG, SAFETENSORS, "*.json", "*.model", "*.txt")
PREFIX = "model.encoder_model."  # where the encoder's weights sit in the state dict
IGNORED = ("position_ids", "pooler.dense.weight", "pooler.dense.bias")  # kept by some encoders, unused


def load_model(folder: Path) -> Tuple[GLiClassModel, Any, Dict[str, Any]]:
    """Model (eval mode, on CPU), tokenizer and raw config from a GLiClass checkpoint folder."""
    check_family(folder, "gliclass")
    raw = read_json(folder / CONFIG, "GLiClass checkpoint")
    settings = GLiClassSettings.from_config(raw, str(folder / CONFIG))
    state = read_weights(folder)
    encoder = build_encoder(encoder_config(raw), where=f"{folder / CONFIG} (encoder_config)", weights=state, prefix=PREFIX)
    key = PREFIX + embedding_key(encoder)
    if key not in state:
        raise CheckpointError(f"{folder}: the weights lack {key!r}; not a GLiClass checkpoint of this encoder.")
    if encoder.get_input_embeddings().weight.shape[0] != state[key].shape[0]:
        resize_token_embeddings(encoder, state[key].shape[0])
    model = GLiClassModel(settings, encoder)
    missing, unexpected = load_state(model, state, folder)
    missing = [k for k in missing if not k.endswith(IGNORED)]
    unexpected = [k for k in unexpected if not k.endswith(IGNORED)]
    if missing or unexpected:
        raise CheckpointError(
            f"The weights in {folder} do not match its config.json (scorer_type, use_lstm, "
            f"use_segment_embeddings, encoder): missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    tokenizer = load_tokenizer(folder)
    _check_markers(tokenizer, settings, folder)
    check_markers(tokenizer, (LABEL, SEP, EXAMPLE), folder)
    return model.eval(), tokenizer, raw


def _check_markers(tokenizer: Any, settings: GLiClassSettings, folder: Path) -> None:
    """The tokenizer's marker ids must be the config's (else every label would be misread)."""
    expected = {LABEL: settings.class_token_index, SEP: settings.text_token_index}
    vocab = tokenizer.get_vocab()
    if EXAMPLE in vocab:
        expected[EXAMPLE] = settings.example_token_index
    found = {marker: vocab.get(marker) for marker in expected}
    if found != expected:
        raise CheckpointError(
            f"The tokenizer in {folder} gives the markers ids {found}, but config.json says {expected} "
            "(class/text/example_token_index): the checkpoint is inconsistent."
        )


def save_model(model: GLiClassModel, tokenizer: Any, raw_config: Dict[str, Any], folder: Path) -> None:
    """Write the reference folder format (loadable by ``gliclass`` itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(raw_config, indent=2), encoding="utf8")
    write_weights(model, folder)
    tokenizer.save_pretrained(str(folder))
    logger.debug("saved GLiClass checkpoint to %s", folder)


def new_model(folder: Path) -> Tuple[GLiClassModel, Any, Dict[str, Any]]:
    """A new GLiClass model on the pretrained encoder in ``folder``: the three markers added to
    its tokenizer, fresh heads in the layout of the released v3.0 models (labels first, first-token
    pooling, mlp scorer), and a ``config.json`` the reference reads."""
    encoder_dict = read_json(folder / CONFIG, "encoder")
    encoder = load_pretrained_encoder(folder)
    tokenizer = load_tokenizer(folder)
    base = len(tokenizer)
    tokenizer.add_tokens([LABEL, SEP, EXAMPLE], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids([LABEL, SEP, EXAMPLE])
    resize_token_embeddings(encoder, len(tokenizer))
    hidden = encoder.config.hidden_size
    raw = {
        "model_type": "GLiClass",
        "architectures": ["GLiClassModel"],
        "architecture_type": "uni-encoder",
        "encoder_model": encoder_dict.get("_name_or_path") or folder.name,
        "encoder_config": encoder.config.to_dict(),
        "vocab_size": len(tokenizer),
        "class_token_index": ids[0],
        "text_token_index": ids[1],
        "example_token_index": ids[2],
        "hidden_size": hidden,
        "prompt_first": True,
        "pooling_strategy": "first",
        "class_token_pooling": "first",
        "scorer_type": "mlp",
        "problem_type": "multi_label_classification",
    }
    settings = GLiClassSettings.from_config(raw, f"new GLiClass heads on {folder}")
    model = GLiClassModel(settings, encoder)
    std = getattr(encoder.config, "initializer_range", 0.02)
    for name, param in model.named_parameters():  # the reference's initialisation of its heads
        if not name.startswith(PREFIX) and param.dim() > 1:
            torch.nn.init.normal_(param, std=std)
        elif not name.startswith(PREFIX) and name.endswith("bias"):
            torch.nn.init.zeros_(param)
    logger.info("new GLiClass heads on the encoder in %s (%d tokens, markers from %d)", folder, len(tokenizer), base)
    return model.eval(), tokenizer, raw
