#!/usr/bin/env python
"""Throughput, agreement and cost of spacy-gliner2 against the reference ``gliner2`` 2.1.0.

One run: builds (or reuses) a full-size random-weight GLiNER2-base checkpoint with the reference
package, then for three schemas times our spaCy component against ``GLiNER2.batch_extract``,
checks that both give the same results, splits our time into encoder and the rest, runs a long
document in a fresh process for time and peak memory, and relates the encoder's speed to this
machine's fp32 matmul peak. Each timing reports the CPU that other processes used meanwhile
("other load", in cores): on a shared 2-core machine, figures taken above ~0.2 are unreliable.

    python benchmarks/throughput.py [--quick] [--out results.json] [--checkpoint-dir DIR]
"""
import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import cpu_seconds, other_load, reset_peak_rss, status_kb, timed  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SPM_MODEL = SHARED / "tokenizers" / "deberta-v3" / "spm.model"
sys.path.insert(0, str(ROOT / "tests"))

DEBERTA_V3_BASE = dict(
    vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=0,
    relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
    max_relative_positions=-1, position_biased_input=False, norm_rel_ebd="layer_norm",
    share_att_key=True, layer_norm_eps=1e-7, initializer_range=0.02)
ATTENTION_INIT_STD = 0.1  # query/key weights: peaked, position-aware attention (std 0.02 everywhere
# makes attention uniform: every [E] marker then gets the same embedding, and every label the same scores)
SPAN_LOGIT_STD, SPAN_POSITIVE = 2.5, 0.005  # head calibration: spread logits, ~0.5 % of spans >= 0.5

LABELS_5 = ["person", "organization", "location", "date", "event"]
LABELS_50 = LABELS_5 + [
    "country", "city", "politician", "political party", "election", "government agency", "law",
    "court", "military unit", "weapon", "company", "product", "money", "percentage", "time",
    "sports team", "athlete", "award", "book", "film", "song", "musician", "band", "language",
    "nationality", "religion", "disease", "drug", "chemical compound", "university", "school",
    "hospital", "river", "mountain", "building", "airport", "ship", "website", "email address",
    "phone number", "job title", "currency", "stock index", "treaty", "newspaper"]
SCHEMAS = {
    "entities-5": {"entities": LABELS_5},
    "entities-50": {"entities": LABELS_50},
    "composed": {
        "entities": LABELS_5,
        "classifications": {
            "topic": ["politics", "business", "sports", "science"],
            "tone": {"labels": ["formal", "urgent", "opinion"], "multi_label": True}},
        "structures": {"event": ["name::str", "participants::list",
                                 "kind::[election|meeting|protest]::str"]},
    },
}


def load_texts(n_short: int, n_news: int):
    """The first ``n_short`` CrossNER-politics sentences and ``n_news`` AG News "title. description"."""
    data = SHARED / "data" / "eval"
    sentences = json.loads((data / "CrossNER_politics" / "test.json").read_text())[:n_short]
    with open(data / "ag_news" / "test.csv", newline="", encoding="utf-8") as f:
        news = [f"{title}. {description}" for _, title, description in list(csv.reader(f))[:n_news]]
    return [s["sentence"] for s in sentences], news


def build_checkpoint(folder: Path, seed: int, calibration_texts) -> str:
    """Build a random-weight GLiNER2-base checkpoint with the reference package (or reuse ``folder``).

    Encoder: DeBERTa-v3-base shape, Hugging Face init (std 0.02) seeded by ``seed``, query and key
    projections N(0, ATTENTION_INIT_STD).
    Heads: N(0, 1/fan_in), zero biases; count positions N(0, 1); count bias favouring K = 1..2.
    Then the last span-representation layer is rescaled and shifted on logits captured while the
    reference extracts ``calibration_texts``, so span probabilities spread out and few pass 0.5.
    """
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return "reused"
    from gliner2 import ExtractorConfig, GLiNER2, Schema
    from transformers import DebertaV2Config

    partial, tokenizer = start_checkpoint(folder)
    encoder_config = DebertaV2Config(**DEBERTA_V3_BASE)
    config = ExtractorConfig(model_name="deberta-v3-base-random", max_width=8,
                             counting_layer="count_lstm")
    torch.manual_seed(seed)
    model = GLiNER2(config, encoder_config=encoder_config, tokenizer=tokenizer).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("query_proj.weight", "key_proj.weight")):
                param.normal_(0.0, ATTENTION_INIT_STD, generator=generator)
            elif name.startswith("encoder."):
                continue
            elif "pos_embedding" in name:
                param.normal_(0.0, 1.0, generator=generator)
            elif param.dim() > 1:
                param.normal_(0.0, param.shape[1] ** -0.5, generator=generator)
            else:
                param.zero_()
        model.count_pred[-1].bias[:3] = torch.tensor([-3.0, 3.0, 2.5])
        _calibrate_spans(model, calibration_texts, Schema().entities(LABELS_5))
    model.save_pretrained(str(partial))
    loaded = GLiNER2.from_pretrained(str(partial))
    if any(not torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items()):
        raise RuntimeError(f"{partial} does not reload with the weights that were saved")
    finish_checkpoint(partial, folder)
    return "built"


