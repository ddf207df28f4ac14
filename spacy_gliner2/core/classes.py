"""Class decisions from label logits, and their merge over a long text's windows.

A decision is ``{"label", "confidence"}`` (single-label) or a list of those (multi-label);
the probabilities of every label are returned beside it. Both families classify this way.
"""
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..schema import UNCERTAIN, ClassificationTask

Decision = Any  # {"label", "confidence"} or a list of them
LabelProbs = Dict[str, float]


def classify(task: ClassificationTask, logits: torch.Tensor, at_least_one: bool = True) -> Tuple[Decision, LabelProbs]:
    """Multi-label: sigmoid, every label at or over the task's threshold (with
    ``at_least_one``, the best label when none is). Single-label: softmax, the argmax
    (the first of equal maxima); with ``abstain_below``, UNCERTAIN when its probability is
    lower (the probabilities then hold UNCERTAIN: 1.0 or 0.0)."""
    if task.multi_label:
        probs = dict(zip(task.labels, torch.sigmoid(logits).tolist()))
        return _chosen(task, probs, at_least_one), probs
    else:
        probs = torch.softmax(logits, dim=-1).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        decision = {"label": task.labels[best], "confidence": probs[best]}
        if task.abstain_below is not None:
            abstains = probs[best] < task.abstain_below
            decision["label"] = UNCERTAIN if abstains else decision["label"]
            return decision, {**dict(zip(task.labels, probs)), UNCERTAIN: float(abstains)}
    return decision, dict(zip(task.labels, probs))


def _chosen(task: ClassificationTask, probs: LabelProbs, at_least_one: bool) -> List[Dict[str, Any]]:
    """A multi-label decision: every label at or over the threshold, else (``at_least_one``) the best."""
    chosen = [{"label": label, "confidence": p} for label, p in probs.items() if p >= task.threshold]
    if not chosen and at_least_one and probs:
        best = max(probs, key=probs.__getitem__)  # the first of equal maxima
        chosen = [{"label": best, "confidence": probs[best]}]
    return chosen


def merge_classes(task: ClassificationTask, parts: Sequence[Tuple[Decision, LabelProbs]]) -> Tuple[Decision, LabelProbs]:
    """One task's decisions over a text's windows: multi-label takes each label's highest
    probability and decides on those as :func:`classify` does (a window's best-label fallback
    does not stand beside labels that pass in another window); single-label takes the window
    with the most confident decision."""
    if task.multi_label:
        probs = {label: max(p[label] for _, p in parts) for label in parts[0][1]}
        return _chosen(task, probs, at_least_one=any(decision for decision, _ in parts)), probs
    return max(parts, key=lambda d: d[0]["confidence"])
