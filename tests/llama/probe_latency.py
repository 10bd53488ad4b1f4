#!/usr/bin/env python3
"""How long llama-cpp-python's `/v1/models` (the only cheap GET it has, so the health path
people pick) takes idle and under generation load, directly against one server.

    python3 tests/llama/probe_latency.py [--clients 4] [--max-tokens 64] [--seconds 10]

`/v1/models` takes the server's model lock (the one every generation holds), so a probe waits
for the running generation and for the requests queued before it. Prints JSON: probe latency
percentiles idle and under load, and the generations' own latency.
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
import urllib.request

import openai

HERE = os.path.dirname(os.path.abspath(__file__))


def pct(xs, p):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 4) if xs else None


def summary(xs):
    return {"n": len(xs), "p50": pct(xs, 50), "p99": pct(xs, 99), "max": round(max(xs), 4)}


def probes(url, seconds):
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
        out.append(time.monotonic() - t)
        time.sleep(0.1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="cutover-probe-")
    model = os.path.join(tmp, "v1.gguf")
    subprocess.run([sys.executable, os.path.join(HERE, "make_model.py"), "--seed", "1",
                    "--out", model], check=True, stdout=subprocess.DEVNULL)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "512", "--n_threads", "1",
         "--interrupt_requests", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/models"
    try:
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except Exception:
                if time.monotonic() - t0 > 90:
                    raise SystemExit("server did not start")
                time.sleep(0.05)
        out = {"load_seconds": round(time.monotonic() - t0, 2), "idle": summary(probes(url, 3))}

        stop = threading.Event()
        gen = []

        def load():
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none",
                              max_retries=0)
            while not stop.is_set():
                t = time.monotonic()
                for _ in c.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "hi"}],
                        max_tokens=args.max_tokens, temperature=0, stream=True):
                    pass
                gen.append(time.monotonic() - t)

        ts = [threading.Thread(target=load) for _ in range(args.clients)]
        for t in ts:
            t.start()
        time.sleep(1)
        out["under_load"] = summary(probes(url, args.seconds))
        out["load"] = {"clients": args.clients, "max_tokens": args.max_tokens,
                       "stream_seconds": summary(gen)}
        stop.set()
        for t in ts:
            t.join(60)
        print(json.dumps(out, indent=2))
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
