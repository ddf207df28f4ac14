"""End-to-end demo: load a GLiNER2 checkpoint into spaCy, annotate real texts, save, reload.

    python scripts/demo.py                                     # the bundled model (no download)
    python scripts/demo.py --model fastino/gliner2-base-v1   # a Hub id or a local folder
    python scripts/demo.py --model tiny                        # a tiny random checkpoint

The default, ``spacy-gliner2/minilm-small``, is the small model inside the package (README,
Models). ``tiny`` builds a random-weight checkpoint with the reference ``gliner2`` package
(the ``test`` extra): its outputs are meaningless, the plumbing is real.
"""
import argparse
import csv
import json
import sys
import time
from pathlib import Path

import spacy

ROOT = Path(__file__).resolve().parent.parent


def texts_from(data: Path, n: int):
    politics = json.loads((data / "eval" / "CrossNER_politics" / "test.json").read_text())
    with open(data / "eval" / "ag_news" / "test.csv", newline="", encoding="utf8") as f:
        news = [f"{title}. {body}" for _, title, body in csv.reader(f)]
    return [x["sentence"] for x in politics[:n]] + news[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spacy-gliner2/minilm-small",
                        help="the bundled model (default), a Hub id, a local checkpoint folder, or 'tiny'")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "training" / "demo")
    parser.add_argument("--n", type=int, default=8, help="texts per data set")
    args = parser.parse_args()
    if not (args.data / "eval").is_dir():
        sys.exit(f"error: no shared data at {args.data} (its eval/ folder is missing): pass its location, "
                 "e.g. `python -m spacy project run demo . --vars.data /path/to/shared/data`")

    model = args.model
    if model == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from checkpoints import build_reference_checkpoint

        folder = args.out / "tiny-checkpoint"
        if not (folder / "model.safetensors").exists():
            build_reference_checkpoint(folder, encoder="deberta")
            print(f"built a tiny random checkpoint in {folder}")
        model = str(folder)

    nlp = spacy.blank("en")
    nlp.add_pipe(
        "gliner2",
        config={
            "model": model,
            "entities": ["person", "organization", "location"],
            "classifications": {"topic": ["politics", "sports", "business", "science"]},
        },
    )
    texts = texts_from(args.data, args.n)
    start = time.perf_counter()
    docs = list(nlp.pipe(texts))
    elapsed = time.perf_counter() - start
    for doc in docs[:: max(1, len(docs) // 4)]:
        print("\n" + doc.text[:200])
        print("  ents:", [(e.text, e.label_) for e in doc.ents])
        print("  cats:", {k: round(v, 3) for k, v in doc.cats.items()})
    print(f"\n{len(docs)} texts in {elapsed:.2f}s ({len(docs) / elapsed:.1f} texts/s)")

    args.out.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(args.out / "pipeline")
    reloaded = spacy.load(args.out / "pipeline")
    same = all(
        reloaded(d.text)._.gliner2.keys() == d._.gliner2.keys()
        and [e.text for e in reloaded(d.text).ents] == [e.text for e in d.ents]
        for d in docs[:4]
    )
    print(f"saved to {args.out / 'pipeline'}; reloaded pipeline gives the same entities: {same}")


if __name__ == "__main__":
    main()
