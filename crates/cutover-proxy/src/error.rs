//! The proxy's own error responses: JSON, with a stable code and where the error came from.

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::RespBody;
use crate::route::ColorRoute;

/// Which side an error came from, for operators reading the response or the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we refuse.
    Client,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// The proxy has nowhere to send the request (no live color, no healthy endpoint).
    Routing,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Upstream => "upstream",
            Source::Routing => "routing",
        }
    }
}

/// An error the proxy answers itself instead of forwarding.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub status: StatusCode,
    pub code: &'static str,
    pub source: Source,
    pub message: String,
    /// Set for errors about an OpenAI request field (`model` on a shared listener): the body
    /// then also says `"type":"invalid_request_error","param":...`, as OpenAI's API does, so
    /// OpenAI clients show the message.
    pub param: Option<&'static str>,
}

impl ProxyError {
    pub fn new(status: StatusCode, code: &'static str, source: Source, message: impl Into<String>) -> ProxyError {
        ProxyError {
            status,
            code,
            source,
            message: message.into(),
            param: None,
        }
    }

    /// The same error, said the OpenAI way about request field `param`.
    pub fn about_field(mut self, param: &'static str) -> ProxyError {
        self.param = Some(param);
        self
    }

    /// The answer to the client; `tag`: with `x-cutover-color`/`-version` for `route`.
    pub fn into_response(self, service: &str, route: Option<&ColorRoute>, tag: bool) -> Response<RespBody> {
        let mut body = json!({"error": {"code": self.code, "message": self.message, "source": self.source.as_str(), "service": service}});
        if let Some(r) = route {
            body["error"]["color"] = r.color.as_str().into();
        }
        if let Some(p) = self.param {
            body["error"]["type"] = "invalid_request_error".into();
            body["error"]["param"] = p.into();
        }
        let mut resp = Response::new(RespBody::full(body.to_string()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-cutover-error", HeaderValue::from_static(self.code));
        if let Some(r) = route.filter(|_| tag) {
            r.tag(h);
        }
        if self.status == StatusCode::BAD_REQUEST || self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the request may still be on the wire; do not read it as a new one.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
