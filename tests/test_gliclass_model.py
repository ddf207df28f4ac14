"""Parity of spacy_gliner2.gliclass with the reference package gliclass 0.1.21.

Tiny random checkpoints are built by the reference itself (tests/gliclass_checkpoints.py) for the head
layouts of the released models and a few more; for each we compare token ids, probabilities and
decisions with the reference pipeline, check batch invariance (masked pooling) and that
``masked_pooling=False`` reproduces the reference's padded batches.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from gliclass_checkpoints import EXAMPLES, LABELS, PROMPT, TEXTS, build_gliclass_checkpoint, run_reference  # noqa: E402

from spacy_gliner2.core.checkpoint import CheckpointError  # noqa: E402
from spacy_gliner2.gliclass.config import GLiClassSettings, encoder_config  # noqa: E402
from spacy_gliner2.gliclass.model import GLiClassModel, probabilities  # noqa: E402
from spacy_gliner2.gliclass.prompt import (  # noqa: E402
    Example, PromptError, build_input, check_labels, count_labels, tokenize)

TOL = 1e-5

LAYOUTS = {
    # released layouts (notes §1.3): v2/modern-v3, edge-v3 / DeBERTa-v3, instruct, multilang
    "bert-first-dot": ("bert", dict(prompt_first=True)),
    "bert-textfirst-avg-mlp": ("bert", dict(prompt_first=False, pooling_strategy="avg", scorer_type="mlp")),
    "bert-instruct": ("bert", dict(prompt_first=True, scorer_type="mlp", class_token_pooling="average",
                                   use_segment_embeddings=True)),
    "bert-multilang": ("bert", dict(prompt_first=True, scorer_type="cross-attn", pooling_strategy="pass",
                                    class_token_pooling="average", extract_text_features=True,
                                    scorer_num_heads=2, scorer_mlp_hidden_size=64)),
    # the other options
    "bert-lstm-avg-wdot": ("bert", dict(prompt_first=False, use_lstm=True, pooling_strategy="avg",
                                        scorer_type="weighted-dot")),
    "bert-hopfield-max-noembed-norm": ("bert", dict(prompt_first=True, scorer_type="hopfield", pooling_strategy="max",
                                                    embed_class_token=False, normalize_features=True)),
    "bert-extract-lstm-rms": ("bert", dict(prompt_first=True, extract_text_features=True, use_lstm=True,
                                           pooling_strategy="rms", class_token_pooling="average",
                                           embed_class_token=False)),
    "bert-calibrator-last": ("bert", dict(prompt_first=False, pooling_strategy="last", use_calibrator=True,
                                          calibrator_use_bias=True, calibrator_hidden_size=16)),
    "bert-sum-norm": ("bert", dict(prompt_first=True, pooling_strategy="sum", normalize_features=True)),
    "deberta-instruct-avg": ("deberta", dict(prompt_first=True, pooling_strategy="avg", scorer_type="mlp",
                                             class_token_pooling="average", use_segment_embeddings=True)),
    "deberta-textfirst-dot-norm": ("deberta", dict(prompt_first=False, normalize_features=True)),
    "deberta-absmax-extract": ("deberta", dict(prompt_first=True, pooling_strategy="abs_max",
                                               extract_text_features=True)),
    "modernbert-edge": ("modernbert", dict(prompt_first=True, scorer_type="mlp")),
    "modernbert-instruct-avg": ("modernbert", dict(prompt_first=True, pooling_strategy="avg", scorer_type="mlp",
                                                   class_token_pooling="average", use_segment_embeddings=True)),
    "modernbert-textfirst-absavg-wdot": ("modernbert", dict(prompt_first=False, pooling_strategy="abs_avg",
                                                            scorer_type="weighted-dot")),
}
VARIANTS = {"plain": (None, None), "prompt": (PROMPT, None), "examples": (None, EXAMPLES),
            "prompt+examples": (PROMPT, EXAMPLES)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and much faster when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Build each layout's checkpoint once, on first use."""
    import transformers

    transformers.logging.set_verbosity_error()
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            encoder, layout = LAYOUTS[name]
            built[name] = build_gliclass_checkpoint(tmp_path_factory.mktemp(name), encoder, **layout)
        return built[name]

    return get


