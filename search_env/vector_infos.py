"""Gymnasium's vector ``info`` layout, built for :mod:`search_env.vector`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def merge_infos(infos: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Gymnasium's vector info layout: ``info[key][i]`` plus a ``info["_key"]`` mask.

    Same result as ``VectorEnv._add_info`` applied env by env, built one key at a time
    (numbers and bools as numeric arrays, anything else as object arrays, dicts nested).
    """
    n = len(infos)
    keys: dict[str, None] = {}
    for info in infos:
        if info:
            keys.update(dict.fromkeys(info))
    out: dict[str, Any] = {}
    for key in keys:
        present = np.fromiter((info is not None and key in info for info in infos), bool, n)
        values = [info[key] if info is not None and key in info else None for info in infos]
        given = [v for v, p in zip(values, present) if p]
        if key == "final_obs":
            array: Any = np.empty(n, dtype=object)
            array[:] = values
        elif all(isinstance(v, dict) for v in given):
            array = merge_infos([v if p else None for v, p in zip(values, present)])
        elif all(isinstance(v, (bool, np.bool_)) for v in given):
            array = np.array([bool(v) if p else False for v, p in zip(values, present)])
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in given):
            array = np.array([v if p else 0 for v, p in zip(values, present)], dtype=np.int64)
        elif all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in given):
            array = np.array([v if p else 0.0 for v, p in zip(values, present)], dtype=np.float64)
        else:
            array = np.empty(n, dtype=object)
            array[:] = values
        out[key] = array
        out[f"_{key}"] = present
    return out
