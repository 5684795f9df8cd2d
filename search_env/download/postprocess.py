"""Post-processing of downloaded files: hashing, gunzip (and a gzipped tar), concatenation.

Every file is hashed as it streams through (sha256, plus the git blob sha1 when its size
is known) and checked against the hub's record; results are written to a temporary
sibling and renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import tarfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

from search_env.download.errors import ChecksumMismatchError, DownloadError
from search_env.download.hub_client import RemoteFile
from search_env.files import atomic_file

__all__ = ["Digest", "check", "concat", "gunzip", "hash_file"]

logger = logging.getLogger(__name__)

_CHUNK = 8 << 20  # 8 MiB: large enough for fast copies, small enough for smooth progress


class Digest:
    """sha256 of a byte stream, plus the git blob sha1 when the size is known in advance."""

    def __init__(self, size: int | None = None) -> None:
        self.sha256 = hashlib.sha256()
        self.git = None
        if size is not None:
            self.git = hashlib.sha1(usedforsecurity=False)
            self.git.update(b"blob %d\0" % size)
        self.size = 0

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)
        self.size += len(data)


class _HashingReader:
    """A read-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, raw: BinaryIO, digest: Digest, on_read: Callable[[int], Any]) -> None:
        self._raw = raw
        self._digest = digest
        self._on_read = on_read

    def read(self, n: int = -1, /) -> bytes:
        data = self._raw.read(n)
        self._digest.update(data)
        self._on_read(len(data))
        return data

    def readable(self) -> bool:
        return True


class _PrefixedReader:
    """Replays ``head`` and then reads on from ``stream`` (tarfile's stream mode needs read())."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = head
        self._stream = stream

    def read(self, n: int = -1, /) -> bytes:
        if not self._head:
            return self._stream.read(n)
        if n is None or n < 0:
            data, self._head = self._head + self._stream.read(), b""
            return data
        data, self._head = self._head[:n], self._head[n:]
        if len(data) < n:
            data += self._stream.read(n - len(data))
        return data


def _is_tar_header(block: bytes) -> bool:
    return len(block) >= 512 and block[257:262] == b"ustar"


def _progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled
    )


def check(path: Path, digest: Digest, remote: RemoteFile | None) -> bool:
    """Compares ``digest`` with the hub's checksum; returns whether one was checked.

    Raises:
        ChecksumMismatchError: On a mismatch; ``path`` (the bad download) is deleted first.
    """
    if remote is None:
        return False
    expected = actual = None
    kind = ""
    if remote.sha256:
        kind, expected, actual = "sha256", remote.sha256, digest.sha256.hexdigest()
    elif remote.blob_id and digest.git is not None:
        kind, expected, actual = "git blob sha1", remote.blob_id, digest.git.hexdigest()
    if expected is None:
        return False
    if expected.lower() != actual:
        path.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{path.name} from {remote.path!r}: {kind} {actual} does not match the hub's "
            f"{expected} (size {digest.size} bytes, hub says {remote.size}). The bad file was "
            "deleted; run the download again (it may have been cut off or corrupted)."
        )
    return True


def hash_file(path: Path, progress: bool, desc: str) -> Digest:
    """The digest of a file, read in chunks (with a progress bar above one chunk)."""
    size = path.stat().st_size
    digest = Digest(size)
    with path.open("rb") as f, _progress_bar(size, desc, progress and size > _CHUNK) as bar:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest


def gunzip(
    src: Path, dst: Path, remote: RemoteFile | None, progress: bool
) -> tuple[Digest, Digest, bool]:
    """Stream-decompress ``src`` into ``dst`` atomically, checking ``src`` on the way.

    A gzipped tar (the wiki-18 corpus is one) is unpacked instead: its first ``.jsonl``
    (or ``.json``) member becomes ``dst``.

    Returns:
        The digests of ``dst`` and ``src``, and whether ``src`` was checked against the hub.
    """
    try:
        return _gunzip_unchecked(src, dst, remote, progress)
    except (gzip.BadGzipFile, EOFError, zlib.error, tarfile.TarError) as e:
        raise DownloadError(
            f"{src} is not a complete gzip file ({type(e).__name__}: {e}); nothing was written "
            f"to {dst}. Delete {src} and download again."
        ) from e


def _gunzip_unchecked(
    src: Path, dst: Path, remote: RemoteFile | None, progress: bool
) -> tuple[Digest, Digest, bool]:
    size = src.stat().st_size
    src_digest = Digest(size)
    out_digest = Digest()
    with (
        src.open("rb") as raw,
        _progress_bar(size, f"gunzip {src.name}", progress) as bar,
        atomic_file(dst) as out,
    ):
        reader = _HashingReader(raw, src_digest, bar.update)
        # typeshed wants a seek() too; reading a stream front to back never calls it.
        with gzip.GzipFile(fileobj=reader, mode="rb") as gz:  # type: ignore[call-overload]
            head = gz.read(512)
            if _is_tar_header(head):
                stream: IO[bytes] = _tar_member_stream(_PrefixedReader(head, gz), src)
            else:
                out.write(head)
                out_digest.update(head)
                stream = gz
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                out.write(chunk)
                out_digest.update(chunk)
            # Read to the end (tar padding, gzip trailer) so that gzip checks its CRC
            # and the whole compressed file is hashed.
            while gz.read(_CHUNK):
                pass
        while reader.read(_CHUNK):
            pass
        checked = check(src, src_digest, remote)
    return out_digest, src_digest, checked


def _tar_member_stream(fileobj: Any, src: Path) -> IO[bytes]:
    # Not a `with`: the member stream returned reads through this (stream-mode) archive.
    tar = tarfile.open(fileobj=fileobj, mode="r|")  # noqa: SIM115
    for member in tar:
        if member.isfile() and (member.name.endswith(".jsonl") or member.name.endswith(".json")):
            logger.info(
                "%s is a gzipped tar; unpacking its member %s (the reference's `gzip -d` leaves "
                "the tar, which `datasets` unpacks on load)",
                src.name,
                member.name,
            )
            stream = tar.extractfile(member)
            if stream is not None:
                return stream
    raise DownloadError(f"{src} is a gzipped tar without a .jsonl member; cannot unpack it")


def concat(
    parts: Sequence[Path], dst: Path, remotes: Sequence[RemoteFile | None], progress: bool
) -> tuple[Digest, list[Digest], bool]:
    """Join ``parts`` in order into ``dst`` atomically, checking each part on the way."""
    total = sum(p.stat().st_size for p in parts)
    out_digest = Digest()
    part_digests = []
    checked = True
    with _progress_bar(total, f"join -> {dst.name}", progress) as bar, atomic_file(dst) as out:
        for part, remote in zip(parts, remotes):
            digest = Digest(part.stat().st_size)
            with part.open("rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(chunk)
                    out_digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
            checked = check(part, digest, remote) and checked
            part_digests.append(digest)
    return out_digest, part_digests, checked
