"""Converters to DocBins."""
import json

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_gliner2 import convert


def read(path, nlp):
    return list(DocBin().from_disk(path).get_docs(nlp.vocab))


def test_gliner_json_both_flavours(tmp_path):
    nlp = spacy.blank("en")
    data = [
        {"sentence": "EU rejects German call .", "entities": [{"name": "EU", "type": "org", "pos": [0, 2]}, {"name": "German", "type": "misc", "pos": [11, 17]}]},
        {"tokenized_text": ["New", "York", "City", "is", "big"], "ner": [[0, 2, "city"], [0, 1, "state"]]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(data))
    report = convert.Report()
    convert.write_docbin(convert.gliner_json(nlp, tmp_path / "d.json", report), tmp_path / "d.spacy")
    docs = read(tmp_path / "d.spacy", nlp)
    assert [(e.text, e.label_) for e in docs[0].ents] == [("EU", "org"), ("German", "misc")]
    assert [(e.text, e.label_) for e in docs[1].ents] == [("New York City", "city")]
    assert len(docs[1].spans["gliner2"]) == 2  # the overlapping one is kept there
    assert report.overlapping == 1 and report.spans == 4 and report.unaligned == 0


def test_bio(tmp_path):
    nlp = spacy.blank("en")
    (tmp_path / "d.conll").write_text("-DOCSTART- O\n\nJohn\tB-PER\nSmith\tI-PER\nlives\tO\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n\nHi\tO\nParis\tI-LOC\n")
    report = convert.Report()
    docs = list(convert.bio_conll(nlp, tmp_path / "d.conll", report))
    assert [(e.text, e.label_) for e in docs[0].ents] == [("John Smith", "PER"), ("New York", "LOC")]
    assert [(e.text, e.label_) for e in docs[1].ents] == [("Paris", "LOC")]  # IOB1-style I- start


@pytest.mark.parametrize("single,last", [("S", "E"), ("U", "L")])
def test_bioes_and_bilou(tmp_path, single, last):
    nlp = spacy.blank("en")
    rows = [("Ada", f"{single}-PER"), ("visited", "o"), ("New", "B-LOC"), ("York", "I-LOC"), ("City", f"{last}-LOC"),
            ("and", "O"), ("Rome", f"{single}-LOC"), ("Oslo", f"{single}-LOC"), ("Bob", "B-PER"), ("Jones", f"{last}-PER")]
    (tmp_path / "d.conll").write_text("".join(f"{w}\t{t}\n" for w, t in rows))
    report = convert.Report()
    (doc,) = convert.bio_conll(nlp, tmp_path / "d.conll", report)
    assert [(e.text, e.label_) for e in doc.ents] == [("Ada", "PER"), ("New York City", "LOC"), ("Rome", "LOC"),
                                                      ("Oslo", "LOC"), ("Bob Jones", "PER")]
    assert report.spans == 5


@pytest.mark.parametrize("tag", ["PER", "X-PER", "B-", "B_PER"])
def test_a_tag_of_no_known_scheme_is_an_error_naming_its_line(tmp_path, tag):
    (tmp_path / "d.conll").write_text(f"John\tO\nSmith\t{tag}\n")
    with pytest.raises(ValueError, match=f"line 2: tag '{tag}' is neither O nor"):
        list(convert.bio_conll(spacy.blank("en"), tmp_path / "d.conll", convert.Report()))


def test_classification_files(tmp_path):
    nlp = spacy.blank("en")
    (tmp_path / "d.csv").write_text('text,label\n"good, really",pos\nbad,neg\nboth,pos|neg\n')
    (tmp_path / "d.tsv").write_text("text\tlabel\ngood\tpos\n")
    (tmp_path / "d.json").write_text(json.dumps([["set an alarm", "alarm"], {"text": "hi", "label": "greet"}]))
    report = convert.Report()
    csv_docs = list(convert.classification(nlp, tmp_path / "d.csv", report))
    assert csv_docs[0].text == "good, really" and csv_docs[0].cats == {"neg": 0.0, "pos": 1.0}
    assert csv_docs[2].cats == {"neg": 1.0, "pos": 1.0}
    assert list(convert.classification(nlp, tmp_path / "d.tsv", report))[0].cats == {"pos": 1.0}
    json_docs = list(convert.classification(nlp, tmp_path / "d.json", report))
    assert json_docs[0].cats == {"alarm": 1.0, "greet": 0.0}
