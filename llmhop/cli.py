"""The ``llmhop`` command: run the gateway in the foreground, logging to stderr."""

import argparse
import os
import sys
from typing import TYPE_CHECKING, Callable, Optional, TextIO, Union, cast

from llmhop import __version__
from llmhop.check import check
from llmhop.config import load_or_exit, schema_text, with_workers, workers_flag
from llmhop.errors import tell

if TYPE_CHECKING:
    from twisted.logger import LogEvent


def _workers(text: str) -> Union[int, str]:
    try:
        return workers_flag(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmhop",
        description="One HTTP port in front of many OpenAI-compatible inference servers: "
        "each request is forwarded to the backend configured for its model.",
        epilog="llmhop notify --help: run a model server and tell systemd when it is ready.",
    )
    parser.add_argument("--config", "-c", help="path to the JSON config file (required but for -V and --print-schema)")
    parser.add_argument(
        "--print-schema",
        action="store_true",
        help="print the JSON Schema of the config file (for editors' completion and validation) and exit",
    )
    parser.add_argument("--version", "-V", action="version", version="llmhop " + __version__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config (secret references included) and exit 0 or 1 without listening",
    )
    parser.add_argument(
        "--no-secrets",
        action="store_true",
        help="with --check: check the structure only, leaving secret references unresolved "
        "(for build machines where the secrets are not available)",
    )
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="ask the router running with this config for its /healthz and exit 0 or 1 (a container's HEALTHCHECK)",
    )
    parser.add_argument(
        "--watch-config",
        action="store_true",
        help="reload when the config file changes (e.g. a Kubernetes ConfigMap), as on SIGHUP",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        metavar="N|auto",
        help="run N router processes sharing the listening socket, or one per available CPU "
        "(overrides the config's workers)",
    )
    # Used by the first process to start the others (see llmhop.workers).
    parser.add_argument("--worker", metavar="INDEX:PARENT_PID", help=argparse.SUPPRESS)
    parser.add_argument("--log-plain", action="store_true", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is None and not args.print_schema:
        parser.error("the following arguments are required: --config/-c")
    if args.healthcheck and args.check:
        parser.error("--healthcheck and --check exclude each other")
    if args.no_secrets and not args.check:
        parser.error("--no-secrets only goes with --check")
    if args.worker is not None:
        index, _, parent = args.worker.partition(":")
        if not (index.isdigit() and parent.isdigit()):
            parser.error("--worker takes INDEX:PARENT_PID")
        args.worker = (int(index), int(parent))
    return args


def log_observer(stream: TextIO, system: Optional[str], plain: bool) -> "Callable[[LogEvent], None]":
    """Lines on C{stream}: classic ones (tagged with C{system}), or LEVEL-prefixed for a supervisor to relay."""
    from twisted.logger import formatEvent, textFileLogObserver

    if plain:

        def observe(event: "LogEvent") -> None:
            text = formatEvent(event)
            if "log_failure" in event:
                text += "\n" + event["log_failure"].getTraceback()
            level = event.get("log_level")
            name = level.name if level is not None else "info"
            stream.write("".join("%s %s\n" % (name, line) for line in text.splitlines() or [""]))
            stream.flush()

        return observe
    classic = textFileLogObserver(stream)
    if system is None:
        return classic

    def tagged(event: "LogEvent") -> None:
        if event.get("log_system", "-") == "-":
            event["log_system"] = system
        classic(event)

    return tagged


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["notify"]:
        # A subcommand of its own: it wraps a model server, not the router.
        from llmhop.notify import main as notify

        return notify(argv[1:])
    args = parse_args(argv)
    if args.print_schema:
        sys.stdout.buffer.write(schema_text())
        return 0
    if args.healthcheck:
        from llmhop.probe import healthcheck

        # Its address is all it needs: the secrets may not be readable by the checker.
        why = healthcheck(load_or_exit(args.config, resolve=False))
        return 0 if why is None else tell(why)
    config = with_workers(load_or_exit(args.config, resolve=not (args.check and args.no_secrets)), args.workers)
    if args.check:
        return check(config, args.config, on_this_host=not args.no_secrets)

    worker = None
    if args.worker is not None:
        from llmhop.workers import die_with_parent

        worker, parent = args.worker
        die_with_parent(parent)

    # Imported late so that --check stays fast: packagers run it at build time.
    from twisted.internet import reactor
    from twisted.logger import ILogObserver, globalLogBeginner

    system = "worker %d" % (worker or 1,) if worker or config.workers > 1 else None
    from llmhop.accesslog import DEFAULT_SYSTEM, AccessLog
    from llmhop.errors import StartupError
    from llmhop.service import GatewayService
    from llmhop.workers import ISupervisorReactor

    # Straight to stderr, in the same format as the other lines, and cheaper.
    access_log = AccessLog(sys.stderr, system or DEFAULT_SYSTEM, plain=args.log_plain)
    path = os.path.abspath(args.config)
    try:
        gateway = GatewayService(
            config,
            cast(ISupervisorReactor, reactor),  # the global reactor provides it all
            path,
            worker=worker,
            handle_signals=True,
            access_log=access_log,
            workers_flag=None if args.workers is None else config.workers,
            watch_config=args.watch_config,
        )
    except StartupError as e:
        return tell(str(e))
    gateway.privilegedStartService()
    if gateway.failure is not None:
        # Binding failed at once (it does, but for systemd's): one line, no
        # reactor, and what was logged until now (Twisted's "starting on" of
        # an address that was bound) is never shown.
        return tell(gateway.failure)
    # Any callable of one event observes; the stubs ask for the interface.
    observer = cast(ILogObserver, log_observer(sys.stderr, system, args.log_plain))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    reactor.callWhenRunning(gateway.startService)
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    reactor.run()
    return 1 if gateway.failure is not None else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
