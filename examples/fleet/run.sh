#!/usr/bin/env bash
# Fleet mode on one machine: 3 etcd members, 3 routers (each on its own member) and 2 host
# agents standing for two GPU machines ("gpu-a" on 127.0.0.2, "gpu-b" on 127.0.0.3: every
# 127.x address is this machine's loopback). The service's model servers run on the agents;
# a release goes from nothing to v1, then to v2 under a stream of requests through all
# three routers, and the script counts the requests that failed (expected: 0).
#
# Needs etcd (apt-get install etcd-server), curl, and cutover: the installed `cutover` and
# `mock-model` when both are on PATH (`cargo install --locked --path crates/cutover`), else
# a release build of this tree (made here if missing). CUTOVER_BIN_DIR=DIR uses DIR's.
# Every wait is bounded; on a failure the logs are shown and everything started is stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { echo "== $*"; }
if [ -n "${CUTOVER_BIN_DIR:-}" ]; then
  BIN="$(realpath "$CUTOVER_BIN_DIR")"
elif command -v cutover >/dev/null && command -v mock-model >/dev/null; then
  BIN="$(dirname "$(command -v cutover)")"
else
  BIN="$(realpath -m "${CARGO_TARGET_DIR:-target}/release")"
  if [ ! -x "$BIN/cutover" ] || [ ! -x "$BIN/mock-model" ]; then
    say "no cutover on PATH: building it (cargo build --release; a few minutes the first time)"
    cargo build --release --quiet --bin cutover --bin mock-model
  fi
