"""Advantages, returns and KL estimators against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

from agents.advantages import (
    gae,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    terminal_rewards,
)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


# ------------------------------------------------------------------ masked stats
def test_masked_mean_ignores_masked_entries_even_nan():
    x = t([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    mask = t([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 4 + 6) / 4)
    assert torch.allclose(masked_mean(x, mask, dim=-1), t([1.5, 5.0]))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0  # empty: 0, not NaN


def test_masked_whiten():
    x = t([[1.0, 2.0, 100.0], [3.0, -50.0, 4.0]])
    mask = t([[1, 1, 0], [1, 0, 1]])
    w = masked_whiten(x, mask)
    kept = w[mask.bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert kept.var().item() == pytest.approx(1.0, rel=1e-5)  # unbiased, like masked_var
    assert (w[~mask.bool()] == 0).all()
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (vals - 2.5) / vals.std() + 2.5
    kept = masked_whiten(x, mask, shift_mean=False)[mask.bool()]
    assert torch.allclose(kept, expected, atol=1e-5)


def test_terminal_rewards_on_last_agent_token():
    mask = t([[0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    out = terminal_rewards(t([1.0, 2.0, 3.0]), mask)
    assert out.tolist() == [[0, 0, 0, 0, 1, 0], [0, 2, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]


# -------------------------------------------------------------------------- GAE
def test_gae_by_hand_without_env_tokens():
    r, v = [0.0, 0.0, 1.0], [0.5, 0.2, 0.7]
    g, lam = 0.9, 0.8
    d2 = 1.0 - 0.7
    d1 = 0.0 + g * 0.7 - 0.2
    d0 = 0.0 + g * 0.2 - 0.5
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    adv, ret = gae(t([r]), t([v]), t([[1, 1, 1]]), gamma=g, lam=lam)
    assert torch.allclose(adv, t([[a0, a1, a2]]), atol=1e-6)
    assert torch.allclose(ret, t([[a0 + 0.5, a1 + 0.2, a2 + 0.7]]), atol=1e-6)


def test_gae_skips_env_tokens():
    """An information block between two turns neither discounts nor breaks the chain."""
    mask = t([[0, 1, 1, 0, 0, 1, 0]])
    values = t([[9.0, 0.5, 0.2, -7.0, 3.0, 0.7, 5.0]])  # values at env tokens are never read
    rewards = t([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    g, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma=g, lam=lam)
    # The same episode with the env tokens cut out.
    ref_adv, ref_ret = gae(
        t([[0.0, 0.0, 1.0]]), t([[0.5, 0.2, 0.7]]), t([[1, 1, 1]]), gamma=g, lam=lam
    )
    keep = mask.bool()
    assert torch.allclose(adv[keep], ref_adv[0], atol=1e-6)
    assert torch.allclose(ret[keep], ref_ret[0], atol=1e-6)
    assert (adv[~keep] == 0).all() and (ret[~keep] == 0).all()
    # By hand, for the token before the information block: its successor is the 0.7 token.
    d1 = 0.0 + g * 0.7 - 0.2
    assert adv[0, 2].item() == pytest.approx(d1 + g * lam * (1.0 - 0.7), abs=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 0.99])
@pytest.mark.parametrize("lam", [1.0, 0.9])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_gae_constant_value_policy(gamma, lam, value):
    """SB3's check (tests/test_gae.py): constant value, reward 1 on the last step."""
    steps = 64
    rng = np.random.default_rng(0)
    # 64 agent tokens with random env-token runs (prompt, information blocks) between them.
    layout: list[int] = [0] * 5
    for k in range(steps):
        layout.append(1)
        if k % 7 == 6:
            layout += [0] * int(rng.integers(1, 6))
    layout += [0, 0]
    mask = t([layout])
    values = torch.where(mask.bool(), value, float(rng.normal()))
    rewards = terminal_rewards(t([1.0]), mask)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)

    deltas, expected = np.zeros(steps), np.zeros(steps)
    step_rewards = np.zeros(steps)
    step_rewards[-1] = 1.0
    deltas[-1] = step_rewards[-1] - value
    expected[-1] = deltas[-1]
    for n in reversed(range(steps - 1)):
        deltas[n] = step_rewards[n] + gamma * value - value
        expected[n] = deltas[n] + gamma * lam * expected[n + 1]
    keep = mask.bool()
    assert np.allclose(adv[keep].numpy(), expected, atol=1e-5)
    assert np.allclose(ret[keep].numpy(), expected + value, atol=1e-5)


