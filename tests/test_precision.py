"""Linear layers at inference on CPU: oneDNN fp32 (exact mode), bf16 (fast mode) and int8."""
import copy

import pytest
import spacy
import torch
from test_deberta import tiny_model

from spacy_gliner2.runtime.deberta import PackedDeberta
from spacy_gliner2.gliner2.layers import SpanMarker
from spacy_gliner2.runtime.precision import (
    INT8_CHUNK_ROWS, BF16Linear, Int8Linear, OneDNNLinear, fuse_activations, int8_products_available, use_bf16_linears,
    use_onednn_linears,
)

TEXT = "Tim Cook visited Paris on Monday and met Emmanuel Macron."
SCHEMA = {"entities": ["person", "location", "date"], "classifications": {"topic": ["politics", "sports", "business"]}}


def test_bf16_linear_multiplies_bf16_values_and_keeps_the_input_dtype():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    fast = BF16Linear(linear)
    assert fast.weight.dtype == torch.bfloat16 and torch.equal(fast.weight, linear.weight.detach().bfloat16())
    assert not any(p.requires_grad for p in fast.parameters())
    x = torch.randn(3, 5, 64)
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 48)
    assert fast(x.bfloat16()).dtype == torch.bfloat16
    # the exact product of the bf16-rounded operands; oneDNN's output rounding is within rtol
    rounded = torch.nn.functional.linear(x.bfloat16().double(), fast.weight.double(), fast.bias.bfloat16().double())
    assert torch.allclose(out.double(), rounded, rtol=2**-7, atol=1e-3)
    exact = linear(x)
    assert not torch.equal(out, exact) and torch.allclose(out, exact, atol=0.05)


def test_onednn_linear_computes_the_fp32_product_and_trains_as_nn_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    fast = copy.deepcopy(linear)
    use_onednn_linears(fast)
    assert type(fast) is OneDNNLinear
    x = torch.randn(3, 5, 64)
    with torch.inference_mode():
        for inputs in (x, x.transpose(0, 1), x[:, :0]):  # 3-D, strided, empty
            out = fast(inputs)
            assert out.shape == inputs.shape[:-1] + (48,) and out.dtype == torch.float32
            assert torch.allclose(out, linear(inputs), rtol=1e-5, atol=1e-5)
    # with gradients it is nn.Linear's forward: same values, same gradients
    out = fast(x)
    out.sum().backward()
    linear(x).sum().backward()
    assert torch.equal(fast.weight.grad, linear.weight.grad)


def test_onednn_linear_packs_its_weight_once_and_follows_updates():
    """Inference multiplies a packed copy of the weight, made on first use and remade when the
    weight changes in place (an optimizer step) or is replaced; copies do not carry it."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    use_onednn_linears(layer)
    x = torch.randn(7, 64)
    with torch.no_grad():
        first = layer(x)
        packed = layer._packed_weight()
        if packed is None:
            pytest.skip("this torch build has no oneDNN linear")
        assert packed.is_mkldnn and layer._packed_weight() is packed  # packed once
        assert torch.allclose(first, torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        layer.weight.mul_(-2)  # in place: the version moves
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        assert layer._packed_weight() is not packed
        layer.weight = torch.nn.Parameter(torch.randn(48, 64))  # replaced
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        assert "_derived" not in copy.deepcopy(layer).__dict__
    with torch.inference_mode():
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["fp32", "bf16"])
def test_fused_activations_give_the_same_outputs(kind):
    """fuse_activations folds each ReLU that follows a runtime linear layer, and each exact GELU that
    follows an fp32 one, into it (oneDNN post-op); activations after other modules, tanh GELUs and
    (bf16) GELUs stay; the fused layer applies its activation also without oneDNN."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.0), torch.nn.Linear(32, 8),
                                torch.nn.ReLU(), torch.nn.Tanh(), torch.nn.ReLU(), torch.nn.Linear(8, 24), torch.nn.GELU(),
                                torch.nn.Linear(24, 8), torch.nn.GELU(approximate="tanh"))
    x = torch.randn(5, 16)
    with torch.no_grad():
        expected = model(x)
        runtime = copy.deepcopy(model)
        if kind == "bf16":
            use_bf16_linears(runtime)
        use_onednn_linears(runtime)
        unfused = runtime(x)
        fuse_activations(runtime)
        kept = "GELU" if kind == "bf16" else "Identity"
        assert [type(runtime[i]).__name__ for i in (1, 4, 6, 8, 10)] == ["Identity", "Identity", "ReLU", kept, "GELU"]
        assert [runtime[i].activation for i in (0, 3, 7, 9)] == ["relu", "relu", "none" if kind == "bf16" else "gelu", "none"]
        fused = runtime(x)
    assert (expected > 0).any() and (expected < 0).any()
    if kind == "fp32":
        assert torch.equal(fused, unfused)  # oneDNN's post-ops give the same bits
        torch.testing.assert_close(runtime(x), expected)  # with gradients (the F.linear path) they still apply
    else:
        assert torch.allclose(fused, unfused, atol=1e-6) and torch.allclose(fused, expected, atol=0.05)


