"""Relations on GLiNER2.5 "boundary" checkpoints (pure torch): head x tail pairs of candidates.

Per relation, the candidates of its head slot and of its tail slot (probabilities without
temperature, at or above ``relation_argument_proposal_threshold``) are ranked, the best
``relation_heads_per_type`` heads and ``relation_tails_per_type`` tails are paired (a span is not
paired with itself), the ``relation_pair_cap`` most probable pairs are kept and an MLP scores each
from the word states at the arguments' ends, the relation's state, their order and distance
(the distance is divided by the text's own word count: the reference divides by the padded
width of its batch, so its confidences move with the batch by up to 1e-4).
"""
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import nn

from .boundary import BoundarySettings, Candidates

Pair = Tuple[int, int]


@dataclass
class RelationPairs:
    """One relation's scored pairs: ``heads``/``tails`` as (start, end) boundary indices, the
    arguments' probabilities and each pair's probability (after the relation temperature)."""

    heads: List[Pair]
    tails: List[Pair]
    head_probs: List[float]
    tail_probs: List[float]
    probs: List[float]


class RelationScorer(nn.Module):
    """The reference's ``relation_scorer``: an MLP over the pair's features, optionally plus a
    biaffine term over the arguments' mean word states."""

    def __init__(self, hidden: int, settings: BoundarySettings):
        super().__init__()
        query = 2 * hidden if settings.directional_relation_states else hidden
        self.directional = settings.directional_relation_states
        self.mlp = nn.Sequential(nn.Linear(4 * hidden + query + 2, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, 1))
        self.biaffine = settings.relation_biaffine_content
        if self.biaffine:
            self.head_content_projection = nn.Linear(hidden, hidden)
            self.tail_content_projection = nn.Linear(hidden, hidden)
            self.relation_content_gate = nn.Linear(query, hidden)
            self.content_linear = nn.Linear(2 * hidden + query, 1)

    def relation_state(self, head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        """The relation's state from its head and tail slot states."""
        return torch.cat([head, tail]) if self.directional else torch.stack([head, tail]).mean(0)

    def forward(self, words: torch.Tensor, relation: torch.Tensor, heads: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """Logits of pairs ``heads``/``tails`` ``(P, 2)`` over one text's ``words`` ``(n, H)``."""
        n = words.shape[0]
        delta = (tails[:, 0] - heads[:, 0]).to(words.dtype)
        rel = relation.expand(len(heads), -1)
        features = torch.cat([words[heads[:, 0]], words[heads[:, 1] - 1], words[tails[:, 0]], words[tails[:, 1] - 1],
                              rel, torch.sign(delta)[:, None], (delta.abs() / max(n, 1))[:, None]], -1)
        logits = self.mlp(features).squeeze(-1)
        if self.biaffine:
            cumulative = torch.cat([words.new_zeros(1, words.shape[1]), words.float().cumsum(0).to(words.dtype)])

            def mean(spans: torch.Tensor) -> torch.Tensor:
                return (cumulative[spans[:, 1]] - cumulative[spans[:, 0]]) / (spans[:, 1] - spans[:, 0]).clamp_min(1)[:, None]

            head, tail = self.head_content_projection(mean(heads)), self.tail_content_projection(mean(tails))
            gate = torch.sigmoid(self.relation_content_gate(rel))
            logits = logits + (head * gate * tail).sum(-1) / words.shape[1] ** 0.5
            logits = logits + self.content_linear(torch.cat([head, tail, rel], -1)).squeeze(-1)
        return logits


def _best(candidates: Candidates, q: int, threshold: float, keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Query ``q``'s ``keep`` best arguments ``(k, 2)`` and their probabilities (ties: by start, end,
    candidate order)."""
    spans, _, logits = candidates.query(q)
    probs = torch.sigmoid(logits)
    order = torch.argsort(spans[:, 1], stable=True)
    order = order[torch.argsort(spans[order, 0], stable=True)]
    order = order[probs[order] >= threshold]
    order = order[torch.argsort(probs[order], descending=True, stable=True)[:keep]]
    return spans[order], probs[order]


def relation_pairs(candidates: Candidates, words: torch.Tensor, scorer: RelationScorer, settings: BoundarySettings,
                   head_state: torch.Tensor, tail_state: torch.Tensor) -> RelationPairs:
    """The scored pairs of the relation whose head and tail slots are queries 0 and 1 of ``candidates``."""
    s = settings
    heads, head_p = _best(candidates, 0, s.relation_argument_proposal_threshold, s.relation_heads_per_type)
    tails, tail_p = _best(candidates, 1, s.relation_argument_proposal_threshold, s.relation_tails_per_type)
    scores = (head_p[:, None] * tail_p[None, :]).flatten()
    distinct = (heads[:, None] != tails[None, :]).any(-1).flatten()
    ranked = torch.argsort(scores.masked_fill(~distinct, float("-inf")), descending=True, stable=True)
    ranked = ranked[distinct[ranked]][: s.relation_pair_cap]
    h, t = ranked // len(tails), ranked % len(tails)
    head_spans, tail_spans = heads[h], tails[t]
    if not len(ranked):
        return RelationPairs([], [], [], [], [])
    logits = scorer(words, scorer.relation_state(head_state, tail_state), head_spans, tail_spans)
    probs = torch.sigmoid(logits / s.relation_temperature)
    return RelationPairs([tuple(x) for x in head_spans.tolist()], [tuple(x) for x in tail_spans.tolist()],
                         head_p[h].tolist(), tail_p[t].tolist(), probs.tolist())
