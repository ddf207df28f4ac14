"""Zero-shot evaluation of a pipeline on the public test sets the GLiNER2 paper reports.

Entities: micro-F1 of ``doc.ents`` (exact character span and label) on CrossNER AI, literature,
music, politics, science and MIT movie / restaurant, each with the natural-language labels of its
``labels.json`` (CoNLL-2003 is reported apart: it is in the training pool). Classification:
accuracy of the single-label decision on SST-2, IMDB, AG News, 20 Newsgroups, SNIPS, Banking77 and
MASSIVE intents, with label names made readable (:data:`READABLE` and :func:`readable`). The label
set of each data set is given to the pipeline per call (``component_cfg``), so any ``gliner2`` or
``gliclass`` pipeline can be evaluated.

    python -m spacy_gliner2 zero-shot PIPELINE_OR_CHECKPOINT --data ../shared/data/eval --out zero-shot.json [--limit 100] [--resume]

The JSON file is rewritten after each set; ``--resume`` keeps the sets it already holds (same
model, same number of texts) and runs the others.

20 Newsgroups messages are read without their headers; IMDB's ``<br />`` become spaces.
"""
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from spacy.language import Language

NER_SETS = ("CrossNER_AI", "CrossNER_literature", "CrossNER_music", "CrossNER_politics", "CrossNER_science",
            "mit-movie", "mit-restaurant")
APART = ("CoNLL_2003",)
IN_TRAIN_POOL = ("CoNLL_2003", "mit-movie", "mit-restaurant")  # their train splits are in ../shared/data/train
CLASS_SETS = ("sst2", "imdb", "ag_news", "20newsgroups", "snips", "banking77", "massive")
PAPER = {"crossner_average_f1": {"GLiNER2-base": 0.590},
         "classification_average_accuracy": {"GLiNER2-base": 0.72, "GLiClass": 0.63, "DeBERTa-v3 NLI": 0.69}}
READABLE = {  # label names that a word split alone would leave unreadable
    "sst2": {"0": "negative", "1": "positive"},
    "imdb": {"neg": "negative", "pos": "positive"},
    "ag_news": {"1": "world", "2": "sports", "3": "business", "4": "science and technology"},
    "20newsgroups": {
        "alt.atheism": "atheism", "comp.graphics": "computer graphics",
        "comp.os.ms-windows.misc": "microsoft windows", "comp.sys.ibm.pc.hardware": "pc hardware",
        "comp.sys.mac.hardware": "mac hardware", "comp.windows.x": "x window system", "misc.forsale": "for sale",
        "rec.autos": "cars", "rec.motorcycles": "motorcycles", "rec.sport.baseball": "baseball",
        "rec.sport.hockey": "hockey", "sci.crypt": "cryptography", "sci.electronics": "electronics",
        "sci.med": "medicine", "sci.space": "space", "soc.religion.christian": "christianity",
        "talk.politics.guns": "guns", "talk.politics.mideast": "middle east politics",
        "talk.politics.misc": "politics", "talk.religion.misc": "religion"},
}

GOLD_ALIASES = {  # gold types spelled otherwise than in the set's labels.json
    "CrossNER_music": {"misc": "else", "organisation": "organization"},
}

Entity = Tuple[int, int, str]


@dataclass
class EvalSet:
    """One test set: ``items`` are ``(text, gold)``; gold is a list of (start, end, label) for
    entities, a label for classification; ``labels`` are the names the pipeline is asked for."""

    name: str
    kind: str  # "entities" or "classification"
    labels: List[str]
    items: List[Tuple[str, Any]]


