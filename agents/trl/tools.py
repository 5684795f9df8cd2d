"""TRL's tool-calling path: an ``environment_factory`` whose methods are the tools.

``GRPOTrainer(environment_factory=make_environment_factory(env_id, ...))`` creates one
:class:`SearchToolEnvironment` per rollout, calls ``reset(**row)`` with the dataset row
(which must carry the question's ``index``, as :func:`~agents.trl.dataset.questions_dataset`
rows do), exposes the public methods :meth:`~SearchToolEnvironment.search` and
:meth:`~SearchToolEnvironment.answer` as chat-template tools, and scores the rollout with
:meth:`~SearchToolEnvironment.get_reward`.

Each tool call is played as one turn of this package's env (through the text view,
:class:`~search_env.text.SearchQATextEnv`): a search is the turn
``<search> query </search>`` and returns the env's information block (Search-R1's
document format, cut to ``max_obs_length`` tokens); an answer is the turn
``<answer> ... </answer>`` and the env's reward (EM by default) is the rollout's. So
retrieval, formatting, budgets and reward are the env's own. What is not Search-R1's:
the model writes chat-template tool calls instead of the paper's tags, and the trainer,
not the env, decides which tokens are tool output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.trl.dataset import base_env, make_env
from search_env.env import SearchQAEnv
from search_env.protocol import TAGS
from search_env.text import SearchQATextEnv

TOOL_TEMPLATE = (
    "Answer the given question. Use the search tool to look up facts, as many times as you "
    "need, then give the final answer, a few words, with the answer tool. "
    "Question: {question}"
)
"""The user message of the tool path (``questions_dataset(..., template=TOOL_TEMPLATE)``)."""


class SearchToolEnvironment:
    """One rollout's question, with ``search`` and ``answer`` tools over a search-env env.

    Args:
        env: a chunk-mode :class:`~search_env.env.SearchQAEnv` (its own instance: the
            episode state lives in it).
    """

    def __init__(self, env: SearchQAEnv) -> None:
        if env.action_mode != "chunk":
            raise ValueError("SearchToolEnvironment needs an env made with action_mode='chunk'")
        self._env = env
        self._text = SearchQATextEnv(env)
        self._reward = 0.0
        self._searches = 0
        self._done = True
        self._answer: str | None = None

    def reset(self, **row: Any) -> str | None:
        """Start the episode of the row's question (``row["index"]``); returns None (the
        dataset's prompt already holds the question).

        Raises:
            KeyError: the row has no ``index``.
            ValueError: the index is out of range, or the row's ``id`` is not that
                question's (a dataset built from another env).
        """
        if "index" not in row:
            raise KeyError(
                "the dataset row needs an 'index' column (questions_dataset rows have one)"
            )
        index = row["index"]
        self._text.reset(options={"index": index})
        example = self._env.example
        if "id" in row and example is not None and str(row["id"]) != str(example.id):
            raise ValueError(
                f"row id {row['id']!r} is not question {index}'s ({example.id!r}): build the "
                "dataset from the same env id, split and kwargs as the factory"
            )
        self._reward, self._searches, self._done, self._answer = 0.0, 0, False, None
        return None

    def _check_open(self) -> None:
        if self._done:
            raise RuntimeError("the episode is over: no more tool calls")

    def search(self, query: str) -> str:
        """Search the corpus and return the top passages.

        Args:
            query: what to look up, in a few words.

        Returns:
            The retrieved passages between <information> and </information>, one
            "Doc i(Title: ...) text" line each.
        """
        self._check_open()
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query is empty")
        if any(tag in query for tag in TAGS):
            raise ValueError("the query must not contain protocol tags")
        budget = self._env.protocol.max_turns
        if self._searches >= budget:
            raise RuntimeError(f"no searches left (at most {budget}): give your answer")
        text, _, terminated, truncated, info = self._text.step(
            f"<search> {query.strip()} </search>"
        )
        self._searches = int(info["searches"])
        if terminated or truncated:  # the context is full
            self._done = True
        return text.strip()

    def answer(self, answer: str) -> str:
        """Give the final answer; this ends the episode.

        Args:
            answer: the answer, a few words.

        Returns:
            A confirmation that the answer was recorded.
        """
        self._check_open()
        if not isinstance(answer, str):
            raise TypeError(f"the answer must be a string, got {type(answer).__name__}")
        if any(tag in answer for tag in TAGS):
            raise ValueError("the answer must not contain protocol tags")
        _, reward, _, _, info = self._text.step(f"<answer> {answer.strip()} </answer>")
        self._done = True
        self._answer = info.get("answer")
        self._reward = float(reward)
        return "Answer recorded."

    def get_reward(self) -> float:
        """The env's reward for the episode: its metric (EM by default) of the answer; 0
        without one."""
        return self._reward


class SearchToolFactory:
    """A zero-argument callable that makes :class:`SearchToolEnvironment` instances.

    The env id is built once, on the first call; every instance gets its own
    :class:`~search_env.env.SearchQAEnv` over the same dataset, retriever, tokenizer,
    protocol and reward.

    Args:
        env_id: a registered search-env id.
        env_kwargs: ``gym.make`` keywords.
        split: dataset split (the training dataset's).
        env: an already-built env to share the pieces of, instead of ``env_id``.
    """

    def __init__(
        self,
        env_id: str | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        split: str = "train",
        env: Any = None,
    ) -> None:
        if env_id is None and env is None:
            raise ValueError("pass env_id or env")
        self.env_id, self.env_kwargs, self.split = env_id, dict(env_kwargs or {}), split
        self._base: SearchQAEnv | None = None if env is None else base_env(env)

    @property
    def base(self) -> SearchQAEnv:
        """The shared env (built on first use)."""
        if self._base is None:
            assert self.env_id is not None
            self._base = base_env(make_env(self.env_id, self.split, self.env_kwargs))
        return self._base

    def __call__(self) -> SearchToolEnvironment:
        base = self.base
        env = SearchQAEnv(
            base.dataset,
            base.retriever,
            base.tokenizer,
            action_mode="chunk",
            protocol=base.protocol,
            reward_metric=base.reward_metric,
            eos_token_ids=sorted(base.codec.eos_ids),
            vocab_size=base.codec.vocab_size,
            on_retrieval_error=base.on_retrieval_error,
        )
        env.reward_fn = base.reward_fn  # the very same reward (format_score included)
        return SearchToolEnvironment(env)


def make_environment_factory(
    env_id: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    split: str = "train",
    env: Any = None,
) -> SearchToolFactory:
    """``GRPOTrainer(environment_factory=...)`` for a search-env id (see :class:`SearchToolFactory`)."""
    return SearchToolFactory(env_id, env_kwargs, split, env)
