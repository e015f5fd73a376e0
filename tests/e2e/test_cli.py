"""The ``llmhop`` command as an operator runs it: config errors, listen forms, signals, logs."""

import http.client
import json
import re
import signal
import socket
import ssl
import subprocess

import pytest

from llmhop import __version__
from tests import rawhttp
from tests.certs import ScratchCA
from tests.e2e.procs import ROOT, Router, env, llmhop_command, socket_activated, wait_for, write_config


def run_llmhop(*args, environ=None, cwd=ROOT):
    return subprocess.run(
        llmhop_command() + list(args), env=environ or env(), cwd=cwd, capture_output=True, text=True, timeout=30
    )


def get(url_or_port, path="/healthz", headers=None):
    port = url_or_port if isinstance(url_or_port, int) else int(url_or_port.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post_chat(port, model="m", headers=None, **extra):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"model": model, **extra})
        conn.request("POST", "/v1/chat/completions", body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    result = run_llmhop(flag)
    assert result.returncode == 0
    assert result.stdout.strip() == "llmhop " + __version__


GOOD = {"models": {"m": {"url": "http://127.0.0.1:9"}}}


@pytest.mark.parametrize(
    "settings, place",
    [
        ({}, "models: required"),
        ({"models": {}}, "models: at least one model"),
        ([], "expected an object"),
        ({"models": {"m": {}}}, "models.m.url: required"),
        ({"models": {"gpt-4o": {"url": "ftp://x"}}}, "models.gpt-4o.url: not an absolute http"),
        ({"models": {"m": {"url": "localhost:8000"}}}, "models.m.url: not an absolute http"),
        ({"models": {"m": {"url": "http://h:99999"}}}, "models.m.url: invalid URL"),
        ({"models": {"m": {"url": "http://h/?q=1"}}}, "models.m.url: a backend URL takes no query"),
        ({"models": {"m": {"url": "http://u:p@h/"}}}, "models.m.url: credentials"),
        ({"models": {"m": {"url": "http://h", "extra": 1}}}, "models.m.extra: unknown key"),
        ({"models": {"m": {"url": "http://h", "headers": {"X": 1}}}}, "models.m.headers.X: expected a string"),
        (
            {"models": {"m": {"url": "http://h", "headers": {"Bad Name": "v"}}}},
            "models.m.headers.Bad Name: not a valid",
        ),
        ({"models": {"m": {"url": "http://h", "headers": {"Content-Length": "1"}}}}, "managed by the proxy"),
        (dict(GOOD, lisen=":80"), "lisen: unknown key"),
        (dict(GOOD, listen=8080), "listen: expected a string"),
        (dict(GOOD, listen="nonsense"), "listen: expected HOST:PORT"),
        (dict(GOOD, listen=":70000"), "listen: port 70000 is out of range"),
        (dict(GOOD, maxBodyBytes=0), "maxBodyBytes: expected a positive integer"),
        (dict(GOOD, maxBodyBytes=True), "maxBodyBytes: expected a positive integer"),
        (dict(GOOD, maxBodyBytes="1"), "maxBodyBytes: expected a positive integer"),
        (dict(GOOD, authTokens="tok"), "authTokens: expected a list"),
        (dict(GOOD, authTokens=[""]), "authTokens[0]: an empty token"),
        (dict(GOOD, authTokens=["a", 2]), "authTokens[1]: expected a string"),
        (dict(GOOD, timeouts={"connect": -1}), "timeouts.connect: expected a positive number"),
        (dict(GOOD, timeouts={"header": 1}), "timeouts.header: unknown key"),
        (dict(GOOD, workers=0), "workers: expected a positive integer"),
        (dict(GOOD, workers="2"), "workers: expected a positive integer"),
        (dict(GOOD, workers=1000), "workers: at most 256"),
        (dict(GOOD, workers=2, listen="onion:80"), "workers: several workers need a listen form they can share"),
    ],
)
def test_bad_config_is_one_line_naming_the_place(tmp_path, settings, place):
    path = write_config(tmp_path / "config.json", settings)
    for args in (["--check"], []):
        result = run_llmhop("--config", str(path), *args)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1, result.stderr
        assert place in result.stderr
        assert "Traceback" not in result.stderr


def test_config_that_is_not_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"models": ')
    result = run_llmhop("--config", str(path))
    assert result.returncode == 1
    assert "not valid JSON" in result.stderr and "Traceback" not in result.stderr
    result = run_llmhop("--config", str(tmp_path / "missing.json"))
    assert result.returncode == 1
    assert "cannot read config file" in result.stderr and "Traceback" not in result.stderr


SECRET = "sk-very-secret-value-0123"


@pytest.mark.parametrize(
    "header, environ, place, names",
    [
        ("Bearer ${env:NOPE_KEY}", {}, "models.m.headers.Authorization", "NOPE_KEY"),
        ("Bearer $NOPE_KEY", {}, "models.m.headers.Authorization", "NOPE_KEY"),
        ("Bearer ${NOPE_KEY}", {}, "models.m.headers.Authorization", "NOPE_KEY"),
        ("${file:missing-secret}", {}, "models.m.headers.Authorization", "missing-secret"),
        (
            "${file:missing-secret}",
            {"CREDENTIALS_DIRECTORY": "/nonexistent-creds"},
            "",
            "/nonexistent-creds/missing-secret",
        ),
        ("Bearer $", {}, "models.m.headers.Authorization", "$$"),
        ("Bearer ${env:", {}, "models.m.headers.Authorization", "unterminated"),
    ],
)
def test_unresolved_secret_names_place_and_variable(tmp_path, header, environ, place, names):
    path = write_config(
        tmp_path / "config.json", {"models": {"m": {"url": "http://h", "headers": {"Authorization": header}}}}
    )
    result = run_llmhop("--config", str(path), "--check", environ=env(SECRET_KEY=SECRET, **environ), cwd=str(tmp_path))
    assert result.returncode == 1
    assert place in result.stderr and names in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr


def test_secret_values_never_appear_in_errors(tmp_path):
    (tmp_path / "token").write_text(SECRET + "\r\n")
    settings = {"models": {"m": {"url": "http://h", "headers": {"X-Key": "${file:token}\n${env:SECRET_KEY}"}}}}
    path = write_config(tmp_path / "config.json", settings)
    result = run_llmhop("--config", str(path), "--check", environ=env(SECRET_KEY=SECRET), cwd=str(tmp_path))
    assert result.returncode == 1
    assert "models.m.headers.X-Key: header values must not contain CR, LF or NUL" in result.stderr
    assert SECRET not in result.stderr


def test_check_without_secrets_checks_the_structure_only(tmp_path):
    settings = {"authTokens": ["${file:client_token}"], "models": {"m": {"url": "http://h", "headers": {"A": "$KEY"}}}}
    path = write_config(tmp_path / "config.json", settings)
    assert run_llmhop("--config", str(path), "--check").returncode == 1
    result = run_llmhop("--config", str(path), "--check", "--no-secrets")
    assert result.returncode == 0, result.stderr
    assert "config OK (1 model)" in result.stdout


def test_secrets_from_env_and_credentials_directory_reach_the_backend(tmp_path, backend_process, start_router):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "client_token").write_text("client-secret-1\n")
    (creds / "backend_key").write_text("file-key-7\n")
    settings = {
        "listen": "127.0.0.1:0",
        "authTokens": ["${file:client_token}", "pre$$fix-${env:OTHER_TOKEN}"],
        "models": {
            "m": {
                "url": backend_process.url,
                "headers": {
                    "X-Api-Key": "${env:BACKEND_KEY}/$BACKEND_KEY/${BACKEND_KEY}",
                    "X-File": "${file:backend_key}",
                },
            }
        },
    }
    router = start_router(
        settings, environ=env(CREDENTIALS_DIRECTORY=str(creds), BACKEND_KEY="bk-42", OTHER_TOKEN="t2")
    )
    port = router.port()
    status, body = post_chat(port, headers={"Authorization": "Bearer pre$fix-t2"})
    assert status == 200
    headers = dict(json.loads(body)["headers"])
    assert headers["X-Api-Key"] == "bk-42/bk-42/bk-42"
    assert headers["X-File"] == "file-key-7"
    status, _ = post_chat(port, headers={"Authorization": "Bearer client-secret-1"})
    assert status == 200
    status, _ = post_chat(port, headers={"Authorization": "Bearer wrong"})
    assert status == 401
    router.stop()
    for secret in ("client-secret-1", "bk-42", "pre$fix", "file-key-7"):
        assert secret not in router.output


