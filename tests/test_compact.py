"""Compact (int8 / fp16) weights: the format models inside the package are stored in."""
import pytest
import torch
from safetensors.torch import load_file

from spacy_gliner2.core.checkpoint import BUNDLED, COMPACT, MODELS, SAFETENSORS, resolve
from spacy_gliner2.core.compact import SCALE, compact_state, expand_state
from spacy_gliner2.gliner2.checkpoint import save_model
from spacy_gliner2.gliner2.runner import GLiNER2Runner
from spacy_gliner2.schema import Schema
from spacy_gliner2.text import split_words


def test_matrices_come_back_within_half_a_step_of_their_row():
    gen = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(7, 33, generator=gen) * torch.arange(1, 8)[:, None], "b": torch.randn(33, generator=gen),
             "ids": torch.arange(5), "zero": torch.zeros(2, 3)}
    stored = compact_state(state)
    assert stored["w"].dtype == torch.int8 and stored["w" + SCALE].shape == (7, 1) and stored["b"].dtype == torch.float16
    back = expand_state(stored)
    assert back.keys() == state.keys() and all(back[k].dtype == state[k].dtype for k in state)
    step = state["w"].abs().amax(dim=1, keepdim=True) / 127
    assert ((back["w"] - state["w"]).abs() <= step * 0.5 + 1e-3 * step).all()
    assert torch.equal(back["ids"], state["ids"]) and torch.equal(back["zero"], state["zero"])
    assert torch.allclose(back["b"], state["b"], atol=2e-3)
    with pytest.raises(ValueError, match="reserve"):
        compact_state({"a" + SCALE: torch.ones(2, 2)})


def test_a_compact_checkpoint_loads_and_scores_as_the_fp32_one(bert_checkpoint, tmp_path):
    runner = GLiNER2Runner.load(str(bert_checkpoint))
    save_model(runner.model, runner.tokenizer, runner.config, tmp_path, compact=True)
    assert (tmp_path / COMPACT).is_file() and not (tmp_path / SAFETENSORS).exists()
    assert (tmp_path / COMPACT).stat().st_size < 0.4 * (bert_checkpoint / SAFETENSORS).stat().st_size
    compact = GLiNER2Runner.load(str(tmp_path))
    original = runner.model.state_dict()
    for name, tensor in compact.model.state_dict().items():
        assert torch.allclose(tensor, original[name], atol=original[name].abs().max().item() / 127 + 1e-3), name
    text = "Tim Cook visited Paris on Monday and met Emmanuel Macron."
    schema = Schema.from_config(entities=["person", "place"], classifications={"s": ["a", "b"]})
    (_, full), (_, small) = (r.run([text], [split_words(text)], schema)[0] for r in (runner, compact))
    assert abs(full["s"]["a"] - small["s"]["a"]) < 0.05


def test_the_bundled_model_is_found_by_name_and_stored_compact():
    folder = resolve("spacy-gliner2/minilm-small")
    assert folder == MODELS / BUNDLED["spacy-gliner2/minilm-small"]
    assert (folder / COMPACT).stat().st_size < 30 * 2**20 and (folder / "MODEL.md").is_file()
    assert any(k.endswith(SCALE) for k in load_file(str(folder / COMPACT)))


def test_the_bundled_model_finds_what_it_was_trained_for():
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": "spacy-gliner2/minilm-small", "entities": ["person", "location"],
                                    "classifications": {"sentiment": ["negative", "positive"]}})
    doc = nlp("Angela Merkel flew to Madrid on Monday and loved the trip.")
    assert ("Angela Merkel", "person") in [(e.text, e.label_) for e in doc.ents]
    assert ("Madrid", "location") in [(e.text, e.label_) for e in doc.ents]
    assert doc.cats["positive"] > doc.cats["negative"]
