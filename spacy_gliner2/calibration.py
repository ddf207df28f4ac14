"""The explicit uncertain outcome (a GenCLS++ strategy): the confidence below which a
single-label task decides ``"uncertain"``, calibrated on a dev set and written into the pipeline.

The least-confident ``share`` of the dev texts fall below the threshold; the report says how
accurate the decisions are on all texts and on the ones kept. Works for both factories.
"""
from typing import Any, Dict, Iterable, List, Sequence

from spacy.language import Language
from spacy.tokens import Doc

from .schema import ClassificationTask, Schema, SchemaError, classification_section


def abstention_threshold(confidences: Sequence[float], share: float) -> float:
    """The confidence below which ``share`` of ``confidences`` lie: midway between the last
    one left out and the first one kept (ties kept together), so rounding cannot move it."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must be in [0, 1), got {share!r}.")
    if not confidences:
        raise ValueError("No dev texts with a gold class for the task: nothing to calibrate on.")
    ranked = sorted(confidences)
    k = min(int(round(share * len(ranked))), len(ranked) - 1)
    return (ranked[k - 1] + ranked[k]) / 2 if k > 0 else 0.0


def _task(schema: Schema, name: str) -> ClassificationTask:
    tasks = {task.name: task for task in schema.classifications}
    if name not in tasks or tasks[name].multi_label:
        raise SchemaError(f"{name!r} is not a single-label classification task of the pipeline; its tasks: "
                          f"{[t.name for t in schema.classifications]} (multi-label ones do not abstain).")
    return tasks[name]


def calibrate(nlp: Language, component: str, gold: Iterable[Doc], task_name: str, share: float) -> Dict[str, Any]:
    """Run the pipeline on the gold Docs' texts and choose ``abstain_below`` for ``task_name``."""
    pipe = nlp.get_pipe(component)
    task = _task(pipe.schema, task_name)
    keys = {label: key for name, label, key in pipe.schema.cats_keys() if name == task_name and label in task.labels}
    pairs = []
    for reference in gold:
        judged = pipe.schema.judged(reference.cats)[task_name]
        positives = [label for label, value in judged.items() if value >= 0.5 and label in task.labels]
        if len(positives) == 1:
            pairs.append((reference.text, positives[0]))
    confidences: List[float] = []
    correct: List[bool] = []
    for doc, (_, label) in zip(nlp.pipe(text for text, _ in pairs), pairs):
        probs = {lab: doc.cats[key] for lab, key in keys.items()}
        best = max(task.labels, key=probs.__getitem__)
        confidences.append(probs[best])
        correct.append(best == label)
    threshold = abstention_threshold(confidences, share)
    kept = [c for p, c in zip(confidences, correct) if p >= threshold]
    return {
        "task": task_name, "abstain_below": threshold, "n": len(pairs),
        "abstained": 1 - len(kept) / len(pairs), "accuracy": sum(correct) / len(pairs),
        "accuracy_kept": sum(kept) / len(kept) if kept else None,
    }


def set_abstention(nlp: Language, component: str, task_name: str, threshold: float) -> None:
    """Set the task's ``abstain_below`` in the component and in the pipeline config (saved with it)."""
    pipe = nlp.get_pipe(component)
    task = _task(pipe.schema, task_name)
    section = classification_section(pipe.cfg["schema"].get("classifications"))
    entry = section.get(task_name, list(task.labels))
    entry = dict(entry) if isinstance(entry, dict) and "labels" in entry else {"labels": entry}
    section[task_name] = {**entry, "abstain_below": threshold}
    pipe.cfg["schema"] = {**pipe.cfg["schema"], "classifications": section}
    pipe.schema = pipe.parse_schema(pipe.cfg["schema"])
    pipe._overrides = {}
    nlp.get_pipe_config(component)["classifications"] = section