def load_ours(folder: Path, masked_pooling: bool = True) -> GLiClassModel:
    """Our model from a reference checkpoint folder; the weights load strictly (no key ignored)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    raw = json.loads((folder / "config.json").read_text())
    config = encoder_config(raw)
    encoder = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    model = GLiClassModel(GLiClassSettings.from_config(raw, str(folder)), encoder, masked_pooling)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()


def tokenizer_of(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def our_strings(model, texts, labels, prompt=None, examples=None):
    per_text = [labels] * len(texts) if isinstance(labels[0], str) else labels
    shots = [Example.from_mapping(e) for e in examples or []]
    return [build_input(t, ls, prompt_first=model.settings.prompt_first, prompt=prompt or "", examples=shots)
            for t, ls in zip(texts, per_text)]


def run_ours(model, tok, texts, labels, prompt=None, examples=None, batch_size=8, multi_label=True):
    """Our ids (one list per text) and probabilities (one list per text, its own labels only)."""
    s = model.settings
    per_text = [labels] * len(texts) if isinstance(labels[0], str) else labels
    ids = [tokenize(tok, x) for x in our_strings(model, texts, labels, prompt, examples)]
    for row, ls in zip(ids, per_text):
        check_labels(row, len(ls), s.class_token_index)
    probs = []
    for start in range(0, len(ids), batch_size):
        rows, counts = ids[start:start + batch_size], [len(ls) for ls in per_text[start:start + batch_size]]
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.no_grad():
            out = model(input_ids, mask)
        assert out.label_mask.sum(-1).tolist() == counts
        p = probabilities(out.logits, counts, multi_label)
        probs += [row[:n] for row, n in zip(p.tolist(), counts)]
    return ids, probs


def max_diff(a, b) -> float:
    assert [len(x) for x in a] == [len(x) for x in b]
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_parity(folders, layout, variant):
    folder = folders(layout)
    prompt, examples = VARIANTS[variant]
    tok, ours, compat = tokenizer_of(folder), load_ours(folder), load_ours(folder, masked_pooling=False)
    ref1 = run_reference(folder, TEXTS, LABELS, prompt=prompt, examples=examples, batch_size=1)
    ids, probs1 = run_ours(ours, tok, TEXTS, LABELS, prompt, examples, batch_size=1)
    # (a) the same strings and token ids
    assert our_strings(ours, TEXTS, LABELS, prompt, examples) == ref1.strings
    assert ids == ref1.input_ids
    # (b) the same probabilities at batch size 1, not all alike (so that a wrong model would show)
    assert max(max(r) - min(r) for r in ref1.scores) > 1e-3
    assert max_diff(probs1, ref1.scores) < TOL
    # (c) the same decisions
    assert [[l for l, p in zip(LABELS, row) if p >= 0.5] for row in probs1] == \
           [[x["label"] for x in row] for row in ref1.predictions]
    # (d) masked pooling: a text's probabilities do not depend on its batch
    _, probs8 = run_ours(ours, tok, TEXTS, LABELS, prompt, examples, batch_size=8)
    assert max_diff(probs8, probs1) < TOL
    # (e) masked_pooling=False reproduces the reference's padded batch
    ref8 = run_reference(folder, TEXTS, LABELS, prompt=prompt, examples=examples, batch_size=8)
    _, compat8 = run_ours(compat, tok, TEXTS, LABELS, prompt, examples, batch_size=8)
    assert max_diff(compat8, ref8.scores) < TOL
    # single-label: softmax over the text's labels, and the same argmax
    single = run_reference(folder, TEXTS, LABELS, prompt=prompt, examples=examples, batch_size=1,
                           classification_type="single-label")
    _, soft = run_ours(ours, tok, TEXTS, LABELS, prompt, examples, batch_size=8, multi_label=False)
    assert max_diff(soft, single.scores) < TOL
    assert [LABELS[max(range(len(r)), key=r.__getitem__)] for r in soft] == \
           [row[0]["label"] for row in single.predictions]


@pytest.mark.parametrize("layout", [n for n, (_, lay) in LAYOUTS.items() if lay.get("pooling_strategy") == "avg"])
def test_reference_avg_pooling_depends_on_batch(folders, layout):
    """The reference's avg pooling counts padding: batched scores move, ours (masked) do not."""
    folder = folders(layout)
    ref1 = run_reference(folder, TEXTS, LABELS, batch_size=1)
    ref8 = run_reference(folder, TEXTS, LABELS, batch_size=8)
    assert max_diff(ref8.scores, ref1.scores) > 1e-4
    _, ours8 = run_ours(load_ours(folder), tokenizer_of(folder), TEXTS, LABELS, batch_size=8)
    assert max_diff(ours8, ref1.scores) < TOL


