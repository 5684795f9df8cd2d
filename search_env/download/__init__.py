"""Download the Search-R1 data: the wiki-18 corpus, its indexes and the QA datasets.

Every artifact is one :class:`Artifact` record in :data:`ARTIFACTS`: which hub repo and
files it comes from, where it goes under the destination directory, and how it is
finished after the download (gunzip, or concatenating split parts). :func:`download`
fetches one artifact with ``huggingface_hub`` (which resumes interrupted downloads and
shows progress bars), checks every file against the sha256 the hub publishes for it,
post-processes it atomically, and records the sha256 of the final files in
``download_manifest.json``. Calling it again when the final files exist does nothing.

Without internet (``HF_HUB_OFFLINE`` set, or the hub unreachable) it fails at once with a
:class:`DownloadUnavailableError` that says which files to fetch elsewhere, the command
to fetch them, and where to put them. The ``search-env download`` command wraps it
(:func:`add_download_arguments`, :func:`run_download`).

Layout under ``dest_dir`` (default ``data/``), as in the Search-R1 README::

    wiki-18.jsonl                  wiki18-corpus
    e5_Flat.index                  wiki18-e5-index
    wiki18-bm25-lucene/bm25/       wiki18-bm25-index (Pyserini/Lucene; not read by search-env)
    flashrag/<config>/<split>.jsonl  nq, triviaqa, popqa, hotpotqa, ...
    nq_hotpotqa_train/{train,test}.parquet
    download_manifest.json

Modules:

* ``artifacts``: the registry (`Artifact`, `ARTIFACTS`, name lookup, the ``--list`` table);
* ``hub_client``: `HubClient` and `HuggingFaceHub`, and which errors mean "unreachable";
* ``postprocess``: hashing, gunzip (and a gzipped tar), concatenation, atomic writes;
* ``messages``: what to fetch and where to put it when the hub cannot be reached;
* ``core``: `download` and its manifest;
* ``cli``: the ``search-env download`` command;
* ``errors``: the exceptions.
"""

from search_env.download.artifacts import (
    ARTIFACTS,
    Artifact,
    PostProcess,
    artifact_table,
    get_artifact,
    resolve_names,
)
from search_env.download.cli import add_download_arguments, run_download
from search_env.download.core import MANIFEST_NAME, download
from search_env.download.errors import (
    ChecksumMismatchError,
    DownloadError,
    DownloadUnavailableError,
)
from search_env.download.hub_client import HubClient, HuggingFaceHub, RemoteFile, RemoteListing
from search_env.download.messages import unavailable_message

__all__ = [
    "ARTIFACTS",
    "MANIFEST_NAME",
    "Artifact",
    "ChecksumMismatchError",
    "DownloadError",
    "DownloadUnavailableError",
    "HubClient",
    "HuggingFaceHub",
    "PostProcess",
    "RemoteFile",
    "RemoteListing",
    "add_download_arguments",
    "artifact_table",
    "download",
    "get_artifact",
    "resolve_names",
    "run_download",
    "unavailable_message",
]
