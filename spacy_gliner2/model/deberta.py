"""A faster inference forward for Hugging Face DeBERTa-v2/v3 encoders (same weights, same maths).

Two changes against ``transformers``' own forward, neither of which changes the result
beyond float rounding:

- Per-token layers (projections, feed-forward, layer norms) run on the real tokens
  only, packed as ``(N, D)``; only attention sees the padded ``(B, T)`` layout.
- The disentangled attention bias is read with a strided "skew" view instead of
  gathering through ``(B, H, T, T)`` int64 index tensors: the relative bucket of
  ``(i, j)`` depends on ``i - j`` only, so one ``(B, H, T, 2T - 1)`` table holds every
  diagonal, and softmax(QK^T + bias)V runs in ``scaled_dot_product_attention``.
"""
import math
import torch
import torch.nn.functional as F
from torch import nn


def supports_fast_path(encoder: nn.Module) -> bool:
    """True for a DeBERTa-v2/v3 encoder whose features the fast forward covers."""
    config = getattr(encoder, "config", None)
    if type(encoder).__name__ != "DebertaV2Model" or config is None:
        return False
    pos_types = set(config.pos_att_type or [])
    return (
        getattr(config, "relative_attention", False)
        and getattr(encoder.encoder, "conv", None) is None
        and pos_types <= {"c2p", "p2c"}
        and getattr(config, "share_att_key", False)
    )


def _buckets(distance: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """DeBERTa's log-bucketed relative positions (identity near 0)."""
    if bucket_size <= 0 or max_position <= 0:
        return distance
    mid = bucket_size // 2
    sign = torch.sign(distance)
    near = (distance < mid) & (distance > -mid)
    magnitude = torch.where(near, torch.full_like(distance, mid - 1), distance.abs()).to(torch.float32)
    ratio = torch.log(torch.tensor((max_position - 1) / mid))  # float32, as transformers computes it
    log_pos = torch.ceil(torch.log(magnitude / mid) / ratio * (mid - 1)) + mid
    return torch.where(magnitude <= mid, distance.to(torch.float32), log_pos * sign).long()


def _diagonals(x: torch.Tensor, positions: torch.Tensor, index: torch.Tensor, T: int) -> torch.Tensor:
    """``out[..., r, c] = x[..., r, :] . positions[:, index[c - r + T - 1], :]`` as a strided view.

    ``x`` is ``(B, H, T, dh)``, ``positions`` ``(H, P, dh)``: the positions are selected
    before the product, so the ``(B, H, T, 2T - 1)`` table comes out contiguous.
    """
    full = x @ positions.index_select(1, index).transpose(-1, -2)  # (B, H, T, 2T - 1)
    B, H = full.shape[:2]
    width = 2 * T - 1
    return full.as_strided((B, H, T, T), (H * T * width, T * width, width - 1, 1), full.storage_offset() + T - 1)


def deberta_forward(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states ``(B, T, D)`` of a DeBERTa-v2 encoder (zeros at padding)."""
    config = encoder.config
    B, T = input_ids.shape
    H = config.num_attention_heads
    emb = encoder.embeddings(input_ids=input_ids, mask=attention_mask)
    D = emb.shape[-1]
    dh = D // H
    real = attention_mask.reshape(-1).nonzero().squeeze(1)
    hidden = emb.reshape(B * T, D).index_select(0, real)

    layers = encoder.encoder
    span = layers.position_buckets if layers.position_buckets > 0 else layers.max_relative_positions
    rel = layers.get_rel_embedding()[: 2 * span]
    distance = torch.arange(T - 1, -T, -1, device=input_ids.device)  # d = T-1-c for column c
    buckets = _buckets(distance, layers.position_buckets, layers.max_relative_positions)
    c2p_index = torch.clamp(buckets + span, 0, 2 * span - 1)  # query i, key j: d = i - j
    p2c_index = torch.clamp(-buckets + span, 0, 2 * span - 1)  # key j, query i: d = j - i
    pos_types = set(config.pos_att_type or [])
    scale = math.sqrt(dh * (1 + len(pos_types)))
    key_bias = torch.zeros((B, 1, 1, T), dtype=emb.dtype, device=emb.device)
    key_bias.masked_fill_(~attention_mask.bool()[:, None, None, :], torch.finfo(emb.dtype).min)

    def padded(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((B * T, x.shape[-1]))
        out.index_copy_(0, real, x)
        return out.view(B, T, H, -1).transpose(1, 2)  # (B, H, T, dh)

    for layer in layers.layer:
        att = layer.attention.self
        q, k, v = padded(att.query_proj(hidden)), padded(att.key_proj(hidden)), padded(att.value_proj(hidden))
        bias = key_bias.expand(B, H, T, T).clone()  # one (B, H, T, T) buffer, filled in place
        if "c2p" in pos_types:
            pos_key = att.key_proj(rel).view(-1, H, dh).transpose(0, 1)  # (H, 2span, dh)
            bias.add_(_diagonals(q, pos_key, c2p_index, T), alpha=1.0 / scale)
        if "p2c" in pos_types:
            pos_query = att.query_proj(rel).view(-1, H, dh).transpose(0, 1)
            bias.add_(_diagonals(k, pos_query, p2c_index, T).transpose(-1, -2), alpha=1.0 / scale)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0 / scale)
        context = context.transpose(1, 2).reshape(B * T, D).index_select(0, real)
        attended = layer.attention.output(context, hidden)
        hidden = layer.output(layer.intermediate(attended), attended)

    out = hidden.new_zeros((B * T, D))
    out.index_copy_(0, real, hidden)
    return out.view(B, T, D)
