//! TLS on service and admin listeners: certificates made here with rcgen and signed by a test
//! CA, real clients (curl, the openai client on httpx with the CA, the CLI with `--cacert`), and
//! a rustls client that reads the certificate the router presented. Streams through a switch
//! and through a certificate rotation; refused clients (TLS 1.1, plain HTTP, no handshake).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;

use crate::support::*;

/// A test CA and the leaf certificates it signs, in one folder.
pub struct Pki {
    pub dir: TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate (PEM): what clients trust.
    pub ca: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("pki");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own: a client trusting another test CA must not find this one by name.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, SeqCst);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("cutover test CA {n}"));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            dir,
            issuer: rcgen::Issuer::new(params, key),
            ca,
        }
    }

    /// A leaf for 127.0.0.1 and localhost (and `extra` names) with `serial`: (cert, key) PEM.
    pub fn leaf(&self, serial: u64, extra: &[&str]) -> (String, String) {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        names.extend(extra.iter().map(|s| s.to_string()));
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.serial_number = Some(serial.into());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf written to `NAME.crt` and `NAME.key` here: their paths.
    pub fn write_leaf(&self, name: &str, serial: u64) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(serial, &[]);
        let (c, k) = (self.path(&format!("{name}.crt")), self.path(&format!("{name}.key")));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `tls = {...}` line naming `NAME.crt` and `NAME.key`.
    pub fn tls_line(&self, name: &str) -> String {
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            self.path(&format!("{name}.crt")).display(),
            self.path(&format!("{name}.key")).display()
        )
    }
}

/// Replaces `path` with `text` the way an ACME client does: write a new file, rename it over.
fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// DER of the first certificate of a PEM text.
fn der_of(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// One TLS connection to 127.0.0.1:`port` that trusts `ca`: a request sender (HTTP/2 when
/// `h2`, which needs ALPN h2 from the server) and the certificate the server presented.
pub async fn tls_connect(port: u16, ca: &Path, h2: bool) -> Result<(Sender, CertificateDer<'static>), String> {
    let roots = cutover_proxy::tls::roots(Some(ca))?;
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let connector = tokio_rustls::TlsConnector::from(cutover_proxy::tls::client_config(roots, alpn));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = cutover_proxy::tls::server_name("127.0.0.1")?;
    let tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let peer = tls.get_ref().1.peer_certificates().ok_or("no peer certificate")?[0].clone();
    let io = TokioIo::new(tls);
    let sender = if h2 {
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Sender::H2(s)
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Sender::H1(s)
    };
    Ok((sender, peer))
}

pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    pub async fn send(&mut self, port: u16, method: Method, path: &str, body: &str) -> Response<Incoming> {
        let b = Full::new(Bytes::from(body.to_string()));
        match self {
            Sender::H1(s) => {
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", format!("127.0.0.1:{port}"))
                    .body(b)
                    .unwrap();
                s.send_request(req).await.unwrap()
            }
            Sender::H2(s) => {
                let req = Request::builder()
                    .method(method)
                    .uri(format!("https://127.0.0.1:{port}{path}"))
                    .body(b)
                    .unwrap();
                s.send_request(req).await.unwrap()
            }
        }
    }
}

/// The certificate a new connection to `port` is presented with.
async fn presented(port: u16, ca: &Path) -> CertificateDer<'static> {
    tls_connect(port, ca, false).await.unwrap().1
}

fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A router whose service `chat` listens with TLS (`live.crt`/`live.key` of `pki`).
async fn tls_router(pki: &Pki, blue: &Mock, green: &Mock, extra: &str) -> Router {
    pki.write_leaf("live", 1);
    let extra = format!("{}\n{extra}", pki.tls_line("live"));
    Router::start(&static_service(&[blue], &[green], &extra)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_http2_negotiated_by_alpn_and_an_sse_stream() {
    let pki = Pki::new();
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = tls_router(&pki, &blue, &green, "").await;
    assert_eq!(r.switch("blue").await.status, 200);
    let url = format!("https://127.0.0.1:{}/v1/models", r.listen);
    let ca = pki.ca.to_str().unwrap();

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, out, err) = curl(&[
            "--cacert",
            ca,
            flag,
            "--include",
            "--write-out",
            "\n%{http_version} %{ssl_verify_result}",
            &url,
        ]);
        assert_eq!(code, 0, "{flag}: {err}");
        assert!(
            out.ends_with(&format!("\n{version} 0")),
            "{flag}: ALPN must give HTTP/{version}: {out}"
        );
        assert!(out.to_ascii_lowercase().contains("x-cutover-color: blue"), "{out}");
        assert!(out.contains("\"id\":\"v1\""), "{out}");
    }

    // Server-sent events stream through, token by token, to `[DONE]`.
    let (code, out, err) = curl(&[
        "--cacert",
        ca,
        "--http2",
        "--no-buffer",
        "-H",
        "content-type: application/json",
        "--data",
        r#"{"stream":true,"max_tokens":8}"#,
        &format!("https://127.0.0.1:{}/v1/chat/completions", r.listen),
    ]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<String> = out
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_string))
        .collect();
    let versions = stream_versions(&events).unwrap();
    assert_eq!(versions.len(), 9, "{out}");
    assert!(versions.iter().all(|v| v == "v1"), "{versions:?}");

    // Not trusting the CA: curl refuses the certificate.
    let (code, _, err) = curl(&[&url]);
    assert_eq!(code, 60, "an unknown issuer must fail verification: {err}");

    // The model server is told the client came over https (and over HTTP/1.1 to it).
    let (code, out, err) = curl(&[
        "--cacert",
        ca,
        "--http2",
        &format!("https://127.0.0.1:{}/mock/echo", r.listen),
    ]);
    assert_eq!(code, 0, "{err}");
    let echo: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
    assert_eq!(echo["http_version"], "HTTP/1.1", "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_with_the_ca_in_httpx_talks_to_a_tls_listener() {
    let pki = Pki::new();
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = tls_router(&pki, &blue, &green, "").await;
    assert_eq!(r.switch("green").await.status, 200);
    let script = r#"
import json, sys
import httpx, openai
base, ca = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, http_client=httpx.Client(verify=ca))
raw = client.chat.completions.with_raw_response.create(
    model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=3)
plain = raw.parse()
chunks = list(client.chat.completions.create(
    model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=5, stream=True))
try:
    openai.OpenAI(base_url=base, api_key="unused", max_retries=0).models.list()
    untrusted = "accepted"
except openai.APIConnectionError as e:
    untrusted = repr(e.__cause__ or e)
