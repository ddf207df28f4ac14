"""The packed DeBERTa forward equals transformers' own, including log-bucketed long inputs."""
import pytest
import torch
from transformers import DebertaV2Config, DebertaV2Model
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

from spacy_gliner2.runtime.deberta import PackedDeberta, _buckets, supports_fast_path


def tiny_model(pos_att_type=("p2c", "c2p"), layers: int = 2) -> DebertaV2Model:
    """A random DeBERTa-v3-style encoder (log-bucketed relative positions from distance 32)."""
    config = DebertaV2Config(
        vocab_size=300, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
        relative_attention=True, position_buckets=64, max_relative_positions=-1, max_position_embeddings=128,
        pos_att_type=list(pos_att_type), position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
        type_vocab_size=0,
    )
    return DebertaV2Model(config).eval()


@pytest.mark.parametrize("T", [1, 5, 130, 300, 1500])
def test_buckets_match_transformers(T):
    q = torch.zeros(1, T, 4)
    d = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    try:  # transformers >= 4.46 takes the query/key layers, older ones their sizes
        expected = build_relative_position(q, q, bucket_size=256, max_position=512)
    except TypeError:
        expected = build_relative_position(T, T, bucket_size=256, max_position=512)
    assert torch.equal(_buckets(d, 256, 512), expected[0])


@pytest.mark.parametrize("pos_att_type", [["p2c", "c2p"], ["c2p"], ["p2c"], []])
def test_forward_matches_transformers(pos_att_type):
    torch.manual_seed(0)
    model = tiny_model(pos_att_type)
    assert supports_fast_path(model)
    lengths = [3, 400, 1, 57, 129]
    ids = torch.randint(5, 300, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = PackedDeberta(model)(ids, mask)
    for i, n in enumerate(lengths):
        assert torch.allclose(got[i, :n], expected[i, :n], atol=1e-5), i
        assert not got[i, n:].any()


def test_other_encoders_take_the_standard_path():
    from transformers import BertConfig, BertModel

    assert not supports_fast_path(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)))


def test_cached_position_projections_follow_weight_changes():
    torch.manual_seed(0)
    model = tiny_model()
    fast = PackedDeberta(model)
    ids, mask = torch.randint(5, 300, (1, 20)), torch.ones(1, 20, dtype=torch.long)
    with torch.inference_mode():
        before = fast(ids, mask)
    with torch.no_grad():  # an optimizer step or load_state_dict changes weights in place
        model.encoder.layer[1].attention.self.query_proj.weight.normal_(0.0, 1.0)
        model.encoder.rel_embeddings.weight.normal_(0.0, 1.0)
    with torch.inference_mode():
        after, expected = fast(ids, mask), model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, expected, atol=1e-5)


def test_left_padded_batches_are_refused():
    ids, mask = torch.randint(5, 300, (1, 4)), torch.tensor([[0, 1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        PackedDeberta(tiny_model(layers=1))(ids, mask)


def test_kept_rows_equal_the_full_forward():
    torch.manual_seed(0)
    model = tiny_model()
    lengths = [7, 150, 1, 0]
    ids = torch.randint(5, 300, (4, 150))
    mask = (torch.arange(150) < torch.tensor(lengths)[:, None]).long()
    keep = mask.bool() & (torch.rand(4, 150) < 0.4)
    keep[0] = False  # a sequence none of whose rows is read
    keep[2, 0] = True
    fast = PackedDeberta(model)
    with torch.inference_mode():
        full, kept = fast(ids, mask), fast(ids, mask, keep=keep)
    assert torch.allclose(kept[keep], full[keep], atol=1e-5)
    assert not kept[~keep].any() and not full[3].any()
    with pytest.raises(ValueError, match="padding"):
        fast(ids, mask, keep=torch.ones_like(keep))
    with pytest.raises(ValueError, match="bool"):
        fast(ids, mask, keep=keep.long())


def test_position_cache_works_for_weights_made_in_inference_mode_and_is_not_copied():
    import copy

    with torch.inference_mode():  # parameters without version counters
        torch.manual_seed(0)
        model = tiny_model()
        fast = PackedDeberta(model)
        ids, mask = torch.randint(5, 300, (1, 20)), torch.ones(1, 20, dtype=torch.long)
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.allclose(fast(ids, mask), expected, atol=1e-5)
    with torch.no_grad():
        fast(ids, mask)
    assert fast._projected and not copy.deepcopy(fast)._projected
