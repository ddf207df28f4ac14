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
boundary budget act only on this path. Cost per query: ``top_k x (n + 1)`` pair scores (linear in
the text). The budget follows the text's own length (the reference's follows its batch's padded
width). Parameter names are the reference's (``boundary_head.boundary_proposer.*``,
``boundary_head.pair_scorer.*``).
"""
import math
from typing import Optional, Tuple

import torch
from torch import nn

from .boundary_layers import MASK_LOGIT, BoundarySettings as Settings, ContentPooler


def rotate(states: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding of ``(N, dim)`` states by their position (boundary index)."""
    dim = states.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=states.device) / dim))
    angle = torch.arange(states.shape[0], device=states.device).float()[:, None] * inv_freq
    cos, sin = torch.cos(angle), torch.sin(angle)
    even, odd = states[..., 0::2].float(), states[..., 1::2].float()
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2).to(states.dtype)


def budget(n_bounds: int, base: int, s: Settings) -> int:
    """How many best boundaries a query keeps (``boundary_top_k_alpha > 0``: grows with the text)."""
    if s.boundary_top_k_alpha > 0:
        wanted = max(base, min(math.ceil(s.boundary_top_k_alpha * max(n_bounds - 1, 0)), s.boundary_top_k_max))
        base = min(s.boundary_top_k_max, math.ceil(wanted / s.boundary_top_k_bucket) * s.boundary_top_k_bucket)
    return min(base, n_bounds)


