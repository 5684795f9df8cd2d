"""The loop's collectives: on one process they are the 1-rank functions; on 2 gloo
ranks they equal the 1-rank function of the concatenated batch."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from agents.advantages import masked_var, masked_whiten  # noqa: E402
from agents.distributed import (  # noqa: E402
    DistContext,
    MainProcessFilter,
    dp_aggregate,
    global_explained_variance,
    global_masked_whiten,
    loss_denominator,
    main_only,
    max_over_ranks,
    reduce_loss_stats,
    reduce_metrics,
)
from agents.losses import aggregate  # noqa: E402

AGGS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo"
)


def rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-dependent values ``# (B_r, T_r)``: the ranks differ in both shape and mask."""
    g = torch.Generator().manual_seed(10 + rank)
    rows, width = (3, 5) if rank == 0 else (2, 7)
    x = torch.randn(rows, width, generator=g) * (1 + rank) + rank
    mask = (torch.rand(rows, width, generator=g) < 0.6).long()
    mask[-1] = 0  # a row without tokens
    x[mask == 0] = float("nan")  # masked entries must never leak in
    return x, mask


def rank_values(rank: int) -> torch.Tensor:
    """A critic's values on :func:`rank_batch` (returns): near them, not equal."""
    x, _ = rank_batch(rank)
    return x * 0.5 + 0.3 * torch.cos(torch.arange(x.numel(), dtype=x.dtype).reshape(x.shape))


def pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` right-padded with NaN to ``width`` columns (masked out there)."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=float("nan"))


def concatenated(world: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranks' batches as one 1-rank batch (right-padded with mask 0)."""
    parts = [rank_batch(r) for r in range(world)]
    width = max(x.shape[1] for x, _ in parts)
    xs = [torch.nn.functional.pad(x, (0, width - x.shape[1]), value=float("nan")) for x, _ in parts]
    ms = [torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m in parts]
    return torch.cat(xs), torch.cat(ms)


# ------------------------------------------------------------- one process
def test_one_process_whitening_is_masked_whiten():
    x, mask = rank_batch(0)
    torch.testing.assert_close(global_masked_whiten(x, mask, DistContext()), masked_whiten(x, mask))
    torch.testing.assert_close(
        global_masked_whiten(x, mask, DistContext(), shift_mean=False),
        masked_whiten(x, mask, shift_mean=False),
    )


@pytest.mark.parametrize("agg", AGGS)
def test_one_process_dp_aggregate_is_aggregate(agg):
    x, mask = rank_batch(0)
    x = torch.nan_to_num(x, nan=0.0).requires_grad_()
    want = aggregate(x, mask, agg)
    got = dp_aggregate(x, mask, agg, loss_denominator(mask, agg, DistContext()))
    torch.testing.assert_close(got, want)
    (g_want,) = torch.autograd.grad(want, x)
    (g_got,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(g_got, g_want)


def test_dp_aggregate_keeps_nan_at_masked_entries_out():
    x, mask = rank_batch(0)  # NaN wherever mask is 0
    loss = dp_aggregate(x, mask, "token-mean", loss_denominator(mask, "token-mean", DistContext()))
    assert torch.isfinite(loss)


def test_an_empty_minibatch_divides_by_one_not_zero():
    mask = torch.zeros(2, 4, dtype=torch.long)
    for agg in ("token-mean", "seq-mean-token-mean"):
        assert float(loss_denominator(mask, agg, DistContext())) == 1.0
    assert float(loss_denominator(mask, "seq-mean-token-sum", DistContext(), rows=0)) == 1.0
    assert float(loss_denominator(mask, "seq-mean-token-sum", DistContext())) == 2.0


def test_loss_denominator_refuses_bad_arguments():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="agg must be"):
        loss_denominator(mask, "mean", DistContext())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"rows must be in \[0, 2\]"):
        loss_denominator(mask, "seq-mean-token-sum", DistContext(), rows=3)


def test_one_process_metrics_and_counts_pass_through():
    assert reduce_metrics({"b": 2, "a_max": 1.5}, DistContext()) == {"a_max": 1.5, "b": 2.0}
    assert max_over_ranks(3, DistContext()) == 3
    with pytest.raises(ValueError, match="unknown op 'median'"):
        reduce_metrics({"a": 1.0}, DistContext(), ops={"a": "median"})  # type: ignore[dict-item]


def test_main_only_and_the_log_filter_silence_other_ranks():
    calls: list[int] = []
    assert main_only(DistContext(), calls.append, 1) is None and calls == [1]
    assert main_only(DistContext(rank=1, world_size=2), calls.append, 2) is None and calls == [1]
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert MainProcessFilter(DistContext()).filter(record)
    assert not MainProcessFilter(DistContext(rank=1, world_size=2)).filter(record)


# --------------------------------------------------------------- two ranks
def _collectives(ctx):
    from agents.distributed import all_succeed, broadcast_object, gather_objects, on_main

    out = {}
    r = float(ctx.rank)
    out["metrics"] = reduce_metrics(
        {
            "loss": 1.0 + r,
            "ratio_max": 2.0 + 3 * r,
            "ratio_min": 1.0 - r,
            "rollout_time": 5.0 - r,
            "episodes_count": 4.0,
            "total": r,
        },
        ctx,
        ops={"total": "sum"},
    )
    out["weighted"] = reduce_metrics(
        {"em": 1.0 if ctx.rank == 0 else 0.0}, ctx, weight=3.0 if ctx.rank == 0 else 1.0
    )
    try:
        reduce_metrics({"a": 1.0} if ctx.rank == 0 else {"b": 1.0}, ctx)
    except ValueError as e:
        out["mismatch"] = str(e)
    x, mask = rank_batch(ctx.rank)
    out["white"] = global_masked_whiten(x, mask, ctx)
    out["white_noshift"] = global_masked_whiten(x, mask, ctx, shift_mean=False)
    out["denominators"] = {agg: float(loss_denominator(mask, agg, ctx, rows=None)) for agg in AGGS}
    xs = torch.nan_to_num(x, nan=0.0)
    out["losses"] = {
        agg: float(dp_aggregate(xs, mask, agg, loss_denominator(mask, agg, ctx))) for agg in AGGS
    }
    values = rank_values(ctx.rank)
    out["explained"] = global_explained_variance(x, values, mask, ctx)
    out["loss_stats"] = reduce_loss_stats(
        {"pg_loss": 0.1 + r, "explained_variance": out["explained"], "value_mean": r},
        ctx,
        summed=("pg_loss",),
        weight=1.0,
        other_keys=("value_mean",),
        other_weight=1.0 + 2 * r,
        global_keys=("explained_variance",),
    )
    out["max"] = max_over_ranks(3 + 4 * ctx.rank, ctx)
    out["broadcast"] = broadcast_object(f"from {ctx.rank}", ctx)
    out["gathered"] = gather_objects(ctx.rank * 10, ctx)

    def fail_on_main():
        raise OSError("disk full on rank 0")

    try:
        on_main(ctx, fail_on_main)
    except Exception as e:  # noqa: BLE001 - recorded for the test
        out["on_main_error"] = f"{type(e).__name__}: {e}"

    def fail_on_one():
        if ctx.rank == 1:
            raise ValueError("bad shard")
        return "fine"

    try:
        all_succeed(ctx, fail_on_one)
    except Exception as e:  # noqa: BLE001
        out["all_succeed_error"] = f"{type(e).__name__}: {e}"
    return out


@needs_gloo
def test_two_rank_collectives_equal_the_one_rank_functions_of_the_whole_batch(tmp_path):
    from dist_harness import run_ranks

    results = run_ranks(_collectives, 2, tmp_path)
    x, mask = concatenated()
    want_white = masked_whiten(x, mask)
    want_noshift = masked_whiten(x, mask, shift_mean=False)
    rows0 = rank_batch(0)[0].shape[0]
    xs = torch.nan_to_num(x, nan=0.0)
    for rank, got in enumerate(results):
        assert got["metrics"] == {
            "episodes_count": 8.0,  # *_count: summed
            "loss": 1.5,  # mean
            "ratio_max": 5.0,
            "ratio_min": 0.0,
            "rollout_time": 5.0,  # the slowest rank
            "total": 1.0,  # told: sum
        }
        assert got["weighted"] == {"em": pytest.approx(0.75)}
        assert "ranks 0 and 1 report different metrics: ['a', 'b']" in got["mismatch"] or (
            "ranks 1 and 0" in got["mismatch"]
        )
        own = slice(0, rows0) if rank == 0 else slice(rows0, None)
        width = rank_batch(rank)[0].shape[1]
        torch.testing.assert_close(got["white"], want_white[own, :width], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(
            got["white_noshift"], want_noshift[own, :width], atol=1e-6, rtol=1e-5
        )
        for agg in AGGS:
            # the two ranks' shares average to the 1-rank loss of the whole batch
            mean = (results[0]["losses"][agg] + results[1]["losses"][agg]) / 2
            assert mean == pytest.approx(float(aggregate(xs, mask, agg)), abs=1e-6)
        assert got["denominators"]["token-mean"] == float(mask.sum()) / 2
        assert got["denominators"]["seq-mean-token-sum"] == x.shape[0] / 2
        assert got["denominators"]["seq-mean-token-mean"] == float(mask.any(-1).sum()) / 2
        values = torch.cat([pad_to(rank_values(r), x.shape[1]) for r in range(2)])
        xd, vd = x.double(), values.double()
        want_ev = 1 - masked_var(xd - vd, mask) / masked_var(xd, mask)
        assert got["explained"] == pytest.approx(float(want_ev), abs=1e-9)
        assert got["loss_stats"] == {
            "pg_loss": pytest.approx(1.2),  # shares: summed
            "explained_variance": got["explained"],  # global already: as it was
            "value_mean": pytest.approx(0.75),  # weighted by the other tokens (1 and 3)
        }
        assert got["max"] == 7
        assert got["broadcast"] == "from 0"
        assert got["gathered"] == [0, 10]
        assert "disk full on rank 0" in got["on_main_error"]
        assert "bad shard" in got["all_succeed_error"]
    assert results[0]["on_main_error"].startswith("OSError")  # rank 0 keeps its own error
    assert results[1]["all_succeed_error"].startswith("ValueError")
    assert "rank 1: ValueError: bad shard" in results[0]["all_succeed_error"]
