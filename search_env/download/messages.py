"""What to do without the hub: the message naming the files, the commands and the places."""

from __future__ import annotations

from pathlib import Path

from search_env.download.artifacts import Artifact, PostProcess

__all__ = ["unavailable_message"]


def _fetch_commands(artifact: Artifact, dest_dir: Path) -> list[str]:
    local_dir = artifact.local_dir(dest_dir)
    if artifact.files:
        selection = " ".join(artifact.files)
    else:
        selection = " ".join(f"--include '{p}'" for p in artifact.allow_patterns)
    args = (
        f"{artifact.repo_id} {selection} --repo-type {artifact.repo_type} --local-dir {local_dir}"
    )
    revision = f" --revision {artifact.revision}" if artifact.revision else ""
    return [f"hf download {args}{revision}", f"huggingface-cli download {args}{revision}"]


def _finish_steps(artifact: Artifact, dest_dir: Path) -> list[str]:
    """The offline steps after copying the raw files into place."""
    local = artifact.local_dir(dest_dir)
    target = artifact.target_path(dest_dir)
    rerun = f"    search-env download {artifact.name} --dest {dest_dir}"
    if artifact.postprocess is PostProcess.GUNZIP:
        return [
            f"copy it into {local}/ here and run",
            rerun,
            f"which finds it and unpacks {local / artifact.files[0]} into {target}.",
        ]
    if artifact.postprocess is PostProcess.CONCAT:
        parts = " + ".join(str(local / f) for f in artifact.files)
        return [
            f"copy them into {local}/ here and run",
            rerun,
            f"which finds them and joins {parts}, in this order, into {target}.",
        ]
    if artifact.files:
        return [f"and copy them into {local}/ here; nothing else is needed."]
    return [
        f"copy them into {local}/ here and run",
        rerun,
        f"which records the files under {target}.",
    ]


def unavailable_message(artifact: Artifact, dest_dir: str | Path, reason: str) -> str:
    """What to do when ``artifact`` cannot be downloaded here.

    Names the hub repo, its type, the files, the size, where the files go, the commands
    to fetch them on a machine with internet, and how to use them afterwards.
    """
    dest = Path(dest_dir)
    local_dir = artifact.local_dir(dest)
    target = artifact.target_path(dest)
    if artifact.files:
        files = ", ".join(artifact.files)
    else:
        files = f"everything matching {', '.join(artifact.allow_patterns)}"
    hf_cmd, legacy_cmd = _fetch_commands(artifact, dest)
    lines = [
        f"Cannot download {artifact.name!r}: {reason}.",
        "",
        (
            f"What to fetch: {artifact.title}: hub repo {artifact.repo_id} "
            f"(repo type: {artifact.repo_type}), file(s): {files}; about {artifact.size_text()}."
        ),
        (
            f"Where it goes: the files into {local_dir}/ (keeping their hub paths); "
            f"the finished artifact is {target}."
        ),
        "",
        "On a machine with internet, either run",
        f"    search-env download {artifact.name} --dest {dest}",
        f"and copy {target} to the same place here, or fetch the raw files with",
        f"    {hf_cmd}",
        f"    (older clients: {legacy_cmd})",
        *_finish_steps(artifact, dest),
    ]
    if artifact.postprocess is not PostProcess.NONE or not artifact.files:
        lines.append("(Checksums cannot be checked against the hub offline.)")
    if artifact.usage:
        lines += ["", "Then use it: " + artifact.usage.format(dest=dest)]
    return "\n".join(lines)
