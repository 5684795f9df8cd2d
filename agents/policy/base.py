"""The contract between the rollout loop and whatever generates the agent's turns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from search_env.protocol import STOP_STRINGS

FinishReason = Literal["stop", "eos", "length"]

DEFAULT_STOP_STRINGS: tuple[str, ...] = STOP_STRINGS
"""The Search-R1 closing tags (``search_env.protocol.STOP_STRINGS``): a turn ends with the first."""


@dataclass(frozen=True, eq=False)
class Generation:
    """One generated turn.

    Attributes:
        token_ids: the generated ids ``# (N,)`` int64, ending with the stop token (the
            one that completes a stop string, or the EOS id) when there is one; nothing
            after it.
        logprobs: ``# (N,)`` float32, ``logprobs[i] = log softmax(z_i / T)[token_ids[i]]``
            where ``z_i`` are the model's logits for position ``i`` and ``T`` the
            ``temperature`` of the call: the log-probability under the distribution the
            token was sampled from (no top-k / top-p truncation). With ``greedy=True``
            the token is the argmax and the log-prob is still taken at temperature ``T``.
        finish_reason: ``"stop"`` (a stop string), ``"eos"`` (a stop token id) or
            ``"length"`` (``max_new_tokens`` reached).
    """

    token_ids: np.ndarray
    logprobs: np.ndarray
    finish_reason: FinishReason

    def __post_init__(self) -> None:
        ids = np.asarray(self.token_ids, dtype=np.int64)
        lps = np.asarray(self.logprobs, dtype=np.float32)
        if ids.ndim != 1 or ids.shape != lps.shape:
            raise ValueError(
                f"token_ids and logprobs must be 1-D of one length, got {ids.shape} and {lps.shape}"
            )
        object.__setattr__(self, "token_ids", ids)
        object.__setattr__(self, "logprobs", lps)

    def __len__(self) -> int:
        return len(self.token_ids)


@runtime_checkable
class Policy(Protocol):
    """Anything that continues a batch of token contexts by one turn each.

    Back ends: :class:`agents.policy.hf.HFPolicy` (transformers), a vLLM engine, a
    scripted policy in tests.
    """

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
        """Continue each context until a stop string, a stop token or the length limit.

        Args:
            prompts: full context token ids of each sequence (int arrays, unpadded).
            max_new_tokens: the limit, for all sequences or one per sequence (each >= 1).
            stop_strings: stop after the token that completes any of these (matched on
                the decoded bytes, also across token boundaries).
            stop_token_ids: stop after any of these ids; ``None`` means the tokenizer's
                EOS.
            temperature: sampling temperature (> 0).
            greedy: take the argmax instead of sampling.

        Returns:
            One :class:`Generation` per prompt, in order, each with at least one token.
        """
        ...

    def update_weights(self, state_dict: dict) -> None:
        """Load new policy weights (a no-op where the policy shares the trained model).

        A policy with its own copy (vLLM) also takes a stream of ``(name, tensor)``
        pairs, which :func:`sync_weights` hands it for a sharded model."""
        ...

    def seed(self, seed: int) -> None:
        """Reseed the sampler, so the next ``generate`` calls draw the same tokens again."""
        ...


def samples_from(policy: Any, model: Any) -> bool:
    """Whether ``policy`` samples from ``model`` itself (``HFPolicy`` on the trained model),
    rather than from a copy of its weights (vLLM)."""
    return getattr(policy, "model", None) is model


def sync_weights(policy: Policy, model: Any) -> None:
    """Push the trained ``model``'s weights to ``policy`` after an update.

    A policy that samples from ``model`` itself has nothing to load. One with its own
    copy (vLLM), asleep since :func:`sleep_sampler`, is woken by the push and gets
    Hugging Face-named weights: a LoRA model's with the adapters merged in
    (:func:`agents.lora.merged_state_dict`); an FSDP-sharded model's (under
    ``torchrun``, every rank calls this) as a stream of full tensors gathered one at a
    time and cast to the engine's dtype first (:func:`agents.distributed.iter_full_state`),
    never a whole state dict at once.
    """
    if samples_from(policy, model):
        return
    from agents.distributed.fsdp import is_sharded

    if is_sharded(model):
        from agents.distributed.gather import iter_full_state

        dtype = getattr(policy, "weight_dtype", None)
        policy.update_weights(iter_full_state(model, dtype=dtype))  # type: ignore[arg-type]
        return
    from agents.lora import merged_state_dict

    policy.update_weights(merged_state_dict(model))


def sleep_sampler(policy: Any) -> bool:
    """Let a sampler with its own copy of the weights free its memory for the update
    (vLLM's sleep mode, where it is on); the next :func:`sync_weights` wakes it. Returns
    whether it slept (False for any other policy)."""
    sleep = getattr(policy, "sleep", None)
    return bool(sleep()) if callable(sleep) else False
