"""Retries of transient database failures: the policy, what counts as transient, every adapter wired,
real adapter code behind a fake transport that fails its first calls, and real dead / restarted /
silent servers."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections import Counter

import grpc
import httpx
import numpy as np
import pytest
from pymilvus import MilvusException
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from csr_vdb.adapters import open_store
from csr_vdb.adapters._retry import RETRIED, RETRIED_PAGES, RetryPolicy, is_transient
from csr_vdb.adapters.memory import MemoryStore
from csr_vdb.adapters.milvus import MilvusStore
from csr_vdb.adapters.qdrant import QdrantStore
from csr_vdb.adapters.qdrant_edge import QdrantEdgeStore
from csr_vdb.errors import CollectionNotFoundError, ConfigError, DataError, StoreError
from csr_vdb.store import VectorStore
from tests.adapters.conftest import free_port
from tests.helpers import ProjectionEncoder, clustered

DIM = 8
SLACK_S = 60.0  # process and import overhead on a busy machine: a hang shows as minutes, not seconds


class Sleeps(list):
    """A recorded `time.sleep` (pauses are checked, never slept)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def quick(retries: int = 3, **kw) -> tuple[RetryPolicy, Sleeps]:
    sleeps = Sleeps()
    return RetryPolicy(retries=retries, backoff=0.5, max_backoff=2.0, sleep=sleeps, **kw), sleeps


