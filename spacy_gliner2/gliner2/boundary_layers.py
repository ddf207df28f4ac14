"""Settings and building blocks shared by both candidate paths of GLiNER2.5 "boundary" checkpoints
(the shared pool, :mod:`.boundary`, and per-query proposals, :mod:`.boundary_per_query`)."""
from dataclasses import dataclass, fields
from typing import Any, Dict, Tuple

import torch
from torch import nn

MASK_LOGIT = -1.0e4  # the reference's finite "impossible" logit
POLICIES = ("flat", "nested", "longest")


@dataclass(frozen=True)
class BoundarySettings:
    """The ``boundary_head`` keys of ``config.json`` this head reads (defaults: gliner2 2.1.0's)."""

    boundary_dim: int = 128
    pair_dim: int = 128
    boundary_refinement_layers: int = 1
    boundary_ffn_multiplier: float = 2.0
    boundary_attention_layers: int = 0
    boundary_attention_heads: int = 4
    boundary_attention_window: int = 0
    use_inside_evidence: bool = True
    enable_span_content: bool = False
    content_dim: int = 64
    content_soft_max_pool: bool = False
    candidate_pool: str = "per_query"
    pool_boundary_top_k: int = 64
    pool_size: int = 384
    min_pool_per_query: int = 8
    start_top_k: int = 16
    end_top_k: int = 16
    ends_per_start: int = 8
    starts_per_end: int = 8
    candidate_budget: int = 128
    bidirectional_proposals: bool = True
    boundary_top_k_alpha: float = 0.0
    boundary_top_k_max: int = 128
    boundary_top_k_bucket: int = 8
    enable_rotary_endpoints: bool = False
    rotary_base: float = 10000.0
    query_conditioned_inside_weight: bool = False
    endpoint_difference_features: bool = False
    reranker_endpoint_compat: bool = True
    multihead_pair_compat_heads: int = 8
    candidate_attention_layers: int = 2
    candidate_attention_heads: int = 4
    query_attention_layers: int = 1
    enable_abstention: bool = True
    abstention_threshold: float = 0.5
    enable_count_head: bool = True
    adaptive_threshold: bool = False
    overlap_policy: str = "flat"
    pair_temperature: float = 1.0
    classification_temperature: float = 1.0
    dropout: float = 0.1
    enable_relations: bool = True
    relation_heads_per_type: int = 32
    relation_tails_per_type: int = 32
    relation_pair_cap: int = 128
    relation_argument_proposal_threshold: float = 0.0
    relation_temperature: float = 1.0
    directional_relation_states: bool = False
    relation_biaffine_content: bool = False
    enable_records: bool = True
    record_dim: int = 128
    record_instance_queries: int = 32
    record_temperature: float = 1.0

    @classmethod
    def read(cls, head: Dict[str, Any]) -> "BoundarySettings":
        """The settings of a ``boundary_head`` dict; keys it does not name keep their defaults."""
        known = {f.name: f.type for f in fields(cls)}
        values = {k: v for k, v in head.items() if k in known}
        settings = cls(**values)
        policy = {"disallow": "flat"}.get(settings.overlap_policy, settings.overlap_policy)
        if policy not in POLICIES:
            raise ValueError(f"boundary_head.overlap_policy {settings.overlap_policy!r} is not one of {list(POLICIES)}")
        for name in ("pair_temperature", "classification_temperature", "relation_temperature", "record_temperature"):
            if getattr(settings, name) <= 0:
                raise ValueError(f"boundary_head.{name} must be > 0, not {getattr(settings, name)}")
        if settings.candidate_pool not in ("shared", "per_query"):
            raise ValueError(f"boundary_head.candidate_pool {settings.candidate_pool!r} is not 'shared' or 'per_query'")
        return cls(**{**values, "overlap_policy": policy})

    @property
    def shared(self) -> bool:
        """Whether candidates come from one pool per text (else each query proposes its own)."""
        return self.candidate_pool == "shared"

    @property
    def max_candidates(self) -> int:
        """The most candidates one query can have (the count head's fill is capped by it)."""
        return self.pool_size if self.shared else self.candidate_budget


