"""``llmhop notify``: a stand-in model server, a fake ``$NOTIFY_SOCKET``, real processes.

The socket is what systemd would listen on: a unix datagram socket bound by the
test.  The stand-in prints each health probe, so the tests count probes instead
of sleeping: "no READY=1 yet" is checked after the wrapper has seen 503s.
"""

import os
import signal
import socket
import sys
import tempfile

import pytest

from tests.e2e.procs import Process, env, fake_notify_socket, llmhop_command, notify_command, pid_alive, wait_for

STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin_server.py")


@pytest.fixture
def systemd():
    with fake_notify_socket() as sock:
        yield sock


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Wrapper(Process):
    """The wrapper; stopping it also kills its server, should the wrapper have failed to."""

    def stop(self):
        servers = children(self.pid)
        super().stop()
        for pid in servers:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def wrapper(processes, environ, notify_args, server_args, command=None):
    """C{llmhop-notify NOTIFY_ARGS -- standin SERVER_ARGS} (or C{command}), started."""
    argv = (command or notify_command()) + ["--interval", "0.05"] + notify_args
    process = Wrapper(argv + ["--", sys.executable, STANDIN] + server_args, environ=environ)
    processes.append(process)
    return process


def server_pid(process):
    """The wrapper's one child: the server."""
    wait_for(lambda: children(process.pid))
    return children(process.pid)[0]


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def probes(process, status):
    return sum(1 for line in process.output.splitlines() if line.startswith("probe %d" % status))


@pytest.mark.parametrize("spelling", ["llmhop-notify", "llmhop notify"])
def test_ready_is_sent_once_the_server_answers_and_not_before(processes, systemd, tmp_path, spelling):
    port, ready = free_port(), tmp_path / "loaded"
    server = ["--port", str(port), "--ready-file", str(ready)]
    command = notify_command() if spelling == "llmhop-notify" else llmhop_command() + ["notify"]
    process = wrapper(processes, systemd.environ, ["--port", str(port)], server, command)
    wait_for(lambda: probes(process, 503) >= 3)
    sent = systemd.drain()
    assert not any("READY=1" in m for m in sent)
    assert "STATUS=waiting for http://127.0.0.1:%d/health\nMAINPID=%d" % (port, process.pid) in sent
    ready.touch()
    assert systemd.wait_for("READY=1").startswith("READY=1\n")
    # The wrapper stays the main process, relays signals, and polls no more.
    wait_for(lambda: probes(process, 200) >= 1)
    process.signal(signal.SIGHUP)
    process.wait_for_line("got SIGHUP")
    assert probes(process, 200) == 1
    # A stop is forwarded; the server's status is the wrapper's.
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_a_server_killed_by_a_signal_kills_the_wrapper_with_it(processes, systemd):
    port = free_port()
    process = wrapper(processes, systemd.environ, ["--port", str(port)], ["--port", str(port), "--on-term", "default"])
    systemd.wait_for("READY=1")
    process.signal(signal.SIGTERM)  # forwarded; the server dies of it, so does the wrapper
    assert process.wait() == -signal.SIGTERM


def test_a_server_status_after_ready_is_the_wrapper_status(processes, systemd):
    port = free_port()
    process = wrapper(processes, systemd.environ, ["--port", str(port)], ["--port", str(port), "--on-term", "exit:3"])
    systemd.wait_for("READY=1")
    os.kill(server_pid(process), signal.SIGTERM)  # the server alone: say, an engine crash
    assert process.wait() == 3


def test_other_signals_are_forwarded_and_the_server_lives_on(processes, systemd):
    port = free_port()
    process = wrapper(processes, systemd.environ, ["--port", str(port)], ["--port", str(port)])
    systemd.wait_for("READY=1")
    process.signal(signal.SIGHUP)
    process.wait_for_line("got SIGHUP")
    process.signal(signal.SIGUSR1)
    process.wait_for_line("got SIGUSR1")
    assert process.proc.poll() is None


@pytest.mark.parametrize(("status", "expected"), [(3, 3), (0, 1)])
def test_a_server_that_dies_while_loading_fails_at_once(processes, systemd, tmp_path, status, expected):
    port = free_port()
    never = tmp_path / "never"
    server = ["--port", str(port), "--ready-file", str(never), "--die-after", "2", str(status)]
    process = wrapper(processes, systemd.environ, ["--port", str(port)], server)
    assert process.wait() == expected
    assert not any("READY=1" in m for m in systemd.drain())
    line = "llmhop: notify: the server exited with status %d before http://127.0.0.1:%d/health answered 200"
    assert (line % (status, port)) in process.output.splitlines()


def test_a_server_killed_while_loading_fails_with_128_plus_the_signal(processes, systemd, tmp_path):
    port = free_port()
    server = ["--port", str(port), "--ready-file", str(tmp_path / "never")]
    process = wrapper(processes, systemd.environ, ["--port", str(port)], server)
    wait_for(lambda: probes(process, 503) >= 1)
    os.kill(server_pid(process), signal.SIGKILL)  # the OOM killer, say
    assert process.wait() == 128 + signal.SIGKILL
    assert "was killed by signal 9 before" in process.output


def test_a_stop_while_loading_is_not_a_failure(processes, systemd, tmp_path):
    port = free_port()
    server = ["--port", str(port), "--ready-file", str(tmp_path / "never")]
    process = wrapper(processes, systemd.environ, ["--port", str(port)], server)
    wait_for(lambda: probes(process, 503) >= 1)
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert "llmhop: notify" not in process.output


def test_a_unix_socket_server_and_an_abstract_notify_socket(processes, tmp_path):
    name = "llmhop-test-notify-%d" % os.getpid()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(15)
        path = tempfile.mkdtemp(prefix="sock-")
        server = os.path.join(path, "http.sock")
        environ = env(NOTIFY_SOCKET="@" + name)
        process = wrapper(processes, environ, ["--socket", server, "--path", "/health"], ["--socket", server])
        messages = [sock.recv(4096).decode(), sock.recv(4096).decode()]
    assert messages[0].startswith("STATUS=waiting for unix:%s:/health" % (server,))
    assert messages[1].startswith("READY=1\n")
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    os.unlink(server)
    os.rmdir(path)


def test_an_unreachable_notify_socket_is_told_and_the_server_still_runs(processes, tmp_path):
    port = free_port()
    environ = env(NOTIFY_SOCKET=str(tmp_path / "nobody-listens"))
    process = wrapper(processes, environ, ["--port", str(port)], ["--port", str(port)])
    process.wait_for_line("llmhop: notify: cannot reach systemd at \\$NOTIFY_SOCKET: ")
    wait_for(lambda: probes(process, 200) == 1)
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_without_a_notify_socket_it_only_runs_the_server(processes):
    port = free_port()
    process = wrapper(processes, env(NOTIFY_SOCKET=None), ["--port", str(port)], ["--port", str(port)])
    wait_for(lambda: probes(process, 200) == 1)
    child = server_pid(process)
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert not pid_alive(child)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--port", "8001"], "llmhop: notify: no server command; give it after --"),
        (["--port", "8001", "--path", "health", "--", "true"], "llmhop: notify: --path 'health' must start with /"),
        (["--port", "0", "--", "true"], "llmhop: notify: --port 0 is not a TCP port (1-65535)"),
        (["--port", "8001", "--", "/nonexistent/server"], "llmhop: notify: cannot start /nonexistent/server"),
    ],
)
def test_bad_usage_is_one_line(processes, argv, line):
    process = Process(llmhop_command() + ["notify"] + argv)
    processes.append(process)
    assert process.wait() in (2, 127)
    assert process.output.startswith(line)
