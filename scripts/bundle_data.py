"""Build the training and dev corpora of the bundled model from ``../shared/data/train`` only.

    python scripts/bundle_data.py ../shared/data/train corpus/bundle --seed 0

Writes ``train.spacy`` and ``dev.spacy`` (spaCy DocBins, user data kept):

- entities (``doc.ents``, natural-language labels, lower-cased): CoNLL-2003, MIT movie, MIT
  restaurant and the GLiNER sample (144 labels over 64 texts, repeated so each is seen often);
- classes (``doc.cats`` keyed ``"task:label"``, one task per data set, readable label names):
  CLINC150 intents and their domains, TweetEval sentiment, emotion, hate, irony and offensive
  (sentiment from its validation split: its training texts are not in the shared copy);
- structures (``doc._.gliner2["structures"]``): an MIT query as one record of its slots,
  "restaurant request" / "movie request" with one field per slot type.

A Doc annotates one of the three, so it teaches only that (entity-free Docs do not teach
"no entities"). Dev: a held-out slice of every source (the first ``--n-dev`` of each shuffled
file, or the source's own validation split).
"""
import argparse
import json
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import spacy
from spacy.tokens import Doc, Span

from spacy_gliner2.convert import Report, gliner_json, write_docbin
from spacy_gliner2.core.annotate import register_extension
from spacy_gliner2.zero_shot import readable

EXTENSION = "gliner2"
ENTITY_SETS = {"CoNLL_2003": 5000, "mit-movie": 3000, "mit-restaurant": 3000}
STRUCTURE_SETS = {"mit-movie": ("movie request", 1200), "mit-restaurant": ("restaurant request", 1200)}
TWEET_TASKS = {"sentiment": 2000, "emotion": 2000, "hate": 1500, "irony": 1500, "offensive": 1500}
TWEET_NAMES = {"hate": "hate speech", "offensive": "offensive language"}
READABLE_TWEET = {"not-hate": "not hate speech", "hate": "hate speech", "non_irony": "not ironic", "irony": "ironic",
                  "not-offensive": "not offensive", "offensive": "offensive"}
GLINER_SAMPLE_REPEATS = 5


def plain(doc: Doc) -> Doc:
    """The same words with no annotation (entities not annotated)."""
    return Doc(doc.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])


def lowercased(doc: Doc) -> Doc:
    out = plain(doc)
    out.ents = [Span(out, e.start, e.end, label=e.label_.lower()) for e in doc.ents]
    return out


def record_of(doc: Doc, name: str) -> Doc:
    """A query as one structure record: each slot type a field with its spans."""
    out = plain(doc)
    record: Dict[str, List[Dict[str, object]]] = {}
    for e in doc.ents:
        record.setdefault(e.label_.lower(), []).append({"text": e.text, "start": e.start_char, "end": e.end_char})
    out._.set(EXTENSION, {"structures": {name: [record] if record else []}})
    return out


def classified(nlp, text: str, task: str, label: str) -> Doc:
    doc = nlp.make_doc(text)
    doc.cats = {f"{task}:{label}": 1.0}
    return doc


def split(items: Sequence, n_dev: int, rng: random.Random) -> Tuple[List, List]:
    items = list(items)
    rng.shuffle(items)
    return items[n_dev:], items[:n_dev]


def lines(path: Path) -> List[str]:
    return path.read_text(encoding="utf8").rstrip("\n").split("\n")


def tweet_split(folder: Path, split_name: str) -> List[Tuple[str, str]]:
    names = dict(line.split("\t") for line in lines(folder / "mapping.txt"))
    texts, labels = lines(folder / f"{split_name}_text.txt"), lines(folder / f"{split_name}_labels.txt")
    if len(texts) != len(labels):
        raise SystemExit(f"{folder}: {split_name} has {len(texts)} texts and {len(labels)} labels")
    return [(t.strip(), READABLE_TWEET.get(names[y.strip()], names[y.strip()])) for t, y in zip(texts, labels)]


def build(data: Path, n_dev: int, seed: int) -> Tuple[List[Doc], List[Doc]]:
    nlp = spacy.blank("en")
    register_extension(EXTENSION)
    rng = random.Random(seed)
    train: List[Doc] = []
    dev: List[Doc] = []
    report = Report()
    for name, n in ENTITY_SETS.items():
        docs = [lowercased(d) for d in gliner_json(nlp, data / name / "train.json", report)]
        rest, held = split(docs, n_dev, rng)
        train += rest[:n]
        dev += held
        if name in STRUCTURE_SETS:
            structure, m = STRUCTURE_SETS[name]
            train += [record_of(d, structure) for d in rest[n:n + m]]
            dev += [record_of(d, structure) for d in held[: n_dev // 3]]
    sample = [lowercased(d) for d in gliner_json(nlp, data / "gliner_sample_data.json", report)]
    train += [d for _ in range(GLINER_SAMPLE_REPEATS) for d in sample]
    clinc = json.loads((data / "clinc150" / "data_full.json").read_text(encoding="utf8"))
    domains = json.loads((data / "clinc150" / "domains.json").read_text(encoding="utf8"))
    domain_of = {intent: readable(domain) for domain, intents in domains.items() for intent in intents}
    utterances = list(clinc["train"])
    rng.shuffle(utterances)
    train += [classified(nlp, t, "intent", readable(i)) for t, i in utterances[:6000]]
    train += [classified(nlp, t, "domain", domain_of[i]) for t, i in utterances[6000:8000]]
    val = list(clinc["val"])
    rng.shuffle(val)
    dev += [classified(nlp, t, "intent", readable(i)) for t, i in val[:n_dev]]
    dev += [classified(nlp, t, "domain", domain_of[i]) for t, i in val[n_dev:2 * n_dev]]
    tweets = data / "tweeteval" / "datasets"
    for task, n in TWEET_TASKS.items():
        task_name = TWEET_NAMES.get(task, task)
        has_train = (tweets / task / "train_text.txt").exists()
        rows = tweet_split(tweets / task, "train" if has_train else "val")
        rng.shuffle(rows)
        train += [classified(nlp, t, task_name, y) for t, y in rows[:n]]
        held = tweet_split(tweets / task, "val" if has_train else "test")
        rng.shuffle(held)
        dev += [classified(nlp, t, task_name, y) for t, y in held[:n_dev]]
    print(f"entity sources: {report}")
    rng.shuffle(train)
    return train, dev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the train folder of the shared data")
    parser.add_argument("output", type=Path, help="folder for train.spacy and dev.spacy")
    parser.add_argument("--n-dev", type=int, default=60, help="dev docs per source")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, dev = build(args.data, args.n_dev, args.seed)
    for name, docs in (("train", train), ("dev", dev)):
        n = write_docbin(iter(docs), args.output / f"{name}.spacy")
        print(f"{name}: {n} docs -> {args.output / name}.spacy")


if __name__ == "__main__":
    main()
