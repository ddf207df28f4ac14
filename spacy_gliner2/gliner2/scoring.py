"""Scores for ``nlp.evaluate`` / ``spacy train``: entities, categories, structures, relations.

Entities: ``ents_p/r/f`` and ``ents_per_type`` (spaCy's NER scorer over ``doc.ents``).
Categories: :func:`~..core.scoring.score_cats`.
Structures and relations: micro P/R/F over (name, instance-free field, value)
facts from ``doc._.gliner2`` (``structures_f``, ``relations_f``).
"""
from typing import Any, Dict, Iterable, List, Set, Tuple

from spacy.scorer import PRFScore, get_ner_prf
from spacy.training import Example

from ..core.scoring import score_cats
from ..schema import Schema
from .annotate import EXTENSION


def _value_facts(value: Any) -> Set[Tuple]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return {(v.get("start"), v.get("end"), str(v.get("text", "")).lower()) for v in values if v}


def _structure_facts(doc: Any) -> Set[Tuple]:
    data = doc._.get(EXTENSION) or {}
    facts = set()
    for name, instances in (data.get("structures") or {}).items():
        for instance in instances:
            for field, value in instance.items():
                facts |= {(name, field, *f) for f in _value_facts(value)}
    return facts


def _relation_facts(doc: Any) -> Set[Tuple]:
    data = doc._.get(EXTENSION) or {}
    return {
        (name, pair["head"]["start"], pair["head"]["end"], pair["tail"]["start"], pair["tail"]["end"])
        for name, pairs in (data.get("relations") or {}).items()
        for pair in pairs
    }


def _prf(examples: List[Example], facts: Any, prefix: str) -> Dict[str, float]:
    score = PRFScore()
    seen = False
    for eg in examples:
        gold = facts(eg.reference)
        seen = seen or bool(gold) or bool((eg.reference._.get(EXTENSION) or {}).get(prefix))
        score.score_set(facts(eg.predicted), gold)
    if not seen:
        return {}
    return {f"{prefix}_p": score.precision, f"{prefix}_r": score.recall, f"{prefix}_f": score.fscore}


def score(examples: Iterable[Example], schema: Schema, **kwargs: Any) -> Dict[str, Any]:
    """All scores of the component for annotated examples."""
    examples = list(examples)
    scores: Dict[str, Any] = dict(get_ner_prf(examples))
    scores.update(score_cats(examples, schema))
    scores.update(_prf(examples, _structure_facts, "structures"))
    scores.update(_prf(examples, _relation_facts, "relations"))
    return scores
