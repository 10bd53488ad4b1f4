//! Watch streams: one `POST /v3/watch` whose body holds a create request per watched range
//! (the gateway reads them one after another, so a router watches several ranges over one
//! stream and one connection), and the messages that come back, one JSON object each.

use std::sync::atomic::Ordering::Relaxed;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{b64, int, kv_of, prefix_end, Etcd, EtcdError, Event, Result, WatchMsg, MAX_WATCH_MESSAGE};
use crate::access::{chain, explain};

impl Etcd {
    /// Watches every key under `prefix` from `start_revision` on (0: from now). The first
    /// message is `Created` (or `Compacted` right after it when the start was compacted).
    /// Opening fails over like any call; once open, the stream ends with the member.
    pub async fn watch(&self, prefix: &str, start_revision: i64, progress_notify: bool) -> Result<Watch> {
        let range = (prefix.as_bytes().to_vec(), prefix_end(prefix));
        self.watch_ranges(&[range], start_revision, progress_notify).await
    }

    /// Watches each `[key, range_end)` of `ranges` from `start_revision` on, over one stream:
    /// a `Created` per range first. Events of every range come in revision order, since
    /// etcd sends all of a stream's watchers' events through one queue as it commits.
    pub async fn watch_ranges(
        &self,
        ranges: &[(Vec<u8>, Vec<u8>)],
        start_revision: i64,
        progress_notify: bool,
    ) -> Result<Watch> {
        let body: String = ranges
            .iter()
            .map(|(key, end)| {
                json!({"create_request": {
                    "key": b64(key),
                    "range_end": b64(end),
                    "start_revision": start_revision.to_string(),
                    "progress_notify": progress_notify,
                }})
                .to_string()
            })
            .collect();
        let token = self.token().await?;
        let n = self.members.len();
        let first = self.preferred.load(Relaxed) % n.max(1);
        let mut tried = Vec::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let member = &self.members[idx];
            let req = self.request_text(member, "/v3/watch", body.clone(), token.as_deref());
            match tokio::time::timeout(self.timeout, self.http.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    self.preferred.store(idx, Relaxed);
                    return Ok(Watch {
                        member: member.clone(),
                        body: resp.into_body(),
                        buf: BytesMut::new(),
                    });
                }
                Ok(Ok(resp)) => tried.push(format!("{member}: HTTP {}", resp.status())),
                Ok(Err(e)) => tried.push(format!("{member}: {}", explain(chain(&e), &self.access))),
                Err(_) => tried.push(format!("{member}: no answer within {:?}", self.timeout)),
            }
        }
        Err(EtcdError::Unreachable { tried })
    }
}

/// An open watch stream: one JSON object per message.
pub struct Watch {
    member: String,
    body: Incoming,
    buf: BytesMut,
}

impl Watch {
    /// The member this stream is open on.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The next message; `Err` when the stream ended or broke (watch again after a re-read).
    /// Cancel-safe: a message half read stays buffered.
    pub async fn next(&mut self) -> Result<WatchMsg> {
        loop {
            if let Some(v) = self.take_message()? {
                return self.message(&v);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        if self.buf.len() > MAX_WATCH_MESSAGE {
                            return Err(EtcdError::protocol(&self.member, "a watch message over 16 MiB"));
                        }
                    }
                }
                Some(Err(e)) => {
                    return Err(EtcdError::Unreachable {
                        tried: vec![format!("{}: watch stream broke: {e}", self.member)],
                    })
                }
                None => {
                    return Err(EtcdError::Unreachable {
                        tried: vec![format!("{}: watch stream ended", self.member)],
                    })
                }
            }
        }
    }

    /// One whole JSON value from the front of the buffer, if one has arrived.
    fn take_message(&mut self) -> Result<Option<Value>> {
        let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
        let Some(start) = start else {
            self.buf.clear();
            return Ok(None);
        };
        self.buf.advance(start);
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                let used = it.byte_offset();
                self.buf.advance(used);
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            Some(Err(e)) => Err(EtcdError::protocol(&self.member, format!("watch message: {e}"))),
            None => Ok(None),
        }
    }

    fn message(&self, v: &Value) -> Result<WatchMsg> {
        let member = &self.member;
        if let Some(err) = v.get("error") {
            return Err(EtcdError::Server {
                member: member.clone(),
                code: int(&err["grpc_code"]),
                message: err["message"].as_str().unwrap_or("watch error").to_string(),
            });
        }
        let r = v
            .get("result")
            .ok_or_else(|| EtcdError::protocol(member, format!("watch message without result: {v}")))?;
        let revision = int(&r["header"]["revision"]);
        let compact = int(&r["compact_revision"]);
        if compact > 0 {
            return Ok(WatchMsg::Compacted {
                compact_revision: compact,
            });
        }
        if r["canceled"].as_bool().unwrap_or(false) {
            let reason = r["cancel_reason"].as_str().unwrap_or("").to_string();
            if reason.contains("auth token") {
                // The caller reads again, and that call renews the token.
                return Err(EtcdError::Server {
                    member: member.clone(),
                    code: 16,
                    message: reason,
                });
            }
            return Ok(WatchMsg::Canceled { reason });
        }
        if r["created"].as_bool().unwrap_or(false) {
            return Ok(WatchMsg::Created { revision });
        }
        let mut events = Vec::new();
        if let Value::Array(evs) = &r["events"] {
            for e in evs {
                let kv = kv_of(member, &e["kv"])?;
                events.push(match e["type"].as_str() {
                    Some("DELETE") => Event::Delete(kv),
                    _ => Event::Put(kv),
                });
            }
        }
        if events.is_empty() {
            Ok(WatchMsg::Progress { revision })
        } else {
            Ok(WatchMsg::Events { revision, events })
        }
    }
}
