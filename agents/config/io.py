"""Config I/O: dataclass to dict and back (every value checked against its field's
type), JSON files, and dotted-key overrides.

Generic over config dataclasses: the RLlib and SB3 run configs use these helpers too. A
resolved config is saved as JSON with every run (``config.json`` in the run directory).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from agents.config.schema import TrainConfig
from agents.config.values import check_value, close_keys, field_types, is_config, key_type

C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    """A plain JSON-able dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)


def build_config(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """A ``cls`` dataclass from a dict of :func:`to_dict`: dataclass-typed fields are built
    from their dicts, missing fields take their defaults, unknown ones raise, and every
    value is checked against its field's annotation.

    Args:
        cls: a config dataclass.
        data: field values by name.
        prefix: dotted path of ``cls`` in the outer config (``"grpo."``), for messages.

    Raises:
        ValueError: an unknown field, a value of the wrong type (naming its dotted key),
            or a failed check of ``cls`` itself.
    """
    if not isinstance(data, Mapping):  # ValueError like every other bad value: callers catch it
        raise ValueError(  # noqa: TRY004
            f"config key {prefix.rstrip('.') or cls.__name__!r} expects an object of "
            f"{cls.__name__} fields, got {data!r}"
        )
    types = field_types(cls)
    unknown = [name for name in data if name not in types]
    if unknown:
        close = [k for name in unknown for k in close_keys(cls, name)]
        hint = f"; did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}{hint}")
    kwargs = {}
    for name, value in data.items():
        tp, key = types[name], prefix + name
        if is_config(tp):
            kwargs[name] = value if isinstance(value, tp) else build_config(tp, value, f"{key}.")
        else:
            kwargs[name] = check_value(key, value, tp)
    return cls(**kwargs)


def from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Inverse of :func:`to_dict`; missing fields take their defaults, unknown ones raise."""
    return build_config(TrainConfig, data)


def save_config(config: Any, path: str | Path) -> Path:
    """Write ``config`` (any config dataclass) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_config(path: str | Path, cls: type[C]) -> C:
    """A ``cls`` config from a JSON file written by :func:`save_config`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not a valid ``cls`` (the message names the file).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        return build_config(cls, json.loads(text))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` written by :func:`save_config`."""
    return read_config(path, TrainConfig)


def apply_overrides(config: C, overrides: Mapping[str, Any]) -> C:
    """A copy of ``config`` with dotted keys replaced, e.g. ``{"grpo.lr": 1e-4}``.

    Works for any config dataclass. A key must name an existing field, except below a
    field annotated ``dict`` (:class:`TrainConfig`'s ``rollout.env_kwargs``), where new
    keys are added. Values are checked against their fields' types, then the whole config
    is checked as it is built; ``config`` itself is left as it was.

    Raises:
        ValueError: an unknown key (close names suggested), a value of the wrong type, or
            a failed cross-field check.
    """
    cls = type(config)
    data = to_dict(config)
    for key, value in overrides.items():
        key_type(cls, key)  # an unknown key raises here, with close names
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):  # below an open dict: a missing sub-dict
                raise ValueError(f"unknown config key {key!r}")  # noqa: TRY004
            node = node[part]
        node[leaf] = value
    return build_config(cls, data)
