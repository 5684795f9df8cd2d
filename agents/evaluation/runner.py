"""Running the methods: greedy policy episodes, the scripted oracle, the report of both."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agents.evaluation.envs import derived_env
from agents.evaluation.prompts import (
    DIRECT_TEMPLATE,
    RAG_TEMPLATE,
    check_direct_template,
    check_rag_template,
    rag_dataset,
)
from agents.evaluation.report import (
    METHODS,
    EpisodeRecord,
    EvalReport,
    MethodResult,
    column_name,
    parse_methods,
)
from agents.policy.base import Policy
from agents.rollout import Trajectory, collect
from search_env.types import QAExample

logger = logging.getLogger(__name__)


def _episode(index: int, example: QAExample, **fields: Any) -> EpisodeRecord:
    """A record of ``example``'s episode; ``fields`` are the outcome."""
    return EpisodeRecord(
        index=index,
        id=example.id,
        question=example.question,
        golden_answers=tuple(example.golden_answers),
        **fields,
    )


def _record(
    t: Trajectory, index: int, example: QAExample, doc_ids: tuple[str, ...] | None = None
) -> EpisodeRecord:
    return _episode(
        index,
        example,
        answer=t.answer,
        reward=t.reward,
        em=t.scores["em"],
        f1=t.scores["f1"],
        cover_em=t.scores["cover_em"],
        searches=t.searches,
        turns=t.turns,
        response_length=t.agent_tokens,
        context_length=len(t.tokens),
        terminated=t.terminated,
        doc_ids=doc_ids,
    )


def run_policy(
    vec: Any,
    policy: Policy,
    indices: Sequence[int],
    *,
    max_new_tokens: int | None = None,
    original: Sequence[QAExample] | None = None,
    doc_ids: Sequence[tuple[str, ...]] | None = None,
    bar: Any = None,
) -> list[EpisodeRecord]:
    """Greedy episodes of ``policy`` on ``vec``'s questions ``indices``, ``num_envs`` at a time.

    ``original`` (aligned with ``indices``) names the question each episode stands for,
    when ``vec``'s dataset is a rewritten copy (RAG); ``doc_ids`` likewise.
    """
    records: list[EpisodeRecord] = []
    position = {int(i): p for p, i in enumerate(indices)}
    for lo in range(0, len(indices), vec.num_envs):
        chunk = list(indices[lo : lo + vec.num_envs])
        for t in collect(vec, policy, indices=chunk, greedy=True, max_new_tokens=max_new_tokens):
            p = position[t.index]
            example = vec.dataset[t.index] if original is None else original[p]
            records.append(
                _record(
                    t,
                    t.index if original is None else p,
                    example,
                    None if doc_ids is None else doc_ids[p],
                )
            )
        if bar is not None:
            bar.update(len(chunk))
    return records


def run_oracle(vec: Any, indices: Sequence[int], bar: Any = None) -> list[EpisodeRecord]:
    """The scripted oracle (through :func:`search_env.evaluate.evaluate`) on ``indices``."""
    from search_env.evaluate import evaluate
    from search_env.synth.oracle import OracleAgent

    env = vec.envs[0]
    max_searches = env.protocol.max_turns
    result = evaluate(
        "oracle",
        lambda: OracleAgent(max_searches=max_searches),
        vec,
        indices,
        progress=None if bar is None else bar.update,
    )
    records = []
    for ep in result.per_episode:
        example = vec.dataset[ep["index"]]
        records.append(
            _episode(
                ep["index"],
                example,
                answer=ep["answer"],
                reward=float(env.reward_fn(ep["answer"], example.golden_answers)),
                em=ep["em"],
                f1=ep["f1"],
                cover_em=ep["cover_em"],
                searches=ep["searches"],
                turns=ep["turns"],
                response_length=ep["agent_tokens"],
                context_length=None,
                terminated=ep["terminated"],
            )
        )
    return sorted(records, key=lambda r: r.index)


