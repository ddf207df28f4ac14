"""The GLiNER2.5 "boundary" extraction head, for one text at a time (pure torch).

A text of ``n`` words has ``n + 1`` boundaries; boundary ``i`` sits before word ``i``. The
head turns word states into boundary states, scores every boundary as a start and an end per
query (a label's ``[E]`` state), forms one pool of candidate spans for the whole text (the top
boundaries of all queries paired, a few best spans guaranteed per query, at most ``pool_size``
spans, no width limit) and scores every (query, candidate) pair; on ``per_query`` checkpoints
each query proposes its own spans instead (:mod:`.boundary_per_query`). Parameter names are the
reference's (``boundary_head.*``), so checkpoints load as saved. Each text is scored on its own:
no result depends on the other texts of a batch.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .boundary_layers import (MASK_LOGIT, BoundarySettings, ContentPooler, best_distinct, inside_evidence,
                              length_features, stable_top)
from .boundary_per_query import Keys, PairScorer, Proposer, propose


@dataclass
class Candidates:
    """The scored candidate spans of one text for some of its queries: ``spans`` ``(C, 2)`` half-open
    boundary indices over the prefix and text words (the shared pool) or ``(Q, C, 2)`` (each query's
    own proposals, ``valid`` ``(Q, C)`` telling the slots that hold one), ``probs`` ``(Q, C)``, per query whether it
    abstains and how many best candidates the count head adds (None: no adaptive fill), and
    ``forced(queries, spans)``: the logits (over the pair temperature) of given spans for the given
    queries (choice fields, span attributes; shared pool: scored in a pool of those queries, per-query:
    scored directly). ``logits``
    are the raw pair logits (``probs`` divide them by the pair temperature)."""

    spans: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    abstains: List[bool]
    fill: Optional[List[int]]
    policy: str
    forced: Callable[[List[int], List[Tuple[int, int]]], torch.Tensor]
    states: Optional[torch.Tensor] = None  # ``(n + 1, d)`` boundary states (record structures read them)
    records: Optional[Callable[[Any], Any]] = None  # structure -> its record scores (a structure's task)
    valid: Optional[torch.Tensor] = None

    @property
    def shared(self) -> bool:
        """Whether every query scores the same pool of spans."""
        return self.spans.dim() == 2

    def query(self, q: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query ``q``'s candidate spans ``(C_q, 2)``, their probabilities and raw logits."""
        if self.shared:
            return self.spans, self.probs[q], self.logits[q]
        keep = self.valid[q]
        return self.spans[q][keep], self.probs[q][keep], self.logits[q][keep]

    def rows(self, first: int, count: int) -> "Candidates":
        """The candidates of queries ``first .. first + count - 1`` (one task's)."""
        stop = first + count
        return Candidates(self.spans if self.shared else self.spans[first:stop], self.logits[first:stop],
                          self.probs[first:stop], self.abstains[first:stop],
                          None if self.fill is None else self.fill[first:stop], self.policy,
                          lambda queries, spans: self.forced([first + q for q in queries], spans), self.states,
                          valid=None if self.valid is None else self.valid[first:stop])

    def avoiding(self, words: List[int], n_words: int) -> "Candidates":
        """These candidates without the spans that start or end on one of ``words``: words without
        sub-tokens, which the encoder never sees (a control character), so that such a span has the
        states of a neighbouring one and would tie with it by float noise (as the span head's rule)."""
        if not words:
            return self
        blank = torch.zeros(n_words + 1, dtype=torch.bool, device=self.spans.device)
        blank[words] = True
        bad = blank[self.spans[..., 0].clamp(0, n_words)] | blank[(self.spans[..., 1] - 1).clamp(0, n_words)]
        if self.shared:
            keep = ~bad
            return dataclasses.replace(self, spans=self.spans[keep], logits=self.logits[:, keep], probs=self.probs[:, keep])
        return dataclasses.replace(self, valid=self.valid & ~bad)


def _linear(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out)


