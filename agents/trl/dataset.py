"""TRL datasets from any search-env id: one row per question, with its index.

``GRPOTrainer`` needs a ``datasets.Dataset`` with a ``prompt`` column; every other
column reaches the reward functions (and, on the tool path, ``environment.reset``).
The rows here carry the question's ``index`` in the env's dataset, so a rollout (or a
tool environment) plays exactly that question.

The rollout function of :mod:`agents.trl.rollout` receives only the ``prompt`` column,
so it finds the question again by its prompt text (:func:`prompt_index`): prompt texts
must be unique, and :func:`questions_dataset` keeps only the first of several questions
whose prompts are identical (they differ at most in their gold answers; the count is
logged).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from search_env.env import SearchQAEnv
from search_env.protocol import clean_question, prompt_text

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)


def base_env(env: Any) -> SearchQAEnv:
    """The :class:`~search_env.env.SearchQAEnv` behind a single env, a wrapper or a vector env."""
    inner = env.envs[0] if hasattr(env, "envs") else getattr(env, "unwrapped", env)
    if not isinstance(inner, SearchQAEnv):
        raise TypeError(f"expected a search-env env or vector env, got {type(env).__name__}")
    return inner


def make_env(env_id: str, split: str = "train", env_kwargs: Mapping[str, Any] | None = None) -> Any:
    """One chunk-mode env of ``env_id`` on ``split`` (``gym.make``)."""
    import gymnasium as gym

    import search_env  # noqa: F401  (registers the ids)

    kwargs = {**dict(env_kwargs or {}), "split": split}
    return gym.make(env_id, action_mode="chunk", **kwargs)


def env_prompt(env: Any, index: int) -> str:
    """The prompt text the env shows for question ``index`` (chat template included)."""
    inner = base_env(env)
    return prompt_text(inner.dataset[index].question, inner.protocol, inner.tokenizer)


def prompt_index(env: Any) -> dict[str, int]:
    """Prompt text -> the first question index with that prompt (see the module docstring)."""
    inner = base_env(env)
    lookup: dict[str, int] = {}
    for i in range(len(inner.dataset)):
        lookup.setdefault(env_prompt(inner, i), i)
    return lookup


def questions_dataset(
    source: str | Any,
    *,
    split: str = "train",
    env_kwargs: Mapping[str, Any] | None = None,
    limit: int | None = None,
    template: str | None = None,
) -> Dataset:
    """A ``datasets.Dataset`` of the questions of an env id (or of a built env).

    Args:
        source: a registered env id (built with ``split`` and ``env_kwargs``), or a
            search-env env / vector env whose dataset is used as it is.
        split: dataset split, when ``source`` is an id.
        env_kwargs: ``gym.make`` keywords, when ``source`` is an id.
        limit: only the first ``limit`` questions.
        template: None: ``prompt`` is the env's own prompt text, exactly what the
            rollout function plays (Search-R1 tags, chat template). A template with
            ``{question}``: ``prompt`` is a conversation, one user message with the
            template filled in (for the tool-call path, where TRL applies the chat
            template and the tools' schema itself).

    Returns:
        Columns ``prompt``, ``index`` (in the env's dataset), ``id``, ``question`` and
        ``golden_answers``; rows in dataset order, duplicate prompts dropped.

    Raises:
        ValueError: ``limit`` < 1, or a template without ``{question}``.
    """
    from datasets import Dataset

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if template is not None and "{question}" not in template:
        raise ValueError("template must contain '{question}'")
    env = make_env(source, split, env_kwargs) if isinstance(source, str) else source
    inner = base_env(env)
    count = len(inner.dataset) if limit is None else min(limit, len(inner.dataset))
    rows: dict[str, list[Any]] = {
        k: [] for k in ("prompt", "index", "id", "question", "golden_answers")
    }
    seen: set[str] = set()
    for i in range(count):
        example = inner.dataset[i]
        text = env_prompt(inner, i)
        if text in seen:
            continue
        seen.add(text)
        prompt: Any = text
        if template is not None:
            content = template.format(question=clean_question(example.question))
            prompt = [{"role": "user", "content": content}]
        rows["prompt"].append(prompt)
        rows["index"].append(i)
        rows["id"].append(str(example.id))
        rows["question"].append(example.question)
        rows["golden_answers"].append(list(example.golden_answers))
    dropped = count - len(rows["index"])
    if dropped:
        logger.warning("%d questions repeat an earlier question's prompt: dropped", dropped)
    return Dataset.from_dict(rows)
