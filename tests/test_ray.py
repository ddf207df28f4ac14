"""The Ray Data helper on a local Ray: the same results as ``nlp.pipe``, columns passed through,
JSONL and Parquet files, bad records reported in ``error``, clear errors."""
import json
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import spacy
from equality import close
from test_contract import CLASSES
from test_contract import TEXTS as CONTRACT_TEXTS

from spacy_gliner2.__main__ import main
from spacy_gliner2.ray_data import Written, annotate_dataset, annotate_files

TEXTS = CONTRACT_TEXTS + [
    "",
    "John Smith moved from Paris to New York in 2019 and joined Apple as a senior engineer.",
    "Dr. Emily Chen works at the University of Toronto, where she studies machine learning.",
    "The price of crude oil fell 3% after OPEC agreed to raise output by 400,000 barrels a day.",
    "Is the train from Berlin to Warsaw faster than the bus? It takes about five hours.",
    "Amazon opened a warehouse near Lyon, hiring 400 workers, the mayor said on Thursday.",
]
GLINER2 = {
    "entities": {"person": "a human being", "organization": None, "location": {"threshold": 0.4}},
    "classifications": {"sentiment": ["positive", "negative", "neutral"]},
    "structures": {"event": ["who::list", "where::str", "kind::[meeting|visit]::str"]},
    "relations": ["works_for"],
}


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pipelines(bert_checkpoint, gliclass_checkpoint, tmp_path_factory):
    """factory -> (saved pipeline folder, the same pipeline loaded here)."""
    built = {}
    for factory, checkpoint, config in [("gliner2", bert_checkpoint, GLINER2), ("gliclass", gliclass_checkpoint, CLASSES)]:
        nlp = spacy.blank("en")
        nlp.add_pipe(factory, config={"model": str(checkpoint), **config})
        path = tmp_path_factory.mktemp(f"ray-{factory}")
        nlp.to_disk(path)
        built[factory] = (path, spacy.load(path))
    return built


def direct(nlp, factory, texts):
    """What the Ray path must give for each text, from ``nlp.pipe`` and the README's places."""
    expected = []
    for doc in nlp.pipe(texts):
        group = doc.spans.get("gliner2", [])
        bounds = [(s.start, s.end, s.label_) for s in group]
        entities = [{"text": e.text, "label": e.label_, "start_char": e.start_char, "end_char": e.end_char,
                     "score": group.attrs["scores"][bounds.index((e.start, e.end, e.label_))]} for e in doc.ents]
        expected.append({"entities": entities, "cats": dict(doc.cats), factory: doc._.get(factory)})
    return expected


def results(row, factory, decoded=False):
    """A row's results as plain data (in Ray and Parquet, ``cats`` and the extension are JSON strings)."""
    assert row["error"] is None, row["error"]
    load = (lambda x: x) if decoded else json.loads
    return {"entities": list(row["entities"]), "cats": load(row["cats"]), factory: load(row[factory])}


def test_dataset_equals_nlp_pipe(pipelines):
    """Two actors, batches of 3: ids and other columns pass through; a text that is not a string
    gets an error, the other texts of its batch the results of ``nlp.pipe``."""
    path, nlp = pipelines["gliner2"]
    texts = TEXTS[:1] + [5] + TEXTS[1:4] + [None] + TEXTS[4:]
    bad = {1: "int", 5: "NoneType"}
    frame = pd.DataFrame({"id": [f"doc-{i}" for i in range(len(texts))], "text": pd.Series(texts, dtype=object),
                          "meta": [{"n": i, "tags": ["a", str(i)]} for i in range(len(texts))]})
    ds = annotate_dataset(ray.data.from_pandas([frame[:4], frame[4:8], frame[8:]]), path, batch_size=3, concurrency=2)
    rows = sorted(ds.take_all(), key=lambda r: int(r["id"].split("-")[1]))
    assert [{k: r[k] for k in frame.columns} for r in rows] == frame.to_dict("records")
    for i, kind in bad.items():
        assert rows[i]["error"].startswith("ValueError: ") and kind in rows[i]["error"]
        assert rows[i]["entities"] is None and rows[i]["cats"] is None and rows[i]["gliner2"] is None
    expected = direct(nlp, "gliner2", TEXTS)
    assert close([results(r, "gliner2") for i, r in enumerate(rows) if i not in bad], expected)
    assert sum(len(e["entities"]) for e in expected) >= 3 and all(e["cats"] for e in expected)
    assert any(e["gliner2"]["structures"]["event"] for e in expected)


