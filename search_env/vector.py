"""A vector env whose sub-envs share one retriever call per step."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from search_env.env import SearchQAEnv
from search_env.protocol import document_lines
from search_env.types import Passage


def merge_infos(infos: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Gymnasium's vector info layout: ``info[key][i]`` plus a ``info["_key"]`` mask.

    Same result as ``VectorEnv._add_info`` applied env by env, built one key at a time
    (numbers and bools as numeric arrays, anything else as object arrays, dicts nested).
    """
    n = len(infos)
    keys: dict[str, None] = {}
    for info in infos:
        if info:
            keys.update(dict.fromkeys(info))
    out: dict[str, Any] = {}
    for key in keys:
        present = np.fromiter((info is not None and key in info for info in infos), bool, n)
        values = [info[key] if info is not None and key in info else None for info in infos]
        given = [v for v, p in zip(values, present) if p]
        if key == "final_obs":
            array: Any = np.empty(n, dtype=object)
            array[:] = values
        elif all(isinstance(v, dict) for v in given):
            array = merge_infos([v if p else None for v, p in zip(values, present)])
        elif all(isinstance(v, (bool, np.bool_)) for v in given):
            array = np.array([bool(v) if p else False for v, p in zip(values, present)])
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in given):
            array = np.array([v if p else 0 for v, p in zip(values, present)], dtype=np.int64)
        elif all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in given):
            array = np.array([v if p else 0.0 for v, p in zip(values, present)], dtype=np.float64)
        else:
            array = np.empty(n, dtype=object)
            array[:] = values
        out[key] = array
        out[f"_{key}"] = present
    return out


