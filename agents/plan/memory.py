"""The memory plan: what one GPU (or a CPU rank) holds for a :class:`TrainConfig`.

Every term is the code's own behaviour, estimated from the model's exact parameter count
(:mod:`agents.plan.shapes`) and the env's budgets (``max_prompt_length`` etc. of the env
kwargs). The peak is the memory that stays (parameters, gradients, optimizer state, the
reference model, the critic, the vLLM engine) plus the largest of the working sets that
never coexist: the update's forward/backward, the optimizer step, the no-grad log-prob
passes and the rollout.

What the code does, and so what is planned:

- One process (1 GPU, no FSDP): parameters, gradients and AdamW's two moments all in
  ``model.dtype`` (``torch.optim.AdamW`` keeps its state in the parameter's dtype, so
  bf16 has no fp32 master copy: 8 bytes a trained parameter; fp32: 16).
- FSDP2 (``torchrun``, more than one rank, or any ``fsdp`` offload): mixed precision with
  fp32 shards (master weights), fp32 gradient shards (fp32 reduction) and fp32 moments,
  ``1/ranks`` of 16 bytes a trained parameter, plus the bf16 copies of the units being
  gathered (the root unit and two decoder layers with ``reshard_after_forward``; all of
  them without it). ``fsdp.cpu_offload`` moves the shards, gradients and the optimizer
  (its step runs on the CPU) to host memory; ``fsdp.ref_offload`` the reference's shards.
- PPO's critic is a value head on the policy's backbone (one model, two heads): its
  parameters are ``hidden + 1`` fp32 numbers, its working set the fp32 copy of the last
  hidden states it reads. (Search-R1's verl runs a separate critic model: about twice
  the state.)
- The reference is a frozen copy of the policy (``agents.model.frozen_copy``), LoRA or not.
- vLLM stays awake beside the trainer (no sleep mode yet): it takes
  ``vllm_gpu_memory_utilization`` of the GPU for its weights, activations and KV cache.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from agents.config import TrainConfig
from agents.plan.shapes import ModelShape, ParamCount, count_parameters, model_shape

GiB = 1 << 30

Group = Literal["resident", "update", "step", "logprob", "rollout", "host"]
GROUPS: dict[str, str] = {
    "resident": "held throughout",
    "update": "forward + backward of one micro-batch",
    "step": "optimizer step",
    "logprob": "no-grad log-prob passes (old policy, reference)",
    "rollout": "rollout (generation)",
    "host": "host (CPU) memory per rank, offloaded",
}
"""The term groups: ``resident`` plus the largest of the four working sets is the peak."""
WORKING_SETS = ("update", "step", "logprob", "rollout")

LOGIT_BYTES_TRAIN = 16
"""Bytes per vocabulary entry of one scored position in the training pass: the fp32
logits divided by the temperature, their log-softmax (kept for the backward) and the
entropy's softmax and product in the forward, or the fp32 gradients in the backward
(``agents.model.forward_tokens`` and ``agents.losses``)."""
LOGIT_BYTES_NOGRAD = 8
"""Bytes per vocabulary entry of one scored position in a no-grad pass: fp32 logits and
their log-softmax."""
CUDA_RESERVE = GiB
"""CUDA context, cuBLAS workspaces and NCCL buffers: memory torch does not count but the
GPU does (about 0.5-1 GiB)."""
VLLM_BATCH_TOKENS = 8192
"""vLLM's ``max_num_batched_tokens`` assumed for its profiling pass (its activation peak)."""
VLLM_MAX_SEQS = 256
"""vLLM's ``max_num_seqs``: rows of sampler logits in that pass."""


