"""The policy model: loading it, its frozen reference copy, PPO's value head, and the
per-token forward pass (log-probs, entropy and values of every token given its prefix,
through the model's own output path, logits a chunk at a time)."""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

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
    and tokenizer are loaded from ``path``. Dropout is turned off; with ``lora_rank > 0``
    the model is wrapped in LoRA adapters (:mod:`agents.lora`).
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
    disable_dropout(model)
    if cfg.lora_rank > 0:
        from agents.lora import wrap_lora

        model = wrap_lora(model, cfg.lora_rank, cfg.lora_alpha)
    check_logit_head(model)  # the trainer's logits are the sampler's
    if cfg.gradient_checkpointing:
        if resolve_device(cfg.device).type != "cuda":
            logger.warning("gradient checkpointing is meant for GPUs; enabling it anyway")
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
        if cfg.lora_rank > 0:  # frozen embeddings: checkpointed blocks still need a graph
            model.enable_input_require_grads()
    return model, tokenizer


def disable_dropout(model: nn.Module) -> None:
    """Dropout off for good, as TRL's ``disable_dropout``: the update's ``train()`` mode
    must score tokens under the distribution the sampler drew them from (``eval()``).

    Sets ``p = 0`` on every ``nn.Dropout``, every float ``*dropout*`` attribute of a module
    to 0 (HF attention layers keep their rate as a float, e.g. Qwen2's
    ``attention_dropout``) and the config's ``*dropout*`` fields to 0 (saved with it).
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for key, value in list(vars(module).items()):
            if "dropout" in key and isinstance(value, float):
                setattr(module, key, 0.0)
    config = getattr(model, "config", None)
    configs = [] if config is None else [config]
    if config is not None and hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for conf in configs:
        for key, value in list(vars(conf).items()):
            if "dropout" in key and isinstance(value, float):
                setattr(conf, key, 0.0)


def model_eos_ids(path: str) -> list[int]:
    """The EOS ids a model directory or hub id declares: its generation config's
    ``eos_token_id`` (a list for instruct models, e.g. Qwen2.5-Instruct's
    ``<|im_end|>`` and ``<|endoftext|>``) and its config's; ``[]`` if none."""
    from transformers import AutoConfig, GenerationConfig

    ids: set[int] = set()
    sources: list[Any] = [AutoConfig.from_pretrained(path).get_text_config()]
    try:
        sources.append(GenerationConfig.from_pretrained(path))
    except OSError:  # no generation_config.json: the config's EOS only
        pass
    for source in sources:
        eos = getattr(source, "eos_token_id", None)
        if eos is None:
            continue
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return sorted(ids)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy (the KL reference policy); of a LoRA model, its base weights with
    the adapters off (:func:`agents.lora.lora_reference`)."""
    from agents.lora import is_peft, lora_reference

    if is_peft(model):
        return lora_reference(model)
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


LOGIT_CHUNK_TOKENS = 1024
"""Positions whose logits exist at once in :func:`forward_tokens`: 1,024 x 151,936 x 4 B
= 0.6 GB of fp32 logits for Qwen2.5 (plus as much for the softmax of the entropy)."""

# `logits_to_keep` as an empty index tensor: the model's head runs on no position at all.
_NO_POSITIONS = torch.zeros(0, dtype=torch.long)


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model.forward`` (or, through a PEFT wrapper, its base model's) takes
    ``logits_to_keep``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def final_hidden(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
) -> torch.Tensor:
    """The hidden state the model's LM head reads (after the final norm) ``# (B, T, H)``.

    It comes from the model's own ``forward`` (so a PEFT wrapper, adapters and any
    forward hooks take part), captured by a hook on its decoder, while
    ``logits_to_keep`` (an empty index tensor) makes the head compute no logits at all.
    HF's ``logits_to_keep`` index tensor cannot give the kept positions themselves: it
    selects the same sequence positions in every row, at once, as ``(B, K, V)``, with no
    chunking; :func:`logit_head` applies the head chunk by chunk instead.
    ``attention_mask=None`` with ``position_ids`` restarting at 0: packed rows
    (:mod:`agents.packing`).
    """
    decoder = model.get_decoder()
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    kwargs["position_ids"] = position_ids
    if not _accepts_logits_to_keep(model):  # an older or custom model: its decoder alone
        return decoder(**kwargs)[0]
    handle = decoder.register_forward_hook(keep)
    try:
        model(**kwargs, use_cache=False, logits_to_keep=_NO_POSITIONS.to(input_ids.device))
    finally:
        handle.remove()
    return captured[-1]


def logit_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's map from final hidden states ``# (N, H)`` to logits ``# (N, V)``.

    The output embedding (PEFT-wrapped when adapters target it) followed by the final
    logit transform the model's ``forward`` applies after it, in the model's dtype as
    there: soft-capping (Gemma 2/3 ``final_logit_softcapping``), Cohere's ``logit_scale``
    (a product) or Granite's ``logits_scaling`` (a quotient). :func:`check_logit_head`
    compares the result with the model's own logits, so a transform missing here is an
    error rather than a silently different distribution.
    """
    head = model.get_output_embeddings()
    config = model.config.get_text_config()
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divide = getattr(config, "logits_scaling", None)

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        logits = head(hidden)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        return logits

    return apply


