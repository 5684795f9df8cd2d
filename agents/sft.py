"""Supervised warm start: teach a model the protocol from the text oracle's episodes.

The scripted :class:`~search_env.synth.oracle.OracleAgent` plays train-split questions
through the real env (chunk mode; its turns are encoded with the env's tokenizer), which
gives token trajectories with the env's own loss mask. The causal LM is then trained with
cross-entropy on mask-1 tokens only: the prompt and information blocks are context, never
targets. Kept deliberately short in the ``tiny-cpu`` recipe, so RL has room to improve.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.advantages import masked_mean
from agents.config import SFTConfig
from agents.model import forward_tokens
from agents.rollout import Trajectory, to_batch

logger = logging.getLogger(__name__)


def oracle_trajectories(
    vec_env: Any,
    indices: Sequence[int],
    max_searches: int | None = None,
    quote_evidence: bool = False,
) -> list[Trajectory]:
    """Play the text oracle on ``indices`` and return its episodes as token trajectories.

    Args:
        vec_env: chunk-mode vector env with autoreset disabled, on a SearchQA-Synth world
            (the oracle needs ``metadata["hops"]``).
        indices: dataset indices of the questions.
        max_searches: the oracle's search budget; defaults to the env's ``max_turns``.
        quote_evidence: see :class:`~search_env.synth.oracle.OracleAgent`.

    Returns:
        One :class:`~agents.rollout.Trajectory` per question (``logprobs`` all 0).
    """
    from search_env.synth.oracle import OracleAgent

    budget = vec_env.envs[0].protocol.max_turns if max_searches is None else max_searches
    return scripted_trajectories(
        vec_env, indices, lambda: OracleAgent(max_searches=budget, quote_evidence=quote_evidence)
    )


def scripted_trajectories(
    vec_env: Any, indices: Sequence[int], make_agent: Callable[[], Any]
) -> list[Trajectory]:
    """Play a scripted text agent (see :mod:`search_env.baselines`) on ``indices``
    through :func:`~search_env.baselines.play_episodes`; one trajectory per question, in
    the order of ``indices``.

    Args:
        vec_env: chunk-mode vector env with autoreset disabled.
        indices: dataset indices of the questions.
        make_agent: builds an agent (one per sub-env, reset on every question).
    """
    from search_env.baselines import play_episodes

    episodes = sorted(play_episodes(vec_env, indices, make_agent), key=lambda e: e.position)
    return [
        Trajectory(
            tokens=e.tokens,
            loss_mask=e.loss_mask,
            logprobs=np.zeros(len(e.tokens), np.float32),
            prompt_length=e.prompt_length,
            reward=e.reward,
            scores=e.scores,
            searches=e.searches,
            turns=e.turns,
            answer=e.answer,
            index=e.index,
            terminated=e.terminated,
        )
        for e in episodes
    ]


def warm_start_data(
    train_env: Any, cfg: SFTConfig, tokenizer: Any, seed: int = 0
) -> tuple[list[Trajectory], list[NameClass] | None]:
    """The SFT trajectories of ``cfg`` and, with ``cfg.swap_names``, their name classes.

    The first ``cfg.questions`` train questions (all by default) are played by the text
    oracle, except a seeded ``cfg.closed_book`` share of them, which
    :class:`~search_env.baselines.NoSearchAgent` answers at once with an invented guess.
    """
    from search_env.baselines import NoSearchAgent

    total = len(train_env.dataset)
    n = total if cfg.questions is None else min(cfg.questions, total)
    if n < 1:
        raise ValueError("sft.questions must be >= 1")
    if not 0.0 <= cfg.closed_book <= 1.0:
        raise ValueError(f"sft.closed_book must be in [0, 1], got {cfg.closed_book}")
    order = np.random.default_rng(seed).permutation(n)
    n_closed = int(round(cfg.closed_book * n))
    closed, searched = sorted(order[:n_closed].tolist()), sorted(order[n_closed:].tolist())
    data = []
    if searched:
        data = oracle_trajectories(train_env, searched, quote_evidence=cfg.quote_evidence)
    if closed:
        data += scripted_trajectories(train_env, closed, lambda: NoSearchAgent(seed=seed))
    classes = None
    if cfg.swap_names:
        classes = name_token_ids(tokenizer, [train_env.dataset[t.index] for t in data], data)
    return data, classes


@dataclasses.dataclass(frozen=True)
class NameClass:
    """Name tokens of the training data and the vocabulary tokens they may become."""

    names: np.ndarray
    """Token ids used as entity names / answers in the training episodes."""
    pool: np.ndarray
    """Replacement ids: every vocabulary token of the same shape (capitalised word, or
    number) that the training episodes do not use for anything but names."""


def _name_shape(piece: str) -> int | None:
    """0 for a space-prefixed capitalised word of >= 3 letters, 1 for >= 3 digits, else None."""
    word = piece[1:] if piece.startswith("\u0120") else ""
    if len(word) >= 3 and word.isdigit():
        return 1
    if len(word) >= 3 and word[0].isupper() and word.isalpha():
        return 0
    return None


def name_token_ids(
    tokenizer: Any, examples: Sequence[Any], trajectories: Sequence[Trajectory] = ()
) -> list[NameClass]:
    """The name tokens of ``examples`` and their replacement pools, words and numbers.

    Names come from the questions' gold hops and answers (``metadata["hops"]`` of
    SearchQA-Synth); only whole-word tokens qualify (see :func:`_name_shape`), so protocol
    and template words never do. The pools are drawn from the tokenizer's whole
    vocabulary, not from the training names: names of held-out test entities are
    tokens too, and a model that never saw a token in a name position cannot learn to
    copy it. Tokens that the ``trajectories`` use outside names (template words,
    distractor names) are left out of the pools, so a swap never rewrites them.
    """
    names: list[set[int]] = [set(), set()]
    for e in examples:
        texts = [*e.golden_answers, *(h.get("subject", "") for h in e.metadata.get("hops", []))]
        for text in texts:
            ids = tokenizer.encode(" " + text, add_special_tokens=False)
            for tid, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
                shape = _name_shape(piece)
                if shape is not None:
                    names[shape].add(tid)
    every_name = names[0] | names[1]
    used = set()
    for t in trajectories:
        used.update(int(x) for x in np.unique(t.tokens))
    used -= every_name
    pools: list[set[int]] = [set(), set()]
    for piece, tid in tokenizer.get_vocab().items():
        shape = _name_shape(piece)
        if shape is not None and tid not in used:
            pools[shape].add(tid)
    return [
        NameClass(np.asarray(sorted(n), dtype=np.int64), np.asarray(sorted(p | n), dtype=np.int64))
        for n, p in zip(names, pools)
        if len(n) > 1
    ]


def swap_names(
    tokens: np.ndarray, classes: Sequence[NameClass], rng: np.random.Generator
) -> np.ndarray:
    """Re-draw the name tokens of one trajectory: a random one-to-one map per class.

    The same map is applied to question, agent turns and information blocks, so the
    episode stays consistent ("who founded A?" ... "A was founded by B" ... "B") while
    its names are new: the model cannot memorise answers and must learn to copy names
    from the question and the retrieved text.
    """
    top = max(int(tokens.max()), *(int(c.pool.max()) for c in classes))
    table = np.arange(top + 1)
    for c in classes:
        table[c.names] = rng.choice(c.pool, size=len(c.names), replace=False)
    return table[tokens]


def _targets(batch: Any, every_token: bool) -> torch.Tensor:
    """The batch's loss mask, or (language-model steps) every real token but the first."""
    if not every_token:
        return batch.loss_mask
    targets = batch.attention_mask.to(batch.loss_mask.dtype).clone()
    targets[:, 0] = 0
    return targets


