#!/usr/bin/env python3
"""The cost of a weighted route table on the request path: CPU per proxied request of one
cutover worker (--threads 1, pinned to CPU 0) at all-at-once (weight 0: one color) and during
a 10% canary step (keyless draw, and with a sticky header), same upstream for both colors.

Run by hand: `python3 bench/weights.py` (release build; needs nginx and wrk, like run.py).
Prints a markdown table; docs/benchmarks.md quotes it.
"""
import json, os, re, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP, LISTEN, ADMIN = 18951, 18952, 18953
WORK = tempfile.mkdtemp(prefix="cutover-weights-")
procs = []


def start(cmd, cpu, **kw):
    p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def wait_port(port):
    import socket
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def admin(path, body=None):
    tok = open(os.path.join(WORK, "admin.token")).read().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN}{path}", data=json.dumps(body).encode() if body is not None else None,
                                 headers={"authorization": f"Bearer {tok}", "content-type": "application/json"},
                                 method="POST" if body is not None else "GET")
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def ticks(pid):
    rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def measure(pid, secs, header=None):
    lua = os.path.join(WORK, "post.lua")
    hdr = f'wrk.headers["x-user-id"] = "{header}"\n' if header else ""
    open(lua, "w").write('wrk.method = "POST"\nwrk.body = \'{"max_tokens":4}\'\n' + hdr)
    before = ticks(pid)
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{secs}s", "-s", lua, f"http://127.0.0.1:{LISTEN}/"],
                         check=True, text=True, capture_output=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return (ticks(pid) - before) / os.sysconf("SC_CLK_TCK") * 1e6 / total, rps


def main():
    secs, runs = (2, 1) if "--quick" in sys.argv else (5, 5)
    binp = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
    body = json.dumps({"object": "chat.completion", "choices": [{"message": {"content": "x" * 900}}]})
    open(os.path.join(WORK, "up.conf"), "w").write(f"""worker_processes 1; daemon off; pid {WORK}/up.pid; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{UP}; location / {{ default_type application/json; return 200 '{body}'; }} }} }}
""")
    open(os.path.join(WORK, "cutover.toml"), "w").write(f"""[admin]
listen = "127.0.0.1:{ADMIN}"
[services.bench]
listen = "127.0.0.1:{LISTEN}"
allow_shared_endpoints = true
health = {{ path = "/", interval = "1s" }}
[services.bench.blue]
endpoints = ["127.0.0.1:{UP}"]
version = "a"
[services.bench.green]
endpoints = ["127.0.0.1:{UP}"]
version = "b"
[services.bench.release]
traffic = {{ canary = {{ percent = 10, bake = "1h" }} }}
sticky = {{ header = "x-user-id" }}
[services.bench.release.verify]
min_requests = 0
max_error_rate = 1.0
""")
    start(["nginx", "-c", os.path.join(WORK, "up.conf")], "1")
    cut = start([f"{binp}/cutover", "serve", "--config", os.path.join(WORK, "cutover.toml"), "--threads", "1"], "0",
                env=dict(os.environ, RUST_LOG="warn"))
    for p in (UP, LISTEN, ADMIN):
        wait_port(p)
    time.sleep(0.5)
    admin("/v1/services/bench/switch", {"to": "blue"})
    rows = {}
    measure(cut.pid, 1)
    rows["all_at_once (weight 0)"] = [measure(cut.pid, secs) for _ in range(runs)]
    rel = admin("/v1/services/bench/releases", {"version": "b2"})
    for _ in range(200):
        if admin("/v1/services/bench")["colors"]["green"]["weight"] == 10:
            break
        time.sleep(0.1)
    else:
        sys.exit("the canary step did not start")
    rows["canary 10%, keyless (a draw per request)"] = [measure(cut.pid, secs) for _ in range(runs)]
    rows["canary 10%, sticky header"] = [measure(cut.pid, secs, "user-42") for _ in range(runs)]
    admin(f"/v1/services/bench/releases/{rel['id']}/abort", {})
    print("| route table | CPU µs per request (median) | requests/s (median) |")
    print("| --- | --- | --- |")
    for k, v in rows.items():
        print(f"| {k} | {statistics.median(x[0] for x in v):.1f} | {statistics.median(x[1] for x in v):.0f} |")


try:
    main()
finally:
    for p in procs:
        p.terminate()
