#!/usr/bin/env python3
"""A TLS model-server stand-in for the e2e tests (Python's http.server and ssl).

    python3 tests/tls/https_upstream.py CERT KEY VERSION

Listens on a free port of the loopback (IPv6 and IPv4 when the machine has both, so a name
that resolves to either works) and prints `listening PORT` once it accepts. Answers:

- `GET /health`: 200 `{"status": "ok"}`;
- `GET /v1/models` and `POST /v1/chat/completions`: 200 JSON whose `model` is VERSION, with
  the header `x-model-version: VERSION`;
- `GET /mock/tls`: what this connection negotiated: the SNI name the client sent (`null` for
  none), the TLS version and the ALPN protocol.

Runs until killed.
"""

import json
import socket
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CERT, KEY, VERSION = sys.argv[1], sys.argv[2], sys.argv[3]
SNI = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, doc):
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-model-version", VERSION)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self.answer({"status": "ok"})
        elif self.path == "/v1/models":
            self.answer({"object": "list", "data": [{"id": VERSION, "object": "model"}], "model": VERSION})
        elif self.path == "/mock/tls":
            s = self.connection
            self.answer({
                "sni": SNI.get(id(s)),
                "version": s.version(),
                "alpn": s.selected_alpn_protocol(),
                "host": self.headers.get("host"),
            })
        else:
            self.send_error(404)

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        if self.path == "/v1/chat/completions":
            self.answer({
                "object": "chat.completion",
                "model": VERSION,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            })
        else:
            self.send_error(404)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class Server4(ThreadingHTTPServer):
    daemon_threads = True


def listen():
    try:
        Server.address_family = socket.AF_INET6
        return Server(("::", 0), Handler)
    except OSError:
        return Server4(("127.0.0.1", 0), Handler)


def remember_sni(sock, name, _ctx):
    SNI[id(sock)] = name


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
ctx.set_alpn_protocols(["http/1.1"])
ctx.sni_callback = remember_sni
server = listen()
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
