"""Command-line pieces the trainers share (``agents.train``, ``agents.rllib.train``,
``agents.sb3.train``): ``--preset`` / ``--config`` and ``--set KEY=VALUE`` overrides."""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Iterable, TypeVar

C = TypeVar("C")


def add_config_arguments(parser: argparse.ArgumentParser, presets: Iterable[str],
                         default: str) -> None:
    """``--preset`` (one of ``presets``; ``default`` when neither is given) and ``--config``."""
    parser.add_argument("--preset", choices=sorted(presets), default=None,
                        help=f"named config (default: {default} unless --config is given)")
    parser.add_argument("--config", help="a config.json written by an earlier run")


def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable); ``example`` shows a key, e.g. ``grpo.lr=1e-4``."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override any config field, e.g. {example} (VALUE parsed as JSON)")


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON where it parses, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def base_config(args: argparse.Namespace, load: Callable[[str], C],
                preset: Callable[[str], C], default: str) -> C:
    """The config named by ``--config`` (read with ``load``) or ``--preset`` (``default``
    when neither is given); both at once raise ValueError."""
    if args.config and args.preset:
        raise ValueError("pass --preset or --config, not both")
    return load(args.config) if args.config else preset(args.preset or default)


def overrides_from_args(args: argparse.Namespace,
                        flags: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """Dotted-key overrides: every ``--set KEY=VALUE`` (in order), then each dedicated
    flag of ``flags`` (``(attribute, config key)`` pairs) that was given."""
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_value(value)
    for flag, key in flags:
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    return overrides
