"""In-context examples retrieved per text (nearest_examples): the choice, and both families using it."""
import pytest
import spacy
import torch
from spacy.training import Example

from spacy_gliner2.core.neighbours import example_schemas, nearest
from spacy_gliner2.schema import Schema, SchemaError

POOL = [["The striker scored twice in the final.", "sports"], ["Parliament passed the budget.", "politics"],
        ["The goalkeeper saved a penalty.", "sports"], ["The minister resigned today.", "politics"],
        ["A new vaccine trial began.", "science"]]
TEXTS = ["The goalkeeper saved the ball in the last minute.", "The minister spoke in parliament.",
         "Researchers began a new trial.", "The striker scored twice in the final."]


def test_nearest_rows_by_similarity_with_exclusions():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    queries = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    assert nearest(queries, keys, 2) == [[2, 0], [1, 2]]  # 0.96, 0.8 | 1.0, 0.8
    exclude = torch.tensor([[True, False, False], [False, False, False]])
    assert nearest(queries, keys, 2, exclude) == [[2, 1], [1, 2]]
    assert nearest(queries, keys, 9, torch.ones(2, 3, dtype=torch.bool)) == [[], []]  # never more than allowed
    assert nearest(queries, keys, 9, chunk=1) == [[2, 0, 1], [1, 2, 0]]


def test_each_text_gets_its_nearest_pool_examples_never_itself():
    schema = Schema.from_config(classifications={"topic": {"labels": ["sports", "politics", "science"],
                                                           "examples": POOL, "nearest_examples": 2},
                                                 "tone": ["calm", "angry"]})
    words = {w: i for i, w in enumerate(["striker", "keeper", "goalkeeper", "minister", "parliament", "trial", "vaccine"])}

    calls = []

    def embed(texts):  # bag of a few words: a similarity we can compute by hand
        calls.append(len(texts))
        vectors = torch.zeros(len(texts), len(words) + 1)
        for i, text in enumerate(texts):
            vectors[i, -1] = 0.1
            for w in text.lower().replace(".", "").split():
                if w in words:
                    vectors[i, words[w]] = 1.0
        return torch.nn.functional.normalize(vectors, dim=1)

    cache = {}
    per_text = example_schemas(schema, TEXTS, embed, cache)
    shown = [s.classifications[1].examples for s in per_text]  # tasks are sorted: tone, topic
    assert per_text[0].classifications[0] == schema.classifications[0]  # a task without a pool is as it was
    assert shown[0][0] == tuple(POOL[2])  # the goalkeeper
    assert {ex[0] for ex in shown[1]} == {POOL[1][0], POOL[3][0]}
    assert shown[2][0] == tuple(POOL[4])
    assert tuple(POOL[0]) not in shown[3] and len(shown[3]) == 2  # the text itself is in the pool: never chosen
    assert all(s.classifications[1].nearest_examples is None and len(s.classifications[1].examples) == 2 for s in per_text)
    example_schemas(schema, TEXTS[:1], embed, cache)
    assert calls == [4, 5, 1]  # the pool is embedded once (cached), the texts once per call


def test_nearest_examples_needs_a_pool_and_a_count():
    with pytest.raises(SchemaError, match="pool of labelled examples"):
        Schema.from_config(classifications={"t": {"labels": ["a", "b"], "nearest_examples": 2}})
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(SchemaError, match="nearest_examples"):
            Schema.from_config(classifications={"t": {"labels": ["a", "b"], "examples": [["x", "a"]], "nearest_examples": bad}})


def _fixed(config, examples):
    return {**config, "examples": [list(e) for e in examples], "nearest_examples": None}


@pytest.mark.parametrize("family", ["gliner2", "gliclass"])
def test_the_pipeline_prompts_each_text_with_its_own_nearest_examples(family, bert_checkpoint, gliclass_checkpoint):
    """Each Doc's result equals that Doc run with its chosen examples as fixed ones; batched equals one by one."""
    path = bert_checkpoint if family == "gliner2" else gliclass_checkpoint
    task = {"labels": ["sports", "politics", "science"], "examples": POOL, "nearest_examples": 2}
    config = {"model": str(path), "classifications": {"topic": task}}
    if family == "gliner2":
        config.update(entities=None, structures=None, relations=None)
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe(family, config=config)
    docs = list(nlp.pipe(TEXTS, batch_size=4))
    chosen = pipe.runner.example_schemas(pipe.schema, TEXTS)
    assert len({s.classifications[0].examples for s in chosen}) > 1  # the texts do not all get the same examples
    for doc, schema in zip(docs, chosen):
        fixed = nlp(doc.text, component_cfg={family: {"classifications": {"topic": _fixed(task, schema.classifications[0].examples)}}})
        assert doc.cats == pytest.approx(fixed.cats, abs=1e-5)  # batched vs alone: float noise only
        assert nlp(doc.text).cats == pytest.approx(doc.cats, abs=1e-5)
    # the query embedding is the encoder's mean-pooled hidden states: chosen by hand here
    pool = pipe.runner.embed([t for t, _ in POOL])
    query = pipe.runner.embed(TEXTS[:1])
    best = (query @ pool.T)[0].topk(2).indices.tolist()
    assert [POOL[i][0] for i in best] == [t for t, _ in chosen[0].classifications[0].examples]


