#!/usr/bin/env python
"""Agreement of a fast precision mode with exact (fp32) mode on a trained pipeline.

    python benchmarks/agreement.py training/ner/model-best [--precision bf16] [--n 200]

Runs the pipeline twice over texts from ../shared/data/eval (CrossNER politics sentences
with their labels, AG News with a topic task) and reports the share of identical entity
decisions (predicted spans, label and offsets, over the union of both modes) and class
decisions (chosen label per text), plus both speeds.
"""
import argparse
import csv
import json
import time
from pathlib import Path

import spacy
from throughput import decisions  # this folder is on sys.path when run as a script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def texts(n: int):
    politics = json.loads((SHARED / "eval" / "CrossNER_politics" / "test.json").read_text())
    labels = json.loads((SHARED / "eval" / "CrossNER_politics" / "labels.json").read_text())
    with open(SHARED / "eval" / "ag_news" / "test.csv", newline="", encoding="utf8") as f:
        news = [f"{title}. {body}" for _, title, body in csv.reader(f)]
    return [x["sentence"] for x in politics[:n]] + news[:n], labels


def run(path: Path, precision: str, batch, schema):
    nlp = spacy.load(path, config={"components": {"gliner2": {"precision": precision}}})
    list(nlp.pipe(batch[:4], component_cfg={"gliner2": schema}))  # load and warm up
    start = time.perf_counter()
    docs = list(nlp.pipe(batch, component_cfg={"gliner2": schema}))
    elapsed = time.perf_counter() - start
    ents, classes = decisions([d._.gliner2 for d in docs])
    return ents, classes, len(batch) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--n", type=int, default=200, help="texts per data set")
    args = parser.parse_args()
    batch, labels = texts(args.n)
    schema = {"entities": labels, "classifications": {"topic": ["world", "sports", "business", "science"]}}
    exact_ents, exact_cls, exact_speed = run(args.pipeline, "fp32", batch, schema)
    fast_ents, fast_cls, fast_speed = run(args.pipeline, args.precision, batch, schema)
    union = exact_ents | fast_ents
    same_ents = len(exact_ents & fast_ents) / max(1, len(union))
    same_cls = len(exact_cls & fast_cls) / max(1, len(exact_cls))  # one topic per text in both modes
    n_decisions = len(union) + len(exact_cls)
    same = (len(exact_ents & fast_ents) + len(exact_cls & fast_cls)) / n_decisions
    print(f"{len(batch)} texts; exact {exact_speed:.2f} texts/s, {args.precision} {fast_speed:.2f} texts/s")
    print(f"entity decisions identical: {same_ents:.2%} of {len(union)} (exact {len(exact_ents)}, {args.precision} {len(fast_ents)})")
    print(f"class decisions identical: {same_cls:.2%} of {len(exact_cls)}")
    print(f"all decisions identical: {same:.2%} of {n_decisions}")


if __name__ == "__main__":
    main()
