"""Tiny random-weight GLiNER2 "span" checkpoints built and saved by the reference package.

Test helper (not a test module): ``build_reference_checkpoint`` makes a few-MB checkpoint
folder with ``gliner2`` itself, so parity tests need no downloaded weights.
"""

from __future__ import annotations

import io
import math
import shutil
import string
import tempfile
from pathlib import Path
from typing import Literal

import torch

Encoder = Literal["bert", "deberta"]
CountingLayer = Literal["count_lstm", "count_lstm_v2", "count_lstm_moe"]
COUNTING_LAYERS: tuple[CountingLayer, ...] = ("count_lstm", "count_lstm_v2", "count_lstm_moe")

_WORDS = """the of and to in is was for on with as by at from that this it he she they we you
his her their our its an be are were been has have had not but or if then than so all one two
three first new old year years time day days week month people company companies city country
world state government university school team group market price money share shares percent
john mary smith paris london berlin new york apple google microsoft amazon america europe japan
china india france germany canada monday tuesday friday january march may june july december
said says told announced reported works worked lives lived born moved joined founded visited
met bought sold made make use used work home office email mail phone number address website
www http https com org net email support info help contact meeting report project product
service data model system research engineer doctor professor president director manager chief
executive officer ceo founder student author person location organization date event money
positive negative neutral news sports business technology science politics health travel
urgent important question complaint request review opinion fact name title city street road
river lake mountain north south east west about after before during over under into out up
down more most some many much other such only also very just like good great big small high
low long short early late last next own same different important public private local general
""".split()
_SUBWORDS = "s es ed ing er ers est ly ion tion ment ness ful less able al ic ity ous ive an ian".split()
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
""".splitlines()


def _vocabulary_lines() -> list[str]:
    """Text used to build both tokenizers: the corpus plus the common-word list."""
    word_lines = [" ".join(_WORDS[i : i + 16]) for i in range(0, len(_WORDS), 16)]
    charset = " ".join(string.ascii_letters + string.digits + string.punctuation)
    return _CORPUS * 4 + word_lines * 2 + [charset]


def _bert_tokenizer(workdir: Path):
    """WordPiece tokenizer over a local ``vocab.txt`` (lower-cased, like bert-base-uncased)."""
    from transformers import BertTokenizerFast

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *string.digits]
    pieces += [*string.ascii_lowercase, *_WORDS, *_NON_ASCII]
    pieces += [f"##{p}" for p in [*string.ascii_lowercase, *string.digits, *_SUBWORDS]]
    vocab = list(dict.fromkeys(pieces))
    (workdir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(workdir), do_lower_case=True)


def _deberta_tokenizer(workdir: Path):
    """SentencePiece unigram tokenizer trained in-process, laid out like DeBERTa-v3's ``spm.model``."""
    import sentencepiece as spm
    from transformers import DebertaV2TokenizerFast

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_vocabulary_lines()), model_writer=model, model_type="unigram",
        vocab_size=800, hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]",
        eos_piece="[SEP]", unk_piece="[UNK]", user_defined_symbols=["[MASK]"],
        num_threads=1, minloglevel=2,
    )
    (workdir / "spm.model").write_bytes(model.getvalue())
    return DebertaV2TokenizerFast.from_pretrained(str(workdir))


def _encoder_config(encoder: Encoder, vocab_size: int, hidden: int, layers: int, heads: int):
    """A tiny BERT or DeBERTa-v3-style (relative attention) encoder config."""
    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=2 * hidden, initializer_range=float(__import__('os').environ.get('ENC_STD', 0.5)),
                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, pad_token_id=0)
    if encoder == "bert":
        from transformers import BertConfig

        return BertConfig(max_position_embeddings=4096, **common)
    from transformers import DebertaV2Config

    return DebertaV2Config(
        max_position_embeddings=512, relative_attention=True, position_buckets=256,
        max_relative_positions=-1, pos_att_type=["p2c", "c2p"], position_biased_input=False,
        norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0, hidden_act="gelu",
        layer_norm_eps=1e-7, **common,
    )


# Target decision statistics, in logits (see ``_calibrate``).
_SPAN_INTERACTION, _SPAN_EFFECT, _LABEL_EFFECT, _SPAN_SHIFT = map(float, __import__('os').environ.get('SPANP', '1.0,0.8,1.5,-2.5').split(','))
_CLASS_STD, _CLASS_SHIFT, _COUNT_NOISE = 2.0, -0.5, 1.0
_SPAN_POSITIVE = float(__import__('os').environ.get('SPANPOS', 0.12))
# Count-head logit offsets: K = 0 never wins; K = 1, 2, 3 compete; K >= 4 are rare.
_COUNT_BIAS = [-10.0, 1.0, 0.6, 0.3] + [-2.5] * 16


