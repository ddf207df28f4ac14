"""Evaluate a trained gliner2 pipeline on a .spacy file with a label set given per call (zero-shot).

    python scripts/evaluate.py training/ner/model-best corpus/eval-crossner-politics.spacy \\
        --labels ../shared/data/eval/CrossNER_politics/labels.json --output metrics/zero-shot.json

The labels (a JSON list, as the GLiNER data sets' ``labels.json``) replace the trained schema
for this evaluation only: ``nlp.evaluate(examples, component_cfg={"gliner2": {"entities": labels}})``.
Without ``--labels`` the trained labels are used (as ``spacy evaluate``). Scores are entity
P/R/F over ``doc.ents`` (spaCy's NER scorer), micro-averaged and per type.
"""
import argparse
import json
import time
from collections import Counter
from pathlib import Path

import spacy
import srsly
import torch
from spacy.tokens import DocBin
from spacy.training import Example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", type=Path, help="a trained pipeline folder (e.g. training/ner/model-best)")
    parser.add_argument("data", type=Path, help="gold Docs (.spacy), entities in doc.ents")
    parser.add_argument("--labels", type=Path, default=None, help="JSON list of entity labels to ask for")
    parser.add_argument("--threshold", type=float, default=None, help="span threshold (default: the pipeline's)")
    parser.add_argument("--component", default="gliner2")
    parser.add_argument("--batch-size", type=int, default=64, help="Docs per nlp.pipe batch")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--output", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    nlp = spacy.load(args.pipeline)
    pipe = nlp.get_pipe(args.component)
    trained = [e.name for e in pipe.schema.entities]
    gold_docs = list(DocBin().from_disk(args.data).get_docs(nlp.vocab))
    gold_labels = Counter(e.label_ for doc in gold_docs for e in doc.ents)
    overrides = {}
    if args.labels is not None:
        labels = json.loads(args.labels.read_text(encoding="utf8"))
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise SystemExit(f"{args.labels} must hold a JSON list of label strings")
        overrides["entities"] = labels
    else:
        labels = trained
    if args.threshold is not None:
        overrides["threshold"] = args.threshold
    unknown = sorted(set(gold_labels) - set(labels))
    if unknown:
        print(f"warning: gold labels {unknown} are not asked for; their entities count as missed")

    examples = [Example(nlp.make_doc(doc.text), doc) for doc in gold_docs]
    start = time.perf_counter()
    scores = nlp.evaluate(examples, batch_size=args.batch_size, component_cfg={args.component: overrides})
    seconds = time.perf_counter() - start

    result = {
        "pipeline": str(args.pipeline),
        "data": str(args.data),
        "labels": labels,
        "zero_shot_labels": sorted(set(labels) - set(trained)),
        "threshold": args.threshold if args.threshold is not None else pipe.schema.threshold,
        "docs": len(examples),
        "gold_entities": dict(gold_labels.most_common()),
        "ents_p": scores["ents_p"],
        "ents_r": scores["ents_r"],
        "ents_f": scores["ents_f"],
        "ents_per_type": scores["ents_per_type"],
        "seconds": round(seconds, 2),
        "words_per_second": round(sum(len(eg.reference) for eg in examples) / seconds),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    srsly.write_json(args.output, result)

    print(f"{args.data}: {len(examples)} docs, {sum(gold_labels.values())} gold entities, {seconds:.1f} s")
    print(f"labels asked for: {labels} (not trained: {result['zero_shot_labels']})")
    print(f"{'':20s} {'P':>6s} {'R':>6s} {'F':>6s}")
    print(f"{'ALL':20s} {100 * scores['ents_p']:6.2f} {100 * scores['ents_r']:6.2f} {100 * scores['ents_f']:6.2f}")
    for label, s in sorted((scores["ents_per_type"] or {}).items()):
        print(f"{label:20s} {100 * s['p']:6.2f} {100 * s['r']:6.2f} {100 * s['f']:6.2f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
