#!/usr/bin/env python
"""Throughput and agreement of our ``gliclass`` spaCy component against the reference ``gliclass`` 0.1.21.

Builds (or reuses) full-size random-weight GLiClass uni-encoder checkpoints with the reference
package itself, then, per encoder and label count, times our component against the reference's
``ZeroShotClassificationPipeline`` (multi-label, threshold 0.5, batch size 8) over AG News items,
the two taking turns, best of ``--repeats`` runs each, and checks that both decide the same labels.

Checkpoints (random weights, reference init, attention query/key weights N(0, 0.1) and the
scorer's output rescaled so that logits spread out; see ``build_checkpoint``):

- ``deberta``: DeBERTa-v3-base shape (184 M encoder parameters) with the real DeBERTa-v3
  SentencePiece vocabulary, laid out as gliclass-base-v3.0 (prompt first, ``first`` text and
  label pooling, ``mlp`` scorer);
- ``modernbert``: ModernBERT-base shape (22 layers, global attention every 3rd layer, 128-token
  local window), laid out as gliclass-modern-base-v3.0 (prompt first, ``simple`` scorer). No
  ModernBERT tokenizer exists offline: it uses the same DeBERTa-v3 SentencePiece tokenizer.

Each timing reports "other load": the cores' worth of CPU that other processes used meanwhile
(on a shared 2-core machine, figures taken above ~0.2 are unreliable).

    python benchmarks/gliclass_throughput.py [--texts 64] [--labels 5,50] [--encoders deberta,modernbert]
        [--repeats 3] [--threads 2] [--cache DIR] [--out results.json]
"""
import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from machine import cpu_seconds, other_load, timed, uptime  # noqa: E402  (benchmarks/machine.py)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "eval"
SPM_MODEL = SHARED / "tokenizers" / "deberta-v3" / "spm.model"
MARKERS = ["<<LABEL>>", "<<SEP>>", "<<EXAMPLE>>"]
BATCH_SIZE, THRESHOLD = 8, 0.5

DEBERTA_V3_BASE = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
    position_buckets=256, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
    position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True, layer_norm_eps=1e-7,
    initializer_range=0.02)
MODERNBERT_BASE = dict(  # ModernBERT-base; transformers' defaults spelled out
    hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
    hidden_activation="gelu", max_position_embeddings=8192, global_attn_every_n_layers=3,
    local_attention=128, norm_eps=1e-5, norm_bias=False, mlp_bias=False, attention_bias=False,
    initializer_range=0.02)
ENCODERS = {
    # name: (checkpoint folder, encoder config, GLiClass head layout)
    "deberta": ("gliclass-deberta-v3-base-random", DEBERTA_V3_BASE,  # as gliclass-base-v3.0
                dict(prompt_first=True, pooling_strategy="first", class_token_pooling="first", scorer_type="mlp")),
    "modernbert": ("gliclass-modernbert-base-random", MODERNBERT_BASE,  # as gliclass-modern-base-v3.0
                   dict(prompt_first=True, pooling_strategy="first", class_token_pooling="first",
                        scorer_type="simple")),
}
TOKENIZER_NOTE = {
    "deberta": "DeBERTa-v3 SentencePiece (the real vocabulary)",
    "modernbert": "DeBERTa-v3 SentencePiece (no ModernBERT tokenizer offline; vocabulary 128,004, "
                  "not ModernBERT's 50,368 BPE)",
}
ATTENTION_INIT_STD = 0.1  # query/key weights: peaked attention (std 0.02 makes every token's state alike)
LOGIT_STD, POSITIVE = 2.0, 0.2  # head calibration: logits' spread, share of (text, label) pairs >= 0.5

LABELS_5 = ["world news", "sports", "business", "science and technology", "health"]  # AG News's 4 + one


def label_sets():
    """{count: labels}: 5 topic labels, and 50 (those 5 plus the first 45 Banking77 intents, readable)."""
    intents = json.loads((DATA / "banking77" / "categories.json").read_text())
    readable = [i.replace("_", " ").rstrip("?").lower() for i in intents]
    fifty = LABELS_5 + [r for r in readable if r not in LABELS_5][:45]
    assert len(set(fifty)) == 50
    return {5: LABELS_5, 50: fifty}


