"""OpenTelemetry spans per request and per backend attempt (SPEC §8; the optional C{llmhop[otel]} extra).

Configured only by the standard variables: spans are exported over OTLP/HTTP
when C{OTEL_EXPORTER_OTLP_ENDPOINT} or C{OTEL_EXPORTER_OTLP_TRACES_ENDPOINT}
is set (and neither C{OTEL_SDK_DISABLED=true} nor C{OTEL_TRACES_EXPORTER=none}
says otherwise); every other C{OTEL_*} variable (service name, headers,
sampler, batch delays, propagators) works as the SDK documents it.  Not
configured, or the extra not installed, nothing of OpenTelemetry is imported
and a request pays one attribute check.

Spans follow the GenAI semantic conventions: a SERVER span per forwarded
request named C{"{gen_ai.operation.name} {gen_ai.request.model}"}, with the
answer's token usage, and a CLIENT span per backend attempt (a retry or a
fallback is one more), whose context goes to the backend in C{traceparent}.
A client's C{traceparent} makes the request span its child.
"""

import os
from collections.abc import Mapping
from typing import Any, Optional

import attrs
from twisted.logger import Logger
from twisted.web.http_headers import Headers

_log = Logger()

# The API path's last segments → gen_ai.operation.name.
_OPERATIONS = (
    (b"/chat/completions", "chat"),
    (b"/completions", "text_completion"),
    (b"/embeddings", "embeddings"),
    (b"/messages", "chat"),
    (b"/responses", "chat"),
)
_PROPAGATED = (b"traceparent", b"tracestate", b"baggage")


def from_environment(environ: Mapping[str, str] = os.environ) -> Optional["Tracing"]:
    """The process's tracing when the OTEL_* variables ask for it and the extra is installed, else None."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "otlp":
        return None
    if not (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        _log.warn("OTEL_EXPORTER_OTLP_ENDPOINT is set, but llmhop[otel] is not installed: no spans are exported")
        return None
    # OTEL_SERVICE_NAME, when set, names the service; else llmhop does.
    resource = Resource.create({} if environ.get("OTEL_SERVICE_NAME") else {"service.name": "llmhop"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)


@attrs.define
class Tracing:
    """The tracer provider of this process, and the spans it makes."""

    provider: Any
    # The one tracer every span comes from (got once: get_tracer builds one a call).
    tracer: Any = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.tracer = self.provider.get_tracer("llmhop")

    def request(self, method: bytes, path: bytes, headers: Headers) -> "RequestSpan":
        """Start the span of a forwarded request, the child of the client's C{traceparent} if it sent one."""
        from opentelemetry import propagate, trace

        carrier = _carrier(headers)
        operation = _operation(path)
        span = self.tracer.start_span(
            operation,
            context=propagate.extract(carrier) if carrier else None,
            kind=trace.SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": "openai",
                "http.request.method": method.decode("ascii", "replace"),
                "url.path": path.decode("ascii", "replace"),
            },
        )
        return RequestSpan(self, span, operation)

    def shutdown(self) -> None:
        """Export what is left (on stop)."""
        self.provider.shutdown()


@attrs.define
class RequestSpan:
    """A forwarded request's span: named once its model is known, ended with its answer."""

    tracing: Tracing
    span: Any
    operation: str

    def routed(self, model: str, route: str, token: str) -> None:
        self.span.update_name("%s %s" % (self.operation, model))
        self.span.set_attribute("gen_ai.request.model", model)
        self.span.set_attribute("llmhop.route", route)
        if token:
            self.span.set_attribute("llmhop.token", token)

    def attempt(self, url: str, host: bytes, headers: Headers) -> "AttemptSpan":
        """Start a backend attempt's span, and put its context in C{headers} for the backend."""
        from opentelemetry import propagate, trace

        name, _, port = host.decode("ascii", "replace").rpartition(":")
        span = self.tracing.tracer.start_span(
            self.span.name,
            context=trace.set_span_in_context(self.span),
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": self.operation,
                "gen_ai.provider.name": "openai",
                "server.address": name or host.decode("ascii", "replace"),
                **({"server.port": int(port)} if port.isdigit() else {}),
                "llmhop.replica": url,
            },
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        for field in _PROPAGATED:
            headers.removeHeader(field)
        for key, value in carrier.items():
            headers.setRawHeaders(key.encode("ascii"), [value.encode("ascii")])
        return AttemptSpan(span)

    def usage(self, prompt: int, completion: int) -> None:
        self.span.set_attribute("gen_ai.usage.input_tokens", prompt)
        self.span.set_attribute("gen_ai.usage.output_tokens", completion)

    def ended(self, status: Optional[int], outcome: str) -> None:
        if status is not None:
            self.span.set_attribute("http.response.status_code", status)
        if outcome or (status is not None and status >= 500):
            _failed(self.span, outcome or str(status))
        self.span.end()


@attrs.define
class AttemptSpan:
    span: Any

    def answered(self, status: int) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if status >= 400:
            _failed(self.span, str(status))
        self.span.end()

    def failed(self, kind: str) -> None:
        _failed(self.span, kind)
        self.span.end()


def _failed(span: Any, kind: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR))


def _carrier(headers: Headers) -> dict[str, str]:
    carrier = {}
    for key in _PROPAGATED:
        values = headers.getRawHeaders(key)
        if values:
            carrier[key.decode("ascii")] = values[0].decode("latin-1")
    return carrier


def _operation(path: bytes) -> str:
    for suffix, operation in _OPERATIONS:
        if path.endswith(suffix):
            return operation
    return "llmhop"
