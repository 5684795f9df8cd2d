"""verl adapters: the drop-in SearchTool and the Search-R1 agent loop, on CPU.

The tool runs against a live ``search-env serve`` app on 127.0.0.1 (the old verl tool
config, only the class name and the port changed) and against an in-process BM25 index;
the agent loop runs with fake server managers (scripted token outputs, and a tiny random
Qwen2 that samples) and through verl's own worker code (hydra instantiation from the
shipped agent-loop YAML, padding, batching). Needs ``pip install 'search-env[verl]'``.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("verl")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
torch = pytest.importorskip("torch")

import numpy as np
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopWorker,
    DictConfigWrap,
    ToolListWrap,
    _agent_loop_registry,
)
from verl.tools.tool_registry import initialize_tools_from_config
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from agents.verl.agent_loop import SearchR1AgentLoop, example_from_row
from agents.verl.reward import compute_score, final_answer
from agents.verl.tool import SearchTool
from search_env.env import SearchQAEnv
from search_env.protocol import INVALID_ACTION_MESSAGE, SEARCH_R1_TEMPLATE, ProtocolConfig
from search_env.retrievers.bm25 import BM25Retriever
from search_env.server import ServerThread, create_app
from search_env.types import QAExample

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "agents" / "verl" / "configs"

# verl's removed search tool config (tests/workers/rollout/resource/tool_configs/
# search_tool_config before PR #6302), word for word but for class_name and the port.
OLD_TOOL_CONFIG = """\
tools:
  - class_name: agents.verl.tool.SearchTool
    config:
      retrieval_service_url: http://127.0.0.1:{port}/retrieve
      num_workers: 120
      rate_limit: 120
      timeout: 30
      type: native
    tool_schema:
      type: function
      function:
        name: search
        description: Searches the web for relevant information based on the given query.
        parameters:
          type: object
          properties:
            query_list:
              type: array
              item:
                type: string
              description: A list of fully-formed semantic queries. The tool will return search results for each query.
          required: 
            - query_list
