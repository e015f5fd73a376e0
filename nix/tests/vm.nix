# A NixOS VM with llmhop, a llama.cpp worker whose server is a stand-in (a
# few lines of Python answering like llama-server), and a client token handed
# over with LoadCredential=. Run: nix build .#checks.x86_64-linux.vm
{ pkgs, module }:
let
  # Answers /health and echoes who served a completion; takes llama-server's
  # flags (only --alias, --host and --port matter here).
  fakeLlamaServer = pkgs.writeScriptBin "llama-server" ''
    #!${pkgs.python3.interpreter}
    import argparse, json
    from http.server import BaseHTTPRequestHandler, HTTPServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--alias")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args, _ = parser.parse_known_args()

    class Handler(BaseHTTPRequestHandler):
        def reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply({"status": "ok"})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.reply({"served_by": args.alias, "model": request["model"]})

    HTTPServer((args.host, args.port), Handler).serve_forever()
  '';
in
pkgs.testers.runNixOSTest {
  name = "llmhop";
  nodes.machine = {
    imports = [ module ];
    environment.etc."llmhop-client-token" = {
      text = "sesame";
      mode = "0400";
    };
    services.llmhop = {
      enable = true;
      credentials.client_token = "/etc/llmhop-client-token";
      settings.authTokens = [ "\${file:client_token}" ];
      llama-cpp = {
        enable = true;
        package = fakeLlamaServer;
        models.tiny.port = 30001;
      };
    };
  };
  testScript = ''
    import json

    url = "http://127.0.0.1:8080/v1/chat/completions"
    body = "'{\"model\": \"tiny\", \"messages\": []}'"

    machine.wait_for_unit("llama-cpp-tiny.service")
    machine.wait_for_unit("llmhop.service")
    machine.wait_for_open_port(8080)

    reply = json.loads(machine.succeed(f"curl -sf -H 'Authorization: Bearer sesame' -d {body} {url}"))
    assert reply == {"served_by": "tiny", "model": "tiny"}, reply

    status = machine.succeed(f"curl -s -o /dev/null -w '%{{http_code}}' -d {body} {url}")
    assert status == "401", status

    # A reload (what a new configuration triggers) keeps serving.
    machine.succeed("systemctl reload llmhop.service")
    machine.succeed(f"curl -sf -H 'Authorization: Bearer sesame' -d {body} {url}")

    # The token is not in the world-readable configuration.
    machine.fail("grep -q sesame /etc/llmhop/config.json")
  '';
}
