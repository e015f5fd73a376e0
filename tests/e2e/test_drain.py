"""Readiness and drain (SPEC §6): on SIGTERM, /ready says 503 while requests are still served for
timeouts.drainDelay, then the socket closes and in-flight requests finish."""

import json
import re
import signal
import socket

import pytest

from tests import rawhttp
from tests.e2e.test_cli import get, post_chat
from tests.e2e.test_reload import open_stream


def test_sigterm_keeps_serving_for_the_drain_delay_with_ready_at_503(start_router, backend_process):
    router = start_router(
        {"listen": "127.0.0.1:0", "timeouts": {"drainDelay": 4}, "models": {"m": {"url": backend_process.url}}}
    )
    port = router.port()
    assert get(port, "/ready") == (200, b'{"status": "ready"}')
    with open_stream(port, n=50, interval=0.1) as stream:
        router.signal(signal.SIGTERM)
        router.wait_for_line("draining: /ready answers 503")
        # New connections are still accepted and served; only readiness changed.
        status, content = get(port, "/ready")
        assert (status, json.loads(content)) == (503, {"status": "draining"})
        assert get(port, "/health")[0] == 200
        assert post_chat(port)[0] == 200
        # Then the socket closes and the stream (5 s long) still finishes.
        router.wait_for_line("waiting up to")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert rawhttp.read_all(stream, timeout=15).endswith(b"0\r\n\r\n")
    assert router.wait() == 0


def test_every_worker_answers_ready_503_during_the_drain(start_router, backend_process):
    router = start_router(
        {
            "listen": "127.0.0.1:0",
            "workers": 2,
            "timeouts": {"drainDelay": 3},
            "models": {"m": {"url": backend_process.url}},
        }
    )
    port = router.port()
    router.wait_for_line(r"\[worker 2\] llmhop listening")
    router.signal(signal.SIGTERM)
    router.wait_for_line(r"draining: /ready")
    # Whichever process accepts, it says it is draining (many tries reach both).
    assert {get(port, "/ready")[0] for _ in range(20)} == {503}
    assert router.wait(timeout=20) == 0
    # The workers were told at once, not when the first process's delay ended.
    lines = router.output.splitlines()
    worker_drains = next(i for i, line in enumerate(lines) if re.search(r"\[worker 2\] draining", line))
    first_closes = next(i for i, line in enumerate(lines) if re.search(r"\[worker 1\] drain delay over", line))
    assert worker_drains < first_closes
