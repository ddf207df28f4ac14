"""PPO for label classification: the policy, its sampling, the clipped loss, KL and entropy.

Rows are (text, task) pairs; columns their labels, padded: ``logits`` ``(N, C)``, ``mask``
``(N, C)`` bool (real labels), ``multi`` ``(N,)`` bool. A multi-label row is one independent
Bernoulli per label (``sigmoid(logit)``); a single-label row is one categorical choice
(``softmax`` over its real labels). Actions are ``(N, C)`` 0/1 floats (one-hot for
single-label rows). Padded slots never count: not in log-probabilities, KL, entropy or rewards.

Against the reference trainer (see the notes): actions are sampled once per batch and their
log-probabilities kept (:func:`sample`), every clipped epoch scores those same actions; the KL
to the frozen starting model is the exact one between the two distributions
(:func:`kl_divergence`); the entropy term is a bonus (subtracted from the loss).
Pure torch: nothing here knows of spaCy.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

NEG = -1e9  # a padded slot's logit for softmax: no probability, no gradient


@dataclass
class PPOSettings:
    """The ``ppo_*`` training settings."""

    epochs: int = 4  # clipped optimisation epochs over each batch's sampled actions
    clip: float = 0.2  # the ratio's clip range: [1 - clip, 1 + clip]
    kl_coef: float = 0.05  # weight of the exact KL to the frozen starting model
    entropy_coef: float = 0.01  # weight of the entropy bonus
    baseline: str = "mean"  # advantage = reward - batch mean ("mean") or the reward itself ("none")


BASELINES = ("mean", "none")


def _single_log_probs(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-softmax over each row's real labels; padded slots get ``-inf``-like values."""
    return torch.log_softmax(logits.masked_fill(~mask, NEG), dim=-1)


def sample(logits: torch.Tensor, mask: torch.Tensor, multi: torch.Tensor,
           generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Actions ``(N, C)`` drawn once from the policy and their log-probabilities ``(N,)``
    (no gradient: the "old" policy of the clipped ratio)."""
    with torch.no_grad():
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
        bernoulli = (uniform < torch.sigmoid(logits)).to(logits.dtype)
        probs = _single_log_probs(logits, mask).exp()
        rows = probs.shape[0]
        picks = torch.multinomial(probs, 1, generator=generator) if rows else probs.new_zeros((0, 1), dtype=torch.long)
        onehot = torch.zeros_like(logits).scatter_(1, picks, 1.0)
        actions = torch.where(multi[:, None], bernoulli, onehot) * mask
        return actions, log_prob(logits, mask, multi, actions)


def log_prob(logits: torch.Tensor, mask: torch.Tensor, multi: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log pi(actions)`` per row ``(N,)``: the sum of the labels' Bernoulli log-probabilities,
    or the chosen label's log-softmax."""
    bernoulli = actions * F.logsigmoid(logits) + (1 - actions) * F.logsigmoid(-logits)
    categorical = actions * _single_log_probs(logits, mask)
    per_label = torch.where(multi[:, None], bernoulli, categorical)
    return (per_label * mask).sum(-1)


def entropy(logits: torch.Tensor, mask: torch.Tensor, multi: torch.Tensor) -> torch.Tensor:
    """The policy's entropy per row ``(N,)``."""
    p = torch.sigmoid(logits)
    bernoulli = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))
    logp = _single_log_probs(logits, mask)
    categorical = -(logp.exp() * logp)
    return (torch.where(multi[:, None], bernoulli, categorical) * mask).sum(-1)


def kl_divergence(logits: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor,
                  multi: torch.Tensor) -> torch.Tensor:
    """Exact ``KL(pi || pi_ref)`` per row ``(N,)`` (the sum over labels of Bernoulli KLs, or
    the categorical KL over the real labels)."""
    p = torch.sigmoid(logits)
    bernoulli = p * (F.logsigmoid(logits) - F.logsigmoid(reference)) + \
        (1 - p) * (F.logsigmoid(-logits) - F.logsigmoid(-reference))
    logp, logq = _single_log_probs(logits, mask), _single_log_probs(reference, mask)
    categorical = logp.exp() * (logp - logq)
    return (torch.where(multi[:, None], bernoulli, categorical) * mask).sum(-1)


def advantages(rewards: torch.Tensor, baseline: str = "mean") -> torch.Tensor:
    """Rewards minus the batch mean (``"mean"``) or as they are (``"none"``)."""
    if baseline not in BASELINES:
        raise ValueError(f"ppo baseline must be one of {list(BASELINES)}, got {baseline!r}.")
    return rewards - rewards.mean() if baseline == "mean" and rewards.numel() else rewards


def clipped_loss(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor,
                 clip: float) -> torch.Tensor:
    """PPO's clipped surrogate, negated and averaged over rows:
    ``-mean(min(r A, clip(r, 1 - e, 1 + e) A))`` with ``r = exp(new - old)``."""
    ratio = torch.exp(new_log_prob - old_log_prob)
    return -torch.minimum(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage).mean()


def ppo_loss(logits: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, multi: torch.Tensor,
             actions: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor,
             settings: PPOSettings) -> Tuple[torch.Tensor, dict]:
    """One epoch's loss: clipped surrogate + ``kl_coef`` KL - ``entropy_coef`` entropy (row means)."""
    surrogate = clipped_loss(log_prob(logits, mask, multi, actions), old_log_prob, advantage, settings.clip)
    kl = kl_divergence(logits, reference, mask, multi).mean()
    bonus = entropy(logits, mask, multi).mean()
    total = surrogate + settings.kl_coef * kl - settings.entropy_coef * bonus
    return total, {"surrogate": float(surrogate.detach()), "kl": float(kl.detach()), "entropy": float(bonus.detach())}


def stack_rows(rows, device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D tensors of different lengths into ``(N, C)`` (zeros) and their mask."""
    width = max((len(r) for r in rows), default=0)
    out = torch.zeros((len(rows), width), device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    if rows:
        out = torch.stack([F.pad(r, (0, width - len(r))) for r in rows])
        for i, r in enumerate(rows):
            mask[i, : len(r)] = True
    return out, mask
