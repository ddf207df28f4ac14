"""The GLiNER2 hooks of the shared runner: prompt encoding, batches, decoding and window merge."""
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..core.batching import TextWindow
from ..core.neighbours import longest_examples
from ..core.runner import Runner
from ..schema import Schema, SchemaError
from .checkpoint import HUB_PATTERNS, load_model, new_model, save_model
from .decoding import Probs, Result, decode, empty_result, merge_windows
from .encoding import Batch, EncodedText, Encoder, make_batch
from .model import GLiNER2Model, TaskScores

Output = Tuple[Result, Probs]


class GLiNER2Runner(Runner[Output]):
    """A loaded GLiNER2 checkpoint that extracts from texts given as words."""

    family = "gliner2"
    hub_patterns = HUB_PATTERNS
    model: GLiNER2Model

    def __init__(self, model: GLiNER2Model, tokenizer: Any, config: Dict[str, Any]):
        super().__init__(model, tokenizer, config)
        self.encoder = Encoder(tokenizer)

    @classmethod
    def read(cls, folder: Path) -> Tuple[GLiNER2Model, Any, Dict[str, Any]]:
        return load_model(folder)

    @classmethod
    def new(cls, folder: Path) -> Tuple[GLiNER2Model, Any, Dict[str, Any]]:
        return new_model(folder)

    def save(self, folder: Path) -> None:
        save_model(self.model, self.tokenizer, self.config, folder)

    def check_schema(self, schema: Schema) -> None:
        if schema.is_empty:
            raise SchemaError(
                "The schema is empty: configure at least one of entities, classifications, "
                "structures or relations (in the component config or per call)."
            )
        boundary = self.model.settings.boundary
        if schema.entity_attributes and not boundary:
            raise SchemaError(
                "entity_attributes run on GLiNER2.5 'boundary' checkpoints (fastino/gliner2.5-*) so far; remove "
                "them from the schema for this GLiNER2 'span' checkpoint."
            )
        if boundary and schema.relations and not boundary.enable_relations:
            raise SchemaError(
                "This GLiNER2.5 'boundary' checkpoint has no relation head (boundary_head.enable_relations is false): "
                "remove relations from the schema, or use a checkpoint trained with relations."
            )
        records = [s for s in schema.structures if s.mode]
        if records and not (boundary and boundary.enable_records):
            raise SchemaError(
                f"Structure {records[0].name!r} is a record-mode structure (mode {records[0].mode!r}): these run on "
                "GLiNER2.5 'boundary' checkpoints with a record head (boundary_head.enable_records); remove its mode "
                "for this checkpoint (one instance per structure on boundary checkpoints, several on span ones)."
            )
        for structure in records:
            if structure.mode == "natural" and any(f.choices and f.name == structure.anchor for f in structure.fields):
                raise SchemaError(
                    f"The anchor field {structure.anchor!r} of record structure {structure.name!r} is a choice field; "
                    "a natural record is anchored on a span of the text. Anchor it on another field (\"anchor\")."
                )
        for task in schema.classifications:
            if any(not isinstance(out, str) for _, out in task.examples):
                raise SchemaError(
                    f"Examples of classification task {task.name!r} give a list of labels; GLiNER2 "
                    "prompts take one label per example ([input_text, label])."
                )
        self.prompt_tokens(schema)  # schema text holding the encoder's special tokens: refused here, once

    def encode(self, schema: Schema, window: TextWindow) -> EncodedText:
        return self.encoder.encode(schema, window.words)

    def prompt_tokens(self, schema: Schema) -> int:
        return len(self.encoder.encode(schema, [(".", 0, 0)]).input_ids) - 1

    def passes(self, schema: Schema, per_text: List[Schema]) -> List[List[Schema]]:
        limit = self.max_tokens
        longest = longest_examples(schema) if schema.retrieves else schema
        if limit is None or len(schema.apart()) < 2 or self.prompt_tokens(longest) <= limit // 2:
            return [per_text]
        parts = {key: s.apart() for key, s in {id(s): s for s in per_text}.items()}  # the same tasks in each
        return [list(texts) for texts in zip(*(parts[id(s)] for s in per_text))]

    def combine(self, outputs: Sequence[Output]) -> Output:
        result, probs = empty_result(), {}
        for part, part_probs in outputs:
            for section, values in part.items():
                result.setdefault(section, {}).update(values)
            probs.update(part_probs)
        return result, probs

    def collate(self, records: Sequence[EncodedText]) -> Batch:
        return make_batch(records, self.pad_id)

    def decode(self, schema: Schema, record: EncodedText, scores: Sequence[TaskScores], window: TextWindow) -> Output:
        return decode(schema, record, scores, window.words, window.text)

    def merge(self, schema: Schema, parts: Sequence[Output]) -> Output:
        boundary = self.model.settings.boundary
        return merge_windows(schema, parts, boundary.overlap_policy if boundary else None)
