"""Aliases (models.<name>.model), prefix routes, unlisted models and /v1/models."""

import hashlib
import json

import treq
from pytest_twisted import inlineCallbacks

from llmhop.extract import SMALL_BODY
from tests.helpers import post


@inlineCallbacks
def names(router, path="/v1/models"):
    response = yield treq.get(router.url + path)
    return response.code, (yield response.json())


def digest(body):
    return hashlib.sha256(body).hexdigest()


@inlineCallbacks
def test_an_alias_replaces_the_model_and_nothing_else(make_router, backend):
    router = make_router({"models": {"gpt-4o": {"url": backend.url, "model": "meta-llama/Llama-3.1-8B-Instruct"}}})
    body = (
        b'{ "messages": [{"role": "user", "model": "gpt-4o", "content": "caf\\u00e9"}],\n  "model" :"gpt-4o",  "n": 1 }'
    )
    response, content = yield post(router, body)
    assert response.code == 200
    expected = body.replace(b'"model" :"gpt-4o"', b'"model" :"meta-llama/Llama-3.1-8B-Instruct"')
    seen = json.loads(content)
    assert (seen["sha256"], seen["length"]) == (digest(expected), len(expected))
    assert ["Content-Length", str(len(expected))] in seen["headers"]


@inlineCallbacks
def test_an_alias_in_a_large_body_is_spliced_without_reencoding(make_router, backend):
    router = make_router({"models": {"big": {"url": backend.url, "model": 'tricky "name" \\ é'}}})
    prompt = 'é \\u00e9 \\" ' * (SMALL_BODY // 8)
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "model": "big"}, ensure_ascii=False).encode()
    assert len(body) > SMALL_BODY
    response, content = yield post(router, body)
    assert response.code == 200
    value = json.dumps('tricky "name" \\ é').encode("ascii")
    expected = body[: body.rindex(b'"big"')] + value + body[body.rindex(b'"big"') + len(b'"big"') :]
    assert json.loads(content)["sha256"] == digest(expected)
    assert json.loads(expected)["model"] == 'tricky "name" \\ é'


@inlineCallbacks
def test_an_alias_in_a_multipart_upload(make_router, backend):
    router = make_router({"models": {"whisper": {"url": backend.url, "model": "openai/whisper-large-v3"}}})
    boundary = b"xyz"
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF....\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--xyz--\r\n'
    )
    response, content = yield post(
        router, body, path="/v1/chat/x", content_type=b"multipart/form-data; boundary=" + boundary
    )
    assert response.code == 200
    assert json.loads(content)["sha256"] == digest(
        body.replace(b"\r\n\r\nwhisper\r\n", b"\r\n\r\nopenai/whisper-large-v3\r\n")
    )


@inlineCallbacks
def test_prefix_routes_longest_prefix_wins_and_exact_names_beat_prefixes(make_router, make_backend):
    general, special, exact = make_backend(), make_backend(), make_backend()
    router = make_router(
        {
            "models": {
                "openrouter/*": {"url": general.url, "stripPrefix": True},
                "openrouter/meta/*": {"url": special.url},
                "openrouter/meta/llama": {"url": exact.url},
            }
        }
    )
    for model, expected in [
        ("openrouter/mistral/large", general),
        ("openrouter/meta/llama-3-70b", special),
        ("openrouter/meta/llama", exact),
    ]:
        response, _ = yield post(router, json.dumps({"model": model}).encode())
        assert response.code == 200
        assert expected.served == 1, model
    response, content = yield post(router, b'{"model": "openrouter"}')
    assert response.code == 404 and json.loads(content)["error"]["code"] == "model_not_found"


@inlineCallbacks
def test_strip_prefix_forwards_the_rest_of_the_name(make_router, backend):
    router = make_router({"models": {"openrouter/*": {"url": backend.url, "stripPrefix": True}}})
    body = b'{"model": "openrouter/anthropic/claude-3.5", "stream": true}'
    response, content = yield post(router, body)
    assert response.code == 200
    assert json.loads(content)["sha256"] == digest(b'{"model": "anthropic/claude-3.5", "stream": true}')


@inlineCallbacks
def test_a_prefix_route_without_strip_forwards_the_name_unchanged(make_router, backend):
    router = make_router({"models": {"local/*": {"url": backend.url}}})
    body = b'{"model": "local/qwen"}'
    response, content = yield post(router, body)
    assert response.code == 200 and json.loads(content)["sha256"] == digest(body)


@inlineCallbacks
def test_models_lists_exact_listed_names_only(make_router, backend):
    router = make_router(
        {
            "models": {
                "gpt-4o": {"url": backend.url},
                "hidden": {"url": backend.url, "unlisted": True},
                "openrouter/*": {"url": backend.url},
            }
        }
    )
    code, listing = yield names(router)
    assert code == 200 and [m["id"] for m in listing["data"]] == ["gpt-4o"]
    # Unlisted and prefix-matched names are still routable, and can be looked up.
    for name in ("hidden", "openrouter/x/y"):
        code, found = yield names(router, "/v1/models/" + name)
        assert code == 200 and found["id"] == name
        response, _ = yield post(router, json.dumps({"model": name}).encode())
        assert response.code == 200
    code, _ = yield names(router, "/v1/models/openrouter")
    assert code == 404
