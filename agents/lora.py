"""LoRA (``peft``) for one-GPU users: adapters on every linear layer, the reference as the
same weights with the adapters off, merged weights for a sampler with its own copy (vLLM).

Needs the ``[lora]`` extra (``pip install search-env[lora]``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _import_peft() -> Any:
    try:
        import peft
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("model.lora_rank > 0 needs peft: pip install 'search-env[lora]'") from e
    return peft


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT model (adapters wrapped around a base model)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def wrap_lora(model: nn.Module, rank: int, alpha: int) -> nn.Module:
    """``model`` with LoRA adapters of ``rank`` on every linear layer but the LM head.

    Only the adapters train; they start at zero (``lora_B = 0``), so the wrapped model
    computes what ``model`` did. No LoRA dropout (the update scores tokens as sampled).
    """
    if rank < 1 or alpha < 1:
        raise ValueError(f"LoRA needs rank >= 1 and alpha >= 1, got {rank} and {alpha}")
    peft = _import_peft()
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


def adapters_are_zero(model: nn.Module) -> bool:
    """Whether every LoRA update ``B @ A`` is zero (untrained adapters)."""
    return all(not bool(p.detach().any()) for n, p in model.named_parameters() if "lora_B" in n)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict (Hugging Face names) with the adapters merged in:
    ``W + scale * B @ A`` per adapted layer, as ``merge_and_unload`` would give, without
    touching ``model``. A plain model's own ``state_dict()``."""
    if not is_peft(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                active = [a for a in module.active_adapters if a in module.lora_A]
                if active:
                    deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in active)
        merged = {}
        for key, value in base.state_dict().items():
            if "lora_" in key:
                continue
            clean = key.replace(".base_layer.", ".")
            delta = deltas.get(clean)
            merged[clean] = value.detach() if delta is None else (value + delta).detach()
    return merged


def save_merged(model: nn.Module, path: str | Path) -> None:
    """``save_pretrained`` of the merged model (a PEFT model saves only its adapters)."""
    if not is_peft(model):
        model.save_pretrained(path)  # type: ignore[operator]
        return
    model.get_base_model().save_pretrained(path, state_dict=merged_state_dict(model))


class _HeadWithAdaptersOff(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)  # not a submodule: no parameters here

    @property
    def weight(self) -> torch.Tensor:
        return self._model.get_output_embeddings().weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with self._model.disable_adapter():
            return self._model.get_output_embeddings()(hidden)


class AdaptersOff(nn.Module):
    """The frozen reference of a LoRA policy: the very same module with its adapters
    disabled during every call (no second copy of the weights).

    What :func:`agents.model.forward_tokens` reads of a model is forwarded to the PEFT
    model (its decoder, config, parameters); its forward runs in ``disable_adapter()``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)  # not a submodule: not trained, not saved

    @property
    def config(self) -> Any:
        return self._model.config

    def parameters(self, recurse: bool = True) -> Any:  # the device lives there
        return self._model.parameters(recurse)

    def get_decoder(self) -> nn.Module:
        return self._model.get_decoder()

    def get_base_model(self) -> nn.Module:
        return self._model.get_base_model()

    def get_output_embeddings(self) -> nn.Module:
        return _HeadWithAdaptersOff(self._model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._model.disable_adapter():
            return self._model(*args, **kwargs)


def lora_reference(model: nn.Module) -> nn.Module:
    """The KL reference of a LoRA policy: its base weights with the adapters off while
    the adapters are untrained; once trained (a warm start ran), a frozen merged copy."""
    if adapters_are_zero(model):
        return AdaptersOff(model)
    ref = copy.deepcopy(model).merge_and_unload().eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
