"""The ``gliclass`` spaCy component: the factory and the GLiClass hooks of the shared component.

Docs -> words -> :class:`~.runner.GLiClassRunner` -> ``doc.cats`` and ``doc._.gliclass``
(per task: ``{"label", "confidence"}``, a list of them for multi-label tasks).
"""
import random
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example, validate_examples

from ..core.annotate import merge_result, register_extension, write_cats
from ..core.component import ZeroShotComponent, category_task
from ..core.rl import ClassRow
from ..core.runner import Runner
from ..core.scoring import score_cats
from ..schema import Schema
from .prompt import set_prefix_space
from .runner import GLiClassRunner
from .training import GLiClassTraining, gold_items, training_loss

EXTENSION = "gliclass"
DEFAULT_MODEL = "knowledgator/gliclass-base-v3.0"


@Language.factory(
    "gliclass",
    assigns=["doc.cats", "doc._.gliclass"],
    default_config={
        "model": DEFAULT_MODEL,
        "classifications": None,
        "threshold": 0.5,
        "masked_pooling": True,
        "batch_size": 8,
        "max_batch_tokens": 4096,
        "window_size": 384,
        "window_overlap": 64,
        "device": None,
        "precision": "fp32",
        "add_prefix_space": None,
        "revision": None,
        "cache_dir": None,
        "local_files_only": False,
        "training": {},
    },
    default_score_weights={"cats_score": 1.0},
)
def make_gliclass(
    nlp: Language,
    name: str,
    model: str,
    classifications: Optional[Any],
    threshold: float,
    masked_pooling: bool,
    batch_size: int,
    max_batch_tokens: int,
    window_size: int,
    window_overlap: int,
    device: Optional[str],
    precision: str,
    add_prefix_space: Optional[bool],
    revision: Optional[str],
    cache_dir: Optional[str],
    local_files_only: bool,
    training: Dict[str, Any],
) -> "GLiClassComponent":
    """Build the component; the checkpoint is loaded on first use (or by from_disk)."""
    return GLiClassComponent.from_factory(**locals())


class GLiClassComponent(ZeroShotComponent):
    """Zero-shot text classification from a GLiClass (uni-encoder) checkpoint."""

    runner_type = GLiClassRunner
    settings_type = GLiClassTraining
    schema_keys = ("classifications",)
    runner: GLiClassRunner
    training: GLiClassTraining

    def __init__(self, vocab: Any, *, name: str = "gliclass", model: str = DEFAULT_MODEL,
                 schema: Dict[str, Any], masked_pooling: bool = True, add_prefix_space: Optional[bool] = None,
                 **settings: Any):
        if not isinstance(masked_pooling, bool):
            raise ValueError(f"masked_pooling must be true or false, got {masked_pooling!r}.")
        if add_prefix_space not in (None, True, False):
            raise ValueError(f"add_prefix_space must be null, true or false, got {add_prefix_space!r}.")
        super().__init__(vocab, name=name, model=model, schema=schema, masked_pooling=masked_pooling,
                         add_prefix_space=add_prefix_space, **settings)
        register_extension(EXTENSION)

    @classmethod
    def parse_schema(cls, config: Dict[str, Any]) -> Schema:
        """The tasks; ``threshold`` is the threshold of the tasks that set none (as the reference
        pipeline's ``threshold``)."""
        return Schema.from_config(**config, class_threshold=config.get("threshold"))

    def _set_runner(self, runner: Runner) -> None:
        super()._set_runner(runner)
        runner.model.masked_pooling = self.cfg["masked_pooling"]
        if self.cfg.get("add_prefix_space") is not None:  # older saved configs have no such key
            set_prefix_space(runner.tokenizer, self.cfg["add_prefix_space"])

    def _write(self, doc: Doc, output: Any, schema: Schema) -> int:
        decisions, probs = output
        merge_result(doc, EXTENSION, decisions)
        write_cats(doc, probs, schema)
        return 0

    def _learn_labels(self, examples: List[Example]) -> Dict[str, Any]:
        """Without configured tasks, one task ``"category"`` over every label of the data's
        ``doc.cats`` (multi-label when a Doc has more than one label at or over 0.5)."""
        schema = dict(self.cfg["schema"])
        task = None if schema.get("classifications") else category_task(examples)
        if task:
            schema["classifications"] = task
        return schema

    def _loss(self, examples: Sequence[Example], rng: random.Random, generator: torch.Generator) -> Tuple[Optional[torch.Tensor], Dict[str, float]]:
        """The GLiClass losses (:mod:`.training`) over every window of every (Doc, task) input."""
        groups = [(eg.reference, [item]) for eg in examples
                  for item in gold_items(eg.reference.cats, self.training_schema, self.training, rng)]
        if not groups:
            return None, {}
        batch, items = self._class_batch(groups)
        return training_loss(self.runner.model, batch.input_ids, batch.attention_mask, items, self.training)

    def _class_logits(self, model: torch.nn.Module, batch: Any, rows: Sequence[ClassRow]) -> List[torch.Tensor]:
        logits = model(batch.input_ids, batch.attention_mask).logits
        return [row_logits[: len(row.targets)] for row_logits, row in zip(logits, rows)]

    def score(self, examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
        """Categories per task (spaCy's ``score_cats``) and ``cats_score``."""
        validate_examples(examples, "GLiClassComponent.score")
        return score_cats(list(examples), self.schema)
