"""Reward-based (PPO) training in both factories: updates, spacy train, feedback files, the CLI."""
import json

import pytest
import spacy
import torch
from spacy.tokens import DocBin
from spacy.training import Example
from test_training import TRAIN_CFG, run_module

from spacy_gliner2.core.feedback import FeedbackError, agreement, feedback_examples, read_feedback
from spacy_gliner2.schema import Schema

TEXTS = [
    ("The striker scored twice and the fans cheered.", {"sport"}, "positive"),
    ("Parliament rejected the budget after a long debate.", {"politics"}, "negative"),
    ("The minister watched the final with the team.", {"politics", "sport"}, "positive"),
    ("Our flight to the islands was cancelled again.", {"travel"}, "negative"),
]
TOPICS = ["politics", "sport", "travel"]
CLASSES = {"topic": {"labels": TOPICS, "multi_label": True}, "mood": ["negative", "positive"]}
PPO = {"objective": "ppo", "reward": "accuracy", "shuffle_labels": False, "ppo_epochs": 2}
# learning rates at which the tiny random fixtures learn in a few dozen PPO steps without saturating
LEARNING_RATES = {"gliner2": {"encoder_lr": 1e-3, "head_lr": 1e-2}, "gliclass": {"encoder_lr": 5e-5, "head_lr": 5e-4}}
FACTORIES = [("gliner2", "bert_checkpoint"), ("gliclass", "gliclass_checkpoint")]


def gold(topics, mood):
    return {**{f"topic:{t}": float(t in topics) for t in TOPICS},
            **{f"mood:{m}": float(m == mood) for m in ("negative", "positive")}}


def make_nlp(factory, model, training=PPO):
    nlp = spacy.blank("en")
    training = {**LEARNING_RATES[factory], **training}
    nlp.add_pipe(factory, config={"model": str(model), "classifications": CLASSES, "training": training})
    return nlp



@pytest.mark.parametrize("factory,fixture", FACTORIES)
def test_ppo_updates_raise_agreement_with_gold(factory, fixture, request):
    """PPO steps with the accuracy reward move a random model's decisions towards the gold."""
    torch.manual_seed(0)
    nlp = make_nlp(factory, request.getfixturevalue(fixture))
    pipe = nlp.get_pipe(factory)
    examples = []
    for text, topics, mood in TEXTS:
        reference = nlp.make_doc(text)
        reference.cats = gold(topics, mood)
        examples.append(Example(nlp.make_doc(text), reference))
    answers = {text: gold(topics, mood) for text, topics, mood in TEXTS}
    before = agreement(nlp, answers, pipe.schema)
    optimizer = nlp.initialize(get_examples=lambda: examples)
    for _ in range(25):
        losses = nlp.update(examples, sgd=optimizer)
    assert set(losses) == {factory}
    after = agreement(nlp, answers, pipe.schema)
    assert after >= before + 0.2, (before, after)


@pytest.mark.parametrize("factory,fixture", FACTORIES)
def test_docs_without_judgments_teach_nothing(factory, fixture, request):
    nlp = make_nlp(factory, request.getfixturevalue(fixture))
    pipe = nlp.get_pipe(factory)
    examples = [Example(nlp.make_doc(t), nlp.make_doc(t)) for t, *_ in TEXTS]
    weights = [p.detach().clone() for p in pipe.runner.model.parameters()]
    assert pipe.update(examples, sgd=True) == {factory: 0.0}
    assert all(torch.equal(a, b) for a, b in zip(weights, pipe.runner.model.parameters()))


def test_a_registered_reward_is_used(gliclass_checkpoint):
    calls = []

    @spacy.registry.misc("test_rl.constant_reward.v1")
    def make_reward():
        def reward(actions, targets, judged, multi):
            calls.append((actions.shape, int(judged.sum())))
            return torch.ones(actions.shape[0])
        return reward

    nlp = make_nlp("gliclass", gliclass_checkpoint, {**PPO, "reward": "test_rl.constant_reward.v1"})
    reference = nlp.make_doc(TEXTS[0][0])
    reference.cats = {"topic:sport": 1.0}  # one verdict
    with pytest.warns(UserWarning, match="A PPO batch of one row"):  # its advantage is 0 (baseline "mean")
        nlp.get_pipe("gliclass").update([Example(nlp.make_doc(TEXTS[0][0]), reference)], sgd=True)
    assert calls == [(torch.Size([1, 3]), 1)]  # one row (the topic task), its 3 labels, 1 judged
    with pytest.raises(ValueError, match="Unknown reward 'nope'"):
        nlp2 = make_nlp("gliclass", gliclass_checkpoint, {**PPO, "reward": "nope"})
        nlp2.get_pipe("gliclass").update([Example(nlp2.make_doc(TEXTS[0][0]), reference)], sgd=True)


def test_bad_objective_is_refused(gliclass_checkpoint):
    with pytest.raises(ValueError, match="training.objective must be one of"):
        make_nlp("gliclass", gliclass_checkpoint, {"objective": "rl"})


SCHEMA = Schema.from_config(classifications=CLASSES)


