"""RemoteRetriever against real loopback servers: results, retries, timeouts, errors."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Sequence

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from search_env.retrievers.base import RetrievalError, Retriever  # noqa: E402
from search_env.retrievers.bm25 import BM25Retriever  # noqa: E402
from search_env.retrievers.remote import RemoteRetriever, parse_passage, parse_response  # noqa: E402
from search_env.server import ServerThread, create_app  # noqa: E402
from search_env.types import Passage  # noqa: E402

PASSAGES = [
    Passage("oslo", '"Oslo"\nOslo is the capital of Norway.'),
    Passage("bergen", '"Bergen"\nBergen is a city in Norway with fjords.'),
    Passage("zurich", '"Zürich"\nZürich is the largest city in Switzerland.'),
    Passage("paris", '"Paris"\nParis is the capital of France.'),
    Passage("lyon", '"Lyon"\nLyon is a city in France.'),
    Passage("bern", '"Bern"\nBern is the federal city of Switzerland.'),
]
QUERIES = [
    "capital of Norway",
    "city in Switzerland",
    "France",
    "fjords",
    "nothing matches here",
    "",
]


class SlowRetriever:
    """Sleeps ``delay`` seconds on queries that contain ``slow``."""

    def __init__(self, inner: Retriever, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if any("slow" in q for q in queries):
            time.sleep(self.delay)
        return self.inner.search(queries, k)


class FlakyRetriever:
    """Raises on the first ``failures`` calls, then answers."""

    def __init__(self, inner: Retriever, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0
        self.lock = threading.Lock()

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        with self.lock:
            self.calls += 1
            failing = self.calls <= self.failures
        if failing:
            raise RuntimeError(f"transient failure {self.calls}")
        return self.inner.search(queries, k)


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    return BM25Retriever.from_passages(PASSAGES, backend="numpy", show_progress=False, n_threads=1)


@pytest.fixture(scope="module")
def server(bm25):
    with ServerThread(create_app(bm25, max_wait_ms=1.0)) as srv:
        yield srv


def counters(srv: ServerThread) -> dict:
    return httpx.get(srv.url + "/health").json()["counters"]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_search_matches_the_local_retriever(server, bm25):
    with RemoteRetriever(server.url) as remote:
        assert isinstance(remote, Retriever)
        got = remote.search(QUERIES, 3)
    want = bm25.search(QUERIES, 3)
    assert [[(p.id, p.contents) for p in hits] for hits in got] == [
        [(p.id, p.contents) for p in hits] for hits in want
    ]
    for g_hits, w_hits in zip(got, want):
        assert [p.score for p in g_hits] == pytest.approx([p.score for p in w_hits], rel=1e-6)
    assert got[0][0].id == "oslo" and got[4] == [] and got[5] == []


def test_url_forms_and_scores_off(server, bm25):
    want = [[(p.id, p.contents) for p in hits] for hits in bm25.search(QUERIES, 2)]
    for url in (server.url, server.url + "/", server.url + "/retrieve", server.url + "/retrieve/"):
        with RemoteRetriever(url, return_scores=False) as remote:
            assert remote.url == server.url + "/retrieve"
            got = remote.search(QUERIES, 2)
            assert [[(p.id, p.contents) for p in hits] for hits in got] == want
            assert all(p.score is None for hits in got for p in hits)
    with pytest.raises(ValueError, match="http"):
        RemoteRetriever("127.0.0.1:8000")


def test_batches_are_chunked_by_max_batch(server, bm25):
    queries = [f"capital {i}" for i in range(7)] + ["fjords"]
    before = counters(server)
    with RemoteRetriever(server.url, max_batch=3) as remote:
        got = remote.search(queries, 1)
        assert remote.search([], 3) == []  # no request at all
    after = counters(server)
    assert after["requests"] - before["requests"] == 3  # 3 + 3 + 2 queries
    assert after["queries"] - before["queries"] == 8
    assert [[p.id for p in h] for h in got] == [[p.id for p in h] for h in bm25.search(queries, 1)]


def test_health_and_input_checks(server):
    with RemoteRetriever(server.url) as remote:
        health = remote.health()
        assert health["status"] == "ok" and health["num_passages"] == len(PASSAGES)
        with pytest.raises(TypeError, match="single string"):
            remote.search("capital", 3)
        with pytest.raises(ValueError, match="k must be >= 1"):
            remote.search(["capital"], 0)
        with pytest.raises(TypeError, match=r"queries\[1\]"):
            remote.search(["capital", 3], 1)  # type: ignore[list-item]
    assert remote._client.is_closed


def test_4xx_is_not_retried_and_names_the_cause(server):
    before = counters(server)
    with RemoteRetriever(server.url, retries=3, backoff=0.5) as remote:
        start = time.perf_counter()
        with pytest.raises(RetrievalError) as err:
            remote.search(["x" * 2001], 3)
        assert time.perf_counter() - start < 0.5  # no backoff sleep: refused at once
    message = str(err.value)
    assert (
        server.url + "/retrieve" in message
        and "HTTP 422" in message
        and "2001 characters" in message
    )
    assert counters(server)["bad_requests"] - before["bad_requests"] == 1


def test_server_down_fails_after_the_retries(caplog):
    url = f"http://127.0.0.1:{free_port()}"
    with RemoteRetriever(url, retries=2, backoff=0.05, timeout=2.0) as remote:
        start = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="search_env.retrievers.remote"):
            with pytest.raises(RetrievalError) as err:
                remote.search(["capital of Norway"], 3)
        elapsed = time.perf_counter() - start
    message = str(err.value)
    assert (
        f"{url}/retrieve" in message
        and "after 3 attempt(s)" in message
        and "ConnectError" in message
    )
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [r.getMessage().split("retry ")[1][:3] for r in retries] == ["1/2", "2/2"]
    delays = [float(r.getMessage().rsplit(" in ", 1)[1].split()[0]) for r in retries]
    assert 0.02 <= delays[0] <= 0.08 and 0.05 <= delays[1] <= 0.15  # backoff x [0.5, 1.5)
    assert sum(delays) - 0.02 <= elapsed < 2.0  # both backoff sleeps, nothing more


def test_5xx_is_retried_until_it_succeeds(bm25):
    flaky = FlakyRetriever(bm25, failures=2)
    with ServerThread(create_app(flaky, max_wait_ms=0.0)) as srv:
        with RemoteRetriever(srv.url, retries=3, backoff=0.01) as remote:
            got = remote.search(["capital of Norway"], 2)
        assert [p.id for p in got[0]] == [p.id for p in bm25.search(["capital of Norway"], 2)[0]]
        c = counters(srv)
        assert flaky.calls == 3 and c["requests"] == 3 and c["failed_requests"] == 2

        flaky.failures = 10**9  # now it never recovers
        with RemoteRetriever(srv.url, retries=1, backoff=0.01) as remote:
            with pytest.raises(RetrievalError) as err:
                remote.search(["capital"], 2)
        message = str(err.value)
        assert srv.url + "/retrieve" in message and "after 2 attempt(s)" in message
        assert "HTTP 503" in message and "transient failure" in message


def test_slow_server_times_out_retries_then_raises(bm25):
    slow = SlowRetriever(bm25, delay=0.6)
    with ServerThread(create_app(slow, max_wait_ms=0.0)) as srv:
        with RemoteRetriever(srv.url, timeout=0.15, retries=1, backoff=0.01) as remote:
            start = time.perf_counter()
            with pytest.raises(RetrievalError) as err:
                remote.search(["slow query about Oslo"], 3)
            elapsed = time.perf_counter() - start
        message = str(err.value)
        assert (
            srv.url + "/retrieve" in message
            and "after 2 attempt(s)" in message
            and "timed out after 0.15 s" in message
        )
        assert 0.3 <= elapsed < 0.6  # two timed-out attempts, not the server's 2 x 0.6 s
        # The server is still healthy: a normal request is answered once the slow calls end.
        with RemoteRetriever(srv.url, timeout=5.0) as remote:
            assert remote.search(["capital of Norway"], 1)[0][0].id == "oslo"


class ScriptedServer:
    """A loopback TCP server thread that hands each connection to ``handle(conn)``;
    it records when each request arrived and stops (closing every socket) on exit."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.arrivals: list[float] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            try:
                while not self.stopping.is_set():
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        head += chunk
                    self.arrivals.append(time.monotonic())
                    header, _, body = head.partition(b"\r\n\r\n")
                    length = int(header.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    while len(body) < length:
                        body += conn.recv(65536)
                    if not self.handle(conn, len(self.arrivals), self.stopping):
                        return
            except OSError:  # the client hung up
                return

    def __enter__(self) -> ScriptedServer:
        self.acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.acceptor.join()
        self.sock.close()
        for t in self.threads:
            t.join(timeout=5.0)


def ok_answer(num_queries: int) -> bytes:
    body = json.dumps(
        {"result": [[{"document": {"id": "1", "contents": '"T"\nx'}, "score": 1.0}]] * num_queries}
    ).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


def trickle(data: bytes, gap_s: float, stopping: threading.Event, conn: socket.socket) -> None:
    for i in range(len(data)):  # bounded: the whole script, one byte at a time
        if stopping.is_set():
            return
        conn.sendall(data[i : i + 1])
        time.sleep(gap_s)


@pytest.mark.parametrize("part", ["body", "headers"])
def test_a_trickling_server_cannot_stretch_an_attempt(part):
    # One byte every 50 ms never trips a 0.3 s per-read timeout; the attempt's wall-clock
    # deadline does. The whole answer would take 60 bytes x 50 ms = 3 s (x2 attempts).
    answer = ok_answer(1)
    head_len = answer.index(b"\r\n\r\n") + 4
    script = answer[: head_len + 60] if part == "body" else answer[:60]

    def handle(conn, n, stopping):
        if part == "body":
            conn.sendall(script[:head_len])
            trickle(script[head_len:], 0.05, stopping, conn)
        else:
            trickle(script, 0.05, stopping, conn)
        return False

    with ScriptedServer(handle) as srv:
        with RemoteRetriever(srv.url, timeout=0.3, retries=1, backoff=0.01) as remote:
            start = time.perf_counter()
            with pytest.raises(RetrievalError) as err:
                remote.search(["q"], 1)
            elapsed = time.perf_counter() - start
    assert "after 2 attempt(s)" in str(err.value) and "timed out after 0.3 s" in str(err.value)
    assert 0.6 <= elapsed < 0.6 + 0.015 + 0.4, elapsed  # timeout x (retries + 1) + backoff


def test_the_deadline_holds_through_a_proxy_from_the_environment(monkeypatch):
    # HTTP_PROXY is honoured as before; the proxy's connection gets the deadline too.
    def handle(conn, n, stopping):
        trickle(ok_answer(1)[:60], 0.05, stopping, conn)
        return False

    with ScriptedServer(handle) as proxy:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with RemoteRetriever("http://search.invalid:8000", timeout=0.3, retries=0) as remote:
            start = time.perf_counter()
            with pytest.raises(RetrievalError, match="timed out after 0.3 s"):
                remote.search(["q"], 1)
            assert time.perf_counter() - start < 0.7
        assert len(proxy.arrivals) == 1  # the request went to the proxy


def test_429_with_retry_after_is_honoured():
    def handle(conn, n, stopping):
        if n == 1:
            conn.sendall(
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0.4\r\nContent-Length: 4\r\n\r\nbusy"
            )
        else:
            conn.sendall(ok_answer(2))
        return True

    with ScriptedServer(handle) as srv:
        with RemoteRetriever(srv.url, retries=2, backoff=0.01) as remote:
            got = remote.search(["a", "b"], 1)
        assert [[p.id for p in hits] for hits in got] == [["1"], ["1"]]
        assert len(srv.arrivals) == 2
        assert 0.4 <= srv.arrivals[1] - srv.arrivals[0] < 0.8  # waited as asked, not 0.01 s


def test_retry_after_beyond_the_window_fails_at_once():
    def handle(conn, n, stopping):
        conn.sendall(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 120\r\nContent-Length: 7\r\n\r\nwarming"
        )
        return True

    with ScriptedServer(handle) as srv:
        with RemoteRetriever(srv.url, retries=5, backoff=0.01, retry_window=30) as remote:
            start = time.perf_counter()
            with pytest.raises(RetrievalError) as err:
                remote.search(["a"], 1)
            assert time.perf_counter() - start < 0.5
    message = str(err.value)
    assert "after 1 attempt(s)" in message and "HTTP 503: warming" in message
    assert "30 s retry window" in message and "retry_window=" in message


def test_retry_after_header_forms():
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    from search_env.retrievers.remote import _retry_after

    def with_header(value):
        return httpx.Response(429, headers={} if value is None else {"retry-after": value})

    assert _retry_after(with_header("3")) == 3.0
    assert _retry_after(with_header("-4")) == 0.0
    assert _retry_after(with_header(None)) is None
    assert _retry_after(with_header("soon")) is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < _retry_after(with_header(later)) <= 30


def test_backoff_has_jitter_and_a_cap():
    remote = RemoteRetriever("http://127.0.0.1:9", backoff=1.0, max_backoff=4.0)
    draws = {retry: [remote._delay(retry) for _ in range(200)] for retry in (1, 2, 3, 6)}
    for retry, base in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)):
        assert all(0.5 * base <= d < 1.5 * base for d in draws[retry])
        assert max(draws[retry]) - min(draws[retry]) > 0.4 * base  # spread, not lockstep
    remote.close()


