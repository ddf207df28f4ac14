"""Where the model runs: the `device` setting, else spaCy's current ops (`spacy.require_gpu`), checked
on CPU with stand-in ops; on a machine with CUDA, a smoke test runs the pipeline there."""
import pytest
import spacy
import torch

from spacy_gliner2.core import component
from spacy_gliner2.core.component import choose_device


class CupyOps:  # the class names thinc's GPU ops have
    def __init__(self, device_id=0):
        self.device_id = device_id


class MPSOps:
    pass


class NumpyOps:
    pass


@pytest.fixture
def gpus(monkeypatch):
    """Pretend torch sees ``n`` CUDA GPUs."""
    def set_count(n):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return set_count


def test_follows_spacy_ops(gpus):
    gpus(2)
    assert choose_device(None, NumpyOps()) == torch.device("cpu")
    assert choose_device(None, CupyOps(0)) == torch.device("cuda", 0)
    assert choose_device(None, CupyOps(1)) == torch.device("cuda", 1)  # spacy.require_gpu(1)


def test_the_setting_wins_over_spacy_ops(gpus):
    gpus(2)
    assert choose_device("cpu", CupyOps(1)) == torch.device("cpu")
    assert choose_device("cuda:1", NumpyOps()) == torch.device("cuda", 1)
    assert choose_device("cuda", NumpyOps()) == torch.device("cuda")


def test_a_gpu_torch_cannot_use_is_a_clear_error(gpus, monkeypatch):
    gpus(0)
    with pytest.raises(ValueError, match="sees no CUDA GPU. Install a CUDA build of torch"):
        choose_device(None, CupyOps(0))
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        choose_device("cuda", NumpyOps())
    gpus(1)
    with pytest.raises(ValueError, match="torch sees 1 CUDA GPU"):
        choose_device("cuda:3", NumpyOps())
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no Apple GPU"):
        choose_device(None, MPSOps())


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda:x", "cuda:-1"])
def test_a_bad_device_setting_is_refused_when_the_pipe_is_added(bert_checkpoint, bad):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:N' or 'mps'"):
        nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"], "device": bad})


def test_the_component_moves_its_model_where_spacy_says(bert_checkpoint, monkeypatch):
    chosen = []
    monkeypatch.setattr(component, "choose_device", lambda device, ops: chosen.append((device, type(ops).__name__))
                        or torch.device("cpu"))
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"], "device": "cpu"})
    nlp("Ada met Tim.")
    assert chosen == [("cpu", "NumpyOps")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_smoke(bert_checkpoint, precision):
    texts = ["Ada Lovelace met Charles Babbage in London.", "Paris is in France."]
    config = {"model": str(bert_checkpoint), "entities": ["person", "city"], "threshold": 0.3}
    cpu = spacy.blank("en")
    cpu.add_pipe("gliner2", config=config)
    gpu = spacy.blank("en")
    gpu.add_pipe("gliner2", config={**config, "device": "cuda", "precision": precision})
    assert gpu.get_pipe("gliner2").runner.device.type == "cuda"
    for a, b in zip(cpu.pipe(texts), gpu.pipe(texts)):
        scores_a, scores_b = a.spans["gliner2"].attrs["scores"], b.spans["gliner2"].attrs["scores"]
        if precision == "fp32":
            assert [(s.start, s.end, s.label_) for s in a.spans["gliner2"]] == \
                [(s.start, s.end, s.label_) for s in b.spans["gliner2"]]
            assert scores_a == pytest.approx(scores_b, abs=1e-4)
        else:  # half precision: the same text runs through; most decisions agree
            assert b._.gliner2 is not None
