"""Training on mixed corpora: a Doc teaches only what it annotates."""
import random

import spacy

from spacy_gliner2.gliner2.encoding import Encoder
from spacy_gliner2.gliner2.training import Gold, TrainingSettings, label_groups, make_targets, negative_pool, sample_schema
from spacy_gliner2.schema import Schema

LABELS = ["person", "city", "company", "drug", "disease"]
BASE = Schema.from_config(classifications={"topic": ["sport", "politics"]})


def test_unannotated_entities_teach_no_entities():
    rng = random.Random(0)
    settings = TrainingSettings(label_dropout=0.0)
    for _ in range(20):
        none_annotated, _ = sample_schema(Gold(entities_annotated=False, cats={"sport": 1.0}), BASE, LABELS, settings, rng)
        assert not none_annotated.entities and none_annotated.classifications
        empty, _ = sample_schema(Gold(), BASE, LABELS, settings, rng)  # annotated: no entities here
        assert len(empty.entities) == settings.negatives  # they teach "none of these"
        assert not empty.classifications  # and, without doc.cats, no class


def test_a_prompt_holds_the_tasks_the_doc_annotates_with_sampled_negative_labels():
    base = Schema.from_config(classifications={"intent": [f"i{n}" for n in range(30)], "mood": ["sad", "glad"]})
    settings = TrainingSettings(class_negatives=4)
    seen = set()
    for seed in range(20):
        schema, gold = sample_schema(Gold(cats={"intent:i7": 1.0}), base, [], settings, random.Random(seed))
        (task,) = schema.classifications
        assert task.name == "intent" and "i7" in task.labels and len(task.labels) == 5
        assert gold.classes["intent"] == [1.0 if label == "i7" else 0.0 for label in task.labels]
        seen.update(task.labels)
    assert len(seen) > 10  # the negatives vary
    schema, gold = sample_schema(Gold(cats={"mood:glad": 1.0, "intent:i1": 1.0}), base, [],
                                 TrainingSettings(class_negatives=-1, shuffle_labels=False), random.Random(0))
    assert [len(t.labels) for t in schema.classifications] == [30, 2] and gold.classes["mood"] == [0.0, 1.0]


def test_the_component_reads_whether_entities_are_annotated(bert_checkpoint):
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"]})
    doc = nlp.make_doc("Ada met Tim in Paris.")
    assert not pipe._gold(doc).entities_annotated  # e.g. a text-classification corpus
    doc.ents = []
    assert pipe._gold(doc).entities_annotated  # annotated, and there are none
    pipe.training.gold_spans_key = "gold"
    assert not pipe._gold(doc).entities_annotated  # the configured span group is absent
    doc.spans["gold"] = []
    assert pipe._gold(doc).entities_annotated


def test_a_doc_without_cats_teaches_no_classes(bert_checkpoint):
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"]})
    encoder = Encoder(pipe.runner.tokenizer)
    text = "Ada met Tim in Paris."
    words = pipe._words(nlp.make_doc(text))
    schema = Schema.from_config(entities=["person"], classifications={"topic": ["sport", "politics"]})
    record = encoder.encode(schema, words)
    without, _ = make_targets(schema, record, words, Gold(entities=[("person", 0, 3)]), 8)
    _, gold = sample_schema(Gold(entities=[("person", 0, 3)], cats={"sport": 1.0}), schema, ["person"],
                            TrainingSettings(shuffle_labels=False), random.Random(0))
    with_cats, _ = make_targets(schema, record, words, gold, 8)
    kinds = [slots.segment.kind for slots in record.tasks]
    cls = kinds.index("classification")
    assert without.classes[cls] is None and with_cats.classes[cls] == [1.0, 0.0]


def test_label_groups_are_the_data_sets_of_a_mixed_corpus():
    docs = [["person", "city"], ["city", "country"], ["actor", "director"], ["title"], ["director", "title"], []]
    groups = label_groups(docs)
    assert groups == [["actor", "director", "title"], ["city", "country", "person"]]
    everything = ["actor", "city", "country", "director", "drug", "person", "title"]  # "drug": configured, no data
    assert negative_pool(["actor"], groups, everything) == ["actor", "director", "drug", "title"]
    assert negative_pool([], groups, everything) == everything  # a Doc without entities: every label
    assert negative_pool(["person"], [], everything) == everything  # nothing learned: as before


