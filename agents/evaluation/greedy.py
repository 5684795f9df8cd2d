"""Greedy evaluation during training: the held-out questions' mean scores as ``eval_*``
metrics (the trainers log them; the full table with baselines is :mod:`.runner`'s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents.rollout import Trajectory, collect, rollout_stats


def evaluate_greedy(
    policy: Any, vec_env: Any, indices: Sequence[int], max_new_tokens: int | None = None
) -> dict[str, float]:
    """Greedy decoding on the given questions (``vec_env.num_envs`` at a time).

    Returns:
        ``eval_em``, ``eval_reward``, ``eval_searches``, ``eval_turns``,
        ``eval_response_length``, ``eval_answered``.
    """
    trajectories: list[Trajectory] = []
    n = vec_env.num_envs
    for lo in range(0, len(indices), n):
        chunk = list(indices[lo : lo + n])
        trajectories += collect(
            vec_env, policy, indices=chunk, greedy=True, max_new_tokens=max_new_tokens
        )
    return rollout_stats(trajectories, prefix="eval_")
