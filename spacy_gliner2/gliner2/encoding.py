"""Schema + words -> the model's input: token ids, word and marker positions.

The input is ``segment [SEP_STRUCT] segment ... [SEP_TEXT] prefix words``, one
segment per task (structures, entities, relations, classifications, in that
order); every element is sub-tokenised on its own and each word is represented
by its first sub-token. Knows nothing of spaCy; returns plain lists and tensors.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..core.checkpoint import reserved_strings
from ..schema import Schema, SPECIAL_TOKENS, refuse_reserved
from ..text import Word

STRUCTURE, ENTITIES, RELATION, CLASSIFICATION = "structure", "entities", "relation", "classification"
_MARKER = {STRUCTURE: "[C]", ENTITIES: "[E]", RELATION: "[R]", CLASSIFICATION: "[L]"}
RELATION_SLOTS = ("head", "tail")


@dataclass(frozen=True)
class Segment:
    """One task's prompt: its kind, index in the schema, slot names and elements."""

    kind: str
    index: int
    names: Tuple[str, ...]
    elements: Tuple[str, ...]


@dataclass
class TaskSlots:
    """Where one task's ``[P]`` and child markers sit in an encoded record."""

    segment: Segment
    prompt_pos: int
    marker_pos: List[int]


@dataclass
class EncodedText:
    """One record (a text, or one window of it) ready for batching."""

    input_ids: List[int]
    word_pos: List[int]  # first sub-token position of each prefix + text word
    n_prefix: int  # how many leading words are the choices prefix
    prefix: Tuple[str, ...]
    tasks: List[TaskSlots]
    blank_words: List[int] = field(default_factory=list)  # words (as word_pos indices) without sub-tokens


@dataclass
class Batch:
    """Padded tensors plus the per-record layouts the model and decoder need."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    word_pos: torch.Tensor  # (B, W) first sub-token of each word, 0-padded
    n_words: List[int]
    records: List[EncodedText]

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.word_pos.to(device),
            self.n_words,
            self.records,
        )


def _prompt(name: str, descriptions: Sequence[Tuple[str, str]]) -> str:
    return name + "".join(f" [DESCRIPTION] {label}: {desc}" for label, desc in descriptions)


def _segment(kind: str, index: int, prompt: str, names: Sequence[str]) -> Segment:
    marker = _MARKER[kind]
    elements = ["(", "[P]", prompt, "("]
    for name in names:
        elements += [marker, name]
    return Segment(kind, index, tuple(names), tuple(elements + [")", ")"]))


def schema_segments(schema: Schema) -> List[Segment]:
    """The task segments of a schema, in the reference's order."""
    segments = []
    for i, s in enumerate(schema.structures):
        descs = [(f.name, f.description) for f in s.fields if f.description]
        segments.append(_segment(STRUCTURE, i, _prompt(s.name, descs), [f.name for f in s.fields]))
    if schema.entities:  # attribute labels (if any) are read as extra entity labels
        descs = [(e.name, e.description) for e in schema.prompt_entities if e.description]
        names = [e.name for e in schema.prompt_entities]
        segments.append(_segment(ENTITIES, 0, _prompt("entities", descs), names))
    for i, r in enumerate(schema.relations):
        prompt = f"{r.name}: {r.description}" if r.description else r.name
        segments.append(_segment(RELATION, i, prompt, RELATION_SLOTS))
    for i, t in enumerate(schema.classifications):  # labels as shown (numbers with numeric_labels)
        prompt = _prompt(f"{t.name}: {t.prompt}" if t.prompt else t.name, [(t.shown(lab), d) for lab, d in t.descriptions])
        prompt += "".join(f" [EXAMPLE] {text} [OUTPUT] {t.shown(out)}" for text, out in t.examples)
        segments.append(_segment(CLASSIFICATION, i, prompt, t.shown_labels))
    return segments


