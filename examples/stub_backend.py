#!/usr/bin/env python3
"""A stand-in for an OpenAI-compatible inference server, to try llmhop without a GPU.

    python3 examples/stub_backend.py --port 8000

It answers as vLLM, sglang or llama.cpp's llama-server would, in shape only:
``GET /health``, ``GET /v1/models``, and ``POST /v1/chat/completions`` and
``POST /v1/completions``, streamed (``"stream": true``, server-sent events)
or not, with a reply that echoes the last message word by word.  Standard
library only; for trying things out, not for tests or production.
"""

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stub-backend"

    def log_message(self, format, *args):  # one short line per request
        print("stub: %s %s" % (self.command, self.path), flush=True)

    def do_GET(self):
        if self.path == "/health":
            self._json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "stub"}]})
        else:
            self._json(404, {"error": {"message": "no such path", "type": "invalid_request_error"}})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            request = json.loads(body)
        except ValueError:
            return self._json(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return self._json(404, {"error": {"message": "no such path", "type": "invalid_request_error"}})
        chat = self.path == "/v1/chat/completions"
        words = ("You said: " + _prompt(request, chat)).split(" ")
        model = request.get("model", "stub")
        if request.get("stream"):
            return self._stream(model, words, chat)
        text = " ".join(words)
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        self._json(200, _completion(model, chat, [choice]))

    def _stream(self, model, words, chat):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, word in enumerate(words):
            piece = word if index == 0 else " " + word
            choice = {"index": 0, "finish_reason": None}
            choice.update({"delta": {"content": piece}} if chat else {"text": piece})
            self._chunk("data: %s\n\n" % (json.dumps(_completion(model, chat, [choice], chunk=True)),))
            time.sleep(0.05)  # as tokens come: one word at a time
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, text):
        data = text.encode("utf-8")
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _json(self, status, document):
        data = json.dumps(document).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _prompt(request, chat):
    if not chat:
        return str(request.get("prompt", ""))
    messages = request.get("messages") or [{}]
    content = messages[-1].get("content", "")
    return content if isinstance(content, str) else json.dumps(content)


def _completion(model, chat, choices, chunk=False):
    kind = "chat.completion" if chat else "text_completion"
    return {
        "id": "stub-1",
        "object": kind + (".chunk" if chunk and chat else ""),
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }


def main():
    parser = argparse.ArgumentParser(description="A stand-in OpenAI-compatible backend.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print("stub backend on http://%s:%d" % (args.host, server.server_port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
