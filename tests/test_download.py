"""`search-env download`: registry, offline errors, post-processing, checksums, resuming.

The hub is never contacted: a `FakeHub` serves files from memory, and the tests of the
real `HuggingFaceHub` adapter monkeypatch huggingface_hub's functions.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

import search_env.download.core as download_core
from search_env.data.qa import DATASETS, DatasetUnavailableError
from search_env.download import (
    ARTIFACTS,
    MANIFEST_NAME,
    ChecksumMismatchError,
    DownloadError,
    DownloadUnavailableError,
    HuggingFaceHub,
    PostProcess,
    RemoteFile,
    RemoteListing,
    add_download_arguments,
    download,
    get_artifact,
    resolve_names,
    run_download,
)

CORPUS_MEMBER = "data00/jiajie_jin/flashrag_indexes/wiki_dpr_100w/wiki_dump.jsonl"
JSONL = b'{"id": "0", "contents": "\\"Aaron\\"\\nAaron is a prophet."}\n{"id": "1", "contents": "\\"Oslo\\"\\nOslo is a city."}\n'


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    """An in-memory hub: ``repos[repo_id][path] = content``; records every call."""

    def __init__(
        self, repos: dict[str, dict[str, bytes]], revision: str = "c0ffee" * 6 + "abcd"
    ) -> None:
        self.repos = repos
        self.revision = revision
        self.published_sha256: dict[str, str] = {}  # path -> what the "hub" claims
        self.non_lfs: set[str] = set()  # paths listed with a git blob id instead
        self.calls: list[tuple] = []
        self.fail_download_with: BaseException | None = None

    def list_files(self, repo_id: str, *, repo_type: str, revision: str | None) -> RemoteListing:
        self.calls.append(("list", repo_id))
        files = []
        # Reversed on purpose: download order must come from the artifact, not the listing.
        for path, data in reversed(list(self.repos[repo_id].items())):
            if path in self.non_lfs:
                blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                files.append(RemoteFile(path, len(data), blob_id=blob))
            else:
                files.append(
                    RemoteFile(
                        path, len(data), sha256=self.published_sha256.get(path, sha256(data))
                    )
                )
        return RemoteListing(self.revision, tuple(files))

    def _write(self, repo_id: str, path: str, local_dir: Path) -> Path:
        out = local_dir / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self.repos[repo_id][path])
        return out

    def download_file(
        self, repo_id, filename, *, repo_type, revision, local_dir, force, progress
    ) -> Path:
        self.calls.append(("file", repo_id, filename, revision, force))
        if self.fail_download_with is not None:
            raise self.fail_download_with
        return self._write(repo_id, filename, Path(local_dir))

    def download_snapshot(
        self, repo_id, *, repo_type, revision, allow_patterns, local_dir, force, progress
    ) -> Path:
        import fnmatch

        self.calls.append(("snapshot", repo_id, tuple(allow_patterns), revision, force))
        for path in self.repos[repo_id]:
            if any(fnmatch.fnmatch(path, p) for p in allow_patterns):
                self._write(repo_id, path, Path(local_dir))
        return Path(local_dir)

    def downloads(self) -> list[tuple]:
        return [c for c in self.calls if c[0] != "list"]


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


def tar_gz(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def online(monkeypatch):
    """The test conftest sets HF_HUB_OFFLINE=1; these tests simulate a reachable hub
    (the connection probe says yes without trying)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download_core, "hub_reachable", lambda: True)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="search-env download")
    add_download_arguments(parser)
    return parser.parse_args(list(argv))


def manifest(dest: Path) -> dict:
    return json.loads((dest / MANIFEST_NAME).read_text())["artifacts"]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*.tmp"))


# --------------------------------------------------------------------------- registry


def test_every_qa_dataset_has_an_artifact_with_its_splits():
    for info in DATASETS.values():
        artifact = ARTIFACTS[info.config]
        assert artifact.repo_id == info.repo == "RUC-NLPIR/FlashRAG_datasets"
        assert artifact.files == tuple(f"{info.config}/{s}.jsonl" for s in info.splits)
        assert f"{info.config}/{info.eval_split}.jsonl" in artifact.files
        assert artifact.target == f"flashrag/{info.config}"
        assert get_artifact(info.name) is artifact  # short names work too ("2Wiki")
    assert [a.name for a in resolve_names(["qa"])] == [i.config for i in DATASETS.values()]