def start_checkpoint(folder: Path):
    """A fresh ``<folder>.partial`` holding the DeBERTa-v3 vocabulary, and its tokenizer."""
    from transformers import DebertaV2Tokenizer

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    shutil.copyfile(SPM_MODEL, partial / "spm.model")
    return partial, DebertaV2Tokenizer.from_pretrained(str(partial))


def finish_checkpoint(partial: Path, folder: Path) -> None:
    """Put a fully written ``partial`` in place of ``folder``."""
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


@torch.no_grad()
def _calibrate_spans(model, texts, schema) -> None:
    """Scale and shift ``out_project``'s last layer: span logits std SPAN_LOGIT_STD, SPAN_POSITIVE > 0."""
    layer = model.span_rep.span_rep_layer
    words, queries = [], []
    hooks = [layer.project_start.register_forward_pre_hook(lambda _, args: words.append(args[0])),
             model.count_embed.register_forward_hook(lambda _, args, out: queries.append(out[:1]))]
    try:
        for text in texts:
            model.extract(text, schema)
    finally:
        for hook in hooks:
            hook.remove()
    dim = model.encoder.config.hidden_size
    logits = torch.cat([layer.score_queries(h, q.reshape(1, -1, dim)).flatten()
                        for h, q in zip(words, queries)])
    logits = logits[logits.isfinite()]
    final = layer.out_project[-1]
    scale = SPAN_LOGIT_STD / logits.std()
    final.weight.mul_(scale)
    final.bias.mul_(scale)
    mean_query = torch.cat(queries).reshape(-1, dim).mean(0)
    shift = torch.quantile(logits * scale, 1 - SPAN_POSITIVE)
    final.bias.sub_(shift * mean_query / mean_query.dot(mean_query))


def make_nlp(folder: Path, config: dict, precision: str = "fp32"):
    """A blank English pipeline with our component on ``folder`` (exact fp32 unless told)."""
    import spacy
    from spacy.language import Language

    import spacy_gliner2.gliner2.component  # noqa: F401 - registers the factory

    settings = Language.get_factory_meta("gliner2").default_config
    mode = {"precision": precision} if "precision" in settings else {}
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(folder), **config, "batch_size": 8, **mode})
    return nlp


def fast_runner(folder: Path, config: dict, texts, precision: str):
    """A warmed-up ``run()`` of our pipeline in a fast ``precision``: (results, {})."""
    nlp = make_nlp(folder, config, precision)
    list(nlp.pipe(texts[:8]))  # warm-up; builds the reduced-precision copy
    return lambda: ([doc._.gliner2 for doc in nlp.pipe(texts)], {})


def decisions(results):
    """(entity decisions {(text, label, start, end)}, class decisions {(text, task, label)}) of results."""
    entities = {(i, label, s["start"], s["end"]) for i, r in enumerate(results)
                for label, spans in r["entities"].items() for s in spans}
    classes = set()
    for i, r in enumerate(results):
        for task, chosen in r["classifications"].items():
            classes |= {(i, task, c["label"]) for c in (chosen if isinstance(chosen, list) else [chosen])}
    return entities, classes


