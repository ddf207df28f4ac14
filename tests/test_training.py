"""Training: the overfitting test, spacy train from a config, export to the reference."""
import pytest
import spacy
from spacy.training import Example

TRAIN = [
    ("Alice flew to Paris yesterday.", [("Alice", "person"), ("Paris", "city")], "positive", ("Alice", "Paris")),
    ("Bob hated his trip to Rome.", [("Bob", "person"), ("Rome", "city")], "negative", ("Bob", "Rome")),
    ("Carol loved visiting Berlin.", [("Carol", "person"), ("Berlin", "city")], "positive", ("Carol", "Berlin")),
    ("Dave was stuck in Madrid for days.", [("Dave", "person"), ("Madrid", "city")], "negative", ("Dave", "Madrid")),
]
CONFIG = {
    "entities": ["city", "person"],
    "classifications": {"sentiment": ["negative", "positive"]},
    "structures": {"trip": ["who::str", "where::str"]},
    "training": {"encoder_lr": 1e-3, "head_lr": 1e-3, "negatives": 0, "label_dropout": 0.0, "shuffle_labels": False},
}


def span(text, needle):
    start = text.index(needle)
    return {"text": needle, "start": start, "end": start + len(needle)}


def make_examples(nlp):
    examples = []
    for text, ents, sentiment, (who, where) in TRAIN:
        doc = nlp.make_doc(text)
        ref = nlp.make_doc(text)
        ref.ents = [ref.char_span(text.index(t), text.index(t) + len(t), label=label) for t, label in ents]
        ref.cats = {"positive": float(sentiment == "positive"), "negative": float(sentiment == "negative")}
        ref._.gliner2 = {"structures": {"trip": [{"who": span(text, who), "where": span(text, where)}]}}
        examples.append(Example(doc, ref))
    return examples


def predictions(nlp, texts):
    out = []
    for doc in nlp.pipe(texts):
        trip = doc._.gliner2["structures"]["trip"]
        out.append(
            (
                sorted((e.text, e.label_) for e in doc.ents),
                max(doc.cats, key=doc.cats.get),
                [(i["who"] or {}).get("text") for i in trip] + [(i["where"] or {}).get("text") for i in trip],
            )
        )
    return out


def test_overfitting_IO(plain_encoder, tmp_path):
    """New heads on a plain encoder learn a handful of Docs: entities, categories, a structure."""
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(plain_encoder), **CONFIG})
    examples = make_examples(nlp)
    optimizer = nlp.initialize(get_examples=lambda: examples)
    first = None
    for step in range(160):
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
        first = first if first is not None else losses["gliner2"]
    assert losses["gliner2"] < first / 10

    texts = [t for t, *_ in TRAIN]
    got = predictions(nlp, texts)
    for (text, ents, sentiment, (who, where)), (pred_ents, pred_cat, pred_trip) in zip(TRAIN, got):
        assert pred_ents == sorted(ents)
        assert pred_cat == sentiment
        assert pred_trip == [who, where]

    nlp.to_disk(tmp_path / "model")
    reloaded = spacy.load(tmp_path / "model")
    assert predictions(reloaded, texts) == got

    scores = nlp.evaluate(make_examples(nlp))
    for key in ("ents_p", "ents_r", "ents_f", "ents_per_type", "cats_score", "structures_f"):
        assert key in scores
    assert scores["ents_f"] == 1.0 and scores["cats_score"] == 1.0 and scores["structures_f"] == 1.0


TRAIN_CFG = """
[paths]
train = null
dev = null

[system]
seed = 0
gpu_allocator = null

[nlp]
lang = "en"
pipeline = ["{factory}"]
batch_size = 16

[components]

[components.{factory}]
factory = "{factory}"
model = "{model}"

[components.{factory}.training]
encoder_lr = 0.001
head_lr = 0.001
warmup_steps = 2
negatives = {negatives}

[corpora]

[corpora.train]
@readers = "spacy.Corpus.v1"
path = ${{paths.train}}

[corpora.dev]
@readers = "spacy.Corpus.v1"
path = ${{paths.dev}}

[training]
max_steps = 12
eval_frequency = 6
dropout = 0.1
patience = 0
max_epochs = 0

[training.batcher]
@batchers = "spacy.batch_by_words.v1"
size = 200
tolerance = 0.2

[training.optimizer]
@optimizers = "Adam.v1"
learn_rate = 0.001

[initialize]
"""


def write_gliner_json(path):
    import json

    items = []
    for text, ents, *_ in TRAIN * 2:
        items.append({"sentence": text, "entities": [{"name": t, "type": label, "pos": [text.index(t), text.index(t) + len(t)]} for t, label in ents]})
    path.write_text(json.dumps(items))
    return path


def run_module(*args, cwd=None):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=900, cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


