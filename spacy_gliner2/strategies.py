"""GenCLS++ strategies on the zero-shot classification sets: each strategy's accuracy for one pipeline.

Each strategy is a classification task option of the schema (README: "GenCLS++ strategies"):

- ``plain``: the set's label names (as :mod:`.zero_shot`);
- ``descriptions``: each label with its definition (a JSON file ``{set: {label: definition}}``;
  a set without definitions is reported as not run);
- ``numeric``: ``numeric_labels`` (the prompt names labels "1", "2", ...);
- ``examples``: one fixed example per label (its shortest pool text) for sets of at most
  ``MAX_FIXED_LABELS`` labels;
- ``nearest``: ``nearest_examples = k`` over the whole pool;
- ``uncertain``: ``abstain_below`` set so that ``share`` of the pool abstains: accuracy on the
  texts answered, and the share answered.

Protocol: every ``POOL_EVERY``-th text of a test set (stored by class: each class is represented)
is the pool of labelled examples, and for ``uncertain`` the calibration set; only pool texts of at most
``MAX_EXAMPLE_WORDS`` words are shown as examples (a 512-token encoder must keep room for the text).
The other texts are scored, the same ones for every strategy. The pool texts are never scored.
"""
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from spacy.language import Language

from .calibration import abstention_threshold
from .schema import UNCERTAIN, SchemaError
from .zero_shot import EvalSet, accuracy, decisions

STRATEGIES = ("plain", "descriptions", "numeric", "examples", "nearest", "uncertain")
POOL_EVERY = 5
MAX_EXAMPLE_WORDS = 60
MAX_FIXED_LABELS = 20


