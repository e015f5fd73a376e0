"""Blocking raw-socket HTTP helpers, for what an HTTP client library hides.

In-process tests call these through C{deferToThread} so that the reactor keeps
serving while the socket blocks.
"""

import contextlib
import socket
import time


def exchange(port, data, timeout=5.0, host="127.0.0.1"):
    """Send C{data}, then read one whole response (head and body)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout)


def read_response(sock, timeout=5.0):
    """Read one final response, its body framed by Content-Length or chunks."""
    data = read_until(sock, b"\r\n\r\n", timeout)
    while data.startswith(b"HTTP/1.1 1"):  # interim responses
        data = data.partition(b"\r\n\r\n")[2]
        data += b"" if b"\r\n\r\n" in data else read_until(sock, b"\r\n\r\n", timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    if b"content-length" in fields:
        while len(body) < int(fields[b"content-length"]):
            body += _recv(sock, timeout)
    elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            body += _recv(sock, timeout)
    else:
        body += read_all(sock, timeout)
    return head + b"\r\n\r\n" + body


def exchange_until_closed(port, data, timeout=5.0):
    """Send C{data}; read until the server closes the connection, however it does."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer and close before it reads everything (a
        # 1 MiB request line): what it sent may still be waiting here.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_all(sock, timeout)


def read_response_body_after_head(sock, head, timeout=5.0):
    """The rest of a chunked response whose C{head} (and maybe more) was read."""
    rest = head.partition(b"\r\n\r\n")[2]
    return dechunk(rest + read_all_until(sock, b"0\r\n\r\n", rest, timeout))


def read_all_until(sock, ending, already, timeout):
    chunks, tail = [], already[-len(ending) :]
    while not tail.endswith(ending):
        chunk = _recv(sock, timeout)
        chunks.append(chunk)
        tail = (tail + chunk)[-len(ending) :]
    return b"".join(chunks)


def dechunk(data):
    out, pos = [], 0
    while True:
        line_end = data.index(b"\r\n", pos)
        size = int(data[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[line_end + 2 : line_end + 2 + size])
        pos = line_end + 2 + size + 2


def _recv(sock, timeout):
    sock.settimeout(timeout)
    chunk = sock.recv(65536)
    if not chunk:
        raise AssertionError("connection closed mid-response")
    return chunk


def read_all(sock, timeout=5.0):
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            chunks.append(b"<RESET>")
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def read_until(sock, marker, timeout=5.0):
    """Read until C{marker} has arrived; return everything read."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        if time.monotonic() > deadline:
            raise AssertionError("%r did not arrive; got %r" % (marker, data[-200:]))
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed before %r; got %r" % (marker, data[-200:]))
        data += chunk
    return data


def request(method, path, body=b"", headers=(), version=b"HTTP/1.1"):
    """The bytes of one request with a Content-Length body."""
    lines = [b"%s %s %s" % (method, path, version), b"Host: gateway.test"]
    lines += [b"%s: %s" % (name, value) for name, value in headers]
    if body or method == b"POST":
        lines.append(b"Content-Length: %d" % (len(body),))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def status(response):
    """The status code of the first non-1xx response in C{response}."""
    for line in response.split(b"\r\n"):
        if line.startswith(b"HTTP/1.") and not line.split()[1].startswith(b"1"):
            return int(line.split()[1])
    raise AssertionError("no final status line in %r" % (response[:200],))


def split(response):
    """(head, body) of a response."""
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body
