"""Rank slicing: every rank plays whole GRPO groups, and the ranks together play (and
train on) exactly the 1-rank global batch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agents.advantages import grpo_advantages  # noqa: E402
from agents.distributed import (  # noqa: E402
    DistContext,
    local_num_envs,
    rank_minibatches,
    rank_questions,
    rank_seed,
    shard_range,
)
from agents.optim import minibatches  # noqa: E402
from agents.seeding import question_indices  # noqa: E402


def ranks(world: int) -> list[DistContext]:
    return [DistContext(rank=r, world_size=world) for r in range(world)]


@pytest.mark.parametrize(
    ("num_envs", "group_size", "world"), [(8, 2, 2), (12, 3, 4), (10, 5, 2), (6, 1, 3), (4, 4, 1)]
)
@pytest.mark.parametrize("step", [1, 7])
def test_the_ranks_questions_together_are_the_one_rank_draw(num_envs, group_size, world, step):
    want = question_indices(50, num_envs // group_size, seed=3, step=step)
    parts = [rank_questions(50, num_envs, group_size, 3, step, ctx) for ctx in ranks(world)]
    assert all(len(p) == num_envs // world // group_size for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), want)


def test_a_group_never_spans_ranks_and_its_advantages_need_no_communication():
    """Episodes as collect() lays them out (each question group_size times in a row): the
    rank blocks hold whole groups, so per-rank GRPO advantages equal the global ones."""
    num_envs, group_size, world = 12, 3, 2
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0])
    group_ids = torch.arange(num_envs) // group_size
    want = grpo_advantages(rewards, group_ids)
    share = local_num_envs(num_envs, group_size, world)
    for ctx in ranks(world):
        block = slice(ctx.rank * share, (ctx.rank + 1) * share)
        held = torch.zeros(num_envs, dtype=torch.bool)
        held[block] = True
        inside, outside = set(group_ids[held].tolist()), set(group_ids[~held].tolist())
        assert inside.isdisjoint(outside) and len(inside) == share // group_size
        local = grpo_advantages(rewards[block], group_size=group_size)
        torch.testing.assert_close(local, want[block])


@pytest.mark.parametrize(
    ("num_envs", "group_size", "world"), [(12, 4, 2), (10, 5, 4), (6, 2, 4), (9, 3, 2)]
)
def test_splitting_a_group_across_ranks_is_refused(num_envs, group_size, world):
    with pytest.raises(ValueError, match=r"group|divisible"):
        local_num_envs(num_envs, group_size, world)
    with pytest.raises(ValueError, match=r"group|divisible"):
        rank_questions(50, num_envs, group_size, 0, 1, DistContext(rank=0, world_size=world))


def test_no_valid_layout_puts_one_group_on_two_ranks():
    """Exhaustively over small sizes: whenever a layout is accepted, each group's
    episodes all fall in one rank's block."""
    for world in range(1, 5):
        for group_size in range(1, 6):
            for num_envs in range(1, 25):
                try:
                    share = local_num_envs(num_envs, group_size, world)
                except ValueError:
                    continue
                groups = np.arange(num_envs) // group_size
                owner = np.arange(num_envs) // share
                for g in np.unique(groups):
                    assert len(np.unique(owner[groups == g])) == 1, (num_envs, group_size, world)


def test_the_error_says_which_multiple_would_work():
    with pytest.raises(ValueError, match=r"multiple of world_size \* group_size \(8\)"):
        local_num_envs(12, 4, 2)
    with pytest.raises(ValueError, match="divisible by the number of ranks"):
        local_num_envs(9, 3, 2)
    with pytest.raises(ValueError, match=">= 1"):
        local_num_envs(8, 0, 2)


@pytest.mark.parametrize(("local", "size", "world"), [(6, 4, 2), (5, 3, 2), (4, 16, 2), (3, 2, 3)])
def test_rank_minibatches_are_the_one_rank_minibatches_split(local, size, world):
    seed = 11
    want = minibatches(local * world, size, torch.Generator().manual_seed(seed))
    parts = [
        rank_minibatches(local, size, torch.Generator().manual_seed(seed), ctx)
        for ctx in ranks(world)
    ]
    assert all(len(p) == len(want) for p in parts)  # every rank runs as many updates
    for k, rows in enumerate(want):
        got = [p[k].rows + ctx.rank * local for p, ctx in zip(parts, ranks(world)) if p[k].live]
        joined = torch.cat(got) if got else torch.zeros(0, dtype=torch.long)
        assert sorted(joined.tolist()) == sorted(rows.tolist())
    for p in parts:
        for mb in p:
            assert len(mb.rows) >= 1 and (mb.live or mb.rows.tolist() == [0])


def test_one_rank_minibatches_are_exactly_the_loops():
    a = rank_minibatches(7, 3, torch.Generator().manual_seed(4), DistContext())
    b = minibatches(7, 3, torch.Generator().manual_seed(4))
    assert [m.rows.tolist() for m in a] == [r.tolist() for r in b]
    assert all(m.live for m in a)


def test_rank_minibatches_refuse_empty_sizes():
    with pytest.raises(ValueError, match=">= 1"):
        rank_minibatches(0, 2, torch.Generator(), DistContext())


def test_rank_seed_keeps_rank_zero_and_differs_elsewhere():
    seeds = [rank_seed(5, ctx) for ctx in ranks(4)]
    assert seeds[0] == 5 and len(set(seeds)) == 4
    assert seeds == [rank_seed(5, ctx) for ctx in ranks(4)]


@pytest.mark.parametrize(("count", "world"), [(10, 3), (2, 4), (0, 2), (8, 2)])
def test_shard_range_covers_everything_once(count, world):
    parts = [shard_range(count, ctx) for ctx in ranks(world)]
    assert [i for p in parts for i in p] == list(range(count))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
