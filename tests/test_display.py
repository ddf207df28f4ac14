"""displaCy views: the rendered HTML shows every entity, scored span, class, structure field and
relation the components wrote, with confidences, escaped."""
import re

import pytest
import spacy
from spacy import displacy

from spacy_gliner2.display import colors, ent_data, render, results_html, span_data

TEXT = "Tim Cook met Angela Merkel in Berlin on Monday to discuss the Apple factory."
SCHEMA = {
    "entities": ["person", "organization", "location"],
    "classifications": {"topic": ["business", "politics", "sports"]},
    "structures": {"meeting": ["who::list", "where::str", "kind::[business|state]::str"]},
    "relations": ["met with"],
    "threshold": 0.2,
}


@pytest.fixture(scope="module")
def doc(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), **SCHEMA})
    doc = nlp(TEXT)
    assert len(doc.spans["gliner2"]) > len(doc.ents) > 0  # overlapping spans: both views differ
    return doc


def _text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_ent_data_labels_carry_the_span_scores(doc):
    data = ent_data(doc)
    scores = {(s.start_char, s.end_char, s.label_): c
              for s, c in zip(doc.spans["gliner2"], doc.spans["gliner2"].attrs["scores"])}
    assert len(data["ents"]) == len(doc.ents)
    for item, ent in zip(data["ents"], doc.ents):
        assert (item["start"], item["end"]) == (ent.start_char, ent.end_char)
        assert item["label"] == f"{ent.label_}\u00a0{scores[(ent.start_char, ent.end_char, ent.label_)]:.2f}"
    assert [i["label"] for i in ent_data(doc, scores=False)["ents"]] == [e.label_ for e in doc.ents]


def test_span_data_has_every_scored_span_and_filters_by_score(doc):
    group = doc.spans["gliner2"]
    data = span_data(doc)
    assert [(s["start_token"], s["end_token"]) for s in data["spans"]] == [(s.start, s.end) for s in group]
    cut = sorted(group.attrs["scores"])[len(group) // 2]
    assert len(span_data(doc, min_score=cut)["spans"]) == sum(c >= cut for c in group.attrs["scores"])
    with pytest.raises(KeyError, match="no 'other' group"):
        span_data(doc, spans_key="other")


def test_colors_are_per_label_whatever_the_score(doc):
    data = [ent_data(doc), span_data(doc)]
    palette = colors(data)
    by_label = {}
    for d in data:
        for item in d.get("ents", d.get("spans")):
            by_label.setdefault(item["base_label"], set()).add(palette[item["label"]])
    assert all(len(c) == 1 for c in by_label.values())
    assert len({c.pop() for c in by_label.values()}) == len(by_label)  # labels tell apart


def test_manual_data_renders_with_displacy(doc):
    html = displacy.render(span_data(doc), style="span", manual=True, options={"colors": colors([span_data(doc)])})
    for span, score in zip(doc.spans["gliner2"], doc.spans["gliner2"].attrs["scores"]):
        assert f"{span.label_}\u00a0{score:.2f}" in html


def test_render_shows_every_output(doc):
    result = doc._.gliner2
    html = render(doc)
    text = _text_of(html)
    for ent in doc.ents:
        assert ent.text in text
    assert result["classifications"]["topic"]["label"] in text
    assert "structure: meeting" in text and "relation: met with" in text
    for instance in result["structures"]["meeting"]:
        for value in instance.values():
            for item in value if isinstance(value, list) else [value] if value else []:
                assert f"{item['text']} {item['confidence']:.2f}" in text
    for pair in result["relations"]["met with"]:
        assert pair["head"]["text"] in text and pair["tail"]["text"] in text
    page = render(doc, page=True)
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")


def test_results_are_escaped_and_gliclass_classes_shown():
    nlp = spacy.blank("en")
    doc = nlp("x")
    from spacy_gliner2.core.annotate import register_extension

    register_extension("gliner2")
    register_extension("gliclass")
    doc._.gliner2 = {"entities": {}, "classifications": {}, "relations": {},
                     "structures": {"note": [{"body": {"text": "<script>alert(1)</script>", "confidence": 0.5}}]}}
    doc._.gliclass = {"intent": [{"label": "book <flight>", "confidence": 0.75}]}
    html = results_html(doc)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "book &lt;flight&gt; <small" in html and "0.75" in html
    assert results_html(nlp("y")) == ""


def test_readme_example_runs(doc, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf8")
    section = readme.split("### Looking at the results (displaCy)")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    served = {}
    monkeypatch.setattr(displacy, "serve", lambda data, **kw: served.update(data=data, **kw))
    scope = {"doc": doc, "docs": [doc, doc]}
    exec(code, scope)
    assert scope["html"].startswith("<!DOCTYPE html>")
    assert served["style"] == "span" and served["manual"] and len(served["data"]) == 2
    assert set(served["options"]["colors"]) == {s["label"] for d in served["data"] for s in d["spans"]}
