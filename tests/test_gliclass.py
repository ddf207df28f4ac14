"""The ``gliclass`` component: outputs against the reference pipeline, schemas, checkpoints of the wrong family."""
import json
import logging
import shutil

import pytest
import spacy
from gliclass_checkpoints import EXAMPLES, LABELS, PROMPT, TEXTS, run_reference

from spacy_gliner2.core.checkpoint import CheckpointError
from spacy_gliner2.schema import SchemaError


def make_nlp(path, **config):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliclass", config={"model": str(path), **config})
    return nlp


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("with_examples", [False, True])
def test_component_matches_the_reference_pipeline(gliclass_checkpoint, multi_label, with_examples):
    """doc.cats and doc._.gliclass equal the reference's scores (1e-5) and decisions, batched."""
    examples = [e for e in EXAMPLES if multi_label or len(e["labels"]) == 1 and e["labels"][0] in LABELS]
    config = {"labels": LABELS, "multi_label": multi_label, "prompt": PROMPT, "threshold": 0.4}
    if with_examples:
        config["examples"] = [[e["text"], [label for label in e["labels"] if label in LABELS]] if multi_label
                              else [e["text"], e["labels"][0]] for e in examples]
        examples = [{"text": text, "labels": out if isinstance(out, list) else [out]} for text, out in config["examples"]]
    nlp = make_nlp(gliclass_checkpoint, classifications={"topic": config})
    docs = list(nlp.pipe(TEXTS, batch_size=8))
    ref = run_reference(gliclass_checkpoint, TEXTS, LABELS, prompt=PROMPT, examples=examples if with_examples else None,
                        threshold=0.4, classification_type="multi-label" if multi_label else "single-label", batch_size=1)
    for doc, scores, predicted in zip(docs, ref.scores, ref.predictions):
        if multi_label:
            assert [doc.cats[label] for label in LABELS] == pytest.approx(scores, abs=1e-5)
            assert [d["label"] for d in doc._.gliclass["topic"]] == [p["label"] for p in predicted]
        else:
            assert sum(doc.cats.values()) == pytest.approx(1.0, abs=1e-5)
            assert doc._.gliclass["topic"]["label"] == predicted[0]["label"]
            assert doc._.gliclass["topic"]["confidence"] == pytest.approx(predicted[0]["score"], abs=1e-5)


def test_several_tasks_and_per_call_schemas(gliclass_checkpoint):
    nlp = make_nlp(gliclass_checkpoint, classifications={"topic": LABELS, "mood": ["happy", "sad"]})
    doc = nlp(TEXTS[0])
    assert set(doc.cats) == {f"topic:{label}" for label in LABELS} | {"mood:happy", "mood:sad"}
    assert set(doc._.gliclass) == {"topic", "mood"}
    alone = make_nlp(gliclass_checkpoint, classifications={"mood": ["happy", "sad"]})(TEXTS[0])
    assert doc._.gliclass["mood"] == alone._.gliclass["mood"]  # each task is its own pass
    other = nlp(TEXTS[0], component_cfg={"gliclass": {"classifications": {"x": ["sport", "travel"]}}})
    assert set(other.cats) == {"sport", "travel"}
    with pytest.raises(SchemaError, match="Unknown per-call option"):
        nlp(TEXTS[0], component_cfg={"gliclass": {"entities": ["person"]}})
    with pytest.raises(SchemaError, match="no classification task"):
        make_nlp(gliclass_checkpoint)(TEXTS[0])


def test_too_many_labels_is_a_clear_error_not_a_dropped_label(gliclass_checkpoint):
    labels = [f"label number {i} of a long list" for i in range(60)]  # > 256 positions for the labels alone
    nlp = make_nlp(gliclass_checkpoint, classifications={"t": labels})
    with pytest.raises(SchemaError, match="fewer labels"):
        nlp(TEXTS[0])


