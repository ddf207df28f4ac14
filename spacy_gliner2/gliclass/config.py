"""The head settings of a GLiClass checkpoint, read from its ``config.json``.

A GLiClass ``config.json`` (reference package ``gliclass``, class ``GLiClassModelConfig``) holds the
encoder's Hugging Face config under ``encoder_config`` plus the head keys below. Keys missing from
older checkpoints take the reference's ``__init__`` defaults, so the same file means the same model.
Only the ``uni-encoder`` architecture (every released GLiClass model) is accepted; options the
reference cannot run at inference, or that we do not run, raise :class:`CheckpointError`.
"""
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple, Union

from ..core.checkpoint import CheckpointError

POOLINGS: Tuple[str, ...] = ("first", "avg", "max", "last", "sum", "rms", "abs_max", "abs_avg", "pass")
LABEL_POOLINGS: Tuple[str, ...] = ("first", "average")
SCORERS: Tuple[str, ...] = ("simple", "weighted-dot", "mlp", "hopfield", "cross-attn")
LLM2VEC_ENCODERS = ("llama", "mistral", "gemma", "qwen2")  # the reference wraps them with llm2vec


@dataclass(frozen=True)
class GLiClassSettings:
    """What inference needs from a GLiClass ``config.json`` (reference defaults for missing keys)."""

    encoder_type: str  # encoder_config.model_type ("deberta-v2" when missing, as the reference)
    encoder_hidden_size: int
    vocab_size: int
    class_token_index: int  # id of <<LABEL>>
    text_token_index: int  # id of <<SEP>>
    example_token_index: int  # id of <<EXAMPLE>>
    hidden_size: int  # projector middle width
    prompt_first: bool = False
    pooling_strategy: str = "first"
    class_token_pooling: str = "first"
    embed_class_token: bool = True
    extract_text_features: bool = False
    use_lstm: bool = False
    use_segment_embeddings: bool = False
    normalize_features: bool = False
    logit_scale_init_value: float = 2.6592
    scorer_type: str = "simple"
    scorer_mlp_hidden_size: int = 1024  # cross-attn only (mlp and hopfield always use 256)
    scorer_num_heads: int = 16
    projector_hidden_act: str = "gelu"
    max_labels_alloc: Union[str, int] = "dynamic"
    max_num_classes: int = 25
    use_calibrator: bool = False
    calibrator_hidden_size: int = 256
    calibrator_beta_max: float = 3.0
    calibrator_use_bias: bool = False
    dropout: float = 0.1  # training only (projectors, pooled text vector)
    scorer_attn_dropout: float = 0.1  # training only (cross-attn scorer)
    calibrator_dropout: float = 0.1  # training only
    problem_type: str = "single_label_classification"  # training only; informational

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], where: str) -> "GLiClassSettings":
        """Validate a ``config.json`` dict; ``where`` names it in error messages."""
        return _read(raw, where)


