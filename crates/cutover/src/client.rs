//! A small admin API client for the CLI commands.

use std::path::Path;

use bytes::Bytes;
use cutover_proxy::tls::{self, TlsConnector};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::cli::{Remote, DEFAULT_ADMIN};

/// A failed CLI operation and the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Printed on stderr as `error: MESSAGE`; empty prints nothing (a closed stdout).
    pub message: String,
    pub exit: u8,
    /// The admin API's error code (`release_in_progress`, ...), when the router answered one.
    pub code: Option<String>,
}

/// What a shell reports for a process that SIGPIPE ended (128 + 13): a closed stdout ends
/// the CLI with it, quietly.
pub const EXIT_BROKEN_PIPE: u8 = 141;

impl Failure {
    pub fn new(exit: u8, message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            exit,
            code: None,
        }
    }

    pub fn broken_pipe() -> Failure {
        Failure::new(EXIT_BROKEN_PIPE, "")
    }
}

/// The admin base URL, checked: a bare `HOST:PORT` gets a suggestion instead of "invalid
/// format". `http://` or `https://`.
fn base_url(s: &str) -> Result<String, Failure> {
    let s = s.trim().trim_end_matches('/');
    let suggest = |why: &str| {
        Failure::new(
            2,
            format!("--admin {s:?} {why}: expected a URL such as http://127.0.0.1:9901; did you mean http://{s}?"),
        )
    };
    if !s.contains("://") {
        return Err(suggest("has no scheme"));
    }
    let uri: http::Uri = s.parse().map_err(|_| suggest("is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(s.to_string()),
        Some("http" | "https") => Err(suggest("has no host")),
        _ => Err(Failure::new(
            2,
            format!("--admin {s:?}: only http:// and https:// admin URLs are supported, e.g. http://127.0.0.1:9901"),
        )),
    }
}

/// Who is at the keyboard, for the history: `$USER`, `$LOGNAME`, else the OS user of this
/// process's uid (from /etc/passwd), else `uid:N`. The uid comes from the owner of
/// /proc/self, so no unsafe `getuid` call is needed (the crates forbid unsafe code).
pub fn os_user() -> String {
    if let Some(u) = ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    {
        return u;
    }
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string() && !f[0].is_empty()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}

pub struct Client {
    base: String,
    token: String,
    /// `cli:USER`, sent as `x-cutover-actor` for the history.
    actor: String,
    /// Where `base` points: host as written (a name, or an IP in brackets for v6) and port.
    host: String,
    port: u16,
    /// For an https:// base: the connector (roots from `--cacert`, else the system's) and the
    /// name the router's certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// How long a CLI call waits to connect (TLS handshake included).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn read_token(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Failure::new(3, format!("cannot read the token file {}: {e}", path.display())))
}

/// The admin address of the router running `c`: the configured one, or, for port 0, the one
/// it wrote to `admin.address_file`.
fn admin_address(c: &cutover_config::Config) -> Result<std::net::SocketAddr, Failure> {
    if c.admin.listen.port() != 0 {
        return Ok(c.admin.listen);
    }
    let Some(path) = &c.admin.address_file else {
        return Err(Failure::new(
            2,
            "admin.listen says port 0 and there is no admin.address_file to read the bound port from: pass --admin",
        ));
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            3,
            format!("cannot read the router's admin address from {}: {e}", path.display()),
        )
    })?;
    text.trim().parse().map_err(|_| {
        Failure::new(
            3,
            format!("{} does not hold an address: {:?}", path.display(), text.trim()),
        )
    })
}

