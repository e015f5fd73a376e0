"""Real processes for end-to-end tests: the router (``llmhop`` or twistd) and a backend.

Every process is started with its PID kept and is stopped by that PID.  Output
is collected by reader threads so a chatty process never blocks on a full
pipe, and waits are on a condition with a deadline, never a bare sleep.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LISTENING = re.compile(r"llmhop listening on (\S+)")


# Set to an installed llmhop command (e.g. /usr/bin/llmhop from the .deb) to
# run the end-to-end tests against it instead of this checkout.
UNDER_TEST = os.environ.get("LLMHOP_UNDER_TEST")


def env(**extra):
    """The environment for a child, plus C{extra}.

    This checkout is importable, unless an installed llmhop is under test.
    """
    result = dict(os.environ)
    if not UNDER_TEST:
        result["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    result["PYTHONUNBUFFERED"] = "1"
    for name, value in extra.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def llmhop_command():
    """The command under test, else the console script next to this Python, else the module."""
    if UNDER_TEST:
        return [UNDER_TEST]
    script = os.path.join(os.path.dirname(sys.executable), "llmhop")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "llmhop"]


def notify_command():
    """C{llmhop-notify} beside the command under test, else beside this Python, else the module."""
    if UNDER_TEST:
        return [os.path.join(os.path.dirname(UNDER_TEST), "llmhop-notify")]
    script = os.path.join(os.path.dirname(sys.executable), "llmhop-notify")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "llmhop.notify"]


def twistd_command():
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Process:
    """A child process whose output is collected in memory, or in C{log_path}.

    Benchmarks pass C{log_path}: a file costs the child what journald or a log
    file would, where a pipe drained by a thread here would compete for CPU.
    """

    def __init__(self, argv, environ=None, cwd=ROOT, log_path=None, **popen):
        self.argv = argv
        self.log_path = log_path
        # Handed to the child, which writes to its own copy of it.
        out = subprocess.PIPE if log_path is None else open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            env=environ or env(),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if log_path else out,
            **popen,
        )
        self.pid = self.proc.pid
        self.lines = []
        self._lock = threading.Lock()
        if log_path is None:
            self._readers = [self._reader(self.proc.stdout), self._reader(self.proc.stderr)]
        else:
            out.close()
            self._readers = []

    def _reader(self, stream):
        def read():
            for raw in iter(stream.readline, b""):
                with self._lock:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def _current_lines(self):
        if self.log_path is None:
            with self._lock:
                return list(self.lines)
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()

    @property
    def output(self):
        return "\n".join(self._current_lines())

    def wait_for_line(self, pattern, timeout=15.0):
        """The first match of C{pattern} in the output, waiting up to C{timeout}."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self._current_lines():
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None and all(not r.is_alive() for r in self._readers):
                break
            time.sleep(0.01)
        raise AssertionError("no line matching %r; output:\n%s" % (pattern, self.output))

    def signal(self, signum):
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout=15.0):
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self):
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)


class Router(Process):
    """C{llmhop --config PATH}, with its listening address read from its log."""

    def __init__(self, config_path, argv=None, **kwargs):
        super().__init__(argv or llmhop_command() + ["--config", str(config_path)], **kwargs)

    def address(self, timeout=15.0):
        return self.wait_for_line(LISTENING.pattern, timeout).group(1)

    def url(self):
        return "http://" + self.address()

    def port(self):
        return int(self.address().rsplit(":", 1)[1])


class BackendProcess(Process):
    def __init__(self, default_script=None):
        script = [json.dumps(default_script)] if default_script else []
        super().__init__([sys.executable, "-m", "tests.backend", *script])
        self.port = int(self.wait_for_line(r"^PORT (\d+)$").group(1))
        self.url = "http://127.0.0.1:%d" % (self.port,)


def socket_activated(listeners, argv):
    """C{argv} run as systemd (227 and later) runs a socket-activated service.

    The sockets (one, or a list) become fds 3, 4, …, and the environment
    names the receiving PID and the sockets.  Start it with
    C{pass_fds=} their fds.
    """
    if not isinstance(listeners, (list, tuple)):
        listeners = [listeners]
    fds = ",".join(str(listener.fileno()) for listener in listeners)
    launcher = (
        # Moved out of the way first: a source fd may be one of 3, 4, ….
        "import fcntl, os, sys; fds = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[1].split(',')]; "
        "[os.dup2(fd, 3 + i) for i, fd in enumerate(fds)]; os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.environ['LISTEN_FDS'] = str(len(fds)); "
        "os.environ['LISTEN_FDNAMES'] = ':'.join(['llmhop.socket'] * len(fds)); "
        "os.execvp(sys.argv[2], sys.argv[2:])"
    )
    return [sys.executable, "-c", launcher, fds] + list(argv)


def pid_alive(pid):
    """Whether C{pid} runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout=15.0):
    """C{predicate()}'s first true value, polled until the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met within %ss" % (timeout,))


def write_config(path, settings):
    path.write_text(json.dumps(settings))
    return path


@contextlib.contextmanager
def router_before_recorder(directory, deadline):
    """A router process whose model "m" is a recording backend under /api: (router, port, recorder)."""
    from tests.recorder import Recorder

    recorder = Recorder()
    config = write_config(
        directory / "config.json",
        {
            "listen": "127.0.0.1:0",
            "timeouts": {"requestHead": deadline, "requestBody": deadline},
            "models": {"m": {"url": recorder.url + "/api"}},
        },
    )
    router = Router(config)
    try:
        yield router, router.port(), recorder
    finally:
        router.stop()
        recorder.close()


@contextlib.contextmanager
def fake_notify_socket():
    """What systemd listens on for C{sd_notify}: a unix datagram socket, as a L{NotifySocket}."""
    directory = tempfile.mkdtemp(prefix="notify-")  # short: unix socket paths stop at 108 bytes
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        yield NotifySocket(sock, path)
    finally:
        sock.close()
        shutil.rmtree(directory)


class NotifySocket:
    """The messages a process sent to a fake notify socket; C{environ} points a child at it."""

    def __init__(self, sock, address):
        self.sock = sock
        self.address = address
        self.received = []

    @property
    def environ(self):
        return env(NOTIFY_SOCKET=self.address)

    def drain(self):
        """Everything sent so far, without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                self.received.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        return self.received

    def wait_for(self, text, timeout=15.0):
        """The first message containing C{text}, waiting up to C{timeout} seconds."""
        self.sock.settimeout(timeout)
        while not any(text in m for m in self.received):
            self.received.append(self.sock.recv(4096).decode())
        return next(m for m in self.received if text in m)
