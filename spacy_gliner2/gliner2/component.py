"""The ``gliner2`` spaCy component: the factory and the GLiNER2 hooks of the shared component.

Docs -> words -> :class:`~.runner.GLiNER2Runner` -> :func:`~.annotate.annotate`.
"""
import logging
import random
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example, validate_examples

from ..core.annotate import ALIGNMENT_MODES, ENTS_POLICIES, register_extension
from ..core.component import ZeroShotComponent, category_task, check_choice
from ..core.optim import TrainingState
from ..core.rl import ClassRow
from ..schema import SCHEMA_KEYS, Schema
from .annotate import EXTENSION, annotate
from .runner import GLiNER2Runner
from .scoring import score as score_examples
from .layers import MAX_COUNT
from .training import (Gold, TrainingSettings, label_groups, negative_pool, outside_every_window, sample_schema,
                       training_loss, window_gold)

logger = logging.getLogger(__name__)  # warnings reach stderr unless logging is configured

DEFAULT_MODEL = "fastino/gliner2-base-v1"


@Language.factory(
    "gliner2",
    assigns=["doc.ents", "doc.spans", "doc.cats", "doc._.gliner2"],
    default_config={
        "model": DEFAULT_MODEL,
        "entities": None,
        "classifications": None,
        "structures": None,
        "relations": None,
        "entity_attributes": None,
        "threshold": 0.5,
        "batch_size": 8,
        "max_batch_tokens": 2048,
        "spans_key": "gliner2",
        "ents_policy": "keep_existing",
        "alignment_mode": "expand",
        "use_doc_tokens": False,
        "window_size": 384,
        "window_overlap": 64,
        "device": None,
        "precision": "fp32",
        "revision": None,
        "cache_dir": None,
        "local_files_only": False,
        "training": {},
    },
    default_score_weights={
        "ents_f": 1.0,
        "ents_p": 0.0,
        "ents_r": 0.0,
        "ents_per_type": None,
        "cats_score": 1.0,
        "structures_f": 1.0,
        "relations_f": 1.0,
    },
)
def make_gliner2(
    nlp: Language,
    name: str,
    model: str,
    entities: Optional[Any],
    classifications: Optional[Any],
    structures: Optional[Any],
    relations: Optional[Any],
    entity_attributes: Optional[Any],
    threshold: float,
    batch_size: int,
    max_batch_tokens: int,
    spans_key: str,
    ents_policy: str,
    alignment_mode: str,
    use_doc_tokens: bool,
    window_size: int,
    window_overlap: int,
    device: Optional[str],
    precision: str,
    revision: Optional[str],
    cache_dir: Optional[str],
    local_files_only: bool,
    training: Dict[str, Any],
) -> "GLiNER2Component":
    """Build the component; the checkpoint is loaded on first use (or by from_disk)."""
    return GLiNER2Component.from_factory(**locals())


