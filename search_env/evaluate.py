"""Score agents played through the vector env: EM, searches and throughput.

The agents and the loop that plays them live in :mod:`search_env.baselines`;
:func:`eval_env_kwargs` gives the ``gym.make_vec`` kwargs of each env of an evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from search_env.baselines import TextAgent, TokenAgent, play_episodes
from search_env.vector import SearchQAVectorEnv

SYNTH_ID = "SearchQA-Synth-v0"
SYNTH_ONLY_KEYS = frozenset({"size", "num_entities", "seed"})
"""Env kwargs only the synthetic world takes; unscoped, they go to Synth alone."""


def eval_env_kwargs(
    env_id: str,
    *,
    split: str | None = None,
    size: str | None = None,
    qa_dir: str | Path | None = None,
    retriever: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``gym.make_vec`` kwargs of one env id in an evaluation (scripted or a model's).

    Args:
        env_id: a registered id.
        split: dataset split; Synth defaults to ``test``, the hub datasets to their
            Search-R1 evaluation split.
        size: Synth world size (default ``small``); ignored elsewhere.
        qa_dir: a FlashRAG directory (``{qa_dir}/{config}/{split}.jsonl``, as written by
            ``search-env download qa``) for the seven datasets.
        retriever: passed to every env but Synth (which has its own index).
        extra: more kwargs; ``"{env_id}:{key}"`` keys apply to that env only, Synth-only
            keys (``size``, ``num_entities``, ``seed``) only to Synth, everything else to
            every env.
    """
    from search_env.data.qa import get_dataset_info
    from search_env.registration import DATASET_NAMES

    synth = env_id == SYNTH_ID
    kwargs: dict[str, Any] = {}
    if synth:
        kwargs["split"] = split or "test"
        kwargs["size"] = size or "small"
    else:
        if split:
            kwargs["split"] = split
        name = env_id.removeprefix("SearchQA-").removesuffix("-v0")
        if qa_dir is not None and name in DATASET_NAMES:
            info = get_dataset_info(name)
            kwargs["dataset"] = str(Path(qa_dir) / info.config)
            kwargs["split"] = split or info.eval_split
        if retriever is not None:
            kwargs["retriever"] = retriever
    for key, value in (extra or {}).items():
        target, sep, name = key.rpartition(":")
        if sep:
            if target == env_id:
                kwargs[name] = value
        elif synth or key not in SYNTH_ONLY_KEYS:
            kwargs[key] = value
    return kwargs


@dataclass
class EvalResult:
    """Aggregate scores of one agent over a set of episodes."""

    agent: str
    episodes: int
    em: float
    f1: float
    cover_em: float
    searches_per_episode: float
    turns_per_episode: float
    agent_tokens_per_episode: float
    seconds: float
    episodes_per_second: float
    turns_per_second: float
    retrieval_seconds: float
    per_episode: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_episode")
        return out


def evaluate(
    name: str,
    make_agent: Callable[[], TextAgent | TokenAgent],
    vec: SearchQAVectorEnv,
    indices: Sequence[int],
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Play one episode per question index (:func:`~search_env.baselines.play_episodes`)
    and score them; ``vec`` must be in chunk mode with autoreset disabled.

    Episodes run ``vec.num_envs`` at a time, so their searches are batched;
    ``per_episode`` lists them in the order they ended.
    """
    retrieval = 0.0

    def add_retrieval(stats: Any) -> None:
        nonlocal retrieval
        retrieval += stats.retrieval_time

    records: list[dict[str, Any]] = []
    turns = 0
    start = time.perf_counter()
    for ep in play_episodes(vec, indices, make_agent, on_step=add_retrieval):
        turns += ep.steps
        records.append(
            {
                "index": ep.index,
                "answer": ep.answer,
                "em": ep.scores["em"],
                "f1": ep.scores["f1"],
                "cover_em": ep.scores["cover_em"],
                "searches": ep.searches,
                "turns": ep.turns,
                "agent_tokens": ep.agent_tokens,
                "terminated": ep.terminated,
            }
        )
        if progress is not None:
            progress(1)
    seconds = time.perf_counter() - start
    count = max(len(records), 1)

    def mean(key: str) -> float:
        return float(sum(r[key] for r in records) / count)

    return EvalResult(
        agent=name,
        episodes=len(records),
        em=mean("em"),
        f1=mean("f1"),
        cover_em=mean("cover_em"),
        searches_per_episode=mean("searches"),
        turns_per_episode=mean("turns"),
        agent_tokens_per_episode=mean("agent_tokens"),
        seconds=seconds,
        episodes_per_second=len(records) / seconds if seconds else float("inf"),
        turns_per_second=turns / seconds if seconds else float("inf"),
        retrieval_seconds=retrieval,
        per_episode=records,
    )
