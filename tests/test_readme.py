"""README's config example builds the pipeline it describes."""
import re
from pathlib import Path

import spacy

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_example(bert_checkpoint):
    block = re.search(r"```ini\n(.*?)```", README.read_text(encoding="utf8"), re.S).group(1)
    config = spacy.util.load_config_from_str(block)
    config["components"]["gliner2"]["model"] = str(bert_checkpoint)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    pipe = nlp.get_pipe("gliner2")
    assert {e.name: e.threshold for e in pipe.schema.entities} == {"city": 0.6, "company": None, "person": None}
    topic = [t for t in pipe.schema.classifications if t.name == "topic"][0]
    assert topic.multi_label and topic.threshold == 0.4
    assert [f.name for f in pipe.schema.structures[0].fields] == ["name", "price", "category"]
    doc = nlp("Apple CEO Tim Cook unveiled the iPhone 15 in Cupertino. It costs $799.")
    assert set(doc._.gliner2["relations"]) == {"works_for"}
    assert {k.split(":")[0] for k in doc.cats} == {"sentiment", "topic"}
