"""Texts + schema -> results, for any family: windows -> encode -> length-sorted batches ->
forward -> decode -> merge.

:class:`Runner` holds a loaded checkpoint (model, tokenizer, raw config) and its runtime
copy (precision); a family subclasses it with its hooks (``encode``, ``collate``, ``decode``,
``merge``, the checkpoint format). Pure Python/torch: the spaCy component is a thin layer over it.
"""
import copy
import warnings
from pathlib import Path
from typing import Any, ClassVar, Dict, Generic, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union

import torch

from ..memory import return_freed_memory
from ..runtime.encoder import EncoderModel
from ..runtime.precision import cpu_has_bf16_units, int8_products_available
from ..schema import Schema, SchemaError
from ..text import DEFAULT_WINDOW_OVERLAP, DEFAULT_WINDOW_WORDS, Word
from .batching import TextWindow, document_windows, length_batches
from .neighbours import example_schemas
from .checkpoint import FAMILY_NAMES, CheckpointError, HubOptions, is_plain_encoder, resolve

PRECISIONS = ("fp32", "int8", "fp16", "bf16")
Record = Any  # a family's encoded window (with ``input_ids``)
Output = TypeVar("Output")  # a family's result for one text (or window)


class Runner(Generic[Output]):
    """A loaded checkpoint of one family that runs texts given as words."""

    family: ClassVar[str]  # the factory name ("gliner2", "gliclass")
    hub_patterns: ClassVar[Sequence[str]]  # the files of a Hub repository to fetch
    # whether a word too long for the encoder may be cut into pieces (a family that reads the text as
    # a string and writes no spans); otherwise it is an error
    cuts_long_words: ClassVar[bool] = False

    def __init__(self, model: EncoderModel, tokenizer: Any, config: Dict[str, Any]):
        self.model = model  # fp32 weights: trained and saved
        self.tokenizer = tokenizer
        self.config = config
        self.precision = "fp32"
        self._runtime: Optional[torch.nn.Module] = None
        self._pool_embeddings: Dict[str, torch.Tensor] = {}  # example pool texts' vectors (neighbours)
        self._training_pool: Dict[str, torch.Tensor] = {}  # the same, as training prompts retrieved them
        self.pad_id = 0

    # -- family hooks ------------------------------------------------------

    @classmethod
    def read(cls, folder: Path) -> Tuple[EncoderModel, Any, Dict[str, Any]]:
        """Model, tokenizer and raw config of a checkpoint folder of this family."""
        raise NotImplementedError

    @classmethod
    def new(cls, folder: Path) -> Tuple[EncoderModel, Any, Dict[str, Any]]:
        """New heads on the plain pretrained encoder in ``folder`` (training)."""
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        """Write the family's reference checkpoint format."""
        raise NotImplementedError

    def check_schema(self, schema: Schema) -> None:
        """Raise a :class:`SchemaError` for a schema this family cannot run."""

    def encode(self, schema: Schema, window: TextWindow) -> Record:
        raise NotImplementedError

    def prompt_tokens(self, schema: Schema) -> int:
        """Tokens the schema's prompt takes (with the special tokens): what a text cannot use."""
        raise NotImplementedError

    def collate(self, records: Sequence[Record]) -> Any:
        """A padded batch (with ``.to(device)``) for the model's forward."""
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, batch: Any) -> Iterable[Any]:
        """The model's raw scores of each record of a batch, in order."""
        return model(batch)

    def decode(self, schema: Schema, record: Record, scores: Any, window: TextWindow) -> Output:
        raise NotImplementedError

    def merge(self, schema: Schema, parts: Sequence[Output]) -> Output:
        """One document's result from its windows' (in document order), read with ``schema``."""
        raise NotImplementedError

    # -- loading -------------------------------------------------------------

    @classmethod
    def load(cls, name_or_path: str, hub: Optional[HubOptions] = None, allow_new: bool = False) -> "Runner":
        """Load a checkpoint of this family (local folder or Hub id).

        With ``allow_new`` (training), a plain pretrained encoder gets fresh heads.
        """
        name = FAMILY_NAMES[cls.family]
        folder = resolve(name_or_path, hub, cls.hub_patterns, name)
        if is_plain_encoder(folder, cls.family):
            if not allow_new:
                raise CheckpointError(
                    f"{name_or_path!r} is a plain {folder.name} encoder, not a {name} checkpoint: its heads "
                    f"are untrained. Train it first (spacy train, which starts new heads) or use a {name} checkpoint."
                )
            return cls(*cls.new(folder))
        return cls(*cls.read(folder))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_tokens(self) -> Optional[int]:
        """The longest input the encoder can read (None: no limit)."""
        return self.model.max_tokens

    # -- precision -----------------------------------------------------------

    def set_precision(self, precision: str) -> None:
        """Run inference in ``fp32`` (exact), ``bf16`` (CPU: the encoder's and the heads' MLP
        linear layers in bf16, fast with AMX or AVX512-BF16; GPU: the whole model), ``fp16`` (GPU) or ``int8``
        (CPU: the encoder's feed-forward layers in int8, inputs quantized per token). The fp32 weights
        stay for saving and training."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
        if precision == "int8" and self.device.type != "cpu":
            raise ValueError("precision 'int8' runs on CPU; on GPU use 'fp16' or 'bf16'.")
        if precision == "int8" and not int8_products_available():
            raise ValueError("precision 'int8' needs int8 matrix products on CPU (torch._int_mm), which this "
                             "torch build lacks; use 'fp32' or 'bf16', or another torch build.")
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("precision 'fp16' runs on GPU; on CPU use 'bf16' (or 'int8').")
        if precision == "bf16" and self.device.type == "cpu" and cpu_has_bf16_units() is False:
            warnings.warn(
                "precision 'bf16': this CPU has no bf16 units (AMX or AVX512-BF16); bf16 products are "
                "emulated and may run slower than 'fp32'. Measure before you keep it.", stacklevel=2)
        self.precision = precision
        self.invalidate()

    def __getstate__(self) -> Dict[str, Any]:  # copies and pickles rebuild the runtime copy on first use
        return {**self.__dict__, "_runtime": None, "_pool_embeddings": {}, "_training_pool": {}}

    def invalidate(self, keep_examples: bool = False) -> None:
        """Forget the reduced-precision copy and weight-derived caches (after the fp32 weights changed);
        ``keep_examples`` (a training step) keeps the vectors training prompts retrieve examples by
        (no re-embedding of the pool per step); predictions always embed with the current weights."""
        self._runtime = None
        self._pool_embeddings = {}
        if not keep_examples:
            self._training_pool = {}
        self.model.invalidate_caches()

    @property
    def runtime_model(self) -> torch.nn.Module:
        """The model inference runs: on CPU, a copy that shares the fp32 weights, with the
        linear layers of its precision (fp32 ones through oneDNN); on GPU, the fp32 model or
        its half-precision copy."""
        if self.precision == "fp32" and self.device.type != "cpu":
            return self.model
        if self._runtime is None:
            if self.device.type != "cpu":
                self._runtime = copy.deepcopy(self.model).to(torch.float16 if self.precision == "fp16" else torch.bfloat16)
                return self._runtime
            runtime = self._copy_sharing_tensors()
            if self.precision == "int8":
                runtime.use_int8_linears()
            elif self.precision == "bf16":
                runtime.use_bf16_linears()
            runtime.use_onednn_linears()
            self._runtime = runtime
        return self._runtime

    def _copy_sharing_tensors(self) -> EncoderModel:
        """A copy of the (eval-mode) model's modules that shares every parameter and buffer:
        the layers a reduced precision replaces get new weights, nothing else is duplicated
        (DeBERTa-v3-base's embedding table alone is 394 MB)."""
        shared = {id(t): t for t in (*self.model.parameters(), *self.model.buffers())}
        return copy.deepcopy(self.model.eval(), memo=shared)

    # -- running -------------------------------------------------------------

    def run(
        self,
        texts: Sequence[str],
        words: Sequence[Sequence[Word]],
        schema: Schema,
        batch_size: int = 8,
        max_batch_tokens: int = 4096,
        window: int = DEFAULT_WINDOW_WORDS,
        overlap: int = DEFAULT_WINDOW_OVERLAP,
    ) -> List[Output]:
        """The result of each text. ``words`` are its (un-normalised) words. A task with
        ``nearest_examples`` prompts each text with its own examples (:meth:`example_schemas`); a
        prompt over half of what the encoder reads runs task by task (:meth:`passes`)."""
        self.check_schema(schema)
        per_text = self.example_schemas(schema, texts)
        passes = self.passes(schema, per_text)
        outputs = [self._run(texts, words, part, batch_size, max_batch_tokens, window, overlap) for part in passes]
        if len(outputs) == 1:
            return outputs[0]
        return [self.combine(results) for results in zip(*outputs)]

    def example_schemas(self, schema: Schema, texts: Sequence[str], training: bool = False) -> List[Schema]:
        """``schema`` for each text, its tasks with ``nearest_examples`` showing the text's nearest
        pool examples (:mod:`.neighbours`, with :meth:`embed`; ``training``: by the pool vectors kept
        through training steps)."""
        return example_schemas(schema, texts, self.embed, self._training_pool if training else self._pool_embeddings)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, D)`` unit vectors of texts read alone: the encoder's last hidden states averaged over
        the text's tokens and the encoder's start and end tokens (a text longer than the encoder reads
        is read in pieces, each with its own, all averaged)."""
        tokenizer, limit = self.tokenizer, (self.max_tokens or 512) - 2
        first = [] if tokenizer.cls_token_id is None else [tokenizer.cls_token_id]
        last = [] if tokenizer.sep_token_id is None else [tokenizer.sep_token_id]
        pieces: List[List[int]] = []
        owners: List[int] = []
        for i, text in enumerate(texts):
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] or [tokenizer.unk_token_id]
            for start in range(0, len(ids), limit):
                pieces.append(first + ids[start:start + limit] + last)
                owners.append(i)
        sums = torch.zeros(len(texts), self.model.hidden_size)
        counts = torch.zeros(len(texts), 1)
        training = self.model.training
        self.model.eval()  # no dropout, in training too
        try:
            model = self.runtime_model
            lengths = [len(p) for p in pieces]
            order = sorted(range(len(pieces)), key=lengths.__getitem__)
            with torch.inference_mode():
                for chunk in length_batches(order, lengths, 32, 8192):
                    ids = torch.full((len(chunk), lengths[chunk[-1]]), self.pad_id, dtype=torch.long)
                    mask = torch.zeros_like(ids)
                    for row, j in enumerate(chunk):
                        ids[row, :lengths[j]] = torch.tensor(pieces[j])
                        mask[row, :lengths[j]] = 1
                    hidden = model.run_encoder(ids.to(self.device), mask.to(self.device)).float().cpu()
                    where = torch.tensor([owners[j] for j in chunk])
                    sums.index_add_(0, where, (hidden * mask.unsqueeze(-1)).sum(1))
                    counts.index_add_(0, where, mask.sum(1, keepdim=True).float())
        finally:
            self.model.train(training)
        return torch.nn.functional.normalize(sums / counts, dim=1)

    def passes(self, schema: Schema, per_text: List[Schema]) -> List[List[Schema]]:
        """The per-text schemas of each pass one call of ``schema`` runs: ``per_text`` (each text's
        schema), or (a family that can) one pass per task when the schema's longest prompt leaves the
        text less than half of an encoder with a length limit."""
        return [per_text]

    def combine(self, outputs: Sequence[Output]) -> Output:
        """One text's result from the results of :meth:`passes` (disjoint tasks)."""
        raise NotImplementedError

    def _run(self, texts: Sequence[str], words: Sequence[Sequence[Word]], schemas: Sequence[Schema], batch_size: int,
             max_batch_tokens: int, window: int, overlap: int) -> List[Output]:
        jobs, encoded = self.windows(texts, words, schemas, window, overlap)
        order = sorted(range(len(jobs)), key=lambda j: len(encoded[j].input_ids))
        parts: List[Optional[Output]] = [None] * len(jobs)
        if self.model.training:
            self.model.eval()
        model = self.runtime_model
        with torch.inference_mode():
            chunks = length_batches(order, [len(r.input_ids) for r in encoded], batch_size, max_batch_tokens)
            for chunk in chunks:
                batch = self.collate([encoded[j] for j in chunk]).to(self.device)
                for j, scores in zip(chunk, self.forward(model, batch)):
                    parts[j] = self.decode(schemas[jobs[j].doc], encoded[j], scores, jobs[j])
                if len(chunks) > 1:  # several batches (a long document, many texts): keep them from growing the heap
                    return_freed_memory()
        per_doc: List[List[Output]] = [[] for _ in texts]  # in document order
        for job, part in zip(jobs, parts):
            per_doc[job.doc].append(part)
        return [self.merge(schemas[d], p) for d, p in enumerate(per_doc)]

    def windows(
        self,
        texts: Sequence[str],
        words: Sequence[Sequence[Word]],
        schema: Union[Schema, Sequence[Schema]],
        window: int = DEFAULT_WINDOW_WORDS,
        overlap: int = DEFAULT_WINDOW_OVERLAP,
    ) -> Tuple[List[TextWindow], List[Record]]:
        """Cut texts into word windows and encode them (with ``schema``, or each text with its own),
        halving windows that outgrow the encoder (never truncating). Serves inference and training alike."""
        schemas = [schema] * len(texts) if isinstance(schema, Schema) else schema
        queue = document_windows(texts, words, window, overlap)[::-1]
        limit = self.max_tokens
        jobs, encoded = [], []
        while queue:
            job = queue.pop()
            schema = schemas[job.doc]
            record = self.encode(schema, job)
            if limit is None or len(record.input_ids) <= limit:
                jobs.append(job)
                encoded.append(record)
                continue
            prompt = self.prompt_tokens(schema)
            if prompt >= limit:
                raise SchemaError(
                    f"The prompt takes {prompt} tokens for this schema and the encoder reads at most "
                    f"{limit}: too little room for the text. Use fewer labels or shorter descriptions per "
                    "call (e.g. split the labels over several calls with component_cfg)."
                )
            if len(job.raw) == 1 and self.cuts_long_words and job.raw[0][2] - job.raw[0][1] > 1:
                queue.append(job.cut_word())
                continue
            if len(job.raw) < 2:
                word, needs = job.raw[0] if job.raw else (".", 0, 0), len(record.input_ids) - prompt
                if needs <= limit // 2:  # an ordinary word: the prompt leaves too little room
                    raise SchemaError(
                        f"The prompt takes {prompt} of the {limit} tokens the encoder reads, leaving {limit - prompt} "
                        f"for the text, and the word at characters {word[1]}-{word[2]} needs {needs}. Use fewer labels "
                        "or shorter descriptions per call (e.g. split the labels over several calls with component_cfg)."
                    )
                raise ValueError(
                    f"The word at characters {word[1]}-{word[2]} of a text needs {needs} "
                    f"tokens, more than the {limit - prompt} the encoder has left after the prompt; "
                    "split or clean the text (e.g. a huge URL or base64 blob). A long run of text without "
                    "spaces (Chinese, Japanese, Thai) is one word here: give the pipeline a tokenizer for its "
                    "language (spacy.blank(\"zh\"), ...) and set use_doc_tokens = true."
                )
            queue.extend(job.halves(overlap)[::-1])
        return jobs, encoded
