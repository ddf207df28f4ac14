"""Command line: ``python -m spacy_gliner2 run|convert|export|feedback|calibrate|kernels|ray|zero-shot|strategies ...`` (also ``spacy-gliner2 ...``).

    python -m spacy_gliner2 run training/model-best texts.jsonl annotated.jsonl    # a saved pipeline
    python -m spacy_gliner2 run fastino/gliner2-base-v1 - - --schema schema.json < texts.txt

    python -m spacy_gliner2 convert gliner train.json train.spacy
    python -m spacy_gliner2 convert gliner a.json b.json dev.spacy --shuffle --limit 200          # 200 of each
    python -m spacy_gliner2 convert gliner a.json b.json train.spacy --shuffle --skip 200 --limit 5000
    python -m spacy_gliner2 convert bio train.conll train.spacy
    python -m spacy_gliner2 convert cls train.csv train.spacy --text-field text --label-field label
    python -m spacy_gliner2 export training/model-best exported/   # a reference-format checkpoint
    python -m spacy_gliner2 export training/model-best exported/ --component gliclass
    python -m spacy_gliner2 feedback training/model-best verdicts.jsonl improved/ --component gliclass
    python -m spacy_gliner2 calibrate training/model-best dev.spacy calibrated/ --task intent --share 0.1
    python -m spacy_gliner2 kernels [--build]   # the compiled CPU kernels: can they run here, are they built
    python -m spacy_gliner2 ray training/model-best texts.parquet annotated.parquet   # with Ray Data
    python -m spacy_gliner2 zero-shot training/model-best --out zero-shot.json [--limit 100] [--resume]   # the paper's test sets
    python -m spacy_gliner2 strategies training/model-best --out strategies.json --definitions configs/label-definitions.json
"""
import argparse
import contextlib
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import spacy
import torch

from . import convert
from .core.feedback import agreement, feedback_examples, read_feedback
from .records import FACTORIES
from .strategies import STRATEGIES


def _run(args: argparse.Namespace) -> None:
    from .stream import annotate_stream, input_format, is_saved_pipeline, load_pipeline, open_stream, read_schema

    schema = read_schema(args.schema)
    nlp = load_pipeline(args.model, args.factory, schema, args.gpu_id)
    fmt = input_format(args.input, args.input_format)
    # a schema given with a saved pipeline replaces its sections for this run (per-call schema)
    saved = is_saved_pipeline(args.model)
    component_cfg = {name: schema for name in nlp.pipe_names
                     if saved and schema and nlp.get_pipe_meta(name).factory in FACTORIES}
    for name, overrides in component_cfg.items():
        nlp.get_pipe(name).schema_for(overrides)  # a bad schema: one error now, not one per text
    with contextlib.ExitStack() as stack:
        report = annotate_stream(
            nlp, open_stream(args.input, "r", stack), open_stream(args.output, "w", stack), fmt=fmt, text_field=args.text_field,
            batch_size=args.batch_size, n_process=args.n_process, limit=args.limit, strict=args.strict,
            component_cfg=component_cfg, progress=not args.quiet)
    print(report, file=sys.stderr)


def _evaluation_pipeline(args: argparse.Namespace) -> Any:
    """The pipeline an evaluation command scores (a checkpoint gets a placeholder schema: each set gives its own)."""
    from .stream import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_pipeline(args.model, args.factory, {"classifications": {"zero_shot": ["yes", "no"]}}, args.gpu_id)


