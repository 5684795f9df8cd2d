"""The token-level Search-R1 environment: :class:`SearchQAEnv`, its Gymnasium API.

The env is built in layers, one module each: :mod:`search_env.env_checks` (argument,
action and option checks, the spaces), :mod:`search_env.episode` (the episode's state,
its accessors and the ``snapshot``/``restore`` undo), :mod:`search_env.env_turns` (how
agent tokens become turns, in token and chunk mode) and this module (``reset``, ``step``
and its two halves ``begin_step``/``finish_step``, which the vector env calls to batch
retrieval).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from search_env.codec import TokenCodec, get_codec
from search_env.env_checks import check_action, check_arguments, check_options, make_spaces
from search_env.env_turns import TurnLogic
from search_env.episode import PendingStep, Turn
from search_env.protocol import ProtocolConfig, document_lines, prompt_text
from search_env.retrievers.base import Retriever
from search_env.reward_config import (
    EpisodeOutcome,
    EpisodeRewardFn,
    RewardConfig,
    RewardError,
    resolve_reward,
    reward_components,
)
from search_env.rewards import score_all
from search_env.types import Passage, QAExample

logger = logging.getLogger(__name__)

ActionMode = Literal["token", "chunk"]


class EpisodeOverError(RuntimeError):
    """``step()`` was called after the episode ended without a ``reset()``."""


_RESET_OPTIONS = ("example", "index")


class SearchQAEnv(TurnLogic, gym.Env[dict[str, np.ndarray], Any]):
    """Question answering with a search engine, one agent token (or turn) per step.

    ## Description
    The Search-R1 protocol (arXiv 2503.09516) as a Gymnasium env. The context starts with
    the prompt for one question. The agent writes tokens; when its turn closes a
    ``<search> query </search>`` the env retrieves ``topk`` passages and appends
    ``<information>...</information>``; ``<answer> ... </answer>`` ends the episode; a turn
    with neither gets the invalid-action message. Environment tokens (prompt, information,
    messages) carry mask 0, agent tokens mask 1.

    ## Action Space
    ``action_mode="token"``: ``Discrete(vocab_size)``, one token id per step.
    ``action_mode="chunk"``: :class:`~search_env.env_checks.ChunkSpace` (a
    ``Sequence(Discrete(vocab_size))`` of at least one token), one generated turn per step
    (token ids after the turn's first closing tag are ignored and counted in
    ``info["ignored_tokens"]``; a chunk that ends without a tag ends the turn).

    ## Observation Space
    ``Dict(tokens=Box(0, vocab-1, (max_prompt_length,), int64),
    mask=Box(0, 1, (max_prompt_length,), int8), length=Box(0, max_prompt_length, (1,), int64))``.
    Only the first ``length`` entries are meaningful; the rest are 0.

    ## Rewards
    At the episode end: the metric (EM by default, or F1 / cover-EM / substring-EM) of
    the answer the agent wrote against the gold answers, or ``format_score`` for a wrong
    answer. 0 on every other step and when no answer was given. ``reward=`` (a
    :class:`~search_env.reward_config.RewardConfig` or its kind) pays another
    combination of the episode's components (Search-R1 v0.3's format reward, AutoRefine's
    refine reward, a weighted sum, an invalid-action penalty); ``reward_fn=`` (an
    ``EpisodeRewardFn``) replaces the reward altogether. A reward function that raises
    or returns a non-finite value raises :class:`~search_env.reward_config.RewardError`
    and the step is undone, never a silent 0.

    ## Starting State
    A question drawn with ``self.np_random`` (or ``options={"index": i}``).

    ## Failures
    A call that raises changes nothing: a bad action or reset option, a prompt that
    does not fit, or a retriever failure with ``on_retrieval_error="raise"`` leaves the
    episode, the context and ``np_random`` as they were, so the same call can be retried
    (once the server is back up, say) as if it had never failed.

    ## Snapshots
    ``get_state()`` returns a self-contained, reusable
    :class:`~search_env.episode.EnvState` (context, turn, searches, documents, RNG) and
    ``set_state(state)`` continues from it, for tree-structured rollouts and replay. The
    retriever is not part of the state.

    ## Episode End
    ``terminated`` when the agent answers. ``truncated`` after ``max_turns`` search turns
    plus one final turn without an answer, or when the context reaches
    ``max_prompt_length`` tokens.

    ## Arguments
    ``dataset`` (QA examples), ``retriever`` (a ``Retriever``), ``tokenizer`` (a Hugging
    Face tokenizer), ``action_mode``, ``reward_metric``, ``format_score``, ``protocol``
    (a ``ProtocolConfig``, or the name of a preset of :data:`~search_env.protocol.PRESETS`:
    ``"search-r1"``, ``"r1-searcher"``, ``"research"``, ``"autorefine"``) and any
    ``ProtocolConfig`` field as a keyword (``topk=5``), ``reward`` and ``reward_fn`` (see
    Rewards), ``eos_token_ids``, ``vocab_size`` (defaults to ``len(tokenizer)``; pass the
    model's embedding size to accept its unused ids), ``on_retrieval_error`` (``"raise"`` or
    ``"observe"``: show the error as the information block and flag it in ``info``).

    ## Info
    Every step: ``turn`` (turns completed), ``turn_ended``. When a turn ends, also
    ``action`` (``search``/``answer``/``invalid``), ``end_reason`` (``tag``, ``eos``,
    ``budget``, ``chunk_end``, ``context``), ``searches`` (queries run so far), ``query``
    (the turn's first), ``turn_queries`` (with ``max_queries_per_turn > 1``),
    ``query_truncated``, ``tag_count``, ``retrieval_time``, ``ignored_tokens`` (chunk
    mode). When the episode ends, also ``answer``, ``golden_answers``, ``scores`` (every
    metric), ``reward_components`` (every entry of
    :data:`~search_env.reward_config.COMPONENTS`), ``question``, ``index``.

    ## Version History
    * v0: initial version; protocol presets, reward components and snapshots added as
      options (Search-R1 stays the default and unchanged).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        dataset: Sequence[QAExample],
        retriever: Retriever,
        tokenizer: Any,
        *,
        action_mode: ActionMode = "token",
        protocol: ProtocolConfig | str | None = None,
        reward_metric: str = "em",
        format_score: float = 0.0,
        reward: RewardConfig | Mapping[str, Any] | str | None = None,
        reward_fn: EpisodeRewardFn | None = None,
        eos_token_ids: Sequence[int] | None = None,
        vocab_size: int | None = None,
        on_retrieval_error: Literal["raise", "observe"] = "raise",
        copy_obs: bool = True,
        render_mode: str | None = None,
        **protocol_overrides: Any,
    ) -> None:
        self.protocol = check_arguments(
            dataset,
            retriever,
            tokenizer,
            action_mode=action_mode,
            protocol=protocol,
            on_retrieval_error=on_retrieval_error,
            render_mode=render_mode,
            vocab_size=vocab_size,
            protocol_overrides=protocol_overrides,
        )
        self.dataset = dataset
        self.retriever = retriever
        # The tag scanner follows the protocol's closing tags (a preset's own).
        stop_tags = tuple(tag.encode("utf-8") for tag in self.protocol.stop_strings)
        self.codec: TokenCodec = get_codec(tokenizer, vocab_size, eos_token_ids, stop_tags)
        self.tokenizer = self.codec.tokenizer
        self.action_mode = action_mode
        self.reward_fn, self.episode_reward_fn, self.reward_config = resolve_reward(
            reward_metric, format_score, reward, reward_fn
        )
        kind = self.reward_config.kind
        self.reward_metric = kind if kind in ("em", "f1", "cover_em", "substring_em") else "em"
        self.on_retrieval_error = on_retrieval_error
        self.copy_obs = copy_obs
        self.render_mode = render_mode
        self.action_space, self.observation_space = make_spaces(
            self.codec.vocab_size, self.protocol.max_prompt_length, action_mode
        )
        self._init_episode_state()
        self._init_turn_logic()

    # ------------------------------------------------------------------ reset
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode.

        ``options``: ``{"index": i}`` picks question ``i`` of the dataset;
        ``{"example": QAExample(...)}`` poses any question. A reset that raises leaves the
        running episode and ``np_random`` as they were.
        """
        options = check_options(options, _RESET_OPTIONS)
        snapshot = self.snapshot(rng=True)
        try:
            super().reset(seed=seed)
            example, index, prompt_ids = self._pose(options)
        except BaseException:
            self.restore(snapshot)  # only the RNG was touched
            raise
        # Nothing below can fail: the old episode ends here.
        self._example, self._index = example, index
        self._tokens[:] = 0
        self._mask[:] = 0
        self._len = 0
        self._append(prompt_ids, agent=False)
        self._turn_index = 0
        self._searches = 0
        self._queries = []
        self._answer = None
        self._turn = Turn()
        self._done = False
        self._pending = None
        self._prompt_len = len(prompt_ids)
        self._invalid_turns = 0
        self._documents = []
        info = {
            "turn": 0,
            "turn_ended": False,
            "question": example.question,
            "index": index,
            "prompt_tokens": len(prompt_ids),
            "prompt_over_budget": len(prompt_ids) > self.protocol.max_start_length,
        }
        return self._obs(), info

    def _pose(self, options: dict[str, Any]) -> tuple[QAExample, int, np.ndarray]:
        """The next question, its dataset index (-1 for ``example``) and prompt ids."""
        if "example" in options:
            example, index = options["example"], -1
            if not isinstance(example, QAExample):
                raise TypeError(
                    f"options['example'] must be a QAExample, got {type(example).__name__}"
                )
        else:
            raw = options.get("index")
            if raw is None:
                raw = int(self.np_random.integers(len(self.dataset)))
            elif (
                isinstance(raw, (bool, np.bool_))
                or not isinstance(raw, (int, np.integer))
                or not 0 <= raw < len(self.dataset)
            ):
                raise ValueError(
                    f"options['index'] must be an int in [0, {len(self.dataset)}), got {raw!r}"
                )
            index = int(raw)
            example = self.dataset[index]
        # cached: GRPO groups and epochs reset to the same question again and again
        (prompt_ids,) = self.codec.encode_pieces(
            [prompt_text(example.question, self.protocol, self.tokenizer)]
        )
        cap = self.protocol.max_prompt_length
        if len(prompt_ids) >= cap:
            raise ValueError(
                f"the prompt of question {example.id!r} has {len(prompt_ids)} tokens, which "
                f"leaves no room in max_prompt_length={cap}"
            )
        return example, index, prompt_ids

    # ------------------------------------------------------------------- step
    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        snapshot = self.snapshot()
        try:
            queries = self.begin_step(action)
            if not queries:
                return self.finish_step(None)
            start = time.perf_counter()
            try:
                # one call for all of a turn's queries (max_queries_per_turn > 1)
                found = self.retriever.search(list(queries), self.protocol.topk)
                if len(found) != len(queries):
                    raise RuntimeError(
                        f"retriever returned {len(found)} result lists for {len(queries)} queries"
                    )
                results: list[list[Passage]] | Exception = found
            except Exception as exc:  # flagged or re-raised by finish_step
                results = exc
            return self.finish_step(results, time.perf_counter() - start)
        except BaseException:
            self.restore(snapshot)  # so the same action can be retried
            raise

    def begin_step(self, action: Any) -> tuple[str, ...]:
        """Consume the agent's tokens; return the queries to retrieve for (often none).

        One query per search turn by default, up to ``max_queries_per_turn``. Split from
        :meth:`finish_step` so the vector env can batch retrieval.
        """
        if self._done:
            raise EpisodeOverError("step() called after the episode ended; call reset() first")
        if self._pending is not None:
            raise RuntimeError("begin_step() called twice without finish_step()")
        ids = self.check_action(action)
        end_reason: str | None
        if self.action_mode == "chunk":
            end_reason, consumed = self._push_chunk(np.asarray(ids))  # already an array here
        else:
            end_reason, consumed = self._push(int(ids[0])), 1
        info: dict[str, Any] = {"turn": self._turn_index, "turn_ended": end_reason is not None}
        if self.action_mode == "chunk":
            info["ignored_tokens"] = len(ids) - consumed
        queries: tuple[str, ...] = ()
        if end_reason is not None:
            queries = self._end_turn(end_reason, info)
        self._pending = PendingStep(queries, info)
        return queries

    def finish_step(
        self,
        results: Sequence[Sequence[Passage]] | Exception | None,
        retrieval_time: float = 0.0,
        *,
        lines: Sequence[Sequence[str]] | None = None,
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Append the information block for the pending queries and finish the step.

        ``results``: one passage list per pending query (or the retriever's exception).
        ``lines``: the same already formatted by ``document_lines`` (the vector env
        formats every sub-env's results at once to tokenize them in one batch).
        """
        pending = self._pending
        if pending is None:
            raise RuntimeError("finish_step() called without begin_step()")
        info = pending.info
        block: np.ndarray | None = None
        groups: list[str] = []
        if pending.queries:
            # Everything that can raise comes first: a raise leaves the step pending.
            if isinstance(results, Exception):
                if self.on_retrieval_error == "raise":
                    raise results
                flat = [f"Retrieval failed: {results}\n"]
            else:
                if results is None or len(results) != len(pending.queries):
                    raise ValueError(
                        "finish_step() needs one result list per pending query "
                        f"({len(pending.queries)})"
                    )
                if lines is None:
                    lines = [document_lines(r, self.protocol) for r in results]
                flat = self._grouped_lines(pending.queries, lines)
                groups = ["".join(group) for group in lines]
            block = self._information_ids(flat)
            info["retrieval_time"] = retrieval_time
            if isinstance(results, Exception):
                info["retrieval_error"] = str(results)
        self._pending = None
        if block is not None:
            self._append(block, agent=False)
            self._documents.extend(groups)
        reward = 0.0
        terminated = truncated = False
        if info.get("action") == "answer":
            terminated = True
        elif info.get("final_turn") or self._len >= self.protocol.max_prompt_length:
            truncated = True
        if terminated or truncated:
            self._done = True
            assert self._example is not None
            golds = self._example.golden_answers
            outcome = self._outcome(terminated)
            reward = self._pay(outcome)  # a raise here is undone by step() / the vector env
            info.update(
                answer=self._answer,
                golden_answers=list(golds),
                scores=score_all(self._answer, golds),
                reward_components=dict(outcome.components),
                question=self._example.question,
                index=self._index,
                searches=self._searches,
                queries=list(self._queries),
            )
        return self._obs(), reward, terminated, truncated, info

    def _grouped_lines(self, queries: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
        """The information block's lines: each query's documents under its header when a
        turn may hold several queries, the documents alone otherwise (Search-R1)."""
        if self.protocol.max_queries_per_turn == 1:
            return [line for group in lines for line in group]
        header = self.protocol.query_header
        out: list[str] = []
        for j, (query, group) in enumerate(zip(queries, lines), start=1):
            out.append(header.format(j=j, query=query))
            out.extend(group)
        return out

    # ---------------------------------------------------------------- rewards
    def _outcome(self, terminated: bool) -> EpisodeOutcome:
        """The finished episode as a reward function sees it, components filled in."""
        assert self._example is not None
        response = self.codec.decode(self._tokens[self._prompt_len : self._len].tolist())
        outcome = EpisodeOutcome(
            answer=self._answer,
            golden_answers=tuple(self._example.golden_answers),
            response=response,
            documents=tuple(self._documents),
            invalid_turns=self._invalid_turns,
            searches=self._searches,
            terminated=terminated,
            protocol=self.protocol,
        )
        return dataclasses.replace(outcome, components=reward_components(outcome))

    def _pay(self, outcome: EpisodeOutcome) -> float:
        """The episode's reward; a reward function that fails raises :class:`RewardError`."""
        fn = self.episode_reward_fn
        try:
            value = float(
                self.reward_fn(outcome.answer, outcome.golden_answers)
                if fn is None
                else fn(outcome)
            )
        except Exception as exc:
            # Never a silent 0: a broken reward would otherwise train on noise.
            raise RewardError(
                f"the reward function {fn or self.reward_fn!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not math.isfinite(value):
            raise RewardError(f"the reward function {fn or self.reward_fn!r} returned {value}")
        return value

    # ---------------------------------------------------------------- helpers
    def check_action(self, action: Any) -> Sequence[int] | np.ndarray:
        """The action's token ids; raise TypeError / ValueError for a bad action."""
        return check_action(action, self.action_mode, self.codec.vocab_size)

    # gym.Env declares render() -> RenderFrame | list[RenderFrame] | None with a TypeVar bound
    # to nothing, which no concrete return type can override.
    def render(self) -> str | None:  # type: ignore[override]
        if self.render_mode != "ansi":
            return None
        return self.tokenizer.decode(self.context_ids.tolist())