def load_texts(n: int, offset: int = 0):
    """AG News test items ``offset .. offset + n`` as "title. description"."""
    with open(DATA / "ag_news" / "test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[offset:offset + n]
    return [f"{title}. {description}" for _, title, description in rows]


# --- checkpoints ------------------------------------------------------------------------------


def _tokenizer(folder: Path, encoder: str):
    """The DeBERTa-v3 SentencePiece tokenizer (built offline from spm.model) with the three markers
    added as special tokens after the vocabulary, as the reference's train.py does."""
    from transformers import DebertaV2Tokenizer

    shutil.copyfile(SPM_MODEL, folder / "spm.model")
    tokenizer = DebertaV2Tokenizer.from_pretrained(str(folder))
    base = len(tokenizer)
    tokenizer.add_tokens(MARKERS, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(MARKERS)
    if ids != [base, base + 1, base + 2]:
        raise RuntimeError(f"marker ids {ids}, expected {base}..{base + 2}")
    if encoder == "modernbert":
        tokenizer.model_input_names = ["input_ids", "attention_mask"]  # ModernBERT takes no token_type_ids
    return tokenizer, ids


def _encoder_config(encoder: str, tokenizer):
    from transformers import DebertaV2Config, ModernBertConfig

    shape = ENCODERS[encoder][1]
    if encoder == "deberta":
        return DebertaV2Config(**shape, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    return ModernBertConfig(**shape, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)


def build_checkpoint(folder: Path, encoder: str, seed: int, calibration_texts, labels) -> str:
    """Build a random-weight GLiClass checkpoint with the reference package (or reuse ``folder``).

    ``GLiClassModel(GLiClassModelConfig(...))`` under ``torch.manual_seed(seed)`` (the reference's
    own init: N(0, 0.02) encoder weights), then the attention query and key projections redrawn
    N(0, ATTENTION_INIT_STD), and the scorer's output rescaled and shifted (``_calibrate``) so that
    logits have std LOGIT_STD and about POSITIVE of (text, label) pairs score >= 0.5 on
    ``calibration_texts`` (not the benchmark texts). Saved with ``save_pretrained`` and checked to
    reload with the same weights.
    """
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return "reused"
    from gliclass import GLiClassModel, GLiClassModelConfig

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tokenizer, ids = _tokenizer(partial, encoder)
    torch.manual_seed(seed)
    config = GLiClassModelConfig(
        encoder_config=_encoder_config(encoder, tokenizer), encoder_model=f"{encoder}-base-random",
        class_token_index=ids[0], text_token_index=ids[1], example_token_index=ids[2],
        problem_type="multi_label_classification", **ENCODERS[encoder][2])
    model = GLiClassModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("query_proj.weight", "key_proj.weight")):  # DeBERTa
                param.normal_(0.0, ATTENTION_INIT_STD, generator=generator)
            elif name.endswith("attn.Wqkv.weight"):  # ModernBERT: rows are q, k, v
                size = param.shape[0] // 3
                param[: 2 * size].normal_(0.0, ATTENTION_INIT_STD, generator=generator)
        _calibrate(model, tokenizer, calibration_texts, labels)
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    loaded = GLiClassModel.from_pretrained(str(partial))
    state = loaded.state_dict()
    if any(not torch.equal(v, state[k]) for k, v in model.state_dict().items() if k in state):
        raise RuntimeError(f"{partial} does not reload with the weights that were saved")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return "built"


@torch.no_grad()
def _scorer_logits(model, tokenizer, texts, labels):
    """(logits, text vectors) at the scorer, captured while the reference classifies ``texts``."""
    from gliclass import ZeroShotClassificationPipeline

    pipe = ZeroShotClassificationPipeline(model, tokenizer, classification_type="multi-label", device="cpu",
                                          progress_bar=False)
    logits, text_vectors = [], []

    def capture(_module, args, out):  # returns None: the output is left as it is
        text_vectors.append(args[0])
        logits.append(out)

    hook = model.model.scorer.register_forward_hook(capture)
    try:
        for label_set in labels:
            pipe(texts, label_set, threshold=THRESHOLD, batch_size=BATCH_SIZE)
    finally:
        hook.remove()
    return torch.cat([x.flatten() for x in logits]), torch.cat(text_vectors)


@torch.no_grad()
def _calibrate(model, tokenizer, texts, labels) -> None:
    """Scale the scorer's logits to std LOGIT_STD and shift them so that POSITIVE of them are > 0.

    ``mlp`` scorer: its last linear layer, exactly. ``simple`` (dot) scorer: the scale goes into the
    label projector's last layer (exact); the shift adds ``b * t / |t|^2`` (t the mean text vector)
    to that layer's bias, which shifts each logit by about ``b``.
    """
    logits, text = _scorer_logits(model, tokenizer, texts, labels)
    scale = LOGIT_STD / logits.std()
    shift = -torch.quantile(logits * scale, 1 - POSITIVE)
    if model.config.scorer_type == "mlp":
        final = model.model.scorer.mlp[-1]
        final.weight.mul_(scale)
        final.bias.mul_(scale).add_(shift)
    elif model.config.scorer_type == "simple":
        final = model.model.classes_projector.linear_2
        final.weight.mul_(scale)
        final.bias.mul_(scale)
        mean = text.reshape(-1, text.shape[-1]).mean(0)
        final.bias.add_(shift * mean / mean.dot(mean))
    else:
        raise ValueError(f"no calibration for scorer {model.config.scorer_type!r}")


# --- runners ----------------------------------------------------------------------------------


def make_nlp(folder: Path, labels):
    import spacy

    import spacy_gliner2.gliclass.component  # noqa: F401 - registers the factory

    nlp = spacy.blank("en")
    nlp.add_pipe("gliclass", config={
        "model": str(folder), "classifications": {"topic": {"labels": list(labels), "multi_label": True}},
        "batch_size": BATCH_SIZE, "precision": "fp32"})
    return nlp


def our_runner(folder: Path, labels, texts):
    """A warmed-up ``run()`` of ``list(nlp.pipe(texts, batch_size=64))``: per text (chosen labels, probs)."""
    nlp = make_nlp(folder, labels)
    list(nlp.pipe(texts[:BATCH_SIZE]))  # warm-up; the model loads on first use

    def run():
        docs = list(nlp.pipe(texts, batch_size=64))
        return [({d["label"] for d in doc._.gliclass["topic"]}, [doc.cats[label] for label in labels])
                for doc in docs]

    return nlp, run


def reference_runner(pipe, labels, texts):
    """A warmed-up ``run()`` of the reference pipeline (batch size 8, threshold 0.5): per text the chosen labels."""
    def call(batch):
        with torch.no_grad():
            return pipe(batch, list(labels), threshold=THRESHOLD, batch_size=BATCH_SIZE,
                        classification_type="multi-label")

    call(texts[:BATCH_SIZE])  # warm-up

    def run():
        return [({r["label"] for r in result}, None) for result in call(texts)]

    return run


@torch.no_grad()
def reference_scores(pipe, labels, texts, batch_size: int):
    """Every label's probability per text from the reference pipeline at ``batch_size`` (untimed)."""
    out = pipe(texts, list(labels), threshold=0.0, batch_size=batch_size, classification_type="multi-label",
               return_hierarchical=True)
    return [[scores[label] for label in labels] for scores in out]


def best_of(runners, repeats: int):
    """Per runner, its fastest of ``repeats`` runs as (seconds, results); the runners take turns."""
    best = [None] * len(runners)
    for _ in range(repeats):
        for i, run in enumerate(runners):
            seconds, results = timed(run)
            if best[i] is None or seconds < best[i][0]:
                best[i] = (seconds, results)
    return best


def input_lengths(tokenizer, labels, texts, prompt_first: bool):
    """Token counts of the reference's input strings (labels, <<SEP>>, text)."""
    head = "".join(MARKERS[0] + label for label in labels) + MARKERS[1]
    strings = [head + t if prompt_first else t + head for t in texts]
    return [len(ids) for ids in tokenizer(strings)["input_ids"]]


def measure(encoder: str, folder: Path, texts, labels_by_count, repeats: int, out: dict, save,
            probability_checks: bool = True) -> None:
    """Per label count into ``out``: both speeds, decision agreement, probability differences;
    ``save()`` after each, so that an interrupted run keeps what it measured."""
    from gliclass import GLiClassModel, ZeroShotClassificationPipeline
    from transformers import AutoTokenizer

    model = GLiClassModel.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pipe = ZeroShotClassificationPipeline(model, tokenizer, classification_type="multi-label", device="cpu",
                                          progress_bar=False)
    for count, labels in labels_by_count.items():
        since, start = cpu_seconds(), time.perf_counter()
        nlp, ours = our_runner(folder, labels, texts)
        ref = reference_runner(pipe, labels, texts)
        (seconds, our_results), (ref_seconds, ref_results) = best_of([ours, ref], repeats)
        load = other_load(since, time.perf_counter() - start)
        our_probs = [p for _, p in our_results]
        ours_chosen = [c for c, _ in our_results]
        ref_chosen = [c for c, _ in ref_results]
        same = [a == b for a, b in zip(ours_chosen, ref_chosen)]
        # untimed passes of the reference at batch 8 and 1 (all probabilities), unless --timing-only
        ref8, ref1 = (reference_scores(pipe, labels, texts, b) for b in (BATCH_SIZE, 1)) \
            if probability_checks else (None, None)
        ref1_chosen = [{l for l, p in zip(labels, row) if p >= THRESHOLD} for row in ref1] if ref1 else None

        def max_diff(a, b):
            return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) if a and b else None

        lengths = input_lengths(tokenizer, labels, texts, model.config.prompt_first)
        runtime_model = nlp.get_pipe("gliclass").runner.model
        out[str(count)] = dict(
            labels=count, ours_seconds=seconds, reference_seconds=ref_seconds,
            ours_texts_per_s=len(texts) / seconds, reference_texts_per_s=len(texts) / ref_seconds,
            ratio=ref_seconds / seconds,
            identical_decisions=sum(same) / len(same), differing_texts=[i for i, s in enumerate(same) if not s],
            identical_decisions_vs_reference_batch_1=(sum(a == b for a, b in zip(ours_chosen, ref1_chosen)) / len(same)
                                                      if ref1_chosen else None),
            max_prob_diff_vs_reference_batch_8=max_diff(our_probs, ref8),
            max_prob_diff_vs_reference_batch_1=max_diff(our_probs, ref1),
            reference_max_prob_diff_batch_8_vs_1=max_diff(ref8, ref1),
            chosen_per_text=sum(len(c) for c in ours_chosen) / len(texts),
            mean_input_tokens=sum(lengths) / len(lengths), max_input_tokens=max(lengths),
            our_fast_path=getattr(runtime_model, "_fast_encoder", None) is not None,
            other_load=load)
        r = out[str(count)]
        print(f"  {encoder} {count} labels: ours {r['ours_texts_per_s']:.2f}, reference "
              f"{r['reference_texts_per_s']:.2f} texts/s ({r['ratio']:.2f}x); other load {load:.2f}", flush=True)
        del nlp
        save()


# --- main -------------------------------------------------------------------------------------


def environment(args) -> dict:
    import gliclass  # noqa: F401
    import spacy
    import transformers
    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    git = ["git", "--no-optional-locks", "-C", str(ROOT)]
    commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True).stdout.split("\n")
    return dict(commit=commit or "unknown", tracked_files_changed=[c[3:] for c in changed if c.strip()],
                torch=torch.__version__, transformers=transformers.__version__, gliclass=version("gliclass"),
                spacy=spacy.__version__, python=platform.python_version(), cpu=cpu, cores=os.cpu_count(),
                threads=args.threads, repeats=args.repeats, texts=args.texts, batch_size=BATCH_SIZE,
                threshold=THRESHOLD, precision="fp32")