@pytest.mark.parametrize("line,message", [
    ("not json", "line 2: not JSON"),
    ('["a list"]', "line 2: each line must be a JSON object"),
    ('{"text": "", "task": "topic", "accept": ["sport"]}', "line 2: 'text' must be a non-empty string"),
    ('{"text": "x", "accept": ["sport"]}', r"line 2: 'task' is needed with several tasks"),
    ('{"text": "x", "task": "colour", "accept": ["red"]}', "line 2: unknown task 'colour'"),
    ('{"text": "x", "task": "topic"}', "line 2: no verdict"),
    ('{"text": "x", "task": "topic", "accept": "sport"}', "line 2: 'accept' must be a list"),
    ('{"text": "x", "task": "topic", "accept": ["golf"]}', "line 2: 'golf' is not a label of task 'topic'"),
    ('{"text": "x", "task": "topic", "accept": ["sport"], "reject": ["sport"]}', r"line 2: \['sport'\] both"),
    ('{"text": "x", "task": "mood", "accept": ["negative", "positive"]}', "line 2: task 'mood' is single-label"),
    ('{"text": "x", "task": "topic", "accept": ["sport"], "score": 1}', r"line 2: unknown key\(s\) \['score'\]"),
    ('{"text": "A", "task": "topic", "reject": ["sport"]}', "line 2: 'sport' of task 'topic' was judged otherwise"),
])
def test_feedback_reader_rejects_malformed_lines_with_their_number(tmp_path, line, message):
    path = tmp_path / "feedback.jsonl"
    path.write_text('{"text": "A", "task": "topic", "accept": ["sport"]}\n' + line + "\n")
    with pytest.raises(FeedbackError, match=message):
        read_feedback(path, SCHEMA)


def test_feedback_becomes_partial_cats(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_text('{"text": "A", "task": "topic", "accept": ["sport"], "reject": ["travel"]}\n\n'
                    '{"text": "A", "task": "mood", "accept": ["positive"]}\n')
    assert read_feedback(path, SCHEMA) == {"A": {"topic:sport": 1.0, "topic:travel": 0.0, "mood:positive": 1.0}}
    [example] = feedback_examples(spacy.blank("en"), read_feedback(path, SCHEMA))
    assert example.reference.cats == {"topic:sport": 1.0, "topic:travel": 0.0, "mood:positive": 1.0}
    assert example.predicted.text == "A" and not example.predicted.cats


def write_feedback(path):
    lines = []
    for text, topics, mood in TEXTS:
        lines.append({"text": text, "task": "topic", "accept": sorted(topics)[:1],
                      "reject": [t for t in TOPICS if t not in topics]})
        lines.append({"text": text, "task": "mood", "accept": [mood]})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


@pytest.mark.parametrize("factory,fixture", FACTORIES)
def test_feedback_cli_writes_an_improved_pipeline(factory, fixture, request, tmp_path):
    nlp = make_nlp(factory, request.getfixturevalue(fixture), {"shuffle_labels": False})
    nlp.to_disk(tmp_path / "pipe")
    write_feedback(tmp_path / "feedback.jsonl")
    out = run_module("spacy_gliner2", "feedback", str(tmp_path / "pipe"), str(tmp_path / "feedback.jsonl"),
                     str(tmp_path / "improved"), "--component", factory, "--epochs", "25", "--batch-size", "4")
    assert "agreement with the verdicts" in out
    before, after = (float(x) for x in out.rsplit("verdicts ", 1)[1].split(";")[0].split(" -> "))
    assert after > before, out
    improved = spacy.load(tmp_path / "improved")
    pipe = improved.get_pipe(factory)
    assert pipe.training.objective == "supervised"  # the run's PPO settings are not saved
    judged = read_feedback(tmp_path / "feedback.jsonl", pipe.schema)
    assert agreement(improved, judged, pipe.schema) == pytest.approx(after, abs=1e-3)  # printed to 3 places


@pytest.mark.parametrize("factory,fixture", FACTORIES)
def test_spacy_train_with_ppo(factory, fixture, request, tmp_path):
    nlp = spacy.blank("en")
    docs = []
    for text, topics, _ in TEXTS * 2:
        doc = nlp.make_doc(text)
        doc.cats = {t: float(t in topics) for t in TOPICS}
        docs.append(doc)
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    config = TRAIN_CFG.format(factory=factory, model=request.getfixturevalue(fixture), negatives=2)
    config = config.replace("negatives = 2\n", 'negatives = 2\nobjective = "ppo"\nppo_epochs = 2\n')
    config = config.replace("max_steps = 12", "max_steps = 4").replace("eval_frequency = 6", "eval_frequency = 2")
    (tmp_path / "base.cfg").write_text(config)
    run_module("spacy", "init", "fill-config", str(tmp_path / "base.cfg"), str(tmp_path / "config.cfg"))
    out = run_module("spacy", "train", str(tmp_path / "config.cfg"), "--output", str(tmp_path / "out"),
                     "--paths.train", str(tmp_path / "train.spacy"), "--paths.dev", str(tmp_path / "train.spacy"))
    assert "LOSS " + factory.upper() in out
    trained = spacy.load(tmp_path / "out" / "model-best")
    assert trained.get_pipe(factory).training.objective == "ppo"
    assert set(next(trained.pipe(["A match in the stadium."])).cats) == set(TOPICS)