@torch.no_grad()
def _init_weights(model: torch.nn.Module, generator: torch.Generator, encoder_std: float) -> None:
    """Encoder N(0, encoder_std); heads N(0, 1/fan_in), biases N(0, 0.1); LayerNorms identity."""
    for name, param in model.named_parameters():
        if "norm" in name.lower():
            param.fill_(1.0 if name.endswith("weight") else 0.0)
        elif name.startswith("encoder."):
            param.normal_(0.0, encoder_std, generator=generator) if param.dim() > 1 else param.zero_()
        elif "pos_embedding" in name:
            param.normal_(0.0, 1.0, generator=generator)
        elif param.dim() > 1:  # Linear, GRU and packed-expert weights all have fan_in at dim 1.
            param.normal_(0.0, param.shape[1] ** -0.5, generator=generator)
        else:
            param.normal_(0.0, 0.1, generator=generator)


def _standardize(weight: torch.Tensor, bias: torch.Tensor, outputs: torch.Tensor,
                 scale: float, offset: torch.Tensor, per_dim_std: bool = False) -> None:
    """Rewrite a final layer so that, on ``outputs`` it produced, it gives ``offset + scale * z``.

    ``z`` is centred per output dimension with unit RMS (overall, or per dimension).
    Works for packed experts too (gates sum to 1), where ``bias`` is broadcast over experts.
    """
    mean = outputs.mean(0)
    spread = (outputs - mean).std(0) if per_dim_std else (outputs - mean).pow(2).mean().sqrt()
    factor = scale / spread.clamp_min(1e-6)
    weight.mul_(factor)
    bias.copy_((bias - mean) * factor + offset)


_CALIBRATION_LABELS = [
    ["person", "organization", "location", "date"], ["company", "product", "city", "money", "event"],
    ["country", "university", "profession", "quantity"], ["name", "email", "phone number", "address", "url"],
]


def _calibration_schemas() -> list:
    """Entity schemas over varied label sets, plus one touching every head."""
    from gliner2 import Schema

    schemas = [Schema().entities(labels) for labels in _CALIBRATION_LABELS]
    full = Schema().entities({"person": "a human", "location": "a place", "date": ""})
    full.relations(["works for", "located in"])
    full.classification("topic", ["business", "science", "travel"])
    full.classification("tone", ["formal", "casual", "urgent", "neutral"], multi_label=True)
    full.structure("event").field("name", dtype="str").field("when").field(
        "kind", dtype="str", choices=["meeting", "concert", "sale"])
    return [*schemas, full]


@torch.no_grad()
def _capture_head_inputs(model) -> list[dict[str, list[torch.Tensor]]]:
    """Extract the corpus with each calibration schema; return every call's head inputs."""
    calls: list[dict[str, list[torch.Tensor]]] = []
    heads = {"tokens": model.span_rep.span_rep_layer.project_start, "fields": model.count_embed,
             "prompts": model.count_pred, "labels": model.classifier}
    hooks = [module.register_forward_pre_hook(
        lambda _, args, key=key: calls[-1].setdefault(key, []).append(args[0].clone()))
        for key, module in heads.items()]
    model.count_pred[-1].bias[1] = 1e4  # K = 1 while capturing: every span task reaches count_embed.
    try:
        for text in _CORPUS:
            for schema in _calibration_schemas():
                calls.append({})
                model.extract(text, schema)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _span_reps(model, tokens: torch.Tensor) -> torch.Tensor:
    """All valid span representations ``[spans, D]`` of one text's ``[1, L, D]`` token states."""
    length = tokens.shape[1]
    starts = torch.arange(length).repeat_interleave(model.max_width)
    ends = starts + torch.arange(model.max_width).repeat(length)
    spans = torch.stack([starts, ends.clamp(max=length - 1)], -1)[None]
    return model.span_rep(tokens, spans).reshape(-1, model.hidden_size)[ends < length]


