"""FSDP2 on 2 gloo ranks equals one process: the training step, the reference model, the
weight gather and generation with gathered weights (CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
pytest.importorskip("transformers")

from dist_harness import (  # noqa: E402
    StepConfig,
    make_batch,
    run_ranks,
    tiny_model,
    token_logprobs,
    train_plain,
    train_sharded,
)

from agents.distributed import DistContext, rank_minibatches  # noqa: E402

AGGS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
TOL = 1e-5


def _seed_with_standin(cfg: StepConfig, rows: int) -> int:
    """A shuffle seed whose mini-batches leave one rank without rows at least once."""
    for seed in range(100):
        gen = torch.Generator().manual_seed(seed)
        ctx = DistContext(rank=0, world_size=2)
        parts = [
            p
            for _ in range(cfg.epochs)
            for p in rank_minibatches(rows // 2, cfg.minibatch_size, gen, ctx)
        ]
        if any(not p.live for p in parts):
            return seed
    raise AssertionError("no seed gives an empty rank share")


def _fsdp_step(ctx, cfgs):
    from agents.config.schema import FSDPConfig
    from agents.distributed import iter_full_state, shard_model, shard_reference

    out = {}
    batch = make_batch()
    for name, (cfg, fsdp) in cfgs.items():
        model = shard_model(tiny_model(), ctx, FSDPConfig(**fsdp))
        losses, standins = train_sharded(ctx, model, batch, cfg)
        state = dict(iter_full_state(model))
        out[name] = {"losses": losses, "standins": standins, "state": state}
    ref = shard_reference(tiny_model(seed=1), ctx, FSDPConfig())
    half = len(batch.advantages) // 2
    mine = batch.rows(slice(ctx.rank * half, (ctx.rank + 1) * half))
    with torch.no_grad():
        out["ref_logp"] = token_logprobs(ref, mine.input_ids, mine.attention_mask)
    return out


def test_two_rank_fsdp_step_equals_one_rank_plain_step(tmp_path):
    """Loss of every mini-batch and the weights after 2 epochs of AdamW (clipped grads,
    micro-batches, an empty rank share) equal one process's, per aggregation; and with
    CPU offload and no resharding after the forward."""
    batch = make_batch()
    base = StepConfig()
    seed = _seed_with_standin(base, len(batch.advantages))
    cfgs = {agg: (StepConfig(agg=agg, shuffle_seed=seed, micro_rows=2), {}) for agg in AGGS}
    offload = {"cpu_offload": True, "reshard_after_forward": False}
    cfgs["offload"] = (StepConfig(shuffle_seed=seed, epochs=1), offload)
    results = run_ranks(_fsdp_step, 2, tmp_path, cfgs)
    for agg, (cfg, _) in cfgs.items():
        plain = tiny_model()
        want = train_plain(plain, batch, cfg)
        for rank in (0, 1):
            got = results[rank][agg]
            assert got["losses"] == pytest.approx(want, abs=TOL), (agg, rank)
            state = plain.state_dict()
            assert sorted(got["state"]) == sorted(state)
            worst = max(float((got["state"][k] - v).abs().max()) for k, v in state.items())
            assert worst < TOL, (agg, rank, worst)
        # the stand-in path ran: some rank held none of some mini-batch
        assert agg == "offload" or results[0][agg]["standins"] + results[1][agg]["standins"] > 0
        # and the update did something (not a trivially equal no-op)
        moved = max(
            float((tiny_model().state_dict()[k] - v).abs().max())
            for k, v in plain.state_dict().items()
        )
        assert moved > 1e-3
    ref = tiny_model(seed=1)
    with torch.no_grad():
        want_ref = token_logprobs(ref, batch.input_ids, batch.attention_mask)
    got_ref = torch.cat([results[0]["ref_logp"], results[1]["ref_logp"]])
    assert torch.allclose(got_ref, want_ref, atol=TOL)


def _gather_and_generate(ctx):
    from unittest import mock

    from torch.distributed.tensor import DTensor

    from agents.config.schema import FSDPConfig
    from agents.distributed import gathered, iter_full_state, shard_model

    out = {}
    model = shard_model(tiny_model(), ctx, FSDPConfig())
    # lazy: the first pair costs one all-gather, not the whole model's
    calls = []
    real = DTensor.full_tensor
    with mock.patch.object(
        DTensor, "full_tensor", lambda self, **kw: calls.append(1) or real(self, **kw)
    ):
        it = iter_full_state(model)
        first = next(it)
        out["gathers_after_first"] = len(calls)
        rest = list(it)
    out["state"] = dict([first, *rest])
    out["bf16"] = {k: v.dtype for k, v in iter_full_state(model, dtype=torch.bfloat16)}
    local = {
        k: (type(v).__name__, tuple(v.to_local().shape) if isinstance(v, DTensor) else None)
        for k, v in model.state_dict().items()
    }
    out["local_shapes"] = local
    # generation: rank 0 runs 3 forwards, rank 1 one; a sharded forward would wait forever
    batch = make_batch(rows=2)
    with gathered(model):
        outs = [
            token_logprobs(model, batch.input_ids, batch.attention_mask)
            for _ in range(3 if ctx.rank == 0 else 1)
        ]
        greedy = model.generate(
            batch.input_ids[:1, :4],
            max_new_tokens=2 + 3 * ctx.rank,
            do_sample=False,
            pad_token_id=0,
        )
    out["logp"] = outs[-1]
    out["greedy"] = greedy
    # afterwards the model trains as before (sharded again, collectives paired)
    loss = token_logprobs(model, batch.input_ids, batch.attention_mask).sum()
    loss.backward()
    out["grad_is_sharded"] = all(isinstance(p.grad, DTensor) for p in model.parameters())
    return out


def test_weight_gather_equals_state_dict_and_gathered_generation_needs_no_pairing(tmp_path):
    results = run_ranks(_gather_and_generate, 2, tmp_path)
    plain = tiny_model()
    want = plain.state_dict()
    batch = make_batch(rows=2)
    with torch.no_grad():
        want_logp = token_logprobs(plain, batch.input_ids, batch.attention_mask)
    for rank, got in enumerate(results):
        assert list(got["state"]) == list(want)  # state_dict() order and names
        for k, v in want.items():
            assert torch.equal(got["state"][k], v), k
        assert got["gathers_after_first"] == 1
        assert set(got["bf16"].values()) == {torch.bfloat16}
        # really sharded: each rank holds half of the first dimension of a layer's weight
        kind, shape = got["local_shapes"]["model.layers.0.mlp.up_proj.weight"]
        assert (
            kind == "DTensor"
            and shape[0] == want["model.layers.0.mlp.up_proj.weight"].shape[0] // 2
        )
        torch.testing.assert_close(got["logp"], want_logp, atol=1e-6, rtol=1e-5)
        new = 2 + 3 * rank
        want_greedy = plain.generate(
            batch.input_ids[:1, :4], max_new_tokens=new, do_sample=False, pad_token_id=0
        )
        assert torch.equal(got["greedy"], want_greedy)
        assert got["grad_is_sharded"]


def value_head() -> torch.nn.Module:
    """A critic head on the tiny model's hidden states (seeded, nonzero)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return torch.nn.Linear(64, 1)


