"""Reward-based training of classification tasks, the same for every family.

Gold comes from ``doc.cats`` as partial judgments: a label with a value is judged (>= 0.5
accepted, else rejected), a label without one is not, and only judged labels enter the
reward. Complete annotations and a person's accept/reject verdicts (:mod:`.feedback`) are
therefore one case. Per batch (:func:`ppo_update`): the first epoch's forward gives the
policy that samples the actions (once) and their old log-probabilities, the reward scores the
actions, and ``epochs`` clipped epochs (:mod:`.ppo`) update the model; the frozen starting
model gives the KL's reference. Rewards are functions ``(actions, targets, judged, multi) ->
(N,)``: the built-in ``"f1"`` and ``"accuracy"``, or any name in spaCy's ``misc`` registry
whose function returns one.
"""
import random
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..schema import ClassificationTask, Schema
from .ppo import PPOSettings, advantages, ppo_loss, sample, stack_rows

Reward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ClassRow:
    """One policy row: a task with its prompt's labels and their judgments (None: not judged)."""

    task: ClassificationTask
    targets: List[Optional[float]]


def class_rows(cats: Dict[str, float], schema: Schema, shuffle: bool, rng: random.Random) -> List[ClassRow]:
    """The rows of one Doc: every task with a judged label, over all the task's labels (shuffled
    with ``shuffle``), keys of ``doc.cats`` by :meth:`Schema.cats_keys`."""
    rows, by_task = [], schema.judged(cats)
    for task in schema.classifications:
        judged = by_task[task.name]
        if not judged:
            continue
        labels = list(task.labels)
        if shuffle:
            rng.shuffle(labels)
        rows.append(ClassRow(task.subset(labels), [judged.get(label) for label in labels]))
    return rows


def f1_reward(actions: torch.Tensor, targets: torch.Tensor, judged: torch.Tensor, multi: torch.Tensor) -> torch.Tensor:
    """Set F1 of the chosen labels against the accepted ones, over judged labels (1 when both are empty)."""
    chosen = actions.bool() & judged
    gold = (targets >= 0.5) & judged
    overlap = (chosen & gold).sum(-1).float()
    size = (chosen.sum(-1) + gold.sum(-1)).float()
    return torch.where(size > 0, 2 * overlap / size.clamp(min=1), torch.ones_like(size))


def accuracy_reward(actions: torch.Tensor, targets: torch.Tensor, judged: torch.Tensor,
                    multi: torch.Tensor) -> torch.Tensor:
    """Multi-label: the share of judged labels whose action agrees with the verdict. Single-label:
    1 when the chosen label contradicts no verdict (it is the accepted one, and not a rejected one)."""
    agree = ((actions >= 0.5) == (targets >= 0.5)) & judged
    share = agree.sum(-1).float() / judged.sum(-1).clamp(min=1).float()
    accepted = ((targets >= 0.5) & judged).any(-1)
    wrong = ((actions >= 0.5) & judged & (targets < 0.5)).any(-1) | \
        (accepted & ~((actions >= 0.5) & (targets >= 0.5) & judged).any(-1))
    return torch.where(multi, share, (~wrong).float())


REWARDS: Dict[str, Reward] = {"f1": f1_reward, "accuracy": accuracy_reward}


def resolve_reward(name: str) -> Reward:
    """A built-in reward, or the reward a function registered as ``name`` in spaCy's ``misc`` registry returns."""
    if name in REWARDS:
        return REWARDS[name]
    from spacy.util import registry

    try:
        make = registry.misc.get(name)
    except Exception as error:  # catalogue.RegistryError
        raise ValueError(f"Unknown reward {name!r}: use one of {sorted(REWARDS)} or register a function returning "
                         f"a reward with @spacy.registry.misc({name!r}).") from error
    return make()


def _targets(rows: Sequence[ClassRow], width: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(N, C)`` judged values (0 where not judged) and the judged mask."""
    targets = torch.zeros((len(rows), width), device=device)
    judged = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        for j, value in enumerate(row.targets):
            if value is not None:
                targets[i, j], judged[i, j] = value, True
    return targets, judged


def ppo_update(model: nn.Module, reference: nn.Module, rows: Sequence[ClassRow],
               run: Callable[[nn.Module], List[torch.Tensor]], settings: PPOSettings, reward: Reward,
               step: Callable[[], None], generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, float]]:
    """``settings.epochs`` clipped epochs on one batch; the optimizer ``step`` runs after each
    but the last, whose gradients are left for the caller's step. ``run(model)`` gives each
    row's label logits. Returns the last epoch's loss and the batch's figures."""
    model.eval()  # no dropout: the first epoch's ratio is exactly 1
    with torch.no_grad():
        reference_logits, _ = stack_rows(run(reference))
    logits, mask = stack_rows(run(model))
    multi = torch.tensor([row.task.multi_label for row in rows], device=logits.device)
    actions, old_log_prob = sample(logits.detach(), mask, multi, generator)
    targets, judged = _targets(rows, logits.shape[1], logits.device)
    rewards = reward(actions, targets, judged & mask, multi).to(logits.dtype)
    if len(rows) == 1 and settings.baseline == "mean":
        warnings.warn("A PPO batch of one row: with baseline 'mean' its advantage is 0 and it teaches nothing. "
                      "Use batches of 2 or more rows, or training.baseline = \"none\".", stacklevel=2)
    advantage = advantages(rewards, settings.baseline)
    parts: Dict[str, float] = {}
    for epoch in range(settings.epochs):
        if epoch:
            step()
            logits, _ = stack_rows(run(model))
        loss, parts = ppo_loss(logits, reference_logits, mask, multi, actions, old_log_prob, advantage, settings)
        loss.backward()
    return loss.detach(), {**parts, "reward": float(rewards.mean())}
