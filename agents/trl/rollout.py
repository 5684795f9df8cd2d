"""A ``rollout_func`` for TRL's ``GRPOTrainer`` that plays the exact Search-R1 protocol.

TRL (1.16) calls ``rollout_func(prompts, trainer)`` with the prompts of its generation
batch, each already repeated ``num_generations`` times in a row by its sampler, and
expects one completion per prompt. :class:`SearchR1Rollout` finds each prompt's question
(:func:`~agents.trl.dataset.prompt_index`), plays the episodes through this package's
chunk-mode vector env with :func:`agents.rollout.collect` (the trainer's model sampling
through :class:`~agents.policy.hf.HFPolicy`), and returns per episode:

* ``prompt_ids``: the env's prompt tokens;
* ``completion_ids``: every token after the prompt: agent turns, information blocks and
  invalid-action messages, exactly as in the env's context (nothing re-tokenized);
* ``logprobs``: the sampler's log-prob of each agent token (0 at env tokens);
* ``env_mask``: the env's own loss mask over the completion (1 = agent token, 0 = env
  token), which TRL multiplies into its loss mask;
* ``env_reward``, ``env_em``, ``env_f1``, ``env_cover_em``, ``env_searches``,
  ``env_turns``, ``env_answered``, ``env_index``: the episode's outcome, which TRL hands
  to the reward functions; :func:`env_reward` returns the env's reward (EM by default).

Generation is the trainer's model on its device (HF), or with ``use_vllm=True,
vllm_mode="colocate"`` TRL's colocated vLLM engine, which TRL has synced to the current
weights before the call (:mod:`agents.trl.vllm`); the server mode is refused. See
``docs/integrations/trl.md``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.policy.base import Policy
from agents.rollout import Trajectory, collect
from agents.seeding import step_seed
from agents.trl.dataset import base_env, prompt_index

logger = logging.getLogger(__name__)

EXTRA_FIELDS = (
    "env_reward",
    "env_em",
    "env_f1",
    "env_cover_em",
    "env_searches",
    "env_turns",
    "env_answered",
    "env_index",
)
"""The per-episode fields the rollout returns besides ids, log-probs and ``env_mask``."""


@dataclass(frozen=True)
class RolloutRecord:
    """What one ``rollout_func`` call played (one per TRL generation batch)."""

    step: int
    """``trainer.state.global_step`` at the call."""
    episodes: int
    agent_tokens: int
    """Tokens the model generated (mask 1) over all episodes."""
    env_tokens: int
    """Tokens the env inserted after the prompts (mask 0)."""
    seconds: float
    """Wall time of the call (generation plus env)."""
    reward: float
    """Mean episode reward."""
    searches: float
    """Mean searches per episode."""


def trajectory_fields(trajectories: Sequence[Trajectory], mask_env_tokens: bool = True) -> dict:
    """TRL's rollout output for played episodes (see the module docstring).

    ``mask_env_tokens=False`` (the masking ablation) returns an all-ones ``env_mask``.
    """
    out: dict[str, list[Any]] = {
        k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask", *EXTRA_FIELDS)
    }
    for t in trajectories:
        p = t.prompt_length
        out["prompt_ids"].append(t.tokens[:p].tolist())
        out["completion_ids"].append(t.tokens[p:].tolist())
        out["logprobs"].append(t.logprobs[p:].astype(float).tolist())
        mask = t.loss_mask[p:] if mask_env_tokens else np.ones(len(t.tokens) - p, np.int8)
        out["env_mask"].append(mask.astype(int).tolist())
        out["env_reward"].append(float(t.reward))
        for metric in ("em", "f1", "cover_em"):
            out[f"env_{metric}"].append(float(t.scores.get(metric, 0.0)))
        out["env_searches"].append(int(t.searches))
        out["env_turns"].append(int(t.turns))
        out["env_answered"].append(t.answer is not None)
        out["env_index"].append(int(t.index))
    return out


def check_sampling_args(args: Any) -> float:
    """The trainer's sampling temperature, after checking nothing else shapes sampling.

    The log-probs TRL trains on are recomputed at ``args.temperature``; the rollout
    samples from ``softmax(logits / temperature)`` exactly, so top-k / top-p / min-p,
    repetition penalties and extra generation kwargs would make the two disagree.

    Raises:
        ValueError: any of them is set, or the temperature is not > 0.
        NotImplementedError: ``use_vllm=True`` with ``vllm_mode="server"``
            (:func:`agents.trl.vllm.check_vllm_mode`).
    """
    if getattr(args, "use_vllm", False):
        from agents.trl.vllm import check_vllm_mode

        check_vllm_mode(args)
    if getattr(args, "mask_truncated_completions", False):
        raise ValueError(
            "mask_truncated_completions=True would drop every episode whose last token is "
            "not EOS (a Search-R1 turn ends on '</answer>'): set it to False"
        )
    neutral = {"top_p": 1.0, "top_k": 0, "min_p": None, "repetition_penalty": 1.0}
    for name, value in neutral.items():
        got = getattr(args, name, value)
        if got != value and not (name == "top_k" and got is None):
            raise ValueError(f"the search-env rollout samples with {name}={value}, got {got}")
    if getattr(args, "generation_kwargs", None):
        raise ValueError("the search-env rollout takes no generation_kwargs")
    temperature = float(args.temperature)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature


@dataclass
class SearchR1Rollout:
    """``rollout_func(prompts, trainer)`` over a chunk-mode search-env vector env.

    Build it with :func:`make_rollout_func`. Every call is summarised in :attr:`history`.

    Args:
        vec_env: a chunk-mode vector env with ``autoreset_mode="disabled"``; a call plays
            at most ``num_envs`` episodes at once (more prompts: several passes).
        max_new_tokens: one turn's token budget (None: the protocol's).
        seed: run seed; the sampler is reseeded from (seed, trainer step) every call.
        mask_env_tokens: False returns an all-ones ``env_mask`` (the masking ablation).
        policy: generate with this policy instead of the trainer's model (tests).
        keep_outputs: keep every call's output in :attr:`outputs` (tests).
    """

    vec_env: Any
    max_new_tokens: int | None = None
    seed: int = 0
    mask_env_tokens: bool = True
    policy: Policy | None = None
    keep_outputs: bool = False
    history: list[RolloutRecord] = field(default_factory=list)
    outputs: list[dict[str, list[Any]]] = field(default_factory=list)
    _lookup: dict[str, int] | None = field(default=None, init=False, repr=False)
    _hf_policy: Any = field(default=None, init=False, repr=False)
    _vllm_policy: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.vec_env.action_mode != "chunk" or self.vec_env.autoreset_mode.name != "DISABLED":
            raise ValueError("SearchR1Rollout needs a chunk-mode vector env without autoreset")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 or None, got {self.max_new_tokens}")

    def indices(self, prompts: Sequence[Any]) -> list[int]:
        """The question index of each prompt (a prompt text of :func:`questions_dataset`).

        Raises:
            TypeError: a prompt is not a string (a conversational dataset: use the tool path).
            KeyError: a prompt is not one of the env's prompts.
        """
        if self._lookup is None:
            self._lookup = prompt_index(self.vec_env)
        out = []
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise TypeError(
                    "the search-env rollout takes the prompt texts of "
                    f"agents.trl.dataset.questions_dataset, got a {type(prompt).__name__}"
                )
            if prompt not in self._lookup:
                raise KeyError(
                    f"prompt {prompt[:80]!r}... is none of the env's questions: build the "
                    "dataset with questions_dataset() on the same env id, split and kwargs"
                )
            out.append(self._lookup[prompt])
        return out

    def _policy(self, trainer: Any) -> Any:
        """The sampling policy: :attr:`policy`, else a VLLMPolicy on TRL's colocated engine
        (``use_vllm=True``), else an HFPolicy on the trainer's model."""
        if self.policy is not None:
            return self.policy
        if getattr(trainer.args, "use_vllm", False):
            llm = getattr(getattr(trainer, "vllm_generation", None), "llm", None)
            if self._vllm_policy is None or self._vllm_policy.llm is not llm:
                from agents.trl.vllm import colocated_policy

                tokenizer = base_env(self.vec_env).tokenizer
                self._vllm_policy = colocated_policy(trainer, tokenizer, seed=self.seed)
            return self._vllm_policy
        from agents.policy.hf import HFPolicy

        accelerator = getattr(trainer, "accelerator", None)
        model = trainer.model if accelerator is None else accelerator.unwrap_model(trainer.model)
        if self._hf_policy is None or self._hf_policy.model is not model:
            tokenizer = base_env(self.vec_env).tokenizer
            device = next(model.parameters()).device
            self._hf_policy = HFPolicy(model, tokenizer, device=device, seed=self.seed)
        return self._hf_policy

    def _engine_awake(self, trainer: Any) -> Any:
        """TRL's engine kept awake for the rollout (sleep mode), else a no-op block."""
        if self.policy is None and getattr(trainer.args, "use_vllm", False):
            from agents.trl.vllm import engine_awake

            return engine_awake(trainer.vllm_generation)
        return contextlib.nullcontext()

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, list[Any]]:
        """Play one episode per prompt; TRL's rollout output (see the module docstring)."""
        start = time.perf_counter()
        temperature = check_sampling_args(trainer.args)
        indices = self.indices(prompts)
        step = int(trainer.state.global_step)
        policy = self._policy(trainer)
        policy.seed(step_seed(self.seed, step, 0))
        trajectories: list[Trajectory] = []
        n = self.vec_env.num_envs
        with self._engine_awake(trainer):
            for lo in range(0, len(indices), n):
                trajectories += collect(
                    self.vec_env,
                    policy,
                    indices=indices[lo : lo + n],
                    temperature=temperature,
                    max_new_tokens=self.max_new_tokens,
                )
        played = [t.index for t in trajectories]
        if played != indices:  # collect keeps sub-env order; a mismatch is a broken invariant
            raise RuntimeError(f"played questions {played} for prompts of questions {indices}")
        out = trajectory_fields(trajectories, self.mask_env_tokens)
        agent = sum(t.agent_tokens for t in trajectories)
        total = sum(len(t.tokens) - t.prompt_length for t in trajectories)
        self.history.append(
            RolloutRecord(
                step=step,
                episodes=len(trajectories),
                agent_tokens=agent,
                env_tokens=total - agent,
                seconds=time.perf_counter() - start,
                reward=float(np.mean(out["env_reward"])),
                searches=float(np.mean(out["env_searches"])),
            )
        )
        if self.keep_outputs:
            self.outputs.append(out)
        return out


