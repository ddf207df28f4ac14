"""Loading and saving the reference checkpoint format."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from spacy_gliner2.gliner2.runner import GLiNER2Runner
from spacy_gliner2.core.checkpoint import CheckpointError, HubOptions, resolve
from spacy_gliner2.schema import Schema
from spacy_gliner2.text import split_words

TEXT = "Tim Cook visited Paris on Monday and met Emmanuel Macron."
SCHEMA = Schema.from_config(entities=["person", "place"], classifications={"s": ["a", "b"]})


def run(extractor, schema=SCHEMA):
    return extractor.run([TEXT], [split_words(TEXT)], schema)[0]


def copy_of(checkpoint, folder):
    """A copy of ``checkpoint`` at ``folder``, to damage."""
    shutil.copytree(checkpoint, folder)
    return folder


def edit_json(path, changes):
    """``path``'s JSON object updated with ``changes``, written back (and returned)."""
    data = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(data))
    return data


def test_hub_id_offline_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache") as err:
        resolve("some-org/not-cached-model", HubOptions(cache_dir=str(tmp_path), local_files_only=True))
    assert "some-org/not-cached-model" in str(err.value)
    assert 'model = "spacy-gliner2/minilm-small"' in str(err.value)  # the way to run without the Hub
    code = (
        "from spacy_gliner2.core.checkpoint import resolve, CheckpointError\n"
        "try:\n"
        "    resolve('some-org/not-cached-model', None)\n"
        "except CheckpointError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.startswith("ERR") and "some-org/not-cached-model" in out.stdout, out.stderr


def test_missing_folder():
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve("./no/such/folder")


def test_saved_folder_loads_in_the_reference(bert_checkpoint, tmp_path):
    gliner2 = pytest.importorskip("gliner2")
    ours = GLiNER2Runner.load(str(bert_checkpoint))
    ours.save(tmp_path / "export")
    reloaded = GLiNER2Runner.load(str(tmp_path / "export"))
    assert run(reloaded) == run(ours)
    ref = gliner2.GLiNER2.from_pretrained(str(tmp_path / "export"))
    got = ref.extract(TEXT, {"entities": ["person", "place"]}, include_confidence=True, include_spans=True)
    expected = run(ours, Schema.from_config(entities=["person", "place"]))[0]["entities"]
    assert any(expected.values())
    for label in ("person", "place"):
        spans = [(s["start"], s["end"]) for s in got["entities"].get(label, [])]
        assert spans == [(s["start"], s["end"]) for s in expected[label]]
    saved, original = load_file(tmp_path / "export" / "model.safetensors"), load_file(bert_checkpoint / "model.safetensors")
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)


def test_pickle_weights_load_with_weights_only(bert_checkpoint, tmp_path):
    folder = copy_of(bert_checkpoint, tmp_path / "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    assert run(GLiNER2Runner.load(str(folder))) == run(GLiNER2Runner.load(str(bert_checkpoint)))


def test_truncated_safetensors(bert_checkpoint, tmp_path):
    folder = copy_of(bert_checkpoint, tmp_path / "truncated")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        GLiNER2Runner.load(str(folder))


def test_malicious_pickle_is_refused(bert_checkpoint, tmp_path):
    folder = copy_of(bert_checkpoint, tmp_path / "evil")
    (folder / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        GLiNER2Runner.load(str(folder))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"architecture": "sequence"}, "architecture 'sequence'"),
        ({"architecture": "boundary"}, r"do not match its config \(architecture 'boundary'"),  # span weights
        ({"counting_layer": "count_gru"}, "Unknown counting_layer"),
        ({"token_pooling": "mean"}, "token_pooling"),
    ],
)
def test_unsupported_configs(bert_checkpoint, tmp_path, change, message):
    folder = copy_of(bert_checkpoint, tmp_path / "changed")
    edit_json(folder / "config.json", change)
    with pytest.raises((CheckpointError, ValueError), match=message):
        GLiNER2Runner.load(str(folder))


def test_unknown_encoder_architecture(bert_checkpoint, tmp_path):
    folder = copy_of(bert_checkpoint, tmp_path / "unknown-encoder")
    path = folder / "encoder_config" / "config.json"
    config = json.loads(path.read_text())
    config["model_type"] = "my-remote-code-model"
    config["auto_map"] = {"AutoModel": "modeling.MyModel"}
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Unknown encoder architecture"):
        GLiNER2Runner.load(str(folder))


def test_missing_config(bert_checkpoint, tmp_path):
    folder = copy_of(bert_checkpoint, tmp_path / "no-config")
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        GLiNER2Runner.load(str(folder))


