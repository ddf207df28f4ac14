"""A person's accept/reject verdicts on predicted labels, read from JSONL, as training Examples.

One JSON object per line::

    {"text": "The striker scored twice.", "task": "topic", "accept": ["sport"], "reject": ["politics"]}

``task`` may be left out when the component has one classification task. The verdicts become
the reference Doc's ``doc.cats`` for those labels only (1.0 accepted, 0.0 rejected); labels
without a verdict stay out of ``doc.cats``, so PPO's reward (:mod:`.rl`) counts judged labels
only and no gold annotation is needed. Several lines may judge the same text (one per task).
"""
from pathlib import Path
from typing import Any, Dict, List, Union

from spacy.language import Language
from spacy.training import Example

from ..records import json_objects
from ..schema import Schema


class FeedbackError(ValueError):
    """A malformed feedback line (the message names the file and line)."""


def _labels(value: Any, key: str, where: str) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FeedbackError(f"{where}: {key!r} must be a list of label strings, got {value!r}.")
    return value


def read_feedback(path: Union[str, Path], schema: Schema) -> Dict[str, Dict[str, float]]:
    """``{text: doc.cats}`` from a feedback file, every verdict checked against ``schema``."""
    tasks = {task.name: task for task in schema.classifications}
    if not tasks:
        raise FeedbackError("The component has no classification tasks: feedback judges class labels.")
    keys = {(task, label): key for task, label, key in schema.cats_keys()}
    judged: Dict[str, Dict[str, float]] = {}
    for number, item in json_objects(path, FeedbackError):
        where = f"{path} line {number}"
        unknown = sorted(set(item) - {"text", "task", "accept", "reject"})
        if unknown:
            raise FeedbackError(f"{where}: unknown key(s) {unknown}; use 'text', 'task', 'accept', 'reject'.")
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise FeedbackError(f"{where}: 'text' must be a non-empty string.")
        name = item.get("task")
        if name is None:
            if len(tasks) > 1:
                raise FeedbackError(f"{where}: 'task' is needed with several tasks ({sorted(tasks)}).")
            name = next(iter(tasks))
        if name not in tasks:
            raise FeedbackError(f"{where}: unknown task {name!r}; the component's tasks are {sorted(tasks)}.")
        task = tasks[name]
        accept, reject = _labels(item.get("accept"), "accept", where), _labels(item.get("reject"), "reject", where)
        if not accept and not reject:
            raise FeedbackError(f"{where}: no verdict; give 'accept' and/or 'reject' labels.")
        for label in accept + reject:
            if label not in task.labels:
                raise FeedbackError(f"{where}: {label!r} is not a label of task {name!r} ({list(task.labels)}).")
        both = sorted(set(accept) & set(reject))
        if both:
            raise FeedbackError(f"{where}: {both} both accepted and rejected.")
        if not task.multi_label and len(set(accept)) > 1:
            raise FeedbackError(f"{where}: task {name!r} is single-label; accept at most one label.")
        cats = judged.setdefault(text, {})
        for label, value in [(label, 1.0) for label in accept] + [(label, 0.0) for label in reject]:
            key = keys[(name, label)]
            if cats.get(key, value) != value:
                raise FeedbackError(f"{where}: {label!r} of task {name!r} was judged otherwise on an earlier line.")
            cats[key] = value
    if not judged:
        raise FeedbackError(f"{path}: no feedback lines.")
    return judged


def feedback_examples(nlp: Language, judged: Dict[str, Dict[str, float]]) -> List[Example]:
    """Training Examples of verdicts read by :func:`read_feedback` (the reference Docs carry them as ``doc.cats``)."""
    examples = []
    for text, cats in judged.items():
        reference = nlp.make_doc(text)
        reference.cats = cats
        examples.append(Example(nlp.make_doc(text), reference))
    return examples


def agreement(nlp: Language, judged: Dict[str, Dict[str, float]], schema: Schema) -> float:
    """The share of verdicts the pipeline's decisions agree with: a multi-label label is chosen
    at or over its task's threshold, a single-label task chooses its most probable label."""
    agree = total = 0
    texts = list(judged)
    task_keys: Dict[str, Dict[str, str]] = {task.name: {} for task in schema.classifications}
    for name, label, key in schema.cats_keys():
        task_keys[name][label] = key
    for text, doc in zip(texts, nlp.pipe(texts)):
        for task in schema.classifications:
            keys = task_keys[task.name]
            probs = {label: doc.cats.get(key, 0.0) for label, key in keys.items()}
            best = max(task.labels, key=probs.__getitem__)
            for label, key in keys.items():
                if key in judged[text]:
                    chosen = probs[label] >= task.threshold if task.multi_label else label == best
                    agree += chosen == (judged[text][key] >= 0.5)
                    total += 1
    return agree / total if total else 0.0
