"""The ``gliner2`` component beyond the shared spaCy contract (test_contract.py): outputs, policies, options."""
import logging
from importlib.metadata import version

import pytest
import spacy
import torch
from spacy.tokens import DocBin
from equality import close

from spacy_gliner2.schema import Schema, SchemaError

CONFIG = {
    "entities": {"person": "a human being", "organization": None, "location": {"threshold": 0.4}},
    "classifications": {"sentiment": ["positive", "negative", "neutral"]},
    "structures": {"event": ["who::list", "where::str", "kind::[meeting|visit]::str"]},
    "relations": ["works_for"],
}
TEXTS = [
    "Tim Cook visited Paris on Monday and met Emmanuel Macron.",
    "Short one",
    "Google opened a new office in Zürich; 300 engineers will work there. Alphabet confirmed it",
    "Contact jane@example.org, or see https://example.com for more information about the $1,299.99 deal!",
]


def make_nlp(path, **config):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(path), **CONFIG, **config})
    return nlp


def outputs(docs):
    return [
        (
            d._.gliner2,
            [(e.start_char, e.end_char, e.label_) for e in d.ents],
            [(s.start_char, s.end_char, s.label_) for s in d.spans["gliner2"]],
            d.cats,
        )
        for d in docs
    ]


@pytest.fixture(scope="module")
def nlp(bert_checkpoint):
    return make_nlp(bert_checkpoint)


def test_annotations(nlp):
    doc = nlp(TEXTS[0])
    result = doc._.gliner2
    assert list(result) == ["entities", "classifications", "structures", "relations"]
    assert list(result["entities"]) == ["location", "organization", "person"]  # mappings sort
    group = doc.spans["gliner2"]
    n_spans = sum(len(v) for v in result["entities"].values())
    assert len(group) + group.attrs["unaligned"] == n_spans > 0
    assert len(group.attrs["scores"]) == len(group)
    assert all(0.0 <= s <= 1.0 for s in group.attrs["scores"])
    ents = list(doc.ents)
    assert ents and all(a.end <= b.start for a, b in zip(ents, ents[1:]))
    assert {(e.start, e.end, e.label_) for e in ents} <= {(s.start, s.end, s.label_) for s in group}
    assert set(doc.cats) == {"positive", "negative", "neutral"}
    assert sum(doc.cats.values()) == pytest.approx(1.0, abs=1e-5)
    assert result["classifications"]["sentiment"]["label"] == max(doc.cats, key=doc.cats.get)
    for found in result["entities"].values():
        for span in found:
            assert doc.text[span["start"] : span["end"]] == span["text"]


def test_component_cfg_overrides_schema(nlp):
    docs = list(nlp.pipe(TEXTS, component_cfg={"gliner2": {"entities": ["city"], "classifications": None}}))
    for doc in docs:
        assert list(doc._.gliner2["entities"]) == ["city"]
        assert doc._.gliner2["classifications"] == {} and doc.cats == {}
    doc = nlp(TEXTS[0], component_cfg={"gliner2": {"threshold": 1.0}})  # location keeps its own 0.4
    assert doc._.gliner2["entities"]["person"] == doc._.gliner2["entities"]["organization"] == []
    assert {e.label_ for e in doc.ents} <= {"location"}
    with pytest.raises(SchemaError, match="Unknown per-call option"):
        nlp(TEXTS[0], component_cfg={"gliner2": {"labels": ["x"]}})


def test_existing_ents_policies(bert_checkpoint):
    def run(policy):
        nlp = spacy.blank("en")
        ruler = nlp.add_pipe("entity_ruler")
        ruler.add_patterns([{"label": "GPE", "pattern": "Paris"}, {"label": "PERSON", "pattern": "Tim Cook"}])
        nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person", "place"], "threshold": 0.05, "ents_policy": policy})
        return nlp(TEXTS[0])

    kept = run("keep_existing")
    labels = {(e.text, e.label_) for e in kept.ents}
    assert {("Paris", "GPE"), ("Tim Cook", "PERSON")} <= labels
    assert any(e.label_ in ("person", "place") for e in kept.ents)
    assert len(kept.spans["gliner2"]) > len([e for e in kept.ents if e.label_ in ("person", "place")])

    new = run("prefer_new")
    predicted = {(e.start, e.end, e.label_) for e in new.ents if e.label_ in ("person", "place")}
    assert predicted and any(
        s.start < 3 for s in new.ents if s.label_ in ("person", "place")
    )  # a new entity replaced the ruler's overlapping one
    unchanged = run("unchanged")
    assert {(e.text, e.label_) for e in unchanged.ents} == {("Paris", "GPE"), ("Tim Cook", "PERSON")}


