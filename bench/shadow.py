#!/usr/bin/env python3
"""What shadowing costs the live path (issue #21), run by hand: `python3 bench/shadow.py`
(`--quick` to check the script works). Prints a markdown table and writes it to
bench/results/shadow.md.

One router (release build, `--threads 1`), two mock-model colors on loopback (blue live v1,
green the candidate v2, no token delay). For each mode the same open-loop load of small
deterministic chat completions (`cutover-bench rate`, 1,000 req/s, 16 connections) runs
against the live listener:
- off: no release running (the tap slot is empty: one atomic load per request);
- 5% and 100%: a release of v2 held in its `shadowing` phase (min_pairs out of reach), with
  `sample` 0.05 / 1.0 and a noise baseline of 0.25 (so at 100% the live color also answers a
  share of the mirrors a second time, as it would in production).
Reported: the router's CPU time per live request (user + system, from /proc, mirror work
included: the worker runs in the same process), live p50/p99 latency, and the ratios to off.
Each mode runs twice, alternating, and the lower CPU figure is kept. Bounded: fixed
durations, every process stopped at the end, traffic only to 127.0.0.1.
"""
import argparse, json, os, signal, subprocess, sys, tempfile, time, urllib.error, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN, LISTEN, BLUE, GREEN = 24910, 24911, 24921, 24922
BODY = '{"model":"m","messages":[{"role":"user","content":"hello there"}],"temperature":0,"max_tokens":8}'
procs = []


def start(cmd, log):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    procs.append(p)
    return p


def api(path, token, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN}{path}", data=json.dumps(body).encode() if body is not None else None,
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{path}: HTTP {e.code}: {e.read().decode()}") from None


def wait(what, f, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = f()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def cpu_secs(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def config(work, sample):
    return f"""[admin]
listen = "127.0.0.1:{ADMIN}"
[store]
path = "cutover.db"
[services.chat]
listen = "127.0.0.1:{LISTEN}"
health = {{ path = "/health", interval = "1s" }}
[services.chat.blue]
endpoints = ["127.0.0.1:{BLUE}"]
version = "v1"
[services.chat.green]
endpoints = ["127.0.0.1:{GREEN}"]
version = "v2"
[services.chat.release.shadow]
sample = {sample}
duration = "1h"
min_pairs = 1000000000
baseline = 0.25
"""


def measure(binp, work, pid, secs):
    before = cpu_secs(pid)
    out = subprocess.run([f"{binp}/cutover-bench", "rate", f"127.0.0.1:{LISTEN}", "--path", "/v1/chat/completions",
                          "--rps", "1000", "--connections", "16", "--duration", f"{secs}s", "--body", BODY],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["cpu_us_per_req"] = (cpu_secs(pid) - before) * 1e6 / max(1, r["requests"])
    return r


def run_mode(binp, work, mode, secs, round_):
    sample = {"off": 0.0, "5%": 0.05, "100%": 1.0}[mode]
    d = os.path.join(work, f"{mode.replace('%', 'pct')}-{round_}")
    os.makedirs(d, exist_ok=True)
    open(f"{d}/c.toml", "w").write(config(work, sample))
    p = start([f"{binp}/cutover", "serve", "--config", f"{d}/c.toml", "--threads", "1"], f"{d}/serve.log")
    token = wait("the router", lambda: open(f"{d}/admin.token").read().strip())
    wait("the admin API", lambda: api("/v1/services", token))
    api("/v1/services/chat/switch", token, {"to": "blue"})
    if mode != "off":
        rid = api("/v1/services/chat/releases", token, {"version": "v2"})["id"]
        # Mirroring starts after the phase's 2 s reference window: its first reading says so.
        wait("mirroring", lambda: api(f"/v1/services/chat/releases/{rid}", token).get("shadow"))
    r = measure(binp, work, p.pid, secs)
    if mode != "off":
        doc = api(f"/v1/services/chat/releases/{rid}", token)
        r["pairs"] = doc.get("shadow", {}).get("pairs", 0)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    secs = 2 if a.quick else 10
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "cutover", "--bin", "mock-model", "--bin", "cutover-bench"],
                   cwd=ROOT, check=True)
    binp = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
    work = tempfile.mkdtemp(prefix="cutover-shadow-bench-")
    try:
        for port, v in [(BLUE, "v1"), (GREEN, "v2")]:
            start([f"{binp}/mock-model", "--port", str(port), "--model-version", v, "--token-interval", "0s"], f"{work}/mock-{v}.log")
        best = {}
        for round_ in range(1 if a.quick else 2):
            for mode in ["off", "5%", "100%"]:
                r = run_mode(binp, work, mode, secs, round_)
                if mode not in best or r["cpu_us_per_req"] < best[mode]["cpu_us_per_req"]:
                    best[mode] = r
        off = best["off"]
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        out = [f"Machine: {cpu}, {os.cpu_count()} cores. {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
               f"{' (QUICK run: not for quoting)' if a.quick else ''}", "",
               "| shadowing | live requests | CPU us per live request | x off | live p50 us | live p99 us | p99 x off | failed | pairs compared |",
               "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for mode in ["off", "5%", "100%"]:
            r = best[mode]
            out.append(f"| {mode} | {r['requests']} | {r['cpu_us_per_req']:.1f} | {r['cpu_us_per_req'] / off['cpu_us_per_req']:.2f} | "
                       f"{r['p50_us']} | {r['p99_us']} | {r['p99_us'] / max(1, off['p99_us']):.2f} | {r['failed']} | {r.get('pairs', '-')} |")
        text = "\n".join(out)
        print(text)
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        open(os.path.join(ROOT, "bench", "results", "shadow.md"), "w").write(text + "\n")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
