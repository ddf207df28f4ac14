"""Values derived from a module's weights, kept for inference while the weights stay as they are."""
from typing import Callable, Sequence, TypeVar

import torch
from torch import nn

T = TypeVar("T")


class DerivedCache(nn.Module):
    """A module that keeps values derived from its weights for inference (no gradients), rebuilt
    when a source weight changes storage or version (an in-place update bumps it), and left
    out of copies and pickles (rebuilt on use)."""

    def derived(self, name: str, sources: Sequence[torch.Tensor], build: Callable[[], T]) -> T:
        """``build()``, cached under ``name`` while ``sources`` stay as they are; under
        gradients, or on inference tensors (no version counter), built on every call."""
        if torch.is_grad_enabled():
            return build()
        try:
            key = tuple((t.data_ptr(), t._version) for t in sources)
        except RuntimeError:  # an inference tensor has no version counter
            return build()
        cache = self.__dict__.setdefault("_derived", {})
        if name not in cache or cache[name][0] != key:
            cache[name] = (key, build())
        return cache[name][1]

    def __getstate__(self) -> dict:
        return {k: v for k, v in super().__getstate__().items() if k != "_derived"}
