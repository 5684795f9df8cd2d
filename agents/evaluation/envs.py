"""The envs an evaluation runs on: their kwargs, the vector envs, the baselines' copies."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from agents.evaluation.report import PAPER_COLUMNS
from search_env.protocol import ProtocolConfig
from search_env.types import QAExample

PROTOCOL_KEYS = frozenset(f.name for f in dataclasses.fields(ProtocolConfig)) | {
    "reward_metric", "format_score", "on_retrieval_error",
}
"""Env kwargs that describe the conversation, valid for every env id."""

_SYNTH_ONLY = frozenset({"size", "num_entities", "seed"})


class EvalSetupError(RuntimeError):
    """A model or an env could not be set up (the message says which and why)."""


def env_kwargs_for(
    env_id: str,
    *,
    split: str | None = None,
    size: str | None = None,
    qa_dir: str | Path | None = None,
    retriever: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``gym.make_vec`` kwargs of one env id.

    Args:
        env_id: a registered id.
        split: dataset split; Synth defaults to ``test``, the hub datasets to their
            Search-R1 evaluation split.
        size: Synth world size (default ``small``); ignored elsewhere.
        qa_dir: a FlashRAG directory (``{qa_dir}/{config}/{split}.jsonl``, as written by
            ``search-env download qa``) for the seven datasets.
        retriever: passed to every env but Synth (which has its own index).
        extra: more kwargs; ``"{env_id}:{key}"`` keys apply to that env only, Synth-only
            keys (``size``, ``num_entities``, ``seed``) only to Synth, everything else to
            every env.
    """
    synth = env_id == "SearchQA-Synth-v0"
    kwargs: dict[str, Any] = {}
    if synth:
        kwargs["split"] = split or "test"
        kwargs["size"] = size or "small"
    else:
        if split:
            kwargs["split"] = split
        if qa_dir is not None and env_id in PAPER_COLUMNS:
            from search_env.data.qa import get_dataset_info

            info = get_dataset_info(env_id.removeprefix("SearchQA-").removesuffix("-v0"))
            kwargs["dataset"] = str(Path(qa_dir) / info.config)
            kwargs["split"] = split or info.eval_split
        if retriever is not None:
            kwargs["retriever"] = retriever
    for key, value in (extra or {}).items():
        target, sep, name = key.rpartition(":")
        if sep:
            if target == env_id:
                kwargs[name] = value
        elif synth or key not in _SYNTH_ONLY:
            kwargs[key] = value
    return kwargs


def open_env(env_id: str, num_envs: int, kwargs: Mapping[str, Any]) -> Any:
    """A chunk-mode vector env without autoreset; failures name the env id."""
    import gymnasium as gym

    import search_env  # noqa: F401  (registers the ids)

    try:
        return gym.make_vec(env_id, num_envs=num_envs, action_mode="chunk",
                            autoreset_mode="disabled", **kwargs)
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
        env = SearchQAEnv(dataset, base.retriever, base.tokenizer, action_mode="chunk",
                          protocol=protocol, reward_metric=base.reward_metric,
                          eos_token_ids=sorted(base.codec.eos_ids),
                          vocab_size=base.codec.vocab_size)
        env.reward_fn = base.reward_fn  # the very same reward (format_score included)
        envs.append(env)
    return SearchQAVectorEnv(vec.num_envs, envs=envs, autoreset_mode="disabled")
