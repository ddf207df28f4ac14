"""Texts + schema -> results: windows, length-grouped batches, one forward pass each.

Pure Python/torch; the spaCy component is a thin layer over :class:`Extractor`.
"""
import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .decoding import Probs, Result, decode, merge_windows
from .encoding import EncodedText, Encoder, make_batch
from .memory import return_freed_memory
from .model.checkpoint import CheckpointError, HubOptions, is_plain_encoder, load_model, new_model, resolve, save_model
from .model.extractor import GLiNER2Model
from .model.precision import cpu_has_bf16_units, int8_products_available
from .schema import Schema, SchemaError
from .text import DEFAULT_WINDOW_OVERLAP, DEFAULT_WINDOW_WORDS, Word, make_windows, normalized_words


PRECISIONS = ("fp32", "int8", "fp16", "bf16")


def _batches(order: List[int], lengths: List[int], size: int, max_tokens: int) -> List[List[int]]:
    """Consecutive groups of the (length-sorted) records: at most ``size`` records and, past
    the first record, at most ``max_tokens`` padded tokens (bounds memory on long documents)."""
    batches: List[List[int]] = []
    for j in order:
        current = batches[-1] if batches else None
        if current is None or len(current) >= size or (len(current) + 1) * max(lengths[j], lengths[current[-1]]) > max_tokens:
            batches.append([j])
        else:
            current.append(j)
    return batches


