"""The GLiClass hooks of the shared runner: one input per (window, classification task),
padded batches, and class decisions merged over a long text's windows.

Each task of the schema is its own encoder pass over
``<<LABEL>>l1<<LABEL>>l2...<<SEP>>prompt text examples`` (:mod:`.prompt`): GLiClass scores
one label set per pass. Label descriptions extend the label's text (``"label: description"``).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import torch

from ..core.batching import TextWindow
from ..core.classes import LabelProbs, classify, merge_classes
from ..core.runner import Runner
from ..core.checkpoint import reserved_strings
from ..schema import ClassificationTask, Schema, SchemaError, refuse_reserved
from .checkpoint import HUB_PATTERNS, load_model, new_model, save_model
from .model import GLiClassModel
from .prompt import MARKERS, Example, build_input, check_labels, tokenize

Decisions = Dict[str, Any]  # task -> {"label", "confidence"} or a list of them
Output = Tuple[Decisions, Dict[str, LabelProbs]]


@dataclass
class ClassRecord:
    """One window's inputs: a token-id sequence per classification task."""

    sequences: List[List[int]]

    @property
    def input_ids(self) -> List[int]:
        """The longest sequence (what the encoder limit and length sorting look at)."""
        return max(self.sequences, key=len)


@dataclass
class ClassBatch:
    """Right-padded rows of every record's tasks, and how many rows each record has."""

    input_ids: torch.Tensor  # (R, T)
    attention_mask: torch.Tensor  # (R, T)
    rows: List[int]

    def to(self, device: torch.device) -> "ClassBatch":
        return ClassBatch(self.input_ids.to(device), self.attention_mask.to(device), self.rows)


def label_texts(task: ClassificationTask) -> List[str]:
    """The text of each label slot: the label, with its description after a colon when it has one."""
    descriptions = dict(task.descriptions)
    return [f"{shown}: {descriptions[label]}" if label in descriptions else shown
            for label, shown in zip(task.labels, task.shown_labels)]


def task_examples(task: ClassificationTask) -> List[Example]:
    return [Example(text, tuple(task.shown(o) for o in ((out,) if isinstance(out, str) else out)))
            for text, out in task.examples]


class GLiClassRunner(Runner[Output]):
    """A loaded GLiClass checkpoint that classifies texts given as words."""

    family = "gliclass"
    hub_patterns = HUB_PATTERNS
    cuts_long_words = True  # the text is read as a string; no spans to keep whole
    model: GLiClassModel

    def __init__(self, model: GLiClassModel, tokenizer: Any, config: Dict[str, Any]):
        super().__init__(model, tokenizer, config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.reserved = tuple(sorted(set(reserved_strings(tokenizer)) | set(MARKERS)))

    @classmethod
    def read(cls, folder: Path) -> Tuple[GLiClassModel, Any, Dict[str, Any]]:
        return load_model(folder)

    @classmethod
    def new(cls, folder: Path) -> Tuple[GLiClassModel, Any, Dict[str, Any]]:
        return new_model(folder)

    def save(self, folder: Path) -> None:
        save_model(self.model, self.tokenizer, self.config, folder)

    def check_schema(self, schema: Schema) -> None:
        if not schema.classifications:
            raise SchemaError(
                "The schema has no classification task: configure at least one under "
                "classifications (in the component config or per call)."
            )
        for task in schema.classifications:
            parts = label_texts(task) + [task.prompt or ""]
            parts += [part for example in task_examples(task) for part in (example.text, *example.labels)]
            for part in parts:
                refuse_reserved(part, self.reserved, f"Task {task.name!r}: schema text")

    def _sequence(self, task: ClassificationTask, text: str) -> List[int]:
        settings = self.model.settings
        string = build_input(text, label_texts(task), prompt_first=settings.prompt_first,
                             prompt=task.prompt or "", examples=task_examples(task), reserved=self.reserved)
        ids = tokenize(self.tokenizer, string)
        check_labels(ids, len(task.labels), settings.class_token_index)
        return ids

    def encode(self, schema: Schema, window: TextWindow) -> ClassRecord:
        text = window.span_text
        return ClassRecord([self._sequence(task, text) for task in schema.classifications])

    def prompt_tokens(self, schema: Schema) -> int:
        return max(len(self._sequence(task, "")) for task in schema.classifications)

    def collate(self, records: Sequence[ClassRecord]) -> ClassBatch:
        rows = [seq for record in records for seq in record.sequences]
        width = max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return ClassBatch(input_ids, attention_mask, [len(r.sequences) for r in records])

    def forward(self, model: torch.nn.Module, batch: ClassBatch) -> Iterator[torch.Tensor]:
        logits = model(batch.input_ids, batch.attention_mask).logits.float()
        yield from logits.split(batch.rows)

    def decode(self, schema: Schema, record: ClassRecord, scores: torch.Tensor, window: TextWindow) -> Output:
        decisions, probs = {}, {}
        for task, logits in zip(schema.classifications, scores):
            decisions[task.name], probs[task.name] = classify(task, logits[: len(task.labels)], at_least_one=False)
        return decisions, probs

    def merge(self, schema: Schema, parts: Sequence[Output]) -> Output:
        if len(parts) == 1:
            return parts[0]
        decisions, probs = {}, {}
        for task in schema.classifications:
            decisions[task.name], probs[task.name] = merge_classes(task, [(d[task.name], p[task.name]) for d, p in parts])
        return decisions, probs
