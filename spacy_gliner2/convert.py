"""Converters to spaCy DocBins: GLiNER JSON, BIO CoNLL, classification CSV / TSV / JSON.

Entities go to ``doc.ents`` (overlapping gold spans: the longest kept there) and,
all of them, to ``doc.spans[spans_key]``; classes to ``doc.cats`` (every label of
the file, 1.0 for the gold ones). Spans that do not align to tokens are counted.
"""
import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.tokens import Doc, DocBin, Span
from spacy.util import filter_spans

logger = logging.getLogger(__name__)


@dataclass
class Report:
    docs: int = 0
    spans: int = 0
    unaligned: int = 0
    overlapping: int = 0  # kept in doc.spans only

    def __str__(self) -> str:
        return (
            f"{self.docs} docs, {self.spans} entity spans ({self.unaligned} not aligned to tokens, "
            f"{self.overlapping} overlapping ones only in doc.spans)"
        )


def _set_spans(doc: Doc, spans: List[Optional[Span]], report: Report, spans_key: str) -> Doc:
    aligned = [s for s in spans if s is not None]
    report.spans += len(spans)
    report.unaligned += len(spans) - len(aligned)
    ents = filter_spans(aligned)
    report.overlapping += len(aligned) - len(ents)
    doc.ents = ents
    doc.spans[spans_key] = aligned
    report.docs += 1
    return doc


def gliner_json(nlp: Language, path: Path, report: Report, spans_key: str = "gliner2") -> Iterator[Doc]:
    """``[{"sentence", "entities": [{"type", "pos": [start, end]}]}]`` or ``[{"tokenized_text", "ner": [[i, j, label]]}]``."""
    for item in json.loads(Path(path).read_text(encoding="utf8")):
        if "tokenized_text" in item:
            doc = Doc(nlp.vocab, words=item["tokenized_text"])
            spans = [Span(doc, i, j + 1, label=label) if 0 <= i <= j < len(doc) else None for i, j, label in item.get("ner", [])]
        elif "sentence" in item:
            doc = nlp.make_doc(item["sentence"])
            spans = [doc.char_span(e["pos"][0], e["pos"][1], label=e["type"], alignment_mode="expand") for e in item.get("entities", [])]
        else:
            raise ValueError(f"{path}: an item has neither 'sentence' nor 'tokenized_text': {str(item)[:200]}")
        yield _set_spans(doc, spans, report, spans_key)


def bio_conll(nlp: Language, path: Path, report: Report, spans_key: str = "gliner2") -> Iterator[Doc]:
    """``token<TAB or space>TAG`` lines, a blank line between sentences; tags O and B-/I- (BIO,
    IOB1 tolerated) or also E-/S- and L-/U- (BIOES, BILOU). Any other tag is an error naming its line."""
    def sentences() -> Iterator[List[Tuple[str, str, int]]]:
        rows: List[Tuple[str, str, int]] = []
        for number, line in enumerate(Path(path).read_text(encoding="utf8").splitlines(), 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if rows:
                    yield rows
                rows = []
            elif len(parts) >= 2:
                rows.append((parts[0], parts[-1], number))
            else:
                raise ValueError(f"{path}: expected 'token TAG', got {line!r}")
        if rows:
            yield rows

    for rows in sentences():
        doc = Doc(nlp.vocab, words=[w for w, _, _ in rows])
        spans, start, label = [], None, None
        for i, (_, tag, number) in enumerate(rows + [("", "O", 0)]):
            prefix, dash, name = tag.partition("-")
            prefix = prefix.upper()
            if tag.upper() != "O" and not (dash and name and prefix in _TAG_PREFIXES):
                raise ValueError(f"{path}, line {number}: tag {tag!r} is neither O nor a label after one of the "
                                 "prefixes B-, I- (BIO, IOB1), E-, S- (BIOES) or L-, U- (BILOU).")
            inside = prefix in _INSIDE and start is not None and name == label  # continues the open span
            if start is not None and not inside:
                spans.append(Span(doc, start, i, label=label))
                start = None
            if tag.upper() != "O" and not inside:
                start, label = i, name
            if prefix in _LAST:
                spans.append(Span(doc, start, i + 1, label=label))
                start = None
        yield _set_spans(doc, spans, report, spans_key)


_TAG_PREFIXES = ("B", "I", "E", "S", "L", "U")
_INSIDE = ("I", "E", "L")  # continue a span of the same label
_LAST = ("E", "S", "L", "U")  # end the span on this token


def classification(
    nlp: Language,
    path: Path,
    report: Report,
    text_field: str = "text",
    label_field: str = "label",
) -> Iterator[Doc]:
    """CSV / TSV (with a header row) or JSON (a list of objects, or of ``[text, label]`` pairs).

    A label field may hold several labels separated by ``|`` (or a JSON list): multi-label.
    """
    path = Path(path)
    if path.suffix.lower() in (".json", ".jsonl"):
        text = path.read_text(encoding="utf8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with open(path, newline="", encoding="utf8") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
    items = [_text_labels(row, text_field, label_field, path) for row in rows]
    all_labels = sorted({label for _, labels in items for label in labels})
    for text, labels in items:
        doc = nlp.make_doc(text)
        doc.cats = {label: float(label in labels) for label in all_labels}
        report.docs += 1
        yield doc


def _text_labels(row, text_field: str, label_field: str, path: Path) -> Tuple[str, Sequence[str]]:
    if isinstance(row, (list, tuple)) and len(row) == 2:
        text, labels = row
    elif isinstance(row, dict) and text_field in row and (label_field in row or "labels" in row):
        text, labels = row[text_field], row.get(label_field, row.get("labels"))
    else:
        raise ValueError(f"{path}: expected fields {text_field!r} and {label_field!r} (or [text, label] pairs), got {row!r}")
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split("|") if x.strip()]
    return str(text), list(labels)


def map_labels(docs: Iterable[Doc], fn: Callable[[str], str], spans_key: str = "gliner2") -> Iterator[Doc]:
    """Rename the labels of ``doc.ents``, ``doc.spans[spans_key]`` and ``doc.cats`` with ``fn``.

    Labels that become equal are merged (cats: the highest value is kept).
    """
    for doc in docs:
        doc.ents = [Span(doc, e.start, e.end, label=fn(e.label_)) for e in doc.ents]
        if spans_key in doc.spans:
            doc.spans[spans_key] = [Span(doc, s.start, s.end, label=fn(s.label_)) for s in doc.spans[spans_key]]
        if doc.cats:
            cats: Dict[str, float] = {}
            for label, value in doc.cats.items():
                cats[fn(label)] = max(value, cats.get(fn(label), 0.0))
            doc.cats = cats
        yield doc


def write_docbin(docs: Iterable[Doc], output: Path) -> int:
    """Write Docs (user data included) to a ``.spacy`` file; returns how many."""
    db = DocBin(store_user_data=True)
    n = 0
    for doc in docs:
        db.add(doc)
        n += 1
    output.parent.mkdir(parents=True, exist_ok=True)
    db.to_disk(output)
    return n
