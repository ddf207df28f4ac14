"""The GLiNER2 model: an encoder plus span, count and classification heads.

``forward(batch)`` runs one encoder pass over a padded :class:`~..encoding.Batch`
and returns raw scores per task; decoding happens elsewhere.
"""
import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..runtime.encoder import EncoderModel
from .boundary import BoundaryHead, BoundarySettings
from .boundary_records import RecordDecoder, score_records
from .boundary_relations import RelationScorer, relation_pairs
from .encoding import CLASSIFICATION, ENTITIES, RELATION, STRUCTURE, Batch
from .layers import MAX_COUNT, SpanRep, count_layer, mlp


@dataclass(frozen=True)
class ModelSettings:
    """The head settings read from a checkpoint's ``config.json``."""

    max_width: int = 8
    counting_layer: str = "count_lstm"
    architecture: str = "span"  # or "boundary" (GLiNER2.5)
    boundary: Optional[BoundarySettings] = None  # the boundary_head settings of a boundary checkpoint

    @property
    def classification_temperature(self) -> float:
        """Class logits are divided by it (boundary checkpoints)."""
        return self.boundary.classification_temperature if self.boundary else 1.0

    @property
    def classifier_dropout(self) -> float:
        """> 0 puts a Dropout in the classifier (keys ``.0``/``.3``: boundary checkpoints)."""
        return self.boundary.dropout if self.boundary else 0.0


@dataclass
class TaskScores:
    """Raw scores of one task in one record.

    Span tasks: ``count`` (predicted instances) and ``logits`` ``(K', M, L, W)``
    (``K'`` is 1 for entities, else ``count``; ``-inf`` for spans past the text or bounded by
    a word without sub-tokens; at inference). None when the count is 0. Classification:
    ``logits`` ``(n_labels,)``.
    """

    count: int
    logits: Optional[torch.Tensor]
    count_logits: Optional[torch.Tensor] = None  # (MAX_COUNT,) for span tasks


