"""The size and shape of a synthetic world, and the question shapes it can ask.

One spelling of the question types: ``metadata["type"]`` of a question is one of
:data:`QUESTION_TYPES` (``single``, ``bridge``, ``comparison``), and the number of hops
is ``len(metadata["hops"])``. :data:`QUESTION_MIX` lists the shapes that
:attr:`SynthConfig.question_mix` weighs, a bridge once per hop count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

FORMAT_VERSION = 1
"""Bumped whenever generation changes, so that cached worlds are rebuilt."""


class QuestionShape(NamedTuple):
    """A kind of question: its ``metadata["type"]`` and its number of hops."""

    type: str
    hops: int


QUESTION_MIX: tuple[QuestionShape, ...] = (
    QuestionShape("single", 1),
    QuestionShape("bridge", 2),
    QuestionShape("bridge", 3),
    QuestionShape("comparison", 2),
)
"""The shapes that :attr:`SynthConfig.question_mix` weighs, in its order."""
QUESTION_TYPES: tuple[str, ...] = tuple(dict.fromkeys(s.type for s in QUESTION_MIX))
"""Every ``metadata["type"]`` of a synthetic question: single, bridge, comparison."""

SIZES = {"tiny": 100, "small": 400, "medium": 5_000, "large": 100_000}
"""Entities of each named world size (``size=`` of ``SearchQA-Synth-v0``)."""


def _shape_names() -> str:
    return ", ".join(f"{s.hops}-hop {s.type}" for s in QUESTION_MIX)


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of a synthetic world; everything is derived from ``seed``."""

    seed: int = 0
    """Seed of every random choice; same config and seed give byte-identical files."""
    num_entities: int = 400
    """Entities in the world (about 53% people); scales corpus and questions linearly."""
    distractors_per_entity: float = 1.0
    """Expected distractor passages (near-namesakes, mentions) per entity."""
    test_fraction: float = 0.2
    """Probability that a question touching no held-out entity goes to ``test``."""
    heldout_entity_fraction: float = 0.1
    """Fraction of entities held out: a question involving one (in any hop) is test-only."""
    questions_per_entity: float = 1.0
    """Expected questions anchored on each entity (duplicates are dropped)."""
    question_mix: tuple[float, float, float, float] = (0.35, 0.3, 0.15, 0.2)
    """Relative weights of the shapes of :data:`QUESTION_MIX`: single-hop, 2-hop bridge,
    3-hop bridge and comparison."""

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if isinstance(self.num_entities, bool) or not isinstance(self.num_entities, int):
            raise ValueError(f"num_entities must be an int, got {self.num_entities!r}")
        if self.num_entities < 20:
            raise ValueError(f"num_entities must be >= 20, got {self.num_entities}")
        _check_float("distractors_per_entity", self.distractors_per_entity, 0.0, math.inf)
        _check_float("test_fraction", self.test_fraction, 0.0, 1.0)
        _check_float("heldout_entity_fraction", self.heldout_entity_fraction, 0.0, 1.0)
        _check_float("questions_per_entity", self.questions_per_entity, 0.0, math.inf)
        if self.questions_per_entity <= 0:
            raise ValueError("questions_per_entity must be > 0")
        mix = tuple(self.question_mix)
        if len(mix) != len(QUESTION_MIX):
            raise ValueError(
                f"question_mix needs {len(QUESTION_MIX)} weights ({_shape_names()}), got {mix!r}"
            )
        for w in mix:
            _check_float("question_mix weight", w, 0.0, math.inf)
        if sum(mix) <= 0:
            raise ValueError("question_mix weights must not all be zero")
        object.__setattr__(self, "question_mix", tuple(float(w) for w in mix))

    @classmethod
    def of_size(
        cls, size: str = "small", num_entities: int | None = None, seed: int = 0
    ) -> SynthConfig:
        """The world of a named :data:`SIZES` entry (or of ``num_entities``, when given)."""
        if size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
        return cls(seed=seed, num_entities=num_entities or SIZES[size])


def _check_float(name: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (lo <= value <= hi) or math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite and in [{lo}, {hi}], got {value!r}")
