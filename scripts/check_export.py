"""Check an exported GLiNER2 folder with the reference library: it loads offline and extracts.

    python scripts/check_export.py exported/gliner2-minilm --pipeline training/ner/model-best \\
        --output metrics/export-check.json

Loads the folder with ``gliner2.GLiNER2.from_pretrained`` (no Hub access), extracts entities
from a few sentences (written for this check, not from any data set) with the pipeline's
trained labels plus a few unseen ones, and fails if nothing at all is extracted. With
``--pipeline``, the same texts go through the spaCy pipeline too and the two must find the
same spans (labels and offsets) with confidences within ``--tolerance``.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import srsly  # noqa: E402
import torch  # noqa: E402

TEXTS = [
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday to talk about the European Union budget.",
    "The Social Democratic Party won the 1998 federal election in Germany.",
    "Shares of Siemens fell 3 percent in Frankfurt after the company cut its forecast.",
    "show me a comedy with jim carrey from the nineties",
    "is there a cheap italian restaurant near downtown boston that is open late",
]
EXTRA_LABELS = ["country", "politician", "political party", "election"]


def spans(result: dict) -> dict:
    """``{(label, start, end): confidence}`` from an ``entities`` result."""
    return {
        (label, s["start"], s["end"]): s["confidence"]
        for label, found in result.get("entities", {}).items()
        for s in found
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exported", type=Path, help="a folder written by `python -m spacy_gliner2 export`")
    parser.add_argument("--pipeline", type=Path, default=None, help="the spaCy pipeline it was exported from")
    parser.add_argument("--labels", nargs="*", default=None, help="entity labels (default: the pipeline's + a few unseen)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed confidence difference")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--output", type=Path, default=None, help="JSON report to write")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from gliner2 import GLiNER2
    except ImportError:
        sys.exit('The reference library is missing: pip install -e ".[test]" (it provides gliner2).')

    nlp = None
    labels = args.labels
    if args.pipeline is not None:
        import spacy

        nlp = spacy.load(args.pipeline)
        if labels is None:
            trained = [e.name for e in nlp.get_pipe("gliner2").schema.entities]
            labels = trained + [x for x in EXTRA_LABELS if x not in trained]
    if not labels:
        sys.exit("Give --labels or --pipeline (whose trained labels are then used).")

    reference = GLiNER2.from_pretrained(str(args.exported))
    report = {"exported": str(args.exported), "labels": labels, "threshold": args.threshold, "texts": []}
    found, mismatches = 0, 0
    for text in TEXTS:
        ref = reference.extract_entities(text, labels, threshold=args.threshold, include_confidence=True, include_spans=True)
        ref_spans = spans(ref)
        found += len(ref_spans)
        entry = {"text": text, "reference": sorted([lab, text[s:e], round(c, 4)] for (lab, s, e), c in ref_spans.items())}
        print(text)
        for label, span_text, conf in entry["reference"]:
            print(f"    {label:18s} {span_text!r} {conf:.3f}")
        if nlp is not None:
            # entities only, as extract_entities asks: the pipeline's other trained tasks (e.g. a
            # classification) would be part of the model's input and change the entity scores
            only_entities = {"entities": labels, "classifications": None, "structures": None, "relations": None}
            doc = nlp(text, component_cfg={"gliner2": {**only_entities, "threshold": args.threshold}})
            ours = spans(doc._.gliner2)
            same_keys = set(ours) == set(ref_spans)
            diff = max((abs(ours[k] - ref_spans[k]) for k in set(ours) & set(ref_spans)), default=0.0)
            entry["pipeline_agrees"] = same_keys and diff <= args.tolerance
            entry["max_confidence_difference"] = diff
            if not entry["pipeline_agrees"]:
                mismatches += 1
                entry["pipeline"] = sorted([lab, text[s:e], round(c, 4)] for (lab, s, e), c in ours.items())
                print(f"    MISMATCH with the spaCy pipeline: {entry['pipeline']} (max confidence diff {diff:.2e})")
        report["texts"].append(entry)
    report["entities_found"] = found
    report["pipeline_mismatches"] = mismatches if nlp is not None else None
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        srsly.write_json(args.output, report)
        print(f"wrote {args.output}")
    if not found:
        sys.exit(f"The reference library loaded {args.exported} but extracted nothing from {len(TEXTS)} texts.")
    if mismatches:
        sys.exit(f"The reference library and the spaCy pipeline disagree on {mismatches} of {len(TEXTS)} texts.")
    agree = " and agrees with the spaCy pipeline" if nlp is not None else ""
    print(f"OK: gliner2.GLiNER2 loaded {args.exported} offline, found {found} entities{agree}.")


if __name__ == "__main__":
    main()
