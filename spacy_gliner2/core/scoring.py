"""Category scores for ``nlp.evaluate`` / ``spacy train``, shared by the families.

spaCy's ``score_cats`` per classification task (``cats_<task>_*``; one task: plain
``cats_*``) and ``cats_score``, the mean of the tasks' main scores.
"""
from typing import Any, Dict, List

from spacy.scorer import Scorer
from spacy.training import Example

from ..schema import Schema


def score_cats(examples: List[Example], schema: Schema) -> Dict[str, Any]:
    """The category scores of every task of ``schema``."""
    scores: Dict[str, Any] = {}
    keys = schema.cats_keys()
    many = len(schema.classifications) > 1
    main = []
    for task in schema.classifications:
        labels = [key for name, _, key in keys if name == task.name]
        task_scores = Scorer.score_cats(  # gold in either key form (written for more or fewer tasks)
            examples, "cats", getter=lambda doc, _: schema.cats_in_form(doc.cats), labels=labels,
            multi_label=task.multi_label, threshold=task.threshold if task.multi_label else 0.0
        )
        if many:
            task_scores = {k.replace("cats_", f"cats_{task.name}_", 1): v for k, v in task_scores.items()}
        main.append(task_scores[f"cats_{task.name}_score" if many else "cats_score"])
        scores.update(task_scores)
    if main:
        scores["cats_score"] = sum(main) / len(main)
    return scores
