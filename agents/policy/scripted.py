"""A :class:`~agents.policy.base.Policy` made from a function of the context text.

For tests and baselines: ``respond(context_text) -> turn_text``; the turn is tokenized
and returned with made-up log-probs, so rollouts can be checked without a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agents.policy.base import DEFAULT_STOP_STRINGS, FinishReason, Generation
from agents.policy.stopping import StopChecker


def default_logprobs(token_ids: np.ndarray) -> np.ndarray:
    """Made-up log-probs that depend on the token id, so misalignment shows in tests."""
    return (-0.001 * (np.asarray(token_ids, dtype=np.float64) + 1.0)).astype(np.float32)


class ScriptedPolicy:
    """Writes ``respond(decoded context)`` as its next turn.

    Args:
        tokenizer: encodes the turn (no special tokens added) and decodes the context.
        respond: the script, ``context text -> turn text``.
        logprob_fn: ``token ids -> log-probs`` of a turn (default :func:`default_logprobs`).
        trim: cut the turn after the first stop (as a real policy does); False keeps
            everything the script wrote, to exercise the env's ``ignored_tokens``.

    Attributes:
        calls: every ``generate`` call's generations, in order.
    """

    def __init__(
        self,
        tokenizer: Any,
        respond: Callable[[str], str],
        *,
        logprob_fn: Callable[[np.ndarray], np.ndarray] = default_logprobs,
        trim: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.respond = respond
        self.logprob_fn = logprob_fn
        self.trim = trim
        self.calls: list[list[Generation]] = []

    def generate(
        self,
        prompts: Sequence[np.ndarray],
        max_new_tokens: int | Sequence[int],
        *,
        stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
        stop_token_ids: Sequence[int] | None = None,
        temperature: float = 1.0,
        greedy: bool = False,
    ) -> list[Generation]:
        limits = np.broadcast_to(np.asarray(max_new_tokens, dtype=np.int64), (len(prompts),))
        checker = StopChecker(self.tokenizer, stop_strings, stop_token_ids)
        out = []
        for prompt, limit in zip(prompts, limits):
            text = self.respond(self.tokenizer.decode(np.asarray(prompt).tolist()))
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            ids = np.asarray(ids, np.int64)[:limit]
            if len(ids) == 0:
                ids = np.asarray([next(iter(checker.stop_ids))], np.int64)
            stop = checker.first_stop(ids)
            reason: FinishReason = "length"
            if stop is not None:
                reason = stop[1]
                if self.trim:
                    ids = ids[: stop[0] + 1]
            out.append(Generation(ids, self.logprob_fn(ids), reason))
        self.calls.append(out)
        return out

    def seed(self, seed: int) -> None:
        """Nothing to seed: the script is deterministic."""

    def update_weights(self, state_dict: dict | None = None) -> None:
        """Nothing to update."""
