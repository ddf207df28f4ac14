"""The optimiser every family trains with: AdamW with an encoder and a head learning rate,
warm-up and linear decay, gradient clipping, and the seeded random sources of sampling.

Pure torch: the component keeps one :class:`TrainingState` and steps it in ``finish_update``.
"""
import copy
import random
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Dict, Optional, Tuple, Type, TypeVar, Union, get_args, get_origin, get_type_hints

import torch

from ..runtime.encoder import EncoderModel
from .ppo import BASELINES, PPOSettings

S = TypeVar("S", bound="OptimSettings")
OBJECTIVES = ("supervised", "ppo")


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
    shuffle_labels: bool = True  # shuffle the labels of each example's prompt (no position is learned)
    objective: str = "supervised"  # "supervised" (the family's losses) or "ppo" (classification tasks, :mod:`.rl`)
    reward: str = "f1"  # ppo: "f1", "accuracy", or a name in spaCy's misc registry
    ppo_epochs: int = 4  # ppo: clipped epochs (optimizer steps) per batch
    ppo_clip: float = 0.2
    kl_coef: float = 0.05  # ppo: weight of the exact KL to the starting model
    entropy_coef: float = 0.01  # ppo: weight of the entropy bonus
    baseline: str = "mean"  # ppo: advantage = reward - batch mean ("mean") or reward ("none")

    # the lowest and highest value of a number setting (None: no bound); subclasses add theirs
    LIMITS: ClassVar[Dict[str, Tuple[Optional[float], Optional[float]]]] = {
        "encoder_lr": (0, None), "head_lr": (0, None), "weight_decay": (0, None), "warmup_steps": (0, None),
        "total_steps": (1, None), "grad_clip": (0, None), "ppo_epochs": (1, None), "kl_coef": (0, None),
        "entropy_coef": (0, None),
    }

    def __post_init__(self) -> None:
        self._check_values()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"training.objective must be one of {list(OBJECTIVES)}, got {self.objective!r}.")
        if self.baseline not in BASELINES:
            raise ValueError(f"training.baseline must be one of {list(BASELINES)}, got {self.baseline!r}.")
        if self.ppo_epochs < 1 or not 0 < self.ppo_clip < 1:
            raise ValueError(f"training.ppo_epochs must be >= 1 and ppo_clip in (0, 1); got {self.ppo_epochs}, "
                             f"{self.ppo_clip}.")

    def _check_values(self) -> None:
        """ValueError for a setting of the wrong type (bool, int, float, str as declared; an int
        is a float too) or outside its LIMITS, naming the setting."""
        hints = get_type_hints(type(self))
        for f in fields(self):
            value, declared = getattr(self, f.name), hints[f.name]
            optional = get_origin(declared) is Union and type(None) in get_args(declared)
            kind = next(t for t in get_args(declared) if t is not type(None)) if optional else declared
            if value is None and optional:
                continue
            accepted = (int, float) if kind is float else (kind,)
            if not isinstance(value, accepted) or (isinstance(value, bool) and kind is not bool):
                raise ValueError(f"training.{f.name} must be {'null or ' if optional else ''}a{'n' if kind is int else ''} "
                                 f"{kind.__name__}, got {value!r}.")
            low, high = self.LIMITS.get(f.name, (None, None))
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"at least {low}" if high is None else f"between {low} and {high}"
                raise ValueError(f"training.{f.name} must be {bounds}, got {value!r}.")

    def ppo(self) -> PPOSettings:
        """The PPO settings of this block."""
        return PPOSettings(self.ppo_epochs, self.ppo_clip, self.kl_coef, self.entropy_coef, self.baseline)

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
        self._frozen: Optional[EncoderModel] = None

    def frozen_copy(self) -> EncoderModel:
        """The model as it was at the first call, frozen (PPO's KL reference); kept while training."""
        if self._frozen is None:
            self._frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
        return self._frozen

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
