"""The download core: `download` fetches one artifact, checks it, finishes it, records it.

The hub is asked once for the file list and checksums (failing at once when offline or
unreachable); the files are downloaded (resuming partial downloads), checked, and
post-processed; the sha256 of the final files goes into ``download_manifest.json``.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_env.download.artifacts import (
    DEFAULT_DEST,
    Artifact,
    PostProcess,
    get_artifact,
    human_size,
)
from search_env.download.errors import DownloadError, DownloadUnavailableError
from search_env.download.hub_client import (
    HubClient,
    HuggingFaceHub,
    RemoteFile,
    RemoteListing,
)
from search_env.download.messages import unavailable_message
from search_env.download.postprocess import Digest, check, concat, gunzip, hash_file
from search_env.files import atomic_file
from search_env.hub import hub_reachable, network_errors, offline_mode, unreachable_reason

__all__ = ["MANIFEST_NAME", "download"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "download_manifest.json"
"""File in ``dest_dir`` recording what was downloaded, from which commit, with sha256s."""


def _read_manifest(dest_dir: Path) -> dict[str, Any]:
    path = dest_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": 1, "artifacts": {}}
    except (OSError, json.JSONDecodeError) as e:
        logger.warning("ignoring unreadable %s (%s); it will be rewritten", path, e)
        return {"version": 1, "artifacts": {}}
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
        return {"version": 1, "artifacts": {}}
    return data


def _write_manifest_entry(dest_dir: Path, name: str, entry: Mapping[str, Any]) -> None:
    data = _read_manifest(dest_dir)
    data["artifacts"][name] = dict(entry)
    path = dest_dir / MANIFEST_NAME
    with atomic_file(path) as f:
        f.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _file_entry(
    path: Path, dest_dir: Path, digest: Digest, verified: bool
) -> tuple[str, dict[str, Any]]:
    rel = path.relative_to(dest_dir).as_posix()
    return rel, {
        "sha256": digest.sha256.hexdigest(),
        "size": digest.size,
        "verified_with_hub": verified,
    }


# --------------------------------------------------------------------------- download


@dataclass
class _Fetched:
    """The local downloads of an artifact and the hub's record of each."""

    paths: list[Path]
    remotes: list[RemoteFile | None]
    revision: str | None = None


def _is_complete(artifact: Artifact, dest_dir: Path) -> bool:
    target = artifact.target_path(dest_dir)
    if artifact.postprocess is not PostProcess.NONE:
        return target.is_file()
    if artifact.files:
        return all(p.is_file() for p in artifact.download_paths(dest_dir))
    # The file list of a pattern artifact is only known from the hub: trust the manifest,
    # which is written only after a complete download.
    entry = _read_manifest(dest_dir)["artifacts"].get(artifact.name)
    return entry is not None and target.is_dir()


def _unavailable(artifact: Artifact, dest_dir: Path, reason: str) -> DownloadUnavailableError:
    return DownloadUnavailableError(unavailable_message(artifact, dest_dir, reason))


def _select(artifact: Artifact, listing: RemoteListing) -> list[RemoteFile]:
    by_path = {f.path: f for f in listing.files}
    if artifact.files:
        missing = [f for f in artifact.files if f not in by_path]
        if missing:
            raise DownloadError(
                f"{artifact.repo_id} ({artifact.repo_type}) has no {', '.join(missing)} at "
                f"revision {listing.revision or artifact.revision or 'main'}; the hub layout may "
                "have changed (files there: "
                f"{', '.join(sorted(by_path)[:20]) or 'none'}{', ...' if len(by_path) > 20 else ''})."
            )
        return [by_path[f] for f in artifact.files]
    chosen = [
        f for f in listing.files if any(fnmatch.fnmatch(f.path, p) for p in artifact.allow_patterns)
    ]
    if not chosen:
        raise DownloadError(
            f"{artifact.repo_id} ({artifact.repo_type}) has no file matching "
            f"{', '.join(artifact.allow_patterns)}; the hub layout may have changed."
        )
    return sorted(chosen, key=lambda f: f.path)


def _fetch(
    artifact: Artifact, dest_dir: Path, hub: HubClient, force: bool, progress: bool
) -> _Fetched:
    """Lists the repo (the first hub call, which fails fast offline) and downloads."""
    local_dir = artifact.local_dir(dest_dir)
    # `except network_errors()` is evaluated when an exception is matched, i.e. after
    # the hub client has imported its HTTP stack: evaluated earlier it would miss it.
    try:
        listing = hub.list_files(
            artifact.repo_id, repo_type=artifact.repo_type, revision=artifact.revision
        )
    except network_errors() as e:
        raise _unavailable(
            artifact, dest_dir, f"the Hugging Face hub is unreachable ({type(e).__name__}: {e})"
        ) from e
    remotes = _select(artifact, listing)
    size = sum(r.size or 0 for r in remotes) or artifact.approx_bytes
    if artifact.postprocess is not PostProcess.NONE:  # raw files and the result coexist
        size += artifact.approx_final_bytes or size
    _warn_if_low_disk(local_dir, size)
    # Download the commit we listed, so the checksums match what we get.
    revision = listing.revision or artifact.revision
    try:
        if artifact.files:
            paths = [
                hub.download_file(
                    artifact.repo_id,
                    r.path,
                    repo_type=artifact.repo_type,
                    revision=revision,
                    local_dir=local_dir,
                    force=force,
                    progress=progress,
                )
                for r in remotes
            ]
        else:
            hub.download_snapshot(
                artifact.repo_id,
                repo_type=artifact.repo_type,
                revision=revision,
                allow_patterns=artifact.allow_patterns,
                local_dir=local_dir,
                force=force,
                progress=progress,
            )
            paths = [local_dir / r.path for r in remotes]
    except network_errors() as e:
        raise _unavailable(
            artifact,
            dest_dir,
            f"the connection to the Hugging Face hub failed during the download "
            f"({type(e).__name__}: {e}); run the same command again to resume",
        ) from e
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DownloadError(
            f"the hub client reported success but these files are missing: {missing}"
        )
    return _Fetched(paths=paths, remotes=list(remotes), revision=listing.revision)


