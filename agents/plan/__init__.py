"""Memory planning before a run starts: per GPU, what a config's training holds.

- :mod:`agents.plan.shapes`: the Qwen2.5 shapes (shipped ``config.json`` facts) and exact
  parameter counts of a model built on the meta device.
- :mod:`agents.plan.memory`: the plan's terms (:func:`plan_memory`).
- :mod:`agents.plan.knobs`: which knob makes an over-budget config fit.
- :mod:`agents.plan.check`: ``search-env train``'s start-up check.
- :mod:`agents.plan.command`: ``search-env plan``.
"""

from agents.plan.check import PlanRefusedError, available_ram_bytes, check_config_fits
from agents.plan.knobs import Knob, suggest_knobs
from agents.plan.memory import GiB, Hardware, Plan, Term, plan_memory
from agents.plan.shapes import (
    QWEN2_5,
    ModelShape,
    ParamCount,
    UnknownShapeError,
    count_parameters,
    model_shape,
    qwen_shape,
)

__all__ = [
    "QWEN2_5",
    "GiB",
    "Hardware",
    "Knob",
    "ModelShape",
    "ParamCount",
    "Plan",
    "PlanRefusedError",
    "Term",
    "UnknownShapeError",
    "available_ram_bytes",
    "check_config_fits",
    "count_parameters",
    "model_shape",
    "plan_memory",
    "qwen_shape",
    "suggest_knobs",
]
