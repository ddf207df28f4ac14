"""Texts + schema -> results: windows, length-grouped batches, one forward pass each.

Pure Python/torch; the spaCy component is a thin layer over :class:`Extractor`.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .decoding import Probs, Result, decode, merge_windows
from .encoding import Encoder, make_batch
from .model.checkpoint import HubOptions, load_model, resolve, save_model
from .model.extractor import GLiNER2Model
from .schema import Schema, SchemaError
from .text import DEFAULT_WINDOW_OVERLAP, DEFAULT_WINDOW_WORDS, Word, make_windows, normalized_words


@dataclass
class _Job:
    doc: int
    words: List[Word]  # normalised window words, offsets into the document text
    text: str


class Extractor:
    """A loaded GLiNER2 checkpoint that extracts from texts given as words."""

    def __init__(self, model: GLiNER2Model, tokenizer: Any, config: Dict[str, Any]):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.encoder = Encoder(tokenizer)
        self.pad_id = 0

    @classmethod
    def load(cls, name_or_path: str, hub: Optional[HubOptions] = None) -> "Extractor":
        """Load a local checkpoint folder or a Hugging Face Hub id."""
        model, tokenizer, config = load_model(resolve(name_or_path, hub))
        return cls(model, tokenizer, config)

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
        window: int = DEFAULT_WINDOW_WORDS,
        overlap: int = DEFAULT_WINDOW_OVERLAP,
    ) -> List[Tuple[Result, Probs]]:
        """Results for each text. ``words`` are its (un-normalised) words."""
        if schema.is_empty:
            raise SchemaError(
                "The schema is empty: configure at least one of entities, classifications, "
                "structures or relations (in the component config or per call)."
            )
        jobs: List[_Job] = []
        for i, (text, text_words) in enumerate(zip(texts, words)):
            for win in make_windows(text_words, window, overlap):
                window_words = list(text_words[win.start_word : win.end_word])
                end = win.end_char if win.end_word < len(text_words) else len(text)
                normed = normalized_words(text[:end], window_words)
                jobs.append(_Job(i, normed, text))
        encoded = [self.encoder.encode(schema, job.words) for job in jobs]
        order = sorted(range(len(jobs)), key=lambda j: len(encoded[j].input_ids))
        parts: List[Optional[Tuple[Result, Probs]]] = [None] * len(jobs)
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = make_batch([encoded[j] for j in chunk], self.pad_id).to(self.device)
                for j, scores in zip(chunk, self.model(batch)):
                    parts[j] = decode(schema, encoded[j], scores, jobs[j].words, jobs[j].text)
        per_doc: List[List[Tuple[Result, Probs]]] = [[] for _ in texts]
        for job, part in zip(jobs, parts):
            per_doc[job.doc].append(part)
        return [merge_windows(p) for p in per_doc]
