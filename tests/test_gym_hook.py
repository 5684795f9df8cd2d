"""The start-up hook (hooks/_search_env_gym_hook.py) that registers the ids when Gymnasium
is imported (the installed .pth file: tests/test_registration.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "hooks" / "_search_env_gym_hook.py"

# This checkout's hook in place of the installed copy (which the .pth file ran at start-up).
USE_THIS_HOOK = f"""
import importlib.util, sys

sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_AfterGymnasium"]
spec = importlib.util.spec_from_file_location("hook_under_test", {str(HOOK)!r})
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)
hook.install()
"""


def _python(code: str, *path: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with ``path`` first on sys.path (then this checkout)."""
    prefix = "import sys; sys.path[:0] = " + repr([str(p) for p in (*path, ROOT)]) + "\n"
    return subprocess.run(
        [sys.executable, "-c", prefix + USE_THIS_HOOK + code],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_failing_registration_is_logged_and_gymnasium_still_imports(tmp_path):
    broken = tmp_path / "search_env"  # a stand-in search_env whose registration fails
    broken.mkdir()
    (broken / "__init__.py").write_text("")
    (broken / "registration.py").write_text(
        "def register_envs():\n    raise RuntimeError('registry on fire')\n"
    )
    out = _python(
        "import gymnasium\nprint('imported', 'SearchQA-NQ-v0' in gymnasium.registry)", tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["imported", "False"]
    assert "could not register its Gymnasium ids" in out.stderr
    assert "RuntimeError: registry on fire" in out.stderr  # the traceback, not only a line


def test_gymnasium_registers_the_ids_and_search_env_importing_it_logs_nothing():
    for first in ("gymnasium", "search_env"):  # search_env imports Gymnasium half-way through
        out = _python(
            f"import {first}\nimport gymnasium\nprint('SearchQA-NQ-v0' in gymnasium.registry)"
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["True"] and out.stderr == "", first