def our_runner(folder: Path, config: dict, texts):
    """A warmed-up ``run()`` of ``list(nlp.pipe(texts))``: (``doc._.gliner2`` per text, figures).

    Figures: ``tokens``, the encoder's input tokens (summed over the records that
    ``Encoder.encode`` returns); ``encoder_seconds``, time inside ``GLiNER2Model.encode`` (of
    the model inference runs, ``Runner.runtime_model``);
    ``batches``, (padded length, real lengths) of each encoder call.
    """
    nlp = make_nlp(folder, config)
    list(nlp.pipe(texts[:8]))  # warm-up; the model loads on first use
    extractor, figures = nlp.get_pipe("gliner2").runner, {}
    model = extractor.runtime_model
    encode_text, encode_batch = extractor.encoder.encode, model.encode

    def counted(schema, words):
        record = encode_text(schema, words)
        figures["tokens"] += len(record.input_ids)
        return record

    def timed_encode(batch):
        start = time.perf_counter()
        hidden = encode_batch(batch)
        figures["encoder_seconds"] += time.perf_counter() - start
        figures["batches"].append((batch.input_ids.shape[1], batch.attention_mask.sum(1).tolist()))
        return hidden

    extractor.encoder.encode, model.encode = counted, timed_encode

    def run():
        figures.update(tokens=0, encoder_seconds=0.0, batches=[])
        return [doc._.gliner2 for doc in nlp.pipe(texts)], dict(figures)

    return run


def reference_runner(model, schema, threshold: float, texts):
    """A warmed-up ``run()`` of the reference's ``batch_extract``: (results, {})."""
    options = dict(batch_size=8, threshold=threshold, include_confidence=True, include_spans=True)
    model.batch_extract(texts[:8], schema, **options)  # warm-up
    return lambda: (model.batch_extract(texts, schema, **options), {})


def best_of(runners, repeats: int):
    """Per runner, its fastest of ``repeats`` runs as (seconds, results, figures).

    The runners take turns, so that all of them see the same (possibly shared) machine.
    """
    best = [None] * len(runners)
    for _ in range(repeats):
        for i, run in enumerate(runners):
            seconds, (results, figures) = timed(run)
            if best[i] is None or seconds < best[i][0]:
                best[i] = (seconds, results, figures)
    return best


def _span_order(found):
    """Spans by position: their listed order (by confidence) is presentation, not a decision."""
    if all(isinstance(s, dict) and "start" in s for s in found):
        return sorted(found, key=lambda s: (s["start"], s["end"], s.get("text", "")))
    return found


def compare(ours, ref):
    """(same decisions, max |confidence difference|): every non-float leaf equal, floats compared.

    Found spans compare as sets: two spans whose confidences differ by float noise may be
    listed in either order, which decides nothing (overlapping spans are resolved before).
    """
    if isinstance(ref, float) and isinstance(ours, float):
        return True, abs(ours - ref)
    if isinstance(ref, dict) and isinstance(ours, dict) and set(ours) == set(ref):
        parts = [compare(ours[key], ref[key]) for key in ref]
    elif isinstance(ref, list) and isinstance(ours, list) and len(ours) == len(ref):
        parts = [compare(a, b) for a, b in zip(_span_order(ours), _span_order(ref))]
    else:  # leaves, and containers that differ in keys or length
        return ours == ref, 0.0
    return all(same for same, _ in parts), max((diff for _, diff in parts), default=0.0)


def encoder_flops(batches, config, padded: bool = False) -> float:
    """FLOPs (2 per multiply-add) of DeBERTa-v3 encoder forwards over the recorded batches.

    Per layer and sequence of T tokens (D hidden, F intermediate, R relative positions used):
        query, key, value and output projections   4 * 2*T*D*D
        feed-forward (two linears)                 2 * 2*T*D*F
        content scores Q K^T and probs @ V         2 * 2*T*T*D
        c2p (Q vs R position keys), p2c (K vs R position queries)   2 * 2*T*R*D
    Element-wise work (softmax, LayerNorm, GELU, gathers) is not counted.
    ``padded=False``: the model's own work, each row at its real length T, R = min(2S, 2T - 1)
    (S = position_buckets; the distances a length-T text has). ``padded=True``: what transformers'
    forward runs, every row at the batch's padded length, R = 2S always, plus, per layer and
    batch, the 2S relative embeddings through the shared Q and K projections: 2 * 2*(2S)*D*D
    (our forward computes those once per weight change, not per batch).
    """
    d, f, layers, two_s = (config.hidden_size, config.intermediate_size,
                           config.num_hidden_layers, 2 * config.position_buckets)

    def sequence(t):
        r = two_s if padded else min(two_s, 2 * t - 1)
        return 8 * t * d * d + 4 * t * d * f + 4 * t * t * d + 4 * t * r * d

    total = 0.0
    for padded_len, lengths in batches:
        rows = [padded_len] * len(lengths) if padded else lengths
        total += sum(sequence(t) for t in rows) + (4 * two_s * d * d if padded else 0)
    return layers * total


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul speed in GFLOP/s: the best of ``torch.mm`` (the BLAS library)
    and oneDNN's linear (what exact mode runs on CPU) on two n x n matrices."""
    from spacy_gliner2.runtime.precision import _ONEDNN_LINEAR

    a, b = torch.randn(n, n), torch.randn(n, n)
    kernels = [torch.mm] + ([lambda x, w: _ONEDNN_LINEAR(x, w, None, "none", [], "")] if _ONEDNN_LINEAR else [])
    best = float("inf")
    for kernel in kernels:
        kernel(a, b)
        best = min(best, *(timed(kernel, a, b)[0] for _ in range(repeats)))
    return 2 * n**3 / best / 1e9


