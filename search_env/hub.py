"""Is the Hugging Face hub reachable? Asked once, quickly, before any hub lookup.

Without a network, ``huggingface_hub`` retries every request with back-off: a tokenizer
lookup took 55 s and a dataset lookup 28 s before failing. :func:`hub_reachable` opens
one TCP connection to the hub (or to the configured HTTPS proxy) with a short timeout
instead, and :func:`hub_offline` puts ``huggingface_hub``, ``transformers`` and
``datasets`` into their offline mode for a lookup, so that they read their caches and
fail at once when a file is not there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
"""How long the connection probe may take (name lookup included)."""
_PROBE_TTL_S = 60.0
"""A probe's answer is reused for this long."""
_TRUE = {"1", "ON", "YES", "TRUE"}

_probe_cache: dict[tuple[str, int], tuple[float, bool]] = {}


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, not at import time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` or ``https://huggingface.co``."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _probe_address() -> tuple[str, int]:
    """The host and port a request to the hub connects to first (the proxy, when set)."""
    url = urlsplit(hub_endpoint())
    proxy = next(
        (
            os.environ[k]
            for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
            if os.environ.get(k)
        ),
        None,
    )
    if proxy and url.scheme == "https" and not _bypasses_proxy(url.hostname or ""):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    default_port = 443 if url.scheme == "https" else 80
    return url.hostname or "huggingface.co", url.port or default_port


def _bypasses_proxy(host: str) -> bool:
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    names = [n.strip().lstrip(".") for n in no_proxy.split(",") if n.strip()]
    return "*" in names or any(host == n or host.endswith("." + n) for n in names)


def _connects(address: tuple[str, int], timeout: float) -> bool:
    """Whether a TCP connection to ``address`` opens within ``timeout`` (lookup included).

    The name lookup has no timeout of its own, so the attempt runs in a daemon thread
    that is abandoned when it takes too long.
    """
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, name="hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """False in offline mode or when the hub cannot be connected to within ``timeout``.

    The answer is kept for a minute, so a process pays for the probe once.
    """
    if offline_mode():
        return False
    address = _probe_address()
    now = time.monotonic()
    cached = _probe_cache.get(address)
    if cached is not None and now - cached[0] < _PROBE_TTL_S:
        return cached[1]
    reachable = _connects(address, timeout)
    _probe_cache[address] = (now, reachable)
    if not reachable:
        logger.info("the Hugging Face hub (%s:%d) is unreachable: using local files only", *address)
    return reachable


def unreachable_reason() -> str:
    """Why hub files cannot be fetched now, for error messages."""
    if offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE is set)"
    host, port = _probe_address()
    return f"the Hugging Face hub is unreachable (no connection to {host}:{port})"


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Offline mode of ``huggingface_hub`` (hence ``transformers``) and ``datasets`` inside.

    They read ``HF_HUB_OFFLINE`` when imported; their module flags are switched for the
    duration and restored after.
    """
    flags = [
        ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_DATASETS_OFFLINE"),
    ]
    with contextlib.suppress(ImportError):
        import huggingface_hub.constants  # noqa: F401
    saved = []
    for module_name, flag in flags:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, flag):
            saved.append((module, flag, getattr(module, flag)))
            setattr(module, flag, True)
    try:
        yield
    finally:
        for module, flag, value in reversed(saved):
            setattr(module, flag, value)


def network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the hub cannot be reached", for whichever HTTP stack is present.

    Not OSError as a whole: a full disk must not be reported as missing internet.
    """
    import socket

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, names in (
        ("httpx", ("TransportError",)),
        ("httpx2", ("TransportError",)),  # huggingface_hub >= 2
        ("requests.exceptions", ("ConnectionError", "Timeout")),  # huggingface_hub < 1
        # hf_hub_download turns a failed connection into this when nothing is cached.
        ("huggingface_hub.utils", ("LocalEntryNotFoundError",)),
    ):
        mod = sys.modules.get(module)
        if mod is None:
            continue  # not imported, so nothing of it can have been raised
        for name in names:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                errors.append(cls)
    return tuple(dict.fromkeys(errors))
