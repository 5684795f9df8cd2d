"""verl adapters: the Search-R1 agent loop (`agents.verl.agent_loop`), on CPU.

Fake server managers (scripted token outputs, and a tiny random Qwen2 that samples) play
the model; every test checks the loop against this package's env driven with the same
tokens. One test goes through verl's own worker code (hydra instantiation from the shipped
agent-loop YAML, padding, batching). Needs ``pip install 'search-env[verl]'``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("verl")
torch = pytest.importorskip("torch")

import numpy as np
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopWorker,
    DictConfigWrap,
    ToolListWrap,
    _agent_loop_registry,
)
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from agents.verl.agent_loop import SearchR1AgentLoop, example_from_row
from agents.verl.tool import SearchTool
from search_env.env import SearchQAEnv
from search_env.protocol import INVALID_ACTION_MESSAGE, SEARCH_R1_TEMPLATE, ProtocolConfig
from search_env.retrievers.bm25 import BM25Retriever
from search_env.types import QAExample

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "agents" / "verl" / "configs"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def expected_block(passages: list) -> str:
    docs = "".join(f"Doc {i}(Title: {p.title}) {p.text}\n" for i, p in enumerate(passages, 1))
    return f"<information>{docs}</information>"


QUESTION = "What is the capital of Norway"


def row(question: str = QUESTION, golds: tuple[str, ...] = ("Oslo",)) -> dict[str, Any]:
    """A dataset row as verl passes it to ``run`` (Search-R1's parquet format)."""
    content = SEARCH_R1_TEMPLATE.format(question=question + "?")
    return {
        "data_source": "nq",
        "prompt": [{"role": "user", "content": content}],
        "raw_prompt": [{"role": "user", "content": content}],
        "reward_model": {"ground_truth": {"target": np.array(golds)}},
        "extra_info": {"split": "test", "index": 0},
        "index": 0,
        "tools_kwargs": {},
    }


def verl_config(prompt_length: int = 256, response_length: int = 1024) -> Any:
    return OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {
                    "prompt_length": prompt_length,
                    "response_length": response_length,
                    "multi_turn": {"tool_config_path": None},
                },
                "model": {"path": "dummy-model"},
            },
            "data": {"apply_chat_template_kwargs": {}},
        }
    )


class ScriptedServer:
    """A server manager that answers each generate call with the next scripted turn.

    Log-probs are distinct per token (-0.01, -0.02, ...) so their alignment shows.
    """

    def __init__(self, tokenizer: Any, turns: list[str], *, logprobs: bool = True) -> None:
        self.turns = [tokenizer.encode(t, add_special_tokens=False) for t in turns]
        self.logprobs = logprobs
        self.calls: list[dict[str, Any]] = []
        self.sent: list[tuple[list[int], list[float]]] = []
        self.count = 0

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, **kw
    ):
        ids = self.turns[min(len(self.calls), len(self.turns) - 1)]
        self.calls.append({"prompt_ids": list(prompt_ids), "params": dict(sampling_params)})
        lps = [-(self.count + i + 1) / 100 for i in range(len(ids))]
        self.count += len(ids)
        self.sent.append((list(ids), lps))
        return TokenOutput(token_ids=list(ids), log_probs=lps if self.logprobs else None)


def make_loop(server: Any, tokenizer: Any, retriever: Any, config: Any = None, **kwargs):
    async def build():
        cfg = config if config is not None else verl_config()
        return SearchR1AgentLoop(
            trainer_config=DictConfigWrap(cfg),
            server_manager=server,
            tokenizer=tokenizer,
            processor=None,
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(cfg.data),
            retriever=retriever,
            **kwargs,
        )

    return run(build())


def replay(tokenizer: Any, retriever: Any, chunks: list[list[int]], protocol: ProtocolConfig):
    """The env's own context and mask for the same generated chunks."""
    env = SearchQAEnv([QAExample("q", QUESTION, ("Oslo",))], retriever, tokenizer,
                      action_mode="chunk", protocol=protocol)  # fmt: skip
    env.reset(options={"index": 0})
    for chunk in chunks:
        if env.done:
            break
        env.step(np.asarray(chunk))
    return env


