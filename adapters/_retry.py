"""Retries of transient database failures, with bounded exponential backoff and jitter, at the adapter boundary.

Every `VectorStore` method that talks to a database is wrapped once, by name, for every adapter
(`StoreBase` applies `apply_retries` to itself and to each subclass): the calls in `RETRIED` run
through `RetryPolicy.call`, the page streams in `RETRIED_PAGES` through `RetryPolicy.pages`, which
resumes behind the last page it yielded. A method added to the protocol is covered by adding its
name to one of the two tuples.

Only failures that `is_transient` accepts are retried: connection refused or reset, timeouts,
"service unavailable", gRPC UNAVAILABLE / DEADLINE_EXCEEDED, HTTP 429/502/503/504. Schema errors,
bad input and missing collections are raised at once. Every retried method is idempotent (writes
are upserts by id, creates and alias moves check what exists first), so repeating one is harmless.

Bounds: one attempt waits at most ``timeout`` for each request (the clients' own deadline), the
pauses between attempts grow as ``backoff * 2**k`` capped at ``max_backoff`` (each drawn in
``[cap/2, cap]``), and there are at most ``retries + 1`` attempts. A database that is gone (refused
or reset connections) therefore fails an operation within ``timeout`` (a request in flight when it
died) plus `RetryPolicy.budget` (the pauses); one that accepts connections and never answers, within
``(retries + 1) * timeout + budget``. The error raised then is one `StoreError` line naming the
database (its URI without secrets), the operation and the attempts made.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from csr_vdb.errors import CollectionNotFoundError, ConfigError, DataError, MigrationError, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIED: tuple[str, ...] = (
    "list_collections",
    "has_collection",
    "describe",
    "count",
    "create_dense_collection",
    "insert_dense",
    "create_sparse_collection",
    "upsert",
    "delete",
    "set_payload",
    "search_sparse",
    "search_candidates",
    "search_dense",
    "fetch",
    "get_alias",
    "set_alias",
    "drop_alias",
    "drop",
    "flush",
)
"""Protocol methods retried as a whole on a transient failure."""

RETRIED_PAGES: tuple[str, ...] = ("iter_dense", "iter_payloads")
"""Protocol methods that stream pages: a transient failure resumes behind the last page yielded."""

DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 10.0
DEFAULT_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 8.0

_PERMANENT = (CollectionNotFoundError, DataError, ConfigError, MigrationError)
_TRANSIENT_ERRNO = {
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET,
}
_TRANSIENT_GRPC = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
_TRANSIENT_HTTP = {429, 502, 503, 504}
# Client exception classes (matched by name: this module imports no client) that mean the
# request never got an answer: httpx's transport errors and their qdrant-client wrapper.
_TRANSIENT_CLASSES = {
    "ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "ReadError",
    "WriteError", "RemoteProtocolError", "NetworkError", "TimeoutException", "ProtocolError",
}
# What the clients say when the server is gone; checked on the lower-cased message last.
_TRANSIENT_TEXT = (
    "connection refused", "connection reset", "connection aborted", "broken pipe", "service unavailable",
    "server unavailable", "statuscode.unavailable", "deadline exceeded", "deadline_exceeded", "timed out",
    "failed to connect", "fail connecting", "socket closed", "connection closed", "temporarily unavailable",
)


def is_transient(exc: BaseException, also: Callable[[BaseException], bool] | None = None) -> bool:
    """True when ``exc`` (or an exception it was raised from) says the database did not answer.

    The chain is followed through ``__cause__`` (else ``__context__``), so an adapter's `StoreError`
    raised ``from`` a client error is judged by that error. Missing collections, bad data,
    configuration and migration errors are never transient. ``also`` adds an adapter's own
    recoverable failures (Milvus: a collection a restarted server holds released).
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 16:
        seen.add(id(link))
        if isinstance(link, _PERMANENT):
            return False
        if _looks_transient(link) or (also is not None and also(link)):
            return True
        link = link.__cause__ if link.__cause__ is not None else link.__context__
    return False


def _looks_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNO:
        return True
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError.code() -> grpc.StatusCode
        try:
            name = getattr(code(), "name", "")
        except Exception:  # noqa: BLE001 - a foreign code() that needs arguments
            name = ""
        if name in _TRANSIENT_GRPC:
            return True
    status = getattr(exc, "status_code", None)  # qdrant_client UnexpectedResponse, httpx
    if isinstance(status, int) and status in _TRANSIENT_HTTP:
        return True
    if any(c.__name__ in _TRANSIENT_CLASSES for c in type(exc).__mro__):
        return True
    text = str(getattr(exc, "message", None) or exc).lower()
    return any(t in text for t in _TRANSIENT_TEXT)


class _Depth(threading.local):
    """How deep the current thread is inside retried calls: only the outermost one retries."""

    value = 0


_depth = _Depth()


