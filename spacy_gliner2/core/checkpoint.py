"""Checkpoint folders of any family: Hub resolution, safe file reading, encoders and tokenizers.

A family's format module (``gliner2/checkpoint.py``, ``gliclass/checkpoint.py``) says which
files make a checkpoint and how its config maps to a model; everything it reads goes
through here: weights from safetensors (else a pickle read with ``weights_only=True``),
encoders built from their config (no remote code, no download by name), tokenizers from
the folder. A Hub id is resolved through huggingface_hub; a local folder is read directly.
"""
import inspect
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from safetensors.torch import load_file, save_file

from .compact import compact_state, expand_state

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
COMPACT = "model.compact.safetensors"  # int8 / fp16 weights (:mod:`.compact`): models shipped in the package
PICKLE = "pytorch_model.bin"
MODELS = Path(__file__).resolve().parent.parent / "models"
# Models inside the package, by the name a config gives as `model` (no Hub needed).
BUNDLED = {"spacy-gliner2/minilm-small": "minilm-small"}
OFFLINE_HINT = (
    "To run without the Hub, use the model bundled with spacy-gliner2: model = \"spacy-gliner2/minilm-small\" "
    "(small, trained by this project; README, Models)."
)


class CheckpointError(OSError):
    """A checkpoint that cannot be found or read, with what to do about it."""


@dataclass
class HubOptions:
    """How to resolve a Hub id (ignored for local folders)."""

    revision: Optional[str] = None
    cache_dir: Optional[str] = None
    token: Union[str, bool, None] = None
    local_files_only: bool = False


def resolve(
    name_or_path: Union[str, Path],
    hub: Optional[HubOptions] = None,
    patterns: Sequence[str] = ("*.json", SAFETENSORS, "*.model", "*.txt"),
    what: str = "Model",
) -> Path:
    """A local folder holding the checkpoint files (``patterns`` of a Hub repository),
    downloading them if needed. ``what`` names the kind of model in messages."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if name in BUNDLED:
        folder = MODELS / BUNDLED[name]
        if not (folder / CONFIG).is_file():
            raise CheckpointError(f"The bundled model {name!r} is missing from {folder}: reinstall spacy-gliner2.")
        return folder
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{what} checkpoint folder {name!r} does not exist (or is not a folder).")
    hub = hub or HubOptions()
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    options = dict(revision=hub.revision, cache_dir=hub.cache_dir, token=hub.token, local_files_only=hub.local_files_only)
    try:
        folder = Path(snapshot_download(name, allow_patterns=list(patterns), **options))
        if not (folder / SAFETENSORS).exists():
            hf_hub_download(name, PICKLE, **options)
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"{what} model {name!r} is not in the local Hugging Face cache and cannot be "
            "downloaded (offline: HF_HUB_OFFLINE=1, local_files_only, or no network). "
            f"Download it once on a connected machine (`hf download {name}`), or pass the "
            f"path of a local checkpoint folder as `model`. {OFFLINE_HINT}"
        ) from err
    except (HfHubHTTPError, ValueError) as err:
        raise CheckpointError(f"Could not fetch {what} model {name!r} from the Hugging Face Hub: {err}") from err
    return folder


def read_json(path: Path, what: str = "checkpoint") -> Dict[str, Any]:
    """A JSON object from a checkpoint file, or a :class:`CheckpointError` saying what is wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: is {path.parent} a {what} folder?")
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is corrupt.") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object; the checkpoint is corrupt.")
    return data


def build_encoder(encoder_config: Dict[str, Any], where: str = "encoder_config/config.json",
                  weights: Optional[Dict[str, torch.Tensor]] = None, prefix: str = "") -> torch.nn.Module:
    """An encoder with random weights from its Hugging Face config dict. With ``weights`` (the
    checkpoint's, the encoder's under ``prefix``), the config is first built without memory (meta
    device) and must describe a model no larger than those weights: an edited or corrupt config
    is a CheckpointError, not gigabytes allocated before the weights are read."""
    from transformers import AutoModel

    config = _encoder_config(encoder_config, where)
    if weights is not None:
        _check_size(config, where, sum(t.numel() for k, t in weights.items() if k.startswith(prefix)))
    for attn in ("sdpa", "eager"):
        try:
            return AutoModel.from_config(config, attn_implementation=attn).float()
        except (ValueError, ImportError):
            continue
    return AutoModel.from_config(config).float()


def _encoder_config(encoder_config: Dict[str, Any], where: str) -> Any:
    from transformers import CONFIG_MAPPING, AutoConfig

    config_dict = dict(encoder_config)
    model_type = config_dict.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise CheckpointError(
            f"Unknown encoder architecture {model_type!r} in {where}: "
            "transformers does not know it (remote code is never run)."
        )
    try:
        return AutoConfig.for_model(model_type, **config_dict)
    except Exception as err:  # a field of the wrong type or value (transformers raises several types)
        detail = " ".join(str(err).split())
        raise CheckpointError(f"{where} is not a valid {model_type} config: {detail}") from None


