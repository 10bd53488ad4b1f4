#!/usr/bin/env python3
"""cutover's benchmark: the same proxying done by cutover, nginx and HAProxy on this machine,
side by side with the direct path, in one run. Prints a markdown table and writes it, with an
SVG plot, under bench/results/. Run by hand: `python3 bench/run.py` (or `--quick`).

Fair set-up: one worker each (cutover --threads 1, nginx worker_processes 1 with upstream
keepalive, HAProxy nbthread 1 with http-reuse), every proxy pinned to CPU 0, the load generator
and the upstreams to CPU 1, access logs off. Upstream: nginx returning a fixed ~1 KiB JSON body;
mock-model for streams.
"""
import argparse, json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P = dict(upstream=18901, mock_a=18902, mock_b=18903, mock_c=18904, cutover=18910, cutover_stream=18912, cutover_scale=18913,
         admin=18911, nginx=18920, nginx_stream=18922, nginx_scale=18923, haproxy=18930, haproxy_stream=18932, haproxy_scale=18933)
# Many concurrent streams (issue #24): a token every 50 ms (the slow end of LLM token rates, so
# one mock-model on the load generator's core can feed 8,000 streams), 100 tokens each.
SCALE_INTERVAL, SCALE_TOKENS = "50ms", 100
PROXY_CPU, LOAD_CPU = "0", "1"
procs = []


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def start(cmd, cpu, **kw):
    p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def wait_port(port, timeout=15):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def ensure_tools():
    missing = [t for t, b in [("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk"), ("taskset", "util-linux")] if not shutil.which(t)]
    if missing:
        pk = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk", "taskset": "util-linux"}
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq"] + [pk[m] for m in missing], check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def cpu_ticks(pids):
    u = s = 0
    for pid in pids:
        f = open(f"/proc/{pid}/stat").read()
        rest = f[f.rindex(")") + 2:].split()
        u += int(rest[11]); s += int(rest[12])
    return u, s


