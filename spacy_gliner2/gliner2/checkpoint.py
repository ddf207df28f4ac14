"""Reading and writing the reference GLiNER2 checkpoint folder format.

A checkpoint is ``config.json`` (head settings), ``encoder_config/config.json``
(the encoder's Hugging Face config), ``model.safetensors`` (else
``pytorch_model.bin``, read with ``weights_only=True``) and the tokenizer files.
A Hub id is resolved through huggingface_hub; a local folder is read directly.
The encoder is always built from its config: no remote code, no download by name.
"""
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from safetensors.torch import load_file, save_file

from .extractor import GLiNER2Model, ModelSettings

logger = logging.getLogger(__name__)

CONFIG = "config.json"
ENCODER_CONFIG = "encoder_config/config.json"
SAFETENSORS = "model.safetensors"
PICKLE = "pytorch_model.bin"
_HUB_PATTERNS = [CONFIG, ENCODER_CONFIG, SAFETENSORS, "*.json", "*.model", "*.txt"]


class CheckpointError(OSError):
    """A checkpoint that cannot be found or read, with what to do about it."""


@dataclass
class HubOptions:
    """How to resolve a Hub id (ignored for local folders)."""

    revision: Optional[str] = None
    cache_dir: Optional[str] = None
    token: Union[str, bool, None] = None
    local_files_only: bool = False


def resolve(name_or_path: Union[str, Path], hub: Optional[HubOptions] = None) -> Path:
    """A local folder holding the checkpoint files, downloading them if needed."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"GLiNER2 checkpoint folder {name!r} does not exist (or is not a folder).")
    hub = hub or HubOptions()
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(
                name,
                revision=hub.revision,
                cache_dir=hub.cache_dir,
                token=hub.token,
                local_files_only=hub.local_files_only,
                allow_patterns=_HUB_PATTERNS,
            )
        )
        if not (folder / SAFETENSORS).exists():
            hf_hub_download(
                name,
                PICKLE,
                revision=hub.revision,
                cache_dir=hub.cache_dir,
                token=hub.token,
                local_files_only=hub.local_files_only,
            )
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"GLiNER2 model {name!r} is not in the local Hugging Face cache and cannot be "
            "downloaded (offline: HF_HUB_OFFLINE=1, local_files_only, or no network). "
            f"Download it once on a connected machine (`hf download {name}`), or pass the "
            "path of a local checkpoint folder as `model`."
        ) from err
    except (HfHubHTTPError, ValueError) as err:
        raise CheckpointError(f"Could not fetch GLiNER2 model {name!r} from the Hugging Face Hub: {err}") from err
    return folder


def read_settings(folder: Path) -> Tuple[ModelSettings, Dict[str, Any]]:
    """Head settings from ``config.json`` (and the raw dict, to write back)."""
    raw = _read_json(folder / CONFIG)
    arch = raw.get("architecture") or "span"
    if arch != "span":
        raise CheckpointError(
            f"{folder / CONFIG} declares architecture {arch!r}; spacy-gliner2 runs the GLiNER2 "
            "'span' architecture (the released fastino/gliner2-* checkpoints)."
        )
    pooling = raw.get("token_pooling") or "first"
    if pooling != "first":
        raise CheckpointError(f"token_pooling {pooling!r} in {folder / CONFIG} is not supported; only 'first'.")
    span_head = raw.get("span_head") or {}
    max_width = span_head.get("max_width", raw.get("max_width") or 8)
    mode = span_head.get("span_mode", "markerV0")
    if mode != "markerV0":
        raise CheckpointError(f"span_mode {mode!r} in {folder / CONFIG} is not supported; only 'markerV0'.")
    return ModelSettings(int(max_width), raw.get("counting_layer") or "count_lstm"), raw


def _read_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: is {path.parent} a GLiNER2 checkpoint folder?")
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is corrupt.") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object; the checkpoint is corrupt.")
    return data


def build_encoder(encoder_config: Dict[str, Any]) -> torch.nn.Module:
    """An encoder with random weights from its Hugging Face config dict."""
    from transformers import AutoConfig, AutoModel

    config_dict = dict(encoder_config)
    model_type = config_dict.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **config_dict)
    except (ValueError, KeyError) as err:
        raise CheckpointError(
            f"Unknown encoder architecture {model_type!r} in encoder_config/config.json: "
            "transformers does not know it (remote code is never run)."
        ) from err
    for attn in ("sdpa", "eager"):
        try:
            return AutoModel.from_config(config, attn_implementation=attn).float()
        except (ValueError, ImportError):
            continue
    return AutoModel.from_config(config).float()


def read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """The state dict: safetensors first, else a pickle read with ``weights_only``."""
    if (folder / SAFETENSORS).is_file():
        try:
            return load_file(str(folder / SAFETENSORS))
        except Exception as err:  # safetensors raises several error types
            raise CheckpointError(
                f"{folder / SAFETENSORS} cannot be read ({err}); the file is truncated or "
                "corrupt: download or save the checkpoint again."
            ) from err
    if (folder / PICKLE).is_file():
        try:
            return torch.load(folder / PICKLE, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(
                f"{folder / PICKLE} cannot be read safely ({err}). Only plain tensor pickles are "
                "accepted (weights_only=True); convert the checkpoint to safetensors."
            ) from err
    raise CheckpointError(f"{folder} has neither {SAFETENSORS} nor {PICKLE}: no weights to load.")


def load_tokenizer(folder: Path) -> Any:
    """The checkpoint's tokenizer (never remote code)."""
    from transformers import AutoTokenizer

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it reads our config.json and warns about model_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except AttributeError as err:
            if "'list' object has no attribute 'keys'" not in str(err):
                raise
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, extra_special_tokens={})
        except (OSError, ValueError) as err:
            raise CheckpointError(f"The tokenizer files in {folder} cannot be loaded: {err}") from err
        finally:
            hf_logging.set_verbosity(verbosity)


