"""Other SDKs' credential headers through a router process (SPEC §7): Anthropic's x-api-key, Azure OpenAI's api-key.

Each SDK is the real one from PyPI; a leg without it skips its tests.
"""

import json

import pytest

TOKEN = "sdk-scoped-token-1"
CREDENTIALS = {"authorization", "x-api-key", "x-goog-api-key", "api-key"}


@pytest.fixture
def router(start_router, backend_process):
    return start_router(
        {
            "listen": "127.0.0.1:0",
            "authTokens": [{"token": TOKEN, "name": "sdk-team", "models": ["claude-*", "chat-model"]}],
            "models": {
                "claude-test": {"url": backend_process.url},
                "chat-model": {"url": backend_process.url},
                "other": {"url": backend_process.url},
            },
        }
    )


def test_the_anthropic_sdk_authenticates_and_its_scope_holds(router, monkeypatch):
    anthropic = pytest.importorskip("anthropic")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    # The SDK's own header for api_key (Bearer in recent releases, x-api-key
    # in earlier ones and in Anthropic's other SDKs), and x-api-key set outright.
    clients = [
        anthropic.Anthropic(base_url=router.url(), api_key=TOKEN, max_retries=0, timeout=30),
        anthropic.Anthropic(base_url=router.url(), default_headers={"X-Api-Key": TOKEN}, max_retries=0, timeout=30),
    ]
    messages = [{"role": "user", "content": "hello"}]
    for client in clients:
        raw = client.messages.with_raw_response.create(model="claude-test", max_tokens=8, messages=messages)
        echo = json.loads(raw.http_response.text)
        assert echo["uri"] == "/v1/messages"
        assert not CREDENTIALS & {name.lower() for name, _ in echo["headers"]}
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            client.messages.create(model="other", max_tokens=8, messages=messages)
        assert caught.value.body["error"]["code"] == "model_not_allowed"
    wrong = anthropic.Anthropic(base_url=router.url(), api_key="tok-wrong", max_retries=0, timeout=30)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="claude-test", max_tokens=8, messages=messages)


def test_the_azure_openai_client_authenticates_with_api_key(router):
    openai = pytest.importorskip("openai")
    client = openai.AzureOpenAI(
        api_key=TOKEN, azure_endpoint=router.url(), api_version="2024-06-01", max_retries=0, timeout=30
    )
    completion = client.chat.completions.create(
        model="chat-model", messages=[{"role": "user", "content": "hi"}], extra_body={"script": {"kind": "openai"}}
    )
    assert completion.choices[0].message.content.startswith("sha256:")
    raw = client.chat.completions.with_raw_response.create(model="chat-model", messages=[])
    echo = json.loads(raw.http_response.text)
    assert echo["uri"].startswith("/openai/deployments/chat-model/chat/completions?api-version=")
    assert not CREDENTIALS & {name.lower() for name, _ in echo["headers"]}
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="other", messages=[])
