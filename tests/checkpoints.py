"""Tiny random-weight GLiNER2 "span" checkpoints, built and saved by the reference package.

Test helper (not a test module): ``build_reference_checkpoint`` writes a 1-2 MB checkpoint folder
with ``gliner2`` itself, so parity tests need no downloaded weights. Run it to see a demo.
"""

from __future__ import annotations

import io
import shutil
import string
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from gliner2 import GLiNER2, Schema
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

Encoder = Literal["bert", "deberta"]
CountingLayer = Literal["count_lstm", "count_lstm_v2", "count_lstm_moe"]
COUNTING_LAYERS: tuple[CountingLayer, ...] = ("count_lstm", "count_lstm_v2", "count_lstm_moe")
Captured = dict[str, list[tuple]]  # head name -> the arguments it got, during one extract() call

_WORDS = """the of and to in is was for on with as by at from that this it he she they we you his
her their our its an be are were been has have had not but or if all one two three first new old
year time day week month people company city country world state government university school team
market price money share percent john mary smith paris london berlin york apple google microsoft
amazon europe japan china monday friday january march june july said told announced works lives
born moved joined founded visited met bought sold made use work home office email mail phone number
address website www http https com org net support help contact meeting report project product
service data model research engineer doctor professor president director manager chief executive
ceo founder student person location organization date event positive negative neutral news sports
business technology science politics health travel urgent question name title street river north
south east west about after before during over under into out more most some many other only also
very like good great big small high low long short early late last next public""".split()
_SUBWORDS = "s es ed ing er ers est ly ion tion ment ness ful less able al ic ity ous ive".split()
_NON_ASCII = list("éèàçñüöäßøåíóú東京都日本大学北上海人中国αβγπωабвгд€£°")
_CORPUS = """John Smith moved from Paris to New York in 2019 and joined Apple as a senior engineer.
The company announced record earnings on Monday, sending its shares up 12.5 percent to $310.
Maria García visited Zürich and München before returning to Madrid with her brother José.
Please e-mail support@example.com or visit https://www.example.org/help for more information.
Dr. Emily Chen works at the University of Toronto, where she studies machine learning.
The meeting is scheduled for 3:30 pm on March 14, 2024 in Conference Room B on the 2nd floor.
Tokyo (東京) and Kyoto are cities in Japan; Beyoncé performed there last year to 50,000 fans.
Microsoft and Google compete in cloud computing, search, e-commerce and artificial intelligence.
The state-of-the-art model was trained on 1.2 million documents by a well-known research team.
Our CEO, Sarah O'Neil, said the new product will ship in Europe and North America next spring.
Call +1 (555) 123-4567 before Friday; the office at 221B Baker Street closes at 6 pm.
Ein kleines Café in Köln serves crème brûlée, naïve visitors pay €4.50 and students pay £3.
The river flows north through the mountains, past three lakes and an old stone bridge.
Researchers at Stanford University published a report on climate change and public health.
Amazon opened a warehouse near Lyon, hiring 400 workers, the mayor said on Thursday.
She was born in Cairo in 1987, studied law in London and now runs a small bakery.
Send the signed contract to legal@acme-corp.net by 5 July; questions go to @acme_help.
The price of crude oil fell 3% after OPEC agreed to raise output by 400,000 barrels a day.
My doctor told me to drink more water, sleep eight hours and walk 10 km every week!
Is the train from Berlin to Warsaw faster than the bus? It takes about five hours.
The quick brown fox jumps over the lazy dog while the farmer sells eggs at the market.""".splitlines()
_CALIBRATION_LABELS = [
    ["person", "organization", "location", "date"], ["company", "product", "city", "money"],
    ["country", "university", "profession", "event"], ["email", "url", "phone number", "quantity"],
]

# Targets, in logits. Span logit = <rep, query> = interaction + span effect + label effect + shift,
# the shift putting _SPAN_POSITIVE of the calibration spans over 0.5. Count logits: _COUNT_BIAS plus
# N(0, _COUNT_NOISE) noise, so K = 0 never wins, K = 1..3 compete, K >= 4 is rare.
_SPAN_INTERACTION, _SPAN_EFFECT, _LABEL_EFFECT, _SPAN_POSITIVE = 1.5, 0.5, 1.0, 0.05
_CLASS_STD, _CLASS_SHIFT, _COUNT_NOISE = 2.0, -0.5, 1.0
_COUNT_BIAS = [-10.0, 1.0, 0.6, 0.3] + [-6.0] * 16