def test_negatives_come_from_the_examples_own_data_set(bert_checkpoint):
    from spacy.training import Example

    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint)})

    def example(text, spans):
        doc = nlp.make_doc(text)
        doc.ents = [doc.char_span(a, b, label=label) for a, b, label in spans]
        return Example(nlp.make_doc(text), doc)

    news = [example("Ada met Tim in Paris.", [(0, 3, "person"), (15, 20, "city")]),
            example("Rome is in Italy.", [(0, 4, "city"), (11, 16, "country")])]
    movies = [example("Nolan directed Memento.", [(0, 5, "director"), (15, 22, "title")]),
              example("Pacino starred in Heat.", [(0, 6, "actor"), (18, 22, "title")])]
    nlp.initialize(lambda: news + movies)
    assert pipe.cfg["entity_label_groups"] == [["actor", "director", "title"], ["city", "country", "person"]]
    rng = random.Random(0)
    for _ in range(10):
        for eg, own in [(news[0], {"person", "city", "country"}), (movies[0], {"director", "title", "actor"})]:
            for schema, *_ in pipe._training_items([eg], rng):
                assert {e.name for e in schema.entities} <= own


def test_tasks_are_read_from_task_prefixed_cats():
    from spacy.training import Example

    from spacy_gliner2.core.component import category_task

    nlp = spacy.blank("en")

    def eg(cats):
        doc = nlp.make_doc("a text")
        doc.cats = cats
        return Example(doc, doc)

    mixed = [eg({"intent:book flight": 1.0}), eg({"mood:sad": 1.0, "mood:glad": 1.0}), eg({})]
    assert category_task(mixed) == {"intent": {"labels": ["book flight"], "multi_label": False},
                                    "mood": {"labels": ["glad", "sad"], "multi_label": True}}
    one = [eg({"sport": 1.0, "politics": 0.0}), eg({"time:of day": 1.0})]  # not every key has a task
    assert category_task(one) == {"category": {"labels": ["politics", "sport", "time:of day"], "multi_label": False}}
    assert category_task([eg({})]) is None


def test_training_reads_the_data_tasks_the_pipeline_does_not_predict(bert_checkpoint):
    from spacy.training import Example

    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"],
                                           "classifications": {"mood": ["sad", "glad"]}})
    docs = [nlp.make_doc(t) for t in ("Book a flight.", "What a day!")]
    docs[0].cats, docs[1].cats = {"intent:book flight": 1.0}, {"mood:glad": 1.0}
    examples = [Example(d, d) for d in docs]
    nlp.initialize(lambda: examples)
    assert [t.name for t in pipe.schema.classifications] == ["mood"]  # what it predicts
    assert {t.name: t.labels for t in pipe.training_schema.classifications} == {"mood": ("sad", "glad"),
                                                                             "intent": ("book flight",)}
    schema, gold = sample_schema(pipe._gold(docs[0]), pipe.training_schema, [], TrainingSettings(), random.Random(0))
    assert [t.name for t in schema.classifications] == ["intent"] and gold.classes == {"intent": [1.0]}
    restored = spacy.blank("en").add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"],
                                                             "classifications": {"mood": ["sad", "glad"]}})
    restored.from_bytes(pipe.to_bytes())
    assert restored.training_schema == pipe.training_schema


def test_a_configured_task_keeps_training_on_plain_label_keys(bert_checkpoint):
    from spacy.training import Example

    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"],
                                           "classifications": [{"task": "topic", "labels": ["sport", "politics"]}]})
    doc = nlp.make_doc("A match.")
    doc.cats = {"sport": 1.0, "politics": 0.0}  # one task: the keys are its labels
    nlp.initialize(lambda: [Example(doc, doc)])
    assert pipe.training_schema is pipe.schema and pipe.cfg["class_tasks"] == {}
    schema, gold = sample_schema(pipe._gold(doc), pipe.training_schema, [], TrainingSettings(shuffle_labels=False),
                                 random.Random(0))
    assert gold.classes == {"topic": [1.0, 0.0]}
