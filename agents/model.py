"""The policy model: loading it, its frozen reference copy, PPO's value head, and the
per-token forward pass (log-probs, entropy and values of every token given its prefix)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agents.config import ModelConfig
from agents.losses import entropy_from_logits, logprobs_from_logits, upcast

logger = logging.getLogger(__name__)


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def load_model(cfg: ModelConfig, env_tokenizer: Any) -> tuple[nn.Module, Any]:
    """The policy model and its tokenizer.

    ``path="tiny"`` builds a random-init Qwen2 on ``env_tokenizer``; otherwise the model
    and tokenizer are loaded from ``path``.
    """
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    if cfg.path == "tiny":
        from agents.tiny_model import make_tiny_qwen2

        model = make_tiny_qwen2(
            env_tokenizer,
            hidden_size=cfg.hidden_size,
            layers=cfg.layers,
            heads=cfg.heads,
            kv_heads=cfg.kv_heads,
            intermediate=cfg.intermediate,
            max_positions=cfg.max_positions,
            seed=cfg.init_seed,
        )
        tokenizer = env_tokenizer
    else:
        from transformers import AutoModelForCausalLM

        from search_env.registration import load_tokenizer

        model = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype)
        tokenizer = load_tokenizer(cfg.path)
    model = model.to(dtype=dtype, device=resolve_device(cfg.device))
    if cfg.gradient_checkpointing:
        if resolve_device(cfg.device).type != "cuda":
            logger.warning("gradient checkpointing is meant for GPUs; enabling it anyway")
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, tokenizer


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy (the KL reference policy)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class ValueHead(nn.Module):
    """PPO's critic: a linear layer on the policy's last hidden state.

    Initialised to zero output, so the first values are 0 and the first advantages are the
    returns themselves.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``# (B, T, H) -> (B, T)``."""
        # fp32 (the head's dtype) even for a bf16 backbone
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


@dataclass
class TokenOutputs:
    """Per-token outputs of one forward pass, aligned with ``input_ids`` (``# (B, T)``).

    Position ``t`` holds the quantity of token ``t`` (computed from the logits / hidden
    state at ``t - 1``); position 0 and padding hold 0.
    """

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None


def forward_tokens(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = True,
    value_head: ValueHead | None = None,
    only: torch.Tensor | None = None,
) -> TokenOutputs:
    """Log-probs (and optionally entropy and values) of every token given its prefix.

    One backbone pass feeds both the LM head and the value head. Logits are divided by
    ``temperature`` as at sampling time, so the log-probs match the rollout's.

    The token shift: the hidden state at position ``t`` predicts token ``t + 1``, so
    ``hidden[:, :-1]`` is scored against ``ids[:, 1:]``; the results are then shifted
    back right by one, so that position ``t`` of every output is about token ``t``
    (and ``V[t]`` is the value of the state before token ``t``).

    Args:
        model: a ``transformers`` causal LM.
        input_ids: ``# (B, T)`` right-padded.
        attention_mask: ``# (B, T)``.
        temperature: sampling temperature.
        entropy: also return the entropy of each token's distribution.
        entropy_grad: keep the entropy in the autograd graph (False saves the memory of
            a ``(B, T, V)`` softmax when the entropy is only logged).
        value_head: also return ``V[t]`` = value of the state before token ``t``.
        only: ``# (B, T)``; when given, log-probs and entropy are computed only where it
            is nonzero (0 elsewhere). The LM head is most of a tiny model's cost and
            agent tokens are a fraction of the context, so this saves most of the work.
    """
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    mask = attention_mask.to(device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions)[0]
    # The shift: hidden[:, t] predicts ids[:, t + 1] (both (B, T-1) below).
    real = mask[:, 1:] != 0  # (B, T-1): the predicted token is real
    keep = real if only is None else real & (only.to(device)[:, 1:] != 0)
    # Logits only at the kept positions: (N, V) instead of (B, T-1, V).
    logits = upcast(model.get_output_embeddings()(hidden[:, :-1][keep])) / temperature
    labels = ids[:, 1:][keep]

    def align(x: torch.Tensor) -> torch.Tensor:
        """Scatter kept-position values ``# (N,)`` back to ``# (B, T-1)``, then shift right
        by one (a zero column first) so position ``t`` is token ``t``'s: ``# (B, T)``."""
        full = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
        full = full.index_put(keep.nonzero(as_tuple=True), x)
        return torch.cat([full.new_zeros((full.shape[0], 1)), full], dim=1)

    out = TokenOutputs(logprobs=align(logprobs_from_logits(logits, labels)))
    if entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            out.entropy = align(entropy_from_logits(logits))
    if value_head is not None:
        values = torch.where(real, value_head(hidden[:, :-1]), 0.0)  # (B, T-1)
        # Shifted right by one like the log-probs: V[t] is the state before token t.
        out.values = torch.cat([values.new_zeros((values.shape[0], 1)), values], dim=1)
    return out
