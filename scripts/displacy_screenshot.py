"""Render the displaCy view of a Doc to HTML and take a screenshot of it with headless Chromium.

    python scripts/displacy_screenshot.py docs/displacy.html docs/displacy.png [--pipeline PATH --text TEXT]

With ``--pipeline`` (a saved pipeline with a ``gliner2`` component) the Doc is that pipeline's
output. Without it, the result is written by hand (below) and put on the Doc by the component's
own writing code (``doc.ents``, ``doc.spans``, ``doc.cats``, ``doc._.gliner2``): no trained model
ships yet, and a random-weight one shows noise. Needs Chromium (Debian: ``apt-get install chromium``).
"""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import spacy

from spacy_gliner2.core.annotate import register_extension
from spacy_gliner2.display import render
from spacy_gliner2.gliner2.annotate import EXTENSION, annotate
from spacy_gliner2.schema import Schema

TEXT = "Tim Cook met Angela Merkel in Berlin on Monday to discuss the new Apple factory in Grünheide."


def _span(text: str, phrase: str, confidence: float) -> dict:
    start = text.index(phrase)
    return {"text": phrase, "confidence": confidence, "start": start, "end": start + len(phrase)}


def example_doc(nlp: "spacy.Language"):
    """A hand-written GLiNER2 result, written onto a Doc as the component writes it."""
    schema = Schema.from_config(
        entities=["person", "organization", "location", "date"],
        classifications={"topic": ["business", "politics", "sports"]},
        structures={"meeting": ["participants::list", "place::str", "kind::[business|state visit]::str"]},
        relations=["met with"])
    t = TEXT
    result = {
        "entities": {"person": [_span(t, "Tim Cook", 0.97), _span(t, "Angela Merkel", 0.98)],
                     "organization": [_span(t, "Apple", 0.91), _span(t, "Apple factory", 0.34)],
                     "location": [_span(t, "Berlin", 0.95), _span(t, "Grünheide", 0.88)],
                     "date": [_span(t, "Monday", 0.86)]},
        "classifications": {"topic": {"label": "business", "confidence": 0.81}},
        "structures": {"meeting": [{"participants": [_span(t, "Tim Cook", 0.93), _span(t, "Angela Merkel", 0.95)],
                                    "place": _span(t, "Berlin", 0.9),
                                    "kind": {"text": "business", "confidence": 0.72}}]},
        "relations": {"met with": [{"head": _span(t, "Tim Cook", 0.9), "tail": _span(t, "Angela Merkel", 0.87)}]},
    }
    probs = {"topic": {"business": 0.81, "politics": 0.62, "sports": 0.03}}
    register_extension(EXTENSION)
    doc = nlp.make_doc(t)
    annotate(doc, result, probs, schema, spans_key="gliner2", ents_policy="prefer_new", alignment_mode="strict")
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--pipeline", type=Path, help="a saved pipeline with a gliner2 component")
    parser.add_argument("--text", default=TEXT)
    args = parser.parse_args()
    doc = spacy.load(args.pipeline)(args.text) if args.pipeline else example_doc(spacy.blank("en"))
    args.html.parent.mkdir(parents=True, exist_ok=True)
    args.html.write_text(render(doc, page=True), encoding="utf8")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit(f"wrote {args.html}; no Chromium found for the screenshot (apt-get install chromium)")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={args.png.resolve()}", "--window-size=1000,480",
                    args.html.resolve().as_uri()], check=True, capture_output=True)
    print(f"wrote {args.html} and {args.png}")


if __name__ == "__main__":
    main()
