"""Request IDs and the access log's fields, text and JSON (SPEC §8)."""

import io
import json
import re

import pytest
import treq
from pytest_twisted import inlineCallbacks
from twisted.internet import threads

from tests import rawhttp
from tests.helpers import chat, dead_url, post
from tests.test_channel import head_then_wait

OURS = re.compile(rb"[0-9a-f]{16}-[0-9a-f]+")


@pytest.fixture
def logged(make_router, backend):
    router = make_router(
        {"authTokens": ["tok-obs-1234"], "models": {"m": {"url": backend.url}, "down": {"url": dead_url()}}}
    )
    router.site.access_log.stream = router.lines = io.StringIO()
    return router


AUTH = {"Authorization": "Bearer tok-obs-1234"}


def forwarded(content):
    return [v for n, v in json.loads(content)["headers"] if n.lower() in ("x-request-id", "x_request_id")]


@inlineCallbacks
def test_a_fair_request_id_is_kept_forwarded_returned_and_logged(logged):
    response, content = yield post(logged, chat(), headers={**AUTH, "X-Request-Id": "req 42/a"})
    assert response.headers.getRawHeaders("x-request-id") == ["req 42/a"]
    assert forwarded(content) == ["req 42/a"]
    # Escaped in the text line: a space cannot start a forged field.
    assert " id=req\\x2042/a" in logged.lines.getvalue()


@pytest.mark.parametrize(
    "sent",
    [
        [b"x" * 129],
        [b"caf\xc3\xa9"],
        [b"a\x01b"],
        [b"one", b"two"],
    ],
)
@inlineCallbacks
def test_an_unfair_request_id_is_replaced_by_one_of_llmhops(logged, sent):
    headers = {
        b"Content-Type": [b"application/json"],
        b"Authorization": [b"Bearer tok-obs-1234"],
        b"X-Request-Id": sent,
    }
    response = yield treq.post(logged.url + "/v1/chat/completions", chat(), headers=headers)
    content = yield response.content()
    (returned,) = response.headers.getRawHeaders(b"x-request-id")
    assert OURS.fullmatch(returned)
    assert forwarded(content) == [returned.decode()]


@inlineCallbacks
def test_every_answer_carries_the_request_id(logged):
    # A stream, llmhop's own errors, and an answer from the head alone.
    answers = []
    response, _ = yield post(logged, chat(stream=True, script={"kind": "sse", "n": 2, "interval": 0.01}), headers=AUTH)
    answers.append(response)
    for model in ("absent", "down"):
        response, _ = yield post(logged, chat(model=model), headers=AUTH)
        answers.append(response)
    assert [r.code for r in answers] == [200, 404, 502]
    assert all(OURS.fullmatch(r.headers.getRawHeaders(b"x-request-id")[0]) for r in answers)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: early-1\r\nContent-Length: 5\r\n\r\n"
    raw = yield threads.deferToThread(head_then_wait, logged.port, head)
    assert rawhttp.status(raw) == 401 and b"\r\nX-Request-Id: early-1\r\n" in raw


@inlineCallbacks
def test_a_request_line_refused_before_twisteds_parser_is_answered_and_logged_with_an_id(logged):
    raw = yield threads.deferToThread(rawhttp.exchange_until_closed, logged.port, b"GET /v1/models\r\n\r\n")
    assert rawhttp.status(raw) == 400
    (returned,) = re.findall(rb"\r\nX-Request-Id: ([^\r]+)", rawhttp.split(raw)[0])
    (line,) = logged.lines.getvalue().splitlines()
    assert re.search(r"\] - - model=- status=400 .* id=%s$" % (re.escape(returned.decode()),), line), line


@inlineCallbacks
def test_a_client_x_request_id_twin_never_reaches_the_backend(logged):
    response, content = yield post(logged, chat(), headers={**AUTH, "X_Request_Id": "sneaky"})
    assert forwarded(content) == [response.headers.getRawHeaders("x-request-id")[0]]


@inlineCallbacks
def test_the_text_line_names_client_replica_ttfb_id_and_token(logged, backend):
    yield post(logged, chat(), headers={**AUTH, "X-Request-Id": "r-1"})
    (line,) = logged.lines.getvalue().splitlines()
    fields = line.split("] ", 1)[1].split(" ", 2)[2]
    assert re.fullmatch(
        r"model=m status=200 bytes=\d+ duration=\d+\.\d{3}s ttfb=\d+\.\d{3}s client=127\.0\.0\.1 "
        r"replica=%s id=r-1 token=token-0" % (re.escape(backend.url),),
        fields,
    ), line


@inlineCallbacks
def test_json_lines_carry_the_same_fields_and_nothing_else(logged, backend):
    logged.site.access_log.json = True
    yield post(logged, chat(), headers={**AUTH, "X-Request-Id": "r-2"})
    yield post(logged, chat(model="down"), headers=AUTH)
    first, second = (json.loads(line) for line in logged.lines.getvalue().splitlines())
    assert first["ttfb"] > 0 and first["duration"] >= first["ttfb"]
    first.pop("ttfb"), first.pop("duration"), first.pop("bytes")
    assert first == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "m",
        "status": 200,
        "client": "127.0.0.1",
        "replica": backend.url,
        "requestId": "r-2",
        "outcome": None,
        "fallback": None,
        "token": "token-0",
    }
    assert (second["status"], second["replica"], second["outcome"]) == (502, None, "upstream-refused")
    assert "tok-obs-1234" not in logged.lines.getvalue()
