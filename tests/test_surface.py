"""The routing surface (SPEC §7): credential headers, token scopes, path routing, CORS.

Router and scripted backend on real 127.0.0.1 sockets; the backend's echo
shows what was forwarded.
"""

import hashlib
import io
import json

import pytest
import treq
from pytest_twisted import inlineCallbacks
from twisted.internet import threads

from tests import rawhttp
from tests.helpers import dead_url, scrape
from tests.test_channel import head_then_wait

TEAM_A = "tok-team-a-1234"
OPEN = "tok-everything-5678"


@pytest.fixture
def scoped(make_router, backend):
    return make_router(
        {
            "authTokens": [
                OPEN,
                {"token": TEAM_A, "name": "team-a", "models": ["m", "qwen/*"]},
            ],
            "models": {
                "m": {"url": backend.url},
                "n": {"url": backend.url},
                "qwen/*": {"url": backend.url},
            },
        }
    )


def body(model="m"):
    return json.dumps({"model": model, "messages": []}).encode()


@inlineCallbacks
def send(router, headers, model="m", path="/v1/chat/completions"):
    response = yield treq.post(router.url + path, body(model), headers=headers)
    content = yield response.content()
    return response, content


def forwarded_names(content):
    return {name.lower() for name, _ in json.loads(content)["headers"]}


@pytest.mark.parametrize(
    "headers, code",
    [
        ({"Authorization": "Bearer " + OPEN}, 200),
        ({"x-api-key": OPEN}, 200),
        ({"x-goog-api-key": OPEN}, 200),
        ({"api-key": OPEN}, 200),
        ({"X-Api-Key": " %s " % (OPEN,)}, 200),
        # The same token in several headers is one credential.
        ({"Authorization": "Bearer " + OPEN, "x-api-key": OPEN}, 200),
        # Two different tokens, even both valid: which scope applies is unclear.
        ({"Authorization": "Bearer " + OPEN, "x-api-key": TEAM_A}, 401),
        ({"x-api-key": OPEN, "api-key": "tok-wrong"}, 401),
        ({"x-api-key": "Bearer " + OPEN}, 401),
        ({"api-key": ""}, 401),
        ({"x-goog-api-key": OPEN + "x"}, 401),
        ({"x-api-key-2": OPEN}, 401),
    ],
)
@inlineCallbacks
def test_a_token_is_accepted_in_any_of_the_four_credential_headers(scoped, headers, code):
    response, content = yield send(scoped, headers)
    assert response.code == code, content
    if code == 401:
        assert json.loads(content)["error"]["code"] == "invalid_api_key"


@inlineCallbacks
def test_no_credential_header_reaches_the_backend_nor_an_underscore_twin(scoped):
    headers = {
        "Authorization": "Bearer " + OPEN,
        "x-api-key": OPEN,
        "x-goog-api-key": OPEN,
        "api-key": OPEN,
        "X_Api_Key": "sneaky",
        "Api_Key": "sneaky",
    }
    response, content = yield send(scoped, headers)
    assert response.code == 200
    forwarded = forwarded_names(content)
    assert not forwarded & {"authorization", "x-api-key", "x-goog-api-key", "api-key", "x_api_key", "api_key"}
    assert OPEN not in content.decode() and "sneaky" not in content.decode()


@inlineCallbacks
def test_without_auth_the_credential_headers_are_the_backends_business(make_router, backend):
    router = make_router({"models": {"m": {"url": backend.url}}})
    response, content = yield send(router, {"x-api-key": "for-the-backend"})
    assert response.code == 200
    assert ["x-api-key", "for-the-backend"] in [[n.lower(), v] for n, v in json.loads(content)["headers"]]


