"""The routing surface (SPEC §7): credential headers, token scopes, path routing, CORS.

Router and scripted backend on real 127.0.0.1 sockets; the backend's echo
shows what was forwarded.
"""

import io
import json

import pytest
import treq
from pytest_twisted import inlineCallbacks

from tests.helpers import scrape

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