fi
say "using $BIN/cutover"
ETCD="$(command -v etcd || echo /usr/bin/etcd)"
[ -x "$ETCD" ] || { echo "error: no etcd found (apt-get install etcd-server)" >&2; exit 2; }
command -v curl >/dev/null || { echo "error: curl is needed" >&2; exit 2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cutover-fleet-example.XXXXXX")"
pids=()
ok=""
cleanup() {
  local rc=$?
  # Every step of the clean-up runs, whatever fails (no model server answering, say).
  set +e +o pipefail
  if [ -z "$ok" ]; then
    echo "error: the example stopped early; the last lines of each log:" >&2
    for f in "$WORK"/*.log "$WORK"/r*/serve.log; do
      [ -s "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }
    done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The agents' model servers outlive the agents on purpose (an agent restart adopts them).
  for ip in 127.0.0.2 127.0.0.3; do
    for port in 19001 19002; do
      pid=$(curl -fsS --max-time 2 "http://$ip:$port/mock/stats" 2>/dev/null | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
      [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
  done
  rm -rf "$WORK"
  # The script's status, not that of the last clean-up command.
  exit "$rc"
}
trap cleanup EXIT
# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds; after
# SECONDS, or as soon as a process this script started has exited, says what did not happen
# and fails (the trap shows the logs).
wait_until() {
  local limit=$1 what=$2; shift 2
  local until=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    for p in "${pids[@]}"; do
      if ! kill -0 "$p" 2>/dev/null; then
        echo "error: a process this example started (pid $p) exited while waiting for $what" >&2
        return 1
      fi
    done
    if [ "$SECONDS" -ge "$until" ]; then
      echo "error: $what did not happen within $limit s" >&2
      return 1
    fi
    sleep 0.2
  done
}

members="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
cluster="m0=http://127.0.0.1:12380,m1=http://127.0.0.1:22380,m2=http://127.0.0.1:32380"
for i in 0 1 2; do
  c=$((i * 10000 + 12379)); p=$((i * 10000 + 12380))
  "$ETCD" --name "m$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token cutover-example \
    --log-level warn 2>"$WORK/etcd$i.log" &
  pids+=($!)
done

for i in 1 2 3; do
  member=$(( (i - 1) * 10000 + 12379 ))
  mkdir -p "$WORK/r$i"
  cat >"$WORK/r$i/cutover.toml" <<TOML
[admin]
listen = "127.0.0.1:990$i"

[store]
path = "cutover.db"
url = "etcd://127.0.0.1:$member"
fleet = "example"
router_id = "router-$i"

[services.chat]
listen = "127.0.0.1:808$i"
health = { path = "/health", interval = "200ms", timeout = "1s" }

[services.chat.run]
# {host} is the address the agent advertises: each model server listens there.
command = ["$BIN/mock-model", "--host", "{host}", "--port", "{port}", "--model-version", "{version}"]
ports = { blue = [19001], green = [19002] }
hosts = ["gpu-a", "gpu-b"]

[services.chat.release]
scale_down_delay = "2s"
[services.chat.release.verify]
bake = "3s"
TOML
done
say "starting 3 etcd members"
for i in 0 1 2; do
  wait_until 30 "etcd member m$i answering healthy" \
    sh -c "curl -fsS --max-time 2 http://127.0.0.1:$((i * 10000 + 12379))/health | grep -q '\"health\":\"true\"'"
done
say "starting 3 routers and 2 host agents"
for i in 1 2 3; do
  "$BIN/cutover" serve --config "$WORK/r$i/cutover.toml" 2>"$WORK/r$i/serve.log" & pids+=($!)
done
for host in gpu-a:127.0.0.2 gpu-b:127.0.0.3; do
  name=${host%%:*}; ip=${host#*:}
  "$BIN/cutover" agent --etcd "etcd://$members" --fleet example --host "$name" --advertise "$ip" \
    --allow-command "$BIN/mock-model" --data-dir "$WORK/agent-$name" 2>"$WORK/agent-$name.log" & pids+=($!)
done
for i in 1 2 3; do
  wait_until 30 "router $i answering on 127.0.0.1:990$i/healthz" curl -fsS --max-time 2 "http://127.0.0.1:990$i/healthz"
done

# One operator token for every router: a release asked of any router runs on the leader.
token=$("$BIN/cutover" token create example --role operator --config "$WORK/r1/cutover.toml")
for i in 2 3; do cp -p "$WORK/r1/tokens.toml" "$WORK/r$i/tokens.toml"; done

cli() { CUTOVER_ADMIN="http://127.0.0.1:990$1" CUTOVER_TOKEN="$token" "$BIN/cutover" "${@:2}"; }
fleet_ready() {
  local v
  v=$(cli 3 fleet status --json) || return 1
  [ "$(grep -o '"connected": true' <<<"$v" | wc -l)" -ge 3 ] && [ "$(grep -c '"state": "SYNCED"' <<<"$v")" -eq 3 ]
}
say "waiting for every router to ack and both agents to register"
wait_until 60 "3 routers SYNCED and 2 agents connected (cutover fleet status)" fleet_ready
cli 3 fleet status
say "release v1 (through router 2)"
cli 2 release chat v1 --wait --timeout 3m

# v2 under traffic through the three routers.
: >"$WORK/codes"
( while :; do
    for i in 1 2 3; do
      curl -s --max-time 10 -o /dev/null -w '%{http_code}\n' -X POST "http://127.0.0.1:808$i/v1/chat/completions" \
        -H 'content-type: application/json' -d '{"max_tokens":2}' >>"$WORK/codes" || echo 000 >>"$WORK/codes"
    done
  done ) & load=$!; pids+=($load)
say "release v2 under traffic (through router 1)"
cli 1 release chat v2 --wait --timeout 3m
kill "$load" 2>/dev/null || true
total=$(wc -l <"$WORK/codes"); failed=$(grep -vc '^200$' "$WORK/codes" || true)
echo "requests during the v2 release: $total, failed: $failed"
cli 3 fleet status
for i in 1 2 3; do
  echo "router $i serves: $(curl -fsS --max-time 5 -o /dev/null -D - "http://127.0.0.1:808$i/v1/models" | grep -i x-cutover-version | tr -d '\r')"
done
ok=1
