"""Traces for an operator: OpenTelemetry's SDK, set up from the standard OTEL_* environment variables.

Traces are on when the environment asks for them: OTEL_TRACES_EXPORTER names `otlp` (or `console`), or it is
unset and an OTLP endpoint is given (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: the
specification's default exporter is OTLP); OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turns them
off. Otherwise nothing of the SDK is imported and chatdock makes no span of its own.

The SDK reads the rest from the environment itself: the OTLP exporter's endpoint, headers and timeout (OTLP
over HTTP with protobuf, the `chatdock[tracing]` extra), the sampler (OTEL_TRACES_SAMPLER and its argument),
the batching (OTEL_BSP_*) and the resource (OTEL_RESOURCE_ATTRIBUTES; the service is named by
OTEL_SERVICE_NAME, else `chatdock`). Under `opentelemetry-instrument`, whose provider is installed first,
chatdock's spans go to that one.

The tracer provider is installed as OpenTelemetry's global one, for that is where the MCP SDK looks for it to
make its span of each MCP request (mcp/server/_otel.py), beneath which chatdock's spans go. The CLI, which
owns the process, installs it once (`start`) and flushes it as it exits.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from chatdock.storage import InvalidInput

logger = logging.getLogger("chatdock")

EXPORTERS: Final = ("otlp", "console")
STOP_SECONDS: Final = 2.0  # the longest a stopping process waits for its last spans to reach the collector
PROTOCOL: Final = "http/protobuf"
INSTALL: Final = "pip install 'chatdock[tracing]'"
SDK_SCOPE: Final = "mcp-python-sdk"  # the MCP SDK's tracer (mcp/shared/_otel.py)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


def exporters(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the environment asks for, none when it asks for no traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if not named:  # an endpoint alone asks for OTLP, in the protocol the variables name (checked below)
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        named = ["otlp"] if endpoint else []
    named = [name for name in named if name != "none"]
    unknown = [name for name in named if name not in EXPORTERS]
    if unknown:
        raise InvalidInput(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}; chatdock exports spans with otlp (OTLP over HTTP) "
            "or console (to stderr): send them to an OpenTelemetry Collector, which forwards them anywhere"
        )
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if "otlp" in named and protocol not in (None, "", PROTOCOL):
        raise InvalidInput(
            f"the OTLP protocol is set to {protocol}; chatdock sends OTLP over HTTP with protobuf: set "
            f"OTEL_EXPORTER_OTLP_PROTOCOL={PROTOCOL} (or leave it unset) and point OTEL_EXPORTER_OTLP_ENDPOINT at "
            "the collector's HTTP port (4318)"
        )
    return named


def start(environ: Mapping[str, str], one_line: bool = False) -> Callable[[], None] | None:
    """Install OpenTelemetry's SDK as the environment asks; the function that flushes and stops it, or None
    (and nothing imported) when the environment asks for no traces. `one_line`: the console exporter writes
    each span on one line (beside log lines that are one JSON object each), not indented."""
    chosen = exporters(environ)
    if not chosen:
        return None
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return _kept  # one is installed already (opentelemetry-instrument): chatdock's spans go to it
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise InvalidInput(f"the OTEL_* variables ask for traces, which need OpenTelemetry's SDK: {INSTALL}") from exc
    resource = Resource.create({})  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, read by the SDK
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "chatdock"}))
    # the sampler: OTEL_TRACES_SAMPLER, read by the SDK; stopped by `stop` below, not at the interpreter's exit
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for name in chosen:
        exporter: SpanExporter
        if name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise InvalidInput(f"exporting spans by OTLP needs OpenTelemetry's OTLP exporter: {INSTALL}") from exc
            exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_*, read by the exporter
        else:
            # stdout carries the protocol over stdio
            exporter = (
                ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")
                if one_line
                else ConsoleSpanExporter(out=sys.stderr)
            )
        provider.add_span_processor(BatchSpanProcessor(_without_messages(exporter)))
    trace.set_tracer_provider(provider)

    def stop() -> None:
        """Flush and stop, waiting at most STOP_SECONDS: a collector that is down or does not answer would hold
        the exit for the exporter's timeout, for each batch left (13 to 19 s were seen), past a supervisor's
        patience; what it has not taken by then is dropped, and the log says so."""
        stopping = threading.Thread(target=provider.shutdown, name="chatdock-tracing-stop", daemon=True)
        stopping.start()
        stopping.join(STOP_SECONDS)
        if stopping.is_alive():
            logger.warning(
                "the last spans were not taken by the collector within %.0f s of stopping (is it up?); they are "
                "dropped",
                STOP_SECONDS,
            )

    return stop


def _without_messages(exporter: SpanExporter) -> SpanExporter:
    """`exporter`, sending the MCP SDK's spans without the text of their errors: the SDK puts an error's message
    in the span's status (`Unknown resource: chatdock://contacts/%2B316.../transcript`, `no prompt named
    '...'`) and an unexpected one's in an exception event, and a message quotes what the request named: a
    contact's id, a name the client chose. What kind of error stays (`error.type`, `rpc.response.status_code`,
    the exception's type); the message is in the client's answer and in chatdock's log."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.trace import Status

    def plain(span: ReadableSpan) -> ReadableSpan:
        scope = span.instrumentation_scope
        if scope is None or scope.name != SDK_SCOPE or not (span.status.description or span.events):
            return span
        events = [
            Event(
                event.name, {"exception.type": str((event.attributes or {}).get("exception.type", ""))}, event.timestamp
            )
            if event.name == "exception"
            else event
            for event in span.events
        ]
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=span.attributes,
            events=events,
            links=span.links,
            kind=span.kind,
            status=Status(span.status.status_code),
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=scope,
        )

    class WithoutMessages(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return exporter.export([plain(span) for span in spans])

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return exporter.force_flush(timeout_millis)

    return WithoutMessages()


def _kept() -> None:
    """A tracer provider chatdock did not install is flushed by whoever installed it."""
