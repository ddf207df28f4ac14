"""Shared fixtures: tiny random-weight checkpoints built by the reference packages."""
from pathlib import Path

import pytest
from checkpoints import build_reference_checkpoint
from gliclass_checkpoints import build_gliclass_checkpoint


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """Build (once per session) a checkpoint for ``(encoder, counting_layer)``."""
    built = {}

    def get(encoder: str = "bert", counting_layer: str = "count_lstm") -> Path:
        key = (encoder, counting_layer)
        if key not in built:
            path = tmp_path_factory.mktemp(f"{encoder}-{counting_layer}")
            built[key] = build_reference_checkpoint(path, encoder=encoder, counting_layer=counting_layer)
        return built[key]

    return get


@pytest.fixture(scope="session")
def bert_checkpoint(checkpoint_factory) -> Path:
    return checkpoint_factory("bert", "count_lstm")


@pytest.fixture(scope="session", params=["bert", "deberta"])
def property_nlp(request, checkpoint_factory):
    """A pipeline whose schema every property test sets per call: on BERT (the standard
    transformers forward) and on DeBERTa-v3 (our packed fast path, what released checkpoints run)."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(checkpoint_factory(request.param, "count_lstm"))})
    return nlp


@pytest.fixture(scope="session")
def plain_encoder(tmp_path_factory) -> Path:
    from checkpoints import build_plain_encoder

    return build_plain_encoder(tmp_path_factory.mktemp("plain-encoder"))


@pytest.fixture(scope="session")
def gliclass_checkpoint(tmp_path_factory) -> Path:
    """A GLiClass checkpoint built by ``gliclass``: BERT encoder (256 positions), labels first,
    average text pooling (padding-sensitive in the reference), mlp scorer."""
    folder = tmp_path_factory.mktemp("gliclass-bert")
    return build_gliclass_checkpoint(folder, "bert", prompt_first=True, pooling_strategy="avg", scorer_type="mlp")


@pytest.fixture(scope="session")
def boundary_checkpoint(tmp_path_factory) -> Path:
    """A GLiNER2.5 boundary checkpoint built by ``gliner2`` (as exports of the released ones require);
    its abstention head rarely fires (the contract tests are not about it)."""
    pytest.importorskip("gliner2")
    from boundary_checkpoints import build_boundary_checkpoint

    return build_boundary_checkpoint(tmp_path_factory.mktemp("boundary-released"), "released", null_bias=-2.0)