impl Client {
    /// Resolves the admin address and token: flags, then environment, then `--config`.
    pub fn new(r: &Remote) -> Result<Client, Failure> {
        let cfg = match &r.config {
            Some(p) => Some(cutover_config::load(p).map_err(|e| Failure::new(2, e.to_string()))?),
            None => None,
        };
        let base = match (&r.admin, &cfg) {
            (Some(a), _) => base_url(a)?,
            (None, Some(c)) => format!(
                "{}://{}",
                if c.admin.tls.is_some() { "https" } else { "http" },
                admin_address(c)?
            ),
            (None, None) => DEFAULT_ADMIN.to_string(),
        };
        let token = match (&r.token, &r.token_file, &cfg) {
            (Some(t), _, _) => t.clone(),
            (None, Some(f), _) => read_token(f)?,
            (None, None, Some(c)) => read_token(&c.admin.token_file)?,
            (None, None, None) => {
                return Err(Failure::new(
                    2,
                    "no admin token: pass --token, --token-file, --config FILE, or set CUTOVER_TOKEN",
                ))
            }
        };
        let base = base.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|_| Failure::new(2, format!("bad admin URL {base}")))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or("127.0.0.1").to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let roots = tls::roots(r.cacert.as_deref()).map_err(|e| {
                let from = if r.cacert.is_some() {
                    "--cacert"
                } else {
                    "the system's roots"
                };
                Failure::new(2, format!("cannot verify {base} with {from}: {e}"))
            })?;
            let name = tls::server_name(&host).map_err(|e| Failure::new(2, format!("--admin {base}: {e}")))?;
            Some((TlsConnector::from(tls::client_config(roots, &[tls::ALPN_HTTP1])), name))
        } else {
            if let Some(ca) = &r.cacert {
                tracing::debug!(cacert = %ca.display(), "--cacert ignored: the admin URL is http://");
            }
            None
        };
        Ok(Client {
            base,
            token,
            actor: format!("cli:{}", os_user()),
            host,
            port,
            tls,
        })
    }

    /// One request on a new connection (a CLI makes few; no pool to keep).
    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let connect = async {
            let tcp = TcpStream::connect((host, self.port)).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Stream::Plain(tcp)),
                Some((c, name)) => c
                    .connect(name.clone(), tcp)
                    .await
                    .map(|s| Stream::Tls(Box::new(s)))
                    .map_err(|e| {
                        format!("TLS handshake failed: {e} (for a router whose certificate a private CA signed, pass --cacert FILE or set CUTOVER_CACERT)")
                    }),
            }
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
            Ok(Err(e)) if self.tls.is_some() && speaks_plain_http(host, self.port).await => {
                let plain = self.base.replacen("https://", "http://", 1);
                return Err(format!(
                    "it answers in plain HTTP, not TLS: use --admin {plain} (the admin API has no [admin] tls) ({e})"
                ));
            }
            Ok(r) => r?,
        };
        match stream {
            Stream::Plain(s) => request_on(TokioIo::new(s), req).await,
            Stream::Tls(s) => request_on(TokioIo::new(*s), req).await,
        }
    }

    /// The admin base URL this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let authority = HeaderValue::from_str(&format!("{}:{}", self.host, self.port))
            .map_err(|e| Failure::new(2, format!("bad admin URL {url}: {e}")))?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-cutover-actor", &self.actor)
            .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))
            .map_err(|e| Failure::new(2, format!("bad admin URL {url}: {e}")))?;
        let fut = self.send(req);
        let resp = tokio::time::timeout(std::time::Duration::from_secs(120), fut)
            .await
            .map_err(|_| Failure::new(3, format!("the router at {} did not answer within 120 s", self.base)))?
            .map_err(|e| Failure::new(3, format!("cannot reach the router at {}: {e}", self.base)))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::new(3, format!("reading the answer from {} failed: {e}", self.base)))?
            .to_bytes();
        let v: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        if !is_admin_answer(status, &v) {
            return Err(self.not_cutover(path, status, &bytes));
        }
        if status.is_success() {
            return Ok(v);
        }
        let msg = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        let exit = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => 3,
            s if s == StatusCode::BAD_REQUEST
                || s == StatusCode::NOT_FOUND
                || s == StatusCode::METHOD_NOT_ALLOWED
                || s == StatusCode::UNPROCESSABLE_ENTITY =>
            {
                2
            }
            _ => 1,
        };
        Err(Failure {
            message: format!("{msg} (HTTP {})", status.as_u16()),
            exit,
            code: v["error"]["code"].as_str().map(str::to_string),
        })
    }

    /// Whatever answered is not a cutover admin API (a service's listener, a model server,
    /// another web server): exit 3, as for a router that cannot be reached.
    fn not_cutover(&self, path: &str, status: StatusCode, body: &[u8]) -> Failure {
        let text = String::from_utf8_lossy(body);
        let excerpt: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(120)
            .collect();
        let said = if excerpt.is_empty() {
            "an empty body".to_string()
        } else {
            format!("{excerpt:?}")
        };
        Failure::new(
            3,
            format!(
                "{} is not a cutover admin API: it answered {path} with HTTP {} and {said}. Is --admin a service's \
                 listen address or another server? The admin API is where the router's [admin] listen says \
                 (default {DEFAULT_ADMIN}); --config FILE reads it from the config",
                self.base,
                status.as_u16()
            ),
        )
    }
}

/// Does this answer come from a cutover admin API? Its answers are JSON objects, and its
/// errors are exactly `{"error":{"code","message"}}` (a service's own errors carry `source`
/// and `service`, an OpenAI-style model server's carry `type`).
fn is_admin_answer(status: StatusCode, v: &Value) -> bool {
    if status.is_success() {
        return v.is_object();
    }
    let Some(e) = v.get("error").and_then(Value::as_object) else {
        return false;
    };
    e.len() == 2 && e.get("code").is_some_and(Value::is_string) && e.get("message").is_some_and(Value::is_string)
}

/// After a failed TLS handshake: does the port answer plain HTTP? (An `https://` URL for an
/// admin API that has no TLS.)
async fn speaks_plain_http(host: &str, port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut tcp = TcpStream::connect((host, port)).await.ok()?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: cutover\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 8];
        tcp.read_exact(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1."))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A connection to the router, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn request_on<T>(io: TokioIo<T>, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    send.send_request(req).await.map_err(|e| e.to_string())
}
