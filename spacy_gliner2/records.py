"""Annotated Docs as plain, JSON-serialisable records: what the command line and the Ray helper write.

A record has ``entities`` (``doc.ents``, each with the confidence of its span in the writing
component's ``doc.spans`` group, None for entities of other components), ``cats`` (``doc.cats``)
and, per ``gliner2`` / ``gliclass`` component in the pipeline, that factory's Doc extension
(``doc._.gliner2``: the reference's ``extract`` shapes; ``doc._.gliclass``: class decisions).
"""
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Tuple, Type, Union

from spacy.tokens import Doc

FACTORIES = ("gliner2", "gliclass")  # each writes the Doc extension of its factory's name


class Outputs(NamedTuple):
    """What a pipeline writes that a record carries."""

    extensions: List[str]  # the factories present, in FACTORIES order (their extension names)
    spans_keys: List[str]  # the doc.spans groups holding entity confidences


def json_objects(path: Union[str, Path], error: Type[Exception] = ValueError) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line of a JSONL file; ``error`` naming the file and
    line for a line that is not a JSON object."""
    with open(path, encoding="utf8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path} line {number}: not JSON ({err.msg} at column {err.colno}).") from None
            if not isinstance(item, dict):
                raise error(f"{path} line {number}: each line must be a JSON object, got {type(item).__name__}.")
            yield number, item


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
