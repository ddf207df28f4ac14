"""What one Doc's ``doc.cats`` teaches: per annotated task, a prompt of its gold labels and
sampled negative labels, with their target values. Both families train classes from these."""
import random
from dataclasses import dataclass
from typing import Dict, List

from ..schema import ClassificationTask, Schema


@dataclass
class Item:
    """One training input: a task with the labels of its prompt, and their gold values."""

    task: ClassificationTask
    targets: List[float]  # per prompt label: 1.0 positive, 0.0 negative (soft values kept)


def gold_items(cats: Dict[str, float], schema: Schema, negatives: int, shuffle: bool, rng: random.Random) -> List[Item]:
    """The training inputs of one Doc's ``doc.cats`` (keys by :meth:`Schema.cats_keys`): every
    task the Doc annotates (a single-label task: with exactly one gold class), its positives and
    ``negatives`` sampled other labels of the task (-1: all), shuffled with ``shuffle``."""
    judged = schema.judged(cats)
    items = []
    for task in schema.classifications:
        gold = judged[task.name]
        positives = [label for label in task.labels if gold.get(label, 0.0) >= 0.5]
        if not gold or (not task.multi_label and len(positives) != 1):
            continue  # nothing annotated for this task (or no single gold class)
        others = [label for label in task.labels if label not in positives]
        count = len(others) if negatives < 0 else min(negatives, len(others))
        labels = positives + rng.sample(others, count)
        if shuffle:
            rng.shuffle(labels)
        else:
            labels.sort(key=task.labels.index)
        items.append(Item(task.subset(labels), [gold.get(label, 0.0) for label in labels]))
    return items
