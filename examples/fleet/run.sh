#!/usr/bin/env bash
# Fleet mode on one machine: 3 etcd members, 2 mock model servers (blue v1, green v2) and 3
# routers on loopback, each router on a different etcd member. Switches through router 1,
# then shows every router's ack from router 3 and the color each router serves.
# Needs /usr/bin/etcd (apt-get install etcd-server) and a build (cargo build).
# Host agents and releases across machines come in a later part (docs/fleet.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CARGO_TARGET_DIR:-target}/debug"
WORK="$(mktemp -d /tmp/cutover-fleet-example.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

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
"$BIN/mock-model" --port 19001 --model-version v1 >/dev/null 2>&1 & pids+=($!)
"$BIN/mock-model" --port 19002 --model-version v2 >/dev/null 2>&1 & pids+=($!)

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
health = { path = "/health", interval = "500ms", timeout = "1s" }
[services.chat.blue]
endpoints = ["127.0.0.1:19001"]
version = "v1"
[services.chat.green]
endpoints = ["127.0.0.1:19002"]
version = "v2"
TOML
done
sleep 2  # etcd elects a leader
for i in 1 2 3; do
  "$BIN/cutover" serve --config "$WORK/r$i/cutover.toml" 2>"$WORK/r$i/serve.log" & pids+=($!)
done
for i in 1 2 3; do
  until curl -fsS "http://127.0.0.1:990$i/healthz" >/dev/null 2>&1; do sleep 0.2; done
done
sleep 1  # every router's first ack

r1=(env CUTOVER_ADMIN=http://127.0.0.1:9901 CUTOVER_TOKEN="$(cat "$WORK/r1/admin.token")")
"${r1[@]}" "$BIN/cutover" switch chat blue
"${r1[@]}" "$BIN/cutover" switch chat green
echo "--- GET /v1/fleet on router 3"
curl -fsS -H "Authorization: Bearer $(cat "$WORK/r3/admin.token")" http://127.0.0.1:9903/v1/fleet
echo
for i in 1 2 3; do
  echo "router $i serves: $(curl -fsS -o /dev/null -D - "http://127.0.0.1:808$i/v1/models" | grep -i x-cutover-color | tr -d '\r')"
done
