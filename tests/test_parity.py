"""Parity with the reference ``gliner2`` 2.1.0 on checkpoints it built and saved itself.

``doc._.gliner2`` must equal the reference's ``extract(text, schema,
include_confidence=True, include_spans=True)`` mapped onto our output shape:
same labels, same spans (offsets clamped to the text), confidences within 1e-4.
"""
import copy
import math
from typing import Any, Dict

import pytest
import spacy
import torch

from spacy_gliner2.gliner2.encoding import Encoder
from spacy_gliner2.gliner2.runner import GLiNER2Runner
from spacy_gliner2.gliner2.layers import CountLSTM
from spacy_gliner2.schema import Schema
from spacy_gliner2.text import normalized_words, split_words

gliner2 = pytest.importorskip("gliner2")

TEXTS = [
    "Apple CEO Tim Cook announced the iPhone 15 in Cupertino on September 12, 2023.",
    "Contact jane.doe@example.org or visit https://www.example.com/docs?id=42 for details",
    "The state-of-the-art model costs $1,299.99 -- a 15% drop; see www.deals.io!",
    "Angela Merkel met Emmanuel Macron in Berlin. They discussed trade. Later, Macron flew to Paris?",
    "Zürich-based Nestlé hired José Müller as CFO of its São Paulo unit",
    "東京 is the capital of Japan, and @tokyo_news reported it first",
    "no capital letters and no final period",
    "Microsoft acquired GitHub for 7.5 billion dollars in 2018. GitHub is used by developers.",
]

SCHEMAS: Dict[str, Dict[str, Any]] = {
    "entities": {
        "entities": {
            "person": "a named human being",
            "organization": {"description": "a company or institution", "threshold": 0.6},
            "location": {"threshold": 0.35},
            "date": None,
            "money": "an amount of money",
        }
    },
    "classification": {
        "classifications": {
            "sentiment": ["positive", "negative", "neutral"],
            "topic": {
                "labels": {"business": "companies and money", "politics": "government", "tech": "technology"},
                "multi_label": True,
                "threshold": 0.45,
            },
            "language": {"labels": ["english", "other"], "prompt": "which language is it"},
        }
    },
    "structures": {
        "structures": {
            "product": [
                "name::str::the product name",
                "price::str",
                "features::list::notable features",
                "category::[phone|laptop|service]::str",
                "tags::[new|used|refurbished]::list",
            ],
            "meeting": [{"name": "participants", "dtype": "list", "threshold": 0.3}, "place::str"],
        }
    },
    "relations": {"relations": {"works_for": "person employed by organization", "located_in": {"threshold": 0.4}, "acquired": None}},
    "composed": {
        "entities": {"person": "a human", "company": {"threshold": 0.55}, "place": None},
        "classifications": {
            "sentiment": ["positive", "negative"],
            "topics": {"labels": ["business", "science", "sport"], "multi_label": True},
        },
        "structures": {"deal": ["buyer::str", "target::str::the acquired company", "kind::[merger|acquisition]::str"]},
        "relations": ["founded", "works_for"],
        "threshold": 0.45,
    },
}

CHECKPOINTS = [(e, c) for e in ("bert", "deberta") for c in ("count_lstm", "count_lstm_v2", "count_lstm_moe")]


def reference_schema(config: Dict[str, Any]):
    """The same schema through the reference's own builder."""
    schema = Schema.from_config(**config)
    ref = gliner2.Schema()
    if schema.entities:
        ref.entities(
            {
                e.name: {k: v for k, v in (("description", e.description), ("threshold", e.threshold)) if v is not None}
                for e in schema.entities
            }
        )
    if schema.entity_attributes:
        from gliner2.inference.schema import AttributeGroup

        ref.entity_attributes({
            g.name: AttributeGroup(list(g.labels), g.multi_label, g.threshold,
                                   list(g.applies_to) if g.applies_to is not None else None, g.qualify_labels)
            for g in schema.entity_attributes})
    for s in schema.structures:
        builder = ref.structure(s.name)
        for f in s.fields:
            builder.field(
                f.name,
                dtype=f.dtype,
                choices=list(f.choices) if f.choices else None,
                description=f.description,
                threshold=f.threshold,
            )
    for t in schema.classifications:
        labels = dict(t.descriptions) if t.descriptions else list(t.labels)
        extras = {"prompt": t.prompt} if t.prompt else {}
        ref.classification(t.name, labels, multi_label=t.multi_label, cls_threshold=t.threshold, **extras)
    if schema.relations:
        ref.relations(
            {
                r.name: {k: v for k, v in (("description", r.description), ("threshold", r.threshold)) if v is not None}
                for r in schema.relations
            }
        )
    return schema, ref


def _span(item: Dict[str, Any], text: str):
    """Clamp a reference span to the text; None if it covers only the appended period."""
    if "start" not in item:
        return item  # choice fields carry no offsets
    start, end = min(item["start"], len(text)), min(item["end"], len(text))
    if end <= start:
        return None
    out = dict(item, start=start, end=end)
    if item["end"] > len(text):
        out["text"] = text[start:end]
    return out


def _distinct(spans):
    """The first of spans with the same offsets once clamped (one of them ended on the appended period)."""
    seen = set()
    return [x for x in spans if "start" not in x or ((x["start"], x["end"]) not in seen and not seen.add((x["start"], x["end"])))]


