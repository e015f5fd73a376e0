"""llmhop in front of real llama.cpp servers (llama-server built from source, tiny generated models).

Skipped unless C{LLMHOP_LLAMA_SERVER} (the binary) and C{LLMHOP_LLAMA_MODEL} (a GGUF
from make_model.py) are set; C{.ci/run} builds both (tests/llamacpp/build-server).
"""

import http.client
import json
import os
import shutil
import signal
import socket
import sys
import tempfile

import pytest

from tests import rawhttp
from tests.e2e.procs import Process, Router, fake_notify_socket, notify_command, wait_for, write_config

SERVER = os.environ.get("LLMHOP_LLAMA_SERVER")
MODEL = os.environ.get("LLMHOP_LLAMA_MODEL")
pytestmark = pytest.mark.skipif(not (SERVER and MODEL), reason="LLMHOP_LLAMA_SERVER and LLMHOP_LLAMA_MODEL not set")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer(Process):
    """llama-server on 127.0.0.1, at a port of its own; C{model} may be a FIFO nobody writes (loading forever)."""

    def __init__(self, alias, port=None, model=None, extra=(), notify=None, socket_path=None):
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % (self.port,)
        # A host ending in .sock is a unix socket to llama-server.
        where = ["--host", socket_path] if socket_path else ["--host", "127.0.0.1", "--port", str(self.port)]
        argv = [SERVER, "-m", model or MODEL, "--alias", alias] + where
        argv += ["--no-webui", "-c", "8192", "--parallel", "2", "--embeddings", "--pooling", "mean", "--metrics"]
        argv += ["--threads", "1"]
        argv += ["--load-mode", "none"] if model else []
        environ = {"PATH": os.environ.get("PATH", "")}
        if notify is not None:  # under `llmhop-notify`, telling that fake notify socket
            health = ["--socket", socket_path] if socket_path else ["--port", str(self.port)]
            argv = notify_command() + health + ["--interval", "0.1", "--"] + argv
            environ = notify.environ
        super().__init__(argv + list(extra), environ=environ)

    def ready(self):
        wait_for(lambda: self.get("/health")[0] == 200, timeout=60)
        return self

    def get(self, path):
        try:
            return request(self.port, "GET", path)
        except OSError:
            return None, None

    def busy_slots(self):
        status, body = self.get("/slots")
        return sum(1 for slot in json.loads(body) if slot.get("is_processing")) if status == 200 else None


