"""The ``gliner2`` spaCy component: config, batching over Docs, serialization.

Thin glue: Docs -> words -> :class:`~.inference.Extractor` -> :func:`~.annotate.annotate`.
"""
import contextlib
import json
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import srsly
import torch
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples
from spacy.util import minibatch
from thinc.api import PyTorchWrapper_v2

from .annotate import ALIGNMENT_MODES, ENTS_POLICIES, EXTENSION, annotate, register_extension
from .inference import PRECISIONS, Extractor
from .model.checkpoint import HubOptions, checkpoint_files
from .schema import SCHEMA_KEYS, Schema, SchemaError
from .scoring import score as score_examples
from .text import Word, split_words, words_from_tokens
from .training import Gold, TrainingSettings, make_optimizer, sample_schema, training_loss, window_gold

logger = logging.getLogger(__name__)  # warnings reach stderr unless logging is configured

DEFAULT_MODEL = "fastino/gliner2-base-v1"
OVERRIDE_KEYS = SCHEMA_KEYS + ("threshold",)


@Language.factory(
    "gliner2",
    assigns=["doc.ents", "doc.spans", "doc.cats", "doc._.gliner2"],
    default_config={
        "model": DEFAULT_MODEL,
        "entities": None,
        "classifications": None,
        "structures": None,
        "relations": None,
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
    return GLiNER2Component(
        nlp.vocab,
        name=name,
        model=model,
        schema={
            "entities": entities,
            "classifications": classifications,
            "structures": structures,
            "relations": relations,
            "threshold": threshold,
        },
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        spans_key=spans_key,
        ents_policy=ents_policy,
        alignment_mode=alignment_mode,
        use_doc_tokens=use_doc_tokens,
        window_size=window_size,
        window_overlap=window_overlap,
        device=device,
        precision=precision,
        hub={"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only},
        training=training,
    )


def _check_choice(value: Any, allowed: Iterable[Any], key: str) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}.")


class GLiNER2Component(TrainablePipe):
    """Zero-shot entities, classes, structures and relations from a GLiNER2 checkpoint."""

    def __init__(
        self,
        vocab: Any,
        *,
        name: str = "gliner2",
        model: str = DEFAULT_MODEL,
        schema: Dict[str, Any],
        batch_size: int = 8,
        max_batch_tokens: int = 2048,
        spans_key: str = "gliner2",
        ents_policy: str = "keep_existing",
        alignment_mode: str = "expand",
        use_doc_tokens: bool = False,
        window_size: int = 384,
        window_overlap: int = 64,
        device: Optional[str] = None,
        precision: str = "fp32",
        hub: Optional[Dict[str, Any]] = None,
        training: Optional[Dict[str, Any]] = None,
    ):
        _check_choice(ents_policy, ENTS_POLICIES, "ents_policy")
        _check_choice(alignment_mode, ALIGNMENT_MODES, "alignment_mode")
        _check_choice(precision, PRECISIONS, "precision")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if not 0 <= window_overlap < window_size:
            raise ValueError(
                f"Need 0 <= window_overlap < window_size, got {window_overlap} and {window_size}."
            )
        self.vocab = vocab
        self.name = name
        self.schema = Schema.from_config(**schema)
        self.cfg: Dict[str, Any] = {
            "model": model,
            "schema": schema,
            "batch_size": batch_size,
            "max_batch_tokens": max_batch_tokens,
            "spans_key": spans_key,
            "ents_policy": ents_policy,
            "alignment_mode": alignment_mode,
            "use_doc_tokens": use_doc_tokens,
            "window_size": window_size,
            "window_overlap": window_overlap,
            "device": device,
            "precision": precision,
            "hub": dict(hub or {}),
            "training": dict(training or {}),
            "entity_labels": [],  # every entity label seen in training (negatives are sampled from it)
        }
        self.training = TrainingSettings.from_config(self.cfg["training"])
        self.model = None  # a thinc wrapper of the torch model, once loaded
        self._extractor: Optional[Extractor] = None
        self._optimizer: Any = None
        self._overrides: Dict[str, Schema] = {}
        self._pid = os.getpid()
        register_extension()

    # -- model -------------------------------------------------------------

    @property
    def extractor(self) -> Extractor:
        """The loaded checkpoint (loaded from ``cfg["model"]`` on first access)."""
        if self._extractor is None:
            self._set_extractor(Extractor.load(self.cfg["model"], HubOptions(**self.cfg["hub"])))
        return self._extractor

    def _set_extractor(self, extractor: Extractor) -> None:
        device = self.cfg["device"]
        if device is None:
            from thinc.api import get_current_ops

            device = "cuda" if type(get_current_ops()).__name__ == "CupyOps" else "cpu"
        extractor.model.to(torch.device(device))
        extractor.set_precision(self.cfg["precision"])
        self._extractor = extractor
        self.model = PyTorchWrapper_v2(extractor.model)
        self._optimizer = None

    def initialize(self, get_examples: Optional[Callable] = None, *, nlp: Optional[Language] = None) -> None:
        """Load the checkpoint (or start new heads on a plain encoder) and read the labels.

        With training examples, every entity label of the data becomes a possible
        negative, and schema sections left empty in the config are filled from the
        data (entity labels, one classification task ``"category"`` over the cats).
        """
        if self._extractor is None:
            self._set_extractor(Extractor.load(self.cfg["model"], HubOptions(**self.cfg["hub"]), allow_new=True))
        if get_examples is None:
            return
        examples = list(get_examples())
        validate_examples(examples, "GLiNER2Component.initialize")
        entity_labels, cat_labels, multi = set(), set(), False
        for eg in examples:
            gold = self._gold(eg.reference)
            entity_labels.update(label for label, _, _ in gold.entities)
            cat_labels.update(gold.cats)
            multi = multi or sum(v >= 0.5 for v in gold.cats.values()) > 1
        self.cfg["entity_labels"] = sorted(entity_labels | {e.name for e in self.schema.entities})
        schema = dict(self.cfg["schema"])
        if not schema.get("entities") and entity_labels:
            schema["entities"] = sorted(entity_labels)
        if not schema.get("classifications") and cat_labels:
            schema["classifications"] = {"category": {"labels": sorted(cat_labels), "multi_label": multi}}
        self.schema = Schema.from_config(**schema)
        self.cfg["schema"] = schema
        self._overrides = {}

    # -- prediction --------------------------------------------------------

    def _schema_for(self, overrides: Dict[str, Any]) -> Schema:
        if not overrides:
            return self.schema
        unknown = [k for k in overrides if k not in OVERRIDE_KEYS]
        if unknown:
            raise SchemaError(
                f"Unknown per-call option(s) {unknown} for {self.name!r}; allowed: {list(OVERRIDE_KEYS)}."
            )
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key not in self._overrides:
            if len(self._overrides) > 32:
                self._overrides.clear()
            self._overrides[key] = self.schema.with_overrides(overrides)
        return self._overrides[key]

    def _words(self, doc: Doc) -> List[Word]:
        if self.cfg["use_doc_tokens"]:
            return words_from_tokens((t.text, t.idx) for t in doc)
        return split_words(doc.text)

    def predict(self, docs: Iterable[Doc], schema: Optional[Schema] = None) -> List[Any]:
        """Results and class probabilities per Doc; writes nothing."""
        docs = list(docs)
        if not docs:
            return []
        if os.getpid() != self._pid:  # a forked or spawned worker (nlp.pipe(n_process=...))
            torch.set_num_threads(1)
            self._pid = os.getpid()
        return self.extractor.extract(
            [d.text for d in docs],
            [self._words(d) for d in docs],
            schema or self.schema,
            batch_size=self.cfg["batch_size"],
            max_batch_tokens=self.cfg["max_batch_tokens"],
            window=self.cfg["window_size"],
            overlap=self.cfg["window_overlap"],
        )

    def set_annotations(self, docs: Iterable[Doc], predictions: List[Any], schema: Optional[Schema] = None) -> None:
        """Write results onto the Docs (see README: where each output goes)."""
        unaligned = 0
        for doc, (result, probs) in zip(docs, predictions):
            unaligned += annotate(
                doc,
                result,
                probs,
                schema or self.schema,
                spans_key=self.cfg["spans_key"],
                ents_policy=self.cfg["ents_policy"],
                alignment_mode=self.cfg["alignment_mode"],
            )
        if unaligned:
            logger.warning(
                "%d predicted span(s) could not be aligned to tokens (alignment_mode=%r); they are kept "
                "in doc._.gliner2 and counted in doc.spans[%r].attrs['unaligned'].",
                unaligned,
                self.cfg["alignment_mode"],
                self.cfg["spans_key"],
            )

    def __call__(self, doc: Doc, **overrides: Any) -> Doc:
        overrides.pop("batch_size", None)  # Language.pipe adds it to a shared component_cfg
        schema = self._schema_for(overrides)
        self.set_annotations([doc], self.predict([doc], schema), schema)
        return doc

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128, **overrides: Any) -> Iterator[Doc]:
        """Annotate a stream; each chunk of ``batch_size`` Docs is length-sorted into forward batches."""
        schema = self._schema_for(overrides)
        for docs in minibatch(stream, size=batch_size):
            self.set_annotations(docs, self.predict(docs, schema), schema)
            yield from docs

    # -- training ------------------------------------------------------------

    def _gold(self, doc: Doc) -> Gold:
        """What a reference Doc teaches (entities, cats, structures, relations)."""
        key = self.training.gold_spans_key
        spans = doc.spans[key] if key else doc.ents
        data = doc._.get(EXTENSION) or {}
        return Gold(
            entities=[(s.label_, s.start_char, s.end_char) for s in spans],
            cats={k: float(v) for k, v in doc.cats.items()},
            structures={k: list(v) for k, v in (data.get("structures") or {}).items()},
            relations={k: list(v) for k, v in (data.get("relations") or {}).items()},
        )

    def _training_items(self, examples: Iterable[Example], rng: random.Random) -> List[Any]:
        """(prompt schema, encoded window, words, gold) per training window: long Docs are
        read in the windows inference uses, each with the gold that lies inside it."""
        items = []
        for eg in examples:
            doc = eg.reference
            gold_doc = self._gold(doc)
            schema = sample_schema(gold_doc, self.schema, self.cfg["entity_labels"], self.training, rng)
            if schema.is_empty:
                continue
            jobs, records = self.extractor.windows(
                [doc.text], [self._words(doc)], schema, self.cfg["window_size"], self.cfg["window_overlap"]
            )
            for job, record in zip(jobs, records):
                items.append((schema, record, job.words, window_gold(gold_doc, job.start, job.end)))
        return items

    def _loss(self, examples: Iterable[Example], rng: random.Random, generator: torch.Generator):
        items = self._training_items(examples, rng)
        if not items:
            return None, {}
        loss, parts, lost = training_loss(self.extractor.model, items, self.training, generator)
        if lost:
            logger.warning(
                "%d gold span(s) are longer than the model's %d-word spans and cannot be learned.",
                lost,
                self.extractor.model.settings.max_width,
            )
        return loss, parts

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Any = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Accumulate gradients of the GLiNER2 losses; step when ``sgd`` is given.

        The component steps its own AdamW (``training`` settings: encoder and head
        learning rates, warm-up, clipping); spaCy's optimizer only triggers the step.
        """
        losses = {} if losses is None else losses
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, "GLiNER2Component.update")
        state = self._training_state()
        model = self.extractor.model
        model.train()
        try:
            loss, _ = self._loss(examples, state["rng"], state["generator"])
            if loss is not None:
                loss.backward()
                losses[self.name] += float(loss.detach())
        finally:
            model.eval()
        if sgd not in (None, False):
            self.finish_update(sgd)
        return losses

    def get_loss(self, examples: Iterable[Example], scores: Any = None) -> Dict[str, float]:
        """The losses of ``examples`` (total and parts) without updating anything."""
        examples = list(examples)
        validate_examples(examples, "GLiNER2Component.get_loss")
        rng, generator = random.Random(self.training.seed), torch.Generator().manual_seed(self.training.seed)
        with torch.no_grad():
            loss, parts = self._loss(examples, rng, generator)
        return {"total": float(loss) if loss is not None else 0.0, **parts}

    def _training_state(self) -> Dict[str, Any]:
        if self._optimizer is None:
            optimizer, scheduler = make_optimizer(self.extractor.model, self.training)
            self._optimizer = {
                "optimizer": optimizer,
                "scheduler": scheduler,
                "rng": random.Random(self.training.seed),
                "generator": torch.Generator().manual_seed(self.training.seed),
            }
        return self._optimizer

    def finish_update(self, sgd: Any = None) -> None:
        """Clip, step the optimizer and the learning-rate schedule, clear gradients."""
        state = self._training_state()
        if self.training.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.extractor.model.parameters(), self.training.grad_clip)
        state["optimizer"].step()
        state["scheduler"].step()
        state["optimizer"].zero_grad(set_to_none=True)
        self.extractor.invalidate()

    @contextlib.contextmanager
    def use_params(self, params: Dict) -> Iterator[None]:
        """No parameter averaging: the torch optimizer holds the weights."""
        yield

    def score(self, examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
        """Entity P/R/F (per type), categories per task, structure and relation F1."""
        validate_examples(examples, "GLiNER2Component.score")
        return score_examples(examples, self.schema, **kwargs)

    def add_label(self, label: str) -> int:
        raise NotImplementedError("Labels are set by the schema (config or per call), not add_label.")

    # -- serialization -----------------------------------------------------

    def _cfg_bytes(self) -> bytes:
        return srsly.json_dumps(self.cfg).encode("utf8")

    def _load_cfg(self, data: bytes) -> None:
        """Restore what training learned; settings come from the (possibly overridden) config.

        Saved: the corpus' entity labels, and schema sections that ``initialize`` filled
        from the data (used where the config leaves that section empty).
        """
        saved = srsly.json_loads(data)
        self.cfg["entity_labels"] = saved.get("entity_labels", [])
        schema = dict(self.cfg["schema"])
        for key, value in saved.get("schema", {}).items():
            if key in SCHEMA_KEYS and not schema.get(key) and value:
                schema[key] = value
        self.cfg["schema"] = schema
        self.schema = Schema.from_config(**schema)
        self._overrides = {}

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        """Write cfg and the whole checkpoint (weights as safetensors, tokenizer, configs)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "cfg").write_bytes(self._cfg_bytes())
        if "model" not in exclude:
            self.extractor.save(path / "model")

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "GLiNER2Component":
        """Load from a folder written by :meth:`to_disk`; never touches the network."""
        path = Path(path)
        self._load_cfg((path / "cfg").read_bytes())
        if "model" not in exclude and (path / "model").is_dir():
            self._set_extractor(Extractor.load(str(path / "model")))
        return self

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        data: Dict[str, Any] = {"cfg": self._cfg_bytes()}
        if "model" not in exclude:
            with tempfile.TemporaryDirectory() as tmp:
                self.extractor.save(Path(tmp))
                data["model"] = checkpoint_files(Path(tmp))
        return srsly.msgpack_dumps(data)

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "GLiNER2Component":
        data = srsly.msgpack_loads(bytes_data)
        self._load_cfg(data["cfg"])
        if "model" in data and "model" not in exclude:
            with tempfile.TemporaryDirectory() as tmp:
                for rel, content in data["model"].items():
                    target = Path(tmp, rel)
                    if ".." in Path(rel).parts or Path(rel).is_absolute():
                        raise ValueError(f"Refusing to write checkpoint file outside the folder: {rel!r}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)
                self._set_extractor(Extractor.load(tmp))
        return self
