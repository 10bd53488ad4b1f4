#!/usr/bin/env python3
"""What a new stream costs each proxy when thousands open at once: CPU and system calls per
stream, and the time to first byte, for cutover, HAProxy and nginx side by side with the direct
path, in one run. Run by hand: `python3 bench/burst.py [--streams 4000] [--rounds 3]`.

Short streams (2 tokens, 50 ms apart) so the figures are the set-up (accept, request head,
upstream connect, response head) and the close, not the relaying `bench/run.py` measures. Each
proxy runs one worker pinned to CPU 0; the client and mock-model share CPU 1, as in run.py.
System calls are counted by the kernel's tracepoints (`perf stat`), per stream, by kind.

`--baseline BIN` adds a second cutover (another build, e.g. main's before a change) as the
path `baseline`, measured in the same rounds: an A/B of a change inside one run, since runs
on this machine differ by more than most changes do.
"""
import argparse, json, os, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP, ADMIN, CUTOVER, HAPROXY, NGINX = 18971, 18972, 18973, 18974, 18975
BASE, BASE_ADMIN = 18976, 18977
PROXY_CPU, LOAD_CPU = "0", "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import cpu_ticks, ensure_tools, wait_port  # noqa: E402

procs = []


def start(cmd, cpu, cwd, **kw):
    p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, **kw)
    procs.append(p)
    return p


