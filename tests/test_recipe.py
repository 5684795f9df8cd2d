"""The tiny-cpu recipe: quick mode end to end and deterministic, its recorded provenance,
results table, command line, checkpoints, figures and log output."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs the [torch] extra")

import search_env  # noqa: F401,E402  (registers the env ids)
from agents.config import load_config
from agents.plots import plot_run, smooth
from agents.provenance import PACKAGES, git_state, package_versions
from agents.recipe import QUICK, RUNS, main, results_table, run_recipe
from agents.run import run_label
from search_env.logs import configure_logging

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
TIME_KEYS = ("seconds", "time")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick recipe (all runs, one torch thread): its results and directory."""
    out = tmp_path_factory.mktemp("recipe") / "a"
    results = run_recipe(out, {**QUICK, "threads": 1}, results_path=out.parent / "results.json")
    return results, out


def _numbers(results: dict, out: Path) -> dict:
    """Every recorded number of a recipe run except timings, paths and provenance."""

    def drop(record: dict) -> dict:
        paths = ("model_dir", "run_dir", "curves_png")
        return {
            k: v for k, v in record.items() if not any(t in k for t in TIME_KEYS) and k not in paths
        }

    return {
        "sft": drop(results["sft"]),
        "runs": {name: drop(run) for name, run in results["runs"].items()},
        "metrics": {
            name: [
                drop(json.loads(line))
                for line in (out / name / "metrics.jsonl").read_text().splitlines()
            ]
            for name in results["runs"]
        },
    }


# ------------------------------------------------------------------ end to end
def test_tiny_cpu_recipe_runs_end_to_end_quick(quick):
    results, out = quick
    assert json.loads((out.parent / "results.json").read_text()) == results
    assert json.loads((out / "recipe.json").read_text()) == results
    assert 0.0 <= results["sft"]["test_em"] <= 1.0
    assert results["sft"]["test_questions"] == QUICK["rollout.eval_questions"]
    assert set(results["runs"]) == set(RUNS)
    for name, run in results["runs"].items():
        assert run["test_em_start"] == pytest.approx(results["sft"]["test_em"])
        assert 0.0 <= run["test_em_end"] <= 1.0
        assert [p["step"] for p in run["test_curve"]] == [0, QUICK["steps"]]
        assert run["test_curve"][-1]["test_em"] == run["test_em_end"]
        assert (out / name / "metrics.jsonl").exists()
        if HAS_MPL:
            png = out / name / "curves.png"
            assert run["curves_png"] == str(png)
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(out / "grpo_no_mask" / "config.json").grpo.mask_env_tokens is False


def test_quick_recipe_is_deterministic(quick, tmp_path):
    """Same seed, same numbers: SFT, per-step RL metrics (rewards, losses, EM) and evals."""
    results, out = quick
    again = run_recipe(tmp_path / "b", {**QUICK, "threads": 1})
    first, second = _numbers(results, out), _numbers(again, tmp_path / "b")
    assert first["metrics"]["ppo"][1]["grad_norm"] > 0  # something real is compared
    assert first == second


