"""A raw backend that records the exact bytes it receives, parsed by an independent strict parser.

It is not built on Twisted: what it sees of a request is what h11 (a strict
HTTP/1.1 implementation, used here as a test oracle) reads in the bytes the
router sent, so a forwarded request that the router framed differently from
a careful parser shows up as a protocol error or an extra request here.
Runs in threads of its own: usable from in-process tests and beside router
processes alike.
"""

import json
import socket
import socketserver
import threading
from typing import NamedTuple, Optional

import h11


class Seen(NamedTuple):
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name.lower()]


def parse_requests(data: bytes) -> tuple[list[Seen], Optional[str]]:
    """The requests h11 reads, as a server, in C{data}, and its complaint about what followed (if any)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    seen: list[Seen] = []
    current = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return seen, None
            if isinstance(event, h11.Request):
                current, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                seen.append(Seen(current.method, current.target, [(n, v) for n, v in current.headers], body))
                conn.send(h11.Response(status_code=204, headers=[]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    return seen, None  # Connection: close; nothing after it is a request
                conn.start_next_cycle()
    except h11.RemoteProtocolError as e:
        return seen, str(e)


OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"


class Recorder:
    """A backend on 127.0.0.1 that keeps every byte of every connection.

    C{answer}, when set, is sent as it is to each request (then the connection
    closes); otherwise each request gets a 200 JSON answer naming what was seen.
    """

    def __init__(self) -> None:
        self.connections: list[bytearray] = []
        self.errors: list[str] = []
        self.answer: Optional[bytes] = None
        self._lock = threading.Lock()
        recorder = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                recorder._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = "http://127.0.0.1:%d" % (self.port,)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def received(self) -> bytes:
        """Every byte received so far, over all connections, in order of connection."""
        with self._lock:
            return b"".join(bytes(c) for c in self.connections)

    def requests(self) -> list[Seen]:
        """What h11 reads in each connection's bytes; a protocol error fails the test."""
        with self._lock:
            connections = [bytes(c) for c in self.connections]
        seen: list[Seen] = []
        for data in connections:
            requests, complaint = parse_requests(data)
            assert complaint is None, "the router sent bytes h11 refuses: %s in %r" % (complaint, data[:300])
            seen.extend(requests)
        return seen

    def _serve(self, sock: socket.socket) -> None:
        """Record what arrives; answer each request h11 completes in it, in order."""
        record = bytearray()
        with self._lock:
            self.connections.append(record)
        answered = 0
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                record += data
            requests, complaint = parse_requests(bytes(record))
            for request in requests[answered:]:
                if not self._respond(sock, request):
                    return
            answered = len(requests)
            if complaint is not None:
                with self._lock:
                    self.errors.append(complaint)
                sock.close()
                return

    def _respond(self, sock: socket.socket, request: Seen) -> bool:
        """Answer C{request}; False once the connection is closed."""
        if self.answer is not None:
            sock.sendall(self.answer)
            sock.close()
            return False
        method, target = request.method.decode(), request.target.decode()
        seen = json.dumps({"method": method, "target": target, "length": len(request.body)}).encode()
        sock.sendall(OK_ANSWER % (len(seen), seen))
        return True
