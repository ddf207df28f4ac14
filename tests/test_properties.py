"""Property tests: random texts x random schemas never break the component's promises."""
import pytest
from equality import close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WORDS = ["[E]", "[SEP_TEXT]", "Tim", "Cook", "Apple", "Paris", "visited", "in", "the", "2023", "e-mail", "a@b.co", "https://x.io/a",
         "Zürich", "東京", "🎉", "(", ")", ",", ".", "!", "?", "--", "'s", "$1,299.99", "state-of-the-art"]
LABELS = ["person", "company", "city", "date", "money", "product", "event", "thing", "organization name"]

texts = st.one_of(
    st.text(max_size=120),
    st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join),
    st.lists(st.one_of(st.sampled_from(WORDS), st.text(min_size=1, max_size=6)), max_size=25).map(
        lambda ws: "".join(w + (" " if i % 3 else "") for i, w in enumerate(ws))
    ),
)
thresholds = st.one_of(st.none(), st.floats(0.0, 1.0))
entities = st.dictionaries(st.sampled_from(LABELS), st.builds(
    lambda d, t: {k: v for k, v in (("description", d), ("threshold", t)) if v is not None},
    st.one_of(st.none(), st.sampled_from(["a thing", "who did it", "named entity"])), thresholds,
), min_size=1, max_size=4)
schemas = st.fixed_dictionaries(
    {"entities": entities, "threshold": st.floats(0.05, 0.95)},
    optional={
        "classifications": st.fixed_dictionaries({"t": st.lists(st.sampled_from(LABELS), min_size=1, max_size=4, unique=True)}),
        "structures": st.fixed_dictionaries({"s": st.just(["a::str", "b::list", "c::[x|y]::str"])}),
        "relations": st.just(["rel"]),
    },
)


def check_doc(doc, schema):
    result = doc._.gliner2
    assert list(result["entities"]) == sorted(schema["entities"])
    spans = [s for found in result["entities"].values() for s in found]
    for section in ("structures", "relations"):
        for items in result[section].values():
            for item in items:
                for value in item.values():
                    values = value if isinstance(value, list) else [value]
                    spans += [v for v in values if v and "start" in v]
    for span in spans:
        assert 0 <= span["start"] < span["end"] <= len(doc.text)
        assert doc.text[span["start"] : span["end"]] == span["text"]
        assert 0.0 <= span["confidence"] <= 1.0
    assert all(0.0 <= p <= 1.0 for p in doc.cats.values())
    ents = list(doc.ents)
    assert all(a.end <= b.start for a, b in zip(ents, ents[1:]))
    group = doc.spans["gliner2"]
    assert len(group) + group.attrs["unaligned"] == sum(len(v) for v in result["entities"].values())


def run_twice(nlp, text, schema):
    """Never crashes, spans inside the text, same input -> same output."""
    doc = nlp(text, component_cfg={"gliner2": schema})
    check_doc(doc, schema)
    again = nlp(text, component_cfg={"gliner2": schema})
    assert again._.gliner2 == doc._.gliner2 and again.cats == doc.cats


@settings(max_examples=2000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=texts, schema=schemas)
def test_any_text_any_schema(property_nlp, text, schema):
    run_twice(property_nlp, text, schema)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=texts, schema=schemas)
def test_any_text_any_schema_long_run(property_nlp, text, schema):
    run_twice(property_nlp, text, schema)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(texts, min_size=1, max_size=5), schema=schemas)
def test_pipe_equals_one_by_one(property_nlp, batch, schema):
    cfg = {"gliner2": schema}
    piped = list(property_nlp.pipe(batch, component_cfg=cfg))
    for doc, text in zip(piped, batch):
        single = property_nlp(text, component_cfg=cfg)
        check_doc(doc, schema)
        assert [(e.start, e.end, e.label_) for e in doc.ents] == [(e.start, e.end, e.label_) for e in single.ents]
        assert close(doc._.gliner2, single._.gliner2)
