"""Annotate a stream of texts (JSONL or plain text, a file or stdin) into JSONL records.

What ``python -m spacy_gliner2 run`` does: lines are read and checked here (a bad line is reported
with its number and skipped, or stops the run with ``strict``), the texts go through
``nlp.pipe`` (``n_process`` workers, batched), and each annotated text is written as one JSON line:
its input record with :func:`~.records.doc_record` added. A text the pipeline fails on is reported
with its line number by spaCy's error handler (in whichever process runs it) and skipped.
"""
import json
import sys
from collections import deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import spacy
from spacy.language import Language

from .records import FACTORIES, doc_record, pipeline_outputs
from .schema import SCHEMA_KEYS

FORMATS = ("jsonl", "text")


class InputError(ValueError):
    """A line of the input that cannot be annotated, with where it is."""


@dataclass
class Report:
    """How a run went: texts written, lines skipped (with why), texts the pipeline failed on."""

    written: int = 0
    bad_lines: List[str] = field(default_factory=list)
    failed_lines: List[int] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.written} texts annotated, {len(self.bad_lines)} bad lines skipped, "
                f"{len(self.failed_lines)} texts failed")


def input_format(path: str, given: Optional[str]) -> str:
    """``given``, or by the file's extension: ``.jsonl`` / ``.json`` -> jsonl, anything else (and ``-``) text."""
    if given is not None:
        if given not in FORMATS:
            raise ValueError(f"unknown input format {given!r}; use one of {list(FORMATS)}")
        return given
    return "jsonl" if Path(path).suffix.lower() in (".jsonl", ".json") else "text"


