"""The command line's errors: one line (``error: ...``, exit status 1) for a bad model, schema,
file or component, caught before any text is read; argument checks by argparse (status 2)."""
import json
import sys

import pytest
import spacy

from spacy_gliner2.__main__ import main


def cli(monkeypatch, capsys, *argv):
    """(exit status or message, stdout) of ``spacy-gliner2 argv...``."""
    monkeypatch.setattr(sys, "argv", ["spacy-gliner2", *map(str, argv)])
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr()


@pytest.fixture()
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("Ada Lovelace lived in London.\nBob met Carol.\n" * 10)
    return path


def test_a_model_that_cannot_be_loaded_is_one_error_before_any_text(monkeypatch, capsys, tmp_path, texts):
    (tmp_path / "empty").mkdir()
    (tmp_path / "schema.json").write_text(json.dumps({"entities": ["person"]}))
    code, out = cli(monkeypatch, capsys, "run", tmp_path / "empty", texts, tmp_path / "out.jsonl",
                    "--schema", tmp_path / "schema.json", "--quiet")
    assert isinstance(code, str) and code.startswith("error:") and "config.json" in code
    assert not (tmp_path / "out.jsonl").exists() and "failed" not in out.err


@pytest.mark.parametrize("schema,message", [
    ('["person"]', "holds a JSON list; a schema is an object"),
    ('{"entities": [', "is not valid JSON"),
    ('{"entitiez": ["person"]}', r"names no task.*unknown keys: \['entitiez'\]"),
    ('{"threshold": 0.9}', "names no task"),
])
def test_a_bad_schema_file_is_one_error_naming_what_is_wrong(monkeypatch, capsys, tmp_path, texts, bert_checkpoint,
                                                            schema, message):
    (tmp_path / "schema.json").write_text(schema)
    code, _ = cli(monkeypatch, capsys, "run", bert_checkpoint, texts, "-", "--schema", tmp_path / "schema.json")
    assert isinstance(code, str)
    assert __import__("re").search(message, code), code


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--n-process", "0"], ["--limit", "-1"]])
def test_numbers_below_one_are_refused(monkeypatch, capsys, bert_checkpoint, texts, option):
    code, out = cli(monkeypatch, capsys, "run", bert_checkpoint, texts, "-", *option)
    assert code == 2 and "must be 1 or more" in out.err


def test_export_finds_the_only_component_and_names_the_ones_there(monkeypatch, capsys, tmp_path, gliclass_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliclass", config={"model": str(gliclass_checkpoint), "classifications": {"t": ["a", "b"]}})
    nlp.to_disk(tmp_path / "pipeline")
    code, out = cli(monkeypatch, capsys, "export", tmp_path / "pipeline", tmp_path / "exported")
    assert code == 0 and "gliclass checkpoint" in out.out and (tmp_path / "exported" / "config.json").is_file()
    code, _ = cli(monkeypatch, capsys, "export", tmp_path / "pipeline", tmp_path / "other", "--component", "gliner2")
    assert code == f"error: {tmp_path / 'pipeline'} has no gliner2/gliclass component 'gliner2'; it has ['gliclass']"
    code, _ = cli(monkeypatch, capsys, "feedback", tmp_path / "pipeline", tmp_path / "missing.jsonl", tmp_path / "fb")
    assert isinstance(code, str) and code.startswith("error:") and "missing.jsonl" in code
    code, _ = cli(monkeypatch, capsys, "export", tmp_path / "nothing-here", tmp_path / "x")
    assert isinstance(code, str) and code.startswith("error:")


def test_a_checkpoint_folder_named_like_an_installed_package_is_a_checkpoint(monkeypatch, tmp_path, bert_checkpoint):
    import shutil

    from spacy_gliner2.stream import is_saved_pipeline, load_pipeline

    shutil.copytree(bert_checkpoint, tmp_path / "gliner2")  # also the name of an installed distribution
    monkeypatch.chdir(tmp_path)
    assert not is_saved_pipeline("gliner2") and not is_saved_pipeline("torch")
    nlp = load_pipeline("gliner2", None, {"entities": ["person"]}, -1)
    assert nlp.pipe_names == ["gliner2"] and "person" in nlp("Ada met Bob.")._.gliner2["entities"]
