//! Watch streams: one `POST /v3/watch` whose body holds a create request per watched range
//! (a router watches several ranges over one stream and one connection), and the messages
//! that come back, one JSON object each.
//!
//! etcd's JSON gateway does not always create them all. It sends the first create request
//! to the server before it answers, and reads the others from the request body in a
//! goroutine while the answer starts; Go's HTTP/1.1 server discards what is left of a
//! request body when a handler writes its response head. On a loaded machine the head can
//! win: the first range is watched and the others silently are not, while the stream stays
//! alive (its progress notifications keep coming). Measured with 10 simulated routers and
//! both cores busy: one router in ten on some fresh clusters never saw a switch and never
//! said so. So a stream counts its `Created` answers, and one that has not had one per
//! range within the call timeout fails like a broken stream (the caller reads again and
//! watches anew).

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
                        ranges: ranges.len(),
                        created: 0,
                        created_by: tokio::time::Instant::now() + self.timeout,
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
    /// How many ranges were asked for, and how many etcd confirmed so far (see the module's
    /// comment: the gateway may drop all but the first).
    ranges: usize,
    created: usize,
    /// When the confirmations still missing count as never coming.
    created_by: tokio::time::Instant,
}

impl Watch {
    /// The member this stream is open on.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The next message; `Err` when the stream ended or broke, or when etcd did not confirm
    /// every range in time (watch again after a re-read). Cancel-safe: a message half read
    /// stays buffered.
    pub async fn next(&mut self) -> Result<WatchMsg> {
        if self.created >= self.ranges {
            return self.next_message().await;
        }
        let msg = match tokio::time::timeout_at(self.created_by, self.next_message()).await {
            Ok(m) => m?,
            Err(_) => return Err(self.unconfirmed()),
        };
        if let WatchMsg::Created { .. } = msg {
            self.created += 1;
        } else if tokio::time::Instant::now() >= self.created_by {
            // Steady messages (another range's events) must not hide the missing ones.
            return Err(self.unconfirmed());
        }
        Ok(msg)
    }

    fn unconfirmed(&self) -> EtcdError {
        EtcdError::Unreachable {
            tried: vec![format!(
                "{}: etcd confirmed {} of the {} watched ranges (its JSON gateway can drop the create requests after the first)",
                self.member, self.created, self.ranges
            )],
        }
    }

    async fn next_message(&mut self) -> Result<WatchMsg> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A gateway that answers a watch with `created` confirmations, then a progress
    /// notification every 50 ms: what etcd's JSON gateway sends when it dropped the create
    /// requests after the first (`created` = 1), or did not (`created` = all).
    async fn gateway(created: usize) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let _ = s.read(&mut buf).await.unwrap();
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            s.write_all(head.as_bytes()).await.unwrap();
            let chunk = |v: &str| format!("{:x}\r\n{v}\r\n", v.len());
            for id in 0..created {
                let m = format!(r#"{{"result":{{"header":{{"revision":"7"}},"watch_id":"{id}","created":true}}}}"#);
                s.write_all(chunk(&m).as_bytes()).await.unwrap();
            }
            let progress = r#"{"result":{"header":{"revision":"7"}}}"#;
            while s.write_all(chunk(progress).as_bytes()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        addr
    }

    fn three_ranges() -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b"/f/a".to_vec(), b"/f/h".to_vec()),
            (b"/f/i".to_vec(), b"/f/r".to_vec()),
            (b"/f/s".to_vec(), b"/f0".to_vec()),
        ]
    }

    #[tokio::test]
    async fn a_stream_missing_a_range_fails_though_its_progress_keeps_coming() {
        let etcd = Etcd::with_timeout(vec![gateway(1).await], Duration::from_millis(300));
        let mut w = etcd.watch_ranges(&three_ranges(), 8, true).await.unwrap();
        let mut progress = 0;
        let err = loop {
            match w.next().await {
                Ok(WatchMsg::Progress { .. }) => progress += 1,
                Ok(_) => {}
                Err(e) => break e,
            }
            assert!(progress < 200, "a stream with 1 of 3 ranges went on for 10 s");
        };
        assert!(progress > 0, "progress notifications came before the failure");
        assert!(err.to_string().contains("confirmed 1 of the 3"), "{err}");
    }

    #[tokio::test]
    async fn a_stream_with_every_range_confirmed_goes_on() {
        let etcd = Etcd::with_timeout(vec![gateway(3).await], Duration::from_millis(300));
        let mut w = etcd.watch_ranges(&three_ranges(), 8, true).await.unwrap();
        // Well past the confirmation deadline.
        for _ in 0..20 {
            w.next().await.expect("a fully created watch keeps its stream");
        }
    }
}