@dataclass
class _Job:
    doc: int
    raw: List[Word]  # the window's words, offsets into the document text
    end: int  # where the window's text ends (it is normalised up to here)
    text: str

    @property
    def words(self) -> List[Word]:
        return normalized_words(self.text[: self.end], self.raw)

    @property
    def start(self) -> int:
        return self.raw[0][1] if self.raw else 0

    def halves(self, overlap: int) -> List["_Job"]:
        """Two overlapping windows covering this one's words."""
        n = len(self.raw)
        overlap = min(overlap, n // 4)
        size = (n + overlap + 1) // 2
        out = []
        for win in make_windows(self.raw, size, overlap):
            end = self.raw[win.end_word - 1][2] if win.end_word < n else self.end
            out.append(_Job(self.doc, self.raw[win.start_word : win.end_word], end, self.text))
        return out


class Extractor:
    """A loaded GLiNER2 checkpoint that extracts from texts given as words."""

    def __init__(self, model: GLiNER2Model, tokenizer: Any, config: Dict[str, Any]):
        self.model = model  # fp32 weights: trained and saved
        self.tokenizer = tokenizer
        self.config = config
        self.encoder = Encoder(tokenizer)
        self.pad_id = 0
        self.precision = "fp32"
        self._runtime: Optional[torch.nn.Module] = None

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
        return {**self.__dict__, "_runtime": None}

    def invalidate(self) -> None:
        """Forget the reduced-precision copy and weight-derived caches (after the fp32 weights changed)."""
        self._runtime = None
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

    def _copy_sharing_tensors(self) -> GLiNER2Model:
        """A copy of the (eval-mode) model's modules that shares every parameter and buffer:
        the layers a reduced precision replaces get new weights, nothing else is duplicated
        (DeBERTa-v3-base's embedding table alone is 394 MB)."""
        shared = {id(t): t for t in (*self.model.parameters(), *self.model.buffers())}
        return copy.deepcopy(self.model.eval(), memo=shared)

    @classmethod
    def load(cls, name_or_path: str, hub: Optional[HubOptions] = None, allow_new: bool = False) -> "Extractor":
        """Load a GLiNER2 checkpoint (local folder or Hub id).

        With ``allow_new`` (training), a plain pretrained encoder gets fresh heads.
        """
        folder = resolve(name_or_path, hub)
        if is_plain_encoder(folder):
            if not allow_new:
                raise CheckpointError(
                    f"{name_or_path!r} is a plain {folder.name} encoder, not a GLiNER2 checkpoint: its heads "
                    "are untrained. Train it first (spacy train, which starts new heads) or use a GLiNER2 checkpoint."
                )
            return cls(*new_model(folder))
        return cls(*load_model(folder))

    def save(self, folder: Path) -> None:
        save_model(self.model, self.tokenizer, self.config, folder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def extract(
        self,
        texts: Sequence[str],
        words: Sequence[Sequence[Word]],
        schema: Schema,
        batch_size: int = 8,
        max_batch_tokens: int = 4096,
        window: int = DEFAULT_WINDOW_WORDS,
        overlap: int = DEFAULT_WINDOW_OVERLAP,
    ) -> List[Tuple[Result, Probs]]:
        """Results for each text. ``words`` are its (un-normalised) words."""
        if schema.is_empty:
            raise SchemaError(
                "The schema is empty: configure at least one of entities, classifications, "
                "structures or relations (in the component config or per call)."
            )
        jobs, encoded = self.windows(texts, words, schema, window, overlap)
        order = sorted(range(len(jobs)), key=lambda j: len(encoded[j].input_ids))
        parts: List[Optional[Tuple[Result, Probs]]] = [None] * len(jobs)
        if self.model.training:
            self.model.eval()
        model = self.runtime_model
        with torch.inference_mode():
            chunks = list(_batches(order, [len(r.input_ids) for r in encoded], batch_size, max_batch_tokens))
            for chunk in chunks:
                batch = make_batch([encoded[j] for j in chunk], self.pad_id).to(self.device)
                for j, scores in zip(chunk, model(batch)):
                    parts[j] = decode(schema, encoded[j], scores, jobs[j].words, jobs[j].text)
                if len(chunks) > 1:  # several batches (a long document, many texts): keep them from growing the heap
                    return_freed_memory()
        per_doc: List[List[Tuple[Result, Probs]]] = [[] for _ in texts]  # in document order
        for job, part in zip(jobs, parts):
            per_doc[job.doc].append(part)
        return [merge_windows(p) for p in per_doc]

    @property
    def max_tokens(self) -> Optional[int]:
        """The longest input the encoder can read (None: no limit, as DeBERTa's relative positions)."""
        config = self.model.encoder.config
        if getattr(config, "position_biased_input", True) is False:
            return None
        limit = getattr(config, "max_position_embeddings", None)
        if limit and config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
            limit -= 2  # positions start after the padding index
        return limit

    def windows(
        self,
        texts: Sequence[str],
        words: Sequence[Sequence[Word]],
        schema: Schema,
        window: int = DEFAULT_WINDOW_WORDS,
        overlap: int = DEFAULT_WINDOW_OVERLAP,
    ) -> Tuple[List["_Job"], List[EncodedText]]:
        """Cut texts into word windows and encode them, halving windows that outgrow
        the encoder (never truncating). Serves inference and training alike."""
        queue: List[_Job] = []
        for i, (text, text_words) in enumerate(zip(texts, words)):
            for win in make_windows(text_words, window, overlap):
                end = win.end_char if win.end_word < len(text_words) else len(text)
                queue.append(_Job(i, list(text_words[win.start_word : win.end_word]), end, text))
        limit = self.max_tokens
        jobs, encoded = [], []
        queue = queue[::-1]
        while queue:
            job = queue.pop()
            record = self.encoder.encode(schema, job.words)
            if limit is None or len(record.input_ids) <= limit:
                jobs.append(job)
                encoded.append(record)
                continue
            prompt = len(self.encoder.encode(schema, [(".", 0, 0)]).input_ids) - 1
            if prompt >= limit:
                raise SchemaError(
                    f"The prompt takes {prompt} tokens for this schema and the encoder reads at most "
                    f"{limit}: too little room for the text. Use fewer labels or shorter descriptions per "
                    "call (e.g. split the labels over several calls with component_cfg)."
                )
            if len(job.raw) < 2:
                word = job.raw[0] if job.raw else (".", 0, 0)
                raise ValueError(
                    f"The word at characters {word[1]}-{word[2]} of a text needs {len(record.input_ids) - prompt} "
                    f"tokens, more than the {limit - prompt} the encoder has left after the prompt; "
                    "split or clean the text (e.g. a huge URL or base64 blob)."
                )
            queue.extend(job.halves(overlap)[::-1])
        return jobs, encoded