def encoder_config(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """The encoder's config dict to build it from: ``model_type`` defaults to "deberta-v2" and the
    vocabulary is sized to the GLiClass ``vocab_size`` (the reference resizes the embeddings to it).
    T5-family encoders must be built as ``T5EncoderModel``/``UMT5EncoderModel``, as the reference does."""
    config = dict(raw.get("encoder_config") or {})
    config.setdefault("model_type", "deberta-v2")
    if raw.get("vocab_size") is not None:
        config["vocab_size"] = raw["vocab_size"]
    return config


def _fail(where: str, message: str) -> CheckpointError:
    return CheckpointError(f"{where}: {message}")


_KINDS = {bool: "true or false", int: "an integer", str: "a string", (int, float): "a number",
          (str, int): "a string or an integer"}


def _get(raw: Mapping[str, Any], key: str, default: Any, kind: Any, where: str) -> Any:
    value = raw.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _fail(where, f"GLiClass config key {key!r} must be {_KINDS[kind]}, not {value!r}; "
                           "the checkpoint's config.json is corrupt.")
    return value


def _read(raw: Mapping[str, Any], where: str) -> GLiClassSettings:
    architecture = _get(raw, "architecture_type", "uni-encoder", str, where)
    if architecture != "uni-encoder":
        raise _fail(where, f"GLiClass architecture_type {architecture!r} is not supported; spacy-gliner2 runs "
                           "'uni-encoder' checkpoints (every released GLiClass model)")
    encoder = raw.get("encoder_config")
    if not isinstance(encoder, Mapping):
        raise _fail(where, "GLiClass config.json has no 'encoder_config' object: cannot build the encoder.")
    encoder_type = encoder.get("model_type") or "deberta-v2"
    if encoder_type in LLM2VEC_ENCODERS or _get(raw, "multimodal", False, bool, where):
        raise _fail(where, f"GLiClass encoder {encoder_type!r} needs llm2vec/multimodal support, which "
                           "spacy-gliner2 does not have; supported encoders are bidirectional ones "
                           "(DeBERTa-v2/v3, BERT, RoBERTa, ModernBERT, T5 encoders).")
    encoder_hidden = encoder.get("hidden_size", encoder.get("d_model"))
    if not isinstance(encoder_hidden, int) or isinstance(encoder_hidden, bool) or encoder_hidden <= 0:
        raise _fail(where, "GLiClass encoder_config has no positive integer 'hidden_size'.")
    vocab_size = _get(raw, "vocab_size", encoder.get("vocab_size"), int, where)

    if _get(raw, "squeeze_layers", False, bool, where):
        raise _fail(where, "GLiClass squeeze_layers=true is not supported (the reference cannot run it "
                           "either: its layer-wise attention fails with a shape error); supported: "
                           "squeeze_layers=false, the last encoder layer.")
    layer = _get(raw, "encoder_layer_id", -1, int, where)
    if layer != -1:
        raise _fail(where, f"GLiClass encoder_layer_id={layer} is not supported (the reference's pipeline "
                           "crashes on it); supported: encoder_layer_id=-1, the last encoder layer.")

    def token(key: str, offset: int) -> int:
        value = _get(raw, key, -1, int, where)
        return vocab_size + offset if value == -1 else value

    def choice(key: str, default: str, allowed: Tuple[str, ...]) -> str:
        value = _get(raw, key, default, str, where)
        if value not in allowed:
            raise _fail(where, f"GLiClass {key} {value!r} is not supported; supported: "
                               + ", ".join(repr(a) for a in allowed) + ".")
        return value

    pooling = choice("pooling_strategy", "first", POOLINGS)
    scorer = choice("scorer_type", "simple", SCORERS)
    settings = GLiClassSettings(
        encoder_type=encoder_type,
        encoder_hidden_size=encoder_hidden,
        vocab_size=vocab_size,
        class_token_index=token("class_token_index", 0),
        text_token_index=token("text_token_index", 1),
        example_token_index=token("example_token_index", 2),
        hidden_size=_get(raw, "hidden_size", encoder_hidden, int, where),
        prompt_first=_get(raw, "prompt_first", False, bool, where),
        pooling_strategy=pooling,
        class_token_pooling=choice("class_token_pooling", "first", LABEL_POOLINGS),
        embed_class_token=_get(raw, "embed_class_token", True, bool, where),
        extract_text_features=_get(raw, "extract_text_features", False, bool, where),
        use_lstm=_get(raw, "use_lstm", False, bool, where),
        use_segment_embeddings=_get(raw, "use_segment_embeddings", False, bool, where),
        normalize_features=_get(raw, "normalize_features", False, bool, where),
        logit_scale_init_value=float(_get(raw, "logit_scale_init_value", 2.6592, (int, float), where)),
        scorer_type=scorer,
        scorer_mlp_hidden_size=_get(raw, "scorer_mlp_hidden_size", 1024, int, where),
        scorer_num_heads=_get(raw, "scorer_num_heads", 16, int, where),
        projector_hidden_act=_get(raw, "projector_hidden_act", "gelu", str, where),
        max_labels_alloc=_get(raw, "max_labels_alloc", "dynamic", (str, int), where),
        max_num_classes=_get(raw, "max_num_classes", 25, int, where),
        use_calibrator=_get(raw, "use_calibrator", False, bool, where),
        calibrator_hidden_size=_get(raw, "calibrator_hidden_size", 256, int, where),
        calibrator_beta_max=float(_get(raw, "calibrator_beta_max", 3.0, (int, float), where)),
        calibrator_use_bias=_get(raw, "calibrator_use_bias", False, bool, where),
        dropout=float(_get(raw, "dropout", 0.1, (int, float), where)),
        scorer_attn_dropout=float(_get(raw, "scorer_attn_dropout", 0.1, (int, float), where)),
        calibrator_dropout=float(_get(raw, "calibrator_dropout", 0.1, (int, float), where)),
        problem_type=str(raw.get("problem_type") or "single_label_classification"),
    )
    _check_combination(settings, where)
    return settings


def _check_combination(s: GLiClassSettings, where: str) -> None:
    """Reject option combinations the reference cannot run (or that we do not reproduce)."""
    from transformers.activations import ACT2FN

    if s.projector_hidden_act not in ACT2FN:
        raise _fail(where, f"GLiClass projector_hidden_act {s.projector_hidden_act!r} is unknown to transformers.")
    if (s.pooling_strategy == "pass") != (s.scorer_type == "cross-attn"):
        raise _fail(where, f"GLiClass pooling_strategy {s.pooling_strategy!r} with scorer_type "
                           f"{s.scorer_type!r} is not supported: the 'cross-attn' scorer needs "
                           "pooling_strategy 'pass', and 'pass' works only with 'cross-attn'.")
    if s.hidden_size != s.encoder_hidden_size and (s.scorer_type != "simple" or s.use_lstm):
        raise _fail(where, f"GLiClass hidden_size {s.hidden_size} differs from the encoder's "
                           f"{s.encoder_hidden_size}; supported only with scorer_type 'simple' and no LSTM.")
    if s.scorer_type == "cross-attn" and (s.scorer_num_heads <= 0 or s.hidden_size % s.scorer_num_heads):
        raise _fail(where, f"GLiClass scorer_num_heads {s.scorer_num_heads} does not divide hidden_size "
                           f"{s.hidden_size}.")
    alloc = s.max_labels_alloc
    if not (alloc in ("dynamic", "fixed") or (isinstance(alloc, int) and alloc > 0)):
        raise _fail(where, f"GLiClass max_labels_alloc {alloc!r} is not supported; supported: 'dynamic', "
                           "'fixed' or a positive integer.")
    if alloc != "dynamic" and s.scorer_type == "hopfield":
        raise _fail(where, f"GLiClass max_labels_alloc {alloc!r} with the 'hopfield' scorer is not supported "
                           "(its scores depend on the number of empty label slots); supported: 'dynamic'.")
    if s.use_calibrator and s.pooling_strategy == "pass":
        raise _fail(where, "GLiClass use_calibrator=true with pooling_strategy 'pass' is not supported "
                           "(the reference cannot run it either); supported: a calibrator with a pooled text vector.")

