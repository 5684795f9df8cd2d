"""Rollouts: the one place that knows both the environment and the policy.

:func:`collect` plays one episode per sub-env of a chunk-mode
:class:`~search_env.vector.SearchQAVectorEnv` (autoreset disabled) with a
:class:`~agents.policy.base.Policy`, one turn per step, all sub-envs' turns generated in
one batch and their searches retrieved in one call. Agent tokens are kept exactly as
generated (ids and sampling log-probs); environment tokens come from the env.
:func:`make_env` builds the vector env it needs, :func:`rollout_stats` summarises the
episodes, :func:`to_batch` pads them into training tensors and :func:`response_mask` marks
their response tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.policy.base import Policy

if TYPE_CHECKING:
    import torch

    from agents.config import RolloutConfig
    from search_env.vector import SearchQAVectorEnv


class RolloutError(RuntimeError):
    """The env and the policy disagree about the tokens of a turn."""


@dataclass(frozen=True, eq=False)
class Trajectory:
    """One finished episode, token by token.

    Attributes:
        tokens: the whole context ``# (L,)`` int64: prompt, agent turns, env insertions.
        loss_mask: ``# (L,)`` int8, 1 at agent tokens, 0 at environment tokens.
        logprobs: ``# (L,)`` float32, the sampling log-prob of each agent token (see
            :class:`~agents.policy.base.Generation`), 0 at environment tokens.
        prompt_length: tokens of the initial prompt.
        reward: the env's reward for the episode.
        scores: every metric of the final answer (``em``, ``f1``, ``cover_em``): the
            answer's own scores, whatever reward the env pays.
        reward_components: the env's ``info["reward_components"]`` at the episode's end
            (:data:`search_env.reward_config.COMPONENTS`: ``em``, ``format_valid``,
            ``retrieval_hit``, ...); empty for an env that reports none.
        searches: searches executed.
        turns: agent turns played.
        answer: the answer the agent gave, or None.
        index: the question's index in the env's dataset.
        group: group id (sequences sharing a question for GRPO share a group).
        terminated: the agent answered (False: truncated by the turn or context limit).
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    logprobs: np.ndarray
    prompt_length: int
    reward: float
    scores: dict[str, float] = field(default_factory=dict)
    reward_components: dict[str, float] = field(default_factory=dict)
    searches: int = 0
    turns: int = 0
    answer: str | None = None
    index: int = -1
    group: int = 0
    terminated: bool = False

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if len(self.loss_mask) != n or len(self.logprobs) != n:
            raise ValueError(
                f"tokens, loss_mask and logprobs must have one length, got "
                f"{n}, {len(self.loss_mask)}, {len(self.logprobs)}"
            )

    @property
    def agent_tokens(self) -> int:
        """How many tokens the agent wrote."""
        return int(self.loss_mask.sum())

    def agent_spans(self) -> list[tuple[int, int]]:
        """``[start, end)`` of each maximal run of agent tokens (roughly, each turn)."""
        edges = np.diff(np.concatenate([[0], self.loss_mask.astype(np.int8), [0]]))
        return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def make_env(
    rollout: RolloutConfig,
    split: str,
    num_envs: int,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    eos_token_ids: Sequence[int] | None = None,
) -> Any:
    """A chunk-mode vector env without autoreset, as :func:`collect` needs.

    Args:
        rollout: env id and kwargs.
        split: dataset split (``train`` / ``test``).
        num_envs: sub-envs.
        tokenizer: passed as ``tokenizer=`` when given (a real model's own tokenizer).
        vocab_size: the model's logits count (``model.config.vocab_size``) when given:
            Qwen2.5 has 151,936 logits but 151,665 tokenizer ids, and a padding id
            sampled past ``len(tokenizer)`` must still be a valid action.
        eos_token_ids: the model's own EOS ids (:func:`agents.model.model_eos_ids`),
            added to the env's stop set next to any in ``rollout.env_kwargs``; the
            policy's stop ids come from that set (:func:`collect`).
    """
    import gymnasium as gym

    import search_env  # noqa: F401  (registers the ids)

    kwargs = dict(rollout.env_kwargs)
    kwargs["split"] = split
    if tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    if eos_token_ids:
        kwargs["eos_token_ids"] = sorted(
            {int(e) for e in eos_token_ids} | {int(e) for e in kwargs.get("eos_token_ids") or ()}
        )
    return gym.make_vec(
        rollout.env_id, num_envs=num_envs, action_mode="chunk", autoreset_mode="disabled", **kwargs
    )


