#!/usr/bin/env python
"""Cost per word of one long document, from 1k to 100k words: does it stay flat?

Entity-dense documents (a low threshold: most words end up in some scored span) and a sparse
control (the default threshold) of 1,000, 10,000 and 100,000 words, each through our spaCy
component in a fresh Python process: time (the faster of two calls), peak RSS and the peak's
increase over the RSS before the call (VmHWM reset via /proc/self/clear_refs), spans found.
The text is AG News test items (title and description, in file order) joined into paragraphs
until the word count is reached; the model is a tiny random-weight GLiNER2 checkpoint built
with the reference package (tests/checkpoints.py). Target (issue 20): the 100k-word document
costs at most 1.2x per word what the 10k-word one costs; peak memory within 2x.

    python benchmarks/scaling.py [--sizes 1000 10000 100000] [--out scaling.json]
"""
import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from machine import cpu_seconds, other_load, reset_peak_rss, status_kb, timed, uptime  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
AG_NEWS = ROOT.parent / "shared" / "data" / "eval" / "ag_news" / "test.csv"
sys.path.insert(0, str(ROOT / "tests"))

LABELS = ["person", "organization", "location", "date", "event"]
THRESHOLDS = {"dense": 0.3, "sparse": 0.9}


def document(n_words: int) -> str:
    """``n_words`` words of AG News items, one paragraph per item."""
    paragraphs, count = [], 0
    with AG_NEWS.open(newline="", encoding="utf8") as f:
        for _, title, description in csv.reader(f):
            words = f"{title}. {description}".replace("\\", " ").split()[: n_words - count]
            paragraphs.append(" ".join(words))
            count += len(words)
            if count == n_words:
                return "\n\n".join(paragraphs)
    raise ValueError(f"AG News has fewer than {n_words} words")


def probe(checkpoint: Path, n_words: int, mode: str) -> dict:
    """(Runs in a fresh process.) One document through the pipeline: time, memory, spans."""
    import spacy
    import torch

    torch.set_num_threads(1)
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(checkpoint), "entities": LABELS, "threshold": THRESHOLDS[mode]})
    nlp("Warm up the model on a short text.")
    doc = nlp.make_doc(document(n_words))
    reset_peak_rss()
    before = status_kb("VmRSS")
    seconds, annotated = timed(nlp, doc.copy())
    peak = status_kb("VmHWM")
    seconds = min(seconds, timed(nlp, doc.copy())[0])
    found = sum(len(v) for v in annotated._.gliner2["entities"].values())
    return {"words": n_words, "mode": mode, "seconds": seconds, "ms_per_word": 1000 * seconds / n_words,
            "peak_mb": peak / 1024, "rss_before_mb": before / 1024, "peak_extra_mb": (peak - before) / 1024,
            "spans": len(annotated.spans["gliner2"]), "ents": len(annotated.ents), "merged_entities": found}


def run_probe(checkpoint: Path, n_words: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--checkpoint", str(checkpoint), "--probe", str(n_words), mode]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/spacy-gliner2-scaling/checkpoint"))
    parser.add_argument("--modes", nargs="+", choices=list(THRESHOLDS), default=list(THRESHOLDS))
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)  # the child process: WORDS MODE
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.checkpoint, int(args.probe[0]), args.probe[1])))
        return
    if not (args.checkpoint / "config.json").exists():
        from checkpoints import build_reference_checkpoint

        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        build_reference_checkpoint(args.checkpoint, seed=0)
    print(uptime())
    print(f"{'mode':<7}{'words':>8}{'s':>9}{'ms/word':>9}{'spans':>8}{'ents':>7}{'peak MB':>9}{'extra MB':>9}{'load':>6}")
    rows = []
    for mode in args.modes:
        for n_words in args.sizes:
            since = cpu_seconds()
            wall, row = timed(run_probe, args.checkpoint, n_words, mode)
            row["other_load"] = other_load(since, wall)
            rows.append(row)
            print(f"{mode:<7}{n_words:>8}{row['seconds']:>9.2f}{row['ms_per_word']:>9.3f}{row['spans']:>8}"
                  f"{row['ents']:>7}{row['peak_mb']:>9.0f}{row['peak_extra_mb']:>9.0f}{row['other_load']:>6.2f}")
    ratios = {}
    for mode in args.modes:
        by_size = {r["words"]: r for r in rows if r["mode"] == mode}
        if 10000 in by_size and 100000 in by_size:
            big, small = by_size[100000], by_size[10000]
            ratios[mode] = {"per_word_time": big["ms_per_word"] / small["ms_per_word"],
                            "peak_rss": big["peak_mb"] / small["peak_mb"],
                            "peak_extra": big["peak_extra_mb"] / max(small["peak_extra_mb"], 1e-9)}
            print(f"{mode}: 100k/10k per-word time {ratios[mode]['per_word_time']:.2f}x (target <= 1.2), "
                  f"peak RSS {ratios[mode]['peak_rss']:.2f}x (target <= 2), "
                  f"peak increase over the loaded pipeline {ratios[mode]['peak_extra']:.1f}x")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "ratios": ratios, "uptime": uptime()}, indent=2))


if __name__ == "__main__":
    main()