def to_our_shape(ref: Dict[str, Any], schema: Schema, text: str) -> Dict[str, Any]:
    """Map the reference payload onto ``doc._.gliner2``'s shape.

    The reference returns ``{}`` for a task whose predicted count is 0, keys a
    relation with a description as ``"name: description"``, and puts relations
    under ``relation_extraction``; we always give every configured name.
    """
    out: Dict[str, Any] = {"entities": {}, "classifications": {}, "structures": {}, "relations": {}}
    ents = ref.get("entities") or {}
    for e in schema.entities:
        out["entities"][e.name] = _distinct([s for s in map(lambda x: _span(x, text), ents.get(e.name, [])) if s])
    for t in schema.classifications:
        out["classifications"][t.name] = ref[t.name]
    for s in schema.structures:
        instances = []
        for inst in ref.get(s.name) or []:
            fields = {}
            for f in s.fields:
                value = inst.get(f.name)
                if isinstance(value, list):
                    fields[f.name] = _distinct([x for x in (_span(v, text) for v in value) if x])
                else:
                    fields[f.name] = _span(value, text) if value else None
            if any(v not in (None, []) for v in fields.values()):
                instances.append(fields)
        out["structures"][s.name] = instances
    rels = ref.get("relation_extraction", {})
    for r in schema.relations:
        key = f"{r.name}: {r.description}" if r.description else r.name
        pairs = []
        for pair in rels.get(key, []):
            head, tail = _span(pair["head"], text), _span(pair["tail"], text)
            if head and tail:
                pairs.append({"head": head, "tail": tail})
        out["relations"][r.name] = pairs
    return out


def assert_same(ours: Any, ref: Any, path: str = "") -> None:
    if isinstance(ref, dict):
        assert isinstance(ours, dict) and list(ours) == list(ref), f"{path}: keys {list(ours)} != {list(ref)}"
        for key in ref:
            assert_same(ours[key], ref[key], f"{path}.{key}")
    elif isinstance(ref, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(ref), f"{path}: {ours} != {ref}"
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(ref, float):
        assert math.isclose(ours, ref, abs_tol=1e-4), f"{path}: {ours} != {ref}"
    else:
        assert ours == ref, f"{path}: {ours!r} != {ref!r}"


@pytest.fixture(scope="module", params=CHECKPOINTS, ids=lambda p: "-".join(p))
def loaded(request, checkpoint_factory):
    path = checkpoint_factory(*request.param)
    return path, gliner2.GLiNER2.from_pretrained(str(path))


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_extract_matches_reference(loaded, name):
    path, reference = loaded
    config = SCHEMAS[name]
    schema, ref_schema = reference_schema(config)
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(path), **config})
    docs = list(nlp.pipe(TEXTS, batch_size=4))
    n_found = 0
    for text, doc in zip(TEXTS, docs):
        ref = reference.extract(text, ref_schema, threshold=schema.threshold, include_confidence=True, include_spans=True)
        expected = to_our_shape(ref, schema, text)
        assert_same(doc._.gliner2, expected, text)
        n_found += sum(len(v) for v in expected["entities"].values()) + sum(
            len(v) for section in ("structures", "relations") for v in expected[section].values()
        )
    if name != "classification":  # the comparison must not be vacuous
        assert n_found > 0


def test_input_ids_match_reference(loaded):
    path, reference = loaded
    extractor = GLiNER2Runner.load(str(path))
    encoder = Encoder(extractor.tokenizer)
    for config in SCHEMAS.values():
        schema, ref_schema = reference_schema(config)
        for text in TEXTS:
            record = reference.processor.transform_record(text, ref_schema)
            ours = encoder.encode(schema, normalized_words(text, split_words(text)))
            assert ours.input_ids == record.input_ids
            assert ours.word_pos == record.text_word_first_positions
            assert [[t.prompt_pos] + t.marker_pos for t in ours.tasks] == record.schema_special_positions


@pytest.mark.parametrize("count", [1, 3])
def test_count_unroll_equals_torch_gru(count):
    torch.manual_seed(count)
    layer = CountLSTM(32)
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    fields = torch.randn(2, 3, 32)
    positions = layer.pos_embedding.weight[:count, None].expand(-1, 6, -1).contiguous()
    expected, _ = layer.gru(positions, fields.reshape(1, 6, 32))
    unrolled = layer.unroll(fields, count)
    torch.testing.assert_close(unrolled, expected.view(count, 2, 3, 32), rtol=0, atol=1e-5)
    # training backpropagates through the unrolled steps: the same gradients as through nn.GRU
    params = [layer.gru.weight_ih_l0, layer.gru.weight_hh_l0, layer.gru.bias_ih_l0, layer.pos_embedding.weight]
    ours = torch.autograd.grad(unrolled.square().sum(), params)
    theirs = torch.autograd.grad(expected.square().sum(), params)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_count_unroll_keeps_its_input_gates_until_a_weight_changes():
    """At inference the GRU's input gates (weights only) are computed once and kept; an in-place
    update of a source weight (as an optimizer makes) rebuilds them; copies leave them out."""
    torch.manual_seed(0)
    layer = CountLSTM(32)
    fields = torch.randn(2, 3, 32)

    def reference(count):
        positions = layer.pos_embedding.weight[:count, None].expand(-1, 6, -1).contiguous()
        return layer.gru(positions, fields.reshape(1, 6, 32))[0].view(count, 2, 3, 32)

    with torch.no_grad():
        first = layer.unroll(fields, 3)
        assert "input_gates" in layer._derived  # the cached path ran
        torch.testing.assert_close(layer.unroll(fields, 2), reference(2), rtol=0, atol=1e-5)
        for weight in (layer.pos_embedding.weight, layer.gru.weight_ih_l0, layer.gru.bias_ih_l0):
            weight.add_(0.5)
            again = layer.unroll(fields, 3)
            torch.testing.assert_close(again, reference(3), rtol=0, atol=1e-5)
            assert not torch.allclose(again, first)
            first = again
    assert not hasattr(copy.deepcopy(layer), "_derived")