def test_recipe_json_records_versions_commit_threads_and_wall_times(quick):
    results, _ = quick
    machine = results["machine"]
    assert set(machine["packages"]) == set(PACKAGES)
    assert {"torch", "transformers", "numpy", "gymnasium", "bm25s", "search-env"} <= set(PACKAGES)
    assert machine["packages"]["torch"] == importlib.import_module("torch").__version__
    assert machine["torch_threads"] == 1
    assert machine["python"] == ".".join(map(str, sys.version_info[:3]))
    assert machine["platform"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode == 0:
        assert machine["git"]["commit"] == head.stdout.strip()
        assert isinstance(machine["git"]["dirty"], bool)
    wall = results["wall_seconds"]
    assert set(wall) == {"sft", "total", *RUNS}
    assert wall["total"] >= wall["sft"] + sum(wall[name] for name in RUNS) > 0


def test_quick_recipe_writes_the_table_and_a_checkpoint_eval_model_loads(quick, tmp_path, capsys):
    from search_env.cli import main as cli_main

    results, out = quick
    table = (out / "recipe.md").read_text()
    assert table.startswith(results_table(results) + "\n\n")
    assert (out / "grpo" / "checkpoints" / f"step_{QUICK['steps']:08d}" / "state.pt").is_file()
    report = tmp_path / "eval.json"
    code = cli_main(
        [
            "eval",
            "--model",
            str(out / "grpo"),
            "--limit",
            "2",
            "--num-envs",
            "2",
            "--out",
            str(report),
            "--markdown",
            "",
            "--quiet",
        ]
    )
    assert code == 0
    assert f"grpo@step{QUICK['steps']}" in report.read_text()


# ------------------------------------------------------------------ provenance
def test_git_state_outside_a_checkout_is_none(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_git_state_without_git_installed_is_none(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert git_state() == {"commit": None, "dirty": None}


def test_package_versions_of_a_missing_package_is_none():
    assert package_versions(["numpy", "no-such-distribution-xyz"]) == {
        "numpy": importlib.import_module("numpy").__version__,
        "no-such-distribution-xyz": None,
    }


# ------------------------------------------------------------------ the table
README_RESULTS = {
    "sft": {"test_em": 2 / 205, "test_searches": 0.3756, "seconds": 401.9, "test_questions": 205},
    "runs": {
        "grpo": {
            "steps": 40,
            "test_questions": 205,
            "test_em_start": 2 / 205,
            "test_em_end": 30 / 205,
            "test_searches_start": 0.3756,
            "test_searches_end": 0.9902,
            "rl_seconds": 105.0,
            "test_curve": [
                {"step": 0, "test_em": 2 / 205, "test_searches": 0.3756},
                {"step": 20, "test_em": 28 / 205, "test_searches": 0.9756},
                {"step": 40, "test_em": 30 / 205, "test_searches": 0.9902},
            ],
        },
        "grpo_no_mask": {
            "steps": 40,
            "test_questions": 205,
            "test_em_start": 2 / 205,
            "test_em_end": 3 / 205,
            "test_searches_start": 0.3756,
            "test_searches_end": 0.4732,
            "rl_seconds": 179.4,
            "test_curve": [
                {"step": 0, "test_em": 2 / 205, "test_searches": 0.3756},
                {"step": 10, "test_em": 29 / 205, "test_searches": 0.8634},
                {"step": 20, "test_em": 2 / 205, "test_searches": 0.6439},
                {"step": 40, "test_em": 3 / 205, "test_searches": 0.4732},
            ],
        },
    },
}


def test_results_table_is_the_readmes_layout():
    assert results_table(README_RESULTS) == "\n".join(
        [
            "| run | held-out EM start → end | searches/episode | wall time |",
            "|---|---|---|---|",
            "| SFT warm start | 0.010 (2/205) | 0.38 | 402 s |",
            "| GRPO, 40 steps | 0.010 → **0.146** (30/205) | 0.38 → 0.99 | 105 s |",
            (
                "| GRPO without the loss mask, 40 steps | 0.010 → 0.141 at step 10 → **0.015** (3/205) "
                "| 0.38 → 0.86 → 0.47 | 179 s |"
            ),
        ]
    )


def test_main_prints_the_table_and_the_paths_not_json(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run_recipe(out, overrides, runs, results_path):
        seen.update(out=out, overrides=overrides, runs=runs)
        return {
            **README_RESULTS,
            "machine": {
                "git": {"commit": "a" * 40, "dirty": False},
                "packages": {"torch": "2.13.0"},
                "torch_threads": 1,
            },
            "wall_seconds": {"total": 600.0},
        }

    monkeypatch.setattr("agents.recipe.run_recipe", fake_run_recipe)
    assert main(["--quick", "--out", str(tmp_path), "--runs", "grpo,ppo", "--set", "seed=3"]) == 0
    assert seen["runs"] == ["grpo", "ppo"]
    assert seen["overrides"] == {**QUICK, "seed": 3}
    printed = capsys.readouterr().out
    assert printed.startswith(results_table(README_RESULTS) + "\n")
    assert "commit aaaaaaaaaa, torch 2.13.0, 1 torch thread(s), 10.0 min in all" in printed
    wrote = f"wrote {tmp_path / 'recipe.json'} and {tmp_path / 'recipe.md'}"
    assert printed.rstrip().endswith(wrote)
    assert len(printed.splitlines()) < 12


# ------------------------------------------------------------------ command line
def test_recipe_help_names_the_command_describes_it_and_lists_the_runs(capsys):
    from search_env.cli import main as cli_main

    with pytest.raises(SystemExit) as exc:
        cli_main(["recipe", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: search-env recipe")
    assert "SFT" in text and "recipe.json" in text and "--quick" in text
    for name in RUNS:
        assert name in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runs", "grpo,bogus"], "'bogus'"),
        (["--runs", ","], "no recipe run given"),
        (["--runs", "ppo,grpo,ppo"], "given twice: ppo"),
        (["--set", "seed"], "--set needs KEY=VALUE"),
        (["--set", "grpo.nope=1"], "unknown config key 'grpo.nope'"),
        (["--set", "grpo.lr=abc"], "config key 'grpo.lr' expects float, got 'abc'"),
        (
            ["--set", "rollout.num_envs=16"],
            "grpo.minibatch_size (48) must be between 1 and the batch",
        ),
    ],
)
def test_recipe_bad_arguments_fail_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_recipe_rejects_an_unknown_run_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe run.*'ppo2'.*choose from grpo"):
        run_recipe(tmp_path / "out", QUICK, runs=["grpo", "ppo2"])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ figures
def test_run_labels_tell_the_two_grpo_runs_apart(tmp_path):
    assert run_label(tmp_path / "grpo", "grpo") == "grpo"
    assert run_label(tmp_path / "grpo_no_mask", "grpo") == "grpo_no_mask (grpo)"


def metrics_fixture() -> list[dict]:
    """A GRPO run's records as the trainer logs them: eval at 0, 2, 4; train steps 1-4."""
    records = [{"step": 0, "eval_em": 0.01, "eval_searches": 0.4, "eval_time": 1.0}]
    for step in range(1, 5):
        record = {
            "step": step,
            "reward": 0.1 * step,
            "em": 0.05 * step,
            "searches": 0.2 * step,
            "kl": 0.001 * step,
            "step_time": 1.0,
        }
        if step % 2 == 0:
            record.update(eval_em=0.03 * step, eval_searches=0.2 * step)
        records.append(record)
    return records


@pytest.mark.skipif(not HAS_MPL, reason="needs matplotlib")
def test_plot_run_draws_em_searches_and_kl_on_shared_labelled_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in metrics_fixture()))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    png = tmp_path / "curves.png"
    fig = plot_run(
        records,
        png,
        name="grpo_no_mask (grpo)",
        train_questions=6,
        episodes=48,
        eval_questions=205,
        window=2,
    )
    one = plot_run(records, tmp_path / "one.png", name="x", train_questions=1, episodes=1)
    assert fig.legends and one.legends[0].get_texts()[0].get_text().startswith(
        "train batch (1 question, 1 episode): "
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    em, searches, kl = fig.axes
    assert fig._suptitle.get_text() == "grpo_no_mask (grpo)"
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "exact match",
        "searches / episode",
        "KL(policy || reference)",
    ]
    assert kl.get_xlabel() == "RL step"
    assert em.get_shared_x_axes().joined(em, kl) and em.get_shared_x_axes().joined(em, searches)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [
        "train batch (6 questions, 48 episodes): 2-step mean (faint: each step)",
        "held-out (205 questions): greedy",
    ]
    assert all(ax.get_legend() is None for ax in fig.axes)  # one legend, under the panels
    raw, smoothed, held_out = em.get_lines()
    assert list(raw.get_ydata()) == pytest.approx([0.05, 0.10, 0.15, 0.20])
    assert list(smoothed.get_ydata()) == pytest.approx([0.05, 0.075, 0.125, 0.175])
    assert list(held_out.get_xdata()) == [0, 2, 4]
    assert list(searches.get_lines()[2].get_ydata()) == pytest.approx([0.4, 0.4, 0.8])
    assert list(kl.get_lines()[0].get_ydata()) == pytest.approx([0.001, 0.002, 0.003, 0.004])
    assert len(kl.get_lines()) == 2  # the KL is the train batch's only


@pytest.mark.skipif(not HAS_MPL, reason="needs matplotlib")
def test_plot_run_with_evaluations_only_still_writes_a_figure(tmp_path):
    """A run of 0 steps logs only the step-0 evaluation: no training curves, no KL."""
    fig = plot_run(
        [{"step": 0, "eval_em": 0.0, "eval_searches": 0.0}], tmp_path / "c.png", name="ppo"
    )
    assert (tmp_path / "c.png").is_file()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["held-out: greedy"]
    assert not fig.axes[2].has_data()


def test_smooth_is_a_trailing_mean_and_rejects_a_zero_window():
    assert smooth([1.0, 3.0, 5.0, 7.0], 3) == pytest.approx([1.0, 2.0, 3.0, 5.0])
    with pytest.raises(ValueError, match="window must be >= 1"):
        smooth([1.0], 0)


# ------------------------------------------------------------------ log output
def test_configure_logging_drops_bm25s_debug_lines_at_info():
    import bm25s  # noqa: F401  (sets its own logger to DEBUG when imported)

    assert logging.getLogger("bm25s").level == logging.DEBUG
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    try:
        configure_logging(logging.INFO, stream)
        handler = configure_logging(logging.INFO, stream)  # a second call replaces the first
        assert [h for h in root.handlers if h.name == handler.name] == [handler]
        logging.getLogger("bm25s").debug("a debug line")
        logging.getLogger("bm25s").info("an info line")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert stream.getvalue() == "INFO bm25s: an info line\n"


def test_progress_bars_redraw_rarely_when_stderr_is_not_a_terminal(monkeypatch):
    from agents.progress import progress_interval

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_interval() == 30.0

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_interval() == 0.1


def test_loading_the_same_qa_file_again_logs_once(tmp_path, caplog):
    from search_env.data.qa import load_flashrag_jsonl

    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "q?", "golden_answers": ["a"]}\n')
    with caplog.at_level(logging.INFO, logger="search_env.data.qa"):
        for _ in range(3):
            assert len(load_flashrag_jsonl(path)) == 1
    assert [r.getMessage() for r in caplog.records if "QA examples" in r.getMessage()] == [
        f"Loaded 1 QA examples from {path}"
    ]
