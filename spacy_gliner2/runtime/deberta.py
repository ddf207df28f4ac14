"""A faster inference forward for Hugging Face DeBERTa-v2/v3 encoders (same weights, same maths).

Three changes against ``transformers``' own forward, none of which changes the result
beyond float rounding:

- Per-token layers (projections, feed-forward, layer norms) run on the real tokens
  only, packed as ``(N, D)``; attention runs per sequence at its own length, so
  nothing is padded or masked and each sequence's ``(H, n, n)`` scores stay in cache.
- The disentangled attention bias is read with a strided "skew" view instead of
  gathering through ``(H, n, n)`` int64 index tensors: the relative bucket of
  ``(i, j)`` depends on ``i - j`` only, so a block of R query rows needs one
  ``(R, n + R - 1)`` table that holds all its diagonals; softmax(QK^T / s + bias)V
  then runs on the bias buffer in place.
- The relative position embeddings' key and query projections depend on the
  weights only: they are computed once and reused until a weight changes.

On CPU attention (scores, softmax, weighted values) runs in the compiled kernel of
:mod:`.native` where it can (the same sums in another order), else on torch's products as
described above. Layers whose linear weights are bfloat16 (fast mode, :mod:`.precision`) get
bf16 inputs; attention sums, softmax, layer norms and the residual stream stay fp32 (the
kernel multiplies the bf16 query, key, value and position values that such layers give,
with fp32 sums, and hands its output to the next bf16 layer in bf16).
"""
import math
from typing import Optional

import torch
from torch import nn

from .native import add_layer_norm, kernels_available, packed_attention
from .precision import OneDNNLinear, exact_gelu, pad_rows


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


def _position_span(layers: nn.Module) -> int:
    """Half the number of rows in the relative-position embedding table."""
    return layers.position_buckets if layers.position_buckets > 0 else layers.max_relative_positions


BLOCK_ROWS = 64  # query rows per relative-position block: work n * (n + 63) instead of n * (2n - 1)


def _diagonal_block(x: torch.Tensor, positions: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """``out[h, r, c] = x[h, r0 + r] . positions[h, c - (r0 + r) + n - 1]`` as an ``(H, R, n)`` strided view.

    ``x`` is ``(H, n, dh)``, ``positions`` ``(H, 2n - 1, dh)`` (one row per distance, from ``n - 1`` down).
    """
    H, n, _ = x.shape
    R = r1 - r0
    table = x[:, r0:r1] @ positions[:, n - r1 : 2 * n - 1 - r0].transpose(-1, -2)  # (H, R, n + R - 1)
    head, row, col = table.stride()  # row r, column c reads table[r, c - r + R - 1]
    return table.as_strided((H, R, n), (head, row - col, col), table.storage_offset() + (R - 1) * col)


def _relative_bias(q: torch.Tensor, k: torch.Tensor, pos_key: Optional[torch.Tensor], pos_query: Optional[torch.Tensor]) -> torch.Tensor:
    """One sequence's ``(H, n, n)`` c2p + p2c attention bias; ``q``, ``k`` are ``(H, n, dh)``."""
    H, n, _ = q.shape
    bias = q.new_zeros((H, n, n)) if pos_query is None else q.new_empty((H, n, n))
    for r0 in range(0, n, BLOCK_ROWS):
        r1 = min(n, r0 + BLOCK_ROWS)
        if pos_query is not None:  # p2c: key rows r0:r1 give bias columns r0:r1
            bias[:, :, r0:r1] = _diagonal_block(k, pos_query, r0, r1).transpose(-1, -2)
    if pos_key is not None:
        for r0 in range(0, n, BLOCK_ROWS):
            r1 = min(n, r0 + BLOCK_ROWS)
            bias[:, r0:r1].add_(_diagonal_block(q, pos_key, r0, r1))
    return bias


def _scores(q: torch.Tensor, k: torch.Tensor, heads: int, c2p: Optional[torch.Tensor], p2c: Optional[torch.Tensor],
            scale: float, selected: Optional[torch.Tensor]) -> torch.Tensor:
    """One sequence's ``(H, n, n)`` attention scores from its ``(n, D)`` queries and keys and
    its position tables (divided by ``scale``); only the query rows ``selected`` if given."""
    n = q.shape[0]
    qb, kb = (x.view(n, heads, -1).transpose(0, 1) for x in (q, k))
    bias = _relative_bias(qb, kb, c2p, p2c) if c2p is not None or p2c is not None else None
    if selected is not None:
        qb = qb[:, selected]
        bias = None if bias is None else bias[:, selected]
    if bias is None:
        return torch.bmm(qb, kb.transpose(1, 2)).div_(scale)
    return bias.baddbmm_(qb, kb.transpose(1, 2), alpha=1.0 / scale)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, c2p: Optional[torch.Tensor],
               p2c: Optional[torch.Tensor], scale: float, selected: Optional[torch.Tensor]) -> torch.Tensor:
    """One sequence's ``(m, D)`` attention output from its ``(n, D)`` queries, keys and values
    (see :func:`_scores`)."""
    n, D = v.shape
    scores = _scores(q, k, heads, c2p, p2c, scale, selected)
    return torch.bmm(scores.softmax(-1), v.view(n, heads, -1).transpose(0, 1)).transpose(0, 1).reshape(-1, D)


