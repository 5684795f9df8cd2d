"""Episode state of :class:`~search_env.env.SearchQAEnv`: the context, the turn, the undo.

`EpisodeState` is the env's base class holding what one episode is made of (the context
buffers, the question, the turn in progress, the searches so far) with the accessors
over it, and `snapshot` / `restore`: the undo a call that raises goes back through, and
the vector env uses to undo a whole batch. `get_state` / `set_state` are the public,
self-contained copy of the same (:class:`EnvState`), for tree-structured rollouts and
replay. How agent tokens change this state lives in
:mod:`search_env.env_turns`; the Gymnasium API in :mod:`search_env.env`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search_env.protocol import ProtocolConfig
from search_env.types import QAExample


@dataclass
class Turn:
    """Bookkeeping of the turn in progress."""

    tokens: int = 0
    scan_state: int = 0
    data: bytearray = field(default_factory=bytearray)
    cut: int = -1  # byte offset just past the closing tag, -1 while open
    search_closes: int = 0  # closing search tags seen (max_queries_per_turn > 1)


@dataclass
class PendingStep:
    """A step whose agent tokens are consumed, waiting (maybe) for retrieval."""

    queries: tuple[str, ...]
    """The turn's queries to retrieve for (empty: no search)."""
    info: dict[str, Any]