def readable(name: str) -> str:
    """``AddToPlaylist`` / ``card_arrival`` / ``calendar_set`` -> ``add to playlist`` / ``card arrival`` / ..."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").lower()


def _ner(folder: Path) -> EvalSet:
    labels = json.loads((folder / "labels.json").read_text(encoding="utf8"))
    alias = GOLD_ALIASES.get(folder.name, {})
    items = [(row["sentence"], [(e["pos"][0], e["pos"][1], alias.get(e["type"], e["type"])) for e in row["entities"]])
             for row in json.loads((folder / "test.json").read_text(encoding="utf8"))]
    return EvalSet(folder.name, "entities", labels, items)


def _classes(name: str, pairs: Iterable[Tuple[str, str]]) -> EvalSet:
    names = READABLE.get(name, {})
    items = [(text.strip(), names.get(label, readable(label))) for text, label in pairs]
    return EvalSet(name, "classification", sorted({label for _, label in items}), items)


def _newsgroup_body(path: Path) -> str:
    text = path.read_text(encoding="latin-1")
    return text.split("\n\n", 1)[1] if "\n\n" in text else text  # the message without its headers


def _loaders(data: Path) -> Dict[str, Callable[[], EvalSet]]:
    def tsv(path: Path) -> List[Tuple[str, str]]:
        with open(path, encoding="utf8", newline="") as f:
            return [(row[0], row[1]) for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(row) == 2]

    def csv_rows(path: Path) -> List[List[str]]:
        with open(path, encoding="utf8", newline="") as f:
            return list(csv.reader(f))

    loaders: Dict[str, Callable[[], EvalSet]] = {name: (lambda n=name: _ner(data / n)) for name in NER_SETS + APART}
    loaders.update({
        "sst2": lambda: _classes("sst2", tsv(data / "sst2" / "test_senteval_labeled.tsv")),
        "imdb": lambda: _classes("imdb", [(p.read_text(encoding="utf8").replace("<br />", " "), p.parent.name)
                                          for p in sorted((data / "imdb" / "test").glob("*/*.txt"))]),
        "ag_news": lambda: _classes("ag_news", [(f"{title}. {body}", c) for c, title, body in csv_rows(data / "ag_news" / "test.csv")]),
        "20newsgroups": lambda: _classes("20newsgroups", [(_newsgroup_body(p), p.parent.name) for p in
                                                          sorted((data / "20newsgroups" / "20news-bydate-test").glob("*/*"))]),
        "snips": lambda: _classes("snips", zip((data / "snips" / "test.seq.in").read_text(encoding="utf8").splitlines(),
                                               (data / "snips" / "test.label").read_text(encoding="utf8").splitlines())),
        "banking77": lambda: _classes("banking77", [tuple(r) for r in csv_rows(data / "banking77" / "test.csv")[1:]]),
        "massive": lambda: _classes("massive", [(r["sentence"], r["intent"]) for r in map(
            json.loads, (data / "massive_en_slurp" / "test.jsonl").read_text(encoding="utf8").splitlines())]),
    })
    return loaders


def load_sets(data: Path, names: Optional[Sequence[str]] = None, limit: Optional[int] = None) -> List[EvalSet]:
    """The test sets under ``data`` (``../shared/data/eval``); ``limit``: that many items of each, spread
    evenly over it (sets are stored sorted by class, so the first ones would all share one label)."""
    loaders = _loaders(Path(data))
    unknown = sorted(set(names or ()) - set(loaders))
    if unknown:
        raise ValueError(f"Unknown evaluation set(s) {unknown}; known: {sorted(loaders)}")
    sets = [loaders[name]() for name in (names or list(loaders))]
    for s in sets:
        if limit:
            s.items = s.items[:: max(1, len(s.items) // limit)][:limit]
    return sets


def micro_f1(predicted: Sequence[Iterable[Entity]], gold: Sequence[Iterable[Entity]]) -> Dict[str, float]:
    """Micro P/R/F over exact (start, end, label) spans, summed over texts."""
    tp = fp = fn = 0
    for p, g in zip(predicted, gold):
        p, g = set(p), set(g)
        tp, fp, fn = tp + len(p & g), fp + len(p - g), fn + len(g - p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"p": precision, "r": recall, "f": f}


def component_of(nlp: Language) -> Tuple[str, str]:
    """(name, factory) of the pipeline's first ``gliner2`` or ``gliclass`` component."""
    for name in nlp.pipe_names:
        factory = nlp.get_pipe_meta(name).factory
        if factory in ("gliner2", "gliclass"):
            return name, factory
    raise ValueError(f"The pipeline has no gliner2 or gliclass component (it has {nlp.pipe_names}).")


def decisions(nlp: Language, texts: Sequence[str], task: Any, batch_size: int = 32, progress: bool = False,
              desc: str = "") -> List[Dict[str, Any]]:
    """The ``{label, confidence}`` decision of each text for one single-label task ``task`` (its
    labels, or its options), given per call as the only task."""
    from tqdm import tqdm

    name, factory = component_of(nlp)
    cfg: Dict[str, Any] = {"classifications": {"zero_shot": task}}
    cfg.update({"entities": None, "structures": None, "relations": None} if factory == "gliner2" else {})
    docs = nlp.pipe(texts, batch_size=batch_size, component_cfg={name: cfg})
    docs = tqdm(docs, total=len(texts), desc=desc, unit="text", disable=not progress, leave=False)
    return [(doc._.gliclass if factory == "gliclass" else doc._.gliner2["classifications"])["zero_shot"] for doc in docs]


