"""The uncertain outcome: a single-label task that abstains below a calibrated confidence."""
import pytest
import spacy
import torch

from spacy_gliner2.calibration import abstention_threshold, calibrate, set_abstention
from spacy_gliner2.core.classes import classify, merge_classes
from spacy_gliner2.schema import UNCERTAIN, Schema, SchemaError


def test_the_threshold_leaves_the_least_confident_share_below_it():
    confidences = [0.9, 0.2, 0.5, 0.7, 0.3, 0.8, 0.6, 0.4, 0.95, 0.1]
    t = abstention_threshold(confidences, 0.3)
    assert t == pytest.approx(0.35) and sorted(c for c in confidences if c < t) == [0.1, 0.2, 0.3]
    assert abstention_threshold(confidences, 0.0) == 0.0
    with pytest.raises(ValueError, match="share"):
        abstention_threshold(confidences, 1.0)


def test_a_task_abstains_below_its_threshold_with_its_own_key():
    schema = Schema.from_config(classifications={"mood": {"labels": ["sad", "glad"], "abstain_below": 0.7},
                                                 "topic": ["a", "b"]})
    task = schema.classifications[0]
    assert ("mood", UNCERTAIN, "mood:uncertain") in schema.cats_keys()
    unsure, probs = classify(task, torch.tensor([0.0, 0.5]))  # best: glad at 0.62
    assert unsure["label"] == UNCERTAIN and probs[UNCERTAIN] == 1.0 and probs["glad"] == pytest.approx(0.6225, abs=1e-4)
    sure, probs = classify(task, torch.tensor([0.0, 2.0]))
    assert sure["label"] == "glad" and probs[UNCERTAIN] == 0.0
    assert merge_classes(task, [(unsure, {}), (sure, probs)])[0]["label"] == "glad"  # the most confident window decides
    for bad in ({"labels": ["a", "b"], "multi_label": True, "abstain_below": 0.5},
                {"labels": ["a", UNCERTAIN], "abstain_below": 0.5}):
        with pytest.raises(SchemaError, match="abstain_below"):
            Schema.from_config(classifications={"t": bad})


def test_calibrate_writes_the_threshold_into_the_saved_pipeline(bert_checkpoint, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": None,
                                    "classifications": {"mood": ["sad", "glad"]}})
    texts = [f"Text number {i} about {w}." for i, w in enumerate(["rain", "sun", "tax", "cake", "loss", "win"] * 3)]
    gold = []
    for i, text in enumerate(texts):
        doc = nlp.make_doc(text)
        doc.cats = {"glad": float(i % 2), "sad": float(1 - i % 2)}
        gold.append(doc)
    report = calibrate(nlp, "gliner2", gold, "mood", 1 / 3)
    assert report["n"] == 18 and report["abstained"] == pytest.approx(1 / 3, abs=0.06)
    set_abstention(nlp, "gliner2", "mood", report["abstain_below"])
    nlp.to_disk(tmp_path / "calibrated")
    reloaded = spacy.load(tmp_path / "calibrated")
    decided = [doc._.gliner2["classifications"]["mood"]["label"] for doc in reloaded.pipe(texts)]
    assert decided.count(UNCERTAIN) == round(report["abstained"] * 18)
    assert all(doc.cats[UNCERTAIN] == float(d == UNCERTAIN) for doc, d in zip(reloaded.pipe(texts), decided))
    with pytest.raises(SchemaError, match="single-label"):
        calibrate(nlp, "gliner2", gold, "topic", 0.1)


def test_numeric_label_names_follow_the_configured_order_through_sampling():
    import random

    from spacy_gliner2.core.class_sampling import gold_items
    from spacy_gliner2.gliclass.runner import label_texts
    from spacy_gliner2.gliner2.encoding import schema_segments

    schema = Schema.from_config(classifications={"t": {"labels": {"sports": None, "politics": "government", "art": None},
                                                       "numeric_labels": True, "examples": [["A match.", "sports"]]}})
    task = schema.classifications[0]
    assert task.labels == ("sports", "politics", "art") and task.shown_labels == ("1", "2", "3")
    assert task.subset(["art", "sports"]).shown_labels == ("3", "1")
    assert task.subset(["art", "politics"]).examples == ()  # an example of a label the prompt lacks is left out
    (left,) = schema_segments(Schema(classifications=(task.subset(["art", "politics"]),)))
    assert "[EXAMPLE]" not in " ".join(left.elements)
    for seed in range(5):
        (item,) = gold_items({"politics": 1.0}, schema, 1, True, random.Random(seed))
        assert dict(zip(item.task.labels, item.task.shown_labels)) == {k: v for k, v in
                                                                      {"sports": "1", "politics": "2", "art": "3"}.items()
                                                                      if k in item.task.labels}
    (segment,) = schema_segments(schema)
    words = " ".join(segment.elements)
    assert "[L] 1 [L] 2 [L] 3" in words and "[DESCRIPTION] 2: government" in words and "[OUTPUT] 1" in words
    assert not any(name in words for name in ("art", "politics", "sports"))
    assert label_texts(task) == ["1", "2: government", "3"]
    plain = Schema.from_config(classifications={"t": ["b", "a"]}).classifications[0]
    assert plain.shown_labels == ("b", "a") and plain.shown("a") == "a"


def test_numeric_labels_decide_by_label_name(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": None,
                                    "classifications": {"t": {"labels": ["sad", "glad"], "numeric_labels": True}}})
    doc = nlp("What a day.")
    assert set(doc.cats) == {"sad", "glad"} and doc._.gliner2["classifications"]["t"]["label"] in ("sad", "glad")
    named = spacy.blank("en")
    named.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": None,
                                      "classifications": {"t": ["sad", "glad"]}})
    assert named("What a day.").cats != doc.cats  # the prompt differs


@pytest.mark.parametrize("at_least_one", [True, False])
def test_windows_merge_multi_label_decisions_on_the_best_probability_of_each_label(at_least_one):
    """A window in which no label passes contributes its best label only when no label passes in any window."""
    task = Schema.from_config(classifications={"t": {"labels": ["a", "b", "c"], "multi_label": True,
                                                     "threshold": 0.5}}).classifications[0]
    weak = classify(task, torch.tensor([-1.0, -2.0, -3.0]), at_least_one)  # none passes: "a" at 0.27 as fallback
    strong = classify(task, torch.tensor([-3.0, 1.0, -3.0]), at_least_one)  # "b" passes
    assert [d["label"] for d in weak[0]] == (["a"] if at_least_one else [])
    decision, probs = merge_classes(task, [weak, strong])
    assert [d["label"] for d in decision] == ["b"] and probs["a"] == pytest.approx(0.2689, abs=1e-4)
    decision, _ = merge_classes(task, [weak, classify(task, torch.tensor([-3.0, -1.5, -3.0]), at_least_one)])
    assert [d["label"] for d in decision] == (["a"] if at_least_one else [])