def test_span_scorer_packs_its_weights_for_inference_and_follows_weight_updates():
    torch.manual_seed(0)
    scorer = SpanMarker(32, 3, dropout=0.0)
    words, queries = torch.randn(2, 6, 32), torch.randn(2, 4, 32)

    def trained() -> torch.Tensor:  # with gradients: plain slices of the weight, nothing cached
        scorer.zero_grad()
        out = scorer.score(words, queries, [6, 4])
        out[out.isfinite()].sum().backward()
        assert scorer.out_project[0].weight.grad.abs().sum() > 0  # the gradient reaches the weight
        return out.detach()

    with torch.no_grad():
        packed = scorer.score(words, queries, [6, 4])
    assert all(weight.is_mkldnn for weight in scorer._derived["weights"][1])  # the path under test ran
    assert torch.allclose(packed, trained(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        scorer.out_project[0].weight.mul_(-2)  # an optimizer-like in-place update
        again = scorer.score(words, queries, [6, 4])
    assert torch.allclose(again, trained(), rtol=1e-5, atol=1e-5) and not torch.allclose(again, packed)
    with torch.no_grad():
        scorer.out_project[3].weight.mul_(3)  # the last layer, folded into the queries, too
        again = scorer.score(words, queries, [6, 4])
    assert torch.allclose(again, trained(), rtol=1e-5, atol=1e-5)
    twin = copy.deepcopy(scorer)  # the opaque packed tensors are left out of copies
    assert not hasattr(twin, "_derived")
    with torch.no_grad():
        assert torch.equal(twin.score(words, queries, [6, 4]), again)


@pytest.mark.parametrize("kind", ["fp32", "bf16"])
def test_onednn_sees_few_row_counts(monkeypatch, kind):
    """oneDNN caches a kernel per input row count: the layers pad rows to padded_rows' counts."""
    from spacy_gliner2.runtime import precision

    if precision._ONEDNN_LINEAR is None:
        pytest.skip("this torch build has no oneDNN")
    seen = set()

    def recording(x, *args):
        seen.add(x.shape[0])
        return real(x, *args)

    real = precision._ONEDNN_LINEAR
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16)
    layer = BF16Linear(linear) if kind == "bf16" else copy.deepcopy(linear)
    if kind == "bf16" and layer._packed is None:
        pytest.skip("oneDNN runs no bf16 products on this CPU (no AVX512-BF16 or AMX): bf16 layers use torch")
    use_onednn_linears(layer)
    monkeypatch.setattr(precision, "_ONEDNN_LINEAR", recording)
    with torch.inference_mode():
        for rows in range(1, 200):
            x = torch.randn(rows, 32)
            out = layer(x)
            assert out.shape == (rows, 16) and out.dtype == torch.float32
            assert torch.allclose(out, linear(x), atol=1e-5 if kind == "fp32" else 0.05)
    assert seen == set(range(16, 209, 16))


def test_padded_rows_are_few_and_waste_little():
    """Row counts up to 2**14 pad to multiples of 16 below 512 and 32 counts per doubling above,
    wasting under 1/32 of the rows above 512; the int8 layer's padded chunks stay inside its
    padded output."""
    from spacy_gliner2.runtime.precision import INT8_CHUNK_ROWS, padded_rows

    padded = [padded_rows(n) for n in range(1, 2**14 + 1)]
    assert padded_rows(0) == 0 and all(p >= n for n, p in enumerate(padded, 1))
    assert len(set(padded)) == 31 + 32 * 5 + 1  # 16 .. 496, 32 per doubling from 512, 2**14
    assert max((p - n) / n for n, p in enumerate(padded, 1) if n > 512) < 1 / 32
    for rows in range(1, 4 * INT8_CHUNK_ROWS):
        last = (rows - 1) // INT8_CHUNK_ROWS * INT8_CHUNK_ROWS
        assert last + padded_rows(rows - last) <= padded_rows(rows)


needs_int8 = pytest.mark.skipif(not int8_products_available(), reason="no torch._int_mm on this CPU build")


@needs_int8
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_close_to_fp32_across_chunks(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40, bias=bias)
    layer = Int8Linear(linear)
    assert layer.weight_t.dtype == torch.int8 and layer.weight_t.shape == (96, 40)
    for shape in [(0, 96), (1, 96), (3, INT8_CHUNK_ROWS + 7, 96)]:  # empty, one row, several chunks
        x = torch.randn(shape)
        with torch.inference_mode():
            out, exact = layer(x), linear(x)
        assert out.shape == exact.shape and out.dtype == torch.float32
        if x.numel():
            error = (out - exact).abs().max() / exact.abs().max()
            assert 0 < error < 0.02  # int8, not exact: within 2 % of the largest output
    x = torch.randn(2, 96)
    x[1] = 0  # an all-zero row: zeros out, plus the bias
    with torch.inference_mode():
        half, exact = layer(x.bfloat16()), layer(x)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), exact, rtol=2**-7, atol=1e-2)
    assert torch.equal(exact[1], torch.zeros(40) if linear.bias is None else linear.bias.detach())


