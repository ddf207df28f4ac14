"""Training: gold Docs -> per-example prompts and targets -> the GLiNER2 losses.

Gold uses the plain-data result shape of :mod:`.decoding` (entities as
``(label, start_char, end_char)``, classes as probabilities, structures and
relations as result dicts). Pure Python/torch: the component calls
:func:`training_loss` and steps its own optimizer (:mod:`..core.optim`).
"""
import bisect
import logging
import random
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..core.class_sampling import gold_items
from ..core.optim import OptimSettings
from ..schema import EntityType, Schema
from ..text import Word
from .encoding import CLASSIFICATION, ENTITIES, RELATION, STRUCTURE, EncodedText, make_batch
from .layers import MAX_COUNT
from .model import GLiNER2Model, TaskScores

logger = logging.getLogger(__name__)

@dataclass
class TrainingSettings(OptimSettings):
    """The GLiNER2 ``training`` config block: optimiser settings and example sampling."""

    negatives: int = 5  # negative entity labels sampled per example
    label_dropout: float = 0.1  # chance to leave a label out of an example's prompt
    negative_span_mask: float = 0.5  # share of negative spans left out of the loss
    class_negatives: int = -1  # negative labels per classification prompt (-1: all of the task's labels)
    gold_spans_key: Optional[str] = None  # None: gold entities from doc.ents

    LIMITS = {**OptimSettings.LIMITS, "negatives": (0, None), "label_dropout": (0, 1), "negative_span_mask": (0, 1),
              "class_negatives": (-1, None)}


@dataclass
class Gold:
    """What one Doc teaches, as character offsets into its text."""

    entities: List[Tuple[str, int, int]] = field(default_factory=list)
    entities_annotated: bool = True  # False: the Doc says nothing about entities (teaches none, nor their absence)
    cats: Dict[str, float] = field(default_factory=dict)  # doc.cats (keys by Schema.cats_keys)
    classes: Dict[str, List[float]] = field(default_factory=dict)  # per prompt task: targets of its labels
    structures: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    relations: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)


def _inside(value: Any, start: int, end: int) -> bool:
    """Every span of a gold value lies in ``[start, end)`` (choices always do)."""
    if isinstance(value, (list, tuple)):
        return all(_inside(v, start, end) for v in value)
    if isinstance(value, dict):
        if "start" in value:
            return start <= value["start"] and value["end"] <= end
        return all(_inside(v, start, end) for v in value.values())
    return True


def window_gold(gold: Gold, start: int, end: int) -> Gold:
    """The gold of one window: entities, structure instances and relations inside it."""
    return Gold(
        entities=[e for e in gold.entities if start <= e[1] and e[2] <= end],
        entities_annotated=gold.entities_annotated,
        cats=gold.cats,
        classes=gold.classes,
        structures={k: [i for i in v if _inside(i, start, end)] for k, v in gold.structures.items()},
        relations={k: [r for r in v if _inside(r, start, end)] for k, v in gold.relations.items()},
    )


def outside_every_window(gold: Gold, windows: Sequence[Tuple[int, int]]) -> int:
    """How many gold entities, structure instances and relations lie inside none of the
    ``(start, end)`` character windows: no window can teach them."""
    items = [{"start": start, "end": end} for _, start, end in gold.entities]
    items += [item for section in (gold.structures, gold.relations) for found in section.values() for item in found]
    return sum(not any(_inside(item, start, end) for start, end in windows) for item in items)


def label_groups(label_sets: Iterable[Iterable[str]]) -> List[List[str]]:
    """Entity labels that share a Doc, transitively: one group per data set of a mixed corpus
    (whose label names differ), found in one pass over the Docs' label sets."""
    parent: Dict[str, str] = {}

    def root(label: str) -> str:
        while parent.setdefault(label, label) != label:
            parent[label] = parent[parent[label]]
            label = parent[label]
        return label

    for labels in label_sets:
        labels = list(labels)
        for a, b in zip(labels, labels[1:] or labels):
            parent[root(a)] = root(b)
    groups: Dict[str, List[str]] = {}
    for label in parent:
        groups.setdefault(root(label), []).append(label)
    return sorted(sorted(g) for g in groups.values())


