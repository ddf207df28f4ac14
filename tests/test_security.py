"""Security: no remote code, no network once saved, no marker injection from schemas."""
import socket
from pathlib import Path

import pytest
import spacy

from spacy_gliner2.schema import SPECIAL_TOKENS, Schema, SchemaError

PACKAGE = Path(__file__).resolve().parent.parent / "spacy_gliner2"


def test_no_remote_code_anywhere():
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text(encoding="utf8")
        assert "trust_remote_code=True" not in source, path
        assert "weights_only=False" not in source, path


def test_loading_a_saved_pipeline_opens_no_socket(bert_checkpoint, tmp_path, monkeypatch):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"]})
    expected = nlp("Tim Cook visited Paris.")._.gliner2
    nlp.to_disk(tmp_path / "pipeline")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded("Tim Cook visited Paris.")._.gliner2 == expected


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
@pytest.mark.parametrize(
    "make",
    [
        lambda t: {"entities": [f"a{t}"]},
        lambda t: {"entities": {"a": f"desc {t}"}},
        lambda t: {"classifications": {f"task{t}": ["x"]}},
        lambda t: {"classifications": {"task": {"labels": ["x"], "prompt": f"p {t}"}}},
        lambda t: {"structures": {"s": [f"f::[a|b{t}]"]}},
        lambda t: {"relations": {"r": f"{t}"}},
    ],
)
def test_schema_text_cannot_hold_special_tokens(token, make):
    with pytest.raises(SchemaError, match="special tokens"):
        Schema.from_config(**make(token))
