"""A router at its open-file limit leaves new connections waiting instead of failing them (llmhop.accepting)."""

import json
import resource
import socket
import threading

from tests.e2e.procs import Router, write_config

# Low enough that a few dozen streams reach it: about 20 client connections
# after Python's and Twisted's own descriptors and the reserve.
OPEN_FILES = 128
STREAMS = 60


def limit_open_files():
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def stream(port, results):
    body = json.dumps({"model": "m", "stream": True, "script": {"kind": "sse", "n": 4, "interval": 0.25}}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % (
        len(body),
    )
    received = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(head + body)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
    except OSError as e:
        results.append("error: %s" % (e,))
        return
    status = received.split(b" ", 2)[1] if received else b"none"
    results.append("ok" if status == b"200" and b"data: [DONE]" in received else "status %s" % (status.decode(),))


def test_more_streams_than_descriptors_wait_their_turn_and_all_succeed(tmp_path, backend_process):
    config = write_config(
        tmp_path / "config.json", {"listen": "127.0.0.1:0", "models": {"m": {"url": backend_process.url}}}
    )
    router = Router(config, preexec_fn=limit_open_files)
    try:
        port = router.port()
        results = []
        threads = [threading.Thread(target=stream, args=(port, results)) for _ in range(STREAMS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert results == ["ok"] * STREAMS
        router.wait_for_line(r"not accepting connections for now: \d+ client connections")
        assert "Too many open files" not in router.output
        assert "EMFILE" not in router.output
    finally:
        router.stop()