def split_pool(s: EvalSet, limit: Optional[int] = None) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """(pool, scored): every ``POOL_EVERY``-th item, and ``limit`` of the others spread over them."""
    pool = s.items[::POOL_EVERY]
    scored = [item for i, item in enumerate(s.items) if i % POOL_EVERY]
    if limit:
        scored = scored[:: max(1, len(scored) // limit)][:limit]
    return pool, scored


def _shown(pool: Sequence[Tuple[str, str]]) -> List[List[str]]:
    """The pool texts a prompt can show: not empty (20 Newsgroups has empty messages), not too long."""
    return [[text, label] for text, label in pool if 0 < len(text.split()) <= MAX_EXAMPLE_WORDS]


def task_options(strategy: str, s: EvalSet, pool: Sequence[Tuple[str, str]], definitions: Dict[str, Dict[str, str]],
                 k: int) -> Optional[Dict[str, Any]]:
    """The task config a strategy gives set ``s`` (None: the strategy does not apply to it)."""
    if strategy in ("plain", "uncertain"):
        return {"labels": s.labels}
    if strategy == "descriptions":
        known = definitions.get(s.name)
        return {"labels": {label: known.get(label) for label in s.labels}} if known else None
    if strategy == "numeric":
        return {"labels": s.labels, "numeric_labels": True}
    shown = _shown(pool)
    if strategy == "examples":
        shortest: Dict[str, List[str]] = {}
        for text, label in sorted(shown, key=lambda ex: len(ex[0])):
            shortest.setdefault(label, [text, label])
        if len(s.labels) > MAX_FIXED_LABELS or not shortest:
            return None
        return {"labels": s.labels, "examples": [shortest[label] for label in s.labels if label in shortest]}
    if strategy == "nearest":
        return {"labels": s.labels, "examples": shown, "nearest_examples": k} if shown else None
    raise ValueError(f"Unknown strategy {strategy!r}; known: {list(STRATEGIES)}.")


def run_strategy(nlp: Language, strategy: str, s: EvalSet, definitions: Dict[str, Dict[str, str]], k: int = 4,
                 share: float = 0.1, limit: Optional[int] = None, batch_size: int = 32) -> Dict[str, Any]:
    """One strategy's figures on one set: ``accuracy`` (of the texts answered), ``answered``, ``n``."""
    pool, scored = split_pool(s, limit)
    options = task_options(strategy, s, pool, definitions, k)
    if options is None:
        return {"n": 0, "skipped": "not applicable"}
    texts, gold = [t for t, _ in scored], [g for _, g in scored]
    if strategy == "uncertain":
        calibration = pool[:: max(1, len(pool) // limit)][:limit] if limit else pool
        confidences = [d["confidence"] for d in decisions(nlp, [t for t, _ in calibration], options, batch_size)]
        options = {**options, "abstain_below": abstention_threshold(confidences, share)}
    try:
        decided = decisions(nlp, texts, options, batch_size)
    except SchemaError as error:  # a prompt the encoder cannot read beside a text
        return {"n": 0, "skipped": str(error).split(":")[0]}
    answered = [(d, g) for d, g in zip(decided, gold) if d["label"] != UNCERTAIN]
    return {"n": len(texts), "accuracy": accuracy([d for d, _ in answered], [g for _, g in answered]),
            "answered": len(answered) / max(len(texts), 1), **({"abstain_below": options["abstain_below"]}
                                                            if "abstain_below" in options else {})}


def compare(nlp: Language, sets: Sequence[EvalSet], strategies: Sequence[str] = STRATEGIES,
            definitions: Optional[Dict[str, Dict[str, str]]] = None, k: int = 4, share: float = 0.1,
            limit: Optional[int] = None, batch_size: int = 32,
            report: Callable[[str], None] = lambda line: None) -> Dict[str, Any]:
    """Every strategy on every classification set, and each strategy's average over the sets it ran on."""
    results: Dict[str, Dict[str, Any]] = {}
    for strategy in strategies:
        for s in sets:
            if s.kind == "classification":
                results.setdefault(strategy, {})[s.name] = run_strategy(nlp, strategy, s, definitions or {}, k, share,
                                                                        limit, batch_size)
                report(f"{strategy} {s.name}: {results[strategy][s.name]}")
    return {"strategies": results, "k": k, "share": share, "pool_every": POOL_EVERY,
            "max_example_words": MAX_EXAMPLE_WORDS}


def read_definitions(path: Optional[Path]) -> Dict[str, Dict[str, str]]:
    return json.loads(Path(path).read_text(encoding="utf8")) if path else {}


def strategy_table(result: Dict[str, Any]) -> str:
    """A Markdown table: a row per set, a column per strategy (``uncertain``: accuracy on the
    answered texts, with the share answered)."""
    per = result["strategies"]
    names = sorted({name for sets in per.values() for name in sets}, key=lambda n: list(next(iter(per.values()))).index(n))
    lines = ["| set | " + " | ".join(per) + " |", "|---|" + "---:|" * len(per)]

    def cell(r: Dict[str, Any], strategy: str) -> str:
        if "accuracy" not in r:
            return "n/a"
        return f"{r['accuracy']:.3f}" + (f" ({r['answered']:.0%} answered)" if strategy == "uncertain" else "")

    for name in names:
        lines.append(f"| {name} | " + " | ".join(cell(per[st].get(name, {}), st) for st in per) + " |")
    plain = per.get("plain", {})
    row = []
    for strategy, sets in per.items():  # the average over the sets this strategy ran on, beside plain's on the same
        ran = [n for n, r in sets.items() if "accuracy" in r]
        mean = sum(sets[n]["accuracy"] for n in ran) / len(ran) if ran else None
        base = [plain[n]["accuracy"] for n in ran if "accuracy" in plain.get(n, {})]
        delta = f" ({mean - sum(base) / len(base):+.3f} vs plain)" if mean is not None and strategy != "plain" and len(base) == len(ran) else ""
        row.append("n/a" if mean is None else f"{mean:.3f}{delta}")
    lines.append("| **average of the sets run** | " + " | ".join(row) + " |")
    return "\n".join(lines)
