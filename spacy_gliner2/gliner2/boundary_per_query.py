"""The per-query candidate path of GLiNER2.5 "boundary" checkpoints (pure torch, one text at a time).

``boundary_head.candidate_pool = "per_query"`` (the library's default; the released checkpoints use
the shared pool of :mod:`.boundary`). Each query proposes its own spans: its ``start_top_k`` best
starts each pair with their ``ends_per_start`` best later ends, and (``bidirectional_proposals``)
its ``end_top_k`` best ends with their ``starts_per_end`` best earlier starts, ranked by a gated
start-end compatibility plus the start and end marginals; the distinct pairs, best first (ties:
smaller start, then end), up to ``candidate_budget``. A pair scorer then gives each (query, span)
one logit: a multi-head gated endpoint compatibility, the marginals, the proposal's compatibility
as a prior, optional span content, inside evidence (a learned or query-conditioned weight) and
length features. Rotary endpoint embeddings, endpoint-difference features and a length-adaptive
boundary budget act only on this path. Cost per query: ``top_k x (n + 1)`` pair scores, linear in
the text (with ``boundary_top_k_alpha > 0``, ``top_k`` grows with the text up to
``boundary_top_k_max``); queries are scored in chunks, so memory stays bounded. The budget follows
the text's own length (the reference's follows its batch's padded width); ``export_mode``,
``end_block_size`` and ``vectorized_pair_elements`` only change how the reference computes the same
result. Parameter names are the reference's (``boundary_head.boundary_proposer.*``,
``boundary_head.pair_scorer.*``).
"""
import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn

from .boundary_layers import (MASK_LOGIT, BoundarySettings as Settings, ContentPooler, best_distinct, inside_evidence,
                              length_features, stable_top)

CHUNK = 1 << 22  # pair scores materialised at once while proposing