class GLiNER2Component(ZeroShotComponent):
    """Zero-shot entities, classes, structures and relations from a GLiNER2 checkpoint."""

    runner_type = GLiNER2Runner
    settings_type = TrainingSettings
    schema_keys = SCHEMA_KEYS
    # every entity label seen in training (negatives are sampled from it), and the groups of labels that
    # share a Doc (a mixed corpus's data sets: an example's negatives come from its own)
    learned_keys = ("entity_labels", "entity_label_groups")
    runner: GLiNER2Runner
    training: TrainingSettings

    def __init__(
        self,
        vocab: Any,
        *,
        name: str = "gliner2",
        model: str = DEFAULT_MODEL,
        schema: Dict[str, Any],
        spans_key: str = "gliner2",
        ents_policy: str = "keep_existing",
        alignment_mode: str = "expand",
        use_doc_tokens: bool = False,
        **settings: Any,
    ):
        check_choice(ents_policy, ENTS_POLICIES, "ents_policy")
        check_choice(alignment_mode, ALIGNMENT_MODES, "alignment_mode")
        super().__init__(
            vocab,
            name=name,
            model=model,
            schema=schema,
            spans_key=spans_key,
            ents_policy=ents_policy,
            alignment_mode=alignment_mode,
            use_doc_tokens=use_doc_tokens,
            **settings,
        )
        register_extension(EXTENSION)

    def _learn_labels(self, examples: List[Example]) -> Dict[str, Any]:
        """Every entity label of the data becomes a possible negative, and schema sections
        left empty in the config are filled from the data (entity labels, one
        classification task ``"category"`` over the cats)."""
        entity_labels, per_doc = set(), []
        for eg in examples:
            per_doc.append({label for label, _, _ in self._gold(eg.reference).entities})
            entity_labels.update(per_doc[-1])
        self.cfg["entity_labels"] = sorted(entity_labels | {e.name for e in self.schema.entities})
        self.cfg["entity_label_groups"] = label_groups(sorted(labels) for labels in per_doc)
        schema = dict(self.cfg["schema"])
        if not schema.get("entities") and entity_labels:
            schema["entities"] = sorted(entity_labels)
        task = None if schema.get("classifications") else category_task(examples)
        if task:
            schema["classifications"] = task
        return schema

    def _unlearned(self, examples: List[Example]) -> List[str]:
        """Also: gold structures and relations (``doc._.gliner2``) the schema does not name, and a
        ``gold_spans_key`` that no Doc has."""
        messages, schema = super()._unlearned(examples), self.training_schema
        for section, configured in (("structures", schema.structures), ("relations", schema.relations)):
            names = {item.name for item in configured}
            stray = sorted({name for eg in examples for name in ((eg.reference._.get(EXTENSION) or {}).get(section) or {})
                            if name not in names})
            if stray:
                messages.append(f"gold {section} {stray} (doc._.{EXTENSION}) are not in the schema and are not learned: "
                                f"add them to the component's {section}.")
        key = self.training.gold_spans_key
        if key and not any(key in eg.reference.spans for eg in examples):
            messages.append(f"training.gold_spans_key {key!r} is in no Doc's doc.spans: no entities are learned.")
        return messages

    def _teaches(self, doc: Doc) -> bool:
        gold = self._gold(doc)
        return bool(gold.entities_annotated or gold.structures or gold.relations)

    def _write(self, doc: Doc, output: Any, schema: Schema) -> int:
        result, probs = output
        return annotate(
            doc,
            result,
            probs,
            schema,
            spans_key=self.cfg["spans_key"],
            ents_policy=self.cfg["ents_policy"],
            alignment_mode=self.cfg["alignment_mode"],
        )

    def _report_unaligned(self, count: int) -> None:
        logger.warning(
            "%d predicted span(s) could not be aligned to tokens (alignment_mode=%r); they are kept "
            "in doc._.gliner2 and counted in doc.spans[%r].attrs['unaligned'].",
            count,
            self.cfg["alignment_mode"],
            self.cfg["spans_key"],
        )

    # -- training ------------------------------------------------------------

    def _training_state(self) -> TrainingState:
        if self.runner.model.settings.boundary:
            raise ValueError(
                f"Component {self.name!r} holds a GLiNER2.5 'boundary' checkpoint; training supports GLiNER2 "
                "'span' checkpoints (and new heads on a plain encoder) so far."
            )
        records = [s.name for s in self.training_schema.structures if s.mode]
        if records:
            raise ValueError(
                f"Structure(s) {records} of {self.name!r} are record-mode structures (GLiNER2.5 boundary checkpoints), "
                "which training does not cover; train them as plain structures (remove mode and anchor)."
            )
        return super()._training_state()

    def _gold(self, doc: Doc) -> Gold:
        """What a reference Doc teaches (entities, cats, structures, relations)."""
        key = self.training.gold_spans_key
        spans = (doc.spans[key] if key in doc.spans else []) if key else doc.ents
        data = doc._.get(EXTENSION) or {}
        return Gold(
            entities=[(s.label_, s.start_char, s.end_char) for s in spans],
            entities_annotated=key in doc.spans if key else doc.has_annotation("ENT_IOB"),
            cats={k: float(v) for k, v in doc.cats.items()},
            structures={k: list(v) for k, v in (data.get("structures") or {}).items()},
            relations={k: list(v) for k, v in (data.get("relations") or {}).items()},
        )

    def _training_items(self, examples: Iterable[Example], rng: random.Random) -> List[Any]:
        """(prompt schema, encoded window, words, gold) per training window: long Docs are
        read in the windows inference uses, each with the gold that lies inside it."""
        items, missed = [], 0
        for eg in examples:
            doc = eg.reference
            gold_doc = self._gold(doc)
            gold_labels = [label for label, _, _ in gold_doc.entities]
            pool = negative_pool(gold_labels, self.cfg.get("entity_label_groups", []), self.cfg["entity_labels"])
            schema, gold_doc = sample_schema(gold_doc, self.training_schema, pool, self.training, rng)
            if schema.is_empty:
                continue
            schema = self.runner.example_schemas(schema, [doc.text], training=True)[0]
            jobs, records = self._training_windows(doc, schema)
            for job, record in zip(jobs, records):
                items.append((schema, record, job.words, window_gold(gold_doc, job.start, job.end)))
            missed += outside_every_window(gold_doc, [(job.start, job.end) for job in jobs])
        if missed:
            logger.warning(
                "%d gold entities, structure instances or relations span more than one window (window_size=%d "
                "words) and cannot be learned; each window teaches what lies inside it. Raise window_size "
                "(and window_overlap) to learn them.", missed, self.cfg["window_size"])
        return items

    def _loss(self, examples: Sequence[Example], rng: random.Random, generator: torch.Generator) -> Tuple[Optional[torch.Tensor], Dict[str, float]]:
        items = self._training_items(examples, rng)
        if not items:
            return None, {}
        loss, parts, lost = training_loss(self.runner.model, items, self.training, generator)
        if lost:
            logger.warning(
                "%d gold span(s) or instances cannot be learned: spans longer than the model's %d-word spans, or "
                "more than %d instances of one structure or relation in a window.",
                lost, self.runner.model.settings.max_width, MAX_COUNT - 1,
            )
        return loss, parts

    def _class_logits(self, model: torch.nn.Module, batch: Any, rows: Sequence[ClassRow]) -> List[torch.Tensor]:
        return [task.logits for record in model(batch) for task in record]  # classification tasks only

    def score(self, examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
        """Entity P/R/F (per type), categories per task, structure and relation F1."""
        validate_examples(examples, "GLiNER2Component.score")
        return score_examples(examples, self.schema, **kwargs)