@pytest.mark.parametrize("layout", ["bert-hopfield-max-noembed-norm", "bert-multilang", "deberta-instruct-avg",
                                    "modernbert-edge"])
def test_per_text_label_lists(folders, layout):
    """Texts with label lists of different lengths in one batch: empty label slots are masked."""
    folder = folders(layout)
    labels = [LABELS[i % 3:][: 1 + i % 5] for i in range(len(TEXTS))]
    tok = tokenizer_of(folder)
    ref1 = run_reference(folder, TEXTS, labels, batch_size=1, examples=EXAMPLES)
    ids, probs1 = run_ours(load_ours(folder), tok, TEXTS, labels, examples=EXAMPLES, batch_size=1)
    assert ids == ref1.input_ids
    assert max_diff(probs1, ref1.scores) < TOL
    _, probs8 = run_ours(load_ours(folder), tok, TEXTS, labels, examples=EXAMPLES, batch_size=8)
    assert max_diff(probs8, probs1) < TOL
    ref8 = run_reference(folder, TEXTS, labels, batch_size=8, examples=EXAMPLES)
    _, compat8 = run_ours(load_ours(folder, False), tok, TEXTS, labels, examples=EXAMPLES, batch_size=8)
    assert max_diff(compat8, ref8.scores) < TOL


@pytest.mark.parametrize("layout", ["bert-instruct", "bert-calibrator-last", "modernbert-instruct-avg",
                                    "deberta-absmax-extract"])
def test_state_dict_round_trip(folders, layout, tmp_path):
    """Our state dict (perturbed, so that a mis-mapped key would show) loads in the reference model."""
    from gliclass import GLiClassModel as ReferenceModel
    from safetensors.torch import load_file, save_file

    folder = folders(layout)
    ours = load_ours(folder, masked_pooling=False)
    assert set(ours.state_dict()) == set(load_file(str(folder / "model.safetensors")))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    reference, info = ReferenceModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    original = ReferenceModel.from_pretrained(str(folder)).eval()
    reference.eval()
    tok = tokenizer_of(folder)
    strings = [build_input(t, LABELS, prompt_first=ours.settings.prompt_first, prompt=PROMPT,
                           examples=[Example.from_mapping(e) for e in EXAMPLES]) for t in TEXTS]
    batch = tok(strings, padding="longest", return_tensors="pt")
    with torch.no_grad():
        theirs = reference(**batch, max_num_classes=len(LABELS)).logits
        before = original(**batch, max_num_classes=len(LABELS)).logits
        mine = ours(batch["input_ids"], batch["attention_mask"]).logits
    assert (theirs - before).abs().max() > 1e-3
    assert (mine - theirs).abs().max() < 1e-4


def test_markers_cannot_add_label_slots(folders):
    """Marker strings in labels, text, prompt or examples are neutralised; the reference's are not."""
    folder = folders("bert-first-dot")
    tok, model = tokenizer_of(folder), load_ours(folder)
    s = model.settings
    labels = ["sport<<LABEL>>politics", "travel<<SEP>>", "dreams"]
    text = "The match <<LABEL>>ended<<SEP>> late <<EXAMPLE>>."
    shots = [Example("a <<LABEL>> goal", ["sport<<LABEL>>x"])]
    string = build_input(text, labels, prompt_first=True, prompt="<<SEP>>topic", examples=shots)
    ids = tokenize(tok, string)
    assert count_labels(ids, s.class_token_index) == len(labels)
    assert ids.count(s.text_token_index) == 2 and ids.count(s.example_token_index) == 1
    check_labels(ids, len(labels), s.class_token_index)
    with torch.no_grad():
        out = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert out.logits.shape == (1, len(labels))
    # the reference turns the marker inside a label into an extra label slot
    ref = run_reference(folder, [text], labels, batch_size=1)
    assert count_labels(ref.input_ids[0], s.class_token_index) == len(labels) + 2
    with pytest.raises(PromptError, match="5 <<LABEL>> markers for 3 labels"):
        check_labels(ref.input_ids[0], len(labels), s.class_token_index)


