"""Many slow clients at once do not hold up anyone else, and are all let go."""

import socket

from tests import rawhttp
from tests.e2e.test_cli import post_chat


def test_two_hundred_slowloris_connections_do_not_delay_a_normal_request(start_router, backend_process):
    router = start_router(
        {"listen": "127.0.0.1:0", "timeouts": {"requestHead": 3}, "models": {"m": {"url": backend_process.url}}}
    )
    port = router.port()
    slow = []
    try:
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nX-Slow: %d\r\n" % i)
            slow.append(sock)
        assert post_chat(port)[0] == 200
        # Answered while every slow one still waits for its head deadline (order, not a stopwatch).
        assert not any(_answered(sock) for sock in slow)
        # And every slow one is let go once its head deadline passes.
        for sock in slow:
            assert rawhttp.status(rawhttp.read_all(sock, timeout=10)) == 408
    finally:
        for sock in slow:
            sock.close()


def _answered(sock):
    """Whether anything came back on C{sock} yet, without waiting."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"" (closed) counts too
        return True
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)
