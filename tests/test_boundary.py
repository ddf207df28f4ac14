"""GLiNER2.5 "boundary" checkpoints in the ``gliner2`` factory: classification, entities, structures,
relations and span attributes on the shared candidate pool (the released checkpoints' path) and on
per-query proposals (the library's default), against ``gliner2`` 2.1.0 itself."""
import json
import math
import random

import pytest
import spacy
import torch
from boundary_checkpoints import VARIANTS, build_boundary_checkpoint

from spacy_gliner2.schema import SchemaError

gliner2 = pytest.importorskip("gliner2")
from test_parity import _span, assert_same, reference_schema, to_our_shape  # noqa: E402

ENTITIES = {"person": "a named human being", "company": "a business", "location": None,
            "product": {"threshold": 0.6}}
STRUCTURES = {"product_info": ["name::str::the product name", "price::str", "features::list",
                              "condition::[new|used]::str", "tags::[cheap|premium|great]::list"]}
RELATIONS = {"works_for": "a person employed by a company", "located_in": None}
CONFIG = {
    "entities": ENTITIES,
    "structures": STRUCTURES,
    "relations": RELATIONS,
    "classifications": {
        "sentiment": ["positive", "negative", "neutral"],
        "topics": {"labels": {"tech": "technology and gadgets", "business": "companies and markets", "travel": "trips"},
                   "multi_label": True, "threshold": 0.4},
        "urgency": {"labels": ["low", "high"], "prompt": "How urgent is this?"},
    },
}
TEXTS = [
    "Apple CEO Tim Cook announced the iPhone 15 in Cupertino on Tuesday.",
    "Maria Garcia works for Google in London and loves the new Pixel phone",
    "The laptop costs $999 and the battery lasts ten hours. Great value!",
    "Steve Jobs founded Apple with Steve Wozniak in 1976; they lived in California.",
    "Amazon opened an office in Berlin. Jeff Bezos was not there.",
    "Our flight to Rome was cancelled twice, the refund never came.",
    "Quarterly revenue rose by nine percent.",
    "A quiet day.",
    "Hi",
    "The startup raised money to build travel software for business trips across Europe and Asia.",
    "Maria Garcia blogs at https://maria.example.org/blog",  # the appended period joins a final URL
    "Tim Cook",  # no final punctuation: spans that end on the appended period
]


def raw_logits(path, config):
    """Our model's abstention and relation logits for the tests' labels and texts (built with both
    biases 0, so these are the logits less their bias)."""
    nlp = spacy.blank("en")
    model = nlp.add_pipe("gliner2", config={"model": str(path), **config}).runner.model
    seen = {"null": [], "relation": [torch.zeros(0)]}
    hooks = [model.boundary_head.null_projection.register_forward_hook(lambda m, a, out: seen["null"].append(out.flatten()))]
    if hasattr(model, "relation_scorer"):
        hooks.append(model.relation_scorer.register_forward_hook(lambda m, a, out: seen["relation"].append(out)))
    list(nlp.pipe(TEXTS))
    for hook in hooks:
        hook.remove()
    return torch.cat(seen["null"]), torch.cat(seen["relation"])


def between(values, share):
    """A cut with ``share`` of ``values`` below it, midway between two of them (no value sits on it)."""
    ordered = values.sort().values
    k = min(max(int(share * len(ordered)), 1), len(ordered) - 1)
    return float(ordered[k - 1] + ordered[k]) / 2


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def boundary(request, tmp_path_factory):
    """The variant built by the reference, with biases set so that about a third of the (label, text)
    pairs of the tests abstain and half of the proposed relation pairs pass: abstention and relations
    take part, and there is still output."""
    variant = request.param
    folder, seed = tmp_path_factory.mktemp(f"boundary-{variant}"), 0
    probe = build_boundary_checkpoint(folder / "probe", variant, seed, null_bias=0.0, relation_bias=0.0)
    null, relation = raw_logits(probe, CONFIG)
    biases = {"null_bias": -between(null, 2 / 3), "relation_bias": -between(relation, 1 / 2)}
    path = build_boundary_checkpoint(folder / "checkpoint", variant, seed, **biases)
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(path), **CONFIG})
    nlp.variant = variant
    return path, nlp, gliner2.AutoExtractor.from_pretrained(str(path))


