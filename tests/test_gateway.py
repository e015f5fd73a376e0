"""The request path end to end, in process: router and scripted backend on 127.0.0.1."""

import hashlib
import json

import pytest
import treq
from pytest_twisted import inlineCallbacks
from twisted.internet import threads

from tests import rawhttp
from tests.helpers import chat, dead_url, post


@inlineCallbacks
def test_health_needs_no_backend_and_counts_models(router):
    for path in ("/health", "/healthz"):
        response = yield treq.get(router.url + path)
        assert response.code == 200
        assert (yield response.json()) == {"status": "ok", "models": 2}


@inlineCallbacks
def test_models_list_and_lookup(router):
    response = yield treq.get(router.url + "/v1/models")
    listing = yield response.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["m", "other"]
    assert all(m["object"] == "model" for m in listing["data"])
    response = yield treq.get(router.url + "/v1/models/other")
    assert (yield response.json())["id"] == "other"
    response = yield treq.get(router.url + "/v1/models/nope")
    assert response.code == 404
    assert (yield response.json())["error"]["code"] == "model_not_found"


@inlineCallbacks
def test_forwards_method_path_query_and_body_byte_for_byte(router):
    body = chat(extra="é" * 1000)
    response, content = yield post(router, body, path="/v1/chat/completions?a=1&b=%20x")
    assert response.code == 200
    seen = json.loads(content)
    assert seen["method"] == "POST"
    assert seen["uri"] == "/v1/chat/completions?a=1&b=%20x"
    assert seen["sha256"] == hashlib.sha256(body).hexdigest()
    assert ["Content-Length", str(len(body))] in seen["headers"]


@inlineCallbacks
def test_backend_path_prefix_is_kept(make_router, backend):
    router = make_router({"models": {"m": {"url": backend.url + "/prefix/"}}})
    _, content = yield post(router, chat(), path="/v1/embeddings")
    assert json.loads(content)["uri"] == "/prefix/v1/embeddings"


