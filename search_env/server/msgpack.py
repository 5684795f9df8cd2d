"""A small MessagePack codec for the retrieval API's request and response bodies.

GEM's search tool (``gem/tools/search_tool.py``) posts its request as a msgpack body
(``msgspec.msgpack.encode``, no Content-Type header) and decodes the answer with
``msgspec.msgpack.decode``, because GEM's own retrieval server runs on mosec with
``TypedMsgPackMixin``. To serve GEM without extra dependencies, this module covers the
subset such bodies use: maps, arrays, str, bin, int, float, bool and nil. ``msgspec``
is used when installed (GEM users have it), this pure-Python code otherwise.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

__all__ = ["MsgpackError", "packb", "unpackb", "looks_like_msgpack_map"]


class MsgpackError(ValueError):
    """A body is not valid msgpack, or holds a type this codec does not decode."""


def looks_like_msgpack_map(body: bytes) -> bool:
    """True if ``body`` starts like a msgpack map (fixmap, map16, map32).

    None of those first bytes can start a JSON document (which begins with ``{``,
    ``[``, whitespace, a digit, a quote or a letter), so sniffing is unambiguous.
    """
    return bool(body) and (0x80 <= body[0] <= 0x8F or body[0] in (0xDE, 0xDF))


# ------------------------------------------------------------------ encoding
def _pack_py(obj: Any) -> bytes:
    out = bytearray()
    _pack_into(obj, out)
    return bytes(out)


def _pack_len(
    n: int, small: int, small_max: int, c8: int | None, c16: int, c32: int, out: bytearray
) -> None:
    """Writes a length header: fix form up to ``small_max``, then 8/16/32-bit forms."""
    if n <= small_max:
        out.append(small | n)
    elif c8 is not None and n < 0x100:
        out += bytes((c8, n))
    elif n < 0x10000:
        out.append(c16)
        out += struct.pack(">H", n)
    elif n < 0x1_0000_0000:
        out.append(c32)
        out += struct.pack(">I", n)
    else:
        raise MsgpackError(f"object of length {n} is too large for msgpack")


def _pack_into(obj: Any, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        if 0 <= obj < 0x80:
            out.append(obj)
        elif -32 <= obj < 0:
            out.append(obj & 0xFF)
        elif 0 <= obj < 1 << 64:
            out.append(0xCF)
            out += struct.pack(">Q", obj)
        elif -(1 << 63) <= obj < 0:
            out.append(0xD3)
            out += struct.pack(">q", obj)
        else:
            raise MsgpackError(f"integer {obj} does not fit in 64 bits")
    elif isinstance(obj, float):
        out.append(0xCB)
        out += struct.pack(">d", obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        _pack_len(len(data), 0xA0, 31, 0xD9, 0xDA, 0xDB, out)
        out += data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        _pack_len(len(data), 0, -1, 0xC4, 0xC5, 0xC6, out)
        out += data
    elif isinstance(obj, dict):
        _pack_len(len(obj), 0x80, 15, None, 0xDE, 0xDF, out)
        for key, value in obj.items():
            _pack_into(key, out)
            _pack_into(value, out)
    elif isinstance(obj, (list, tuple)):
        _pack_len(len(obj), 0x90, 15, None, 0xDC, 0xDD, out)
        for value in obj:
            _pack_into(value, out)
    else:
        raise MsgpackError(f"cannot encode {type(obj).__name__} as msgpack")


# ------------------------------------------------------------------ decoding
_FIXED = {  # first byte -> (struct format, size)
    0xCA: (">f", 4), 0xCB: (">d", 8),
    0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
    0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
}  # fmt: skip
_LEN = {  # first byte -> (kind, length format, size)
    0xC4: ("bin", ">B", 1), 0xC5: ("bin", ">H", 2), 0xC6: ("bin", ">I", 4),
    0xD9: ("str", ">B", 1), 0xDA: ("str", ">H", 2), 0xDB: ("str", ">I", 4),
    0xDC: ("array", ">H", 2), 0xDD: ("array", ">I", 4),
    0xDE: ("map", ">H", 2), 0xDF: ("map", ">I", 4),
}  # fmt: skip
_MAX_DEPTH = 64


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise MsgpackError(f"truncated msgpack body (needed {n} bytes at offset {self.pos})")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def value(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise MsgpackError(f"msgpack nesting deeper than {_MAX_DEPTH}")
        b = self.take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0xA0 <= b <= 0xBF:
            return self._str(b & 0x1F)
        if 0x90 <= b <= 0x9F:
            return [self.value(depth + 1) for _ in range(b & 0x0F)]
        if 0x80 <= b <= 0x8F:
            return self._map(b & 0x0F, depth)
        if b == 0xC0:
            return None
        if b in (0xC2, 0xC3):
            return b == 0xC3
        if b in _FIXED:
            fmt, size = _FIXED[b]
            return struct.unpack(fmt, self.take(size))[0]
        if b in _LEN:
            kind, fmt, size = _LEN[b]
            n = struct.unpack(fmt, self.take(size))[0]
            if kind == "bin":
                return bytes(self.take(n))
            if kind == "str":
                return self._str(n)
            if kind == "array":
                return [self.value(depth + 1) for _ in range(n)]
            return self._map(n, depth)
        raise MsgpackError(f"unsupported msgpack type byte 0x{b:02x} at offset {self.pos - 1}")

    def _str(self, n: int) -> str:
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError as e:
            raise MsgpackError(f"invalid UTF-8 in a msgpack string: {e}") from e

    def _map(self, n: int, depth: int) -> dict[Any, Any]:
        out = {}
        for _ in range(n):
            key = self.value(depth + 1)
            if isinstance(key, (list, dict)):
                raise MsgpackError("msgpack map keys must be scalars")
            out[key] = self.value(depth + 1)
        return out


def _unpack_py(data: bytes) -> Any:
    reader = _Reader(data)
    value = reader.value()
    if reader.pos != len(reader.data):
        extra = len(reader.data) - reader.pos
        raise MsgpackError(f"{extra} trailing bytes after the msgpack value")
    return value


def _load_backend() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any], str]:
    try:
        import msgspec.msgpack
    except ImportError:
        return _pack_py, _unpack_py, "python"

    def unpack(data: bytes) -> Any:
        try:
            return msgspec.msgpack.decode(data)
        except msgspec.DecodeError as e:
            raise MsgpackError(str(e)) from e

    return msgspec.msgpack.encode, unpack, "msgspec"


packb, unpackb, BACKEND = _load_backend()
"""``packb(obj) -> bytes`` and ``unpackb(bytes) -> obj``; ``BACKEND`` names the implementation."""