def rotate(states: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding of ``(N, dim)`` states by their position (boundary index)."""
    dim = states.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=states.device) / dim))
    angle = torch.arange(states.shape[0], device=states.device).float()[:, None] * inv_freq
    cos, sin = torch.cos(angle), torch.sin(angle)
    even, odd = states[..., 0::2].float(), states[..., 1::2].float()
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2).to(states.dtype)


def boundary_top_k(n_bounds: int, base: int, s: Settings) -> int:
    """How many best boundaries a query keeps (``boundary_top_k_alpha > 0``: more in longer texts)."""
    if s.boundary_top_k_alpha > 0:
        wanted = max(base, min(math.ceil(s.boundary_top_k_alpha * max(n_bounds - 1, 0)), s.boundary_top_k_max))
        base = min(s.boundary_top_k_max, math.ceil(wanted / s.boundary_top_k_bucket) * s.boundary_top_k_bucket)
    return min(base, n_bounds)


class Keys(NamedTuple):
    """The proposer's start and end keys ``(N, d)`` and each query's gate ``(Q, d)``."""

    start: torch.Tensor
    end: torch.Tensor
    gate: torch.Tensor


class Proposer(nn.Module):
    """The gated start-end compatibility that proposes each query's spans and primes their scores."""

    def __init__(self, hidden: int, s: Settings):
        super().__init__()
        d = s.boundary_dim
        self.rotary = s.enable_rotary_endpoints
        self.rotary_base = s.rotary_base
        self.start_pair_projection = nn.Linear(d, d)
        self.end_key_projection = nn.Linear(d, d)
        self.start_query_projection = nn.Linear(hidden, d // 2 if self.rotary else d)

    def forward(self, states: torch.Tensor, queries: torch.Tensor) -> Keys:
        start, end = self.start_pair_projection(states), self.end_key_projection(states)
        gate = torch.sigmoid(self.start_query_projection(queries))
        if self.rotary:
            start, end = rotate(start, self.rotary_base), rotate(end, self.rotary_base)
            gate = gate.repeat_interleave(2, dim=-1)
        return Keys(start, end, gate)


def propose(s: Settings, keys: Keys, start: torch.Tensor, end: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query's candidate spans from its start and end logits ``(Q, N)``: starts, ends (``(Q, C)``
    boundary indices) and which slots hold one."""
    n_bounds = keys.start.shape[0]
    scale = 1.0 / math.sqrt(s.boundary_dim)
    position = torch.arange(n_bounds, device=start.device)

    def paired(marginal, anchor_keys, other_keys, other_marginal, k, per_anchor, later):
        """The ``per_anchor`` best partners of each of the ``k`` best anchors (starts, or ends)."""
        anchors = stable_top(marginal, k)
        top = marginal.gather(-1, anchors)
        step = max(1, CHUNK // max(k * n_bounds, 1))
        scores, partners = [], []
        for q in range(0, len(anchors), step):  # a chunk of queries at a time
            block = torch.einsum("qkd,ed->qke", anchor_keys[anchors[q:q + step]] * keys.gate[q:q + step, None],
                                 other_keys) * scale
            block = block + other_marginal[q:q + step, None, :] + top[q:q + step, ..., None]
            allowed = position > anchors[q:q + step, :, None] if later else position < anchors[q:q + step, :, None]
            block = block.masked_fill(~allowed, MASK_LOGIT)
            index = stable_top(block, per_anchor)
            scores.append(block.gather(-1, index))
            partners.append(index)
        scores, partners = torch.cat(scores), torch.cat(partners)
        anchors = anchors[..., None].expand_as(partners)
        valid = partners > anchors if later else partners < anchors
        return anchors.flatten(1), partners.flatten(1), scores.flatten(1), valid.flatten(1)

    parts = [paired(start, keys.start, keys.end, end, boundary_top_k(n_bounds, s.start_top_k, s), s.ends_per_start, True)]
    if s.bidirectional_proposals:
        be, bs, bscore, bvalid = paired(end, keys.end, keys.start, start, boundary_top_k(n_bounds, s.end_top_k, s),
                                        s.starts_per_end, False)
        parts.append((bs, be, bscore, bvalid))
    starts, ends, scores, valid = (torch.cat(x, -1) for x in zip(*parts))
    kept, keep = best_distinct(starts * n_bounds + ends, scores, valid, s.candidate_budget)
    kept = torch.where(keep, kept, 0)
    return kept // n_bounds, kept % n_bounds, keep


class PairScorer(nn.Module):
    """One logit per (query, span)."""

    def __init__(self, hidden: int, s: Settings):
        super().__init__()
        p = s.pair_dim
        if s.multihead_pair_compat_heads <= 0 or p % s.multihead_pair_compat_heads:
            raise ValueError(f"boundary_head.pair_dim {p} is not divisible by multihead_pair_compat_heads "
                             f"{s.multihead_pair_compat_heads}")
        self.start_endpoint_projection = nn.Linear(s.boundary_dim, p)
        self.end_endpoint_projection = nn.Linear(s.boundary_dim, p)
        self.query_gate = nn.Linear(hidden, p // 2 if s.enable_rotary_endpoints else p)
        self.length_query_projection = nn.Linear(hidden, 3)
        self.inside_weight = nn.Linear(hidden, 1) if s.query_conditioned_inside_weight else nn.Parameter(torch.tensor(1.0))
        if s.endpoint_difference_features:
            self.endpoint_difference_projection = nn.Linear(2 * p, 1)
        if s.enable_span_content:
            self.content_pooler = ContentPooler(hidden, s.content_dim, s.content_soft_max_pool)
            width = s.content_dim * (2 if s.content_soft_max_pool else 1)
            self.content_query_projection = nn.Linear(hidden, width)
            self.content_bias = nn.Linear(width, 1)
        self.compat_mix = nn.Linear(s.multihead_pair_compat_heads, 1)

    def forward(self, s: Settings, keys: Keys, words: torch.Tensor, queries: torch.Tensor, states: torch.Tensor,
                start: torch.Tensor, end: torch.Tensor, inside: Optional[Tuple[torch.Tensor, torch.Tensor]],
                starts: torch.Tensor, ends: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(Q, C)`` logits of spans ``starts``/``ends`` ``(Q, C)`` for each query (``MASK_LOGIT`` where not
        ``valid``), from the proposer's ``keys``, the queries' start/end logits ``(Q, N)`` and inside
        prefix and mean (None: no inside evidence)."""
        prior = (keys.start[starts] * keys.gate[:, None] * keys.end[ends]).sum(-1) / math.sqrt(s.boundary_dim)
        prior = torch.where(valid, prior, 0.0)
        ps, pe = self.start_endpoint_projection(states), self.end_endpoint_projection(states)
        gate = torch.sigmoid(self.query_gate(queries))
        if s.enable_rotary_endpoints:
            ps, pe = rotate(ps, s.rotary_base), rotate(pe, s.rotary_base)
            gate = gate.repeat_interleave(2, dim=-1)
        sp, ep = ps[starts], pe[ends]  # (Q, C, p)
        q, c = starts.shape
        if s.reranker_endpoint_compat:
            heads = (sp * gate[:, None] * ep).reshape(q, c, s.multihead_pair_compat_heads, -1).sum(-1)
            logits = self.compat_mix(heads).squeeze(-1) / math.sqrt(s.pair_dim)
        else:
            logits = torch.zeros_like(prior)
        if s.endpoint_difference_features:
            difference = sp - ep
            logits = logits + self.endpoint_difference_projection(torch.cat((difference, difference.abs()), -1)).squeeze(-1)
        logits = logits + start.gather(1, starts) + end.gather(1, ends) + prior
        if s.enable_span_content:
            content = self.content_pooler(words, starts.flatten(), ends.flatten(), logits.dtype).view(q, c, -1)
            coefficient = self.content_query_projection(queries)[:, None]
            logits = logits + (content * coefficient).sum(-1) / math.sqrt(content.shape[-1])
            logits = logits + self.content_bias(content).squeeze(-1)
        if inside is not None:
            weight = self.inside_weight(queries) if s.query_conditioned_inside_weight else self.inside_weight
            logits = logits + weight * inside_evidence(inside, starts, ends).to(logits.dtype)
        coefficient = self.length_query_projection(queries)[:, None]
        logits = logits + (length_features(starts, ends, words.shape[0], torch.float32).to(coefficient.dtype)
                           * coefficient).sum(-1)
        return logits.masked_fill(~valid, MASK_LOGIT)