@pytest.mark.parametrize("suffix,factory", [(".jsonl", "gliclass"), (".parquet", "gliner2")])
def test_files_round_trip(pipelines, tmp_path, monkeypatch, capsys, suffix, factory):
    """Rows in input order (two actors: not by chance), other columns unchanged, a record without
    text reported, not lost. JSONL through the Python API, Parquet through ``python -m spacy_gliner2 ray``."""
    path, nlp = pipelines[factory]
    records = [{"id": 100 - i, "body": t, "source": f"s{i % 3}"} for i, t in enumerate(TEXTS)]
    records[4]["body"] = None
    source, target = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    if suffix == ".jsonl":
        source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        written = annotate_files(source, target, path, text_column="body", batch_size=2, concurrency=2)
        assert written == Written(records=len(records), errors=1)
        rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    else:
        pq.write_table(pa.Table.from_pylist(records), source)
        argv = ["ray", str(path), str(source), str(target), "--text-field", "body", "--batch-size", "2",
                "--concurrency", "1"]
        monkeypatch.setattr(sys, "argv", ["python -m spacy_gliner2", *argv])
        main()
        assert capsys.readouterr().out.strip().endswith(f"{len(records)} records, 1 with an error")
        rows = pq.read_table(target).to_pylist()
    assert [{k: r[k] for k in ("id", "body", "source")} for r in rows] == records
    assert rows[4]["error"].startswith("ValueError") and "NoneType" in rows[4]["error"]
    assert rows[4]["entities"] is None and rows[4]["cats"] is None and rows[4][factory] is None
    kept = [i for i in range(len(records)) if i != 4]
    expected = direct(nlp, factory, [TEXTS[i] for i in kept])
    assert close([results(rows[i], factory, decoded=suffix == ".jsonl") for i in kept], expected)
    assert all(e[factory] and e["cats"] for e in expected)
    assert not list(tmp_path.glob("*.partial"))


def test_clear_errors(pipelines, tmp_path):
    path, _ = pipelines["gliner2"]
    with pytest.raises(ValueError, match=r"no column 'text' \(its columns: \['body'\]\); name the text column"):
        annotate_dataset(ray.data.from_items([{"body": "a text"}]), path)
    with pytest.raises(ValueError, match=r"already has the output column\(s\) \['cats'\]"):
        annotate_dataset(ray.data.from_items([{"text": "a text", "cats": 1}]), path)
    plain = spacy.blank("en")
    plain.add_pipe("sentencizer")
    plain.to_disk(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"no gliner2 or gliclass component \(its factories: \['sentencizer'\]\)"):
        annotate_dataset(ray.data.from_items([{"text": "a text"}]), tmp_path / "plain")
    with pytest.raises(ValueError, match="unknown format"):
        annotate_files(tmp_path / "in.csv", tmp_path / "out.jsonl", path)


def test_missing_ray_is_an_actionable_import_error(pipelines, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ImportError, match=r'pip install "spacy-gliner2\[ray\]"'):
        annotate_dataset(None, pipelines["gliner2"][0])


def test_package_import_does_not_import_ray():
    code = "import sys, spacy_gliner2, spacy_gliner2.gliner2.component; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_readme_example_runs_as_written(pipelines, tmp_path, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf8")
    code = readme.split("### Annotating with Ray Data")[1].split("```python\n")[1].split("```")[0]
    code = code.replace('"/data/', f'"{tmp_path}/')  # the example's absolute folders, here
    monkeypatch.chdir(tmp_path)
    rows = [{"id": i, "text": t} for i, t in enumerate(TEXTS[:4])]
    Path("texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Path("texts").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), "texts/part-0.parquet")
    nlp = pipelines["gliner2"][1]
    exec(code, {"nlp": nlp})
    annotated = pq.read_table("annotated.parquet").to_pylist()
    assert [r["id"] for r in annotated] == [0, 1, 2, 3] and all(r["error"] is None for r in annotated)
    written = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(r["id"] for r in written) == [0, 1, 2, 3]
    expected = {t: json.loads(json.dumps(d._.gliner2)) for t, d in zip(TEXTS, nlp.pipe(TEXTS[:4]))}
    assert all(close(json.loads(r["gliner2"]), expected[r["text"]]) for r in written)


def test_jsonl_records_come_back_as_they_were(pipelines, tmp_path):
    """JSONL to JSONL copies each record as it is (no types inferred: a date-like string stays a
    string, an int an int, a missing field missing); a text that is not a string is that record's
    error; a line that is not JSON names its line."""
    path, _ = pipelines["gliner2"]
    records = [{"id": "2024-01-01", "text": TEXTS[0], "n": 1, "meta": {"a": 1}},
               {"id": "x", "text": TEXTS[1], "n": 1.5, "meta": {"b": [1]}, "extra": True},
               {"id": "y", "text": 7}]
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n", encoding="utf-8")
    assert annotate_files(source, target, path, batch_size=2, concurrency=1) == Written(records=3, errors=1)
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    added = {"entities", "cats", "gliner2", "error"}
    assert [{k: v for k, v in row.items() if k not in added} for row in rows] == records
    assert rows[0]["error"] is None and rows[0]["gliner2"] is not None
    assert rows[2]["error"] == "ValueError: 'text' must be a string, got int"
    source.write_text(json.dumps(records[0]) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(ValueError, match="in.jsonl line 2: not JSON"):
        annotate_files(source, target, path)
    source.write_text(json.dumps({**records[0], "cats": {}}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"already have the output field\(s\) \['cats'\]"):
        annotate_files(source, target, path)
