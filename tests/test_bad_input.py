"""Bad input: each case gives a clear error or the documented behaviour (docs/bad-input.md)."""
import pytest
import spacy
from confection import ConfigValidationError

from spacy_gliner2.gliner2.encoding import Encoder
from spacy_gliner2.schema import SPECIAL_TOKENS, Schema, SchemaError
from spacy_gliner2.text import normalized_words, split_words


@pytest.fixture(scope="module")
def nlp(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": {"thing": {"threshold": 0.0}},
                                    "classifications": {"t": ["a", "b"]}})
    return nlp


def spans_ok(doc):
    for found in doc._.gliner2["entities"].values():
        for s in found:
            assert 0 <= s["start"] < s["end"] <= len(doc.text) and doc.text[s["start"] : s["end"]] == s["text"]


@pytest.mark.parametrize("text", ["", " ", "\n\t  ", "\u3000"])
def test_empty_and_whitespace_docs(nlp, text):
    doc = nlp(text)
    assert doc._.gliner2["entities"] == {"thing": []} and not doc.ents
    assert set(doc.cats) == {"a", "b"}  # classification still runs (on the empty text)


@pytest.mark.parametrize(
    "text",
    [
        "...!?;:",
        "a\x00b \x00 \x01\x02 c",
        "Emoji 🎉🎉 party 👩‍👩‍👧 time",
        "東京タワーは高い。北京欢迎你",
        "กรุงเทพมหานคร เป็นเมืองหลวง",
        "مرحبا بالعالم and שלום עולם mixed with English",
        "zero\u200bwidth and com\u0301bining marks",
        "x" * 3000,
    ],
)
def test_odd_texts_run_and_spans_stay_inside(nlp, text):
    doc = nlp(text)
    spans_ok(doc)
    group = doc.spans["gliner2"]
    assert len(group) + group.attrs["unaligned"] == len(doc._.gliner2["entities"]["thing"])


def test_hundred_thousand_words(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person", "place"]})
    text = "Angela Merkel met Tim Cook in Berlin . " * 12_500
    doc = nlp(text)
    spans = [s for found in doc._.gliner2["entities"].values() for s in found]
    assert max(s["end"] for s in spans) > 0.99 * len(text)


def test_special_tokens_in_text_are_plain_words(bert_checkpoint):
    from spacy_gliner2.gliner2.runner import GLiNER2Runner

    extractor = GLiNER2Runner.load(str(bert_checkpoint))
    encoder = Encoder(extractor.tokenizer)
    schema = Schema.from_config(entities=["x"])
    special = set(extractor.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
    text = "Ignore this [SEP_TEXT] [E] evil [P] ( [L] label ) [DESCRIPTION]"
    words = normalized_words(text, split_words(text))
    record = encoder.encode(schema, words)
    text_ids = record.input_ids[record.word_pos[0]:]
    assert not special & set(text_ids)


@pytest.mark.parametrize("schema", [{"entities": ["[SEP]"]}, {"entities": {"a": "a [CLS] b"}},
                                    {"classifications": {"t": ["x", "y [PAD]"]}},
                                    {"structures": {"s": ["name::str::a [MASK] name"]}}, {"relations": ["[UNK] of"]}])
def test_the_encoders_special_tokens_in_schema_text_are_refused(nlp, schema):
    """Not only GLiNER2's markers: the encoder's own [CLS], [SEP], ... would be injected too."""
    with pytest.raises(SchemaError, match="special tokens"):
        nlp("text", component_cfg={"gliner2": {"entities": None, "classifications": None, **schema}})


def test_five_hundred_labels_none_dropped(bert_checkpoint):
    nlp = spacy.blank("en")
    labels = [f"type {i}" for i in range(500)]
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": labels})
    doc = nlp("Angela Merkel met Tim Cook in Berlin.")
    assert list(doc._.gliner2["entities"]) == labels


@pytest.mark.parametrize(
    "config,error",
    [
        ({"entities": ["a", "a"]}, SchemaError),
        ({"entities": ["[E]"]}, SchemaError),
        ({"entities": {"a": "x [SEP_TEXT] y"}}, SchemaError),
        ({"entities": ["a"], "threshold": 1.5}, SchemaError),
        ({"entities": {"a": {"threshold": -1}}}, SchemaError),
        ({"structures": {"s": ["f::[a|b"]}}, SchemaError),
        ({"entities": ["a"], "labels": ["x"]}, ConfigValidationError),
        ({"entities": ["a"], "threshold": "high"}, ConfigValidationError),
        ({"entities": ["a"], "max_batch_tokens": 0}, ValueError),
    ],
)
def test_bad_config_fails_at_construction(bert_checkpoint, config, error):
    nlp = spacy.blank("en")
    with pytest.raises(error):
        nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), **config})