def read_lines(lines: IO[str], fmt: str, text_field: str = "text") -> Iterator[Tuple[int, Any]]:
    """``(line number, record)`` per line (JSONL: per non-blank line), where record is a dict with
    the text under ``text_field`` (text input: and the line number under ``"line"``, so that every
    output names its input line, blank lines included), or an :class:`InputError` saying what is
    wrong with that line."""
    for number, line in enumerate(lines, 1):
        if fmt == "text":
            yield number, {"line": number, text_field: line.rstrip("\r\n")}
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, InputError(f"line {number}: not valid JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(record, dict):
            yield number, InputError(f"line {number}: expected a JSON object with a {text_field!r} field, "
                                     f"got {type(record).__name__}")
        elif not isinstance(record.get(text_field), str):
            found = "no such field" if text_field not in record else f"a {type(record[text_field]).__name__}"
            yield number, InputError(f"line {number}: {text_field!r} must be a string ({found}); "
                                     "name the text field with --text-field")
        else:
            yield number, record


def annotate_stream(
    nlp: Language,
    lines: IO[str],
    out: IO[str],
    *,
    fmt: str = "jsonl",
    text_field: str = "text",
    batch_size: int = 32,
    n_process: int = 1,
    limit: Optional[int] = None,
    strict: bool = False,
    component_cfg: Optional[Dict[str, Dict[str, Any]]] = None,
    progress: bool = True,
) -> Report:
    """Annotate the texts of ``lines`` into ``out`` (one JSON line each, in input order)."""
    if fmt == "text" and text_field == "line":
        raise ValueError("--text-field 'line' is the field text input gives each line's number: name the text another way")
    outputs = pipeline_outputs(nlp.config)
    report = Report()
    records: Dict[int, Dict[str, Any]] = {}  # handed to the pipeline, not yet written
    pending: Deque[int] = deque()  # their line numbers, in order

    added = ["entities", "cats", *outputs.extensions]

    def texts() -> Iterator[Tuple[str, int]]:
        submitted = 0
        for number, record in read_lines(lines, fmt, text_field):
            taken = [k for k in added if not isinstance(record, InputError) and k in record]
            if taken:  # the output would overwrite them
                record = InputError(f"line {number}: the record already has {taken}, which the output adds; "
                                    "rename those fields")
            if isinstance(record, InputError):
                if strict:
                    raise record
                print(f"{record} (skipped)", file=sys.stderr)
                report.bad_lines.append(str(record))
                continue
            if limit is not None and submitted >= limit:
                return
            submitted += 1
            records[number] = record
            pending.append(number)
            yield record[text_field], number

    with _progress(progress) as bar, _error_handler(nlp, _raise_failure if strict else _report_failure):
        for doc, number in nlp.pipe(texts(), as_tuples=True, batch_size=batch_size, n_process=n_process,
                                    component_cfg=component_cfg or {}):
            while pending[0] != number:  # failed in the pipeline (the handler reported it)
                report.failed_lines.append(pending.popleft())
                del records[report.failed_lines[-1]]
            pending.popleft()
            out.write(json.dumps({**records.pop(number), **doc_record(doc, outputs)}, ensure_ascii=False) + "\n")
            report.written += 1
            bar.update(1)
    report.failed_lines.extend(pending)
    return report


@contextmanager
def _error_handler(nlp: Language, handler: Callable) -> Iterator[None]:
    """``nlp.set_error_handler(handler)`` for a block; the previous handlers come back after it."""
    previous = nlp.default_error_handler, {name: pipe.get_error_handler() for name, pipe in nlp.pipeline
                                           if hasattr(pipe, "get_error_handler")}
    nlp.set_error_handler(handler)
    try:
        yield
    finally:
        nlp.default_error_handler = previous[0]
        for name, old in previous[1].items():
            nlp.get_pipe(name).set_error_handler(old)


def _line(doc: Any) -> Any:
    return getattr(doc, "_context", None) or "?"


def _report_failure(name: str, component: Any, docs: List[Any], error: Exception) -> None:
    """spaCy error handler: one line per failed text, naming its input line (``doc._context``)."""
    for doc in docs:
        print(f"line {_line(doc)}: {name} failed: {type(error).__name__}: {error} (skipped)", file=sys.stderr)


def _raise_failure(name: str, component: Any, docs: List[Any], error: Exception) -> None:
    """spaCy error handler of ``strict`` runs: stop, naming the input line."""
    raise InputError(f"line {_line(docs[0])}: {name} failed: {type(error).__name__}: {error}") from error


def _progress(enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(unit=" texts", file=sys.stderr, disable=not enabled, smoothing=0.1)


def open_stream(path: str, mode: str, stack: ExitStack) -> IO[str]:
    """``path`` opened as UTF-8 text on ``stack`` (closed with it); ``-`` is stdin or stdout."""
    if path == "-":
        return sys.stdin if "r" in mode else sys.stdout
    return stack.enter_context(open(path, mode, encoding="utf8"))


def read_schema(path: Optional[Path]) -> Optional[Dict[str, Any]]:
    """A schema from a JSON file, or from the gliner2/gliclass component block of a spaCy config."""
    if path is None:
        return None
    if path.suffix == ".cfg":
        components = spacy.util.load_config(path, interpolate=False).get("components", {})
        block = next((c for c in components.values() if c.get("factory") in FACTORIES), None)
        if block is None:
            raise ValueError(f"{path} has no [components.*] block with factory {' or '.join(FACTORIES)}")
        return {k: v for k, v in block.items() if k in (*SCHEMA_KEYS, "threshold")}
    try:
        schema = json.loads(path.read_text(encoding="utf8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    if not isinstance(schema, dict):
        raise ValueError(f"{path} holds a JSON {type(schema).__name__}; a schema is an object such as "
                         '{"entities": ["person", "company"]}')
    return schema


def is_saved_pipeline(name: str) -> bool:
    """A folder with ``config.cfg`` (``nlp.to_disk``), or an installed pipeline package (``spacy package``,
    when no such path exists)."""
    path = Path(name)
    if path.exists():
        return (path / "config.cfg").is_file()
    return spacy.util.is_package(name) and spacy.util.get_package_path(name).joinpath("meta.json").exists()


def load_pipeline(name: str, factory: Optional[str], schema: Optional[Dict[str, Any]], gpu_id: int) -> Language:
    """A saved pipeline (folder or installed package) or a checkpoint (folder or Hub id) in a blank
    English pipeline with the ``factory`` component (default: the checkpoint's family, else gliner2);
    its gliner2/gliclass components loaded now (on GPU ``gpu_id`` when >= 0), so that a model that
    cannot be loaded is one error here rather than one per text."""
    if is_saved_pipeline(name):
        nlp = spacy.load(name)
    else:
        nlp = _checkpoint_pipeline(name, factory, schema)
    for pipe_name in nlp.pipe_names:
        if nlp.get_pipe_meta(pipe_name).factory in FACTORIES:
            pipe = nlp.get_pipe(pipe_name)
            if gpu_id >= 0:
                pipe.cfg["device"] = f"cuda:{gpu_id}"
                if pipe._runner is not None:  # a saved pipeline loads its weights on the CPU
                    pipe._set_runner(pipe._runner)
            pipe.runner  # noqa: B018 (loads the checkpoint)
    return nlp


def _checkpoint_pipeline(name: str, factory: Optional[str], schema: Optional[Dict[str, Any]]) -> Language:
    from .core.checkpoint import checkpoint_family

    if schema is None:
        raise ValueError(f"{name} is a checkpoint, not a saved pipeline: it needs a schema (what to extract). "
                         "Give --schema schema.json, or a spaCy config with a gliner2/gliclass component block.")
    if not any(schema.get(key) for key in SCHEMA_KEYS):
        unknown = sorted(set(schema) - set(SCHEMA_KEYS) - {"threshold"})
        raise ValueError(f"the schema for checkpoint {name} names no task: give one of {list(SCHEMA_KEYS)}"
                         + (f" (unknown keys: {unknown})" if unknown else "") + ".")
    folder = Path(name)
    found = checkpoint_family(folder) if (folder / "config.json").is_file() else None
    nlp = spacy.blank("en")
    nlp.add_pipe(factory or found or "gliner2", config={"model": name, **(schema or {})})
    return nlp
