"""The official OpenAI Python SDK as the client, through a router process."""

import pytest

openai = pytest.importorskip("openai")

TOKEN = "sdk-client-token"


@pytest.fixture
def client(start_router, backend_process):
    router = start_router(
        {
            "listen": "127.0.0.1:0",
            "authTokens": [TOKEN],
            "models": {"chat-model": {"url": backend_process.url}, "whisper-1": {"url": backend_process.url + "/"}},
        }
    )
    return openai.OpenAI(base_url=router.url() + "/v1", api_key=TOKEN, max_retries=0, timeout=30)


OPENAI = {"script": {"kind": "openai"}}


def test_chat_completion(client):
    completion = client.chat.completions.create(
        model="chat-model", messages=[{"role": "user", "content": "hello"}], extra_body=OPENAI
    )
    assert completion.model == "chat-model"
    assert completion.choices[0].message.content.startswith("sha256:")


def test_streaming_chat(client):
    stream = client.chat.completions.create(
        model="chat-model", messages=[{"role": "user", "content": "hello"}], stream=True, extra_body=OPENAI
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert "".join(pieces).startswith("sha256:") and len("".join(pieces)) == len("sha256:") + 64


def test_models_list(client):
    assert sorted(model.id for model in client.models.list()) == ["chat-model", "whisper-1"]
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"


def test_audio_transcription_multipart(client, tmp_path):
    audio = tmp_path / "speech.wav"
    audio.write_bytes(b"RIFF" + bytes(range(256)) * 2000)
    with audio.open("rb") as f:
        transcription = client.audio.transcriptions.create(model="whisper-1", file=f)
    size = int(transcription.text.split()[0])
    assert size > audio.stat().st_size  # the whole multipart body arrived


def test_unknown_model_and_bad_token_are_sdk_errors(client, start_router):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[])
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").chat.completions.create(model="chat-model", messages=[])