@pytest.mark.parametrize("start", ["plain_encoder", "bert_checkpoint"])
def test_spacy_train_evaluate_export(start, request, tmp_path):
    """`spacy train` from a config: new heads on an encoder, or fine-tuning a GLiNER2 checkpoint."""
    import json

    model = request.getfixturevalue(start)
    data = write_gliner_json(tmp_path / "data.json")
    run_module("spacy_gliner2", "convert", "gliner", str(data), str(tmp_path / "train.spacy"))
    (tmp_path / "base.cfg").write_text(TRAIN_CFG.format(factory="gliner2", model=model, negatives=1))
    run_module("spacy", "init", "fill-config", str(tmp_path / "base.cfg"), str(tmp_path / "config.cfg"))
    run_module(
        "spacy", "train", str(tmp_path / "config.cfg"), "--output", str(tmp_path / "out"),
        "--paths.train", str(tmp_path / "train.spacy"), "--paths.dev", str(tmp_path / "train.spacy"),
    )
    best = tmp_path / "out" / "model-best"
    assert (best / "gliner2" / "model" / "model.safetensors").exists()
    run_module("spacy", "evaluate", str(best), str(tmp_path / "train.spacy"), "--output", str(tmp_path / "metrics.json"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"ents_p", "ents_r", "ents_f", "ents_per_type"} <= set(metrics)
    trained = spacy.load(best)
    assert [e.name for e in trained.get_pipe("gliner2").schema.entities] == ["city", "person"]
    if start == "bert_checkpoint":
        check_export_matches_reference(trained, tmp_path)


def check_export_matches_reference(nlp, tmp_path):
    """The fine-tuned component, exported, gives the same outputs in the reference library."""
    gliner2 = pytest.importorskip("gliner2")
    from test_parity import assert_same, reference_schema, to_our_shape

    (tmp_path / "pipe").mkdir()
    nlp.to_disk(tmp_path / "pipe")
    run_module("spacy_gliner2", "export", str(tmp_path / "pipe"), str(tmp_path / "exported"))
    reference = gliner2.GLiNER2.from_pretrained(str(tmp_path / "exported"))
    config = {"entities": ["city", "person"], "classifications": {"mood": ["happy", "sad"]}, "relations": ["visited"]}
    schema, ref_schema = reference_schema(config)
    texts = [t for t, *_ in TRAIN] + ["Eve and Frank drove from Lisbon to Porto on Friday!"]
    docs = list(nlp.pipe(texts, component_cfg={"gliner2": config}))
    for text, doc in zip(texts, docs):
        ref = reference.extract(text, ref_schema, include_confidence=True, include_spans=True)
        assert_same(doc._.gliner2, to_our_shape(ref, schema, text), text)


def test_long_training_docs_are_windowed(plain_encoder):
    """A Doc longer than the encoder can read trains in windows (no crash, no truncation)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(plain_encoder), **CONFIG})
    text = " ".join(t for t, *_ in TRAIN) * 60  # about 1,500 words; the encoder reads 512 positions
    ref = nlp.make_doc(text)
    last = text.rindex("Madrid")
    ref.ents = [ref.char_span(last, last + len("Madrid"), label="city")]
    examples = [Example(nlp.make_doc(text), ref)]
    nlp.initialize(lambda: examples)
    pipe = nlp.get_pipe("gliner2")
    items = pipe._training_items(examples, __import__("random").Random(0))
    assert len(items) > 3 and sum(len(gold.entities) for *_, gold in items) >= 1
    losses = nlp.update(examples)
    assert losses["gliner2"] > 0


def test_gold_that_fits_in_no_window_is_reported(plain_encoder, caplog):
    """A relation whose head and tail fall in different training windows cannot be learned: a warning counts it."""
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(plain_encoder), **CONFIG, "window_size": 8, "window_overlap": 2})
    text = "Anna Berg is a senior engineer who after many long years finally visited Madrid."
    ref = nlp.make_doc(text)
    ref.ents = [ref.char_span(0, 9, label="person"), ref.char_span(73, 79, label="city")]
    ref._.gliner2 = {"relations": {"visited": [{"head": {"text": "Anna Berg", "start": 0, "end": 9},
                                                "tail": {"text": "Madrid", "start": 73, "end": 79}}]}}
    examples = [Example(nlp.make_doc(text), ref)]
    nlp.initialize(lambda: examples)
    pipe = nlp.get_pipe("gliner2")
    with caplog.at_level("WARNING", logger="spacy_gliner2"):
        items = pipe._training_items(examples, __import__("random").Random(0))
    assert len(items) > 1 and not any(gold.relations.get("visited") for *_, gold in items)
    assert "1 gold entities, structure instances or relations span more than one window" in caplog.text
    caplog.clear()
    pipe.cfg["window_size"] = 64
    with caplog.at_level("WARNING", logger="spacy_gliner2"):
        pipe._training_items(examples, __import__("random").Random(0))
    assert "more than one window" not in caplog.text


@pytest.mark.parametrize("setting,value,message", [
    ("negatives", "many", "training.negatives must be an int, got 'many'"),
    ("negatives", -1, "training.negatives must be at least 0"),
    ("head_lr", "fast", "training.head_lr must be a float"),
    ("ppo_epochs", 2.5, "training.ppo_epochs must be an int"),
    ("encoder_lr", -1, "training.encoder_lr must be at least 0"),
    ("label_dropout", 1.5, "training.label_dropout must be between 0 and 1"),
    ("negative_span_mask", 2.0, "training.negative_span_mask must be between 0 and 1"),
    ("shuffle_labels", "no", "training.shuffle_labels must be a bool"),
    ("entropy_coef", -0.5, "training.entropy_coef must be at least 0"),
    ("gold_spans_key", 3, "training.gold_spans_key must be null or a str"),
])
def test_training_settings_of_the_wrong_type_or_range_are_refused_when_the_component_is_made(bert_checkpoint, setting,
                                                                                            value, message):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match=message):
        nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), **CONFIG, "training": {setting: value}})


def test_gliclass_training_settings_are_checked_too():
    from spacy_gliner2.gliclass.training import GLiClassTraining

    assert GLiClassTraining.from_config({"negatives": -1, "encoder_lr": 1}).negatives == -1  # -1: every label
    for bad in ({"negatives": -2}, {"focal_gamma": -1.0}, {"loss": 3}):
        with pytest.raises(ValueError, match="training\\."):
            GLiClassTraining.from_config(bad)


def test_initialize_without_tasks_or_gold_says_so(bert_checkpoint, caplog):
    """A warning, not an error: a component that only predicts (per-call schemas) is initialized with
    the other components' data, which has no gold for it."""
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": None, "classifications": None,
                                    "structures": None, "relations": None})
    examples = [Example(nlp.make_doc(t), nlp.make_doc(t)) for t, *_ in TRAIN]
    with caplog.at_level("WARNING", logger="spacy_gliner2"):
        nlp.initialize(lambda: examples)
    assert "gliner2 has nothing to learn" in caplog.text and "frozen_components" in caplog.text