def test_unaligned_spans_are_kept_and_counted(bert_checkpoint, caplog):
    nlp = make_nlp(bert_checkpoint, entities={"thing": {"threshold": 0.0}}, alignment_mode="strict")
    with caplog.at_level(logging.WARNING, logger="spacy_gliner2"):
        doc = nlp("Prices: $1,299.99 or 1,000 items (state-of-the-art) at jane@example.org.")
    found = doc._.gliner2["entities"]["thing"]
    group = doc.spans["gliner2"]
    assert group.attrs["unaligned"] > 0
    assert len(group) + group.attrs["unaligned"] == len(found)
    assert "could not be aligned" in caplog.text


def test_doc_tokens_as_words(bert_checkpoint):
    nlp = make_nlp(bert_checkpoint, use_doc_tokens=True, alignment_mode="strict")
    doc = nlp(TEXTS[3])
    group = doc.spans["gliner2"]
    assert group.attrs["unaligned"] == 0 and len(group) > 0


def test_empty_schema_is_a_clear_error(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint)})
    with pytest.raises(SchemaError, match="schema is empty"):
        nlp("Some text.")
    doc = nlp("Some text.", component_cfg={"gliner2": {"entities": ["thing"]}})
    assert list(doc._.gliner2["entities"]) == ["thing"]