def reference_outputs(reference, texts, config):
    """The reference's ``extract()``, one text at a time, in ``doc._.gliner2``'s shape; boundary relations
    carry their own confidence."""
    schema, ref_schema = reference_schema(config)
    outputs = []
    for text in texts:
        ref = reference.extract(text, ref_schema, include_confidence=True, include_spans=True)
        out = to_our_shape(ref, schema, text)
        for r in schema.relations:  # keyed by the name alone (span checkpoints add the description)
            pairs = [(_span(p["head"], text), _span(p["tail"], text), p["confidence"])
                     for p in ref.get("relation_extraction", {}).get(r.name, [])]
            out["relations"][r.name] = [{"head": _ordered(h), "tail": _ordered(t), "confidence": c}
                                        for h, t, c in pairs if h and t]
        outputs.append(out)
    return outputs


def _ordered(span):
    return {key: span[key] for key in ("text", "confidence", "start", "end")}


def test_outputs_match_the_reference_one_text_at_a_time(boundary):
    _, nlp, reference = boundary
    config = CONFIG
    found, relations, fields = 0, 0, []
    for text, want in zip(TEXTS, reference_outputs(reference, TEXTS, config)):
        ours = nlp(text)._.gliner2
        if any(math.isnan(s["confidence"]) for spans in want["entities"].values() for s in spans):
            # the reference's defect: with soft-max span content and candidate attention, a text with
            # fewer spans than pool_size pads its pool, the padding's content is NaN and attention
            # spreads it to every candidate. Ours scores only real candidates.
            assert nlp.variant == "full" and len(text.split()) < 10
            assert all(math.isfinite(s["confidence"]) for spans in ours["entities"].values() for s in spans)
            continue
        assert_same(ours, want, text)
        found += sum(map(len, want["entities"].values()))
        relations += sum(map(len, want["relations"].values()))
        fields += [v for instance in want["structures"].get("product_info", []) for v in instance.values() if v]
    assert found >= 3 or "entities" not in config  # not vacuous
    if "relations" in config:
        assert relations > 3
    if "structures" in config:
        assert any(isinstance(v, dict) and "start" not in v for v in fields)  # a choice was made
        assert any(isinstance(v, list) and v for v in fields)


def test_abstention_and_count_fill_take_part(boundary):
    """The comparison above covers labels that abstain and labels that do not, the count head's
    fill where the checkpoint asks for it, and on per-query checkpoints queries with candidate
    sets of their own."""
    path, nlp, _ = boundary
    variant, nlp = nlp.variant, spacy.blank("en")  # a fresh pipeline: nothing cached
    model = nlp.add_pipe("gliner2", config={"model": str(path), **CONFIG}).runner.model
    seen = []
    hook = model.boundary_head.register_forward_hook(lambda module, args, out: seen.append(out))
    list(nlp.pipe(TEXTS))
    hook.remove()
    abstains = [a for c in seen for a in c.abstains]
    assert any(abstains) and not all(abstains)
    if VARIANTS[variant].get("adaptive_threshold"):
        assert any(f > 0 for c in seen for f in c.fill)
    per_query = VARIANTS[variant].get("candidate_pool", "per_query") == "per_query"
    assert all(c.shared != per_query for c in seen)
    if per_query:
        assert any((c.spans[0] != c.spans[1]).any() for c in seen if len(c.spans) > 1)


def test_long_text_windows_merge_by_the_checkpoints_policy(boundary):
    """Windows merged on document offsets with the checkpoint's own overlap policy."""
    from spacy_gliner2.core.overlap import resolve

    path, nlp, _ = boundary
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("gliner2", config={"model": str(path), "entities": ENTITIES, "window_size": 30, "window_overlap": 10})
    policy = pipe.runner.model.settings.boundary.overlap_policy
    text = " ".join(TEXTS * 4)
    doc = nlp(text)
    jobs, _ = pipe.runner.windows([text], [pipe._words(nlp.make_doc(text))], pipe.schema, 30, 10)
    assert len(jobs) > 3
    for label, found in doc._.gliner2["entities"].items():
        scored = [(s["confidence"], s["start"], s["end"]) for s in found]
        assert resolve(scored, policy) == scored  # already resolved: the policy keeps all
    ends = [s["end"] for found in doc._.gliner2["entities"].values() for s in found]
    assert max(ends) > 0.75 * len(text) and min(ends) < 0.25 * len(text)  # found all along