@inlineCallbacks
def test_headers_rules(make_router, backend):
    router = make_router(
        {
            "authTokens": ["client-token"],
            "models": {"m": {"url": backend.url, "headers": {"authorization": "Bearer backend-key", "X-Tenant": "t1"}}},
        }
    )
    body = chat()
    raw = rawhttp.request(
        b"POST",
        b"/v1/chat/completions",
        body,
        headers=[
            (b"Authorization", b"bearer client-token"),
            (b"Content-Type", b"application/json"),
            (b"Connection", b"X-Secret-Hop"),
            (b"X-Secret-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Authorization", b"Basic abc"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-T"),
            (b"Upgrade", b"h2c"),
            (b"x-tenant", b"client-chosen"),
            (b"X-Forwarded-For", b"203.0.113.9"),
            (b"X-Kept", b"yes"),
        ],
    )
    response = yield threads.deferToThread(rawhttp.exchange, router.port, raw)
    assert rawhttp.status(response) == 200
    seen = json.loads(rawhttp.split(response)[1])
    headers = {}
    for name, value in seen["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    for hop in ("x-secret-hop", "keep-alive", "proxy-authorization", "te", "trailer", "upgrade", "expect"):
        assert hop not in headers, hop
    assert headers["authorization"] == ["Bearer backend-key"]
    assert headers["x-tenant"] == ["t1"]
    assert headers["host"] == ["127.0.0.1:%d" % (backend.port,)]
    assert headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["gateway.test"]
    assert headers["x-kept"] == ["yes"]
    assert headers["content-length"] == [str(len(body))]


@inlineCallbacks
def test_client_authorization_is_forwarded_when_llmhop_does_not_check_tokens(router):
    _, content = yield post(router, chat(), headers={"Authorization": "Bearer sk-passthrough"})
    assert ["Authorization", "Bearer sk-passthrough"] in json.loads(content)["headers"]


@pytest.mark.parametrize(
    "body, why, code",
    [
        (b"", "needs a JSON body", "model_required"),
        (b"{not json", "not valid JSON", "invalid_json"),
        (b"[1, 2]", "must be a JSON object", "model_required"),
        (b'{"messages": []}', "no 'model' field", "model_required"),
        (b'{"model": 7}', "must be a string", "model_required"),
        (b'{"model": null}', "must be a string", "model_required"),
        (b'{"model": "m", "model": ["x"]}', "must be a string", "model_required"),
        (b"\xff\xfe{", "not valid JSON", "invalid_json"),
        (b"[" * 600 + b"]" * 600, "must be a JSON object", "model_required"),
        (b"{" + b" " * (300 * 1024) + b"oops", "not valid JSON", "invalid_json"),
        (b" " * (300 * 1024) + b"oops", "not valid JSON", "invalid_json"),
        (b" " * (300 * 1024) + b'["model"]', "must be a JSON object", "model_required"),
        (b'{"m": ' + b"[" * 600 + b" " * (300 * 1024) + b"]" * 600 + b"}", "nested more than", "invalid_json"),
    ],
)
@inlineCallbacks
def test_bad_model_is_400_in_openai_shape(router, body, why, code):
    response, content = yield post(router, body)
    assert response.code == 400
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    error = json.loads(content)["error"]
    assert why in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert (error["code"], error["param"]) == (code, "model" if code == "model_required" else None)


@inlineCallbacks
def test_unknown_model_is_404_model_not_found(router):
    response, content = yield post(router, chat(model="gpt-9"))
    assert response.code == 404
    error = json.loads(content)["error"]
    assert error["code"] == "model_not_found"
    assert "gpt-9" in error["message"]


@inlineCallbacks
def test_last_duplicate_model_wins_like_json_loads(router):
    response, content = yield post(router, b'{"model": "nope", "model": "m"}')
    assert response.code == 200


@inlineCallbacks
def test_multipart_model_field_routes_and_body_is_unchanged(router):
    boundary = b"----llmhop-test"
    audio = bytes(range(256)) * 4096
    body = b"".join(
        [
            b"--" + boundary + b"\r\n",
            b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n',
            b"Content-Type: audio/wav\r\n\r\n",
            audio,
            b"\r\n--" + boundary + b"\r\n",
            b'Content-Disposition: form-data; name="model"\r\n\r\n',
            b"m",
            b"\r\n--" + boundary + b"--\r\n",
        ]
    )
    response, content = yield post(
        router,
        body,
        path="/v1/images/edits",
        headers={"Content-Type": b"multipart/form-data; boundary=" + boundary},
    )
    assert response.code == 200
    assert json.loads(content)["sha256"] == hashlib.sha256(body).hexdigest()


@inlineCallbacks
def test_backend_status_and_headers_are_relayed(router):
    response, content = yield post(router, chat(script={"kind": "status", "code": 429}))
    assert response.code == 429
    assert json.loads(content) == {"scripted": 429}
    response, content = yield post(router, chat(script={"kind": "echo", "headers": {"X-Trace": "abc"}}))
    assert response.headers.getRawHeaders("x-trace") == ["abc"]


@inlineCallbacks
def test_unreachable_backend_is_502(router):
    response, content = yield post(router, chat(model="other"))
    assert response.code == 502
    assert json.loads(content)["error"]["code"] == "upstream_unreachable"


@inlineCallbacks
def test_backend_without_headers_in_time_is_504_and_is_let_go(make_router, backend):
    router = make_router({"models": {"m": {"url": backend.url}}, "timeouts": {"response": 0.5}})
    response, content = yield post(router, chat(script={"kind": "hang"}), headers={"X-Test-Id": "hang504"})
    assert response.code == 504
    assert json.loads(content)["error"]["code"] == "upstream_timeout"
    from tests.helpers import wait_for

    yield wait_for(lambda: backend.events["hang504"]["lost"], timeout=1.0)


def test_dead_url_helper_points_at_a_closed_port():
    import socket

    port = int(dead_url().rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@inlineCallbacks
def test_backend_that_never_accepts_the_connection_is_504(make_router):
    from tests.faulty import full_backlog

    listener, fillers = full_backlog()
    try:
        url = "http://127.0.0.1:%d" % (listener.getsockname()[1],)
        router = make_router({"models": {"m": {"url": url}}, "timeouts": {"connect": 0.5}})
        response, content = yield post(router, chat())
        assert response.code == 504
        assert json.loads(content)["error"]["code"] == "upstream_timeout"
    finally:
        for sock in fillers + [listener]:
            sock.close()


@inlineCallbacks
def test_backend_connections_are_reused_then_closed_when_idle(make_router, backend):
    from tests.helpers import wait_for

    router = make_router({"models": {"m": {"url": backend.url}}, "timeouts": {"keepAlive": 0.5}})
    first = json.loads((yield post(router, chat()))[1])["client_port"]
    second = json.loads((yield post(router, chat()))[1])["client_port"]
    assert first == second
    idle_since = backend.connections[first]["opened"]
    closed = yield wait_for(lambda: backend.connections[first]["closed"], timeout=3)
    assert closed - idle_since >= 0.45


def test_a_client_that_leaves_stops_the_scan_of_its_big_body():
    """The scan of a big body is cancelled when its client leaves, not run to its end for nobody."""
    from twisted.internet.defer import CancelledError
    from twisted.python.failure import Failure
    from twisted.web.test.requesthelper import DummyRequest

    from llmhop.extract import SMALL_BODY, model_of
    from llmhop.gateway import _until_gone

    request = DummyRequest([b"v1"])
    body = b'{"pad": "' + b"x" * (2 * SMALL_BODY) + b'", "model": "m"}'
    scan = _until_gone(model_of(body, b"application/json"), request)
    failures = []
    scan.addErrback(failures.append)
    request.processingFailed(Failure(ConnectionError("client left")))
    assert failures and failures[0].check(CancelledError)
