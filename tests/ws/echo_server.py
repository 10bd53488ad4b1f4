#!/usr/bin/env python3
"""A WebSocket echo server for cutover's tests, on the `websockets` package (a real
third-party server): every message comes back as "VERSION:message". `GET /health` answers 200
over plain HTTP, so cutover's health checks see it; `GET /mock/stats` gives its pid, as
mock-model does, so the e2e harness can stop it when cutover started it.

    python3 tests/ws/echo_server.py PORT VERSION
"""

import asyncio
import http
import json
import os
import sys

import websockets
from websockets.asyncio.server import serve


async def echo(ws):
    try:
        async for msg in ws:
            await ws.send(f"{VERSION}:{msg}")
    except websockets.ConnectionClosed:
        pass  # a cut session (the tests cut some on purpose)


def health(connection, request):
    if request.path == "/health":
        return connection.respond(http.HTTPStatus.OK, "ok\n")
    # What the e2e harness reads to kill a managed server it did not start itself.
    if request.path == "/mock/stats":
        return connection.respond(http.HTTPStatus.OK, json.dumps({"pid": os.getpid()}, separators=(",", ":")))
    return None


async def main(port):
    async with serve(echo, "127.0.0.1", port, process_request=health, ping_interval=None):
        print("listening", flush=True)
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    VERSION = sys.argv[2]
    asyncio.run(main(int(sys.argv[1])))
