"""llmhop.listening: endpoint strings read as Twisted reads them, and the one line for a failed bind."""

import errno
import os
import socket

import pytest
import pytest_twisted
from hypothesis import given, strategies as st
from twisted.internet import reactor
from twisted.internet.endpoints import _parse as twisted_parse
from twisted.internet.error import CannotListenError

from llmhop import config as configlib
from llmhop.listening import Endpoint, bind_failure, preflight
from llmhop.service import GatewayService
from tests.helpers import wait_for


@given(st.text(alphabet=":=\\abcP0/ .", max_size=30))
def test_endpoint_strings_are_split_as_twisted_splits_them(description):
    # Twisted's own parser (private, so only an oracle here) is the reference.
    try:
        args, kwargs = twisted_parse(description)
    except RuntimeError:  # a trailing backslash
        return
    ours = Endpoint.parse(description)
    assert ((ours.kind,) if args else ()) + ours.args == tuple(args)
    assert ours.kwargs == kwargs


@pytest.mark.parametrize(
    "description, files",
    [
        ("ssl:8443", [("privateKey", "server.pem")]),
        ("ssl:8443:privateKey=k.pem", [("privateKey", "k.pem")]),
        ("ssl:8443:certKey=c.pem:privateKey=k.pem", [("privateKey", "k.pem"), ("certKey", "c.pem")]),
        (
            "ssl:8443:privateKey=k.pem:extraCertChain=chain.pem",
            [("privateKey", "k.pem"), ("extraCertChain", "chain.pem")],
        ),
    ],
)
def test_the_files_an_ssl_endpoint_reads(description, files):
    assert Endpoint.parse(description).ssl_files() == files


def test_preflight(tmp_path):
    key = tmp_path / "k.pem"
    key.write_text("x")
    assert preflight("tcp:8080") == []
    assert preflight("unix:%s/l.sock" % (tmp_path,)) == []
    assert preflight("ssl:0:privateKey=%s" % (key,)) == []
    [problem] = preflight("unix:%s/no/l.sock" % (tmp_path,), "metrics.listen")
    assert problem.startswith("metrics.listen unix:%s/no/l.sock: directory %s/no does not exist" % (tmp_path, tmp_path))
    [problem] = preflight("ssl:0:privateKey=%s:certKey=nope.pem" % (key,))
    assert "certKey file nope.pem does not exist (relative to %s)" % (os.getcwd(),) in problem


def cannot_listen(code):
    return CannotListenError("127.0.0.1", 80, OSError(code, os.strerror(code)))


@pytest.mark.parametrize(
    "description, error, expected",
    [
        ("tcp:8080", cannot_listen(errno.EADDRINUSE), "address already in use; another process listens there"),
        ("tcp:80", cannot_listen(errno.EACCES), "permission denied; ports below 1024 need privileges"),
        ("tcp:8080", cannot_listen(errno.EACCES), "permission denied"),
        ("tcp:8080", cannot_listen(errno.EADDRNOTAVAIL), "cannot assign requested address; no interface of this host"),
        # What Twisted's unix port raises from its lock file: the file names are Twisted's, not the operator's.
        (
            "unix:/no/l.sock",
            FileNotFoundError(errno.ENOENT, "No such file", "1531", "/no/l.sock.lock"),
            "no such file or directory; directory /no does not exist",
        ),
        (
            "unix:/run/l.sock",
            PermissionError(errno.EACCES, "Permission denied"),
            "permission denied; this user may not create /run/l.sock",
        ),
        ("tcp:8080", ValueError("odd"), "odd"),
    ],
)
def test_a_failed_bind_is_one_line_with_the_likely_fix(description, error, expected):
    line = bind_failure(description, error)
    assert line.startswith("listen %s: cannot listen: " % (description,))
    assert expected in line
    assert "\n" not in line and ".lock" not in line and "1531" not in line
    if description == "tcp:8080" and "permission" in expected:
        assert "1024" not in line


class _KeepsRunning:
    """The test's reactor, except that a failed start does not stop it (it would stop the test run)."""

    def __init__(self, reactor):
        self._reactor = reactor

    def __getattr__(self, name):
        return getattr(self._reactor, name)

    def callWhenRunning(self, f, *args, **kwargs):
        pass


@pytest_twisted.inlineCallbacks
def test_a_listen_entry_that_cannot_be_bound_releases_those_bound_before_it(tmp_path):
    free_path = tmp_path / "first.sock"
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    with taken:
        port = taken.getsockname()[1]
        config = configlib.parse(
            {"listen": ["unix:%s" % (free_path,), "127.0.0.1:%d" % (port,)], "models": {"m": {"url": "http://h"}}}, {}
        )
        gateway = GatewayService(config, _KeepsRunning(reactor))
        gateway.privilegedStartService()
        yield gateway._listening
    assert gateway.failure.startswith("listen[1] tcp:%d:interface=127.0.0.1: cannot listen" % (port,))
    # The unix socket bound first is let go (its socket file removed).
    yield wait_for(lambda: not free_path.exists())