def _write_result(args: argparse.Namespace, result: Dict[str, Any], markdown: Optional[str] = None) -> None:
    """The JSON file; with the final ``markdown`` table also the Markdown file and the table on stdout."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf8")
    if markdown is None:
        return
    if args.markdown:
        args.markdown.write_text(markdown + "\n", encoding="utf8")
    print(markdown)
    print(f"wrote {args.out}", file=sys.stderr)


def _zero_shot(args: argparse.Namespace) -> None:
    from .zero_shot import evaluate, load_sets, table

    done = {}
    if args.resume and args.out.exists():
        earlier = json.loads(args.out.read_text(encoding="utf8"))
        if earlier.get("model") != args.model or earlier.get("limit") != args.limit:
            sys.exit(f"error: {args.out} holds scores of {earlier.get('model')!r} with limit {earlier.get('limit')}; "
                     f"--resume continues only the same model and limit (or choose another --out)")
        done = earlier["sets"]
    nlp = _evaluation_pipeline(args)
    sets = load_sets(args.data, args.sets.split(",") if args.sets else None, args.limit)

    def write(result: Dict[str, Any], final: bool = False) -> None:
        result.update(model=args.model, limit=args.limit)
        _write_result(args, result, table(result) if final else None)

    write(evaluate(nlp, sets, args.batch_size, progress=not args.quiet, done=done, after_set=write), final=True)


def _strategies(args: argparse.Namespace) -> None:
    from .strategies import compare, read_definitions, strategy_table
    from .zero_shot import CLASS_SETS, load_sets

    nlp = _evaluation_pipeline(args)
    sets = load_sets(args.data, args.sets.split(",") if args.sets else list(CLASS_SETS))
    result = compare(nlp, sets, args.strategies.split(","), read_definitions(args.definitions), args.k, args.share,
                     args.limit, args.batch_size, report=lambda line: print(line, file=sys.stderr))
    result.update(model=args.model, limit=args.limit, definitions=str(args.definitions))
    _write_result(args, result, strategy_table(result))


def _kernels(args: argparse.Namespace) -> None:
    from .runtime import native

    if args.build:
        try:
            print(f"built {native.build_now()}")
        except (OSError, RuntimeError) as error:
            sys.exit(f"error: the kernels could not be built: {error}")
    for key, value in native.status().items():
        print(f"{key + ':':<14} {value}")


def _ray(args: argparse.Namespace) -> None:
    from .ray_data import annotate_files

    if args.address:
        import ray

        ray.init(address=args.address)
    written = annotate_files(args.input, args.output, args.pipeline, text_column=args.text_field,
                             batch_size=args.batch_size, concurrency=args.concurrency,
                             num_cpus_per_actor=args.num_cpus_per_actor, torch_threads=args.torch_threads)
    print(f"{args.input} -> {args.output}: {written.records} records, {written.errors} with an error")


def _convert(args: argparse.Namespace) -> None:
    nlp = spacy.blank(args.lang)
    report = convert.Report()
    docs = []
    for path in args.input:  # --shuffle, --skip and --limit apply to each input file
        if args.format == "gliner":
            part = convert.gliner_json(nlp, path, report, args.spans_key)
        elif args.format == "bio":
            part = convert.bio_conll(nlp, path, report, args.spans_key)
        else:
            part = convert.classification(nlp, path, report, args.text_field, args.label_field)
        part = list(part)
        if args.shuffle:
            random.Random(args.seed).shuffle(part)
        part = part[args.skip :]
        if args.limit:
            part = part[: args.limit]
        docs.extend(part)
    if args.lowercase_labels:
        docs = convert.map_labels(docs, str.lower, args.spans_key)
    n = convert.write_docbin(docs, args.output)
    inputs = ", ".join(str(p) for p in args.input)
    print(f"{inputs} -> {args.output}: {n} docs written; read {report}")


def _component(nlp: Any, args: argparse.Namespace) -> Any:
    """The pipeline's component ``--component`` names, or its only gliner2/gliclass component."""
    ours = [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory in FACTORIES]
    if args.component is None:
        if len(ours) != 1:
            raise ValueError(f"{args.pipeline} has {len(ours)} gliner2/gliclass components {ours}: name one with --component")
        return nlp.get_pipe(ours[0])
    if args.component not in ours:
        raise ValueError(f"{args.pipeline} has no gliner2/gliclass component {args.component!r}; it has {ours}")
    return nlp.get_pipe(args.component)


def _export(args: argparse.Namespace) -> None:
    nlp = spacy.load(args.pipeline)
    pipe = _component(nlp, args)
    pipe.runner.save(args.output)
    loader = {"gliner2": "gliner2.GLiNER2.from_pretrained", "gliclass": "gliclass.GLiClassModel.from_pretrained"}
    family = pipe.runner.family
    print(f"wrote a {family} checkpoint folder to {args.output} (loadable by {loader[family]})")


def _feedback(args: argparse.Namespace) -> None:
    nlp = spacy.load(args.pipeline)
    pipe = _component(nlp, args)
    judged = read_feedback(args.feedback, pipe.schema)
    args.output.mkdir(parents=True, exist_ok=True)  # before training: a path that cannot be written fails now
    examples = feedback_examples(nlp, judged)
    # PPO with the verdicts as reward for this run only: the saved config keeps its own training block
    pipe.training = dataclasses.replace(pipe.training, objective="ppo", reward=args.reward, seed=args.seed,
                                        **({"encoder_lr": args.encoder_lr} if args.encoder_lr is not None else {}),
                                        **({"head_lr": args.head_lr} if args.head_lr is not None else {}))
    before = agreement(nlp, judged, pipe.schema)
    rng = random.Random(args.seed)
    for epoch in range(args.epochs):
        rng.shuffle(examples)
        losses: dict = {}
        for batch in spacy.util.minibatch(examples, args.batch_size):
            pipe.update(batch, sgd=True, losses=losses)
        print(f"epoch {epoch + 1}: loss {losses.get(pipe.name, 0.0):.4f}")
    after = agreement(nlp, judged, pipe.schema)
    nlp.to_disk(args.output)
    print(f"{len(examples)} texts; agreement with the verdicts {before:.3f} -> {after:.3f}; wrote {args.output}")


