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
