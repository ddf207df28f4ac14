"""Command line: ``python -m spacy_gliner2 convert|export ...``.

    python -m spacy_gliner2 convert gliner train.json train.spacy
    python -m spacy_gliner2 convert bio train.conll train.spacy
    python -m spacy_gliner2 convert cls train.csv train.spacy --text-field text --label-field label
    python -m spacy_gliner2 export training/model-best exported/   # a reference-format checkpoint
"""
import argparse
import random
from pathlib import Path

import spacy

from . import convert


def _convert(args: argparse.Namespace) -> None:
    nlp = spacy.blank(args.lang)
    report = convert.Report()
    if args.format == "gliner":
        docs = convert.gliner_json(nlp, args.input, report, args.spans_key)
    elif args.format == "bio":
        docs = convert.bio_conll(nlp, args.input, report, args.spans_key)
    else:
        docs = convert.classification(nlp, args.input, report, args.text_field, args.label_field)
    docs = list(docs)
    if args.shuffle:
        random.Random(args.seed).shuffle(docs)
    if args.limit:
        docs = docs[: args.limit]
    n = convert.write_docbin(docs, args.output)
    print(f"{args.input} -> {args.output}: {n} docs written; read {report}")


def _export(args: argparse.Namespace) -> None:
    nlp = spacy.load(args.pipeline)
    nlp.get_pipe(args.component).extractor.save(args.output)
    print(f"wrote a GLiNER2 checkpoint folder to {args.output} (loadable by gliner2.GLiNER2.from_pretrained)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m spacy_gliner2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a data set to a .spacy DocBin")
    conv.add_argument("format", choices=["gliner", "bio", "cls"])
    conv.add_argument("input", type=Path)
    conv.add_argument("output", type=Path)
    conv.add_argument("--lang", default="en")
    conv.add_argument("--spans-key", default="gliner2")
    conv.add_argument("--text-field", default="text")
    conv.add_argument("--label-field", default="label")
    conv.add_argument("--limit", type=int, default=0, help="keep at most this many docs (0: all)")
    conv.add_argument("--shuffle", action="store_true", help="shuffle before --limit")
    conv.add_argument("--seed", type=int, default=0)
    conv.set_defaults(run=_convert)
    exp = sub.add_parser("export", help="write a pipeline's component as a reference GLiNER2 checkpoint")
    exp.add_argument("pipeline", type=Path)
    exp.add_argument("output", type=Path)
    exp.add_argument("--component", default="gliner2")
    exp.set_defaults(run=_export)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
