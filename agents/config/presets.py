"""Named presets of :class:`~agents.config.schema.TrainConfig`, by CLI name.

``tiny-cpu``: a from-scratch Qwen2 model on the synthetic world, minutes on a laptop CPU
(the recipe's numbers depend on its values). ``search-r1-3b`` and ``search-r1-3b-grpo``:
the Search-R1 reference settings from ``shared/PROTOCOL.md`` (PPO and GRPO), for GPU
users; ``search-r1-7b`` the same for Qwen2.5-7B; ``qwen2.5-1.5b-1gpu`` GRPO for someone
with one card. :data:`PRESET_HARDWARE` states the hardware each is meant for; its memory
plan (``search-env plan --preset NAME``) fits that hardware (tests/test_plan.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from agents.config.schema import (
    FSDPConfig,
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

    Memory, as the reference on 8 x 80 GB: bf16, gradient checkpointing, FSDP with
    parameter, gradient and optimizer offload and the reference's parameters offloaded
    (launch with ``torchrun --nproc-per-node 8``), vLLM colocated at 0.6 of the GPU. One
    forward/backward holds at most 8,192 tokens (two full 4,096-token episodes; the
    reference's actor micro-batch of 64 padded episodes would not fit this trainer's fp32
    log-prob pass): about 55 GiB a GPU by ``search-env plan --preset search-r1-3b``.
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
            backend="vllm",
            vllm_gpu_memory_utilization=0.6,
            vllm_enforce_eager=False,
        ),
        grpo=GRPOConfig(
            lr=1e-6,
            warmup_ratio=0.285,
            kl_coef=0.001,
            kl_kind="low_var_kl",
            minibatch_size=256,
            epochs=1,
            micro_batch_tokens=8192,
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
            micro_batch_tokens=8192,
        ),
        fsdp=FSDPConfig(cpu_offload=True, reshard_after_forward=True, ref_offload=True),
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


def search_r1_7b() -> TrainConfig:
    """:func:`search_r1_3b` for Qwen2.5-7B (PPO on 8 x 80 GB, the reference's 7B run).

    The same settings, memory knobs included (FSDP with full offload, the reference
    offloaded, vLLM at 0.6, 8,192-token micro-batches): about 60 GiB a GPU by
    ``search-env plan --preset search-r1-7b``.
    """
    base = search_r1_3b()
    return dataclasses.replace(
        base,
        out_dir="runs/search-r1-7b",
        model=dataclasses.replace(base.model, path="Qwen/Qwen2.5-7B"),
    )


def qwen25_1_5b_1gpu() -> TrainConfig:
    """GRPO on Qwen2.5-1.5B with one 80 GB GPU and no ``torchrun``.

    64 questions a step, 5 episodes each (320), a mini-batch of 160 episodes, the
    Search-R1 env budgets (4,096-token contexts), bf16 with gradient checkpointing and
    8,192-token micro-batches, vLLM colocated at 0.35 of the GPU (its KV cache holds
    about 900k tokens; a step's rollout needs up to 1.3M at full context, the rest
    queue): about 47 GiB by ``search-env plan --preset qwen2.5-1.5b-1gpu``. In one
    process AdamW keeps its moments in bf16 (8 bytes a trained parameter);
    ``--set model.lora_rank=16`` trains adapters only.
    """
    base = search_r1_3b_grpo()
    return dataclasses.replace(
        base,
        out_dir="runs/qwen2.5-1.5b-1gpu",
        model=dataclasses.replace(base.model, path="Qwen/Qwen2.5-1.5B"),
        rollout=dataclasses.replace(
            base.rollout, num_envs=64 * 5, eval_num_envs=64, vllm_gpu_memory_utilization=0.35
        ),
        grpo=dataclasses.replace(base.grpo, minibatch_size=32 * 5),
        ppo=dataclasses.replace(base.ppo, minibatch_size=32 * 5),
        fsdp=FSDPConfig(),
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "tiny-cpu": tiny_cpu,
    "search-r1-3b": search_r1_3b,
    "search-r1-3b-grpo": search_r1_3b_grpo,
    "search-r1-7b": search_r1_7b,
    "qwen2.5-1.5b-1gpu": qwen25_1_5b_1gpu,
}
"""Named presets, by CLI name."""


@dataclass(frozen=True)
class PresetHardware:
    """The hardware a preset is meant for (its memory plan fits it)."""

    device: Literal["cuda", "cpu"]
    gpus: int
    memory_gib: float
    """Memory of one GPU (or the CPU's RAM) in GiB, as torch reports it."""
    name: str


GB80 = 79.0
"""An "80 GB" H100 or A100 as ``torch.cuda.get_device_properties`` reports it (about
79.1-79.6 GiB), rounded down."""

PRESET_HARDWARE: dict[str, PresetHardware] = {
    "tiny-cpu": PresetHardware("cpu", 1, 8.0, "a laptop with 8 GiB of RAM"),
    "search-r1-3b": PresetHardware("cuda", 8, GB80, "8 x 80 GB H100/A100"),
    "search-r1-3b-grpo": PresetHardware("cuda", 8, GB80, "8 x 80 GB H100/A100"),
    "search-r1-7b": PresetHardware("cuda", 8, GB80, "8 x 80 GB H100/A100"),
    "qwen2.5-1.5b-1gpu": PresetHardware("cuda", 1, GB80, "1 x 80 GB H100/A100"),
}
"""The stated hardware of every preset (``search-env plan`` plans on it by default)."""


def preset(name: str) -> TrainConfig:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()
