"""OpenTelemetry spans (SPEC §8, llmhop[otel]): exported over OTLP/HTTP to an in-process receiver.

The receiver decodes what the router's exporter sends with OpenTelemetry's
own protobuf definitions; a leg without the extra skips these tests.
"""

import http.client
import http.server
import json
import subprocess
import sys
import threading

import pytest

from tests.e2e.procs import env, wait_for
from tests.helpers import dead_url

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: the spans it was sent, by name."""

    def __init__(self):
        self.spans = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service.ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            receiver.spans.append((service, span))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % (self.server.server_address[1],)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def attributes(span):
    out = {}
    for attribute in span.attributes:
        value = attribute.value
        out[attribute.key] = value.int_value if value.HasField("int_value") else value.string_value
    return out


def test_a_request_and_its_attempts_are_spans_with_genai_attributes(start_router, backend_process, receiver):
    router = start_router(
        {"listen": "127.0.0.1:0", "models": {"m": {"url": [dead_url(), backend_process.url]}}},
        environ=env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="50"),
    )
    script = {"kind": "sse", "n": 3, "interval": 0.01, "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
    conn = http.client.HTTPConnection("127.0.0.1", router.port(), timeout=10)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "m", "stream": True, "script": script}),
        {"traceparent": "00-%s-%s-01" % (CLIENT_TRACE, CLIENT_SPAN)},
    )
    assert conn.getresponse().read().endswith(b"data: [DONE]\n\n")
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "m"}))
    echoed = {n.lower(): v for n, v in json.loads(conn.getresponse().read())["headers"]}
    conn.close()

    # Three for the first request (its two attempts), two for the second (the dead replica is cooling).
    spans = wait_for(lambda: receiver.spans if len(receiver.spans) >= 5 else None)
    (server,) = [s for _, s in spans if s.kind == s.SPAN_KIND_SERVER and s.trace_id.hex() == CLIENT_TRACE]
    assert server.name == "chat m" and server.parent_span_id.hex() == CLIENT_SPAN
    assert (
        attributes(server).items()
        >= {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "m",
            "gen_ai.usage.input_tokens": 9,
            "gen_ai.usage.output_tokens": 3,
            "http.response.status_code": 200,
            "llmhop.route": "m",
        }.items()
    )
    attempts = [s for _, s in spans if s.kind == s.SPAN_KIND_CLIENT and s.parent_span_id == server.span_id]
    # The dead replica first (a connection refused), then the one that answered.
    assert [attributes(s).get("error.type") for s in attempts] == ["refused", None]
    assert attributes(attempts[1])["server.address"] == "127.0.0.1"
    assert attributes(attempts[1])["http.response.status_code"] == 200
    assert {service["service.name"] for service, _ in spans} == {"llmhop"}
    # A request without traceparent starts a trace; the backend gets its attempt's context.
    (trace_id, span_id) = echoed["traceparent"].split("-")[1:3]
    assert trace_id != CLIENT_TRACE
    assert span_id in {s.span_id.hex() for _, s in spans if s.kind == s.SPAN_KIND_CLIENT}


def test_without_otel_variables_nothing_of_opentelemetry_is_imported():
    code = (
        "import sys, json; from twisted.internet import reactor; "
        "from llmhop import config, service; "
        "s = service.GatewayService(config.parse({'models': {'m': {'url': 'http://h'}}}, {}), reactor); "
        "assert s.tracing is None; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
