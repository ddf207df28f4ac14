"""Forward batches: length-sorted, bounded by count and by padded tokens."""
import random

from spacy_gliner2.core.batching import length_batches


def test_batches_respect_count_and_token_budget():
    rng = random.Random(0)
    lengths = [rng.randint(5, 900) for _ in range(200)]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches = length_batches(order, lengths, 8, 2048)
    assert [j for b in batches for j in b] == order
    for b in batches:
        assert len(b) <= 8
        assert len(b) == 1 or len(b) * max(lengths[j] for j in b) <= 2048
    assert length_batches(order, lengths, 8, 10) == [[j] for j in order]  # a record longer than the budget runs alone