class _SwiGLU(nn.Module):
    """Pre-norm residual SwiGLU block."""

    def __init__(self, dim: int, multiplier: float):
        super().__init__()
        hidden = max(1, int(dim * multiplier))
        self.norm = nn.LayerNorm(dim)
        self.input_projection = _linear(dim, 2 * hidden)
        self.output_projection = _linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.input_projection(self.norm(x)).chunk(2, dim=-1)
        return x + self.output_projection(value * F.silu(gate))


class _BoundaryAttention(nn.Module):
    """Pre-norm self-attention over the boundaries, optionally within a window."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.norm = nn.LayerNorm(dim)
        self.qkv_projection = _linear(dim, 3 * dim)
        self.output_projection = _linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        q, k, v = self.qkv_projection(self.norm(x)).view(n, 3, self.heads, d // self.heads).permute(1, 2, 0, 3)
        mask = None
        if self.window > 0:
            pos = torch.arange(n, device=x.device)
            mask = (pos[:, None] - pos[None, :]).abs() <= self.window
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.output_projection(out.transpose(0, 1).reshape(n, d))


class _BoundaryEncoder(nn.Module):
    """Word states -> boundary states: [left word ; right word] (BOS / EOS at the ends)."""

    def __init__(self, hidden: int, s: BoundarySettings):
        super().__init__()
        d = s.boundary_dim
        self.left_projection = _linear(hidden, d)
        self.right_projection = _linear(hidden, d)
        self.output_projection = _linear(2 * d, d)
        self.layer_norm = nn.LayerNorm(d)
        self.attention_blocks = nn.ModuleList(
            _BoundaryAttention(d, s.boundary_attention_heads, s.boundary_attention_window)
            for _ in range(s.boundary_attention_layers))
        self.refinement_blocks = nn.ModuleList(
            _SwiGLU(d, s.boundary_ffn_multiplier) for _ in range(s.boundary_refinement_layers))
        self.bos_state = nn.Parameter(torch.zeros(hidden))
        self.eos_state = nn.Parameter(torch.zeros(hidden))

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        left = torch.cat([self.bos_state[None].to(words.dtype), words])
        right = torch.cat([words, self.eos_state[None].to(words.dtype)])
        x = self.layer_norm(self.output_projection(torch.cat([self.left_projection(left), self.right_projection(right)], -1)))
        for block in self.attention_blocks:
            x = block(x)
        for block in self.refinement_blocks:
            x = block(x)
        return x


class _QueryHead(nn.Module):
    """Start, end (per boundary) and inside (per word) logits of every query."""

    def __init__(self, hidden: int, d: int):
        super().__init__()
        self.start_boundary_projection = _linear(d, d)
        self.start_query_projection = _linear(hidden, d)
        self.end_boundary_projection = _linear(d, d)
        self.end_query_projection = _linear(hidden, d)
        self.inside_text_projection = _linear(hidden, d)
        self.inside_query_projection = _linear(hidden, d)


class _PoolBuilder(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.start_projection = _linear(d, d)
        self.end_projection = _linear(d, d)


def _overlap_buckets(spans: torch.Tensor) -> torch.Tensor:
    """``(C, C)`` geometry of every ordered candidate pair, in the reference's 8 buckets."""
    s1, e1 = spans[:, None, 0], spans[:, None, 1]
    s2, e2 = spans[None, :, 0], spans[None, :, 1]
    out = torch.full(s1.shape[:1] + s2.shape[1:], 3, dtype=torch.long, device=spans.device)  # crossing
    for bucket, where in ((6, e1 <= s2), (7, e2 <= s1), (1, (s1 > s2) & (e1 < e2)), (2, (s1 < s2) & (e1 > e2)),
                          (4, (s1 == s2) & (e1 != e2)), (5, (e1 == e2) & (s1 != s2)), (0, (s1 == s2) & (e1 == e2))):
        out = torch.where(where, bucket, out)
    return out


def _ffn(dim: int) -> nn.Sequential:
    return nn.Sequential(_linear(dim, 4 * dim), nn.GELU(), nn.Identity(), _linear(4 * dim, dim))


