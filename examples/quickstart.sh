#!/usr/bin/env bash
# Builds cutover, starts two mock model servers (v1, v2) and a router on examples/static.toml
# in a temporary folder, makes blue live, then switches to green while a stream is running.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin cutover --bin mock-model
bin="$PWD/target/release"
work=$(mktemp -d)
cp examples/static.toml "$work/cutover.toml"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$bin/mock-model" --port 9001 --model-version v1 --token-interval 50ms >/dev/null & pids+=($!)
"$bin/mock-model" --port 9002 --model-version v2 >/dev/null & pids+=($!)
"$bin/cutover" serve --config "$work/cutover.toml" 2>"$work/serve.log" & pids+=($!)
for _ in $(seq 50); do curl -fs http://127.0.0.1:9901/healthz >/dev/null && break; sleep 0.1; done
export CUTOVER_ADMIN=http://127.0.0.1:9901 CUTOVER_TOKEN=$(cat "$work/admin.token")

echo "== before any switch, nothing is live:"
curl -s http://127.0.0.1:8080/v1/models; echo
echo "== make blue live:"
"$bin/cutover" switch chat blue
echo "== a 20-token stream starts on blue, and we switch to green while it runs:"
( curl -sN http://127.0.0.1:8080/v1/chat/completions -d '{"stream":true,"max_tokens":20}' \
    | grep -o '"model":"v[0-9]"' | sort | uniq -c | sed 's/^/   stream chunks: /' ) &
stream=$!
sleep 0.3
"$bin/cutover" switch chat green
wait "$stream"
echo "== new requests go to green:"
curl -s -D - -o /dev/null http://127.0.0.1:8080/v1/models | grep -i x-cutover
"$bin/cutover" status chat
"$bin/cutover" history chat
