#!/usr/bin/env python3
"""Fleet mode's benchmark (issue #14), run by hand: `python3 bench/fleet.py` (`--quick` to check
the script works). Prints markdown tables and writes them to bench/results/fleet.md.

1. Convergence: a 3-member etcd on loopback, 5 routers (`cutover serve` in fleet mode, router i
   on member i % 3), N switches (1,000) through router 0's admin API, one after another. A
   switch's answer is sent once every live router acked it, so request -> answer is an upper
   bound of request -> last ack; router 0's `cutover_fleet_switch_convergence_seconds`
   (commit -> last ack) is read too, as bucket bounds.
2. Data plane: `cutover-bench rate` on one fleet-mode router and on the same configuration
   with SQLite alone, side by side (fleet mode does nothing per request: same figures expected).
3. Scale (issue #24): `cutover-bench fleet-sim` with 10, 100 and 1,000 simulated routers (the
   routers' sync code, no listeners) on the same etcd, side by side: p50/p99 switch -> last ack,
   watch events per switch (against N), etcd calls per switch and etcd requests per idle router
   per minute, read from the members' /metrics. `--sim-only` runs this part alone.

Needs /usr/bin/etcd (apt-get install etcd-server). Bounded: every loop has a count, every
process is stopped at the end; traffic only to 127.0.0.1.
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETCD = [(23791, 23792), (23793, 23794), (23795, 23796)]  # (client, peer)
MOCK = [23801, 23802]
ROUTERS = 5
ADMIN0, LISTEN0 = 23810, 23830  # router i: ADMIN0 + i, LISTEN0 + i; SQLite-only router: + 9
procs = []


def start(cmd, log, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), **kw)
    procs.append(p)
    return p


def http(url, body=None, token=None, timeout=30):
    h = {"content-type": "application/json"}
    if token:
        h["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=h,
                                 method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def wait(what, f, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = f()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(len(xs) * q + 0.999999) - 1))] if xs else 0


def hist_bound(metrics, name, q):
    """The smallest bucket bound holding q of the observations (Prometheus text)."""
    buckets, count = [], 0
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), int(float(line.rsplit(" ", 1)[1]))))
        elif line.startswith(name + "_count"):
            count = int(float(line.rsplit(" ", 1)[1]))
    for le, n in sorted(buckets):
        if count and n >= q * count:
            return le
    return float("nan")


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def start_etcd(work):
    cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ETCD))
    for i, (c, p) in enumerate(ETCD):
        start(["/usr/bin/etcd", f"--name=m{i}", f"--data-dir={work}/etcd{i}",
               f"--listen-client-urls=http://127.0.0.1:{c}", f"--advertise-client-urls=http://127.0.0.1:{c}",
               f"--listen-peer-urls=http://127.0.0.1:{p}", f"--initial-advertise-peer-urls=http://127.0.0.1:{p}",
               f"--initial-cluster={cluster}", "--initial-cluster-state=new", "--initial-cluster-token=cutover-bench",
               # The e2e harness's loopback timings (etcd's defaults are for WANs).
               "--heartbeat-interval=50", "--election-timeout=500",
               "--experimental-watch-progress-notify-interval=1s", "--log-level=warn"], f"{work}/etcd{i}.log")
    for c, _ in ETCD:
        wait("etcd", lambda: json.loads(http(f"http://127.0.0.1:{c}/v3/maintenance/status", {})).get("leader"))


def router_config(work, name, admin, listen, store):
    d = f"{work}/{name}"
    os.makedirs(d, exist_ok=True)
    open(f"{d}/cutover.toml", "w").write(f"""
[admin]
listen = "127.0.0.1:{admin}"

[store]
path = "cutover.db"
{store}