def _figure(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=64, help="AG News test items to classify (default 64)")
    parser.add_argument("--labels", default="5,50", help="label counts, of 5 and 50 (default 5,50)")
    parser.add_argument("--encoders", default="deberta,modernbert", help="of deberta, modernbert")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per runner (best kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/gliclass-bench/checkpoints"),
                        help="where checkpoints are built and reused")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--timing-only", action="store_true",
                        help="skip the untimed reference passes that compare probabilities (batch 8 and 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "model of type GLiClass to instantiate ...", deprecations
    hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    all_labels = label_sets()
    counts = [int(c) for c in args.labels.split(",")]
    encoders = args.encoders.split(",")
    for c in counts:
        if c not in all_labels:
            parser.error(f"--labels: {c} is not one of {sorted(all_labels)}")
    for e in encoders:
        if e not in ENCODERS:
            parser.error(f"--encoders: {e!r} is not one of {sorted(ENCODERS)}")

    out = environment(args)
    out["uptime_before"] = uptime()
    print(f"spacy-gliner2 at {out['commit']}"
          + (f" (+ uncommitted changes in {len(out['tracked_files_changed'])} files)"
             if out["tracked_files_changed"] else ""))
    print(f"torch {out['torch']}, transformers {out['transformers']}, gliclass {out['gliclass']}; "
          f"{out['cpu']}, {out['cores']} cores")
    print(f"load before: {out['uptime_before']}")
    texts = load_texts(args.texts)
    calibration = load_texts(16, offset=1000)
    out["encoders"] = {}

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(out, indent=2))

    for encoder in encoders:
        folder = args.cache / ENCODERS[encoder][0]
        seconds, status = timed(build_checkpoint, folder, encoder, args.seed, calibration, list(all_labels.values()))
        print(f"{encoder}: checkpoint {folder} {status} ({seconds:.0f} s); tokenizer: {TOKENIZER_NOTE[encoder]}",
              flush=True)
        out["encoders"][encoder] = dict(
            checkpoint=str(folder), tokenizer=TOKENIZER_NOTE[encoder], layout=ENCODERS[encoder][2], label_counts={})
        measure(encoder, folder, texts, {c: all_labels[c] for c in counts}, args.repeats,
                out["encoders"][encoder]["label_counts"], save, not args.timing_only)
    out["uptime_after"] = uptime()

    print(f"\n{args.texts} AG News texts, multi-label (threshold {THRESHOLD}), batch size {BATCH_SIZE}, "
          f"{args.threads} torch threads, best of {args.repeats}; ratio = ours / reference speed; other load: "
          "cores used by other processes meanwhile (above ~0.2 the timings are unreliable)")
    print(f"{'encoder':<11}{'labels':>7}{'tokens':>8}{'ours t/s':>10}{'ref t/s':>9}{'ratio':>7}"
          f"{'same':>8}{'same@1':>8}{'diff@8':>10}{'diff@1':>10}{'load':>6}")
    for encoder, e in out["encoders"].items():
        for count, s in e["label_counts"].items():
            print(f"{encoder:<11}{count:>7}{s['mean_input_tokens']:>8.0f}{s['ours_texts_per_s']:>10.2f}"
                  f"{s['reference_texts_per_s']:>9.2f}{s['ratio']:>7.2f}{s['identical_decisions']:>8.1%}"
                  f"{_figure(s['identical_decisions_vs_reference_batch_1'], '.1%'):>8}"
                  f"{_figure(s['max_prob_diff_vs_reference_batch_8'], '.1e'):>10}"
                  f"{_figure(s['max_prob_diff_vs_reference_batch_1'], '.1e'):>10}"
                  f"{s['other_load']:>6.2f}")
    print("tokens: mean encoder input; same: texts whose chosen labels equal the reference's (batch 8; @1: "
          "the reference at batch 1); diff: max |probability difference| vs the reference at batch 8 / 1")
    print(f"load after: {out['uptime_after']}")
    if args.out:
        save()
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
