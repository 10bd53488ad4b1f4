#!/usr/bin/env bash
# Starts two mock model servers (v1, v2) and a router on examples/static.toml in a temporary
# folder, makes blue live, then switches to green while a stream is running.
#
# Uses the installed `cutover` and `mock-model` when both are on PATH (`cargo install --locked
# --path crates/cutover` puts them there); otherwise builds them in this source tree
# (`cargo build --release`). CUTOVER_BIN_DIR=DIR uses the binaries in DIR instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${CUTOVER_BIN_DIR:-}" ]; then
  bin="$(realpath "$CUTOVER_BIN_DIR")"
elif command -v cutover >/dev/null && command -v mock-model >/dev/null; then
  bin="$(dirname "$(command -v cutover)")"
  echo "== using the installed cutover in $bin"
else
  echo "== no cutover on PATH: building it (cargo build --release; a few minutes the first time)"
  cargo build --release --quiet --bin cutover --bin mock-model
  bin="$(realpath "${CARGO_TARGET_DIR:-target}/release")"
fi
work=$(mktemp -d)
cp examples/static.toml "$work/cutover.toml"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$bin/mock-model" --port 9001 --model-version v1 --token-interval 50ms >/dev/null & pids+=($!)
"$bin/mock-model" --port 9002 --model-version v2 >/dev/null & pids+=($!)
"$bin/cutover" serve --config "$work/cutover.toml" 2>"$work/serve.log" & pids+=($!)
up=""
for _ in $(seq 100); do curl -fs http://127.0.0.1:9901/healthz >/dev/null && up=1 && break; sleep 0.1; done
if [ -z "$up" ]; then
  echo "error: the router did not answer on 127.0.0.1:9901 within 10 s; its log:" >&2
  cat "$work/serve.log" >&2
  exit 1
fi
export CUTOVER_ADMIN=http://127.0.0.1:9901 CUTOVER_TOKEN=$(cat "$work/admin.token")

echo "== before any switch, nothing is live:"
curl -s http://127.0.0.1:8080/v1/models; echo
echo "== make blue live:"
"$bin/cutover" switch chat blue
echo "== a 20-token stream starts on blue, and we switch to green while it runs:"
( curl -sN --max-time 30 http://127.0.0.1:8080/v1/chat/completions -d '{"stream":true,"max_tokens":20}' \
    | grep -o '"model":"v[0-9]"' | sort | uniq -c | sed 's/^/   stream chunks: /' ) &
stream=$!
sleep 0.3
"$bin/cutover" switch chat green
wait "$stream"
echo "== new requests go to green:"
curl -s -D - -o /dev/null http://127.0.0.1:8080/v1/models | grep -i x-cutover
"$bin/cutover" status chat
"$bin/cutover" history chat
