"""Zero-shot evaluation: the shared test sets load as documented, scores are computed right."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import spacy

from spacy_gliner2.zero_shot import APART, CLASS_SETS, NER_SETS, READABLE, evaluate, load_sets, micro_f1, readable

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/eval is not beside the project")
CLASSES = {"sst2": 2, "imdb": 2, "ag_news": 4, "20newsgroups": 20, "snips": 7, "banking77": 77}


def test_micro_f1_by_hand():
    predicted = [[(0, 4, "person"), (10, 15, "city")], [(3, 5, "city")]]
    gold = [[(0, 4, "person"), (10, 15, "country")], [(3, 5, "city"), (7, 9, "city")]]
    # tp 2 (person, city in text 2), fp 1 (city in text 1), fn 2 (country, the second city)
    assert micro_f1(predicted, gold) == pytest.approx({"p": 2 / 3, "r": 2 / 4, "f": 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)})
    assert micro_f1([[]], [[]]) == {"p": 0.0, "r": 0.0, "f": 0.0}


def test_readable_label_names():
    assert readable("AddToPlaylist") == "add to playlist"
    assert readable("card_arrival") == "card arrival"
    assert readable("calendar_set") == "calendar set"


@needs_data
def test_every_set_loads_with_readable_labels():
    sets = {s.name: s for s in load_sets(DATA, limit=50)}
    assert set(sets) == set(NER_SETS + APART + CLASS_SETS)
    for name, s in sets.items():
        assert len(s.items) == 50 and s.labels
        if s.kind == "entities":
            for text, gold in s.items:
                assert all(0 <= a < b <= len(text) and label in s.labels for a, b, label in gold)
        else:
            assert all(text and gold in s.labels for text, gold in s.items)
            assert all("_" not in label and not any(c.isupper() for c in label) for label in s.labels)
            assert len(s.labels) == CLASSES.get(name, len(s.labels))
            assert len({gold for _, gold in s.items}) > 1  # the limit spreads over the classes
    assert set(READABLE["20newsgroups"].values()) == set(sets["20newsgroups"].labels)
    assert len(sets["massive"].labels) > 50
    assert not any(line.startswith(("From:", "Subject:")) for text, _ in sets["20newsgroups"].items
                   for line in text.splitlines()[:1])


@needs_data
def test_evaluate_scores_what_the_pipeline_decides(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["thing"]})
    sets = load_sets(DATA, ["CrossNER_AI", "sst2"], limit=6)
    result = evaluate(nlp, sets, progress=False)
    ner, sst = sets
    docs = [nlp.get_pipe("gliner2")(nlp.make_doc(t), entities=ner.labels) for t, _ in ner.items]
    expected = micro_f1([[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs], [g for _, g in ner.items])
    assert result["sets"]["CrossNER_AI"] == {"n": 6, **expected}
    decided = [nlp.get_pipe("gliner2")(nlp.make_doc(t), entities=None, classifications={"zero_shot": sst.labels})
               for t, _ in sst.items]
    accuracy = sum(d._.gliner2["classifications"]["zero_shot"]["label"] == g for d, (_, g) in zip(decided, sst.items)) / 6
    assert result["sets"]["sst2"] == {"n": 6, "accuracy": accuracy}
    assert result["crossner_average_f1"] is None  # not every set ran


@needs_data
def test_command_line_writes_the_table_and_json(bert_checkpoint, gliclass_checkpoint, tmp_path):
    for model in (bert_checkpoint, gliclass_checkpoint):
        out = tmp_path / "zero-shot.json"
        done = subprocess.run([sys.executable, "-m", "spacy_gliner2", "zero-shot", str(model), "--data", str(DATA),
                               "--out", str(out), "--sets", "snips,mit-movie", "--limit", "3", "--quiet"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(out.read_text())
        assert result["sets"]["snips"]["n"] == 3 and "| snips | 3 | accuracy" in done.stdout
        if model == gliclass_checkpoint:
            assert "skipped" in result["sets"]["mit-movie"]
        else:
            assert set(result["sets"]["mit-movie"]) == {"n", "p", "r", "f"}


@needs_data
def test_an_interrupted_run_resumes(bert_checkpoint, tmp_path):
    """The JSON is written after each set; ``--resume`` keeps the finished sets (not run again) and
    runs the rest; another model or limit is refused."""
    out = tmp_path / "zero-shot.json"
    command = [sys.executable, "-m", "spacy_gliner2", "zero-shot", str(bert_checkpoint), "--data", str(DATA),
               "--out", str(out), "--limit", "3", "--quiet"]
    first = subprocess.run(command + ["--sets", "snips"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    earlier = json.loads(out.read_text())
    earlier["sets"]["snips"]["accuracy"] = -1.0  # a marker: a set run again would overwrite it
    out.write_text(json.dumps(earlier))
    done = subprocess.run(command + ["--sets", "snips,sst2", "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["sets"]["snips"]["accuracy"] == -1.0
    assert result["sets"]["sst2"]["n"] == 3 and 0 <= result["sets"]["sst2"]["accuracy"] <= 1
    other = subprocess.run(command[:-3] + ["--limit", "4", "--quiet", "--sets", "sst2", "--resume"],
                           capture_output=True, text=True, timeout=600)
    assert other.returncode != 0 and "--resume continues only the same model and limit" in other.stderr


def test_results_are_written_after_each_set(bert_checkpoint):
    """``after_set`` sees the result grow one set at a time, with the averages of complete groups."""
    from spacy_gliner2.zero_shot import EvalSet

    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["thing"]})
    sets = [EvalSet("sst2", "classification", ["negative", "positive"], [("Great film.", "positive")]),
            EvalSet("snips", "classification", ["play music", "get weather"], [("Play a song.", "play music")])]
    seen = []
    result = evaluate(nlp, sets, progress=False, after_set=lambda r: seen.append(list(r["sets"])))
    assert seen == [["sst2"], ["sst2", "snips"]] and result["classification_average_accuracy"] is None
