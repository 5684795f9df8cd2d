"""The hub client: what `download` needs from the hub (`HubClient`) and its implementation
on ``huggingface_hub`` (`HuggingFaceHub`), plus which errors mean "the hub is unreachable".
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from search_env.download.errors import DownloadError
from search_env.hub import network_errors

__all__ = [
    "HubClient",
    "HuggingFaceHub",
    "RemoteFile",
    "RemoteListing",
]

_INSTALL_HINT = "pip install 'search-env[data]'"


@dataclass(frozen=True)
class RemoteFile:
    """A file on the hub, with the checksums the hub publishes for it.

    Attributes:
        path: Path in the repository.
        size: Size in bytes, if known.
        sha256: sha256 of the content (published for LFS files).
        blob_id: Git blob id (sha1 of ``b"blob <size>\\0" + content``), for non-LFS files.
    """

    path: str
    size: int | None = None
    sha256: str | None = None
    blob_id: str | None = None


@dataclass(frozen=True)
class RemoteListing:
    """The files of a hub repository at one commit."""

    revision: str | None
    files: tuple[RemoteFile, ...]


class HubClient(Protocol):
    """What :func:`download` needs from the hub (implemented by :class:`HuggingFaceHub`).

    Implementations raise ``ConnectionError`` (or a transport error) when the hub is
    unreachable, and :class:`DownloadError` for other failures (missing repo, denied).
    """

    def list_files(self, repo_id: str, *, repo_type: str, revision: str | None) -> RemoteListing:
        """All files of the repository, with sizes and checksums."""
        ...

    def download_file(
        self,
        repo_id: str,
        filename: str,
        *,
        repo_type: str,
        revision: str | None,
        local_dir: Path,
        force: bool,
        progress: bool,
    ) -> Path:
        """Download one file to ``local_dir / filename`` (resuming); returns its path."""
        ...

    def download_snapshot(
        self,
        repo_id: str,
        *,
        repo_type: str,
        revision: str | None,
        allow_patterns: Sequence[str],
        local_dir: Path,
        force: bool,
        progress: bool,
    ) -> Path:
        """Download the files matching ``allow_patterns`` under ``local_dir``."""
        ...


def _import_hub() -> Any:
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError as e:
        raise ImportError(
            "Downloading from the Hugging Face hub needs huggingface_hub "
            f"({_INSTALL_HINT}; it also comes with transformers)."
        ) from e


class HuggingFaceHub:
    """:class:`HubClient` on ``huggingface_hub`` (imported on first use)."""

    def __init__(self, token: str | bool | None = None) -> None:
        self.token = token

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Calls ``fn``, turning hub HTTP errors into ConnectionError (5xx) or DownloadError."""
        # Every huggingface_hub that transformers>=4.45 allows (0.23.2 to 2.x) exports
        # both from huggingface_hub.utils (0.23 has them nowhere else).
        from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError

        try:
            return fn(*args, **kwargs)
        except network_errors():
            raise
        except Exception as e:
            if isinstance(e, HfHubHTTPError):
                status = getattr(getattr(e, "response", None), "status_code", None)
                if status is not None and (status >= 500 or status == 429):
                    # The hub is down or rate limiting: for the user, that is "unreachable".
                    raise ConnectionError(f"the hub answered HTTP {status} to {what}") from e
                raise DownloadError(f"{what} failed: {type(e).__name__}: {e}") from e
            if isinstance(e, EntryNotFoundError):
                raise DownloadError(f"{what} failed: {e}") from e
            raise

    def list_files(self, repo_id: str, *, repo_type: str, revision: str | None) -> RemoteListing:
        """One request: the repo's commit and every file with its size and checksums."""
        hub = _import_hub()
        api = hub.HfApi(token=self.token)
        info = self._call(
            f"listing {repo_type} repo {repo_id}",
            api.repo_info,
            repo_id,
            repo_type=repo_type,
            revision=revision,
            files_metadata=True,
        )
        files = []
        for sibling in info.siblings or ():
            lfs = sibling.lfs  # a BlobLfsInfo (a dict) or None
            files.append(
                RemoteFile(
                    path=sibling.rfilename,
                    size=sibling.size,
                    sha256=lfs.get("sha256") if lfs else None,
                    blob_id=None if lfs else sibling.blob_id,
                )
            )
        return RemoteListing(revision=info.sha, files=tuple(files))

    @staticmethod
    def _progress_kwargs(fn: Callable[..., Any], progress: bool) -> dict[str, Any]:
        # hf_hub_download takes no tqdm_class in huggingface_hub 0.x and 1.0 (2.0 does).
        if progress or "tqdm_class" not in inspect.signature(fn).parameters:
            return {}
        return {"tqdm_class": _silent_tqdm_class()}

    def download_file(
        self,
        repo_id: str,
        filename: str,
        *,
        repo_type: str,
        revision: str | None,
        local_dir: Path,
        force: bool,
        progress: bool,
    ) -> Path:
        """``hf_hub_download`` into ``local_dir`` (resumes ``.incomplete`` files)."""
        hub = _import_hub()
        path = self._call(
            f"downloading {filename} from {repo_id}",
            hub.hf_hub_download,
            repo_id=repo_id,
            filename=filename,
            repo_type=repo_type,
            revision=revision,
            local_dir=str(local_dir),
            force_download=force,
            token=self.token,
            **self._progress_kwargs(hub.hf_hub_download, progress),
        )
        return Path(path)

    def download_snapshot(
        self,
        repo_id: str,
        *,
        repo_type: str,
        revision: str | None,
        allow_patterns: Sequence[str],
        local_dir: Path,
        force: bool,
        progress: bool,
    ) -> Path:
        """``snapshot_download`` of the matching files into ``local_dir``."""
        hub = _import_hub()
        path = self._call(
            f"downloading {', '.join(allow_patterns)} from {repo_id}",
            hub.snapshot_download,
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=list(allow_patterns),
            local_dir=str(local_dir),
            force_download=force,
            token=self.token,
            **self._progress_kwargs(hub.snapshot_download, progress),
        )
        return Path(path)


def _silent_tqdm_class() -> type:
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm
