#!/usr/bin/env python
"""Texts per second of ``nlp.pipe`` (1 or 2 processes) and of the Ray Data helper (1 or 2 actors).

The same texts and saved pipeline for every configuration, each run in a fresh process (the Ray
ones start their own local Ray with 2 CPUs):

- texts: the first ``--limit`` (default 2,000) AG News test items, "title. description"
  (``../shared/data/eval/ag_news/test.csv``, read by ``throughput.load_texts``);
- model: a random-weight GLiNER2 span checkpoint built by ``tests/checkpoints.py`` (DeBERTa-v3-style
  encoder, hidden 256, 4 layers, 4 heads, its 1,000-piece SentencePiece vocabulary: texts are
  cut into more pieces than with DeBERTa-v3's own), in a pipeline with 5 entity labels and one
  4-label classification task, saved with ``nlp.to_disk`` (reused from ``--workdir``);
- ``nlp.pipe(texts, batch_size=64)`` after loading and a warm-up, records made by
  ``records.doc_record``: 1 process with 1 and with 2 torch threads, 2 processes (1 thread each);
- ``ray_data.annotate_dataset`` over ``ray.data.from_items`` (blocks of 64 records, batch size 64),
  1 and 2 actors of 1 torch thread, end to end: actor start-up and pipeline loading included;
- the memory of one actor: a Ray actor builds the helper's ``Annotator`` (its start-up time) and
  runs ``--memory-texts`` texts through it; its resident set before, after loading, and its
  highest and last after each batch (``--memory-checkpoint``: on a pipeline of another checkpoint).

Other load: the cores' worth of CPU that processes other than the configuration's own (its Ray
processes and ``n_process`` workers included) used while it annotated; above ~0.2 on this 2-core
machine the timings measure the contention.

    python benchmarks/pipe_throughput.py [--limit 2000] [--out results.json] [--workdir DIR]
        [--memory-texts 500] [--memory-checkpoint DIR]
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from machine import cpu_seconds, other_load, timed, uptime  # benchmarks/machine.py
from throughput import LABELS_5, ROOT, load_texts  # benchmarks/throughput.py (puts tests/ on sys.path)

BATCH_SIZE = 64
CONFIGS = {  # name: (runner, processes or actors, torch threads)
    "nlp.pipe n_process=1": ("pipe", 1, 1),
    "nlp.pipe n_process=1, 2 threads": ("pipe", 1, 2),
    "nlp.pipe n_process=2": ("pipe", 2, 1),
    "ray 1 actor": ("ray", 1, 1),
    "ray 2 actors": ("ray", 2, 1),
}
SCHEMA = {"entities": LABELS_5, "classifications": {"topic": ["world", "sports", "business", "science and technology"]}}


def build_pipeline(pipeline: Path, checkpoint: Optional[Path] = None) -> Path:
    """The saved pipeline at ``pipeline`` (built on first use, on ``checkpoint`` or a new
    benchmark checkpoint beside it)."""
    import spacy
    from checkpoints import build_reference_checkpoint  # tests/checkpoints.py

    if not (pipeline / "config.cfg").exists():
        checkpoint = checkpoint or build_reference_checkpoint(
            pipeline.with_name("checkpoint"), encoder="deberta", hidden_size=256, num_layers=4, num_heads=4)
        nlp = spacy.blank("en")
        nlp.add_pipe("gliner2", config={"model": str(checkpoint), **SCHEMA})
        nlp.to_disk(pipeline)
    return pipeline


def descendants_cpu_seconds() -> float:
    """CPU seconds of this process's living descendants and the children they have reaped
    (Ray's raylet, workers and actors are not children of this process: ``os.times`` misses them)."""
    parents, stats = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        pid = int(stat.parent.name)
        parents[pid], stats[pid] = int(fields[1]), sum(int(x) for x in fields[11:15])
    mine, found = {os.getpid()}, True
    while found:
        found = {pid for pid, parent in parents.items() if parent in mine and pid not in mine}
        mine |= found
    return sum(stats[pid] for pid in mine - {os.getpid()}) / os.sysconf("SC_CLK_TCK")


def measured(fn) -> dict:
    """``fn()``'s result with its ``seconds`` and the other load meanwhile."""
    since, tree = cpu_seconds(), descendants_cpu_seconds()
    seconds, result = timed(fn)
    load = other_load(since, seconds) - (descendants_cpu_seconds() - tree) / seconds
    return {**result, "seconds": seconds, "other_load": load}


def run_pipe(pipeline: Path, texts: list, processes: int, threads: int) -> dict:
    """``nlp.pipe`` over the texts, after loading and a warm-up."""
    import spacy
    import torch

    from spacy_gliner2.records import doc_record, pipeline_outputs

    torch.set_num_threads(threads)
    load_s, nlp = timed(spacy.load, pipeline)
    outputs = pipeline_outputs(nlp.config)
    list(nlp.pipe(texts[:8]))

    def annotate() -> dict:
        records = [doc_record(doc, outputs) for doc in nlp.pipe(texts, batch_size=BATCH_SIZE, n_process=processes)]
        return {"entities": sum(len(r["entities"]) for r in records)}

    return {**measured(annotate), "load_s": load_s}


def run_ray(pipeline: Path, texts: list, actors: int, threads: int) -> dict:
    """``annotate_dataset`` over the texts on a fresh local Ray, end to end."""
    import ray

    from spacy_gliner2.ray_data import annotate_dataset

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)],
                             override_num_blocks=-(-len(texts) // BATCH_SIZE))

    def annotate() -> dict:
        batches = annotate_dataset(ds, pipeline, batch_size=BATCH_SIZE, concurrency=actors,
                                   torch_threads=threads).iter_batches(batch_format="pyarrow", batch_size=None)
        entities = [e for batch in batches for e in batch.column("entities").to_pylist()]
        assert len(entities) == len(texts)
        return {"entities": sum(len(e) for e in entities)}

    result = measured(annotate)
    ray.shutdown()
    return result


class MemoryProbe:
    """(A Ray actor.) The helper's ``Annotator`` in this process: start-up time and resident set."""

    def run(self, pipeline: str, texts: list) -> dict:
        import pyarrow as pa

        from spacy_gliner2.memory import resident_bytes
        from spacy_gliner2.ray_data import Annotator

        before = resident_bytes() / 2**20
        load_s, annotator = timed(Annotator, pipeline)
        loaded, after = resident_bytes() / 2**20, []
        for i in range(0, len(texts), BATCH_SIZE):
            annotator(pa.table({"text": texts[i:i + BATCH_SIZE]}))
            after.append(resident_bytes() / 2**20)
        return {"rss_before_mb": before, "rss_loaded_mb": loaded, "rss_max_mb": max(after), "rss_last_mb": after[-1],
                "load_s": load_s, "texts": len(texts)}


def run_memory(pipeline: Path, texts: list) -> dict:
    import ray

    # the actor unpickles MemoryProbe, which uses machine.timed: benchmarks/ on its path
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent)}})
    probe = ray.remote(num_cpus=1)(MemoryProbe).remote()
    result = ray.get(probe.run.remote(str(pipeline), texts))
    ray.shutdown()
    return result


