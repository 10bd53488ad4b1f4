//! An etcd v3 client over etcd's JSON gateway (`POST /v3/...`), spoken with hyper: ranges,
//! puts, transactions, deletes, leases, compaction, member status and watch streams, with
//! failover across the cluster's members.
//!
//! Why the gateway and not gRPC (`etcd-client`): tonic and prost take minutes to compile on
//! two cores and need `protoc` in CI, for the dozen calls fleet mode makes. The gateway speaks
//! proto3's JSON mapping: bytes are base64, 64-bit integers are strings and zero values are
//! left out, which [`int`] and [`Kv`] absorb.
//!
//! Failover: every call starts at the member that answered last; one that cannot be reached
//! or does not answer within the call timeout is skipped for the next one. A write that timed
//! out may still have been applied by the member that got it: callers that must know compare
//! in a transaction and read back (see `Txn::failure`). Watch streams never reconnect by
//! themselves: the caller re-reads and watches again.
//!
//! Access (see [`crate::access`]): `https://` members with a CA and a client certificate,
//! and etcd's own user, whose token every call carries; a token etcd no longer takes (it
//! expired, or the member that answers never saw it) is renewed once and the call retried.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::access::{chain, explain, Access, Connector};

mod watch;
pub use watch::Watch;

/// How long one call to one member may take before the next member is tried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest response body read (a range of every service document stays far below).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// The largest single watch message buffered.
const MAX_WATCH_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// No member could be reached or answered in time; `tried` says what each did.
    #[error("etcd unreachable: {}", tried.join("; "))]
    Unreachable { tried: Vec<String> },
    /// A member answered with an error (gRPC status through the gateway).
    #[error("etcd {member}: {message} (code {code})")]
    Server { member: String, code: i64, message: String },
    /// A member's answer was not what the gateway sends.
    #[error("etcd {member}: unexpected answer: {detail}")]
    Protocol { member: String, detail: String },
    /// etcd's user could not be authenticated (its password file, or etcd refused it).
    #[error("etcd authentication: {detail}")]
    Auth { detail: String },
}

impl EtcdError {
    fn protocol(member: &str, detail: impl Into<String>) -> EtcdError {
        EtcdError::Protocol {
            member: member.to_string(),
            detail: detail.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, EtcdError>;

/// One key-value pair as etcd stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Bytes,
    /// The revision that created the key (0: it does not exist, in compares).
    pub create_revision: i64,
    /// The revision of its last change: what a compare-and-swap compares.
    pub mod_revision: i64,
    /// Changes since it was created.
    pub version: i64,
    /// The lease it dies with, 0 for none.
    pub lease: i64,
}

/// The answer to a range: the store's revision when it was read, and the pairs.
#[derive(Debug, Clone)]
pub struct Range {
    pub revision: i64,
    pub kvs: Vec<Kv>,
}

/// A compare in a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's `mod_revision` is this (0 never matches an existing key).
    ModRevision(String, i64),
    /// The key's `create_revision` is this; 0 means "the key does not exist".
    CreateRevision(String, i64),
    /// The key's value is exactly this.
    Value(String, Bytes),
}

/// One operation of a transaction branch.
#[derive(Debug, Clone)]
pub enum Op {
    Put { key: String, value: Bytes, lease: i64 },
    Get { key: String },
    Delete { key: String },
}

/// A transaction: if every compare holds, `success` runs, else `failure`; atomically.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// What a transaction did.
#[derive(Debug, Clone)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store's revision after it (the write's revision when it succeeded and wrote).
    pub revision: i64,
    /// The pairs each `Op::Get` of the branch that ran read, in order.
    pub gets: Vec<Vec<Kv>>,
}

/// A granted lease.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

/// One member's view of the cluster (`/v3/maintenance/status`).
#[derive(Debug, Clone)]
pub struct Status {
    pub member_id: u64,
    pub leader: u64,
    pub raft_index: u64,
    pub revision: i64,
}

impl Status {
    pub fn is_leader(&self) -> bool {
        self.member_id != 0 && self.member_id == self.leader
    }
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    /// The pair as it was deleted (only `key` and `mod_revision` are meaningful).
    Delete(Kv),
}