class Proposer(nn.Module):
    """The gated start-end compatibility that proposes and then primes each query's spans."""

    def __init__(self, hidden: int, s: Settings):
        super().__init__()
        d = s.boundary_dim
        self.rotary = s.enable_rotary_endpoints
        self.rotary_base = s.rotary_base
        self.start_pair_projection = nn.Linear(d, d)
        self.end_key_projection = nn.Linear(d, d)
        self.start_query_projection = nn.Linear(hidden, d // 2 if self.rotary else d)

    def project(self, states: torch.Tensor, queries: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start and end keys ``(N, d)`` and each query's gate ``(Q, d)``."""
        start, end = self.start_pair_projection(states), self.end_key_projection(states)
        gate = torch.sigmoid(self.start_query_projection(queries))
        if self.rotary:
            start, end = rotate(start, self.rotary_base), rotate(end, self.rotary_base)
            gate = gate.repeat_interleave(2, dim=-1)
        return start, end, gate


class PairScorer(nn.Module):
    """One logit per (query, proposed span)."""

    def __init__(self, hidden: int, s: Settings):
        super().__init__()
        p = s.pair_dim
        if s.multihead_pair_compat_heads <= 0 or p % s.multihead_pair_compat_heads:
            raise ValueError(f"boundary_head.pair_dim {p} is not divisible by multihead_pair_compat_heads "
                             f"{s.multihead_pair_compat_heads}")
        self.s = s
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


def propose(proposer: Proposer, s: Settings, states: torch.Tensor, queries: torch.Tensor, start: torch.Tensor,
            end: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query's candidate spans: starts, ends (``(Q, C)`` boundary indices) and which slots hold one."""
    n_bounds = states.shape[0]
    keys_s, keys_e, gate = proposer.project(states, queries)
    scale = 1.0 / math.sqrt(s.boundary_dim)
    position = torch.arange(n_bounds, device=states.device)

    def paired(marginal, anchor_keys, other_keys, other_marginal, k, per_anchor, later):
        """The ``per_anchor`` best partners of each of the ``k`` best anchors (starts, or ends)."""
        top, anchors = torch.sort(marginal, dim=-1, descending=True, stable=True)
        top, anchors = top[:, :k], anchors[:, :k]
        scores = torch.einsum("qkd,ed->qke", anchor_keys[anchors] * gate[:, None], other_keys) * scale
        scores = scores + other_marginal[:, None, :] + top[..., None]
        allowed = position > anchors[..., None] if later else position < anchors[..., None]
        scores, partners = torch.sort(scores.masked_fill(~allowed, MASK_LOGIT), dim=-1, descending=True, stable=True)
        scores, partners = scores[..., :per_anchor], partners[..., :per_anchor]
        anchors = anchors[..., None].expand_as(partners)
        valid = partners > anchors if later else partners < anchors
        return anchors.flatten(1), partners.flatten(1), scores.flatten(1), valid.flatten(1)

    fs, fe, fscore, fvalid = paired(start, keys_s, keys_e, end, budget(n_bounds, s.start_top_k, s), s.ends_per_start, True)
    parts = [(fs, fe, fscore, fvalid)]
    if s.bidirectional_proposals:
        be, bs, bscore, bvalid = paired(end, keys_e, keys_s, start, budget(n_bounds, s.end_top_k, s), s.starts_per_end,
                                        False)
        parts.append((bs, be, bscore, bvalid))
    starts, ends, scores, valid = (torch.cat(x, -1) for x in zip(*parts))
    # the distinct pairs, each at its best score; then best first (ties: smaller key), up to the budget
    keys = torch.where(valid, starts * n_bounds + ends, n_bounds * n_bounds)
    scores = torch.where(valid, scores, MASK_LOGIT)
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    keys, scores, valid = keys.gather(1, order), scores.gather(1, order), valid.gather(1, order)
    order = torch.argsort(keys, dim=-1, stable=True)
    keys, scores, valid = keys.gather(1, order), scores.gather(1, order), valid.gather(1, order)
    first = torch.ones_like(valid)
    first[:, 1:] = keys[:, 1:] != keys[:, :-1]
    keep = valid & first
    order = torch.argsort(torch.where(keep, scores, MASK_LOGIT), dim=-1, descending=True, stable=True)
    order = order[:, : s.candidate_budget]
    keys, keep = keys.gather(1, order), keep.gather(1, order)
    keys = torch.where(keep, keys, 0)
    return keys // n_bounds, keys % n_bounds, keep


def pair_logits(proposer: Proposer, scorer: PairScorer, s: Settings, words: torch.Tensor, queries: torch.Tensor,
                states: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                inside: Optional[Tuple[torch.Tensor, torch.Tensor]], starts: torch.Tensor, ends: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
    """``(Q, C)`` logits of spans ``starts``/``ends`` ``(Q, C)`` for each query (``MASK_LOGIT`` where not
    ``valid``); ``inside``: the inside prefix and mean of the queries, or None."""
    keys_s, keys_e, gate = proposer.project(states, queries)
    prior = (keys_s[starts] * gate[:, None] * keys_e[ends]).sum(-1) / math.sqrt(s.boundary_dim)
    prior = torch.where(valid, prior, 0.0)
    ps, pe = scorer.start_endpoint_projection(states), scorer.end_endpoint_projection(states)
    query_gate = torch.sigmoid(scorer.query_gate(queries))
    if s.enable_rotary_endpoints:
        ps, pe = rotate(ps, s.rotary_base), rotate(pe, s.rotary_base)
        query_gate = query_gate.repeat_interleave(2, dim=-1)
    sp, ep = ps[starts], pe[ends]  # (Q, C, p)
    q, c = starts.shape
    if s.reranker_endpoint_compat:
        heads = (sp * query_gate[:, None] * ep).reshape(q, c, s.multihead_pair_compat_heads, -1).sum(-1)
        logits = scorer.compat_mix(heads).squeeze(-1) / math.sqrt(s.pair_dim)
    else:
        logits = torch.zeros_like(prior)
    if s.endpoint_difference_features:
        difference = sp - ep
        logits = logits + scorer.endpoint_difference_projection(torch.cat((difference, difference.abs()), -1)).squeeze(-1)
    logits = logits + start.gather(1, starts) + end.gather(1, ends) + prior
    if s.enable_span_content:
        content = scorer.content_pooler(words, starts.flatten(), ends.flatten(), logits.dtype).view(q, c, -1)
        coefficient = scorer.content_query_projection(queries)[:, None]
        logits = logits + (content * coefficient).sum(-1) / math.sqrt(content.shape[-1])
        logits = logits + scorer.content_bias(content).squeeze(-1)
    if inside is not None:
        prefix, mean = inside
        interval = (prefix.gather(1, ends) - prefix.gather(1, starts) + mean * (ends - starts).float()).to(logits.dtype)
        weight = scorer.inside_weight(queries) if s.query_conditioned_inside_weight else scorer.inside_weight
        logits = logits + weight * (interval / torch.sqrt((ends - starts).clamp(min=1).to(logits.dtype)))
    length = (ends - starts).clamp(min=1).float()
    features = torch.stack([torch.log1p(length), length / max(words.shape[0], 1), torch.rsqrt(length)], -1)
    logits = logits + (features * scorer.length_query_projection(queries)[:, None]).sum(-1)
    return logits.masked_fill(~valid, MASK_LOGIT)