def test_loop_scripted_search_then_answer(tokenizer, retriever):
    turns = [
        "<think> I need it </think> <search> capital of Norway </search> trailing words",
        "<answer> Oslo </answer>",
    ]
    server = ScriptedServer(tokenizer, turns)
    loop = make_loop(server, tokenizer, retriever)
    out = run(loop.run({"temperature": 1.0, "logprobs": True}, **row()))

    fresh = type(retriever)(retriever.passages)
    env = replay(tokenizer, fresh, [ids for ids, _ in server.sent], loop.protocol)
    prompt_len = len(out.prompt_ids)
    assert out.prompt_ids + out.response_ids == env.context_ids.tolist()
    assert out.response_mask == env.loss_mask[prompt_len:].tolist()  # the env's own mask
    assert len(out.response_ids) == len(out.response_mask) == len(out.response_logprobs)
    # the model's tokens decode back to exactly what it wrote, cut after the closing tag
    agent = [t for t, m in zip(out.response_ids, out.response_mask) if m]
    assert tokenizer.decode(agent).endswith("</search><answer> Oslo </answer>")
    assert "trailing" not in tokenizer.decode(out.response_ids)
    env_text = tokenizer.decode([t for t, m in zip(out.response_ids, out.response_mask) if not m])
    hits = fresh.search(["capital of Norway"], 3)[0]
    assert env_text == "\n\n" + expected_block(hits) + "\n\n"
    assert env_text.startswith('\n\n<information>Doc 1(Title: "Oslo") Oslo is the capital')
    # log-probs: the sampler's for the model's tokens (dropped tail excluded), 0.0 for env's
    first_ids, first_lps = server.sent[0]
    used = len(tokenizer.encode(turns[0].split(" trailing")[0], add_special_tokens=False))
    expected = first_lps[:used] + server.sent[1][1]
    got = [lp for lp, m in zip(out.response_logprobs, out.response_mask) if m]
    assert got == expected
    assert all(lp == 0.0 for lp, m in zip(out.response_logprobs, out.response_mask) if not m)
    # token in: the second call continues the exact context; stop strings and budgets set
    assert (
        server.calls[1]["prompt_ids"]
        == env.context_ids.tolist()[: len(server.calls[1]["prompt_ids"])]
    )
    assert server.calls[1]["prompt_ids"][: prompt_len + used] == out.prompt_ids + first_ids[:used]
    params = server.calls[0]["params"]
    assert {"</search>", "</answer>"} <= set(params["stop"]) and params["max_tokens"] == 500
    assert params["temperature"] == 1.0 and params["include_stop_str_in_output"] is True
    assert retriever.calls == [["capital of Norway"]]
    assert out.reward_score == 1.0 and out.num_turns == 4  # prompt, turn, information, turn
    assert out.extra_fields["reward_extra_info"] == {"em": 1.0, "f1": 1.0, "cover_em": 1.0}
    assert out.extra_fields["searches"] == 1 and out.extra_fields["answer"] == "Oslo"


def test_loop_turn_limit_and_invalid_turns(tokenizer, retriever):
    turns = ["<search> capital of Norway </search>", "no tags at all<|endoftext|>"]
    server = ScriptedServer(tokenizer, [turns[0], turns[1], turns[0], turns[0], turns[0]])
    loop = make_loop(server, tokenizer, retriever, protocol={"max_turns": 3})
    out = run(loop.run({}, **row()))
    assert len(server.calls) == 4  # max_turns + 1 generations, then truncated
    assert retriever.calls == [["capital of Norway"], ["capital of Norway"]]  # last one skipped
    assert out.reward_score == 0.0 and out.extra_fields["searches"] == 2
    text = tokenizer.decode([t for t, m in zip(out.response_ids, out.response_mask) if not m])
    assert text.count("<information>") == 2 and text.count(INVALID_ACTION_MESSAGE) == 1
    fresh = type(retriever)(retriever.passages)
    env = replay(tokenizer, fresh, [s[0] for s in server.sent], ProtocolConfig(max_turns=3))
    assert out.response_mask == env.loss_mask[len(out.prompt_ids) :].tolist()


