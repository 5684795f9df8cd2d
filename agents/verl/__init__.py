"""verl adapters: the Search-R1 agent loop and a drop-in search tool (``pip install 'search-env[verl]'``).

* `SearchR1AgentLoop` (``agents.verl.agent_loop``, registered as ``search_r1``): the exact
  tag protocol, driven by this package's env;
* `SearchTool` (``agents.verl.tool``): the tool verl removed, reading its old config.

Configs for both and for Search-R1 training on 8 GPUs are in ``agents/verl/configs/``;
``docs/integrations/verl.md`` says how to run them.
"""

from __future__ import annotations

import importlib.util

from agents import lazy_getattr

_EXPORTS = {
    "SearchR1AgentLoop": "agents.verl.agent_loop",
    "example_from_row": "agents.verl.agent_loop",
    "SearchTool": "agents.verl.tool",
    "shared_retriever": "agents.verl.retrieval",
    "compute_score": "agents.verl.reward",
}


def _need_verl(module: str) -> None:
    if module != "agents.verl.retrieval" and importlib.util.find_spec("verl") is None:
        raise ImportError(f"{module} needs verl: pip install 'search-env[verl]'")


__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, _need_verl)
