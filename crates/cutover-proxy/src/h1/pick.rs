//! The HTTP/1.1 engine on a shared listener: the service of each request picked before its
//! exchange begins, from the head, or from the body's first bytes read into the client's
//! input buffer (they stay there and go upstream first, as any buffered body bytes do).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant as Deadline;

use super::buf::Buf;
use super::chunked::Chunked;
use super::io::write_by;
use super::request::{self, RequestHead};
use super::Framing;
use crate::error::ProxyError;
use crate::exchange::{self, Forwarder, SharedListener};
use crate::shared::{host_of, path_of, Choice, Model, MODEL_PEEK};

/// What a shared listener does with one request.
pub(super) enum Picked {
    Service(Arc<Forwarder>),
    /// `GET /v1/models`: this JSON, answered by the listener.
    Models(String),
    Refuse(ProxyError),
}

/// The client side a pick reads from: the socket, its input buffer (the head at its start),
/// and how long the client has to send the start of its body.
pub(super) struct Reader<'a> {
    pub(super) client: &'a mut TcpStream,
    pub(super) inbuf: &'a mut Buf,
    pub(super) timeout: Duration,
}

/// The service for the request whose head starts the input buffer.
pub(super) async fn pick(mut r: Reader<'_>, shared: &SharedListener, head: &mut RequestHead) -> Picked {
    let raw = &r.inbuf.bytes()[..head.head_len];
    let candidates = match shared.by_head(&head.method, host_of(raw), path_of(request::target_of(raw))) {
        Choice::Service(f) => return Picked::Service(f.clone()),
        Choice::Models(json) => return Picked::Models(json),
        Choice::Refuse(e) => return Picked::Refuse(e),
        Choice::ByModel(c) => c,
    };
    let model = match body_start(&mut r, head).await {
        Ok(m) => m,
        Err(e) => return Picked::Refuse(e),
    };
    // Read again: the buffer may have moved while it grew.
    let raw = &r.inbuf.bytes()[..head.head_len];
    match shared.by_model(candidates, &model, host_of(raw), path_of(request::target_of(raw))) {
        Ok(f) => Picked::Service(f.clone()),
        Err(e) => Picked::Refuse(e),
    }
}

/// Reads into the input buffer until the body's first bytes say what its `model` is,
/// within the client's `timeout`; never more than about [`MODEL_PEEK`].
async fn body_start(r: &mut Reader<'_>, head: &mut RequestHead) -> Result<Model, ProxyError> {
    let deadline = Deadline::now() + r.timeout;
    // Room for the cap's worth of data and a chunked body's framing around it.
    let max = head.head_len + MODEL_PEEK + 16 * 1024;
    loop {
        if let Some(m) = model_so_far(r.inbuf, head) {
            return Ok(m);
        }
        if head.expect_continue && head.minor == 1 {
            // The client waits for this before it sends the body the model is in; the
            // exchange must not say it again.
            head.expect_continue = false;
            write_by(r.client, b"HTTP/1.1 100 Continue\r\n\r\n", deadline)
                .await
                .map_err(|_| exchange::bad_body("the client went away"))?;
        }
        if !r.inbuf.reserve(max) {
            return Ok(Model::PastCap);
        }
        match tokio::time::timeout_at(deadline, r.client.read_buf(&mut r.inbuf.data)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                return Err(exchange::bad_body(
                    "the client closed the connection before its body's `model` field",
                ))
            }
            Err(_) => {
                return Err(exchange::bad_body(
                    "the client did not send the start of its body within limits.header_read_timeout",
                ))
            }
        }
    }
}

/// What the body bytes buffered so far say about the model; `None`: more are needed.
fn model_so_far(inbuf: &Buf, head: &RequestHead) -> Option<Model> {
    let body = &inbuf.bytes()[head.head_len..];
    match head.body {
        Framing::None | Framing::Close => Some(Model::Missing),
        Framing::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            let have = &body[..body.len().min(n)];
            Model::read(have, have.len() == n)
        }
        Framing::Chunked => {
            // Decoded into a copy for reading only: the chunks stay in the buffer and are
            // forwarded as any chunked body is.
            let mut dec = Chunked::new();
            let mut data = Vec::new();
            let fed = dec.feed(body, |d| {
                if data.len() < MODEL_PEEK {
                    data.extend_from_slice(d);
                }
            });
            match fed {
                // The exchange refuses the bad framing itself.
                Err(_) => Some(Model::Missing),
                Ok(_) => Model::read(&data, dec.done()),
            }
        }
    }
}

/// The answer to `GET /v1/models`, whole.
pub(super) fn models_answer(json: &str, head: &RequestHead, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        json.len()
    );
    out.push_str(match (close, head.minor) {
        (true, _) => "connection: close\r\n",
        (false, 0) => "connection: keep-alive\r\n",
        (false, _) => "",
    });
    out.push_str("\r\n");
    out.push_str(json);
    out.into_bytes()
}