@pytest.mark.parametrize(
    "model, code",
    [("m", 200), ("qwen/2.5-7b", 200), ("n", 403), ("qwen", 403), ("absent", 403), ("mm", 403)],
)
@inlineCallbacks
def test_a_scoped_token_may_use_its_models_only(scoped, model, code):
    response, content = yield send(scoped, {"x-api-key": TEAM_A}, model)
    assert response.code == code, content
    if code == 403:
        error = json.loads(content)["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "model_not_allowed", "model")
    # A token without a scope may use every model that exists.
    response, _ = yield send(scoped, {"x-api-key": OPEN}, model)
    assert response.code == (404 if model in ("absent", "mm", "qwen") else 200)


@inlineCallbacks
def test_the_model_list_and_status_show_what_the_token_may_use(scoped):
    lists = {}
    for token in (TEAM_A, OPEN):
        response = yield treq.get(scoped.url + "/v1/models", headers={"Authorization": "Bearer " + token})
        lists[token] = [m["id"] for m in (yield response.json())["data"]]
    assert lists[OPEN] == ["m", "n"]
    assert lists[TEAM_A] == ["m"]
    codes = []
    for name in ("m", "n", "qwen/x"):
        response = yield treq.get(scoped.url + "/v1/models/" + name, headers={"api-key": TEAM_A})
        codes.append(response.code)
        yield response.content()
    assert codes == [200, 404, 200]
    response = yield treq.get(scoped.url + "/status", headers={"api-key": TEAM_A})
    assert sorted((yield response.json())["routes"]) == ["m", "qwen/*"]


@inlineCallbacks
def test_the_token_name_labels_the_requests_metric(scoped):
    for headers in ({"x-api-key": TEAM_A}, {"x-api-key": TEAM_A}, {"x-api-key": OPEN}):
        yield send(scoped, headers)
    yield send(scoped, {"x-api-key": TEAM_A}, "n")
    samples = yield scrape(scoped, {"Authorization": "Bearer " + OPEN})

    def count(status, token):
        return samples.get(("llmhop_requests_total", (("model", "m"), ("status", status), ("token", token))), 0)

    assert (count("200", "team-a"), count("200", "token-0")) == (2, 1)
    assert samples[("llmhop_requests_total", (("model", ""), ("status", "403"), ("token", "team-a")))] == 1


@inlineCallbacks
def test_the_access_line_names_the_token_and_never_shows_it(scoped):
    scoped.site.access_log.stream = lines = io.StringIO()
    yield send(scoped, {"x-api-key": TEAM_A})
    yield send(scoped, {"x-api-key": "tok-nobody"})
    first, second = lines.getvalue().splitlines()
    assert "model=m status=200" in first and first.endswith(" token=team-a"), first
    assert "status=401" in second and "token=" not in second
    assert TEAM_A not in lines.getvalue() and "tok-nobody" not in lines.getvalue()


@pytest.fixture
def by_path(make_router, make_backend):
    backends = [make_backend(), make_backend()]
    router = make_router(
        {
            "authTokens": [OPEN, {"token": TEAM_A, "name": "team-a", "models": ["m"]}],
            "maxBodyBytes": 100_000,
            "models": {
                "m": {"url": [b.url for b in backends]},
                "prefixed": {"url": backends[0].url + "/api/v2", "model": "renamed"},
                "qwen/*": {"url": backends[0].url},
                "gone": {"url": dead_url(), "fallbacks": ["m"]},
            },
        }
    )
    router.backends = backends
    return router


@inlineCallbacks
def request_by_path(router, method, target, data=None, token=OPEN, headers=None):
    sent = {"Authorization": "Bearer " + token} if token else {}
    sent.update(headers or {})
    response = yield treq.request(method, router.url + target, data=data, headers=sent)
    content = yield response.content()
    return response, content


@pytest.mark.parametrize(
    "method, target, forwarded",
    [
        ("GET", "/route/m/props", "/props"),
        ("GET", "/route/m/slots?id_slot=0&x=%2F", "/slots?id_slot=0&x=%2F"),
        ("DELETE", "/route/m/v1/things/7", "/v1/things/7"),
        ("GET", "/route/m", "/"),
        ("GET", "/route/m/", "/"),
        ("GET", "/route/qwen%2Fqwen2.5-7b/api/tags", "/api/tags"),
        ("GET", "/route/qwen%2fx/metrics", "/metrics"),
        # After the backend URL's prefix; the route's model rename does not apply.
        ("GET", "/route/prefixed/tokenize", "/api/v2/tokenize"),
    ],
)
@inlineCallbacks
def test_a_path_route_reaches_the_models_backend_at_the_rest_of_the_path(by_path, method, target, forwarded):
    response, content = yield request_by_path(by_path, method, target)
    assert response.code == 200, content
    echo = json.loads(content)
    assert (echo["method"], echo["uri"]) == (method, forwarded)


@pytest.mark.parametrize("size", [0, 11, 70_000])
@inlineCallbacks
def test_a_path_routed_body_is_forwarded_unread_whatever_it_is(by_path, size):
    # Not JSON, names another model, declares an encoding: none of it is read.
    data = (b'{"model": "n"} \x00\xff' * 5000)[:size]
    headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}
    response, content = yield request_by_path(by_path, "POST", "/route/prefixed/tokenize", data, headers=headers)
    assert response.code == 200, content
    echo = json.loads(content)
    assert (echo["length"], echo["sha256"]) == (size, hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    "target, token, code, error",
    [
        ("/route/absent/props", OPEN, 404, "model_not_found"),
        ("/route//props", OPEN, 400, "model_required"),
        ("/route/n/props", TEAM_A, 403, "model_not_allowed"),
        ("/route/m/props", "tok-wrong", 401, "invalid_api_key"),
        ("/route/m/props", None, 401, "invalid_api_key"),
        # Confinement (SPEC §5) holds for the rest; only the model segment may hold %2F.
        ("/route/m/../v1/models", OPEN, 400, "invalid_path"),
        ("/route/m/%2e%2e/x", OPEN, 400, "invalid_path"),
        ("/route/m/a%2Fb", OPEN, 400, "invalid_path"),
        ("/route/m%252Fx/props", OPEN, 400, "invalid_path"),
        ("/route/../m/props", OPEN, 400, "invalid_path"),
    ],
)
@inlineCallbacks
def test_a_path_route_answers_as_any_request_would(by_path, target, token, code, error):
    response, content = yield request_by_path(by_path, "GET", target, token=token)
    assert response.code == code, content
    assert json.loads(content)["error"]["code"] == error
    assert all(b.served == 0 for b in by_path.backends)


