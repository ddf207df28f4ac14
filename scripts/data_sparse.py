"""Data-sparse experiment (after GLiClass and GenCLS++), on the bundled gliner2 model: k labelled examples per label, a supervised warm-up,
then (a) more supervised steps, (b) PPO with the F1 reward on the same examples, (c) PPO with
simulated accept/reject feedback on the warm-up model's decisions for unlabelled texts.

Two tasks, both from ../shared/data/train (tuning allowed there), new to the bundled model:
- single-label: TweetEval stance (5 targets pooled; the text says its topic), 3 labels;
- multi-label: which of 8 kinds of detail an MIT restaurant query mentions (from its slots).

    python scripts/data_sparse.py --out metrics/data-sparse.json --markdown metrics/data-sparse.md

Each seed draws its own k-shot set, feedback texts and run order; the held-out texts are the same for
every seed and arm. Prints one line per arm and writes mean and spread over seeds.
"""
import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import spacy
import torch
from spacy.training import Example

from spacy_gliner2.zero_shot import readable

Item = Tuple[str, List[str]]  # text, gold labels
STANCE = {"none": "neutral", "against": "against", "favor": "in favor"}
RESTAURANT = {"Amenity": "amenity", "Cuisine": "cuisine", "Dish": "dish", "Hours": "opening hours",
              "Location": "location", "Price": "price", "Rating": "rating", "Restaurant_Name": "restaurant name"}


def stance(data: Path) -> Dict[str, Any]:
    root = data / "tweeteval" / "datasets" / "stance"
    names = dict(line.split("\t") for line in (root / "mapping.txt").read_text().splitlines() if line.strip())

    def read(split: str) -> List[Item]:
        items = []
        for target in sorted(p for p in root.iterdir() if p.is_dir()):
            texts = (target / f"{split}_text.txt").read_text(encoding="utf8").splitlines()
            labels = (target / f"{split}_labels.txt").read_text(encoding="utf8").splitlines()
            items += [(f"Topic: {readable(target.name)}. {text.strip()}", [STANCE[names[label.strip()]]])
                      for text, label in zip(texts, labels)]
        return items

    task = {"labels": {"against": "the tweet opposes the topic", "in favor": "the tweet supports the topic",
                       "neutral": "the tweet takes no side on the topic"}}
    return {"name": "stance", "task": task, "multi_label": False, "train": read("train"), "held_out": read("test")}


def restaurant(data: Path) -> Dict[str, Any]:
    rows = json.loads((data / "mit-restaurant" / "train.json").read_text(encoding="utf8"))
    items = [(r["sentence"], sorted({RESTAURANT[e["type"]] for e in r["entities"] if e["type"] in RESTAURANT})) for r in rows]
    items = [(t, labels) for t, labels in items if labels]
    cut = len(items) // 2  # the first half trains, the second is held out
    return {"name": "restaurant details", "task": {"labels": sorted(RESTAURANT.values()), "multi_label": True},
            "multi_label": True, "train": items[:cut], "held_out": items[cut:]}


def k_shot(items: Sequence[Item], labels: Sequence[str], k: int, rng: random.Random) -> List[Item]:
    """Texts drawn until every label has ``k`` positive examples (multi-label texts count for each of theirs)."""
    order = list(items)
    rng.shuffle(order)
    count = {label: 0 for label in labels}
    chosen = []
    for text, gold in order:
        if any(count[g] < k for g in gold):
            chosen.append((text, gold))
            for g in gold:
                count[g] += 1
        if all(c >= k for c in count.values()):
            break
    return chosen


def pipeline(model: str, spec: Dict[str, Any], settings: Dict[str, Any]):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": model, "entities": None, "structures": None, "relations": None,
                                    "classifications": {spec["name"]: spec["task"]}, "training": settings})
    return nlp


def examples(nlp, items: Sequence[Item], labels: Sequence[str]) -> List[Example]:
    out = []
    for text, gold in items:
        doc = nlp.make_doc(text)
        out.append(Example.from_dict(doc, {"cats": {label: float(label in gold) for label in labels}}))
    return out


def train(nlp, egs: List[Example], epochs: int, batch_size: int, rng: random.Random) -> int:
    pipe, steps = nlp.get_pipe("gliner2"), 0
    for _ in range(epochs):
        rng.shuffle(egs)
        for batch in spacy.util.minibatch(egs, batch_size):
            pipe.update(batch, sgd=True, losses={})
            steps += 1
    return steps


def decide(nlp, spec: Dict[str, Any], texts: Sequence[str]) -> List[List[str]]:
    out = []
    for doc in nlp.pipe(texts, batch_size=32):
        decision = doc._.gliner2["classifications"][spec["name"]]
        out.append([d["label"] for d in decision] if spec["multi_label"] else [decision["label"]])
    return out


