"""The contract with Twisted's internals (llmhop/internals.py): what each one is, and that nothing else touches one.

If a Twisted release renames or reshapes one of these, a test here says so
before llmhop relays something it must not.
"""

import ast
import pathlib

import pytest
from OpenSSL import SSL
from twisted.internet import abstract
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web._newclient import Request
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyChannel

from llmhop import client, internals
from tests.certs import ScratchCA

PACKAGE = pathlib.Path(internals.__file__).parent
# The underscore names internals.py reaches into: no other module may count
# them as its own just because internals.py names them.
REACHED_INTO = {
    "_factory",
    "_parser",
    "_quiescentCallback",
    "_disconnected",
    "_sslContextFactory",
    "_writeDisconnected",
    "_tempDataBuffer",
}


def test_this_twisted_has_what_behaviour_relies_on():
    assert [name for name, present in internals.required() if not present] == []
    internals.check()


@pytest.mark.parametrize(
    "owner, name",
    [(HTTPConnectionPool, "_factory"), (http.Request, "_disconnected")],
    ids=["pool-factory", "request-disconnected"],
)
def test_a_twisted_without_one_fails_the_import_naming_it(monkeypatch, owner, name):
    monkeypatch.delattr(owner, name)
    with pytest.raises(ImportError, match="%s.%s" % (owner.__name__, name)):
        internals.check()


def test_client_gone_is_the_request_flag_that_connection_lost_sets():
    request = server.Request(DummyChannel())
    assert internals.client_gone(request) is False
    request.connectionLost(Failure(ConnectionError("gone")))
    assert internals.client_gone(request) is True


def test_the_pool_builds_connections_with_the_factory_set():
    pool = client.build_pool(MemoryReactor(), 4, 1.0)
    assert pool._factory is client.BackendConnectionFactory


def test_the_quiescent_callback_is_the_one_the_factory_was_given():
    def back_to_the_pool(protocol):
        pass

    factory = client.BackendConnectionFactory(back_to_the_pool, None)
    assert internals.quiescent_callback(factory) is back_to_the_pool
    protocol = factory.buildProtocol(None)
    assert protocol._quiescentCallback is back_to_the_pool


def test_the_pending_parser_exists_from_the_request_on_and_holds_the_connection_field():
    protocol = client.BackendProtocol()
    assert internals.pending_parser(protocol) is None
    protocol.makeConnection(StringTransport())
    protocol.request(Request(b"GET", b"/", Headers({b"host": [b"x"]}), None))
    parser = internals.pending_parser(protocol)
    assert parser is not None
    parser.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nContent-Length: 0\r\n\r\n")
    assert internals.connection_field(parser) == [b"keep-alive, X-Secret"]


def test_the_tls_context_factory_of_an_ssl_listen_string(tmp_path):
    pem = tmp_path / "server.pem"
    pem.write_bytes(ScratchCA().issue(["localhost"]))
    endpoint = serverFromString(MemoryReactor(), "ssl:0:privateKey=%s:certKey=%s" % (pem, pem))
    context = internals.tls_context_factory(endpoint).getContext()
    context.check_privatekey()  # an OpenSSL context, the key and certificate loaded
    assert isinstance(context, SSL.Context)


def test_the_write_queue_attributes_and_when_nothing_is_queued():
    assert internals.WRITE_QUEUE_VISIBLE
    probe = abstract.FileDescriptor(reactor=MemoryReactor())
    assert (probe.dataBuffer, probe.offset, probe._writeDisconnected, probe._tempDataBuffer) == (b"", 0, False, [])
    assert internals.nothing_queued(probe)
    probe._tempDataBuffer.append(b"x")
    assert not internals.nothing_queued(probe)


def _owned_names():
    """Every underscore name llmhop defines itself: its functions, classes, attributes, arguments, imports."""
    owned = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                owned.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                owned.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                owned.add(node.attr)
            elif isinstance(node, ast.arg):
                owned.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("_"):
                owned.add(node.value)  # attrs private fields, getattr names
    return owned


def _twisted_internals_used(path, owned):
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("twisted", "treq")):
            private = [a.name for a in node.names if a.name.startswith("_")]
            if "._" in node.module or private:
                found.append("%d: from %s import %s" % (node.lineno, node.module, ", ".join(private) or "…"))
        elif isinstance(node, ast.Attribute):
            name = node.attr
            if name.startswith("_") and not name.startswith("__") and name not in owned:
                found.append("%d: .%s" % (node.lineno, name))
    return found


def test_no_other_module_touches_a_twisted_internal():
    owned = _owned_names() - REACHED_INTO
    used = {
        path.name: _twisted_internals_used(path, owned)
        for path in sorted(PACKAGE.glob("*.py"))
        if path.name != "internals.py"
    }
    assert {name: found for name, found in used.items() if found} == {}


def test_the_guard_sees_a_twisted_internal(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from twisted.web._newclient import HTTPParser\ndef f(channel):\n    return channel._command\n")
    assert _twisted_internals_used(module, _owned_names()) == [
        "1: from twisted.web._newclient import …",
        "3: ._command",
    ]
