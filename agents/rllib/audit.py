"""Checking that only agent tokens become RLlib actions and loss rows (numpy only, no Ray).

In the token env each step's action is one token id; the env appends it to the context
with mask 1, then maybe its own tokens with mask 0. :func:`audit_chunk` verifies this on
recorded observations and actions and counts both kinds of tokens;
:mod:`agents.rllib.learner` runs it on every train batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class TokenAuditError(RuntimeError):
    """An action was not written as an agent token, or loss rows != agent tokens."""


@dataclass(frozen=True)
class TokenAudit:
    """Token counts of a set of episode chunks."""

    agent_tokens: int
    """Context entries with mask 1 written during the chunks (= actions taken)."""
    env_tokens: int
    """Context entries with mask 0 written during the chunks (information, messages)."""
    steps: int
    """Actions (RLlib timesteps) in the chunks."""


def audit_chunk(
    tokens: np.ndarray, mask: np.ndarray, length: np.ndarray, actions: np.ndarray
) -> TokenAudit:
    """Check one episode chunk: ``T + 1`` observations and the ``T`` actions between them.

    Args:
        tokens: ``(T + 1, L)`` token buffers.
        mask: ``(T + 1, L)`` env-token masks (1 = agent token).
        length: ``(T + 1,)`` or ``(T + 1, 1)`` context lengths.
        actions: ``(T,)`` token ids.

    Raises:
        TokenAuditError: an action is not the agent token that follows the context it was
            taken in.
    """
    length = np.asarray(length).reshape(-1).astype(np.int64)
    actions = np.asarray(actions).reshape(-1).astype(np.int64)
    steps = len(actions)
    if len(length) != steps + 1:
        raise ValueError(f"{len(length)} observations for {steps} actions (need actions + 1)")
    before = length[:-1]  # where each action's token must land
    if np.any(length[1:] <= before) or np.any(before >= tokens.shape[1]):
        raise TokenAuditError("an action did not add a token to the context")
    written = tokens[np.arange(1, steps + 1), before]  # (T,)
    kinds = mask[np.arange(1, steps + 1), before]  # (T,)
    bad = np.flatnonzero((written != actions) | (kinds != 1))
    if bad.size:
        t = int(bad[0])
        raise TokenAuditError(
            f"action {int(actions[t])} at step {t} was not appended as an agent token "
            f"(found id {int(written[t])} with mask {int(kinds[t])})"
        )
    start, end = int(length[0]), int(length[-1])
    agent = int(mask[-1, start:end].sum())
    return TokenAudit(agent_tokens=agent, env_tokens=end - start - agent, steps=steps)


def audit_episodes(episodes: list[Any]) -> TokenAudit:
    """:func:`audit_chunk` over RLlib ``SingleAgentEpisode`` chunks, summed."""
    agent = env = steps = 0
    for episode in episodes:
        obs = episode.get_observations()
        if isinstance(obs, list):  # not yet numpy-ised: a list of dicts
            obs = {k: np.stack([o[k] for o in obs]) for k in ("tokens", "mask", "length")}
        audit = audit_chunk(
            np.asarray(obs["tokens"]),
            np.asarray(obs["mask"]),
            np.asarray(obs["length"]),
            np.asarray(episode.get_actions()),
        )
        agent, env, steps = agent + audit.agent_tokens, env + audit.env_tokens, steps + audit.steps
    return TokenAudit(agent, env, steps)