class Grpc(grpc.RpcError):
    """A gRPC error with a status code, as grpc's own call errors report it."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


# ---------------------------------------------------------------------------- what is transient
@pytest.mark.parametrize(
    "exc, transient",
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), True),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (OSError(errno.EHOSTUNREACH, "No route to host"), True),
        (Grpc(grpc.StatusCode.UNAVAILABLE), True),
        (Grpc(grpc.StatusCode.DEADLINE_EXCEEDED), True),
        (Grpc(grpc.StatusCode.INVALID_ARGUMENT), False),
        (Grpc(grpc.StatusCode.NOT_FOUND), False),
        # what pymilvus 3 raises when the server is gone (seen against a killed milvus-lite server)
        (MilvusException(code=2, message="Fail connecting to server on 127.0.0.1:1, illegal connection "
                                         "params or server unavailable"), True),
        (MilvusException(code=1100, message="invalid parameter: field vector not found"), False),
        (MilvusException(code=100, message="collection not found[collection=docs]"), False),
        (httpx.ConnectError("[Errno 111] Connection refused"), True),
        (httpx.ReadTimeout("timed out"), True),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), True),
        (ResponseHandlingException(httpx.ConnectError("[Errno 111] Connection refused")), True),
        (UnexpectedResponse(503, "Service Unavailable", b"", httpx.Headers()), True),
        (UnexpectedResponse(429, "Too Many Requests", b"", httpx.Headers()), True),
        (UnexpectedResponse(400, "Bad Request", b'{"status":{"error":"Wrong input"}}', httpx.Headers()), False),
        (UnexpectedResponse(404, "Not Found", b"", httpx.Headers()), False),
        (ValueError("Collection docs not found"), False),
        (DataError("NaN at ids [3]"), False),
        (ConfigError("bad batch size"), False),
        (StoreError("collection 'x' has no sparse field 'csr'"), False),
    ],
)
def test_what_counts_as_transient(exc, transient):
    assert is_transient(exc) is transient


def test_the_chain_decides_and_permanent_errors_win():
    assert is_transient(chained(StoreError("Milvus upsert failed"), ConnectionResetError("reset")))
    assert not is_transient(chained(StoreError("Milvus upsert failed"), ValueError("bad row")))
    # a missing collection is final even when the lookup met a network error on the way
    assert not is_transient(chained(CollectionNotFoundError("no 'docs'"), ConnectionResetError("reset")))
    # `raise ... from None` keeps the client error as the (hidden) context
    try:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError:
            raise StoreError("cannot connect to Milvus at http://h:1") from None
    except StoreError as exc:
        assert is_transient(exc)
    loop = StoreError("x")
    loop.__cause__ = loop  # pymilvus raises `e from e`: the walk must end
    assert not is_transient(loop)


# ---------------------------------------------------------------------------- the policy
def test_pauses_grow_are_capped_and_jittered():
    policy, _ = quick(retries=5)
    assert [policy.cap(k) for k in range(5)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert policy.budget == pytest.approx(7.5)
    assert policy.bound(requests=1) == pytest.approx(6 * policy.timeout + 7.5)
    draws = [policy.pause(k) for k in range(5) for _ in range(50)]
    caps = [policy.cap(k) for k in range(5) for _ in range(50)]
    assert all(c / 2 <= d <= c for d, c in zip(draws, caps))
    assert len(set(draws)) > 200  # jitter: workers that failed together do not retry together


@pytest.mark.parametrize("bad", [dict(retries=-1), dict(retries=True), dict(timeout=0), dict(backoff=3, max_backoff=1)])
def test_policy_refuses_bad_settings(bad):
    with pytest.raises(ConfigError):
        RetryPolicy(**bad)


def test_transient_failures_are_retried_until_success():
    policy, sleeps = quick()
    calls = []

    def op():
        calls.append(1)
        if len(calls) <= 2:
            raise StoreError("Milvus upsert failed") from ConnectionResetError("reset by peer")
        return 7

    resets = []
    assert policy.call(op, what="upsert", where="http://h:1", reset=lambda: resets.append(1)) == 7
    assert len(calls) == 3 and len(sleeps) == 2 and len(resets) == 2
    assert policy.cap(0) / 2 <= sleeps[0] <= policy.cap(0) and policy.cap(1) / 2 <= sleeps[1] <= policy.cap(1)


def test_permanent_failures_are_raised_at_once():
    policy, sleeps = quick()
    for exc in (StoreError("collection 'docs' has another schema"), DataError("NaN"), CollectionNotFoundError("x")):
        calls = []

        def op(exc=exc):
            calls.append(1)
            raise exc

        with pytest.raises(type(exc)) as got:
            policy.call(op, what="upsert", where="http://h:1")
        assert got.value is exc and len(calls) == 1
    assert sleeps == []


def test_past_the_budget_one_store_error_names_database_operation_and_attempts():
    policy, sleeps = quick(retries=3)
    calls = []

    def op():
        calls.append(1)
        raise StoreError("Milvus query failed for collection 'docs' in http://127.0.0.1:9") from ConnectionRefusedError(
            "Connection refused"
        )

    with pytest.raises(StoreError) as got:
        policy.call(op, what="iter_dense", where="http://127.0.0.1:9")
    msg = str(got.value)
    assert len(calls) == 4 and len(sleeps) == 3 and sum(sleeps) <= policy.budget
    assert "\n" not in msg and "http://127.0.0.1:9" in msg and "iter_dense" in msg and "gave up after 4 attempts" in msg
    assert type(got.value) is StoreError and got.value.exit_code == 5


def test_only_the_outermost_call_retries():
    policy, sleeps = quick(retries=2)
    inner_calls = []

    def inner():
        inner_calls.append(1)
        raise ConnectionResetError("reset")

    with pytest.raises(StoreError):
        policy.call(lambda: policy.call(inner, what="inner", where="u"), what="outer", where="u")
    assert len(inner_calls) == 3 and len(sleeps) == 2  # 3 attempts, not 3 x 3


def test_pages_resume_behind_the_last_page_yielded():
    class Page(list):
        @property
        def cursor(self):
            return self[-1]

    rows = list(range(10))
    starts, failed = [], []

    def start(cursor):
        starts.append(cursor)
        for a in range(0 if cursor is None else rows.index(cursor) + 1, len(rows), 3):
            if a >= 6 and not failed:
                failed.append(a)
                raise ConnectionResetError("reset while reading a page")
            yield Page(rows[a : a + 3])

    policy, sleeps = quick()
    pages = list(policy.pages(start, None, what="iter_dense", where="u"))
    assert [r for p in pages for r in p] == rows  # nothing lost, nothing twice
    assert starts == [None, 5] and len(sleeps) == 1


# ---------------------------------------------------------------------------- every adapter wired
def test_every_protocol_method_that_talks_to_a_database_is_retried():
    members = {n for n in dir(VectorStore) if not n.startswith("_") and callable(getattr(VectorStore, n))}
    assert members - {"close"} == set(RETRIED) | set(RETRIED_PAGES), "a protocol method lacks retries"
    for cls in (MilvusStore, QdrantStore, QdrantEdgeStore, MemoryStore):
        for name in (*RETRIED, *RETRIED_PAGES):
            assert getattr(getattr(cls, name), "__retried__", False), f"{cls.__name__}.{name} is not retried"


# ---------------------------------------------------------------------------- fake transport
class Flaky:
    """A client whose calls of the named methods fail (``error()``) at the given call numbers (1-based,
    per method); everything else goes to the real client."""

    def __init__(self, client, error, fail: dict[str, set[int]]) -> None:
        self._client, self._error, self._fail = client, error, fail
        self.calls: Counter = Counter()
        self.failed: Counter = Counter()

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name not in self._fail or not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls[name] += 1
            if self.calls[name] in self._fail[name]:
                self.failed[name] += 1
                raise self._error()
            return attr(*args, **kwargs)

        return call


def _milvus_down():
    return MilvusException(code=2, message="Fail connecting to server on 127.0.0.1:19530, illegal connection "
                                           "params or server unavailable")


def _qdrant_down():
    return ResponseHandlingException(httpx.ConnectError("[Errno 111] Connection refused"))


# kind -> (open, the client methods behind upsert and iter_dense, a transient error, a permanent one)
FAKE = {
    "milvus-lite": (lambda p: MilvusStore(str(p / "m.db")), "insert", "query", _milvus_down,
                    lambda: MilvusException(code=1100, message="invalid parameter: dim mismatch")),
    "qdrant-local": (lambda p: QdrantStore(str(p / "q")), "upsert", "scroll", _qdrant_down,
                     lambda: UnexpectedResponse(400, "Bad Request", b"{}", httpx.Headers())),
}


@pytest.fixture(params=sorted(FAKE))
def flaky_store(request, tmp_path):
    opener, write, read, down, bad = FAKE[request.param]
    store = opener(tmp_path)
    x, _ = clustered(300, DIM)
    store.create_dense_collection("src", DIM, id_type="int")
    store.insert_dense("src", list(range(300)), x, [{"n": i} for i in range(300)])
    store.flush("src")
    store.create_sparse_collection("src_csr", "src")
    policy, sleeps = quick(retries=3)
    store.retry_policy = policy
    yield store, x, (write, read, down, bad), sleeps
    store.close()


def test_fake_transport_write_failures_are_retried_and_written_once(flaky_store):
    store, x, (write, _, down, _), sleeps = flaky_store
    store._client = flaky = Flaky(store._client, down, {write: {1, 2}})
    ids = list(range(0, 300, 3))
    store.upsert("src_csr", ids, ProjectionEncoder(DIM)(x[ids]), [{"n": i} for i in ids], dense=x[ids])
    assert flaky.failed[write] == 2 and flaky.calls[write] == 3 and len(sleeps) == 2
    got = store.fetch("src_csr", ids, with_sparse=True)
    assert [r.id for r in got] == ids and all(r.payload == {"n": r.id} for r in got)
    assert store.count("src_csr") == len(ids)


def test_fake_transport_read_failures_resume_the_scan_exactly(flaky_store):
    store, _, (_, read, down, _), sleeps = flaky_store
    clean = [i for page in store.iter_dense("src", 40) for i in page.ids]
    store._client = flaky = Flaky(store._client, down, {read: {3, 4, 7}})
    pages = list(store.iter_dense("src", 40))
    got = [i for page in pages for i in page.ids]
    assert got == clean == list(range(300))
    assert flaky.failed[read] == 3 and len(sleeps) == 3
    assert all(p.payloads == [{"n": i} for i in p.ids] for p in pages)
    flaky._fail[read] = {flaky.calls[read] + 1}  # the payload scan too
    payloads = list(store.iter_payloads("src", 40, cursor=99))
    assert [i for p in payloads for i in p.ids] == list(range(100, 300)) and len(sleeps) == 4
    assert all(p.payloads == [{"n": i} for i in p.ids] for p in payloads)


def test_fake_transport_permanent_errors_are_not_retried(flaky_store):
    store, x, (write, _, _, bad), sleeps = flaky_store
    store._client = flaky = Flaky(store._client, bad, {write: {1, 2, 3}})
    with pytest.raises(StoreError) as got:
        store.upsert("src_csr", [1], ProjectionEncoder(DIM)(x[:1]), dense=x[:1])
    assert flaky.calls[write] == 1 and sleeps == [] and "gave up" not in str(got.value)


def test_fake_transport_past_the_budget(flaky_store):
    store, x, (write, _, down, _), sleeps = flaky_store
    store._client = flaky = Flaky(store._client, down, {write: set(range(1, 100))})
    with pytest.raises(StoreError) as got:
        store.upsert("src_csr", [1], ProjectionEncoder(DIM)(x[:1]), dense=x[:1])
    msg = str(got.value)
    assert flaky.calls[write] == 4 and len(sleeps) == 3
    assert "\n" not in msg and store.uri in msg and "upsert" in msg and "gave up after 4 attempts" in msg


# ---------------------------------------------------------------------------- real servers
def test_a_port_nobody_listens_on_fails_within_the_bound():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(StoreError) as got:
        open_store("milvus", uri, timeout=2.0, retries=2)
    secs = time.monotonic() - t0
    msg = str(got.value)
    assert secs < RetryPolicy(retries=2, timeout=2.0).bound() + SLACK_S  # never hangs
    assert "\n" not in msg and uri in msg and "connect: gave up after 3 attempts" in msg


def test_a_server_that_never_answers_fails_within_the_bound():
    """A socket that accepts connections and says nothing: every request must end at its deadline."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()) for _ in iter(int, 1)], daemon=True).start()
    uri = f"http://127.0.0.1:{srv.getsockname()[1]}"
    try:
        for kind in ("milvus", "qdrant"):
            t0 = time.monotonic()
            with pytest.raises(StoreError) as got:
                open_store(kind, uri, timeout=1.0, retries=1)
            assert time.monotonic() - t0 < RetryPolicy(retries=1, timeout=1.0).bound() + SLACK_S
            assert uri in str(got.value) and "gave up after 2 attempts" in str(got.value)
    finally:
        srv.close()