def children(pid):
    try:
        return [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def cutover_toml(path, admin, listen):
    open(path, "w").write(f"""
[admin]
listen = "127.0.0.1:{admin}"
[services.s]
listen = "127.0.0.1:{listen}"
allow_shared_endpoints = true
health = {{ path = "/health", interval = "1s" }}
limits = {{ max_connections = 20000 }}
[services.s.blue]
endpoints = ["127.0.0.1:{UP}"]
version = "a"
[services.s.green]
endpoints = ["127.0.0.1:{UP}"]
version = "b"
""")


def configs(work):
    cutover_toml(f"{work}/cutover.toml", ADMIN, CUTOVER)
    os.makedirs(f"{work}/base", exist_ok=True)
    cutover_toml(f"{work}/base/cutover.toml", BASE_ADMIN, BASE)
    open(f"{work}/haproxy.cfg", "w").write(f"""
global
  nbthread 1
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  http-reuse always
  option http-keep-alive
  option http-no-delay
frontend f
  bind 127.0.0.1:{HAPROXY}
  default_backend s
backend s
  server s1 127.0.0.1:{UP}
""")
    open(f"{work}/nginx.conf", "w").write(f"""
worker_processes 1; daemon off; pid {work}/nginx.pid; error_log /dev/null; worker_rlimit_nofile 20000;
events {{ worker_connections 9500; }}
http {{ access_log off;
  upstream s {{ server 127.0.0.1:{UP}; keepalive 64; }}
  server {{ listen 127.0.0.1:{NGINX} backlog=4096; location / {{ proxy_pass http://s; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; proxy_read_timeout 300s; }} }} }}
""")


def one(binp, work, name, port, pids, n, tokens):
    out = f"{work}/perf-{name}.txt"
    st = None
    if pids:
        st = subprocess.Popen(["perf", "stat", "-x,", "-e", "syscalls:sys_enter_*", "-p", ",".join(map(str, pids)), "-o", out],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    before = cpu_ticks(pids) if pids else (0, 0)
    r = subprocess.run(["taskset", "-c", LOAD_CPU, f"{binp}/cutover-bench", "stream", f"127.0.0.1:{port}",
                        "--streams", str(n), "--tokens", str(tokens)], check=True, capture_output=True, text=True)
    after = cpu_ticks(pids) if pids else (0, 0)
    if st:
        time.sleep(0.2)
        st.send_signal(signal.SIGINT)
        st.wait()
    x = json.loads(r.stdout.strip().splitlines()[-1])
    kinds = {}
    for line in open(out) if st and os.path.exists(out) else []:
        f = line.strip().split(",")
        if len(f) > 3 and f[0].isdigit() and int(f[0]) > 0:
            kinds[f[2].replace("syscalls:sys_enter_", "")] = int(f[0]) / n
    hz = os.sysconf("SC_CLK_TCK")
    return {"p50": x["ttfb_p50_us"] / 1000, "p99": x["ttfb_p99_us"] / 1000, "broken": x["broken"],
            "cpu": ((after[0] + after[1]) - (before[0] + before[1])) / hz * 1e6 / n if pids else None,
            "calls": sum(kinds.values()) if pids else None, "kinds": kinds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=2)
    ap.add_argument("--baseline", metavar="BIN", help="another cutover binary, measured beside this tree's")
    a = ap.parse_args()
    ensure_tools()
    if not subprocess.run(["which", "perf"], capture_output=True).returncode == 0:
        sys.exit("needs perf (linux-perf) for the system-call counts")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "cutover", "--bin", "mock-model", "--bin", "cutover-bench"],
                   cwd=ROOT, check=True)
    binp = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
    work = tempfile.mkdtemp(prefix="cutover-burst-")
    try:
        configs(work)
        start([f"{binp}/mock-model", "--port", str(UP), "--model-version", "a", "--token-interval", "50ms"], LOAD_CPU, work)
        wait_port(UP)
        cut = start([f"{binp}/cutover", "serve", "--config", f"{work}/cutover.toml", "--threads", "1"], PROXY_CPU, work,
                    env=dict(os.environ, RUST_LOG="warn"))
        base = a.baseline and start([a.baseline, "serve", "--config", f"{work}/base/cutover.toml", "--threads", "1"],
                                    PROXY_CPU, f"{work}/base", env=dict(os.environ, RUST_LOG="warn"))
        hp = start(["haproxy", "-f", f"{work}/haproxy.cfg"], PROXY_CPU, work)
        ng = start(["nginx", "-c", f"{work}/nginx.conf"], PROXY_CPU, work)
        for p in (CUTOVER, HAPROXY, NGINX, ADMIN) + ((BASE, BASE_ADMIN) if base else ()):
            wait_port(p)
        time.sleep(1)
        for d, admin in [(work, ADMIN)] + ([(f"{work}/base", BASE_ADMIN)] if base else []):
            tok = open(f"{d}/admin.token").read().strip()
            subprocess.run(["curl", "-fsS", "-XPOST", "-H", f"authorization: Bearer {tok}", "-H", "content-type: application/json",
                            f"http://127.0.0.1:{admin}/v1/services/s/switch", "-d", '{"to":"blue"}'], check=True,
                           stdout=subprocess.DEVNULL)
        paths = {"direct": (UP, []), "cutover": (CUTOVER, [cut.pid])}
        if base:
            paths["baseline"] = (BASE, [base.pid])
        paths.update({"haproxy": (HAPROXY, [hp.pid] + children(hp.pid)), "nginx": (NGINX, children(ng.pid))})
        res = {t: [] for t in paths}
        for _ in range(a.rounds):
            for t, (port, pids) in paths.items():
                res[t].append(one(binp, work, t, port, pids, a.streams, a.tokens))
                time.sleep(3)  # the closed connections' TIME_WAIT and the upstream's tasks settle
        med = lambda t, k: statistics.median(r[k] for r in res[t])
        print(f"### {a.streams} streams opened at once, {a.tokens} tokens each: medians of {a.rounds} rounds "
              f"(p99 of each round in brackets)\n")
        print("| path | TTFB p50 ms | TTFB p99 ms | broken | CPU µs per stream | system calls per stream | most frequent (per stream) |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for t in paths:
            p99s = ", ".join(f"{r['p99']:.0f}" for r in res[t])
            if paths[t][1]:
                kinds = {}
                for r in res[t]:
                    for k, v in r["kinds"].items():
                        kinds[k] = kinds.get(k, 0) + v / len(res[t])
                top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])[:8])
                cpu, calls = f"{med(t, 'cpu'):.1f}", f"{med(t, 'calls'):.1f}"
            else:
                top, cpu, calls = "", "-", "-"
            print(f"| {t} | {med(t, 'p50'):.1f} | {med(t, 'p99'):.1f} ({p99s}) | {sum(r['broken'] for r in res[t])} | {cpu} | {calls} | {top} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