print(json.dumps({
    "model": plain.model,
    "color": raw.headers.get("x-cutover-color"),
    "stream": [c.model for c in chunks],
    "untrusted": untrusted,
}))
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .arg(format!("https://127.0.0.1:{}/v1", r.listen))
        .arg(&pki.ca)
        .output()
        .await
        .expect("python3 with the openai package");
    assert!(
        out.status.success(),
        "openai client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "v2", "{v}");
    assert_eq!(v["color"], "green", "{v}");
    let stream = v["stream"].as_array().unwrap();
    assert!(stream.len() >= 5 && stream.iter().all(|m| m == "v2"), "{v}");
    assert!(
        v["untrusted"].as_str().unwrap().contains("CERTIFICATE_VERIFY_FAILED"),
        "without the CA the client must refuse the certificate: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_stream_started_before_a_switch_finishes_on_its_color() {
    let pki = Pki::new();
    let blue = Mock::start("v1", &["--token-interval", "20ms"]).await;
    let green = Mock::start("v2", &["--token-interval", "20ms"]).await;
    let r = tls_router(&pki, &blue, &green, "").await;
    assert_eq!(r.switch("blue").await.status, 200);

    for h2 in [false, true] {
        let (mut s, _) = tls_connect(r.listen, &pki.ca, h2).await.unwrap();
        let resp = s
            .send(
                r.listen,
                Method::POST,
                "/v1/chat/completions",
                r#"{"stream":true,"max_tokens":60}"#,
            )
            .await;
        assert_eq!(resp.status(), 200);
        let from = resp.headers()["x-cutover-color"].to_str().unwrap().to_string();
        let to = if from == "blue" { "green" } else { "blue" };
        let reading = tokio::spawn(read_stream(resp));
        assert_eq!(r.switch(to).await.status, 200);
        // New requests, on a new TLS connection, already go to the new color.
        let (mut s2, _) = tls_connect(r.listen, &pki.ca, h2).await.unwrap();
        let after = s2.send(r.listen, Method::GET, "/v1/models", "").await;
        assert_eq!(after.headers()["x-cutover-color"], to, "h2={h2}");
        let (events, err) = reading.await.unwrap();
        assert!(err.is_none(), "h2={h2}: stream cut: {err:?}");
        let versions = stream_versions(&events).unwrap();
        let want = if from == "blue" { "v1" } else { "v2" };
        assert_eq!(versions.len(), 61, "h2={h2}");
        assert!(versions.iter().all(|v| v == want), "h2={h2}: {versions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_connections_while_open_streams_finish_and_a_broken_one_is_refused() {
    let pki = Pki::new();
    let blue = Mock::start("v1", &["--token-interval", "50ms"]).await;
    let green = Mock::start("v2", &[]).await;
    let r = tls_router(&pki, &blue, &green, "").await;
    assert_eq!(r.switch("blue").await.status, 200);
    let (cert_path, key_path) = (pki.path("live.crt"), pki.path("live.key"));
    let first = der_of(&std::fs::read_to_string(&cert_path).unwrap());
    assert_eq!(presented(r.listen, &pki.ca).await, first);

    // A stream of about 10 s, open across the rotation.
    let (mut s, _) = tls_connect(r.listen, &pki.ca, false).await.unwrap();
    let resp = s
        .send(
            r.listen,
            Method::POST,
            "/v1/chat/completions",
            r#"{"stream":true,"max_tokens":200}"#,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let done = Arc::new(AtomicBool::new(false));
    let reading = {
        let done = done.clone();
        tokio::spawn(async move {
            let out = read_stream(resp).await;
            done.store(true, SeqCst);
            out
        })
    };

    // The ACME pattern: a new certificate (new serial, one more name) renamed in, then its key.
    let (cert, key) = pki.leaf(2, &["chat.example"]);
    replace_by_rename(&cert_path, &cert);
    replace_by_rename(&key_path, &key);
    let second = der_of(&cert);
    wait_for(
        "new connections to get the new certificate",
        Duration::from_secs(30),
        || {
            let (ca, second) = (pki.ca.clone(), second.clone());
            async move { (presented(r.listen, &ca).await == second).then_some(()) }
        },
    )
    .await;
    assert!(
        !done.load(SeqCst),
        "the stream must still be open when the new certificate is in use"
    );
    let (events, err) = reading.await.unwrap();
    assert!(err.is_none(), "stream cut by the rotation: {err:?}");
    assert_eq!(stream_versions(&events).unwrap().len(), 201);

    // A certificate whose key is not there (the old key stays): refused, the pair in use stays.
    let (broken, _) = pki.leaf(3, &[]);
    replace_by_rename(&cert_path, &broken);
    let failed = wait_for("the broken pair to be refused", Duration::from_secs(30), || {
        let url = r.admin_url("/metrics");
        async move {
            let text = get(&url).await.ok()?.text();
            let line = text
                .lines()
                .find(|l| l.starts_with("cutover_tls_reloads_total{result=\"failed\"}"))?
                .to_string();
            (!line.ends_with(" 0")).then_some(text)
        }
    })
    .await;
    assert!(
        failed.contains("cutover_tls_reloads_total{result=\"loaded\"} 1"),
        "{failed}"
    );
    assert_eq!(
        presented(r.listen, &pki.ca).await,
        second,
        "the broken pair must not be used"
    );
    let log = r.log();
    assert!(
        log.contains("TLS certificate not reloaded") && log.contains("does not match the certificate"),
        "{log}"
    );
    // Traffic goes on with the pair in use.
    let (mut s, _) = tls_connect(r.listen, &pki.ca, true).await.unwrap();
    assert_eq!(s.send(r.listen, Method::GET, "/v1/models", "").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_certificates_at_once_and_refuses_other_certificate_files() {
    let pki = Pki::new();
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = tls_router(&pki, &blue, &green, "").await;
    let (cert, key) = pki.leaf(5, &[]);
    std::fs::write(pki.path("live.crt"), &cert).unwrap();
    std::fs::write(pki.path("live.key"), &key).unwrap();
    let resp = r.api(Method::POST, "/v1/reload", serde_json::Value::Null).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let outcome = resp.json()["certificates"]["services.chat.tls"].clone();
    // The file poll may have been first; either way the new pair is in use when reload answers.
    assert!(outcome == "reloaded" || outcome == "unchanged", "{}", resp.text());
    assert_eq!(presented(r.listen, &pki.ca).await, der_of(&cert));

    // Other files for the listener: refused whole, the certificate in use stays.
    pki.write_leaf("other", 6);
    let text = std::fs::read_to_string(&r.config).unwrap();
    std::fs::write(
        &r.config,
        text.replace("live.crt", "other.crt").replace("live.key", "other.key"),
    )
    .unwrap();
    let resp = r.api(Method::POST, "/v1/reload", serde_json::Value::Null).await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert!(resp.text().contains("services.chat.tls"), "{}", resp.text());
    assert_eq!(presented(r.listen, &pki.ca).await, der_of(&cert));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_protocols_plain_http_and_silent_clients_are_refused_without_a_hang() {
    let pki = Pki::new();
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = tls_router(
        &pki,
        &blue,
        &green,
        "limits = { header_read_timeout = \"1s\", max_connections = 1 }",
    )
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let url = format!("https://127.0.0.1:{}/v1/models", r.listen);
    let ca = pki.ca.to_str().unwrap();

    // TLS 1.2 is accepted, 1.1 is not (the client's own floor lowered, so the refusal is ours).
    let (code, out, err) = curl(&[
        "--cacert",
        ca,
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--write-out",
        "%{http_code}",
        "-o",
        "/dev/null",
        &url,
    ]);
    assert_eq!((code, out.as_str()), (0, "200"), "{err}");
    let (code, _, err) = curl(&[
        "--cacert",
        ca,
        "--tlsv1.1",
        "--tls-max",
        "1.1",
        "--ciphers",
        "DEFAULT@SECLEVEL=0",
        &url,
    ]);
    assert_eq!(code, 35, "TLS 1.1 must fail the handshake: {err}");
    assert!(
        err.to_lowercase().contains("protocol version") || err.contains("alert"),
        "{err}"
    );

    // Plain HTTP to the TLS port: a plain 400 that says so, then the connection closes.
    let (code, out, err) = curl(&["--include", &format!("http://127.0.0.1:{}/v1/models", r.listen)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("tls_required") && out.contains("use https://"), "{out}");
    // Bytes that are neither TLS nor HTTP: closed, never a hang.
    let (answer, closed) = raw(r.listen, b"\x00\x01\x02garbage\r\n\r\n");
    assert!(closed && !answer.starts_with("HTTP/"), "{answer:?}");

    // A client that connects and says nothing holds the only place under max_connections
    // until the handshake timeout closes it; the next client waits, then is served.
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", r.listen)).await.unwrap();
    let (code, out, err) = curl(&["--cacert", ca, "--write-out", "%{http_code}", "-o", "/dev/null", &url]);
    assert_eq!((code, out.as_str()), (0, "200"), "{err}");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(15), async {
        use tokio::io::AsyncReadExt;
        let mut silent = silent;
        silent.read(&mut buf).await
    })
    .await
    .expect("the silent connection must be closed by the handshake timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        r.log().contains("connection cap reached"),
        "the TLS client waited behind the silent one: {}",
        r.log()
    );
}

/// A `cutover serve` with a TLS admin API (`admin.crt`) and a TLS service (`live.crt`).
struct TlsAdmin {
    dir: TempDir,
    admin: u16,
    token: String,
    _proc: Proc,
}

impl TlsAdmin {
    async fn start(pki: &Pki, blue: &Mock, green: &Mock) -> TlsAdmin {
        pki.write_leaf("admin", 10);
        pki.write_leaf("live", 11);
        let dir = TempDir::new("tls-admin");
        let services = static_service(&[blue], &[green], &pki.tls_line("live")).replace("{listen}", "127.0.0.1:0");
        let services = services.replace("{preview}", "127.0.0.1:0");
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\naddress_file = \"admin.addr\"\n{}\n\n[store]\npath = \"cutover.db\"\n\n{services}",
            pki.tls_line("admin")
        );
        let config = dir.path().join("cutover.toml");
        std::fs::write(&config, text).unwrap();
        let addresses = dir.path().join("addresses.json");
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(CUTOVER)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--addresses-file")
            .arg(&addresses)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let proc = Proc(Some(child));
        let bound: serde_json::Value = wait_for("cutover to write its addresses", Duration::from_secs(15), || {
            let text = std::fs::read_to_string(&addresses).ok();
            async move { text.and_then(|t| serde_json::from_str(&t).ok()) }
        })
        .await;
        let admin = bound["admin"]
            .as_str()
            .unwrap()
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .port();
        let token = std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        TlsAdmin {
            dir,
            admin,
            token,
            _proc: proc,
        }
    }

    fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = Command::new(CUTOVER)
            .args(args)
            .env_remove("CUTOVER_ADMIN")
            .env_remove("CUTOVER_CACERT")
            .env("CUTOVER_TOKEN", &self.token)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_over_tls_with_the_cli_and_cacert() {
    let pki = Pki::new();
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let a = TlsAdmin::start(&pki, &blue, &green).await;
    let https = format!("https://127.0.0.1:{}", a.admin);
    let ca = pki.ca.to_str().unwrap();

    let (code, out, err) = a.cli(&["switch", "chat", "green", "--admin", &https, "--cacert", ca], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = a.cli(
        &["status", "chat", "--json", "--admin", &https],
        &[("CUTOVER_CACERT", ca)],
    );
    assert_eq!(code, 0, "CUTOVER_CACERT: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["live"], "green", "{v}");

    // Without the CA the CLI refuses the router's certificate and says what to pass.
    let (code, _, err) = a.cli(&["status", "chat", "--admin", &https], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("certificate") && err.contains("--cacert"), "{err}");
    // `--config` finds the admin API and knows it is https.
    let cfg = a.dir.path().join("cutover.toml");
    let (code, out, err) = a.cli(
        &[
            "status",
            "chat",
            "--json",
            "--config",
            cfg.to_str().unwrap(),
            "--cacert",
            ca,
        ],
        &[],
    );
    assert_eq!(code, 0, "--config: {err}");
    assert!(out.contains("green"), "{out}");

    // curl over HTTP/2 to the admin API, and plain HTTP refused.
    let (code, out, err) = curl(&[
        "--cacert",
        ca,
        "--http2",
        "--write-out",
        " %{http_version}",
        &format!("{https}/healthz"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"status\":\"ok\"") && out.ends_with(" 2"), "{out}");
    let (code, out, _) = curl(&[&format!("http://127.0.0.1:{}/healthz", a.admin)]);
    assert!(code == 0 && out.contains("tls_required"), "{out}");
}

#[test]
fn check_names_file_line_and_key_of_a_missing_certificate_and_a_key_that_does_not_match() {
    let pki = Pki::new();
    pki.write_leaf("a", 1);
    pki.write_leaf("b", 2);
    let dir = TempDir::new("tls-check");
    let path = dir.path().join("cutover.toml");
    let check = |tls: &str| {
        let text = format!(
            "[services.chat]\nlisten = \"127.0.0.1:8080\"\n{tls}\n[services.chat.blue]\nendpoints = [\"127.0.0.1:9001\"]\n[services.chat.green]\nendpoints = [\"127.0.0.1:9002\"]\n"
        );
        std::fs::write(&path, text).unwrap();
        let out = Command::new(CUTOVER).arg("check").arg(&path).output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let p = |n: &str| pki.path(n).display().to_string();
    let (code, out) = check(&format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        p("a.crt"),
        p("a.key")
    ));
    assert_eq!(code, 0, "{out}");

    let (code, out) = check(&format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        p("gone.crt"),
        p("a.key")
    ));
    assert_eq!(code, 2, "{out}");
    let want = format!(
        "{}:3: key `services.chat.tls.cert`: cannot read the certificate file",
        path.display()
    );
    assert!(out.contains(&want), "{out}");

    let (code, out) = check(&format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        p("a.crt"),
        p("b.key")
    ));
    assert_eq!(code, 2, "{out}");
    let want = format!("{}:3: key `services.chat.tls.key`: the private key in", path.display());
    assert!(
        out.contains(&want) && out.contains("does not match the certificate"),
        "{out}"
    );

    // Relative paths are the config folder's.
    std::fs::copy(pki.path("a.crt"), dir.path().join("here.crt")).unwrap();
    std::fs::copy(pki.path("a.key"), dir.path().join("here.key")).unwrap();
    let (code, out) = check("tls = { cert = \"here.crt\", key = \"here.key\" }");
    assert_eq!(code, 0, "{out}");
}

/// A TLS model-server stand-in (`tests/tls/https_upstream.py`) with a certificate of `pki`
/// for localhost and 127.0.0.1, killed when dropped.
struct HttpsUpstream {
    port: u16,
    _proc: Proc,
}

impl HttpsUpstream {
    async fn start(pki: &Pki, version: &str, serial: u64) -> HttpsUpstream {
        let (cert, key) = pki.write_leaf(&format!("up-{version}"), serial);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tls/https_upstream.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([&cert, &key])
            .arg(version)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let out = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut l = String::new();
            std::io::BufReader::new(out).read_line(&mut l).unwrap();
            l
        })
        .await
        .unwrap();
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        HttpsUpstream {
            port,
            _proc: Proc(Some(child)),
        }
    }
}

/// A static service on two TLS upstreams named `localhost`, trusting `ca`.
fn https_service(blue: &HttpsUpstream, green: &HttpsUpstream, ca: &Path, extra: &str) -> String {
    format!(
        "[services.chat]\nlisten = \"{{listen}}\"\nhealth = {{ path = \"/health\", interval = \"200ms\", timeout = \"2s\" }}\n\
         upstream_tls = {{ ca_file = \"{}\" }}\n{extra}\n\
         [services.chat.blue]\nendpoints = [\"https://localhost:{}\"]\nversion = \"v1\"\n\n\
         [services.chat.green]\nendpoints = [\"https://localhost:{}\"]\nversion = \"v2\"\n",
        ca.display(),
        blue.port,
        green.port
    )
}

/// The endpoints of `color` in the service's status, once each is `healthy` (a bool).
async fn endpoints_when(r: &Router, color: &str, healthy: bool) -> serde_json::Value {
    wait_for(
        &format!("{color} healthy={healthy}"),
        Duration::from_secs(20),
        || async {
            let st = r.status().await;
            let eps = st["colors"][color]["endpoints"].clone();
            let all = eps
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(|e| e["healthy"] == healthy));
            all.then_some(eps)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_get_sni_by_name_a_checked_certificate_tls_probes_and_tls_release_steps() {
    let pki = Pki::new();
    let blue = HttpsUpstream::start(&pki, "v1", 21).await;
    let green = HttpsUpstream::start(&pki, "v2", 22).await;
    let smoke = "[[services.chat.release.smoke]]\nname = \"chat answers\"\nrequest = { method = \"POST\", path = \"/v1/chat/completions\", body = '{\"max_tokens\":1}' }\nexpect = { status = 200, json = { \"/model\" = \"v2\" } }\n";
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\nwarmup = {{ requests = 2, request = {{ method = \"POST\", path = \"/v1/chat/completions\", body = '{{}}' }} }}\n{smoke}",
        https_service(&blue, &green, &pki.ca, "")
    ))
    .await;
    let eps = endpoints_when(&r, "blue", true).await;
    assert_eq!(eps[0]["last_probe"]["ok"], true, "{eps}");
    assert_eq!(r.switch("blue").await.status, 200);

    let models = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(models.status, 200, "{}", models.text());
    assert_eq!(models.json()["model"], "v1");
    let c = http_client();
    let chat = send(&c, Method::POST, &r.url("/v1/chat/completions"), &[], "{}")
        .await
        .unwrap();
    assert_eq!((chat.status.as_u16(), chat.json()["model"].clone()), (200, "v1".into()));
    // The SNI is the host as configured, and the model server sees the client's Host.
    let tls = get(&r.url("/mock/tls")).await.unwrap().json();
    assert_eq!(tls["sni"], "localhost", "{tls}");
    assert_eq!(tls["alpn"], "http/1.1", "{tls}");
    assert_eq!(tls["host"], format!("127.0.0.1:{}", r.listen), "{tls}");

    // A release: warm-up and smoke checks call green's endpoint directly, over TLS.
    // (Verification then waits for traffic: the switch is what this test needs.)
    let id = r.release("v2").await;
    let d = r.wait_phase(id, "verifying", Duration::from_secs(60)).await;
    let detail = |phase: &str| {
        d["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == phase)
            .map(|p| p["detail"].to_string())
            .unwrap_or_default()
    };
    assert!(detail("warming_up").contains("2 requests"), "{d}");
    assert!(detail("smoke_testing").contains("1 check passed"), "{d}");
    assert_eq!(get(&r.url("/v1/models")).await.unwrap().json()["model"], "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_signed_by_another_ca_is_a_502_that_says_why_and_unhealthy_with_the_tls_error() {
    let pki = Pki::new();
    let other = Pki::new();
    let blue = HttpsUpstream::start(&pki, "v1", 31).await;
    let green = HttpsUpstream::start(&pki, "v2", 32).await;
    let r = Router::start(&https_service(&blue, &green, &other.ca, "")).await;
    let eps = endpoints_when(&r, "blue", false).await;
    let probe = &eps[0]["last_probe"];
    assert_eq!(probe["reason"], "tls", "{eps}");
    let msg = probe["message"].as_str().unwrap();
    assert!(msg.contains("TLS handshake") && msg.contains("UnknownIssuer"), "{msg}");

    let forced = r
        .api(
            Method::POST,
            "/v1/services/chat/switch",
            serde_json::json!({"to": "blue", "force": true}),
        )
        .await;
    assert_eq!(forced.status, 200, "{}", forced.text());
    let resp = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.header("x-cutover-error"), "upstream_tls_failed");
    let m = resp.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        m.contains("TLS handshake failed") && m.contains("UnknownIssuer") && m.contains("localhost"),
        "{m}"
    );
    let metrics = get(&r.admin_url("/metrics")).await.unwrap().text();
    assert!(
        metrics.lines().any(|l| l.starts_with("cutover_probe_failures_total{")
            && l.contains("reason=\"tls\"")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// An HTTP/2-over-TLS upstream in this process (hyper, ALPN h2 and http/1.1, a certificate of
/// `pki` for localhost): answers every request with JSON saying what it saw.
async fn h2_tls_upstream(pki: &Pki, version: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    let (cert, key) = pki.write_leaf(&format!("h2-{version}"), 40);
    let store = cutover_proxy::tls::CertStore::open("test", &cert, &key).unwrap();
    let acceptor = cutover_proxy::tls::acceptor(store);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let alpn = String::from_utf8_lossy(tls.get_ref().1.alpn_protocol().unwrap_or(b"none")).into_owned();
                let sni = tls.get_ref().1.server_name().unwrap_or("none").to_string();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let doc = serde_json::json!({
                        "model": version,
                        "alpn": alpn,
                        "sni": sni,
                        "http_version": format!("{:?}", req.version()),
                        "scheme": req.uri().scheme_str(),
                    });
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(doc.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_protocol_h2_to_https_endpoints_negotiates_h2_by_alpn() {
    let pki = Pki::new();
    let (blue, _b) = h2_tls_upstream(&pki, "v1").await;
    let (green, _g) = h2_tls_upstream(&pki, "v2").await;
    let r = Router::start(&format!(
        "[services.chat]\nlisten = \"{{listen}}\"\nupstream_protocol = \"h2\"\n\
         health = {{ path = \"/health\", interval = \"200ms\", timeout = \"2s\" }}\n\
         upstream_tls = {{ ca_file = \"{}\" }}\n\
         [services.chat.blue]\nendpoints = [\"https://localhost:{blue}\"]\nversion = \"v1\"\n\
         [services.chat.green]\nendpoints = [\"https://localhost:{green}\"]\nversion = \"v2\"\n",
        pki.ca.display()
    ))
    .await;
    endpoints_when(&r, "blue", true).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let seen = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(seen.status, 200, "{}", seen.text());
    let v = seen.json();
    assert_eq!(
        (
            v["model"].as_str(),
            v["alpn"].as_str(),
            v["sni"].as_str(),
            v["http_version"].as_str(),
            v["scheme"].as_str()
        ),
        (
            Some("v1"),
            Some("h2"),
            Some("localhost"),
            Some("HTTP/2.0"),
            Some("https")
        ),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_a_tls_listener_is_tunnelled_to_its_color_across_a_switch() {
    use crate::websocket::{blocking, EchoServer, Session};
    let pki = Pki::new();
    pki.write_leaf("live", 1);
    let blue = EchoServer::start("v1").await;
    let green = EchoServer::start("v2").await;
    let r = Router::start(&format!(
        "[services.chat]\nlisten = \"{{listen}}\"\n{}\nhealth = {{ path = \"/health\", interval = \"200ms\" }}\n\
         [services.chat.blue]\nendpoints = [\"127.0.0.1:{}\"]\nversion = \"v1\"\n\n\
         [services.chat.green]\nendpoints = [\"127.0.0.1:{}\"]\nversion = \"v2\"\n",
        pki.tls_line("live"),
        blue.port,
        green.port
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let url = format!("wss://127.0.0.1:{}/v1/realtime", r.listen);
    let ca = pki.ca.clone();

    let (u, c) = (url.clone(), ca.clone());
    let (a, reply) = blocking(move || {
        let mut a = Session::open_trusting(&u, Some(&c));
        let r = a.say("one");
        (a, r)
    })
    .await;
    assert_eq!(
        (a.color.as_str(), a.version.as_str(), reply.as_str()),
        ("blue", "v1", "v1:one")
    );
    assert_eq!(
        r.status().await["colors"]["blue"]["in_flight"],
        1,
        "an open session is in flight"
    );

    assert_eq!(r.switch("green").await.status, 200);
    let (u, c) = (url.clone(), ca.clone());
    let (b, b_reply) = blocking(move || {
        let mut b = Session::open_trusting(&u, Some(&c));
        let r = b.say("two");
        (b, r)
    })
    .await;
    assert_eq!(
        (b.color.as_str(), b_reply.as_str()),
        ("green", "v2:two"),
        "new sessions go to the new color"
    );
    let (reply, closed) = blocking(move || {
        let mut a = a;
        let r = a.say("three");
        (r, a.close())
    })
    .await;
    assert_eq!(reply, "v1:three", "the open session stays where it started");
    assert_eq!(closed, "closed 1000", "a clean close passes through");
    wait_for("blue's session to leave in-flight", Duration::from_secs(10), || async {
        (r.status().await["colors"]["blue"]["in_flight"] == 0).then_some(())
    })
    .await;
    assert_eq!(blocking(move || b.close()).await, "closed 1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_upgrade_hands_a_tls_listener_over_and_its_open_streams_finish() {
    let pki = Pki::new();
    let blue = Mock::start("v1", &["--token-interval", "20ms"]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = tls_router(&pki, &blue, &green, "").await;
    assert_eq!(r.switch("blue").await.status, 200);
    let cert = der_of(&std::fs::read_to_string(pki.path("live.crt")).unwrap());

    let (mut s, _) = tls_connect(r.listen, &pki.ca, true).await.unwrap();
    let resp = s
        .send(
            r.listen,
            Method::POST,
            "/v1/chat/completions",
            r#"{"stream":true,"max_tokens":150}"#,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let reading = tokio::spawn(read_stream(resp));

    let mut old = crate::upgrade::upgrade(&mut r).await;
    assert!(
        !reading.is_finished(),
        "the stream (about 3 s, within the 5 s grace) is still open after the hand-over"
    );
    // The new process answers TLS on the same port, with the same certificate.
    let (mut s2, presented) = tls_connect(r.listen, &pki.ca, false).await.unwrap();
    assert_eq!(presented, cert);
    let after = s2.send(r.listen, Method::GET, "/v1/models", "").await;
    assert_eq!(after.status(), 200);
    let (events, err) = reading.await.unwrap();
    assert!(err.is_none(), "the stream on the old process was cut: {err:?}");
    assert_eq!(stream_versions(&events).unwrap().len(), 151);
    assert_eq!(crate::upgrade::exit_code(&mut old), Some(0));
}

/// A TLS client that sends all of a 32 MiB upload past `max_body_bytes` before it reads
/// still reads its 413: the proxy drains the rest of the raw bytes after hyper answers,
/// instead of closing on them (a reset). Python's `ssl` is the client.
#[tokio::test]
async fn a_tls_upload_past_the_limit_is_answered_413_not_reset() {
    let pki = Pki::new();
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = tls_router(&pki, &blue, &green, "limits = { max_body_bytes = 65536 }").await;
    assert_eq!(r.switch("blue").await.status, 200);
    const PY: &str = r#"
import json, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20), server_hostname="localhost")
chunk = b"4000\r\n" + b"x" * 16384 + b"\r\n"
wrote = "ok"
try:
    s.sendall(b"POST /mock/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(2048):
        s.sendall(chunk)
    s.sendall(b"0\r\n\r\n")
except OSError as e:
    wrote = repr(e)
answer = b""
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        answer += d
except (OSError, ssl.SSLError) as e:
    pass
print(json.dumps({"wrote": wrote, "answer": answer.decode("latin-1")}))
"#;
    let out = Command::new("python3")
        .args(["-c", PY, &r.listen.to_string(), pki.ca.to_str().unwrap()])
        .output()
        .expect("python3");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["wrote"], "ok", "the proxy reset the connection mid-upload: {v}");
    let answer = v["answer"].as_str().unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{v}");
    assert!(answer.contains("body_too_large"), "{v}");
}
