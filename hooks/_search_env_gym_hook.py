"""Registers search-env's ids with Gymnasium when Gymnasium is first imported.

Gymnasium 1.x no longer loads plugin entry points, so ``gym.make("SearchQA-NQ-v0")``
would fail until ``search_env`` is imported. The ``search_env_gym.pth`` file installed
beside this module calls :func:`install` at interpreter start; it only adds a light
import hook (no import of Gymnasium or NumPy happens here).
"""

from __future__ import annotations

import sys
from importlib.machinery import PathFinder  # already loaded at start-up: costs nothing


class _AfterGymnasium:
    """A meta-path finder (duck-typed: importing importlib.abc would cost ~20 ms)."""

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name != "gymnasium":
            return None
        sys.meta_path.remove(self)
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            original(module)
            if "search_env" in sys.modules:  # search_env is importing Gymnasium: it registers
                return  # the ids itself once loaded (registering now would be a circular import)
            try:
                from search_env.registration import register_envs

                register_envs()
            except Exception:  # never break Gymnasium's own import, but say why the ids are missing
                import logging  # only now: at start-up this module must stay light

                logging.getLogger("search_env").warning(
                    "search-env could not register its Gymnasium ids when Gymnasium was "
                    "imported (import search_env to register them)",
                    exc_info=True,
                )

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    if "gymnasium" in sys.modules or any(isinstance(f, _AfterGymnasium) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _AfterGymnasium())