class SearchQAVectorEnv(VectorEnv):
    """``num_envs`` :class:`SearchQAEnv` copies stepped together in one process.

    Every sub-env whose step closes a ``<search>`` contributes its query to a single
    ``retriever.search(queries, k)`` call, so a batched retriever (BM25 over a sparse
    matrix, faiss, a remote server) sees the whole batch at once.

    Actions: token mode, an int array of shape ``(num_envs,)``; chunk mode, a list of
    ``num_envs`` token-id sequences, where ``None`` lets a sub-env sit the step out
    (reward 0, observation unchanged).

    Autoreset (``autoreset_mode``): ``"next_step"`` (Gymnasium's default: the step after
    an episode ends resets that sub-env and ignores its action), ``"same_step"`` (reset at
    once; the last observation and info are in ``info["final_obs"]`` /
    ``info["final_info"]``) or ``"disabled"`` (finished sub-envs stay finished, ignore
    their actions and return reward 0 until reset with ``options={"reset_mask": m}``;
    :attr:`active` says which are running). GRPO uses ``"disabled"`` with group resets.

    Reset options: ``{"index": [i_0, ..., i_{n-1}]}`` picks each sub-env's question;
    ``{"group_size": g}`` draws one question per consecutive group of ``g`` sub-envs;
    ``{"reset_mask": bool array}`` resets only those sub-envs.
    """

    def __init__(
        self,
        num_envs: int,
        env_fn: Callable[[], SearchQAEnv] | None = None,
        *,
        envs: Sequence[SearchQAEnv] | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
    ) -> None:
        if envs is None:
            if env_fn is None:
                raise ValueError("pass env_fn or envs")
            if num_envs < 1:
                raise ValueError(f"num_envs must be >= 1, got {num_envs}")
            envs = [env_fn() for _ in range(num_envs)]
        if len(envs) != num_envs:
            raise ValueError(f"got {len(envs)} envs for num_envs={num_envs}")
        first = envs[0]
        for env in envs:
            if env.retriever is not first.retriever:
                raise ValueError("all sub-envs must share one retriever object")
            if env.action_mode != first.action_mode or env.protocol != first.protocol:
                raise ValueError("all sub-envs must share the action mode and protocol")
        self.envs = list(envs)
        self.num_envs = num_envs
        self.retriever = first.retriever
        self.action_mode = first.action_mode
        mode = AutoresetMode(autoreset_mode) if isinstance(autoreset_mode, AutoresetMode) else {
            "next_step": AutoresetMode.NEXT_STEP,
            "same_step": AutoresetMode.SAME_STEP,
            "disabled": AutoresetMode.DISABLED,
        }.get(str(autoreset_mode).lower())
        if mode is None:
            raise ValueError(
                f"autoreset_mode must be 'next_step', 'same_step' or 'disabled', got {autoreset_mode!r}"
            )
        self.autoreset_mode = mode
        self.metadata = {"autoreset_mode": mode, "render_modes": []}
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(first.observation_space, num_envs)
        if self.action_mode == "token":
            self.action_space = batch_space(first.action_space, num_envs)
        else:
            self.action_space = spaces.Tuple([first.action_space] * num_envs)
        self.active = np.zeros(num_envs, dtype=bool)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._started = False
        # The sub-envs write straight into these rows: one copy per step, not two.
        length = first.protocol.max_prompt_length
        self._tokens = np.zeros((num_envs, length), np.int64)
        self._mask = np.zeros((num_envs, length), np.int8)
        for i, env in enumerate(self.envs):
            env.bind_buffers(self._tokens[i], self._mask[i])

    @property
    def dataset(self) -> Sequence[Any]:
        return self.envs[0].dataset

    # ------------------------------------------------------------------ reset
    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        options = dict(options or {})
        n = self.num_envs
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(n, dtype=bool)
        mask = np.asarray(mask)
        if mask.shape != (n,) or mask.dtype != np.bool_:
            raise ValueError(f"options['reset_mask'] must be a bool array of shape ({n},)")
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"got {len(seeds)} seeds for {n} envs")
        if seed is not None:
            self._rng = np.random.default_rng(seeds[0])
        elif not hasattr(self, "_rng"):
            self._rng = np.random.default_rng()
        indices = self._question_indices(options, mask)
        sub_infos: list[dict[str, Any] | None] = [None] * n
        self._started = True
        for i in np.flatnonzero(mask):
            sub_opts = dict(options)
            if indices is not None:
                sub_opts["index"] = int(indices[i])
            _, sub_infos[i] = self.envs[i].reset(seed=seeds[i], options=sub_opts)
            self.active[i] = True
            self._needs_reset[i] = False
        return self._batch_obs(), merge_infos(sub_infos)

    def _question_indices(self, options: dict[str, Any], mask: np.ndarray) -> np.ndarray | None:
        n, size = self.num_envs, len(self.dataset)
        if "index" in options:
            index = np.asarray(options.pop("index"))
            if index.shape != (n,):
                raise ValueError(f"options['index'] must have one entry per sub-env ({n})")
            if index.dtype.kind not in "iu" or index.min() < 0 or index.max() >= size:
                raise ValueError(f"options['index'] entries must be ints in [0, {size})")
            return index
        if "group_size" in options:
            g = options.pop("group_size")
            if not isinstance(g, (int, np.integer)) or g < 1 or n % g:
                raise ValueError(f"group_size must be a positive divisor of num_envs={n}, got {g!r}")
            picks = self._rng.integers(size, size=n // g)
            return np.repeat(picks, g)
        return None

    # ------------------------------------------------------------------- step
    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        if not self._started:
            raise RuntimeError("call reset() before step()")
        if self.action_mode == "token":
            actions = np.asarray(actions)
            if actions.shape != (n,):
                raise ValueError(f"token-mode actions must have shape ({n},), got {actions.shape}")
        elif len(actions) != n:
            raise ValueError(f"chunk-mode actions must be a sequence of {n} token sequences")
        rewards = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        sub_infos: list[dict[str, Any] | None] = [None] * n
        stepping: list[int] = []
        for i, env in enumerate(self.envs):
            if self._needs_reset[i] and self.autoreset_mode == AutoresetMode.NEXT_STEP:
                _, sub_infos[i] = env.reset()
                self.active[i] = True
                self._needs_reset[i] = False
            elif self.active[i] and not (self.action_mode == "chunk" and actions[i] is None):
                stepping.append(i)
        # Phase 1: consume agent tokens; collect the queries.
        queries: list[str] = []
        asking: list[int] = []
        for i in stepping:
            query = self.envs[i].begin_step(actions[i])
            if query is not None:
                queries.append(query)
                asking.append(i)
        # Phase 2: one retriever call for the whole batch.
        results: dict[int, Sequence[Passage] | Exception] = {}
        elapsed = 0.0
        if queries:
            start = time.perf_counter()
            unique = list(dict.fromkeys(queries))  # GRPO groups often repeat a query
            try:
                batch = self.retriever.search(unique, self.envs[0].protocol.topk)
                if len(batch) != len(unique):
                    raise RuntimeError(
                        f"retriever returned {len(batch)} result lists for {len(unique)} queries"
                    )
                found = dict(zip(unique, batch))
                results = {i: found[q] for i, q in zip(asking, queries)}
            except Exception as exc:  # each env flags or re-raises it
                results = {i: exc for i in asking}
            elapsed = time.perf_counter() - start
        # Phase 3: tokenize every new document in one batch call, then finish every step.
        lines: dict[int, list[str]] = {
            i: document_lines(res, self.envs[i].protocol)
            for i, res in results.items()
            if not isinstance(res, Exception)
        }
        if lines:
            self.envs[0].codec.encode_pieces([line for group in lines.values() for line in group])
        for i in stepping:
            env = self.envs[i]
            obs, reward, term, trunc, info = env.finish_step(results.get(i), elapsed, lines=lines.get(i))
            rewards[i], terminated[i], truncated[i] = reward, term, trunc
            if term or trunc:
                self.active[i] = False
                if self.autoreset_mode == AutoresetMode.SAME_STEP:
                    final_obs = {key: value.copy() for key, value in obs.items()}
                    final_info = info
                    _, info = env.reset()
                    info = dict(info, final_obs=final_obs, final_info=final_info)
                    self.active[i] = True
                elif self.autoreset_mode == AutoresetMode.NEXT_STEP:
                    self._needs_reset[i] = True
            sub_infos[i] = info
        infos = merge_infos(sub_infos)
        if queries:
            infos["batch_queries"] = len(queries)
            infos["batch_unique_queries"] = len(unique)
            infos["batch_retrieval_time"] = elapsed
        return self._batch_obs(), rewards, terminated, truncated, infos

    def _batch_obs(self) -> dict[str, np.ndarray]:
        lengths = np.fromiter((env.context_length for env in self.envs), np.int64, self.num_envs)
        return {"tokens": self._tokens.copy(), "mask": self._mask.copy(), "length": lengths[:, None]}

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()