def test_gold_that_training_will_not_learn_is_reported_at_initialize(bert_checkpoint, caplog):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), **CONFIG,
                                    "training": {"gold_spans_key": "typo", "objective": "ppo"}})
    examples = []
    for text, *_ in TRAIN:
        reference = nlp.make_doc(text)
        reference.cats = {"neutral": 1.0}  # a label of no task
        reference._.gliner2 = {"structures": {"order": [{"item": None}]}, "relations": {"owns": []}}
        examples.append(Example(nlp.make_doc(text), reference))
    with caplog.at_level("WARNING", logger="spacy_gliner2"):
        nlp.initialize(lambda: examples)
    for expected in ["doc.cats keys ['neutral'] belong to no classification task (['sentiment'])",
                     "gold structures ['order']", "gold relations ['owns']",
                     "gold_spans_key 'typo' is in no Doc's doc.spans", "objective 'ppo'"]:
        assert expected in caplog.text


def test_instances_past_the_count_heads_largest_count_are_reported(plain_encoder, caplog):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(plain_encoder), **CONFIG, "relations": ["met"]})
    text = " ".join(f"P{i} met Q{i}." for i in range(25))
    ref = nlp.make_doc(text)
    found = []
    for i in range(25):
        head, tail = text.index(f"P{i} "), text.index(f"Q{i}.")
        found.append({"head": {"text": f"P{i}", "start": head, "end": head + len(f"P{i}")},
                      "tail": {"text": f"Q{i}", "start": tail, "end": tail + len(f"Q{i}")}})
    ref._.gliner2 = {"relations": {"met": found}}
    examples = [Example(nlp.make_doc(text), ref)]
    nlp.initialize(lambda: examples)
    with caplog.at_level("WARNING", logger="spacy_gliner2"):
        nlp.update(examples)
    assert "6 gold span(s) or instances cannot be learned" in caplog.text  # 25 instances, counts up to 19


@pytest.mark.parametrize("factory", ["gliner2", "gliclass"])
def test_a_corpus_without_gold_for_the_tasks_is_reported(factory, bert_checkpoint, gliclass_checkpoint, caplog):
    nlp = spacy.blank("en")
    model = bert_checkpoint if factory == "gliner2" else gliclass_checkpoint
    nlp.add_pipe(factory, config={"model": str(model), "classifications": {"sentiment": ["negative", "positive"]}})
    examples = [Example(nlp.make_doc(t), nlp.make_doc(t)) for t, *_ in TRAIN]  # no ents, no cats
    with caplog.at_level("WARNING", logger="spacy_gliner2"):
        nlp.initialize(lambda: examples)
    assert "no Doc has gold for the component's tasks" in caplog.text
    caplog.clear()
    examples[0].reference.cats = {"positive": 1.0, "negative": 0.0}
    with caplog.at_level("WARNING", logger="spacy_gliner2"):
        nlp.initialize(lambda: examples)
    assert "no Doc has gold" not in caplog.text
