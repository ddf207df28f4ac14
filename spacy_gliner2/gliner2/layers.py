"""The GLiNER2 heads as plain torch modules: span scorer, count embeddings, MLPs.

Parameter names follow the reference checkpoint format so its state dicts load
unchanged. Nothing here knows about spaCy, tokenizers or schemas.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.cache import DerivedCache
from ..runtime.native import kernels_available, span_scores
from ..runtime.precision import linear, pack_for_onednn

MAX_COUNT = 20  # count head classes: 0..19 instances


def mlp(d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear-ReLU-Linear`` (classifier, count predictor); ``Linear-ReLU-Dropout-Linear`` with
    ``dropout`` (the boundary architecture's classifier: its keys are ``.0`` and ``.3``)."""
    middle = [nn.ReLU(), nn.Dropout(dropout)] if dropout > 0 else [nn.ReLU()]
    return nn.Sequential(nn.Linear(d_in, d_hidden), *middle, nn.Linear(d_hidden, d_out))


def projection(d_in: int, d_out: int, dropout: float, relu_out: bool = False) -> nn.Sequential:
    """``Linear(d_in, 4 d_out)-ReLU-Dropout-Linear(4 d_out, d_out)`` (then ``ReLU`` with
    ``relu_out``: a module without parameters, so the parameter names stay the same)."""
    layers = [nn.Linear(d_in, 4 * d_out), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4 * d_out, d_out)]
    return nn.Sequential(*layers, *([nn.ReLU()] if relu_out else []))


