"""Log output of the entry points and of index loads: one set-up (search_env.logs), and
the load line of an index that several envs load again logged once at INFO."""

from __future__ import annotations

import io
import logging
import shutil
import sys

import pytest

from search_env.logs import configure_logging


@pytest.fixture
def root_logger():
    """The root logger; its handlers and level are put back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("module", ["agents.train", "agents.rllib.train", "agents.trl.train"])
def test_training_entry_points_log_through_configure_logging(module, root_logger, monkeypatch):
    import importlib

    if module == "agents.trl.train":
        pytest.importorskip("trl")

    main = importlib.import_module(module).main
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # --help's text
    root_logger.handlers[:] = []  # as in a fresh process (pytest adds its own in the test)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    # A library logger set to DEBUG (bm25s does so on import) must not print DEBUG lines.
    noisy = logging.getLogger("test_entry_logging.noisy")
    monkeypatch.setattr(noisy, "level", logging.DEBUG)
    noisy.debug("a debug line")
    noisy.info("an info line")
    assert stderr.getvalue() == "INFO test_entry_logging.noisy: an info line\n"
    # and main's handler is the one a later configure_logging call replaces
    handler = configure_logging(logging.INFO, io.StringIO())
    assert root_logger.handlers == [handler]


def test_server_entry_point_logs_with_timestamps(root_logger, monkeypatch, tmp_path):
    import search_env.server.__main__ as server_main

    monkeypatch.setattr(server_main, "run_serve", lambda args: 0)  # no server started
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    root_logger.handlers[:] = []
    assert server_main.main(["--index", str(tmp_path), "--log-level", "info"]) == 0
    logging.getLogger("test_entry_logging.server").info("ready")
    line = stderr.getvalue()
    assert line.endswith(" INFO test_entry_logging.server: ready\n")
    assert line[:4].isdigit()  # the asctime prefix
    assert [h.name for h in root_logger.handlers] == ["search_env.logs"]


def _load_records(caplog) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.getMessage().startswith("loaded BM25 index")
    ]


def test_loading_the_same_bm25_index_again_logs_info_once(tmp_path, caplog):
    pytest.importorskip("bm25s")
    from search_env.retrievers.bm25 import BM25Retriever
    from search_env.types import Passage

    passages = [Passage("0", '"Oslo"\nOslo is in Norway.'), Passage("1", '"Jazz"\nJazz music.')]
    index = BM25Retriever.build(passages, backend="numpy", show_progress=False).save(
        tmp_path / "bm25"
    )
    other = shutil.copytree(index, tmp_path / "bm25-copy")
    with caplog.at_level(logging.DEBUG, logger="search_env.retrievers.bm25"):
        for _ in range(3):  # three envs on one index
            BM25Retriever.load(index, backend="numpy")
        BM25Retriever.load(other, backend="numpy")  # another index: INFO again
        BM25Retriever.load(index, mmap=False, backend="numpy")  # another kind of load
    line = "loaded BM25 index of 2 passages from {} (mmap={}, backend=numpy)"
    assert _load_records(caplog) == [
        (logging.INFO, line.format(index, True)),
        (logging.DEBUG, line.format(index, True)),
        (logging.DEBUG, line.format(index, True)),
        (logging.INFO, line.format(other, True)),
        (logging.INFO, line.format(index, False)),
    ]
