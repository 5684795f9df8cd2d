"""Test doubles that fail on purpose: a retriever that is down for a while, a long question."""

from __future__ import annotations

from collections.abc import Sequence

from search_env.retrievers.base import RetrievalError
from search_env.types import Passage, QAExample
from tests.conftest import PASSAGES, MemoryRetriever

# A question whose prompt cannot fit a 4096-token context with the test tokenizer.
LONG_QUESTION = QAExample("long", "word " * 5000, ("x",))


class FlakyRetriever(MemoryRetriever):
    """A :class:`MemoryRetriever` whose next ``failures`` calls raise (a server that is down).

    Failed calls are not recorded in ``calls``; ``failed`` counts them.
    """

    def __init__(self, passages: Sequence[Passage] = PASSAGES, failures: int = 0) -> None:
        super().__init__(passages)
        self.failures = failures
        self.failed = 0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if self.failures > 0:
            self.failures -= 1
            self.failed += 1
            raise RetrievalError("server at http://127.0.0.1:9 is down")
        return super().search(queries, k)


def rng_state(owner) -> tuple:
    """An env's (or vector env's) RNG as it is, without creating one."""
    rng = owner._np_random
    return (id(rng), None if rng is None else rng.bit_generator.state, owner._np_random_seed)


def env_state(env) -> dict:
    """Everything a call that raised must leave as it was (observation, episode, RNG)."""
    obs = env._obs()
    return {
        "tokens": obs["tokens"].tolist(),
        "mask": obs["mask"].tolist(),
        "length": int(obs["length"][0]),
        "done": env.done,
        "example": env.example,
        "index": env._index,
        "turn": env._turn_index,
        "searches": env._searches,
        "queries": list(env._queries),
        "answer": env._answer,
        "turn_data": bytes(env._turn.data),
        "turn_tokens": env._turn.tokens,
        "pending": env._pending,
        "rng": rng_state(env),
    }


def vec_state(vec) -> dict:
    """The same for a vector env: every sub-env plus the batch arrays and flags."""
    obs = vec._batch_obs()
    return {
        "obs": {key: value.tolist() for key, value in obs.items()},
        "active": vec.active.tolist(),
        "needs_reset": vec._needs_reset.tolist(),
        "started": vec._started,
        "rng": rng_state(vec),
        "last_batch": vec.last_batch,
        "envs": [env_state(env) for env in vec.envs],
    }


def plain(value, drop=("retrieval_time", "_retrieval_time")):
    """Infos and observations as plain Python values, timings dropped, for ``==``."""
    import numpy as np

    if isinstance(value, dict):
        return {k: plain(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, np.ndarray):
        return [plain(v, drop) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v, drop) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
