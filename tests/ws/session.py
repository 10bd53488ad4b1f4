#!/usr/bin/env python3
"""One WebSocket session driven line by line over stdin/stdout, so a test can hold it open
across a switch: each stdin line is sent as a message and the reply printed; EOF closes it.
Prints "open" once connected, then "reply <text>" per message, "closed <code>" at the end
("cut <reason>" when the connection went away instead).
The response headers of the upgrade (x-cutover-color, x-cutover-version) are printed as
"header <name> <value>".

    python3 tests/ws/session.py ws://127.0.0.1:PORT/path
    python3 tests/ws/session.py wss://127.0.0.1:PORT/path CA_FILE    # TLS, trusting CA_FILE
"""

import ssl
import sys

import websockets
from websockets.sync.client import connect


def main(url, ca=None):
    tls = ssl.create_default_context(cafile=ca) if url.startswith("wss://") else None
    with connect(url, open_timeout=10, close_timeout=5, ssl=tls) as ws:
        for name in ("x-cutover-color", "x-cutover-version"):
            print("header", name, ws.response.headers.get(name, "-"), flush=True)
        print("open", flush=True)
        for line in sys.stdin:
            ws.send(line.rstrip("\n"))
            print("reply", ws.recv(timeout=10), flush=True)
    print("closed", ws.close_code, flush=True)


if __name__ == "__main__":
    try:
        main(*sys.argv[1:3])
    except (websockets.ConnectionClosed, OSError, TimeoutError) as e:
        print("cut", type(e).__name__, flush=True)
