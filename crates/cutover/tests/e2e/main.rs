//! End-to-end tests: the real `cutover` binary and real `mock-model` processes on loopback,
//! driven with real HTTP clients (hyper, curl). One test binary, so the suite links once.
//!
//! - `routing`: what the data plane does with one request (headers, errors, retries, limits).
//! - `switching`: switches under load, keep-alive, streams that outlive a switch.
//! - `admin`: the admin API and the CLI (auth, compare-and-swap, health refusal, exit codes).
//! - `cli`: following releases, releases/show/follow, logs, messages, closed stdout, help.
//! - `conformance`: the HTTP/1.1 conformance table (`tests/conformance/cases.toml`) on both
//!   engines, against a raw recording upstream.
//! - `config`: `cutover check` errors and warnings name file, line and key.
//! - `dashboard`: the dashboard in headless Chromium (playwright-core): state, Switch, and Roll
//!   back offering the redeploy of the version last live.
//! - `demo`: `cutover demo` tells its whole story and ends well.
//! - `examples`: `examples/fleet/run.sh` fails fast, says why and cleans up.
//! - `dns`: endpoint names, one endpoint per address, following the answers under traffic.
//! - `fleet`: fleet mode on a real 3-member etcd: acked switches across routers, a CAS race,
//!   a router started while etcd is down, cut from it, paused across a compaction; a NACK.
//! - `fleet_faults`: fleet mode under etcd's failures: the leader SIGKILLed during switches,
//!   etcd restored from an older snapshot, a router cut by a paused TCP proxy.
//! - `fleet_tls`: fleet mode on etcd with TLS only, `--client-cert-auth` and auth on: routers
//!   and an agent with their own certificates and least-privilege users, a renewed client
//!   certificate, a router with none refused and saying why, mixed `http://`/`https://` refused.
//! - `fleet_leader`: one elected controller: a release asked of a follower runs on the
//!   leader; a paused leader fenced out; a killed one's release interrupted, then aborted;
//!   the old color's scale-down held while a router is STALE.
//! - `external_gates`: PromQL gates on a real Prometheus and scrape gates on the new color's
//!   own `/metrics`: passing, failing (rolled back), inconclusive without data.
//! - `gates`: verification gates that fit token streams (time to first token, plain latency).
//! - `hardening`: races, kill -9 storms, smuggling, malformed input, slow clients.
//! - `http1`: the HTTP/1.1 fast path on the wire (pipelining, HTTP/1.0, chunked, 100-continue).
//! - `lifecycle_hooks`: a provision hook brings up a static color; a post_scale_down hook
//!   runs once the old color has stopped.
//! - `llama`: a real llama.cpp server (llama-cpp-python) on generated models, the openai client.
//! - `observability`: metrics match the traffic and pass promtool.
//! - `operating`: `cutover stop`, `token delete`, the x-cutover-* headers turned off on both
//!   engines, a busy listener port's holder, the dashboard URL in the log, releases by outcome.
//! - `probes`: health probes by kind (gRPC on grpcio, generation), passive evidence, the
//!   probe failure metric, the example configs.
//! - `reload`: configuration reload (`cutover reload`, SIGHUP) under load; refusals change nothing.
//! - `roles`: named tokens with roles: `cutover token create` on a running router, 403 for a
//!   role too low, the token's name as the actor, the tokens file's checks, `admin.token`.
//! - `release`: the release pipeline, phase by phase, with real managed processes.
//! - `webhooks`: signed release events in order at a Python receiver, a dead receiver that
//!   does not hold up a rollback, an approval webhook that approves.
//! - `websocket`: WebSocket sessions tunnelled to their color (Python `websockets` both ends).
//! - `shared_listener`: a chat and an embedding service behind one address, routed by model,
//!   Host and path prefix, on both engines, with the openai client; a release of one while
//!   the other serves.
//! - `restart`: kill -9 and restart keep every acknowledged switch.
//! - `upgrade`: `serve --upgrade` hands the listeners, store and managed processes to a new
//!   process under load (by config key, port 0 included); a failed upgrade changes nothing.
//! - `tls`: TLS service and admin listeners (curl, openai with a CA, the CLI's `--cacert`),
//!   streams through a switch, a certificate rotation and `serve --upgrade`, WebSocket over
//!   TLS, refused clients; `https://` upstreams (SNI, CA file, a wrong CA, h2 by ALPN).
//! - `traffic`: progressive releases (canary, linear) within binomial bounds, a breach at a
//!   step, streams across steps, sticky keys (a chunked body's `user`), the header route.
//! - `standby`: the old color asleep after a release; a rollback wakes it first (0 failed
//!   requests); a failed wake leaves live traffic where it was.
//! - `supervise`: managed processes: port checks, exits in any phase, restart policy,
//!   drain before stop, scale-down after a rollback, no health noise for planned stops.

mod admin;
mod cli;
mod config;
mod conformance;
mod dashboard;
mod demo;
mod dns;
mod examples;
mod external_gates;
mod fleet;
mod fleet_agents;
mod fleet_faults;
mod fleet_leader;
mod fleet_tls;
mod gates;
mod hardening;
mod http1;
mod lifecycle_hooks;
mod llama;
mod observability;
mod operating;
mod probes;
mod release;
mod reload;
mod restart;
mod roles;
mod routing;
mod shadow;
mod shared_listener;
mod standby;
mod supervise;
mod support;
mod switching;
mod tls;
mod traffic;
mod upgrade;
mod webhooks;
mod websocket;