@needs_int8
def test_int8_linear_scales_each_row_on_its_own():
    """One huge token does not coarsen the other tokens' quantization (per-tensor scales would)."""
    torch.manual_seed(1)
    layer = Int8Linear(torch.nn.Linear(64, 32))
    rows = torch.randn(INT8_CHUNK_ROWS - 1, 64)
    huge = torch.full((1, 64), 1e4)
    with torch.inference_mode():
        alone, beside = layer(rows), layer(torch.cat([rows, huge]))[:-1]
    assert torch.equal(alone, beside)


@needs_int8
def test_int8_pipeline_quantizes_the_feed_forward_layers_only(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "precision": "int8", **SCHEMA})
    runtime = nlp.get_pipe("gliner2").runner.runtime_model
    quantized = {name for name, m in runtime.named_modules() if isinstance(m, Int8Linear)}
    n_layers = runtime.encoder.config.num_hidden_layers
    assert len(quantized) == 2 * n_layers
    assert all(name.endswith(("intermediate.dense", "output.dense")) and "attention" not in name for name in quantized)
    doc = nlp(TEXT)
    assert doc._.gliner2["entities"].keys() == {"person", "location", "date"} and set(doc.cats) == {"politics", "sports", "business"}


def test_cpu_inference_runs_a_copy_with_onednn_linears_sharing_the_weights(checkpoint_factory):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(checkpoint_factory("deberta", "count_lstm")), **SCHEMA})
    nlp(TEXT)
    extractor = nlp.get_pipe("gliner2").runner
    runtime, model = extractor.runtime_model, extractor.model
    assert runtime is not model
    assert any(type(m) is OneDNNLinear for m in runtime.modules())
    assert not any(type(m) is torch.nn.Linear for m in runtime.modules())
    assert not any(type(m) is OneDNNLinear for m in model.modules())  # training and saving see nn.Linear
    shared = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() in shared for p in runtime.parameters())  # no second copy of any weight
    extractor.invalidate()
    assert extractor.runtime_model is not runtime  # rebuilt after the weights changed


def test_use_bf16_linears_replaces_every_linear():
    model = tiny_model()
    before = {name: m.weight.detach().clone() for name, m in model.encoder.named_modules() if type(m) is torch.nn.Linear}
    use_bf16_linears(model.encoder)
    after = {name: m for name, m in model.encoder.named_modules() if type(m) is BF16Linear}
    assert before and after.keys() == before.keys()
    assert not any(type(m) is torch.nn.Linear for m in model.encoder.modules())
    assert all(torch.equal(after[name].weight, weight.bfloat16()) for name, weight in before.items())


def test_packed_deberta_in_bf16_stays_close_to_fp32():
    torch.manual_seed(0)
    model = tiny_model(layers=3)
    fast = copy.deepcopy(model)
    use_bf16_linears(fast.encoder)
    lengths = [7, 90, 1]
    ids = torch.randint(5, 300, (len(lengths), max(lengths)))
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    with torch.inference_mode():
        exact = PackedDeberta(model)(ids, mask)
        packed = PackedDeberta(fast)(ids, mask)
        standard = fast(input_ids=ids, attention_mask=mask).last_hidden_state  # transformers' forward
    assert packed.dtype == torch.float32
    real = mask.bool()
    assert not torch.equal(packed[real], exact[real])
    assert torch.allclose(packed[real], exact[real], atol=0.05)
    assert torch.allclose(packed[real], standard[real], atol=0.05)
    assert not packed[~real].any()