def check_logit_head(model: nn.Module, tokens: int = 6) -> None:
    """Check :func:`final_hidden` + :func:`logit_head` against ``model(...).logits``.

    A short probe sequence (full logits of ``tokens`` positions are cheap).

    Raises:
        ValueError: the model's logits differ (a final transform :func:`logit_head` does
            not know): the trainer would score tokens under another distribution than
            the sampler's.
    """
    device = next(model.parameters()).device
    vocab = int(model.get_output_embeddings().weight.shape[0])
    ids = (torch.arange(tokens, device=device)[None] * 7919 + 3) % vocab
    mask = torch.ones_like(ids)
    positions = torch.arange(tokens, device=device)[None]
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = logit_head(model)(final_hidden(model, ids, mask, positions))
    tol = 2e-2 if want.dtype in (torch.bfloat16, torch.float16) else 1e-4
    want, got = want.double(), got.double()
    err = float((want - got).abs().max() / want.abs().max().clamp(min=1e-6))
    if got.shape != want.shape or err > tol:
        raise ValueError(
            f"{type(model).__name__}'s forward transforms its logits in a way "
            "agents.model.logit_head does not reproduce (relative difference "
            f"{err:.2e}); teach logit_head its final logit transform"
        )


def _score_chunk(
    head: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    entropy: bool,
    entropy_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each label and (optionally) the entropy, for ``# (n, H)`` hidden states."""
    logits = upcast(head(hidden)) / temperature  # (n, V)
    logp = logprobs_from_logits(logits, labels)
    if not entropy:
        return logp, logp.new_zeros(())
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        return logp, entropy_from_logits(logits)


def score_positions(
    head: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = True,
    chunk_tokens: int = LOGIT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of ``labels`` ``# (N,)`` given hidden states ``# (N, H)``,
    never holding more than ``chunk_tokens`` positions' logits.

    With gradients and more than one chunk, each chunk is checkpointed: its forward keeps
    only its hidden states, and the backward recomputes its logits one chunk at a time.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    n = hidden.shape[0]
    if n <= chunk_tokens:  # one chunk: no recomputation needed
        logp, ent = _score_chunk(head, hidden, labels, temperature, entropy, entropy_grad)
        return logp, ent if entropy else None
    grad = torch.is_grad_enabled() and hidden.requires_grad
    logps, ents = [], []
    for i in range(0, n, chunk_tokens):
        args = (head, hidden[i : i + chunk_tokens], labels[i : i + chunk_tokens])
        if grad:
            logp, ent = checkpoint(
                _score_chunk, *args, temperature, entropy, entropy_grad, use_reentrant=False
            )
        else:
            logp, ent = _score_chunk(*args, temperature, entropy, entropy_grad)
        logps.append(logp)
        ents.append(ent)
    return torch.cat(logps), torch.cat(ents) if entropy else None


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
    chunk_tokens: int = LOGIT_CHUNK_TOKENS,
) -> TokenOutputs:
    """Log-probs (and optionally entropy and values) of every token given its prefix.

    One backbone pass, through the model's own ``forward`` (:func:`final_hidden`), feeds
    both the LM head and the value head. The logits are those of the model's own output
    path (:func:`logit_head`: final transforms such as soft-capping included) divided by
    ``temperature``, as at sampling time, so the log-probs match the rollout's. They are
    computed only at the kept positions and ``chunk_tokens`` positions at a time
    (:func:`score_positions`): never ``(B, T, V)``.

    The token shift: the hidden state at position ``t`` predicts token ``t + 1``, so
    ``hidden[:, :-1]`` is scored against ``ids[:, 1:]``; the results are then shifted
    back right by one, so that position ``t`` of every output is about token ``t``
    (and ``V[t]`` is the value of the state before token ``t``).

    Args:
        model: a ``transformers`` causal LM (or a PEFT model wrapping one).
        input_ids: ``# (B, T)`` right-padded.
        attention_mask: ``# (B, T)``.
        temperature: sampling temperature.
        entropy: also return the entropy of each token's distribution.
        entropy_grad: keep the entropy in the autograd graph (False when it is only
            logged).
        value_head: also return ``V[t]`` = value of the state before token ``t``.
        only: ``# (B, T)``; when given, log-probs and entropy are computed only where it
            is nonzero (0 elsewhere). The LM head is most of a tiny model's cost and
            agent tokens are a fraction of the context, so this saves most of the work.
        chunk_tokens: positions whose logits exist at once.
    """
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    mask = attention_mask.to(device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = final_hidden(model, ids, mask, positions)  # (B, T, H)
    # The shift: hidden[:, t] predicts ids[:, t + 1] (both (B, T-1) below).
    real = mask[:, 1:] != 0  # (B, T-1): the predicted token is real
    keep = real if only is None else real & (only.to(device)[:, 1:] != 0)
    # Only the kept positions: (N, H) instead of (B, T-1, H).
    logp, ent = score_positions(
        logit_head(model),
        hidden[:, :-1][keep],
        ids[:, 1:][keep],
        temperature=temperature,
        entropy=entropy,
        entropy_grad=entropy_grad,
        chunk_tokens=chunk_tokens,
    )

    def align(x: torch.Tensor) -> torch.Tensor:
        """Scatter kept-position values ``# (N,)`` back to ``# (B, T-1)``, then shift right
        by one (a zero column first) so position ``t`` is token ``t``'s: ``# (B, T)``."""
        full = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
        full = full.index_put(keep.nonzero(as_tuple=True), x)
        return torch.cat([full.new_zeros((full.shape[0], 1)), full], dim=1)

    out = TokenOutputs(logprobs=align(logp), entropy=None if ent is None else align(ent))
    if value_head is not None:
        values = torch.where(real, value_head(hidden[:, :-1]), 0.0)  # (B, T-1)
        # Shifted right by one like the log-probs: V[t] is the state before token t.
        out.values = torch.cat([values.new_zeros((values.shape[0], 1)), values], dim=1)
    return out
