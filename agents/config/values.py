"""Field types of config dataclasses: the type a dotted key names, values checked against
it, ``--set`` texts decoded by it, and close names for a key that names no field.

Generic over config dataclasses (the RLlib and SB3 run configs use it too). The checks
and conversions are msgspec's (``msgspec.convert``: an int is accepted for a float field,
a bool is not an int, ``Literal`` and ``X | None`` are honoured). A field annotated
``dict[str, Any]`` is open: keys below it are free and their values unchecked.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, Literal, Union

import msgspec


def is_config(tp: Any) -> bool:
    """Whether annotation ``tp`` is a (nested) config dataclass."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def is_open_dict(tp: Any) -> bool:
    """Whether annotation ``tp`` is a dict: new keys may be added below it."""
    return typing.get_origin(tp) is dict or tp is dict


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each field of dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of dataclass ``cls``: its fields and those of nested configs."""
    keys = []
    for name, tp in field_types(cls).items():
        keys.append(prefix + name)
        if is_config(tp):
            keys += all_keys(tp, f"{prefix}{name}.")
    return keys


def close_keys(cls: type, key: str) -> list[str]:
    """Dotted keys of ``cls`` that ``key`` may have meant: a close name in the same section
    (else a close full key, for a misspelt section), and the same name in another section
    (``lr`` -> ``grpo.lr``, ``ppo.lr``, ``sft.lr``)."""
    keys = all_keys(cls)
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    found = [siblings[name] for name in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)]
    if not found:
        found = difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
    found += [k for k in keys if k.rpartition(".")[2] == leaf]
    return list(dict.fromkeys(found))[:5]


def unknown_key(cls: type, key: str) -> ValueError:
    """The error for a ``key`` that names no field of ``cls``, with close names if any."""
    close = close_keys(cls, key)
    hint = f"; did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
    return ValueError(f"unknown config key {key!r}{hint}")


def key_type(cls: type, key: str) -> Any:
    """The annotation of the field dotted ``key`` names in dataclass ``cls`` (``Any`` below
    an open dict).

    Raises:
        ValueError: ``key`` names no field (the message suggests close names).
    """
    tp: Any = cls
    for part in key.split("."):
        if is_open_dict(tp):
            return Any
        if not is_config(tp) or part not in field_types(tp):
            raise unknown_key(cls, key)
        tp = field_types(tp)[part]
    return tp


def type_name(tp: Any) -> str:
    """Annotation ``tp`` in words for error messages: ``float``, ``int or null``,
    ``one of 'hf', 'vllm'``, ``list[str]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any JSON value"
    if tp is type(None):
        return "null"
    if tp is bool:
        return "bool (true or false)"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is Union or origin is types.UnionType:
        return " or ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("Any" if a is Any else getattr(a, "__name__", str(a)) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(tp, "__name__", str(tp))


def check_value(key: str, value: Any, tp: Any) -> Any:
    """``value`` as a value of annotation ``tp`` (an int for a float field becomes a
    float; containers are copied).

    Raises:
        ValueError: ``value`` is not of type ``tp``; the message names ``key``, the type
            and the value.
    """
    try:
        return msgspec.convert(value, tp)
    except msgspec.ValidationError:
        raise ValueError(f"config key {key!r} expects {type_name(tp)}, got {value!r}") from None


def decode_text(key: str, text: str, tp: Any) -> Any:
    """A value typed as text (``--set KEY=VALUE``) as a value of annotation ``tp``.

    JSON where it decodes to a ``tp`` (``1e-4``, ``true``, ``null``, ``["a", "b"]``),
    else the text itself where ``tp`` takes a string (so ``model.path=123`` is the string
    ``"123"``, ``runners.rollout_fragment_length=auto`` the string ``"auto"``). A nested
    config takes a JSON object of its fields (checked when the config is built).

    Raises:
        ValueError: neither is a ``tp``; the message names ``key``, the type and the text.
    """
    want = dict[str, Any] if is_config(tp) else tp
    try:
        return msgspec.json.decode(text, type=want)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    try:
        return msgspec.convert(text, want)
    except msgspec.ValidationError:
        raise ValueError(f"config key {key!r} expects {type_name(want)}, got {text!r}") from None
