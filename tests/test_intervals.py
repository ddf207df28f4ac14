"""The linear-time span post-processing equals the simple pairwise versions it replaced,
on random inputs (same spans, same order, ties included)."""
import random

import pytest
import spacy
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.tokens import Span

from spacy_gliner2.core.annotate import _non_overlapping, _set_ents
from spacy_gliner2.core.intervals import Coverage, disjoint_from, greedy_disjoint
from spacy_gliner2.gliner2.decoding import _merge_spans
from spacy_gliner2.text import normalize_text, normalized_words, split_words

# -- the simple versions (every candidate against every kept span), as they were -----------


def _overlaps(a, b):
    return a[0] < b[1] and b[0] < a[1]


def simple_greedy(intervals):
    kept = []
    for i, iv in enumerate(intervals):
        if not any(_overlaps(iv, intervals[k]) for k in kept):
            kept.append(i)
    return kept


def simple_merge_spans(spans):
    kept = []
    for span in sorted(spans, key=lambda s: (-s["confidence"], s["start"], s["end"])):
        if not any(_overlaps((span["start"], span["end"]), (k["start"], k["end"])) for k in kept):
            kept.append(span)
    return kept


def simple_non_overlapping(scored):
    kept = []
    for span, _ in sorted(scored, key=lambda x: (-x[1], -len(x[0]), x[0].start)):
        if not any(_overlaps((span.start, span.end), (k.start, k.end)) for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def _ents(doc):
    return [(e.start, e.end, e.label_) for e in doc.ents]


# -- random inputs ---------------------------------------------------------------------------

intervals = st.lists(
    st.tuples(st.integers(0, 60), st.integers(1, 12)).map(lambda x: (x[0], x[0] + x[1])), max_size=60)


@settings(max_examples=300, deadline=None)
@given(intervals)
def test_greedy_disjoint_equals_pairwise(ivs):
    assert greedy_disjoint(ivs) == simple_greedy(ivs)
    assert greedy_disjoint(ivs, length=max((e for _, e in ivs), default=0)) == simple_greedy(ivs)


@settings(max_examples=200, deadline=None)
@given(intervals, intervals)
def test_disjoint_from_equals_pairwise(ivs, blockers):
    expected = [i for i, iv in enumerate(ivs) if not any(_overlaps(iv, b) for b in blockers)]
    assert disjoint_from(ivs, blockers) == expected


# confidences from a small set: many ties, so the order of equal keys is tested too
spans = st.lists(
    st.tuples(st.integers(0, 80), st.integers(1, 15), st.sampled_from([0.5, 0.6, 0.75, 0.9])).map(
        lambda x: {"text": "x", "confidence": x[2], "start": x[0], "end": x[0] + x[1]}), max_size=80)


@settings(max_examples=300, deadline=None)
@given(spans)
def test_merge_spans_equals_pairwise(found):
    merged = _merge_spans(found)
    assert merged == simple_merge_spans(found)
    assert all(a is b for a, b in zip(merged, simple_merge_spans(found)))  # the same objects


NLP = spacy.blank("en")
DOC_WORDS = [f"w{i}" for i in range(40)]


def _random_scored(doc, rng, n):
    out = []
    for _ in range(n):
        start = rng.randrange(len(doc))
        end = min(len(doc), start + rng.randint(1, 5))
        out.append((Span(doc, start, end, label=rng.choice(["A", "B"])), rng.choice([0.5, 0.7, 0.9])))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_non_overlapping_and_ents_policies_equal_pairwise(seed):
    rng = random.Random(seed)
    doc = NLP.make_doc(" ".join(DOC_WORDS))
    scored = _random_scored(doc, rng, rng.randint(0, 60))
    new = _non_overlapping(scored)
    assert [(s.start, s.end, s.label_) for s in new] == [(s.start, s.end, s.label_) for s in simple_non_overlapping(scored)]

    existing = simple_non_overlapping(_random_scored(doc, rng, rng.randint(0, 15)))
    for policy in ("keep_existing", "prefer_new", "unchanged"):
        doc.set_ents(existing)
        _set_ents(doc, new, policy)
        if policy == "keep_existing":
            added = [s for s in new if not any(_overlaps((s.start, s.end), (e.start, e.end)) for e in existing)]
            expected = sorted(existing + added, key=lambda s: s.start)
        elif policy == "prefer_new":
            kept = [e for e in existing if not any(_overlaps((e.start, e.end), (s.start, s.end)) for s in new)]
            expected = sorted(kept + new, key=lambda s: s.start)
        else:
            expected = existing
        assert _ents(doc) == [(s.start, s.end, s.label_) for s in expected], policy


def test_coverage_refuses_empty_intervals():
    with pytest.raises(ValueError, match="must not be empty"):
        Coverage(10).free(3, 3)


def test_coverage_grows_past_its_length():
    coverage = Coverage(2)
    coverage.take(5, 8)
    assert not coverage.free(7, 20) and coverage.free(8, 20) and coverage.free(0, 5)


@pytest.mark.parametrize("text", ["", "Hi", "Hi there.", "Is it? Yes!", "a b c d e f"])
def test_normalized_words_of_a_prefix_reads_only_the_prefix(text):
    for end in range(len(text) + 1):
        words = [w for w in split_words(text[:end])]
        expected = list(words) + ([(".", end, end)] if len(normalize_text(text[:end])) > end else [])
        assert normalized_words(text, words, end) == expected
