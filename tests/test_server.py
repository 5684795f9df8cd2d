"""The retrieval server: Search-R1 request/response format, validation, errors, batching.

Every server here is a real uvicorn server on a free 127.0.0.1 port, started and stopped
by its fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
import threading
import time
from collections.abc import Sequence

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
msgspec = pytest.importorskip("msgspec")

from search_env.protocol import format_documents  # noqa: E402
from search_env.retrievers.base import RetrievalError  # noqa: E402
from search_env.retrievers.bm25 import BM25Retriever  # noqa: E402
from search_env.server import (  # noqa: E402
    MicroBatcher,
    RequestError,
    RequestLimits,
    ServerThread,
    create_app,
    load_index,
    parse_retrieve_request,
)
from search_env.server.loadtest import run_load  # noqa: E402
from search_env.types import Passage  # noqa: E402

CITIES = [
    ("Oslo", "Oslo is the capital and most populous city of Norway."),
    ("Bergen", "Bergen is a city on the west coast of Norway, known for its fjords."),
    ("Trondheim", "Trondheim is a city in Norway, once its capital in the Viking Age."),
    ("Stockholm", "Stockholm is the capital of Sweden, built on fourteen islands."),
    ("Gothenburg", "Gothenburg is a port city on the west coast of Sweden."),
    ("Copenhagen", "Copenhagen is the capital of Denmark, on the islands of Zealand and Amager."),
    ("Helsinki", "Helsinki is the capital of Finland, on the Gulf of Finland."),
    ("Reykjavik", "Reykjavik is the capital of Iceland and its largest city."),
    ("Paris", "Paris is the capital of France, on the river Seine."),
    ("Lyon", "Lyon is a city in France at the confluence of the Rhone and the Saone."),
    ("Berlin", "Berlin is the capital of Germany and its largest city by population."),
    ("Hamburg", "Hamburg is a port city in northern Germany on the river Elbe."),
    ("Zürich", "Zürich is the largest city in Switzerland, on Lake Zürich."),
    ("Geneva", "Geneva is a city in Switzerland on the shore of Lake Geneva."),
    ("Vienna", "Vienna is the capital of Austria, on the river Danube."),
    ("Prague", "Prague is the capital of the Czech Republic, on the river Vltava."),
]
PASSAGES = [Passage(str(i), f'"{title}"\n{text}') for i, (title, text) in enumerate(CITIES)]
QUERIES = [
    "capital of Norway",
    "port city west coast",
    "largest city in Switzerland",
    "river Danube capital",
    "fjords",
    "Viking Age capital",
    "islands capital",
    "lake shore city",
    "zzz unknown words only",
    "",
    "the of and",
    "capital",
]


class FailingRetriever:
    """Wraps a retriever; raises on any batch that holds a query containing ``boom``."""

    def __init__(self, inner: BM25Retriever) -> None:
        self.inner = inner

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if any("boom" in q for q in queries):
            raise RetrievalError("index shard unavailable (boom)")
        return self.inner.search(queries, k)


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    # One thread: bm25s' numpy backend would start a thread pool per call otherwise.
    return BM25Retriever.from_passages(PASSAGES, backend="numpy", show_progress=False, n_threads=1)


@pytest.fixture(scope="module")
def server(bm25):
    app = create_app(bm25, max_wait_ms=2.0, info={"kind": "bm25", "note": "tiny test index"})
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def post(client, payload) -> httpx.Response:
    return client.post("/retrieve", json=payload)


def expected(bm25: BM25Retriever, queries: list[str], k: int) -> list[list[Passage]]:
    return [bm25.search([q], k)[0] for q in queries]


# ---------------------------------------------------------------------- format
def test_search_r1_request_with_scores(client, bm25):
    # Exactly what Search-R1's rollout (generation.py _batch_search) posts.
    response = post(client, {"queries": QUERIES, "topk": 3, "return_scores": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["result"]
    assert len(body["result"]) == len(QUERIES)
    for hits, want in zip(body["result"], expected(bm25, QUERIES, 3)):
        assert len(hits) == len(want) <= 3
        for item, passage in zip(hits, want):
            assert set(item) == {"document", "score"}
            assert set(item["document"]) == {"id", "contents"}
            assert item["document"]["id"] == passage.id
            assert item["document"]["contents"] == passage.contents
            assert isinstance(item["score"], float)
            assert item["score"] == pytest.approx(passage.score, rel=1e-6)
    assert body["result"][0][0]["document"]["id"] == "0"  # Oslo
    assert body["result"][8] == [] and body["result"][9] == [] and body["result"][10] == []


def passages_to_string(items: list) -> str:
    """The Doc-list both rollout clients build from result items (their `_passages2string`)."""
    out = ""
    for idx, item in enumerate(items):
        lines = item["document"]["contents"].split("\n")
        out += f"Doc {idx + 1}(Title: {lines[0]}) {chr(10).join(lines[1:])}\n"
    return out


def test_search_r1_batch_search_replayed(server, bm25):
    # Search-R1's generation.py: `requests.post(search_url, json={"queries", "topk",
    # "return_scores": True}).json()["result"]`, then one Doc-list string per query.
    requests = pytest.importorskip("requests")
    queries = ["capital of Norway", "Zürich lake", "zzz unknown words only"]
    payload = {"queries": queries, "topk": 3, "return_scores": True}
    answer = requests.post(server.url + "/retrieve", json=payload).json()
    strings = [passages_to_string(items) for items in answer["result"]]
    assert strings == [format_documents(bm25.search([q], 3)[0]) for q in queries]
    assert strings[0].startswith('Doc 1(Title: "Oslo") Oslo is the capital') and strings[2] == ""


def test_gem_search_tool_request_replayed(server, bm25):
    # GEM's gem/tools/search_tool.py (since July 2025): the msgpack bytes of {"query": str,
    # "topk": k, "return_scores": True} as `requests.post(url, data=..., timeout=5)` (so no
    # Content-Type), `raise_for_status()`, then `msgspec.msgpack.decode(content)["result"]`
    # read as one flat item list.
    requests = pytest.importorskip("requests")
    body = msgspec.msgpack.encode({"query": "capital of Norway", "topk": 3, "return_scores": True})
    response = requests.post(server.url + "/retrieve", data=body, timeout=5)
    assert "content-type" not in {k.lower() for k in response.request.headers}
    response.raise_for_status()
    assert response.headers["content-type"] == "application/msgpack"
    result = msgspec.msgpack.decode(response.content)["result"]
    assert passages_to_string(result) == format_documents(bm25.search(["capital of Norway"], 3)[0])
    assert [item["document"]["id"] for item in result] == [
        p.id for p in bm25.search(["capital of Norway"], 3)[0]
    ]
    assert all(isinstance(item["score"], float) for item in result)


def test_single_query_in_json_and_without_scores(client, bm25):
    want = bm25.search(["fjords"], 2)[0]
    scored = post(client, {"query": "fjords", "topk": 2, "return_scores": True}).json()
    assert [i["document"]["id"] for i in scored["result"]] == [p.id for p in want]
    assert [i["score"] for i in scored["result"]] == pytest.approx(
        [p.score for p in want], rel=1e-6
    )
    bare = post(client, {"query": "fjords", "topk": 2}).json()
    assert bare == {"result": [{"id": p.id, "contents": p.contents} for p in want]}
    assert post(client, {"query": "", "topk": 2}).json() == {"result": []}
    packed = client.post(
        "/retrieve", content=msgspec.msgpack.encode({"query": "fjords", "topk": 2})
    )
    assert msgspec.msgpack.decode(packed.content) == bare


def test_request_without_scores_returns_documents(client, bm25):
    body = post(client, {"queries": QUERIES[:4], "topk": 2, "return_scores": False}).json()
    for hits, want in zip(body["result"], expected(bm25, QUERIES[:4], 2)):
        assert hits == [{"id": p.id, "contents": p.contents} for p in want]


def test_reference_defaults(client, bm25):
    # topk missing or null -> the reference's default 3; return_scores missing -> false.
    for payload in (
        {"queries": ["capital"]},
        {"queries": ["capital"], "topk": None, "return_scores": None},
    ):
        hits = post(client, payload).json()["result"][0]
        assert hits == [
            {"id": p.id, "contents": p.contents} for p in bm25.search(["capital"], 3)[0]
        ]
        assert len(hits) == 3
    # Unknown fields are ignored, as pydantic does in the reference.
    assert post(client, {"queries": ["capital"], "extra": 1}).status_code == 200
    # An integral float is an int, as in pydantic.
    assert len(post(client, {"queries": ["capital"], "topk": 2.0}).json()["result"][0]) == 2


def test_zero_queries_and_empty_query(client):
    assert post(client, {"queries": [], "topk": 3, "return_scores": True}).json() == {"result": []}
    assert post(client, {"queries": ["", "   "], "topk": 3}).json() == {"result": [[], []]}


def test_gem_msgpack_request(client, bm25):
    # GEM's search tool: msgpack body, no Content-Type, msgpack answer.
    payload = {"queries": ["capital of Norway"], "topk": 3, "return_scores": True}
    response = client.post("/retrieve", content=msgspec.msgpack.encode(payload))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/msgpack"
    body = msgspec.msgpack.decode(response.content)
    assert body == post(client, payload).json()
    assert [d["document"]["id"] for d in body["result"][0]] == [
        p.id for p in bm25.search(["capital of Norway"], 3)[0]
    ]
    explicit = client.post(
        "/retrieve",
        content=msgspec.msgpack.encode(payload),
        headers={"content-type": "application/msgpack"},
    )
    assert msgspec.msgpack.decode(explicit.content) == body


# ---------------------------------------------------------------------- bad requests
@pytest.mark.parametrize(
    "content, status, message",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty request body"),
        (b"\x83\xa7queries", 400, "malformed msgpack"),
        (json.dumps(["capital"]), 422, "must be an object"),
        (json.dumps({"topk": 3}), 422, "missing field 'queries'"),
        (json.dumps({"queries": "capital"}), 422, "'queries' must be a list"),
        (json.dumps({"queries": ["ok", 7]}), 422, "queries[1] must be a string, got int"),
        (json.dumps({"queries": [None]}), 422, "queries[0] must be a string, got null"),
        (json.dumps({"queries": ["a"], "topk": 0}), 422, "'topk' must be an integer from 1 to 100"),
        (json.dumps({"queries": ["a"], "topk": 101}), 422, "got 101"),
        (json.dumps({"queries": ["a"], "topk": -1}), 422, "'topk'"),
        (json.dumps({"queries": ["a"], "topk": "3"}), 422, "got '3' (str)"),
        (json.dumps({"queries": ["a"], "topk": 2.5}), 422, "'topk'"),
        (json.dumps({"queries": ["a"], "topk": True}), 422, "'topk'"),
        (
            json.dumps({"queries": ["a"], "return_scores": "yes"}),
            422,
            "'return_scores' must be true or false",
        ),
        (json.dumps({"queries": ["a"] * 4097}), 422, "too many queries: 4097"),
        (
            json.dumps({"queries": ["ok", "x" * 2001]}),
            422,
            "queries[1] is 2001 characters long, the limit is 2000",
        ),
        (json.dumps({"query": ["capital"]}), 422, "'query' must be a string, got list"),
        (json.dumps({"query": None}), 422, "'query' must be a string, got null"),
        (
            json.dumps({"query": "x" * 2001}),
            422,
            "'query' is 2001 characters long, the limit is 2000",
        ),
        (json.dumps({"query": "a", "queries": ["b"]}), 422, "not both"),
        (msgspec.msgpack.encode({"query": 7, "topk": 3}), 422, "'query' must be a string, got int"),
        (msgspec.msgpack.encode({"query": "a", "topk": 0}), 422, "'topk' must be an integer"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(client, content, status, message):
    # Raw bytes go without a Content-Type (as GEM's msgpack client sends them).
    headers = {"content-type": "application/json"} if isinstance(content, str) else {}
    response = client.post("/retrieve", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_wrong_method_and_path(client):
    assert client.get("/retrieve").status_code == 405
    assert client.post("/search", json={"queries": []}).status_code == 404


def test_body_size_limit(bm25):
    app = create_app(bm25, max_body_bytes=1000)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url) as c:
        response = c.post("/retrieve", json={"queries": ["x" * 600, "y" * 600]})
        assert response.status_code == 413
        assert "exceeds the limit of 1000" in response.json()["detail"]
        assert c.post("/retrieve", json={"queries": ["capital"]}).status_code == 200


def test_configured_limits(bm25):
    app = create_app(
        bm25, max_queries_per_request=2, max_topk=4, max_query_chars=10, default_topk=1
    )
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url) as c:
        assert (
            "limit is 2" in c.post("/retrieve", json={"queries": ["a", "b", "c"]}).json()["detail"]
        )
        assert (
            "from 1 to 4"
            in c.post("/retrieve", json={"queries": ["a"], "topk": 5}).json()["detail"]
        )
        assert (
            "the limit is 10"
            in c.post("/retrieve", json={"queries": ["capital of x"]}).json()["detail"]
        )
        assert len(c.post("/retrieve", json={"queries": ["capital"]}).json()["result"][0]) == 1
        limits = c.get("/health").json()["limits"]
        assert limits["max_queries_per_request"] == 2 and limits["default_topk"] == 1


def test_parse_retrieve_request_unit():
    req = parse_retrieve_request({"queries": ["a", "b"], "topk": 5, "return_scores": True})
    assert req.queries == ("a", "b") and req.topk == 5 and req.return_scores is True
    with pytest.raises(RequestError, match="missing field"):
        parse_retrieve_request({})
    with pytest.raises(RequestError, match="'topk'"):
        parse_retrieve_request({"queries": [], "topk": float("nan")})
    with pytest.raises(ValueError, match="default_topk"):
        RequestLimits(max_topk=2, default_topk=3)


# ---------------------------------------------------------------------- slow and large bodies
def _stalled_upload(
    srv: ServerThread, chunks: list[bytes], gap_s: float, deadline_s: float
) -> tuple[bytes, float]:
    """Sends headers for a 10,000-byte body, then ``chunks`` ``gap_s`` apart (never the rest);
    returns what the server sent back and when it closed the connection (bounded wait)."""
    import socket

    start = time.perf_counter()
    with socket.create_connection((srv.host, srv.port), timeout=deadline_s) as sock:
        sock.sendall(
            f"POST /retrieve HTTP/1.1\r\nHost: {srv.host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 10000\r\n\r\n".encode()
        )
        received = b""
        sock.setblocking(False)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # closed by the server
                break
            time.sleep(gap_s)
        sock.setblocking(True)
        while time.perf_counter() - start < deadline_s:
            data = sock.recv(65536)
            if not data:
                return received, time.perf_counter() - start
            received += data
    raise AssertionError(f"connection still open after {deadline_s} s")


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickling"])
def test_slow_bodies_time_out_and_the_connection_closes(bm25, trickle):
    app = create_app(bm25, body_timeout_s=0.4)
    with ServerThread(app) as srv:
        chunks = [b"{"] * 30 if trickle else [b'{"queries": ["cap']
        answer, closed_after = _stalled_upload(srv, chunks, gap_s=0.05, deadline_s=5.0)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"connection: close" in answer.lower()
        assert b"not received within 0.4 s" in answer
        assert 0.4 <= closed_after < 2.0
        # Other clients are served meanwhile and after.
        assert httpx.post(srv.url + "/retrieve", json={"queries": ["capital"]}).status_code == 200
        assert httpx.get(srv.url + "/health").json()["counters"]["bad_requests"] == 1


def test_default_body_limit_fits_the_largest_valid_request():
    limits = RequestLimits()
    # 4096 queries of 2000 characters, 4 UTF-8 bytes each at most, plus framing.
    assert limits.body_limit == 4096 * (4 * 2000 + 4) + 1024 < 33_000_000
    assert RequestLimits(max_body_bytes=123).body_limit == 123
    with pytest.raises(ValueError, match="body_timeout_s"):
        RequestLimits(body_timeout_s=0)


def test_largest_valid_requests_fit_the_derived_body_limit(bm25):
    app = create_app(bm25, max_queries_per_request=8, max_query_chars=50, max_topk=3)
    widest = "\U0001f600" * 50  # 4 bytes a character in UTF-8
    queries = [widest] * 8
    bodies = {
        "json utf-8": (
            json.dumps(
                {"queries": queries, "topk": 3, "return_scores": False}, ensure_ascii=False
            ).encode(),
            "application/json",
        ),
        "msgpack": (
            msgspec.msgpack.encode({"queries": queries, "topk": 3, "return_scores": False}),
            None,
        ),
    }
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url) as c:
        limit = c.get("/health").json()["limits"]["max_body_bytes"]
        assert limit == 8 * (4 * 50 + 4) + 1024
        for name, (body, ctype) in bodies.items():
            headers = {"content-type": ctype} if ctype else {}
            response = c.post("/retrieve", content=body, headers=headers)
            assert response.status_code == 200, (name, response.text)
        too_big = c.post(
            "/retrieve", content=b" " * (limit + 1), headers={"content-type": "application/json"}
        )
        assert too_big.status_code == 413 and too_big.headers["connection"] == "close"


class WideRetriever:
    """Answers every query with ``width`` short passages, fast: only the answer's size costs."""

    def __init__(self, width: int) -> None:
        self.width = width

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        hits = [Passage(str(i), f"passage {i}", float(k - i)) for i in range(min(k, self.width))]
        return [hits for _ in queries]