def make_rollout_func(
    env_id: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    split: str = "train",
    num_envs: int = 16,
    vec_env: Any = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    mask_env_tokens: bool = True,
    policy: Policy | None = None,
) -> SearchR1Rollout:
    """A ``rollout_func`` for ``GRPOTrainer(rollout_func=...)`` on a search-env id.

    Args:
        env_id: a registered search-env id (or pass ``vec_env``).
        env_kwargs: ``gym.make_vec`` keywords (``split`` is set from ``split``).
        split: dataset split of the training questions.
        num_envs: sub-envs: episodes played at once (set it to TRL's per-process
            generation batch, ``per_device_train_batch_size * steps_per_generation``).
        vec_env: an already-built chunk-mode vector env without autoreset, instead of
            ``env_id`` (its dataset must be the training dataset's).
        max_new_tokens: one turn's token budget (None: the protocol's).
        seed: run seed.
        mask_env_tokens: False for the masking ablation.
        policy: sample with this instead of the trainer's model (tests).
    """
    if vec_env is None:
        if env_id is None:
            raise ValueError("pass env_id or vec_env")
        import gymnasium as gym

        import search_env  # noqa: F401  (registers the ids)

        vec_env = gym.make_vec(
            env_id,
            num_envs=num_envs,
            action_mode="chunk",
            autoreset_mode="disabled",
            **{**dict(env_kwargs or {}), "split": split},
        )
    return SearchR1Rollout(
        vec_env,
        max_new_tokens=max_new_tokens,
        seed=seed,
        mask_env_tokens=mask_env_tokens,
        policy=policy,
    )


def env_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    env_reward: Sequence[float] | None = None,
    log_metric: Any = None,
    env_searches: Sequence[int] | None = None,
    env_em: Sequence[float] | None = None,
    **kwargs: Any,
) -> list[float]:
    """TRL reward function: each episode's reward as the env computed it (EM by default).

    Also logs the mean searches and EM per episode through TRL's ``log_metric``.

    Raises:
        KeyError: the trainer's rollout did not come from :class:`SearchR1Rollout`.
    """
    if env_reward is None:
        raise KeyError(
            "env_reward needs the 'env_reward' field of agents.trl.rollout's rollout_func"
        )
    if len(env_reward) != len(completions):
        raise ValueError(f"{len(env_reward)} rewards for {len(completions)} completions")
    if log_metric is not None:
        if env_searches is not None:
            log_metric("env/searches", float(np.mean(env_searches)))
        if env_em is not None:
            log_metric("env/em", float(np.mean(env_em)))
    return [float(r) for r in env_reward]