def rss_kib(pids):
    total = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def children(pid):
    try:
        return [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def admin(path, body=None):
    tok = open(os.path.join(WORK, "admin.token")).read().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{P['admin']}{path}", data=json.dumps(body).encode() if body is not None else None,
                                 headers={"authorization": f"Bearer {tok}", "content-type": "application/json"}, method="POST" if body is not None else "GET")
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def setup(binp):
    body = json.dumps({"object": "chat.completion", "model": "bench", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 900}}]})
    open(os.path.join(WORK, "upstream.conf"), "w").write(f"""
worker_processes 1; daemon off; pid {WORK}/upstream.pid; error_log /dev/null;
events {{ worker_connections 9000; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{P['upstream']} backlog=4096; default_type application/json;
    location / {{ return 200 '{body}'; }} }} }}
""")
    # 8,000 streams hold 16,000 sockets in a proxy: every proxy gets room for 20,000.
    open(os.path.join(WORK, "nginx.conf"), "w").write(f"""
worker_processes 1; daemon off; pid {WORK}/nginx.pid; error_log /dev/null; worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream u {{ server 127.0.0.1:{P['upstream']}; keepalive 64; keepalive_requests 1000000; }}
  upstream s {{ server 127.0.0.1:{P['mock_a']}; keepalive 64; }}
  server {{ listen 127.0.0.1:{P['nginx']} backlog=4096; location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }} }}
  upstream sc {{ server 127.0.0.1:{P['mock_c']}; keepalive 64; }}
  server {{ listen 127.0.0.1:{P['nginx_stream']} backlog=4096; location / {{ proxy_pass http://s; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; proxy_read_timeout 300s; }} }}
  server {{ listen 127.0.0.1:{P['nginx_scale']} backlog=4096; location / {{ proxy_pass http://sc; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; proxy_read_timeout 300s; }} }}
}}
""")
    open(os.path.join(WORK, "haproxy.cfg"), "w").write(f"""
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
  bind 127.0.0.1:{P['haproxy']}
  default_backend u
frontend fs
  bind 127.0.0.1:{P['haproxy_stream']}
  default_backend s
frontend fsc
  bind 127.0.0.1:{P['haproxy_scale']}
  default_backend sc
backend u
  server s1 127.0.0.1:{P['upstream']}
backend s
  server s1 127.0.0.1:{P['mock_a']}
backend sc
  server s1 127.0.0.1:{P['mock_c']}
""")
    open(os.path.join(WORK, "cutover.toml"), "w").write(f"""
[admin]
listen = "127.0.0.1:{P['admin']}"
[services.bench]
listen = "127.0.0.1:{P['cutover']}"
allow_shared_endpoints = true  # the switch storm switches between two routes to one upstream
health = {{ path = "/", interval = "1s" }}
limits = {{ max_connections = 20000 }}
[services.bench.blue]
endpoints = ["127.0.0.1:{P['upstream']}"]
version = "a"
[services.bench.green]
endpoints = ["127.0.0.1:{P['upstream']}"]
version = "b"
[services.stream]
listen = "127.0.0.1:{P['cutover_stream']}"
health = {{ path = "/health", interval = "1s" }}
limits = {{ max_connections = 20000 }}
[services.stream.blue]
endpoints = ["127.0.0.1:{P['mock_a']}"]
version = "a"
[services.stream.green]
endpoints = ["127.0.0.1:{P['mock_b']}"]
version = "b"
[services.scale]
listen = "127.0.0.1:{P['cutover_scale']}"
allow_shared_endpoints = true
health = {{ path = "/health", interval = "1s" }}
limits = {{ max_connections = 20000 }}
[services.scale.blue]
endpoints = ["127.0.0.1:{P['mock_c']}"]
version = "a"
[services.scale.green]
endpoints = ["127.0.0.1:{P['mock_c']}"]
version = "b"
""")
    start(["nginx", "-c", os.path.join(WORK, "upstream.conf")], LOAD_CPU)
    for port, v in [(P["mock_a"], "a"), (P["mock_b"], "b")]:
        start([f"{binp}/mock-model", "--port", str(port), "--model-version", v, "--token-interval", "20ms"], LOAD_CPU)
    start([f"{binp}/mock-model", "--port", str(P["mock_c"]), "--model-version", "c", "--token-interval", SCALE_INTERVAL], LOAD_CPU)
    pids = {}
    pids["cutover"] = [start([f"{binp}/cutover", "serve", "--config", os.path.join(WORK, "cutover.toml"), "--threads", "1"], PROXY_CPU, env=dict(os.environ, RUST_LOG="warn")).pid]
    ng = start(["nginx", "-c", os.path.join(WORK, "nginx.conf")], PROXY_CPU)
    hp = start(["haproxy", "-f", os.path.join(WORK, "haproxy.cfg")], PROXY_CPU)
    for port in [P["upstream"], P["mock_a"], P["mock_b"], P["mock_c"], P["cutover"], P["admin"], P["nginx"], P["haproxy"]]:
        wait_port(port)
    time.sleep(0.5)
    for _ in range(100):  # the nginx master forks its worker after it binds
        if children(ng.pid):
            break
        time.sleep(0.05)
    pids["nginx"] = [ng.pid] + children(ng.pid)
    pids["haproxy"] = [hp.pid] + children(hp.pid)
    admin("/v1/services/bench/switch", {"to": "blue"})
    admin("/v1/services/stream/switch", {"to": "blue"})
    admin("/v1/services/scale/switch", {"to": "blue"})
    return pids


def wrk(port, secs):
    lua = os.path.join(WORK, "post.lua")
    open(lua, "w").write('wrk.method = "POST"\nwrk.body = \'{"max_tokens":4}\'\nwrk.headers["Content-Type"] = "application/json"\n')
    out = sh("taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c32", f"-d{secs}s", "-s", lua, f"http://127.0.0.1:{port}/")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, total, int(errs.group(1)) if errs else 0


def loadgen(binp, *args):
    out = sh("taskset", "-c", LOAD_CPU, f"{binp}/cutover-bench", *[str(a) for a in args])
    return json.loads(out.strip().splitlines()[-1])


def listen_overflows():
    """The kernel's count of connections dropped because a listen queue was full (any socket
    on the machine: a SYN dropped there costs its client a 1 s retransmit)."""
    out = sh("nstat", "-az", "TcpExtListenOverflows")
    m = re.search(r"TcpExtListenOverflows\s+(\d+)", out)
    return int(m.group(1)) if m else 0


