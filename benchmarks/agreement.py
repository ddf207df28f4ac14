#!/usr/bin/env python
"""Agreement of a fast precision mode with exact (fp32) mode on a trained pipeline.

    python benchmarks/agreement.py training/ner/model-best [--precision bf16] [--n 200]

Runs the pipeline twice, asking for the CrossNER politics entity labels and for the
pipeline's own classification tasks (as trained), over CrossNER politics test sentences and
held-out CLINC150 test utterances (the train-ner model's classes are CLINC150 domains). Reports
the share of identical entity decisions (predicted spans, label and offsets, over the union of
both modes) and class decisions (chosen labels per text and task), plus both speeds.
"""
import argparse
import json
import time
from pathlib import Path

import spacy
from throughput import decisions  # this folder is on sys.path when run as a script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def texts(n: int):
    politics = json.loads((SHARED / "eval" / "CrossNER_politics" / "test.json").read_text())
    labels = json.loads((SHARED / "eval" / "CrossNER_politics" / "labels.json").read_text())
    clinc = json.loads((SHARED / "train" / "clinc150" / "data_full.json").read_text())["test"]
    stride = max(1, len(clinc) // n)  # the test split is ordered by intent: spread over all of them
    return [x["sentence"] for x in politics[:n]] + [text for text, _ in clinc[::stride][:n]], labels


def run(path: Path, precision: str, batch, schema):
    nlp = spacy.load(path, config={"components": {"gliner2": {"precision": precision}}})
    list(nlp.pipe(batch[:4], component_cfg={"gliner2": schema}))  # load and warm up
    start = time.perf_counter()
    docs = list(nlp.pipe(batch, component_cfg={"gliner2": schema}))
    elapsed = time.perf_counter() - start
    ents, classes = decisions([d._.gliner2 for d in docs])
    tasks = [t.name for t in nlp.get_pipe("gliner2").schema.classifications]
    return ents, classes, len(batch) / elapsed, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--n", type=int, default=200, help="texts per data set")
    args = parser.parse_args()
    batch, labels = texts(args.n)
    schema = {"entities": labels}  # and the pipeline's own classification tasks
    exact_ents, exact_cls, exact_speed, tasks = run(args.pipeline, "fp32", batch, schema)
    fast_ents, fast_cls, fast_speed, _ = run(args.pipeline, args.precision, batch, schema)
    if not tasks:
        print("note: this pipeline has no classification task; only entity decisions are compared")
    union = exact_ents | fast_ents
    same_ents = len(exact_ents & fast_ents) / max(1, len(union))
    same_cls = len(exact_cls & fast_cls) / max(1, len(exact_cls))  # single-label tasks: one label per text in both modes
    n_decisions = len(union) + len(exact_cls)
    same = (len(exact_ents & fast_ents) + len(exact_cls & fast_cls)) / n_decisions
    print(f"{len(batch)} texts; exact {exact_speed:.2f} texts/s, {args.precision} {fast_speed:.2f} texts/s")
    print(f"entity decisions identical: {same_ents:.2%} of {len(union)} (exact {len(exact_ents)}, {args.precision} {len(fast_ents)})")
    print(f"class decisions identical: {same_cls:.2%} of {len(exact_cls)} (tasks {tasks})")
    print(f"all decisions identical: {same:.2%} of {n_decisions}")


if __name__ == "__main__":
    main()
