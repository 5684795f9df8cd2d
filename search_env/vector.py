"""A vector env whose sub-envs share one retriever call per step."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from search_env.env import SearchQAEnv
from search_env.env_checks import check_options
from search_env.episode import EnvSnapshot, EnvState
from search_env.protocol import document_lines
from search_env.types import Passage
from search_env.vector_infos import merge_infos

__all__ = ["BatchStats", "SearchQAVectorEnv", "VectorState", "merge_infos"]

_RESET_OPTIONS = ("example", "group_size", "index", "reset_mask")
_SEED_SALT = 0x5EA4C4  # keeps the vector env's own stream apart from every sub-env's


@dataclass(frozen=True)
class BatchStats:
    """The one retriever call of a vector step (:attr:`SearchQAVectorEnv.last_batch`).

    Kept out of ``infos``, where Gymnasium expects one entry per sub-env.
    """

    queries: int = 0
    """Queries the sub-envs asked."""
    unique_queries: int = 0
    """Distinct queries sent to the retriever."""
    retrieval_time: float = 0.0
    """Seconds spent in ``retriever.search``."""


@dataclass(frozen=True, eq=False)
class VectorState:
    """A self-contained copy of a vector env: :meth:`SearchQAVectorEnv.get_state`.

    One :class:`~search_env.episode.EnvState` per sub-env plus the vector env's own
    flags and RNG; like them, safe to set any number of times. The retriever is not in it.
    """

    envs: tuple[EnvState, ...]
    active: tuple[bool, ...]
    needs_reset: tuple[bool, ...]
    started: bool
    rng: tuple[str, Mapping[str, Any], int | None] | None


class _Undo:
    """An undo log for one vector call: sub-env snapshots, restored newest first."""

    def __init__(self, vec: SearchQAVectorEnv) -> None:
        self.vec = vec
        rng = vec._np_random
        self.vec_state = (
            vec.active.copy(),
            vec._needs_reset.copy(),
            vec._started,
            rng,
            None if rng is None else rng.bit_generator.state,
            vec._np_random_seed,
        )
        self.entries: list[tuple[SearchQAEnv, EnvSnapshot]] = []

    def save(self, env: SearchQAEnv, *, full: bool = False) -> None:
        """Remember ``env`` as it is now; ``full`` before a reset (context and RNG too)."""
        self.entries.append((env, env.snapshot(context=full, rng=full)))

    def restore(self) -> None:
        for env, snapshot in reversed(self.entries):
            env.restore(snapshot)
        vec = self.vec
        active, needs_reset, vec._started, rng, state, seed = self.vec_state
        vec.active[:] = active
        vec._needs_reset[:] = needs_reset
        if rng is not None and state is not None:  # both set or both None
            rng.bit_generator.state = state
        vec._np_random, vec._np_random_seed = rng, seed


class SearchQAVectorEnv(VectorEnv):
    """``num_envs`` :class:`SearchQAEnv` copies stepped together in one process.

    Every sub-env whose step closes a ``<search>`` contributes its query to a single
    ``retriever.search(queries, k)`` call, so a batched retriever (BM25 over a sparse
    matrix, faiss, a remote server) sees the whole batch at once; :attr:`last_batch`
    describes that call (``infos`` keeps Gymnasium's one-entry-per-sub-env layout).

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
    ``{"reset_mask": bool array}`` resets only those sub-envs (with ``group_size``, whole
    groups only); ``{"example": QAExample}`` poses one question to every reset sub-env.

    Seeding: ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (a list gives one seed
    per sub-env) and :attr:`np_random`, which draws the group questions, with a stream
    derived from all of them, apart from every sub-env's.

    Failures: ``step`` and ``reset`` are atomic. Every action is checked before any
    sub-env consumes one; if anything raises later (the batched retrieval with
    ``on_retrieval_error="raise"``, a prompt that does not fit on autoreset), every
    sub-env, :attr:`active` and every RNG go back to where they were before the call,
    and the exception propagates. Retrying the same actions once the cause is fixed (a
    server back up) continues every episode as if the failure never happened.
    """

    def __init__(
        self,
        num_envs: int,
        env_fn: Callable[[], SearchQAEnv] | None = None,
        *,
        envs: Sequence[SearchQAEnv] | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
    ) -> None:
        if (
            isinstance(num_envs, (bool, np.bool_))
            or not isinstance(num_envs, (int, np.integer))
            or num_envs < 1
        ):
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        num_envs = int(num_envs)
        if envs is None:
            if env_fn is None:
                raise ValueError("pass env_fn or envs")
            envs = [env_fn() for _ in range(num_envs)]
        if len(envs) != num_envs:
            raise ValueError(f"got {len(envs)} envs for num_envs={num_envs}")
        first = envs[0]
        for env in envs:
            if not isinstance(env, SearchQAEnv):
                raise TypeError(f"sub-envs must be SearchQAEnv instances, got {type(env).__name__}")
            if env.retriever is not first.retriever:
                raise ValueError("all sub-envs must share one retriever object")
            if env.action_mode != first.action_mode or env.protocol != first.protocol:
                raise ValueError("all sub-envs must share the action mode and protocol")
        if len({id(env) for env in envs}) != num_envs:
            raise ValueError("the sub-envs must be distinct objects")
        self.envs = list(envs)
        self.num_envs = num_envs
        self.retriever = first.retriever
        self.action_mode = first.action_mode
        mode = (
            AutoresetMode(autoreset_mode)
            if isinstance(autoreset_mode, AutoresetMode)
            else {
                "next_step": AutoresetMode.NEXT_STEP,
                "same_step": AutoresetMode.SAME_STEP,
                "disabled": AutoresetMode.DISABLED,
            }.get(str(autoreset_mode).lower())
        )
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
        self._vocab = np.array([env.codec.vocab_size for env in self.envs], dtype=np.int64)
        self.last_batch = BatchStats()
        """The retriever call of the last step (zeros when it searched nothing)."""
        # The sub-envs write straight into these rows: one copy per step, not two.
        length = first.protocol.max_prompt_length
        self._tokens = np.zeros((num_envs, length), np.int64)
        self._mask = np.zeros((num_envs, length), np.int8)
        for i, env in enumerate(self.envs):
            env.bind_buffers(self._tokens[i], self._mask[i])

    @property
    def dataset(self) -> Sequence[Any]:
        return self.envs[0].dataset

    # ------------------------------------------------------------ snapshots
    def get_state(self) -> VectorState:
        """Every sub-env's :class:`EnvState` plus the flags and RNG (see :class:`VectorState`)."""
        rng = self._np_random
        saved = None
        if rng is not None:
            bit = rng.bit_generator
            saved = (type(bit).__name__, copy.deepcopy(bit.state), self._np_random_seed)
        return VectorState(
            envs=tuple(env.get_state() for env in self.envs),
            active=tuple(bool(a) for a in self.active),
            needs_reset=tuple(bool(a) for a in self._needs_reset),
            started=self._started,
            rng=saved,
        )

    def set_state(self, state: VectorState) -> None:
        """Put every sub-env and the vector env back in ``state``; atomic (a bad state,
        say one with another number of sub-envs or protocol, changes nothing)."""
        if not isinstance(state, VectorState):
            raise TypeError(f"set_state() takes a VectorState, got {type(state).__name__}")
        if len(state.envs) != self.num_envs:
            raise ValueError(
                f"set_state(): the state has {len(state.envs)} sub-envs, not {self.num_envs}"
            )
        generator = None
        if state.rng is not None:
            name, bit_state, _ = state.rng
            generator = np.random.Generator(getattr(np.random, name)())
            generator.bit_generator.state = copy.deepcopy(bit_state)
        undo = _Undo(self)
        try:
            for env, sub in zip(self.envs, state.envs):
                undo.save(env, full=True)
                env.set_state(sub)
        except BaseException:
            undo.restore()
            raise
        self.active[:] = state.active
        self._needs_reset[:] = state.needs_reset
        self._started = state.started
        self._np_random = generator
        self._np_random_seed = None if state.rng is None else state.rng[2]

    # ------------------------------------------------------------------ reset
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset the sub-envs of ``options["reset_mask"]`` (all by default); atomic."""
        options = check_options(options, _RESET_OPTIONS)
        mask = self._reset_mask(options.pop("reset_mask", None))
        seeds = self._seeds(seed)
        self._check_question_options(options, mask)
        undo = _Undo(self)
        sub_infos: list[dict[str, Any] | None] = [None] * self.num_envs
        try:
            if any(s is not None for s in seeds):
                super().reset(seed=self._vector_seed(seeds))
            indices = self._question_indices(options)
            for i in np.flatnonzero(mask):
                sub_opts = dict(options)
                if indices is not None:
                    sub_opts["index"] = int(indices[i])
                undo.save(self.envs[i], full=True)
                _, sub_infos[i] = self.envs[i].reset(seed=seeds[i], options=sub_opts)
        except BaseException:
            undo.restore()
            raise
        self.active[mask] = True
        self._needs_reset[mask] = False
        self._started = True
        return self._batch_obs(), merge_infos(sub_infos)

    def _reset_mask(self, mask: Any) -> np.ndarray:
        n = self.num_envs
        if mask is None:
            return np.ones(n, dtype=bool)
        mask = np.asarray(mask)
        if mask.shape != (n,) or mask.dtype != np.bool_:
            raise ValueError(f"options['reset_mask'] must be a bool array of shape ({n},)")
        return mask

    def _seeds(self, seed: Any) -> list[int | None]:
        """One seed (or None) per sub-env, checked before anything is reseeded."""
        n = self.num_envs
        if (
            seed is None
            or isinstance(seed, (int, np.integer))
            and not isinstance(seed, (bool, np.bool_))
        ):
            seeds = [None if seed is None else int(seed) + i for i in range(n)]
        elif isinstance(seed, (str, bytes, bool, np.bool_)) or not hasattr(seed, "__len__"):
            raise TypeError(
                f"seed must be an int, a sequence of {n} ints (or None) or None, got {seed!r}"
            )
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"got {len(seeds)} seeds for {n} envs")
        for s in seeds:
            if s is not None and (
                isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 0
            ):
                raise ValueError(f"seeds must be ints >= 0 or None, got {s!r}")
        return [None if s is None else int(s) for s in seeds]

    @staticmethod
    def _vector_seed(seeds: Sequence[int | None]) -> int:
        """The vector env's own seed: a function of every sub-env seed, equal to none of them."""
        entropy = [_SEED_SALT, *(0 if s is None else s + 1 for s in seeds)]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])

    def _check_question_options(self, options: dict[str, Any], mask: np.ndarray) -> None:
        """Validate ``index`` / ``group_size`` / ``example`` before anything is drawn."""
        n, size = self.num_envs, len(self.dataset)
        given = [key for key in ("example", "group_size", "index") if key in options]
        if len(given) > 1:
            raise ValueError(
                f"pass at most one of the reset options 'example', 'group_size', 'index'; got {given}"
            )
        if "index" in options:
            index = np.asarray(options["index"])
            if index.shape != (n,) or index.dtype.kind not in "iu":
                raise ValueError(
                    f"options['index'] must hold one int per sub-env ({n}), got {options['index']!r}"
                )
            if index.min() < 0 or index.max() >= size:
                raise ValueError(f"options['index'] entries must be ints in [0, {size})")
        if "group_size" in options:
            g = options["group_size"]
            if (
                isinstance(g, (bool, np.bool_))
                or not isinstance(g, (int, np.integer))
                or g < 1
                or n % g
            ):
                raise ValueError(
                    f"group_size must be a positive int dividing num_envs={n}, got {g!r}"
                )
            partial = [
                j for j, row in enumerate(mask.reshape(-1, g)) if row.any() and not row.all()
            ]
            if partial:
                j = partial[0]
                raise ValueError(
                    f"reset_mask covers part of group {j} (sub-envs {j * g}..{j * g + g - 1}): with "
                    f"group_size={g} reset whole groups, or the group would mix two questions"
                )

    def _question_indices(self, options: dict[str, Any]) -> np.ndarray | None:
        """Each sub-env's question (already checked), or None to let them draw."""
        if "index" in options:
            return np.asarray(options.pop("index"))
        if "group_size" in options:
            g = int(options.pop("group_size"))
            picks = self.np_random.integers(len(self.dataset), size=self.num_envs // g)
            return np.repeat(picks, g)
        return None

    # ------------------------------------------------------------------- step
    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every running sub-env; atomic (a step that raises changes nothing)."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = self._check_actions(actions)
        undo = _Undo(self)
        try:
            out, stats = self._step(actions, undo)
        except BaseException:
            undo.restore()
            raise
        self.last_batch = stats
        return out

    def _resetting(self) -> np.ndarray:
        """The sub-envs this step resets instead of stepping (``next_step`` autoreset)."""
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            return self._needs_reset.copy()
        return np.zeros(self.num_envs, dtype=bool)

    def _check_actions(self, actions: Any) -> Any:
        """Check every action that a sub-env will consume, before any consumes one."""
        n = self.num_envs
        consuming = self.active & ~self._resetting()
        if self.action_mode == "token":
            actions = np.asarray(actions)
            if actions.shape != (n,):
                raise ValueError(f"token-mode actions must have shape ({n},), got {actions.shape}")
            if actions.dtype.kind not in "iu":
                raise TypeError(
                    f"token-mode actions must be integer token ids, got dtype {actions.dtype}"
                )
            # One array test instead of a call per sub-env: this runs on every token.
            bad = np.flatnonzero(consuming & ((actions < 0) | (actions >= self._vocab)))
            if len(bad):
                i = int(bad[0])
                raise ValueError(
                    f"sub-env {i}: token id {actions[i]} out of range [0, {self._vocab[i]})"
                )
            return actions
        try:
            ok = not isinstance(actions, (str, bytes)) and len(actions) == n
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(
                f"chunk-mode actions must be a sequence of {n} token sequences (or None)"
            )
        for i in np.flatnonzero(consuming):
            if actions[i] is None:
                continue  # sits this step out
            try:
                self.envs[i].check_action(actions[i])
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"sub-env {i}: {exc}") from exc
        return actions

    def _step(
        self, actions: Any, undo: _Undo
    ) -> tuple[
        tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]], BatchStats
    ]:
        n = self.num_envs
        rewards = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        sub_infos: list[dict[str, Any] | None] = [None] * n
        stepping: list[int] = []
        resetting = self._resetting()
        for i, env in enumerate(self.envs):
            if resetting[i]:
                undo.save(env, full=True)
                _, sub_infos[i] = env.reset()
                self.active[i] = True
                self._needs_reset[i] = False
            elif self.active[i] and actions[i] is not None:
                undo.save(env)
                stepping.append(i)
        # Phase 1: consume agent tokens; collect the queries (several per sub-env when
        # max_queries_per_turn > 1).
        queries: list[str] = []
        asking: dict[int, tuple[str, ...]] = {}
        for i in stepping:
            wanted = self.envs[i].begin_step(actions[i])
            if wanted:
                queries.extend(wanted)
                asking[i] = wanted
        # Phase 2: one retriever call for the whole batch.
        results: dict[int, list[Sequence[Passage]] | Exception] = {}
        elapsed = 0.0
        unique: list[str] = []
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
                results = {i: [found[q] for q in wanted] for i, wanted in asking.items()}
            except Exception as exc:
                if any(self.envs[i].on_retrieval_error == "raise" for i in asking):
                    raise  # step() rolls every sub-env back
                results = {i: exc for i in asking}  # each env shows it as its information
            elapsed = time.perf_counter() - start
        # Phase 3: tokenize every new document in one batch call, then finish every step.
        lines: dict[int, list[list[str]]] = {
            i: [document_lines(r, self.envs[i].protocol) for r in res]
            for i, res in results.items()
            if not isinstance(res, Exception)
        }
        if lines:
            self.envs[0].codec.encode_pieces(
                [line for groups in lines.values() for group in groups for line in group]
            )
        for i in stepping:
            env = self.envs[i]
            obs, reward, term, trunc, info = env.finish_step(
                results.get(i), elapsed, lines=lines.get(i)
            )
            rewards[i], terminated[i], truncated[i] = reward, term, trunc
            if term or trunc:
                self.active[i] = False
                if self.autoreset_mode == AutoresetMode.SAME_STEP:
                    final_obs = {key: value.copy() for key, value in obs.items()}
                    final_info = info
                    undo.save(env, full=True)
                    _, info = env.reset()
                    info = dict(info, final_obs=final_obs, final_info=final_info)
                    self.active[i] = True
                elif self.autoreset_mode == AutoresetMode.NEXT_STEP:
                    self._needs_reset[i] = True
            sub_infos[i] = info
        stats = BatchStats(len(queries), len(unique), elapsed)
        return (self._batch_obs(), rewards, terminated, truncated, merge_infos(sub_infos)), stats

    def _batch_obs(self) -> dict[str, np.ndarray]:
        lengths = np.fromiter((env.context_length for env in self.envs), np.int64, self.num_envs)
        return {
            "tokens": self._tokens.copy(),
            "mask": self._mask.copy(),
            "length": lengths[:, None],
        }

    def close_extras(self, **kwargs: Any) -> None:
        for env in getattr(self, "envs", ()):  # a constructor that raised set none
            env.close()