[services.chat]
listen = "127.0.0.1:{listen}"
health = {{ path = "/health", interval = "1s", timeout = "1s" }}
[services.chat.blue]
endpoints = ["127.0.0.1:{MOCK[0]}"]
version = "v1"
[services.chat.green]
endpoints = ["127.0.0.1:{MOCK[1]}"]
version = "v2"
""")
    return d


def start_router(binp, d, admin):
    start([f"{binp}/cutover", "serve", "--config", f"{d}/cutover.toml"], f"{d}/serve.log", env=dict(os.environ, RUST_LOG="warn"))
    wait("router", lambda: http(f"http://127.0.0.1:{admin}/healthz"))
    return open(f"{d}/admin.token").read().strip()


def loadgen(binp, *args):
    out = subprocess.run([f"{binp}/cutover-bench", *[str(a) for a in args]], check=True, text=True, capture_output=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def simulated(a, binp, members, work):
    """Part 3: fleet-sim at each size, on the same etcd, one row each."""
    out = [f"### Simulated fleets (cutover-bench fleet-sim: the routers' sync code, no listeners)", "",
           "| routers N | switches | p50 ms | p99 ms | max ms | not all acked | watch events per switch | per N | "
           "etcd calls per switch | idle etcd requests per router per minute | cores busy: fleet-sim / 3 etcd members | load average before / after |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    members_pids = [p.pid for p in procs[:3]]
    for n in [int(x) for x in a.sim.split(",")]:
        switches = a.sim_switches if n <= 100 else max(10, a.sim_switches // 4)
        load0 = os.getloadavg()[0]
        cmd = [f"{binp}/cutover-bench", "fleet-sim", "--members", members, "--watchers", str(n), "--switches", str(switches),
               "--fleet", f"sim{n}-{int(time.time())}", "--dir", f"{a.sim_dir or work}/sim{n}", "--idle", "10s"]
        # Where the time goes: the CPU the simulating process and the members use over the
        # run, in cores (2 is all this machine has).
        sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        t0, e0, s0 = time.perf_counter(), sum(cpu_seconds(p) for p in members_pids), 0.0
        busy = []
        while sim.poll() is None:
            time.sleep(1)
            try:
                s1 = cpu_seconds(sim.pid)
            except OSError:
                break
            e1, t1 = sum(cpu_seconds(p) for p in members_pids), time.perf_counter()
            busy.append(((s1 - s0) / (t1 - t0), (e1 - e0) / (t1 - t0)))
            t0, e0, s0 = t1, e1, s1
        stdout = sim.communicate()[0]
        if sim.returncode != 0:
            sys.exit(f"fleet-sim failed with {n} routers")
        s = json.loads(stdout.strip().splitlines()[-1])
        # The switches' part of the run: the idle phase at the end is left out by taking the
        # busiest two thirds of the samples.
        busy.sort(key=lambda b: -(b[0] + b[1]))
        top = busy[: max(1, len(busy) * 2 // 3)]
        sim_cores, etcd_cores = (sum(b[i] for b in top) / len(top) for i in (0, 1))
        load1 = os.getloadavg()[0]
        ev = s["watch_events_per_switch"]
        out.append(f"| {n} | {switches} | {s['p50_us'] / 1000:.1f} | {s['p99_us'] / 1000:.1f} | {s['max_us'] / 1000:.1f} | "
                   f"{s['not_all_acked']} | {ev:.0f} | {ev / n:.2f} | {s['etcd_calls_per_switch']} | "
                   f"{s['idle_calls_per_router_per_min']} | {sim_cores:.2f} / {etcd_cores:.2f} | {load0:.1f} / {load1:.1f} |")
        print(out[-1], flush=True)
    out += ["", "Targets (issue #24) at N = 100: p99 <= 250 ms, watch events per switch <= 3 x N. The load average "
            "(1 min, 2 cores) says how much else ran on the machine; cores busy is the mean over the busiest two "
            "thirds of the run's one-second samples.", ""]
    return out


def report(a, out):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    etcd_v = subprocess.run(["/usr/bin/etcd", "--version"], text=True, capture_output=True).stdout.splitlines()[0]
    head = [f"Machine: {cpu}, {os.cpu_count()} cores, {etcd_v}. {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
            f"{' (QUICK run: not for quoting)' if a.quick else ''}", ""]
    text = "\n".join(head + out)
    print(text)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    name = "fleet-sim.md" if a.sim_only else "fleet.md"
    open(os.path.join(ROOT, "bench", "results", name), "w").write(text + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny counts, to check the script works")
    ap.add_argument("--switches", type=int, default=1000)
    ap.add_argument("--sim", default="10,100,1000", help="simulated router counts for fleet-sim")
    ap.add_argument("--sim-switches", type=int, default=200, help="switches per fleet-sim run (a quarter past 100 routers)")
    ap.add_argument("--sim-only", action="store_true", help="only the simulated fleets (part 3)")
    ap.add_argument("--sim-dir", help="where the simulated routers keep their SQLite snapshots (default: beside etcd's "
                    "data); e.g. /dev/shm, to see what one disk's fsyncs for every router cost the simulation")
    a = ap.parse_args()
    if a.quick:
        a.switches, a.sim, a.sim_switches = 20, "3", 10
    secs = 1 if a.quick else 5
    if not os.path.exists("/usr/bin/etcd"):
        sys.exit("needs /usr/bin/etcd: apt-get install etcd-server")
    bins = ["cutover-bench"] if a.sim_only else ["cutover", "mock-model", "cutover-bench"]
    subprocess.run(["cargo", "build", "--release", "--quiet", *[x for b in bins for x in ("--bin", b)]], cwd=ROOT, check=True)
    binp = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
    work = tempfile.mkdtemp(prefix="cutover-fleet-bench-")
    members = ",".join(f"127.0.0.1:{c}" for c, _ in ETCD)
    out = []
    try:
        start_etcd(work)
        for port, v in zip(MOCK if not a.sim_only else [], ["v1", "v2"]):
            start([f"{binp}/mock-model", "--port", str(port), "--model-version", v, "--token-interval", "0s"], f"{work}/mock-{v}.log")
        tokens = []
        for i in range(0 if a.sim_only else ROUTERS):
            c = ETCD[i % 3][0]
            d = router_config(work, f"r{i}", ADMIN0 + i, LISTEN0 + i,
                              f'url = "etcd://127.0.0.1:{c}"\nfleet = "bench"\nrouter_id = "r{i}"\nack_timeout = "2s"')
            tokens.append(start_router(binp, d, ADMIN0 + i))
        r0 = f"http://127.0.0.1:{ADMIN0}"
        if a.sim_only:
            out += simulated(a, binp, members, work)
            return report(a, out)
        wait("5 routers synced", lambda: sum(r["state"] == "SYNCED" for r in json.loads(http(f"{r0}/v1/fleet", token=tokens[0]))["routers"]) == ROUTERS)

        # 1. Convergence.
        lat, short = [], 0
        for k in range(a.switches):
            t0 = time.perf_counter()
            v = json.loads(http(f"{r0}/v1/services/chat/switch", {"to": "green" if k % 2 == 0 else "blue", "reason": "bench"}, tokens[0]))
            lat.append(time.perf_counter() - t0)
            if v["sync"]["synced"] != v["sync"]["of"]:
                short += 1
        m = http(f"{r0}/metrics")
        name = "cutover_fleet_switch_convergence_seconds"
        ms = lambda s: f"{s * 1000:.1f}"
        out += [f"### Switch convergence: {a.switches} switches through one router, {ROUTERS} routers, 3 etcd members", "",
                "| measure | p50 ms | p99 ms | max ms |", "| --- | ---: | ---: | ---: |",
                f"| request -> answer (sent after the last ack) | {ms(pct(lat, .5))} | {ms(pct(lat, .99))} | {ms(max(lat))} |",
                f"| commit -> last ack (`{name}`, bucket bound) | <= {ms(hist_bound(m, name, .5))} | <= {ms(hist_bound(m, name, .99))} | |",
                "", f"Switches not acked by all {ROUTERS} within ack_timeout: {short}.", ""]

        # 2. Data plane: the same service, fleet mode vs SQLite alone.
        d = router_config(work, "sqlite", ADMIN0 + 9, LISTEN0 + 9, "")
        tok = start_router(binp, d, ADMIN0 + 9)
        http(f"http://127.0.0.1:{ADMIN0 + 9}/v1/services/chat/switch", {"to": json.loads(http(f"{r0}/v1/services/chat", token=tokens[0]))["live"]}, tok)
        rows = []
        for label, port in [("fleet (etcd)", LISTEN0), ("SQLite", LISTEN0 + 9)] * 2:
            path = "/v1/chat/completions"
            loadgen(binp, "rate", f"127.0.0.1:{port}", "--path", path, "--rps", 500, "--duration", "1s")  # warm
            fixed = loadgen(binp, "rate", f"127.0.0.1:{port}", "--path", path, "--rps", 2000, "--connections", 32, "--duration", f"{secs}s")
            # Offered more than the machine does: every scheduled request is still sent, late,
            # so what was done per second of wall time is the throughput.
            t0 = time.perf_counter()
            sat = loadgen(binp, "rate", f"127.0.0.1:{port}", "--path", path, "--rps", 20000, "--connections", 64, "--duration", f"{secs}s")
            sat["done_rps"] = sat["requests"] / (time.perf_counter() - t0)
            rows.append((label, fixed, sat))
        out += ["### Data plane: one router, fleet mode vs SQLite alone (cutover-bench rate, mock-model upstream)", "",
                "| mode | 2,000 req/s: p50 us | p99 us | failed | flat out (20k req/s offered): req/s done | failed |",
                "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for label, f, s in rows:
            out.append(f"| {label} | {f['p50_us']} | {f['p99_us']} | {f['failed']} | {s['done_rps']:.0f} | {s['failed']} |")
        out += ["", "Each mode twice, alternating, while the 5 fleet routers and etcd run (the SQLite router too). Flat out, "
                "the generator and the router share the 2 cores; the done rate compares the two, its latency is queueing (not shown).", ""]

        out += simulated(a, binp, members, work)
        report(a, out)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