def evaluate(nlp: Language, sets: Sequence[EvalSet], batch_size: int = 32, progress: bool = True,
             done: Optional[Dict[str, Any]] = None, after_set: Optional[Callable[[Dict[str, Any]], None]] = None
             ) -> Dict[str, Any]:
    """Every set's score (entity sets need a ``gliner2`` component), then the averages. Sets already
    in ``done`` (scores of an earlier run with the same texts) are not run again; ``after_set``
    gets the result so far after each set (an interrupted run keeps what it finished)."""
    from tqdm import tqdm

    name, factory = component_of(nlp)
    scores: Dict[str, Any] = dict(done or {})
    for s in sets:
        texts = [text for text, _ in s.items]
        if s.name in scores and scores[s.name].get("n") == len(texts):
            continue
        if s.kind == "entities" and factory != "gliner2":
            scores[s.name] = {"n": 0, "skipped": "a gliclass pipeline classifies only"}
        elif s.kind == "entities":  # only this set's task runs
            cfg = {"entities": s.labels, "classifications": None, "structures": None, "relations": None}
            docs = nlp.pipe(texts, batch_size=batch_size, component_cfg={name: cfg})
            docs = tqdm(docs, total=len(texts), desc=s.name, unit="text", disable=not progress, leave=False)
            predicted = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs]
            scores[s.name] = {"n": len(texts), **micro_f1(predicted, [g for _, g in s.items])}
        else:
            decided = decisions(nlp, texts, s.labels, batch_size, progress, s.name)
            scores[s.name] = {"n": len(texts), "accuracy": accuracy(decided, [g for _, g in s.items])}
        if after_set is not None:
            after_set(summary(scores))
    return summary(scores)


def summary(scores: Dict[str, Any]) -> Dict[str, Any]:
    """The sets' scores (in the order of :data:`NER_SETS`, :data:`APART`, :data:`CLASS_SETS`) and the
    averages over complete groups."""
    order = [*NER_SETS, *APART, *CLASS_SETS]
    scores = dict(sorted(scores.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
    ner = [scores[n]["f"] for n in NER_SETS if "f" in scores.get(n, {})]
    crossner = [scores[n]["f"] for n in NER_SETS if n.startswith("CrossNER") and "f" in scores.get(n, {})]
    cls = [scores[n]["accuracy"] for n in CLASS_SETS if "accuracy" in scores.get(n, {})]
    return {"sets": scores,
            "crossner_average_f1": sum(ner) / len(ner) if len(ner) == len(NER_SETS) else None,
            "crossner_only_average_f1": sum(crossner) / len(crossner) if len(crossner) == 5 else None,
            "classification_average_accuracy": sum(cls) / len(cls) if len(cls) == len(CLASS_SETS) else None,
            "paper": PAPER}


def accuracy(decided: Sequence[Dict[str, Any]], gold: Sequence[str]) -> float:
    """The share of decisions naming the gold label."""
    return sum(d["label"] == g for d, g in zip(decided, gold)) / max(len(gold), 1)


def table(result: Dict[str, Any]) -> str:
    """A Markdown table of ``evaluate``'s result beside the paper's figures."""
    lines = ["| set | texts | score |", "|---|---:|---:|"]
    for name, s in result["sets"].items():
        score = f"F1 {s['f']:.3f}" if "f" in s else f"accuracy {s['accuracy']:.3f}" if "accuracy" in s else s["skipped"]
        lines.append(f"| {name}{' (train split in the training pool)' if name in IN_TRAIN_POOL else ''} | {s['n']} | {score} |")
    for key, label in (("crossner_average_f1", "entity average (7 sets)"),
                       ("classification_average_accuracy", "classification average (7 sets)")):
        value = result[key]
        paper = ", ".join(f"{k} {v:.2f}" for k, v in PAPER[key].items())
        lines.append(f"| **{label}** | | {'n/a (not all sets run)' if value is None else f'{value:.3f}'} (paper: {paper}) |")
        if key == "crossner_average_f1" and result.get("crossner_only_average_f1") is not None:
            lines.append(f"| **CrossNER only (5 sets)** | | {result['crossner_only_average_f1']:.3f} |")
    return "\n".join(lines)
