"""The packed ModernBERT forward equals transformers' own, local attention bands included."""
import pytest
import torch
import transformers

if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("the packed ModernBERT forward follows transformers 5's ModernBERT; with 4.x, ModernBERT "
                "encoders run transformers' own forward", allow_module_level=True)

from transformers import BertConfig, BertModel, ModernBertConfig, ModernBertModel  # noqa: E402

from spacy_gliner2.runtime import modernbert  # noqa: E402
from spacy_gliner2.runtime.modernbert import PackedModernBert, supports_modernbert_path  # noqa: E402

LENGTHS = [3, 70, 1, 9, 33, 17]


def tiny_model(local_attention: int = 16, layers: int = 4) -> ModernBertModel:
    """A random ModernBERT: global attention every third layer, a local window of ``local_attention``."""
    config = ModernBertConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
        local_attention=local_attention, global_attn_every_n_layers=3, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    return ModernBertModel(config).eval()


def batch(lengths, right_padded: bool = True):
    ids = torch.randint(5, 300, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        if right_padded:
            mask[i, :n] = 1
        else:
            mask[i, mask.shape[1] - n:] = 1
    return ids, mask


@pytest.fixture(params=["kernel", "torch"])
def attention(request, monkeypatch):
    """Attention on the compiled kernel (where it builds), or on torch's SDPA."""
    if request.param == "torch":
        monkeypatch.setattr(modernbert, "kernels_available", lambda: False)
    elif not modernbert.kernels_available():
        pytest.skip("the compiled kernel is not available here")
    return request.param


@pytest.mark.parametrize("local_attention", [16, 128])
@pytest.mark.parametrize("right_padded", [True, False])
def test_forward_matches_transformers(local_attention, right_padded, attention):
    torch.manual_seed(0)
    model = tiny_model(local_attention)
    assert supports_modernbert_path(model)
    ids, mask = batch(LENGTHS, right_padded)
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = PackedModernBert(model)(ids, mask)
    real = mask.bool()
    assert torch.allclose(got[real], expected[real], atol=1e-5)
    assert not got[~real].any()


def test_band_is_what_changes_long_sequences():
    """A sequence longer than the local window gives other states than with one wide window."""
    torch.manual_seed(0)
    narrow = tiny_model(16)
    wide = tiny_model(256)
    wide.load_state_dict(narrow.state_dict())
    ids, mask = batch([60])
    with torch.inference_mode():
        assert not torch.allclose(PackedModernBert(narrow)(ids, mask), PackedModernBert(wide)(ids, mask), atol=1e-3)


@pytest.mark.parametrize("layers", [4, 3])  # the last layer global, or local
def test_kept_rows_equal_the_full_forward(layers, attention):
    torch.manual_seed(0)
    model = tiny_model(layers=layers)
    ids, mask = batch(LENGTHS)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[:, 0] = True
    keep[1, 30:40] = True
    keep[4, 32] = True
    with torch.inference_mode():
        full = PackedModernBert(model)(ids, mask)
        kept = PackedModernBert(model)(ids, mask, keep=keep)
    assert torch.allclose(kept[keep], full[keep], atol=1e-6)
    assert not kept[~keep].any()
    with pytest.raises(ValueError, match="keep must be a bool mask of real tokens"):
        PackedModernBert(model)(ids, mask, keep=~mask.bool())


def test_other_encoders_take_the_standard_path():
    assert not supports_modernbert_path(
        BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)))


def test_an_encoder_without_transformers_5_layout_keeps_its_own_forward():
    model = tiny_model()
    assert supports_modernbert_path(model)
    model.config.layer_types = None  # as transformers 4.x's ModernBERT config: no per-layer types
    assert not supports_modernbert_path(model)
    del model.rotary_emb  # 4.x: rotary embeddings inside each attention layer, none on the model
    model.config.layer_types = ["full_attention"] * 4
    assert not supports_modernbert_path(model)


@pytest.mark.parametrize("bias", [False, True])
def test_the_fused_feed_forward_gives_the_same_values(bias):
    """With oneDNN linears, the GeGLU's GELU and product run inside Wi's products: the values of
    ``Wo(gelu(input) * gate)`` (torch's GELU on a contiguous input: on transformers' strided chunk it
    can differ in the last bit), with Wi's packed halves following weight updates."""
    from spacy_gliner2.runtime.modernbert import _feed_forward
    from spacy_gliner2.runtime.precision import OneDNNLinear, use_onednn_linears

    torch.manual_seed(0)
    config = tiny_model().config
    config.mlp_bias = bias
    mlp = ModernBertModel(config).eval().layers[0].mlp
    use_onednn_linears(mlp)
    assert isinstance(mlp.Wi, OneDNNLinear)
    x = torch.randn(37, config.hidden_size)
    for _ in range(2):
        with torch.no_grad():
            got = _feed_forward(mlp, x)
            a, g = torch.nn.functional.linear(x, mlp.Wi.weight, mlp.Wi.bias).chunk(2, dim=-1)
            want = mlp.Wo(torch.nn.functional.gelu(a.contiguous()) * g)
            assert torch.allclose(got, want, rtol=1e-6, atol=1e-6) and torch.allclose(got, mlp(x), atol=1e-6)
            mlp.Wi.weight.mul_(1.5)  # an update: the packed halves follow
