"""Training GLiClass: gold ``doc.cats`` -> per-example label prompts -> the GLiClass losses.

Per (Doc, task) one input: the task's gold labels plus negatives sampled from the task's
other labels (the corpus' labels when ``initialize`` read them from the data), shuffled.
Multi-label tasks: binary cross-entropy per label (or the focal loss); single-label tasks:
cross-entropy over the prompt's labels. A Doc without a gold value for a task's labels
teaches that task nothing. Pure Python/torch: the component steps its own optimizer.
"""
import random
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..core.class_sampling import Item
from ..core.class_sampling import gold_items as sample_items
from ..core.optim import OptimSettings
from ..schema import Schema
from .model import GLiClassModel

LOSSES = ("bce", "focal")


@dataclass
class GLiClassTraining(OptimSettings):
    """The gliclass ``training`` config block: optimiser settings, label sampling and the loss."""

    negatives: int = 5  # negative labels sampled per example and task (-1: all of the task's labels)
    loss: str = "bce"  # multi-label loss: "bce" or "focal"
    focal_alpha: float = 0.25  # weight of positives in the focal loss (negatives: 1 - alpha; < 0: none)
    focal_gamma: float = 2.0  # focusing exponent of the focal loss: (1 - p_t) ** gamma

    LIMITS = {**OptimSettings.LIMITS, "negatives": (-1, None), "focal_gamma": (0, None)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"training.loss must be one of {list(LOSSES)}, got {self.loss!r}.")


def gold_items(cats: Dict[str, float], schema: Schema, settings: GLiClassTraining, rng: random.Random) -> List[Item]:
    """The training inputs of one Doc's ``doc.cats`` (:func:`..core.class_sampling.gold_items`)."""
    return sample_items(cats, schema, settings.negatives, settings.shuffle_labels, rng)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Per-label focal loss: BCE times ``(1 - p_t) ** gamma``, weighted ``alpha`` / ``1 - alpha``."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def training_loss(model: GLiClassModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  items: Sequence[Item], settings: GLiClassTraining) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The mean loss per input over a padded batch of ``items`` (rows in order)."""
    logits = model(input_ids, attention_mask).logits
    losses: List[torch.Tensor] = []
    for row, item in zip(logits, items):
        own = row[: len(item.targets)]
        target = torch.tensor(item.targets, dtype=own.dtype, device=own.device)
        if not item.task.multi_label:
            losses.append(F.cross_entropy(own[None], target.argmax()[None]))
        elif settings.loss == "focal":
            losses.append(focal_loss(own, target, settings.focal_alpha, settings.focal_gamma).sum())
        else:
            losses.append(F.binary_cross_entropy_with_logits(own, target, reduction="sum"))
    total = torch.stack(losses).mean()
    return total, {"classes": float(total.detach())}