def test_gamma_lam_one_returns_final_reward_everywhere():
    mask = t([[0, 0, 1, 1, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1, 0, 0]])
    values = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    rewards = terminal_rewards(t([1.0, -0.5]), mask)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    keep = mask.bool()
    # fp32 telescoping sums: equal up to rounding
    assert torch.allclose(ret[0][keep[0]], torch.full((4,), 1.0), atol=1e-5)
    assert torch.allclose(ret[1][keep[1]], torch.full((5,), -0.5), atol=1e-5)
    assert torch.allclose(adv[keep], (ret - values)[keep], atol=1e-5)


def test_gae_rejects_reward_on_env_token():
    with pytest.raises(ValueError, match="mask-0"):
        gae(t([[0.0, 1.0]]), t([[0.0, 0.0]]), t([[1, 0]]))
    with pytest.raises(ValueError, match="shape"):
        gae(t([0.0, 1.0]), t([0.0, 0.0]), t([1, 1]))


# ------------------------------------------------------------------------- GRPO
def test_grpo_advantages_by_hand():
    r = t([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = grpo_advantages(r, group_size=4)
    std = math.sqrt(1.0 / 3.0)  # unbiased std of [1, 0, 0, 1]
    hi, lo = 0.5 / (std + 1e-6), -0.5 / (std + 1e-6)
    assert adv[:4].tolist() == pytest.approx([hi, lo, lo, hi], rel=1e-5)
    assert adv[4:].tolist() == pytest.approx([0.0] * 4)  # a solved group teaches nothing
    raw = grpo_advantages(r, group_size=4, normalize_std=False)  # Dr. GRPO
    assert raw.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


def test_grpo_advantages_with_group_ids():
    r = t([3.0, 1.0, 5.0, 2.0, 7.0])
    adv = grpo_advantages(r, [7, 2, 7, 2, 9], normalize_std=False)
    # group 9 is a singleton: it keeps its raw reward (verl's convention)
    assert adv.tolist() == pytest.approx([-1.0, -0.5, 1.0, 0.5, 7.0])
    same = grpo_advantages(r[:4], group_ids=torch.tensor([0, 1, 0, 1]))
    by_size = grpo_advantages(r[[0, 2, 1, 3]], group_size=2)
    assert same[[0, 2, 1, 3]].tolist() == pytest.approx(by_size.tolist())
    with pytest.raises(ValueError):
        grpo_advantages(r, group_size=2)
    with pytest.raises(ValueError):
        grpo_advantages(r)


# --------------------------------------------------------------------------- KL
def test_kl_penalty_by_hand():
    logp, ref = t([-1.0]), t([-2.0])
    assert kl_penalty(logp, ref, "kl").item() == pytest.approx(1.0)
    assert kl_penalty(logp, ref, "abs").item() == pytest.approx(1.0)
    assert kl_penalty(logp, ref, "mse").item() == pytest.approx(0.5)
    # k3 with d = ref - logp = -1: exp(-1) + 1 - 1
    assert kl_penalty(logp, ref, "low_var_kl").item() == pytest.approx(math.exp(-1.0), rel=1e-6)
    # d = +0.5: exp(0.5) - 0.5 - 1
    assert kl_penalty(t([-2.0]), t([-1.5])).item() == pytest.approx(math.exp(0.5) - 1.5, rel=1e-6)
    assert kl_penalty(t([-1.0]), t([-1.0])).item() == 0.0
    # Clamped like verl: d in [-20, 20], result in [-10, 10].
    assert kl_penalty(t([-60.0]), t([-1.0])).item() == pytest.approx(10.0)
    assert kl_penalty(t([-1.0]), t([-60.0])).item() == pytest.approx(10.0)
    assert kl_penalty(t([-1.0]), t([-6.0])).item() == pytest.approx(math.exp(-5.0) + 4.0, rel=1e-6)
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "full")  # type: ignore[arg-type]
