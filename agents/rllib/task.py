"""Making the token env from a plain config dict, and the small synthetic task (no Ray).

``make_search_env(env_id, env_config)`` is what the RLlib env creator and the SB3 example
call: ``gym.make(env_id, **env_config)`` plus one key of ours, ``tag_tokens``, which adds
the protocol tags (``<search>``, ``</search>``, ``<answer>``, ``</answer>``, ``<think>``,
``</think>``) to the tokenizer as single tokens. Env configs stay plain JSON, so they can
travel to remote env runners and be saved with a run.

The synthetic task (:data:`TASK_ENV_CONFIG`, :data:`TASK_WORDS`) is what the laptop
configs learn in minutes from a random start: the synth world's ``tiny`` split, a
one-line prompt, two 8-token turns, single-token tags, truncations reported as
terminations (see :class:`TruncationAsTermination`), and a policy restricted to the four
search/answer tags, EOS and three filler words. EM stays the reward (1 for a right
answer) and Search-R1's ``format_score`` (0.5) pays a well-formed but wrong answer, so the
return measures how reliably the agent learns to write ``<answer> ... </answer>``: about
0.07 for the random start, 0.5 for an agent that always answers.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Mapping, Sequence

import gymnasium as gym

TAG_TOKENS: tuple[str, ...] = ("<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>")
"""Protocol tags added as single tokens by ``tag_tokens=True``."""

OUR_KEYS = ("tag_tokens", "truncation_as_termination")
"""Env config keys handled here rather than by ``gym.make``."""

TASK_ENV_ID = "SearchQA-Synth-v0"
TASK_ENV_CONFIG: dict[str, Any] = {
    "size": "tiny",
    "split": "train",
    "tag_tokens": True,
    "truncation_as_termination": True,
    "template": "Question: {question}\n",
    "max_turns": 1,
    "topk": 1,
    "max_response_length": 8,
    "max_obs_length": 32,
    "max_start_length": 64,
    "max_prompt_length": 128,
    "reward_metric": "em",
    "format_score": 0.5,
}
"""The small synthetic task: contexts stay under 128 tokens, episodes under 17 steps."""

TASK_WORDS: tuple[str, ...] = ("<search>", "</search>", "<answer>", "</answer>", "<|endoftext|>",
                               " the", " a", " of")
"""The policy's vocabulary on the synthetic task (each must be one token)."""


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


def token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The id of each word, which must be a single token of ``tokenizer`` (else ValueError)."""
    ids = []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"{word!r} is {len(encoded)} tokens of this tokenizer, not one")
        ids.append(int(encoded[0]))
    return ids


def task_token_ids(tokenizer: Any | None = None) -> list[int]:
    """The synthetic task's vocabulary (:data:`TASK_WORDS`) as token ids."""
    return token_ids(tokenizer if tokenizer is not None else tagged_tokenizer("synth"), TASK_WORDS)