def test_header_from_file_keeps_all_but_one_trailing_newline(tmp_path):
    from llmhop import secrets

    (tmp_path / "a").write_text("value\n\n")
    (tmp_path / "b").write_bytes(b"value\r\n")
    (tmp_path / "c").write_bytes(b"value")
    assert secrets.expand("${file:a}", "p", {}, str(tmp_path)) == "value\n"
    assert secrets.expand("${file:b}", "p", {}, str(tmp_path)) == "value"
    assert secrets.expand("${file:c}", "p", {}, str(tmp_path)) == "value"


def test_access_log_line_per_request_without_query_or_secrets(backend_process, start_router):
    router = start_router(
        {"listen": "127.0.0.1:0", "authTokens": ["tok-abc"], "models": {"m": {"url": backend_process.url}}}
    )
    port = router.port()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(
        "POST", "/v1/chat/completions?key=query-secret", json.dumps({"model": "m"}), {"Authorization": "Bearer tok-abc"}
    )
    response = conn.getresponse()
    size = len(response.read())
    conn.close()
    line = router.wait_for_line(r"POST /v1/chat/completions model=m status=200").string
    # The same shape as the router's other lines: local time, then the source.
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[llmhop\.access#info\] POST ", line), line
    assert "bytes=%d" % (size,) in line
    assert "duration=" in line
    status, _ = get(port, "/v1/models", {"Authorization": "Bearer wrong-guess"})
    assert status == 401
    router.wait_for_line(r"GET /v1/models model=- status=401")
    router.stop()
    for secret in ("tok-abc", "query-secret", "wrong-guess"):
        assert secret not in router.output


@pytest.mark.parametrize(
    "listen, family, host",
    [
        ("127.0.0.1:0", socket.AF_INET, "127.0.0.1"),
        ("[::1]:0", socket.AF_INET6, "::1"),
        ("tcp:0:interface=127.0.0.1", socket.AF_INET, "127.0.0.1"),
        ("tcp6:0:interface=\\:\\:1", socket.AF_INET6, "::1"),
    ],
)
def test_listen_forms(start_router, backend_process, listen, family, host):
    router = start_router({"listen": listen, "models": {"m": {"url": backend_process.url}}})
    address = router.address()
    port = int(address.rsplit(":", 1)[1])
    with socket.socket(family) as sock:
        sock.settimeout(10)
        sock.connect((host, port))
        sock.sendall(rawhttp.request(b"GET", b"/healthz"))
        assert rawhttp.status(rawhttp.read_response(sock)) == 200


def test_listen_on_all_interfaces_go_form(start_router, backend_process):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    router = start_router({"listen": ":%d" % (port,), "models": {"m": {"url": backend_process.url}}})
    assert router.address() == "0.0.0.0:%d" % (port,)
    assert get(port)[0] == 200


def test_listen_on_unix_socket(tmp_path, start_router, backend_process):
    path = tmp_path / "llmhop.sock"
    router = start_router({"listen": "unix:%s" % (path,), "models": {"m": {"url": backend_process.url}}})
    assert router.address() == "unix:%s" % (path,)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(rawhttp.request(b"POST", b"/v1/x", json.dumps({"model": "m"}).encode()))
        response = rawhttp.read_response(sock)
    assert rawhttp.status(response) == 200
    headers = dict(json.loads(rawhttp.split(response)[1])["headers"])
    assert "X-Forwarded-For" not in headers  # a unix peer has no address


def test_listen_with_tls(tmp_path, start_router, backend_process):
    ca = ScratchCA()
    (tmp_path / "server.pem").write_bytes(ca.issue(["localhost", "127.0.0.1"]))
    listen = "ssl:0:interface=127.0.0.1:privateKey=%s" % (tmp_path / "server.pem",)
    router = start_router({"listen": listen, "models": {"m": {"url": backend_process.url}}})
    port = int(router.address().rsplit(":", 1)[1])
    context = ssl.create_default_context(cadata=ca.pem.decode())
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    conn.request("POST", "/v1/x", json.dumps({"model": "m"}))
    response = conn.getresponse()
    seen = dict(json.loads(response.read())["headers"])
    assert response.status == 200
    assert seen["X-Forwarded-Proto"] == "https"


def test_systemd_socket_activation(tmp_path, backend_process, processes):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    config = write_config(
        tmp_path / "config.json",
        {"listen": "systemd:domain=INET:index=0", "models": {"m": {"url": backend_process.url}}},
    )
    router = Router(
        config,
        argv=socket_activated(listener, llmhop_command() + ["--config", str(config)]),
        pass_fds=(listener.fileno(),),
    )
    processes.append(router)
    listener.close()
    assert router.address() == "127.0.0.1:%d" % (port,)
    assert post_chat(port)[0] == 200


def test_sigterm_lets_in_flight_streams_finish_and_stops_accepting(start_router, backend_process):
    router = start_router({"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}})
    port = router.port()
    body = json.dumps({"model": "m", "script": {"kind": "sse", "n": 10, "interval": 0.1}}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(rawhttp.request(b"POST", b"/v1/chat/completions", body))
        rawhttp.read_until(sock, b"data: {")
        router.signal(signal.SIGTERM)
        router.wait_for_line("waiting up to")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        rest = rawhttp.read_all(sock, timeout=10)
    assert rest.count(b"data: {") >= 8 and rest.endswith(b"0\r\n\r\n")
    assert router.wait() == 0


def test_grace_period_is_bounded(start_router, backend_process):
    router = start_router(
        {"listen": "127.0.0.1:0", "timeouts": {"shutdown": 0.5}, "models": {"m": {"url": backend_process.url}}}
    )
    body = json.dumps({"model": "m", "script": {"kind": "sse", "n": 1000, "interval": 0.1}}).encode()
    with socket.create_connection(("127.0.0.1", router.port()), timeout=10) as sock:
        sock.sendall(rawhttp.request(b"POST", b"/v1/chat/completions", body))
        rawhttp.read_until(sock, b"data: {")
        router.signal(signal.SIGTERM)
        # The stream would take 100 s: exiting at all is the grace period ending it.
        assert router.wait(timeout=10) == 0
        assert not rawhttp.read_all(sock, timeout=5).endswith(b"0\r\n\r\n")
    router.wait_for_line("cutting off 1 request")


def test_sigint_stops_cleanly_too(start_router, backend_process):
    router = start_router({"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}})
    router.port()
    router.signal(signal.SIGINT)
    assert router.wait() == 0


def test_notify_socket_gets_ready_and_stopping(tmp_path, start_router, backend_process):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(15)
        router = start_router(
            {"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}}, environ=env(NOTIFY_SOCKET=path)
        )
        assert notify.recv(100) == b"READY=1"
        assert get(router.port())[0] == 200
        router.signal(signal.SIGTERM)
        assert notify.recv(100) == b"STOPPING=1"
    assert router.wait() == 0


def test_json_access_lines_are_whole_lines_with_workers(backend_process, start_router):
    router = start_router(
        {
            "listen": "127.0.0.1:0",
            "workers": 2,
            "accessLog": {"format": "json"},
            "models": {"m": {"url": backend_process.url}},
        }
    )
    router.wait_for_line(r"\[worker 2\] llmhop listening on")
    port = router.port()
    for _ in range(12):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": "m"}))
        conn.getresponse().read()
        conn.close()

    def access_lines():
        found = [line for line in router.output.splitlines() if '"requestId"' in line]
        return found if len(found) == 12 else None

    for line in wait_for(access_lines):
        entry = json.loads(line)  # the whole line, nothing before or after it
        assert (entry["path"], entry["status"], entry["replica"]) == ("/v1/chat/completions", 200, backend_process.url)