class ContentPooler(nn.Module):
    """Mean (and optionally a smooth maximum) of projected word states over a span."""

    def __init__(self, hidden: int, dim: int, soft_max: bool):
        super().__init__()
        self.soft_max = soft_max
        self.value_projection = nn.Linear(hidden, dim)
        self.layer_norm = nn.LayerNorm(dim * (2 if soft_max else 1))

    def forward(self, words: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        values = self.value_projection(words).float()
        zero = values.new_zeros(1, values.shape[1])
        cumulative = torch.cat([zero, values.cumsum(0)])
        pooled = (cumulative[ends] - cumulative[starts]) / (ends - starts).clamp_min(1)[:, None].float()
        if self.soft_max:
            floor = torch.finfo(torch.float32).min / 4.0
            lse = torch.cat([zero.fill_(floor), torch.logcumsumexp(values, 0)])
            delta = (lse[starts] - lse[ends]).clamp(max=-1e-6)
            smooth = torch.nan_to_num(lse[ends] + torch.log1p(-torch.exp(delta)), neginf=0.0, posinf=0.0)
            pooled = torch.cat([pooled, smooth], -1)
        return self.layer_norm(pooled.to(dtype))


def stable_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``argsort(scores, dim=-1, descending=True, stable=True)[..., :k]`` (ties: smaller index first)
    without sorting whole rows: the top ``k`` by ``topk``, then only those sorted."""
    if k >= scores.shape[-1] or k <= 0:
        return torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :k]
    flat = scores.reshape(-1, scores.shape[-1])
    kth = flat.topk(k, dim=-1).values[:, -1:]
    chosen = flat >= kth
    tied = (chosen.sum(-1) != k).nonzero().squeeze(1)  # the k-th value recurs past the k-th place
    if len(tied):  # of the tied values, the first ones
        rows, at = flat[tied], kth[tied]
        above, equal = rows > at, rows == at
        chosen[tied] = above | (equal & (equal.cumsum(-1) <= k - above.sum(-1, keepdim=True)))
    index = chosen.nonzero()[:, 1].view(*scores.shape[:-1], k)  # ascending per row
    return index.gather(-1, torch.argsort(scores.gather(-1, index), dim=-1, descending=True, stable=True))


def best_distinct(keys: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor,
                  capacity: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``(R, P)`` candidate keys: the distinct valid keys, each at its best score, best
    first (ties: smaller key), at most ``capacity``; returns the keys and which of them are real."""
    keys = torch.where(valid, keys, torch.iinfo(keys.dtype).max)
    scores = torch.where(valid, scores, MASK_LOGIT)
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    keys, scores, valid = keys.gather(-1, order), scores.gather(-1, order), valid.gather(-1, order)
    order = torch.argsort(keys, dim=-1, stable=True)
    keys, scores, valid = keys.gather(-1, order), scores.gather(-1, order), valid.gather(-1, order)
    first = torch.ones_like(valid)
    first[..., 1:] = keys[..., 1:] != keys[..., :-1]
    keep = valid & first
    order = torch.argsort(torch.where(keep, scores, MASK_LOGIT), dim=-1, descending=True, stable=True)[..., :capacity]
    return keys.gather(-1, order), keep.gather(-1, order)


def length_features(starts: torch.Tensor, ends: torch.Tensor, n_words: int, dtype: torch.dtype) -> torch.Tensor:
    """``(..., 3)``: log(1 + length), length / words in the text, 1 / sqrt(length) of each span."""
    length = (ends - starts).clamp_min(1).to(dtype)
    return torch.stack([torch.log1p(length), length / max(n_words, 1), torch.rsqrt(length)], -1)


def inside_evidence(inside: Tuple[torch.Tensor, torch.Tensor], starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """``(Q, C)`` float32: each query's summed inside logits over each span's words, over sqrt(length);
    ``inside`` is the queries' centred prefix ``(Q, n + 1)`` and mean ``(Q, 1)``, spans are ``(C,)``
    (shared by the queries) or ``(Q, C)``."""
    prefix, mean = inside
    starts, ends = starts.expand(prefix.shape[0], -1), ends.expand(prefix.shape[0], -1)
    interval = prefix.gather(1, ends) - prefix.gather(1, starts) + mean * (ends - starts).float()
    return interval / torch.sqrt((ends - starts).clamp_min(1).float())
