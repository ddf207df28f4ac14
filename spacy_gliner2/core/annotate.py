"""Doc writing shared by the families: the result extension, ``doc.cats``, ``doc.spans`` and
the ``doc.ents`` policy. Knows nothing of torch."""
import logging
from typing import Any, Collection, Dict, List, Tuple

from spacy.tokens import Doc, Span, SpanGroup

from ..schema import Schema
from .intervals import disjoint_from, greedy_disjoint

ENTS_POLICIES = ("keep_existing", "prefer_new", "unchanged")
CATS_OWNERS = ("spacy_gliner2", "cats_owners")  # doc.user_data key: doc.cats key -> the task that wrote it
logger = logging.getLogger("spacy_gliner2")
ALIGNMENT_MODES = ("strict", "contract", "expand")


def register_extension(name: str) -> None:
    """Register ``Doc._.<name>`` once (plain data: survives DocBin and n_process)."""
    if not Doc.has_extension(name):
        Doc.set_extension(name, default=None)


def _bounds(spans: List[Span]) -> List[Tuple[int, int]]:
    return [(s.start, s.end) for s in spans]


def _non_overlapping(scored: List[Tuple[Span, float]]) -> List[Span]:
    """Most confident first (then longest); a span overlapping a kept one is skipped."""
    ranked = [s for s, _ in sorted(scored, key=lambda x: (-x[1], -len(x[0]), x[0].start))]
    kept = [ranked[i] for i in greedy_disjoint(_bounds(ranked))]
    return sorted(kept, key=lambda s: s.start)


def _set_ents(doc: Doc, new: List[Span], policy: str, replaced: Collection[Tuple[int, int, str]] = ()) -> None:
    """``new`` to ``doc.ents`` by ``policy``, after taking out the entities that are ``replaced``
    (``(start, end, label)``: the spans an earlier pass of the same labels put in the component's
    span group; a label that runs again replaces its earlier result, while entities of other
    labels, and those another component set, stay)."""
    if policy == "unchanged":
        return
    stale = [e for e in doc.ents if (e.start, e.end, e.label_) in replaced]
    existing = [e for e in doc.ents if (e.start, e.end, e.label_) not in replaced]
    if policy == "keep_existing":  # other tokens keep their annotation (missing stays missing)
        new = [new[i] for i in disjoint_from(_bounds(new), _bounds(existing), len(doc))]
        if stale:
            doc.set_ents([], outside=stale, default="unmodified")
        doc.set_ents(new, default="unmodified")
    else:  # prefer_new
        existing = [existing[i] for i in disjoint_from(_bounds(existing), _bounds(new), len(doc))]
        doc.set_ents(sorted(existing + new, key=lambda s: s.start))


def merge_result(doc: Doc, name: str, new: Dict[str, Any]) -> None:
    """``doc._.<name>`` <- ``new`` over what it holds: per key, and inside a key that holds a
    dict (GLiNER2's sections), per name. This pass's labels, tasks and structures replace
    earlier results of the same names; the others (another component's, an earlier call's) stay."""
    register_extension(name)
    old = doc._.get(name)
    if not isinstance(old, dict):
        doc._.set(name, new)
        return
    merged = dict(old)
    for key, value in new.items():
        before = merged.get(key)
        merged[key] = {**before, **value} if isinstance(before, dict) and isinstance(value, dict) else value
    doc._.set(name, merged)


def _earlier_spans(doc: Doc, spans_key: str) -> Tuple[List[Tuple[Span, float]], Dict[str, int]]:
    """The scored spans and unaligned counts per label of the group already under ``spans_key``
    (a group of this package's; ValueError for one it did not write). A group of an older version
    has no counts per label: its total stays, under ``""`` (never a label)."""
    if spans_key not in doc.spans:
        return [], {}
    group = doc.spans[spans_key]
    scores = group.attrs.get("scores", () if not len(group) else None)
    if not isinstance(scores, (list, tuple)) or len(scores) != len(group):  # a DocBin gives tuples
        raise ValueError(f"doc.spans[{spans_key!r}] already holds {len(group)} spans without the scores spacy-gliner2 "
                         "keeps beside its spans (another component's, or its own after Doc.to_json/from_json or "
                         "Doc.from_docs, which drop span group attrs), and would lose them: set the component's "
                         "spans_key to another key, or delete that group first.")
    counts = group.attrs.get("unaligned_by_label")
    if counts is None:
        counts = {"": group.attrs.get("unaligned", 0)}
    return list(zip(group, scores)), dict(counts)


def write_spans(doc: Doc, scored: List[Tuple[Span, float]], unaligned: Dict[str, int], labels: Collection[str], *,
                spans_key: str, ents_policy: str) -> None:
    """The scored spans of ``labels`` (this pass's entity labels) to ``doc.spans[spans_key]``
    (scores and unaligned counts in its attrs), beside the spans of other labels that an
    earlier pass put there; the most confident non-overlapping new ones to ``doc.ents`` by ``ents_policy``."""
    earlier, earlier_unaligned = _earlier_spans(doc, spans_key)
    kept = [(s, c) for s, c in earlier if s.label_ not in labels] + scored
    counts = {label: n for label, n in {**earlier_unaligned, **unaligned}.items()
              if n and (label in unaligned or label not in labels)}
    group = SpanGroup(doc, name=spans_key, spans=[s for s, _ in kept])
    group.attrs["scores"] = [c for _, c in kept]
    group.attrs["unaligned"] = sum(counts.values())
    group.attrs["unaligned_by_label"] = counts
    doc.spans[spans_key] = group
    replaced = {(s.start, s.end, s.label_) for s, _ in earlier if s.label_ in labels}
    _set_ents(doc, _non_overlapping(scored), ents_policy, replaced)


def write_cats(doc: Doc, probs: Dict[str, Dict[str, Any]], schema: Schema) -> None:
    """Every class probability to ``doc.cats`` (keys by :meth:`Schema.cats_keys`). A task that
    runs again replaces its earlier keys (also those of the other key form: ``task:label`` when
    it ran beside other tasks); a warning when a key that another task wrote (another
    component's, an earlier call's) is replaced: one task's keys are its bare labels, so two
    single-task calls with a label in common share a key."""
    owners = doc.user_data.setdefault(CATS_OWNERS, {})
    keys = schema.cats_keys()
    tasks = {task for task, _, _ in keys}
    earlier = [k for k, task in owners.items() if task in tasks]  # its keys, as the owners record them
    outcomes = {f"{task}:{label}" for task, label, _ in keys}  # and, unrecorded (DocBin without user data),
    earlier += [k for k in doc.cats if k in outcomes and k not in owners]  # its labels in the task:label form
    for key in earlier:
        doc.cats.pop(key, None)
        owners.pop(key, None)
    for task, label, key in keys:
        if key in owners:
            logger.warning("doc.cats[%r] of task %r replaces the one of task %r: give the tasks distinct labels, or "
                           "run them in one call (several tasks give keys \"task:label\").", key, task, owners[key])
        elif key in doc.cats:
            logger.warning("doc.cats[%r] held a value that no spacy-gliner2 task wrote; task %r replaces it.", key, task)
        doc.cats[key] = probs[task][label]
        owners[key] = task
