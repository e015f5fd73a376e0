"""A stand-in for a model server that loads, for ``llmhop notify``'s tests.

    standin_server.py (--port N | --socket PATH) [--ready-file F] [--die-after N STATUS]
                      [--on-term exit:STATUS | default]

``/health`` answers 503 while the model "loads" (until ``--ready-file`` exists;
without it, at once 200).  Every probe is printed as ``probe 503`` or
``probe 200``, so a test can count them instead of sleeping.  ``--die-after``
exits with STATUS after N probes, as a server that dies while loading.
SIGHUP and SIGUSR1 are printed (``got SIGHUP``); SIGTERM exits with a status
(``exit:N``) or kills the process as the default action would (``default``).
"""

import argparse
import http.server
import os
import signal
import socketserver
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--socket")
    parser.add_argument("--ready-file")
    parser.add_argument("--die-after", nargs=2, type=int, metavar=("PROBES", "STATUS"))
    parser.add_argument("--on-term", default="exit:0")
    args = parser.parse_args()
    probes = [0]

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            ready = args.ready_file is None or os.path.exists(args.ready_file)
            status = 200 if ready and self.path == "/health" else 503 if self.path == "/health" else 404
            print("probe %d %s" % (status, self.path), flush=True)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            probes[0] += 1
            if args.die_after and probes[0] >= args.die_after[0]:
                self.wfile.flush()
                os._exit(args.die_after[1])

        def log_message(self, *_):
            pass

    def told(number, frame):
        print("got %s" % signal.Signals(number).name, flush=True)

    signal.signal(signal.SIGHUP, told)
    signal.signal(signal.SIGUSR1, told)
    if args.on_term.startswith("exit:"):
        status = int(args.on_term[len("exit:") :])

        def stop(number, frame):
            os._exit(status)

        signal.signal(signal.SIGTERM, stop)
    if args.socket:

        class Server(socketserver.UnixStreamServer):
            def get_request(self):
                request, _ = super().get_request()
                return request, ("local", 0)

        server = Server(args.socket, Health)
    else:
        server = http.server.HTTPServer(("127.0.0.1", args.port), Health)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
