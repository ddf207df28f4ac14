"""The spaCy contract, for every factory: entry point, config round trip, offline to_disk/load,
to/from_bytes, pipe == one by one, n_process, DocBin, a 20,000-word text."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import spacy
from equality import close
from spacy.tokens import Doc, DocBin

TEXTS = [
    "Tim Cook visited Paris on Monday and met Emmanuel Macron.",
    "Short one",
    "Google opened a new office in Zürich; 300 engineers will work there. Alphabet confirmed it",
    "Contact jane@example.org, or see https://example.com for more information about the $1,299.99 deal!",
    "The team won the match after a late goal in extra time, and the coach said the league title is close now.",
]


@dataclass
class Family:
    factory: str
    checkpoint: Path
    config: Dict[str, Any]
    check_long: Callable[[Any, Doc], None] = field(repr=False)

    def make_nlp(self, model: Path = None, **config: Any):
        nlp = spacy.blank("en")
        nlp.add_pipe(self.factory, config={"model": str(model or self.checkpoint), **self.config, **config})
        return nlp

    def outputs(self, doc: Doc) -> list:
        """Everything the component writes, as plain data."""
        spans = [(s.start_char, s.end_char, s.label_) for s in doc.spans.get(self.factory, [])]
        return [doc._.get(self.factory), [(e.start_char, e.end_char, e.label_) for e in doc.ents], spans, doc.cats]


def gliner2_long(nlp, doc: Doc) -> None:
    """Entities are found all along the text; merged windows overlap nowhere within a label."""
    spans = [s for found in doc._.gliner2["entities"].values() for s in found]
    assert max(s["end"] for s in spans) > 0.98 * len(doc.text)
    assert min(s["start"] for s in spans) < 0.02 * len(doc.text)
    for found in doc._.gliner2["entities"].values():
        ordered = sorted(found, key=lambda s: s["start"])
        assert all(a["end"] <= b["start"] for a, b in zip(ordered, ordered[1:]))


def classes_long(nlp, doc: Doc) -> None:
    """Nothing is truncated: the document's scores are the merge of its windows', each run alone
    (multi-label: every label's highest probability; single-label: the most confident window)."""
    name = nlp.pipe_names[0]
    pipe = nlp.get_pipe(name)

    def decisions(d: Doc) -> Dict[str, Any]:
        return d._.gliclass if name == "gliclass" else d._.gliner2["classifications"]

    jobs, _ = pipe.runner.windows([doc.text], [pipe._words(doc)], pipe.schema, pipe.cfg["window_size"], pipe.cfg["window_overlap"])
    assert len(jobs) > 20 and jobs[-1].end == len(doc.text)
    alone = [nlp(job.span_text) for job in jobs]
    topic = {label: max(d.cats[f"topic:{label}"] for d in alone) for label in ("sport", "politics", "travel")}
    assert topic == {label: doc.cats[f"topic:{label}"] for label in topic}
    best = max(alone, key=lambda d: decisions(d)["sentiment"]["confidence"])
    assert decisions(doc)["sentiment"] == decisions(best)["sentiment"]


def boundary_long(nlp, doc: Doc) -> None:
    gliner2_long(nlp, doc)  # the checkpoint's policy is "flat": no overlaps within a label either
    classes_long(nlp, doc)


CLASSES = {"classifications": {
    "topic": {"labels": {"sport": None, "politics": "elections and government", "travel": None}, "multi_label": True,
              "threshold": 0.3},
    "sentiment": {"labels": ["positive", "negative"], "prompt": "How does the writer feel?"},
}}


@pytest.fixture(scope="module", params=["gliner2", "gliclass", "gliner2-boundary"])
def family(request, bert_checkpoint) -> Family:
    if request.param == "gliner2-boundary":  # GLiNER2.5: entities and classification so far
        config = {"entities": {"person": "a human being", "organization": None, "location": {"threshold": 0.4}}, **CLASSES}
        return Family("gliner2", request.getfixturevalue("boundary_checkpoint"), config, boundary_long)
    if request.param == "gliner2":
        config = {
            "entities": {"person": "a human being", "organization": None, "location": {"threshold": 0.4}},
            "classifications": {"sentiment": ["positive", "negative", "neutral"]},
            "structures": {"event": ["who::list", "where::str", "kind::[meeting|visit]::str"]},
            "relations": ["works_for"],
        }
        return Family("gliner2", bert_checkpoint, config, gliner2_long)
    return Family("gliclass", request.getfixturevalue("gliclass_checkpoint"), CLASSES, classes_long)


@pytest.fixture(scope="module")
def nlp(family):
    return family.make_nlp()


def run_python(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_entry_point_finds_factory_without_import(family):
    code = (
        "import spacy, sys\n"
        "nlp = spacy.blank('en')\n"
        f"pipe = nlp.add_pipe({family.factory!r}, config={{'model': {str(family.checkpoint)!r}, **{family.config!r}}})\n"
        "assert 'spacy_gliner2' in sys.modules\n"
        f"print(type(pipe).__name__, nlp('Tim Cook works at Apple.')._.{family.factory} is not None)\n"
    )
    name = {"gliner2": "GLiNER2Component", "gliclass": "GLiClassComponent"}[family.factory]
    assert run_python(code).split() == [name, "True"]


def test_pipe_equals_call(nlp, family):
    piped = [family.outputs(d) for d in nlp.pipe(TEXTS, batch_size=3)]
    single = [family.outputs(nlp(t)) for t in TEXTS]
    assert close(piped, single)
    assert all(d.cats for d in nlp.pipe(TEXTS))


def test_config_round_trip(nlp, family):
    config = nlp.config
    nlp2 = spacy.util.load_model_from_config(config, auto_fill=True)
    assert nlp2.pipe_names == [family.factory]
    # the same settings; a float read back from the config text may differ in its last bit (confection < 1.0)
    assert close(nlp2.get_pipe(family.factory).cfg, nlp.get_pipe(family.factory).cfg, 1e-12)
    assert close([family.outputs(nlp2(t)) for t in TEXTS], [family.outputs(nlp(t)) for t in TEXTS])
    reparsed = spacy.util.load_model_from_config(spacy.util.load_config_from_str(config.to_str()))
    assert reparsed.get_pipe(family.factory).schema == nlp.get_pipe(family.factory).schema


def test_to_disk_offline_without_source(family, tmp_path):
    source = tmp_path / "checkpoint"
    shutil.copytree(family.checkpoint, source)
    nlp = family.make_nlp(source)
    expected = [family.outputs(nlp(t)) for t in TEXTS]
    nlp.to_disk(tmp_path / "pipeline")
    shutil.rmtree(source)
    code = (
        "import spacy, json\n"
        f"nlp = spacy.load({str(tmp_path / 'pipeline')!r})\n"
        f"texts = json.loads({json.dumps(json.dumps(TEXTS))})\n"
        f"key = {family.factory!r}\n"
        "docs = [nlp(t) for t in texts]\n"
        "print(json.dumps([[d._.get(key), [(e.start_char, e.end_char, e.label_) for e in d.ents], "
        "[(s.start_char, s.end_char, s.label_) for s in d.spans.get(key, [])], d.cats] for d in docs]))\n"
    )
    out = json.loads(run_python(code, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    assert out == json.loads(json.dumps(expected))
    files = {p.name for p in (tmp_path / "pipeline" / family.factory / "model").rglob("*")}
    assert "model.safetensors" in files and "pytorch_model.bin" not in files


def test_to_bytes_from_bytes(nlp, family):
    data = nlp.to_bytes()
    nlp2 = spacy.blank("en").from_config(nlp.config)
    nlp2.from_bytes(data)
    assert close([family.outputs(nlp2(t)) for t in TEXTS], [family.outputs(nlp(t)) for t in TEXTS])


def test_docbin_keeps_extension(nlp, family):
    docs = list(nlp.pipe(TEXTS))
    data = DocBin(docs=docs, store_user_data=True).to_bytes()
    restored = list(DocBin().from_bytes(data).get_docs(nlp.vocab))
    for a, b in zip(docs, restored):
        assert json.dumps(b._.get(family.factory)) == json.dumps(a._.get(family.factory))
        assert b.to_bytes() == a.to_bytes()


def test_n_process(nlp, family):
    nlp(TEXTS[0])  # torch has run in the parent before forking
    expected = [family.outputs(d) for d in nlp.pipe(TEXTS)]
    got = [family.outputs(d) for d in nlp.pipe(TEXTS * 2, n_process=2, batch_size=2)]
    assert close(got, expected * 2)


def test_20000_word_text(family):
    sentence = "Angela Merkel met Tim Cook in Berlin on Monday to discuss trade, elections and football with Google . "
    text = sentence * (20_000 // len(sentence.split()) + 1)
    assert len(text.split()) >= 20_000
    config = {"structures": None, "relations": None, "classifications": None} if family.check_long is gliner2_long else {}
    nlp = family.make_nlp(**config)
    family.check_long(nlp, nlp(text))