def _episode_plan(
    num_envs: int, indices: Sequence[int] | None, group_size: int | None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Reset options, which sub-envs play, and the group of each sub-env."""
    everyone = np.ones(num_envs, dtype=bool)
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if indices is None:
        if group_size is None:
            return {}, everyone, np.arange(num_envs)
        if num_envs % group_size:
            raise ValueError(f"group_size {group_size} must divide num_envs={num_envs}")
        return {"group_size": group_size}, everyone, np.arange(num_envs) // group_size
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    groups = np.arange(len(idx))
    if group_size is not None:  # each question group_size times, consecutively
        idx, groups = np.repeat(idx, group_size), np.repeat(groups, group_size)
    if not 0 < len(idx) <= num_envs:
        raise ValueError(f"{len(idx)} episodes requested for a vector env of {num_envs} sub-envs")
    live = np.zeros(num_envs, dtype=bool)
    live[: len(idx)] = True
    padded = np.concatenate([idx, np.full(num_envs - len(idx), idx[0])])
    groups = np.concatenate([groups, np.zeros(num_envs - len(idx), np.int64)])
    return {"index": padded}, live, groups


def collect(
    vec_env: SearchQAVectorEnv,
    policy: Policy,
    *,
    indices: Sequence[int] | None = None,
    group_size: int | None = None,
    seed: int | None = None,
    temperature: float = 1.0,
    greedy: bool = False,
    max_new_tokens: int | None = None,
) -> list[Trajectory]:
    """Play one episode on each (or each requested) sub-env until all have ended.

    Which questions: ``indices`` gives them (one episode each, or ``group_size``
    consecutive episodes each; at most ``num_envs`` in all; unused sub-envs sit out);
    without ``indices``, ``group_size=g`` draws one question per ``g`` sub-envs and
    neither draws one question per sub-env (``seed`` seeds the draw).

    Args:
        vec_env: a chunk-mode vector env with ``autoreset_mode="disabled"``.
        policy: generates every turn.
        indices: dataset indices of the questions.
        group_size: episodes per question; sets :attr:`Trajectory.group`.
        seed: passed to ``vec_env.reset``.
        temperature: sampling temperature.
        greedy: argmax decoding (evaluation).
        max_new_tokens: token budget of one turn; defaults to the env protocol's
            ``max_response_length``. Each turn is also capped at the room left in the
            context, so no generated token is wasted.

    Returns:
        One :class:`Trajectory` per episode, in sub-env order.

    Raises:
        RolloutError: if the env's context does not hold exactly the tokens the policy
            generated (a broken invariant, never expected).
    """
    if vec_env.action_mode != "chunk" or vec_env.autoreset_mode.name != "DISABLED":
        raise ValueError("collect() needs a chunk-mode vector env with autoreset_mode='disabled'")
    n = vec_env.num_envs
    env0 = vec_env.envs[0]
    protocol, codec = env0.protocol, env0.codec
    budget = protocol.max_response_length if max_new_tokens is None else int(max_new_tokens)
    if budget < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {budget}")
    stop_strings = tuple(p.decode("utf-8") for p in codec.scanner.patterns)
    stop_ids = sorted(codec.eos_ids)

    options, live, groups = _episode_plan(n, indices, group_size)
    obs, _ = vec_env.reset(seed=seed, options={**options, "reset_mask": live})
    lengths = obs["length"][:, 0].astype(np.int64)
    prompt_lengths = lengths.copy()
    logprobs = np.zeros((n, protocol.max_prompt_length), dtype=np.float32)
    running = live.copy()
    finals: dict[int, dict[str, Any]] = {}

    while running.any():
        rows = np.flatnonzero(running)
        prompts = [obs["tokens"][i, : lengths[i]] for i in rows]
        limits = [min(budget, protocol.max_prompt_length - int(lengths[i])) for i in rows]
        gens = policy.generate(
            prompts,
            limits,
            stop_strings=stop_strings,
            stop_token_ids=stop_ids,
            temperature=temperature,
            greedy=greedy,
        )
        if len(gens) != len(rows):
            raise RolloutError(f"the policy returned {len(gens)} turns for {len(rows)} prompts")
        actions: list[np.ndarray | None] = [None] * n
        for i, gen in zip(rows, gens):
            if len(gen.token_ids) == 0:
                raise RolloutError(f"the policy returned an empty turn for sub-env {i}")
            actions[i] = gen.token_ids
        obs, rewards, terminated, truncated, info = vec_env.step(actions)
        for i, gen in zip(rows, gens):
            # The env keeps the turn up to its first closing tag / EOS; drop the rest too.
            used = len(gen.token_ids) - int(info["ignored_tokens"][i])
            start, end = int(lengths[i]), int(obs["length"][i, 0])
            if not (
                np.array_equal(obs["tokens"][i, start : start + used], gen.token_ids[:used])
                and obs["mask"][i, start : start + used].all()
                and not obs["mask"][i, start + used : end].any()
            ):
                raise RolloutError(f"sub-env {i}: the context does not hold the generated turn")
            logprobs[i, start : start + used] = gen.logprobs[:used]
            lengths[i] = end
            if terminated[i] or truncated[i]:
                running[i] = False
                finals[int(i)] = {
                    "reward": float(rewards[i]),
                    "terminated": bool(terminated[i]),
                    "scores": {
                        k: float(v[i]) for k, v in info["scores"].items() if not k.startswith("_")
                    },
                    "reward_components": _components(info, int(i)),
                    "searches": int(info["searches"][i]),
                    "turns": int(info["turn"][i]),
                    "answer": info["answer"][i],
                    "index": int(info["index"][i]),
                }

    trajectories = []
    for i in np.flatnonzero(live):
        length = int(lengths[i])
        final = finals[int(i)]
        trajectories.append(
            Trajectory(
                tokens=obs["tokens"][i, :length].copy(),
                loss_mask=obs["mask"][i, :length].copy(),
                logprobs=logprobs[i, :length].copy(),
                prompt_length=int(prompt_lengths[i]),
                group=int(groups[i]),
                **final,
            )
        )
    return trajectories


def _components(info: dict[str, Any], i: int) -> dict[str, float]:
    """Sub-env ``i``'s reward components from a vector env's merged ``info``."""
    merged = info.get("reward_components")
    if not merged:
        return {}
    return {
        k: float(v[i])
        for k, v in merged.items()
        if not k.startswith("_") and merged.get(f"_{k}", np.ones(i + 1, bool))[i]
    }


def rollout_stats(trajectories: Sequence[Trajectory], prefix: str = "") -> dict[str, float]:
    """Mean reward, EM, searches, turns and agent tokens per episode, and the mean of each
    reward component as ``rc_<name>`` (over the episodes that report it).

    ``reward`` is what the env paid (its reward config); ``em`` is always the answer's
    exact match (:attr:`Trajectory.scores`), so the two differ under a shaped reward.
    """
    n = max(len(trajectories), 1)

    def mean(values: Sequence[float]) -> float:
        return float(sum(values) / n)

    names = sorted({k for t in trajectories for k in t.reward_components})
    components = {}
    for name in names:
        values = [t.reward_components[name] for t in trajectories if name in t.reward_components]
        components[f"{prefix}rc_{name}"] = float(sum(values) / len(values))
    return {
        f"{prefix}reward": mean([t.reward for t in trajectories]),
        f"{prefix}em": mean([t.scores.get("em", 0.0) for t in trajectories]),
        f"{prefix}searches": mean([t.searches for t in trajectories]),
        f"{prefix}turns": mean([t.turns for t in trajectories]),
        f"{prefix}response_length": mean([t.agent_tokens for t in trajectories]),
        f"{prefix}answered": mean([float(t.answer is not None) for t in trajectories]),
        **components,
    }


@dataclass(frozen=True, eq=False)
class Batch:
    """Trajectories as right-padded tensors, aligned token by token.

    Attributes:
        input_ids: ``# (B, T)`` int64, padded with ``pad_id``.
        attention_mask: ``# (B, T)`` int64, 1 at real tokens.
        loss_mask: ``# (B, T)`` float32, 1 at agent tokens.
        old_logprobs: ``# (B, T)`` float32, sampling log-probs at agent tokens, else 0.
        rewards: ``# (B,)`` float32.
        group_ids: ``# (B,)`` int64.
        prompt_lengths: ``# (B,)`` int64.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor
    rewards: torch.Tensor
    group_ids: torch.Tensor
    prompt_lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows: Any) -> Batch:
        """The sub-batch of ``rows`` (indices, a slice or a bool mask), e.g. a mini-batch."""
        return Batch(**{k: getattr(self, k)[rows] for k in self.__dataclass_fields__})

    def to(self, device: Any) -> Batch:
        """The batch on ``device``."""
        return Batch(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})


