"""GLiClass uni-encoder inference in torch, numerically the reference's (gliclass 0.1.21).

One encoder pass over ``<<LABEL>>l1<<LABEL>>l2...<<SEP>>prompt text examples`` (see :mod:`.prompt`):

- label vectors: the hidden state at the k-th ``<<LABEL>>`` (``first``; the token after it without
  ``embed_class_token``), or the mean over its span (``average``: from the marker to the next one;
  the last label's span runs to the end of the sequence, as in the reference);
- text vector: a pooling of the hidden states (from the first ``<<SEP>>`` on with
  ``extract_text_features``, through a bi-LSTM with ``use_lstm``), or all of them (``pass``);
- both through their projector, optionally L2-normalised, then a scorer gives one logit per label
  (times the raw ``logit_scale`` when normalised; then the calibrator if the checkpoint has one).

``masked_pooling=True`` (default) pools each text as the reference does for that text alone, so its
scores do not depend on the rest of its batch; ``False`` pools over padding like the reference's
batched pipeline. Inputs must be right-padded. Parameter names are the reference's, so its
``model.safetensors`` loads with ``load_state_dict(strict=True)`` and ours loads in the reference.
"""
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..runtime.encoder import EncoderModel
from .config import GLiClassSettings

EPSILON = 1e-8  # L2 normalisation: x / (|x| + EPSILON)
SCORER_MLP = 256  # width of the mlp and hopfield scorers (the reference ignores scorer_mlp_hidden_size)
HOPFIELD_BETA = 4.0


class GLiClassOutput(NamedTuple):
    """Logits ``(B, C)``, ``C`` the largest label count in the batch; ``-inf`` in the slots past a
    row's own label count, which ``label_mask`` ``(B, C)`` marks False."""

    logits: torch.Tensor
    label_mask: torch.Tensor


class Projector(nn.Module):
    """Linear, activation, dropout, linear (the reference's ``FeaturesProjector``)."""

    def __init__(self, outer: int, inner: int, activation: str, dropout: float) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        self.linear_1 = nn.Linear(outer, inner)
        self.act = ACT2FN[activation]
        self.dropout = nn.Dropout(dropout)
        self.linear_2 = nn.Linear(inner, outer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.dropout(self.act(self.linear_1(x))))


class BiLstm(nn.Module):
    """A bi-LSTM (size/2 per direction) over each row's first ``lengths`` slots; output ``(B, max(lengths), size)``,
    zero past each length."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(size, size // 2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.lstm(packed)[0], batch_first=True)[0]


def _mlp(sizes: Sequence[int], act: type) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Linear(a, b)] + ([act()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class DotScorer(nn.Module):
    """``simple``: the dot product of the text and label vectors."""

    def forward(self, text: torch.Tensor, labels: torch.Tensor, text_mask: torch.Tensor,
                label_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return torch.einsum("bd,bcd->bc", text, labels)


class MlpScorer(nn.Module):
    """``mlp``: an MLP (2D -> 256 -> 128 -> 1, ReLU) over [text; label]."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.mlp = _mlp([2 * size, SCORER_MLP, SCORER_MLP // 2, 1], nn.ReLU)

    def forward(self, text, labels, text_mask, label_mask):
        text = text.unsqueeze(1).expand(-1, labels.shape[1], -1)
        return self.mlp(torch.cat([text, labels], dim=-1)).squeeze(-1)