class _CandidateAttention(nn.Module):
    """Self-attention over the candidates with a learned bias per overlap geometry."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = _linear(dim, 3 * dim)
        self.output = _linear(dim, dim)
        self.relative_bias = nn.Parameter(torch.zeros(8, heads))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _ffn(dim)

    def forward(self, x: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        c, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(c, 3, self.heads, d // self.heads).permute(1, 2, 0, 3)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        logits = logits + self.relative_bias[_overlap_buckets(spans)].permute(2, 0, 1)
        attended = (torch.softmax(logits, -1) @ v).transpose(0, 1).reshape(c, d)
        x = x + self.output(attended)
        return x + self.ffn(self.norm2(x))


class _QueryAttention(nn.Module):
    """Query self-attention after adding evidence summarised from the candidates."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query_in = _linear(dim, dim)
        self.evidence_in = _linear(dim, dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _ffn(dim)

    def forward(self, query: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
        x = self.query_in(query) + self.evidence_in(evidence)
        normed = self.norm1(x)[None]
        x = x + self.attention(normed, normed, normed, need_weights=False)[0][0]
        return x + self.ffn(self.norm2(x))


class _PoolScorer(nn.Module):
    """One state per candidate, scored against every query (dot product + FiLM MLP + marginals)."""

    def __init__(self, hidden: int, s: BoundarySettings):
        super().__init__()
        d, p = s.boundary_dim, s.pair_dim
        self.start_projection = _linear(d, p)
        self.end_projection = _linear(d, p)
        self.length_projection = _linear(3, p)
        self.prior_projection = _linear(1, p)
        if s.enable_span_content:
            self.content_pooler = ContentPooler(hidden, s.content_dim, s.content_soft_max_pool)
            self.content_projection = _linear(s.content_dim * (2 if s.content_soft_max_pool else 1), p)
        self.candidate_norm = nn.LayerNorm(p)
        self.candidate_layers = nn.ModuleList(
            _CandidateAttention(p, s.candidate_attention_heads) for _ in range(s.candidate_attention_layers))
        self.query_projection = _linear(hidden, p)
        self.query_layers = nn.ModuleList(
            _QueryAttention(p, s.candidate_attention_heads) for _ in range(s.query_attention_layers))
        self.film = _linear(p, 2 * p)
        self.film_output = nn.Sequential(_linear(p, 64), nn.GELU(), nn.Identity(), _linear(64, 1))


class BoundaryHead(nn.Module):
    """Boundary encoder, marginals, candidates (the shared pool and its scorer, or per-query proposals
    and their pair scorer: both are in every checkpoint, ``candidate_pool`` picks one), abstention
    and count."""

    def __init__(self, hidden: int, settings: BoundarySettings):
        super().__init__()
        self.settings = s = settings
        self.boundary_encoder = _BoundaryEncoder(hidden, s)
        self.boundary_query_head = _QueryHead(hidden, s.boundary_dim)
        self.shared_pool_builder = _PoolBuilder(s.boundary_dim)
        self.shared_pool_scorer = _PoolScorer(hidden, s)
        self.boundary_proposer = Proposer(hidden, s)
        self.pair_scorer = PairScorer(hidden, s)
        self.null_projection = _linear(hidden, 1) if s.enable_abstention else None
        self.count_head = _linear(hidden, 1) if s.enable_count_head else None
        if s.enable_records:  # candidate states of record structures
            self.candidate_encoder = _linear(2 * s.boundary_dim, hidden)

    def forward(self, words: torch.Tensor, queries: torch.Tensor) -> Candidates:
        """Score ``queries`` ``(Q, H)`` over one text's ``words`` ``(n, H)`` (prefix words included)."""
        s = self.settings
        valid = None
        if s.shared:
            spans, logits, _, states = self.score(words, queries)

            def forced(rows: List[int], wanted: List[Tuple[int, int]]) -> torch.Tensor:
                _, logits, at, _ = self.score(words, queries[rows], torch.tensor(wanted, device=words.device))
                return logits[:, at] / s.pair_temperature
        else:
            spans, logits, valid, states, forced = self.propose(words, queries)
        probs = torch.sigmoid(logits / s.pair_temperature)
        abstains = [False] * queries.shape[0]
        if self.null_projection is not None:
            abstains = (torch.sigmoid(self.null_projection(queries).squeeze(-1)) > s.abstention_threshold).tolist()
        fill = None
        if s.adaptive_threshold and self.count_head is not None:
            rates = self.count_head(queries).squeeze(-1)
            fill = torch.exp(rates).round().long().clamp(0, s.max_candidates).tolist()
        return Candidates(spans, logits, probs, abstains, fill, s.overlap_policy, forced, states, valid=valid)

    def _marginals(self, words: torch.Tensor, queries: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boundary states ``(n + 1, d)`` and every query's start and end logits ``(Q, n + 1)``."""
        states = self.boundary_encoder(words)
        qh = self.boundary_query_head
        scale = 1.0 / math.sqrt(self.settings.boundary_dim)
        start = qh.start_query_projection(queries) @ qh.start_boundary_projection(states).T * scale
        end = qh.end_query_projection(queries) @ qh.end_boundary_projection(states).T * scale
        return states, start, end

    def propose(self, words: torch.Tensor, queries: torch.Tensor):
        """Per-query candidates: spans ``(Q, C, 2)``, logits ``(Q, C)``, valid slots, the boundary states
        and ``forced(rows, spans)``: the logits (over the pair temperature) of given spans for some of
        the queries, scored directly (no proposal step, as the reference on this path)."""
        s = self.settings
        states, start, end = self._marginals(words, queries)
        keys = self.boundary_proposer(states, queries)
        inside = self._inside(words, queries) if s.use_inside_evidence else None
        starts, ends, valid = propose(s, keys, start, end)
        logits = self.pair_scorer(s, keys, words, queries, states, start, end, inside, starts, ends, valid)

        def forced(rows: List[int], wanted: List[Tuple[int, int]]) -> torch.Tensor:
            spans = torch.tensor(wanted, device=words.device).expand(len(rows), -1, -1)
            legal = (spans[..., 0] >= 0) & (spans[..., 1] > spans[..., 0]) & (spans[..., 1] <= words.shape[0])
            spans = spans.clamp(0, words.shape[0])
            picked = Keys(keys.start, keys.end, keys.gate[rows])
            rows_inside = None if inside is None else (inside[0][rows], inside[1][rows])
            return self.pair_scorer(s, picked, words, queries[rows], states, start[rows], end[rows], rows_inside,
                                    spans[..., 0], spans[..., 1], legal) / s.pair_temperature

        return torch.stack([starts, ends], -1), logits, valid, states, forced

    def score(self, words: torch.Tensor, queries: torch.Tensor, forced: Optional[torch.Tensor] = None):
        """The pool ``(C, 2)``, its logits ``(Q, C)``, where the ``forced`` spans ``(F, 2)`` sit in it (they
        join the pool ahead of every other candidate: how the reference scores given spans) and the
        boundary states ``(n + 1, d)``."""
        states, start, end = self._marginals(words, queries)
        spans, compat = self._pool(states, start, end, forced)
        logits = self._score(words, queries, states, spans, compat, start, end)
        at = None
        if forced is not None:
            keys = spans[:, 0] * states.shape[0] + spans[:, 1]
            at = [int((keys == int(s_) * states.shape[0] + int(e_)).nonzero()[0]) for s_, e_ in forced.tolist()]
        return spans, logits, at, states

    def _inside(self, words: torch.Tensor, queries: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(Q, n + 1)``: per query, the centred cumulative inside logit before each boundary; with
        the mean it restores, ``prefix[e] - prefix[s] + mean * (e - s)`` sums the span's words."""
        qh = self.boundary_query_head
        inside = (qh.inside_query_projection(queries) @ qh.inside_text_projection(words).T).float()
        inside = inside / math.sqrt(self.settings.boundary_dim)
        mean = inside.mean(-1, keepdim=True)
        return torch.cat([inside.new_zeros(inside.shape[0], 1), (inside - mean).cumsum(-1)], -1), mean

    def _pool(self, states: torch.Tensor, start: torch.Tensor, end: torch.Tensor, forced: Optional[torch.Tensor]):
        """The document's candidate spans ``(C, 2)`` (C <= pool_size) and their start-end compatibility."""
        s = self.settings
        n_bounds, d = states.shape
        k = min(s.pool_boundary_top_k, n_bounds)
        union_start, union_end = start.amax(0), end.amax(0)
        starts = torch.sort(union_start, descending=True, stable=True).indices[:k]
        ends = torch.sort(union_end, descending=True, stable=True).indices[:k]
        pair_s, pair_e = starts.repeat_interleave(k), ends.repeat(k)  # pair i * k + j: starts[i], ends[j]
        valid = pair_e > pair_s
        builder = self.shared_pool_builder
        projected_s, projected_e = builder.start_projection(states), builder.end_projection(states)
        compat = (projected_s[starts] @ projected_e[ends].T).flatten() / math.sqrt(d)
        keys = pair_s * n_bounds + pair_e
        priority = (compat.view(k, k) + union_start[starts, None] + union_end[None, ends]).flatten()
        quota = min(s.min_pool_per_query, keys.numel())
        marginals = (start[:, starts, None] + end[:, None, ends]).flatten(1)
        per_query = (marginals + compat).masked_fill(~valid, MASK_LOGIT)
        ranked = stable_top(per_query, quota)
        # each query's best `quota` pairs come first (priority 5000 + rank bonus), then the rest by score
        bonus = torch.arange(quota, 0, -1, dtype=priority.dtype, device=priority.device) - MASK_LOGIT * 0.5
        keys = torch.cat([keys[ranked].reshape(-1), keys])
        priority = torch.cat([bonus.expand(ranked.shape).reshape(-1), priority])
        valid = torch.cat([valid[ranked].reshape(-1), valid])
        if forced is not None:
            keys = torch.cat([keys, forced[:, 0] * n_bounds + forced[:, 1]])
            priority = torch.cat([priority, priority.new_full((len(forced),), -MASK_LOGIT)])
            valid = torch.cat([valid, (forced[:, 0] >= 0) & (forced[:, 1] > forced[:, 0]) & (forced[:, 1] < n_bounds)])
        kept, real = best_distinct(keys[None], priority[None], valid[None], s.pool_size)
        kept = kept[0][real[0]]
        spans = torch.stack([kept // n_bounds, kept % n_bounds], -1)
        compat = (projected_s[spans[:, 0]] * projected_e[spans[:, 1]]).sum(-1) / math.sqrt(d)
        return spans, compat

    def _score(self, words, queries, states, spans, compat, start, end) -> torch.Tensor:
        """``(Q, C)`` pair logits."""
        scorer = self.shared_pool_scorer
        cs, ce = spans[:, 0], spans[:, 1]
        features = length_features(cs, ce, words.shape[0], states.dtype)
        cand = (scorer.start_projection(states)[cs] + scorer.end_projection(states)[ce]
                + scorer.length_projection(features) + scorer.prior_projection(compat[:, None]))
        if hasattr(scorer, "content_pooler"):
            cand = cand + scorer.content_projection(scorer.content_pooler(words, cs, ce, cand.dtype))
        cand = scorer.candidate_norm(cand)
        for layer in scorer.candidate_layers:
            cand = layer(cand, spans)
        query = scorer.query_projection(queries)
        for layer in scorer.query_layers:
            weights = torch.softmax(query @ cand.T, dim=-1)  # (Q, C): each query's view of the pool
            query = layer(query, weights @ cand)
        logits = query @ cand.T / math.sqrt(cand.shape[-1])
        gamma, beta = scorer.film(query).chunk(2, -1)
        conditioned = cand[None] * (1.0 + gamma[:, None]) + beta[:, None]  # (Q, C, p)
        logits = logits + scorer.film_output(conditioned).squeeze(-1)
        logits = logits + start[:, cs] + end[:, ce]
        if self.settings.use_inside_evidence:
            logits = logits + inside_evidence(self._inside(words, queries), cs, ce).to(logits.dtype)
        return logits