def test_loop_fits_verl_response_length(tokenizer, retriever):
    server = ScriptedServer(tokenizer, ["<search> capital of Norway </search>"])
    loop = make_loop(server, tokenizer, retriever, config=verl_config(response_length=40))
    out = run(loop.run({}, **row()))
    assert len(out.response_ids) == 40 and out.reward_score == 0.0
    assert server.calls[-1]["params"]["max_tokens"] <= 40


def test_loop_without_logprobs_and_on_bad_rows(tokenizer, retriever):
    server = ScriptedServer(tokenizer, ["<answer> Paris </answer>"], logprobs=False)
    out = run(make_loop(server, tokenizer, retriever).run({}, **row()))
    assert out.response_logprobs is None and out.reward_score == 0.0
    long_row = row(question="capital " * 300)
    with pytest.raises(ValueError, match="prompt_length"):
        run(make_loop(server, tokenizer, retriever).run({}, **long_row))
    with pytest.raises(ValueError, match="ground_truth"):
        run(make_loop(server, tokenizer, retriever).run({}, raw_prompt=row()["raw_prompt"]))


def test_loop_needs_a_retriever(tokenizer):
    with pytest.raises(ValueError, match="no retriever"):
        make_loop(ScriptedServer(tokenizer, ["x"]), tokenizer, None)


def test_loop_takes_the_search_tools_retriever(tokenizer, retriever):
    bm25 = BM25Retriever.from_passages(
        retriever.passages, backend="numpy", show_progress=False, n_threads=1
    )
    tool = SearchTool({"retriever": bm25}, None)
    server = ScriptedServer(tokenizer, ["<answer> Oslo </answer>"])

    async def build():
        cfg = verl_config()
        return SearchR1AgentLoop(
            trainer_config=DictConfigWrap(cfg), server_manager=server, tokenizer=tokenizer,
            processor=None, dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data),
            tools=ToolListWrap([tool]),
        )  # fmt: skip

    assert run(build()).retriever is bm25


def test_example_from_row_shapes():
    assert example_from_row(row()).question == QUESTION + "?"
    assert example_from_row(row()).golden_answers == ("Oslo",)
    verl_style = {  # verl's preprocess_search_r1_dataset.py rows
        "prompt": [{"role": "system", "content": "hi"}, {"role": "user", "content": "x"}],
        "extra_info": {"question": "who?", "index": 3},
        "reward_model": {"ground_truth": {"target": ["Me"]}},
    }
    assert example_from_row(verl_style).question == "who?"


class TinyModelServer:
    """Samples from a tiny random Qwen2 (temperature 1), returning the sampled tokens'
    log-probs, as vLLM does; honours ``max_tokens`` but not stop strings."""

    def __init__(self, model: Any, seed: int = 0) -> None:
        self.model = model
        self.gen = torch.Generator().manual_seed(seed)
        self.sent: list[list[int]] = []

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, **kw
    ):
        ids = torch.tensor([prompt_ids])
        out, lps = [], []
        with torch.no_grad():
            for _ in range(sampling_params["max_tokens"]):
                logits = self.model(ids).logits[0, -1].float()
                logp = torch.log_softmax(logits, -1)
                tok = int(torch.multinomial(logp.exp(), 1, generator=self.gen))
                out.append(tok)
                lps.append(float(logp[tok]))
                ids = torch.cat([ids, torch.tensor([[tok]])], 1)
        self.sent.append(out)
        return TokenOutput(token_ids=out, log_probs=lps)