def score(nlp, spec: Dict[str, Any], held_out: Sequence[Item]) -> float:
    """Accuracy (single-label) or micro-F1 (multi-label) on the held-out texts."""
    predicted = decide(nlp, spec, [t for t, _ in held_out])
    if not spec["multi_label"]:
        return sum(p == g for p, (_, g) in zip(predicted, held_out)) / len(held_out)
    tp = sum(len(set(p) & set(g)) for p, (_, g) in zip(predicted, held_out))
    fp = sum(len(set(p) - set(g)) for p, (_, g) in zip(predicted, held_out))
    fn = sum(len(set(g) - set(p)) for p, (_, g) in zip(predicted, held_out))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def verdicts(nlp, spec: Dict[str, Any], items: Sequence[Item], labels: Sequence[str]) -> List[Example]:
    """A simulated person's accept/reject of the model's decisions (only the labels it chose are judged)."""
    out = []
    for (text, gold), chosen in zip(items, decide(nlp, spec, [t for t, _ in items])):
        doc = nlp.make_doc(text)
        out.append(Example.from_dict(doc, {"cats": {label: float(label in gold) for label in chosen}}))
    return out


def run_seed(args: argparse.Namespace, spec: Dict[str, Any], seed: int, held_out: Sequence[Item]) -> Dict[str, float]:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    labels = list(spec["task"]["labels"])
    shots = k_shot(spec["train"], labels, args.k, rng)
    rest = [item for item in spec["train"] if item not in shots]
    unlabelled = rng.sample(rest, args.feedback_texts)
    settings = {"encoder_lr": args.encoder_lr, "head_lr": args.head_lr, "seed": seed}
    nlp = pipeline(args.model, spec, settings)
    figures = {"zero-shot": score(nlp, spec, held_out)}
    warm_steps = train(nlp, examples(nlp, shots, labels), args.warmup_epochs, args.batch_size, rng)
    figures["warm-up"] = score(nlp, spec, held_out)
    warm = {k: v.clone() for k, v in nlp.get_pipe("gliner2").runner.model.state_dict().items()}
    feedback = verdicts(nlp, spec, unlabelled, labels)  # on the warm-up model's decisions
    arms = {"(a) supervised": ("supervised", "f1", examples(nlp, shots, labels)),
            "(b) PPO, F1 reward": ("ppo", "f1", examples(nlp, shots, labels)),
            "(c) PPO, simulated feedback": ("ppo", "accuracy", feedback)}
    for arm, (objective, reward, egs) in arms.items():
        nlp = pipeline(args.model, spec, {**settings, "objective": objective, "reward": reward})
        pipe = nlp.get_pipe("gliner2")
        pipe.runner.model.load_state_dict(warm)
        pipe.runner.invalidate()
        steps = train(nlp, egs, args.epochs, args.batch_size, random.Random(seed + 1))
        figures[arm] = score(nlp, spec, held_out)
        print(f"{spec['name']} seed {seed}: {arm} {figures[arm]:.3f} ({steps} steps after {warm_steps} warm-up steps)",
              file=sys.stderr)
    figures["texts: k-shot / feedback"] = (len(shots), len(feedback))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    parser.add_argument("--model", default="spacy-gliner2/minilm-small")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--held-out", type=int, default=400)
    parser.add_argument("--feedback-texts", type=int, default=96)
    parser.add_argument("--warmup-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encoder-lr", type=float, default=3e-5)
    parser.add_argument("--head-lr", type=float, default=3e-4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start, results = time.time(), {}
    for spec in (stance(args.data), restaurant(args.data)):
        held_out = spec["held_out"][:: max(1, len(spec["held_out"]) // args.held_out)][: args.held_out]
        runs = [run_seed(args, spec, int(seed), held_out) for seed in args.seeds.split(",")]
        arms = [key for key in runs[0] if not key.startswith("texts")]
        results[spec["name"]] = {
            "metric": "micro-F1" if spec["multi_label"] else "accuracy", "held_out": len(held_out),
            "runs": runs, "mean": {a: statistics.mean(r[a] for r in runs) for a in arms},
            "stdev": {a: statistics.stdev(r[a] for r in runs) if len(runs) > 1 else 0.0 for a in arms}}
    results["settings"] = {k: str(v) for k, v in vars(args).items()}
    results["minutes"] = (time.time() - start) / 60
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf8")
    table = markdown(results)
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf8")
    print(table)


def markdown(results: Dict[str, Any]) -> str:
    tasks = [name for name in results if isinstance(results[name], dict) and "mean" in results[name]]
    arms = list(results[tasks[0]]["mean"])
    lines = ["| arm | " + " | ".join(f"{t} ({results[t]['metric']})" for t in tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(
            f"{results[t]['mean'][arm]:.3f} ± {results[t]['stdev'][arm]:.3f}" for t in tasks) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
