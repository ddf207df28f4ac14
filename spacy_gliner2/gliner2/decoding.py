"""Raw scores -> plain result dicts, with the reference's decoding rules.

A result is ``{"entities": {label: [span]}, "classifications": {task: cls},
"structures": {name: [instance]}, "relations": {name: [{"head", "tail"}]}}`` where a
span is ``{"text", "confidence", "start", "end"}`` (character offsets into the
document) and ``cls`` is ``{"label", "confidence"}`` (a list of those when
multi-label). Class probabilities of every label are returned beside it.
Knows nothing of spaCy.
"""
import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..core.classes import classify, merge_classes
from ..core.intervals import greedy_disjoint
from ..core.overlap import resolve
from ..schema import Schema
from ..text import Word
from .boundary import Candidates
from .boundary_decoding import decode_boundary_task
from .boundary_relations import RelationPairs
from .fields import choices
from .encoding import CLASSIFICATION, ENTITIES, RELATION, STRUCTURE, EncodedText
from .model import TaskScores

Span = Dict[str, Any]
Result = Dict[str, Dict[str, Any]]
Probs = Dict[str, Dict[str, float]]


def empty_result() -> Result:
    return {"entities": {}, "classifications": {}, "structures": {}, "relations": {}}


class _SpanTask:
    """Thresholded candidates of one span task, grouped per (instance, field)."""

    def __init__(self, logits: torch.Tensor, n_prefix: int, thresholds: Sequence[float]):
        text = logits[:, :, n_prefix:, :]
        probs = torch.sigmoid(text)
        thr = torch.tensor(thresholds, dtype=probs.dtype, device=probs.device)
        # -inf marks spans the model rules out (past the text, bounded by a word it cannot see)
        mask = (probs >= thr[None, :, None, None]) & (text > float("-inf"))
        idx = mask.nonzero().tolist()  # row-major: instance, field, start, width
        conf = probs[mask].tolist()
        self.groups: Dict[Tuple[int, int], List[Tuple[float, int, int]]] = {}
        for (k, m, i, w), c in zip(idx, conf):
            self.groups.setdefault((k, m), []).append((c, i, i + w))
        self.prefix_probs = torch.sigmoid(logits[:, :, :n_prefix, 0]).tolist() if n_prefix else None

    def spans(self, k: int, m: int, words: Sequence[Word], text: str, first_only: bool = False) -> List[Span]:
        """Greedy by confidence, skipping spans overlapping a kept one."""
        ranked = sorted(self.groups.get((k, m), ()), key=lambda c: -c[0])
        if first_only:
            kept = ranked[:1]
        else:  # end word j is inclusive
            kept = [ranked[n] for n in greedy_disjoint(((i, j + 1) for _, i, j in ranked), len(words))]
        out = []
        for conf, i, j in kept:
            start, end = words[i][1], words[j][2]
            if end > start:  # a span of only the appended period covers no text
                out.append({"text": text[start:end], "confidence": conf, "start": start, "end": end})
        return out


def _prefix_probs(task: _SpanTask, k: int, m: int, words: List[int]) -> List[float]:
    return [task.prefix_probs[k][m][i] for i in words]