@dataclass(slots=True)
class EnvSnapshot:
    """What :meth:`EpisodeState.restore` needs to undo a call that raised.

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


@dataclass(frozen=True, eq=False)
class EnvState:
    """A self-contained copy of one env's episode: :meth:`EpisodeState.get_state`.

    For tree-structured rollouts (Tree-GRPO, arXiv 2509.21240: branch one episode into
    several continuations) and for replay. It owns its data (read-only arrays, bytes,
    tuples, a copy of the RNG state), so it can be set on the env any number of times,
    and the continuations after each never share a buffer. It holds the context and
    loss mask, the question, the turn in progress (bytes, tag-scanner state), the
    searches, queries, retrieved documents and invalid turns so far, and ``np_random``.
    The retriever is not part of it: a continuation after ``set_state`` queries the
    env's retriever as it is then, so it equals a fresh replay only while the
    retriever answers the same queries the same way (BM25 and flat dense indexes do).
    """

    protocol: ProtocolConfig
    """The protocol the state was taken under; ``set_state`` needs the same."""
    vocab_size: int
    tokens: np.ndarray
    """``(length,)`` int64, the context so far (read-only)."""
    mask: np.ndarray
    """``(length,)`` int8, its loss mask (read-only)."""
    example: QAExample | None
    index: int
    done: bool
    turn_index: int
    searches: int
    queries: tuple[str, ...]
    answer: str | None
    turn: tuple[int, int, bytes, int, int]
    """Turn in progress: (tokens, scan state, bytes so far, cut, closing search tags)."""
    prompt_len: int
    invalid_turns: int
    documents: tuple[str, ...]
    """The documents text of each information block so far."""
    rng: tuple[str, Mapping[str, Any], int | None] | None
    """``np_random`` as (bit-generator class name, its state, seed); None if not made."""

    @property
    def length(self) -> int:
        return len(self.tokens)


class EpisodeState:
    """The state of one episode, its accessors and its undo (a base of ``SearchQAEnv``).

    The context is ``_tokens[:_len]`` with ``_mask[:_len]`` (1 for agent tokens); the
    subclass sets ``protocol`` and ``copy_obs`` before calling `_init_episode_state`.
    """

    protocol: ProtocolConfig
    copy_obs: bool
    # gymnasium.Env's RNG, declared here because snapshot/restore save and put it back
    _np_random: np.random.Generator | None
    _np_random_seed: int | None

    def _init_episode_state(self) -> None:
        """Empty buffers of ``max_prompt_length`` and no episode running."""
        length = self.protocol.max_prompt_length
        self._tokens = np.zeros(length, np.int64)
        self._mask = np.zeros(length, np.int8)
        self._len = 0
        self._example: QAExample | None = None
        self._index = -1
        self._done = True
        self._pending: PendingStep | None = None
        self._turn_index = 0
        self._searches = 0
        self._queries: list[str] = []
        self._answer: str | None = None
        self._turn = Turn()
        self._prompt_len = 0
        self._invalid_turns = 0
        self._documents: list[str] = []

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
                turn.search_closes,
                self._prompt_len,
                self._invalid_turns,
                self._documents,
                len(self._documents),
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
            turn.search_closes,
            self._prompt_len,
            self._invalid_turns,
            documents,
            document_count,
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
        del documents[document_count:]
        self._documents = documents
        if snapshot.rng is not None:
            generator, state, seed = snapshot.rng
            if generator is not None:
                generator.bit_generator.state = state
            self._np_random, self._np_random_seed = generator, seed

    def get_state(self) -> EnvState:
        """A self-contained copy of the episode and ``np_random`` (see :class:`EnvState`).

        Cheap: the context up to its length, the turn's bytes and the RNG state are
        copied, nothing else. Raises RuntimeError between ``begin_step`` and
        ``finish_step`` (a search is pending: there is no consistent state to copy).
        """
        if self._pending is not None:
            raise RuntimeError(
                "get_state() called while a step is pending (begin_step without finish_step)"
            )
        tokens = self._tokens[: self._len].copy()
        mask = self._mask[: self._len].copy()
        tokens.flags.writeable = False
        mask.flags.writeable = False
        generator = self._np_random
        rng = None
        if generator is not None:
            bit = generator.bit_generator
            rng = (type(bit).__name__, copy.deepcopy(bit.state), self._np_random_seed)
        turn = self._turn
        return EnvState(
            protocol=self.protocol,
            vocab_size=self._state_vocab_size(),
            tokens=tokens,
            mask=mask,
            example=self._example,
            index=self._index,
            done=self._done,
            turn_index=self._turn_index,
            searches=self._searches,
            queries=tuple(self._queries),
            answer=self._answer,
            turn=(turn.tokens, turn.scan_state, bytes(turn.data), turn.cut, turn.search_closes),
            prompt_len=self._prompt_len,
            invalid_turns=self._invalid_turns,
            documents=tuple(self._documents),
            rng=rng,
        )

    def set_state(self, state: EnvState) -> None:
        """Put the env in ``state`` (from :meth:`get_state`, of this env or a twin).

        The env continues exactly as the one the state was taken from would have. The
        state is copied in, never shared, so it can be set again later. A bad state
        (another protocol or vocabulary, not an :class:`EnvState`) raises and changes
        nothing; so does a call while a step is pending.
        """
        if not isinstance(state, EnvState):
            raise TypeError(
                f"set_state() takes an EnvState from get_state(), got {type(state).__name__}"
            )
        if self._pending is not None:
            raise RuntimeError(
                "set_state() called while a step is pending (begin_step without finish_step)"
            )
        if state.protocol != self.protocol:
            raise ValueError("set_state(): the state was taken under another ProtocolConfig")
        if state.vocab_size != self._state_vocab_size():
            raise ValueError(
                f"set_state(): the state was taken with vocab_size={state.vocab_size}, "
                f"this env has {self._state_vocab_size()}"
            )
        generator = None
        if state.rng is not None:
            name, bit_state, _ = state.rng
            bit_type = getattr(np.random, name, None)
            if bit_type is None:
                raise ValueError(f"set_state(): unknown bit generator {name!r}")
            generator = np.random.Generator(bit_type())
            generator.bit_generator.state = copy.deepcopy(bit_state)
        # Nothing below can fail.
        length = state.length
        self._tokens[:length] = state.tokens
        self._mask[:length] = state.mask
        self._tokens[length:] = 0
        self._mask[length:] = 0
        self._len = length
        self._example, self._index, self._done = state.example, state.index, state.done
        self._turn_index, self._searches = state.turn_index, state.searches
        self._queries = list(state.queries)
        self._answer = state.answer
        tokens, scan_state, data, cut, closes = state.turn
        self._turn = Turn(tokens, scan_state, bytearray(data), cut, closes)
        self._prompt_len = state.prompt_len
        self._invalid_turns = state.invalid_turns
        self._documents = list(state.documents)
        self._np_random = generator
        self._np_random_seed = None if state.rng is None else state.rng[2]

    def _state_vocab_size(self) -> int:
        codec = getattr(self, "codec", None)
        return -1 if codec is None else len(codec.table)

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
