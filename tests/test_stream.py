"""Streaming annotation (``python -m spacy_gliner2 run``): records equal the pipeline's own results,
bad lines and failing texts are reported with their line numbers and skipped, never lost silently."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from equality import close

from spacy_gliner2.records import doc_record, pipeline_outputs
from spacy_gliner2.stream import InputError, annotate_stream, read_lines

SCHEMA = {"entities": ["person", "city"], "classifications": {"topic": ["sports", "politics"]}, "threshold": 0.3}
TEXTS = ["Ada Lovelace lived in London.", "The match in Paris ended late.", "Nothing here.",
         "Rome welcomed the senator.", "Berlin and Vienna signed."]
BLOB = "東京" * 2500  # one word of 5,000 tokens, more than the tiny encoder reads: the pipeline refuses it


@pytest.fixture(scope="module")
def nlp(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), **SCHEMA})
    return nlp


@pytest.fixture(scope="module")
def expected(nlp):
    outputs = pipeline_outputs(nlp.config)
    return {t: json.loads(json.dumps(doc_record(nlp(t), outputs))) for t in TEXTS}


def _run(nlp, lines, **options):
    out = io.StringIO()
    report = annotate_stream(nlp, io.StringIO("".join(lines)), out, progress=False, **options)
    return [json.loads(line) for line in out.getvalue().splitlines()], report


def test_records_carry_scores_cats_and_the_extension(nlp, expected):
    doc = nlp(TEXTS[0])
    record = expected[TEXTS[0]]
    assert record["gliner2"] == json.loads(json.dumps(doc._.gliner2))
    assert record["cats"] == pytest.approx(doc.cats)
    scores = dict(zip([(s.start_char, s.end_char, s.label_) for s in doc.spans["gliner2"]],
                      doc.spans["gliner2"].attrs["scores"]))
    assert [(e["start_char"], e["end_char"], e["label"]) for e in record["entities"]] == \
        [(e.start_char, e.end_char, e.label_) for e in doc.ents]
    assert all(e["score"] == scores[(e["start_char"], e["end_char"], e["label"])] for e in record["entities"])


def test_jsonl_bad_lines_are_reported_and_skipped(nlp, expected, capsys):
    lines = [json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS[:3])]
    lines[1:1] = ["{not json\n", "\n", json.dumps({"id": 9}) + "\n", json.dumps({"text": 5}) + "\n", "[1]\n",
                  json.dumps({"text": "a b", "entities": []}) + "\n"]
    written, report = _run(nlp, lines, batch_size=2)
    assert [r["id"] for r in written] == [0, 1, 2]
    for record in written:
        assert close({k: record[k] for k in ("entities", "cats", "gliner2")}, expected[record["text"]])
    assert report.written == 3 and report.failed_lines == []
    assert [b.split(":")[0] for b in report.bad_lines] == ["line 2", "line 4", "line 5", "line 6", "line 7"]
    err = capsys.readouterr().err
    assert "line 2: not valid JSON" in err and "line 4: 'text' must be a string (no such field)" in err
    assert "line 5: 'text' must be a string (a int)" in err and "line 6: expected a JSON object" in err
    assert "line 7: the record already has ['entities']" in err


def test_strict_stops_at_the_first_bad_line(nlp):
    with pytest.raises(InputError, match="line 2: not valid JSON"):
        _run(nlp, ['{"text": "a b"}\n', "{oops\n", '{"text": "c"}\n'], strict=True)


@pytest.mark.parametrize("n_process", [1, 2])
def test_a_text_the_pipeline_fails_on_is_reported_with_its_line(nlp, expected, capfd, n_process):
    lines = [TEXTS[0], TEXTS[1], BLOB, TEXTS[3], BLOB, TEXTS[4]]
    written, report = _run(nlp, [t + "\n" for t in lines], fmt="text", batch_size=4, n_process=n_process)
    assert [r["text"] for r in written] == [TEXTS[0], TEXTS[1], TEXTS[3], TEXTS[4]]
    for record in written:
        assert close(record["gliner2"], expected[record["text"]]["gliner2"])
        assert close(record["cats"], expected[record["text"]]["cats"])
    assert report.failed_lines == [3, 5]
    err = capfd.readouterr().err
    assert "line 3: gliner2 failed: ValueError" in err and "line 5: gliner2 failed" in err


def test_limit_and_a_schema_per_run(nlp):
    lines = [json.dumps({"text": t}) + "\n" for t in TEXTS]
    written, report = _run(nlp, lines, limit=2, component_cfg={"gliner2": {"entities": ["animal"]}})
    assert len(written) == report.written == 2
    assert set(written[0]["gliner2"]["entities"]) == {"animal"}


def test_component_pipe_hands_each_failing_doc_to_the_error_handler(nlp):
    failed = []
    nlp.set_error_handler(lambda name, proc, docs, error: failed.append((name, [d.text for d in docs], type(error))))
    try:
        docs = list(nlp.pipe([TEXTS[0], BLOB, TEXTS[1]], batch_size=8))
    finally:
        nlp.set_error_handler(spacy.util.raise_error)
    assert [d.text for d in docs] == [TEXTS[0], TEXTS[1]] and docs[0]._.gliner2 is not None
    assert failed == [("gliner2", [BLOB], ValueError)]
    with pytest.raises(ValueError, match="tokens"):
        list(nlp.pipe([TEXTS[0], BLOB]))


def test_read_lines_text_format_keeps_every_line_with_its_number():
    """Blank lines are texts too: each output names its input line, and none goes missing."""
    got = list(read_lines(io.StringIO("a b\n\n  c\r\n"), "text"))
    assert got == [(1, {"line": 1, "text": "a b"}), (2, {"line": 2, "text": ""}), (3, {"line": 3, "text": "  c"})]


def test_cli_runs_a_saved_pipeline_and_a_checkpoint(nlp, bert_checkpoint, expected, tmp_path):
    nlp.to_disk(tmp_path / "pipeline")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)) + "{bad\n")
    cmd = [sys.executable, "-m", "spacy_gliner2", "run"]
    done = subprocess.run(cmd + [str(tmp_path / "pipeline"), str(source), str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == list(range(len(TEXTS)))
    assert all(close(r["gliner2"], expected[r["text"]]["gliner2"]) for r in written)
    assert "line 6: not valid JSON" in done.stderr and "5 texts annotated, 1 bad lines skipped" in done.stderr

    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    done = subprocess.run(cmd + [str(bert_checkpoint), "-", "-", "--schema", str(tmp_path / "schema.json"),
                                 "--strict"], input=TEXTS[0] + "\n", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert close(json.loads(done.stdout)["gliner2"], expected[TEXTS[0]]["gliner2"])

    (tmp_path / "schema.cfg").write_text('[components]\n\n[components.ner]\nfactory = "gliner2"\nentities = ["person", "city"]\n'
                                         'threshold = 0.3\n')
    done = subprocess.run(cmd + [str(bert_checkpoint), "-", "-", "--schema", str(tmp_path / "schema.cfg"), "--quiet"],
                          input=TEXTS[0] + "\n", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["gliner2"]["entities"]) == {"person", "city"}

    done = subprocess.run(cmd + [str(bert_checkpoint), "-", "-"], input=TEXTS[0] + "\n", capture_output=True, text=True)
    assert done.returncode == 1 and "needs a schema" in done.stderr and not done.stdout  # not a text failing per line

    script = [str(Path(sys.executable).parent / "spacy-gliner2"), "run"]  # the console script
    done = subprocess.run(script + [str(tmp_path / "pipeline"), str(source), "-", "--strict"], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("error: line 6: not valid JSON")
