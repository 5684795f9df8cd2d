"""One-way layering: the env package ``search_env`` never imports the ``agents`` package
(agents build on the env; the env's command line finds their commands through entry points)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import search_env

ROOT = Path(search_env.__file__).parent

# In a fresh interpreter: import every module of search_env, one after the other, and record
# for each the agents modules that importing it loaded (or why it was skipped).
IMPORT_ALL = r"""
import importlib, json, pkgutil, sys

import search_env

def agents_modules():
    return {m for m in sys.modules if m == "agents" or m.startswith("agents.")}

report = {"search_env": {"agents": sorted(agents_modules())}}
for info in pkgutil.walk_packages(search_env.__path__, "search_env."):
    before = agents_modules()
    try:
        importlib.import_module(info.name)
    except ImportError as exc:
        first_party = (exc.name or "").split(".")[0] in ("search_env", "agents")
        if first_party:
            raise
        # an optional dependency (an extra) that is not installed
        report[info.name] = {"skipped": f"needs {exc.name or exc}"}
        continue
    report[info.name] = {"agents": sorted(agents_modules() - before)}
print(json.dumps(report))
"""


def _module_names() -> list[str]:
    """Every module under search_env/, from the file tree (nothing imported)."""
    names = []
    for path in ROOT.rglob("*.py"):
        parts = ("search_env", *path.relative_to(ROOT).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


@pytest.fixture(scope="module")
def import_report() -> dict[str, dict]:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL],
        capture_output=True,
        text=True,
        cwd=ROOT.parent,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_the_walk_finds_every_module(import_report):
    assert sorted(import_report) == _module_names()


@pytest.mark.parametrize("module", _module_names())
def test_importing_a_search_env_module_loads_no_agents_module(import_report, module):
    record = import_report[module]
    if "skipped" in record:
        pytest.skip(f"{module} {record['skipped']} (an optional extra)")
    assert record["agents"] == [], f"importing {module} loaded {record['agents']}"


@pytest.mark.parametrize("argv", [["envs"], ["synth", "--help"], ["index", "build", "--help"]])
def test_env_commands_load_no_agents_module(argv):
    """``search-env envs`` used to import agents.train; an env command now loads no entry point
    but its own (and only ``eval`` is extended)."""
    code = (
        "import sys\n"
        "from search_env.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m == 'agents' or m.startswith('agents.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"