@pytest.mark.slow
def test_killed_server_fails_each_operation_then_a_restart_is_ridden_out(milvus_server):
    store = open_store("milvus", milvus_server.uri, timeout=5.0, retries=2)
    x, _ = clustered(500, DIM)
    store.create_dense_collection("docs", DIM)
    store.insert_dense("docs", list(range(500)), x, [{"n": i} for i in range(500)])
    milvus_server.kill()
    for op in (lambda: store.count("docs"), lambda: store.list_collections(), lambda: store.get_alias("a")):
        t0 = time.monotonic()
        with pytest.raises(StoreError) as got:
            op()
        assert time.monotonic() - t0 < store.retry_policy.bound() + SLACK_S
        assert milvus_server.uri in str(got.value) and "gave up after 3 attempts" in str(got.value)
    # with a budget longer than a restart, the same call waits for the server and succeeds
    store.retry_policy = RetryPolicy(retries=12, timeout=5.0)
    restart = threading.Thread(target=lambda: (time.sleep(1.0), milvus_server.start()))
    restart.start()
    try:
        assert store.count("docs") == 500  # acknowledged rows survived the SIGKILL
        page = next(iter(store.iter_dense("docs", 100)))
        assert page.ids == list(range(100)) and np.allclose(page.vectors, x[:100], atol=1e-6)
    finally:
        restart.join()
        store.close()
