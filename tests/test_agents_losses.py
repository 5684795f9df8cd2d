"""Loss terms: hand computations, clipping, and that masked tokens change nothing."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

from agents.losses import (
    aggregate,
    entropy_from_logits,
    kl_loss,
    logp_diff_stats,
    logprobs_from_logits,
    masked_entropy,
    policy_loss_clipped,
    tis_weights,
    value_loss_clipped,
)

AGGS = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_aggregate_modes_by_hand():
    loss = t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(7 / 3)
    assert aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx((3 + 4 + 0) / 3)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 4) / 2)
    with pytest.raises(ValueError):
        aggregate(loss, mask, "sum")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "adv, ratio, loss, clipped",
    [
        (1.0, 1.5, -1.2, 1.0),  # better than expected, ratio past 1 + clip: clipped
        (1.0, 0.5, -0.5, 0.0),  # moving away from it: unclipped, so it is pulled back
        (-1.0, 1.5, 1.5, 0.0),  # worse than expected, ratio up: the full penalty
        (-1.0, 0.5, 0.8, 1.0),  # ratio already down past 1 - clip: clipped
        (2.0, 1.1, -2.2, 0.0),  # inside the trust region: plain ratio * A
    ],
)
def test_policy_loss_clip_by_hand(adv, ratio, loss, clipped):
    old = t([[-1.0]])
    logp = old + math.log(ratio)
    value, stats = policy_loss_clipped(logp, old, t([[adv]]), t([[1]]), clip=0.2)
    assert value.item() == pytest.approx(loss, rel=1e-5)
    assert stats["pg_clip_frac"] == clipped
    assert stats["approx_kl"] == pytest.approx(-math.log(ratio), rel=1e-5)


def test_policy_loss_clip_high_and_dual_clip():
    old = t([[-1.0, -1.0]])
    logp = old + math.log(1.5)
    loss, _ = policy_loss_clipped(logp, old, t([[1.0, 1.0]]), t([[1, 1]]), clip=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-1.28, rel=1e-5)
    # Negative advantage, ratio 5: plain PPO charges 5 * |A|, dual clip at most 3 * |A|.
    logp = old + math.log(5.0)
    plain, _ = policy_loss_clipped(logp, old, t([[-1.0, -1.0]]), t([[1, 1]]))
    dual, stats = policy_loss_clipped(logp, old, t([[-1.0, -1.0]]), t([[1, 1]]), dual_clip=3.0)
    assert plain.item() == pytest.approx(5.0, rel=1e-5) and dual.item() == pytest.approx(3.0)
    assert stats["pg_clip_frac_lower"] == 1.0


def _random_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (3, 7)
    mask = (torch.rand(shape, generator=g) > 0.4).float()
    mask[0, 0] = 1.0
    return {
        "logp": -torch.rand(shape, generator=g) * 3,
        "old": -torch.rand(shape, generator=g) * 3,
        "ref": -torch.rand(shape, generator=g) * 3,
        "adv": torch.randn(shape, generator=g),
        "values": torch.randn(shape, generator=g),
        "old_values": torch.randn(shape, generator=g),
        "returns": torch.randn(shape, generator=g),
        "logits": torch.randn(shape + (11,), generator=g),
        "mask": mask,
    }


def _all_losses(x, agg):
    logp = x["logp"].clone().requires_grad_(True)
    values = x["values"].clone().requires_grad_(True)
    logits = x["logits"].clone().requires_grad_(True)
    pg, _ = policy_loss_clipped(logp, x["old"], x["adv"], x["mask"], agg=agg)
    vf, _ = value_loss_clipped(values, x["old_values"], x["returns"], x["mask"], agg=agg)
    kl, _ = kl_loss(logp, x["ref"], x["mask"], agg=agg)
    ent, _ = masked_entropy(logits, x["mask"], agg=agg)
    (pg + vf + kl + ent).backward()
    out = torch.stack([pg, vf, kl, ent]).detach()
    return out, (logp.grad, values.grad, logits.grad)


@pytest.mark.parametrize("agg", AGGS)
def test_masked_tokens_change_nothing(agg):
    x = _random_inputs()
    base, grads = _all_losses(x, agg)
    hidden = x["mask"] == 0
    g = torch.Generator().manual_seed(1)
    y = dict(x)
    for key in ("logp", "old", "ref", "adv", "values", "old_values", "returns"):
        noise = torch.where(hidden, torch.randn(x[key].shape, generator=g) * 100, 0.0)
        y[key] = x[key] + noise
    noise = torch.randn(x["logits"].shape, generator=g)
    y["logits"] = x["logits"] + torch.where(hidden[..., None], 50.0, 0.0) * noise
    again, grads2 = _all_losses(y, agg)
    assert torch.allclose(base, again, atol=1e-6)
    for g1, g2 in zip(grads, grads2):
        assert torch.allclose(g1, g2, atol=1e-6)
    # No gradient reaches a masked token.
    assert (grads[0][hidden] == 0).all() and (grads[1][hidden] == 0).all()
    assert (grads[2][hidden] == 0).all()


@pytest.mark.parametrize("agg", AGGS)
def test_unmasked_tokens_change_every_term(agg):
    x = _random_inputs()
    base, _ = _all_losses(x, agg)
    y = dict(x)
    y["logp"] = x["logp"].clone()
    y["logp"][0, 0] -= 0.3
    y["values"] = x["values"].clone()
    y["values"][0, 0] += 0.7
    y["logits"] = x["logits"].clone()
    y["logits"][0, 0, 0] += 2.0
    changed, _ = _all_losses(y, agg)
    assert (changed != base).all()
    y = dict(x)
    y["adv"] = x["adv"].clone()
    y["adv"][0, 0] += 1.0
    assert _all_losses(y, agg)[0][0] != base[0]


def test_nonfinite_values_at_masked_tokens_stay_out():
    logp = t([[-1.0, float("-inf")]])
    adv = t([[1.0, float("nan")]])
    loss, stats = policy_loss_clipped(logp, t([[-1.0, -1.0]]), adv, t([[1, 0]]))
    assert loss.item() == pytest.approx(-1.0) and math.isfinite(stats["ratio_max"])


def test_value_loss_by_hand():
    loss, stats = value_loss_clipped(t([[1.0]]), t([[0.0]]), t([[2.0]]), t([[1]]), clip=0.5)
    # clipped value 0.5: max((1-2)^2, (0.5-2)^2) = 2.25
    assert loss.item() == pytest.approx(0.5 * 2.25)
    assert stats["vf_clip_frac"] == 1.0
    loss, stats = value_loss_clipped(t([[1.0]]), t([[0.8]]), t([[2.0]]), t([[1]]), clip=0.5)
    assert loss.item() == pytest.approx(0.5) and stats["vf_clip_frac"] == 0.0


def test_kl_loss_is_masked_mean_of_k3():
    logp, ref = t([[-1.0, -2.0, -3.0]]), t([[-2.0, -2.0, -9.0]])
    loss, stats = kl_loss(logp, ref, t([[1, 1, 0]]))
    assert loss.item() == pytest.approx((math.exp(-1.0) + 0.0) / 2, rel=1e-6)
    assert stats["kl_loss"] == pytest.approx(loss.item())


def test_entropy_and_logprobs_from_logits():
    logits = torch.zeros(2, 3, 8)
    assert torch.allclose(entropy_from_logits(logits), torch.full((2, 3), math.log(8)))
    peaked = torch.full((1, 5), -1e4)
    peaked[0, 2] = 0.0
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-5)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, generator=g)
    labels = torch.randint(0, 8, (2, 3), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(logits, labels), expected, atol=1e-6)


def test_value_clip_fraction_counts_only_clipped_tokens():
    """Values within the clip range of the old ones are never counted as clipped: where
    ``old + (V - old)`` rounds one ulp away from ``V`` (about 1% of these tokens) and the
    return is just past ``V``, the old count took the rounding for a clip."""
    g = torch.Generator().manual_seed(0)
    old = torch.rand(1, 4096, generator=g) * 0.01
    values = old + 0.3 + torch.rand(1, 4096, generator=g) * 0.1  # all within clip=0.5
    rounded = old + (values - old).clamp(-0.5, 0.5)
    assert (rounded != values).any()
    returns = values - (rounded - values).sign() * 1e-6
    mask = torch.ones(1, 4096)
    _, stats = value_loss_clipped(values, old, returns, mask, clip=0.5)
    assert stats["vf_clip_frac"] == 0.0
    _, stats = value_loss_clipped(old + 1.0, old, old + 2.0, mask, clip=0.5)
    assert stats["vf_clip_frac"] == 1.0


def test_tis_weights_by_hand():
    trainer = torch.tensor([[-1.0, -2.0, -3.0, 0.0]])
    sampler = torch.tensor([[-1.5, -1.0, -3.0, -9.0]])
    agent = torch.tensor([[1, 1, 1, 0]])
    w = tis_weights(trainer, sampler, agent, cap=1.5)
    want = torch.tensor([[1.5, math.exp(-1.0), 1.0, 1.0]])  # capped; 1 at the env token
    torch.testing.assert_close(w, want)
    w = tis_weights(trainer, sampler, agent, cap=10.0)
    assert float(w[0, 0]) == pytest.approx(math.exp(0.5))
    with pytest.raises(ValueError, match="tis_cap"):
        tis_weights(trainer, sampler, agent, cap=0.0)


def test_policy_loss_with_is_weights_scales_each_token():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    weights = torch.tensor([[0.5, 2.0, 1.0]], requires_grad=True)
    loss, _ = policy_loss_clipped(logp, old, adv, mask, is_weights=weights)
    # ratio 1 everywhere: per-token loss -A * w, mean over 3 tokens
    assert float(loss.detach()) == pytest.approx((-0.5 + 2.0 - 2.0) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv * weights.detach() / 3)
    assert weights.grad is None  # the weights are constants of the loss
    plain, _ = policy_loss_clipped(logp, old, adv, mask)
    same, _ = policy_loss_clipped(logp, old, adv, mask, is_weights=torch.ones(1, 3))
    assert float(plain.detach()) == float(same.detach())


def test_logp_diff_stats_over_agent_tokens():
    trainer = torch.tensor([[-1.0, -2.0, -3.0], [0.0, -1.0, -1.0]])
    sampler = torch.tensor([[-1.1, -2.0, 5.0], [0.0, -1.3, 0.0]])
    agent = torch.tensor([[1, 1, 0], [0, 1, 0]])
    stats = logp_diff_stats(trainer, sampler, agent)
    assert stats["logp_diff_mean"] == pytest.approx(0.4 / 3)
    assert stats["logp_diff_max"] == pytest.approx(0.3)
    assert logp_diff_stats(trainer, sampler, agent * 0) == {
        "logp_diff_mean": 0.0,
        "logp_diff_max": 0.0,
    }


@pytest.mark.parametrize("cap", [0.0, -1.0])
def test_tis_cap_is_validated(cap):
    from agents.config import RolloutConfig, TrainConfig

    with pytest.raises(ValueError, match="rollout.tis_cap"):
        TrainConfig(rollout=RolloutConfig(tis_cap=cap))
    assert TrainConfig(rollout=RolloutConfig(tis_cap=2.0)).rollout.tis_cap == 2.0


def test_explained_variance_from_sums_is_the_two_pass_one_and_adds_over_parts():
    from agents.advantages import masked_var
    from agents.losses import explained_variance, explained_variance_sums

    g = torch.Generator().manual_seed(0)
    returns = torch.randn(6, 9, generator=g, dtype=torch.float64) * 2 + 3  # mean far from 0
    # the critic is better on rows 0-1 than on rows 2-5
    noise = torch.tensor([0.3, 0.3, 1.5, 1.5, 1.5, 1.5], dtype=torch.float64)[:, None]
    values = returns + torch.randn(6, 9, generator=g, dtype=torch.float64) * noise
    mask = torch.rand(6, 9, generator=g) < 0.6
    want = 1 - masked_var(returns - values, mask) / masked_var(returns, mask)
    _, stats = value_loss_clipped(values, values, returns, mask)
    assert stats["explained_variance"] == pytest.approx(float(want), abs=1e-12)
    assert 0 < stats["explained_variance"] < 1
    # two "ranks" with rows 0-1 and 2-5: their sums add up to the whole batch's ...
    parts = [
        explained_variance_sums(returns[s], values[s], mask[s]) for s in (slice(0, 2), slice(2, 6))
    ]
    assert explained_variance(parts[0] + parts[1]) == pytest.approx(float(want), abs=1e-12)
    # ... while the mean of their own ratios is another number
    own = [explained_variance(p) for p in parts]
    assert abs(sum(own) / 2 - float(want)) > 1e-2
    # no tokens: nothing to explain, nothing left unexplained
    assert explained_variance(explained_variance_sums(returns, values, mask * False)) == 1.0
