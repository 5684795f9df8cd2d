"""Micro-batched updates: the accumulated gradient and the stats equal the unsplit
mini-batch's for every budget and aggregation mode, GRPO and PPO (tiny model, fp64)."""

from __future__ import annotations

import copy
import dataclasses

import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

from agents.config import tiny_cpu
from agents.grpo import grpo_backward
from agents.microbatch import Normaliser, forward_in_micro_batches, plan_micro_batches
from agents.model import ValueHead, forward_tokens
from agents.ppo import ppo_backward
from agents.rollout import Batch, response_mask
from agents.tiny_model import make_tiny_qwen2

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

AGGS = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]


class _Vocab:
    """Just what :func:`make_tiny_qwen2` reads of a tokenizer."""

    eos_token_id, pad_token_id, bos_token_id = 1, 0, None

    def __len__(self) -> int:
        return 97


def random_batch(lengths: list[int], width: int, seed: int = 0) -> Batch:
    """Right-padded random episodes: a prompt, then agent turns with env spans between."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    ids = torch.randint(2, 97, (b, width), generator=g)
    attn = torch.zeros((b, width), dtype=torch.long)
    loss = torch.zeros((b, width))
    for row, n in enumerate(lengths):
        attn[row, :n] = 1
        prompt = n // 4
        agent = torch.rand(n, generator=g) < 0.7  # env tokens in between
        loss[row, prompt:n] = agent[prompt:].float()
        ids[row, n:] = 0
    return Batch(
        input_ids=ids,
        attention_mask=attn,
        loss_mask=loss,
        old_logprobs=torch.zeros((b, width)),
        rewards=torch.zeros(b),
        group_ids=torch.zeros(b, dtype=torch.long),
        prompt_lengths=torch.tensor([n // 4 for n in lengths]),
    )


@pytest.fixture(scope="module")
def setup():
    """Six episodes of different lengths in a batch wider than any of them (a mini-batch
    drawn from a wider rollout), a fp64 tiny model."""
    model = make_tiny_qwen2(_Vocab(), hidden_size=32, intermediate=64, layers=1, heads=4)
    return model.double(), random_batch([23, 40, 9, 31, 40, 17], 47)


def budgets_for(batch) -> list[int | None]:
    lengths = batch.attention_mask.sum(-1)
    longest, shortest = int(lengths.max()), int(lengths.min())
    # 1: every row alone (all over budget); the longest row: mostly alone; two and three
    # rows' worth; a budget that fits everything in one micro-batch; None: unsplit.
    return [1, longest, 2 * shortest + 1, 3 * longest, 100 * longest, None]


def _grads(params) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params]


def _noise(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return (
        torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        * scale
    )


def test_plan_covers_every_row_once_within_budget():
    lengths = torch.tensor([5, 40, 12, 12, 3, 30, 7, 50])
    for budget in (1, 10, 40, 60, 100, 1000):
        plan = plan_micro_batches(lengths, budget)
        rows = sorted(r for mb in plan for r in mb.rows.tolist())
        assert rows == list(range(8))
        for mb in plan:
            assert mb.width == int(lengths[mb.rows].max())
            cost = len(mb.rows) * mb.width
            assert cost <= budget or (len(mb.rows) == 1 and mb.oversize)
            assert mb.oversize == (cost > budget)
    assert len(plan_micro_batches(lengths, 1000)) == 1
    assert all(len(mb.rows) == 1 for mb in plan_micro_batches(lengths, 1))
    assert plan_micro_batches(lengths, None)[0].rows is None


def test_plan_is_balanced():
    """Greedy cutting of [10]*6 under 40 gives 4+2 rows; balanced gives 3+3."""
    plan = plan_micro_batches(torch.tensor([10] * 6), 40)
    assert sorted(len(mb.rows) for mb in plan) == [3, 3]


def test_plan_rejects_bad_budgets():
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        plan_micro_batches(torch.tensor([3, 4]), 0)
    with pytest.raises(ValueError, match="empty"):
        plan_micro_batches(torch.tensor([], dtype=torch.long), 8)


def test_normaliser_counts():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 1, 0]])
    assert Normaliser.of(mask) == Normaliser(tokens=3, seqs=3, seqs_with_tokens=2)


def test_no_grad_passes_in_micro_batches_equal_the_whole(setup):
    model, batch = setup
    head = ValueHead(model.config.hidden_size).double()
    torch.nn.init.normal_(head.linear.weight, std=0.1)
    with torch.no_grad():
        whole = forward_tokens(
            model,
            batch.input_ids,
            batch.attention_mask,
            value_head=head,
            entropy=True,
            only=batch.loss_mask,
        )
    for budget in budgets_for(batch):
        part = forward_in_micro_batches(
            model,
            batch.input_ids,
            batch.attention_mask,
            budget,
            value_head=head,
            entropy=True,
            only=batch.loss_mask,
        )
        for a, b in (
            (part.logprobs, whole.logprobs),
            (part.values, whole.values),
            (part.entropy, whole.entropy),
        ):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("agg", AGGS)
def test_grpo_micro_batched_gradient_equals_the_whole(setup, agg):
    model, batch = setup
    model = copy.deepcopy(model).train()
    mask = batch.loss_mask.double()
    with torch.no_grad():
        logp = forward_tokens(model, batch.input_ids, batch.attention_mask, only=mask).logprobs
    old = logp + _noise(mask.shape, 1, 0.3) * mask  # ratios off 1: some clipped
    ref = logp + _noise(mask.shape, 2, 0.3) * mask
    adv = _noise((len(batch), 1), 3) * mask
    cfg = dataclasses.replace(tiny_cpu().grpo, loss_agg=agg, entropy_coef=0.01, kl_coef=0.1)
    # sampler-correction weights (rollout.tis_cap) go micro-batch by micro-batch too
    weights = 0.5 + torch.rand(mask.shape, generator=torch.Generator().manual_seed(6))
    results = {}
    for budget in budgets_for(batch):
        model.zero_grad(set_to_none=True)
        c = dataclasses.replace(cfg, micro_batch_tokens=budget)
        stats = grpo_backward(model, batch, old, ref, adv, mask, c, is_weights=weights.double())
        results[budget] = (_grads(model.parameters()), stats)
    want_grads, want_stats = results[None]
    assert want_stats["pg_clip_frac"] > 0
    for budget, (grads, stats) in results.items():
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
        for k, v in want_stats.items():
            assert stats[k] == pytest.approx(v, abs=1e-9), (budget, k)
    assert results[1][1]["oversize_rows"] == len(batch)
    assert results[1][1]["micro_batches"] == len(batch)
    assert results[100 * int(batch.attention_mask.sum(-1).max())][1]["micro_batches"] == 1


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("kl_in_reward", [True, False])
def test_ppo_micro_batched_gradient_equals_the_whole(setup, agg, kl_in_reward):
    model, batch = setup
    model = copy.deepcopy(model).train()
    head = ValueHead(model.config.hidden_size).double()
    torch.nn.init.normal_(head.linear.weight, std=0.1)
    params = list(model.parameters()) + list(head.parameters())
    actor = batch.loss_mask.double()
    critic = response_mask(batch).double()  # a different mask: its own counts
    with torch.no_grad():
        out = forward_tokens(
            model, batch.input_ids, batch.attention_mask, value_head=head, only=critic
        )
    old = out.logprobs + _noise(actor.shape, 1, 0.3) * actor
    ref = out.logprobs + _noise(actor.shape, 2, 0.3) * actor
    old_values = out.values + _noise(actor.shape, 4, 0.5) * critic
    adv = _noise(actor.shape, 3) * critic
    returns = _noise(actor.shape, 5) * critic
    cfg = dataclasses.replace(
        tiny_cpu().ppo, loss_agg=agg, entropy_coef=0.01, kl_coef=0.1, kl_in_reward=kl_in_reward
    )
    results = {}
    for budget in budgets_for(batch):
        for p in params:
            p.grad = None
        c = dataclasses.replace(cfg, micro_batch_tokens=budget)
        stats = ppo_backward(
            model, head, batch, old, ref, old_values, adv, returns, actor, critic, c
        )
        results[budget] = (_grads(params), stats)
    want_grads, want_stats = results[None]
    assert want_stats["vf_clip_frac"] > 0 and want_stats["pg_clip_frac"] > 0
    assert ("kl_loss" in want_stats) == (not kl_in_reward)
    for budget, (grads, stats) in results.items():
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
        for k, v in want_stats.items():
            assert stats[k] == pytest.approx(v, abs=1e-9), (budget, k)


@pytest.mark.parametrize("agg", AGGS)
def test_parts_with_the_global_normaliser_add_up_to_the_whole(setup, agg):
    """Two "ranks" each accumulate their half of the mini-batch with the whole
    mini-batch's counts: the sum of their gradients is the whole's (the data-parallel
    contract: reduce the counts, then sum the gradients)."""
    model, batch = setup
    model = copy.deepcopy(model).train()
    head = ValueHead(model.config.hidden_size).double()
    torch.nn.init.normal_(head.linear.weight, std=0.1)
    params = list(model.parameters()) + list(head.parameters())
    actor = batch.loss_mask.double()
    critic = response_mask(batch).double()
    with torch.no_grad():
        out = forward_tokens(model, batch.input_ids, batch.attention_mask, value_head=head)
    old = out.logprobs + _noise(actor.shape, 1, 0.3) * actor
    per_token = (old, old * 0.9, out.values, _noise(actor.shape, 3) * critic, critic)
    grpo_cfg = dataclasses.replace(tiny_cpu().grpo, loss_agg=agg, entropy_coef=0.01)
    ppo_cfg = dataclasses.replace(tiny_cpu().ppo, loss_agg=agg, kl_in_reward=False)

    def run(rows, norm, norms, budget):
        sub = batch.select(rows)
        old_, ref_, values_, adv_, critic_ = (x[rows] for x in per_token)
        g = dataclasses.replace(grpo_cfg, micro_batch_tokens=budget)
        grpo_backward(model, sub, old_, ref_, adv_, actor[rows], g, norm=norm)
        p = dataclasses.replace(ppo_cfg, micro_batch_tokens=budget)
        ppo_backward(
            model, head, sub, old_, ref_, values_, adv_, adv_, actor[rows], critic_, p, norms=norms
        )

    for p in params:
        p.grad = None
    run(torch.arange(len(batch)), None, None, None)
    want = _grads(params)
    for p in params:
        p.grad = None
    norm = Normaliser.of(actor)
    norms = (norm, Normaliser.of(critic))
    for half, budget in ((torch.tensor([0, 2, 4]), None), (torch.tensor([1, 3, 5]), 50)):
        run(half, norm, norms, budget)
    for g, w in zip(_grads(params), want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ packing
PACKED_BUDGETS = [1, 40, 57, 1000]
"""Every row alone; the longest row (40) a row; two or three trajectories a row; all in one."""


def test_packed_plan_covers_every_row_once_within_budget():
    lengths = torch.tensor([5, 40, 12, 12, 3, 30, 7, 50])
    for budget in (1, 10, 40, 60, 100, 1000):
        plan = plan_micro_batches(lengths, budget, packing=True)
        assert sorted(r for mb in plan for r in mb.rows.tolist()) == list(range(8))
        for mb in plan:
            real = int(lengths[mb.rows].sum())
            assert mb.packed and mb.width == int(lengths[mb.rows].max())
            assert real <= budget or (len(mb.rows) == 1 and mb.oversize)
            assert mb.oversize == (real > budget)
    # padding-free: 3 micro-batches of <= 60 real tokens where padded needs more
    assert len(plan_micro_batches(lengths, 60, packing=True)) == 3
    assert len(plan_micro_batches(lengths, 60)) > 3


def test_packing_without_a_budget_is_refused():
    with pytest.raises(ValueError, match="packing needs micro_batch_tokens"):
        plan_micro_batches(torch.tensor([3, 4]), None, packing=True)
    from agents.config import apply_overrides

    for algo in ("grpo", "ppo"):
        bad = {"algo": algo, f"{algo}.packing": True, f"{algo}.micro_batch_tokens": None}
        if algo == "ppo":
            bad["rollout.group_size"] = 1
        with pytest.raises(ValueError, match=rf"{algo}\.packing needs {algo}\.micro_batch_tokens"):
            apply_overrides(tiny_cpu(), bad)
        # with a budget it is fine, and the other algorithm's section is not checked
        ok = apply_overrides(tiny_cpu(), {**bad, f"{algo}.micro_batch_tokens": 64})
        assert getattr(ok, algo).packing
    other = apply_overrides(tiny_cpu(), {"algo": "grpo", "ppo.packing": True})
    assert other.ppo.packing and other.ppo.micro_batch_tokens is None


@pytest.fixture(params=["sdpa", "eager"])
def attn_model(setup, request):
    """The fp64 tiny model with each CPU attention implementation."""
    model, batch = setup
    model = copy.deepcopy(model)
    model.set_attn_implementation(request.param)
    assert model.config._attn_implementation == request.param
    return model, batch


def test_packed_no_grad_passes_equal_the_padded(attn_model):
    model, batch = attn_model
    head = ValueHead(model.config.hidden_size).double()
    torch.nn.init.normal_(head.linear.weight, std=0.1)
    kwargs = dict(value_head=head, entropy=True, only=batch.loss_mask, temperature=0.8)
    with torch.no_grad():
        whole = forward_tokens(model, batch.input_ids, batch.attention_mask, **kwargs)
    for budget in PACKED_BUDGETS:
        part = forward_in_micro_batches(
            model, batch.input_ids, batch.attention_mask, budget, packing=True, **kwargs
        )
        for name in ("logprobs", "entropy", "values"):
            got, want = getattr(part, name), getattr(whole, name)
            torch.testing.assert_close(got, want, atol=1e-10, rtol=0, msg=name)


def test_running_positions_would_leak_in_either_attention(attn_model):
    """The equality above is not vacuous: a packed row whose positions run on (the
    trajectories see each other) scores the second trajectory differently."""
    from agents.model import final_hidden

    model, batch = attn_model
    n0, n1 = (int(n) for n in batch.attention_mask.sum(-1)[:2])
    row = torch.cat([batch.input_ids[0, :n0], batch.input_ids[1, :n1]])[None]
    reset = torch.cat([torch.arange(n0), torch.arange(n1)])[None]
    with torch.no_grad():
        alone = final_hidden(model, batch.input_ids[1:2, :n1], None, torch.arange(n1)[None])
        packed = final_hidden(model, row, None, reset)[:, n0:]
        running = final_hidden(model, row, None, torch.arange(n0 + n1)[None])[:, n0:]
    torch.testing.assert_close(packed, alone, atol=1e-10, rtol=0)
    assert (running - alone).abs().max() > 1e-3


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_grpo_packed_update_equals_the_padded(attn_model, agg):
    model, batch = attn_model
    model = model.train()
    mask = batch.loss_mask.double()
    with torch.no_grad():
        logp = forward_tokens(model, batch.input_ids, batch.attention_mask, only=mask).logprobs
    old = logp + _noise(mask.shape, 1, 0.3) * mask
    ref = logp + _noise(mask.shape, 2, 0.3) * mask
    adv = _noise((len(batch), 1), 3) * mask
    cfg = dataclasses.replace(tiny_cpu().grpo, loss_agg=agg, entropy_coef=0.01, kl_coef=0.1)
    weights = (0.5 + torch.rand(mask.shape, generator=torch.Generator().manual_seed(6))).double()
    results = {}
    for budget, packing in [(None, False)] + [(b, p) for b in PACKED_BUDGETS for p in (0, 1)]:
        model.zero_grad(set_to_none=True)
        c = dataclasses.replace(cfg, micro_batch_tokens=budget, packing=bool(packing))
        stats = grpo_backward(model, batch, old, ref, adv, mask, c, is_weights=weights)
        results[budget, bool(packing)] = (_grads(model.parameters()), stats)
    want_grads, want_stats = results[None, False]
    assert want_stats["pg_clip_frac"] > 0 and want_stats["kl_loss"] > 0
    for key, (grads, stats) in results.items():
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6, msg=str(key))
        for k in ("loss", "pg_loss", "kl_loss", "entropy", "pg_clip_frac", "approx_kl"):
            assert stats[k] == pytest.approx(want_stats[k], abs=1e-9), (key, k)
    # packing needs fewer passes than padding under the same budget
    assert results[57, True][1]["micro_batches"] < results[57, False][1]["micro_batches"]
    assert results[1000, True][1]["micro_batches"] == 1
    assert results[1, True][1]["oversize_rows"] == len(batch)


@pytest.mark.parametrize("kl_in_reward", [True, False])
def test_ppo_packed_update_equals_the_padded(attn_model, kl_in_reward):
    model, batch = attn_model
    model = model.train()
    head = ValueHead(model.config.hidden_size).double()
    torch.nn.init.normal_(head.linear.weight, std=0.1)
    params = list(model.parameters()) + list(head.parameters())
    actor = batch.loss_mask.double()
    critic = response_mask(batch).double()
    with torch.no_grad():
        out = forward_tokens(
            model, batch.input_ids, batch.attention_mask, value_head=head, only=critic
        )
    old = out.logprobs + _noise(actor.shape, 1, 0.3) * actor
    ref = out.logprobs + _noise(actor.shape, 2, 0.3) * actor
    old_values = out.values + _noise(actor.shape, 4, 0.5) * critic
    adv = _noise(actor.shape, 3) * critic
    returns = _noise(actor.shape, 5) * critic
    cfg = dataclasses.replace(
        tiny_cpu().ppo, entropy_coef=0.01, kl_coef=0.1, kl_in_reward=kl_in_reward
    )
    results = {}
    for budget, packing in [(None, False)] + [(b, True) for b in PACKED_BUDGETS]:
        for p in params:
            p.grad = None
        c = dataclasses.replace(cfg, micro_batch_tokens=budget, packing=packing)
        stats = ppo_backward(
            model, head, batch, old, ref, old_values, adv, returns, actor, critic, c
        )
        results[budget] = (_grads(params), stats)
    want_grads, want_stats = results[None]
    assert want_stats["vf_clip_frac"] > 0 and want_stats["pg_clip_frac"] > 0
    for budget, (grads, stats) in results.items():
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6, msg=str(budget))
        for k, v in want_stats.items():
            assert stats[k] == pytest.approx(v, abs=1e-9), (budget, k)
