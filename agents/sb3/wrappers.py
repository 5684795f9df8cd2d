"""An action wrapper that restricts a token env to a few tokens (one token per action)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class TokenSubset(gym.ActionWrapper):
    """``Discrete(len(token_ids))`` actions, action ``k`` writing token ``token_ids[k]``.

    Stable-Baselines3's PPO has no action masking; this is how an SB3 policy gets a
    small vocabulary. Each action is still exactly one agent token of the wrapped env,
    and observations (the full token buffer, its mask and length) are unchanged.
    """

    def __init__(self, env: gym.Env, token_ids: Sequence[int]) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, spaces.Discrete):
            raise TypeError(
                f"TokenSubset needs a token-mode env (Discrete actions), got {env.action_space}"
            )
        ids = [int(t) for t in token_ids]
        vocab = int(env.action_space.n)
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"token_ids must be distinct ids in [0, {vocab}), got {ids}")
        self.token_ids = np.asarray(ids, dtype=np.int64)
        self.action_space = spaces.Discrete(len(ids))

    def action(self, action: Any) -> int:
        return int(self.token_ids[int(action)])
