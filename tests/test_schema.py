"""Schema parsing and validation."""
import json

import pytest

from spacy_gliner2.schema import Field, Schema, SchemaError, parse_field


def test_full_schema():
    schema = Schema.from_config(
        entities={"person": "a human", "org": {"description": "a company", "threshold": 0.7}, "loc": None},
        classifications={
            "sentiment": ["positive", "negative"],
            "topic": {"labels": {"sports": "games", "politics": ""}, "multi_label": True, "threshold": 0.3},
        },
        structures={"product": ["name::str::the name", "tags::list", "kind::[phone|laptop]::str", {"name": "price", "threshold": 0.2}]},
        relations={"works_for": "employment", "born_in": None},
        threshold=0.4,
    )
    assert [e.name for e in schema.entities] == ["loc", "org", "person"]  # mapping keys sort
    assert schema.entities[1].threshold == 0.7 and schema.entities[2].description == "a human"
    assert [e.name for e in Schema.from_config(entities=["b", "a"]).entities] == ["b", "a"]
    topic = schema.classifications[1]
    assert topic.multi_label and topic.threshold == 0.3 and topic.descriptions == (("sports", "games"),)
    fields = schema.structures[0].fields
    assert fields[0] == Field("name", "str", None, "the name", None)
    assert fields[2] == Field("kind", "str", ("phone", "laptop"), None, None)
    assert fields[3].threshold == 0.2 and fields[3].dtype == "list"
    assert schema.relations[1].description == "employment"
    assert [k for *_, k in schema.cats_keys()] == [
        "sentiment:positive", "sentiment:negative", "topic:sports", "topic:politics"
    ]


def test_one_task_cats_keys_are_labels():
    schema = Schema.from_config(classifications={"s": ["a", "b"]})
    assert [k for *_, k in schema.cats_keys()] == ["a", "b"]


def test_json_and_list_forms_agree():
    as_json = Schema.from_json(json.dumps({"entities": ["a", "b"], "classifications": [{"task": "t", "labels": ["x", "y"]}]}))
    as_py = Schema.from_config(entities={"a": None, "b": None}, classifications={"t": ["x", "y"]})
    assert as_json == as_py


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("name", Field("name", "list")),
        ("name::str", Field("name", "str")),
        ("name::str::desc", Field("name", "str", None, "desc")),
        ("name::desc", Field("name", "list", None, "desc")),
        ("c::[a|b]", Field("c", "str", ("a", "b"))),
        ("c::[a|b]::list", Field("c", "list", ("a", "b"))),
        ("c::list::[a | b]::d", Field("c", "list", ("a", "b"), "d")),
    ],
)
def test_field_specs(spec, expected):
    assert parse_field(spec) == expected


@pytest.mark.parametrize("spec", ["price::float", "price::Str", "price::LIST::the price", "t::[a|b]::string",
                                  "n::int::how many"])
def test_a_type_name_that_is_not_a_field_type_is_refused_not_read_as_a_description(spec):
    with pytest.raises(SchemaError, match="reads as a type"):
        parse_field(spec)
    assert parse_field({"name": "price", "description": spec.split("::")[1]}).description == spec.split("::")[1]


@pytest.mark.parametrize("spec,description", [("due::str::date", "date"), ("body::list::text", "text"),
                                              ("price::str::number", "number")])