def _check_size(config: Any, where: str, available: int) -> None:
    """CheckpointError when ``config`` cannot build an encoder, or describes one with more values
    than the ``available`` weights (a little slack: buffers, a resized vocabulary)."""
    from transformers import AutoModel

    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > 1000:  # before building them one by one
        raise CheckpointError(f"{where}: num_hidden_layers {layers} is not a real encoder's.")
    try:
        with torch.device("meta"):
            needed = sum(p.numel() for p in AutoModel.from_config(config).parameters())
    except Exception as err:  # a config that builds no model: zero heads, negative sizes, ...
        raise CheckpointError(f"{where} does not describe a buildable encoder ({type(err).__name__}: {err}).") from None
    if needed > 1.05 * available + 1_000_000:
        raise CheckpointError(f"{where} describes an encoder of {needed:,} values, but the checkpoint's weights hold "
                              f"{available:,}: the config was edited or belongs to another model.")


def read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """The state dict (fp32): safetensors first (compact ones expanded), else a pickle read
    with ``weights_only``."""
    if (folder / COMPACT).is_file() and not (folder / SAFETENSORS).is_file():
        try:
            return expand_state(load_file(str(folder / COMPACT)))
        except Exception as err:  # safetensors raises several error types
            raise CheckpointError(f"{folder / COMPACT} cannot be read ({err}); the file is truncated or corrupt.") from err
    if (folder / SAFETENSORS).is_file():
        try:
            return load_file(str(folder / SAFETENSORS))
        except Exception as err:  # safetensors raises several error types
            raise CheckpointError(
                f"{folder / SAFETENSORS} cannot be read ({err}); the file is truncated or "
                "corrupt: download or save the checkpoint again."
            ) from err
    if (folder / PICKLE).is_file():
        if _torch_version() < (2, 6):
            raise CheckpointError(
                f"{folder / PICKLE} is a pickle, and torch {torch.__version__} cannot read pickles safely (before "
                "torch 2.6 weights_only can be bypassed): install torch >= 2.6, or convert the checkpoint to safetensors.")
        try:
            state = torch.load(folder / PICKLE, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(
                f"{folder / PICKLE} cannot be read safely: it holds more than plain tensors ({type(err).__name__}). "
                "Convert the checkpoint to safetensors; never load an untrusted pickle without weights_only."
            ) from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise CheckpointError(f"{folder / PICKLE} is not a state dict (names -> tensors).")
        return state
    raise CheckpointError(f"{folder} has neither {SAFETENSORS} nor {PICKLE}: no weights to load.")


def load_state(model: torch.nn.Module, state: Dict[str, torch.Tensor], folder: Path) -> Tuple[list, list]:
    """``model.load_state_dict(state, strict=False)``'s missing and unexpected names; a tensor of the
    wrong shape, or of integers or booleans where the model has floats, is a CheckpointError naming
    ``folder`` (never a silent cast)."""
    for name, current in model.state_dict().items():
        given = state.get(name)
        if given is not None and current.is_floating_point() and not given.is_floating_point():
            raise CheckpointError(f"The weights in {folder}: {name!r} holds {given.dtype} values where the model has "
                                  f"floats; the file is corrupt or not a checkpoint of this model.")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(f"The weights in {folder} do not fit the model its config describes: {detail}") from None
    return list(missing), list(unexpected)


def _torch_version() -> Tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def saved_component_folder(folder: Path) -> Path:
    """``folder`` (a component's ``model`` folder written by ``to_disk`` / ``to_bytes``), checked:
    it exists and holds its weights as safetensors, as saving writes them (no pickle is read back)."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is missing: the saved component's weights are gone. Save the pipeline "
                              "again (loading the original checkpoint instead would lose what training changed).")
    if (folder / PICKLE).exists() or not ((folder / SAFETENSORS).is_file() or (folder / COMPACT).is_file()):
        raise CheckpointError(f"{folder} does not hold {SAFETENSORS} (or {COMPACT}) as saving writes it; "
                              "a saved pipeline's weights are never read from a pickle. Save the pipeline again.")
    return folder


def write_weights(model: torch.nn.Module, folder: Path, compact: bool = False) -> None:
    """The model's state dict as ``model.safetensors`` (fp32), or with ``compact`` as
    ``model.compact.safetensors`` (int8 matrices, fp16 rest: :mod:`.compact`)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if compact:
        save_file(compact_state(state), str(folder / COMPACT))
    else:
        save_file(state, str(folder / SAFETENSORS))


def check_markers(tokenizer: Any, markers: Sequence[str], folder: Path) -> None:
    """Each marker the tokenizer has must read as its own single token (a marker added as a
    normalized token, say, would be split or read as [UNK], and every prompt misread)."""
    vocab = tokenizer.get_vocab()
    for marker in markers:
        if marker not in vocab:
            continue
        readings = (tokenizer(marker, add_special_tokens=False)["input_ids"],  # the two ways prompts are read
                    tokenizer.convert_tokens_to_ids(tokenizer.tokenize(marker)))
        ids = next((ids for ids in readings if ids != [vocab[marker]]), None)
        if ids is not None:
            raise CheckpointError(f"The tokenizer in {folder} reads the marker {marker!r} as {ids}, not as its "
                                  f"token {vocab[marker]}: its added tokens were saved wrongly (add the markers "
                                  "as special tokens, not normalized).")


def load_tokenizer(folder: Path) -> Any:
    """The checkpoint's tokenizer (never remote code)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it reads the family's config.json and warns about model_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except AttributeError as err:
            if "'list' object has no attribute 'keys'" not in str(err):
                raise
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, extra_special_tokens={})
        except (OSError, ValueError) as err:
            raise CheckpointError(f"The tokenizer files in {folder} cannot be loaded: {err}") from err
        finally:
            hf_logging.set_verbosity(verbosity)
    if not set(tokenizer.get_vocab()) - set(reserved_strings(tokenizer)) - set(tokenizer.get_added_vocab()):
        raise CheckpointError(
            f"The tokenizer in {folder} has no vocabulary besides its {len(tokenizer)} special tokens: its "
            "vocabulary file (tokenizer.json, vocab.txt, spm.model, or vocab.json with merges.txt) is missing. "
            "Copy the checkpoint's tokenizer files into the folder.")
    return tokenizer


def reserved_strings(tokenizer: Any) -> Tuple[str, ...]:
    """Every string the tokenizer reads as one special token (its [CLS], [SEP], [PAD], the family's
    markers...): schema text must not hold one, or it would inject that token."""
    special = set(getattr(tokenizer, "all_special_tokens", None) or ())
    special |= {str(token) for token in getattr(tokenizer, "added_tokens_decoder", {}).values()
                if getattr(token, "special", False)}
    return tuple(sorted(token for token in special if token.strip()))


def load_pretrained_encoder(folder: Path) -> torch.nn.Module:
    """A plain pretrained Hugging Face encoder (fp32), for new heads."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(folder), trust_remote_code=False, use_safetensors=None).float()
    except (OSError, ValueError) as err:
        raise CheckpointError(f"The encoder in {folder} cannot be loaded: {err}") from err


def embedding_key(encoder: torch.nn.Module) -> str:
    """The state-dict name of the encoder's input embedding matrix."""
    weight = encoder.get_input_embeddings().weight
    for name, param in encoder.named_parameters():
        if param is weight:
            return name
    raise CheckpointError("The encoder has no input embedding matrix.")


def checkpoint_files(folder: Path) -> Dict[str, bytes]:
    """Every file of a checkpoint folder, by relative path (for ``to_bytes``)."""
    return {
        str(p.relative_to(folder)).replace(os.sep, "/"): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_checkpoint_files(files: Dict[str, bytes], folder: Path) -> None:
    """Write what :func:`checkpoint_files` read, refusing paths outside ``folder``."""
    for rel, content in files.items():
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ValueError(f"Refusing to write checkpoint file outside the folder: {rel!r}")
        if not isinstance(content, bytes):
            raise CheckpointError(f"Checkpoint file {rel!r} holds a {type(content).__name__}, not bytes.")
        target = Path(folder, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


# What marks each family's checkpoint folder: the factory that runs it, and a test on the folder
# and its config.json. A folder of one family given to another's factory gets a clear error.
FAMILIES = {
    "gliner2": lambda folder, config: config.get("model_type") == "extractor" or (folder / "encoder_config" / CONFIG).is_file(),
    "gliclass": lambda folder, config: config.get("model_type") == "GLiClass",
}
FAMILY_NAMES = {"gliner2": "GLiNER2", "gliclass": "GLiClass"}


def checkpoint_family(folder: Path) -> Optional[str]:
    """The family (factory name) whose checkpoint ``folder`` holds; None for a plain encoder."""
    config = read_json(folder / CONFIG)
    return next((name for name, test in FAMILIES.items() if test(folder, config)), None)


def check_family(folder: Path, family: str) -> None:
    """Refuse another family's checkpoint, naming the factory that runs it."""
    found = checkpoint_family(folder)
    if found is not None and found != family:
        raise CheckpointError(
            f"{folder} is a {FAMILY_NAMES[found]} checkpoint; use the `{found}` factory "
            f"(nlp.add_pipe({found!r}, config={{'model': ...}})), not `{family}`."
        )


def is_plain_encoder(folder: Path, family: str) -> bool:
    """A Hugging Face encoder folder (no heads yet); another family's checkpoint is refused."""
    check_family(folder, family)
    if checkpoint_family(folder) is not None:
        return False
    return read_json(folder / CONFIG).get("model_type") is not None


def resize_token_embeddings(encoder: torch.nn.Module, size: int) -> None:
    """``encoder.resize_token_embeddings(size)`` with the new rows drawn at random, not mean-initialised
    (``mean_resizing=False``; transformers < 4.46 has no such argument and always draws them)."""
    if "mean_resizing" in inspect.signature(encoder.resize_token_embeddings).parameters:
        encoder.resize_token_embeddings(size, mean_resizing=False)
    else:
        encoder.resize_token_embeddings(size)
