"""The optimiser side of the GRPO and PPO updates: the learning-rate warm-up and the
seeded mini-batch shuffle (both loops use them the same way)."""

from __future__ import annotations

import torch


def warmup_schedule(
    optimizer: torch.optim.Optimizer, warmup_ratio: float, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio * steps`` RL steps, then constant (as verl)."""
    warmup = int(warmup_ratio * steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
    )


def minibatches(n: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle of ``range(n)`` cut into mini-batches of ``size`` (last may be short)."""
    order = torch.randperm(n, generator=generator)
    return [order[i : i + size] for i in range(0, n, size)]