def test_batch_of_8_equals_one_by_one(boundary):
    _, nlp, _ = boundary
    one = [nlp(t)._.gliner2 for t in TEXTS]
    many = [d._.gliner2 for d in nlp.pipe(TEXTS, batch_size=8)]
    for a, b in zip(many, one):
        assert_same(a, b)


def test_relations_need_the_relation_head(tmp_path):
    path = build_boundary_checkpoint(tmp_path / "no-relations", "released")
    config = json.loads((path / "config.json").read_text())
    config["boundary_head"]["enable_relations"] = False
    (path / "config.json").write_text(json.dumps(config))
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("gliner2", config={"model": str(path), "entities": ["person"]})
    assert nlp("Tim Cook works for Apple.")._.gliner2["entities"] is not None  # unused weights are kept
    with pytest.raises(SchemaError, match="has no relation head"):
        pipe(nlp.make_doc("Tim Cook works for Apple."), relations=["works_for"])
    del config["config_version"]  # an old config: no relation head, and none in the weights either
    config["boundary_head"].pop("enable_relations")
    (path / "config.json").write_text(json.dumps(config))
    from spacy_gliner2.gliner2.checkpoint import read_settings

    assert not read_settings(path)[0].boundary.enable_relations


def test_saved_pipeline_and_export_keep_every_weight(boundary, tmp_path):
    """to_disk / spacy.load, and the exported folder, load in the reference with the same outputs:
    the extraction heads we do not run are written back unchanged."""
    from safetensors.torch import load_file

    path, nlp, _ = boundary
    nlp.to_disk(tmp_path / "pipe")
    again = spacy.load(tmp_path / "pipe")
    assert [d._.gliner2 for d in again.pipe(TEXTS)] == [d._.gliner2 for d in nlp.pipe(TEXTS)]
    again.get_pipe("gliner2").runner.save(tmp_path / "exported")
    original, written = load_file(str(path / "model.safetensors")), load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert original.keys() == written.keys()
    assert all(original[k].equal(written[k]) for k in original)
    exported = gliner2.AutoExtractor.from_pretrained(str(tmp_path / "exported"))
    assert type(exported).__name__ == "BoundaryExtractor"
    for text, want in zip(TEXTS[:3], reference_outputs(exported, TEXTS[:3], CONFIG)):
        assert_same(nlp(text)._.gliner2, want, text)


def test_training_a_boundary_checkpoint_is_refused(boundary):
    from spacy.training import Example

    _, nlp, _ = boundary
    doc = nlp.make_doc(TEXTS[0])
    reference = nlp.make_doc(TEXTS[0])
    reference.cats = {"sentiment:positive": 1.0}
    with pytest.raises(ValueError, match="training supports GLiNER2 'span' checkpoints"):
        nlp.get_pipe("gliner2").update([Example(doc, reference)])


@pytest.mark.parametrize("policy", ["flat", "nested", "longest"])
def test_overlap_policies_equal_the_references(policy):
    """Random spans with many ties in score and boundaries: the same spans in the same order."""
    from gliner2.inference.overlap import resolve_overlaps

    from spacy_gliner2.core.overlap import resolve

    rng = random.Random(policy)
    for _ in range(300):
        spans = []
        for _ in range(rng.randint(0, 25)):
            start = rng.randint(0, 20)
            spans.append((rng.choice([0.5, 0.6, 0.7, 0.9, rng.random()]), start, start + rng.randint(1, 6)))
        expected = resolve_overlaps(spans, policy, score=lambda x: x[0], start=lambda x: x[1], end=lambda x: x[2])
        assert resolve(spans, policy) == expected, spans