@torch.no_grad()
def _calibrate(model, generator: torch.Generator) -> None:
    """Set the final layers' affines from head inputs captured while extracting the corpus.

    Span logit = <rep, query> ~ _SPAN_SHIFT + span effect + label effect + interaction, so a
    few labels fire on several spans and most on none; count logits put K in 1..3; classifier
    logits spread around a small negative shift. Deterministic: no randomness but ``generator``.
    """
    calls = _capture_head_inputs(model)
    hidden = model.hidden_size
    fields = [[f for f in call.get("fields", [])] for call in calls]
    reps = torch.cat([_span_reps(model, call["tokens"][0]) for call in calls])
    queries = torch.cat([model.count_embed(f, 3).reshape(-1, hidden) for fs in fields for f in fs])

    u, w = torch.linalg.qr(torch.randn(hidden, 2, generator=generator))[0].T
    rep_scale = query_scale = (_SPAN_INTERACTION / hidden**0.5) ** 0.5
    query_w = _SPAN_EFFECT / rep_scale
    rep_w = _SPAN_SHIFT / query_w
    rep_u = max(_LABEL_EFFECT**2 / query_scale**2 - rep_w**2, 0.0) ** 0.5
    rep_out = model.span_rep.span_rep_layer.out_project[-1]
    _standardize(rep_out.weight.T, rep_out.bias, reps, rep_scale, rep_u * u + rep_w * w)
    if model.config.counting_layer == "count_lstm_moe":
        weight, bias = model.count_embed.w2, model.count_embed.b2
    else:
        layer = (model.count_embed.projector if model.config.counting_layer == "count_lstm"
                 else model.count_embed.transformer.out_projector)[-1]
        weight, bias = layer.weight.T, layer.bias
    _standardize(weight, bias, queries, query_scale, query_w * w)
    # Spans and queries of one text share its context, so re-centre on same-text pairs.
    pairs = [(_span_reps(model, call["tokens"][0]), model.count_embed(f, 1)[0])
             for call, fs in zip(calls, fields) for f in fs]
    logits = torch.cat([(r @ q.T).flatten() for r, q in pairs])
    along_w = torch.cat([q @ w for _, q in pairs]).mean()
    rep_out.bias.add_(-logits.quantile(1 - _SPAN_POSITIVE) / along_w * w)

    prompts = torch.cat([p for call in calls for p in call["prompts"]])
    labels = torch.cat([l for call in calls for l in call.get("labels", [])])
    count_out, class_out = model.count_pred[-1], model.classifier[-1]
    _standardize(count_out.weight.T, count_out.bias, model.count_pred(prompts), _COUNT_NOISE,
                 torch.tensor(_COUNT_BIAS), per_dim_std=True)
    _standardize(class_out.weight.T, class_out.bias, model.classifier(labels), _CLASS_STD,
                 torch.tensor([_CLASS_SHIFT]))


def build_reference_checkpoint(
    path: str | Path, *, encoder: Encoder = "bert", counting_layer: CountingLayer = "count_lstm",
    seed: int = 0, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2, max_width: int = 8,
) -> Path:
    """Build a tiny seeded GLiNER2 span checkpoint with ``gliner2`` and save it to ``path``.

    The folder is written by the reference's own ``save_pretrained`` (config.json,
    encoder_config/config.json, model.safetensors, tokenizer.json, tokenizer_config.json);
    the tokenizer's source vocabulary (``vocab.txt`` or ``spm.model``) is copied next to it,
    as in released checkpoints. The result is reloaded with ``GLiNER2.from_pretrained`` and checked.
    """
    from gliner2 import GLiNER2
    from gliner2.configuration import ExtractorConfig

    if encoder not in ("bert", "deberta"):
        raise ValueError(f"encoder must be 'bert' or 'deberta', got {encoder!r}")
    if counting_layer not in COUNTING_LAYERS:
        raise ValueError(f"counting_layer must be one of {COUNTING_LAYERS}, got {counting_layer!r}")
    path = Path(path)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tokenizer = (_bert_tokenizer if encoder == "bert" else _deberta_tokenizer)(workdir)
        encoder_config = _encoder_config(encoder, len(tokenizer), hidden_size, num_layers, num_heads)
        config = ExtractorConfig(model_name=f"tiny-random-{encoder}", max_width=max_width,
                                 counting_layer=counting_layer)
        model = GLiNER2(config, encoder_config=encoder_config, tokenizer=tokenizer)
        model.eval()
        _init_weights(model, generator, encoder_config.initializer_range)
        _calibrate(model, generator)
        model.save_pretrained(str(path))
        for source in workdir.iterdir():
            shutil.copy(source, path / source.name)
    _check_reload(path, model)
    return path


def _check_reload(path: Path, model: torch.nn.Module) -> None:
    """Reload ``path`` with ``GLiNER2.from_pretrained``; require identical weights and token ids."""
    from gliner2 import GLiNER2

    loaded = GLiNER2.from_pretrained(str(path))
    expected = model.state_dict()
    actual = loaded.state_dict()
    if expected.keys() != actual.keys() or any(not torch.equal(expected[k], actual[k]) for k in expected):
        raise RuntimeError(f"reloaded weights differ from the built model at {path}")
    probe = "[P] [E] Zürich, 東京 & e-mail x@y.com: 12.5% [SEP_TEXT] state-of-the-art"
    before, after = model.processor.tokenizer, loaded.processor.tokenizer
    if before(probe)["input_ids"] != after(probe)["input_ids"] or len(before) != len(after):
        raise RuntimeError(f"reloaded tokenizer differs from the built one at {path}")