class SpanMarker(DerivedCache):
    """markerV0 span representations, scored directly against query vectors.

    ``rep[i, w] = out(ReLU(cat(start(h_i), end(h_{i+w}))))`` and a span's score for
    query ``q`` is ``<rep[i, w], q>``. The first ``out`` layer is split into its
    start and end halves and the last one folded into the queries, so no ``(L, W, D)``
    span tensor is built: at CPU inference the compiled kernel makes each span's ``4D``
    hidden values in registers; elsewhere each record and width is one ``(L, 4D)`` step.
    """

    def __init__(self, hidden: int, max_width: int, dropout: float = 0.1):
        super().__init__()
        self.max_width = max_width
        self.project_start = projection(hidden, hidden, dropout, relu_out=True)
        self.project_end = projection(hidden, hidden, dropout, relu_out=True)
        self.out_project = projection(2 * hidden, hidden, dropout)

    def score(
        self, words: torch.Tensor, queries: torch.Tensor, n_words: Sequence[int], mask: bool = True,
        n_queries: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """Span logits ``(B, Q, L, W)`` for words ``(B, L, D)`` and queries ``(B, Q, D)``.

        Only spans inside a record's ``n_words`` and its first ``n_queries`` queries (default:
        all) are scored; the others get ``-inf`` with ``mask``, else 0 (training, where the
        loss leaves them out). At CPU fp32 inference the compiled kernel (native.py) scores
        them; elsewhere one ``(spans, 4D)`` step per record and width.
        """
        B, L, D = words.shape
        Q, W = queries.shape[1], self.max_width
        first, drop, last = self.out_project[0], self.out_project[2], self.out_project[3]
        lengths = [min(int(n), L) for n in n_words]
        n_queries = [Q] * B if n_queries is None else [min(int(m), Q) for m in n_queries]
        real = words[torch.arange(L, device=words.device) < torch.tensor(lengths, device=words.device)[:, None]]
        start_half, end_half, folding = self._weights(D)
        starts = linear(self.project_start(real), start_half, first.bias)
        ends = linear(self.project_end(real), end_half)
        folded = linear(queries, folding)  # (B, Q, 4D): the last layer's weight folded into the queries
        query_bias = queries @ last.bias  # (B, Q)
        logits = words.new_full((B, Q, L, W), float("-inf") if mask else 0.0)
        if not (torch.is_grad_enabled() or self.training) and starts.device.type == "cpu" \
                and starts.dtype == torch.float32 and kernels_available():
            return span_scores(starts, ends, lengths, folded, query_bias, n_queries, logits)
        folded = folded.transpose(1, 2)  # (B, 4D, Q)
        for b, (start, end, n, m) in enumerate(zip(starts.split(lengths), ends.split(lengths), lengths, n_queries)):
            for w in range(min(W, n)):
                hidden = drop(torch.add(start[: n - w], end[w:]).relu_())  # spans (i, i + w)
                logits[b, :m, : n - w, w] = torch.addmm(query_bias[b, :m], hidden, folded[b, :, :m]).T
        return logits

    def _weights(self, D: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first output layer's weight halves (start, end) and the last one's weight
        transposed (``(4D, D)``: ``linear(queries, it)`` folds it into the queries). For CPU
        fp32 inference they are packed once for oneDNN (precision.linear: ~1.4x MKL's speed)."""
        first, last = self.out_project[0].weight, self.out_project[3].weight
        plain = first[:, :D], first[:, D:], last.t()
        if torch.is_grad_enabled() or first.device.type != "cpu" or first.dtype != torch.float32:
            return plain  # training multiplies (and differentiates) the plain weights

        def packed() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            all_packed = [pack_for_onednn(weight.contiguous()) for weight in plain]
            return plain if any(weight is None for weight in all_packed) else tuple(all_packed)

        return self.derived("weights", [first, last], packed)


class SpanRep(nn.Module):
    """Holder keeping the reference's ``span_rep.span_rep_layer`` parameter path."""

    def __init__(self, hidden: int, max_width: int, dropout: float = 0.1):
        super().__init__()
        self.span_rep_layer = SpanMarker(hidden, max_width, dropout)


class _CountBase(DerivedCache):
    """Unrolls a GRU over learned count positions, starting from each field embedding."""

    def __init__(self, hidden: int):
        super().__init__()
        self.pos_embedding = nn.Embedding(MAX_COUNT, hidden)
        self.gru = nn.GRU(hidden, hidden)

    def unroll(self, fields: torch.Tensor, count: int) -> torch.Tensor:
        """``(G, M, D)`` field embeddings (G groups of M) -> ``(count, G, M, D)`` GRU states.

        ``nn.GRU``'s step (gates r, z, n) written out: its input at step ``k`` is the
        position embedding ``k``, the same for every field: the input gates depend on the
        weights only (computed once per step, not per field; at inference, kept).
        """
        count = min(count, MAX_COUNT)
        G, M, D = fields.shape
        gru = self.gru
        positions, weight, bias = self.pos_embedding.weight, gru.weight_ih_l0, gru.bias_ih_l0
        input_gates = self.derived("input_gates", [positions, weight, bias],
                                   lambda: F.linear(positions, weight, bias))[:count]  # (count, 3D)
        state = fields.reshape(G * M, D)
        states = []
        for step in range(count):
            in_r, in_z, in_n = input_gates[step].chunk(3)
            h_r, h_z, h_n = F.linear(state, gru.weight_hh_l0, gru.bias_hh_l0).chunk(3, dim=-1)
            reset, update = torch.sigmoid(in_r + h_r), torch.sigmoid(in_z + h_z)
            new = torch.tanh(in_n + reset * h_n)
            state = (1 - update) * new + update * state
            states.append(state)
        return torch.stack(states).view(count, G, M, D)


class CountLSTM(_CountBase):
    """``count_lstm``: a projector over ``cat(gru_state, field)``."""

    def __init__(self, hidden: int):
        super().__init__(hidden)
        self.projector = mlp(2 * hidden, 4 * hidden, hidden)

    def forward(self, fields: torch.Tensor, count: int) -> torch.Tensor:
        out = self.unroll(fields, count)
        return self.projector(torch.cat([out, fields[None].expand_as(out)], dim=-1))


class FieldTransformer(nn.Module):
    """A small transformer across the fields of each instance, plus an MLP."""

    def __init__(self, hidden: int, inner: int = 128, heads: int = 4, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.in_projector = nn.Linear(hidden, inner)
        layer = nn.TransformerEncoderLayer(inner, heads, 2 * inner, dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_projector = nn.Sequential(
            nn.Linear(inner + hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_projector(torch.cat([self.transformer(self.in_projector(x)), x], dim=-1))


class CountLSTMv2(_CountBase):
    """``count_lstm_v2``: the field transformer over ``gru_state + field``."""

    def __init__(self, hidden: int):
        super().__init__(hidden)
        self.transformer = FieldTransformer(hidden)

    def forward(self, fields: torch.Tensor, count: int) -> torch.Tensor:
        out = self.unroll(fields, count) + fields[None]  # the transformer runs across each instance's M fields
        return self.transformer(out.flatten(0, 1)).view(out.shape)


class CountLSTMoE(_CountBase):
    """``count_lstm_moe``: packed expert FFNs mixed by a softmax router."""

    def __init__(self, hidden: int, n_experts: int = 4, ffn_mult: int = 2, dropout: float = 0.1):
        super().__init__(hidden)
        inner = hidden * ffn_mult
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden, inner))
        self.b1 = nn.Parameter(torch.zeros(n_experts, inner))
        self.w2 = nn.Parameter(torch.empty(n_experts, inner, hidden))
        self.b2 = nn.Parameter(torch.zeros(n_experts, hidden))
        nn.init.xavier_uniform_(self.w1)
        nn.init.xavier_uniform_(self.w2)
        self.dropout = nn.Dropout(dropout)
        self.router = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, n_experts), nn.Softmax(dim=-1)
        )

    def forward(self, fields: torch.Tensor, count: int) -> torch.Tensor:
        h = self.unroll(fields, count)  # (K, G, M, D)
        gates = self.router(h)  # (K, G, M, E)
        x = self.dropout(F.gelu(torch.einsum("...d,edh->...eh", h, self.w1) + self.b1))
        x = torch.einsum("...eh,ehd->...ed", x, self.w2) + self.b2
        return (gates.unsqueeze(-1) * x).sum(dim=-2)


COUNT_LAYERS = {"count_lstm": CountLSTM, "count_lstm_v2": CountLSTMv2, "count_lstm_moe": CountLSTMoE}


def count_layer(name: str, hidden: int) -> nn.Module:
    """The count embedding named in a checkpoint's ``counting_layer``."""
    if name not in COUNT_LAYERS:
        raise ValueError(
            f"Unknown counting_layer {name!r} in the checkpoint config; "
            f"supported: {sorted(COUNT_LAYERS)}."
        )
    return COUNT_LAYERS[name](hidden)