def test_retry_window_bounds_a_call_and_the_message_says_how_to_raise_it():
    url = f"http://127.0.0.1:{free_port()}"
    with RemoteRetriever(
        url, retries=1000, backoff=0.05, max_backoff=0.1, retry_window=0.6
    ) as remote:
        start = time.perf_counter()
        with pytest.raises(RetrievalError) as err:
            remote.search(["q"], 1)
        elapsed = time.perf_counter() - start
    assert 0.3 <= elapsed < 0.6 + 0.2
    message = str(err.value)
    assert "retry window" in message and "raise retries=, retry_window= or timeout=" in message
    assert "retriever_options" in message


def test_default_retry_window_outlasts_a_server_restart(bm25):
    # The defaults keep retrying for 60 s; here a server that comes up 1.5 s late (as one
    # that loads and warms up its index) is reached (backoff shortened for the test).
    port = free_port()
    remote = RemoteRetriever(f"http://127.0.0.1:{port}", backoff=0.1, max_backoff=0.3)
    assert remote.retry_window == 60.0 and remote.retries >= 10 and remote.timeout == 30.0

    def start_late(box: dict) -> None:
        time.sleep(1.5)
        box["server"] = ServerThread(create_app(bm25), port=port).start()

    box: dict = {}
    starter = threading.Thread(target=start_late, args=(box,))
    starter.start()
    try:
        t0 = time.perf_counter()
        got = remote.search(["capital of Norway"], 1)
        assert got[0][0].id == "oslo" and time.perf_counter() - t0 >= 1.5
    finally:
        starter.join()
        remote.close()
        box["server"].stop()