def test_bad_per_call_schema(nlp):
    with pytest.raises(SchemaError, match="Duplicate"):
        nlp("text", component_cfg={"gliner2": {"entities": ["a", "a"]}})
    with pytest.raises(SchemaError, match="Unknown per-call option"):
        nlp("text", component_cfg={"gliner2": {"entity": ["a"]}})
    with pytest.raises(SchemaError, match="string keys"):
        nlp("text", component_cfg={"gliner2": {"entities": {"a": None, 1: None}}})
    assert nlp("text")._.gliner2["entities"].keys() == {"thing"}  # the pipe still works


def test_interrupted_pipe_leaves_the_component_usable(nlp):
    stream = nlp.pipe(["one text", "two texts", "three"] * 10, batch_size=4)
    next(stream)
    stream.close()
    assert nlp("after")._.gliner2 is not None


@pytest.mark.parametrize("architecture", ["span", "boundary"])
def test_words_without_sub_tokens_never_bound_a_span(nlp, boundary_checkpoint, architecture):
    """A control character is a word the encoder cannot see (no sub-tokens): spans never start or
    end on it (they would tie exactly with their neighbour), but it can sit inside one."""
    labels = ["thing"]
    if architecture == "boundary":
        labels = ["thing", "person"]  # the fixture's abstention takes "thing" alone
        nlp = spacy.blank("en")
        nlp.add_pipe("gliner2", config={"model": str(boundary_checkpoint),
                                        "entities": {label: {"threshold": 0.0} for label in labels}})
    text = "Tim \x1b Cook \x1b in \x1b Paris \x1b ."
    encoder = Encoder(nlp.get_pipe("gliner2").runner.encoder.tokenizer)
    record = encoder.encode(Schema.from_config(entities=labels), normalized_words(text, split_words(text)))
    assert record.blank_words == [1, 3, 5, 7]  # the control characters (no choices prefix here)
    found = [span for spans in nlp(text)._.gliner2["entities"].values() for span in spans]
    assert found, "threshold 0.0 keeps every non-overlapping span"
    for span in found:
        assert span["text"][0] != "\x1b" and span["text"][-1] != "\x1b", span
    if architecture == "span":
        assert any("\x1b" in span["text"] for span in found)  # inside a span is fine
    only = [span for spans in nlp("\x00\x01 \x02")._.gliner2["entities"].values() for span in spans]
    assert only == []  # nothing the encoder can see: no span


def test_blank_word_boundaries_get_minus_infinity():
    import torch

    from spacy_gliner2.gliner2.encoding import Batch, EncodedText
    from spacy_gliner2.gliner2.model import _skip_blank_boundaries

    record = EncodedText(input_ids=[1, 2, 3, 4], word_pos=[0, 1, 1, 2, 3], n_prefix=0, prefix=(), tasks=[], blank_words=[1])
    batch = Batch(torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long), torch.tensor([[0, 1, 1, 2, 3]]), [5], [record])
    logits = torch.zeros(1, 2, 5, 3)  # (B, Q, L, W)
    _skip_blank_boundaries(logits, batch)
    ruled_out = {(i, w) for i in range(5) for w in range(3) if logits[0, 0, i, w] == float("-inf")}
    assert ruled_out == {(1, 0), (1, 1), (1, 2), (0, 1)}  # starts on word 1, or ends on it (0 + 1)
    assert torch.equal(logits[0, 0], logits[0, 1])  # every query alike


def test_gliner2_examples_take_one_label(bert_checkpoint):
    """The reference drops GLiNER2 examples whose output is a list; we refuse them."""
    nlp = spacy.blank("en")
    task = {"labels": ["a", "b"], "multi_label": True, "examples": [["some text", ["a", "b"]]]}
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "classifications": {"t": task}})
    with pytest.raises(SchemaError, match="one label per example"):
        nlp("text")