def load_model(folder: Path) -> Tuple[GLiNER2Model, Any, Dict[str, Any]]:
    """Model (eval mode, on CPU), tokenizer and raw config from a checkpoint folder."""
    settings, raw = read_settings(folder)
    encoder = build_encoder(_read_json(folder / ENCODER_CONFIG))
    state = read_weights(folder)
    key = "encoder." + _embedding_key(encoder)
    if key not in state:
        raise CheckpointError(f"{folder}: the weights lack {key!r}; not a GLiNER2 checkpoint of this encoder.")
    if encoder.get_input_embeddings().weight.shape[0] != state[key].shape[0]:
        encoder.resize_token_embeddings(state[key].shape[0], mean_resizing=False)
    model = GLiNER2Model(encoder, settings)
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise CheckpointError(
            f"The weights in {folder} do not match its config (max_width, counting_layer, "
            f"encoder): missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    tokenizer = load_tokenizer(folder)
    if len(tokenizer) > state[key].shape[0]:
        raise CheckpointError(
            f"The tokenizer in {folder} has {len(tokenizer)} tokens but the encoder only "
            f"{state[key].shape[0]} embeddings: the checkpoint is inconsistent."
        )
    return model.eval(), tokenizer, raw


def _embedding_key(encoder: torch.nn.Module) -> str:
    weight = encoder.get_input_embeddings().weight
    for name, param in encoder.named_parameters():
        if param is weight:
            return name
    raise CheckpointError("The encoder has no input embedding matrix.")


def save_model(model: GLiNER2Model, tokenizer: Any, raw_config: Dict[str, Any], folder: Path) -> None:
    """Write the reference folder format (loadable by ``gliner2`` itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "encoder_config").mkdir(exist_ok=True)
    config = dict(raw_config)
    config.setdefault("architecture", "span")
    (folder / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf8")
    model.encoder.config.to_json_file(str(folder / ENCODER_CONFIG))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / SAFETENSORS))
    tokenizer.save_pretrained(str(folder))
    logger.debug("saved GLiNER2 checkpoint to %s", folder)


def checkpoint_files(folder: Path) -> Dict[str, bytes]:
    """Every file of a checkpoint folder, by relative path (for ``to_bytes``)."""
    return {
        str(p.relative_to(folder)).replace(os.sep, "/"): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def is_plain_encoder(folder: Path) -> bool:
    """A Hugging Face encoder folder (no GLiNER2 heads yet)."""
    if (folder / ENCODER_CONFIG).is_file():
        return False
    config = _read_json(folder / CONFIG)
    return config.get("model_type") not in (None, "extractor")


def new_model(folder: Path, counting_layer: str = "count_lstm", max_width: int = 8) -> Tuple[GLiNER2Model, Any, Dict[str, Any]]:
    """A new GLiNER2 model on a pretrained encoder: special tokens added, fresh heads."""
    from transformers import AutoModel

    from ..schema import SPECIAL_TOKENS

    config = _read_json(folder / CONFIG)
    try:
        encoder = AutoModel.from_pretrained(str(folder), trust_remote_code=False, use_safetensors=None).float()
    except (OSError, ValueError) as err:
        raise CheckpointError(f"The encoder in {folder} cannot be loaded: {err}") from err
    tokenizer = load_tokenizer(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    settings = ModelSettings(max_width, counting_layer)
    model = GLiNER2Model(encoder, settings)
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
