"""verl adapters: the drop-in SearchTool, the reward function, the configs, the data files.

The tool runs against a live ``search-env serve`` app on 127.0.0.1 (the old verl tool
config, only the class name and the port changed) and against in-process retrievers; the
trainer configs are composed and validated by verl's own machinery. The agent loop's tests
are in ``test_verl_loop.py``. Needs ``pip install 'search-env[verl]'``.
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
from verl.tools.tool_registry import initialize_tools_from_config
from verl.utils.dataset.rl_dataset import RLHFDataset

from agents.verl.agent_loop import example_from_row
from agents.verl.reward import compute_score, final_answer
from agents.verl.tool import SearchTool
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