def _output_paths(ctx):
    from torch.distributed.tensor import DTensor

    from agents.config.schema import FSDPConfig
    from agents.distributed import reshard, shard_model, shard_module, shard_reference

    out = {}
    batch = make_batch(rows=2)
    model = shard_model(tiny_model(), ctx, FSDPConfig())
    head = shard_module(value_head(), ctx, FSDPConfig())  # PPO's critic head
    try:  # today's agents.model.forward_tokens calls the backbone directly
        model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    except RuntimeError as e:
        out["bypass_error"] = str(e)
    # through the root's forward, then the LM head on a chunk of the hidden states
    hidden = model(input_ids=batch.input_ids, output_hidden_states=True).hidden_states[-1]
    loss = model.get_output_embeddings()(hidden[:, :3]).float().sum() + head(hidden).sum()
    loss.backward()
    out["grads"] = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    out["head_grads"] = {n: p.grad.full_tensor() for n, p in head.named_parameters()}
    ref = shard_reference(tiny_model(), ctx, FSDPConfig())
    with torch.no_grad():
        hidden = ref(input_ids=batch.input_ids, output_hidden_states=True).hidden_states[-1]
        out["ref_chunk"] = ref.get_output_embeddings()(hidden[:, :3])
    reshard(ref)
    out["ref_freed"] = all(isinstance(p, DTensor) for p in ref.parameters())
    return out


def test_the_lm_head_on_chunks_after_the_root_forward_equals_plain(tmp_path):
    """The forward path a micro-batched loop may take under FSDP2: the model's own forward
    (hidden states out), then the LM head chunk by chunk and a separately sharded value
    head; the backbone-only call fails."""
    results = run_ranks(_output_paths, 2, tmp_path)
    plain = tiny_model()
    batch = make_batch(rows=2)
    head = value_head()
    hidden = plain(input_ids=batch.input_ids, output_hidden_states=True).hidden_states[-1]
    chunk = plain.get_output_embeddings()(hidden[:, :3])
    (chunk.float().sum() + head(hidden).sum()).backward()
    for got in results:
        assert "mixed torch.Tensor and DTensor" in got["bypass_error"]
        for n, p in plain.named_parameters():
            torch.testing.assert_close(got["grads"][n], p.grad, atol=1e-5, rtol=1e-5)
        for n, p in head.named_parameters():
            torch.testing.assert_close(got["head_grads"][n], p.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["ref_chunk"], chunk.detach(), atol=1e-5, rtol=1e-5)
        assert got["ref_freed"]