def request(port, method, path, body=None, headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def chat(model, content="Hello there", **extra):
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


@pytest.fixture
def two_servers(processes):
    a, b = LlamaServer("tiny-a"), LlamaServer("tiny-b")
    processes.extend([a, b])
    return a.ready(), b.ready()


def router(processes, tmp_path, models, **settings):
    config = write_config(tmp_path / "config.json", {"listen": "127.0.0.1:0", "models": models, **settings})
    process = Router(config)
    processes.append(process)
    return process.port()


def test_routing_by_name_reaches_each_server(processes, tmp_path, two_servers):
    a, b = two_servers
    port = router(processes, tmp_path, {"tiny-a": {"url": a.url}, "tiny-b": {"url": b.url}})
    for name in ("tiny-a", "tiny-b"):
        status, body = request(port, "POST", "/v1/chat/completions", chat(name))
        answer = json.loads(body)
        assert status == 200 and answer["model"] == name and answer["usage"]["completion_tokens"] > 0


def test_embeddings_pass_through(processes, tmp_path, two_servers):
    a, _ = two_servers
    port = router(processes, tmp_path, {"tiny-a": {"url": a.url}})
    status, body = request(port, "POST", "/v1/embeddings", {"model": "tiny-a", "input": "hello"})
    assert status == 200 and len(json.loads(body)["data"][0]["embedding"]) == 64


def test_a_stream_arrives_while_the_server_still_generates(processes, tmp_path, two_servers):
    a, _ = two_servers
    port = router(processes, tmp_path, {"tiny-a": {"url": a.url}})
    body = json.dumps(chat("tiny-a", stream=True, max_tokens=4000, ignore_eos=True)).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(rawhttp.request(b"POST", b"/v1/chat/completions", body))
        rawhttp.read_until(sock, b"data: {")
        # The first event is here and the server has not finished: nothing was buffered.
        assert a.busy_slots() == 1
        rest = rawhttp.read_all(sock, timeout=120)
    assert rest.count(b"data: {") > 100 and rest.endswith(b"0\r\n\r\n")


def test_a_client_that_leaves_makes_the_server_stop_generating(processes, tmp_path, two_servers):
    a, _ = two_servers
    port = router(processes, tmp_path, {"tiny-a": {"url": a.url}})
    # Unstopped, this would generate for minutes.
    body = json.dumps(chat("tiny-a", stream=True, max_tokens=200000, ignore_eos=True)).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(rawhttp.request(b"POST", b"/v1/chat/completions", body))
    rawhttp.read_until(sock, b"data: {")
    assert a.busy_slots() == 1
    sock.close()
    wait_for(lambda: a.busy_slots() == 0, timeout=20)


def test_a_killed_server_goes_down_and_comes_back(processes, tmp_path, two_servers):
    a, b = two_servers
    check = {"interval": 0.2, "timeout": 1, "failures": 1}
    port = router(processes, tmp_path, {"tiny": {"url": [a.url, b.url], "healthCheck": check}})

    def states():
        status, body = request(port, "GET", "/status")
        return [r["state"] for r in json.loads(body)["routes"]["tiny"]["replicas"]]

    wait_for(lambda: states() == ["up", "up"])
    a.stop()
    wait_for(lambda: states() == ["down", "up"])
    for _ in range(6):
        assert request(port, "POST", "/v1/chat/completions", chat("tiny"))[0] == 200
    again = LlamaServer("tiny-a", port=a.port)
    processes.append(again)
    wait_for(lambda: states() == ["up", "up"], timeout=60)


def test_a_loading_server_answers_503_and_is_retried_then_taken_down(processes, tmp_path, two_servers):
    _, ready = two_servers
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)  # nobody writes: the server stays "Loading model" (503) until stopped
    loading = LlamaServer("tiny", model=str(fifo))
    processes.append(loading)
    wait_for(lambda: loading.get("/health")[0] == 503)
    port = router(
        processes,
        tmp_path,
        {"retried": {"url": [loading.url, ready.url]}, "not-retried": {"url": [loading.url, ready.url], "retryOn": []}},
    )
    assert {request(port, "POST", "/v1/chat/completions", chat("retried"))[0] for _ in range(6)} == {200}
    seen = {request(port, "POST", "/v1/chat/completions", chat("not-retried"))[0] for _ in range(6)}
    assert seen == {200, 503}
    # Health is kept per replica URL: checked, the loading one is down for every route.
    checks = {"interval": 0.2, "failures": 1}
    port = router(processes, tmp_path, {"checked": {"url": [loading.url, ready.url], "healthCheck": checks}})

    def checked_states():
        body = json.loads(request(port, "GET", "/status")[1])
        return [r["state"] for r in body["routes"]["checked"]["replicas"]]

    wait_for(lambda: checked_states() == ["down", "up"])
    status, body = request(port, "GET", "/status")
    assert json.loads(body)["routes"]["checked"]["replicas"][0]["lastError"] == "answered 503"


def test_notify_tells_systemd_ready_once_the_model_answers(processes):
    with fake_notify_socket() as systemd:
        server = LlamaServer("tiny", notify=systemd)
        processes.append(server)
        assert systemd.wait_for("READY=1", timeout=60).startswith("READY=1\n")
        assert server.get("/health")[0] == 200
        assert server.proc.poll() is None  # the wrapper stays, as the unit's main process
        server.signal(signal.SIGTERM)
        assert server.wait(30) in (0, -signal.SIGTERM)


def test_a_worker_on_a_unix_socket_is_told_ready_and_routed(processes, tmp_path):
    # What the NixOS module runs for a worker without a port.
    directory = tempfile.mkdtemp(prefix="worker-")  # short: unix socket paths stop at 108 bytes
    path = os.path.join(directory, "http.sock")
    with fake_notify_socket() as systemd:
        server = LlamaServer("tiny", notify=systemd, socket_path=path)
        processes.append(server)
        systemd.wait_for("READY=1", timeout=60)
    port = router(processes, tmp_path, {"tiny": {"url": "unix:" + path}})
    status, body = request(port, "POST", "/v1/chat/completions", chat("tiny"))
    assert status == 200 and json.loads(body)["model"] == "tiny"
    server.signal(signal.SIGTERM)
    server.wait(30)
    shutil.rmtree(directory)


def test_notify_fails_at_once_when_the_model_fails_to_load(processes, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 60)  # the magic, then garbage: the load fails
    with fake_notify_socket() as systemd:
        server = LlamaServer("tiny", model=str(broken), notify=systemd)
        processes.append(server)
        status = server.wait(60)  # at once, not after a start timeout
        assert status not in (0, None)
        assert not any("READY=1" in m for m in systemd.drain())
    line = "llmhop: notify: the server exited with status %d before http://127.0.0.1:%d/health answered 200"
    assert line % (status, server.port) in server.output


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