class GLiNER2Model(EncoderModel):
    """Encoder + heads with the reference's parameter names."""

    def __init__(self, encoder: nn.Module, settings: ModelSettings, dropout: float = 0.1):
        super().__init__()
        self.settings = settings
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.classifier = mlp(hidden, 2 * hidden, 1, settings.classifier_dropout)
        if settings.architecture == "span":
            self.span_rep = SpanRep(hidden, settings.max_width, dropout)
            self.count_pred = mlp(hidden, 2 * hidden, MAX_COUNT)
            self.count_embed = count_layer(settings.counting_layer, hidden)
        else:
            self.boundary_head = BoundaryHead(hidden, settings.boundary)
            if settings.boundary.enable_relations:
                self.relation_scorer = RelationScorer(hidden, settings.boundary)
            b = settings.boundary
            if b.enable_records:
                self.record_decoder = RecordDecoder(hidden, b.record_dim, b.record_instance_queries, b.record_temperature)
        self.setup_fast_path()

    def fp32_modules(self) -> List[nn.Module]:
        """In bf16 mode the span scorer's output projection (read as weights; in bf16 it moved
        the trained model's decisions below 99 % agreement) stays fp32, as do the count
        transformer, embeddings, attention, layer norms and the GRU (not linear layers)."""
        return [self.span_rep.span_rep_layer.out_project] if self.settings.architecture == "span" else []

    def encode(self, batch: Batch) -> torch.Tensor:
        """Token embeddings ``(B, T, D)``; the fast path computes only the rows the heads read
        (:func:`_read_rows`)."""
        fast = self._fast_encoder is not None and not self.training and not torch.is_grad_enabled()
        keep = _read_rows(batch) if fast else None
        return self.run_encoder(batch.input_ids, batch.attention_mask, keep=keep)

    def forward(self, batch: Batch, counts: Optional[List[List[int]]] = None) -> List[List[TaskScores]]:
        """Scores for every task of every record: ``result[b][t]`` (:class:`TaskScores`; on a boundary
        checkpoint, extraction tasks get :class:`~.boundary.Candidates` or, for relations,
        :class:`~.boundary_relations.RelationPairs`).

        ``counts`` (training) gives each span task's gold instance count instead of
        the predicted one; span logits are then left unmasked (finite everywhere).
        """
        tokens = self.encode(batch)
        B, _, D = tokens.shape
        device = tokens.device
        words = tokens.gather(1, batch.word_pos.unsqueeze(-1).expand(-1, -1, D))
        results: List[List[Any]] = [[None] * len(r.tasks) for r in batch.records]

        span_refs, prompts, cls_refs, cls_rows = [], [], [], []
        for b, record in enumerate(batch.records):
            for t, slots in enumerate(record.tasks):
                if slots.segment.kind == CLASSIFICATION:
                    cls_refs.append((b, t, len(slots.marker_pos)))
                    cls_rows += [(b, p) for p in slots.marker_pos]
                else:
                    span_refs.append((b, t))
                    prompts.append((b, slots.prompt_pos))

        if cls_refs:
            rows = torch.tensor(cls_rows, device=device)
            logits = self.classifier(tokens[rows[:, 0], rows[:, 1]]).squeeze(-1) / self.settings.classification_temperature
            for (b, t, n), chunk in zip(cls_refs, logits.split([n for *_, n in cls_refs])):
                results[b][t] = TaskScores(0, chunk)
        if not span_refs:
            return results
        if self.settings.boundary:
            self._boundary(batch, tokens, words, span_refs, results)
            return results

        rows = torch.tensor(prompts, device=device)
        count_logits = self.count_pred(tokens[rows[:, 0], rows[:, 1]])
        if counts is None:
            chosen = count_logits.argmax(-1).tolist()
        else:
            chosen = [min(counts[b][t], MAX_COUNT - 1) for b, t in span_refs]
        # one count_embed call per (instances, fields) group; entities use the first instance
        # only, which does not depend on later ones
        groups: Dict[Tuple[int, int], List[int]] = {}
        for row, ((b, t), count) in enumerate(zip(span_refs, chosen)):
            slots = batch.records[b].tasks[t]
            if count <= 0:
                results[b][t] = TaskScores(0, None, count_logits[row])
                continue
            instances = 1 if slots.segment.kind == ENTITIES else count
            groups.setdefault((instances, len(slots.marker_pos)), []).append(row)
        task_queries: Dict[int, torch.Tensor] = {}
        for (instances, _), group in groups.items():
            fields = torch.stack([tokens[b, batch.records[b].tasks[t].marker_pos] for b, t in (span_refs[r] for r in group)])
            embedded = self.count_embed(fields, instances)  # (K', G, M, D)
            task_queries.update((r, embedded[:, i]) for i, r in enumerate(group))
        queries: Dict[int, List[torch.Tensor]] = {}
        layout = []  # (b, t, count, K', M, query offset, span task row)
        for row in sorted(task_queries):
            (b, t), q = span_refs[row], task_queries[row]
            offset = sum(x.shape[0] for x in queries.get(b, []))
            queries.setdefault(b, []).append(q.reshape(-1, D))
            layout.append((b, t, chosen[row], q.shape[0], q.shape[1], offset, row))
        if not layout:
            return results

        n_queries = [sum(x.shape[0] for x in queries.get(b, [])) for b in range(B)]
        padded = tokens.new_zeros((B, max(n_queries), D))
        for b, qs in queries.items():
            padded[b, : n_queries[b]] = torch.cat(qs)
        logits = self.span_rep.span_rep_layer.score(words, padded, batch.n_words, mask=counts is None, n_queries=n_queries)
        if counts is None:
            _skip_blank_boundaries(logits, batch)
        for b, t, count, k, m, offset, row in layout:
            task_logits = logits[b, offset : offset + k * m, : batch.n_words[b]]
            task_logits = task_logits.reshape(k, m, *task_logits.shape[1:])
            results[b][t] = TaskScores(count, task_logits, count_logits[row])
        return results


    def _boundary(self, batch: Batch, tokens: torch.Tensor, words: torch.Tensor, span_refs: List[Tuple[int, int]],
                  results: List[List[Any]]) -> None:
        """Boundary checkpoints: per text, the candidates of all its extraction queries (every field,
        label and relation slot, as the reference: one shared pool, or each query's own proposals),
        scored on that text alone."""
        by_record: Dict[int, List[int]] = {}
        for b, t in span_refs:
            by_record.setdefault(b, []).append(t)
        # a checkpoint without enable_records may hold record weights as plain buffers (kept for saving)
        records = self.record_decoder if isinstance(getattr(self, "record_decoder", None), RecordDecoder) else None
        for b, tasks in by_record.items():
            slots = [batch.records[b].tasks[t] for t in tasks]
            text = words[b, : batch.n_words[b]]
            found = self.boundary_head(text, tokens[b, [p for s in slots for p in s.marker_pos]])
            found = found.avoiding(batch.records[b].blank_words, batch.n_words[b])
            first = 0
            for t, s in zip(tasks, slots):
                results[b][t] = found.rows(first, len(s.marker_pos))
                if s.segment.kind == STRUCTURE and records is not None:  # for record-mode structures
                    results[b][t].records = functools.partial(score_records, records,
                                                              self.boundary_head.candidate_encoder, results[b][t],
                                                              tokens[b, s.marker_pos])
                if s.segment.kind == RELATION:  # the head and tail slots' candidates, paired and scored
                    head, tail = tokens[b, s.marker_pos]
                    results[b][t] = relation_pairs(results[b][t], text, self.relation_scorer, self.settings.boundary,
                                                   head, tail)
                first += len(s.marker_pos)


def _read_rows(batch: Batch) -> torch.Tensor:
    """``(B, T)`` bool: the token rows ``forward`` reads (words' first sub-tokens, ``[P]``, markers)."""
    rows = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for b, record in enumerate(batch.records):
        rows[b, record.word_pos] = True
        for slots in record.tasks:
            rows[b, [slots.prompt_pos] + slots.marker_pos] = True
    return rows.to(batch.input_ids.device)


def _skip_blank_boundaries(logits: torch.Tensor, batch: Batch) -> None:
    """Give ``-inf`` to spans ``(B, Q, L, W)`` that start or end on a word without sub-tokens.

    The encoder never sees such a word (a control character, say): a span starting or
    ending on it has exactly the representation of a neighbouring span, and which of the
    two wins would depend on float noise. It can still sit inside a span.
    """
    if not any(record.blank_words for record in batch.records):
        return
    L, W = logits.shape[-2:]
    ends = torch.arange(L)[:, None] + torch.arange(W)  # (L, W)
    for b, record in enumerate(batch.records):
        if record.blank_words:
            blank = torch.zeros(L + W, dtype=torch.bool)
            blank[record.blank_words] = True
            logits[b, :, (blank[:L, None] | blank[ends]).to(logits.device)] = float("-inf")
