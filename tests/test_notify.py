"""``llmhop notify``'s small pieces; tests/e2e/test_notify.py runs it whole."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from llmhop import notify


def test_an_abstract_notify_socket_is_named_with_a_leading_nul():
    assert notify.notify_address("@systemd/notify") == "\0systemd/notify"
    assert notify.notify_address("/run/systemd/notify") == "/run/systemd/notify"


def test_without_a_notify_socket_nothing_is_sent():
    assert notify.sd_notify("READY=1", environ={}) is False
    assert notify.sd_notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_a_datagram_is_sent_to_the_notify_socket(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = "\0llmhop-unit-notify-%d" % id(sock)
        sock.bind(name)
        assert notify.sd_notify("READY=1\nSTATUS=x", environ={"NOTIFY_SOCKET": "@" + name[1:]}) is True
        assert sock.recv(100) == b"READY=1\nSTATUS=x"


def test_a_status_is_returned_and_a_signal_is_raised_again(monkeypatch):
    raised = []
    monkeypatch.setattr(notify.signal, "signal", lambda number, handler: None)
    assert notify.exit_as(0, kill=lambda pid, number: raised.append(number)) == 0
    assert notify.exit_as(3, kill=lambda pid, number: raised.append(number)) == 3
    assert raised == []
    # Had the signal not killed the wrapper, 128 + it, as a shell reports it.
    assert notify.exit_as(-signal.SIGTERM, kill=lambda pid, number: raised.append(number)) == 128 + signal.SIGTERM
    assert raised == [signal.SIGTERM]


def test_the_command_follows_the_double_dash():
    wrapper = notify.parse(["--socket", "/run/w/http.sock", "--", "vllm", "serve", "--port", "1"], tell=pytest.fail)
    assert wrapper is not None
    assert list(wrapper.command) == ["vllm", "serve", "--port", "1"]
    assert wrapper.health == notify.Health(path="/health", socket_path="/run/w/http.sock")
    assert wrapper.health.describe() == "unix:/run/w/http.sock:/health"


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "1", "--"],
        ["--port", "1", "--path", "x", "--", "true"],
        ["--port", "65536", "--", "true"],
        ["--port", "1", "--interval", "0", "--", "true"],
    ],
)
def test_bad_arguments_are_told_in_one_line(argv):
    told = []
    assert notify.parse(argv, tell=told.append) is None
    assert len(told) == 1 and told[0].startswith("notify: ")


def test_only_the_standard_library_is_imported():
    # It runs in every worker unit: nothing but the standard library (no attrs, no Twisted).
    load = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('n', sys.argv[1]); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); print(' '.join(sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", load, notify.__file__], capture_output=True, text=True, check=True)
    modules = {name.split(".")[0] for name in loaded.stdout.split()}
    assert not modules & {"attrs", "attr", "twisted", "treq", "prometheus_client", "llmhop"}


class _Child:
    returncode = None

    def __init__(self):
        self.calls = []

    def send_signal(self, number):
        self.calls.append(number)

    def terminate(self):
        self.calls.append("terminate")


def test_a_stop_that_comes_while_the_server_starts_is_handed_on(monkeypatch):
    saved = {number: signal.getsignal(number) for number in notify.FORWARDED}
    child = _Child()

    def popen(argv):
        os.kill(os.getpid(), signal.SIGTERM)  # systemd stops the unit right now
        return child

    monkeypatch.setattr(notify.subprocess, "Popen", popen)
    wrapper = notify.parse(["--port", "1", "--", "server"], tell=pytest.fail)
    try:
        wrapper.start()
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    assert wrapper.stopping
    assert child.calls == ["terminate"]