def _bert_tokenizer(workdir: Path) -> PreTrainedTokenizerBase:
    """WordPiece tokenizer over a local ``vocab.txt`` (lower-cased, like bert-base-uncased)."""
    from transformers import BertTokenizerFast

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *string.digits,
              *string.ascii_lowercase, *_WORDS, *_NON_ASCII]
    pieces += [f"##{p}" for p in [*string.ascii_lowercase, *string.digits, *_SUBWORDS]]
    (workdir / "vocab.txt").write_text("\n".join(dict.fromkeys(pieces)) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(workdir), do_lower_case=True)


def _deberta_tokenizer(workdir: Path) -> PreTrainedTokenizerBase:
    """Unigram SentencePiece model trained in-process, with DeBERTa-v3's special-piece layout."""
    import sentencepiece as spm
    from transformers import DebertaV2TokenizerFast

    words = [" ".join(_WORDS[i : i + 16]) for i in range(0, len(_WORDS), 16)]
    charset = " ".join(string.ascii_letters + string.digits + string.punctuation)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4 + words * 2 + [charset]), model_writer=model,
        model_type="unigram", vocab_size=1000, hard_vocab_limit=False, character_coverage=1.0,
        byte_fallback=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]",
        bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]", user_defined_symbols=["[MASK]"],
        num_threads=1, minloglevel=2)
    (workdir / "spm.model").write_bytes(model.getvalue())
    return DebertaV2TokenizerFast.from_pretrained(str(workdir))


def _encoder_config(
    encoder: Encoder, vocab_size: int, hidden: int, layers: int, heads: int
) -> PretrainedConfig:
    """A tiny BERT, or DeBERTa-v3-style (relative attention, no absolute positions) config."""
    from transformers import BertConfig, DebertaV2Config

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=2 * hidden, initializer_range=0.5)
    if encoder == "bert":
        return BertConfig(max_position_embeddings=4096, **common)
    return DebertaV2Config(
        relative_attention=True, position_buckets=256, max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm",
        share_att_key=True, type_vocab_size=0, layer_norm_eps=1e-7, **common)


@torch.no_grad()
def _init_weights(model: torch.nn.Module, generator: torch.Generator, encoder_std: float) -> None:
    """Encoder N(0, encoder_std), zero biases; heads N(0, 1/fan_in), biases N(0, 0.1);
    LayerNorms identity; count position embeddings N(0, 1)."""
    for name, param in model.named_parameters():
        if "norm" in name.lower():
            param.fill_(1.0 if name.endswith("weight") else 0.0)
        elif name.startswith("encoder."):
            std = encoder_std if param.dim() > 1 else 0.0
            param.normal_(0.0, std, generator=generator)
        elif "pos_embedding" in name:
            param.normal_(0.0, 1.0, generator=generator)
        else:  # Linear, GRU and packed-expert weights all have their fan_in at dim 1.
            std = param.shape[1] ** -0.5 if param.dim() > 1 else 0.1
            param.normal_(0.0, std, generator=generator)


@torch.no_grad()
def _standardize(weight: torch.Tensor, bias: torch.Tensor, outputs: torch.Tensor, scale: float,
                 offset: torch.Tensor, per_dim: bool = False) -> None:
    """Rescale a final layer so that its ``outputs`` become ``offset + scale * z``.

    ``z`` is centred per dimension with unit RMS (overall, or per dimension if ``per_dim``).
    Exact for packed experts too (gates sum to 1), whose ``bias`` is broadcast over experts.
    """
    mean = outputs.mean(0)
    spread = (outputs - mean).std(0) if per_dim else (outputs - mean).pow(2).mean().sqrt()
    factor = scale / spread.clamp_min(1e-6)
    weight.mul_(factor)
    bias.copy_((bias - mean) * factor + offset)


@torch.no_grad()
def _capture_head_inputs(model: GLiNER2, examples: list[tuple[str, Schema]]) -> list[Captured]:
    """Run ``model.extract`` on each (text, schema); return the arguments each head got per call."""
    calls: list[Captured] = []
    heads = {"tokens": model.span_rep.span_rep_layer.project_start, "fields": model.count_embed,
             "prompts": model.count_pred, "labels": model.classifier}
    hooks = [module.register_forward_pre_hook(
        lambda _, args, key=key: calls[-1].setdefault(key, []).append(args))
        for key, module in heads.items()]
    try:
        for text, schema in examples:
            calls.append({})
            model.extract(text, schema)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _span_reps(model: GLiNER2, call: Captured) -> torch.Tensor:
    """Representations ``[spans, D]`` of every valid span of a captured call's text."""
    tokens = call["tokens"][0][0]  # [1, L, D]: one text per call
    length, width = tokens.shape[1], model.max_width
    starts = torch.arange(length).repeat_interleave(width)
    ends = starts + torch.arange(width).repeat(length)
    spans = torch.stack([starts, ends.clamp(max=length - 1)], -1)[None]
    return model.span_rep(tokens, spans).reshape(-1, model.hidden_size)[ends < length]


