"""The compiled attention kernel (spacy_gliner2/model/native.py, attention.c)."""
import os
import shutil

import pytest
import torch
from test_deberta import tiny_model

from spacy_gliner2.runtime import deberta, native
from spacy_gliner2.runtime.deberta import PackedDeberta
from spacy_gliner2.runtime.precision import use_bf16_linears

COMPILER = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
pytestmark = [
    pytest.mark.skipif(native._unavailable_because() is not None,
                       reason=f"native kernel not for this machine: {native._unavailable_because()}"),
    pytest.mark.skipif(COMPILER is None, reason="no C compiler to build the kernel with"),
]
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    native._unavailable_because(torch.bfloat16) is not None, reason="no AVX512-BF16"))]


def expected_attention(q, k, v, heads, c2p, p2c, scale, rows=None, reach=None):
    """The kernel's definition, computed directly in float64 with index tensors."""
    n = q.shape[0]
    qh, kh, vh = (x.double().view(n, heads, -1).transpose(0, 1) for x in (q, k, v))
    scores = qh @ kh.transpose(1, 2)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    if c2p is not None:  # q_i . c2p[j - i + n - 1]
        scores += (qh[:, :, None, :] * c2p.double()[:, j - i + n - 1]).sum(-1)
    if p2c is not None:  # k_j . p2c[i - j + n - 1]
        scores += (kh[:, None, :, :] * p2c.double()[:, i - j + n - 1]).sum(-1)
    if reach is not None:  # a sliding window: keys |j - i| <= reach only
        scores = scores.masked_fill((i - j).abs() > reach, float("-inf"))
    out = ((scores * scale).softmax(-1) @ vh).transpose(0, 1).reshape(n, -1)
    return out if rows is None else out[rows]


def close(got, want, dtype):
    """fp32: float rounding; bf16: the output's own rounding (8 significant bits) on top."""
    rtol = 2**-8 if dtype == torch.bfloat16 else 1e-5
    return torch.allclose(got.double(), want, rtol=rtol, atol=1e-5 * want.abs().max().item())


def test_the_kernel_builds_where_it_can():
    assert native.kernels_available()  # the build did not fail (a failure would warn and fall back)
    assert not native.kernels_available(torch.float16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 31, 32, 33, 70, 129])
