"""`SearchR1AgentLoop`: the Search-R1 tag protocol as a verl agent loop.

Every trajectory is one episode of :class:`search_env.env.SearchQAEnv` in chunk mode: the
env builds the prompt, ends each turn at its first ``</search>`` / ``</answer>`` (or EOS,
or the turn's budget), runs the search, appends the information block or the
invalid-action message, counts the turns and scores the answer. This loop only moves
tokens between verl's server and the env, never re-tokenizing what the model wrote:

* generation is token in / token out through ``server_manager.generate``, with the
  closing tags as stop strings (a server that ignores them costs time, not exactness:
  the env cuts the turn at the tag and the loop drops the tokens after it);
* ``response_mask`` is the env's own loss mask (1 = model token, 0 = env token);
* ``response_logprobs`` are the sampler's for the model's tokens, 0.0 for env tokens
  (as verl's own loops align them), or None when the server returned none;
* ``reward_score`` is the env's reward (EM by default), so verl skips its reward
  function; every metric is in ``extra_fields["reward_extra_info"]``.

Select it with ``actor_rollout_ref.rollout.agent.default_agent_loop=search_r1`` and
``agent_loop_config_path=agents/verl/configs/agent_loop.yaml``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any
from uuid import uuid4

import numpy as np
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    register,
)
from verl.utils.rollout_trace import rollout_trace_op

from agents.verl.retrieval import SOURCE_KEYS, shared_retriever
from search_env.data.qa import searchr1_example
from search_env.env import SearchQAEnv
from search_env.protocol import ProtocolConfig
from search_env.retrievers.base import Retriever
from search_env.types import Passage, QAExample

logger = logging.getLogger(__name__)


def example_from_row(row: Mapping[str, Any]) -> QAExample:
    """The question and gold answers of a verl dataset row (its fields as keywords).

    The question is the row's ``question``, else ``extra_info.question``, else the text
    after the last ``Question: `` of the user message (Search-R1's parquet files); the
    gold answers are ``reward_model.ground_truth.target`` (or ``golden_answers``).

    Raises:
        ValueError: If the row has no usable question or gold answers.
    """
    fields = dict(row)
    extra = fields.get("extra_info")
    if not fields.get("question") and isinstance(extra, Mapping) and extra.get("question"):
        fields["question"] = extra["question"]
    if fields.get("raw_prompt") is not None and fields.get("prompt") is None:
        fields["prompt"] = fields["raw_prompt"]
    return searchr1_example(fields, 0)


def _plain(value: Any) -> Any:
    """An OmegaConf node (hydra passes the YAML's mappings as such) as plain Python."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - verl depends on omegaconf
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


@register("search_r1")
class SearchR1AgentLoop(AgentLoopBase):
    """One Search-R1 episode per trajectory, played by this package's env.

    Keyword arguments (the extra keys of the agent-loop YAML entry):
        retriever / corpus / env_id (+ env_kwargs) / retrieval_service_url: where the
            passages come from (see :mod:`agents.verl.retrieval`; ``retriever`` may also
            be a retriever object). Without one, the
            retriever of the ``search`` tool in ``multi_turn.tool_config_path`` is used,
            so the tool config is the one place that names the server.
        protocol: `ProtocolConfig` fields (``max_turns``, ``topk``, budgets, templates).
            ``max_prompt_length`` (the whole context) is further capped at the prompt
            plus verl's ``rollout.response_length``.
        reward_metric, format_score: the env's reward (EM by default).
        on_retrieval_error: ``observe`` (default; the error becomes the information
            block, counted in ``extra_fields["retrieval_errors"]``) or ``raise``.
        vocab_size: the largest token id + 1 the sampler may return (default: the
            tokenizer's size rounded up to a power of two).
    """

    def __init__(
        self,
        *args: Any,
        tools: Any = None,
        protocol: Mapping[str, Any] | None = None,
        reward_metric: str = "em",
        format_score: float = 0.0,
        on_retrieval_error: str = "observe",
        vocab_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        spec = {k: _plain(kwargs.pop(k)) for k in (*SOURCE_KEYS, "env_kwargs") if k in kwargs}
        spec.update(
            {k: kwargs.pop(k) for k in ("timeout", "retries", "retry_window") if k in kwargs}
        )
        kwargs.pop("name", None)  # the YAML entry's own name, passed on by hydra
        super().__init__(*args, **kwargs)
        self.protocol = ProtocolConfig(**dict(_plain(protocol) or {}))
        self.reward_metric = reward_metric
        self.format_score = float(format_score)
        if on_retrieval_error not in ("observe", "raise"):
            raise ValueError(
                f"on_retrieval_error must be 'observe' or 'raise', got {on_retrieval_error!r}"
            )
        self.on_retrieval_error = on_retrieval_error
        # A model's embedding is often larger than its tokenizer (Qwen2.5: 151,936 rows for
        # 151,665 tokens) and a sampler may return one of the spare ids: accept them (as
        # empty text) up to the next power of two rather than fail the whole batch.
        self.vocab_size = vocab_size or 1 << (len(self.tokenizer) - 1).bit_length()
        self.retriever = self._find_retriever(spec, tools)
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.response_length = int(self.rollout_config.response_length)

    @staticmethod
    def _find_retriever(spec: dict[str, Any], tools: Any) -> Retriever:
        if any(spec.get(k) not in (None, "") for k in SOURCE_KEYS):
            return shared_retriever(spec)
        for tool in getattr(tools, "tools", None) or []:
            retriever = getattr(tool, "retriever", None)
            if getattr(tool, "name", None) == "search" and retriever is not None:
                return retriever
        raise ValueError(
            "SearchR1AgentLoop has no retriever: give one of "
            f"{', '.join(SOURCE_KEYS)} in the agent-loop config, or a 'search' tool "
            "(agents.verl.tool.SearchTool) in actor_rollout_ref.rollout.multi_turn.tool_config_path"
        )

    def _env(self, example: QAExample) -> tuple[SearchQAEnv, int]:
        """An env posed ``example``, whose context fits verl's prompt + response lengths."""
        env = self._make_env(self.protocol)
        _, info = env.reset(options={"example": example})
        prompt_tokens = int(info["prompt_tokens"])
        if prompt_tokens > self.prompt_length:
            raise ValueError(
                f"the prompt of question {example.id!r} has {prompt_tokens} tokens, more than "
                f"rollout.prompt_length={self.prompt_length}; raise data.max_prompt_length "
                "(the env never drops part of a question)"
            )
        cap = prompt_tokens + self.response_length
        if cap < self.protocol.max_prompt_length:
            start = min(self.protocol.max_start_length, cap - 1)
            protocol = dataclasses.replace(
                self.protocol, max_prompt_length=cap, max_start_length=start
            )
            env = self._make_env(protocol)
            env.reset(options={"example": example})
        return env, prompt_tokens

    def _make_env(self, protocol: ProtocolConfig) -> SearchQAEnv:
        return SearchQAEnv(
            [QAExample("verl", "placeholder", ("-",))],  # every episode is posed by reset
            self.retriever,
            self.tokenizer,
            action_mode="chunk",
            protocol=protocol,
            reward_metric=self.reward_metric,
            format_score=self.format_score,
            on_retrieval_error=self.on_retrieval_error,  # type: ignore[arg-type]
            vocab_size=self.vocab_size,
        )

    async def _search(
        self, queries: tuple[str, ...], metrics: dict[str, float]
    ) -> list[list[Passage]] | Exception:
        """Run a turn's searches (one call) off the event loop; a failure is returned for
        the env to handle."""
        start = time.perf_counter()
        try:
            # the running loop, not self.loop: verl may build the loop object outside it
            hits = await asyncio.get_running_loop().run_in_executor(
                None, self.retriever.search, list(queries), self.protocol.topk
            )
            return [list(h) for h in hits]
        except Exception as exc:  # the env shows it (observe) or raises it (raise)
            return exc
        finally:
            metrics["tool_calls"] += time.perf_counter() - start

    @rollout_trace_op
    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        example = example_from_row(kwargs)
        env, prompt_len = self._env(example)
        request_id = uuid4().hex
        params = dict(sampling_params)
        params["stop"] = sorted(set(params.get("stop") or []) | set(env.protocol.stop_strings))
        params["include_stop_str_in_output"] = True
        timing = {"generate_sequences": 0.0, "tool_calls": 0.0}
        logprobs: list[float] | None = []
        generations = observations = retrieval_errors = 0
        preempted: int | None = None
        reward, info, aborted = 0.0, {}, False
        while not env.done:
            before = env.context_length
            room = env.protocol.max_prompt_length - before
            params["max_tokens"] = min(env.protocol.max_response_length, room)
            start = time.perf_counter()
            output = await self.server_manager.generate(
                request_id=request_id, prompt_ids=env.context_ids.tolist(), sampling_params=params
            )
            timing["generate_sequences"] += time.perf_counter() - start
            if output.num_preempted is not None:
                preempted = (preempted or 0) + output.num_preempted
            ids = list(output.token_ids)
            if not ids:  # the server aborted the request: end here, unanswered
                aborted = True
                break
            generations += 1
            queries = env.begin_step(np.asarray(ids, dtype=np.int64))
            results = await self._search(queries, timing) if queries else None
            _, reward, _, _, info = env.finish_step(results)
            retrieval_errors += "retrieval_error" in info
            used = len(ids) - int(info.get("ignored_tokens", 0))
            added = env.context_length - before - used
            observations += added > 0
            if logprobs is not None and output.log_probs:
                logprobs += list(output.log_probs[:used]) + [0.0] * added
            else:
                logprobs = None
        response_ids = env.context_ids[prompt_len:].tolist()
        response_mask = env.loss_mask[prompt_len:].astype(int).tolist()
        scores = info.get("scores") or {"em": 0.0, "f1": 0.0, "cover_em": 0.0}
        extra = {
            "turn_scores": [],
            "tool_rewards": [],
            "reward_extra_info": {k: float(v) for k, v in scores.items()},
            "searches": int(info.get("searches", 0)),
            "retrieval_errors": retrieval_errors,
            "answer": info.get("answer"),
            "aborted": aborted,
        }
        return AgentLoopOutput(
            prompt_ids=env.context_ids[:prompt_len].tolist(),
            response_ids=response_ids,
            response_mask=response_mask,
            response_logprobs=logprobs if logprobs is not None and response_ids else None,
            reward_score=float(reward),
            num_turns=1 + generations + observations,
            metrics=AgentLoopMetrics(
                generate_sequences=timing["generate_sequences"],
                tool_calls=timing["tool_calls"],
                num_preempted=-1 if preempted is None else preempted,
            ),
            extra_fields=extra,
        )