def test_stable_top_equals_a_stable_full_sort():
    """The candidate ranking's top-k gives the stable sort's first k, ties (masked slots, equal
    scores) included, for every k."""
    from spacy_gliner2.gliner2.boundary_layers import MASK_LOGIT, stable_top

    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        shape = [2, 3][: trial % 3] + [int(torch.randint(1, 40, (1,), generator=generator))]
        scores = torch.randint(0, 4, shape, generator=generator).float() if trial % 2 else torch.randn(shape, generator=generator)
        scores = scores.masked_fill(torch.rand(shape, generator=generator) < 0.3, MASK_LOGIT)
        for k in range(shape[-1] + 2):
            expected = torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :k]
            assert torch.equal(stable_top(scores, k), expected), (shape, k)


def test_flat_is_not_greedy():
    from spacy_gliner2.core.overlap import resolve

    assert resolve([(0.9, 0, 3), (0.6, 0, 1), (0.6, 2, 3)], "flat") == [(0.6, 0, 1), (0.6, 2, 3)]


ATTRIBUTES = {"sentiment": ["positive", "negative", "neutral"],
              "tags": {"labels": ["famous", "rich"], "multi_label": True, "threshold": 0.4, "applies_to": ["person"],
                       "qualify_labels": True}}


def test_span_attributes_match_the_reference(boundary):
    """Attribute labels join the prompt as entity labels and are scored at every kept entity span."""
    path, nlp, reference = boundary
    config = {"entities": ENTITIES, "entity_attributes": ATTRIBUTES, "structures": STRUCTURES}
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(path), **config})
    seen = set()
    for text, want in zip(TEXTS, reference_outputs(reference, TEXTS, config)):
        ours = nlp(text)._.gliner2
        if any(math.isnan(s["confidence"]) for spans in want["entities"].values() for s in spans):
            continue  # the reference's NaN defect (see above)
        assert_same(ours, want, text)
        seen |= {key for spans in want["entities"].values() for s in spans for key in s if key in ATTRIBUTES}
    assert seen == {"sentiment", "tags"}  # both groups were decided somewhere


def test_span_attributes_are_checked_and_refused_on_span_checkpoints(bert_checkpoint):
    from spacy_gliner2.schema import Schema

    for bad, message in [({"entity_attributes": {"g": ["a"]}}, "configure entities too"),
                         ({"entities": ["person"], "entity_attributes": {"text": ["a"]}}, "reserved"),
                         ({"entities": ["person"], "entity_attributes": {"g": ["a"], "h": ["a"]}}, "in both groups"),
                         ({"entities": ["person"], "entity_attributes": {"g": {"labels": ["a"], "applies_to": ["x"]}}},
                          "unknown entity types"),
                         ({"entities": ["person"], "entity_attributes": {"g": ["person"]}}, "qualify_labels"),
                         ({"entities": ["person"], "entity_attributes": {"g": {"labels": []}}}, "non-empty")]:
        with pytest.raises(SchemaError, match=message):
            Schema.from_config(**bad)
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": ["person"]})
    with pytest.raises(SchemaError, match="boundary"):
        pipe(nlp.make_doc("Tim Cook."), entity_attributes={"g": ["a"]})


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_fast_modes_run_on_boundary_checkpoints(precision, tmp_path):
    """The encoder's fast modes leave the boundary head to run as it does in exact mode."""
    path = build_boundary_checkpoint(tmp_path / "released", "released", null_bias=-2.0)
    exact, fast = spacy.blank("en"), spacy.blank("en")
    exact.add_pipe("gliner2", config={"model": str(path), **CONFIG})
    fast.add_pipe("gliner2", config={"model": str(path), **CONFIG, "precision": precision})
    for a, b in zip(exact.pipe(TEXTS), fast.pipe(TEXTS)):
        assert {k: list(v) for k, v in a._.gliner2.items()} == {k: list(v) for k, v in b._.gliner2.items()}
    found = [set((label, s["start"], s["end"]) for label, spans in d._.gliner2["entities"].items() for s in spans)
             for d in (exact(TEXTS[0]), fast(TEXTS[0]))]
    assert found[0] and len(found[0] & found[1]) >= len(found[0]) / 2  # mostly the same decisions