def test_training_with_nearest_examples_runs_and_leaves_a_texts_own_example_out(bert_checkpoint):
    nlp = spacy.blank("en")
    task = {"labels": ["sports", "politics", "science"], "examples": POOL, "nearest_examples": 2}
    pipe = nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": None, "structures": None,
                                           "relations": None, "classifications": {"topic": task}})
    examples = []
    for text, label in POOL:
        doc = nlp.make_doc(text)
        examples.append(Example.from_dict(doc, {"cats": {lab: float(lab == label) for lab in task["labels"]}}))
    nlp.initialize(lambda: examples)
    before = {k: v.clone() for k, v in pipe.runner.model.state_dict().items()}
    losses = nlp.update(examples, sgd=nlp.create_optimizer())
    assert losses["gliner2"] > 0
    assert any(not torch.equal(before[k], v) for k, v in pipe.runner.model.state_dict().items())
    seen = []  # the prompts training encodes: each text with 2 examples, never its own
    windows = pipe.runner.windows
    pipe.runner.windows = lambda texts, words, schema, *a: seen.append((texts[0], schema)) or windows(texts, words, schema, *a)
    nlp.update(examples, sgd=nlp.create_optimizer())
    assert sorted(text for text, _ in seen) == sorted(t for t, _ in POOL)
    for text, schema in seen:
        shown = [t for t, _ in schema.classifications[0].examples]
        assert text not in shown and len(shown) == 2


def test_embeddings_are_mean_pooled_states_unmoved_by_padding(bert_checkpoint):
    nlp = spacy.blank("en")
    runner = nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["x"]}).runner
    alone = runner.embed([TEXTS[0]])
    beside = runner.embed([TEXTS[0], " ".join(["word"] * 200), ""])
    assert torch.allclose(alone[0], beside[0], atol=1e-5) and torch.allclose(beside.norm(dim=1), torch.ones(3))
    tok = runner.tokenizer
    ids = torch.tensor([[tok.cls_token_id, *tok(TEXTS[0], add_special_tokens=False)["input_ids"], tok.sep_token_id]])
    with torch.no_grad():
        hidden = runner.model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
    assert torch.allclose(alone[0], torch.nn.functional.normalize(hidden.mean(0), dim=0), atol=1e-5)


def test_a_long_pool_example_splits_every_batch_alike(bert_checkpoint):
    """Whether a prompt runs task by task depends on the schema's longest prompt, not on the batch."""
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"]})
    limit = pipe.runner.max_tokens
    long_example = " ".join(["word"] * (limit * 2 // 3))
    schema = {"entities": ["person"], "classifications": {"t": {
        "labels": ["a", "b"], "examples": [["A short note.", "a"], [long_example, "b"]], "nearest_examples": 1}}}
    parsed = pipe.schema_for(schema)
    alone = nlp("A short text.", component_cfg={"gliner2": dict(schema)})
    together = list(nlp.pipe(["A short text.", "word word word"], component_cfg={"gliner2": dict(schema)}))
    assert alone.cats == pytest.approx(together[0].cats, abs=1e-5)
    assert len(pipe.runner.passes(parsed, pipe.runner.example_schemas(parsed, ["A short text."]))) == 2


@pytest.mark.parametrize("family", ["gliner2", "gliclass"])
def test_a_trained_pipeline_retrieves_as_it_does_after_saving_and_loading(family, bert_checkpoint, gliclass_checkpoint,
                                                                          tmp_path):
    """Predictions after training embed the pool with the trained weights (as a reloaded pipeline
    does); training steps keep the vectors they retrieved by."""
    nlp = spacy.blank("en")
    task = {"labels": ["sports", "politics", "science"], "examples": POOL, "nearest_examples": 2}
    model = bert_checkpoint if family == "gliner2" else gliclass_checkpoint
    extra = {"entities": None, "structures": None, "relations": None} if family == "gliner2" else {}
    pipe = nlp.add_pipe(family, config={"model": str(model), **extra, "classifications": {"topic": task},
                                        "training": {"encoder_lr": 1e-3, "head_lr": 1e-3}})
    examples = [Example.from_dict(nlp.make_doc(text), {"cats": {lab: float(lab == label) for lab in task["labels"]}})
                for text, label in POOL]
    optimizer = nlp.initialize(lambda: examples)
    texts = [f"{text} Again." for text, _ in POOL]
    list(nlp.pipe(texts))  # vectors embedded before training
    embedded = []
    embed = pipe.runner.embed
    pipe.runner.embed = lambda batch: embedded.append(list(batch)) or embed(batch)
    for _ in range(2):
        nlp.update(examples, sgd=optimizer)
    assert sum(len(batch) > 1 for batch in embedded) == 1  # the training pool, embedded once for both steps
    trained = [doc.cats for doc in nlp.pipe(texts)]
    nlp.to_disk(tmp_path / "p")
    reloaded = [doc.cats for doc in spacy.load(tmp_path / "p").pipe(texts)]
    for mine, theirs in zip(trained, reloaded):
        assert mine.keys() == theirs.keys() and all(abs(mine[k] - theirs[k]) < 1e-5 for k in mine)