def test_registry_records_the_reference_files():
    corpus = ARTIFACTS["wiki18-corpus"]
    assert (corpus.repo_id, corpus.files, corpus.target) == (
        "PeterJinGo/wiki-18-corpus",
        ("wiki-18.jsonl.gz",),
        "wiki-18.jsonl",
    )
    assert corpus.postprocess is PostProcess.GUNZIP
    e5 = ARTIFACTS["wiki18-e5-index"]
    assert (e5.repo_id, e5.files, e5.target) == (
        "PeterJinGo/wiki-18-e5-index",
        ("part_aa", "part_ab"),
        "e5_Flat.index",
    )
    assert e5.postprocess is PostProcess.CONCAT
    bm25 = ARTIFACTS["wiki18-bm25-index"]
    assert bm25.repo_id == "PeterJinGo/wiki-18-bm25-index" and bm25.allow_patterns == ("bm25/*",)
    assert "Lucene" in bm25.notes and "search-env index build" in bm25.notes
    train = ARTIFACTS["nq-hotpotqa-train"]
    assert train.repo_id == "PeterJinGo/nq_hotpotqa_train"
    assert train.files == ("train.parquet", "test.parquet")
    for a in ARTIFACTS.values():
        assert a.repo_type == "dataset" and a.approx_bytes > 0 and a.title
        assert "{dest}" in a.usage