def negative_pool(gold_labels: Sequence[str], groups: Sequence[Sequence[str]], entity_labels: Sequence[str]) -> List[str]:
    """The labels an example's negatives are drawn from: those of its own data set (the groups
    of its gold labels) and labels no Doc has shown; every label for a Doc without entities or
    when no groups were learned. Labels of other data sets would be false negatives there."""
    mine = {label for group in groups if not set(group).isdisjoint(gold_labels) for label in group}
    if not mine:
        return list(entity_labels)
    grouped = {label for group in groups for label in group}
    return [label for label in entity_labels if label in mine or label not in grouped]


def sample_schema(gold: Gold, base: Schema, entity_labels: Sequence[str], settings: TrainingSettings,
                  rng: random.Random) -> Tuple[Schema, Gold]:
    """An example's prompt and its gold: gold entity labels plus sampled negatives, shuffled,
    some dropped (no entity labels at all when the Doc's entities are not annotated: a
    text-classification corpus, say, must not teach "no entities"); the classification tasks
    the Doc annotates, each with its gold labels and ``class_negatives`` others
    (:func:`..core.class_sampling.gold_items`); the structures and relations it annotates.

    Descriptions and thresholds of labels known to ``base`` are kept.
    """
    known = {e.name: e for e in base.entities}
    gold_labels = list(dict.fromkeys(label for label, _, _ in gold.entities))
    pool = [label for label in entity_labels if label not in gold_labels] if gold.entities_annotated else []
    negatives = rng.sample(pool, min(settings.negatives, len(pool)))
    labels = [lab for lab in gold_labels + negatives if rng.random() >= settings.label_dropout]
    if not labels and (gold_labels or negatives):
        labels = [rng.choice(gold_labels or negatives)]
    if settings.shuffle_labels:
        rng.shuffle(labels)
    else:
        labels.sort(key=lambda label: entity_labels.index(label) if label in entity_labels else -1)
    items = gold_items(gold.cats, base, settings.class_negatives, settings.shuffle_labels, rng)
    schema = Schema(
        entities=tuple(known.get(label, EntityType(label)) for label in labels),
        classifications=tuple(item.task for item in items),
        structures=tuple(s for s in base.structures if s.name in gold.structures),
        relations=tuple(r for r in base.relations if r.name in gold.relations),
        threshold=base.threshold,
    )
    return schema, replace(gold, classes={item.task.name: item.targets for item in items})


class _WordIndex:
    """Character spans -> word spans over a record's text words."""

    def __init__(self, words: Sequence[Word], n_prefix: int, max_width: int):
        self.starts = [w[1] for w in words]
        self.ends = [w[2] for w in words]
        self.n_prefix = n_prefix
        self.max_width = max_width
        self.unlearnable = 0

    def span(self, start: int, end: int) -> Optional[Tuple[int, int]]:
        """``(position, width)`` of the words covering ``[start, end)``, or None."""
        first = bisect.bisect_right(self.ends, start)
        last = bisect.bisect_left(self.starts, end) - 1
        if first > last or first >= len(self.starts):
            return None
        if last - first >= self.max_width:
            self.unlearnable += 1
            return None
        return self.n_prefix + first, last - first


