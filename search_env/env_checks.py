"""Construction and validation of :class:`~search_env.env.SearchQAEnv`: arguments, spaces,
actions and reset options.

Everything here raises a clear ``TypeError`` / ``ValueError`` for bad input before the
env changes anything; :mod:`search_env.vector` shares `check_options` and the env's
``check_action`` with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from search_env.codec import TokenCodec
from search_env.protocol import ProtocolConfig, protocol_preset
from search_env.types import QAExample


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


def check_arguments(
    dataset: Sequence[QAExample],
    retriever: Any,
    tokenizer: Any,
    *,
    action_mode: Any,
    protocol: Any,
    on_retrieval_error: Any,
    render_mode: Any,
    vocab_size: Any,
    protocol_overrides: Mapping[str, Any],
) -> ProtocolConfig:
    """Check the env's constructor arguments; return the protocol with the overrides."""
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
    if isinstance(protocol, str):
        protocol = protocol_preset(protocol)  # raises naming the presets
    if protocol is not None and not isinstance(protocol, ProtocolConfig):
        raise TypeError(
            f"protocol must be a ProtocolConfig or a preset name, got {type(protocol).__name__}"
        )
    check_tokenizer(tokenizer, vocab_size)
    protocol = protocol or ProtocolConfig()
    return dataclasses.replace(protocol, **protocol_overrides)


def make_spaces(vocab: int, length: int, action_mode: str) -> tuple[spaces.Space, spaces.Dict]:
    """The action space (one token id, or a chunk of them) and the observation space."""
    token_space: spaces.Discrete[np.int64] = spaces.Discrete(vocab)
    action_space = token_space if action_mode == "token" else ChunkSpace(token_space)
    observation_space = spaces.Dict(
        {
            "tokens": spaces.Box(0, vocab - 1, (length,), np.int64),
            "mask": spaces.Box(0, 1, (length,), np.int8),
            "length": spaces.Box(0, length, (1,), np.int64),
        }
    )
    return action_space, observation_space


def check_action(action: Any, action_mode: str, vocab: int) -> Sequence[int] | np.ndarray:
    """The action's token ids; raise TypeError / ValueError for a bad action."""
    if action_mode == "token":
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
            if isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu":
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


def check_tokenizer(tokenizer: Any, vocab_size: Any) -> None:
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
