"""Training the ``gliclass`` component: label sampling, losses, overfitting, spacy train, export."""
import json
import random

import pytest
import spacy
import torch
import torch.nn.functional as F
from gliclass_checkpoints import run_reference
from spacy.tokens import DocBin
from spacy.training import Example
from test_training import TRAIN_CFG, run_module

from spacy_gliner2.gliclass.training import GLiClassTraining, focal_loss, gold_items
from spacy_gliner2.schema import Schema

TRAIN = [
    ("The striker scored twice and the fans cheered.", {"sport"}, "positive"),
    ("Parliament rejected the budget after a long debate.", {"politics"}, "negative"),
    ("The minister watched the final with the team.", {"politics", "sport"}, "positive"),
    ("Our flight to the islands was cancelled again.", {"travel"}, "negative"),
    ("A relaxing holiday by the sea, then a match in the stadium.", {"travel", "sport"}, "positive"),
]
TOPICS = ["politics", "sport", "travel"]
CONFIG = {
    "classifications": {"topic": {"labels": TOPICS, "multi_label": True}, "mood": ["negative", "positive"]},
    # labels in a fixed order: a tiny random encoder learns label positions in 100 steps, label names in ~1,000
    "training": {"encoder_lr": 2e-3, "head_lr": 5e-3, "negatives": -1, "shuffle_labels": False},
}


def reference_doc(nlp, text, topics, mood):
    doc = nlp.make_doc(text)
    doc.cats = {**{f"topic:{t}": float(t in topics) for t in TOPICS},
                **{f"mood:{m}": float(m == mood) for m in ("negative", "positive")}}
    return doc


def predictions(nlp, texts):
    return [({d["label"] for d in doc._.gliclass["topic"]}, doc._.gliclass["mood"]["label"]) for doc in nlp.pipe(texts)]


def test_gold_items_sample_negatives_from_the_task_and_skip_what_is_not_annotated():
    schema = Schema.from_config(classifications={"t": {"labels": list("abcdefgh"), "multi_label": True}, "s": ["x", "y"]})
    settings = GLiClassTraining(negatives=2)
    items = gold_items({"t:a": 1.0, "t:b": 0.0, "s:y": 1.0}, schema, settings, random.Random(0))
    s, t = items  # mappings are read in sorted order
    assert len(t.task.labels) == 3 and "a" in t.task.labels  # the positive and two negatives
    assert t.targets == [1.0 if label == "a" else 0.0 for label in t.task.labels]
    assert sorted(s.task.labels) == ["x", "y"] and s.targets[s.task.labels.index("y")] == 1.0
    assert gold_items({}, schema, settings, random.Random(0)) == []  # no cats: teaches nothing
    assert [i.task.name for i in gold_items({"s:x": 1.0, "s:y": 1.0}, schema, settings, random.Random(0))] == []
    every = gold_items({"t:a": 1.0}, schema, GLiClassTraining(negatives=-1, shuffle_labels=False), random.Random(0))
    assert every[0].task.labels == tuple("abcdefgh")


def test_focal_loss_by_hand():
    logits, targets = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    expected = []
    for x, y, q in zip(logits.tolist(), targets.tolist(), p.tolist()):
        bce = -(y * torch.log(torch.tensor(q)) + (1 - y) * torch.log(torch.tensor(1 - q)))
        p_t = q if y else 1 - q
        expected.append(float(bce) * (1 - p_t) ** 2 * (0.25 if y else 0.75))
    assert focal_loss(logits, targets, 0.25, 2.0).tolist() == pytest.approx(expected, rel=1e-5)
    plain = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(focal_loss(logits, targets, -1.0, 0.0), plain)


def test_overfitting_IO(plain_encoder, tmp_path):
    """New GLiClass heads on a plain encoder learn a handful of Docs (multi- and single-label)."""
    torch.manual_seed(0)  # dropout
    nlp = spacy.blank("en")
    nlp.add_pipe("gliclass", config={"model": str(plain_encoder), **CONFIG})
    examples = [Example(nlp.make_doc(t), reference_doc(nlp, t, topics, mood)) for t, topics, mood in TRAIN]
    optimizer = nlp.initialize(get_examples=lambda: examples)
    pipe = nlp.get_pipe("gliclass")
    before = pipe.get_loss(examples)["total"]  # without dropout
    for _ in range(120):
        nlp.update(examples, sgd=optimizer)
    assert pipe.get_loss(examples)["total"] < before / 10
    texts = [t for t, *_ in TRAIN]
    got = predictions(nlp, texts)
    assert got == [(topics, mood) for _, topics, mood in TRAIN]
    nlp.to_disk(tmp_path / "model")
    assert predictions(spacy.load(tmp_path / "model"), texts) == got
    scores = nlp.evaluate(examples)
    assert scores["cats_score"] == 1.0 and "cats_topic_macro_f" in scores




@pytest.mark.parametrize("start", ["plain_encoder", "gliclass_checkpoint"])
def test_spacy_train_evaluate_export(start, request, tmp_path):
    """`spacy train` from a config (new heads on an encoder, or fine-tuning a GLiClass checkpoint);
    the exported checkpoint gives the same scores in the reference package."""
    model = request.getfixturevalue(start)
    nlp = spacy.blank("en")
    docs = []
    for text, topics, _ in TRAIN * 2:
        doc = nlp.make_doc(text)
        doc.cats = {t: float(t in topics) for t in TOPICS}
        docs.append(doc)
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    (tmp_path / "base.cfg").write_text(TRAIN_CFG.format(factory="gliclass", model=model, negatives=2))
    run_module("spacy", "init", "fill-config", str(tmp_path / "base.cfg"), str(tmp_path / "config.cfg"))
    run_module("spacy", "train", str(tmp_path / "config.cfg"), "--output", str(tmp_path / "out"),
               "--paths.train", str(tmp_path / "train.spacy"), "--paths.dev", str(tmp_path / "train.spacy"))
    best = tmp_path / "out" / "model-best"
    run_module("spacy", "evaluate", str(best), str(tmp_path / "train.spacy"), "--output", str(tmp_path / "metrics.json"))
    assert "cats_score" in json.loads((tmp_path / "metrics.json").read_text())
    trained = spacy.load(best)
    task = trained.get_pipe("gliclass").schema.classifications[0]
    assert (task.name, task.labels, task.multi_label) == ("category", tuple(TOPICS), True)  # read from the data

    run_module("spacy_gliner2", "export", str(best), str(tmp_path / "exported"), "--component", "gliclass")
    texts = [t for t, *_ in TRAIN] + ["Nothing about any of these topics."]
    ours = [[doc.cats[label] for label in TOPICS] for doc in trained.pipe(texts)]
    ref = run_reference(tmp_path / "exported", texts, TOPICS, threshold=0.5, batch_size=1)
    assert max(abs(a - b) for x, y in zip(ours, ref.scores) for a, b in zip(x, y)) < 1e-5