@pytest.mark.parametrize("dh", [64, 6])
@pytest.mark.parametrize("tables", ["both", "c2p", "p2c", "none"])
def test_attention_matches_its_definition(dtype, n, dh, tables):
    torch.manual_seed(n * 100 + dh)
    heads = 3
    rows = torch.randn(n, 4 * heads * dh).to(dtype)  # q, k and v as strided column blocks of one tensor
    q, k, v = (rows[:, i * heads * dh : (i + 1) * heads * dh] for i in range(3))
    c2p = torch.randn(heads, 2 * n - 1, dh).to(dtype) if tables in ("both", "c2p") else None
    p2c = torch.randn(heads, 2 * n - 1, dh).to(dtype) if tables in ("both", "p2c") else None
    got = native.packed_attention(q, k, v, [n], heads, c2p, p2c, 0.125)
    assert got.dtype == dtype and got.shape == (n, heads * dh)
    assert close(got, expected_attention(q, k, v, heads, c2p, p2c, 0.125), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reach", [0, 1, 15, 16, 40, 64])
def test_a_sliding_window_matches_its_definition(dtype, reach):
    """Packed sequences shorter and longer than the window, all rows and chosen ones (sparse,
    at block edges, none): each row reads the keys within ``reach`` of it only."""
    torch.manual_seed(reach)
    heads, dh, lengths = 3, 64, [1, 2 * reach + 1, 2 * reach + 2, 33, 160, 0, 97]
    tokens = sum(lengths)
    q, k, v = (torch.randn(tokens, heads * dh).to(dtype) for _ in range(3))
    chosen = [torch.tensor(sorted({r for r in (0, 31, 32, 33, n - 1, n // 2) if 0 <= r < n}), dtype=torch.long)
              for n in lengths]
    chosen[3] = torch.tensor([], dtype=torch.long)
    for rows in (None, chosen):
        got = native.packed_attention(q, k, v, lengths, heads, None, None, 0.125, rows, reach=reach)
        want, start = [], 0
        for s, n in enumerate(lengths):
            if n:
                mine = [x[start : start + n] for x in (q, k, v)]
                want.append(expected_attention(*mine, heads, None, None, 0.125, None if rows is None else rows[s], reach))
            start += n
        assert close(got, torch.cat(want), dtype)
    every = native.packed_attention(q, k, v, lengths, heads, None, None, 0.125, reach=reach)
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    assert torch.equal(every[torch.cat([r + a for r, a in zip(chosen, starts)])], got)  # rows do not depend on the others


@pytest.mark.parametrize("dtype", DTYPES)
def test_chosen_rows_are_written_into_the_given_rows(dtype):
    torch.manual_seed(2)
    heads, dh, n = 2, 64, 40
    q, k, v = (torch.randn(n, heads * dh).to(dtype) for _ in range(3))
    table = torch.randn(heads, 2 * n - 1, dh).to(dtype)
    chosen = torch.tensor([0, 3, 4, 17, 39])
    out = torch.full((7, 2 * heads * dh), 5.0).to(dtype)  # rows 1-5, left half: a strided view
    native.packed_attention(q, k, v, [n], heads, table, table, 0.1, [chosen], out=out[1:6, : heads * dh])
    assert close(out[1:6, : heads * dh], expected_attention(q, k, v, heads, table, table, 0.1, chosen), dtype)
    untouched = torch.ones_like(out, dtype=torch.bool)
    untouched[1:6, : heads * dh] = False
    assert (out[untouched] == 5).all()
    every = native.packed_attention(q, k, v, [n], heads, table, table, 0.1)
    assert torch.equal(every[chosen], out[1:6, : heads * dh])  # rows do not depend on which others are chosen


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequences_of_one_call_each_attend_to_their_own_tokens(dtype):
    """Packed sequences (one empty, one with no chosen row) in one call: each sequence's rows equal
    its own attention with the middle of the longest one's tables, written one after another."""
    torch.manual_seed(3)
    heads, dh, lengths = 3, 64, [5, 0, 33, 17, 1, 9]
    longest, tokens = max(lengths), sum(lengths) + 4  # rows past the sequences are not read
    q, k, v = (torch.randn(tokens, heads * dh).to(dtype) for _ in range(3))
    c2p, p2c = (torch.randn(heads, 2 * longest - 1, dh).to(dtype) for _ in range(2))
    chosen = [torch.tensor([0, 4]), torch.tensor([], dtype=torch.long), torch.arange(0, 33, 3), torch.tensor([], dtype=torch.long),
              torch.tensor([0]), torch.arange(9)]
    for rows in (None, chosen):
        got = native.packed_attention(q, k, v, lengths, heads, c2p, p2c, 0.1, rows)
        want, start = [], 0
        for s, n in enumerate(lengths):
            middle = slice(longest - n, longest + n - 1)
            if n:
                mine = [x[start : start + n] for x in (q, k, v)]
                want.append(expected_attention(*mine, heads, c2p[:, middle], p2c[:, middle], 0.1, None if rows is None else rows[s]))
            start += n
        assert close(got, torch.cat(want), dtype)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(native.packed_attention(q, k, v, lengths, heads, c2p, p2c, 0.1, chosen), got)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_tables_and_thread_counts_give_the_same_attention(dtype):
    torch.manual_seed(1)
    heads, dh, n = 4, 64, 50
    q, k, v = (torch.randn(n, heads * dh).to(dtype) for _ in range(3))
    full = torch.randn(heads, 2 * 80 - 1, dh).to(dtype)  # a longer table: its middle rows are a strided view
    c2p = full[:, 80 - n : 80 + n - 1]
    p2c = c2p.flip(1).contiguous()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.packed_attention(q, k, v, [n], heads, c2p, p2c, 0.1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(native.packed_attention(q, k, v, [n], heads, c2p, p2c, 0.1), one)
    assert close(one, expected_attention(q, k, v, heads, c2p, p2c, 0.1), dtype)


@pytest.mark.parametrize("bad", ["mixed", "odd-dh", "values-shape", "table-shape", "table-dtype", "odd-table-stride",
                                 "rows-unordered", "rows-outside", "rows-per-sequence", "lengths-past-rows",
                                 "negative-length", "out-shape", "out-dtype", "window-with-table", "negative-window"])
def test_bad_inputs_are_refused_with_the_reason(bad):
    heads, dh, n = 2, 8, 5
    q = k = v = torch.randn(n, heads * dh).bfloat16()
    table = torch.randn(heads, 2 * n - 1, dh).bfloat16()
    lengths, rows, out, reach = [n], None, None, None
    if bad == "mixed":
        k = k.float()
    elif bad == "odd-dh":
        q = k = v = torch.randn(n, heads * 7).bfloat16()
        table = None
    elif bad == "values-shape":
        v = v[:-1]
    elif bad == "table-shape":
        table = table[:, 1:]
    elif bad == "table-dtype":
        table = table.float()
    elif bad == "odd-table-stride":
        table = torch.randn(heads, 2 * n - 1, dh + 1).bfloat16()[:, :, :dh]  # rows 9 values apart
    elif bad == "rows-unordered":
        rows = [torch.tensor([2, 1])]
    elif bad == "rows-outside":
        rows = [torch.tensor([1, n])]
    elif bad == "rows-per-sequence":
        rows = [torch.tensor([1]), torch.tensor([2])]
    elif bad == "lengths-past-rows":
        lengths = [n, 1]
    elif bad == "negative-length":
        lengths = [n, -1]
    elif bad == "out-shape":
        out = torch.empty((n - 1, heads * dh)).bfloat16()
    elif bad == "out-dtype":
        out = torch.empty((n, heads * dh))
    elif bad == "window-with-table":
        reach = 2
    else:
        table, reach = None, -1
    with pytest.raises(ValueError, match="must be"):
        native.packed_attention(q, k, v, lengths, heads, table, None, 1.0, rows, out, reach=reach)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [768, 20])
@pytest.mark.parametrize("rounded", [False, True])
def test_add_layer_norm_matches_its_definition(dtype, d, rounded):
    if rounded and native._unavailable_because(torch.bfloat16) is not None:
        pytest.skip("no AVX512-BF16")
    torch.manual_seed(d)
    norm = torch.nn.LayerNorm(d, eps=1e-7)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(33, 2 * d).to(dtype)[:, :d]  # rows 2d values apart
    residual = torch.randn(33, d) * 3
    out, low = native.add_layer_norm(x, residual, norm, rounded)
    want = torch.nn.functional.layer_norm(x.double() + residual.double(), (d,), norm.weight.double(),
                                          norm.bias.double(), norm.eps)
    assert out.dtype == torch.float32 and torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)
    assert low is None if not rounded else torch.equal(low, out.bfloat16())


@pytest.mark.parametrize("bad", ["shapes", "residual-dtype", "norm-size", "norm-without-bias", "strided-values"])
def test_add_layer_norm_refuses_bad_inputs_with_the_reason(bad):
    x, residual, norm = torch.randn(4, 8), torch.randn(4, 8), torch.nn.LayerNorm(8)
    if bad == "shapes":
        residual = residual[:3]
    elif bad == "residual-dtype":
        residual = residual.double()
    elif bad == "norm-size":
        norm = torch.nn.LayerNorm(9)
    elif bad == "norm-without-bias":
        norm = torch.nn.LayerNorm(8, elementwise_affine=False)
    else:
        x = torch.randn(8, 4).t()
    with pytest.raises(ValueError, match="must be"):
        native.add_layer_norm(x, residual, norm)


@pytest.mark.parametrize("bf16", [False, pytest.param(True, marks=DTYPES[1].marks)])
@pytest.mark.parametrize("pos_att_type", [("p2c", "c2p"), ("c2p",), ("p2c",)])
def test_packed_deberta_gives_the_same_states_with_and_without_the_kernels(pos_att_type, bf16, monkeypatch):
    torch.manual_seed(0)
    model = tiny_model(pos_att_type=pos_att_type, layers=2)
    if bf16:
        use_bf16_linears(model.encoder)
    lengths = [7, 90, 1, 40]
    ids = torch.randint(5, 300, (len(lengths), max(lengths)))
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    keep = mask.bool() & (torch.rand(mask.shape) < 0.5)
    calls, norms = [], []

    def counting(*args, **kwargs):
        calls.append(args[3])
        return native.packed_attention(*args, **kwargs)

    def counting_norms(x, residual, norm, rounded):
        norms.append(rounded)
        return native.add_layer_norm(x, residual, norm, rounded)

    monkeypatch.setattr(deberta, "packed_attention", counting)
    monkeypatch.setattr(deberta, "add_layer_norm", counting_norms)
    with torch.inference_mode():
        kernel = PackedDeberta(model)(ids, mask, keep=keep)
        monkeypatch.setattr(deberta, "kernels_available", lambda dtype: False)
        plain = PackedDeberta(model)(ids, mask, keep=keep)
    assert calls == [lengths] * 2  # every sequence of each layer went through the kernel, in one call
    assert norms == [bf16] * 4  # both residual steps of both layers, in bf16 too in fast mode
    tolerance = 2e-2 if bf16 else 1e-5  # bf16: a last-bit difference can round a layer input the other way
    assert torch.allclose(kernel, plain, atol=tolerance) and (kernel - plain).abs().mean() < tolerance / 20
    assert not kernel[~keep].any()


def expected_span_scores(starts, ends, lengths, queries, bias, n_queries, out):
    """span_scores' definition in float64, span by span (entries it does not score keep out's values)."""
    want, first = out.double().clone(), 0
    for b, (n, m) in enumerate(zip(lengths, n_queries)):
        for i in range(n):
            for w in range(min(out.shape[3], n - i)):
                hidden = (starts[first + i].double() + ends[first + i + w].double()).relu()
                want[b, :m, i, w] = queries[b, :m].double() @ hidden + bias[b, :m].double()
        first += n
    return want


@pytest.mark.parametrize("c", [3072, 20, 1])
def test_span_scores_match_their_definition(c):
    """Records of 0, 1, fewer words than widths and more; query counts from 0 to all, over
    tiles of 4 widths by 6 queries and a feature count that is not a multiple of 16."""
    torch.manual_seed(c)
    lengths, n_queries, widths = [5, 0, 1, 13, 2], [7, 3, 0, 13, 1], 6
    rows = sum(lengths) + 2  # rows past the records are not read
    starts, ends = torch.randn(rows, 2 * c)[:, :c], torch.randn(rows, 2 * c)[:, c:]  # strided rows
    queries, bias = torch.randn(len(lengths), 13, c), torch.randn(len(lengths), 13)
    out = torch.full((len(lengths), 13, max(lengths), widths), float("-inf"))
    want = expected_span_scores(starts, ends, lengths, queries, bias, n_queries, out)
    got = native.span_scores(starts, ends, lengths, queries, bias, n_queries, out)
    assert got is out and torch.equal(got.isfinite(), want.isfinite()) and want.isfinite().sum() > 100
    assert torch.allclose(got[got.isfinite()].double(), want[want.isfinite()], rtol=1e-5, atol=1e-4)


def test_span_scorer_gives_the_same_logits_with_and_without_the_kernel(monkeypatch):
    from spacy_gliner2.gliner2 import layers
    torch.manual_seed(0)
    scorer = layers.SpanMarker(32, 5).eval()
    words, queries = torch.randn(3, 9, 32), torch.randn(3, 4, 32)
    calls = []
    monkeypatch.setattr(layers, "span_scores", lambda *args: calls.append(args) or native.span_scores(*args))
    with torch.inference_mode():
        kernel = scorer.score(words, queries, [9, 3, 0], n_queries=[4, 2, 4])
        monkeypatch.setattr(layers, "kernels_available", lambda: False)
        plain = scorer.score(words, queries, [9, 3, 0], n_queries=[4, 2, 4])
    assert len(calls) == 1 and torch.equal(kernel.isfinite(), plain.isfinite())
    assert torch.allclose(kernel[kernel.isfinite()], plain[plain.isfinite()], atol=1e-5)
    assert kernel.isfinite().sum() == 4 * (9 + 8 + 7 + 6 + 5) + 2 * (3 + 2 + 1)


@pytest.mark.parametrize("bad", ["dtype", "query-shape", "strided-out", "too-long", "too-many-queries", "records"])
def test_span_scores_refuse_bad_inputs_with_the_reason(bad):
    starts, queries, bias = torch.randn(6, 8), torch.randn(2, 3, 8), torch.randn(2, 3)
    out, lengths, n_queries = torch.zeros(2, 3, 4, 2), [4, 2], [3, 3]
    if bad == "dtype":
        starts = starts.double()
    elif bad == "query-shape":
        queries = queries[:, :, :7]
    elif bad == "strided-out":
        out = torch.zeros(2, 3, 2, 4).transpose(2, 3)
    elif bad == "too-long":
        lengths = [5, 1]
    elif bad == "too-many-queries":
        n_queries = [4, 3]
    else:
        lengths = [4]
    with pytest.raises(ValueError, match="span_scores takes|must give"):
        native.span_scores(starts, starts, lengths, queries, bias, n_queries, out)


@pytest.mark.parametrize("dh", [64, 6, 40])
def test_rotate_halves_is_the_rotary_embedding(dh):
    """In place, on strided rows: ``x * cos + rotate_half(x) * sin`` with each angle in both halves."""
    torch.manual_seed(dh)
    rows, count, half = 37, 5, dh // 2
    block = torch.randn(rows, count + 2, dh)  # the vectors: a column slice of wider rows
    x = block[:, 1 : count + 1]
    angles = torch.randn(rows, half)
    cos, sin = torch.cat((angles.cos(),) * 2, -1)[:, None].double(), torch.cat((angles.sin(),) * 2, -1)[:, None].double()
    before = x.double().clone()
    rotate_half = torch.cat((-before[..., half:], before[..., :half]), -1)
    want = before * cos + rotate_half * sin
    outside = block[:, [0, count + 1]].clone()
    native.rotate_halves(x, torch.cat((angles.cos(), angles.sin()), -1))
    assert torch.allclose(x.double(), want, rtol=1e-6, atol=1e-6)
    assert torch.equal(block[:, [0, count + 1]], outside)  # the rest of each row is untouched


@pytest.mark.parametrize("bad", ["odd-dh", "angles-shape", "bf16", "strided-vectors"])
def test_rotate_halves_refuses_bad_inputs_with_the_reason(bad):
    x, angles = torch.randn(4, 3, 8), torch.randn(4, 8)
    if bad == "odd-dh":
        x, angles = torch.randn(4, 3, 7), torch.randn(4, 7)
    elif bad == "angles-shape":
        angles = angles[:3]
    elif bad == "bf16":
        x = x.bfloat16()
    else:
        x = torch.randn(4, 3, 16)[:, :, ::2]
    with pytest.raises(ValueError, match="must be"):
        native.rotate_halves(x, angles)