def test_client_option_checks():
    for kwargs, error, message in [
        ({"timeout": 0}, ValueError, "timeout must be > 0"),
        ({"timeout": "5"}, TypeError, "timeout must be a number"),
        ({"retries": -1}, ValueError, "retries must be >= 0"),
        ({"retries": 1.5}, TypeError, "retries must be an int"),
        ({"backoff": 2.0, "max_backoff": 1.0}, ValueError, "max_backoff"),
        ({"retry_window": -1}, ValueError, "retry_window must be >= 0"),
    ]:
        with pytest.raises(error, match=message):
            RemoteRetriever("http://127.0.0.1:9", **kwargs)


def test_env_retriever_options_are_checked(server, tokenizer):
    import gymnasium as gym

    from search_env.types import QAExample

    questions = [QAExample("q", "What is the capital of Norway?", ("Oslo",))]
    with pytest.raises(TypeError, match="timeuot"):
        gym.make(
            "SearchQA-v0",
            dataset=questions,
            retriever=server.url,
            tokenizer=tokenizer,
            retriever_options={"timeuot": 5},
        )
    with pytest.raises(ValueError, match="timeout must be > 0"):
        gym.make(
            "SearchQA-v0",
            dataset=questions,
            retriever=server.url,
            tokenizer=tokenizer,
            retriever_options={"timeout": 0},
        )
    with pytest.raises(
        ValueError, match="retriever_options= configures the client of a retrieval server"
    ):
        gym.make("SearchQA-Synth-v0", size="tiny", retriever_options={"timeout": 5})