def scale_run(binp, path, port, watch, n, tokens):
    """N streams opened at once through one path: the client's figures, plus the proxy's peak
    RSS growth per stream, its CPU per relayed event and the listen-queue overflows meanwhile."""
    import threading
    idle = rss_kib(watch) if watch else 0
    peak = [idle]
    done = threading.Event()
    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_kib(watch))
    th = threading.Thread(target=sample)
    if watch:
        th.start()
    before, ov = (cpu_ticks(watch) if watch else (0, 0)), listen_overflows()
    x = loadgen(binp, "stream", f"127.0.0.1:{port}", "--streams", n, "--tokens", tokens)
    after, ov2 = (cpu_ticks(watch) if watch else (0, 0)), listen_overflows()
    done.set()
    if watch:
        th.join()
    hz = os.sysconf("SC_CLK_TCK")
    events = max(1, (x["streams"] - x["broken"]) * tokens)
    x["rss_per_stream_kib"] = (peak[0] - idle) / n if watch else None
    x["cpu_us_per_event"] = ((after[0] + after[1]) - (before[0] + before[1])) / hz * 1e6 / events if watch else None
    x["overflows"] = ov2 - ov
    time.sleep(2)  # let the closed sockets leave TIME_WAIT-free paths settle before the next path
    return x