@inlineCallbacks
def test_a_path_route_is_retried_and_capped_but_does_not_fall_back(by_path):
    first, second = by_path.backends
    first.refuse = second.refuse = 503
    response, _ = yield request_by_path(by_path, "GET", "/route/m/props")
    # Both replicas tried (retryOn), the last answer relayed.
    assert (response.code, first.refused + second.refused) == (503, 2)
    first.refuse = None
    response, _ = yield request_by_path(by_path, "GET", "/route/m/props")
    assert response.code == 200
    response, content = yield request_by_path(by_path, "POST", "/route/m/upload", b"x" * 100_001)
    assert (response.code, json.loads(content)["error"]["code"]) == (413, "request_too_large")
    # The body names no model to rewrite for another route: no fallback.
    response, content = yield request_by_path(by_path, "GET", "/route/gone/props")
    assert response.code == 502 and not response.headers.hasHeader("X-Llmhop-Fallback")


@inlineCallbacks
def test_a_path_route_is_counted_and_logged_under_its_model(by_path):
    by_path.site.access_log.stream = lines = io.StringIO()
    yield request_by_path(by_path, "GET", "/route/qwen%2Fx/props")
    assert "GET /route/qwen%2Fx/props model=qwen/x status=200" in lines.getvalue(), lines.getvalue()
    samples = yield scrape(by_path, {"Authorization": "Bearer " + OPEN})
    assert samples[("llmhop_requests_total", (("model", "qwen/*"), ("status", "200"), ("token", "token-0")))] == 1


@inlineCallbacks
def test_a_path_routed_body_gives_no_affinity_key(make_router, make_backend):
    # The same prompt four times: read, prefix affinity would send it to one
    # replica each time; unread, least-in-flight takes the replicas in turn.
    backends = [make_backend(), make_backend()]
    router = make_router({"models": {"m": {"url": [b.url for b in backends], "policy": "prefix-affinity"}}})
    data = json.dumps({"model": "m", "messages": [{"role": "user", "content": "same"}]}).encode()
    for _ in range(4):
        response, _ = yield request_by_path(router, "POST", "/route/m/v1/chat/completions", data, token=None)
        assert response.code == 200
    assert [b.served for b in backends] == [2, 2]


CHAT_UI = "https://chat.example"


@pytest.fixture
def cors(make_router, backend):
    return make_router(
        {
            "authTokens": [OPEN],
            "cors": {"allowOrigins": [CHAT_UI, "http://localhost:3000"]},
            "models": {"m": {"url": backend.url}},
        }
    )


def preflight_headers(origin):
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


@inlineCallbacks
def test_a_preflight_from_an_allowed_origin_is_answered_without_auth(cors, backend):
    for path in ("/v1/chat/completions", "/route/m/props", "/anything"):
        response, content = yield request_by_path(cors, "OPTIONS", path, token=None, headers=preflight_headers(CHAT_UI))
        assert (response.code, content) == (204, b"")
        headers = response.headers
        assert headers.getRawHeaders("access-control-allow-origin") == [CHAT_UI]
        assert headers.getRawHeaders("access-control-allow-headers") == ["authorization, content-type"]
        assert "POST" in headers.getRawHeaders("access-control-allow-methods")[0]
        assert headers.getRawHeaders("access-control-max-age") == ["7200"]
        assert "Origin" in headers.getRawHeaders("vary")[0]
    assert backend.served == 0


