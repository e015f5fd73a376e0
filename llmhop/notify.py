"""``llmhop notify -- SERVER …``: a model server's readiness, told to systemd.

An inference server such as vLLM, SGLang or llama.cpp's ``llama-server`` opens
its port long before it can answer: it loads weights and profiles GPU memory
first, which takes minutes, and it may die doing so.  None of them speaks
systemd's notify protocol.  This wrapper makes a ``Type=notify`` unit out of
one: it starts the server as its child, polls the server's health endpoint and
sends ``READY=1`` to ``$NOTIFY_SOCKET`` once that answers 200.  It stays the
unit's main process, forwards the signals systemd sends it, and exits as the
server did.  So a unit stays ``activating`` until its model is loaded (units
ordered after it wait for that), and a server that dies while loading fails its
unit at once instead of at ``TimeoutStartSec``.

Decisions:

- A server that exits before it ever answered gets one ``llmhop: notify: …``
  line, and status 0 then becomes 1: vLLM and SGLang exit 0 after their engine
  died, and a unit whose model never loaded has not succeeded.  Not so when
  the wrapper was asked to stop (SIGTERM, SIGINT, SIGQUIT) while loading.
- Once ready, a server killed by a signal makes the wrapper die of the same
  signal, so systemd sees what it would have seen without the wrapper
  (SIGTERM counts as a clean stop).  Before ready, it exits 128 + the signal.
- Signals are forwarded, so the unit should use ``KillMode=mixed``: systemd
  then signals only the wrapper, and the server gets each signal once.
- Without ``$NOTIFY_SOCKET`` (started by hand) it only waits and relays.

Only the standard library is used: the wrapper runs inside every worker unit
and must start quickly.  It lives in the operators' process tree for the
server's whole life, so it holds no secret and reads no config.
"""

import argparse
import dataclasses
import http.client
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Callable, Optional

# The signals systemd (or an operator) may send a service's main process to
# stop, reload or query it; all of them are the server's business.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# Those that ask it to stop: a server that then exits while loading did not fail.
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


@dataclasses.dataclass(frozen=True)
class Health:
    """Where the server answers its health check: a TCP port or a unix socket."""

    path: str
    host: str = "127.0.0.1"
    port: Optional[int] = None
    socket_path: Optional[str] = None

    def describe(self) -> str:
        if self.socket_path is not None:
            return "unix:%s:%s" % (self.socket_path, self.path)
        return "http://%s:%d%s" % (self.host, self.port or 80, self.path)


class _UnixConnection(http.client.HTTPConnection):
    """http.client over a unix socket (vLLM's ``--uds PATH``, llama-server's ``--host PATH.sock``)."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def answers(health: Health, timeout: float) -> bool:
    """Whether the server answers its health check with 200 now."""
    if health.socket_path is not None:
        connection: http.client.HTTPConnection = _UnixConnection(health.socket_path, timeout)
    else:
        connection = http.client.HTTPConnection(health.host, health.port, timeout=timeout)
    try:
        connection.request("GET", health.path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        # Not listening yet, reset while loading, or garbage: not ready.
        return False
    finally:
        connection.close()


def notify_address(value: str) -> str:
    """The socket address ``$NOTIFY_SOCKET`` names: a path, or ``@name`` for an abstract socket."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def sd_notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send one notify datagram to systemd; False when there is no ``$NOTIFY_SOCKET``.

    @raise OSError: the socket is named but cannot be reached.
    """
    value = environ.get("NOTIFY_SOCKET")
    if not value:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(notify_address(value))
        sock.sendall(state.encode("utf-8"))
    return True


def exit_as(returncode: int, kill: Callable[[int, int], None] = os.kill) -> int:
    """The wrapper's own exit for a server that ended with C{returncode} (negative: killed by that signal)."""
    if returncode >= 0:
        return returncode
    number = -returncode
    if number not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be caught anyway
        signal.signal(number, signal.SIG_DFL)
    kill(os.getpid(), number)
    # Only reached for a signal that does not kill by default.
    return 128 + number


