"""A faster inference forward for Hugging Face ModernBERT encoders (same weights, same maths).

``transformers`` runs ModernBERT on the padded ``(B, T)`` batch with masks. Here:

- Per-token layers (projections, GeGLU feed-forward, layer norms) run on the real tokens only
  (the GeGLU's GELU and product fused into its input projection's oneDNN products),
  packed as ``(N, D)``; attention runs per sequence at its own length (the compiled kernel of
  :mod:`.native`, else torch's SDPA), the local layers' keys within ``local_attention // 2`` of
  each query only.
- Rotary angles are computed once per call for the packed tokens, per layer type.
- With ``keep`` the last layer computes queries, output, feed-forward and the final norm for
  the rows the caller reads only.

None of this changes the result beyond float rounding. Run it without gradients; training
uses the encoder's own forward.
"""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .native import kernels_available, packed_attention, rotate_halves
from .precision import OneDNNLinear, exact_gelu, pad_rows, padded_rows


def supports_modernbert_path(encoder: nn.Module) -> bool:
    """True for a ModernBERT encoder whose features this forward covers."""
    config = getattr(encoder, "config", None)
    # transformers 5 layout (config.layer_types, one model-level rotary_emb); 4.x ModernBERT runs its own forward
    layer_types = getattr(config, "layer_types", None)
    return (type(encoder).__name__ == "ModernBertModel" and layer_types is not None
            and hasattr(encoder, "rotary_emb")
            and set(config.layer_types) <= {"full_attention", "sliding_attention"}
            and all(getattr(encoder.rotary_emb, "rope_type", {}).get(t, "default") == "default"
                    for t in set(config.layer_types)))


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> None:
    """Rotary embedding of ``x`` ``(N, count, dh)`` in place, on torch: ``angles`` ``(N, dh)`` holds
    each token's ``dh / 2`` cosines then sines (what :func:`.native.rotate_halves` does)."""
    half = x.shape[-1] // 2
    cos, sin = angles[:, None, :half], angles[:, None, half:]
    first, second = x[..., :half], x[..., half:]
    rotated = first * cos - second * sin
    second.mul_(cos).add_(first * sin)
    first.copy_(rotated)


def _feed_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' ``ModernBertMLP``: ``Wo(act(input) * gate)`` for ``input, gate = Wi(x).chunk(2)``;
    with the exact GELU after a :class:`~.precision.OneDNNLinear`, the activation and the product
    fused into ``Wi``'s products (:meth:`~.precision.OneDNNLinear.gated`; the same values)."""
    if isinstance(mlp.Wi, OneDNNLinear) and exact_gelu(mlp.act):
        return mlp.Wo(mlp.Wi.gated(x, "gelu"))
    return mlp(x)


def _band(n: int, reach: int, device: torch.device) -> torch.Tensor:
    """``(n, n)`` bool: True where ``|i - j| <= reach``."""
    index = torch.arange(n, device=device)
    return (index[:, None] - index[None, :]).abs() <= reach