@dataclass(frozen=True)
class Hardware:
    """Where the run goes: ``gpus`` ranks of ``memory_bytes`` each (CPU: ranks on one host
    share ``memory_bytes``)."""

    gpus: int = 1
    memory_bytes: int = 80 * GiB
    device: Literal["cuda", "cpu"] = "cuda"
    name: str = ""

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise ValueError(f"gpus must be >= 1, got {self.gpus}")
        if self.memory_bytes <= 0:
            raise ValueError(f"memory must be > 0, got {self.memory_bytes} bytes")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {self.device!r}")

    def describe(self) -> str:
        what = self.name or ("GPU" if self.device == "cuda" else "CPU")
        if self.device == "cpu":
            return f"{self.gpus} CPU rank(s) sharing {self.memory_bytes / GiB:.1f} GiB ({what})"
        return f"{self.gpus} x {self.memory_bytes / GiB:.1f} GiB ({what})"


@dataclass(frozen=True)
class Term:
    """One line of the plan."""

    name: str
    bytes: int
    group: Group
    note: str = ""


@dataclass(frozen=True)
class Workload:
    """Token counts per rank that size the working sets."""

    context: int
    """The env's ``max_prompt_length``: the longest (padded) sequence."""
    agent_tokens: int
    """At most this many agent tokens in one episode: ``(max_turns + 1) * turn budget``."""
    rollout_seqs: int
    minibatch_seqs: int
    micro_tokens: int
    """(Padded) tokens of one training forward/backward."""
    micro_seqs: int
    scored: int
    """Positions whose logits one training micro-batch computes."""
    logprob_tokens: int
    logprob_scored: int


@dataclass
class Plan:
    """The memory plan of one config on one kind of hardware (bytes per rank)."""

    config_name: str
    algo: str
    shape: ModelShape
    params: ParamCount
    trainable: int
    hardware: Hardware
    workload: Workload
    terms: list[Term]
    fsdp: bool
    activations_alt: int
    """The activations with gradient checkpointing flipped (the other choice)."""
    vllm: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Reasons the run cannot start other than the total (vLLM left no KV cache)."""

    def group_bytes(self, group: str) -> int:
        return sum(t.bytes for t in self.terms if t.group == group)

    @property
    def peak_working_set(self) -> str:
        """The working set that sets the peak."""
        return max(WORKING_SETS, key=self.group_bytes)

    @property
    def total(self) -> int:
        """Peak bytes per rank on its device (on a CPU, host terms included)."""
        extra = self.group_bytes("host") if self.hardware.device == "cpu" else 0
        return self.group_bytes("resident") + self.group_bytes(self.peak_working_set) + extra

    @property
    def machine_total(self) -> int:
        """What the check compares with the memory: per rank on a GPU, all ranks on a CPU."""
        return self.total * (self.hardware.gpus if self.hardware.device == "cpu" else 1)

    @property
    def headroom(self) -> int:
        return self.hardware.memory_bytes - self.machine_total

    @property
    def fits(self) -> bool:
        return self.headroom >= 0 and not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: every term in bytes and GiB, the totals and the inputs."""
        return {
            "config": self.config_name,
            "algo": self.algo,
            "model": dataclasses.asdict(self.shape),
            "parameters": {
                "total": self.params.total,
                "per_layer": self.params.per_layer,
                "embedding": self.params.embedding,
                "lm_head": self.params.lm_head,
                "root": self.params.root,
                "trainable": self.trainable,
            },
            "hardware": dataclasses.asdict(self.hardware),
            "fsdp": self.fsdp,
            "workload": dataclasses.asdict(self.workload),
            "terms": [
                {**dataclasses.asdict(t), "gib": round(t.bytes / GiB, 3)} for t in self.terms
            ],
            "groups": {g: self.group_bytes(g) for g in GROUPS},
            "peak_working_set": self.peak_working_set,
            "activations_other_checkpointing": self.activations_alt,
            "vllm": self.vllm,
            "total_bytes": self.total,
            "total_gib": round(self.total / GiB, 3),
            "memory_gib": round(self.hardware.memory_bytes / GiB, 3),
            "headroom_gib": round(self.headroom / GiB, 3),
            "fits": self.fits,
            "problems": self.problems,
        }