def choices_prefix(schema: Schema) -> Tuple[str, ...]:
    """Words put before the text listing each structure's choice fields (not lower-cased)."""
    prefix: List[str] = []
    for s in schema.structures:
        inner: List[str] = []
        for f in s.fields:
            if f.choices:
                options = [x for c in f.choices for x in ("|", c)][1:]
                inner += [f.name, "("] + options + [")", ","]
        if inner:
            prefix += ["(", f"{s.name}:"] + inner[:-1] + [")"]
    return tuple(prefix)


class Encoder:
    """Turns (schema, words) into :class:`EncodedText`, caching sub-token ids."""

    def __init__(self, tokenizer: Any, cache_size: int = 100_000):
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._ids: Dict[str, List[int]] = {}
        self._schemas: Dict[Schema, Tuple[List[int], List[TaskSlots], Tuple[str, ...], List[int]]] = {}
        missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(
                f"The tokenizer lacks GLiNER2's special tokens {missing}; "
                "is this a GLiNER2 checkpoint folder?"
            )
        # the encoder's own special tokens ([CLS], [SEP], ...): GLiNER2's are refused when a schema is parsed
        self.reserved = tuple(t for t in reserved_strings(tokenizer) if t not in SPECIAL_TOKENS)
        self.sep_text = self.ids("[SEP_TEXT]")
        self.sep_struct = self.ids("[SEP_STRUCT]")

    def ids(self, element: str) -> List[int]:
        """Sub-token ids of one element (a word, bracket, label or prompt)."""
        ids = self._ids.get(element)
        if ids is None:
            ids = self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(element))
            if len(self._ids) >= self.cache_size:
                self._ids.clear()
            self._ids[element] = ids
        return ids

    def _schema_part(self, schema: Schema):
        cached = self._schemas.get(schema)
        if cached is None:
            ids: List[int] = []
            tasks: List[TaskSlots] = []
            for n, seg in enumerate(schema_segments(schema)):
                if n:
                    ids += self.sep_struct
                slots = TaskSlots(seg, -1, [])
                for j, element in enumerate(seg.elements):
                    if element not in SPECIAL_TOKENS:
                        refuse_reserved(element, self.reserved, "Schema text")
                    if j == 1:
                        slots.prompt_pos = len(ids)
                    elif j >= 4 and j % 2 == 0 and j < len(seg.elements) - 2:
                        slots.marker_pos.append(len(ids))
                    ids += self.ids(element)
                tasks.append(slots)
            ids += self.sep_text
            prefix = choices_prefix(schema)
            for element in prefix:
                refuse_reserved(element, self.reserved, "Schema text")
            prefix_ids = [self.ids(w) for w in prefix]
            cached = (ids, tasks, prefix, prefix_ids)
            if len(self._schemas) > 64:
                self._schemas.clear()
            self._schemas[schema] = cached
        return cached

    def encode(self, schema: Schema, words: Sequence[Word]) -> EncodedText:
        """Encode one text given as (already normalised) words."""
        schema_ids, tasks, prefix, prefix_ids = self._schema_part(schema)
        input_ids = list(schema_ids)
        word_pos, blank = [], []
        for i, word_ids in enumerate(prefix_ids + [self.ids(w[0]) for w in words]):
            word_pos.append(len(input_ids))
            input_ids += word_ids
            if not word_ids:
                blank.append(i)
        # a word with no sub-tokens keeps a row (pointing at the next sub-token)
        last = len(input_ids) - 1
        word_pos = [min(p, last) for p in word_pos]
        return EncodedText(input_ids, word_pos, len(prefix), prefix, tasks, blank)


def make_batch(records: Sequence[EncodedText], pad_id: int = 0) -> Batch:
    """Pad records into one batch."""
    n = len(records)
    max_len = max((len(r.input_ids) for r in records), default=0)
    n_words = [len(r.word_pos) for r in records]
    input_ids = torch.full((n, max_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, max_len), dtype=torch.long)
    word_pos = torch.zeros((n, max(n_words, default=0)), dtype=torch.long)
    for i, r in enumerate(records):
        input_ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids, dtype=torch.long)
        attention_mask[i, : len(r.input_ids)] = 1
        word_pos[i, : n_words[i]] = torch.tensor(r.word_pos, dtype=torch.long)
    return Batch(input_ids, attention_mask, word_pos, n_words, list(records))

