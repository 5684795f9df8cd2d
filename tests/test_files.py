"""The shared atomic-write helpers of search_env.files."""

from __future__ import annotations

from pathlib import Path

import pytest

from search_env.files import atomic_file, atomic_write_text, build_dir, cache_dir


def test_atomic_file_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "old\n")  # parents are created
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("boom")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]  # no temporary left
    with atomic_file(path) as f:
        f.write("né\n".encode())
    assert path.read_text(encoding="utf-8") == "né\n"


def test_build_dir_publishes_once_and_keeps_a_finished_one(tmp_path):
    target = tmp_path / "built"

    def build(out: Path) -> None:
        (out / "x").write_text("first")

    assert build_dir(target, build) == target and (target / "x").read_text() == "first"

    def late(out: Path) -> None:  # another process published ``target`` meanwhile
        (out / "x").write_text("second")

    build_dir(target, late)
    assert (target / "x").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["built"]  # the staging dir is gone

    def failing(out: Path) -> None:
        (out / "x").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        build_dir(tmp_path / "other", failing)
    assert [p.name for p in tmp_path.iterdir()] == ["built"]


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_ENV_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("SEARCH_ENV_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "search_env"
