"""The envs an evaluation runs on: their kwargs, the vector envs, the baselines' copies."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search_env.evaluate import eval_env_kwargs as env_kwargs_for  # noqa: F401  (shared with the scripted CLI)
from search_env.protocol import ProtocolConfig
from search_env.types import QAExample

PROTOCOL_KEYS = frozenset(f.name for f in dataclasses.fields(ProtocolConfig)) | {
    "reward_metric",
    "format_score",
    "on_retrieval_error",
}
"""Env kwargs that describe the conversation, valid for every env id."""


class EvalSetupError(RuntimeError):
    """A model or an env could not be set up (the message says which and why)."""


def open_env(env_id: str, num_envs: int, kwargs: Mapping[str, Any]) -> Any:
    """A chunk-mode vector env without autoreset; failures name the env id."""
    import gymnasium as gym

    import search_env  # noqa: F401  (registers the ids)

    try:
        return gym.make_vec(
            env_id, num_envs=num_envs, action_mode="chunk", autoreset_mode="disabled", **kwargs
        )
    except Exception as exc:  # unknown id, offline dataset or tokenizer, bad kwargs
        raise EvalSetupError(f"could not make {env_id}: {type(exc).__name__}: {exc}") from exc


def resolve_retriever(spec: Any) -> Any:
    """A retriever object as given; an index directory, server URL or ``.jsonl`` corpus loaded."""
    if spec is None or not isinstance(spec, (str, Path)):
        return spec
    from search_env.registration import load_retriever

    try:
        if str(spec).endswith((".jsonl", ".jsonl.gz")):
            return load_retriever(corpus=spec)
        return load_retriever(spec)
    except Exception as exc:
        raise EvalSetupError(f"could not load the retriever {str(spec)!r}: {exc}") from exc


def derived_env(vec: Any, dataset: Sequence[QAExample], template: str) -> Any:
    """A one-turn, no-search copy of ``vec`` (same retriever, tokenizer, budgets, reward)
    with its own dataset and prompt template: the baselines' env."""
    from search_env.env import SearchQAEnv
    from search_env.vector import SearchQAVectorEnv

    base = vec.envs[0]
    protocol = dataclasses.replace(base.protocol, template=template, max_turns=0)
    envs = []
    for _ in range(vec.num_envs):
        env = SearchQAEnv(
            dataset,
            base.retriever,
            base.tokenizer,
            action_mode="chunk",
            protocol=protocol,
            reward_metric=base.reward_metric,
            eos_token_ids=sorted(base.codec.eos_ids),
            vocab_size=base.codec.vocab_size,
        )
        env.reward_fn = base.reward_fn  # the very same reward (format_score included)
        envs.append(env)
    return SearchQAVectorEnv(vec.num_envs, envs=envs, autoreset_mode="disabled")
