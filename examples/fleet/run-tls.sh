#!/usr/bin/env bash
# Fleet mode with etcd secured as docs/fleet.md says: the same fleet as run.sh (3 etcd
# members, 3 routers, 2 host agents "gpu-a" on 127.0.0.2 and "gpu-b" on 127.0.0.3), but etcd
# serves clients over TLS only with --client-cert-auth and its auth on, and every process
# has its own client certificate and a least-privilege etcd user: routers the router role,
# each agent a role that reads desired/ and cannot write it. The script makes the
# certificates with openssl, releases v1 then v2 under traffic (failed requests: expected 0),
# then shows what the security buys: no certificate, no connection; an agent's user cannot
# change what a host runs.
# Needs /usr/bin/etcd and /usr/bin/etcdctl (apt-get install etcd-server etcd-client),
# openssl, curl, and a build (cargo build).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(realpath "${CARGO_TARGET_DIR:-target}/debug")"
for tool in /usr/bin/etcd /usr/bin/etcdctl openssl curl "$BIN/cutover" "$BIN/mock-model"; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
WORK="$(mktemp -d /tmp/cutover-fleet-tls-example.XXXXXX)"
PKI="$WORK/pki"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The agents' model servers outlive the agents on purpose (an agent restart adopts them).
  for ip in 127.0.0.2 127.0.0.3; do
    for port in 19011 19012; do
      pid=$(curl -fsS -m 2 "http://$ip:$port/mock/stats" 2>/dev/null | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
      [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Polls "$@" every 0.2 s for at most $1 seconds; fails the script naming what it waited for.
wait_until() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >"$WORK/last-wait" 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "gave up after ${limit}s waiting for $what; last try said:" >&2
      cat "$WORK/last-wait" >&2
      exit 1
    fi
    sleep 0.2
  done
}

# --- Certificates: one CA; etcd's server certificate; a client certificate per process.
# Client certificates have no Common Name: etcd's JSON gateway (what cutover speaks)
# refuses one that has a CN once auth is on; the etcd user comes from the password.
mkdir -p "$PKI" && chmod 700 "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$PKI/ca.key" -out "$PKI/ca.pem" -subj "/CN=cutover example etcd CA" 2>/dev/null
issue() { # NAME SUBJECT EXTENSIONS
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/$1.key" \
    -out "$PKI/$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "$3" >"$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -out "$PKI/$1.pem" -extfile "$PKI/$1.ext" 2>/dev/null
}
# etcd's gateway presents the server certificate to etcd's own gRPC server: clientAuth too.
issue server "/CN=etcd" $'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth'
for name in admin router-1 router-2 router-3 agent-gpu-a agent-gpu-b; do
  issue "$name" "/O=cutover/OU=$name" "extendedKeyUsage=clientAuth"
done
for user in root cutover-router cutover-agent-gpu-a cutover-agent-gpu-b; do
  (umask 077; openssl rand -hex 16 >"$PKI/$user.password")
done

# --- etcd: clients on TLS only with --client-cert-auth; peers plain, on loopback.
members="https://127.0.0.1:12479,https://127.0.0.1:22479,https://127.0.0.1:32479"
cluster="m0=http://127.0.0.1:12480,m1=http://127.0.0.1:22480,m2=http://127.0.0.1:32480"
for i in 0 1 2; do
  c=$((i * 10000 + 12479)); p=$((i * 10000 + 12480))
  /usr/bin/etcd --name "m$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "https://127.0.0.1:$c" --advertise-client-urls "https://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token cutover-tls-example \
    --client-cert-auth --trusted-ca-file "$PKI/ca.pem" --cert-file "$PKI/server.pem" --key-file "$PKI/server.key" \
    --log-level warn 2>"$WORK/etcd$i.log" &
  pids+=($!)
done
E=(env ETCDCTL_API=3 /usr/bin/etcdctl --endpoints="$members" --cacert="$PKI/ca.pem"
   --cert="$PKI/admin.pem" --key="$PKI/admin.key")
wait_until 30 "etcd to serve TLS clients" "${E[@]}" endpoint health

# --- Users and least-privilege roles (docs/fleet.md, "Securing etcd").
P=/cutover/example
"${E[@]}" user add root --new-user-password="$(cat "$PKI/root.password")" >/dev/null
"${E[@]}" user grant-role root root >/dev/null
"${E[@]}" role add cutover-router >/dev/null
"${E[@]}" role grant-permission cutover-router --prefix=true read "$P/" >/dev/null
for k in services history routers releases desired; do
  "${E[@]}" role grant-permission cutover-router --prefix=true readwrite "$P/$k/" >/dev/null
done
"${E[@]}" role grant-permission cutover-router readwrite "$P/leader" >/dev/null
"${E[@]}" user add cutover-router --new-user-password="$(cat "$PKI/cutover-router.password")" >/dev/null
"${E[@]}" user grant-role cutover-router cutover-router >/dev/null
for host in gpu-a gpu-b; do
  role="cutover-agent-$host"
  "${E[@]}" role add "$role" >/dev/null
  "${E[@]}" role grant-permission "$role" --prefix=true read "$P/desired/" >/dev/null
  "${E[@]}" role grant-permission "$role" write "$P/hosts/$host" >/dev/null
  "${E[@]}" role grant-permission "$role" write "$P/agents/$host" >/dev/null
  "${E[@]}" role grant-permission "$role" --prefix=true write "$P/reports/" >/dev/null
  "${E[@]}" user add "$role" --new-user-password="$(cat "$PKI/$role.password")" >/dev/null
  "${E[@]}" user grant-role "$role" "$role" >/dev/null
done
"${E[@]}" auth enable
E+=(--user="root:$(cat "$PKI/root.password")")

# --- Routers, each with its own certificate, as the router user.
for i in 1 2 3; do
  mkdir -p "$WORK/r$i"
  cat >"$WORK/r$i/cutover.toml" <<TOML
[admin]
listen = "127.0.0.1:991$i"

[store]
path = "cutover.db"
url = "$members"
fleet = "example"
router_id = "router-$i"
tls = { ca = "$PKI/ca.pem", cert = "$PKI/router-$i.pem", key = "$PKI/router-$i.key" }
username = "cutover-router"
password_file = "$PKI/cutover-router.password"

[services.chat]
listen = "127.0.0.1:809$i"
health = { path = "/health", interval = "200ms", timeout = "1s" }

[services.chat.run]
command = ["$BIN/mock-model", "--host", "{host}", "--port", "{port}", "--model-version", "{version}"]
ports = { blue = [19011], green = [19012] }
hosts = ["gpu-a", "gpu-b"]

[services.chat.release]
scale_down_delay = "2s"
[services.chat.release.verify]
bake = "3s"
TOML
  "$BIN/cutover" check "$WORK/r$i/cutover.toml" >/dev/null
  "$BIN/cutover" serve --config "$WORK/r$i/cutover.toml" 2>"$WORK/r$i/serve.log" & pids+=($!)
done
for host in gpu-a:127.0.0.2 gpu-b:127.0.0.3; do
  name=${host%%:*}; ip=${host#*:}
  "$BIN/cutover" agent --etcd "$members" --fleet example --host "$name" --advertise "$ip" \
    --etcd-ca "$PKI/ca.pem" --etcd-cert "$PKI/agent-$name.pem" --etcd-key "$PKI/agent-$name.key" \
    --etcd-user "cutover-agent-$name" --etcd-password-file "$PKI/cutover-agent-$name.password" \
    --allow-command "$BIN/mock-model" --data-dir "$WORK/agent-$name" 2>"$WORK/agent-$name.log" & pids+=($!)
done
for i in 1 2 3; do
  wait_until 20 "router $i to serve" curl -fsS -m 2 "http://127.0.0.1:991$i/healthz"
done

token=$("$BIN/cutover" token create example --role operator --config "$WORK/r1/cutover.toml")
for i in 2 3; do cp -p "$WORK/r1/tokens.toml" "$WORK/r$i/tokens.toml"; done
cli() { CUTOVER_ADMIN="http://127.0.0.1:991$1" CUTOVER_TOKEN="$token" "$BIN/cutover" "${@:2}"; }
synced() { cli 3 fleet status --json | grep -oE '"state": ?"SYNCED"' | wc -l | grep -qx 3; }
wait_until 20 "3 routers synced over TLS" synced
agents_in() { cli 3 fleet status --json | grep -oE '"connected": ?true' | wc -l | grep -qx 3; }
wait_until 20 "both agents connected" agents_in
cli 3 fleet status
timeout 120 env CUTOVER_ADMIN="http://127.0.0.1:9912" CUTOVER_TOKEN="$token" "$BIN/cutover" release chat v1 --wait

: >"$WORK/codes"
( while :; do
    for i in 1 2 3; do
      curl -s -m 5 -o /dev/null -w '%{http_code}\n' -X POST "http://127.0.0.1:809$i/v1/chat/completions" \
        -H 'content-type: application/json' -d '{"max_tokens":2}' >>"$WORK/codes" || echo 000 >>"$WORK/codes"
    done
  done ) & load=$!; pids+=($load)
timeout 120 env CUTOVER_ADMIN="http://127.0.0.1:9911" CUTOVER_TOKEN="$token" "$BIN/cutover" release chat v2 --wait
sleep 1
kill "$load" 2>/dev/null || true
total=$(wc -l <"$WORK/codes"); failed=$(grep -vc '^200$' "$WORK/codes" || true)
echo "requests during the v2 release: $total, failed: $failed"
cli 3 fleet status

echo "--- what the security buys"
echo "a client without a certificate (etcd ends the handshake):"
curl -sS -m 5 --cacert "$PKI/ca.pem" "https://127.0.0.1:12479/v3/kv/range" -d '{"key":"Lw=="}' 2>&1 | head -1 || true
echo "an agent's user writing desired/ (what the hosts run):"
"${E[@]:0:7}" --user="cutover-agent-gpu-a:$(cat "$PKI/cutover-agent-gpu-a.password")" \
  put "$P/desired/chat/green" '{"wanted":"run","template":{"command":["/bin/sh"]}}' 2>&1 | tail -1 || true
