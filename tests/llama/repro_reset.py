#!/usr/bin/env python3
"""Reproduces issue 12 section 7's first item on a real llama-cpp-python server: a streaming
request whose prompt is longer than the context gets 200 and an empty stream, after which the
server closes the keep-alive connection without saying `Connection: close`; the next client
through cutover may be sent on that dead pooled connection and get a 502.

    python3 tests/llama/repro_reset.py --cutover target/debug/cutover [--rounds 30] [--seconds 15]

Starts one llama_cpp.server (generated model, n_ctx 512) and one `cutover serve` in front of it,
then, both through cutover and directly:
  1. for each of --delays, `rounds` rounds of: client A streams an overlong prompt (own
     client), then, that long after A's stream ended, client B sends one normal chat
     completion (own client, so a new connection on the client side);
  2. `seconds` of 4 normal clients in a loop beside one client sending overlong streams.
Prints what A saw on the wire once, then the counts as JSON. The openai client never retries
(max_retries=0), so every 502 is seen.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import openai

HERE = os.path.dirname(os.path.abspath(__file__))
LONG = " ".join(["hello world"] * 400)  # ~800 tokens > n_ctx 512


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_http(url, timeout=90, headers=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout} s")


def client(base):
    return openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=30)


def overlong_stream(base):
    """Client A. Returns (status or error, number of content chunks)."""
    try:
        with client(base).chat.completions.with_streaming_response.create(
            model="m", messages=[{"role": "user", "content": LONG}], max_tokens=4, stream=True
        ) as r:
            n = sum(1 for c in r.parse() if c.choices and c.choices[0].delta.content)
            return r.http_response.status_code, n
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:200], 0


def normal(c):
    """Client B. Returns None on success, else the error text."""
    try:
        c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        return None
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:300]


def wire_view(port):
    """What client A's exchange looks like on the wire, directly against the server."""
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": LONG}], "max_tokens": 4,
         "stream": True}
    ).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    buf, t0, ended_after, closed_after = b"", time.monotonic(), None, None
    while True:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        if not d:
            closed_after = round(time.monotonic() - t0, 4)
            break
        buf += d
        if ended_after is None and buf.endswith(b"\r\n0\r\n\r\n"):
            ended_after = round(time.monotonic() - t0, 4)
    s.close()
    return {"bytes": buf.decode(errors="replace"), "body_ended_after_s": ended_after,
            "server_closed_after_s": closed_after}


def rounds(base, n, delay):
    a_seen, failures = {}, []
    for i in range(n):
        b = client(base)  # built first, so B sends `delay` after A's stream ended
        st, chunks = overlong_stream(base)
        key = f"{st} with {chunks} content chunks"
        a_seen[key] = a_seen.get(key, 0) + 1
        time.sleep(delay)
        err = normal(b)
        if err:
            failures.append(f"round {i}: {err}")
    return {"delay_s": delay, "rounds": n, "client_a_saw": a_seen, "b_failed": len(failures), "b_errors": failures[:5]}


def mixed(base, seconds):
    stop = threading.Event()
    lock = threading.Lock()
    st = {"normal_ok": 0, "normal_failed": 0, "overlong_sent": 0, "errors": []}

    def normal_loop():
        c = client(base)
        while not stop.is_set():
            err = normal(c)
            with lock:
                if err:
                    st["normal_failed"] += 1
                    if len(st["errors"]) < 5:
                        st["errors"].append(err)
                else:
                    st["normal_ok"] += 1

    def overlong_loop():
        while not stop.is_set():
            overlong_stream(base)
            with lock:
                st["overlong_sent"] += 1

    ts = [threading.Thread(target=normal_loop) for _ in range(4)]
    ts.append(threading.Thread(target=overlong_loop))
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join(40)
    return st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cutover", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--delays", type=lambda v: [float(x) for x in v.split(",")],
                    default=[0.0, 0.01, 0.05, 0.2],
                    help="pauses between A's end and B's request, seconds, comma-separated")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="cutover-repro-")
    model = os.path.join(tmp, "v1.gguf")
    subprocess.run([sys.executable, os.path.join(HERE, "make_model.py"), "--seed", "1",
                    "--out", model], check=True, stdout=subprocess.DEVNULL)
    mport, lport, aport = free_port(), free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model, "--model_alias", "v1",
         "--host", "127.0.0.1", "--port", str(mport), "--n_ctx", "512", "--n_threads", "1",
         "--interrupt_requests", "False"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "server.log"), "w"))
    cfg = os.path.join(tmp, "cutover.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[admin]\nlisten = "127.0.0.1:{aport}"\n[store]\npath = "cutover.db"\n'
            f'[services.chat]\nlisten = "127.0.0.1:{lport}"\n'
            f'health = {{ path = "/v1/models", interval = "1s", timeout = "5s" }}\n'
            # One server behind both colors: the repro is about the pooled connection.
            f'allow_shared_endpoints = true\n'
            f'[services.chat.blue]\nendpoints = ["127.0.0.1:{mport}"]\nversion = "v1"\n'
            f'[services.chat.green]\nendpoints = ["127.0.0.1:{mport}"]\nversion = "v1"\n')
    router = subprocess.Popen([args.cutover, "serve", "--config", cfg],
                              stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, "serve.log"), "w"))
    try:
        wait_http(f"http://127.0.0.1:{mport}/v1/models")
        wait_http(f"http://127.0.0.1:{aport}/healthz", 15)
        token = open(os.path.join(tmp, "admin.token")).read().strip()
        # The router may have probed the server before it listened: retry until a probe passed.
        end = time.monotonic() + 20
        while True:
            req = urllib.request.Request(
                f"http://127.0.0.1:{aport}/v1/services/chat/switch", method="POST",
                data=b'{"to":"blue"}',
                headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=10).read()
                break
            except urllib.error.HTTPError as e:
                if time.monotonic() > end:
                    raise SystemExit(f"switch to blue: {e.code} {e.read().decode()}")
                time.sleep(0.2)

        direct, via = f"http://127.0.0.1:{mport}/v1", f"http://127.0.0.1:{lport}/v1"
        out = {"wire_direct": [wire_view(mport) for _ in range(5)]}
        for d in args.delays:
            out[f"rounds_via_cutover_delay_{d}"] = rounds(via, args.rounds, d)
            out[f"rounds_direct_delay_{d}"] = rounds(direct, args.rounds, d)
        out["mixed_via_cutover"] = mixed(via, args.seconds)
        out["mixed_direct"] = mixed(direct, args.seconds)
        # What the router counted: these 502s are charged to the live color (verification's
        # error rate reads the same counters).
        with urllib.request.urlopen(f"http://127.0.0.1:{aport}/metrics", timeout=10) as r:
            out["router_counted"] = [
                l for l in r.read().decode().splitlines()
                if l.startswith("cutover_requests_total") and 'code="5' in l
            ]
        print(json.dumps(out, indent=2))
    finally:
        for p in (router, server):
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