@pytest.mark.parametrize("as_msgpack", [False, True], ids=["json", "msgpack"])
def test_encoded_answers_are_the_formatted_result(as_msgpack):
    from search_env.server.requests import RetrieveRequest
    from search_env.server.wire import encode_answer, format_result

    results = [
        [Passage("1", '"Zürich"\nZürich ✓', 2.5), Passage("2", "x", None)],
        [],
        [Passage("3", "y", 1.0)],
    ]
    decode = msgspec.msgpack.decode if as_msgpack else msgspec.json.decode
    for scores in (True, False):
        request = RetrieveRequest(("a", "b", "c"), 2, scores)
        assert decode(encode_answer(results, request, as_msgpack)) == format_result(results, scores)
        single = RetrieveRequest(("a",), 2, scores, single=True)
        assert decode(encode_answer(results[:1], single, as_msgpack)) == format_result(
            results[:1], scores, True
        )
        with pytest.raises(ValueError, match="needs 1 result list, got 3"):
            encode_answer(results, single, as_msgpack)


@contextlib.contextmanager
def _unfreezing():
    try:
        yield
    finally:
        gc.unfreeze()


def test_a_maximal_request_does_not_block_other_clients():
    limits = RequestLimits()
    # 4096 queries of 2000 characters (8 MB); 25 passages each (not topk's 100) keep it short.
    app = create_app(WideRetriever(25), max_wait_ms=0.0)
    big = {
        "queries": ["q" * limits.max_query_chars] * limits.max_queries_per_request,
        "topk": limits.max_topk,
        "return_scores": True,
    }
    body = json.dumps(big).encode()
    # The server shares this process with pytest's heap; frozen, the objects earlier
    # tests left are skipped by the garbage collector (a full pass over them is a
    # process-wide pause a standalone server does not have).
    gc.collect()
    gc.freeze()
    with ServerThread(app) as srv, _unfreezing():
        done = threading.Event()
        outcome: dict = {}

        def send_big() -> None:
            with httpx.Client(timeout=60.0) as c:
                response = c.post(
                    srv.url + "/retrieve",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                outcome["status"], outcome["content"] = response.status_code, response.content
            done.set()

        worker = threading.Thread(target=send_big)
        latencies = []
        with httpx.Client(base_url=srv.url, timeout=10.0) as c:
            c.get("/health")
            start = time.perf_counter()
            worker.start()
            while not done.is_set() and time.perf_counter() - start < 60:
                t0 = time.perf_counter()
                assert c.get("/health").status_code == 200
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.01)
            big_seconds = time.perf_counter() - start
        worker.join()
    # Decoded only now: decoding in the worker would hold this process's GIL mid-timing.
    assert outcome["status"] == 200
    assert [len(hits) for hits in msgspec.json.decode(outcome["content"])["result"]] == [25] * 4096
    assert len(latencies) >= 5, (big_seconds, latencies)
    print(f"maximal request {big_seconds:.2f} s, /health latency max {max(latencies) * 1e3:.0f} ms")
    # Before: decoding and encoding on the event loop held it for 1.5 s.
    assert max(latencies) < 0.35, (big_seconds, sorted(latencies)[-5:])