impl Event {
    pub fn kv(&self) -> &Kv {
        match self {
            Event::Put(kv) | Event::Delete(kv) => kv,
        }
    }
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMsg {
    /// The watch exists from now on; `revision` is the store's.
    Created { revision: i64 },
    /// Changes, all of the same revision or of increasing ones; `revision` is the header's.
    Events { revision: i64, events: Vec<Event> },
    /// Nothing changed up to `revision` (a progress notification).
    Progress { revision: i64 },
    /// The start revision was compacted away: the caller must re-read and watch again from
    /// the read's revision + 1.
    Compacted { compact_revision: i64 },
    /// Cancelled by the server for another reason.
    Canceled { reason: String },
}

/// The members of a cluster and the client that reaches them.
pub struct Etcd {
    /// `host:port` of each member's client URL.
    members: Vec<String>,
    /// The member that answered last: calls start there.
    preferred: AtomicUsize,
    http: Client<Connector, Full<Bytes>>,
    timeout: Duration,
    access: Access,
    /// etcd's token for `access.user`, once authenticated; empty when etcd's auth is off.
    token: std::sync::Mutex<Option<Arc<str>>>,
    /// Held while authenticating, so calls that find the token refused together renew it once.
    renewing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("members", &self.members)
            .field("access", &self.access)
            .finish()
    }
}

/// Whether etcd refused the call for its token (expired, unknown to this member, missing
/// while auth is on, or issued before the users or roles changed): worth one renewal and a
/// retry. None of these refusals is proposed to raft, or applied: the retry cannot write twice.
fn token_refused(e: &EtcdError) -> bool {
    match e {
        EtcdError::Server { code: 16, .. } => true,
        EtcdError::Server { message, .. } => {
            message.contains("user name is empty") || message.contains("revision of auth store is old")
        }
        _ => false,
    }
}

