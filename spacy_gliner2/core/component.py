"""The spaCy component every family shares: config, lazy loading, device and precision,
per-call schemas, predict/pipe, the update plumbing, and serialization.

A family subclasses :class:`ZeroShotComponent` with its runner, its schema sections and its
hooks (what a reference Doc teaches, the loss, how a result is written onto a Doc);
Docs -> words -> runner -> results -> Doc annotations.
"""
import contextlib
import gc
import json
import logging
import os
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Type, Union

import srsly
import torch
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples
from spacy.util import minibatch, raise_error
from thinc.api import PyTorchWrapper_v2

from ..schema import Schema, SchemaError, classification_section
from ..text import Word, split_words, words_from_tokens
from .checkpoint import CheckpointError, HubOptions, checkpoint_files, saved_component_folder, write_checkpoint_files
from .optim import OptimSettings, TrainingState
from .rl import ClassRow, class_rows, ppo_update, resolve_reward
from .runner import PRECISIONS, Runner

logger = logging.getLogger(__name__)  # warnings reach stderr unless logging is configured


def check_choice(value: Any, allowed: Iterable[Any], key: str) -> None:
    """A clear error for a config value outside ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}.")


def category_task(examples: Iterable[Example]) -> Optional[Dict[str, Any]]:
    """A ``classifications`` section read from the data (None when no Doc has cats): one task
    per prefix when every ``doc.cats`` key reads ``"task:label"`` with two or more tasks (the
    keys :meth:`Schema.cats_keys` gives several tasks), else one task ``"category"`` over every
    label; a task is multi-label when a Doc gives it more than one label at or over 0.5."""
    cats = [eg.reference.cats for eg in examples if eg.reference.cats]
    keys = {key for doc_cats in cats for key in doc_cats}
    if not keys:
        return None
    prefixes = {key.split(":", 1)[0] for key in keys if ":" in key}
    split = len(prefixes) > 1 and all(":" in key for key in keys)

    def task_of(key: str) -> Tuple[str, str]:
        return tuple(key.split(":", 1)) if split else ("category", key)  # type: ignore[return-value]

    tasks: Dict[str, Dict[str, Any]] = {}
    for doc_cats in cats:
        positives: Dict[str, int] = {}
        for key, value in doc_cats.items():
            name, label = task_of(key)
            task = tasks.setdefault(name, {"labels": set(), "multi_label": False})
            task["labels"].add(label)
            positives[name] = positives.get(name, 0) + (value >= 0.5)
        for name, count in positives.items():
            tasks[name]["multi_label"] |= count > 1
    return {name: {"labels": sorted(t["labels"]), "multi_label": t["multi_label"]} for name, t in sorted(tasks.items())}


def parse_device(device: str) -> torch.device:
    """A ``device`` setting as a torch device; ValueError for anything but cpu, cuda[:N] or mps."""
    try:
        parsed = torch.device(device) if isinstance(device, str) else None
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps' (or null: follow spaCy), got {device!r}.")
    return parsed


def choose_device(device: Optional[str], ops: Any) -> torch.device:
    """Where the model runs: the ``device`` setting, else spaCy's current ops (after
    ``spacy.require_gpu(n)`` / ``prefer_gpu``: thinc's CupyOps -> ``cuda:n``, MPSOps -> ``mps``;
    otherwise the CPU). A GPU this torch build cannot use is an error that says so."""
    if device is not None:
        chosen = parse_device(device)
    elif type(ops).__name__ == "CupyOps":
        chosen = torch.device("cuda", max(getattr(ops, "device_id", 0), 0))
    elif type(ops).__name__ == "MPSOps":
        chosen = torch.device("mps")
    else:
        return torch.device("cpu")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(chosen)!r}: this torch build ({torch.__version__}) sees no CUDA GPU. Install a "
                         "CUDA build of torch, or run on 'cpu' (and do not call spacy.require_gpu()).")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(chosen)!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s).")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps': this torch build or machine has no Apple GPU (MPS); use 'cpu'.")
    return chosen


class ZeroShotComponent(TrainablePipe):
    """A zero-shot component of one model family (see the family's subclass)."""

    runner_type: ClassVar[Type[Runner]]
    settings_type: ClassVar[Type[OptimSettings]] = OptimSettings
    schema_keys: ClassVar[Tuple[str, ...]]  # the schema sections of the config
    learned_keys: ClassVar[Tuple[str, ...]] = ()  # cfg keys that initialize() fills from data

    def __init__(
        self,
        vocab: Any,
        *,
        name: str,
        model: str,
        schema: Dict[str, Any],
        batch_size: int = 8,
        max_batch_tokens: int = 2048,
        window_size: int = 384,
        window_overlap: int = 64,
        device: Optional[str] = None,
        precision: str = "fp32",
        hub: Optional[Dict[str, Any]] = None,
        training: Optional[Dict[str, Any]] = None,
        **options: Any,
    ):
        check_choice(precision, PRECISIONS, "precision")
        if device is not None:
            parse_device(device)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if isinstance(max_batch_tokens, bool) or not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be a positive integer (tokens per batch), got {max_batch_tokens!r}.")
        if not 0 <= window_overlap < window_size:
            raise ValueError(
                f"Need 0 <= window_overlap < window_size, got {window_overlap} and {window_size}."
            )
        self.vocab = vocab
        self.name = name
        self.schema = self.parse_schema(schema)
        self.cfg: Dict[str, Any] = {
            "model": model,
            "schema": schema,
            "batch_size": batch_size,
            "max_batch_tokens": max_batch_tokens,
            **options,
            "window_size": window_size,
            "window_overlap": window_overlap,
            "device": device,
            "precision": precision,
            "hub": dict(hub or {}),
            "training": dict(training or {}),
            **{key: [] for key in self.learned_keys},
            "class_tasks": {},  # the training data's classification tasks (initialize; see training_schema)
            "learned_sections": [],  # schema sections initialize filled from the data (restored on load)
        }
        self.training = self.settings_type.from_config(self.cfg["training"])
        self.model = None  # a thinc wrapper of the torch model, once loaded
        self._runner: Optional[Runner] = None
        self._state: Optional[TrainingState] = None
        self._overrides: Dict[str, Schema] = {}
        self._pid = os.getpid()

    @classmethod
    def from_factory(cls, nlp: Language, name: str, **config: Any) -> "ZeroShotComponent":
        """The component from its factory's arguments: the schema sections and ``threshold``
        become ``schema``, ``revision``, ``cache_dir`` and ``local_files_only`` become ``hub``."""
        schema = {key: config.pop(key) for key in (*cls.schema_keys, "threshold")}
        hub = {key: config.pop(key) for key in ("revision", "cache_dir", "local_files_only")}
        return cls(nlp.vocab, name=name, schema=schema, hub=hub, **config)

    # -- family hooks --------------------------------------------------------

    @classmethod
    def parse_schema(cls, config: Dict[str, Any]) -> Schema:
        """The schema of the config's schema sections (and threshold)."""
        return Schema.from_config(**config)

    def _learn_labels(self, examples: List[Example]) -> Dict[str, Any]:
        """``initialize`` with data: fill ``learned_keys`` of cfg and return the schema
        config with the sections left empty filled from the data."""
        return dict(self.cfg["schema"])

    def _write(self, doc: Doc, output: Any, schema: Schema) -> int:
        """Write one result onto its Doc; returns how many spans could not be aligned."""
        raise NotImplementedError

    def _report_unaligned(self, count: int) -> None:
        """Tell the user about spans of a batch that could not be aligned to tokens."""

    def _loss(self, examples: Sequence[Example], rng: random.Random, generator: torch.Generator) -> Tuple[Optional[torch.Tensor], Dict[str, float]]:
        """The training loss of ``examples`` (None when they teach nothing) and its parts."""
        raise NotImplementedError

    def _class_logits(self, model: torch.nn.Module, batch: Any, rows: Sequence[ClassRow]) -> List[torch.Tensor]:
        """Hook (PPO): the label logits (prompt order) of each (record, task) of a collated batch, in order."""
        raise NotImplementedError

    def score(self, examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
        raise NotImplementedError

    # -- model -------------------------------------------------------------

    @property
    def runner(self) -> Runner:
        """The loaded checkpoint (loaded from ``cfg["model"]`` on first access)."""
        if self._runner is None:
            self._set_runner(self.runner_type.load(self.cfg["model"], HubOptions(**self.cfg["hub"])))
        return self._runner

    def _set_runner(self, runner: Runner) -> None:
        from thinc.api import get_current_ops

        runner.model.to(choose_device(self.cfg["device"], get_current_ops()))
        runner.set_precision(self.cfg["precision"])
        self._runner = runner
        self.model = PyTorchWrapper_v2(runner.model)
        self._state = None

    def initialize(self, get_examples: Optional[Callable] = None, *, nlp: Optional[Language] = None) -> None:
        """Load the checkpoint (or start new heads on a plain encoder) and read the labels
        of the training data (see the family's ``_learn_labels``)."""
        if self._runner is None:
            self._set_runner(self.runner_type.load(self.cfg["model"], HubOptions(**self.cfg["hub"]), allow_new=True))
        if get_examples is None:
            return
        examples = list(get_examples())
        validate_examples(examples, f"{type(self).__name__}.initialize")
        schema = self._learn_labels(examples)
        learned = category_task(examples) or {}
        self.cfg["class_tasks"] = learned if len(learned) > 1 else {}  # task-prefixed doc.cats keys only
        self.cfg["learned_sections"] = sorted(k for k in self.schema_keys
                                              if schema.get(k) and not self.cfg["schema"].get(k))
        self.schema = self.parse_schema(schema)
        self.cfg["schema"] = schema
        self._overrides = {}
        if len(examples) < 2 and not any(_annotated(eg.reference) for eg in examples):
            return  # spaCy's placeholder (nlp.initialize() without data): a zero-shot pipeline, nothing to say
        if self.training_schema.is_empty:
            logger.warning("%s has nothing to learn: its config names no task (%s) and the training data holds no "
                           "gold to take them from (doc.ents, doc.cats). Configure the tasks, check the corpus, or "
                           "list the component in [training] frozen_components if it only predicts.",
                           self.name, list(self.schema_keys))
        for message in self._unlearned(examples):
            logger.warning("%s: %s", self.name, message)

    def _unlearned(self, examples: List[Example]) -> List[str]:
        """What of the training data's gold training will not learn (each a warning at initialize):
        here ``doc.cats`` keys of no task, and classification gold missing for ``ppo``."""
        schema, messages = self.training_schema, []
        keys = schema.cats_keys()
        tasks_of = Counter(label for _, label, _ in keys)  # a bare label is read for the one task that has it
        known = {k for task, label, key in keys for k in (key, f"{task}:{label}") + ((label,) * (tasks_of[label] == 1))}
        stray = sorted({key for eg in examples for key in eg.reference.cats if key not in known})
        if stray:
            messages.append(f"doc.cats keys {stray[:10]}{' ...' if len(stray) > 10 else ''} belong to no classification "
                            f"task ({[t.name for t in schema.classifications]}) and are not learned: add them to a task's "
                            "labels (keys \"task:label\" name their task).")
        has_classes = any(labels for eg in examples for labels in schema.judged(eg.reference.cats).values())
        if self.training.objective == "ppo" and not has_classes:
            messages.append("objective 'ppo' learns classification tasks from doc.cats, and no Doc has gold for one: "
                            "nothing will be learned.")
        elif not has_classes and not any(self._teaches(eg.reference) for eg in examples):
            messages.append("no Doc has gold for the component's tasks: nothing will be learned.")
        return messages

    def _teaches(self, doc: Doc) -> bool:
        """Whether ``doc`` has gold besides ``doc.cats`` (a family's other tasks)."""
        return False

    @property
    def training_schema(self) -> Schema:
        """What training reads gold against and samples prompts from: the schema, plus the
        classification tasks of the training data (``doc.cats``) that it does not predict. So
        a pipeline can train on many tasks (hundreds of labels) and predict a few."""
        configured = classification_section(self.cfg["schema"].get("classifications"))
        extra = {k: v for k, v in self.cfg.get("class_tasks", {}).items() if k not in configured}
        if not extra:
            return self.schema
        key = "training " + json.dumps(extra, sort_keys=True)  # beside the per-call schemas
        if key not in self._overrides:
            self._overrides[key] = self.parse_schema({**self.cfg["schema"], "classifications": {**configured, **extra}})
        return self._overrides[key]

    # -- prediction --------------------------------------------------------

    def schema_for(self, overrides: Dict[str, Any]) -> Schema:
        """The schema of a call with ``overrides`` (``component_cfg``: sections that replace the
        configured ones); SchemaError for unknown keys or a bad section."""
        if not overrides:
            return self.schema
        allowed = self.schema_keys + ("threshold",)
        unknown = [k for k in overrides if k not in allowed]
        if unknown:
            raise SchemaError(
                f"Unknown per-call option(s) {unknown} for {self.name!r}; allowed: {list(allowed)}."
            )
        if not _string_keys(overrides):
            raise SchemaError(f"A per-call schema must be plain data whose mappings have string keys, got {overrides!r}.")
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key not in self._overrides:
            if len(self._overrides) > 32:
                self._overrides.clear()
            self._overrides[key] = self.parse_schema({**self.cfg["schema"], **overrides})
        return self._overrides[key]

    def _words(self, doc: Doc) -> List[Word]:
        if self.cfg.get("use_doc_tokens"):
            return words_from_tokens((t.text, t.idx) for t in doc)
        return split_words(doc.text)

    def predict(self, docs: Iterable[Doc], schema: Optional[Schema] = None) -> List[Any]:
        """One result per Doc; writes nothing."""
        docs = list(docs)
        if not docs:
            return []
        if os.getpid() != self._pid:  # a forked or spawned worker (nlp.pipe(n_process=...))
            torch.set_num_threads(1)
            self._pid = os.getpid()
        return self.runner.run(
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
        unaligned = sum(self._write(doc, output, schema or self.schema) for doc, output in zip(docs, predictions))
        if unaligned:
            self._report_unaligned(unaligned)

    def __call__(self, doc: Doc, **overrides: Any) -> Doc:
        overrides.pop("batch_size", None)  # Language.pipe adds it to a shared component_cfg
        schema = self.schema_for(overrides)
        self.set_annotations([doc], self.predict([doc], schema), schema)
        return doc

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128, **overrides: Any) -> Iterator[Doc]:
        """Annotate a stream; each chunk of ``batch_size`` Docs is length-sorted into forward batches.

        A failing chunk raises, unless an error handler is set (``nlp.set_error_handler``): then its
        Docs run one by one and the handler gets each failing Doc alone (the others are yielded).
        """
        schema = self.schema_for(overrides)
        handler = self.get_error_handler()
        for docs in minibatch(stream, size=batch_size):
            try:
                self.set_annotations(docs, self.predict(docs, schema), schema)
            except Exception:
                if handler is raise_error:
                    raise
                yield from self._one_by_one(docs, schema, handler)
                continue
            yield from docs

    def _one_by_one(self, docs: List[Doc], schema: Schema, handler: Callable) -> Iterator[Doc]:
        for doc in docs:
            try:
                self.set_annotations([doc], self.predict([doc], schema), schema)
            except Exception as error:
                handler(self.name, self, [doc], error)
                continue
            yield doc

    # -- training ------------------------------------------------------------

    def _training_state(self) -> TrainingState:
        if self._state is None:
            self._state = TrainingState(self.runner.model, self.training)
        return self._state

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Any = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Accumulate gradients of the family's losses; step when ``sgd`` is given.

        The component steps its own AdamW (``training`` settings: encoder and head
        learning rates, warm-up, clipping); spaCy's optimizer only triggers the step.
        """
        losses = {} if losses is None else losses
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.update")
        state = self._training_state()
        model = self.runner.model
        model.train()
        try:
            if self.training.objective == "ppo":
                loss, _ = self._ppo(examples, state)
            else:
                loss, _ = self._loss(examples, state.rng, state.generator)
            if loss is not None:
                if loss.requires_grad:
                    loss.backward()
                losses[self.name] += float(loss.detach())
        finally:
            model.eval()
        if sgd not in (None, False):
            self.finish_update(sgd)
        return losses

    def _training_windows(self, doc: Doc, schema: Schema) -> Tuple[List[Any], List[Any]]:
        """The windows and encoded records of a training Doc's text under a training prompt."""
        try:
            return self.runner.windows([doc.text], [self._words(doc)], schema, self.cfg["window_size"],
                                       self.cfg["window_overlap"])
        except SchemaError as error:
            raise SchemaError(f"{error} In training, a prompt holds a Doc's gold labels and the sampled negatives: "
                              "lower training.negatives or training.class_negatives (-1 means all of a task's "
                              "labels).") from None

    def _class_batch(self, groups: Sequence[Tuple[Doc, Sequence[Any]]]) -> Tuple[Any, List[Any]]:
        """A collated batch of classification inputs: per (Doc, items with a ``.task``) every window of
        the Doc's text prompted with those tasks together (as inference prompts them), and the item of
        each (window, task) in the batch's order (a window teaches what its text does)."""
        runner, records, rows = self.runner, [], []
        for doc, items in groups:
            schema = runner.example_schemas(Schema(classifications=tuple(item.task for item in items)), [doc.text],
                                            training=True)[0]
            _, encoded = self._training_windows(doc, schema)
            records += encoded
            rows += list(items) * len(encoded)
        return runner.collate(records).to(runner.device), rows

    def _ppo(self, examples: Sequence[Example], state: TrainingState) -> Tuple[Optional[torch.Tensor], Dict[str, float]]:
        """One PPO update on the classification tasks of ``examples`` (:mod:`.rl`): gradients
        of its last epoch are left for :meth:`finish_update`."""
        groups = [(eg.reference, rows) for eg in examples
                  for rows in [class_rows(eg.reference.cats, self.training_schema, self.training.shuffle_labels, state.rng)]
                  if rows]
        if not groups:
            return None, {}
        batch, rows = self._class_batch(groups)
        runner = self.runner
        return ppo_update(runner.model, state.frozen_copy(), rows, lambda m: self._class_logits(m, batch, rows),
                          self.training.ppo(), resolve_reward(self.training.reward), state.step, state.generator)

    def get_loss(self, examples: Iterable[Example], scores: Any = None) -> Dict[str, float]:
        """The losses of ``examples`` (total and parts) without updating anything."""
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.get_loss")
        rng, generator = random.Random(self.training.seed), torch.Generator().manual_seed(self.training.seed)
        with torch.no_grad():
            loss, parts = self._loss(examples, rng, generator)
        return {"total": float(loss) if loss is not None else 0.0, **parts}

    def finish_update(self, sgd: Any = None) -> None:
        """Clip, step the optimizer and the learning-rate schedule, clear gradients."""
        self._training_state().step()
        self.runner.invalidate(keep_examples=True)  # training prompts keep the pool vectors they retrieved by

    @contextlib.contextmanager
    def use_params(self, params: Dict) -> Iterator[None]:
        """No parameter averaging: the torch optimizer holds the weights."""
        yield

    def add_label(self, label: str) -> int:
        raise NotImplementedError("Labels are set by the schema (config or per call), not add_label.")

    # -- serialization -----------------------------------------------------

    def _cfg_bytes(self) -> bytes:
        return srsly.json_dumps(self.cfg).encode("utf8")

    def _load_cfg(self, data: bytes) -> None:
        """Restore what training learned; settings come from the (possibly overridden) config.

        Saved: the ``learned_keys`` (labels read from the corpus), and schema sections that
        ``initialize`` filled from the data (used where the config leaves that section empty).
        """
        saved = srsly.json_loads(data)
        for key in self.learned_keys:
            self.cfg[key] = saved.get(key, [])
        self.cfg["class_tasks"] = saved.get("class_tasks", {})
        self.cfg["learned_sections"] = learned = saved.get("learned_sections")
        schema = dict(self.cfg["schema"])
        for key, value in saved.get("schema", {}).items():
            if key not in self.schema_keys or not value:
                continue
            if not schema.get(key) and (learned is None or key in learned):  # filled from the data by initialize
                schema[key] = value
            elif schema.get(key) != value and _as_config_gives(value, schema.get(key)):
                schema[key] = value  # the saved section, not its copy in config.cfg that changed keys like "a: b"
        self.cfg["schema"] = schema
        self.schema = self.parse_schema(schema)
        self._overrides = {}

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        """Write cfg and the whole checkpoint (weights as safetensors, tokenizer, configs). A schema
        section that config.cfg cannot hold (spacy.load could not read it back) is a ValueError."""
        for key in self.schema_keys:
            problem = _config_problem(self.cfg["schema"].get(key))
            if problem:
                raise ValueError(f"The {key!r} section of {self.name!r} cannot be saved in config.cfg: spacy.load "
                                 f"would fail ({problem}). A name with '.' used as a mapping key makes config "
                                 "sub-sections: rename it, or give the names as a list.")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "cfg").write_bytes(self._cfg_bytes())
        if "model" not in exclude:
            self.runner.save(path / "model")

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "ZeroShotComponent":
        """Load from a folder written by :meth:`to_disk`; never touches the network."""
        path = Path(path)
        self._load_cfg((path / "cfg").read_bytes())
        if "model" not in exclude:
            self._set_runner(self.runner_type.load(str(saved_component_folder(path / "model"))))
        return self

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        data: Dict[str, Any] = {"cfg": self._cfg_bytes()}
        if "model" not in exclude:
            with tempfile.TemporaryDirectory() as tmp:
                self.runner.save(Path(tmp))
                data["model"] = checkpoint_files(Path(tmp))
        return srsly.msgpack_dumps(data)

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "ZeroShotComponent":
        collecting = gc.isenabled()
        try:
            data = srsly.msgpack_loads(bytes_data)
        except Exception as err:  # msgpack raises several types
            raise CheckpointError(f"These bytes are not a saved {type(self).__name__} ({type(err).__name__}: {err}); "
                                  "they are truncated or corrupt.") from None
        finally:
            if collecting:  # msgpack leaves the garbage collector off when it fails
                gc.enable()
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("cfg"), bytes) or (
                "model" not in exclude and not (isinstance(model, dict) and all(isinstance(k, str) for k in model))):
            raise CheckpointError(f"These bytes are not a saved {type(self).__name__}: expected its cfg and its "
                                  "model files (to_bytes writes both).")
        self._load_cfg(data["cfg"])
        if "model" not in exclude:
            with tempfile.TemporaryDirectory() as tmp:
                write_checkpoint_files(model, Path(tmp))
                self._set_runner(self.runner_type.load(str(saved_component_folder(Path(tmp)))))
        return self


def _through_config(value: Any) -> Any:
    """``value`` as a spaCy config file holding it reads it back (keys with ``:``, ``=``, ``#`` or
    ``$`` come back changed); raises what reading raises when the file cannot hold it."""
    from thinc.api import Config

    return Config().from_str(Config({"section": {"value": value}}).to_str(), interpolate=False)["section"]["value"]


def _as_config_gives(value: Any, read: Any) -> bool:
    """Whether ``read`` is ``value`` as a config file gives it back (then the saved value is the real one)."""
    try:
        return _through_config(value) == read
    except Exception:  # a value the config cannot hold at all
        return False


def _config_problem(value: Any) -> Optional[str]:
    """Why a spaCy config file could not hold ``value`` and read it back, or None."""
    try:
        _through_config(value)
    except Exception as err:
        return " ".join(str(err).split())[:200]
    return None


def _annotated(doc: Doc) -> bool:
    """Whether a reference Doc holds any annotation a component could learn from."""
    return bool(doc.has_annotation("ENT_IOB") or doc.cats or doc.spans or doc.user_data)


def _string_keys(value: Any) -> bool:
    """Whether every mapping inside ``value`` (lists and tuples searched) has only string keys."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _string_keys(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_string_keys(v) for v in value)
    return True
