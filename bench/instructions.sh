#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: deterministic for a given binary, so it
# shows changes of a few percent that wall-clock benchmarks on a shared 2-core machine cannot.
# Usage: bench/instructions.sh BINARY [BINARY...]   (release builds of `cutover`)
# Per request = (instructions at 3000 requests - at 1000) / 2000, so start-up cancels out.
# Per relayed event of a stream: 40 SSE streams from mock-model, 40 and then 120 tokens each;
# the difference over the 3,200 extra events, so set-up and close cancel out.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 CUTOVER_BINARY [...]" >&2; exit 2; }
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light; }
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin cutover-bench --bin mock-model
loadgen="${CARGO_TARGET_DIR:-$root/target}/release/cutover-bench"
mock="${CARGO_TARGET_DIR:-$root/target}/release/mock-model"
W=$(mktemp -d)
trap 'kill $NG $MK 2>/dev/null || true; rm -rf "$W"' EXIT
body=$(python3 -c "print('x'*1000)")
cat > "$W/up.conf" <<NG
worker_processes 1; daemon off; pid $W/up.pid; error_log /dev/null;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18901; default_type application/json; location / { return 200 '$body'; } } }
NG
cat > "$W/c.toml" <<TOML
[admin]
listen = "127.0.0.1:18911"
[services.bench]
listen = "127.0.0.1:18910"
health = { path = "/", interval = "1h" }
allow_shared_endpoints = true
[services.bench.blue]
endpoints = ["127.0.0.1:18901"]
[services.bench.green]
endpoints = ["127.0.0.1:18901"]
TOML
# Binaries from before `allow_shared_endpoints` existed refuse the key (and allow the sharing).
grep -v '^allow_shared_endpoints' "$W/c.toml" > "$W/c-old.toml"
nginx -c "$W/up.conf" & NG=$!
"$mock" --port 18902 --token-interval 5ms >/dev/null 2>&1 & MK=$!
sed 's/18901/18902/; s#path = "/"#path = "/health"#' "$W/c.toml" > "$W/s.toml"
grep -v '^allow_shared_endpoints' "$W/s.toml" > "$W/s-old.toml"
# Instructions the proxy runs under callgrind while $loadgen does "$@" against it.
counted() {
  local conf=$1 out=$2; shift 2
  rm -f "$W"/cutover.db*
  "$bin" check "$conf" >/dev/null 2>&1 || conf="${conf%.toml}-old.toml"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" serve --config "$conf" --threads 1 2>/dev/null & P=$!
  for _ in $(seq 100); do curl -fs http://127.0.0.1:18911/healthz >/dev/null 2>&1 && break; sleep 0.2; done
  curl -s -X POST -H "authorization: Bearer $(cat "$W/admin.token")" -d '{"to":"blue"}' http://127.0.0.1:18911/v1/services/bench/switch >/dev/null
  "$loadgen" "$@" >/dev/null
  kill -TERM $P; wait $P 2>/dev/null || true
  grep -E "^(summary|totals):" "$out" | head -1 | awk '{print $2}'
}
echo "| binary | instructions per request | instructions per stream event |"
echo "|---|---:|---:|"
for bin in "$@"; do
  declare -A total
  for n in 1000 3000; do
    total[$n]=$(counted "$W/c.toml" "$W/cg.$n" rate 127.0.0.1:18910 --rps 200 --connections 4 --duration $((n / 200))s)
  done
  for t in 40 120; do
    total[s$t]=$(counted "$W/s.toml" "$W/cg.s$t" stream 127.0.0.1:18910 --streams 40 --tokens $t)
  done
  echo "| $bin | $(( (total[3000] - total[1000]) / 2000 )) | $(( (total[s120] - total[s40]) / 3200 )) |"
done
