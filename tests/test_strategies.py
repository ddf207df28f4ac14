"""GenCLS++ strategies on the zero-shot sets: pool split, each strategy's task, and the figures."""
import json
from pathlib import Path

import pytest
import spacy

from spacy_gliner2.schema import Schema
from spacy_gliner2.strategies import (MAX_EXAMPLE_WORDS, POOL_EVERY, STRATEGIES, compare, split_pool, strategy_table,
                                      task_options)
from spacy_gliner2.zero_shot import EvalSet, decisions

DEFINITIONS = Path(__file__).resolve().parents[1] / "configs" / "label-definitions.json"
TOPICS = ["sports", "politics"]
ITEMS = [(f"The {w} story number {i}.", TOPICS[i % 2]) for i, w in enumerate(["match", "vote"] * 15)]
ITEMS.append((" ".join(["long"] * (MAX_EXAMPLE_WORDS + 1)), "sports"))  # too long to be shown as an example
ITEMS[10] = ("  ", "sports")  # in the pool, empty: never shown


def toy() -> EvalSet:
    return EvalSet("toy", "classification", TOPICS, list(ITEMS))


def test_the_pool_is_every_fifth_text_and_never_scored():
    pool, scored = split_pool(toy())
    assert pool == ITEMS[::POOL_EVERY] and len(pool) + len(scored) == len(ITEMS)
    assert not set(pool) & set(scored)
    _, limited = split_pool(toy(), limit=5)
    assert len(limited) == 5 and set(limited) <= set(scored)


def test_each_strategy_gives_a_valid_task():
    s, definitions = toy(), {"toy": {"sports": "games and teams", "politics": "government"}}
    pool, _ = split_pool(s)
    for strategy in STRATEGIES:
        options = task_options(strategy, s, pool, definitions, k=2)
        Schema.from_config(classifications={"t": options})  # parses
    assert task_options("descriptions", s, pool, {}, 2) is None  # no definitions for the set: not run
    assert task_options("descriptions", s, pool, definitions, 2)["labels"]["sports"] == "games and teams"
    fixed = task_options("examples", s, pool, definitions, 2)["examples"]
    assert sorted(label for _, label in fixed) == sorted(TOPICS) and all(ex in [list(p) for p in pool] for ex in fixed)
    nearest = task_options("nearest", s, pool, definitions, 2)
    assert nearest["nearest_examples"] == 2 and all(len(t.split()) <= MAX_EXAMPLE_WORDS for t, _ in nearest["examples"])
    assert len(nearest["examples"]) == len(pool) - 2  # the long and the empty text are left out
    assert task_options("numeric", s, pool, definitions, 2)["numeric_labels"] is True


def test_compare_scores_what_the_pipeline_decides(bert_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(bert_checkpoint), "entities": None, "classifications": {"x": ["a", "b"]}})
    definitions = {"toy": {"sports": "games and teams", "politics": "government"}}
    result = compare(nlp, [toy()], ["plain", "numeric", "uncertain", "descriptions", "examples", "nearest"], definitions,
                     k=2, share=0.3)
    for strategy in ("descriptions", "examples", "nearest"):  # each ran on the scored texts
        assert result["strategies"][strategy]["toy"]["n"] == len(split_pool(toy())[1])
    _, scored = split_pool(toy())
    decided = decisions(nlp, [t for t, _ in scored], TOPICS)
    expected = sum(d["label"] == g for d, (_, g) in zip(decided, scored)) / len(scored)
    assert result["strategies"]["plain"]["toy"] == {"n": len(scored), "accuracy": pytest.approx(expected), "answered": 1.0}
    unsure = result["strategies"]["uncertain"]["toy"]
    assert 0.5 <= unsure["answered"] < 1.0 and unsure["abstain_below"] > 0  # about 30% of the pool abstains
    table = strategy_table(result)
    assert "| toy |" in table and "answered" in table and "vs plain" in table


def test_the_shipped_definitions_name_labels_of_the_sets():
    from spacy_gliner2.zero_shot import READABLE, readable

    definitions = json.loads(DEFINITIONS.read_text())
    assert set(definitions["20newsgroups"]) == set(READABLE["20newsgroups"].values())
    assert set(definitions["ag_news"]) == set(READABLE["ag_news"].values())
    assert set(definitions["snips"]) == {readable(n) for n in ("AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic",
                                                              "RateBook", "SearchCreativeWork", "SearchScreeningEvent")}