def test_list_prints_every_artifact_with_size_and_destination(capsys, tmp_path):
    assert run_download(parse(["--list", "--dest", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    for a in ARTIFACTS.values():
        line = next(line for line in out.splitlines() if line.startswith(a.name + " "))
        assert a.size_text() in line and str(tmp_path / a.target) in line and a.repo_id in line
    assert "65 GB" in out and "5.1 GB" in out


def test_unknown_name_exits_2_with_the_valid_names(capsys):
    assert run_download(parse(["nq", "wiki-19"])) == 2
    err = capsys.readouterr().err
    assert "wiki-19" in err and "wiki18-corpus" in err and "nq-hotpotqa-train" in err
    assert run_download(parse([])) == 2


# --------------------------------------------------------------------------- offline


def test_offline_mode_fails_at_once_and_says_what_to_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub({})
    dest = tmp_path / "data"
    with pytest.raises(DownloadUnavailableError) as info:
        download("wiki18-corpus", dest, hub=hub)
    assert hub.calls == []  # the hub was not even asked
    msg = str(info.value)
    assert "offline" in msg and "PeterJinGo/wiki-18-corpus" in msg and "repo type: dataset" in msg
    assert "wiki-18.jsonl.gz" in msg and "5.1 GB" in msg
    assert (
        f"hf download PeterJinGo/wiki-18-corpus wiki-18.jsonl.gz --repo-type dataset --local-dir {dest}"
        in msg
    )
    assert str(dest / "wiki-18.jsonl") in msg
    assert f'corpus="{dest}/wiki-18.jsonl"' in msg and "gym.make(" in msg
    assert isinstance(info.value, DatasetUnavailableError)  # one type to catch for all data

    with pytest.raises(DownloadUnavailableError) as info:
        download("NQ", dest, hub=hub)
    msg = str(info.value)
    assert "RUC-NLPIR/FlashRAG_datasets nq/train.jsonl nq/dev.jsonl nq/test.jsonl" in msg
    assert f"--local-dir {dest / 'flashrag'}" in msg
    assert f'gym.make("SearchQA-NQ-v0", dataset="{dest}/flashrag/nq/test.jsonl"' in msg

    with pytest.raises(DownloadUnavailableError) as info:
        download("wiki18-bm25-index", dest, hub=hub)
    assert "--include 'bm25/*'" in str(info.value) and "index build" in str(info.value)


def test_unreachable_hub_fails_at_once_without_asking_it(monkeypatch, tmp_path):
    """No offline flag but no connection: one quick probe, the offline message, the full
    gym.make line (tokenizer= included)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download_core, "hub_reachable", lambda: False)
    monkeypatch.setattr(
        download_core,
        "unreachable_reason",
        lambda: "the Hugging Face hub is unreachable (no connection to x:443)",
    )
    calls = []
    monkeypatch.setattr(download_core, "HuggingFaceHub", lambda: calls.append(1))
    with pytest.raises(DownloadUnavailableError) as info:
        download("NQ", tmp_path)
    assert calls == []  # no client was even made
    msg = str(info.value)
    assert "unreachable (no connection to x:443)" in msg
    assert (
        f'gym.make("SearchQA-NQ-v0", dataset="{tmp_path}/flashrag/nq/test.jsonl", '
        f'corpus="{tmp_path}/wiki-18.jsonl", tokenizer="qwen2.5")'
    ) in msg


def test_cli_offline_exits_1_with_the_message_on_stderr(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_download(parse(["wiki18-e5-index", "--dest", str(tmp_path)])) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    assert "PeterJinGo/wiki-18-e5-index" in captured.err and "part_aa part_ab" in captured.err
    assert str(tmp_path / "e5_Flat.index") in captured.err


def test_connection_error_from_the_fake_hub_is_reported_at_once(online, tmp_path):
    class Unreachable(FakeHub):
        def list_files(self, repo_id, *, repo_type, revision):
            self.calls.append(("list", repo_id))
            raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    hub = Unreachable({})
    with pytest.raises(DownloadUnavailableError, match="unreachable") as info:
        download("nq-hotpotqa-train", tmp_path, hub=hub)
    assert hub.calls == [("list", "PeterJinGo/nq_hotpotqa_train")]  # one try, no retries
    assert "train.parquet test.parquet" in str(info.value)


def test_transport_error_of_a_lazily_imported_http_stack_is_caught(online, monkeypatch, tmp_path):
    # The real client imports its HTTP stack on first use: the error class must be looked
    # up when the exception is matched, not before the call.
    class TransportError(Exception):
        pass

    monkeypatch.delitem(sys.modules, "httpx", raising=False)

    class LazyHub(FakeHub):
        def list_files(self, repo_id, *, repo_type, revision):
            monkeypatch.setitem(
                sys.modules, "httpx", SimpleNamespace(TransportError=TransportError)
            )
            raise TransportError("connection refused")

    with pytest.raises(DownloadUnavailableError, match="TransportError"):
        download("bamboogle", tmp_path, hub=LazyHub({}))


def test_real_client_against_a_closed_local_port_fails_fast(online, monkeypatch, tmp_path):
    import socket

    constants = pytest.importorskip("huggingface_hub.constants")
    with socket.socket() as s:  # a local port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(DownloadUnavailableError, match="unreachable") as info:
        download("wiki18-corpus", tmp_path, progress=False)
    assert time.perf_counter() - start < 5
    assert "OfflineModeIsEnabled" not in str(info.value)  # a real connection attempt failed
    assert not any(tmp_path.iterdir())


def test_connection_lost_during_download_says_rerun_resumes(online, tmp_path):
    hub = FakeHub({"PeterJinGo/nq_hotpotqa_train": {"train.parquet": b"t", "test.parquet": b"s"}})
    hub.fail_download_with = TimeoutError("read timed out")
    with pytest.raises(DownloadUnavailableError, match="again to resume"):
        download("nq-hotpotqa-train", tmp_path, hub=hub)
    assert not (tmp_path / MANIFEST_NAME).exists()


def _patch_real_hub(monkeypatch, repo_info, hf_hub_download=None):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def default_download(**kwargs):
        calls.append(kwargs)
        raise AssertionError("must not download")

    monkeypatch.setattr(hub.HfApi, "repo_info", repo_info)
    monkeypatch.setattr(hub, "hf_hub_download", hf_hub_download or default_download)
    return calls


def test_real_adapter_connection_error_fails_fast(online, monkeypatch, tmp_path):
    try:
        from httpx2 import ConnectError  # huggingface_hub >= 2
    except ImportError:  # pragma: no cover - older stacks
        ConnectError = ConnectionError

    def repo_info(self, repo_id, **kwargs):
        raise ConnectError("[Errno -3] Temporary failure in name resolution")

    calls = _patch_real_hub(monkeypatch, repo_info)
    start = time.perf_counter()
    with pytest.raises(DownloadUnavailableError) as info:
        download("wiki18-corpus", tmp_path)  # default hub: HuggingFaceHub
    assert time.perf_counter() - start < 2
    assert calls == []
    assert "ConnectError" in str(info.value) and "PeterJinGo/wiki-18-corpus" in str(info.value)


def test_real_adapter_hub_server_error_counts_as_unreachable(online, monkeypatch, tmp_path):
    httpx2 = pytest.importorskip("httpx2")
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    def response(status):
        return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api"))

    def down(self, repo_id, **kwargs):
        raise HfHubHTTPError("503 Service Unavailable", response=response(503))

    _patch_real_hub(monkeypatch, down)
    with pytest.raises(DownloadUnavailableError, match="HTTP 503"):
        download("bamboogle", tmp_path)

    def missing(self, repo_id, **kwargs):
        raise RepositoryNotFoundError("404 Repository Not Found", response=response(404))

    _patch_real_hub(monkeypatch, missing)
    with pytest.raises(DownloadError, match="RepositoryNotFoundError") as info:
        download("bamboogle", tmp_path)
    assert not isinstance(info.value, DatasetUnavailableError)


def test_real_adapter_lists_checksums_and_downloads(online, monkeypatch, tmp_path):
    data = b'{"id": "1", "question": "q?", "golden_answers": ["a"]}\n'

    def repo_info(self, repo_id, *, repo_type, revision, files_metadata, **kwargs):
        assert (repo_id, repo_type, files_metadata) == (
            "RUC-NLPIR/FlashRAG_datasets",
            "dataset",
            True,
        )
        lfs = {"size": len(data), "sha256": sha256(data), "pointer_size": 130}
        siblings = [
            SimpleNamespace(rfilename="bamboogle/test.jsonl", size=len(data), blob_id="x", lfs=lfs),
            SimpleNamespace(rfilename="nq/test.jsonl", size=1, blob_id="y", lfs=None),
        ]
        return SimpleNamespace(sha="abc123", siblings=siblings)

    seen = []

    def hf_hub_download(
        *, repo_id, filename, repo_type, revision, local_dir, force_download, token, tqdm_class=None
    ):
        seen.append((filename, revision, force_download, tqdm_class))
        out = Path(local_dir) / filename
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        return str(out)

    _patch_real_hub(monkeypatch, repo_info, hf_hub_download)
    path = download("bamboogle", tmp_path, progress=False)
    assert path == tmp_path / "flashrag" / "bamboogle"
    assert seen[0][:3] == ("bamboogle/test.jsonl", "abc123", False)
    assert seen[0][3] is not None and seen[0][3](total=1).disable  # progress bars off
    entry = manifest(tmp_path)["bamboogle"]
    assert entry["revision"] == "abc123"
    assert entry["files"]["flashrag/bamboogle/test.jsonl"] == {
        "sha256": sha256(data),
        "size": len(data),
        "verified_with_hub": True,
    }


def test_missing_huggingface_hub_names_the_extra(online, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"pip install 'search-env\[data\]'"):
        HuggingFaceHub().list_files("x/y", repo_type="dataset", revision=None)
    with pytest.raises(ImportError, match="search-env"):
        download("bamboogle", tmp_path)


# --------------------------------------------------------------------------- post-processing


def test_gunzip_corpus_manifest_and_no_second_download(online, tmp_path):
    packed = gz(JSONL)
    hub = FakeHub({"PeterJinGo/wiki-18-corpus": {"wiki-18.jsonl.gz": packed}})
    path = download("wiki18-corpus", tmp_path, hub=hub, progress=False)
    assert path == tmp_path / "wiki-18.jsonl" and path.read_bytes() == JSONL
    assert not (tmp_path / "wiki-18.jsonl.gz").exists()  # the raw download is removed
    assert leftovers(tmp_path) == []
    entry = manifest(tmp_path)["wiki18-corpus"]
    assert entry["files"]["wiki-18.jsonl"]["sha256"] == sha256(JSONL)
    assert entry["downloads"]["wiki-18.jsonl.gz"] == {
        "sha256": sha256(packed),
        "size": len(packed),
        "verified_with_hub": True,
    }
    assert entry["revision"] == hub.revision
    assert hub.downloads() == [
        ("file", "PeterJinGo/wiki-18-corpus", "wiki-18.jsonl.gz", hub.revision, False)
    ]

    calls = len(hub.calls)
    assert download("wiki18-corpus", tmp_path, hub=hub) == path
    assert len(hub.calls) == calls  # present: the hub is not touched at all

    from search_env.data.corpus import iter_corpus  # the package can read the result

    assert [p.id for p in iter_corpus(path)] == ["0", "1"]


def test_gunzip_unpacks_the_single_member_of_a_gzipped_tar(online, tmp_path):
    hub = FakeHub({"PeterJinGo/wiki-18-corpus": {"wiki-18.jsonl.gz": tar_gz(CORPUS_MEMBER, JSONL)}})
    path = download("wiki18-corpus", tmp_path, hub=hub, progress=False)
    assert path.read_bytes() == JSONL


def test_corrupt_gzip_is_a_clear_error_and_writes_nothing(online, tmp_path):
    hub = FakeHub({"PeterJinGo/wiki-18-corpus": {"wiki-18.jsonl.gz": gz(JSONL)[:-12]}})  # truncated
    with pytest.raises(DownloadError, match="not a complete gzip file"):
        download("wiki18-corpus", tmp_path, hub=hub, progress=False)
    assert not (tmp_path / "wiki-18.jsonl").exists() and leftovers(tmp_path) == []


def test_concat_joins_parts_in_the_listed_order(online, tmp_path):
    aa, ab = b"A" * 3000, b"B" * 1000
    hub = FakeHub({"PeterJinGo/wiki-18-e5-index": {"part_ab": ab, "part_aa": aa}})
    path = download("wiki18-e5-index", tmp_path, hub=hub, progress=False, keep_downloads=True)
    assert path == tmp_path / "e5_Flat.index" and path.read_bytes() == aa + ab
    assert [c[2] for c in hub.downloads()] == ["part_aa", "part_ab"]
    assert (tmp_path / "part_aa").exists()  # keep_downloads
    entry = manifest(tmp_path)["wiki18-e5-index"]
    assert entry["files"]["e5_Flat.index"]["sha256"] == sha256(aa + ab)
    assert entry["downloads"]["part_aa"]["sha256"] == sha256(aa)


def test_force_replaces_atomically_and_a_failure_keeps_the_old_file(online, tmp_path):
    repo = {"part_aa": b"new-a", "part_ab": b"new-b"}
    hub = FakeHub({"PeterJinGo/wiki-18-e5-index": repo})
    final = tmp_path / "e5_Flat.index"
    final.write_bytes(b"old index")

    assert download("wiki18-e5-index", tmp_path, hub=hub) == final  # skip: it exists
    assert hub.calls == [] and final.read_bytes() == b"old index"

    hub.published_sha256["part_ab"] = "0" * 64  # the second part arrives corrupted
    with pytest.raises(ChecksumMismatchError, match="part_ab"):
        download("wiki18-e5-index", tmp_path, hub=hub, force=True, progress=False)
    assert final.read_bytes() == b"old index"  # untouched: the join went to a temp file
    assert leftovers(tmp_path) == [] and not (tmp_path / "part_ab").exists()
    assert all(c[-1] is True for c in hub.downloads())  # force reached the hub client

    hub.published_sha256.clear()
    download("wiki18-e5-index", tmp_path, hub=hub, force=True, progress=False)
    assert final.read_bytes() == b"new-anew-b"
    assert not (tmp_path / "part_aa").exists() and not (tmp_path / "part_ab").exists()


def test_checksum_mismatch_leaves_no_file_under_the_final_name(online, tmp_path):
    files = {"train.parquet": b"train rows", "test.parquet": b"test rows"}
    hub = FakeHub({"PeterJinGo/nq_hotpotqa_train": files})
    hub.published_sha256["test.parquet"] = sha256(b"something else")
    with pytest.raises(ChecksumMismatchError) as info:
        download("nq-hotpotqa-train", tmp_path, hub=hub, progress=False)
    msg = str(info.value)
    assert (
        "test.parquet" in msg and sha256(b"something else") in msg and sha256(b"test rows") in msg
    )
    assert not (tmp_path / "nq_hotpotqa_train" / "test.parquet").exists()
    assert not (tmp_path / MANIFEST_NAME).exists()

    hub.published_sha256.clear()  # rerun: good files now
    path = download("nq-hotpotqa-train", tmp_path, hub=hub, progress=False)
    assert (path / "test.parquet").read_bytes() == b"test rows"
    assert manifest(tmp_path)["nq-hotpotqa-train"]["files"]["nq_hotpotqa_train/test.parquet"][
        "verified_with_hub"
    ]


def test_non_lfs_files_are_checked_with_the_git_blob_id(online, tmp_path):
    files = {"bamboogle/test.jsonl": b'{"id": "0", "question": "q", "golden_answers": ["a"]}\n'}
    hub = FakeHub({"RUC-NLPIR/FlashRAG_datasets": files})
    hub.non_lfs.add("bamboogle/test.jsonl")
    download("bamboogle", tmp_path, hub=hub, progress=False)
    entry = manifest(tmp_path)["bamboogle"]["files"]["flashrag/bamboogle/test.jsonl"]
    assert entry["verified_with_hub"] is True

    from search_env.data.qa import load_qa

    assert load_qa(tmp_path / "flashrag" / "bamboogle" / "test.jsonl")[0].golden_answers == ("a",)


def test_missing_file_on_the_hub_is_a_clear_error(online, tmp_path):
    hub = FakeHub({"PeterJinGo/wiki-18-e5-index": {"part_aa": b"a"}})
    with pytest.raises(DownloadError, match="has no part_ab"):
        download("wiki18-e5-index", tmp_path, hub=hub)
    assert hub.downloads() == []


def test_pattern_artifact_downloads_the_folder_once(online, tmp_path):
    repo = {"bm25/segments_1": b"seg", "bm25/_0.cfs": b"cfs", "README.md": b"readme"}
    hub = FakeHub({"PeterJinGo/wiki-18-bm25-index": repo})
    path = download("wiki18-bm25-index", tmp_path, hub=hub, progress=False)
    assert path == tmp_path / "wiki18-bm25-lucene" / "bm25"
    assert sorted(p.name for p in path.iterdir()) == ["_0.cfs", "segments_1"]
    assert not (tmp_path / "wiki18-bm25-lucene" / "README.md").exists()
    files = manifest(tmp_path)["wiki18-bm25-index"]["files"]
    assert sorted(files) == ["wiki18-bm25-lucene/bm25/_0.cfs", "wiki18-bm25-lucene/bm25/segments_1"]
    calls = len(hub.calls)
    download("wiki18-bm25-index", tmp_path, hub=hub)
    assert len(hub.calls) == calls


def test_offline_with_raw_files_copied_in_finishes_without_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "part_aa").write_bytes(b"12")
    (tmp_path / "part_ab").write_bytes(b"34")
    path = download("wiki18-e5-index", tmp_path, hub=FakeHub({}), progress=False)
    assert path.read_bytes() == b"1234"
    entry = manifest(tmp_path)["wiki18-e5-index"]
    assert entry["revision"] is None and entry["downloads"]["part_aa"]["verified_with_hub"] is False


def test_cli_downloads_and_prints_the_path(online, monkeypatch, capsys, tmp_path):
    import search_env.download.core as mod

    hub = FakeHub({"RUC-NLPIR/FlashRAG_datasets": {"popqa/test.jsonl": b"{}\n"}})
    monkeypatch.setattr(mod, "HuggingFaceHub", lambda: hub)
    assert run_download(parse(["PopQA", "--dest", str(tmp_path), "--no-progress"])) == 0
    assert capsys.readouterr().out.strip() == f"popqa: {tmp_path / 'flashrag' / 'popqa'}"
