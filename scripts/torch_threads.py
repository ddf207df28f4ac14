"""spaCy ``--code`` file: a ``[initialize.before_init]`` callback that sets torch's CPU threads.

    python -m spacy train configs/gliner2-ner.cfg --code scripts/torch_threads.py \\
        --initialize.before_init.n_threads 1

On a CPU shared with other busy processes, torch's default (one thread per core) can make every
step several times slower than one thread (threads wait for each other while the other
processes hold the cores); ``n_threads = 0`` keeps torch's default.
"""
from spacy.language import Language
from spacy.util import registry


@registry.callbacks("gliner2_project.torch_threads.v1")
def make_torch_threads(n_threads: int = 0):
    def set_torch_threads(nlp: Language) -> Language:
        if n_threads > 0:
            import torch

            torch.set_num_threads(n_threads)
        return nlp

    return set_torch_threads
