"""The optimiser every family trains with: AdamW with an encoder and a head learning rate,
warm-up and linear decay, gradient clipping, and the seeded random sources of sampling.

Pure torch: the component keeps one :class:`TrainingState` and steps it in ``finish_update``.
"""
import random
from dataclasses import dataclass
from typing import Any, Dict, Optional, Type, TypeVar

import torch

from ..runtime.encoder import EncoderModel

S = TypeVar("S", bound="OptimSettings")


@dataclass
class OptimSettings:
    """Optimiser settings (a family's ``training`` config block extends them)."""

    encoder_lr: float = 1e-5
    head_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    total_steps: Optional[int] = None  # linear decay to 0 after warm-up, when set
    grad_clip: float = 1.0
    seed: int = 0

    @classmethod
    def from_config(cls: Type[S], config: Optional[Dict[str, Any]]) -> S:
        config = dict(config or {})
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Unknown training setting(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}.")
        return cls(**config)


class TrainingState:
    """AdamW over the encoder and the heads, its schedule, and the random sources of sampling."""

    def __init__(self, model: EncoderModel, settings: OptimSettings):
        self.model = model
        self.settings = settings
        encoder = {id(p) for p in model.encoder.parameters()}
        params = list(model.parameters())
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in params if id(p) in encoder], "lr": settings.encoder_lr},
                {"params": [p for p in params if id(p) not in encoder], "lr": settings.head_lr},
            ],
            weight_decay=settings.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._factor)
        self.rng = random.Random(settings.seed)
        self.generator = torch.Generator().manual_seed(settings.seed)

    def _factor(self, step: int) -> float:
        settings = self.settings
        if settings.warmup_steps and step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        if settings.total_steps:
            left = settings.total_steps - step
            return max(0.0, left / max(1, settings.total_steps - settings.warmup_steps))
        return 1.0

    def step(self) -> None:
        """Clip, step the optimizer and the learning-rate schedule, clear gradients."""
        if self.settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
