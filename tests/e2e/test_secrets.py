"""No secret (client token, injected header value, file secret) ever reaches a log, an error or a traceback."""

import json
import signal
import subprocess

from tests import rawhttp
from tests.e2e.procs import env, llmhop_command, write_config
from tests.helpers import dead_url

CLIENT_TOKEN = "ct-5f3a9c1e7b2d4068"
HEADER_SECRET = "hs-a81c0f3e9d6b2745"
FILE_SECRET = "fs-0b9e4d7a2c6f1835"
SECRETS = (CLIENT_TOKEN, HEADER_SECRET, FILE_SECRET)


def test_secrets_stay_out_of_logs_errors_and_startup_failures(tmp_path, start_router, backend_process):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "client_token").write_text(CLIENT_TOKEN + "\n")
    (creds / "upstream_key").write_text(FILE_SECRET + "\n")
    settings = {
        "listen": "127.0.0.1:0",
        "authTokens": ["${file:client_token}"],
        "timeouts": {"connect": 0.5, "response": 0.5},
        "models": {
            "ok": {"url": backend_process.url, "headers": {"Authorization": "Bearer ${env:HEADER_SECRET}"}},
            "down": {
                "url": dead_url(),
                "headers": {"X-Key": "${file:upstream_key}", "Authorization": "Bearer $HEADER_SECRET"},
            },
        },
    }
    router = start_router(settings, environ=env(CREDENTIALS_DIRECTORY=str(creds), HEADER_SECRET=HEADER_SECRET))
    port = router.port()
    answers = []

    def call(model, token, path=b"/v1/chat/completions"):
        body = json.dumps({"model": model}).encode()
        headers = [(b"Authorization", token.encode())] if token is not None else []
        answers.append(rawhttp.exchange_until_closed(port, rawhttp.request(b"POST", path, body, headers=headers)))
        return rawhttp.status(answers[-1])

    assert call("ok", "Bearer " + CLIENT_TOKEN) == 200
    assert call("down", "Bearer " + CLIENT_TOKEN) == 502
    for wrong in ("Bearer " + CLIENT_TOKEN[:-1], "Bearer " + CLIENT_TOKEN + "x", "Basic " + CLIENT_TOKEN, CLIENT_TOKEN):
        assert call("ok", wrong) == 401
    assert call("ok", None) == 401
    assert call("nope", "Bearer " + CLIENT_TOKEN) == 404
    assert call("ok", "Bearer " + CLIENT_TOKEN, path=b"/v1/chat/completions?api_key=" + HEADER_SECRET.encode()) == 200
    # The backend did get what it was meant to get.
    seen = dict(json.loads(rawhttp.split(answers[0])[1])["headers"])
    assert seen["Authorization"] == "Bearer " + HEADER_SECRET
    router.signal(signal.SIGTERM)
    router.wait()
    # Everything the router said, and every answer, free of secrets; except
    # the one answer that echoes the query the client itself sent.
    for secret in SECRETS:
        assert secret not in router.output
        for answer in answers[:-1]:
            if answer is not answers[0]:
                assert secret.encode() not in answer

    # A startup that fails after some secrets were resolved names none of them.
    settings["models"]["down"]["headers"]["X-Other"] = "${env:UNSET_SECRET_NAME}"
    path = write_config(tmp_path / "broken.json", settings)
    result = subprocess.run(
        llmhop_command() + ["--config", str(path)],
        env=env(CREDENTIALS_DIRECTORY=str(creds), HEADER_SECRET=HEADER_SECRET),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "UNSET_SECRET_NAME" in result.stderr and "Traceback" not in result.stderr
    for secret in SECRETS:
        assert secret not in result.stderr + result.stdout
