"""Which part of a step's global batch each rank plays and trains on.

The global batch of a step is the one a single process would use: ``num_envs``
episodes, ``num_envs / group_size`` questions (:func:`agents.seeding.question_indices`),
each played ``group_size`` times in a row. With W ranks, rank ``r`` owns the ``r``-th
contiguous block of ``num_envs / W`` episodes, i.e. whole questions and so whole GRPO
groups: a group never spans ranks, so group-relative advantages need no communication.
Concatenating the ranks' blocks in rank order gives back the 1-rank batch, row for row.

Mini-batches are cut from one global shuffle (the same seeded generator on every rank),
and each rank keeps the rows it holds, so a W-rank update sees exactly the 1-rank
mini-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.distributed.context import DistContext
from agents.seeding import question_indices


def local_num_envs(num_envs: int, group_size: int, world_size: int) -> int:
    """Sub-envs of each rank's vector env: ``num_envs / world_size``.

    Raises:
        ValueError: ``num_envs`` is not divisible by ``world_size``, or a rank's share is
            not a whole number of groups (a GRPO group would span two ranks).
    """
    if num_envs < 1 or group_size < 1 or world_size < 1:
        raise ValueError(
            f"num_envs, group_size and world_size must be >= 1, got {num_envs}, "
            f"{group_size}, {world_size}"
        )
    if num_envs % world_size:
        raise ValueError(
            f"rollout.num_envs ({num_envs}) must be divisible by the number of ranks "
            f"({world_size}): every rank plays the same number of episodes"
        )
    share = num_envs // world_size
    if share % group_size:
        raise ValueError(
            f"each of the {world_size} ranks would play {share} episodes, not a whole number "
            f"of groups of rollout.group_size={group_size}: a group would span two ranks; "
            f"make num_envs a multiple of world_size * group_size "
            f"({world_size * group_size})"
        )
    return share


def rank_questions(
    num_questions: int,
    num_envs: int,
    group_size: int,
    seed: int,
    step: int,
    ctx: DistContext,
) -> np.ndarray:
    """This rank's questions of one step: its block of the 1-rank draw.

    Args:
        num_questions: size of the train set.
        num_envs: episodes of the whole step, over all ranks (``rollout.num_envs``).
        group_size: episodes per question.
        seed: the run seed.
        step: the RL step.
        ctx: this rank.

    Returns:
        ``num_envs / world_size / group_size`` question indices, to be played
        ``group_size`` times each (``collect(..., indices=..., group_size=...)``).

    Raises:
        ValueError: see :func:`local_num_envs`.
    """
    share = local_num_envs(num_envs, group_size, ctx.world_size) // group_size
    everyone = question_indices(num_questions, num_envs // group_size, seed, step)
    return everyone[ctx.rank * share : (ctx.rank + 1) * share]


def rank_seed(seed: int, ctx: DistContext) -> int:
    """A sampler seed for this rank: ``seed`` itself on rank 0 (a 1-rank run samples as
    before), a different stream on every other rank (ranks must not share draws)."""
    if ctx.rank == 0:
        return seed
    return int(np.random.default_rng([seed, ctx.rank]).integers(2**62))


@dataclass(frozen=True)
class RankMinibatch:
    """This rank's rows of one global mini-batch.

    Attributes:
        rows: local row indices, never empty.
        live: False when the rank holds none of the mini-batch's rows: ``rows`` is then
            ``[0]``, a stand-in to run forward and backward on with a zero loss mask, so
            that every rank takes part in FSDP's collectives the same number of times.
    """

    rows: torch.Tensor
    live: bool


def rank_minibatches(
    local_size: int, minibatch_size: int, generator: torch.Generator, ctx: DistContext
) -> list[RankMinibatch]:
    """This rank's share of the global mini-batches of one epoch.

    The global batch has ``local_size * world_size`` rows (rank ``r`` holds rows
    ``r * local_size ...``); it is shuffled by ``generator`` (seeded alike on every rank)
    and cut into mini-batches of ``minibatch_size`` rows, exactly as
    :func:`agents.optim.minibatches` does in one process, and each rank keeps its own.

    Raises:
        ValueError: ``local_size`` or ``minibatch_size`` < 1.
    """
    if local_size < 1 or minibatch_size < 1:
        raise ValueError(
            f"local_size and minibatch_size must be >= 1, got {local_size}, {minibatch_size}"
        )
    order = torch.randperm(local_size * ctx.world_size, generator=generator)
    lo = ctx.rank * local_size
    out = []
    for start in range(0, len(order), minibatch_size):
        chunk = order[start : start + minibatch_size]
        mine = chunk[(chunk >= lo) & (chunk < lo + local_size)] - lo
        live = len(mine) > 0
        out.append(RankMinibatch(mine if live else torch.zeros(1, dtype=torch.long), live))
    return out


def shard_range(count: int, ctx: DistContext) -> range:
    """This rank's contiguous part of ``range(count)`` (sizes differ by at most one): for
    work that need not be equal per rank, such as evaluation questions."""
    base, extra = divmod(count, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return range(start, start + base + (ctx.rank < extra))