@pytest.mark.parametrize("where", ["label", "prompt", "example"])
@pytest.mark.parametrize("token", ["<<LABEL>>", "<<SEP>>", "[SEP]", "[CLS]", "[PAD]"])
def test_special_tokens_in_schema_text_are_refused(gliclass_checkpoint, where, token):
    task = {"labels": ["sport", "travel"], "multi_label": True}
    if where == "label":
        task["labels"] = [f"sport{token}", "travel"]
    elif where == "prompt":
        task["prompt"] = f"Classify {token} this"
    else:
        task["examples"] = [[f"a match {token} won", ["sport"]]]
    nlp = make_nlp(gliclass_checkpoint, classifications={"t": task})
    with pytest.raises(SchemaError, match="special tokens"):
        nlp("a goal in extra time")


def test_special_tokens_in_the_text_are_plain_spaces(gliclass_checkpoint):
    """Markers and the encoder's [SEP], [CLS], [PAD] in a text add no label slot and no special token."""
    nlp = make_nlp(gliclass_checkpoint, classifications={"t": {"labels": ["sport", "travel"], "multi_label": True}})
    runner = nlp.get_pipe("gliclass").runner
    doc = nlp("a goal <<SEP>> in [SEP] extra [PAD] time <<LABEL>> [CLS]")
    clean = nlp("a goal    in   extra   time    ")
    assert set(doc.cats) == {"sport", "travel"} and doc.cats == pytest.approx(clean.cats, abs=1e-6)
    task = nlp.get_pipe("gliclass").schema.classifications[0]
    ids = runner._sequence(task, doc.text)
    tokenizer = runner.tokenizer
    assert ids.count(tokenizer.sep_token_id) == 1 and ids.count(tokenizer.pad_token_id) == 0


@pytest.mark.parametrize("factory, other", [("gliner2", "gliclass"), ("gliclass", "gliner2")])
def test_a_checkpoint_of_the_other_family_names_its_factory(factory, other, bert_checkpoint, gliclass_checkpoint):
    folder = {"gliner2": bert_checkpoint, "gliclass": gliclass_checkpoint}[other]
    nlp = spacy.blank("en")
    nlp.add_pipe(factory, config={"model": str(folder), "classifications": {"t": ["a", "b"]}})
    name = {"gliner2": "GLiNER2", "gliclass": "GLiClass"}[other]
    with pytest.raises(CheckpointError, match=f"is a {name} checkpoint; use the `{other}` factory"):
        nlp("text")


@pytest.mark.parametrize("architecture", ["bi-encoder", "encoder-decoder", "decoder-kv"])
def test_other_architectures_are_refused_by_name(gliclass_checkpoint, tmp_path, architecture):
    folder = tmp_path / "ckpt"
    shutil.copytree(gliclass_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architecture_type"] = architecture
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"architecture_type '{architecture}' is not supported.*uni-encoder"):
        make_nlp(folder, classifications={"t": ["a", "b"]})("text")


