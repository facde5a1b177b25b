"""Spans of the store's work, made with OpenTelemetry's API: which tracer provider records them, and where they
go, is the server's choice (server/ops/tracing.py). Imported only when a store is opened with tracing on.

- `trace_calls(store)`: each call of the store in a span of its own, `chatdock.store append_message`.
- `TracedSql`: an engine's SQL beneath it: `sqlite read` for a statement that reads, `sqlite write` for a
  write's statements, run on the writer thread (`on_thread` carries the caller's trace there), and the same
  for `postgresql`.

A span is made only beneath one that is recorded, that is within a request that is traced and sampled: the
store's background work (following the change feed, noting when a key was last used) and the requests a
sampler leaves out cost one look at the current span.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from .errors import ChatdockError, Unavailable
from .telemetry import SqlSpans

if TYPE_CHECKING:
    from .store import Store

T = TypeVar("T")
C = TypeVar("C")

_tracer = trace.get_tracer("chatdock.storage")


def recording() -> bool:
    """Whether a span is being recorded here (a traced and sampled request is under way)."""
    return trace.get_current_span().is_recording()


# Calls without a span of their own: the key check of every HTTP request, nearly always answered from memory
# (when it reads, its SQL's span shows beneath the request's).
UNTRACED = frozenset({"verify_api_key"})


def trace_calls(store: Store) -> None:
    """Put each public call of `store` in a span of its own; its organization is an attribute of the span."""
    for name, method in inspect.getmembers(type(store), inspect.iscoroutinefunction):
        if not name.startswith("_") and name not in UNTRACED:
            takes_org = list(inspect.signature(method).parameters)[1:2] == ["org"]
            setattr(store, name, _traced(f"chatdock.store {name}", getattr(store, name), takes_org))


def _traced(
    name: str, call: Callable[..., Coroutine[Any, Any, T]], takes_org: bool
) -> Callable[..., Coroutine[Any, Any, T]]:
    @functools.wraps(call)
    async def traced(*args: Any, **kwargs: Any) -> T:
        if not recording():
            return await call(*args, **kwargs)
        org = args[0] if takes_org and args else kwargs.get("org") if takes_org else None
        span = _tracer.start_span(name, attributes={"chatdock.org": org} if isinstance(org, str) else None)
        token = otel_context.attach(trace.set_span_in_context(span))  # its SQL goes beneath it
        try:
            return await call(*args, **kwargs)
        except Exception as exc:
            _failed(span, exc)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    return traced


def _failed(span: Span, exc: BaseException) -> None:
    """Mark `span` with what went wrong: a refusal by the contract (NotFound, InvalidInput, ...) is an answer,
    named by its type only; the database failing and a bug are errors, with the exception's trace for them."""
    span.set_attribute("error.type", type(exc).__name__)
    if isinstance(exc, ChatdockError) and not isinstance(exc, Unavailable):
        return
    if not isinstance(exc, ChatdockError):
        span.record_exception(exc)
    span.set_status(StatusCode.ERROR, str(exc))


class _Statement:
    """A span of SQL, beneath which nothing goes: started, and ended on leaving, but never made the current span
    (a span of its own costs less so)."""

    __slots__ = ("_failures", "_span")

    def __init__(self, span: Span, failures: tuple[type[BaseException], ...]) -> None:
        self._span = span
        self._failures = failures

    def __enter__(self) -> Span:
        return self._span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, self._failures):  # not the engine's own ways to undo a write (Undo)
            _failed(self._span, exc)
        self._span.end()


class TracedSql(SqlSpans):
    """The spans of one engine's SQL (see the module's docstring)."""

    def __init__(self, system: str, namespace: str, failures: tuple[type[BaseException], ...]) -> None:
        self._system = system
        self._attributes = {"db.system.name": system, "db.namespace": namespace}
        self._read, self._write = f"{system} read", f"{system} write"
        self._failures = (*failures, ChatdockError)

    def read(self, sql: str) -> AbstractContextManager[object]:
        if not recording():
            return super().read(sql)
        attributes = {**self._attributes, "db.operation.name": "SELECT", "db.query.text": sql}
        return _Statement(_tracer.start_span(self._read, kind=SpanKind.CLIENT, attributes=attributes), self._failures)

    def write(self, name: str = "write") -> AbstractContextManager[object]:
        if not recording():
            return super().write(name)
        named = self._write if name == "write" else f"{self._system} {name}"
        return _Statement(_tracer.start_span(named, kind=SpanKind.CLIENT, attributes=self._attributes), self._failures)

    def on_thread(self, job: Callable[[C], T]) -> Callable[[C], T]:
        if not recording():
            return job
        caller = otel_context.get_current()  # the span of the call that asked, which the thread knows nothing of

        def traced(conn: C) -> T:
            attributes = {**self._attributes, "thread.name": threading.current_thread().name}
            span = _tracer.start_span(self._write, caller, SpanKind.CLIENT, attributes)
            with _Statement(span, self._failures):
                return job(conn)

        return traced