def run_method(
    method: str,
    vec: Any,
    policy: Policy | None,
    indices: Sequence[int],
    *,
    max_new_tokens: int | None = None,
    direct_template: str = DIRECT_TEMPLATE,
    rag_template: str = RAG_TEMPLATE,
    bar: Any = None,
    progress: bool = False,
) -> list[EpisodeRecord]:
    """One method's episodes on ``vec``'s questions ``indices`` (see :mod:`agents.evaluation`).

    ``bar`` (a tqdm bar) advances per episode; ``progress`` adds one for RAG retrieval.
    """
    if method == "oracle":
        return run_oracle(vec, indices, bar=bar)
    if policy is None:
        raise ValueError(f"method {method!r} needs a policy")
    if method == "search":
        return run_policy(vec, policy, indices, max_new_tokens=max_new_tokens, bar=bar)
    if method == "direct":
        env = derived_env(vec, vec.dataset, direct_template)
        original, docs = None, None
    elif method == "rag":
        examples, docs = rag_dataset(vec, indices, rag_template, progress=progress)
        env = derived_env(vec, examples, "{question}\n")
        original, indices = [vec.dataset[i] for i in indices], list(range(len(indices)))
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    try:
        return run_policy(
            env,
            policy,
            indices,
            max_new_tokens=max_new_tokens,
            bar=bar,
            original=original,
            doc_ids=docs,
        )
    finally:
        env.close()


def evaluate_policy(
    policy: Policy | None,
    envs: Mapping[str, Any],
    *,
    methods: Sequence[str] = ("search",),
    limit: int | None = None,
    max_new_tokens: int | None = None,
    direct_template: str = DIRECT_TEMPLATE,
    rag_template: str = RAG_TEMPLATE,
    model_name: str = "policy",
    progress: bool = True,
) -> EvalReport:
    """Run each method on each env (greedy) and collect the report.

    Args:
        policy: generates the agent's turns (any :class:`~agents.policy.base.Policy`);
            may be None when ``methods`` is only ``["oracle"]``.
        envs: ``{env_id: chunk-mode vector env without autoreset}`` (see
            :func:`~agents.evaluation.envs.open_env`); they are not closed here.
        methods: from :data:`~agents.evaluation.report.METHODS`.
        limit: the first ``limit`` questions of each env's dataset (None: all).
        max_new_tokens: one turn's token budget (None: the protocol's).
        direct_template: the direct baseline's prompt (must contain ``{question}``).
        rag_template: the RAG baseline's prompt (see
            :data:`~agents.evaluation.prompts.RAG_TEMPLATE`).
        model_name: the row-label prefix.
        progress: tqdm bars.
    """
    from tqdm.auto import tqdm

    methods = parse_methods(methods, METHODS)
    if policy is None and set(methods) - {"oracle"}:
        raise ValueError("a policy is needed for methods other than 'oracle'")
    check_direct_template(direct_template)
    check_rag_template(rag_template)
    report = EvalReport(
        model=model_name,
        settings={
            "limit": limit,
            "max_new_tokens": max_new_tokens,
            "methods": list(methods),
            "envs": list(envs),
            "direct_template": direct_template,
            "rag_template": rag_template,
            "protocol": {k: dataclasses.asdict(v.envs[0].protocol) for k, v in envs.items()},
        },
    )
    for env_id, vec in envs.items():
        n = len(vec.dataset) if limit is None else min(limit, len(vec.dataset))
        for method in methods:
            if method == "oracle" and not vec.dataset[0].metadata.get("hops"):
                reason = "the oracle needs the gold hops of SearchQA-Synth-v0 questions"
                report.skipped.append({"method": method, "env_id": env_id, "reason": reason})
                logger.info("skipping the oracle on %s: %s", env_id, reason)
                continue
            start = time.perf_counter()
            desc = f"{method} {column_name(env_id)}"
            with tqdm(total=n, desc=desc, unit="ep", disable=not progress) as bar:
                records = run_method(
                    method,
                    vec,
                    policy,
                    range(n),
                    max_new_tokens=max_new_tokens,
                    direct_template=direct_template,
                    rag_template=rag_template,
                    bar=bar,
                    progress=progress,
                )
            seconds = time.perf_counter() - start
            report.results.append(MethodResult(method, env_id, records, seconds))
    return report
