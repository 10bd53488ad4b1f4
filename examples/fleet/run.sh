#!/usr/bin/env bash
# Fleet mode on one machine: 3 etcd members, 3 routers (each on its own member) and 2 host
# agents standing for two GPU machines ("gpu-a" on 127.0.0.2, "gpu-b" on 127.0.0.3: every
# 127.x address is this machine's loopback). The service's model servers run on the agents;
# a release goes from nothing to v1, then to v2 under a stream of requests through all
# three routers, and the script counts the requests that failed (expected: 0).
# Needs /usr/bin/etcd (apt-get install etcd-server), curl, and a build (cargo build).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(realpath "${CARGO_TARGET_DIR:-target}/debug")"
WORK="$(mktemp -d /tmp/cutover-fleet-example.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The agents' model servers outlive the agents on purpose (an agent restart adopts them).
  for ip in 127.0.0.2 127.0.0.3; do
    for port in 19001 19002; do
      pid=$(curl -fsS "http://$ip:$port/mock/stats" 2>/dev/null | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
      [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

members="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
cluster="m0=http://127.0.0.1:12380,m1=http://127.0.0.1:22380,m2=http://127.0.0.1:32380"
for i in 0 1 2; do
  c=$((i * 10000 + 12379)); p=$((i * 10000 + 12380))
  /usr/bin/etcd --name "m$i" --data-dir "$WORK/etcd$i" \
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
sleep 2  # etcd elects a leader
for i in 1 2 3; do
  "$BIN/cutover" serve --config "$WORK/r$i/cutover.toml" 2>"$WORK/r$i/serve.log" & pids+=($!)
done
for host in gpu-a:127.0.0.2 gpu-b:127.0.0.3; do
  name=${host%%:*}; ip=${host#*:}
  "$BIN/cutover" agent --etcd "etcd://$members" --fleet example --host "$name" --advertise "$ip" \
    --allow-command "$BIN/mock-model" --data-dir "$WORK/agent-$name" 2>"$WORK/agent-$name.log" & pids+=($!)
done
for i in 1 2 3; do
  until curl -fsS "http://127.0.0.1:990$i/healthz" >/dev/null 2>&1; do sleep 0.2; done
done

# One operator token for every router: a release asked of any router runs on the leader.
token=$("$BIN/cutover" token create example --role operator --config "$WORK/r1/cutover.toml")
for i in 2 3; do cp -p "$WORK/r1/tokens.toml" "$WORK/r$i/tokens.toml"; done
sleep 2  # the tokens file is picked up, every router acked, both agents registered

cli() { CUTOVER_ADMIN="http://127.0.0.1:990$1" CUTOVER_TOKEN="$token" "$BIN/cutover" "${@:2}"; }
cli 3 fleet status
cli 2 release chat v1 --wait

# v2 under traffic through the three routers.
: >"$WORK/codes"
( while :; do
    for i in 1 2 3; do
      curl -s -o /dev/null -w '%{http_code}\n' -X POST "http://127.0.0.1:808$i/v1/chat/completions" \
        -H 'content-type: application/json' -d '{"max_tokens":2}' >>"$WORK/codes" || echo 000 >>"$WORK/codes"
    done
  done ) & load=$!; pids+=($load)
cli 1 release chat v2 --wait
sleep 1
kill "$load" 2>/dev/null || true
total=$(wc -l <"$WORK/codes"); failed=$(grep -vc '^200$' "$WORK/codes" || true)
echo "requests during the v2 release: $total, failed: $failed"
cli 3 fleet status
for i in 1 2 3; do
  echo "router $i serves: $(curl -fsS -o /dev/null -D - "http://127.0.0.1:808$i/v1/models" | grep -i x-cutover-version | tr -d '\r')"
done