def _positions(value: Any, index: _WordIndex, prefix: Sequence[str]) -> List[Tuple[int, int]]:
    """Word positions of a gold field value (span dict, list of them, or a choice)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in values:
        if not v:
            continue
        if "start" in v:
            pos = index.span(v["start"], v["end"])
        else:  # a choice: the first prefix word naming it
            lowered = [p.lower() for p in prefix]
            text = str(v.get("text", "")).lower()
            pos = (lowered.index(text), 0) if text in lowered else None
        if pos is not None:
            out.append(pos)
    return out


@dataclass
class Targets:
    """Per task of one record: gold count and positive ``(k, m, start, width)`` cells."""

    counts: List[int]
    positives: List[List[Tuple[int, int, int, int]]]
    classes: List[Optional[List[float]]]


def make_targets(schema: Schema, record: EncodedText, words: Sequence[Word], gold: Gold, max_width: int) -> Tuple[Targets, int]:
    """Targets for one encoded record, and how many gold spans could not be learned."""
    index = _WordIndex(words, record.n_prefix, max_width)
    counts, positives, classes, beyond = [], [], [], 0
    for slots in record.tasks:
        seg = slots.segment
        cells: List[Tuple[int, int, int, int]] = []
        target = None
        count = 0
        if seg.kind == ENTITIES:
            count = 1
            for label, start, end in gold.entities:
                if label in seg.names:
                    pos = index.span(start, end)
                    if pos is not None:
                        cells.append((0, seg.names.index(label), *pos))
        elif seg.kind in (STRUCTURE, RELATION):
            source = gold.structures if seg.kind == STRUCTURE else gold.relations
            name = (schema.structures if seg.kind == STRUCTURE else schema.relations)[seg.index].name
            instances = source.get(name, [])[: MAX_COUNT - 1]  # the count head's largest count
            beyond += len(source.get(name, [])) - len(instances)
            count = len(instances)
            for k, instance in enumerate(instances):
                for m, slot in enumerate(seg.names):
                    for pos in _positions(instance.get(slot), index, record.prefix):
                        cells.append((k, m, *pos))
        else:
            target = gold.classes.get(schema.classifications[seg.index].name)
        counts.append(count)
        positives.append(cells)
        classes.append(target)
    return Targets(counts, positives, classes), index.unlearnable + beyond


def _span_loss(scores: TaskScores, cells: Sequence[Tuple[int, int, int, int]], n_words: int, mask_rate: float, generator: torch.Generator) -> torch.Tensor:
    logits = scores.logits
    target = torch.zeros_like(logits)
    for k, m, i, w in cells:
        target[k, m, i, w] = 1.0
    L, W = logits.shape[2], logits.shape[3]
    valid = (torch.arange(L, device=logits.device)[:, None] + torch.arange(W, device=logits.device)) < n_words
    keep = valid.expand_as(logits)
    if mask_rate > 0:
        dropped = torch.rand(logits.shape, generator=generator).to(logits.device) < mask_rate
        keep = keep & ~(dropped & (target == 0))
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * keep).sum()


def training_loss(
    model: GLiNER2Model,
    items: Sequence[Tuple[Schema, EncodedText, List[Word], Gold]],
    settings: TrainingSettings,
    generator: torch.Generator,
) -> Tuple[torch.Tensor, Dict[str, float], int]:
    """The GLiNER2 losses of a batch, the mean over its windows: spans (BCE), counts (CE), classes.

    ``items`` are (per-example schema, encoded window, its normalised words, gold).
    Returns the loss, its parts, and the number of gold spans and instances that cannot be learned
    (spans wider than the model's spans, instances past the count head's largest count).
    """
    records, targets, unlearnable = [], [], 0
    for schema, record, words, gold in items:
        target, lost = make_targets(schema, record, words, gold, model.settings.max_width)
        records.append(record)
        targets.append(target)
        unlearnable += lost
    device = next(model.parameters()).device
    batch = make_batch(records).to(device)
    scores = model(batch, counts=[t.counts for t in targets])
    parts = {"spans": torch.zeros((), device=device), "count": torch.zeros((), device=device), "classes": torch.zeros((), device=device)}
    for b, (record, target) in enumerate(zip(records, targets)):
        for t, slots in enumerate(record.tasks):
            task_scores = scores[b][t]
            if slots.segment.kind == CLASSIFICATION:
                gold_classes = target.classes[t]
                if gold_classes is None:
                    continue
                task = items[b][0].classifications[slots.segment.index]
                gold_t = torch.tensor(gold_classes, device=device)
                if task.multi_label:
                    parts["classes"] = parts["classes"] + F.binary_cross_entropy_with_logits(task_scores.logits, (gold_t >= 0.5).float(), reduction="sum")
                elif gold_t.max() >= 0.5:
                    parts["classes"] = parts["classes"] + F.cross_entropy(task_scores.logits[None], gold_t.argmax()[None], reduction="sum")
                continue
            count = min(target.counts[t], MAX_COUNT - 1)
            parts["count"] = parts["count"] + F.cross_entropy(task_scores.count_logits[None], torch.tensor([count], device=device), reduction="sum")
            if task_scores.logits is not None:
                parts["spans"] = parts["spans"] + _span_loss(task_scores, target.positives[t], batch.n_words[b], settings.negative_span_mask, generator)
    parts = {k: v / len(items) for k, v in parts.items()}  # per document: rates and clipping independent of batch size
    total = parts["spans"] + parts["count"] + parts["classes"]
    return total, {k: float(v.detach()) for k, v in parts.items()}, unlearnable