def _use_local_files(artifact: Artifact, dest_dir: Path, reason: str) -> _Fetched:
    """Offline: use hub files already copied into place, else explain what to fetch."""
    paths = artifact.download_paths(dest_dir)
    if artifact.files and all(p.is_file() for p in paths):
        logger.warning(
            "%s: %s; using the files already in %s without checking their checksums",
            artifact.name,
            reason,
            artifact.local_dir(dest_dir),
        )
        return _Fetched(paths=paths, remotes=[None] * len(paths))
    target = artifact.target_path(dest_dir)
    if not artifact.files and target.is_dir() and any(target.iterdir()):
        logger.warning(
            "%s: %s; using %s as it is (its completeness cannot be checked)",
            artifact.name,
            reason,
            target,
        )
        return _Fetched(paths=[], remotes=[])
    raise _unavailable(artifact, dest_dir, reason)


def _warn_if_low_disk(directory: Path, needed: int) -> None:
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < needed:
        logger.warning(
            "%s has %s free but the download needs about %s",
            probe,
            human_size(free),
            human_size(needed),
        )


def download(
    name: str,
    dest_dir: str | Path = DEFAULT_DEST,
    *,
    force: bool = False,
    progress: bool = True,
    keep_downloads: bool = False,
    hub: HubClient | None = None,
) -> Path:
    """Download one artifact into ``dest_dir`` and finish it; returns its final path.

    Nothing is fetched when the final files already exist (unless ``force``). Otherwise
    the hub is asked once for the file list and checksums (failing at once when offline
    or unreachable), the files are downloaded (resuming partial downloads), checked
    against the hub's sha256, and post-processed into a temporary file that is renamed
    into place. The sha256 of the final files goes into ``dest_dir/download_manifest.json``.

    Args:
        name: An artifact name (see :data:`ARTIFACTS`, ``search-env download --list``);
            QA datasets also by short name (``NQ``).
        dest_dir: Destination directory.
        force: Download and post-process again even if the final files exist.
        progress: Show progress bars.
        keep_downloads: Keep the raw downloads (``.gz``, parts) after post-processing.
        hub: Hub client; default :class:`HuggingFaceHub`.

    Raises:
        ValueError: Unknown name.
        DownloadUnavailableError: Offline or the hub is unreachable (the message says
            what to fetch elsewhere and where to put it).
        ChecksumMismatchError: A file does not match the hub's checksum (it is deleted).
        DownloadError: Other failures (missing files on the hub, access denied).
        ImportError: ``huggingface_hub`` is not installed.
    """
    artifact = get_artifact(name)
    dest = Path(dest_dir)
    target = artifact.target_path(dest)
    if not force and _is_complete(artifact, dest):
        logger.info("%s: %s already exists; nothing to download", artifact.name, target)
        return target

    if offline_mode():
        fetched = _use_local_files(artifact, dest, "offline mode is on (HF_HUB_OFFLINE is set)")
    elif hub is None and not hub_reachable():  # one quick probe instead of retries
        fetched = _use_local_files(artifact, dest, unreachable_reason())
    else:
        fetched = _fetch(
            artifact, dest, hub if hub is not None else HuggingFaceHub(), force, progress
        )

    files: dict[str, Any] = {}
    downloads: dict[str, Any] = {}
    if artifact.postprocess is PostProcess.GUNZIP:
        digest, src_digest, checked = gunzip(fetched.paths[0], target, fetched.remotes[0], progress)
        rel, entry = _file_entry(target, dest, digest, False)
        files[rel] = entry
        downloads[artifact.files[0]] = {
            "sha256": src_digest.sha256.hexdigest(),
            "size": src_digest.size,
            "verified_with_hub": checked,
        }
    elif artifact.postprocess is PostProcess.CONCAT:
        digest, parts, checked = concat(fetched.paths, target, fetched.remotes, progress)
        rel, entry = _file_entry(target, dest, digest, False)
        files[rel] = entry
        for remote_name, part_digest in zip(artifact.files, parts):
            downloads[remote_name] = {
                "sha256": part_digest.sha256.hexdigest(),
                "size": part_digest.size,
                "verified_with_hub": checked,
            }
    else:
        if fetched.paths:
            for path, remote in zip(fetched.paths, fetched.remotes):
                digest = hash_file(path, progress, f"sha256 {path.name}")
                checked = check(path, digest, remote)
                rel, entry = _file_entry(path, dest, digest, checked)
                files[rel] = entry
        else:  # offline, a directory copied by hand
            for path in sorted(p for p in target.rglob("*") if p.is_file()):
                rel, entry = _file_entry(path, dest, hash_file(path, progress, path.name), False)
                files[rel] = entry

    if artifact.postprocess is not PostProcess.NONE and not keep_downloads:
        for path in fetched.paths:
            path.unlink(missing_ok=True)

    _write_manifest_entry(
        dest,
        artifact.name,
        {
            "repo_id": artifact.repo_id,
            "repo_type": artifact.repo_type,
            "revision": fetched.revision,
            "postprocess": artifact.postprocess.value,
            "target": artifact.target,
            "downloads": downloads,
            "files": files,
            "completed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    logger.info("%s: ready at %s", artifact.name, target)
    return target
