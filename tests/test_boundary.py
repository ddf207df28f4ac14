"""GLiNER2.5 "boundary" checkpoints in the ``gliner2`` factory: classification (stage 0)."""
import pytest
import spacy
from boundary_checkpoints import VARIANTS, build_boundary_checkpoint

from spacy_gliner2.schema import SchemaError

gliner2 = pytest.importorskip("gliner2")
from test_parity import assert_same, reference_schema, to_our_shape  # noqa: E402

CONFIG = {
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
    "The startup raised money to build travel software for business trips across Europe and Asia.",
]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def boundary(request, tmp_path_factory):
    path = build_boundary_checkpoint(tmp_path_factory.mktemp(f"boundary-{request.param}"), request.param,
                                     seed=sorted(VARIANTS).index(request.param))
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(path), **CONFIG})
    return path, nlp, gliner2.AutoExtractor.from_pretrained(str(path))


def reference_outputs(reference, texts):
    schema, ref_schema = reference_schema(CONFIG)
    return [to_our_shape(reference.extract(t, ref_schema, include_confidence=True), schema, t) for t in texts]


def test_classification_matches_the_reference_one_text_at_a_time(boundary):
    _, nlp, reference = boundary
    expected = reference_outputs(reference, TEXTS)
    for text, want in zip(TEXTS, expected):
        assert_same(nlp(text)._.gliner2, want, text)


def test_batch_of_8_equals_one_by_one(boundary):
    _, nlp, _ = boundary
    one = [nlp(t)._.gliner2 for t in TEXTS]
    many = [d._.gliner2 for d in nlp.pipe(TEXTS, batch_size=8)]
    for a, b in zip(many, one):
        assert_same(a, b)


def test_extraction_tasks_are_refused_by_name(boundary):
    _, nlp, _ = boundary
    for section in ({"entities": ["person"]}, {"relations": ["works_for"]}, {"structures": {"p": ["name::str"]}}):
        with pytest.raises(SchemaError, match="GLiNER2.5 'boundary' checkpoint"):
            nlp.get_pipe("gliner2")(nlp.make_doc("Tim Cook works for Apple."), **section)


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
    for text, want in zip(TEXTS[:3], reference_outputs(exported, TEXTS[:3])):
        assert_same(nlp(text)._.gliner2, want, text)


def test_training_a_boundary_checkpoint_is_refused(boundary):
    from spacy.training import Example

    _, nlp, _ = boundary
    doc = nlp.make_doc(TEXTS[0])
    reference = nlp.make_doc(TEXTS[0])
    reference.cats = {"sentiment:positive": 1.0}
    with pytest.raises(ValueError, match="training supports GLiNER2 'span' checkpoints"):
        nlp.get_pipe("gliner2").update([Example(doc, reference)])
