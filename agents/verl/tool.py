"""`SearchTool`: a drop-in for the search tool verl removed in May 2026 (PR #6302).

It reads the old tool's config unchanged::

    tools:
      - class_name: agents.verl.tool.SearchTool   # was verl.tools.search_tool.SearchTool
        config: {retrieval_service_url: http://127.0.0.1:8000/retrieve, num_workers: 120,
                 rate_limit: 120, timeout: 30, type: native}
        tool_schema: {type: function, function: {name: search, parameters: ...query_list...}}

and also takes an in-process source instead of the URL (``retriever``, ``corpus`` or
``env_id``; see :mod:`agents.verl.retrieval`). What the model reads back is this env's
information block, one per query: ``<information>Doc 1(Title: t) text\\n...</information>``.
A search that fails (server down, bad index) comes back as a flagged error block, never
as an exception: verl shows tool errors to the model, and one bad call must not end the
rollout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from agents.verl.retrieval import error_block, information_block, shared_retriever, source_of
from agents.verl.reward import final_answer, golden_answers
from search_env.protocol import ProtocolConfig
from search_env.rewards import make_reward
from search_env.types import Passage

logger = logging.getLogger(__name__)

DEFAULT_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Searches a document collection and returns the top passages per query.",
        "parameters": {
            "type": "object",
            "properties": {
                "query_list": {
                    "type": "array",
                    "description": "Fully-formed queries; results come back for each one.",
                }
            },
            "required": ["query_list"],
        },
    },
}
"""The schema used when the tool config gives none (the old tool's, in short)."""


@dataclass
class _Instance:
    """What one trajectory's tool instance remembers."""

    golds: tuple[str, ...] | None
    queries: list[str] = field(default_factory=list)
    results: list[list[Passage]] = field(default_factory=list)


def _number(config: dict[str, Any], key: str, default: float, *, least: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < least:
        raise ValueError(f"SearchTool config {key!r} must be a number >= {least}, got {value!r}")
    return value


class SearchTool(BaseTool):
    """Search-R1 retrieval as a verl native tool.

    Config keys (the old tool's, same defaults): ``retrieval_service_url``, ``topk`` (3),
    ``timeout`` (30 s per attempt), ``num_workers`` (120 threads for blocking searches),
    ``rate_limit`` (120 searches in flight at once, per process; the old tool shared one
    limit across the Ray cluster), ``type`` (``native``). Added: ``retriever`` /
    ``corpus`` / ``env_id`` + ``env_kwargs`` (an in-process source instead of the URL),
    ``retries`` and ``retry_window`` (the HTTP client's), ``reward_metric`` (``em``,
    ``f1``, ``cover_em``) and ``format_score`` for `calc_reward`.

    Parameters of a call: ``query_list`` (a list of strings) or ``query`` (one string).
    """

    def __init__(self, config: dict[str, Any], tool_schema: OpenAIFunctionToolSchema | None):
        config = dict(config or {})
        if tool_schema is None:
            tool_schema = OpenAIFunctionToolSchema.model_validate(DEFAULT_SCHEMA)
        super().__init__(config, tool_schema)
        source_of(config)  # fail at start-up, not on the first search
        topk = config.get("topk", 3)
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"SearchTool config 'topk' must be an int >= 1, got {topk!r}")
        self.topk = topk
        self.timeout = _number(config, "timeout", 30, least=1e-9)
        self.num_workers = int(_number(config, "num_workers", 120, least=1))
        self.rate_limit = int(_number(config, "rate_limit", 120, least=1))
        self.protocol = ProtocolConfig(topk=topk)
        self.reward_fn = make_reward(
            config.get("reward_metric", "em"), float(config.get("format_score", 0.0))
        )
        spec = dict(config)
        spec.setdefault("timeout", self.timeout)
        self.retriever = shared_retriever(spec)
        self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="search-tool")
        self._in_flight = threading.BoundedSemaphore(self.rate_limit)
        self._instances: dict[str, _Instance] = {}

    # ------------------------------------------------------------------ lifecycle
    async def create(
        self, instance_id: str | None = None, **kwargs: Any
    ) -> tuple[str, ToolResponse]:
        """Start an instance; ``ground_truth`` (here or in ``create_kwargs``) is kept for
        `calc_reward`. verl 0.9's tool agent loop passes ``create_kwargs={...}``."""
        nested = kwargs.get("create_kwargs") or {}
        golds = golden_answers(kwargs.get("ground_truth", nested.get("ground_truth")))
        instance_id = instance_id or str(uuid4())
        self._instances[instance_id] = _Instance(golds)
        return instance_id, ToolResponse()

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict[str, Any]]:
        """Search every query; the text holds one information block per query.

        Returns ``(response, 0.0, metrics)``; ``metrics["status"]`` is ``success``,
        ``no_results``, ``bad_parameters`` or ``api_error`` (then ``error`` says why).
        """
        instance = self._instance(instance_id)
        queries, problem = self._queries(parameters)
        if problem is not None:
            return ToolResponse(text=problem), 0.0, {"status": "bad_parameters", "error": problem}
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._search, queries
            )
        except Exception as exc:  # a clear message for the model, flagged in the metrics
            logger.warning("search failed for %d queries: %s", len(queries), exc)
            metrics = {"status": "api_error", "error": f"{type(exc).__name__}: {exc}"}
            metrics.update(query_count=len(queries), total_results=0)
            return ToolResponse(text=error_block(exc, self.protocol)), 0.0, metrics
        instance.queries.extend(queries)
        instance.results.extend(results)
        text = "\n".join(information_block(hits, self.protocol) for hits in results)
        total = sum(len(hits) for hits in results)
        metrics = {
            "status": "success" if total else "no_results",
            "query_count": len(queries),
            "total_results": total,
            "retrieval_time": time.perf_counter() - start,
        }
        return ToolResponse(text=text), 0.0, metrics

    async def calc_reward(self, instance_id: str, **kwargs: Any) -> float:
        """The reward of an answer against the instance's gold answers.

        ``answer`` is the answer itself; or ``solution_str`` is the decoded response, read
        as `agents.verl.reward.final_answer` reads it. No answer scores 0.

        Raises:
            ValueError: If the instance was created without ``ground_truth``.
        """
        instance = self._instance(instance_id)
        if instance.golds is None:
            raise ValueError(f"instance {instance_id!r} was created without ground_truth")
        answer = kwargs.get("answer")
        if answer is None and kwargs.get("solution_str") is not None:
            answer = final_answer(str(kwargs["solution_str"]))
        return float(self.reward_fn(answer, instance.golds))

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._instances.pop(instance_id, None)

    # ---------------------------------------------------------------- helpers
    def _instance(self, instance_id: str) -> _Instance:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise KeyError(f"no tool instance {instance_id!r}: call create() first") from None

    @staticmethod
    def _queries(parameters: Any) -> tuple[list[str], str | None]:
        """The queries of a call, or a message saying what is wrong with it."""
        if not isinstance(parameters, dict):
            return [], "Error: the search parameters must be an object with 'query_list'."
        raw = parameters.get("query_list", parameters.get("query"))
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            return [], "Error: 'query_list' is missing, empty, or not a list of strings."
        if not all(isinstance(q, str) for q in raw):
            return [], "Error: every entry of 'query_list' must be a string."
        queries = [q.strip() for q in raw]
        if not all(queries):
            return [], "Error: 'query_list' holds an empty query."
        return queries, None

    def _search(self, queries: list[str]) -> list[list[Passage]]:
        with self._in_flight:
            return self.retriever.search(queries, self.topk)

    def __repr__(self) -> str:
        return f"SearchTool(retriever={self.retriever!r}, topk={self.topk})"
