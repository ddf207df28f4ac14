"""The reference GLiNER2 checkpoint folder format.

A checkpoint is ``config.json`` (head settings), ``encoder_config/config.json``
(the encoder's Hugging Face config), ``model.safetensors`` (else
``pytorch_model.bin``) and the tokenizer files; reading goes through
:mod:`..core.checkpoint`.
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
from .boundary import BoundarySettings
from .model import GLiNER2Model, ModelSettings

logger = logging.getLogger(__name__)

ENCODER_CONFIG = "encoder_config/config.json"
MAX_SPAN_WIDTH = 128  # the widest spans a checkpoint may declare (released ones: 8-12 words)
HUB_PATTERNS = (CONFIG, ENCODER_CONFIG, SAFETENSORS, "*.json", "*.model", "*.txt")


ARCHITECTURES = ("span", "boundary")


def read_settings(folder: Path) -> Tuple[ModelSettings, Dict[str, Any]]:
    """Head settings from ``config.json`` (and the raw dict, to write back). The ``architecture``
    field picks span (GLiNER2; missing means span) or boundary (GLiNER2.5), as ``AutoExtractor``."""
    raw = read_json(folder / CONFIG, "GLiNER2 checkpoint")
    arch = raw.get("architecture") or "span"
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{folder / CONFIG} declares architecture {arch!r}; spacy-gliner2 runs {list(ARCHITECTURES)} "
            "(GLiNER2 and GLiNER2.5 checkpoints)."
        )
    pooling = raw.get("token_pooling") or "first"
    if pooling != "first":
        raise CheckpointError(f"token_pooling {pooling!r} in {folder / CONFIG} is not supported; only 'first'.")
    if arch == "boundary":
        head = dict(raw.get("boundary_head") or {})
        if int(raw.get("config_version") or 0) < 3:  # as the reference: older configs had no relation or record head
            head.setdefault("enable_relations", False)
            head.setdefault("enable_records", False)
        try:
            boundary = BoundarySettings.read(head)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{folder / CONFIG}: {error}") from error
        return ModelSettings(architecture="boundary", boundary=boundary), raw
    span_head = raw.get("span_head") or {}
    if not isinstance(span_head, dict):
        raise CheckpointError(f"{folder / CONFIG}: span_head must be an object, got {span_head!r}.")
    max_width = span_head.get("max_width", raw.get("max_width") or 8)
    if isinstance(max_width, bool) or not isinstance(max_width, int) or not 1 <= max_width <= MAX_SPAN_WIDTH:
        raise CheckpointError(f"{folder / CONFIG}: max_width must be an integer from 1 to {MAX_SPAN_WIDTH} (words "
                              f"per span), got {max_width!r}.")
    mode = span_head.get("span_mode", "markerV0")
    if mode != "markerV0":
        raise CheckpointError(f"span_mode {mode!r} in {folder / CONFIG} is not supported; only 'markerV0'.")
    return ModelSettings(int(max_width), raw.get("counting_layer") or "count_lstm"), raw


def keep_tensors(model: torch.nn.Module, tensors: Dict[str, torch.Tensor]) -> None:
    """Hold weights the model does not run (a boundary checkpoint's extraction heads) as buffers
    under their own names, so that saving writes the checkpoint back whole."""
    for name, tensor in tensors.items():
        *path, leaf = name.split(".")
        module = model
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, tensor)


def load_model(folder: Path) -> Tuple[GLiNER2Model, Any, Dict[str, Any]]:
    """Model (eval mode, on CPU), tokenizer and raw config from a checkpoint folder."""
    check_family(folder, "gliner2")
    settings, raw = read_settings(folder)
    state = read_weights(folder)
    encoder = build_encoder(read_json(folder / ENCODER_CONFIG, "GLiNER2 checkpoint"), str(folder / ENCODER_CONFIG),
                            weights=state, prefix="encoder.")
    key = "encoder." + embedding_key(encoder)
    if key not in state:
        raise CheckpointError(f"{folder}: the weights lack {key!r}; not a GLiNER2 checkpoint of this encoder.")
    if encoder.get_input_embeddings().weight.shape[0] != state[key].shape[0]:
        resize_token_embeddings(encoder, state[key].shape[0])
    model = GLiNER2Model(encoder, settings)
    missing, unexpected = load_state(model, state, folder)
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if settings.architecture == "boundary" and not missing:
        try:
            keep_tensors(model, {k: state[k] for k in unexpected})
        except (AttributeError, KeyError, TypeError) as err:
            raise CheckpointError(f"The weights in {folder} hold tensor names that are not a model's ({err}).") from None
        unexpected = []
    if missing or unexpected:
        raise CheckpointError(
            f"The weights in {folder} do not match its config (architecture {settings.architecture!r}, max_width, "
            f"counting_layer, boundary_head.dropout, encoder): missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    from ..schema import SPECIAL_TOKENS

    tokenizer = load_tokenizer(folder)
    check_markers(tokenizer, SPECIAL_TOKENS, folder)
    if len(tokenizer) > state[key].shape[0]:
        raise CheckpointError(
            f"The tokenizer in {folder} has {len(tokenizer)} tokens but the encoder only "
            f"{state[key].shape[0]} embeddings: the checkpoint is inconsistent."
        )
    return model.eval(), tokenizer, raw


def save_model(model: GLiNER2Model, tokenizer: Any, raw_config: Dict[str, Any], folder: Path,
               compact: bool = False) -> None:
    """Write the reference folder format (loadable by ``gliner2`` itself); with ``compact``,
    int8 / fp16 weights that only spacy-gliner2 reads (a quarter of the size)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "encoder_config").mkdir(exist_ok=True)
    config = dict(raw_config)
    config.setdefault("architecture", "span")
    (folder / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf8")
    model.encoder.config.to_json_file(str(folder / ENCODER_CONFIG))
    write_weights(model, folder, compact)
    tokenizer.save_pretrained(str(folder))
    logger.debug("saved GLiNER2 checkpoint to %s", folder)


def new_model(folder: Path, counting_layer: str = "count_lstm", max_width: int = 8) -> Tuple[GLiNER2Model, Any, Dict[str, Any]]:
    """A new GLiNER2 model on a pretrained encoder: special tokens added, fresh heads."""
    from ..schema import SPECIAL_TOKENS

    config = read_json(folder / CONFIG, "encoder")
    encoder = load_pretrained_encoder(folder)
    tokenizer = load_tokenizer(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    resize_token_embeddings(encoder, len(tokenizer))
    model = GLiNER2Model(encoder, ModelSettings(max_width, counting_layer))
    raw = {
        "model_type": "extractor",
        "model_name": config.get("_name_or_path") or folder.name,
        "architecture": "span",
        "max_width": max_width,
        "counting_layer": counting_layer,
        "token_pooling": "first",
        "span_head": {"max_width": max_width, "span_mode": "markerV0", "dropout": 0.1},
    }
    logger.info("new GLiNER2 heads on the encoder in %s", folder)
    return model.eval(), tokenizer, raw