@dataclass(frozen=True)
class RetryPolicy:
    """How a store retries transient failures.

    Attributes:
        retries: attempts after the first (0: fail at the first transient error).
        timeout: seconds one request may wait for the database (the clients' deadline).
        backoff: the first pause, in seconds; each further pause doubles it.
        max_backoff: the cap on one pause.
        sleep, clock, rng: injectable for tests (a recorded sleep, a fixed seed).
    """

    retries: int = DEFAULT_RETRIES
    timeout: float = DEFAULT_TIMEOUT
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"retries must be a non-negative integer, got {self.retries!r}")
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout!r}")
        if self.backoff < 0 or self.max_backoff < self.backoff:
            raise ConfigError(f"need 0 <= backoff <= max_backoff, got {self.backoff} and {self.max_backoff}")

    def cap(self, k: int) -> float:
        """The longest pause before retry ``k + 1`` (k = 0 for the first retry)."""
        return min(self.max_backoff, self.backoff * 2.0**k)

    def pause(self, k: int) -> float:
        """The pause before retry ``k + 1``: drawn in ``[cap/2, cap]`` so that workers spread out."""
        c = self.cap(k)
        return c * (0.5 + 0.5 * self.rng.random())

    @property
    def budget(self) -> float:
        """The most time all pauses of one operation can take."""
        return sum(self.cap(k) for k in range(self.retries))

    def bound(self, requests: int = 1) -> float:
        """The longest an operation of ``requests`` hanging requests per attempt can take to fail."""
        return (self.retries + 1) * requests * self.timeout + self.budget

    # ------------------------------------------------------------------ running
    def call(
        self,
        fn: Callable[[], T],
        *,
        what: str,
        where: str,
        reset: Callable[[], None] | None = None,
        also: Callable[[BaseException], bool] | None = None,
    ) -> T:
        """Run ``fn``, retrying it on transient failures.

        Args:
            fn: the operation (called again from the start on each attempt).
            what: the operation's name for messages ("upsert").
            where: the database, as a URI without secrets.
            reset: called before each retry (an adapter forgets state the server may have lost).
            also: an adapter's own recoverable failures (`is_transient`'s ``also``).

        Raises:
            StoreError: the last failure, once the attempts are used up, naming ``where``,
                ``what`` and the attempts; a permanent failure at once, unchanged.
        """
        if _depth.value:
            return fn()  # an enclosing retried call owns the retries
        t0 = self.clock()
        attempt = 0
        while True:
            _depth.value += 1
            try:
                return fn()
            except BaseException as exc:  # noqa: BLE001 - judged, then re-raised or retried
                if not isinstance(exc, Exception) or not is_transient(exc, also):
                    raise
                if attempt >= self.retries:
                    raise self._gave_up(exc, what, where, attempt + 1, self.clock() - t0) from exc
                pause = self.pause(attempt)
                log.info(
                    "%s at %s failed (%s); retry %d of %d in %.2f s",
                    what, where, _line(exc), attempt + 1, self.retries, pause,
                )
            finally:
                _depth.value -= 1
            attempt += 1
            self.sleep(pause)
            if reset is not None:
                reset()

    def pages(
        self,
        start: Callable[[Any], Iterator[Any]],
        cursor: Any,
        *,
        what: str,
        where: str,
        reset: Callable[[], None] | None = None,
        also: Callable[[BaseException], bool] | None = None,
    ) -> Iterator[Any]:
        """Yield the pages of ``start(cursor)``; on a transient failure call ``start`` again behind
        the last page yielded (its ``cursor``). The attempts count again from zero after every page."""
        it: Iterator[Any] | None = None
        while True:

            def step() -> tuple[bool, Any]:
                nonlocal it
                if it is None:
                    it = start(cursor)
                try:
                    return True, next(it)
                except StopIteration:
                    return False, None
                except BaseException:
                    it = None  # a failed generator is finished: the next attempt starts a new one
                    raise

            more, page = self.call(step, what=what, where=where, reset=reset, also=also)
            if not more:
                return
            cursor = page.cursor
            yield page

    def _gave_up(self, exc: BaseException, what: str, where: str, attempts: int, secs: float) -> StoreError:
        note = f" ({what}: gave up after {attempts} attempts in {secs:.1f} s)" if attempts > 1 else ""
        if isinstance(exc, StoreError):
            return StoreError(f"{_line(exc)}{note}")
        return StoreError(f"{what} failed for {where}: {_line(exc)}{note}")


def _line(exc: BaseException) -> str:
    """One line of an exception's message."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return " ".join(text.split()) if text else type(exc).__name__


# ---------------------------------------------------------------------- wiring
def _retried(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        policy = getattr(self, "retry_policy", None)
        if policy is None:
            return fn(self, *args, **kwargs)
        return policy.call(
            lambda: fn(self, *args, **kwargs), what=fn.__name__, where=self.uri, reset=self._after_failure,
            also=self._recoverable,
        )

    wrapper.__retried__ = True  # type: ignore[attr-defined]
    return wrapper


def _retried_pages(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        policy = getattr(self, "retry_policy", None)
        if policy is None or _depth.value:
            return fn(self, *args, **kwargs)
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        first = bound.arguments.get("cursor")
        if first is None and bound.arguments.get("after") is not None:
            first = bound.arguments["after"]  # the deprecated spelling, checked by the first call

        def start(cursor: Any) -> Iterator[Any]:
            if cursor is not first:  # a resumed scan continues behind the last page yielded
                bound.arguments["cursor"] = cursor
                if "after" in bound.arguments:
                    bound.arguments["after"] = None
            return fn(*bound.args, **bound.kwargs)

        return policy.pages(
            start, first, what=fn.__name__, where=self.uri, reset=self._after_failure, also=self._recoverable
        )

    wrapper.__retried__ = True  # type: ignore[attr-defined]
    return wrapper


def apply_retries(cls: type) -> type:
    """Wrap the methods of `RETRIED` / `RETRIED_PAGES` that ``cls`` itself defines (once each)."""
    for names, wrap in ((RETRIED, _retried), (RETRIED_PAGES, _retried_pages)):
        for name in names:
            fn = cls.__dict__.get(name)
            if callable(fn) and not getattr(fn, "__retried__", False):
                setattr(cls, name, wrap(fn))
    return cls