def long_document_probe(folder: Path, n_words: int) -> dict:
    """(Runs in a fresh process.) Time one ``n_words``-word document through our nlp; its peak RSS.

    The text repeats the AG News items. After loading and warming up the model, the peak RSS
    (VmHWM) is reset via /proc/self/clear_refs; the peak over the first call minus the RSS before
    it is the memory the document needed. Time: the faster of two calls.
    """
    _, news = load_texts(0, 32)
    words = " ".join(news).split()
    text = " ".join((words * (n_words // len(words) + 1))[:n_words])
    nlp = make_nlp(folder, SCHEMAS["entities-5"])
    nlp("Warm up the model.")
    reset_peak_rss()
    before = status_kb("VmRSS")
    seconds, doc = timed(nlp, text)
    peak = status_kb("VmHWM")
    seconds = min(seconds, timed(nlp, text)[0])
    return {"words": n_words, "chars": len(text), "seconds": seconds,
            "peak_extra_mb": (peak - before) / 1024, "rss_before_mb": before / 1024,
            "entities": sum(len(v) for v in doc._.gliner2["entities"].values())}


def run_probe(folder: Path, n_words: int, threads: int) -> dict:
    """``long_document_probe`` in a fresh Python process."""
    cmd = [sys.executable, __file__, "--checkpoint-dir", str(folder), "--threads", str(threads),
           "--probe-words", str(n_words)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_schemas(folder: Path, texts, repeats: int, fast_precision: str) -> dict:
    """Per schema: both speeds, agreement, and our encoder / rest split (steps 3 to 5, 7)."""
    from gliner2 import GLiNER2
    from test_parity import reference_schema, to_our_shape

    reference, out = GLiNER2.from_pretrained(str(folder)), {}
    for name, config in SCHEMAS.items():
        since, start = cpu_seconds(), time.perf_counter()
        schema, ref_schema = reference_schema(config)
        runners = [our_runner(folder, config, texts),
                   reference_runner(reference, ref_schema, schema.threshold, texts),
                   fast_runner(folder, config, texts, fast_precision)]
        (seconds, our_results, ours), (ref_seconds, ref_results, _), (fast_seconds, fast_results, _) = \
            best_of(runners, repeats)
        exact_set, fast_set = (set().union(*decisions(r)) for r in (our_results, fast_results))
        checks = [compare(mine, to_our_shape(theirs, schema, text))
                  for mine, theirs, text in zip(our_results, ref_results, texts)]
        batches, encoder = ours.pop("batches"), reference.encoder.config

        def gflops(padded):
            return encoder_flops(batches, encoder, padded) / ours["encoder_seconds"] / 1e9

        out[name] = dict(
            ours_texts_per_s=len(texts) / seconds, reference_texts_per_s=len(texts) / ref_seconds,
            identical_decisions=sum(same for same, _ in checks) / len(checks),
            differing_texts=[i for i, (same, _) in enumerate(checks) if not same],
            max_confidence_diff=max(diff for _, diff in checks), ours_seconds=seconds,
            entity_spans=sum(len(v) for r in our_results for v in r["entities"].values()),
            rest_seconds=seconds - ours["encoder_seconds"],
            rest_s_per_token=(seconds - ours["encoder_seconds"]) / ours["tokens"], **ours,
            encoder_gflops=gflops(False), encoder_gflops_padded_equivalent=gflops(True),
            fast_texts_per_s=len(texts) / fast_seconds,
            fast_identical_decisions=len(exact_set & fast_set) / max(1, len(exact_set | fast_set)),
            other_load=other_load(since, time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 + 8 texts, a 4,000-word long document")
    parser.add_argument("--out", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--checkpoint-dir", type=Path,
                        default=Path("/tmp/spacy-gliner2-bench/gliner2-base-random"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast-precision", default="bf16", help="the fast mode timed beside exact mode")
    parser.add_argument("--probe-words", type=int, help=argparse.SUPPRESS)  # the long-document child
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe_words:
        print(json.dumps(long_document_probe(args.checkpoint_dir, args.probe_words)))
        return

    short, news = load_texts(*(2 * [8 if args.quick else 32]))
    texts = short + news
    seconds, status = timed(build_checkpoint, args.checkpoint_dir, args.seed, short[:8] + news[:8])
    print(f"checkpoint {args.checkpoint_dir}: {status} ({seconds:.0f} s)")
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    print(f"spacy-gliner2 at {commit or 'unknown commit'}")
    out = {"commit": commit, "texts": len(texts), "threads": args.threads, "repeats": args.repeats,
           "fast_precision": args.fast_precision,
           "schemas": measure_schemas(args.checkpoint_dir, texts, args.repeats, args.fast_precision)}
    print(f"\n{len(texts)} texts, batch_size 8, {args.threads} torch threads, best of {args.repeats}; "
          "other load: cores used by other processes meanwhile (above ~0.2 the timings are unreliable)")
    print(f"{'schema':<12} {'ours texts/s':>13} {'reference texts/s':>18} {'ratio':>6} "
          f"{'identical':>10} {'max conf diff':>14} {'other load':>11}")
    for name, s in out["schemas"].items():
        print(f"{name:<12} {s['ours_texts_per_s']:>13.2f} {s['reference_texts_per_s']:>18.2f} "
              f"{s['ours_texts_per_s'] / s['reference_texts_per_s']:>6.2f} "
              f"{s['identical_decisions']:>10.1%} {s['max_confidence_diff']:>14.2e} "
              f"{s['other_load']:>11.2f}")

    print(f"\nfast mode (precision {args.fast_precision}) on the same texts; decisions compared with our exact mode:")
    for name, s in out["schemas"].items():
        print(f"  {name:<12} {s['fast_texts_per_s']:6.2f} texts/s = "
              f"{s['fast_texts_per_s'] / s['reference_texts_per_s']:.2f}x the reference; "
              f"{s['fast_identical_decisions']:.1%} of decisions identical (random weights: a hard case)")

    print("\nours past the encoder (nlp.pipe time minus GLiNER2Model.encode time), per input token:")
    for name, s in out["schemas"].items():
        print(f"  {name:<12} {s['tokens']:>6} tokens, encoder {s['encoder_seconds']:6.2f} s, rest "
              f"{s['rest_seconds']:5.2f} s = {s['rest_s_per_token'] * 1e6:6.1f} us/token")
    five, fifty = out["schemas"]["entities-5"], out["schemas"]["entities-50"]
    out["rest_per_token_ratio_50_vs_5"] = fifty["rest_s_per_token"] / five["rest_s_per_token"]
    print(f"  50 labels / 5 labels: {out['rest_per_token_ratio_50_vs_5']:.2f}")

    out["matmul_peak_gflops"] = matmul_peak()
    out["encoder_share_of_peak"] = five["encoder_gflops"] / out["matmul_peak_gflops"]
    print(f"\nencoder at 5 labels: {five['encoder_gflops']:.0f} GFLOP/s of model FLOPs (real tokens; "
          f"{five['encoder_gflops_padded_equivalent']:.0f} counting transformers' padded work); fp32 "
          f"matmul peak {out['matmul_peak_gflops']:.0f} GFLOP/s: {out['encoder_share_of_peak']:.0%} of peak")

    print("\nlong documents through our nlp (5 labels), each in a fresh process:")
    since, start = cpu_seconds(), time.perf_counter()
    sizes = (1000, 4000 if args.quick else 20000)
    docs = [run_probe(args.checkpoint_dir, n, args.threads) for n in sizes]
    for doc in docs:
        print(f"  {doc['words']:>6} words: {doc['seconds']:7.2f} s, peak +{doc['peak_extra_mb']:.0f} MB "
              f"over {doc['rss_before_mb']:.0f} MB, {doc['entities']} entities")
    ratios = {k: docs[1][k] / docs[0][k] for k in ("words", "seconds", "peak_extra_mb")}
    load = other_load(since, time.perf_counter() - start)
    print("  long / short: " + ", ".join(f"{k} {v:.1f}" for k, v in ratios.items())
          + f"; other load {load:.2f}")
    out.update(long_documents=docs, long_document_ratios=ratios, long_documents_other_load=load)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