def test_parse_response_shapes():
    with_scores = {"result": [[{"document": {"id": "1", "contents": '"T"\nx'}, "score": 2}], []]}
    assert parse_response(with_scores, 2) == [[Passage("1", '"T"\nx', 2.0)], []]
    bare = {"result": [[{"id": 5, "contents": "c"}]]}
    assert parse_response(bare, 1) == [[Passage("5", "c", None)]]
    # The reference's Lucene path: title/text/contents and no id.
    lucene = {
        "document": {"title": "Oslo", "text": "capital", "contents": '"Oslo"\ncapital'},
        "score": 1.5,
    }
    assert parse_passage(lucene) == Passage("", '"Oslo"\ncapital', 1.5)
    assert parse_passage({"title": "Oslo", "text": "capital"}).contents == '"Oslo"\ncapital'
    with pytest.raises(ValueError, match="2 result lists for 3 queries"):
        parse_response(with_scores, 3)
    with pytest.raises(ValueError, match="no 'result' list"):
        parse_response({"detail": "x"}, 1)
    with pytest.raises(ValueError, match="no 'contents'"):
        parse_passage({"document": {"id": "1"}})


def test_bad_answers_are_errors_without_retry():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=b"<html>proxy error</html>")

    with RemoteRetriever(
        "http://127.0.0.1:9/", transport=httpx.MockTransport(handler), backoff=0.01
    ) as remote:
        with pytest.raises(RetrievalError, match="unexpected answer"):
            remote.search(["q"], 1)
    assert len(calls) == 1
    sent = calls[0]
    assert sent.url == "http://127.0.0.1:9/retrieve"
    assert json.loads(sent.content) == {"queries": ["q"], "topk": 1, "return_scores": True}


def test_env_accepts_a_server_url(server, tokenizer):
    """gym.make(..., retriever="http://...") searches through the server."""
    import gymnasium as gym

    from search_env.types import QAExample

    questions = [QAExample("q", "What is the capital of Norway?", ("Oslo",))]
    env = gym.make(
        "SearchQA-v0",
        dataset=questions,
        retriever=server.url,
        tokenizer=tokenizer,
        action_mode="chunk",
        retriever_options={"timeout": 5.0, "retries": 1, "retry_window": 9},
    )
    remote = env.unwrapped.retriever
    assert isinstance(remote, RemoteRetriever)
    assert (remote.timeout, remote.retries, remote.retry_window) == (5.0, 1, 9.0)
    env.reset(options={"index": 0})
    obs, *_, info = env.step(tokenizer.encode("<search> capital of Norway </search>"))
    text = tokenizer.decode(obs["tokens"][: int(obs["length"][0])].tolist())
    assert 'Doc 1(Title: "Oslo") Oslo is the capital of Norway.' in text
    assert info["retrieval_time"] > 0
