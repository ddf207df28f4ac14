#!/usr/bin/env python
"""Throughput and agreement on a GLiNER2.5 "boundary" checkpoint against the reference ``gliner2`` 2.1.0.

Builds (or reuses) a full-size random-weight boundary-base checkpoint with the reference package
(DeBERTa-v3-base encoder, the boundary head settings that exports of fastino/gliner2.5-base-v1
require: shared pool of 192 spans from the top 64 boundaries, span content, abstention, count,
records and relations; ``--layout per_query``: the same head on the library's default per-query
proposals), then for 5 and 50 entity labels times our spaCy component (exact mode)
against ``AutoExtractor.batch_extract`` on the same texts, best of ``--repeats``, and compares
every decision. "other load" is the CPU other processes used meanwhile, in cores.

    python benchmarks/boundary_throughput.py [--quick] [--layout shared|per_query] [--out results.json] [--checkpoint-dir DIR]
"""
import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import cpu_seconds, other_load, timed  # benchmarks/machine.py
from throughput import (ATTENTION_INIT_STD, DEBERTA_V3_BASE, LABELS_5, LABELS_50, ROOT, best_of, compare, decisions,
                        finish_checkpoint, load_texts, make_nlp, start_checkpoint)

HEAD = dict(candidate_pool="shared", boundary_dim=128, pair_dim=128, enable_span_content=True, content_dim=64,
            content_soft_max_pool=False, candidate_attention_layers=0, query_attention_layers=0,
            use_inside_evidence=True, enable_abstention=True, enable_count_head=True, enable_records=True,
            record_dim=128, record_instance_queries=32, enable_relations=True, overlap_policy="flat",
            pool_boundary_top_k=64, pool_size=192, min_pool_per_query=8)
SCHEMAS = {"entities-5": {"entities": LABELS_5}, "entities-50": {"entities": LABELS_50}}
PAIR_POSITIVE = 0.02  # head calibration: ~2 % of pooled candidates at or above 0.5


def build_checkpoint(folder: Path, seed: int, calibration_texts, layout: str = "shared") -> str:
    """A random-weight boundary-base checkpoint built and saved by the reference (or ``folder`` reused).

    Encoder as ``throughput.py``'s; head matrices N(0, 1/fan_in), BOS/EOS N(0, 1), biases 0; the
    abstention bias -1.5; the reranker's output bias shifted so that PAIR_POSITIVE of the candidates
    the reference pools (or proposes, per query) on ``calibration_texts`` pass 0.5.
    """
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return "reused"
    from gliner2 import AutoExtractor, ExtractorConfig
    from gliner2.models.boundary.engine import BoundaryExtractor
    from transformers import DebertaV2Config

    partial, tokenizer = start_checkpoint(folder)
    config = ExtractorConfig(model_name="deberta-v3-base-boundary-random", architecture="boundary",
                             token_pooling="first", boundary_head=dict(HEAD, candidate_pool=layout))
    torch.manual_seed(seed)
    model = BoundaryExtractor(config, encoder_config=DebertaV2Config(**DEBERTA_V3_BASE), tokenizer=tokenizer).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("query_proj.weight", "key_proj.weight")):
                param.normal_(0.0, ATTENTION_INIT_STD, generator=generator)
            elif name.startswith("encoder.") or "norm" in name:
                continue
            elif name.endswith(("bos_state", "eos_state")):
                param.normal_(0.0, 1.0, generator=generator)
            elif param.dim() > 1:
                param.normal_(0.0, param.shape[1] ** -0.5, generator=generator)
            else:
                param.zero_()
        head = model.boundary_head
        head.null_projection.bias.fill_(-1.5)
        shared = layout == "shared"
        scorer = head.shared_pool_scorer if shared else head.pair_scorer
        bias = scorer.film_output[-1].bias if shared else scorer.content_bias.bias  # a constant added to every logit
        logits = []
        hook = scorer.register_forward_hook(lambda _, args, out: logits.append((out[0] if shared else out).flatten()))
        for text in calibration_texts:
            model.extract(text, model.create_schema().entities(LABELS_5))
        hook.remove()
        pooled = torch.cat(logits)
        bias.sub_(torch.quantile(pooled[pooled > -1e3], 1 - PAIR_POSITIVE))
    model.save_pretrained(str(partial))
    if type(AutoExtractor.from_pretrained(str(partial))).__name__ != "BoundaryExtractor":
        raise RuntimeError(f"{partial} does not load as a boundary checkpoint")
    finish_checkpoint(partial, folder)
    return "built"


class _Captured(Exception):
    """Stops the reference after its encoder: the states are all we want."""


def reference_states(reference, ref_schema, options, text: str, dtype: torch.dtype) -> torch.Tensor:
    """The reference encoder's token states for ``text`` alone, computed by a copy of it in ``dtype``
    (``torch.float64``: exact arithmetic for this purpose), as float32 for the heads."""
    encoder, captured = reference.encoder, []

    def capture(module, args, output):
        captured.append(output.last_hidden_state[0].float())
        raise _Captured

    reference.encoder = copy.deepcopy(encoder).to(dtype)
    hook = reference.encoder.register_forward_hook(capture)
    try:
        reference.batch_extract([text], ref_schema, **options)
    except _Captured:
        pass
    finally:
        hook.remove()
        reference.encoder = encoder
    return captured[0]


