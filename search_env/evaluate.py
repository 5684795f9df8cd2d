"""Run agents through the vector env and measure EM, searches and throughput."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from search_env.types import QAExample
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


@runtime_checkable
class TextAgent(Protocol):
    """Sees the text the env appended last; returns its next turn as text."""

    def reset(self, example: QAExample) -> None: ...

    def act(self, observation: str) -> str: ...


@runtime_checkable
class TokenAgent(Protocol):
    """Sees the new environment token ids; returns its next turn as token ids."""

    def reset(self, example: QAExample) -> None: ...

    def act_tokens(self, observation: np.ndarray) -> Sequence[int]: ...


class RandomTokenAgent:
    """Writes turns of uniformly random token ids (a floor for every metric)."""

    def __init__(self, vocab_size: int, max_tokens: int = 64, seed: int = 0) -> None:
        if vocab_size < 1 or max_tokens < 1:
            raise ValueError("vocab_size and max_tokens must be >= 1")
        self.vocab_size, self.max_tokens = vocab_size, max_tokens
        self.rng = np.random.default_rng(seed)

    def reset(self, example: QAExample) -> None:
        pass

    def act_tokens(self, observation: np.ndarray) -> list[int]:
        n = int(self.rng.integers(1, self.max_tokens + 1))
        return self.rng.integers(0, self.vocab_size, size=n).tolist()


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
    """Play one episode per question index; ``vec`` must be in chunk mode.

    Episodes run ``vec.num_envs`` at a time, so their searches are batched.
    """
    if vec.action_mode != "chunk" or vec.autoreset_mode.name != "DISABLED":
        raise ValueError("evaluate() needs a chunk-mode vector env with autoreset disabled")
    n = vec.num_envs
    agents = [make_agent() for _ in range(n)]
    codec = vec.envs[0].codec
    records: list[dict[str, Any]] = []
    turns = 0
    retrieval = 0.0
    start = time.perf_counter()
    for lo in range(0, len(indices), n):
        batch = list(indices[lo : lo + n])
        live = len(batch)
        padded = batch + [batch[0]] * (n - live)
        obs, _ = vec.reset(options={"index": np.asarray(padded), "reset_mask": np.ones(n, bool)})
        seen = obs["length"][:, 0].copy()
        new_text = [codec.tokenizer.decode(obs["tokens"][i, : seen[i]].tolist()) for i in range(n)]
        new_ids = [obs["tokens"][i, : seen[i]] for i in range(n)]
        running = np.zeros(n, bool)
        running[:live] = True
        for i in range(live):
            agents[i].reset(vec.dataset[padded[i]])
        agent_tokens = np.zeros(n, np.int64)
        while running.any():
            actions: list[Sequence[int] | None] = []
            for i in range(n):
                if not running[i]:
                    actions.append(None)
                    continue
                agent = agents[i]
                if isinstance(agent, TokenAgent):
                    ids = list(agent.act_tokens(new_ids[i]))
                else:
                    ids = codec.turn_ids(agent.act(new_text[i]))
                actions.append(np.asarray(ids, dtype=np.int64))
            obs, rewards, term, trunc, info = vec.step(actions)
            retrieval += vec.last_batch.retrieval_time
            for i in np.flatnonzero(running):
                turns += 1
                used = len(actions[i]) - int(info["ignored_tokens"][i])  # type: ignore[arg-type]
                agent_tokens[i] += used
                start_env = int(seen[i]) + used
                length = int(obs["length"][i, 0])
                new_ids[i] = obs["tokens"][i, start_env:length]
                new_text[i] = codec.tokenizer.decode(new_ids[i].tolist())
                seen[i] = length
                if term[i] or trunc[i]:
                    running[i] = False
                    scores = info["scores"]
                    records.append(
                        {
                            "index": int(padded[i]),
                            "answer": info["answer"][i],
                            "em": float(scores["em"][i]),
                            "f1": float(scores["f1"][i]),
                            "cover_em": float(scores["cover_em"][i]),
                            "searches": int(info["searches"][i]),
                            "turns": int(info["turn"][i]),
                            "agent_tokens": int(agent_tokens[i]),
                            "terminated": bool(term[i]),
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
