"""A run's randomness, all of it a pure function of the run seed.

Global generators are seeded once at set-up; every later draw (the questions of a step,
the sampler's and the shuffle's seeds) depends only on (seed, step[, stream]), so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed that depends only on (run seed, step, stream): resume-safe randomness."""
    return int(np.random.default_rng([seed, step, stream]).integers(2**62))


def question_indices(num_questions: int, count: int, seed: int, step: int) -> np.ndarray:
    """Questions of one step: ``count`` distinct indices, a pure function of (seed, step)
    so a resumed run draws exactly what an uninterrupted one would."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(num_questions, size=count, replace=count > num_questions)
