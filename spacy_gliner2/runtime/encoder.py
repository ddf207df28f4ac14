"""What every family's torch model shares: an encoder (packed DeBERTa or ModernBERT fast path at inference)
and the precision conversions of its runtime copies.

A family model subclasses :class:`EncoderModel`, sets ``self.encoder`` and calls
:meth:`EncoderModel.setup_fast_path`; its heads are its own. Nothing here knows of spaCy,
tokenizers or schemas.
"""
from typing import List, Optional, Union

import torch
from torch import nn

from .deberta import PackedDeberta, supports_fast_path
from .modernbert import PackedModernBert, supports_modernbert_path
from .precision import fuse_activations, use_bf16_linears, use_int8_linears, use_onednn_linears


class EncoderModel(nn.Module):
    """An encoder plus heads; inference copies change precision (:mod:`.precision`)."""

    encoder: nn.Module
    _fast_encoder: Optional[Union[PackedDeberta, PackedModernBert]] = None

    def setup_fast_path(self) -> None:
        """Use a packed path at inference (DeBERTa-v2/v3, ModernBERT) when the encoder allows it."""
        self._fast_encoder = PackedDeberta(self.encoder) if supports_fast_path(self.encoder) else \
            PackedModernBert(self.encoder) if supports_modernbert_path(self.encoder) else None

    def fp32_modules(self) -> List[nn.Module]:
        """Modules whose linear layers stay fp32 in bf16 mode (a family's override)."""
        return []

    def use_bf16_linears(self) -> None:
        """Fast mode (inference only): the linear layers multiply in bf16 (:mod:`.precision`),
        except those of :meth:`fp32_modules` and any ``nn.TransformerEncoder`` (it reads its
        weights directly). Call it on a copy: it replaces modules."""
        transformers = [m for m in self.modules() if isinstance(m, nn.TransformerEncoder)]
        use_bf16_linears(self, skip=[*self.fp32_modules(), *transformers])
        self.invalidate_caches()

    def use_int8_linears(self) -> None:
        """``int8`` mode (inference only): the encoder's feed-forward layers (two thirds of its
        multiply-adds) in int8 (:class:`.precision.Int8Linear`); attention projections and
        the heads stay fp32. Call it on a copy: it replaces modules."""
        feed_forward = [
            m for name, m in self.encoder.named_modules() if isinstance(m, nn.Linear) and (
                name.endswith("intermediate.dense") or (name.endswith("output.dense") and "attention" not in name))]
        if not feed_forward:
            raise ValueError(
                f"precision 'int8' found no feed-forward layers ('...intermediate.dense', '...output.dense') in this "
                f"{type(self.encoder).__name__} encoder; use precision 'fp32' or 'bf16' with it.")
        use_int8_linears(self, only=feed_forward)

    def use_onednn_linears(self) -> None:
        """CPU inference: the fp32 linear layers left (all of them in exact mode) multiply
        through oneDNN (:mod:`.precision`). Call it on a copy: the training forward is
        unchanged, but the modules change class; ReLUs and exact GELUs after them are fused into them."""
        use_onednn_linears(self)
        fuse_activations(self)

    def invalidate_caches(self) -> None:
        """Drop what is cached from the weights (the fast path's position projections)."""
        if self._fast_encoder is not None:
            self._fast_encoder.invalidate()

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def max_tokens(self) -> Optional[int]:
        """The longest input the encoder can read (None: no limit, as DeBERTa's relative positions)."""
        config = self.encoder.config
        if getattr(config, "position_biased_input", True) is False:
            return None
        limit = getattr(config, "max_position_embeddings", None)
        if limit and config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
            limit -= 2  # positions start after the padding index
        return limit

    def run_encoder(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings ``(B, T, D)``. DeBERTa and ModernBERT inference without gradients
        takes a packed fast path; with ``keep`` (``(B, T)`` bool), its last layer computes only those rows
        (the others are zeros)."""
        if not self.training and not torch.is_grad_enabled() and self._fast_encoder is not None:
            return self._fast_encoder(input_ids, attention_mask, keep=keep)
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