def _span_logits(model: GLiNER2, call: Captured) -> torch.Tensor:
    """Span logits ``[spans, queries]`` of a captured call, for all its count-aware queries."""
    queries = [model.count_embed(*args).reshape(-1, model.hidden_size) for args in call["fields"]]
    return _span_reps(model, call) @ torch.cat(queries).T


@torch.no_grad()
def _calibrate(model: GLiNER2, generator: torch.Generator) -> None:
    """Set the final layers' affines from head inputs captured while extracting the corpus."""
    from gliner2 import Schema

    full = Schema().entities({"person": "a human", "location": "a place", "date": ""})
    full.relations(["works for", "located in"])
    full.classification("topic", ["business", "science", "travel"])
    full.classification("tone", ["formal", "casual", "urgent", "neutral"], multi_label=True)
    full.structure("event").field("name", dtype="str").field("when").field(
        "kind", dtype="str", choices=["meeting", "concert", "sale"])
    schemas = [Schema().entities(labels) for labels in _CALIBRATION_LABELS] + [full]
    model.count_pred[-1].bias[1] = 1e4  # K = 1 while capturing: all span tasks reach count_embed
    calls = _capture_head_inputs(model, [(text, schema) for text in _CORPUS for schema in schemas])
    fields, prompts, labels = ([args for call in calls for args in call.get(key, [])]
                               for key in ("fields", "prompts", "labels"))

    hidden, embed = model.hidden_size, model.count_embed
    u, w = torch.linalg.qr(torch.randn(hidden, 2, generator=generator))[0].T
    scale = (_SPAN_INTERACTION / hidden**0.5) ** 0.5  # RMS of both centred reps and queries
    rep_out = model.span_rep.span_rep_layer.out_project[-1]
    reps = torch.cat([_span_reps(model, call) for call in calls])
    _standardize(rep_out.weight.T, rep_out.bias, reps, scale, _LABEL_EFFECT / scale * u)
    if model.config.counting_layer == "count_lstm_moe":
        weight, bias = embed.w2, embed.b2
    else:
        lstm = model.config.counting_layer == "count_lstm"
        layer = (embed.projector if lstm else embed.transformer.out_projector)[-1]
        weight, bias = layer.weight.T, layer.bias
    queries = torch.cat([embed(f, 3).reshape(-1, hidden) for f, _ in fields])
    _standardize(weight, bias, queries, scale, _SPAN_EFFECT / scale * w)
    # Shift along w (all queries share +w), on same-text pairs: shared context correlates them.
    logits = torch.cat([_span_logits(model, call).flatten() for call in calls])
    along_w = torch.cat([embed(*args).reshape(-1, hidden) for args in fields]) @ w
    rep_out.bias.add_(-logits.quantile(1 - _SPAN_POSITIVE) / along_w.mean() * w)

    count_out, class_out = model.count_pred[-1], model.classifier[-1]
    prompts, labels = torch.cat([a[0] for a in prompts]), torch.cat([a[0] for a in labels])
    _standardize(count_out.weight.T, count_out.bias, model.count_pred(prompts), _COUNT_NOISE,
                 torch.tensor(_COUNT_BIAS), per_dim=True)
    _standardize(class_out.weight.T, class_out.bias, model.classifier(labels), _CLASS_STD,
                 torch.tensor([_CLASS_SHIFT]))


def build_reference_checkpoint(
    path: str | Path, *, encoder: Encoder = "bert", counting_layer: CountingLayer = "count_lstm",
    seed: int = 0, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
    max_width: int = 8,
) -> Path:
    """Build a tiny GLiNER2 span checkpoint with ``gliner2``, save it to ``path``, check it reloads.

    The folder is what the reference's ``save_pretrained`` writes (config.json, encoder_config/,
    model.safetensors, tokenizer.json, tokenizer_config.json) plus the tokenizer's source
    vocabulary (``vocab.txt`` or ``spm.model``), as released checkpoints ship it. Every weight comes
    from a ``torch.Generator`` seeded with ``seed``: the same arguments give the same files.
    """
    from gliner2 import GLiNER2
    from gliner2.configuration import ExtractorConfig

    if encoder not in ("bert", "deberta") or counting_layer not in COUNTING_LAYERS:
        raise ValueError(f"unknown encoder {encoder!r} or counting layer {counting_layer!r}")
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty")
    generator = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tokenizer = (_bert_tokenizer if encoder == "bert" else _deberta_tokenizer)(workdir)
        encoder_config = _encoder_config(
            encoder, len(tokenizer), hidden_size, num_layers, num_heads)
        config = ExtractorConfig(model_name=f"tiny-random-{encoder}", max_width=max_width,
                                 counting_layer=counting_layer)
        model = GLiNER2(config, encoder_config=encoder_config, tokenizer=tokenizer).eval()
        _init_weights(model, generator, encoder_config.initializer_range)
        _calibrate(model, generator)
        model.save_pretrained(str(path))
        for source in workdir.iterdir():
            shutil.copy(source, path / source.name)
    _check_reload(path, model)
    return path