def test_a_type_name_after_an_explicit_type_is_a_description(spec, description):
    assert parse_field(spec).description == description


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"entities": ["a", "a"]}, "Duplicate"),
        ({"entities": ["[E] x"]}, "special tokens"),
        ({"entities": {"a": "see [SEP_TEXT]"}}, "special tokens"),
        ({"entities": {"a": {"threshold": 1.5}}}, r"\[0, 1\]"),
        ({"entities": {"a": {"threshold": -0.1}}}, r"\[0, 1\]"),
        ({"entities": {"a": {"colour": "red"}}}, "Unknown key"),
        ({"entities": ""}, "list of names"),
        ({"entities": [""]}, "must not be empty"),
        ({"threshold": 2}, r"\[0, 1\]"),
        ({"threshold": True}, "number"),
        ({"classifications": {"t": []}}, "no labels"),
        ({"classifications": {"t": ["a", "a"]}}, "Duplicate"),
        ({"classifications": {"t": {"labels": ["a"], "multi": True}}}, "Unknown key"),
        ({"classifications": {"t": {"labels": ["a"], "examples": [["text", "b"]]}}}, "not one of its labels"),
        ({"classifications": {"t": {"labels": ["a", "b"], "examples": [["text", ["a"]]]}}}, "needs a multi-label task"),
        ({"classifications": {"t": {"labels": ["a"], "multi_label": True, "examples": [["text", []]]}}}, "at least one label"),
        ({"classifications": {"t": {"labels": ["a"], "multi_label": True, "examples": [["text", ["a", "c"]]]}}}, "'c'.*not one of its labels"),
        ({"classifications": {"a": ["b:c"], "a:b": ["c"]}}, "same doc.cats key"),
        ({"structures": {"s": []}}, "non-empty list"),
        ({"structures": {"s": ["a::[x|y"]}}, "Malformed choices"),
        ({"structures": {"s": ["a::d1::d2"]}}, "'d1' is not a field type"),
        ({"structures": {"s": ["price::integer::the price"]}}, r"'integer' reads as a type, but field types are \['str', 'list'\]"),
        ({"structures": {"s": ["price::amount::the price"]}}, r"'amount' is not a field type \(one of \['str', 'list'\]\)"),
        ({"structures": {"s": ["a::str::the first::the second"]}}, "two description parts \\('the first' and 'the second'\\)"),
        ({"structures": {"s": [{"name": "a", "dtype": "int"}]}}, "dtype"),
        ({"structures": {"s": ["a", "a::str"]}}, "Duplicate"),
        ({"structures": {"s": ["a::[x|x]"]}}, "Duplicate"),
        ({"structures": {"s": ["::str"]}}, "must not be empty"),
        ({"relations": {"r": 3}}, "description string"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(SchemaError, match=message):
        Schema.from_config(**kwargs)


def test_multi_label_examples_take_label_lists():
    task = Schema.from_config(classifications={"t": {"labels": ["a", "b"], "multi_label": True,
                                                      "examples": [["x", ["a", "b"]], ["y", "b"]]}}).classifications[0]
    assert task.examples == (("x", ("a", "b")), ("y", "b"))


def test_empty():
    schema = Schema.from_config(entities=["a"], threshold=0.3)
    assert not schema.is_empty and Schema.from_config().is_empty


@pytest.mark.parametrize("config, message", [
    ({"entities": ["person", " person"]}, "differ only in surrounding spaces"),
    ({"classifications": {"t": ["a ", "a"]}}, "differ only in surrounding spaces"),
    ({"entities": {"person": None, " person": "a human"}}, "differ only in surrounding spaces"),
    ({"classifications": {"t": ["a"], "t ": ["b"]}}, "differ only in surrounding spaces"),
    ({"relations": {"works for": None, "works for ": None}}, "differ only in surrounding spaces"),
    ({"structures": {"s": ["f"], " s": ["g"]}}, "differ only in surrounding spaces"),
    ({"classifications": [{"task": ["x"], "labels": ["a"]}]}, "task name must be a string"),
    ({"entities": ["a"], "entity_attributes": {"s": {"labels": ["x"], "multi_label": "false"}}}, "multi_label .* true or false"),
    ({"entities": ["a"], "entity_attributes": {"s": {"labels": ["x"], "qualify_labels": 1}}}, "qualify_labels .* true or false"),
    ({"entities": ["a", "b"], "entity_attributes": {"s": {"labels": ["x"], "applies_to": "ab"}}}, "list of entity types"),
    ({"entities": ["a"], "entity_attributes": {"s": {"labels": ["x"], "applies_to": 5}}}, "list of entity types"),
    ({"entities": ["a"], "entity_attributes": {"s": {"labels": ["x"], "applies_to": [["a"]]}}}, "must be a string"),
])
def test_malformed_values_are_schema_errors_not_type_errors(config, message):
    with pytest.raises(SchemaError, match=message):
        Schema.from_config(**config)


def test_class_threshold_is_the_default_of_tasks_without_one():
    schema = Schema.from_config(classifications={"t": ["a", "b"], "u": {"labels": ["c"], "threshold": 0.2}},
                                class_threshold=0.8)
    assert [task.threshold for task in schema.classifications] == [0.8, 0.2]
    assert Schema.from_config(classifications={"t": ["a"]}).classifications[0].threshold == 0.5


def test_cats_are_read_in_either_key_form():
    one = Schema.from_config(classifications={"mood": ["sad", "glad"]})
    two = Schema.from_config(classifications={"mood": ["sad", "glad"], "topic": ["glad", "news"]})
    assert one.cats_in_form({"mood:sad": 1.0, "mood:glad": 0.0, "topic:news": 1.0}) == {"sad": 1.0, "glad": 0.0}
    assert one.cats_in_form({"sad": 0.2, "mood:sad": 0.9}) == {"sad": 0.2}  # its own form first
    # several tasks: a bare label is read only when one task has it ("glad" is in both)
    assert two.cats_in_form({"sad": 1.0, "glad": 1.0, "news": 0.0}) == {"mood:sad": 1.0, "topic:news": 0.0}
    assert two.judged({"sad": 1.0, "topic:glad": 1.0}) == {"mood": {"sad": 1.0}, "topic": {"glad": 1.0}}


def test_category_scores_read_gold_written_for_more_tasks():
    """Gold doc.cats of a two-task corpus scores a component that predicts one of the tasks."""
    import spacy
    from spacy.training import Example
    from spacy_gliner2.core.scoring import score_cats

    nlp = spacy.blank("en")
    schema = Schema.from_config(classifications={"mood": ["sad", "glad"]})
    examples = []
    for text, mood in [("Rain again.", "sad"), ("Sun!", "glad"), ("Snow.", "sad")]:
        predicted, reference = nlp.make_doc(text), nlp.make_doc(text)
        predicted.cats = {label: float(label == mood) for label in ("sad", "glad")}
        reference.cats = {**{f"mood:{label}": float(label == mood) for label in ("sad", "glad")}, "topic:news": 1.0}
        examples.append(Example(predicted, reference))
    assert score_cats(examples, schema)["cats_score"] == 1.0