def decode(
    schema: Schema,
    record: EncodedText,
    scores: Sequence[TaskScores],
    words: Sequence[Word],
    text: str,
) -> Tuple[Result, Probs]:
    """Decode one record's scores. ``words`` are the text words (prefix excluded)."""
    result, probs = empty_result(), {}
    for slots, task_scores in zip(record.tasks, scores):
        seg = slots.segment
        if seg.kind == CLASSIFICATION:
            task = schema.classifications[seg.index]
            result["classifications"][task.name], probs[task.name] = classify(task, task_scores.logits)
            continue
        if seg.kind == ENTITIES:
            thresholds = [schema.threshold if e.threshold is None else e.threshold for e in schema.prompt_entities]
        elif seg.kind == STRUCTURE:
            fields = schema.structures[seg.index].fields
            thresholds = [schema.threshold if f.threshold is None else f.threshold for f in fields]
        else:
            rel = schema.relations[seg.index]
            thresholds = [schema.threshold if rel.threshold is None else rel.threshold] * 2
        if isinstance(task_scores, (Candidates, RelationPairs)):  # a boundary checkpoint
            decode_boundary_task(result, schema, record, seg, task_scores, thresholds, words, text)
            continue
        spans = _SpanTask(task_scores.logits, record.n_prefix, thresholds) if task_scores.count else None
        if seg.kind == ENTITIES:
            result["entities"] = {
                name: spans.spans(0, m, words, text) if spans else [] for m, name in enumerate(seg.names)
            }
        elif seg.kind == RELATION:
            found = []
            for k in range(task_scores.count):
                head, tail = (spans.spans(k, m, words, text, first_only=True) for m in (0, 1))
                if head and tail:
                    found.append({"head": head[0], "tail": tail[0]})
            result["relations"][rel.name] = found
        else:
            structure = schema.structures[seg.index]
            instances = []
            for k in range(task_scores.count):
                instance: Dict[str, Any] = {}
                for m, f in enumerate(structure.fields):
                    if f.choices:
                        scored = functools.partial(_prefix_probs, spans, k, m)
                        instance[f.name] = choices(scored, f.choices, record.prefix, f.dtype, thresholds[m])
                    else:
                        found = spans.spans(k, m, words, text, first_only=f.dtype == "str")
                        instance[f.name] = found if f.dtype == "list" else (found[0] if found else None)
                if any(v not in (None, []) for v in instance.values()):
                    instances.append(instance)
            result["structures"][structure.name] = instances
    return result, probs


# -- long texts: merging window results on global offsets --------------------


def _merge_spans(spans: List[Span], policy: Optional[str] = None) -> List[Span]:
    """Same-label spans from overlapping windows: greedy by confidence, no overlaps; or, for a
    boundary checkpoint, its overlap ``policy`` on document offsets."""
    if policy is not None:
        scored = [(s["confidence"], s["start"], s["end"], i) for i, s in enumerate(spans)]
        return [spans[i] for *_, i in resolve(scored, policy)]
    ranked = sorted(spans, key=lambda s: (-s["confidence"], s["start"], s["end"]))
    return [ranked[i] for i in greedy_disjoint((s["start"], s["end"]) for s in ranked)]


def _key(value: Any) -> Any:
    """A confidence-free identity of a structure instance or relation."""
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items() if k != "confidence"))
    if isinstance(value, list):
        return tuple(_key(v) for v in value)
    return value


def _best(value: Any) -> float:
    if isinstance(value, dict):
        if "confidence" in value:
            return value["confidence"]
        return max((_best(v) for v in value.values()), default=0.0)
    if isinstance(value, list):
        return max((_best(v) for v in value), default=0.0)
    return 0.0


def _dedupe(items: List[Any]) -> List[Any]:
    found: Dict[Any, Any] = {}
    for item in items:
        key = _key(item)
        if key not in found or _best(item) > _best(found[key]):
            found[key] = item
    return list(found.values())


def merge_windows(schema: Schema, parts: Sequence[Tuple[Result, Probs]], policy: Optional[str] = None) -> Tuple[Result, Probs]:
    """Merge the results of one document's windows (offsets already global).

    Entities: per label, greedy by confidence without overlaps (``policy``: a boundary checkpoint's
    overlap policy instead). Structures and
    relations: concatenated, duplicates kept once (highest confidence).
    Classification: :func:`~..core.classes.merge_classes`.
    """
    if len(parts) == 1:
        return parts[0]
    result, probs = empty_result(), {}
    first = parts[0][0]
    for label in first["entities"]:
        result["entities"][label] = _merge_spans([s for r, _ in parts for s in r["entities"][label]], policy)
    for section in ("structures", "relations"):
        for name in first[section]:
            result[section][name] = _dedupe([x for r, _ in parts for x in r[section][name]])
    for task in schema.classifications:
        result["classifications"][task.name], probs[task.name] = merge_classes(
            task, [(r["classifications"][task.name], p[task.name]) for r, p in parts])
    return result, probs

