"""Write CLINC150 utterances with their domain (10 classes) as ``[text, label]`` JSON files.

    python scripts/clinc_domains.py ../shared/data/train/clinc150 corpus/clinc

CLINC150 labels each utterance with one of 150 intents; ``domains.json`` groups the intents
into 10 domains ("banking", "credit cards", "travel", ...). This writes ``train.json``,
``val.json`` and ``test.json`` (the data set's own splits, out-of-scope utterances left out)
for ``python -m spacy_gliner2 convert cls``, domain names with spaces instead of underscores.
"""
import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clinc", type=Path, help="folder with data_full.json and domains.json")
    parser.add_argument("output", type=Path, help="folder to write train.json, val.json and test.json to")
    args = parser.parse_args()
    data = json.loads((args.clinc / "data_full.json").read_text(encoding="utf8"))
    domains = json.loads((args.clinc / "domains.json").read_text(encoding="utf8"))
    domain_of = {intent: domain.replace("_", " ") for domain, intents in domains.items() for intent in intents}
    args.output.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        unknown = sorted({intent for _, intent in data[split]} - set(domain_of))
        if unknown:
            raise SystemExit(f"{args.clinc}: intents {unknown} of split {split!r} have no domain in domains.json")
        rows = [[text, domain_of[intent]] for text, intent in data[split]]
        (args.output / f"{split}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf8")
        print(f"{split}: {len(rows)} utterances, {len(set(domain_of.values()))} domains -> {args.output / split}.json")


if __name__ == "__main__":
    main()
