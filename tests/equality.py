"""Comparing pipeline outputs up to float noise."""


def close(a, b, tolerance: float = 1e-5) -> bool:
    """``a == b`` for nested dicts / lists / tuples, floats within ``tolerance``.

    Batched and one-by-one forward passes add up in different orders: their confidences
    differ by float noise, their decisions do not.
    """
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(close(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) < tolerance
    return a == b
