"""A text-level view of the env: strings in, strings out, one assistant turn per step."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from search_env.env import SearchQAEnv


class AnyText(spaces.Text):
    """A :class:`~gymnasium.spaces.Text` that accepts any string up to ``max_length``.

    Gymnasium's ``Text`` only contains strings over its charset; model text is arbitrary
    Unicode. Samples still come from the printable ASCII charset.
    """

    def __init__(self, max_length: int) -> None:
        charset = "".join(chr(c) for c in range(32, 127)) + "\n"
        super().__init__(max_length=max_length, min_length=0, charset=charset)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length


class SearchQATextEnv(gym.Wrapper[str, str, dict[str, np.ndarray], Any]):
    """Strings instead of token ids, for API models and for reading episodes.

    ``reset()`` returns the prompt text. ``step(turn_text)`` tokenizes the assistant's
    turn, runs it as one chunk-mode step, and returns the text the env appended (the
    information block or the invalid-action message; ``""`` when the episode ends). The
    whole conversation is in ``info["context"]``. Rewards and protocol are the wrapped
    env's. Text after the turn's first closing tag is ignored, as in the token env.
    """

    def __init__(self, env: SearchQAEnv | gym.Env) -> None:
        base = env.unwrapped
        if not isinstance(base, SearchQAEnv):
            raise TypeError("SearchQATextEnv wraps a SearchQAEnv")
        if base.action_mode != "chunk":
            raise ValueError("SearchQATextEnv needs an env made with action_mode='chunk'")
        super().__init__(env)
        chars = base.protocol.max_prompt_length * 16  # generous: tokens are a few chars
        self.observation_space = AnyText(chars)
        self.action_space = AnyText(chars)
        self._base = base

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        text = self._text(obs, 0)
        info["context"] = text
        return text, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not isinstance(action, str):
            raise TypeError(f"SearchQATextEnv takes a str action, got {type(action).__name__}")
        ids = self._base.codec.turn_ids(action)
        before = int(self._base._len)
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(ids, dtype=np.int64))
        length = int(obs["length"][0])
        mask = obs["mask"][:length]
        agent_end = before + int(mask[before:].sum())
        new_text = self._text(obs, agent_end)
        info["context"] = self._text(obs, 0)
        return new_text, float(reward), terminated, truncated, info

    def _text(self, obs: dict[str, np.ndarray], start: int) -> str:
        length = int(obs["length"][0])
        return self._base.tokenizer.decode(obs["tokens"][start:length].tolist())