def _check_reload(path: Path, model: GLiNER2) -> None:
    """Reload ``path`` with ``GLiNER2.from_pretrained``; require the same weights and token ids."""
    from gliner2 import GLiNER2

    loaded = GLiNER2.from_pretrained(str(path))
    expected, actual = model.state_dict(), loaded.state_dict()
    if expected.keys() != actual.keys() or any(not torch.equal(v, actual[k])
                                               for k, v in expected.items()):
        raise RuntimeError(f"reloaded weights differ from the built model at {path}")
    probe = "[P] [E] Zürich, 東京 & e-mail x@y.com: 12.5% [SEP_TEXT] state-of-the-art"
    before, after = model.processor.tokenizer, loaded.processor.tokenizer
    if len(before) != len(after) or before(probe)["input_ids"] != after(probe)["input_ids"]:
        raise RuntimeError(f"reloaded tokenizer differs from the built one at {path}")


@torch.no_grad()
def _demo() -> None:
    """Build all six variants; print extractions of three texts and decision statistics."""
    import itertools
    import json
    import time

    from gliner2 import GLiNER2, Schema

    texts = [
        "Dr. Anna Müller, CTO of Siemens AG, flew from Munich to São Paulo on 12 March 2024. "
        "There she met João Silva, who works for Petrobras.",
        "Questions? E-mail sales@shop-example.com or see https://shop-example.com/offers?id=42 -- "
        "the state-of-the-art X-200 costs €1,299.99 (about $1,400) until 30.06.2025!",
        "Tokyo (東京) hit 35.2 °C on Tuesday. Governor Yuriko Koike urged 14 million residents "
        "to stay indoors, and schools closed early",
    ]
    schema = Schema().entities({"person": "names of people", "organization": "companies, agencies",
                                "location": {"description": "cities, countries", "threshold": 0.3},
                                "date": "", "money": {"threshold": 0.7}})
    schema.classification("sentiment", ["positive", "negative", "neutral"])
    schema.classification("topics", ["business", "travel", "weather", "tech"], multi_label=True)
    schema.structure("trip").field("traveller", dtype="str").field("places", dtype="list").field(
        "purpose", dtype="str", choices=["business", "holiday", "unknown"])
    schema.relations(["works for"])
    with tempfile.TemporaryDirectory() as root:
        for encoder, layer in itertools.product(("bert", "deberta"), COUNTING_LAYERS):
            start = time.perf_counter()
            folder = build_reference_checkpoint(
                Path(root) / layer / encoder, encoder=encoder, counting_layer=layer)
            files = sorted(f for f in folder.rglob("*") if f.is_file())
            print(f"=== {encoder} / {layer}: built in {time.perf_counter() - start:.2f} s, "
                  f"{sum(f.stat().st_size for f in files) / 1e6:.2f} MB, "
                  f"{[str(f.relative_to(folder)) for f in files]}")
            model = GLiNER2.from_pretrained(str(folder))
            for text in texts:
                result = model.extract(text, schema, include_confidence=True, include_spans=True)
                print(json.dumps(result, ensure_ascii=False))
            calls = _capture_head_inputs(model, [(text, schema) for text in texts])
            probs = torch.cat([_span_logits(model, c).sigmoid().flatten()
                               for c in calls if "fields" in c])
            counts = [k for c in calls for (p,) in c["prompts"]
                      for k in model.count_pred(p).argmax(-1).tolist()]
            labels = torch.cat([model.classifier(a[0]).flatten().sigmoid()
                                for c in calls for a in c["labels"]])
            print(f"spans {probs.numel()}: {(probs >= 0.5).float().mean():.1%} >= 0.5, "
                  f"{((probs > 0.05) & (probs < 0.95)).float().mean():.1%} in (0.05, 0.95), "
                  f"min |p - 0.5| {(probs - 0.5).abs().min():.1e}; K per span task {counts}; "
                  f"[L] sigmoids {[round(p, 2) for p in labels.tolist()]}")


if __name__ == "__main__":
    _demo()


def build_plain_encoder(path: "str | Path", *, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2) -> Path:
    """A tiny pretrained-style BERT folder (config, safetensors weights, tokenizer), no GLiNER2 heads."""
    from transformers import BertConfig, BertModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _bert_tokenizer(path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=2 * hidden_size, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
