"""In-context examples chosen per text (GenCLS++'s retrieved demonstrations): for a task with
``nearest_examples = k``, its ``examples`` are a pool and each text's prompt shows the k pool
examples whose embeddings are nearest to the text's (cosine; the nearest first).

Pure torch: ``embed`` maps texts to unit vectors (a runner's encoder, mean-pooled). Each pool text is
embedded once and kept in ``cache`` (by text: a training prompt's label subset reuses it) until the
cache's owner clears it; each text is compared with the pool only, so the cost grows with texts x
pool size, linearly in either. A pool example with the very text being classified is never chosen
(no gold leaks into its own prompt, in training or evaluation).
"""
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..schema import Schema

Embed = Callable[[Sequence[str]], torch.Tensor]  # texts -> (N, D) unit vectors


def nearest(queries: torch.Tensor, keys: torch.Tensor, k: int,
            exclude: Optional[torch.Tensor] = None, chunk: int = 4096) -> List[List[int]]:
    """Per query row, the indices of its ``k`` most similar ``keys`` rows (dot product, highest
    first); ``exclude`` ``(Q, K)`` bool marks pairs never chosen. Fewer than ``k`` when the pool
    (less its excluded rows) is smaller."""
    out: List[List[int]] = []
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ keys.T
        if exclude is not None:
            scores = scores.masked_fill(exclude[start:start + chunk], float("-inf"))
        values, indices = scores.topk(min(k, keys.shape[0]), dim=1)
        out += [[i for v, i in zip(row_v, row_i) if v != float("-inf")]
                for row_v, row_i in zip(values.tolist(), indices.tolist())]
    return out


def _same_text(texts: Sequence[str], pool: Sequence[str]) -> Optional[torch.Tensor]:
    """``(len(texts), len(pool))`` bool: where a pool example is the text itself (None: nowhere)."""
    where: Dict[str, List[int]] = {}
    for j, text in enumerate(pool):
        where.setdefault(text.strip(), []).append(j)
    hits = [(i, j) for i, text in enumerate(texts) for j in where.get(text.strip(), ())]
    if not hits:
        return None
    mask = torch.zeros(len(texts), len(pool), dtype=torch.bool)
    rows, cols = zip(*hits)
    mask[list(rows), list(cols)] = True
    return mask


def pool_vectors(pool: Sequence[str], embed: Embed, cache: Dict[str, torch.Tensor], limit: int = 200_000) -> torch.Tensor:
    """``(P, D)`` vectors of the pool texts, embedding only those ``cache`` lacks."""
    missing = list(dict.fromkeys(text for text in pool if text not in cache))
    if missing:
        if len(cache) + len(missing) > limit:  # many per-call pools in a long-running service
            cache.clear()
        cache.update(zip(missing, embed(missing)))
    return torch.stack([cache[text] for text in pool])


def example_schemas(schema: Schema, texts: Sequence[str], embed: Embed, cache: Dict[str, torch.Tensor]) -> List[Schema]:
    """``schema`` for each text, every task with ``nearest_examples`` showing that text's nearest
    pool examples; ``cache`` keeps pool texts' vectors between calls."""
    if not schema.retrieves or not texts:
        return [schema] * len(texts)
    queries = embed(texts)
    per_text = [list(schema.classifications) for _ in texts]
    for t, task in enumerate(schema.classifications):
        if not task.nearest_examples:
            continue
        pool = [text for text, _ in task.examples]
        if not pool:  # a training prompt's label subset can leave none
            per_text = [tasks[:t] + [task.showing(())] + tasks[t + 1:] for tasks in per_text]
            continue
        chosen = nearest(queries, pool_vectors(pool, embed, cache), task.nearest_examples, _same_text(texts, pool))
        for i, indices in enumerate(chosen):
            per_text[i][t] = task.showing([task.examples[j] for j in indices])
    return [replace(schema, classifications=tuple(tasks)) for tasks in per_text]


def longest_examples(schema: Schema) -> Schema:
    """``schema`` with each retrieving task showing its ``k`` longest pool examples: the longest
    prompt any text can get (how long a prompt is must not depend on the other texts of a batch)."""
    tasks = tuple(task.showing(sorted(task.examples, key=lambda ex: -len(ex[0]))[: task.nearest_examples])
                  if task.nearest_examples else task for task in schema.classifications)
    return replace(schema, classifications=tasks)