def length_buckets(
    trajectories: Sequence[Trajectory], ratio: float = 2.0
) -> list[list[Trajectory]]:
    """Split a batch by length, shortest first, so that short episodes (closed-book
    answers) are not padded to the longest: a new bucket starts where a trajectory is
    more than ``ratio`` times the bucket's shortest."""
    buckets: list[list[Trajectory]] = []
    for t in sorted(trajectories, key=lambda t: len(t.tokens)):
        if buckets and len(t.tokens) <= ratio * len(buckets[-1][0].tokens):
            buckets[-1].append(t)
        else:
            buckets.append([t])
    return buckets


def sft_loss(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Mean negative log-likelihood of the mask-1 tokens (``# (B, T)`` inputs)."""
    logp = forward_tokens(model, input_ids, attention_mask, only=loss_mask).logprobs
    return masked_mean(-logp, loss_mask.to(logp.device))


def sft_backward(
    model: nn.Module, trajectories: Sequence[Trajectory], pad_id: int, every_token: bool = False
) -> float:
    """Backpropagate the SFT loss of one batch; returns the loss.

    The loss is the mean negative log-likelihood over every target token of the batch
    (:func:`sft_loss` on one padded batch), computed over :func:`length_buckets`, so a
    short episode costs its own length, not the longest one's.

    Args:
        every_token: language-model step: every real token but the first is a target.
    """
    parts = [
        (b, _targets(b, every_token))
        for b in (to_batch(part, pad_id) for part in length_buckets(trajectories))
    ]
    total = max(sum(float(t.sum()) for _, t in parts), 1.0)
    loss = 0.0
    for batch, targets in parts:  # each bucket's mean, weighted by its share of the tokens
        part = sft_loss(model, batch.input_ids, batch.attention_mask, targets)
        part = part * (float(targets.sum()) / total)
        part.backward()
        loss += float(part.detach())
    return loss


def train_sft(
    model: nn.Module,
    trajectories: Sequence[Trajectory],
    cfg: SFTConfig,
    pad_id: int,
    *,
    seed: int = 0,
    progress: bool = False,
    name_classes: Sequence[NameClass] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place on the agent tokens of ``trajectories``.

    Batches are drawn without replacement, epoch by epoch, from a seeded permutation.
    The learning rate warms up linearly, then follows a cosine to 10% of ``cfg.lr``.
    With ``name_classes`` (see :func:`name_token_ids`) every trajectory's names are
    re-drawn each time it is used (:func:`swap_names`).

    Returns:
        Per-step records ``{"sft_step", "sft_loss", "sft_lr", "sft_time"}``.
    """
    if not trajectories:
        raise ValueError("no trajectories to train on")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = np.random.default_rng(seed)
    order: list[int] = []
    records = []
    model.train()
    steps = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        from agents.progress import progress_interval

        steps = tqdm(steps, desc="sft", leave=False, mininterval=progress_interval())
    for step in steps:
        start = time.perf_counter()
        if len(order) < cfg.batch_size:
            order += rng.permutation(len(trajectories)).tolist()
        rows, order = order[: cfg.batch_size], order[cfg.batch_size :]
        chosen = [trajectories[i] for i in rows]
        if name_classes:
            chosen = [
                dataclasses.replace(t, tokens=swap_names(t.tokens, name_classes, rng))
                for t in chosen
            ]
        optimizer.zero_grad(set_to_none=True)
        loss = sft_backward(model, chosen, pad_id, every_token=step < cfg.lm_steps)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        records.append(
            {
                "sft_step": step + 1,
                "sft_loss": loss,
                "sft_lr": optimizer.param_groups[0]["lr"],
                "sft_time": time.perf_counter() - start,
            }
        )
    model.eval()
    return records
