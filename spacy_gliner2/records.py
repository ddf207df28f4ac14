"""Annotated Docs as plain, JSON-serialisable records: what the command line and the Ray helper write.

A record has ``entities`` (``doc.ents``, each with the confidence of its span in the writing
component's ``doc.spans`` group, None for entities of other components), ``cats`` (``doc.cats``)
and, per ``gliner2`` / ``gliclass`` component in the pipeline, that factory's Doc extension
(``doc._.gliner2``: the reference's ``extract`` shapes; ``doc._.gliclass``: class decisions).
"""
from typing import Any, Dict, List, NamedTuple, Tuple

from spacy.tokens import Doc

FACTORIES = ("gliner2", "gliclass")  # each writes the Doc extension of its factory's name


class Outputs(NamedTuple):
    """What a pipeline writes that a record carries."""

    extensions: List[str]  # the factories present, in FACTORIES order (their extension names)
    spans_keys: List[str]  # the doc.spans groups holding entity confidences


def pipeline_outputs(config: Dict[str, Any]) -> Outputs:
    """The outputs of a pipeline, from its config (``nlp.config`` or a saved ``config.cfg``);
    ValueError when it has no ``gliner2`` or ``gliclass`` component."""
    components = [config["components"][name] for name in config["nlp"]["pipeline"]]
    factories = [c.get("factory") for c in components]
    extensions = [f for f in FACTORIES if f in factories]
    if not extensions:
        raise ValueError(f"the pipeline has no {' or '.join(FACTORIES)} component (its factories: {factories})")
    return Outputs(extensions, [c.get("spans_key", "gliner2") for c in components if c.get("factory") == "gliner2"])


def _scores(doc: Doc, spans_keys: List[str]) -> Dict[Tuple[int, int, str], float]:
    scores: Dict[Tuple[int, int, str], float] = {}
    for key in spans_keys:
        group = doc.spans.get(key)
        if group is not None:
            scores.update(((s.start_char, s.end_char, s.label_), c) for s, c in zip(group, group.attrs.get("scores", [])))
    return scores


def doc_record(doc: Doc, outputs: Outputs) -> Dict[str, Any]:
    """One Doc's annotations as plain data (see the module docstring)."""
    scores = _scores(doc, outputs.spans_keys)
    entities = [{"text": e.text, "label": e.label_, "start_char": e.start_char, "end_char": e.end_char,
                 "score": scores.get((e.start_char, e.end_char, e.label_))} for e in doc.ents]
    record: Dict[str, Any] = {"entities": entities, "cats": dict(doc.cats)}
    record.update((name, doc._.get(name)) for name in outputs.extensions)
    return record