class PackedModernBert:
    """Inference forward over the real tokens of a right- or left-padded batch.

    Holds the ``ModernBertModel`` (its modules may be replaced by precision copies: they
    are called, never read as weights).
    """

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder

    def invalidate(self) -> None:
        """Nothing is cached from the weights."""

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: List[int], lengths: List[int],
                bands: Dict[int, torch.Tensor], chosen: Optional[torch.Tensor], attended: torch.Tensor) -> None:
        """Attention on torch (where the compiled kernel is not available): per sequence, SDPA at
        its own length (``bands``: the sliding window's mask per length), the chosen query rows
        only, written one sequence after another into ``attended``."""
        at = 0  # rows of attended written
        for start, n in zip(starts, lengths):
            if n == 0:
                continue
            rows = slice(start, start + n)
            q_seq, mask = q[rows], bands.get(n)
            if chosen is not None:
                picked = chosen[rows]
                q_seq = q_seq[picked]
                mask = None if mask is None else mask[picked]
                if q_seq.shape[0] == 0:
                    continue
            # (1, H, n, dh) each; the scale is transformers' head_dim ** -0.5 (SDPA's default)
            out = F.scaled_dot_product_attention(
                q_seq.transpose(0, 1).unsqueeze(0), k[rows].transpose(0, 1).unsqueeze(0),
                v[rows].transpose(0, 1).unsqueeze(0), attn_mask=mask)
            m = out.shape[2]
            attended[at : at + m].view(m, q.shape[1], -1).copy_(out[0].transpose(0, 1))
            at += m

    def _angles(self, positions: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per layer type, ``(N, dh)``: at each packed token's position, its ``dh / 2`` rotary
        cosines then sines, times the attention scaling (transformers repeats each angle in both
        halves of ``dh``)."""
        rotary = self.encoder.rotary_emb
        out = {}
        for kind in set(self.encoder.config.layer_types):
            angles = positions[:, None].float() * getattr(rotary, f"{kind}_inv_freq").float()
            scale = getattr(rotary, f"{kind}_attention_scaling")
            out[kind] = torch.cat((angles.cos() * scale, angles.sin() * scale), dim=-1)
        return out

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Last hidden states ``(B, T, D)`` (zeros at padding).

        ``keep`` (``(B, T)`` bool, within the real tokens): the only rows the caller reads;
        the last layer outputs those rows only and the others are zeros.
        """
        encoder, config = self.encoder, self.encoder.config
        B, T = input_ids.shape
        real = attention_mask.bool()
        if keep is not None and (keep.dtype != torch.bool or (keep & ~real).any()):
            raise ValueError("keep must be a bool mask of real tokens (it selects padding, or is not bool).")
        H = config.num_attention_heads
        D = config.hidden_size
        lengths: List[int] = real.sum(1).tolist()
        n_rows = sum(lengths)
        if n_rows == 0:
            return encoder.embeddings.norm.weight.new_zeros((B, T, D))
        # positions are column indices, as transformers gives them (padding included)
        positions = torch.arange(T, device=input_ids.device).expand(B, T)[real]
        hidden = pad_rows(encoder.embeddings(input_ids=input_ids[real].unsqueeze(0))[0])
        angles = self._angles(positions)
        reach = config.local_attention // 2
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)

        native = input_ids.device.type == "cpu" and kernels_available()
        bands = {} if native else {n: _band(n, reach, input_ids.device) for n in set(lengths) if n > reach + 1}
        last = len(encoder.layers) - 1
        for depth, layer in enumerate(encoder.layers):
            attention = layer.attn
            qkv = attention.Wqkv(layer.attn_norm(hidden))[:n_rows].float()
            (rotate_halves if native else _rotate)(qkv.view(n_rows, 3 * H, -1)[:, : 2 * H], angles[layer.attention_type])
            q, k, v = qkv.view(n_rows, 3, D).unbind(1)  # queries and keys rotated in place
            chosen = keep[real] if keep is not None and depth == last else None
            local = layer.attention_type == "sliding_attention"
            m_rows = n_rows if chosen is None else int(chosen.sum())
            attended = hidden.new_empty((padded_rows(m_rows), D), dtype=q.dtype)  # the heads side by side
            attended[m_rows:] = 0
            if native:
                rows = None if chosen is None else [chosen[start : start + n].nonzero().squeeze(1)
                                                    for start, n in zip(starts, lengths)]
                # the scale is transformers' head_dim ** -0.5
                packed_attention(q, k, v, lengths, H, None, None, (D // H) ** -0.5, rows, out=attended[:m_rows],
                                 reach=reach if local else None)
            else:
                self._attend(*(x.view(n_rows, H, -1) for x in (q, k, v)), starts, lengths, bands if local else {},
                             chosen, attended)
            if chosen is not None:
                hidden = hidden[:n_rows][chosen]
                n_rows = hidden.shape[0]
                if n_rows == 0:
                    return hidden.new_zeros((B, T, D))
                hidden = pad_rows(hidden)
            hidden = hidden + attention.Wo(attended.to(hidden.dtype))
            hidden = hidden + _feed_forward(layer.mlp, layer.mlp_norm(hidden))

        hidden = encoder.final_norm(hidden[:n_rows])
        out = hidden.new_zeros((B, T, D))
        out[real if keep is None else keep] = hidden
        return out