def our_states(nlp, text: str):
    """Our decisions on ``text`` and our encoder's token states for it."""
    from spacy_gliner2.gliner2.model import GLiNER2Model

    captured, encode = [], GLiNER2Model.encode
    GLiNER2Model.encode = lambda model, batch: captured.append(encode(model, batch)) or captured[-1]
    try:
        ours = nlp(text)._.gliner2
    finally:
        GLiNER2Model.encode = encode
    (states,) = captured
    return ours, states[0]


def explain(nlp, reference, ref_schema, options, schema, text: str, theirs) -> dict:
    """Where a differing text's difference lies. ``on_our_states``: the reference, given our encoder's
    token states instead of its own (``batch_extract(hidden_states=...)``; same token ids, or it
    raises), decides as we do (then heads and decoding agree; the encoders' float rounding differs).
    ``float64_side``: whom the reference agrees with on the states of its own encoder computed in
    float64 ("reference", "ours" or "neither")."""
    from test_parity import to_our_shape

    options = {k: v for k, v in options.items() if k != "batch_size"}
    on = lambda states: to_our_shape(reference.batch_extract([text], ref_schema, hidden_states=[states.clone()],
                                                             **options)[0], schema, text)
    ours, states = our_states(nlp, text)
    exact = on(reference_states(reference, ref_schema, options, text, torch.float64))
    side = "reference" if compare(exact, theirs)[0] else "ours" if compare(ours, exact)[0] else "neither"
    return dict(on_our_states=compare(ours, on(states))[0], float64_side=side)


def measure(folder: Path, texts, repeats: int) -> dict:
    from gliner2 import AutoExtractor
    from test_parity import reference_schema, to_our_shape

    reference, out = AutoExtractor.from_pretrained(str(folder)), {}
    for name, config in SCHEMAS.items():
        since, start = cpu_seconds(), time.perf_counter()
        schema, ref_schema = reference_schema(config)
        nlp = make_nlp(folder, config)
        list(nlp.pipe(texts[:8]))  # warm-up; the model loads on first use
        options = dict(batch_size=8, threshold=schema.threshold, include_confidence=True, include_spans=True)
        reference.batch_extract(texts[:8], ref_schema, **options)
        runners = [lambda: ([d._.gliner2 for d in nlp.pipe(texts)], {}),
                   lambda: (reference.batch_extract(texts, ref_schema, **options), {})]
        (seconds, ours, _), (ref_seconds, theirs, _) = best_of(runners, repeats)
        checks = [compare(mine, to_our_shape(ref, schema, text)) for mine, ref, text in zip(ours, theirs, texts)]
        differing = [i for i, (same, _) in enumerate(checks) if not same]
        explained = {i: explain(nlp, reference, ref_schema, options, schema, texts[i],
                                to_our_shape(theirs[i], schema, texts[i])) for i in differing}
        out[name] = dict(ours_texts_per_s=len(texts) / seconds, reference_texts_per_s=len(texts) / ref_seconds,
                         identical_decisions=sum(same for same, _ in checks) / len(checks),
                         differing_texts=differing,
                         same_on_our_encoder_states=[i for i in differing if explained[i]["on_our_states"]],
                         float64_side={i: explained[i]["float64_side"] for i in differing},
                         max_confidence_diff=max(diff for _, diff in checks),
                         entity_spans=len(decisions(ours)[0]),
                         other_load=other_load(since, time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 + 8 texts")
    parser.add_argument("--out", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--layout", choices=("shared", "per_query"), default="shared",
                        help="boundary_head.candidate_pool (shared: the released checkpoints' layout)")
    parser.add_argument("--checkpoint-dir", type=Path, help="default: /tmp/spacy-gliner2-bench/boundary-base-random[-per_query]")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.checkpoint_dir = args.checkpoint_dir or Path("/tmp/spacy-gliner2-bench/boundary-base-random"
                                                      + ("" if args.layout == "shared" else "-per_query"))
    torch.set_num_threads(args.threads)
    short, news = load_texts(*(2 * [8 if args.quick else 32]))
    texts = short + news
    seconds, status = timed(build_checkpoint, args.checkpoint_dir, args.seed, short[:8] + news[:8], args.layout)
    print(f"checkpoint {args.checkpoint_dir}: {status} ({seconds:.0f} s)")
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    out = {"commit": commit, "layout": args.layout, "texts": len(texts), "threads": args.threads, "repeats": args.repeats,
           "schemas": measure(args.checkpoint_dir, texts, args.repeats)}
    print(f"spacy-gliner2 at {commit}; {args.layout} candidates; {len(texts)} texts, batch_size 8, {args.threads} torch threads, "
          f"best of {args.repeats}")
    print(f"{'schema':<12} {'ours texts/s':>13} {'reference texts/s':>18} {'ratio':>6} {'identical':>10} "
          f"{'max conf diff':>14} {'entity spans':>13} {'other load':>11}")
    for name, s in out["schemas"].items():
        print(f"{name:<12} {s['ours_texts_per_s']:>13.2f} {s['reference_texts_per_s']:>18.2f} "
              f"{s['ours_texts_per_s'] / s['reference_texts_per_s']:>6.2f} {s['identical_decisions']:>10.1%} "
              f"{s['max_confidence_diff']:>14.2e} {s['entity_spans']:>13} {s['other_load']:>11.2f}")
    for name, s in out["schemas"].items():
        if s["differing_texts"]:
            print(f"{name}: texts {s['differing_texts']} differ; given our encoder's token states, the reference "
                  f"decides as we do on {s['same_on_our_encoder_states']} (those differences lie in encoder float rounding); "
                  f"on float64 encoder states it agrees with: {s['float64_side']}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