# ---------------------------------------------------------------------- failures
def test_retriever_error_is_503_and_the_server_keeps_serving(bm25):
    app = create_app(FailingRetriever(bm25), max_wait_ms=50.0)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url) as c:
        response = c.post("/retrieve", json={"queries": ["boom"], "topk": 3})
        assert response.status_code == 503
        assert "index shard unavailable (boom)" in response.json()["detail"]
        assert "RetrievalError" in response.json()["detail"]
        ok = c.post(
            "/retrieve", json={"queries": ["capital of Norway"], "topk": 3, "return_scores": True}
        )
        assert ok.status_code == 200
        assert ok.json()["result"][0][0]["document"]["id"] == "0"

        # A failing request batched with good ones fails alone.
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url) as ac:
                queries = ["capital of Norway", "boom again", "fjords", "river Danube capital"]
                return await asyncio.gather(
                    *(ac.post("/retrieve", json={"queries": [q]}) for q in queries)
                )

        statuses = [r.status_code for r in asyncio.run(burst())]
        assert statuses == [200, 503, 200, 200]
        counters = c.get("/health").json()["counters"]
        assert counters["failed_requests"] == 2 and counters["retriever_errors"] == 2


def test_health(client, server, bm25):
    post(client, {"queries": ["capital"], "topk": 1})
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["retriever"] == {"class": "BM25Retriever", "kind": "bm25"}
    assert health["num_passages"] == len(PASSAGES)
    assert health["index"] == {"kind": "bm25", "note": "tiny test index"}
    assert health["batching"] == {"enabled": True, "max_batch": 512, "max_wait_ms": 2.0}
    counters = health["counters"]
    for key in (
        "requests",
        "queries",
        "batches",
        "bad_requests",
        "retriever_errors",
        "search_seconds",
    ):
        assert key in counters
    assert counters["requests"] >= 1 and counters["queries"] >= 1 and counters["batches"] >= 1