def test_missing_vocabulary_files(bert_checkpoint, tmp_path):
    """Without its vocabulary file the tokenizer would still load, with its special tokens only
    (every word [UNK]): a clear error instead."""
    folder = copy_of(bert_checkpoint, tmp_path / "no-vocabulary")
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="vocabulary file .* is missing"):
        GLiNER2Runner.load(str(folder))


def test_a_pickle_that_is_not_a_state_dict_is_refused(bert_checkpoint, tmp_path):
    folder = copy_of(bert_checkpoint, tmp_path / "odd")
    (folder / "model.safetensors").unlink()
    torch.save([torch.zeros(2)], folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a state dict"):
        GLiNER2Runner.load(str(folder))


def test_a_saved_component_reads_back_only_what_saving_wrote(bert_checkpoint, tmp_path):
    """Its own safetensors: a lost model folder or a pickle in its place is an error, never the
    original checkpoint (what training changed would be lost) nor an unpickled file."""
    import gc

    import spacy
    import srsly

    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"]})
    nlp.to_disk(tmp_path / "p")
    shutil.rmtree(tmp_path / "p" / "gliner2" / "model")
    with pytest.raises(CheckpointError, match="model is missing"):
        spacy.load(tmp_path / "p")
    nlp.to_disk(tmp_path / "q")
    model = tmp_path / "q" / "gliner2" / "model"
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="never read from a pickle"):
        spacy.load(tmp_path / "q")

    pipe = nlp.get_pipe("gliner2")
    data = pipe.to_bytes()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        pipe.from_bytes(data[: len(data) // 2])
    assert gc.isenabled()
    without_model = srsly.msgpack_dumps({"cfg": srsly.msgpack_loads(data)["cfg"]})
    with pytest.raises(CheckpointError, match="expected its cfg and its model files"):
        pipe.from_bytes(without_model)
    assert pipe.from_bytes(without_model, exclude=["model"]) is pipe


@pytest.mark.parametrize("damage,message", [
    ("shape", "do not fit the model its config describes"),
    ("integers", "holds torch.int8 values where the model has floats"),
])
def test_weights_of_the_wrong_shape_or_kind_are_a_clear_error(bert_checkpoint, tmp_path, damage, message):
    from safetensors.torch import save_file

    folder = copy_of(bert_checkpoint, tmp_path / damage)
    state = load_file(folder / "model.safetensors")
    name = next(k for k, v in state.items() if v.dim() == 2 and not k.startswith("encoder.embeddings"))
    state[name] = state[name][:, :-1].contiguous() if damage == "shape" else state[name].to(torch.int8)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=message):
        GLiNER2Runner.load(str(folder))


@pytest.mark.parametrize("value", [0, -3, "abc", True, 10**9])
def test_a_max_width_that_is_not_a_positive_integer_is_refused(bert_checkpoint, tmp_path, value):
    folder = copy_of(bert_checkpoint, tmp_path / "width")
    span_head = {**json.loads((folder / "config.json").read_text()).get("span_head", {}), "max_width": value}
    edit_json(folder / "config.json", {"max_width": value, "span_head": span_head})
    with pytest.raises(CheckpointError, match="max_width must be an integer from 1 to 128"):
        GLiNER2Runner.load(str(folder))


@pytest.mark.parametrize("change,message", [
    ({"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 16}, "describes an encoder of"),
    ({"max_position_embeddings": 10**9}, "describes an encoder of"),
    ({"num_hidden_layers": 100000}, "is not a real encoder's"),
    ({"num_attention_heads": 0}, "does not describe a buildable encoder"),
    ({"hidden_size": "32"}, "is not a valid bert config"),
])
def test_an_edited_encoder_config_is_refused_before_any_memory_is_taken(bert_checkpoint, tmp_path, change, message):
    folder = copy_of(bert_checkpoint, tmp_path / "edited")
    assert edit_json(folder / "encoder_config" / "config.json", change)["model_type"] == "bert"
    with pytest.raises(CheckpointError, match=message):
        GLiNER2Runner.load(str(folder))


def test_markers_the_tokenizer_would_not_read_as_themselves_are_refused(bert_checkpoint, tmp_path):
    folder = copy_of(bert_checkpoint, tmp_path / "normalized")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    for added in tokenizer["added_tokens"]:
        if added["content"] in ("[E]", "[SEP_TEXT]"):
            added["normalized"] = True  # the lower-casing normalizer then never matches them
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(CheckpointError, match="reads the marker"):
        GLiNER2Runner.load(str(folder))


@pytest.mark.parametrize("label", ["[e]", "x [Sep_Text] y", "[sep]"])
def test_special_tokens_in_any_letter_case_are_refused_in_labels(bert_checkpoint, label):
    import spacy
    from spacy_gliner2.schema import SchemaError

    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"]})
    with pytest.raises(SchemaError, match="special tokens"):
        nlp("Ada met Bob.", component_cfg={"gliner2": {"entities": [label]}})