def byte_level_tokenizer(sequence: bool = False):
    """A tiny byte-level BPE tokenizer (as ModernBERT's) with the GLiClass markers, prefix space off."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([level]) if sequence else level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[PAD]", "[CLS]", "[SEP]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["travel sport politics One two three the match was great"] * 20, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    out.add_special_tokens({"additional_special_tokens": ["<<LABEL>>", "<<SEP>>"]})
    return out


@pytest.mark.parametrize("sequence", [False, True])
def test_add_prefix_space_reaches_the_byte_level_pre_tokenizer(sequence):
    from spacy_gliner2.gliclass.prompt import set_prefix_space

    tokenizer = byte_level_tokenizer(sequence)
    string = "<<LABEL>>travel<<SEP>>One"
    before = tokenizer.tokenize(string)
    set_prefix_space(tokenizer, True)
    after = tokenizer.tokenize(string)
    assert "Ġt" in after[1] or after[1].startswith("Ġ")  # each piece after a marker starts with a space
    assert after[-1] == "ĠOne" and before[-1] != "ĠOne"
    set_prefix_space(tokenizer, False)
    assert tokenizer.tokenize(string) == before


def test_add_prefix_space_on_a_wordpiece_checkpoint_is_a_clear_error(gliclass_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliclass", config={"model": str(gliclass_checkpoint), "add_prefix_space": True,
                                     "classifications": {"topic": ["sport", "politics"]}})
    assert nlp.config["components"]["gliclass"]["add_prefix_space"] is True
    with pytest.raises(ValueError, match="add_prefix_space applies to byte-level BPE tokenizers"):
        nlp("A match in the stadium.")
    with pytest.raises(ValueError, match="add_prefix_space"):  # spaCy's config validation
        spacy.blank("en").add_pipe("gliclass", config={"model": str(gliclass_checkpoint), "add_prefix_space": "yes"})


def test_the_component_threshold_is_the_default_of_its_tasks(gliclass_checkpoint):
    """As the reference pipeline's threshold: it decides multi-label tasks that set no threshold."""
    task = {"labels": LABELS, "multi_label": True}
    low = make_nlp(gliclass_checkpoint, classifications={"t": task}, threshold=0.0)(TEXTS[0])
    high = make_nlp(gliclass_checkpoint, classifications={"t": task}, threshold=1.0)(TEXTS[0])
    assert len(low._.gliclass["t"]) == len(LABELS) and high._.gliclass["t"] == []
    nlp = make_nlp(gliclass_checkpoint, classifications={"t": task})
    assert len(nlp(TEXTS[0], component_cfg={"gliclass": {"threshold": 0.0}})._.gliclass["t"]) == len(LABELS)
    own = make_nlp(gliclass_checkpoint, classifications={"t": {**task, "threshold": 0.0}}, threshold=1.0)(TEXTS[0])
    assert len(own._.gliclass["t"]) == len(LABELS)  # a task's own threshold wins


def test_two_components_keep_each_others_tasks(gliclass_checkpoint, caplog):
    """Both tasks stay in doc._.gliclass; their doc.cats keys (one task: the bare labels) coincide,
    so the second replaces the first's, with a warning naming both tasks."""
    nlp = spacy.blank("en")
    for name, task in (("topic", "topic"), ("mood", "mood")):
        nlp.add_pipe("gliclass", name=name, config={"model": str(gliclass_checkpoint),
                                                    "classifications": {task: ["happy", "sad"]}})
    with caplog.at_level(logging.WARNING, logger="spacy_gliner2"):
        doc = nlp(TEXTS[0])
    assert set(doc._.gliclass) == {"topic", "mood"}
    assert "of task 'mood' replaces the one of task 'topic'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spacy_gliner2"):
        nlp(doc)  # again: topic takes the keys back from mood
    assert "of task 'topic' replaces the one of task 'mood'" in caplog.text
    nlp.remove_pipe("mood")
    nlp(doc)  # topic takes its keys back once more
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spacy_gliner2"):
        nlp(doc)  # a task writing its own keys again: no warning
    assert "replaces" not in caplog.text


def test_a_word_longer_than_the_encoder_reads_is_cut_not_refused(gliclass_checkpoint):
    """GLiClass reads text as a string: a run without spaces (here 780 CJK characters, one token
    each, on a 256-position encoder) is read in pieces, merged per label as windows are."""
    nlp = make_nlp(gliclass_checkpoint, classifications={"t": {"labels": ["sport", "travel"], "multi_label": True}})
    text = "東京都日本大学北上海人中国" * 60
    runner = nlp.get_pipe("gliclass").runner
    schema = nlp.get_pipe("gliclass").schema
    windows, records = runner.windows([text], [[(text, 0, len(text))]], schema)
    assert len(windows) > 2 and all(len(r.sequences[0]) <= runner.max_tokens for r in records)
    assert windows[0].start == 0 and windows[-1].end == len(text)
    covered = sorted((w.start, w.end) for w in windows)
    assert all(a[1] >= b[0] for a, b in zip(covered, covered[1:]))  # the pieces leave no gap
    doc = nlp(text)
    assert set(doc.cats) == {"sport", "travel"}