def syscalls_per_request(pids, port, secs):
    """System calls per request of one proxy process during a wrk run, counted by the kernel's
    syscall tracepoints (`perf stat`), split by kind. None when perf is missing or refused."""
    if not shutil.which("perf"):
        return None
    out = os.path.join(WORK, f"perf-{port}.txt")
    st = subprocess.Popen(["perf", "stat", "-x,", "-e", "syscalls:sys_enter_*", "-p", ",".join(map(str, pids)), "-o", out],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    _, total, _ = wrk(port, secs)
    time.sleep(0.2)
    st.send_signal(signal.SIGINT)
    st.wait()
    kinds = {}
    for line in open(out) if os.path.exists(out) else []:
        f = line.strip().split(",")
        if len(f) > 3 and f[0].isdigit() and int(f[0]) > 0:
            kinds[f[2].replace("syscalls:sys_enter_", "")] = int(f[0]) / max(1, total)
    return kinds or None


def main():
    global WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny durations, to check the script works")
    a = ap.parse_args()
    secs, runs = (1, 1) if a.quick else (5, 3)
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "cutover", "--bin", "mock-model", "--bin", "cutover-bench"], cwd=ROOT, check=True)
    binp = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
    WORK = tempfile.mkdtemp(prefix="cutover-bench-")
    try:
        import resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    pids = setup(binp)
    targets = {"direct": P["upstream"], "cutover": P["cutover"], "nginx": P["nginx"], "haproxy": P["haproxy"]}
    res = {t: {"rps": [], "user_us": [], "sys_us": []} for t in targets}
    for t, port in targets.items():  # warm every path once
        wrk(port, 1)
    for r in range(runs):
        order = list(targets) if r % 2 == 0 else list(reversed(targets))
        for t in order:
            watch = pids.get(t, [])
            before = cpu_ticks(watch) if watch else (0, 0)
            rps, total, errs = wrk(targets[t], secs)
            after = cpu_ticks(watch) if watch else (0, 0)
            hz = os.sysconf("SC_CLK_TCK")
            res[t]["rps"].append(rps)
            if watch and total:
                res[t]["user_us"].append((after[0] - before[0]) / hz * 1e6 / total)
                res[t]["sys_us"].append((after[1] - before[1]) / hz * 1e6 / total)
            if errs:
                print(f"warning: {t} answered {errs} non-2xx", file=sys.stderr)
    med = {t: {k: (statistics.median(v) if v else None) for k, v in d.items()} for t, d in res.items()}
    lowest = min(med[t]["rps"] for t in ["cutover", "nginx", "haproxy"])
    base = generator_ceiling(binp, lowest, a.quick)

    # Memory first: thousands of streams later leave the allocators' pages resident, and
    # growth per idle connection measured after them would reuse those pages (too low).
    mem = {}
    for t in ["cutover", "nginx", "haproxy"]:
        idle = rss_kib(pids[t])
        row = {"idle_kib": idle}
        for n in (1000, 5000):
            p = subprocess.Popen(["taskset", "-c", LOAD_CPU, f"{binp}/cutover-bench", "idle", f"127.0.0.1:{targets[t]}", "--connections", str(n), "--hold", "4s"], stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            time.sleep(1)
            grown = rss_kib(pids[t]) - idle
            row[n] = (grown / n, json.loads(line)["open"])
            p.wait()
            time.sleep(1)
        mem[t] = row

    lat = {}
    for pct in (25, 50, 75):
        rate = int(base * pct / 100)
        for t, port in targets.items():
            lat[(pct, t)] = loadgen(binp, "rate", f"127.0.0.1:{port}", "--rps", rate, "--connections", 64, "--duration", f"{secs}s")

    streams = {}
    stream_targets = {"direct": P["mock_a"], "cutover": P["cutover_stream"], "nginx": P["nginx_stream"], "haproxy": P["haproxy_stream"]}
    tokens = 50 if a.quick else 200
    for n in (100, 500):
        for t, port in stream_targets.items():
            streams[(n, t)] = loadgen(binp, "stream", f"127.0.0.1:{port}", "--streams", n, "--tokens", tokens)

    scale = {}
    scale_targets = {"direct": P["mock_c"], "cutover": P["cutover_scale"], "nginx": P["nginx_scale"], "haproxy": P["haproxy_scale"]}
    scale_tokens = 20 if a.quick else SCALE_TOKENS
    for n in ((200, 1000) if a.quick else (500, 4000, 8000)):
        for t, port in scale_targets.items():
            scale[(n, t)] = scale_run(binp, t, port, pids.get(t, []), n, scale_tokens)

    calls = {t: syscalls_per_request(pids[t], targets[t], secs) for t in ["cutover", "nginx", "haproxy"]}

    # Switch storm: fixed-rate load at 50% plus 200 open streams, 100 switches of each service.
    import threading
    storm = {}
    def load():
        storm["rate"] = loadgen(binp, "rate", f"127.0.0.1:{P['cutover']}", "--rps", int(base / 2), "--connections", 64, "--duration", f"{max(secs, 3) + 2}s")
    def open_streams():
        storm["streams"] = loadgen(binp, "stream", f"127.0.0.1:{P['cutover_stream']}", "--streams", 200, "--tokens", tokens)
    th = [threading.Thread(target=load), threading.Thread(target=open_streams)]
    for x in th:
        x.start()
    time.sleep(0.5)
    switches = 0
    t0 = time.time()
    for i in range(100):
        to = "green" if i % 2 == 0 else "blue"
        admin("/v1/services/bench/switch", {"to": to})
        admin("/v1/services/stream/switch", {"to": to})
        switches += 2
        time.sleep(max(0.0, (max(secs, 3) - 1) / 100 - 0.002))
    storm_secs = time.time() - t0
    for x in th:
        x.join()


    report(med, lat, streams, storm, switches, storm_secs, mem, lowest, base, a.quick, scale, scale_tokens, calls)
    features(a.quick)


def features(quick):
    """The request path's cost with progressive weights and with shadowing on against off:
    bench/weights.py and bench/shadow.py, run here after this script's processes are gone."""
    for p in procs:
        for c in children(p.pid):
            try:
                os.kill(c, signal.SIGKILL)
            except OSError:
                pass
        p.kill()
        p.wait()
    time.sleep(1)
    out = os.path.join(ROOT, "bench", "results", "latest.md")
    for script, title in [("weights.py", "### Weighted route table (progressive steps): CPU per request"),
                          ("shadow.py", "### Shadowing on against off: CPU per live request")]:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script)] + (["--quick"] if quick else []),
                           capture_output=True, text=True)
        text = f"{title}\n\n" + (r.stdout.strip() if r.returncode == 0 else f"({script} failed: {r.stderr.strip()[-300:]})") + "\n"
        print(text)
        open(out, "a").write("\n" + text)