def to_batch(trajectories: Sequence[Trajectory], pad_id: int) -> Batch:
    """Right-pad trajectories into a :class:`Batch` (width: the longest trajectory)."""
    import torch

    if not trajectories:
        raise ValueError("no trajectories")
    b = len(trajectories)
    width = max(len(t.tokens) for t in trajectories)
    input_ids = torch.full((b, width), int(pad_id), dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    loss_mask = torch.zeros((b, width), dtype=torch.float32)
    old_logprobs = torch.zeros((b, width), dtype=torch.float32)
    for row, t in enumerate(trajectories):
        n = len(t.tokens)
        input_ids[row, :n] = torch.from_numpy(np.asarray(t.tokens, dtype=np.int64))
        attention[row, :n] = 1
        loss_mask[row, :n] = torch.from_numpy(np.asarray(t.loss_mask, dtype=np.float32))
        old_logprobs[row, :n] = torch.from_numpy(np.asarray(t.logprobs, dtype=np.float32))
    return Batch(
        input_ids=input_ids,
        attention_mask=attention,
        loss_mask=loss_mask,
        old_logprobs=old_logprobs,
        rewards=torch.tensor([t.reward for t in trajectories], dtype=torch.float32),
        group_ids=torch.tensor([t.group for t in trajectories], dtype=torch.long),
        prompt_lengths=torch.tensor([t.prompt_length for t in trajectories], dtype=torch.long),
    )


def response_mask(batch: Batch) -> torch.Tensor:
    """1 at every real token after the prompt (agent and env tokens alike) ``# (B, T)``.

    The actor's loss mask without retrieved-token masking, and the reference's critic
    mask.
    """
    import torch

    positions = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids)
    after_prompt = positions >= batch.prompt_lengths[:, None]
    return (after_prompt & (batch.attention_mask != 0)).float()
