"""Making the token env from a plain config dict (no Ray, no SB3).

``make_search_env(env_id, env_config)`` is what the RLlib env creator and the SB3 example
call: ``gym.make(env_id, **env_config)`` plus two keys of ours. ``tag_tokens`` adds the
protocol tags (``<search>``, ``</search>``, ``<answer>``, ``</answer>``, ``<think>``,
``</think>``) to the tokenizer as single tokens; ``truncation_as_termination`` wraps the
env in :class:`TruncationAsTermination`. Env configs stay plain JSON, so they can travel
to remote env runners and be saved with a run.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym

from search_env.protocol import TAGS

TAG_TOKENS: tuple[str, ...] = TAGS
"""Protocol tags (``search_env.protocol.TAGS``) added as single tokens by ``tag_tokens=True``."""

OUR_KEYS = ("tag_tokens", "truncation_as_termination")
"""Env config keys handled here rather than by ``gym.make``."""


@functools.lru_cache(maxsize=8)
def tagged_tokenizer(spec: str = "synth") -> Any:
    """A copy of the tokenizer ``spec`` (``"synth"``, a hub id or a path) with :data:`TAG_TOKENS`.

    Cached per process, so every env of a runner shares one tokenizer (and one codec).
    The tags are ordinary added tokens: they decode to their text, so the env's tag
    scanner and answer parser see them exactly as if they were spelt out.
    """
    from search_env.registration import load_tokenizer

    tokenizer = copy.deepcopy(load_tokenizer(spec))  # never mutate a shared tokenizer
    tokenizer.add_tokens(list(TAG_TOKENS))
    return tokenizer


def env_tokenizer(env_id: str, env_config: Mapping[str, Any] | None = None) -> Any:
    """The tokenizer ``make_search_env(env_id, env_config)`` gives its env, without the env."""
    from search_env.registration import DEFAULT_TOKENIZER, load_tokenizer

    config = dict(env_config or {})
    spec = config.get("tokenizer", "synth" if env_id == "SearchQA-Synth-v0" else DEFAULT_TOKENIZER)
    if not config.get("tag_tokens", False):
        return load_tokenizer(spec)
    if not isinstance(spec, str):
        raise TypeError("tag_tokens=True needs tokenizer= as a string (hub id, path or 'synth')")
    return tagged_tokenizer(spec)


def token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The id of each word, which must be a single token of ``tokenizer`` (else ValueError)."""
    ids = []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"{word!r} is {len(encoded)} tokens of this tokenizer, not one")
        ids.append(int(encoded[0]))
    return ids


class TruncationAsTermination(gym.Wrapper):
    """Report the env's truncations as terminations (``info["protocol_truncated"] = True``).

    The token env truncates when the agent used its last turn without answering or filled
    the context: the episode is over and its reward (0) is final. PPO in RLlib and SB3
    treats ``truncated`` as a time limit and bootstraps the return with the value of the
    last observation, a state the critic never trains on; its guess then rewards ending
    episodes early, which the policy learns (measured here: the format rate rose to 87%,
    then collapsed to 0 within 10 iterations). Search-R1's own PPO never bootstraps.
    """

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if truncated and not terminated:
            info = {**info, "protocol_truncated": True}
        return obs, reward, terminated or truncated, False, info


def make_search_env(env_id: str, env_config: Mapping[str, Any] | None = None) -> gym.Env:
    """``gym.make(env_id, **env_config)``, with our two keys handled here.

    Args:
        env_id: a registered search-env id (``SearchQA-Synth-v0``, ``SearchQA-NQ-v0``, ...).
        env_config: env keyword arguments (any mapping, e.g. RLlib's ``EnvContext``), plus
            ``tag_tokens`` (bool): add :data:`TAG_TOKENS` to the tokenizer given by
            ``tokenizer`` (a string spec; default ``"synth"`` for the synthetic world), and
            ``truncation_as_termination`` (bool): wrap in :class:`TruncationAsTermination`
            (do this for RL training with value bootstrapping).
    """
    config = dict(env_config or {})
    if config.get("tag_tokens", False):
        config["tokenizer"] = env_tokenizer(env_id, config)
    config.pop("tag_tokens", None)
    as_termination = bool(config.pop("truncation_as_termination", False))
    env = gym.make(env_id, **config)
    return TruncationAsTermination(env) if as_termination else env
