"""A :class:`~agents.policy.base.Policy` on a ``transformers`` causal LM: the reference back end.

Sampling is a hand-written loop over a KV cache rather than ``model.generate``: it
records the exact log-prob of every sampled token under the distribution it was drawn
from, and no ``generation_config`` default (top-k, top-p, repetition penalty) can slip
into the sampling distribution unseen.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from agents.losses import entropy_from_logits, logprobs_from_logits
from agents.policy.base import DEFAULT_STOP_STRINGS, FinishReason, Generation
from agents.policy.stopping import StopCheckers


def _forward_kwargs(model: Any) -> tuple[str, str | None]:
    """The ``forward()`` keywords for the KV cache and for computing only the last logits.

    They were renamed across transformers releases: ``past_key_values`` -> ``cache``,
    ``num_logits_to_keep`` -> ``logits_to_keep``.
    """
    params = inspect.signature(model.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return cache, keep


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left and right padding give the same result."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class HFPolicy:
    """Samples turns from a Hugging Face causal LM and scores token sequences with it.

    The policy samples from the very model object that is trained, so
    :meth:`update_weights` has nothing to do unless handed another model's weights.

    Args:
        model: a ``transformers`` causal LM (e.g. ``Qwen2ForCausalLM``).
        tokenizer: its tokenizer (for the pad / EOS ids and stop strings).
        device: where the model runs; it is moved there.
        seed: seed of the sampling generator (None: nondeterministic).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str | torch.device = "cpu",
        *,
        seed: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer needs a pad_token_id or an eos_token_id")
        self.pad_id = int(pad)
        self.generator = torch.Generator(device=self.device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self._stops = StopCheckers(self.tokenizer, self.vocab_size)
        self._cache_kwarg, self._keep_kwarg = _forward_kwargs(model)

    # -------------------------------------------------------------- sampling
    @torch.inference_mode()
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
        """Continue each context by one turn (see :meth:`agents.policy.base.Policy.generate`).

        The batch is left-padded; positions count real tokens only, so every row is
        computed as if it were alone. Log-probs are ``log_softmax(logits / temperature)``
        of the chosen token, in fp32.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (greedy=True for argmax), got {temperature}")
        n = len(prompts)
        if n == 0:
            return []
        limits = np.broadcast_to(np.asarray(max_new_tokens, dtype=np.int64), (n,))
        if limits.min() < 1:
            raise ValueError("max_new_tokens must be >= 1 for every prompt")
        rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
        if any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        checker = self._stops.get(stop_strings, stop_token_ids)

        width = max(len(r) for r in rows)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r) :] = torch.from_numpy(r)
            attention[i, width - len(r) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = _position_ids(attention)

        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                # The prompt's logits are not needed, only the next token's: skip (B, P, V).
                **({self._keep_kwarg: 1} if self._keep_kwarg else {}),
            )
            tokens: list[list[int]] = [[] for _ in range(n)]
            logps: list[list[float]] = [[] for _ in range(n)]
            reasons: list[FinishReason | None] = [None] * n
            states = [checker.initial_state()] * n
            for _ in range(int(limits.max())):
                logits = out.logits[:, -1, :].float()  # (n, V)
                logp_all = torch.log_softmax(logits / temperature, dim=-1)
                if greedy:
                    chosen = logits.argmax(-1)
                else:
                    probs = logp_all.exp()
                    chosen = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
                chosen_logp = logp_all.gather(-1, chosen[:, None]).squeeze(-1)
                ids_np, lp_np = chosen.cpu().numpy(), chosen_logp.cpu().numpy()
                for i in range(n):
                    if reasons[i] is not None:
                        continue
                    tid = int(ids_np[i])
                    tokens[i].append(tid)
                    logps[i].append(float(lp_np[i]))
                    states[i], reason = checker.step(states[i], tid)
                    if reason is None and len(tokens[i]) >= limits[i]:
                        reason = "length"
                    reasons[i] = reason
                if all(r is not None for r in reasons):
                    break
                # Finished rows keep decoding (their tokens are discarded): simpler than
                # shrinking the cache, and the batch is only as slow as its longest row.
                attention = torch.cat([attention, attention.new_ones((n, 1))], dim=1)
                positions = positions[:, -1:] + 1
                out = self.model(
                    input_ids=chosen[:, None],
                    attention_mask=attention,
                    position_ids=positions,
                    use_cache=True,
                    **{self._cache_kwarg: _output_cache(out)},
                )
        finally:
            self.model.train(was_training)
        return [
            Generation(np.asarray(t, np.int64), np.asarray(lp, np.float32), r or "length")
            for t, lp, r in zip(tokens, logps, reasons)
        ]

    # --------------------------------------------------------------- scoring
    def _next_token_logits(
        self, input_ids: Any, attention_mask: Any, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ids, real, logits)``: ``logits[:, t]`` (fp32, divided by the temperature)
        predicts ``ids[:, t + 1]``, shape ``(B, T - 1, V)``; ``real`` marks non-padding."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        mask = torch.as_tensor(attention_mask, device=self.device).long()
        if ids.dim() != 2 or ids.shape != mask.shape:
            raise ValueError(
                "input_ids and attention_mask must share one (B, T) shape, got "
                f"{tuple(ids.shape)} and {tuple(mask.shape)}"
            )
        positions = _position_ids(mask)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        return ids, mask != 0, logits[:, :-1].float() / temperature

    @staticmethod
    def _align(per_token: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Shift ``(B, T - 1)`` next-token values onto the tokens they score; 0 at padding."""
        zero = per_token.new_zeros((per_token.shape[0], 1))
        return torch.where(real, torch.cat([zero, per_token], dim=1), 0.0)

    def logprobs(
        self, input_ids: Any, attention_mask: Any, *, temperature: float = 1.0
    ) -> torch.Tensor:
        """Log-probs of every token given the ones before it, with gradients (for the update).

        Args:
            input_ids: ``# (B, T)`` token ids (left or right padded).
            attention_mask: ``# (B, T)``, 1 at real tokens.
            temperature: divide the logits by it, as at sampling time.

        Returns:
            ``# (B, T)`` fp32, aligned with ``input_ids`` like
            :attr:`agents.rollout.Batch.old_logprobs`: entry ``t`` is
            ``log softmax(z_{t-1} / T)[input_ids[t]]``; 0 at position 0 and at padding.
        """
        ids, real, logits = self._next_token_logits(input_ids, attention_mask, temperature)
        return self._align(logprobs_from_logits(logits, ids[:, 1:]), real)

    def logprobs_and_entropy(
        self, input_ids: Any, attention_mask: Any, *, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`logprobs` plus the entropy of the distribution each token was drawn from."""
        ids, real, logits = self._next_token_logits(input_ids, attention_mask, temperature)
        lp = self._align(logprobs_from_logits(logits, ids[:, 1:]), real)
        return lp, self._align(entropy_from_logits(logits), real)

    def seed(self, seed: int) -> None:
        """Reseed the sampler (:attr:`generator`)."""
        self.generator.manual_seed(seed)

    # --------------------------------------------------------------- weights
    def update_weights(self, state_dict: dict | None = None) -> None:
        """Load weights into the sampling model; a no-op when they already are its own.

        The vLLM back end implements this hook to push trained weights to its engine.
        """
        if not state_dict:
            return
        own = self.model.state_dict()
        if all(k in own and own[k].data_ptr() == v.data_ptr() for k, v in state_dict.items()):
            return
        self.model.load_state_dict(state_dict)
