"""PPO pieces against hand computations; a toy policy learns; padded labels change nothing."""
import math

import pytest
import torch

from spacy_gliner2.core.ppo import (PPOSettings, advantages, clipped_loss, entropy, kl_divergence, log_prob,
                                    ppo_loss, sample, stack_rows)
from spacy_gliner2.core.rl import ClassRow, accuracy_reward, f1_reward, ppo_update, resolve_reward
from spacy_gliner2.schema import ClassificationTask


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# one multi-label row (3 labels) and one single-label row (2 labels, one padded slot)
LOGITS = torch.tensor([[0.5, -1.0, 2.0], [1.0, -0.5, 7.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])
MULTI = torch.tensor([True, False])
ACTIONS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def test_log_prob_by_hand():
    got = log_prob(LOGITS, MASK, MULTI, ACTIONS)
    multi = math.log(sig(0.5)) + math.log(1 - sig(-1.0)) + math.log(sig(2.0))
    single = -0.5 - math.log(math.exp(1.0) + math.exp(-0.5))  # the padded 7.0 takes no share
    assert got.tolist() == pytest.approx([multi, single], abs=1e-6)


def test_entropy_by_hand():
    def h(p):
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    p1 = math.exp(1.0) / (math.exp(1.0) + math.exp(-0.5))
    expected = [h(sig(0.5)) + h(sig(-1.0)) + h(sig(2.0)), h(p1)]
    assert entropy(LOGITS, MASK, MULTI).tolist() == pytest.approx(expected, abs=1e-6)


def test_kl_by_hand():
    reference = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -3.0]])

    def kl_b(p, q):
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))

    p1 = math.exp(1.0) / (math.exp(1.0) + math.exp(-0.5))
    expected = [kl_b(sig(0.5), 0.5) + kl_b(sig(-1.0), 0.5) + kl_b(sig(2.0), 0.5),
                p1 * math.log(p1 / 0.5) + (1 - p1) * math.log((1 - p1) / 0.5)]
    assert kl_divergence(LOGITS, reference, MASK, MULTI).tolist() == pytest.approx(expected, abs=1e-6)
    assert kl_divergence(LOGITS, LOGITS, MASK, MULTI).abs().max() < 1e-6


def test_clipped_loss_by_hand():
    new, old = torch.tensor([0.0, 0.0, 0.0]), torch.log(torch.tensor([0.5, 2.0, 1.0]))  # ratios 2, 0.5, 1
    adv = torch.tensor([1.0, -1.0, 3.0])
    # min(2 * 1, 1.2 * 1) = 1.2; min(0.5 * -1, 0.8 * -1) = -0.8; min(3, 3) = 3
    assert float(clipped_loss(new, old, adv, 0.2)) == pytest.approx(-(1.2 - 0.8 + 3.0) / 3)


def test_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.5])
    assert advantages(rewards, "mean").tolist() == pytest.approx([0.5, -0.5, 0.0])
    assert advantages(rewards, "none").tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="baseline"):
        advantages(rewards, "value")


def test_sampling_follows_the_policy_and_keeps_its_log_probs():
    g = torch.Generator().manual_seed(0)
    n = 4000
    logits = LOGITS.repeat(n, 1)
    actions, old = sample(logits, MASK.repeat(n, 1), MULTI.repeat(n), g)
    multi, single = actions[0::2], actions[1::2]
    assert multi.mean(0).tolist() == pytest.approx([sig(0.5), sig(-1.0), sig(2.0)], abs=0.03)
    assert (single.sum(-1) == 1).all() and not single[:, 2].any()  # one label, never the padded slot
    p1 = math.exp(1.0) / (math.exp(1.0) + math.exp(-0.5))
    assert float(single[:, 0].mean()) == pytest.approx(p1, abs=0.03)
    assert torch.allclose(old, log_prob(logits, MASK.repeat(n, 1), MULTI.repeat(n), actions))