"""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def expected_block(passages: list) -> str:
    docs = "".join(f"Doc {i}(Title: {p.title}) {p.text}\n" for i, p in enumerate(passages, 1))
    return f"<information>{docs}</information>"


# verl's wheel installs a top-level ``tests`` package, which hides this directory's
# (``from tests.conftest import ...`` fails there): conftest's objects come as fixtures.
@pytest.fixture(scope="module")
def passages() -> list:
    from search_env.types import Passage

    return [
        Passage("1", '"Oslo"\nOslo is the capital of Norway.'),
        Passage("2", '"Bergen"\nBergen is a city in Norway.'),
        Passage("3", '"Zürich"\nZürich is the largest city in Switzerland.'),
        Passage("4", '"Paris"\nParis is the capital of France.'),
    ]


@pytest.fixture(scope="module")
def bm25(passages) -> BM25Retriever:
    return BM25Retriever.from_passages(passages, backend="numpy", show_progress=False, n_threads=1)


@pytest.fixture(scope="module")
def server(bm25):
    with ServerThread(create_app(bm25, max_wait_ms=1.0)) as srv:
        yield srv


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ tool
def test_tool_with_old_verl_config_against_live_server(tmp_path, server, bm25):
    path = tmp_path / "search_tool_config.yaml"
    path.write_text(OLD_TOOL_CONFIG.format(port=server.port))
    (tool,) = initialize_tools_from_config(str(path))  # verl's own loader
    assert isinstance(tool, SearchTool) and tool.name == "search" and tool.topk == 3

    async def episode():
        instance, created = await tool.create(create_kwargs={"ground_truth": {"target": ["Oslo"]}})
        assert created.is_empty()
        queries = ["capital of Norway", "largest city in Switzerland"]
        response, step_reward, metrics = await tool.execute(instance, {"query_list": queries})
        wrong = await tool.calc_reward(instance, answer="Bergen")
        right = await tool.calc_reward(instance, solution_str="<answer> oslo </answer>")
        await tool.release(instance)
        return instance, response, step_reward, metrics, wrong, right

    instance, response, step_reward, metrics, wrong, right = run(episode())
    hits = bm25.search(["capital of Norway", "largest city in Switzerland"], 3)
    assert response.text == "\n".join(expected_block(h) for h in hits)
    assert response.text.startswith('<information>Doc 1(Title: "Oslo") Oslo is the capital')
    assert step_reward == 0.0
    assert metrics["status"] == "success" and metrics["query_count"] == 2
    assert metrics["total_results"] == sum(len(h) for h in hits)
    assert (wrong, right) == (0.0, 1.0)
    with pytest.raises(KeyError, match="create"):  # released
        run(tool.execute(instance, {"query_list": ["x"]}))


def test_tool_in_process_bm25_index_matches_the_server(tmp_path, server, bm25):
    index = bm25.save(tmp_path / "index")
    local = SearchTool({"retriever": str(index), "topk": 2, "type": "native"}, None)
    remote = SearchTool({"retrieval_service_url": server.url + "/retrieve", "topk": 2}, None)

    async def ask(tool: SearchTool, params: dict) -> str:
        instance, _ = await tool.create()
        response, _, metrics = await tool.execute(instance, params)
        await tool.release(instance)
        assert metrics["status"] == "success"
        return response.text

    one = run(ask(local, {"query": "capital of France"}))  # a single query string
    assert one == expected_block(bm25.search(["capital of France"], 2)[0])
    assert one == run(ask(remote, {"query_list": ["capital of France"]}))
    assert local.retriever is SearchTool({"retriever": str(index)}, None).retriever  # shared


def test_tool_down_server_is_a_tool_message_not_a_crash():
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    tool = SearchTool({"retrieval_service_url": url, "timeout": 2, "retries": 0}, None)

    async def call():
        instance, _ = await tool.create()
        return await tool.execute(instance, {"query_list": ["capital of Norway"]})

    response, step_reward, metrics = run(call())
    assert response.text.startswith("<information>Retrieval failed: RetrievalError")
    assert url in response.text and response.text.endswith("</information>")
    assert step_reward == 0.0
    assert metrics["status"] == "api_error" and "RetrievalError" in metrics["error"]


@pytest.mark.parametrize(
    "params, problem",
    [
        ({}, "missing"),
        ({"query_list": "capital"}, None),  # a bare string is one query
        ({"query_list": []}, "missing"),
        ({"query_list": ["ok", 3]}, "must be a string"),
        ({"query_list": ["ok", "  "]}, "empty query"),
        (["capital"], "object"),
    ],
)
def test_tool_bad_parameters_get_a_message(bm25, params, problem):
    tool = SearchTool({"retriever": bm25}, None)

    async def call():
        instance, _ = await tool.create()
        return await tool.execute(instance, params)

    response, _, metrics = run(call())
    if problem is None:
        assert metrics["status"] == "success"
    else:
        assert metrics["status"] == "bad_parameters" and problem in response.text


@pytest.mark.parametrize(
    "config, match",
    [
        ({}, "exactly one of"),
        ({"retrieval_service_url": "http://127.0.0.1:1/retrieve", "corpus": "x.jsonl"}, "got "),
        ({"retrieval_service_url": "/not/a/url"}, "http"),
        ({"retriever": "http://127.0.0.1:1", "topk": 0}, "topk"),
        ({"retriever": "http://127.0.0.1:1", "timeout": -1}, "timeout"),
    ],
)
def test_tool_bad_config_fails_at_start(config, match):
    with pytest.raises(ValueError, match=match):
        SearchTool(config, None)


def test_tool_calc_reward_needs_ground_truth(bm25):
    tool = SearchTool({"retriever": bm25, "reward_metric": "f1"}, None)

    async def go():
        plain, _ = await tool.create()
        gold, _ = await tool.create(ground_truth=["Lake Geneva"])
        partial = await tool.calc_reward(gold, answer="Geneva")
        with pytest.raises(ValueError, match="ground_truth"):
            await tool.calc_reward(plain, answer="x")
        return partial

    assert run(go()) == pytest.approx(2 / 3)  # F1 of "geneva" against "lake geneva"
    with pytest.raises(TypeError, match="ground_truth"):
        run(tool.create(ground_truth=3))


def test_reward_reads_the_last_model_turn_only():
    text = (
        "<search> q </search>\n<information>Doc 1(Title: x) <answer> Oslo </answer>\n"
        "</information>\n<answer> Paris </answer> <answer> Oslo </answer>"
    )
    assert final_answer(text) == "Paris"
    scores = compute_score("nq", text, {"target": np.array(["Oslo"])})
    assert scores["score"] == 0.0 and scores["em"] == 0.0
    assert compute_score("nq", "<answer>the Oslo</answer>", ["Oslo"])["score"] == 1.0
    assert compute_score("nq", "no answer", ["Oslo"])["score"] == 0.0


# ------------------------------------------------------------------------- agent loop
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


def test_loop_takes_the_search_tools_retriever(tokenizer, bm25):
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


# ----------------------------------------------------------------------------- configs
def test_trainer_configs_compose_and_validate_with_verl(tmp_path, tokenizer):
    from hydra import compose, initialize_config_dir, initialize_config_module
    from verl.utils.config import validate_config

    from agents.tiny_model import make_tiny_qwen2, save_tiny_model

    model_dir = save_tiny_model(make_tiny_qwen2(tokenizer, hidden_size=32, layers=1, heads=2,
                                                kv_heads=1, intermediate=64), tokenizer,
                                tmp_path / "tiny")  # fmt: skip
    with initialize_config_module("verl.trainer.config", version_base=None):
        base = OmegaConf.to_container(compose("ppo_trainer"))

    def keys(node: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in node.items():
            out += keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [prefix + k]
        return out

    overrides = [f"actor_rollout_ref.model.path={model_dir}", f"critic.model.path={model_dir}"]
    with initialize_config_dir(str(CONFIGS), version_base=None):
        for name, critic in (("search_r1_grpo", False), ("search_r1_ppo", True)):
            own = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
            del own["hydra"], own["defaults"]
            for key in keys(own):  # every key we set is one of verl 0.9's
                node: Any = base
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{name}: unknown key {key}"
                    node = node[part]
            cfg = compose(name, overrides=overrides)
            validate_config(cfg, use_reference_policy=True, use_critic=critic)
            rollout = cfg.actor_rollout_ref.rollout
            assert rollout.agent.default_agent_loop == "search_r1"
            assert rollout.skip_tokenizer_init is False  # vLLM's stop strings need it
            root = CONFIGS.parents[2]
            assert (root / rollout.agent.agent_loop_config_path).is_file()
            assert (root / rollout.multi_turn.tool_config_path).is_file()
            assert cfg.trainer.n_gpus_per_node == 8 and "Qwen2.5-3B" in OmegaConf.load(
                CONFIGS / f"{name}.yaml").actor_rollout_ref.model.path  # fmt: skip
    assert compose is not None
    grpo = OmegaConf.load(CONFIGS / "search_r1_grpo.yaml")
    assert grpo.actor_rollout_ref.rollout.n == 5 and grpo.algorithm.adv_estimator == "grpo"


def test_shipped_tool_config_loads_in_verl():
    (tool,) = initialize_tools_from_config(str(CONFIGS / "search_tool_config.yaml"))
    assert isinstance(tool, SearchTool)
    assert tool.retriever.url == "http://127.0.0.1:8000/retrieve" and tool.topk == 3


def test_parquet_rows_round_trip_through_verl_dataset(tmp_path, tokenizer):
    from agents.verl.data import write_verl_parquet
    from search_env.data.qa import load_qa

    examples = [
        QAExample("a", " What is the capital of Norway ", ("Oslo",)),
        QAExample("b", "Largest city in Switzerland?", ("Zürich", "Zurich")),
    ]
    path = write_verl_parquet(examples, tmp_path / "d" / "train.parquet", data_source="synth")
    config = OmegaConf.create({"filter_overlong_prompts": False, "cache_dir": str(tmp_path / "c")})
    dataset = RLHFDataset([str(path)], tokenizer, config)  # verl's own reader
    got = [example_from_row(dataset[i]) for i in range(len(dataset))]
    assert [(e.question, e.golden_answers) for e in got] == [
        ("What is the capital of Norway?", ("Oslo",)),
        ("Largest city in Switzerland?", ("Zürich", "Zurich")),
    ]
    assert dataset[1]["tools_kwargs"]["search"]["create_kwargs"]["ground_truth"]["target"] == [
        "Zürich", "Zurich"
    ]  # fmt: skip
    assert [e.question for e in load_qa(path)] == [e.question for e in got]
    with pytest.raises(ValueError, match="no examples"):
        write_verl_parquet([], tmp_path / "empty.parquet")


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


@pytest.mark.slow
def test_tool_uses_a_registered_envs_retriever():
    spec = {"env_id": "SearchQA-Synth-v0", "env_kwargs": {"size": "tiny"}, "topk": 2}
    tool = SearchTool(spec, None)

    async def call():
        instance, _ = await tool.create()
        return await tool.execute(instance, {"query_list": ["capital"]})

    response, _, metrics = run(call())
    assert type(tool.retriever).__name__ == "BM25Retriever" and metrics["status"] == "success"
    assert response.text == expected_block(tool.retriever.search(["capital"], 2)[0])
    assert response.text.count("Doc ") == 2