def test_load_index_reads_the_manifest_kind(bm25, tmp_path, monkeypatch):
    index_dir = bm25.save(tmp_path / "idx")
    loaded = load_index(index_dir, backend="numpy")
    assert isinstance(loaded, BM25Retriever)
    assert loaded.search(["capital of Norway"], 2) == bm25.search(["capital of Norway"], 2)
    manifest = json.loads((index_dir / "manifest.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({**manifest, "kind": "dense-e5"}))
    with pytest.raises(ValueError, match="'dense-e5' has no loader"):
        load_index(other)
    from search_env.retrievers import loading
    from search_env.server import register_index_kind

    monkeypatch.setitem(loading._INDEX_LOADERS, "dense-e5", loading._INDEX_LOADERS["bm25"])
    register_index_kind("dense-e5", lambda path, **kw: ("loaded", path, kw))
    assert load_index(other, device="cpu") == ("loaded", other, {"device": "cpu"})
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "missing")


# ---------------------------------------------------------------------- batching
def _hammer(
    server: ServerThread, clients: int, requests_each: int, seed: int
) -> list[tuple[str, int, list]]:
    """``clients`` concurrent connections, each sending one query per request (GEM style)."""
    rng = random.Random(seed)
    pool = QUERIES[:8] + QUERIES[11:]
    answers: list[tuple[str, int, list]] = []

    def next_body(i: int) -> bytes:
        payload = {"queries": [rng.choice(pool)], "topk": rng.choice((1, 3)), "return_scores": True}
        return json.dumps(payload).encode()

    def on_response(i: int, body: bytes, status: int, answer: bytes) -> None:
        assert status == 200, answer
        payload = json.loads(body)
        answers.append((payload["queries"][0], payload["topk"], json.loads(answer)["result"]))

    result = asyncio.run(
        run_load(
            server.host,
            server.port,
            clients,
            next_body,
            requests_per_client=requests_each,
            on_response=on_response,
        )
    )
    assert result.requests == clients * requests_each and result.errors == 0
    return answers


def _as_passages(result: list) -> list[list[Passage]]:
    return [
        [Passage(d["document"]["id"], d["document"]["contents"], d["score"]) for d in hits]
        for hits in result
    ]


def test_load_64_clients_every_answer_correct_and_batched(client, server, bm25):
    before = client.get("/health").json()["counters"]
    start = time.perf_counter()
    answers = _hammer(server, clients=64, requests_each=20, seed=0)
    elapsed = time.perf_counter() - start
    assert len(answers) == 64 * 20  # nothing lost
    direct = {}
    for q, k, result in answers:
        if (q, k) not in direct:
            direct[(q, k)] = bm25.search([q], k)
        got = _as_passages(result)
        assert [[(p.id, p.contents) for p in hits] for hits in got] == [
            [(p.id, p.contents) for p in hits] for hits in direct[(q, k)]
        ]
        assert [p.score for p in got[0]] == pytest.approx(
            [p.score for p in direct[(q, k)][0]], rel=1e-6
        )
    after = client.get("/health").json()["counters"]
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 64 * 20
    assert after["queries"] - before["queries"] == 64 * 20
    assert batches < requests / 4, (batches, requests)  # micro-batching merged requests
    assert after["max_batch_queries"] > 1
    assert elapsed < 30


def test_batching_on_and_off_give_identical_results(bm25):
    queries = [q for q in QUERIES for _ in range(3)]
    results = {}
    for batching in (True, False):
        app = create_app(bm25, batching=batching, max_wait_ms=5.0)
        with ServerThread(app) as srv:

            async def run() -> list:
                async with httpx.AsyncClient(base_url=srv.url) as ac:
                    rs = await asyncio.gather(
                        *(
                            ac.post(
                                "/retrieve", json={"queries": [q], "topk": 3, "return_scores": True}
                            )
                            for q in queries
                        )
                    )
                return [r.json()["result"][0] for r in rs]

            results[batching] = asyncio.run(run())
            counters = httpx.get(srv.url + "/health").json()["counters"]
            if batching:
                assert counters["batches"] < counters["requests"]
            else:
                assert counters["batches"] == counters["requests"] == len(queries)
    assert results[True] == results[False]


class RecordingRetriever:
    """Answers query ``q`` with passages ``q#0..q#k-1``; records each call; can be slowed."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        with self.lock:
            self.calls.append((list(queries), k))
        if self.fail_on and any(self.fail_on in q for q in queries):
            raise RuntimeError(f"cannot answer {self.fail_on}")
        time.sleep(self.delay)
        return [[Passage(f"{q}#{i}", q, float(k - i)) for i in range(k)] for q in queries]


def test_microbatcher_merges_splits_and_respects_limits():
    async def main() -> tuple[RecordingRetriever, list, MicroBatcher]:
        r = RecordingRetriever()
        b = MicroBatcher(r.search, max_batch=4, max_wait_ms=50.0)
        jobs = [b.submit([f"q{i}"], 2) for i in range(6)] + [
            b.submit(["m1", "m2"], 3),
            b.submit(["big"] * 9, 1),
        ]
        out = await asyncio.gather(*jobs)
        await b.close()
        return r, out, b

    r, out, b = asyncio.run(main())
    for i in range(6):
        assert out[i] == [[Passage(f"q{i}#0", f"q{i}", 2.0), Passage(f"q{i}#1", f"q{i}", 1.0)]]
    assert [[p.id for p in hits] for hits in out[6]] == [
        ["m1#0", "m1#1", "m1#2"],
        ["m2#0", "m2#1", "m2#2"],
    ]
    assert len(out[7]) == 9 and all(len(h) == 1 for h in out[7])
    # max_batch=4 queries per call, except one oversized request that goes alone;
    # one call per distinct k; every query answered once.
    assert all(len(qs) <= 4 or qs == ["big"] * 9 for qs, _ in r.calls)
    assert all(len({k}) == 1 for _, k in r.calls)
    assert sorted(q for qs, _ in r.calls for q in qs) == sorted(
        [f"q{i}" for i in range(6)] + ["m1", "m2"] + ["big"] * 9
    )
    assert b.stats.requests == 8 and b.stats.queries == 17 and b.stats.batches == len(r.calls) < 8


def test_microbatcher_lingers_only_while_requests_arrive_and_can_be_disabled():
    async def timed_single(batcher: MicroBatcher) -> float:
        start = time.perf_counter()
        await batcher.submit(["x"], 1)
        return time.perf_counter() - start

    async def stream(batcher: MicroBatcher, seconds: float) -> int:
        # A new request every event-loop turn: the batch lingers until max_wait_ms.
        loop = asyncio.get_running_loop()
        futures = []
        end = loop.time() + seconds
        while loop.time() < end:
            futures.append(asyncio.ensure_future(batcher.submit(["s"], 1)))
            await asyncio.sleep(0)
        await asyncio.gather(*futures)
        return len(futures)

    async def main() -> tuple[float, float, int, RecordingRetriever, RecordingRetriever]:
        r = RecordingRetriever()
        alone = await timed_single(MicroBatcher(r.search, max_wait_ms=500.0))
        no_wait = await timed_single(MicroBatcher(r.search, max_wait_ms=0.0))
        off = MicroBatcher(r.search, enabled=False)
        await asyncio.gather(*(off.submit([f"q{i}"], 1) for i in range(5)))
        assert off.stats.batches == off.stats.requests == 5
        await off.close()
        streamed = RecordingRetriever()
        n = await stream(MicroBatcher(streamed.search, max_wait_ms=20.0, max_batch=10**6), 0.15)
        return alone, no_wait, n, r, streamed

    alone, no_wait, n, r, streamed = asyncio.run(main())
    assert alone < 0.1 and no_wait < 0.1  # a lone request is not held for max_wait_ms
    assert [qs for qs, _ in r.calls[2:]] == [[f"q{i}"] for i in range(5)]
    calls = len(streamed.calls)
    assert sum(len(qs) for qs, _ in streamed.calls) == n
    assert 2 <= calls <= 15 and n > 10 * calls, (n, calls)  # cut by max_wait_ms, not by quiet


def test_microbatcher_isolates_a_failing_request_and_closes_cleanly():
    async def main() -> list:
        r = RecordingRetriever(fail_on="bad")
        b = MicroBatcher(r.search, max_wait_ms=30.0)
        results = await asyncio.gather(
            b.submit(["good"], 1),
            b.submit(["bad"], 1),
            b.submit(["fine"], 1),
            return_exceptions=True,
        )
        await b.close()
        with pytest.raises(RuntimeError, match="shutting down"):
            await b.submit(["late"], 1)
        return results

    good, bad, fine = asyncio.run(main())
    assert good[0][0].id == "good#0" and fine[0][0].id == "fine#0"
    assert isinstance(bad, RuntimeError) and "cannot answer bad" in str(bad)


# ---------------------------------------------------------------------- launching
def test_run_serve_loads_the_index_and_passes_the_settings(bm25, tmp_path, monkeypatch):
    import argparse

    from search_env.server import add_serve_arguments, launch, run_serve

    index_dir = bm25.save(tmp_path / "idx")
    args = add_serve_arguments(argparse.ArgumentParser()).parse_args(
        [
            "--index",
            str(index_dir),
            "--port",
            "8123",
            "--max-batch",
            "64",
            "--max-wait-ms",
            "1.5",
            "--no-batching",
            "--backend",
            "numpy",
            "--threads",
            "1",
            "--topk",
            "5",
            "--max-body-bytes",
            "5000",
            "--body-timeout",
            "2.5",
        ]
    )
    assert args.host == "127.0.0.1"  # loopback unless asked
    seen = {}
    monkeypatch.setattr(
        launch, "serve", lambda retriever, **kw: seen.update(retriever=retriever, **kw)
    )
    assert run_serve(args) == 0
    assert isinstance(seen["retriever"], BM25Retriever) and seen["retriever"].backend == "numpy"
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["max_batch"] == 64 and seen["max_wait_ms"] == 1.5 and seen["batching"] is False
    assert (
        seen["default_topk"] == 5
        and seen["max_body_bytes"] == 5000
        and seen["body_timeout_s"] == 2.5
    )
    info = seen["info"]
    assert info["kind"] == "bm25" and info["num_passages"] == len(PASSAGES) and "files" not in info
    # The info dict is what /health shows.
    app = create_app(seen["retriever"], info=info)
    with ServerThread(app) as srv:
        assert httpx.get(srv.url + "/health").json()["index"]["path"] == str(index_dir.resolve())


@pytest.mark.parametrize(
    "damage", ["missing directory", "no manifest", "bad manifest", "truncated file", "unknown kind"]
)
def test_serve_command_reports_index_errors_in_one_line(
    bm25, tmp_path, capsys, monkeypatch, damage
):
    from search_env.cli import main
    from search_env.server import launch

    monkeypatch.setattr(
        launch, "serve", lambda *a, **kw: pytest.fail("must not serve a broken index")
    )
    index_dir = bm25.save(tmp_path / "idx")
    manifest = index_dir / "manifest.json"
    if damage == "missing directory":
        index_dir = tmp_path / "nowhere"
    elif damage == "no manifest":
        manifest.unlink()
    elif damage == "bad manifest":
        manifest.write_text("{")
    elif damage == "truncated file":
        data = index_dir / "data.csc.index.npy"
        data.write_bytes(data.read_bytes()[:100])
    else:
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "kind": "colbert"}))
    capsys.readouterr()  # what building the fixture logged under an earlier test's -v
    assert main(["serve", "--index", str(index_dir), "--backend", "numpy"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: cannot serve the index {index_dir}: ")
    with pytest.raises((OSError, RetrievalError, ValueError)):  # -v: the traceback
        main(["-v", "serve", "--index", str(index_dir), "--backend", "numpy"])


def test_server_thread_reports_a_port_in_use(bm25):
    with ServerThread(create_app(bm25)) as first:
        with pytest.raises(RuntimeError, match="failed to start.*address already in use"):
            ServerThread(create_app(bm25), port=first.port).start()