def f(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def generator_ceiling(binp, lowest, quick):
    """The fixed-rate rows are relative to the lowest proxy capacity, but the open-loop
    generator shares its core with the upstream and tops out below what wrk measures: past
    that, every row (the direct path included) shows the generator's queue, not the proxy.
    Lower the base until the generator holds 75% of it on the direct path with a p99 within
    3x of its lightly loaded p99 (or +2 ms)."""
    direct = f"127.0.0.1:{P['upstream']}"
    dur = "1s" if quick else "2s"
    light = loadgen(binp, "rate", direct, "--rps", max(1000, int(lowest * 0.1)), "--connections", 64, "--duration", dur)["p99_us"]
    base = lowest
    for _ in range(8):
        r = loadgen(binp, "rate", direct, "--rps", int(base * 0.75), "--connections", 64, "--duration", dur)
        if r["failed"] == 0 and r["p99_us"] <= max(3 * light, light + 2000):
            return base
        base *= 0.85
    return base


def report(med, lat, streams, storm, switches, storm_secs, mem, lowest, base, quick, scale, scale_tokens, calls):
    cpu = sh("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    lines = [f"Machine: {cpu}, {os.cpu_count()} cores, kernel {os.uname().release}. {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{' (QUICK run: not for quoting)' if quick else ''}", ""]
    lines += ["### Capacity and CPU cost (wrk -c32, POST, 1 KiB upstream; median of runs)", "",
              "| path | requests/s | proxy user µs/req | proxy sys µs/req | proxy CPU µs/req |", "|---|---:|---:|---:|---:|"]
    for t in ["direct", "cutover", "nginx", "haproxy"]:
        m = med[t]
        tot = None if m["user_us"] is None else m["user_us"] + m["sys_us"]
        lines.append(f"| {t} | {f(m['rps'], 0)} | {f(m['user_us'])} | {f(m['sys_us'])} | {f(tot)} |")
    c = med["cutover"]; ct = c["user_us"] + c["sys_us"]
    ratios = []
    for o in ["nginx", "haproxy"]:
        ot = med[o]["user_us"] + med[o]["sys_us"]
        if not ot:
            continue
        ratios.append(f"cutover/{o}: throughput {c['rps'] / med[o]['rps']:.2f}×, CPU per request {ct / ot:.2f}×")
    lines += ["", "Ratios: " + "; ".join(ratios) + ".", ""]
    scaled = "" if base >= lowest else f"; scaled down from the lowest proxy capacity {lowest:.0f}/s to what the generator sustains on the direct path"
    lines += [f"### Latency added over direct at a fixed rate (open loop, 64 connections; 100% = {base:.0f}/s{scaled})", "",
              "| load | path | p50 µs | p99 µs | p99.9 µs | added p99 µs | failed |", "|---|---|---:|---:|---:|---:|---:|"]
    for pct in (25, 50, 75):
        d = lat[(pct, "direct")]
        for t in ["direct", "cutover", "nginx", "haproxy"]:
            x = lat[(pct, t)]
            lines.append(f"| {pct}% | {t} | {x['p50_us']} | {x['p99_us']} | {x['p999_us']} | {x['p99_us'] - d['p99_us'] if t != 'direct' else '-'} | {x['failed']} |")
    lines += ["", "### Streaming (SSE, chunks 20 ms apart)", "",
              "| streams | path | TTFB p50 µs | TTFB p99 µs | max chunk gap p99 µs | broken |", "|---|---|---:|---:|---:|---:|"]
    for n in (100, 500):
        for t in ["direct", "cutover", "nginx", "haproxy"]:
            x = streams[(n, t)]
            lines.append(f"| {n} | {t} | {x['ttfb_p50_us']} | {x['ttfb_p99_us']} | {x['max_gap_p99_us']} | {x['broken']} |")
    lines += ["", f"### Many streams opened at once (SSE, {scale_tokens} tokens {SCALE_INTERVAL} apart, each on a new connection)", "",
              "Added = over the direct path in the same run. RSS per stream: the proxy's peak RSS growth over idle / streams. "
              "CPU per event: the proxy's user+system time / relayed chunks. Overflows: listen-queue drops counted by the kernel "
              "during the run (any listener; each costs a client a 1 s SYN retransmit).", "",
              "| streams | path | TTFB p50 ms | TTFB p99 ms | added p99 ms | max gap p99 ms | added gap ms | broken | RSS/stream KiB | CPU µs/event | overflows |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sorted({k[0] for k in scale}):
        d = scale[(n, "direct")]
        for t in ["direct", "cutover", "nginx", "haproxy"]:
            x = scale[(n, t)]
            added = "-" if t == "direct" else f"{(x['ttfb_p99_us'] - d['ttfb_p99_us']) / 1000:.1f}"
            gap = "-" if t == "direct" else f"{(x['max_gap_p99_us'] - d['max_gap_p99_us']) / 1000:.1f}"
            lines.append(f"| {n} | {t} | {x['ttfb_p50_us'] / 1000:.1f} | {x['ttfb_p99_us'] / 1000:.1f} | {added} | {x['max_gap_p99_us'] / 1000:.1f} | {gap} | "
                         f"{x['broken']} | {f(x['rss_per_stream_kib'], 2)} | {f(x['cpu_us_per_event'], 2)} | {x['overflows']} |")
    if any(calls.values()):
        lines += ["", "### System calls per request (wrk -c32, counted by `perf stat` on the syscall tracepoints)", "",
                  "| proxy | total | by kind (≥ 0.01 per request) |", "|---|---:|---|"]
        for t, k in calls.items():
            if k:
                kinds = ", ".join(f"{n} {v:.2f}" for n, v in sorted(k.items(), key=lambda i: -i[1]) if v >= 0.01)
                lines.append(f"| {t} | {sum(k.values()):.2f} | {kinds} |")
    r = storm["rate"]; s = storm["streams"]; steady = lat[(50, "cutover")]
    lines += ["", f"### Switch under load ({switches} switches in {storm_secs:.1f} s, fixed rate at 50% + 200 streams)", "",
              f"Failed requests: **{r['failed']}** of {r['requests'] + r['failed']}; broken streams: **{s['broken']}** of {s['streams']}; "
              f"p99 during the storm {r['p99_us']} µs vs steady {steady['p99_us']} µs.", ""]
    lines += ["### Memory (RSS)", "", "| proxy | idle KiB | bytes per idle keep-alive conn @1k | @5k |", "|---|---:|---:|---:|"]
    for t, m in mem.items():
        lines.append(f"| {t} | {m['idle_kib']} | {m[1000][0] * 1024:.0f} ({m[1000][1]} open) | {m[5000][0] * 1024:.0f} ({m[5000][1]} open) |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.path.join(ROOT, "bench", "results")
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "latest.md"), "w").write(text)
    svg(med, os.path.join(out, "latest.svg"))
    print(f"written: {out}/latest.md and latest.svg")


def svg(med, path):
    rows = [(t, med[t]["user_us"] or 0, med[t]["sys_us"] or 0) for t in ["cutover", "nginx", "haproxy"]]
    mx = max(u + s for _, u, s in rows) or 1
    w, bar, gap = 520, 28, 18
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{60 + len(rows) * (bar + gap)}" font-family="sans-serif" font-size="13">',
             '<text x="10" y="20" font-weight="bold">Proxy CPU per request (µs): user + system</text>']
    for i, (t, u, s) in enumerate(rows):
        y = 40 + i * (bar + gap)
        uw, sw = u / mx * 340, s / mx * 340
        parts += [f'<text x="10" y="{y + 19}">{t}</text>', f'<rect x="90" y="{y}" width="{uw:.1f}" height="{bar}" fill="#3b82f6"/>',
                  f'<rect x="{90 + uw:.1f}" y="{y}" width="{sw:.1f}" height="{bar}" fill="#94a3b8"/>',
                  f'<text x="{95 + uw + sw:.1f}" y="{y + 19}">{u:.1f} + {s:.1f} = {u + s:.1f}</text>']
    parts.append("</svg>")
    open(path, "w").write("\n".join(parts))


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            # nginx's worker outlives a killed master and keeps the port: kill children first.
            for c in children(p.pid):
                try:
                    os.kill(c, signal.SIGKILL)
                except OSError:
                    pass
            try:
                p.send_signal(signal.SIGKILL)
            except OSError:
                pass
