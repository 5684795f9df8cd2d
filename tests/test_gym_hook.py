"""The start-up hook (hooks/_search_env_gym_hook.py) that registers the ids when Gymnasium
is imported (the installed .pth file: tests/test_registration.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HOOK = Path(__file__).resolve().parents[1] / "hooks" / "_search_env_gym_hook.py"

# In a fresh interpreter: this checkout's hook in place of the installed copy, and a
# stand-in search_env whose registration fails; then Gymnasium is imported.
FAILING_REGISTRATION = """
import importlib.util, sys, types

sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_AfterGymnasium"]
spec = importlib.util.spec_from_file_location("hook_under_test", HOOK)
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)
hook.install()

def register_envs():
    raise RuntimeError("registry on fire")

package = types.ModuleType("search_env")
package.__path__ = []
registration = types.ModuleType("search_env.registration")
registration.register_envs = register_envs
sys.modules.update({"search_env": package, "search_env.registration": registration})
import gymnasium
print("imported", "SearchQA-NQ-v0" in gymnasium.registry)
""".replace("HOOK", repr(str(HOOK)))


def test_a_failing_registration_is_logged_and_gymnasium_still_imports():
    assert "gymnasium" not in subprocess.run(
        [sys.executable, "-c", "import sys; print(sorted(sys.modules))"],
        capture_output=True, text=True, check=True).stdout  # the hook has work to do
    out = subprocess.run([sys.executable, "-c", FAILING_REGISTRATION], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["imported", "False"]
    assert "could not register its Gymnasium ids" in out.stderr
    assert "RuntimeError: registry on fire" in out.stderr  # the traceback, not only a line
