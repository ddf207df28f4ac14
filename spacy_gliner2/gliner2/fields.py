"""Structure field values that both architectures decode alike: choice fields."""
from typing import Any, Callable, List, Sequence


def choices(
    probs: Callable[[List[int]], List[float]], choices: Sequence[str], prefix: Sequence[str], dtype: str, threshold: float
) -> Any:
    """A choice field's value: each choice is scored at its word in the prefix (``probs`` of those
    word indices; a choice not found there as one word cannot be chosen)."""
    lowered = [p.lower() for p in prefix]
    present = [c for c in dict.fromkeys(choices) if c.lower() in lowered]
    if not present:
        return [] if dtype == "list" else None
    scored = list(zip(present, probs([lowered.index(c.lower()) for c in present])))
    if dtype == "list":
        return [{"text": c, "confidence": p} for c, p in scored if p >= threshold]
    best = max(scored, key=lambda x: x[1], default=None)  # first of equal maxima
    return {"text": best[0], "confidence": best[1]} if best and best[1] >= threshold else None
