"""Where a generated turn stops: the env's own byte-level tag scanner, token by token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents.policy.base import FinishReason
from search_env.codec import get_codec


class StopChecker:
    """Finds the token that completes a stop string, or a stop token id.

    Stop strings are matched on the bytes each token decodes to, with the same automaton
    the environment uses to find closing tags (``search_env.codec``), so a policy stops on
    exactly the token at which the env ends the turn, also when the tag is split across
    tokens or merged with neighbouring text.

    Args:
        tokenizer: a Hugging Face tokenizer.
        stop_strings: strings that end a turn (non-empty).
        stop_token_ids: ids that end a turn; ``None`` means the tokenizer's EOS.
        vocab_size: the model's vocabulary size when it exceeds ``len(tokenizer)``
            (ids past the tokenizer decode to no bytes).
    """

    def __init__(
        self,
        tokenizer: Any,
        stop_strings: Sequence[str],
        stop_token_ids: Sequence[int] | None = None,
        vocab_size: int | None = None,
    ) -> None:
        patterns = tuple(dict.fromkeys(s.encode("utf-8") for s in stop_strings))
        if any(not p for p in patterns):
            raise ValueError("stop strings must be non-empty")
        if stop_token_ids is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("stop_token_ids=None needs a tokenizer with an eos_token_id")
            stop_token_ids = [tokenizer.eos_token_id]
        self.stop_ids = frozenset(int(t) for t in stop_token_ids)
        self._codec = get_codec(tokenizer, vocab_size, stop_tags=patterns) if patterns else None

    def initial_state(self) -> int:
        """The scanner state before a turn's first token."""
        return 0

    def step(self, state: int, token_id: int) -> tuple[int, FinishReason | None]:
        """Feed one token; return the new state and why the turn stops here, if it does."""
        if token_id in self.stop_ids:
            return state, "eos"
        if self._codec is None or token_id >= len(self._codec.table):
            return state, None
        state, end = self._codec.scan(state, token_id)
        return state, ("stop" if end >= 0 else None)

    def first_stop(self, token_ids: Sequence[int]) -> tuple[int, FinishReason] | None:
        """Index of the first stopping token of a whole turn and its reason, or None."""
        state = self.initial_state()
        for i, tid in enumerate(token_ids):
            state, reason = self.step(state, int(tid))
            if reason is not None:
                return i, reason
        return None


class StopCheckers:
    """One :class:`StopChecker` per (stop strings, stop ids), built on first use (a policy
    is asked with the same stops turn after turn).

    Args:
        tokenizer: a Hugging Face tokenizer.
        vocab_size: the model's vocabulary size (see :class:`StopChecker`).
    """

    def __init__(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._cache: dict[tuple, StopChecker] = {}

    def get(
        self, stop_strings: Sequence[str], stop_token_ids: Sequence[int] | None = None
    ) -> StopChecker:
        """The checker of these stops."""
        key = (tuple(stop_strings), None if stop_token_ids is None else tuple(stop_token_ids))
        if key not in self._cache:
            self._cache[key] = StopChecker(
                self.tokenizer, stop_strings, stop_token_ids, self.vocab_size
            )
        return self._cache[key]