_GELU_IN_PLACE = getattr(torch._C._nn, "gelu_", None)


def _compute_dtype(linear: nn.Module) -> torch.dtype:
    """The dtype a linear layer multiplies in (not read through ``.weight``: a packed bf16 weight unpacks on read)."""
    return getattr(linear, "compute_dtype", None) or linear.weight.dtype


def _feed_forward_in(intermediate: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``intermediate(x)``; its exact GELU fused into a :class:`~.precision.OneDNNLinear` (the same
    values), else in place (no second (N, 4D) buffer: less memory)."""
    dense, act = intermediate.dense, intermediate.intermediate_act_fn
    exact = exact_gelu(act)
    if exact and isinstance(dense, OneDNNLinear) and dense.activation == "none":
        return dense(x, activation="gelu")
    out = dense(x)
    if _GELU_IN_PLACE is not None and exact:
        return _GELU_IN_PLACE(out)
    return act(out)


class PackedDeberta:
    """The inference forward of one DeBERTa-v2 encoder (not a module: it holds no weights of its own).

    Run it without gradients (``torch.no_grad`` / ``inference_mode``); training uses the
    encoder's own forward.
    """

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the cached position projections (they are rebuilt on the next call)."""
        self._cache_key: Optional[tuple] = None
        self._projected: list = []

    def __getstate__(self) -> dict:  # copies and pickles rebuild the cache instead of carrying it
        return {"encoder": self.encoder}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["encoder"])

    def _relative_projections(self) -> list:
        """Per layer, (position keys, position queries) ``(H, 2S, dh)``.

        Cached while the weights they come from keep their storage and version counter
        (optimizer steps and ``load_state_dict`` bump it). Weights created under
        ``inference_mode`` have no version counter: then nothing is cached.
        """
        layers, H = self.encoder.encoder, self.encoder.config.num_attention_heads
        tensors = [t for module in [layers.rel_embeddings, getattr(layers, "LayerNorm", None)] + [
            m for layer in layers.layer for m in (layer.attention.self.key_proj, layer.attention.self.query_proj)
        ] if module is not None for t in module.parameters()]
        try:
            key: Optional[tuple] = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        except RuntimeError:  # inference tensors do not track versions
            key = None
        if key is None or key != self._cache_key:
            rel = layers.get_rel_embedding()[: 2 * _position_span(layers)]
            with torch.no_grad():
                self._projected = [  # in the projections' own dtype (bf16 layers: bf16, as the kernel reads them)
                    tuple(proj(rel.to(_compute_dtype(proj))).view(rel.shape[0], H, -1).transpose(0, 1).contiguous()
                          for proj in (layer.attention.self.key_proj, layer.attention.self.query_proj))
                    for layer in layers.layer
                ]
            self._cache_key = key
        return self._projected

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Last hidden states ``(B, T, D)`` of a right-padded batch (zeros at padding).

        ``keep`` (``(B, T)`` bool, within the real tokens): the only rows the caller reads.
        The last layer then runs attention queries, output and feed-forward on those rows
        only (keys and values still come from every token); the other rows are zeros.
        """
        encoder, config = self.encoder, self.encoder.config
        B, T = input_ids.shape
        H = config.num_attention_heads
        lengths = attention_mask.sum(1)
        real = torch.arange(T, device=input_ids.device) < lengths[:, None]
        if not torch.equal(real, attention_mask.bool()):
            raise ValueError("PackedDeberta reads right-padded batches: each attention_mask row is 1s, then 0s.")
        if keep is not None and (keep.dtype != torch.bool or (keep & ~real).any()):
            raise ValueError("keep must be a bool mask of real tokens (it selects padding, or is not bool).")
        emb = encoder.embeddings(input_ids=input_ids, mask=attention_mask)
        D = emb.shape[-1]
        hidden = pad_rows(emb[real])  # (N, D): the real tokens, sequence after sequence, then zero rows (precision.py)
        lengths = lengths.tolist()
        n_rows = sum(lengths)  # the rows of hidden that are tokens
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)

        layers = encoder.encoder
        span = _position_span(layers)
        pos_types = set(config.pos_att_type or [])
        scale = math.sqrt((D // H) * (1 + len(pos_types)))
        projected = self._relative_projections()
        # rows of the position tables per distance longest-1 .. -(longest-1); a sequence of n
        # tokens reads the middle 2n - 1 of them (distance -> bucket does not depend on n)
        longest = max(lengths, default=0)
        if longest == 0:
            return emb.new_zeros((B, T, D))
        buckets = _buckets(torch.arange(longest - 1, -longest, -1, device=input_ids.device), layers.position_buckets, layers.max_relative_positions)
        c2p_index, p2c_index = torch.clamp(buckets + span, 0, 2 * span - 1), torch.clamp(-buckets + span, 0, 2 * span - 1)

        hidden_in = None  # hidden in the layers' input dtype, when the last layer gave it
        for depth, (layer, (pos_key, pos_query)) in enumerate(zip(layers.layer, projected)):
            # per sequence, the query rows this layer must output (None: all rows of every sequence)
            chosen = [keep[b, :n].nonzero().squeeze(1) for b, n in enumerate(lengths)] \
                if keep is not None and depth == len(layers.layer) - 1 else None
            att = layer.attention.self
            low = _compute_dtype(att.query_proj)  # bf16 layers (fast mode) take bf16 inputs, cast once
            # the kernel (CPU, fp32 states) takes fp32 values, or the bf16 values that bf16 projections give
            native = hidden.device.type == "cpu" and hidden.dtype == torch.float32 and kernels_available(low) \
                and all(_compute_dtype(p) == low for p in (att.key_proj, att.value_proj))
            layer_in = hidden_in if hidden_in is not None and hidden_in.dtype == low else hidden.to(low)
            q, k, v = (proj(layer_in) for proj in (att.query_proj, att.key_proj, att.value_proj))
            if not native:
                q, k, v = q.to(hidden.dtype), k.to(hidden.dtype), v.to(hidden.dtype)
            # position rows per distance: as they are for the kernel (in the projections' dtype),
            # divided by the scale in the states' dtype for torch's products
            c2p, p2c = (None if kind not in pos_types else table.index_select(1, index).to(low) if native
                        else table.index_select(1, index).to(hidden.dtype).div_(scale)
                        for kind, table, index in (("c2p", pos_key, c2p_index), ("p2c", pos_query, p2c_index)))
            if chosen is not None:
                hidden = pad_rows(hidden[:n_rows][keep[real]])
                n_rows = int(keep.sum())
            # the kernel writes the next layer's dtype (bf16 in fast mode), torch the states' dtype
            context = hidden.new_empty(hidden.shape, dtype=low if native else hidden.dtype)
            context[n_rows:] = 0  # padding rows
            if native:  # every sequence and head in one call
                packed_attention(q, k, v, lengths, H, c2p, p2c, 1.0 / scale, chosen, out=context[:n_rows])
            else:
                at = 0  # the context rows written so far
                for start, n, selected in zip(starts, lengths, chosen or [None] * B):
                    if n == 0:
                        continue
                    middle = slice(longest - n, longest + n - 1)
                    tables = [None if t is None else t[:, middle] for t in (c2p, p2c)]
                    m = n if selected is None else len(selected)
                    context[at : at + m] = _attention(*(x[start : start + n] for x in (q, k, v)), H, *tables, scale, selected)
                    at += m
            if native:  # dense, then (dropout: none at inference) add and normalise in one pass, in fp32 and low
                rounded = low != hidden.dtype
                attended, attended_in = add_layer_norm(layer.attention.output.dense(context), hidden,
                                                       layer.attention.output.LayerNorm, rounded)
                feed = _feed_forward_in(layer.intermediate, attended if attended_in is None else attended_in)
                hidden, hidden_in = add_layer_norm(layer.output.dense(feed), attended, layer.output.LayerNorm, rounded)
            else:
                attended = layer.attention.output(context.to(low), hidden)  # the residual stream keeps its dtype
                hidden = layer.output(_feed_forward_in(layer.intermediate, attended.to(low)), attended)
                hidden_in = None

        out = hidden.new_zeros((B, T, D))
        out[real if keep is None else keep] = hidden[:n_rows]
        return out