def test_padded_labels_change_nothing():
    """Extra padded slots, whatever their logits, change no loss and no gradient."""
    settings = PPOSettings()
    reference = torch.zeros_like(LOGITS)
    old = log_prob(LOGITS, MASK, MULTI, ACTIONS) - 0.1
    adv = torch.tensor([0.7, -0.3])

    def loss_and_grad(logits, ref, mask, actions):
        x = logits.clone().requires_grad_(True)
        loss, _ = ppo_loss(x, ref, mask, MULTI, actions, old, adv, settings)
        loss.backward()
        return float(loss.detach()), x.grad

    base, grad = loss_and_grad(LOGITS, reference, MASK, ACTIONS)
    wide = torch.cat([LOGITS, torch.tensor([[9.0, -4.0], [3.0, 5.0]])], dim=1)
    wide_ref = torch.cat([reference, torch.tensor([[-2.0, 1.0], [8.0, 0.0]])], dim=1)
    wide_mask = torch.cat([MASK, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    wide_actions = torch.cat([ACTIONS, torch.zeros(2, 2)], dim=1)
    loss, wide_grad = loss_and_grad(wide, wide_ref, wide_mask, wide_actions)
    assert loss == pytest.approx(base, abs=1e-6)
    assert torch.allclose(wide_grad[:, :3] * MASK, grad * MASK, atol=1e-6)
    assert not wide_grad[:, 3:].any() and not wide_grad[1, 2]


def test_rewards_by_hand():
    actions = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    judged = torch.tensor([[True, True, True, False], [True, True, True, True], [True, False, False, False]])
    multi = torch.tensor([True, False, False])
    # row 0: chosen {0, 1}, gold {0, 2}: F1 = 2 * 1 / 4; agreement on 3 judged labels: label 0 only
    # row 1: the accepted label chosen; row 2: the only verdict rejects the chosen label
    assert f1_reward(actions, targets, judged, multi).tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert accuracy_reward(actions, targets, judged, multi).tolist() == pytest.approx([1 / 3, 1.0, 0.0])
    rejected_other = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert accuracy_reward(rejected_other, torch.zeros(1, 4), torch.tensor([[True, False, False, False]]),
                           torch.tensor([False])).tolist() == [1.0]


def test_unknown_reward_says_how_to_register():
    assert resolve_reward("f1") is f1_reward
    with pytest.raises(ValueError, match=r"Unknown reward 'no_such_reward'.*registry\.misc"):
        resolve_reward("no_such_reward")


def test_pad_rows():
    out, mask = stack_rows([torch.tensor([1.0, 2.0]), torch.tensor([3.0])])
    assert out.tolist() == [[1.0, 2.0], [3.0, 0.0]] and mask.tolist() == [[True, True], [True, False]]


class Toy(torch.nn.Module):
    """Label logits from fixed features: one linear layer."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)


@pytest.mark.parametrize("multi_label", [True, False])
def test_toy_policy_raises_its_reward_with_bounded_kl(multi_label):
    torch.manual_seed(0)
    features = torch.randn(16, 4)
    gold = (features[:, :3] > 0).float() if multi_label else torch.nn.functional.one_hot(
        features[:, :3].argmax(-1), 3).float()
    task = ClassificationTask("t", ("a", "b", "c"), (), multi_label, 0.5, None, ())
    rows = [ClassRow(task, g.tolist()) for g in gold]
    model = Toy()
    reference = Toy()
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def step():
        optimizer.step()
        optimizer.zero_grad()

    def run(m):
        return list(m.linear(features))

    settings = PPOSettings(epochs=4, kl_coef=0.05, entropy_coef=0.01)
    generator = torch.Generator().manual_seed(0)
    reward = f1_reward if multi_label else accuracy_reward
    figures = []
    for _ in range(60):
        _, parts = ppo_update(model, reference, rows, run, settings, reward, step, generator)
        step()
        figures.append(parts)
    first = sum(p["reward"] for p in figures[:5]) / 5
    last = sum(p["reward"] for p in figures[-5:]) / 5
    assert last > first + 0.2, (first, last)
    assert max(p["kl"] for p in figures) < 10.0  # per row, summed over 3 labels