@pytest.mark.parametrize(
    "config,message",
    [({"ents_policy": "overwrite"}, "ents_policy"), ({"alignment_mode": "loose"}, "alignment_mode"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_component_config(bert_checkpoint, config, message):
    with pytest.raises(ValueError, match=message):
        make_nlp(bert_checkpoint, **config)


def test_empty_batch(nlp):
    assert nlp.get_pipe("gliner2").predict([]) == []
    assert list(nlp.pipe([])) == []


def test_windows_halve_when_the_encoder_is_full(bert_checkpoint):
    """Windows longer than the encoder's positions are split, never truncated."""
    nlp = make_nlp(bert_checkpoint, window_size=5000, window_overlap=32, structures=None, relations=None)
    limit = nlp.get_pipe("gliner2").runner.max_tokens
    text = "Angela Merkel met Tim Cook in Berlin . " * 1000
    assert len(text.split()) > limit
    doc = nlp(text)
    spans = [s for found in doc._.gliner2["entities"].values() for s in found]
    assert max(s["end"] for s in spans) > 0.98 * len(text)


def test_prompt_longer_than_the_encoder_is_a_clear_error(bert_checkpoint):
    nlp = make_nlp(bert_checkpoint)
    limit = nlp.get_pipe("gliner2").runner.max_tokens
    labels = {f"label {i}": "a rather long description of this label " * 4 for i in range(limit // 20)}
    with pytest.raises(SchemaError, match="too little room"):
        nlp("A short text.", component_cfg={"gliner2": {"entities": labels}})


def test_a_prompt_that_leaves_no_room_for_a_plain_word_is_blamed_not_the_word(bert_checkpoint):
    nlp = make_nlp(bert_checkpoint)
    runner = nlp.get_pipe("gliner2").runner
    limit = runner.max_tokens
    labels = [f"label {i}" for i in range(limit)]
    prompt = [runner.prompt_tokens(Schema.from_config(entities=labels[:n])) for n in (1, 2)]
    guess = (limit - prompt[0]) // (prompt[1] - prompt[0]) + 2
    n = next(n for n in range(guess, 0, -1)
             if limit - runner.prompt_tokens(Schema.from_config(entities=labels[:n])) >= 2)  # room for 2 tokens
    with pytest.raises(SchemaError, match=r"The prompt takes \d+ of the \d+ tokens.*fewer labels"):
        nlp("Researchers at Stanford University published a report.",
            component_cfg={"gliner2": {"entities": labels[:n]}})


def test_threads_give_the_same_results(nlp):
    from concurrent.futures import ThreadPoolExecutor

    expected = outputs(nlp(t) for t in TEXTS * 3)
    with ThreadPoolExecutor(4) as pool:
        got = outputs(pool.map(nlp, TEXTS * 3))
    assert close(got, expected)


def test_int8_precision_runs_and_saves_fp32(bert_checkpoint, tmp_path):
    from safetensors.torch import load_file

    nlp = make_nlp(bert_checkpoint, precision="int8")
    doc = nlp(TEXTS[0])
    assert doc._.gliner2["entities"].keys() == {"location", "organization", "person"}
    pipe = nlp.get_pipe("gliner2")
    assert pipe.runner.runtime_model is not pipe.runner.model
    nlp.to_disk(tmp_path / "p")
    saved = load_file(tmp_path / "p" / "gliner2" / "model" / "model.safetensors")
    original = load_file(bert_checkpoint / "model.safetensors")
    assert all(torch.equal(saved[k], original[k]) for k in original)
    assert spacy.load(tmp_path / "p").get_pipe("gliner2").cfg["precision"] == "int8"


@pytest.mark.skipif(int(version("confection").split(".")[0]) < 1,
                    reason="confection < 1.0 (spaCy 3.7) merges a list override into a dict setting")
def test_load_time_config_overrides_win(nlp, tmp_path):
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p", config={"components": {"gliner2": {"threshold": 0.9, "batch_size": 2, "entities": ["x"]}}})
    pipe = loaded.get_pipe("gliner2")
    assert pipe.cfg["batch_size"] == 2 and pipe.schema.threshold == 0.9
    assert [e.name for e in pipe.schema.entities] == ["x"]


def test_a_load_time_override_can_clear_a_section(bert_checkpoint, tmp_path):
    nlp = make_nlp(bert_checkpoint, classifications={"topic": ["sports", "politics"]})
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p", config={"components": {"gliner2": {"classifications": None}}})
    assert not loaded.get_pipe("gliner2").schema.classifications and not loaded(TEXTS[0]).cats


def test_labels_that_config_files_rewrite_survive_saving(bert_checkpoint, tmp_path):
    """config.cfg reads keys with ':', '=', '#' and descriptions with '$' back changed: the saved schema wins."""
    entities = {"time: hour": None, "a=b": None, "#tag": "a hashtag", "money": "an amount like $5"}
    nlp = make_nlp(bert_checkpoint, entities=entities, classifications=None, structures=None, relations=None)
    before = nlp(TEXTS[0])._.gliner2
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    assert {(e.name, e.description) for e in loaded.get_pipe("gliner2").schema.entities} == \
        {(e.name, e.description) for e in nlp.get_pipe("gliner2").schema.entities}
    assert close(loaded(TEXTS[0])._.gliner2, before)
    dotted = make_nlp(bert_checkpoint, entities={"U.S. state": {"threshold": 0.4}}, classifications=None,
                      structures=None, relations=None)
    with pytest.raises(ValueError, match="cannot be saved in config.cfg"):
        dotted.to_disk(tmp_path / "q")


def test_initialize_without_data_says_nothing(bert_checkpoint, caplog):
    nlp = make_nlp(bert_checkpoint)
    with caplog.at_level("WARNING", logger="spacy_gliner2"):
        nlp.initialize()
    assert not caplog.text


def test_a_prompt_too_long_for_one_pass_runs_task_by_task(bert_checkpoint):
    """Over half of the encoder's positions taken by the prompt: each task runs in its own pass
    (same windows as alone), and the results are those of the tasks run one at a time."""
    nlp = make_nlp(bert_checkpoint, structures=None, relations=None)
    runner = nlp.get_pipe("gliner2").runner
    limit = runner.max_tokens
    tasks = {name: [f"{name} label number {i}" for i in range(limit // 30)] for name in ("topic", "tone")}
    full = {"entities": ["person", "city"], "classifications": tasks}
    text = "Angela Merkel met Tim Cook in Berlin."
    schema = Schema.from_config(**full)
    assert runner.prompt_tokens(schema) > limit // 2 and len(runner.passes(schema, [schema, schema])) == 3
    doc = nlp(text, component_cfg={"gliner2": full})
    alone = [nlp(text, component_cfg={"gliner2": {"entities": full["entities"], "classifications": None}}),
             *(nlp(text, component_cfg={"gliner2": {"entities": None, "classifications": {k: v}}}) for k, v in tasks.items())]
    assert doc._.gliner2["entities"] == alone[0]._.gliner2["entities"]
    for task, single in zip(tasks, alone[1:]):
        assert doc._.gliner2["classifications"][task] == single._.gliner2["classifications"][task]
        assert all(doc.cats[f"{task}:{label}"] == pytest.approx(p) for label, p in single.cats.items())
    small = Schema.from_config(entities=["person"], classifications={"topic": ["a", "b"]})
    assert runner.passes(small, [small]) == [[small]]  # a prompt that fits runs in one pass, as always


def test_a_second_pass_keeps_the_results_of_other_labels(bert_checkpoint):
    """Labels split over calls (README: too many labels) accumulate; a label run again is replaced, not doubled."""
    nlp = make_nlp(bert_checkpoint, entities={"person": {"threshold": 0.0}, "location": {"threshold": 0.0}},
                   classifications=None, structures=None, relations=None)
    def scored(d):
        return sorted(((s.start, s.end, s.label_), c) for s, c in zip(d.spans["gliner2"], d.spans["gliner2"].attrs["scores"]))

    doc = nlp(TEXTS[0], component_cfg={"gliner2": {"entities": {"person": {"threshold": 0.0}}}})
    first, first_spans = dict(doc._.gliner2["entities"]), scored(doc)
    alone = nlp(TEXTS[0], component_cfg={"gliner2": {"entities": {"location": {"threshold": 0.0}}}})
    assert nlp(doc, component_cfg={"gliner2": {"entities": {"location": {"threshold": 0.0}}}}) is doc
    assert doc._.gliner2["entities"] == {**first, **alone._.gliner2["entities"]}
    group = doc.spans["gliner2"]
    assert {s.label_ for s in group} == {"person", "location"}
    assert scored(doc) == sorted(first_spans + scored(alone))
    stored = DocBin(docs=[doc], store_user_data=True).to_bytes()  # attrs come back with tuples
    (doc,) = DocBin().from_bytes(stored).get_docs(nlp.vocab)
    again = nlp(doc, component_cfg={"gliner2": {"entities": {"location": {"threshold": 0.0}}}})
    assert len(again.spans["gliner2"]) == len(group)
    assert len(group) + group.attrs["unaligned"] == sum(len(v) for v in doc._.gliner2["entities"].values())


def test_two_components_write_beside_each_other(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", name="ner", config={"model": str(bert_checkpoint), "entities": {"person": {"threshold": 0.0}},
                                                 "spans_key": "ner"})
    nlp.add_pipe("gliner2", name="cls", config={"model": str(bert_checkpoint), "classifications": {"t": ["a", "b"]},
                                                 "spans_key": "cls"})
    doc = nlp(TEXTS[0])
    assert doc._.gliner2["entities"]["person"] and set(doc._.gliner2["classifications"]) == {"t"}
    assert len(doc.spans["ner"]) and not len(doc.spans["cls"])


def test_a_span_group_it_did_not_write_is_not_replaced(nlp):
    doc = nlp.make_doc(TEXTS[0])
    doc.spans["gliner2"] = [doc[0:2]]
    with pytest.raises(ValueError, match="without the scores spacy-gliner2 keeps"):
        nlp(doc)
    assert [(s.start, s.end) for s in doc.spans["gliner2"]] == [(0, 2)]


def test_unaligned_counts_survive_a_pass_that_found_only_unaligned_spans():
    """Per label: a first pass whose only span cannot be aligned leaves an empty group with its count."""
    from spacy_gliner2.gliner2.annotate import annotate

    doc = spacy.blank("en")("Tim Cook met Anna in Paris")
    settings = dict(spans_key="gliner2", ents_policy="keep_existing", alignment_mode="strict")

    def found(label, start, end):
        return {"entities": {label: [{"text": doc.text[start:end], "start": start, "end": end, "confidence": 0.9}]}}

    assert annotate(doc, found("person", 1, 3), {}, Schema.from_config(entities=["person"]), **settings) == 1
    assert len(doc.spans["gliner2"]) == 0 and doc.spans["gliner2"].attrs["unaligned"] == 1
    assert annotate(doc, found("city", 21, 26), {}, Schema.from_config(entities=["city"]), **settings) == 0
    group = doc.spans["gliner2"]
    assert [s.text for s in group] == ["Paris"] and group.attrs["unaligned_by_label"] == {"person": 1}
    assert len(group) + group.attrs["unaligned"] == sum(len(v) for v in doc._.gliner2["entities"].values())
    del group.attrs["unaligned_by_label"]  # a group written by an older version: its total stays
    annotate(doc, found("person", 0, 3), {}, Schema.from_config(entities=["person"]), **settings)
    assert doc.spans["gliner2"].attrs["unaligned"] == 1 and len(doc.spans["gliner2"]) == 2


@pytest.mark.parametrize("user_data", [True, False])
@pytest.mark.parametrize("policy", ["keep_existing", "prefer_new"])
def test_a_label_run_again_replaces_its_earlier_entities(policy, user_data):
    """doc.ents follows doc._.gliner2: a label's entities from an earlier pass go (and no longer
    block new ones); other labels' entities and those another component set stay, also after DocBin
    (with or without user data)."""
    from spacy.tokens import Span
    from spacy_gliner2.gliner2.annotate import annotate

    nlp = spacy.blank("en")
    doc = nlp("Tim Cook met Anna in Paris")  # tokens 0-5
    doc.ents = [Span(doc, 3, 4, label="person")]  # another component's
    settings = dict(spans_key="gliner2", ents_policy=policy, alignment_mode="strict")

    def run(doc, label, *spans):
        found = [{"text": doc.text[a:b], "start": a, "end": b, "confidence": 0.9} for a, b in spans]
        annotate(doc, {"entities": {label: found}}, {}, Schema.from_config(entities=[label]), **settings)
        return sorted((e.start, e.end, e.label_) for e in doc.ents)

    assert run(doc, "person", (0, 8)) == [(0, 2, "person"), (3, 4, "person")]
    assert run(doc, "city", (21, 26)) == [(0, 2, "person"), (3, 4, "person"), (5, 6, "city")]
    (doc,) = DocBin().from_bytes(DocBin(docs=[doc], store_user_data=user_data).to_bytes()).get_docs(nlp.vocab)
    assert run(doc, "person") == [(3, 4, "person"), (5, 6, "city")]
    assert [t.ent_iob_ for t in doc[:2]] == ["O", "O"]
    assert run(doc, "person", (4, 8)) == [(1, 2, "person"), (3, 4, "person"), (5, 6, "city")]


def test_a_component_keeps_the_entities_of_another_with_the_same_label():
    from spacy.tokens import Span
    from spacy_gliner2.gliner2.annotate import annotate

    doc = spacy.blank("en")("Tim Cook met Anna in Paris")

    def run(spans_key, start, end):
        found = [{"text": doc.text[start:end], "start": start, "end": end, "confidence": 0.9}]
        annotate(doc, {"entities": {"person": found}}, {}, Schema.from_config(entities=["person"]),
                 spans_key=spans_key, ents_policy="keep_existing", alignment_mode="strict")
        return sorted((e.start, e.end) for e in doc.ents)

    assert run("a", 0, 8) == [(0, 2)]
    assert run("b", 13, 17) == [(0, 2), (3, 4)]  # b's pass does not take a's entity
    assert run("a", 21, 26) == [(3, 4), (5, 6)]  # a's own earlier entity goes
    assert Span(doc, 3, 4, label="person") in doc.spans["b"]


@pytest.mark.parametrize("user_data", [True, False])
def test_a_task_run_again_replaces_its_earlier_cats_keys(user_data):
    """A task first run beside another (keys "task:label") and then alone (bare labels) keeps one value per label."""
    from spacy_gliner2.gliner2.annotate import annotate

    doc = spacy.blank("en")("The minister resigned.")
    settings = dict(spans_key="gliner2", ents_policy="keep_existing", alignment_mode="strict")
    both = Schema.from_config(classifications={"topic": ["sport", "politics"], "tone": ["calm", "angry"]})
    probs = {"topic": {"sport": 0.9, "politics": 0.1}, "tone": {"calm": 0.3, "angry": 0.7}}
    annotate(doc, {"entities": {}}, probs, both, **settings)
    assert set(doc.cats) == {"topic:sport", "topic:politics", "tone:calm", "tone:angry"}
    (doc,) = DocBin().from_bytes(DocBin(docs=[doc], store_user_data=user_data).to_bytes()).get_docs(doc.vocab)
    annotate(doc, {"entities": {}}, {"topic": {"sport": 0.2, "politics": 0.8}},
             Schema.from_config(classifications={"topic": ["sport", "politics"]}), **settings)
    assert doc.cats == {"tone:calm": 0.3, "tone:angry": 0.7, "sport": 0.2, "politics": 0.8}


def test_cats_that_no_task_wrote_stay_and_are_replaced_with_a_warning(caplog):
    from spacy_gliner2.gliner2.annotate import annotate

    doc = spacy.blank("en")("The minister resigned.")
    doc.cats = {"sport": 1.0, "topic:other": 1.0, "spam": 0.0}  # the user's, or gold
    with caplog.at_level("WARNING", logger="spacy_gliner2"):
        annotate(doc, {"entities": {}}, {"topic": {"sport": 0.2, "politics": 0.8}},
                 Schema.from_config(classifications={"topic": ["sport", "politics"]}),
                 spans_key="gliner2", ents_policy="keep_existing", alignment_mode="strict")
    assert doc.cats == {"sport": 0.2, "politics": 0.8, "topic:other": 1.0, "spam": 0.0}
    assert "doc.cats['sport'] held a value that no spacy-gliner2 task wrote" in caplog.text