def child(args: argparse.Namespace) -> dict:
    """One configuration, in this (fresh) process."""
    texts = load_texts(0, args.limit)[1]
    if args.child == "memory":
        return run_memory(args.pipeline, texts[:args.memory_texts])
    runner, n, threads = CONFIGS[args.child]
    return (run_pipe if runner == "pipe" else run_ray)(args.pipeline, texts, n, threads)


def in_fresh_process(args: argparse.Namespace, pipeline: Path, config: str) -> dict:
    """``child`` in a new Python process."""
    cmd = [sys.executable, __file__, "--child", config, "--pipeline", str(pipeline), "--limit", str(args.limit),
           "--memory-texts", str(args.memory_texts)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="AG News texts (default 2,000)")
    parser.add_argument("--memory-texts", type=int, default=500, help="texts run through the memory probe")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/spacy-gliner2-bench/pipe-throughput"))
    parser.add_argument("--memory-checkpoint", type=Path, help="measure the actor's memory on a pipeline of this "
                        "GLiNER2 checkpoint instead (e.g. the GLiNER2-base-shaped one benchmarks/throughput.py builds)")
    parser.add_argument("--out", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one configuration, in a fresh process
    parser.add_argument("--pipeline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    seconds, pipeline = timed(build_pipeline, args.workdir / "pipeline")
    probed = pipeline
    if args.memory_checkpoint:
        probed = build_pipeline(args.workdir / f"pipeline-{args.memory_checkpoint.name}", args.memory_checkpoint)
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    print(f"pipeline {pipeline} ({seconds:.0f} s); spacy-gliner2 at {commit or 'unknown commit'}; {uptime()}", flush=True)
    out = {"commit": commit, "texts": args.limit, "batch_size": BATCH_SIZE, "configs": {}}
    print(f"\n{args.limit} AG News texts, batch size {BATCH_SIZE}; each configuration in a fresh process")
    print(f"{'configuration':<34}{'texts/s':>9}{'seconds':>9}{'load s':>8}{'entities':>10}{'other load':>12}")
    for name in CONFIGS:
        r = out["configs"][name] = in_fresh_process(args, pipeline, name)
        r["texts_per_s"] = args.limit / r["seconds"]
        load = f"{r['load_s']:8.1f}" if "load_s" in r else f"{'':>8}"
        print(f"{name:<34}{r['texts_per_s']:9.1f}{r['seconds']:9.1f}{load}{r['entities']:>10}{r['other_load']:12.2f}",
              flush=True)
    m = out["actor_memory"] = {"pipeline": str(probed), **in_fresh_process(args, probed, "memory")}
    print(f"nlp.pipe: after spacy.load (load s) and a warm-up; ray: end to end, each actor starting up "
          f"(import and spacy.load: {m['load_s']:.1f} s for one actor of {probed.name} alone) before its first batch")
    print(f"\none actor of {probed.name}, resident set: {m['rss_before_mb']:.0f} MB as a bare Ray worker, {m['rss_loaded_mb']:.0f} MB "
          f"with the pipeline loaded, at most {m['rss_max_mb']:.0f} MB (last {m['rss_last_mb']:.0f} MB) over "
          f"{m['texts']} texts in batches of {BATCH_SIZE}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