class WeightedDotScorer(nn.Module):
    """``weighted-dot``: MLP over [t0; l0; t1 * l1], (t0, t1) and (l0, l1) the halves of 2D-wide projections."""

    def __init__(self, size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj_text = nn.Linear(size, 2 * size)
        self.proj_label = nn.Linear(size, 2 * size)
        self.out_mlp = nn.Sequential(nn.Linear(3 * size, 4 * size), nn.Dropout(dropout), nn.ReLU(),
                                     nn.Linear(4 * size, 1))

    def forward(self, text, labels, text_mask, label_mask):
        t0, t1 = self.proj_text(text).unsqueeze(1).chunk(2, dim=-1)
        l0, l1 = self.proj_label(labels).chunk(2, dim=-1)
        return self.out_mlp(torch.cat([t0.expand_as(l0), l0, t1 * l1], dim=-1)).squeeze(-1)


class HopfieldScorer(nn.Module):
    """``hopfield``: each label moves towards the text by its softmax share over the labels
    (``label_mask`` excludes empty slots; None includes them, as the reference), then an MLP."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(size, size, bias=False)
        self.k_proj = nn.Linear(size, size, bias=False)
        self.v_proj = nn.Linear(size, size, bias=False)
        self.mlp = _mlp([size, SCORER_MLP, SCORER_MLP // 2, 1], nn.ReLU)

    def forward(self, text, labels, text_mask, label_mask):
        attention = torch.einsum("bcd,bd->bc", self.q_proj(labels), self.k_proj(text)) * HOPFIELD_BETA
        if label_mask is not None:
            attention = attention.masked_fill(~label_mask, float("-inf"))
        share = torch.softmax(attention, dim=-1).nan_to_num(0.0)
        labels = labels + share.unsqueeze(-1) * self.v_proj(text).unsqueeze(1)
        return self.mlp(labels).squeeze(-1)


class CrossAttnScorer(nn.Module):
    """``cross-attn`` (with ``pass`` pooling): labels attend to the text tokens, then an MLP over
    [context; label]."""

    def __init__(self, size: int, heads: int, mlp_size: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_norm, self.kv_norm, self.norm = nn.LayerNorm(size), nn.LayerNorm(size), nn.LayerNorm(size)
        self.q, self.k, self.v, self.out = (nn.Linear(size, size) for _ in range(4))
        self.score_mlp = _mlp([2 * size, mlp_size, mlp_size // 2, 1], nn.GELU)

    def forward(self, text, labels, text_mask, label_mask):
        (b, c, d), h = labels.shape, self.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, x.shape[1], h, d // h).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            heads(self.q(self.q_norm(labels))), heads(self.k(self.kv_norm(text))), heads(self.v(text)),
            attn_mask=text_mask[:, None, None, :].bool(), dropout_p=self.dropout if self.training else 0.0)
        context = self.norm(self.out(context.transpose(1, 2).reshape(b, c, d)))
        return self.score_mlp(torch.cat([context, labels], dim=-1)).squeeze(-1)


class Calibrator(nn.Module):
    """The 0.1.21 calibrator: logit <- beta * logit + bias, beta in (0, beta_max) and bias predicted
    per (text, label) from both vectors and statistics of the text's logits."""

    def __init__(self, size: int, hidden: int, beta_max: float, use_bias: bool, dropout: float) -> None:
        super().__init__()
        self.beta_max, self.use_bias = beta_max, use_bias
        self.text_norm, self.label_norm = nn.LayerNorm(size), nn.LayerNorm(size)
        self.mlp = nn.Sequential(nn.Linear(4 * size + 6, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 2 if use_bias else 1))

    def forward(self, text, labels, logits, label_mask):
        z, m = logits.float(), label_mask.to(torch.float32)
        n = m.sum(-1, keepdim=True).clamp_min(1.0)
        top = z.masked_fill(~label_mask, float("-inf")).amax(-1, keepdim=True)
        top = torch.where(label_mask.any(-1, keepdim=True), top, torch.zeros_like(top))
        p = torch.sigmoid(z)
        entropy = -(p * F.logsigmoid(z) + (1 - p) * F.logsigmoid(-z))
        stats = torch.stack([z, z.abs(), z - top, z - (z * m).sum(-1, keepdim=True) / n,
                             ((entropy * m).sum(-1, keepdim=True) / n).expand_as(z), n.log().expand_as(z)], dim=-1)
        dtype = self.mlp[0].weight.dtype
        t = self.text_norm(text.to(dtype)).unsqueeze(1).expand_as(labels)
        lab = self.label_norm(labels.to(dtype))
        out = self.mlp(torch.cat([t, lab, t * lab, (t - lab).abs(), (stats * m.unsqueeze(-1)).to(dtype)], -1)).float()
        beta = (self.beta_max * torch.sigmoid(out[..., 0])).masked_fill(~label_mask, 1.0)
        bias = out[..., 1].masked_fill(~label_mask, 0.0) if self.use_bias else 0.0
        return (beta * z + bias).to(logits.dtype)


def _scorer(s: GLiClassSettings) -> nn.Module:
    if s.scorer_type == "simple":
        return DotScorer()
    if s.scorer_type == "mlp":
        return MlpScorer(s.hidden_size)
    if s.scorer_type == "weighted-dot":
        return WeightedDotScorer(s.hidden_size)
    if s.scorer_type == "hopfield":
        return HopfieldScorer(s.hidden_size)
    if s.scorer_type == "cross-attn":
        return CrossAttnScorer(s.hidden_size, s.scorer_num_heads, s.scorer_mlp_hidden_size, s.scorer_attn_dropout)
    raise ValueError(f"unknown GLiClass scorer {s.scorer_type!r}")


class Parts(nn.Module):
    """The reference's inner module: its parameters are ``model.*`` in the state dict."""

    def __init__(self, s: GLiClassSettings, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder_model = encoder
        self.text_projector = Projector(s.encoder_hidden_size, s.hidden_size, s.projector_hidden_act, s.dropout)
        self.classes_projector = Projector(s.encoder_hidden_size, s.hidden_size, s.projector_hidden_act, s.dropout)
        self.scorer = _scorer(s)
        if s.use_lstm:
            self.lstm = BiLstm(s.hidden_size)
        if s.use_segment_embeddings:
            self.segment_embeddings = nn.Embedding(3, s.encoder_hidden_size)
        self.dropout = nn.Dropout(s.dropout)
        self.logit_scale = nn.Parameter(torch.tensor(s.logit_scale_init_value))


class GLiClassModel(EncoderModel):
    """A GLiClass uni-encoder: ``forward(input_ids, attention_mask) -> GLiClassOutput``."""

    def __init__(self, settings: GLiClassSettings, encoder: nn.Module, masked_pooling: bool = True) -> None:
        super().__init__()
        s = self.settings = settings
        self.masked_pooling = masked_pooling
        self.model = Parts(settings, encoder)
        self.calibrator = (Calibrator(s.encoder_hidden_size, s.calibrator_hidden_size, s.calibrator_beta_max,
                                      s.calibrator_use_bias, s.calibrator_dropout) if s.use_calibrator else None)
        self.setup_fast_path()

    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        """The encoder (``model.encoder_model`` in the reference's state dict)."""
        return self.model.encoder_model

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               segment_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The encoder's last hidden states ``(B, T, H)``; segment embeddings are added to the word
        embeddings when ``segment_ids`` is given. DeBERTa inference takes the packed fast path, except
        without ``masked_pooling``: the reference pools padding rows, which the fast path leaves out."""
        encoder = self.model.encoder_model
        if segment_ids is None and self.masked_pooling:
            return self.run_encoder(input_ids, attention_mask, keep=self._read_rows(input_ids, attention_mask))
        if segment_ids is None:
            return encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        embeds = encoder.get_input_embeddings()(input_ids) + self.model.segment_embeddings(segment_ids)
        return encoder(inputs_embeds=embeds, attention_mask=attention_mask)[0]

    def _read_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Optional[torch.Tensor]:
        """``(B, T)`` bool: the only rows the heads read when both poolings are ``first`` (each label's
        marker or the token after it, and the text's first token), so that the fast path's last layer
        computes those alone; None (every row) otherwise or off the fast path."""
        s = self.settings
        if (self._fast_encoder is None or self.training or torch.is_grad_enabled() or s.use_lstm
                or s.pooling_strategy != "first" or s.class_token_pooling != "first"):
            return None
        mask = attention_mask.bool()
        rows = input_ids == s.class_token_index
        if not s.embed_class_token:
            rows = torch.cat([torch.zeros_like(rows[:, :1]), rows[:, :-1]], dim=1)
        first = ((input_ids == s.text_token_index).int().argmax(-1) if s.extract_text_features
                 else torch.zeros_like(input_ids[:, 0]))
        rows[torch.arange(len(rows), device=rows.device), first] = True
        return rows & mask

    def segment_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Segment ids as gliclass 0.1.21 makes them: 0 before the first <<SEP>>, 1 from it on. With an
        <<EXAMPLE>> in the row, 2 from the first position that is NOT <<EXAMPLE>> (an argmin where argmax
        was meant; normally position 0, so the whole row is 2) and 1 between <<SEP>> and that position."""
        s = self.settings
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        sep = (input_ids == s.text_token_index).int().argmax(-1, keepdim=True)
        is_example = input_ids == s.example_token_index
        example = is_example.int().argmin(-1, keepdim=True)
        after_sep = (pos >= sep).long()
        with_examples = torch.where(pos >= example, torch.full_like(after_sep, 2), after_sep)
        return torch.where(is_example.any(-1, keepdim=True), with_examples, after_sep)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> GLiClassOutput:
        """Logits of every ``<<LABEL>>`` in each row, in order (right-padded inputs)."""
        s, mask = self.settings, attention_mask.bool()
        if self.masked_pooling and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("GLiClassModel needs right-padded inputs (padding after each row's tokens).")
        segments = self.segment_ids(input_ids) if s.use_segment_embeddings else None
        hidden = self.encode(input_ids, attention_mask, segments)
        is_label = input_ids == s.class_token_index
        counts = is_label.sum(-1)
        width = int(counts.max()) if counts.numel() else 0
        label_mask = torch.arange(width, device=input_ids.device).unsqueeze(0) < counts.unsqueeze(1)

        labels = self.model.classes_projector(self._label_vectors(hidden, input_ids, mask, is_label, width))
        text, text_mask = self._text_vector(hidden, input_ids, mask)
        text = self.model.dropout(self.model.text_projector(text))
        if s.normalize_features:
            text = text / (text.norm(p=2, dim=-1, keepdim=True) + EPSILON)
            labels = labels / (labels.norm(p=2, dim=-1, keepdim=True) + EPSILON)
        logits = self.model.scorer(text, labels, text_mask, label_mask if self.masked_pooling else None)
        if s.normalize_features:
            logits = logits * self.model.logit_scale
        if self.calibrator is not None:
            logits = self.calibrator(text, labels, logits, label_mask)
        return GLiClassOutput(logits.masked_fill(~label_mask, float("-inf")), label_mask)

    def _label_vectors(self, hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                       is_label: torch.Tensor, width: int) -> torch.Tensor:
        """``(B, C, H)``: per label slot, its marker's state (``first``) or its span's mean (``average``);
        zero for slots past a row's label count."""
        s = self.settings
        k = torch.arange(1, width + 1, device=input_ids.device).view(1, -1, 1)
        slot = is_label.long().cumsum(-1).unsqueeze(1) == k  # (B, C, T): inside the span of label k
        if s.class_token_pooling == "first":
            pick = slot & is_label.unsqueeze(1)
            if not s.embed_class_token:  # the token right after the marker
                after = torch.zeros_like(pick)
                after[..., 1:] = pick[..., :-1]
                pick = after
            return torch.bmm(pick.to(hidden.dtype), hidden)
        span = slot & mask.unsqueeze(1)  # to the next marker; the last label's span runs to the end
        if s.extract_text_features:
            span = span & ((input_ids == s.text_token_index).long().cumsum(-1) == 0).unsqueeze(1)
        if not s.embed_class_token:
            span = span & ~is_label.unsqueeze(1)
        span = span.to(hidden.dtype)
        return torch.bmm(span, hidden) / span.sum(-1, keepdim=True).clamp(min=1)

    def _text_vector(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                     mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The pooled text ``(B, H)`` (``(B, S, H)`` for ``pass``) and the text tokens' mask ``(B, S)``."""
        s = self.settings
        tokens, token_mask = hidden, mask
        if s.extract_text_features:  # the tokens from the first <<SEP>> on, shifted to slot 0, zero-padded
            size = hidden.shape[1]
            start = (input_ids == s.text_token_index).int().argmax(-1, keepdim=True)
            j = torch.arange(size, device=hidden.device).unsqueeze(0)
            valid = j < size - start
            source = (start + j).clamp(max=size - 1)
            tokens = hidden.gather(1, source.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            tokens = tokens * valid.unsqueeze(-1).to(hidden.dtype)
            token_mask = mask.gather(1, source) & valid
        row_slots = mask.sum(-1)  # slots the text has when run alone (the reference at batch size 1)
        if s.use_lstm:
            row_slots = token_mask.sum(-1)
            tokens = self.model.lstm(tokens, row_slots)
            token_mask = token_mask[:, : tokens.shape[1]]
        if s.pooling_strategy == "pass":
            return tokens, token_mask
        if self.masked_pooling:
            tokens = tokens * token_mask.unsqueeze(-1).to(tokens.dtype)
            in_row = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0) < row_slots.unsqueeze(1)
        else:  # the reference's batched pooling: every slot, padding included
            in_row = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            row_slots = torch.full_like(row_slots, tokens.shape[1])
        return pool(s.pooling_strategy, tokens, in_row, row_slots), token_mask


def pool(kind: str, x: torch.Tensor, in_row: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Pool ``x`` ``(B, S, H)`` over each row's slots ``in_row`` ``(B, S)`` (the first ``n`` slots)."""
    if kind == "first":
        return x[:, 0]
    if kind == "last":
        return x[torch.arange(x.shape[0], device=x.device), n - 1]
    keep = in_row.unsqueeze(-1)
    n = n.unsqueeze(-1).to(x.dtype)
    if kind in ("max", "abs_max"):
        return (x.abs() if kind == "abs_max" else x).masked_fill(~keep, float("-inf")).amax(1)
    x = x.abs() if kind == "abs_avg" else x.square() if kind == "rms" else x
    total = (x * keep.to(x.dtype)).sum(1)
    if kind == "sum":
        return total
    if kind == "rms":
        return (total / n).sqrt()
    if kind in ("avg", "abs_avg"):
        return total / n
    raise ValueError(f"unknown GLiClass pooling {kind!r}")


def probabilities(logits: torch.Tensor, n_labels: Union[Sequence[int], torch.Tensor],
                  multi_label: Union[bool, Sequence[bool]] = True) -> torch.Tensor:
    """Float32 scores ``(B, C)`` as the reference's pipeline gives them: sigmoid per label (multi-label)
    or softmax over the row's own ``n_labels`` labels (single-label); 0 in the slots past ``n_labels``."""
    logits = logits.float()
    counts = torch.as_tensor(n_labels, device=logits.device).reshape(-1, 1)
    own = torch.arange(logits.shape[-1], device=logits.device).unsqueeze(0) < counts
    logits = logits.masked_fill(~own, float("-inf"))
    multi = torch.as_tensor(multi_label, dtype=torch.bool, device=logits.device).reshape(-1, 1)
    return torch.where(multi, torch.sigmoid(logits), torch.softmax(logits, dim=-1).nan_to_num(0.0))
