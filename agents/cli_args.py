"""Command-line pieces the trainers share (``agents.train``, ``agents.recipe``,
``agents.rllib.train``, ``agents.sb3.train``): ``--preset`` / ``--config`` and typed
``--set KEY=VALUE`` overrides (each VALUE decoded by the type of the field KEY names)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from agents.config.values import decode_text, key_type

C = TypeVar("C")


def add_config_arguments(
    parser: argparse.ArgumentParser, presets: Iterable[str], default: str
) -> None:
    """``--preset`` (one of ``presets``; ``default`` when neither is given) and ``--config``."""
    parser.add_argument(
        "--preset",
        choices=sorted(presets),
        default=None,
        help=f"named config (default: {default} unless --config is given)",
    )
    parser.add_argument("--config", help="a config.json written by an earlier run")


def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable); ``example`` shows a key, e.g. ``grpo.lr=1e-4``."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override any config field, e.g. {example}; VALUE is checked "
        f"against the field's type (numbers, true/false, null, JSON lists "
        f"and objects; text as it is)",
    )


def parse_set(cls: type, items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` texts as dotted-key overrides of config dataclass ``cls``, each VALUE
    decoded by the type of the field KEY names
    (:func:`~agents.config.values.decode_text`).

    Raises:
        ValueError: an item without ``=``, an unknown key (close names suggested), or a
            VALUE that is not of the field's type (naming the key, type and value).
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        key = key.strip()
        overrides[key] = decode_text(key, text, key_type(cls, key))
    return overrides


def base_config(
    args: argparse.Namespace, load: Callable[[str], C], preset: Callable[[str], C], default: str
) -> C:
    """The config named by ``--config`` (read with ``load``) or ``--preset`` (``default``
    when neither is given); both at once raise ValueError."""
    if args.config and args.preset:
        raise ValueError("pass --preset or --config, not both")
    return load(args.config) if args.config else preset(args.preset or default)


def overrides_from_args(
    args: argparse.Namespace, cls: type, flags: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    """Typed dotted-key overrides of config dataclass ``cls``: every ``--set KEY=VALUE``
    (in order, see :func:`parse_set`), then each dedicated flag of ``flags``
    (``(attribute, config key)`` pairs) that was given."""
    overrides = parse_set(cls, args.set)
    for flag, key in flags:
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    return overrides
