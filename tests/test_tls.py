"""https:// backends are verified, hostname and chain, against the system trust store."""

import json

import pytest
import treq
from pytest_twisted import blockon, inlineCallbacks
from twisted.internet import defer, reactor, ssl
from twisted.web import server

from tests import backend as backendlib
from tests.certs import ScratchCA


@pytest.fixture(scope="module")
def ca():
    return ScratchCA()


@pytest.fixture
def tls_backend(ca, request):
    hostnames = getattr(request, "param", ["localhost", "127.0.0.1"])
    options = ssl.PrivateCertificate.loadPEM(ca.issue(hostnames)).options()
    port = reactor.listenSSL(0, server.Site(backendlib.Backend(reactor)), options, interface="127.0.0.1")
    yield port.getHost().port
    blockon(defer.maybeDeferred(port.stopListening))


@pytest.fixture
def trusted(ca, tmp_path, monkeypatch):
    """Make the test CA the system trust store, as an operator would with SSL_CERT_FILE."""
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def route(make_router, url):
    return make_router({"models": {"m": {"url": url}}})


@inlineCallbacks
def call(router):
    response = yield treq.post(router.url + "/v1/chat/completions", json.dumps({"model": "m"}).encode())
    return response.code, (yield response.json())


@inlineCallbacks
def test_verified_https_backend(make_router, tls_backend, trusted):
    code, seen = yield call(route(make_router, "https://localhost:%d" % (tls_backend,)))
    assert code == 200
    assert seen["method"] == "POST"


@inlineCallbacks
def test_unknown_ca_is_502(make_router, tls_backend, tmp_path, monkeypatch):
    other = tmp_path / "other-ca.pem"
    other.write_bytes(ScratchCA().pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    code, error = yield call(route(make_router, "https://localhost:%d" % (tls_backend,)))
    assert code == 502
    assert error["error"]["code"] == "upstream_unreachable"


@pytest.mark.parametrize("tls_backend", [["backend.invalid"]], indirect=True)
@inlineCallbacks
def test_wrong_hostname_is_502(make_router, tls_backend, trusted):
    code, error = yield call(route(make_router, "https://localhost:%d" % (tls_backend,)))
    assert code == 502


@inlineCallbacks
def test_plain_http_to_a_tls_port_is_502(make_router, tls_backend):
    code, error = yield call(route(make_router, "http://127.0.0.1:%d" % (tls_backend,)))
    assert code == 502


@inlineCallbacks
def test_a_failed_tls_handshake_fails_over_to_the_next_replica(
    make_router, make_backend, tls_backend, tmp_path, monkeypatch
):
    """Nothing of the request was sent before the handshake failed: another replica may have it."""
    other = tmp_path / "other-ca.pem"
    other.write_bytes(ScratchCA().pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    live = make_backend()
    router = make_router({"models": {"m": {"url": ["https://localhost:%d" % (tls_backend,), live.url]}}})
    code, seen = yield call(router)
    assert code == 200 and seen["method"] == "POST"
    assert live.served == 1
