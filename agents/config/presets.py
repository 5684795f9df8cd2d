"""Named presets of :class:`~agents.config.schema.TrainConfig`, by CLI name.

``tiny-cpu``: a from-scratch Qwen2 model on the synthetic world, minutes on a laptop CPU
(the recipe's numbers depend on its values). ``search-r1-3b`` and ``search-r1-3b-grpo``:
the Search-R1 reference settings from ``shared/PROTOCOL.md`` (PPO and GRPO), for GPU
users.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from agents.config.schema import (
    GRPOConfig,
    ModelConfig,
    PPOConfig,
    RolloutConfig,
    SFTConfig,
    TrainConfig,
)


def tiny_cpu() -> TrainConfig:
    """From scratch on a laptop CPU: SFT warm start, then RL on the synthetic world.

    A 2-layer Qwen2 (1.1M parameters, most of them the tied embedding) on a 2,000-entity
    synthetic world's single-hop questions (497 train, 205 held-out test), with a BPE
    trained on that world (``tokenizer="world:6144"``) so that names are whole-word
    tokens. To make it fast: a one-line prompt template instead of the Search-R1
    instruction (a from-scratch model cannot read it anyway), one retrieved passage cut
    to 96 tokens, at most 2 searches, 48-token turns, a 512-token context, one torch
    thread (two are slower on a busy 2-core machine).

    The warm start is imperfect on purpose: half of its demonstrations answer
    closed-book, at once and wrongly (as an LLM answering from memory), the other half
    are the oracle's, which search and quote the sentence they read. The warm-started
    model searches on only some questions; RL has to find out that searching pays.
    """
    return TrainConfig(
        algo="grpo",
        steps=40,
        eval_every=5,
        checkpoint_every=20,
        out_dir="runs/tiny-cpu",
        threads=1,
        model=ModelConfig(
            path="tiny",
            hidden_size=128,
            layers=2,
            heads=8,
            kv_heads=4,
            intermediate=256,
            max_positions=1024,
            device="cpu",
        ),
        rollout=RolloutConfig(
            env_kwargs={
                "num_entities": 2000,
                "tokenizer": "world:6144",
                "question_types": ["single"],
                "template": "Question: {question}\n",
                "max_turns": 2,
                "topk": 1,
                "max_obs_length": 96,
                "max_response_length": 48,
                "max_prompt_length": 512,
                "max_start_length": 128,
            },
            num_envs=48,
            group_size=8,
            temperature=1.0,
            eval_num_envs=48,
        ),
        grpo=GRPOConfig(lr=3e-4, kl_coef=0.001, minibatch_size=48, epochs=1),
        ppo=PPOConfig(lr=3e-4, critic_lr=2e-3, minibatch_size=48, epochs=1, vf_coef=0.5),
        sft=SFTConfig(
            steps=2000,
            lm_steps=0,
            batch_size=24,
            lr=6e-3,
            swap_names=True,
            quote_evidence=True,
            closed_book=0.5,
        ),
    )


TINY_WORLD: dict[str, Any] = {
    "rollout.env_kwargs.size": "tiny",
    "rollout.env_kwargs.num_entities": None,
    "rollout.env_kwargs.tokenizer": "synth",
}
"""Overrides that move :func:`tiny_cpu` to the 100-entity world and the shipped
tokenizer (tests and smoke runs)."""


def search_r1_3b() -> TrainConfig:
    """The Search-R1 PPO reference settings for Qwen2.5-3B (documented; needs GPUs).

    Actor lr 1e-6 with warm-up over 28.5% of the steps, critic lr 1e-5, 512 prompts per
    step (one episode each), mini-batch 256, 1 epoch, clip 0.2, grad clip 1.0, entropy
    0.001, reward-level KL 0.001, GAE gamma = lambda = 1, temperature 1, about 1000
    steps. The reference ran on 8 GPUs with NQ + HotpotQA train data (use
    ``env_id="SearchQA-v0"`` with ``env_kwargs={"dataset": ..., "retriever": ...}``);
    protocol defaults (max_turns 4, 500-token turns and observations, 4096 context) are
    the env's own. GRPO needs groups: :func:`search_r1_3b_grpo`.
    """
    return TrainConfig(
        algo="ppo",
        steps=1005,
        eval_every=50,
        checkpoint_every=50,
        out_dir="runs/search-r1-3b",
        model=ModelConfig(
            path="Qwen/Qwen2.5-3B", dtype="bfloat16", gradient_checkpointing=True, device="cuda"
        ),
        rollout=RolloutConfig(
            env_id="SearchQA-NQ-v0",
            env_kwargs={"retriever": "http://127.0.0.1:8000"},
            num_envs=512,
            group_size=1,
            temperature=1.0,
            eval_num_envs=256,
        ),
        grpo=GRPOConfig(
            lr=1e-6,
            warmup_ratio=0.285,
            kl_coef=0.001,
            kl_kind="low_var_kl",
            minibatch_size=256,
            epochs=1,
        ),
        ppo=PPOConfig(
            lr=1e-6,
            critic_lr=1e-5,
            warmup_ratio=0.285,
            clip=0.2,
            value_clip=0.5,
            entropy_coef=0.001,
            kl_coef=0.001,
            kl_in_reward=True,
            kl_kind="kl",
            minibatch_size=256,
            epochs=1,
        ),
    )


def search_r1_3b_grpo() -> TrainConfig:
    """The Search-R1 GRPO reference settings for Qwen2.5-3B (documented; needs GPUs).

    :func:`search_r1_3b` with GRPO's sizes: 512 prompts per step with 5 responses each
    (2,560 episodes, ``group_size=5``), a mini-batch of 256 prompts (1,280 episodes),
    std-normalised group advantages and the low-variance KL loss 0.001.
    """
    base = search_r1_3b()
    return dataclasses.replace(
        base,
        algo="grpo",
        out_dir="runs/search-r1-3b-grpo",
        rollout=dataclasses.replace(base.rollout, num_envs=512 * 5, group_size=5),
        grpo=dataclasses.replace(base.grpo, minibatch_size=256 * 5),
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "tiny-cpu": tiny_cpu,
    "search-r1-3b": search_r1_3b,
    "search-r1-3b-grpo": search_r1_3b_grpo,
}
"""Named presets, by CLI name."""


def preset(name: str) -> TrainConfig:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()
