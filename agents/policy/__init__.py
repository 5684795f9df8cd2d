"""Policies that write the agent's turns: the protocol and its back ends.

``HFPolicy`` needs torch and transformers, ``VLLMPolicy`` vllm too (the ``[vllm]`` extra);
both are imported on first use.
"""

from __future__ import annotations

from typing import Any

from agents.policy.base import DEFAULT_STOP_STRINGS, FinishReason, Generation, Policy
from agents.policy.scripted import ScriptedPolicy
from agents.policy.stopping import StopChecker

__all__ = [
    "DEFAULT_STOP_STRINGS",
    "FinishReason",
    "Generation",
    "HFPolicy",
    "Policy",
    "ScriptedPolicy",
    "StopChecker",
    "VLLMPolicy",
]


def __getattr__(name: str) -> Any:
    if name == "HFPolicy":
        from agents.policy.hf import HFPolicy

        return HFPolicy
    if name == "VLLMPolicy":
        from agents.policy.vllm import VLLMPolicy

        return VLLMPolicy
    raise AttributeError(f"module 'agents.policy' has no attribute {name!r}")