def protocol_of(env_kwargs: dict[str, Any]) -> Any:
    """The env's :class:`~search_env.protocol.ProtocolConfig` (its budgets) from the kwargs."""
    from search_env.protocol import ProtocolConfig

    names = {f.name for f in dataclasses.fields(ProtocolConfig)}
    return ProtocolConfig(**{k: v for k, v in env_kwargs.items() if k in names})


def workload(cfg: TrainConfig, ranks: int) -> Workload:
    """Per-rank token counts of one step of ``cfg`` (worst case: full-context episodes)."""
    proto = protocol_of(cfg.rollout.env_kwargs)
    context = int(proto.max_prompt_length)
    turn = cfg.rollout.max_new_tokens or proto.max_response_length
    agent = min(context, (proto.max_turns + 1) * turn)
    section = cfg.grpo if cfg.algo == "grpo" else cfg.ppo
    rollout = math.ceil(cfg.rollout.num_envs / ranks)
    mb = math.ceil(section.minibatch_size / ranks)
    budget = section.micro_batch_tokens
    # A micro-batch holds whole sequences: a budget below one context still runs one.
    micro = mb * context if budget is None else min(mb * context, max(budget, context))
    logprob = rollout * context if budget is None else min(rollout * context, max(budget, context))
    share = agent / context if section.mask_env_tokens else 1.0
    share_nograd = share
    if cfg.algo == "ppo" and not cfg.ppo.critic_masked:
        share_nograd = 1.0  # GAE and the value loss read every response token
    return Workload(
        context=context,
        agent_tokens=agent,
        rollout_seqs=rollout,
        minibatch_seqs=mb,
        micro_tokens=micro,
        micro_seqs=math.ceil(micro / context),
        scored=math.ceil(micro * share),
        logprob_tokens=logprob,
        logprob_scored=math.ceil(logprob * share_nograd),
    )


def logit_chunk_tokens() -> int | None:
    """Positions whose logits the trainer's forward holds at once
    (``agents.model.LOGIT_CHUNK_TOKENS``; each chunk is checkpointed in the training
    pass), or None for a trainer that computes them all at once."""
    try:
        from agents.model import LOGIT_CHUNK_TOKENS
    except ImportError:
        return None
    return int(LOGIT_CHUNK_TOKENS)


def layer_activation_bytes(shape: ModelShape, b: int, lora_rank: int = 0) -> int:
    """Bytes autograd keeps per token of one Qwen2 decoder layer (no checkpointing).

    Counted from the tensors ``transformers``' ``Qwen2DecoderLayer`` saves for the
    backward with SDPA attention, in the manner of Korthikanti et al. 2022 (arXiv
    2205.05198, section 4.1), for a SwiGLU MLP and grouped-query attention:

    - each RMSNorm: its fp32 input (4h) and its output in the model dtype, both the
      scaled one (b·h) and the one the next projections read (b·h): ``(4 + 2b)·h``, twice;
    - attention: q, and k and v repeated to every head (transformers' ``repeat_kv`` with
      a padding mask), as SDPA saves them (3·b·h), its output (b·h) and the contiguous
      copy ``o_proj`` reads (b·h): ``5·b·h``;
    - MLP: gate, SiLU(gate), up and their product (``down_proj``'s input): ``4·b·I``;
    - LoRA: each adapter's rank-r middle (b·r, seven linear layers).

    Assumes flash / memory-efficient SDPA (no ``T x T`` scores kept) and no dropout.
    """
    h, inter = shape.hidden, shape.intermediate
    return 2 * (4 + 2 * b) * h + 5 * b * h + 4 * b * inter + 7 * b * lora_rank


