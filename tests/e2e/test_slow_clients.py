"""Many slow clients at once do not hold up anyone else, and are all let go."""

import socket
import time

from tests import rawhttp
from tests.e2e.test_cli import post_chat


def test_two_hundred_slowloris_connections_do_not_delay_a_normal_request(start_router, backend_process):
    router = start_router(
        {"listen": "127.0.0.1:0", "timeouts": {"requestHead": 2}, "models": {"m": {"url": backend_process.url}}}
    )
    port = router.port()
    slow = []
    try:
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nX-Slow: %d\r\n" % i)
            slow.append(sock)
        started = time.monotonic()
        assert post_chat(port)[0] == 200
        assert time.monotonic() - started < 0.5
        # And every slow one is let go once its head deadline passes.
        for sock in slow:
            assert rawhttp.status(rawhttp.read_all(sock, timeout=10)) == 408
    finally:
        for sock in slow:
            sock.close()
