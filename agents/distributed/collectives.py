"""The few collectives a data-parallel training loop needs, each a no-op on one rank.

- :func:`reduce_metrics`: a step's metric dict, averaged (or summed, max-ed) over ranks.
- :func:`global_masked_whiten`: PPO's advantage whitening with the statistics of the
  whole global batch, equal to :func:`agents.advantages.masked_whiten` of the ranks'
  batches concatenated.
- :func:`loss_denominator` / :func:`dp_aggregate`: loss normalisation by global counts.
  FSDP2 *averages* gradients over the W ranks (its reduce-scatter divides by W), so a
  rank divides its token sum by ``D / W`` (``D`` the count over all ranks and all of the
  mini-batch's micro-batches): the average of the W ranks' gradients is then the
  gradient of ``sum / D``, the 1-rank loss.
- :func:`global_explained_variance`: PPO's ``1 - Var[R - V] / Var[R]`` over every rank's
  critic tokens, from the ranks' summed sufficient statistics (a ratio of variances is not
  the mean of the ranks' ratios).
- :func:`max_over_ranks`: agree on a count (e.g. micro-batches per mini-batch), so every
  rank runs as many forward/backward passes as the others (FSDP's collectives pair up).
- :func:`main_only`: run logging and file writes on rank 0 alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import torch

from agents.distributed.context import DistContext

logger = logging.getLogger(__name__)

T = TypeVar("T")
Op = Literal["mean", "sum", "max", "min"]
Agg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def default_op(key: str) -> Op:
    """How a metric combines over ranks when not told: ``*_max`` -> max, ``*_min`` ->
    min, ``*_time`` -> max (the slowest rank sets the pace), ``*_count``/``num_*`` -> sum,
    anything else -> mean."""
    if key.endswith(("_max", "_time")):
        return "max"
    if key.endswith("_min"):
        return "min"
    if key.endswith("_count") or key.startswith("num_"):
        return "sum"
    return "mean"


def reduce_metrics(
    metrics: Mapping[str, float],
    ctx: DistContext,
    ops: Mapping[str, Op] | None = None,
    weight: float = 1.0,
) -> dict[str, float]:
    """Combine each rank's metrics into the global ones (the same dict on every rank).

    Args:
        metrics: this rank's values; every rank must pass the same keys.
        ctx: this rank.
        ops: per-key operation, overriding :func:`default_op`.
        weight: this rank's weight in the means (e.g. its number of episodes, when ranks
            hold different numbers); means are ``sum(w * x) / sum(w)``.

    Raises:
        ValueError: the ranks passed different keys (named), or an unknown op.
    """
    ops = dict(ops or {})
    for key, op in ops.items():
        if op not in ("mean", "sum", "max", "min"):
            raise ValueError(f"unknown op {op!r} for metric {key!r}")
    keys = sorted(metrics)
    if not ctx.is_distributed:
        return {k: float(metrics[k]) for k in keys}
    import torch.distributed as dist

    gathered: list[list[str] | None] = [None] * ctx.world_size
    dist.all_gather_object(gathered, keys)
    for r, other in enumerate(gathered):
        if other != keys:
            diff = sorted(set(other or []) ^ set(keys))
            raise ValueError(f"ranks {ctx.rank} and {r} report different metrics: {diff}")
    by_op: dict[str, list[str]] = {"mean": [], "sum": [], "max": [], "min": []}
    for k in keys:
        by_op[str(ops.get(k, default_op(k)))].append(k)
    out: dict[str, float] = {}
    reduce = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    # One tensor per op (fp64: counts and small means both survive the sum).
    for how, names in by_op.items():
        if not names:  # the same keys on every rank: all skip it alike
            continue
        values = [float(metrics[k]) for k in names]
        if how == "mean":
            values = [weight * v for v in values] + [weight]
        t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
        dist.all_reduce(t, op=reduce["sum" if how == "mean" else how])
        if how == "mean":
            total = float(t[-1])
            if total <= 0:
                raise ValueError(f"the ranks' weights sum to {total}, not > 0")
            out.update({k: float(v) / total for k, v in zip(names, t[:-1].tolist(), strict=True)})
        else:
            out.update(dict(zip(names, t.tolist(), strict=True)))
    return {k: out[k] for k in keys}


def all_reduce_sum(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """A new tensor: ``x`` summed over ranks (fp64 for exact counts; ``x`` itself is
    left as it was)."""
    t = x.detach().to(device=ctx.device, dtype=torch.float64).clone()
    if ctx.is_distributed:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def max_over_ranks(n: int, ctx: DistContext) -> int:
    """The largest ``n`` over ranks: e.g. micro-batches per mini-batch, so that a rank
    with fewer pads with empty (zero-mask) ones and the FSDP collectives pair up."""
    if not ctx.is_distributed:
        return int(n)
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def global_masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    ctx: DistContext,
    shift_mean: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """:func:`agents.advantages.masked_whiten` with the mean and (Bessel-corrected)
    variance of the mask-1 entries of *all* ranks' ``x``.

    Two passes, like the 1-rank function (mean first, then the mean squared deviation),
    so the result equals it on the concatenated batch up to rounding.

    Args:
        x: this rank's values ``# (B, T)`` (ranks may differ in B and T).
        mask: same shape; which entries count (the others become 0).
        ctx: this rank.
        shift_mean: subtract the mean, or only rescale.
        eps: added to the variance.
    """
    keep = _as_bool(mask)
    xd = x.double()  # fp64 statistics: the sums of many ranks' tokens keep their digits
    zero = xd.new_zeros(())
    stats = all_reduce_sum(
        torch.stack([torch.where(keep, xd, zero).sum(), keep.sum().double()]), ctx
    )
    total, n = stats.to(x.device).unbind()
    mean = total / n.clamp(min=1)
    sq = all_reduce_sum(torch.where(keep, (xd - mean) ** 2, zero).sum(), ctx).to(x.device)
    var = sq / n.clamp(min=1) * n / (n - 1).clamp(min=1)
    out = (xd - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(keep, out, zero).to(x.dtype)


def global_explained_variance(
    returns: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, ctx: DistContext
) -> float:
    """:func:`agents.losses.explained_variance` of the mask-1 tokens of *all* ranks (the
    same float on every rank; on one rank, that rank's own).

    One collective: the ranks' ``[n, sum R, sum R^2, sum R-V, sum (R-V)^2]`` added up in
    fp64. Every rank must call it (a rank without tokens passes an all-zero ``mask``).
    """
    from agents.losses import explained_variance, explained_variance_sums

    sums = explained_variance_sums(returns, values, mask)
    return explained_variance(all_reduce_sum(sums, ctx))


def loss_denominator(
    mask: torch.Tensor, agg: Agg, ctx: DistContext, rows: int | None = None
) -> torch.Tensor:
    """What a rank divides its (weighted) token sum by, so that FSDP's average of the
    ranks' gradients equals the 1-rank gradient of the whole mini-batch.

    ``D`` is the global count for ``agg``: mask-1 tokens (``token-mean``), sequences
    (``seq-mean-token-sum``) or sequences with a mask-1 token (``seq-mean-token-mean``),
    summed over ranks; the result is ``D / world_size`` (FSDP2 divides gradients by the
    world size). Pass the mask of the rank's *whole* mini-batch (all its micro-batches),
    with a stand-in row's mask zeroed (:class:`~agents.distributed.slicing.RankMinibatch`).

    Args:
        mask: this rank's mini-batch mask ``# (B, T)``.
        agg: the loss aggregation (as :func:`agents.losses.aggregate`).
        ctx: this rank.
        rows: how many of the B rows are real (default all; 0 for a stand-in row):
            ``seq-mean-token-sum`` counts rows without tokens too, but not stand-ins.

    Returns:
        A 0-d fp64 tensor (at least ``1 / world_size``: an empty batch divides by it,
        not by 0), the same on every rank.
    """
    keep = _as_bool(mask)
    if agg == "token-mean":
        local = keep.sum()
    elif agg == "seq-mean-token-sum":
        if rows is not None and not 0 <= rows <= keep.shape[0]:
            raise ValueError(f"rows must be in [0, {keep.shape[0]}], got {rows}")
        local = torch.tensor(keep.shape[0] if rows is None else rows)
    elif agg == "seq-mean-token-mean":
        local = keep.any(-1).sum()
    else:
        raise ValueError(
            f"agg must be 'token-mean', 'seq-mean-token-sum' or 'seq-mean-token-mean', got {agg!r}"
        )
    return all_reduce_sum(local, ctx).clamp(min=1) / ctx.world_size


def token_weights(mask: torch.Tensor, agg: Agg) -> torch.Tensor:
    """Per-token weights ``# (B, T)`` whose sum, divided by the global denominator, is the
    loss: 1 at mask-1 tokens, or ``1 / (tokens of the row)`` for ``seq-mean-token-mean``
    (a row-local quantity, so micro-batches that keep rows whole need no collective)."""
    keep = _as_bool(mask)
    w = keep.to(torch.float32)
    if agg == "seq-mean-token-mean":
        w = w / keep.sum(-1, keepdim=True).clamp(min=1)
    elif agg not in ("token-mean", "seq-mean-token-sum"):
        raise ValueError(f"unknown agg {agg!r}")
    return w


def dp_aggregate(
    loss_mat: torch.Tensor, mask: torch.Tensor, agg: Agg, denominator: torch.Tensor
) -> torch.Tensor:
    """This rank's share of the loss: ``sum(weights * loss_mat) / denominator``.

    With ``denominator`` from :func:`loss_denominator`, the W ranks' losses average to the
    1-rank :func:`agents.losses.aggregate` of the whole mini-batch, and so do their
    gradients after FSDP's averaging. Masked entries (NaN or inf included) never reach it.
    """
    keep = _as_bool(mask)
    w = token_weights(mask, agg).to(device=loss_mat.device, dtype=loss_mat.dtype)
    kept = torch.where(
        keep.to(loss_mat.device),
        loss_mat * w,
        torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device),
    )
    return kept.sum() / denominator.to(device=loss_mat.device, dtype=loss_mat.dtype)


def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (small picklable objects: paths, flags)."""
    if not ctx.is_distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (small picklable objects), in rank order, on every rank."""
    if not ctx.is_distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and hand its result to every rank; if it raised there, every
    rank raises (an error on rank 0 must not leave the others waiting)."""
    result: tuple[bool, Any] = (True, None)
    if ctx.is_main:
        try:
            result = (True, fn())
        except Exception as e:  # re-raised below, on every rank
            if not ctx.is_distributed:
                raise
            result = (False, e)
    ok, value = broadcast_object(result, ctx)
    if not ok:
        if ctx.is_main:
            raise value
        raise RuntimeError(f"rank 0 failed: {value}") from None
    return value


def all_succeed(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raised on any, every rank raises (naming them)."""
    try:
        value, error = fn(), None
    except Exception as e:  # reported to the other ranks, then re-raised
        if not ctx.is_distributed:
            raise
        value, error = None, e
    errors = gather_objects(None if error is None else f"{type(error).__name__}: {error}", ctx)
    if error is not None:
        raise error
    failed = [f"rank {r}: {m}" for r, m in enumerate(errors) if m is not None]
    if failed:
        raise RuntimeError("; ".join(failed))
    return value  # type: ignore[return-value]


def main_only(ctx: DistContext, fn: Callable[..., T], *args: object, **kwargs: object) -> T | None:
    """Call ``fn`` on rank 0 only (logs, plots, exports); other ranks get None.

    No barrier: a rank that must wait for the result (e.g. a file) calls
    ``ctx.barrier()`` itself.
    """
    return fn(*args, **kwargs) if ctx.is_main else None


class MainProcessFilter(logging.Filter):
    """A ``logging`` filter that drops records on ranks other than 0 (add it to a handler
    so that W ranks do not print every line W times)."""

    def __init__(self, ctx: DistContext) -> None:
        super().__init__()
        self.ctx = ctx

    def filter(self, record: logging.LogRecord) -> bool:
        return self.ctx.is_main


def reduce_loss_stats(
    stats: Mapping[str, float],
    ctx: DistContext,
    summed: Sequence[str],
    weight: float,
    other_keys: Sequence[str] = (),
    other_weight: float = 0.0,
    global_keys: Sequence[str] = (),
) -> dict[str, float]:
    """One mini-batch's update stats over ranks (the same dict on every rank).

    Keys in ``summed`` are each rank's *share* of a global loss term (its sum divided by
    the global count) and are added up; the others are averaged with this rank's
    ``weight`` (its mask-1 tokens, so token fractions come out global), or with
    ``other_weight`` for ``other_keys`` (stats over other tokens, e.g. the critic's);
    ``*_max``/``*_min`` keys are max/min-ed (:func:`default_op`). A tiny weight is added
    so that a mini-batch without tokens on any rank stays defined. ``global_keys`` are
    already the global value on every rank (e.g. :func:`global_explained_variance`):
    kept as they are, since only token means average correctly.
    """
    if not ctx.is_distributed:
        return dict(stats)
    shares = {k: v for k, v in stats.items() if k in summed}
    out = reduce_metrics(shares, ctx, ops=dict.fromkeys(shares, "sum"))
    out.update({k: float(v) for k, v in stats.items() if k in global_keys and k not in summed})
    rest = {k: v for k, v in stats.items() if k not in summed and k not in global_keys}
    main = {k: v for k, v in rest.items() if k not in other_keys}
    other = {k: v for k, v in rest.items() if k in other_keys}
    out.update(reduce_metrics(main, ctx, weight=weight + 1e-9))
    out.update(reduce_metrics(other, ctx, weight=other_weight + 1e-9))
    return {k: out[k] for k in stats}