@pytest.mark.parametrize("encoder,counting_layer", [
    ("bert", "count_lstm"), ("deberta", "count_lstm"), ("deberta", "count_lstm_v2"), ("bert", "count_lstm_moe")])
def test_bf16_pipeline_is_close_to_exact_and_saves_fp32(checkpoint_factory, encoder, counting_layer, tmp_path):
    from safetensors.torch import load_file

    path = checkpoint_factory(encoder, counting_layer)
    schema = {**SCHEMA, "structures": {"meeting": ["who::list", "where::str"]}}
    exact, fast = (spacy.blank("en") for _ in range(2))
    exact.add_pipe("gliner2", config={"model": str(path), **schema})
    fast.add_pipe("gliner2", config={"model": str(path), **schema, "precision": "bf16"})
    expected, got = exact(TEXT), fast(TEXT)
    pipe = fast.get_pipe("gliner2")
    runtime, model = pipe.runner.runtime_model, pipe.runner.model
    assert all(type(m) is not torch.nn.Linear for m in runtime.encoder.modules())
    assert any(type(m) is BF16Linear for m in runtime.encoder.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the heads multiply in bf16 too, but for the span scorer's output projection (read as weights, fp32)
    scorer = runtime.span_rep.span_rep_layer
    assert all(type(m) is BF16Linear for m in (scorer.project_start[0], runtime.classifier[0], runtime.count_pred[2]))
    assert all(p.dtype == torch.float32 for p in scorer.out_project.parameters())
    assert any(type(m) is BF16Linear for m in runtime.count_embed.modules())  # projector / projectors / router
    transformers = [m for t in runtime.modules() if isinstance(t, torch.nn.TransformerEncoder) for m in t.modules()]
    assert (counting_layer == "count_lstm_v2") == bool(transformers)
    assert not any(type(m) is BF16Linear for m in transformers)  # its fast path reads the weights: fp32
    # every count layer runs with bf16 MLPs around it (random weights: instance counts may tie, so not compared)
    assert got._.gliner2["structures"].keys() == expected._.gliner2["structures"].keys() == {"meeting"}
    # the copy shares what it does not convert (no second embedding table in memory)
    embeddings = model.encoder.get_input_embeddings().weight
    assert runtime.encoder.get_input_embeddings().weight.data_ptr() == embeddings.data_ptr()
    found = {(label, s["start"], s["end"]): s["confidence"] for label, spans in got._.gliner2["entities"].items() for s in spans}
    for label, spans in expected._.gliner2["entities"].items():
        for s in spans:
            if (label, s["start"], s["end"]) in found:
                assert abs(found[label, s["start"], s["end"]] - s["confidence"]) < 0.05
    assert got.cats.keys() == expected.cats.keys()
    assert all(abs(got.cats[k] - expected.cats[k]) < 0.05 for k in expected.cats)
    fast.to_disk(tmp_path / "p")
    saved = load_file(tmp_path / "p" / "gliner2" / "model" / "model.safetensors")
    original = load_file(path / "model.safetensors")
    assert all(torch.equal(saved[k], original[k]) for k in original)


def test_cpu_bf16_detection_reads_the_flags(tmp_path):
    from spacy_gliner2.runtime.precision import cpu_has_bf16_units

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_has_bf16_units(info) is True
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert cpu_has_bf16_units(info) is False
    assert cpu_has_bf16_units(tmp_path / "missing") is None


def test_bf16_without_bf16_units_warns(bert_checkpoint, monkeypatch):
    from spacy_gliner2.core import runner as inference

    monkeypatch.setattr(inference, "cpu_has_bf16_units", lambda: False)
    nlp = spacy.blank("en")
    with pytest.warns(UserWarning, match="no bf16 units"):
        nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), **SCHEMA, "precision": "bf16"})
        nlp(TEXT)


def test_half_precision_deberta_runs_the_packed_forward():
    """The GPU modes convert the whole model; the packed forward then runs in that dtype."""
    torch.manual_seed(0)
    model = tiny_model()
    half = copy.deepcopy(model).to(torch.bfloat16)
    ids, mask = torch.randint(5, 300, (2, 40)), torch.ones(2, 40, dtype=torch.long)
    with torch.inference_mode():
        exact, got = PackedDeberta(model)(ids, mask), PackedDeberta(half)(ids, mask)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), exact, atol=0.1)


def test_fp16_on_cpu_is_refused(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), **SCHEMA, "precision": "fp16"})
    with pytest.raises(ValueError, match="'fp16' runs on GPU"):
        nlp(TEXT)
