//! The SSE body of a streamed answer: one chunk per piece of the reply every token interval,
//! a last chunk with the finish reason, then `[DONE]`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::{json, Value};

use crate::{Running, State};

/// An SSE body of chat (`chat.completion.chunk`) or completion (`text_completion`) chunks.
pub struct TokenStream {
    state: Arc<State>,
    id: String,
    /// `/v1/completions`: chunks carry `text` instead of a `delta`.
    completions: bool,
    pieces: std::vec::IntoIter<String>,
    sent: u64,
    finish_reason: &'static str,
    done: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Counts the stream as a running request until its last token.
    _running: Running,
}

impl TokenStream {
    pub(crate) fn new(
        state: Arc<State>,
        id: String,
        completions: bool,
        pieces: Vec<String>,
        finish_reason: &'static str,
        running: Running,
    ) -> TokenStream {
        TokenStream {
            state,
            id,
            completions,
            pieces: pieces.into_iter(),
            sent: 0,
            finish_reason,
            done: false,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            _running: running,
        }
    }

    fn chunk(&self, piece: Option<&str>, finish: Option<&str>) -> Value {
        let version = &self.state.args.version;
        let choice = if self.completions {
            json!({"index": 0, "text": piece.unwrap_or(""), "finish_reason": finish})
        } else {
            let delta = match piece {
                Some(p) if self.sent == 0 => json!({"role": "assistant", "content": p}),
                Some(p) => json!({"content": p}),
                None => json!({}),
            };
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        };
        let object = if self.completions {
            "text_completion"
        } else {
            "chat.completion.chunk"
        };
        json!({"id": self.id, "object": object, "created": crate::unix_now(), "model": version, "choices": [choice]})
    }
}

impl Body for TokenStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let this = &mut *self;
        let chunk = match this.pieces.next() {
            Some(piece) => {
                let v = this.chunk(Some(&piece), None);
                this.sent += 1;
                let deadline = tokio::time::Instant::now() + this.state.args.token_interval;
                this.sleep.as_mut().reset(deadline);
                format!("data: {v}\n\n")
            }
            None => {
                this.done = true;
                this.state.stats.streams_completed.fetch_add(1, Relaxed);
                let v = this.chunk(None, Some(this.finish_reason));
                format!("data: {v}\n\ndata: [DONE]\n\n")
            }
        };
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        if !self.done {
            self.state.stats.streams_cancelled.fetch_add(1, Relaxed);
        }
    }
}
