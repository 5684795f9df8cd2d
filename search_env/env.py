"""The token-level Search-R1 environment."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from search_env.codec import TokenCodec, get_codec
from search_env.protocol import ProtocolConfig, document_lines, parse_turn, prompt_text
from search_env.retrievers.base import Retriever
from search_env.rewards import make_reward, score_all
from search_env.types import Passage, QAExample

logger = logging.getLogger(__name__)

ActionMode = Literal["token", "chunk"]


class EpisodeOverError(RuntimeError):
    """``step()`` was called after the episode ended without a ``reset()``."""


@dataclass
class _Turn:
    """Bookkeeping of the turn in progress."""

    tokens: int = 0
    scan_state: int = 0
    data: bytearray = field(default_factory=bytearray)
    cut: int = -1  # byte offset just past the closing tag, -1 while open


@dataclass
class _PendingStep:
    """A step whose agent tokens are consumed, waiting (maybe) for retrieval."""

    query: str | None
    info: dict[str, Any]


@dataclass(slots=True)
class EnvSnapshot:
    """What :meth:`SearchQAEnv.restore` needs to undo a call that raised.

    Cheap by design (taken on every step, so the episode fields are one plain tuple):
    the turn's bytes and the query list only grow within an episode, so their lengths
    stand for their contents; the context is copied only when asked (``context=True``,
    before a reset rewrites it).
    """

    fields: tuple[Any, ...]
    """Context length, example, index, done, pending step, turn index, searches, query
    list and its length, answer, turn and its (tokens, scan state, data length, cut),
    prompt length."""
    rng: tuple[Any, Any, Any] | None = None
    """``np_random``, its bit-generator state and ``np_random_seed``."""
    tokens: np.ndarray | None = None
    mask: np.ndarray | None = None


class ChunkSpace(spaces.Sequence):
    """``Sequence(Discrete(vocab))`` without the empty sequence: a turn has a token at least.

    ``step`` rejects an empty chunk, so the space must not contain (or sample) one.
    """

    def contains(self, x: Any) -> bool:
        return isinstance(x, tuple) and len(x) > 0 and super().contains(x)

    def sample(self, mask: Any = None, probability: Any = None) -> tuple[Any, ...] | Any:
        for given in (mask, probability):
            if given is not None and given[0] is not None and np.any(np.asarray(given[0]) < 1):
                raise ValueError("a chunk has at least one token: its length must be >= 1")
        return super().sample(mask=mask, probability=probability)

    def __repr__(self) -> str:
        return f"ChunkSpace({self.feature_space})"


_RESET_OPTIONS = ("example", "index")


class SearchQAEnv(gym.Env[dict[str, np.ndarray], Any]):
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
    ``action_mode="chunk"``: :class:`ChunkSpace` (a ``Sequence(Discrete(vocab_size))`` of
    at least one token), one generated turn per step (token ids after the turn's first
    closing tag are ignored and counted in ``info["ignored_tokens"]``; a chunk that ends
    without a tag ends the turn).

    ## Observation Space
    ``Dict(tokens=Box(0, vocab-1, (max_prompt_length,), int64),
    mask=Box(0, 1, (max_prompt_length,), int8), length=Box(0, max_prompt_length, (1,), int64))``.
    Only the first ``length`` entries are meaningful; the rest are 0.

    ## Rewards
    At the episode end: the metric (EM by default, or F1 / cover-EM) of the answer the
    agent wrote against the gold answers, or ``format_score`` for a wrong answer. 0 on
    every other step and when no answer was given.

    ## Starting State
    A question drawn with ``self.np_random`` (or ``options={"index": i}``).

    ## Failures
    A call that raises changes nothing: a bad action or reset option, a prompt that
    does not fit, or a retriever failure with ``on_retrieval_error="raise"`` leaves the
    episode, the context and ``np_random`` as they were, so the same call can be retried
    (once the server is back up, say) as if it had never failed.

    ## Episode End
    ``terminated`` when the agent answers. ``truncated`` after ``max_turns`` search turns
    plus one final turn without an answer, or when the context reaches
    ``max_prompt_length`` tokens.

    ## Arguments
    ``dataset`` (QA examples), ``retriever`` (a ``Retriever``), ``tokenizer`` (a Hugging
    Face tokenizer), ``action_mode``, ``reward_metric``, ``format_score``, ``protocol``
    (a ``ProtocolConfig``) and any ``ProtocolConfig`` field as a keyword (``topk=5``),
    ``eos_token_ids``, ``vocab_size`` (defaults to ``len(tokenizer)``; pass the model's
    embedding size to accept its unused ids), ``on_retrieval_error`` (``"raise"`` or
    ``"observe"``: show the error as the information block and flag it in ``info``).

    ## Info
    Every step: ``turn`` (turns completed), ``turn_ended``. When a turn ends, also
    ``action`` (``search``/``answer``/``invalid``), ``end_reason`` (``tag``, ``eos``,
    ``budget``, ``chunk_end``, ``context``), ``searches``, ``query``,
    ``query_truncated``, ``tag_count``, ``retrieval_time``, ``ignored_tokens`` (chunk
    mode). When the episode ends, also ``answer``, ``golden_answers``, ``scores`` (every
    metric), ``question``, ``index``.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        dataset: Sequence[QAExample],
        retriever: Retriever,
        tokenizer: Any,
        *,
        action_mode: ActionMode = "token",
        protocol: ProtocolConfig | None = None,
        reward_metric: str = "em",
        format_score: float = 0.0,
        eos_token_ids: Sequence[int] | None = None,
        vocab_size: int | None = None,
        on_retrieval_error: Literal["raise", "observe"] = "raise",
        copy_obs: bool = True,
        render_mode: str | None = None,
        **protocol_overrides: Any,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        if action_mode not in ("token", "chunk"):
            raise ValueError(f"action_mode must be 'token' or 'chunk', got {action_mode!r}")
        if on_retrieval_error not in ("raise", "observe"):
            raise ValueError("on_retrieval_error must be 'raise' or 'observe'")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        if not callable(getattr(retriever, "search", None)):
            raise TypeError(f"retriever must have a search(queries, k) method, got {retriever!r}")
        unknown = set(protocol_overrides) - {f.name for f in dataclasses.fields(ProtocolConfig)}
        if unknown:
            raise TypeError(f"unknown SearchQAEnv arguments: {sorted(unknown)}")
        if protocol is not None and not isinstance(protocol, ProtocolConfig):
            raise TypeError(f"protocol must be a ProtocolConfig, got {type(protocol).__name__}")
        _check_tokenizer(tokenizer, vocab_size)
        protocol = protocol or ProtocolConfig()
        self.protocol = dataclasses.replace(protocol, **protocol_overrides)
        self.dataset = dataset
        self.retriever = retriever
        self.codec: TokenCodec = get_codec(tokenizer, vocab_size, eos_token_ids)
        self.tokenizer = self.codec.tokenizer
        self.action_mode = action_mode
        self.reward_metric = reward_metric
        self.reward_fn = make_reward(reward_metric, format_score)
        self.on_retrieval_error = on_retrieval_error
        self.copy_obs = copy_obs
        self.render_mode = render_mode

        vocab = self.codec.vocab_size
        length = self.protocol.max_prompt_length
        token_space: spaces.Discrete[np.int64] = spaces.Discrete(vocab)
        self.action_space = token_space if action_mode == "token" else ChunkSpace(token_space)
        self.observation_space = spaces.Dict(
            {
                "tokens": spaces.Box(0, vocab - 1, (length,), np.int64),
                "mask": spaces.Box(0, 1, (length,), np.int8),
                "length": spaces.Box(0, length, (1,), np.int64),
            }
        )
        self._tokens = np.zeros(length, np.int64)
        self._mask = np.zeros(length, np.int8)
        self._len = 0
        self._invalid_ids = self.codec.encode(self.protocol.invalid_message)
        head, _, tail = self.protocol.information_format.partition("{docs}")
        self._info_head, self._info_tail = head, tail
        self._example: QAExample | None = None
        self._index = -1
        self._done = True
        self._pending: _PendingStep | None = None
        self._turn_index = 0
        self._searches = 0
        self._queries: list[str] = []
        self._answer: str | None = None
        self._turn = _Turn()
        self._prompt_len = 0

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
        self._turn = _Turn()
        self._done = False
        self._pending = None
        self._prompt_len = len(prompt_ids)
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
            query = self.begin_step(action)
            if query is None:
                return self.finish_step(None)
            start = time.perf_counter()
            try:
                results: list[Passage] | Exception = self.retriever.search(
                    [query], self.protocol.topk
                )[0]
            except Exception as exc:  # flagged or re-raised by finish_step
                results = exc
            return self.finish_step(results, time.perf_counter() - start)
        except BaseException:
            self.restore(snapshot)  # so the same action can be retried
            raise

    def begin_step(self, action: Any) -> str | None:
        """Consume the agent's tokens; return the query to retrieve for, if any.

        Split from :meth:`finish_step` so the vector env can batch retrieval.
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
        query = None
        if end_reason is not None:
            query = self._end_turn(end_reason, info)
        self._pending = _PendingStep(query, info)
        return query

    def finish_step(
        self,
        results: Sequence[Passage] | Exception | None,
        retrieval_time: float = 0.0,
        *,
        lines: Sequence[str] | None = None,
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Append the information block for a pending search and finish the step.

        ``lines``: the results already formatted by ``document_lines`` (the vector env
        formats every sub-env's results at once to tokenize them in one batch).
        """
        pending = self._pending
        if pending is None:
            raise RuntimeError("finish_step() called without begin_step()")
        info = pending.info
        block: np.ndarray | None = None
        if pending.query is not None:
            # Everything that can raise comes first: a raise leaves the step pending.
            if isinstance(results, Exception):
                if self.on_retrieval_error == "raise":
                    raise results
                lines = [f"Retrieval failed: {results}\n"]
            elif results is None:
                raise ValueError("finish_step() needs the retrieval results of the pending query")
            elif lines is None:
                lines = document_lines(results, self.protocol)
            block = self._information_ids(lines)
            info["retrieval_time"] = retrieval_time
            if isinstance(results, Exception):
                info["retrieval_error"] = str(results)
        self._pending = None
        if block is not None:
            self._append(block, agent=False)
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
            reward = float(self.reward_fn(self._answer, golds))
            info.update(
                answer=self._answer,
                golden_answers=list(golds),
                scores=score_all(self._answer, golds),
                question=self._example.question,
                index=self._index,
                searches=self._searches,
                queries=list(self._queries),
            )
        return self._obs(), reward, terminated, truncated, info

    # ---------------------------------------------------------------- helpers
    def check_action(self, action: Any) -> Sequence[int] | np.ndarray:
        """The action's token ids; raise TypeError / ValueError for a bad action."""
        vocab = self.codec.vocab_size
        if self.action_mode == "token":
            if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
                if (
                    isinstance(action, np.ndarray)
                    and action.shape == ()
                    and action.dtype.kind in "iu"
                ):
                    action = int(action)
                else:
                    raise TypeError(
                        f"token mode takes one integer token id, got {type(action).__name__}"
                    )
            if not 0 <= action < vocab:
                raise ValueError(f"token id {action} out of range [0, {vocab})")
            return (int(action),)
        arr = np.asarray(action)
        if arr.dtype == object:
            raise TypeError("token ids must be integers")
        if arr.ndim != 1:
            raise ValueError(f"chunk mode takes a 1-D sequence of token ids, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError("chunk mode takes at least one token id per step")
        if arr.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} out of range [0, {vocab})")
        return arr.astype(np.int64, copy=False)

    def _push(self, tid: int) -> str | None:
        """Add one agent token; return why the turn ended, or None."""
        self._tokens[self._len] = tid
        self._mask[self._len] = 1
        self._len += 1
        turn = self._turn
        turn.tokens += 1
        codec = self.codec
        if tid in codec.eos_ids:
            return "eos"
        data = codec.table[tid]
        if data:
            turn.scan_state, end = codec.scan(turn.scan_state, tid)
            if end >= 0:
                turn.cut = len(turn.data) + end
                turn.data += data
                return "tag"
            turn.data += data
        if turn.tokens >= self.protocol.max_response_length:
            return "budget"
        if self._len >= self.protocol.max_prompt_length:
            return "context"
        return None

    def _push_chunk(self, ids: np.ndarray) -> tuple[str, int]:
        """Add one whole turn at once: the same outcome as :meth:`_push` token by token.

        A chunk is always a complete turn, so the scan starts fresh: find where the turn
        ends (first closing tag, EOS, turn budget or context limit) with bytes.find and
        numpy instead of a Python loop over tokens.
        """
        codec = self.codec
        budget = self.protocol.max_response_length
        room = self.protocol.max_prompt_length - self._len
        limit = min(len(ids), budget, room)
        head = ids[:limit].tolist()
        ends: list[tuple[int, int, str]] = []  # (token index, priority, reason)
        eos_at = [head.index(e) for e in codec.eos_ids if e in head]
        if eos_at:
            ends.append((min(eos_at), 0, "eos"))
            head = head[: min(eos_at) + 1]
        table = codec.table
        pieces = [table[t] for t in head]
        data = b"".join(pieces)
        cut = -1
        for tag in codec.scanner.patterns:
            pos = data.find(tag)
            if pos >= 0 and (cut < 0 or pos + len(tag) < cut):
                cut = pos + len(tag)
        if cut >= 0:
            seen = 0
            for index, piece in enumerate(pieces):
                seen += len(piece)
                if seen >= cut:
                    break
            ends.append((index, 0, "tag"))
        if limit == budget:
            ends.append((limit - 1, 1, "budget"))
        if limit == room:
            ends.append((limit - 1, 2, "context"))
        index, _, reason = min(ends) if ends else (len(ids) - 1, 3, "chunk_end")
        used = index + 1
        self._tokens[self._len : self._len + used] = ids[:used]
        self._mask[self._len : self._len + used] = 1
        self._len += used
        turn = self._turn
        turn.tokens += used
        turn.data += data if used == len(pieces) else b"".join(pieces[:used])
        turn.cut = cut if reason == "tag" else -1
        return reason, used

    def _end_turn(self, reason: str, info: dict[str, Any]) -> str | None:
        """Parse the finished turn, record it in ``info``; return a query to run."""
        turn = self._turn
        data = turn.data if turn.cut < 0 else turn.data[: turn.cut]
        parsed = parse_turn(bytes(data).decode("utf-8", errors="replace"))
        final_turn = self._turn_index >= self.protocol.max_turns
        self._turn_index += 1
        info.update(
            turn=self._turn_index,
            action=parsed.kind,
            end_reason=reason,
            tag_count=parsed.tag_count,
            final_turn=final_turn,
        )
        query = None
        if parsed.kind == "answer":
            self._answer = parsed.content
        elif parsed.kind == "search":
            assert parsed.content is not None
            query = parsed.content
            info["query_truncated"] = len(query) > self.protocol.max_query_chars
            query = query[: self.protocol.max_query_chars]
            info["query"] = query
            if final_turn or self._len >= self.protocol.max_prompt_length:
                info["search_skipped"] = True
                query = None
            else:
                self._searches += 1
                self._queries.append(query)
        elif not final_turn and self._len < self.protocol.max_prompt_length:
            self._append(self._invalid_ids, agent=False)
        info["searches"] = self._searches
        self._turn = _Turn()
        return query

    def _information_ids(self, lines: Sequence[str]) -> np.ndarray:
        """Token ids of an information block, cut to ``max_obs_length`` keeping its closing tag.

        The head, each document line and the tail are tokenized separately (and cached by
        the codec), so the ids can differ from tokenizing the block as one string at the
        seams; they are environment tokens, never re-tokenized, so only consistency matters.
        """
        head, *docs, tail = self.codec.encode_pieces([self._info_head, *lines, self._info_tail])
        body = np.concatenate([head, *docs]) if docs else head
        budget = min(self.protocol.max_obs_length, self.protocol.max_prompt_length - self._len)
        if len(body) + len(tail) <= budget:
            return np.concatenate([body, tail])
        keep = max(budget - len(tail), 0)
        return np.concatenate([body[:keep], tail[:budget]])

    def _append(self, ids: Sequence[int] | np.ndarray, agent: bool) -> None:
        n = min(len(ids), self.protocol.max_prompt_length - self._len)
        self._tokens[self._len : self._len + n] = ids[:n]
        self._mask[self._len : self._len + n] = 1 if agent else 0
        self._len += n

    def _obs(self) -> dict[str, np.ndarray]:
        if self.copy_obs:
            return {
                "tokens": self._tokens.copy(),
                "mask": self._mask.copy(),
                "length": np.array([self._len], np.int64),
            }
        return {
            "tokens": self._tokens,
            "mask": self._mask,
            "length": np.array([self._len], np.int64),
        }

    def snapshot(self, *, context: bool = False, rng: bool = False) -> EnvSnapshot:
        """The state a call that raises must go back to (see :meth:`restore`).

        Steps only append to the context, so ``context=False`` is enough for them;
        ``context=True`` copies it (before a reset), ``rng=True`` saves ``np_random``.
        """
        turn = self._turn
        snapshot = EnvSnapshot(
            (
                self._len,
                self._example,
                self._index,
                self._done,
                self._pending,
                self._turn_index,
                self._searches,
                self._queries,
                len(self._queries),
                self._answer,
                turn,
                turn.tokens,
                turn.scan_state,
                len(turn.data),
                turn.cut,
                self._prompt_len,
            )
        )
        if rng:
            generator = self._np_random
            state = None if generator is None else generator.bit_generator.state
            snapshot.rng = (generator, state, self._np_random_seed)
        if context:
            snapshot.tokens = self._tokens[: self._len].copy()
            snapshot.mask = self._mask[: self._len].copy()
        return snapshot

    def restore(self, snapshot: EnvSnapshot) -> None:
        """Go back to ``snapshot``; later snapshots must be restored first (an undo stack)."""
        (
            length,
            self._example,
            self._index,
            self._done,
            self._pending,
            self._turn_index,
            self._searches,
            queries,
            query_count,
            self._answer,
            turn,
            turn.tokens,
            turn.scan_state,
            data_len,
            turn.cut,
            self._prompt_len,
        ) = snapshot.fields
        if snapshot.tokens is not None and snapshot.mask is not None:
            self._tokens[: len(snapshot.tokens)] = snapshot.tokens
            self._mask[: len(snapshot.mask)] = snapshot.mask
        self._tokens[length:] = 0  # tokens written after the snapshot
        self._mask[length:] = 0
        self._len = length
        del queries[query_count:]
        self._queries = queries
        del turn.data[data_len:]
        self._turn = turn
        if snapshot.rng is not None:
            generator, state, seed = snapshot.rng
            if generator is not None:
                generator.bit_generator.state = state
            self._np_random, self._np_random_seed = generator, seed

    def bind_buffers(self, tokens: np.ndarray, mask: np.ndarray) -> None:
        """Write the context into caller-owned arrays (the vector env's batch rows).

        Observations then are views of those arrays, not copies.
        """
        length = self.protocol.max_prompt_length
        if tokens.shape != (length,) or mask.shape != (length,):
            raise ValueError(f"buffers must have shape ({length},)")
        if tokens.dtype != np.int64 or mask.dtype != np.int8:
            raise ValueError("buffers must be int64 (tokens) and int8 (mask)")
        tokens[: self._len] = self._tokens[: self._len]
        mask[: self._len] = self._mask[: self._len]
        self._tokens, self._mask, self.copy_obs = tokens, mask, False

    @property
    def context_length(self) -> int:
        return self._len

    # ------------------------------------------------------------- accessors
    @property
    def context_ids(self) -> np.ndarray:
        """The context so far (a copy), prompt included."""
        return self._tokens[: self._len].copy()

    @property
    def loss_mask(self) -> np.ndarray:
        """1 for agent tokens, 0 for environment tokens (a copy)."""
        return self._mask[: self._len].copy()

    @property
    def example(self) -> QAExample | None:
        return self._example

    @property
    def done(self) -> bool:
        return self._done

    # gym.Env declares render() -> RenderFrame | list[RenderFrame] | None with a TypeVar bound
    # to nothing, which no concrete return type can override.
    def render(self) -> str | None:  # type: ignore[override]
        if self.render_mode != "ansi":
            return None
        return self.tokenizer.decode(self.context_ids.tolist())


def check_options(options: Any, accepted: Sequence[str]) -> dict[str, Any]:
    """``options`` as a dict; raise for a non-mapping or an unknown key."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping (a dict), got {type(options).__name__}")
    unknown = sorted(set(options) - set(accepted), key=str)
    if unknown:
        raise ValueError(
            f"unknown reset option(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(map(repr, sorted(accepted)))}"
        )
    return dict(options)


def _check_tokenizer(tokenizer: Any, vocab_size: Any) -> None:
    """Fail at construction for what would otherwise fail mid-episode."""
    if isinstance(tokenizer, TokenCodec):
        tokenizer = tokenizer.tokenizer
    needed = ("encode", "convert_ids_to_tokens", "decode", "__len__", "__call__")
    if isinstance(tokenizer, (str, bytes)) or not all(hasattr(tokenizer, a) for a in needed):
        hint = " (load it first: search_env.registration.load_tokenizer or gym.make accept a name)"
        raise TypeError(
            "tokenizer must be a Hugging Face tokenizer (encode, convert_ids_to_tokens, "
            f"decode, len) or a TokenCodec, got {type(tokenizer).__name__}"
            + (hint if isinstance(tokenizer, str) else "")
        )
    if vocab_size is None:
        return
    if isinstance(vocab_size, (bool, np.bool_)) or not isinstance(vocab_size, (int, np.integer)):
        raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
    if vocab_size < len(tokenizer):
        raise ValueError(
            f"vocab_size={vocab_size} is below the tokenizer's size {len(tokenizer)}: "
            "its ids would fall outside the action space"
        )
