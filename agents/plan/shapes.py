"""Model shapes the memory plan needs, and their exact parameter counts (no weights).

The Qwen2.5 base models' ``config.json`` facts ship here (small public numbers, from
``https://huggingface.co/Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}/blob/main/config.json``), so a plan
of a Search-R1 preset needs no download. Any other model's shape comes from its local
``config.json`` (or the hub cache), the tiny model's from :class:`~agents.config.ModelConfig`.
Parameters are counted on the real ``transformers`` model built on the meta device.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.config import ModelConfig, TrainConfig

QWEN_SOURCE = "https://huggingface.co/Qwen/Qwen2.5-{size}/blob/main/config.json"
"""Where the shipped facts come from (the base models; the -Instruct ones share the
shapes and list ``max_position_embeddings`` 32,768)."""

QWEN2_5: dict[str, dict[str, Any]] = {
    "0.5B": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
    },
    "1.5B": {
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
    },
    "3B": {
        "hidden_size": 2048,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "intermediate_size": 11008,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
    },
    "7B": {
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        # 7B pads its logits to 152,064 (the smaller ones to 151,936)
        "vocab_size": 152064,
        "tie_word_embeddings": False,
        "max_position_embeddings": 131072,
    },
}
"""Qwen2.5 ``config.json`` values by size; all share rope theta 1e6, RMSNorm eps 1e-6, SiLU
and biased q/k/v projections."""

QWEN_COMMON = {"rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu"}

_QWEN_NAME = re.compile(r"(?:^|/)qwen2\.5-(0\.5b|1\.5b|3b|7b)(?:-instruct)?$", re.IGNORECASE)

TOKENIZER_SIZES = {"synth": 4096, "qwen2.5": 151665, "qwen2.5-instruct": 151665}
"""``len(tokenizer)`` of the named env tokenizers (the tiny model's vocabulary)."""


class UnknownShapeError(ValueError):
    """The plan cannot find the model's shape without loading it."""


@dataclass(frozen=True)
class ModelShape:
    """What the memory plan needs of a decoder-only Qwen2-style model."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    max_positions: int
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    head_dim: int | None = None
    source: str = ""

    @property
    def dim(self) -> int:
        """Per-head width."""
        return self.head_dim or self.hidden // self.heads

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV cache of one token: keys and values of every layer."""
        return 2 * self.layers * self.kv_heads * self.dim * dtype_bytes

    def hf_config(self) -> Any:
        """The ``transformers`` ``Qwen2Config`` of this shape."""
        from transformers import Qwen2Config

        extra = {"head_dim": self.head_dim} if self.head_dim else {}
        return Qwen2Config(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            intermediate_size=self.intermediate,
            max_position_embeddings=self.max_positions,
            tie_word_embeddings=self.tied,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_eps,
            **extra,
        )


def qwen_shape(size: str) -> ModelShape:
    """The shipped shape of ``Qwen/Qwen2.5-{size}`` (``"0.5B"``, ``"1.5B"``, ``"3B"``, ``"7B"``)."""
    if size not in QWEN2_5:
        raise UnknownShapeError(f"no shipped Qwen2.5 shape {size!r}; known: {sorted(QWEN2_5)}")
    return _from_hf_dict(
        f"Qwen/Qwen2.5-{size}", {**QWEN2_5[size], **QWEN_COMMON}, QWEN_SOURCE.format(size=size)
    )


def _from_hf_dict(name: str, c: dict[str, Any], source: str) -> ModelShape:
    c = c.get("text_config", c)  # multimodal wrappers keep the LM's shape there
    try:
        return ModelShape(
            name=name,
            hidden=int(c["hidden_size"]),
            layers=int(c["num_hidden_layers"]),
            heads=int(c["num_attention_heads"]),
            kv_heads=int(c.get("num_key_value_heads") or c["num_attention_heads"]),
            intermediate=int(c["intermediate_size"]),
            vocab=int(c["vocab_size"]),
            tied=bool(c.get("tie_word_embeddings", False)),
            max_positions=int(c.get("max_position_embeddings", 4096)),
            rope_theta=float(c.get("rope_theta", 10000.0)),
            rms_eps=float(c.get("rms_norm_eps", 1e-6)),
            head_dim=int(c["head_dim"]) if c.get("head_dim") else None,
            source=source,
        )
    except KeyError as exc:
        raise UnknownShapeError(f"{source}: config has no {exc.args[0]!r}") from None


def tiny_vocab(env_kwargs: dict[str, Any]) -> int:
    """The tiny model's vocabulary: the size of the env's tokenizer (``tokenizer=``)."""
    spec = env_kwargs.get("tokenizer", "synth")
    if not isinstance(spec, str):
        return len(spec)
    if spec in TOKENIZER_SIZES:
        return TOKENIZER_SIZES[spec]
    from search_env.synth.tokenizer import world_tokenizer_spec

    vocab = world_tokenizer_spec(spec)
    if vocab is not None:
        return vocab
    from search_env.registration import load_tokenizer

    return len(load_tokenizer(spec))


def model_shape(
    cfg: TrainConfig | ModelConfig, env_kwargs: dict[str, Any] | None = None
) -> ModelShape:
    """The shape of the policy model a config trains, without loading weights.

    ``path="tiny"``: the tiny Qwen2 of the config's sizes on the env's tokenizer; a local
    directory: its ``config.json``; a Qwen2.5 0.5B/1.5B/3B/7B name (base or Instruct): the
    shipped facts; any other hub id: its ``config.json`` from the local hub cache.

    Raises:
        UnknownShapeError: none of these finds the shape.
    """
    if isinstance(cfg, TrainConfig):
        env_kwargs = cfg.rollout.env_kwargs if env_kwargs is None else env_kwargs
        cfg = cfg.model
    env_kwargs = env_kwargs or {}
    if cfg.path == "tiny":
        return ModelShape(
            name="tiny",
            hidden=cfg.hidden_size,
            layers=cfg.layers,
            heads=cfg.heads,
            kv_heads=cfg.kv_heads,
            intermediate=cfg.intermediate,
            vocab=tiny_vocab(env_kwargs),
            tied=True,
            max_positions=cfg.max_positions,
            rope_theta=10000.0,  # Qwen2Config's default, as make_tiny_qwen2 leaves it
            source="agents.config.ModelConfig (tiny)",
        )
    local = Path(cfg.path) / "config.json"
    if local.is_file():
        return _from_hf_dict(cfg.path, json.loads(local.read_text(encoding="utf-8")), str(local))
    match = _QWEN_NAME.search(cfg.path.rstrip("/"))
    if match:
        return qwen_shape(match.group(1).upper())
    try:
        from transformers import AutoConfig

        hub = AutoConfig.from_pretrained(cfg.path, local_files_only=True)
    except Exception as exc:  # not cached, not a model id
        raise UnknownShapeError(
            f"cannot find the shape of model {cfg.path!r} without a download (no local "
            f"config.json, not a shipped Qwen2.5 size, not in the hub cache: {exc}); "
            "pass a local model directory, or skip the check with --no-plan-check"
        ) from None
    return _from_hf_dict(cfg.path, hub.get_text_config().to_dict(), f"hub cache: {cfg.path}")


@dataclass(frozen=True)
class ParamCount:
    """Exact parameter counts of a model shape (tied embeddings counted once)."""

    total: int
    per_layer: int
    embedding: int
    lm_head: int
    """0 when tied to the embedding."""
    linear_io: tuple[tuple[int, int], ...]
    """``(in, out)`` of every linear layer of one decoder layer."""
    layers: int

    @property
    def root(self) -> int:
        """Everything outside the decoder layers (embedding, final norm, untied head):
        FSDP2's root unit."""
        return self.total - self.layers * self.per_layer

    def lora(self, rank: int) -> int:
        """Trainable parameters of rank-``rank`` LoRA adapters on every linear layer of
        the decoder layers (PEFT's ``all-linear``: the LM head is left out)."""
        return self.layers * sum(rank * (i + o) for i, o in self.linear_io)


@functools.lru_cache(maxsize=32)
def count_parameters(shape: ModelShape) -> ParamCount:
    """Build ``AutoModelForCausalLM.from_config`` on the meta device and count."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape.hf_config())
    total = sum(p.numel() for p in model.parameters())
    layer = model.model.layers[0]
    per_layer = sum(p.numel() for p in layer.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    lm_head = 0 if shape.tied else head.weight.numel()
    linear_io = tuple(
        (m.in_features, m.out_features) for m in layer.modules() if isinstance(m, nn.Linear)
    )
    return ParamCount(
        total=total,
        per_layer=per_layer,
        embedding=embedding,
        lm_head=lm_head,
        linear_io=linear_io,
        layers=shape.layers,
    )