@pytest.mark.parametrize("asked", [None, "x-a;x-b", "a b", ""], ids=["none", "not-a-token", "not-a-list", "empty"])
@inlineCallbacks
def test_a_preflight_always_names_the_headers_requests_may_carry(cors, asked):
    """SPEC §7: the 204 carries -Allow-Headers even when the browser's list is absent or malformed."""
    headers = preflight_headers(CHAT_UI)
    del headers["Access-Control-Request-Headers"]
    if asked is not None:
        headers["Access-Control-Request-Headers"] = asked
    response, _ = yield request_by_path(cors, "OPTIONS", "/v1/chat/completions", token=None, headers=headers)
    assert response.code == 204
    [allowed] = response.headers.getRawHeaders("access-control-allow-headers")
    names = [name.strip() for name in allowed.split(",")]
    assert {"authorization", "x-api-key", "x-goog-api-key", "api-key", "content-type", "x-request-id"} <= set(names)


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "https://chat.example.evil", "http://chat.example", "https://chat.example/"]
)
@inlineCallbacks
def test_other_origins_get_no_cors_headers_and_no_free_pass(cors, origin):
    response, _ = yield request_by_path(
        cors, "OPTIONS", "/v1/chat/completions", token=None, headers=preflight_headers(origin)
    )
    assert response.code == 401
    response, _ = yield send(cors, {"Authorization": "Bearer " + OPEN, "Origin": origin})
    assert response.code == 200
    names = {n.lower() for n, _ in response.headers.getAllRawHeaders()}
    assert not {n for n in names if n.startswith(b"access-control-")}
    assert b"vary" not in names


@inlineCallbacks
def test_answers_to_an_allowed_origin_name_it_and_vary_on_it(cors):
    origin = {"Origin": "http://localhost:3000"}
    # Relayed (the backend's own CORS headers are not), an error of llmhop's, an early 401.
    response, _ = yield send(cors, {"Authorization": "Bearer " + OPEN, **origin, "X-Echo": "1"})
    answers = [response]
    response, _ = yield send(cors, {"Authorization": "Bearer " + OPEN, **origin}, model="absent")
    answers.append(response)
    response, _ = yield send(cors, origin)
    answers.append(response)
    assert [r.code for r in answers] == [200, 404, 401]
    for response in answers:
        assert response.headers.getRawHeaders("access-control-allow-origin") == ["http://localhost:3000"]
        assert response.headers.getRawHeaders("vary") == ["Origin"]


@inlineCallbacks
def test_a_backends_cors_headers_are_never_relayed(make_router, backend):
    router = make_router({"models": {"m": {"url": backend.url}}})
    script = {
        "kind": "echo",
        "headers": {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"},
    }
    response = yield treq.post(
        router.url + "/v1/chat/completions",
        json.dumps({"model": "m", "script": script}).encode(),
        headers={"Origin": "https://evil.example"},
    )
    yield response.content()
    assert response.code == 200
    assert not [n for n, _ in response.headers.getAllRawHeaders() if n.lower().startswith(b"access-control-")]


@inlineCallbacks
def test_any_origin_is_answered_with_a_star(make_router, backend):
    router = make_router({"cors": {"allowOrigins": ["*"]}, "models": {"m": {"url": backend.url}}})
    response, _ = yield request_by_path(
        router, "OPTIONS", "/v1/models", token=None, headers=preflight_headers("https://a.b")
    )
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["*"]
    response, _ = yield send(router, {"Origin": "https://a.b"})
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["*"]
    # No Origin, no CORS headers.
    response, _ = yield send(router, {})
    assert not response.headers.hasHeader("access-control-allow-origin")


@pytest.mark.parametrize("framing", [b"Content-Length: 1000000000\r\n", b"Transfer-Encoding: chunked\r\n"])
@inlineCallbacks
def test_a_preflight_with_a_body_is_no_free_pass_past_auth(cors, backend, framing):
    # Anyone can send Origin; only a body-less preflight skips the token check.
    head = (
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nOrigin: " + CHAT_UI.encode() + b"\r\n"
        b"Access-Control-Request-Method: POST\r\n" + framing + b"\r\n"
    )
    response = yield threads.deferToThread(head_then_wait, cors.port, head)
    assert rawhttp.status(response) == 401
    assert backend.served == 0
