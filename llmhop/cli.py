"""The ``llmhop`` command: run the gateway in the foreground, logging to stderr."""

import argparse
import sys
from typing import List, Optional

from llmhop import __version__
from llmhop.config import load_or_exit


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llmhop",
        description="One HTTP port in front of many OpenAI-compatible inference servers: "
        "each request is forwarded to the backend configured for its model.",
    )
    parser.add_argument("--config", "-c", required=True, help="path to the JSON config file")
    parser.add_argument("--version", action="version", version="llmhop " + __version__)
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
    args = parser.parse_args(argv)
    if args.no_secrets and not args.check:
        parser.error("--no-secrets only goes with --check")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    config = load_or_exit(args.config, resolve=not (args.check and args.no_secrets))
    if args.check:
        print("llmhop: %s: config OK (%d models)" % (args.config, len(config.models)))
        return 0

    # Imported late so that --check stays fast: packagers run it at build time.
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    from llmhop.service import GatewayService

    gateway = GatewayService(config, reactor)
    gateway.privilegedStartService()
    reactor.callWhenRunning(gateway.startService)
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    reactor.run()
    return 1 if gateway.failed else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
