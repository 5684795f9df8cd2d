"""Run configuration of the GRPO / PPO trainers: one dataclass per component, nested in
:class:`TrainConfig`, with named presets and JSON I/O.

- :mod:`agents.config.schema`: the dataclasses and their cross-field checks.
- :mod:`agents.config.presets`: ``tiny-cpu``, ``search-r1-3b``, ``search-r1-3b-grpo``.
- :mod:`agents.config.io`: dict / JSON round trips and dotted-key overrides, every value
  checked against its field's type.
- :mod:`agents.config.values`: those types (generic over config dataclasses).
"""

from agents.config.io import (
    apply_overrides,
    build_config,
    from_dict,
    load_config,
    read_config,
    save_config,
    to_dict,
)
from agents.config.presets import (
    PRESETS,
    TINY_WORLD,
    preset,
    search_r1_3b,
    search_r1_3b_grpo,
    tiny_cpu,
)
from agents.config.schema import (
    Algo,
    FSDPConfig,
    GRPOConfig,
    ModelConfig,
    PPOConfig,
    RolloutConfig,
    SFTConfig,
    TrainConfig,
)

__all__ = [
    "PRESETS",
    "TINY_WORLD",
    "Algo",
    "FSDPConfig",
    "GRPOConfig",
    "ModelConfig",
    "PPOConfig",
    "RolloutConfig",
    "SFTConfig",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "from_dict",
    "load_config",
    "preset",
    "read_config",
    "save_config",
    "search_r1_3b",
    "search_r1_3b_grpo",
    "tiny_cpu",
    "to_dict",
]