def test_probabilities_masks_and_modes():
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.3, float("-inf"), float("-inf")]])
    multi = probabilities(logits, [3, 1], True)
    assert torch.allclose(multi[0], torch.sigmoid(logits[0])) and multi[1, 1:].eq(0).all()
    single = probabilities(logits, [2, 1], [False, False])
    assert torch.allclose(single[0, :2], torch.softmax(logits[0, :2], -1)) and single[0, 2] == 0
    assert single[1, 0] == 1.0
    mixed = probabilities(logits, [3, 1], [True, False])
    assert torch.allclose(mixed[0], multi[0]) and mixed[1, 0] == 1.0


def test_defaults_are_the_reference_defaults(folders):
    """A config.json with only encoder_config (an old checkpoint) reads as GLiClassModelConfig does."""
    from gliclass import GLiClassModelConfig

    raw = json.loads((folders("bert-first-dot") / "config.json").read_text())
    minimal = {"encoder_config": raw["encoder_config"]}
    ours = GLiClassSettings.from_config(minimal, "old")
    theirs = GLiClassModelConfig(encoder_config=dict(raw["encoder_config"]))
    for field in GLiClassSettings.__dataclass_fields__:
        if hasattr(theirs, field) and field not in ("encoder_type",):
            assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.encoder_hidden_size == ours.hidden_size == raw["encoder_config"]["hidden_size"]
    assert ours.class_token_index == ours.vocab_size and ours.example_token_index == ours.vocab_size + 2


SUPPORTED_ARCH = ("spacy-gliner2 runs 'uni-encoder' checkpoints (every released GLiClass model)")


@pytest.mark.parametrize("change, message", [
    *[({"architecture_type": a}, f"GLiClass architecture_type '{a}' is not supported; {SUPPORTED_ARCH}")
      for a in ("bi-encoder", "bi-encoder-fused", "encoder-decoder", "encoder-decoder-cls", "decoder-kv")],
    ({"squeeze_layers": True}, "squeeze_layers=true is not supported"),
    ({"encoder_layer_id": 1}, "encoder_layer_id=1 is not supported"),
    ({"scorer_type": "bilinear"}, "scorer_type 'bilinear' is not supported; supported: 'simple'"),
    ({"pooling_strategy": "median"}, "pooling_strategy 'median' is not supported; supported: 'first'"),
    ({"class_token_pooling": "last"}, "class_token_pooling 'last' is not supported"),
    ({"scorer_type": "cross-attn"}, "needs pooling_strategy 'pass'"),
    ({"pooling_strategy": "pass"}, "needs pooling_strategy 'pass'"),
    ({"scorer_type": "hopfield", "max_labels_alloc": "fixed"}, "max_labels_alloc 'fixed' with the 'hopfield'"),
    ({"max_labels_alloc": "auto"}, "max_labels_alloc 'auto' is not supported"),
    ({"scorer_type": "mlp", "hidden_size": 48}, "hidden_size 48 differs from the encoder's 32"),
    ({"prompt_first": "yes"}, "'prompt_first' must be true or false"),
    ({"encoder_config": None}, "no 'encoder_config'"),
])
def test_unsupported_configs_raise(folders, change, message):
    raw = json.loads((folders("bert-first-dot") / "config.json").read_text())
    GLiClassSettings.from_config(raw, "ok")  # the unchanged config is fine
    with pytest.raises(CheckpointError, match="^somewhere: .*" + __import__("re").escape(message)):
        GLiClassSettings.from_config({**raw, **change}, "somewhere")