def _b(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else 4


def plan_memory(
    cfg: TrainConfig,
    hardware: Hardware,
    shape: ModelShape | None = None,
    name: str = "",
) -> Plan:
    """The memory plan of ``cfg`` on ``hardware`` (see the module docstring).

    Args:
        cfg: the resolved run config.
        hardware: ranks and memory per rank.
        shape: the model's shape (default: :func:`~agents.plan.shapes.model_shape`).
        name: what to call the config in the report (a preset name).
    """
    shape = shape or model_shape(cfg)
    pc = count_parameters(shape)
    G, b = hardware.gpus, _b(cfg.model.dtype)
    h, V, f = shape.hidden, shape.vocab, cfg.fsdp
    wl = workload(cfg, G)
    rank = cfg.model.lora_rank
    n, n_lora = pc.total, pc.lora(rank) if rank else 0
    trainable = n_lora if rank else n
    fsdp = G > 1 or f.cpu_offload or f.ref_offload
    gpu = hardware.device == "cuda"
    off = "host"  # where offloaded state goes
    terms: list[Term] = []

    def add(name: str, nbytes: float, group: Group, note: str = "") -> None:
        terms.append(Term(name, int(math.ceil(nbytes)), group, note))

    # ---- policy: parameters, gradients, optimizer state
    unit_bytes = (pc.root + 2 * pc.per_layer) * b  # FSDP2: root unit + current & next layer
    if not fsdp:
        add("parameters", n * b + n_lora * 4, "resident", f"{n:,} in {cfg.model.dtype}")
        gb = trainable * (4 if rank else b)
        add("gradients", gb, "resident", f"{trainable:,} trained")
        add("optimizer state", 2 * gb, "resident", "AdamW's 2 moments in the parameters' dtype")
        add("optimizer step temporaries", gb, "step", "foreach AdamW: sqrt of the 2nd moment")
    else:
        shard = (n * (b if rank else 4) + n_lora * 4) / G
        pnote = "fp32 master shards" if not rank else "frozen base shards + fp32 adapters"
        add("parameter shards", shard, off if f.cpu_offload else "resident", f"{pnote}, 1/{G}")
        add("gradient shards", trainable * 4 / G, off if f.cpu_offload else "resident", "fp32")
        add(
            "optimizer state",
            trainable * 8 / G,
            off if f.cpu_offload else "resident",
            "fp32 moments" + (" (step on the CPU)" if f.cpu_offload else ""),
        )
        add(
            "optimizer step temporaries",
            trainable * 4 / G,
            off if f.cpu_offload else "step",
            "foreach AdamW: sqrt of the 2nd moment",
        )
        if f.reshard_after_forward:
            add("gathered parameters", unit_bytes, "update", "root unit + 2 layers, bf16")
        else:
            add("gathered parameters", n * b, "update", "reshard_after_forward=False: all")
        if not rank:
            add("unsharded gradients", (pc.root + pc.per_layer) * b, "update", "before reduce")

    # ---- activations of one training micro-batch
    per_layer = layer_activation_bytes(shape, b, rank)
    full = wl.micro_tokens * shape.layers * per_layer
    ckpt = wl.micro_tokens * (shape.layers * b * h + per_layer)
    use_ckpt = cfg.model.gradient_checkpointing
    acts, alt = (ckpt, full) if use_ckpt else (full, ckpt)
    how = "checkpointed: layer inputs + 1 layer" if use_ckpt else "all layers kept"
    add(
        "activations",
        acts,
        "update",
        f"{wl.micro_tokens:,} tokens, {per_layer:,} B/token/layer; {how}",
    )
    head = wl.micro_tokens * ((4 + 2 * b) * h + 3 * b * h) + wl.scored * b * h
    mask = wl.micro_seqs * wl.context**2
    add("final norm, mask, grad buffers", head + mask, "update", "(B,1,T,T) bool mask")
    chunk = logit_chunk_tokens()
    at_once = wl.scored if chunk is None else min(wl.scored, chunk)
    add(
        "logits",
        at_once * V * LOGIT_BYTES_TRAIN,
        "update",
        f"{at_once:,} of {wl.scored:,} scored positions at once x {V:,} x "
        f"{LOGIT_BYTES_TRAIN} B (fp32)",
    )

    # ---- the critic (PPO): a value head on the backbone
    if cfg.algo == "ppo":
        add("critic (value head)", (h + 1) * 16, "resident", "Linear(hidden, 1), fp32 + AdamW")
        add("critic activations", wl.micro_tokens * (h * 4 + 8), "update", "fp32 hidden copy")

    # ---- the reference model
    if not fsdp:
        add("reference model", n * b + n_lora * 4, "resident", "frozen copy of the policy")
    else:
        add(
            "reference shards",
            n * b / G,
            off if f.ref_offload else "resident",
            f"frozen copy, 1/{G}" + (", offloaded" if f.ref_offload else ""),
        )
        add("reference gathered", unit_bytes, "logprob", "root unit + 2 layers")

    # ---- no-grad log-prob passes (old policy, then reference)
    t = wl.logprob_tokens
    add(
        "log-prob pass activations",
        t * ((4 + 6 * b) * h + 3 * b * shape.intermediate + b * h),
        "logprob",
        f"{t:,} tokens, one layer at a time",
    )
    add(
        "log-prob pass logits",
        (wl.logprob_scored if chunk is None else min(wl.logprob_scored, chunk))
        * V
        * LOGIT_BYTES_NOGRAD
        + (t * h * 4 if cfg.algo == "ppo" else 0),
        "logprob",
        f"{wl.logprob_scored:,} scored positions, a chunk at a time",
    )

    # ---- rollout
    vllm_info: dict[str, Any] = {}
    r = cfg.rollout
    kv_token = shape.kv_bytes_per_token(b)
    need_tokens = wl.rollout_seqs * wl.context
    if r.backend == "hf":
        add("KV cache (HF generate)", need_tokens * kv_token, "rollout", f"{need_tokens:,} tokens")
        prefill = need_tokens * ((4 + 6 * b) * h + 3 * b * shape.intermediate)
        logits = wl.rollout_seqs * V * (4 * 3 + b)
        add("prefill + sampler", prefill + logits, "rollout", "one layer at a time")
        if fsdp:
            add("gathered parameters (rollout)", unit_bytes, "rollout", "root unit + 2 layers")
    else:
        weights = n * b
        act = VLLM_BATCH_TOKENS * b * (2 * shape.intermediate + 4 * h) + VLLM_MAX_SEQS * V * 8
        if r.vllm_kv_cache_gb is not None:
            kv = int(r.vllm_kv_cache_gb * GiB)
            reserved = weights + act + kv
        elif gpu:
            reserved = int(r.vllm_gpu_memory_utilization * hardware.memory_bytes)
            kv = reserved - weights - act
        else:
            kv = GiB  # VLLMPolicy's CPU default
            reserved = weights + act + kv
        tokens = max(kv, 0) // kv_token
        vllm_info = {
            "reserved_bytes": reserved,
            "weights_bytes": weights,
            "activation_bytes": act,
            "kv_cache_bytes": kv,
            "kv_bytes_per_token": kv_token,
            "kv_tokens": tokens,
            "rollout_tokens_needed": need_tokens,
            "kv_fits_rollout": tokens >= need_tokens,
        }
        add("vLLM weights", weights, "resident", "bf16 copy (tensor parallel 1)")
        add("vLLM activations", act, "resident", f"profiling pass, {VLLM_BATCH_TOKENS} tokens")
        add(
            "vLLM KV cache",
            max(kv, 0),
            "resident",
            f"{tokens:,} tokens ({kv_token:,} B each); a step needs up to {need_tokens:,}",
        )
    problems = []
    if vllm_info and vllm_info["kv_cache_bytes"] <= 0:
        problems.append(
            f"vLLM: rollout.vllm_gpu_memory_utilization={r.vllm_gpu_memory_utilization} "
            f"leaves no KV cache after its weights ({vllm_info['weights_bytes'] / GiB:.1f} GiB)"
        )
    if gpu:
        add("CUDA context + workspaces", CUDA_RESERVE, "resident", "not counted by torch")

    return Plan(
        config_name=name,
        algo=cfg.algo,
        shape=shape,
        params=pc,
        trainable=trainable,
        hardware=hardware,
        workload=wl,
        terms=terms,
        fsdp=fsdp,
        activations_alt=int(alt),
        vllm=vllm_info,
        problems=problems,
    )