def test_loop_with_tiny_model_sampler(tokenizer, retriever):
    from agents.tiny_model import make_tiny_qwen2

    model = make_tiny_qwen2(tokenizer, hidden_size=32, layers=1, heads=2, kv_heads=1,
                            intermediate=64, max_positions=1024)  # fmt: skip
    server = TinyModelServer(model)
    proto = {"max_turns": 1, "max_response_length": 6}
    loop = make_loop(server, tokenizer, retriever, protocol=proto)
    out = run(loop.run({"temperature": 1.0}, **row()))
    assert len(server.sent) == 2  # random tokens: two invalid turns, then truncated
    env = replay(tokenizer, retriever, server.sent, ProtocolConfig(**proto))
    full = out.prompt_ids + out.response_ids
    assert full == env.context_ids.tolist()
    mask = np.asarray(out.response_mask)
    assert mask.tolist() == env.loss_mask[len(out.prompt_ids) :].tolist()
    assert mask.sum() == 12 and (mask == 0).sum() == len(tokenizer.encode(INVALID_ACTION_MESSAGE))
    # log-prob alignment: each mask-1 entry is the model's log-prob of that very token
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
    p = len(out.prompt_ids)
    recomputed = [float(logp[p + i - 1, t]) for i, t in enumerate(out.response_ids)]
    lps = np.asarray(out.response_logprobs)
    np.testing.assert_allclose(lps[mask == 1], np.asarray(recomputed)[mask == 1], atol=1e-4)
    assert np.all(lps[mask == 0] == 0.0)


# ------------------------------------------------------------- through verl's worker
def test_shipped_agent_loop_yaml_through_verl_worker(tokenizer, retriever, monkeypatch):
    for entry in OmegaConf.load(CONFIGS / "agent_loop.yaml"):  # as AgentLoopWorker does
        entry = OmegaConf.merge(entry, {"env_id": "stub"})  # a source, answered by the stub
        monkeypatch.setitem(_agent_loop_registry, entry.name, entry)
    monkeypatch.setattr("agents.verl.agent_loop.shared_retriever", lambda spec: retriever)

    config = verl_config(prompt_length=256, response_length=512)
    worker = object.__new__(AgentLoopWorker)
    worker.config = config
    worker.rollout_config = config.actor_rollout_ref.rollout
    worker.llm_client = ScriptedServer(
        tokenizer, ["<search> Norway </search>", "<answer>Oslo</answer>"]
    )
    worker.tokenizer, worker.processor, worker.hf_model_type = tokenizer, None, None
    worker.dataset_cls, worker.tools = RLHFDataset, []
    worker.reward_loop_worker_handles, worker.distillation_enabled = None, False
    worker.mm_processor_kwargs = {}
    traj = {"step": 0, "sample_index": 0, "rollout_n": 0, "validate": False}

    async def go():
        one = await worker._run_agent_loop(
            {"logprobs": True}, traj, agent_name="search_r1", **row()
        )
        return one, AgentLoopWorker._postprocess(worker, [one])

    padded, batch = run(go())
    mask = padded.response_mask[0]
    assert padded.response_ids.shape == (1, 512) and padded.prompt_ids.shape == (1, 256)
    n = int(padded.attention_mask[0, 256:].sum())
    assert mask[n:].sum() == 0 and 0 < mask[:n].sum() < n
    assert batch.batch["rm_scores"][0, n - 1] == 1.0 and batch.batch["rm_scores"].sum() == 1.0
    assert "rollout_log_probs" in batch.batch.keys()
    assert batch.non_tensor_batch["em"].tolist() == [1.0]


def test_loop_accepts_spare_embedding_ids_and_observes_failures(tokenizer):
    class Down:
        def search(self, queries, k):
            raise RuntimeError("index shard unavailable")

    spare = len(tokenizer) + 3  # a model row the tokenizer has no token for
    server = ScriptedServer(tokenizer, ["<search> Norway </search>", "<answer> Oslo </answer>"])
    server.turns[1] = [spare] + server.turns[1]
    out = run(make_loop(server, tokenizer, Down()).run({}, **row()))
    assert spare in out.response_ids and out.reward_score == 1.0
    assert out.response_mask[out.response_ids.index(spare)] == 1
    assert out.extra_fields["retrieval_errors"] == 1
    text = tokenizer.decode([t for t, m in zip(out.response_ids, out.response_mask) if not m])
    assert "<information>Retrieval failed: index shard unavailable" in text
    server = ScriptedServer(tokenizer, ["<search> Norway </search>"])
    loop = make_loop(server, tokenizer, Down(), on_retrieval_error="raise")
    with pytest.raises(RuntimeError, match="shard"):
        run(loop.run({}, **row()))
