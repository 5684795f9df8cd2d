"""Episode state of :class:`~search_env.env.SearchQAEnv`: the context, the turn, the undo.

`EpisodeState` is the env's base class holding what one episode is made of (the context
buffers, the question, the turn in progress, the searches so far) with the accessors
over it, and `snapshot` / `restore`: the undo a call that raises goes back through, and
the vector env uses to undo a whole batch. How agent tokens change this state lives in
:mod:`search_env.env_turns`; the Gymnasium API in :mod:`search_env.env`.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass
class PendingStep:
    """A step whose agent tokens are consumed, waiting (maybe) for retrieval."""

    query: str | None
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