/// A gateway answer that is not JSON: etcd's plain-text refusals, made readable.
fn not_json(member: &str, status: StatusCode, body: &[u8], e: &serde_json::Error) -> EtcdError {
    if body.starts_with(b"CommonName of client") {
        return EtcdError::Server {
            member: member.to_string(),
            code: 3,
            message: "etcd's JSON gateway refuses a client certificate that has a Common Name while etcd's auth is on (it never takes the user from it: etcd-io/etcd#10366): issue the client certificate with an empty CN and name the etcd user with a username and password".into(),
        };
    }
    EtcdError::protocol(
        member,
        format!(
            "{status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    )
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The key just past every key that starts with `prefix`: a prefix range's `range_end`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

/// A proto3-JSON integer: a string, a number, or absent (zero).
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn uint(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn unb64(member: &str, v: &Value) -> Result<Vec<u8>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => B64
            .decode(s)
            .map_err(|e| EtcdError::protocol(member, format!("bad base64: {e}"))),
        other => Err(EtcdError::protocol(member, format!("expected base64, got {other}"))),
    }
}

fn kv_of(member: &str, v: &Value) -> Result<Kv> {
    let key = unb64(member, &v["key"])?;
    Ok(Kv {
        key: String::from_utf8(key).map_err(|_| EtcdError::protocol(member, "a key that is not UTF-8"))?,
        value: Bytes::from(unb64(member, &v["value"])?),
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
        version: int(&v["version"]),
        lease: int(&v["lease"]),
    })
}

fn kvs_of(member: &str, v: &Value) -> Result<Vec<Kv>> {
    match &v["kvs"] {
        Value::Array(a) => a.iter().map(|kv| kv_of(member, kv)).collect(),
        _ => Ok(Vec::new()),
    }
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => {
            let mut put = json!({"key": b64(key.as_bytes()), "value": b64(value)});
            if *lease != 0 {
                put["lease"] = json!(lease.to_string());
            }
            json!({ "request_put": put })
        }
        Op::Get { key } => json!({"request_range": {"key": b64(key.as_bytes())}}),
        Op::Delete { key } => json!({"request_delete_range": {"key": b64(key.as_bytes())}}),
    }
}

fn compare_json(c: &Compare) -> Value {
    match c {
        Compare::ModRevision(k, r) => {
            json!({"target": "MOD", "result": "EQUAL", "key": b64(k.as_bytes()), "mod_revision": r.to_string()})
        }
        Compare::CreateRevision(k, r) => {
            json!({"target": "CREATE", "result": "EQUAL", "key": b64(k.as_bytes()), "create_revision": r.to_string()})
        }
        Compare::Value(k, v) => {
            json!({"target": "VALUE", "result": "EQUAL", "key": b64(k.as_bytes()), "value": b64(v)})
        }
    }
}

/// The error a gateway answer carries, if any (`{"error": ..., "code": N, "message": ...}`).
fn gateway_error(member: &str, status: StatusCode, v: &Value) -> Option<EtcdError> {
    let code = v.get("code").map(int).unwrap_or(0);
    let message = v
        .get("message")
        .or_else(|| v.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !status.is_success() || code != 0 {
        return Some(EtcdError::Server {
            member: member.to_string(),
            code,
            message: if message.is_empty() {
                format!("HTTP {status}")
            } else {
                message.to_string()
            },
        });
    }
    None
}

/// Which of `n` members a client named `seed` starts at (a stable hash: the same router
/// starts at the same member after a restart).
pub(crate) fn spread_index(seed: &str, n: usize) -> usize {
    let h = u64::from_str_radix(&crate::doc::hash_hex(seed), 16).unwrap_or(0);
    (h % n as u64) as usize
}

/// gRPC codes after which another member may well succeed: unavailable (no leader, leader
/// changed, stopping) and deadline exceeded (a member cut from the quorum).
fn worth_another_member(e: &EtcdError) -> bool {
    matches!(e, EtcdError::Server { code: 14 | 4, .. })
}

impl Etcd {
    /// A client of the cluster whose members are `members` (`host:port`).
    pub fn new(members: Vec<String>) -> Etcd {
        Etcd::with_timeout(members, CALL_TIMEOUT)
    }

    pub fn with_timeout(members: Vec<String>, timeout: Duration) -> Etcd {
        Etcd::with_access(members, Access::default(), timeout)
    }

    /// A client of `members` reached as `access` says (TLS, client certificate, user).
    pub fn connect(members: Vec<String>, access: Access) -> Etcd {
        Etcd::with_access(members, access, CALL_TIMEOUT)
    }

    pub fn with_access(members: Vec<String>, access: Access, timeout: Duration) -> Etcd {
        Etcd {
            members,
            preferred: AtomicUsize::new(0),
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(Connector::new(&access, timeout)),
            timeout,
            access,
            token: std::sync::Mutex::new(None),
            renewing: tokio::sync::Mutex::new(()),
        }
    }

    /// How this client reaches its members.
    pub fn access(&self) -> &Access {
        &self.access
    }

    fn held_token(&self) -> Option<Arc<str>> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The token to send: `None` without a user; authenticates first if there is none yet.
    async fn token(&self) -> Result<Option<Arc<str>>> {
        if self.access.user.is_none() {
            return Ok(None);
        }
        match self.held_token() {
            Some(t) => Ok(Some(t)),
            None => self.authenticate(None).await,
        }
    }

    /// Gets a new token for the user, unless another call already replaced `stale`.
    async fn authenticate(&self, stale: Option<Arc<str>>) -> Result<Option<Arc<str>>> {
        let Some(user) = &self.access.user else {
            return Ok(None);
        };
        let _one = self.renewing.lock().await;
        let held = self.held_token();
        if held.is_some() && held != stale {
            return Ok(held);
        }
        let password = user.password().map_err(|detail| EtcdError::Auth { detail })?;
        let body = json!({"name": user.name, "password": password});
        let token: Arc<str> = match self.call_members("/v3/auth/authenticate", &body, None).await {
            // It becomes a header value: one that cannot be is refused here, not at every call.
            Ok(v) => match v["token"].as_str() {
                Some(t) if !t.is_empty() && http::HeaderValue::from_str(t).is_ok() => t.into(),
                _ => {
                    return Err(EtcdError::protocol(
                        &self.current(),
                        "an authentication answer without a usable token",
                    ))
                }
            },
            Err(EtcdError::Server { message, .. }) if message.contains("authentication is not enabled") => {
                tracing::warn!(user = %user.name, "etcd's authentication is off: the configured user is not used, and any client that can connect may write the fleet's keys");
                "".into()
            }
            Err(EtcdError::Server { member, code, message }) => {
                return Err(EtcdError::Auth {
                    detail: format!("etcd {member} refused user {:?}: {message} (code {code})", user.name),
                })
            }
            Err(e) => return Err(e),
        };
        tracing::debug!(user = %user.name, "authenticated to etcd");
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        Ok(Some(token))
    }

    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Starts calls (and watches) at the member `seed` picks: routers given the same member
    /// list spread over the members instead of all watching the first one.
    pub fn spread_by(self, seed: &str) -> Etcd {
        let n = self.members.len().max(1);
        self.preferred.store(spread_index(seed, n), Relaxed);
        self
    }

    /// POSTs `body` to `path` as this client's user, renewing its token once if etcd no
    /// longer takes it.
    async fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let token = self.token().await?;
        match self.call_members(path, body, token.as_deref()).await {
            Err(e) if token.is_some() && token_refused(&e) => {
                tracing::debug!(error = %e, "etcd refused the token; authenticating again");
                let token = self.authenticate(token).await?;
                self.call_members(path, body, token.as_deref()).await
            }
            // Without a token: "user name is empty"; "permission denied" from an etcd that
            // ran the call as its own certificate's CN. Both mean that its auth is on.
            Err(EtcdError::Server { member, code, message })
                if token.is_none()
                    && (message.contains("user name is empty") || message.contains("permission denied")) =>
            {
                Err(EtcdError::Server {
                    member,
                    code,
                    message: format!(
                        "{message} (no etcd user is configured: with etcd's auth on, set a username and password file)"
                    ),
                })
            }
            r => r,
        }
    }

    /// POSTs `body` to `path` on each member in turn from the preferred one, until one answers.
    async fn call_members(&self, path: &str, body: &Value, token: Option<&str>) -> Result<Value> {
        let n = self.members.len();
        let first = self.preferred.load(Relaxed) % n.max(1);
        let mut tried = Vec::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let member = &self.members[idx];
            match self.call_one(member, path, body, token).await {
                Ok(v) => {
                    self.preferred.store(idx, Relaxed);
                    return Ok(v);
                }
                Err(e) if matches!(e, EtcdError::Unreachable { .. }) || worth_another_member(&e) => {
                    tracing::debug!(%member, %path, error = %e, "etcd member failed; trying the next one");
                    tried.push(match e {
                        EtcdError::Unreachable { mut tried } => tried.pop().unwrap_or_default(),
                        other => other.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Err(EtcdError::Unreachable { tried })
    }

    async fn call_one(&self, member: &str, path: &str, body: &Value, token: Option<&str>) -> Result<Value> {
        let unreachable = |what: String| EtcdError::Unreachable {
            tried: vec![format!("{member}: {}", explain(what, &self.access))],
        };
        let req = self.request(member, path, body, token);
        let fut = async {
            let resp = self.http.request(req).await.map_err(|e| unreachable(chain(&e)))?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            let v: Value = serde_json::from_slice(&body).map_err(|e| not_json(member, status, &body, &e))?;
            if let Some(e) = gateway_error(member, status, &v) {
                return Err(e);
            }
            Ok(v)
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(unreachable(format!("no answer within {:?}", self.timeout))),
        }
    }

    fn request(&self, member: &str, path: &str, body: &Value, token: Option<&str>) -> Request<Full<Bytes>> {
        self.request_text(member, path, body.to_string(), token)
    }

    fn request_text(&self, member: &str, path: &str, body: String, token: Option<&str>) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}://{member}{path}", self.access.scheme()))
            .header(http::header::CONTENT_TYPE, "application/json")
            // etcd 3.4 tells gateway traffic by the `grpcgateway-*` metadata these become;
            // a request with neither header and no token is taken for the gateway's own
            // connection and runs as the user named by the member certificate's CN.
            .header(http::header::USER_AGENT, concat!("cutover/", env!("CARGO_PKG_VERSION")))
            .header(http::header::ACCEPT, "application/json");
        // etcd's gateway takes the bare token (no "Bearer"); empty: etcd's auth is off.
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            req = req.header(http::header::AUTHORIZATION, t);
        }
        req.body(Full::new(Bytes::from(body))).expect("a valid request")
    }

    /// The pair at `key`, if any, and the store's revision.
    pub async fn get(&self, key: &str) -> Result<(Option<Kv>, i64)> {
        let r = self.range_body(json!({"key": b64(key.as_bytes())})).await?;
        Ok((r.kvs.into_iter().next(), r.revision))
    }

    /// Every pair whose key starts with `prefix`, in key order.
    /// One key as the member that answers has it, without a round through the leader
    /// (`serializable`): answered without a quorum too, possibly behind the leader. For a
    /// record that never changes once written, seen or not seen is all it can get wrong.
    pub async fn get_serializable(&self, key: &str) -> Result<(Option<Kv>, i64)> {
        let r = self
            .range_body(json!({"key": b64(key.as_bytes()), "serializable": true}))
            .await?;
        Ok((r.kvs.into_iter().next(), r.revision))
    }

    pub async fn range_prefix(&self, prefix: &str) -> Result<Range> {
        self.range_body(json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}))
            .await
    }

    async fn range_body(&self, body: Value) -> Result<Range> {
        let v = self.call("/v3/kv/range", &body).await?;
        let member = self.current();
        Ok(Range {
            revision: int(&v["header"]["revision"]),
            kvs: kvs_of(&member, &v)?,
        })
    }

    /// Puts `value` at `key` (on `lease` unless 0); returns the write's revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        let v = self.call("/v3/kv/put", &body).await?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Deletes `key`; returns how many pairs went (0 or 1).
    pub async fn delete(&self, key: &str) -> Result<i64> {
        let v = self
            .call("/v3/kv/deleterange", &json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(int(&v["deleted"]))
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResult> {
        let body = json!({
            "compare": txn.compare.iter().map(compare_json).collect::<Vec<_>>(),
            "success": txn.success.iter().map(op_json).collect::<Vec<_>>(),
            "failure": txn.failure.iter().map(op_json).collect::<Vec<_>>(),
        });
        let v = self.call("/v3/kv/txn", &body).await?;
        let member = self.current();
        let succeeded = v["succeeded"].as_bool().unwrap_or(false);
        let mut gets = Vec::new();
        if let Value::Array(rs) = &v["responses"] {
            for r in rs {
                if let Some(range) = r.get("response_range") {
                    gets.push(kvs_of(&member, range)?);
                }
            }
        }
        Ok(TxnResult {
            succeeded,
            revision: int(&v["header"]["revision"]),
            gets,
        })
    }

    /// Grants a lease of `ttl` seconds.
    pub async fn lease_grant(&self, ttl: i64) -> Result<Lease> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl.to_string()})).await?;
        let id = int(&v["ID"]);
        if id == 0 {
            return Err(EtcdError::protocol(
                &self.current(),
                format!("lease grant without an ID: {v}"),
            ));
        }
        Ok(Lease {
            id,
            ttl: int(&v["TTL"]),
        })
    }

    /// Renews a lease; returns its TTL now, `None` if it expired (its keys are gone).
    pub async fn lease_keepalive(&self, id: i64) -> Result<Option<i64>> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()})).await?;
        // The gateway streams the bidirectional call: one message, `{"result": {...}}`.
        let r = v.get("result").unwrap_or(&v);
        let ttl = int(&r["TTL"]);
        Ok((ttl > 0).then_some(ttl))
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<()> {
        match self.call("/v3/lease/revoke", &json!({"ID": id.to_string()})).await {
            Ok(_) => Ok(()),
            // Already expired: what revoking wanted.
            Err(EtcdError::Server { message, .. }) if message.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Compacts the history up to `revision` (tests, and operators' maintenance).
    pub async fn compact(&self, revision: i64) -> Result<()> {
        self.call(
            "/v3/kv/compaction",
            &json!({"revision": revision.to_string(), "physical": true}),
        )
        .await?;
        Ok(())
    }

    /// The status of one member (no failover: the question is about that member).
    pub async fn status_of(&self, member: &str) -> Result<Status> {
        let token = self.token().await?;
        let v = self
            .call_one(member, "/v3/maintenance/status", &json!({}), token.as_deref())
            .await?;
        Ok(Status {
            member_id: uint(&v["header"]["member_id"]),
            leader: uint(&v["leader"]),
            raft_index: uint(&v["raftIndex"]),
            revision: int(&v["header"]["revision"]),
        })
    }

    /// Whether `member` answers a linearizable read now: it is up and in a quorum (a read
    /// through the leader). No failover: the question is about that member. One key,
    /// counted, not sent: as cheap as an etcd call gets.
    pub async fn probe(&self, member: &str, key: &str) -> Result<i64> {
        let token = self.token().await?;
        let body = json!({"key": b64(key.as_bytes()), "count_only": true});
        let v = self.call_one(member, "/v3/kv/range", &body, token.as_deref()).await?;
        Ok(int(&v["header"]["revision"]))
    }

    fn current(&self) -> String {
        let n = self.members.len().max(1);
        self.members
            .get(self.preferred.load(Relaxed) % n)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_just_past_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn only_refusals_of_the_token_are_retried_after_authenticating_again() {
        let server = |code, message: &str| EtcdError::Server {
            member: "m".into(),
            code,
            message: message.into(),
        };
        assert!(token_refused(&server(16, "etcdserver: invalid auth token")));
        assert!(token_refused(&server(3, "etcdserver: user name is empty")));
        assert!(token_refused(&server(3, "etcdserver: revision of auth store is old")));
        assert!(!token_refused(&server(7, "etcdserver: permission denied")));
        assert!(!token_refused(&EtcdError::Unreachable { tried: vec![] }));
    }

    #[test]
    fn proto3_integers_are_strings_numbers_or_absent() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
    }
}