# A dataclass, not attrs: this module runs with the standard library alone.
@dataclasses.dataclass
class Wrapper:
    """One server under watch.

    C{state} is, in order: C{starting} (the child runs, its health is polled),
    C{ready} (it answered 200 once; C{READY=1} was sent), C{exited} (its
    status is known).  A child may go from C{starting} straight to C{exited}:
    a failed start, unless the wrapper was told to stop it (C{stopping}).
    """

    command: Sequence[str]
    health: Health
    interval: float
    probe_timeout: float
    tell: Callable[[str], None]
    state: str = "starting"
    stopping: bool = False
    child: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> None:
        """Start the server (L{OSError} if it cannot be), forwarding signals from now on."""
        # Installed first: a stop that comes while the child starts is kept
        # and handed on, rather than killing the wrapper and orphaning it.
        for number in FORWARDED:
            signal.signal(number, self._forward)
        self.child = subprocess.Popen(list(self.command))
        if self.stopping:
            self.child.terminate()

    def run(self) -> int:
        """Wait for the started server and return its status (negative: the signal that killed it)."""
        assert self.child is not None
        self._notify("STATUS=waiting for %s\nMAINPID=%d" % (self.health.describe(), os.getpid()))
        early = self._wait_until_ready()
        returncode = self.child.wait() if early is None else early
        was_ready = self.state == "ready"
        self.state = "exited"
        return returncode if was_ready or self.stopping else self._failed_start(returncode)

    def _forward(self, number: int, frame: object) -> None:
        if number in STOPPING:
            self.stopping = True
        if self.child is not None and self.child.returncode is None:
            self.child.send_signal(number)

    def _wait_until_ready(self) -> Optional[int]:
        """Poll until the server answers (None) or exits (its status)."""
        assert self.child is not None
        while True:
            try:
                return self.child.wait(timeout=self.interval)
            except subprocess.TimeoutExpired:
                pass
            if answers(self.health, self.probe_timeout) and self.child.poll() is None:
                self.state = "ready"
                self._notify("READY=1\nSTATUS=ready: %s answered" % (self.health.describe(),))
                return None

    def _notify(self, state: str) -> None:
        try:
            sd_notify(state)
        except OSError as e:
            # The server keeps running; systemd will time the start out, and
            # this line says why.
            self.tell("notify: cannot reach systemd at $NOTIFY_SOCKET: %s" % (e.strerror or e,))

    def _failed_start(self, returncode: int) -> int:
        how = "was killed by signal %d" % (-returncode,) if returncode < 0 else "exited with status %d" % (returncode,)
        self.tell("notify: the server %s before %s answered 200" % (how, self.health.describe()))
        # Always a failure, even for a server killed by SIGTERM (which systemd
        # counts as a clean stop): its model never loaded.
        return 128 - returncode if returncode < 0 else returncode or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmhop notify",
        description="Run an inference server as a child, and tell systemd READY=1 once its health check answers 200.",
        epilog="Example: llmhop notify --port 8001 -- vllm serve org/model --port 8001",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="the server's TCP port on --host")
    where.add_argument("--socket", metavar="PATH", help="the server's unix socket")
    parser.add_argument("--host", default="127.0.0.1", help="the address the server listens on (default 127.0.0.1)")
    parser.add_argument("--path", default="/health", help="the health check's path (default /health)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between checks while loading (default 1)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds one check may take (default 5)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the server's command line")
    return parser


def parse(argv: Sequence[str], tell: Callable[[str], None]) -> Optional[Wrapper]:
    args = build_parser().parse_args(list(argv))
    command: list[str] = args.command[1:] if args.command[:1] == ["--"] else args.command
    problem = None
    if not command:
        example = "llmhop notify --port 8001 -- llama-server --port 8001"
        problem = "notify: no server command; give it after --, e.g. " + example
    elif not args.path.startswith("/"):
        problem = "notify: --path %r must start with /" % (args.path,)
    elif args.port is not None and not 0 < args.port < 65536:
        problem = "notify: --port %d is not a TCP port (1-65535)" % (args.port,)
    elif not args.interval > 0 or not args.timeout > 0:
        problem = "notify: --interval and --timeout must be positive"
    if problem is not None:
        tell(problem)
        return None
    health = Health(path=args.path, host=args.host, port=args.port, socket_path=args.socket)
    return Wrapper(command, health, args.interval, args.timeout, tell)


def _tell(line: str) -> None:
    sys.stderr.write("llmhop: %s\n" % (line,))
    sys.stderr.flush()


def main(argv: Sequence[str]) -> int:
    wrapper = parse(argv, _tell)
    if wrapper is None:
        return 2
    try:
        wrapper.start()
    except OSError as e:
        _tell("notify: cannot start %s: %s" % (wrapper.command[0], e.strerror or e))
        return 127
    return exit_as(wrapper.run())


def run() -> None:
    """The C{llmhop-notify} command."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