def _calibrate(args: argparse.Namespace) -> None:
    from spacy.tokens import DocBin

    from .calibration import calibrate, set_abstention

    nlp = spacy.load(args.pipeline)
    gold = list(DocBin().from_disk(args.dev).get_docs(nlp.vocab))
    component = _component(nlp, args).name
    report = calibrate(nlp, component, gold, args.task, args.share)
    set_abstention(nlp, component, args.task, report["abstain_below"])
    nlp.to_disk(args.output)
    kept = report["accuracy_kept"]
    print(f"{args.task}: abstain below {report['abstain_below']:.4f} ({report['abstained']:.1%} of {report['n']} dev texts); "
          f"accuracy {report['accuracy']:.3f} on all, {'n/a' if kept is None else f'{kept:.3f}'} on the rest; wrote {args.output}")


def main() -> None:
    prog = "spacy-gliner2" if Path(sys.argv[0]).name == "spacy-gliner2" else "python -m spacy_gliner2"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="annotate JSONL or plain-text lines into JSONL (entities, cats, results)")
    run.add_argument("model", help="a saved pipeline folder, or a checkpoint (folder or Hub id)")
    run.add_argument("input", help="JSONL ({\"text\": ...} per line; other fields are kept) or text, one per line; - for stdin")
    run.add_argument("output", help="JSONL file, - for stdout")
    run.add_argument("--schema", type=Path, help="schema.json, or a .cfg with a gliner2/gliclass component block "
                     "(required for a checkpoint; for a pipeline it replaces the sections it names)")
    run.add_argument("--factory", choices=["gliner2", "gliclass"], help="for a checkpoint (default: its family)")
    run.add_argument("--input-format", choices=["jsonl", "text"], help="default: .jsonl/.json -> jsonl, else text")
    run.add_argument("--text-field", default="text")
    run.add_argument("--batch-size", type=_positive, default=32)
    run.add_argument("--n-process", type=_positive, default=1)
    run.add_argument("--gpu-id", type=int, default=-1, help="run the model on this CUDA GPU (default -1: CPU)")
    run.add_argument("--limit", type=_positive, help="annotate at most this many texts")
    run.add_argument("--strict", action="store_true", help="stop at the first bad line or failing text")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(run=_run)
    conv = sub.add_parser("convert", help="convert a data set to a .spacy DocBin")
    conv.add_argument("format", choices=["gliner", "bio", "cls"])
    conv.add_argument("input", type=Path, nargs="+", help="one or more files of that format")
    conv.add_argument("output", type=Path)
    conv.add_argument("--lang", default="en")
    conv.add_argument("--spans-key", default="gliner2")
    conv.add_argument("--text-field", default="text")
    conv.add_argument("--label-field", default="label")
    conv.add_argument("--limit", type=int, default=0, help="keep at most this many docs of each input (0: all)")
    conv.add_argument("--skip", type=int, default=0,
                      help="leave out the first N docs of each input (after --shuffle, before --limit): "
                           "with the same --seed, '--limit N' and '--skip N' give disjoint splits")
    conv.add_argument("--shuffle", action="store_true", help="shuffle each input before --skip and --limit")
    conv.add_argument("--lowercase-labels", action="store_true",
                      help="lower-case entity and class labels (e.g. to merge 'Location' and 'location')")
    conv.add_argument("--seed", type=int, default=0)
    conv.set_defaults(run=_convert)
    exp = sub.add_parser("export", help="write a pipeline's component as a reference checkpoint (gliner2 or gliclass)")
    exp.add_argument("pipeline", type=Path)
    exp.add_argument("output", type=Path)
    exp.add_argument("--component", help="the gliner2/gliclass component (default: the only one)")
    exp.set_defaults(run=_export)
    fb = sub.add_parser("feedback", help="improve a pipeline's classifier from accept/reject verdicts (PPO)")
    fb.add_argument("pipeline", type=Path)
    fb.add_argument("feedback", type=Path, help="JSONL: {\"text\", \"task\" (optional), \"accept\": [...], \"reject\": [...]}")
    fb.add_argument("output", type=Path, help="where the improved pipeline is written")
    fb.add_argument("--component", help="the gliner2/gliclass component (default: the only one)")
    fb.add_argument("--epochs", type=_positive, default=3)
    fb.add_argument("--batch-size", type=_positive, default=8)
    fb.add_argument("--reward", default="accuracy", help="'accuracy' (agreement with the verdicts), 'f1', "
                    "or a reward registered in spaCy's misc registry")
    fb.add_argument("--encoder-lr", type=float, default=None, help="default: the component's training block")
    fb.add_argument("--head-lr", type=float, default=None, help="default: the component's training block")
    fb.add_argument("--seed", type=int, default=0)
    fb.set_defaults(run=_feedback)
    zs = sub.add_parser("zero-shot", help="zero-shot scores on the public test sets the GLiNER2 paper reports")
    st = sub.add_parser("strategies", help="GenCLS++ strategies (descriptions, examples, numeric labels, abstention) "
                                            "on the zero-shot classification sets")
    for evaluation in (zs, st):
        evaluation.add_argument("model", help="a saved pipeline folder, or a checkpoint (folder or Hub id)")
        evaluation.add_argument("--data", type=Path, default=Path("../shared/data/eval"),
                                help="the eval folder of the shared data (default: ../shared/data/eval, from the current folder)")
        evaluation.add_argument("--out", type=Path, required=True, help="JSON file for every figure")
        evaluation.add_argument("--markdown", type=Path, help="also write the table (Markdown) to this file")
        evaluation.add_argument("--sets", help="comma-separated set names (default: all)")
        evaluation.add_argument("--limit", type=int, help="N (scored) texts of each set, spread over it (a quick run)")
        evaluation.add_argument("--factory", choices=["gliner2", "gliclass"], help="for a checkpoint (default: its family)")
        evaluation.add_argument("--batch-size", type=_positive, default=32)
        evaluation.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
        evaluation.add_argument("--gpu-id", type=int, default=-1)
    zs.add_argument("--quiet", action="store_true", help="no progress bars")
    zs.add_argument("--resume", action="store_true",
                    help="keep the sets --out already holds (an interrupted run of the same model and limit)")
    zs.set_defaults(run=_zero_shot)
    st.add_argument("--strategies", default=",".join(STRATEGIES))
    st.add_argument("--definitions", type=Path, help="JSON {set: {label: definition}} for 'descriptions'")
    st.add_argument("--k", type=int, default=4, help="examples per text for 'nearest'")
    st.add_argument("--share", type=float, default=0.1, help="share of the pool that abstains for 'uncertain'")
    st.set_defaults(run=_strategies)
    cal = sub.add_parser("calibrate", help="calibrate a single-label task's uncertain outcome (abstain_below) on a dev set")
    cal.add_argument("pipeline", type=Path)
    cal.add_argument("dev", type=Path, help="a .spacy DocBin with gold doc.cats")
    cal.add_argument("output", type=Path, help="where the pipeline with the task's abstain_below is written")
    cal.add_argument("--task", required=True)
    cal.add_argument("--share", type=float, default=0.1, help="share of the dev texts to abstain on (least confident)")
    cal.add_argument("--component", help="the gliner2/gliclass component (default: the only one)")
    cal.set_defaults(run=_calibrate)
    kern = sub.add_parser("kernels", help="report the compiled CPU kernels' state (--build: build them now)")
    kern.add_argument("--build", action="store_true", help="build now (also after a remembered failure)")
    kern.set_defaults(run=_kernels)
    rd = sub.add_parser("ray", help='annotate a JSONL or Parquet file with Ray Data (pip install "spacy-gliner2[ray]")')
    rd.add_argument("pipeline", type=Path, help="a saved pipeline with a gliner2 or gliclass component")
    rd.add_argument("input", type=Path, help=".jsonl or .parquet")
    rd.add_argument("output", type=Path, help=".jsonl or .parquet: one file, rows in input order")
    rd.add_argument("--text-field", default="text")
    rd.add_argument("--batch-size", type=_positive, default=64)
    rd.add_argument("--concurrency", type=int, help="actors (default: 1, scaling up to the cluster's CPUs)")
    rd.add_argument("--num-cpus-per-actor", type=float, help="default: --torch-threads")
    rd.add_argument("--torch-threads", type=int, default=1)
    rd.add_argument("--address", help="an existing Ray cluster (default: RAY_ADDRESS, else a local one)")
    rd.set_defaults(run=_ray)
    args = parser.parse_args()
    try:
        args.run(args)
    except (OSError, ValueError, ImportError) as error:  # bad input, files, schema, checkpoint: one line
        sys.exit(f"error: {error}")


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


if __name__ == "__main__":
    main()
