"""Pieces shared by the SFT, GRPO and PPO loops: env and model set-up, the token forward
pass, greedy evaluation and rollout statistics."""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from agents.config import ModelConfig, RolloutConfig
from agents.losses import entropy_from_logits, logprobs_from_logits
from agents.rollout import Batch, Trajectory, collect

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def make_env(
    rollout: RolloutConfig,
    split: str,
    num_envs: int,
    tokenizer: Any = None,
    vocab_size: int | None = None,
) -> Any:
    """A chunk-mode vector env without autoreset, as :func:`agents.rollout.collect` needs.

    Args:
        rollout: env id and kwargs.
        split: dataset split (``train`` / ``test``).
        num_envs: sub-envs.
        tokenizer: passed as ``tokenizer=`` when given (a real model's own tokenizer).
        vocab_size: the model's logits count (``model.config.vocab_size``) when given:
            Qwen2.5 has 151,936 logits but 151,665 tokenizer ids, and a padding id
            sampled past ``len(tokenizer)`` must still be a valid action.
    """
    import gymnasium as gym

    import search_env  # noqa: F401  (registers the ids)

    kwargs = dict(rollout.env_kwargs)
    kwargs["split"] = split
    if tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    return gym.make_vec(
        rollout.env_id, num_envs=num_envs, action_mode="chunk", autoreset_mode="disabled", **kwargs
    )


def load_model(cfg: ModelConfig, env_tokenizer: Any) -> tuple[nn.Module, Any]:
    """The policy model and its tokenizer.

    ``path="tiny"`` builds a random-init Qwen2 on ``env_tokenizer``; otherwise the model
    and tokenizer are loaded from ``path``.
    """
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    if cfg.path == "tiny":
        from agents.tiny_model import make_tiny_qwen2

        model = make_tiny_qwen2(
            env_tokenizer, hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads,
            kv_heads=cfg.kv_heads, intermediate=cfg.intermediate,
            max_positions=cfg.max_positions, seed=cfg.init_seed,
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
        return self.linear(hidden.float()).squeeze(-1)


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
    real = mask[:, 1:] != 0  # (B, T-1): position t predicts token t + 1
    keep = real if only is None else real & (only.to(device)[:, 1:] != 0)
    # Logits only at the kept positions: (N, V) instead of (B, T-1, V).
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float() / temperature
    labels = ids[:, 1:][keep]

    def align(x: torch.Tensor) -> torch.Tensor:
        """Scatter kept-position values ``# (N,)`` back to ``# (B, T)``, shifted by one."""
        full = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
        full = full.index_put(keep.nonzero(as_tuple=True), x)
        return torch.cat([full.new_zeros((full.shape[0], 1)), full], dim=1)

    out = TokenOutputs(logprobs=align(logprobs_from_logits(logits, labels)))
    if entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            out.entropy = align(entropy_from_logits(logits))
    if value_head is not None:
        values = torch.where(real, value_head(hidden[:, :-1]), 0.0)  # (B, T-1)
        out.values = torch.cat([values.new_zeros((values.shape[0], 1)), values], dim=1)
    return out


def response_mask(batch: Batch) -> torch.Tensor:
    """1 at every real token after the prompt (agent and env tokens alike) ``# (B, T)``.

    The actor's loss mask without retrieved-token masking, and the reference's critic
    mask.
    """
    positions = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids)
    after_prompt = positions >= batch.prompt_lengths[:, None]
    return (after_prompt & (batch.attention_mask != 0)).float()


def question_indices(num_questions: int, count: int, seed: int, step: int) -> np.ndarray:
    """Questions of one step: ``count`` distinct indices, a pure function of (seed, step)
    so a resumed run draws exactly what an uninterrupted one would."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(num_questions, size=count, replace=count > num_questions)


def rollout_stats(trajectories: Sequence[Trajectory], prefix: str = "") -> dict[str, float]:
    """Mean reward, EM, searches, turns and agent tokens per episode."""
    n = max(len(trajectories), 1)

    def mean(values: Sequence[float]) -> float:
        return float(sum(values) / n)

    return {
        f"{prefix}reward": mean([t.reward for t in trajectories]),
        f"{prefix}em": mean([t.scores.get("em", 0.0) for t in trajectories]),
        f"{prefix}searches": mean([t.searches for t in trajectories]),
        f"{prefix}turns": mean([t.turns for t in trajectories]),
        f"{prefix}response_length": mean([t.agent_tokens for t in trajectories]),
        f"{prefix}answered": mean([float(t.answer is not None) for t in trajectories]),
    }


def evaluate_greedy(
    policy: Any, vec_env: Any, indices: Sequence[int], max_new_tokens: int | None = None
) -> dict[str, float]:
    """Greedy decoding on the given questions (``vec_env.num_envs`` at a time).

    Returns:
        ``eval_em``, ``eval_reward``, ``eval_searches``, ``eval_turns``,
        ``eval_response_length``, ``eval_answered``.
    """
    trajectories: list[Trajectory] = []
    n = vec_env.num_envs
    for lo in range(0, len(indices), n):
        chunk = list(indices[lo : lo + n])
        trajectories += collect(vec_env, policy, indices=chunk, greedy=True,
                                max_new_tokens=max_new_tokens)
    return rollout_stats(trajectories, prefix="eval_")
