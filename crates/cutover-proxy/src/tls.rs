//! TLS with rustls on the ring provider: listener configs whose certificate comes from a
//! [`CertStore`] that is replaced without dropping a connection, and client configs for HTTPS
//! upstreams, the CLI and fleet mode's etcd client (whose CA file, a [`CaStore`], and client
//! certificate are re-read like a listener's certificate).
//!
//! Protocols are TLS 1.3 and 1.2 only (rustls has nothing older, and no renegotiation at all);
//! cipher suites are rustls' defaults for ring. A certificate pair is checked whole before it
//! is used: every PEM block parses, the key loads, and the key is the certificate's. A pair
//! that fails (a half-renewed one among them) leaves the one in use in place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::{ClientConfig, ResolvesClientCert};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN names offered by listeners, preferred first.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// How often a `serve` looks at its certificate files.
pub const POLL_EVERY: Duration = Duration::from_secs(3);

/// The one crypto provider of the process: ring (aws-lc-rs, rustls' default, builds C with cmake: minutes of CI on two cores).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Which file of a certificate pair an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    Cert,
    Key,
}

impl PairFile {
    /// The config key under a `tls` table: `cert` or `key`.
    pub fn key(self) -> &'static str {
        match self {
            PairFile::Cert => "cert",
            PairFile::Key => "key",
        }
    }
}

/// Reads a certificate chain and its private key (PEM) and checks they belong together.
/// The error names the file and says what is wrong with it.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    check_pair(cert, key).map_err(|(_, m)| m)
}

/// [`load_pair`], the error also saying which of the two files is wrong (cutover-config
/// checks a config's pairs with it and reports the key of that file).
pub fn check_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, (PairFile, String)> {
    let c = |m: String| (PairFile::Cert, m);
    let k = |m: String| (PairFile::Key, m);
    let cert_pem =
        std::fs::read(cert).map_err(|e| c(format!("cannot read the certificate file {}: {e}", cert.display())))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| c(format!("{}: not a PEM certificate file: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(c(format!(
            "{} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)",
            cert.display()
        )));
    }
    let key_pem = std::fs::read(key).map_err(|e| k(format!("cannot read the key file {}: {e}", key.display())))?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => k(format!(
            "{} holds no private key (expected a PEM \"-----BEGIN PRIVATE KEY-----\", RSA or EC key block)",
            key.display()
        )),
        e => k(format!("{}: not a PEM private key file: {e}", key.display())),
    })?;
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| k(format!("{}: unusable private key: {e}", key.display())))?;
    let pair = CertifiedKey::new(chain, signer);
    match pair.keys_match() {
        // Unknown: the key cannot tell its public half (never for ring's keys); nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(pair),
        Err(rustls::Error::InconsistentKeys(_)) => Err(k(format!(
            "the private key in {} does not match the certificate in {} (the first certificate must be the one the key signs for)",
            key.display(),
            cert.display()
        ))),
        Err(e) => Err(c(format!("{}: the certificate cannot be parsed: {e}", cert.display()))),
    }
}

/// What a file looked like at one poll: a change to any part means it was rewritten or
/// replaced (an ACME client renames a new file over the old one: a new inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(p: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Reloads counted by outcome, for `cutover_tls_reloads_total{result}` (all stores of the process).
#[derive(Debug, Default)]
pub struct ReloadCounts {
    /// A new pair was loaded and is presented to new connections.
    pub loaded: AtomicU64,
    /// The files were read again and held the pair already in use.
    pub unchanged: AtomicU64,
    /// The new files did not make a valid pair; the old one stays.
    pub failed: AtomicU64,
}

/// The process's reload counts.
pub fn reload_counts() -> &'static ReloadCounts {
    static C: ReloadCounts = ReloadCounts {
        loaded: AtomicU64::new(0),
        unchanged: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    };
    &C
}

/// The certificate one listener (or a service's live and preview listeners) presents, read
/// from a cert and a key file and replaced whole when they change. Handshakes read it with one
/// atomic load; connections already open keep the keys they agreed on.
pub struct CertStore {
    /// The config key it comes from (`services.chat.tls`, `admin.tls`), for logs.
    pub name: String,
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The files as last read, whether or not that read made a valid pair: a broken pair is
    /// reported once, not at every poll. Held for the whole of a reload, so two reloads (a
    /// poll and a SIGHUP) never interleave.
    seen: Mutex<(Option<Stamp>, Option<Stamp>)>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("name", &self.name)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair; an error says which file is wrong and how.
    pub fn open(name: impl Into<String>, cert: &Path, key: &Path) -> Result<Arc<CertStore>, String> {
        // Stamped before reading: a change while we read is seen by the next poll.
        let seen = (stamp(cert), stamp(key));
        let pair = load_pair(cert, key)?;
        Ok(Arc::new(CertStore {
            name: name.into(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(pair),
            seen: Mutex::new(seen),
        }))
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Reads both files again. `Ok(true)`: a new pair is in use for new connections;
    /// `Ok(false)`: the files hold the pair already in use; `Err`: the new files are not a
    /// valid pair (the reason is logged and returned) and the old pair stays in use.
    ///
    /// Blocking file reads of a few kilobytes: call it off the async workers where that matters.
    pub fn reload(&self) -> Result<bool, String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_locked(&mut seen)
    }

    /// Reloads only when a file changed since it was last read; `None`: nothing changed.
    pub fn poll(&self) -> Option<Result<bool, String>> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == (stamp(&self.cert), stamp(&self.key)) {
            return None;
        }
        Some(self.reload_locked(&mut seen))
    }

    fn reload_locked(&self, seen: &mut (Option<Stamp>, Option<Stamp>)) -> Result<bool, String> {
        *seen = (stamp(&self.cert), stamp(&self.key));
        let counts = reload_counts();
        match load_pair(&self.cert, &self.key) {
            Ok(pair) => {
                if pair.cert == self.current.load().cert {
                    counts.unchanged.fetch_add(1, Relaxed);
                    return Ok(false);
                }
                self.current.store(Arc::new(pair));
                counts.loaded.fetch_add(1, Relaxed);
                tracing::info!(
                    tls = %self.name,
                    cert = %self.cert.display(),
                    "TLS certificate reloaded: new connections get the new one, open ones keep theirs"
                );
                Ok(true)
            }
            Err(e) => {
                counts.failed.fetch_add(1, Relaxed);
                tracing::warn!(
                    tls = %self.name,
                    error = %e,
                    "TLS certificate not reloaded: keeping the one in use (a renewal that replaces the cert and the key one after the other passes through this state)"
                );
                Err(e)
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A listener's server config: TLS 1.3 and 1.2, ALPN h2 then http/1.1, the certificate of
/// `store` at each handshake.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(store);
    c.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Arc::new(c)
}

/// A client presents the same pair a listener would: fleet mode's etcd client gives etcd the
/// store's current certificate at each handshake, so a renewed pair is used by the next
/// connection without a restart.
impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

pub fn acceptor(store: Arc<CertStore>) -> TlsAcceptor {
    TlsAcceptor::from(server_config(store))
}

/// TLS to a service's `https://` endpoints: a connector with the service's roots and ALPN,
/// or why there is none (every connection then fails with that reason).
#[derive(Clone)]
pub struct UpstreamTls {
    connector: Result<TlsConnector, Arc<str>>,
    /// Where the roots come from (`/etc/cutover/ca.pem`, `system roots`) and the ALPN: what
    /// `Debug` shows, so two settings compare equal when they would verify alike.
    what: String,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamTls({})", self.what)
    }
}

impl UpstreamTls {
    /// Roots from `ca_file`, else the system's; ALPN `h2` for HTTP/2 upstreams, else
    /// `http/1.1`. A failure to load the roots is logged and kept as the connect error.
    pub fn new(ca_file: Option<&Path>, h2: bool) -> UpstreamTls {
        let what = format!(
            "{} alpn={}",
            ca_file.map_or_else(|| "system roots".to_string(), |p| p.display().to_string()),
            if h2 { "h2" } else { "http/1.1" }
        );
        let alpn: &[&[u8]] = if h2 { &[ALPN_H2] } else { &[ALPN_HTTP1] };
        let connector = match roots(ca_file) {
            Ok(r) => Ok(TlsConnector::from(client_config(r, alpn))),
            Err(e) => {
                tracing::error!(error = %e, "no roots to verify https:// endpoints with: every connection to them will fail");
                Err(e.into())
            }
        };
        UpstreamTls { connector, what }
    }

    /// A TLS session over `tcp` with the endpoint that must present a certificate for `name`.
    pub async fn connect(
        &self,
        name: &ServerName<'static>,
        tcp: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let c = self.connector.as_ref().map_err(|e| e.to_string())?;
        c.connect(name.clone(), tcp).await.map_err(|e| {
            // rustls' errors arrive wrapped in io::Error; the inner text is the useful part.
            let inner = e.get_ref().map(|i| i.to_string()).unwrap_or_else(|| e.to_string());
            format!("{inner} (expecting a certificate for {})", show(name))
        })
    }
}

fn show(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "the endpoint".into(),
    }
}

/// A connector for hyper-util's client that dials endpoints directly (a release's warm-up
/// and smoke checks), over TLS when the service's endpoints are `https://`. The URI's host
/// is the endpoint's address; `names` gives the certificate name of each address.
#[derive(Clone)]
pub struct EndpointConnector {
    tls: Option<UpstreamTls>,
    names: Arc<std::collections::HashMap<std::net::SocketAddr, ServerName<'static>>>,
    connect_timeout: Duration,
}

impl EndpointConnector {
    pub fn new(
        tls: Option<UpstreamTls>,
        names: std::collections::HashMap<std::net::SocketAddr, ServerName<'static>>,
        connect_timeout: Duration,
    ) -> EndpointConnector {
        EndpointConnector {
            tls,
            names: Arc::new(names),
            connect_timeout,
        }
    }

    /// `https` when connections are TLS, for the URIs of requests through it.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for EndpointConnector {
    type Response = EndpointStream;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<EndpointStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let ip: std::net::IpAddr = host.parse().map_err(|_| format!("{uri}: not an endpoint address"))?;
            let addr = std::net::SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
            let connect = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                let Some(tls) = &this.tls else {
                    return Ok::<_, BoxError>(EndpointStream::Plain(hyper_util::rt::TokioIo::new(tcp)));
                };
                let name = this
                    .names
                    .get(&addr)
                    .cloned()
                    .unwrap_or_else(|| ServerName::IpAddress(ip.into()));
                let s = tls
                    .connect(&name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                Ok(EndpointStream::Tls(Box::new(hyper_util::rt::TokioIo::new(s))))
            };
            tokio::time::timeout(this.connect_timeout, connect)
                .await
                .map_err(|_| format!("connect to {addr} timed out"))?
        })
    }
}

/// A connection [`EndpointConnector`] made.
pub enum EndpointStream {
    Plain(hyper_util::rt::TokioIo<tokio::net::TcpStream>),
    /// Boxed: a TLS session's state is a kilobyte, a plain socket's a few words.
    Tls(Box<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

impl hyper_util::client::legacy::connect::Connection for EndpointStream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        let c = hyper_util::client::legacy::connect::Connected::new();
        match self {
            EndpointStream::Tls(s) if s.inner().get_ref().1.alpn_protocol() == Some(ALPN_H2) => c.negotiated_h2(),
            _ => c,
        }
    }
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            EndpointStream::Plain($s) => $e,
            EndpointStream::Tls(b) => {
                let $s = &mut **b;
                $e
            }
        }
    };
}

impl hyper::rt::Read for EndpointStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => std::pin::Pin::new(s).poll_read(cx, buf))
    }
}

impl hyper::rt::Write for EndpointStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        both!(self, s => std::pin::Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => std::pin::Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => std::pin::Pin::new(s).poll_shutdown(cx))
    }
}

/// The name an endpoint's certificate must carry: the host of the configured `HOST:PORT`
/// (`name`, `[v6]:port` included), else the address's IP.
pub fn endpoint_name(name: Option<&str>, addr: std::net::SocketAddr) -> ServerName<'static> {
    name.and_then(|n| n.rsplit_once(':').map(|(h, _)| h))
        .and_then(|h| server_name(h).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}

/// The system's roots, read once per process (a few hundred certificates).
fn system_roots() -> Result<RootCertStore, String> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                return Err(format!(
                    "no system root certificates found (install ca-certificates, or name a CA file){why}"
                ));
            }
            Ok(roots)
        })
        .clone()
}

/// Roots to verify servers with: the PEM certificates of `ca_file`, or else the system's
/// (`SSL_CERT_FILE` / `SSL_CERT_DIR`, else the distribution's bundle under /etc/ssl).
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| format!("cannot read the CA file {}: {e}", p.display()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: not a PEM certificate file: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "{} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)",
                    p.display()
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: a certificate cannot be used as a root: {e}", p.display()))?;
            }
        }
        None => return system_roots(),
    }
    Ok(roots)
}

/// The CA(s) a client verifies servers with, read from a PEM file and replaced whole when
/// it changes (the rule of [`CertStore`]: polled, read again on reload, a file that does not
/// parse leaves the CAs in use). Handshakes read it with one atomic load.
pub struct CaStore {
    /// The config key it comes from (`store.tls.ca`), for logs.
    pub name: String,
    path: PathBuf,
    /// The verifier of the CAs in use, and their certificates (to tell a reload that changed
    /// nothing).
    current: ArcSwap<(Arc<rustls::client::WebPkiServerVerifier>, Vec<CertificateDer<'static>>)>,
    seen: Mutex<Option<Stamp>>,
}

impl std::fmt::Debug for CaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaStore")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

type Verified = (Arc<rustls::client::WebPkiServerVerifier>, Vec<CertificateDer<'static>>);

fn ca_verifier(path: &Path) -> Result<Verified, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    let roots = roots(Some(path))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("{}: no usable CA: {e}", path.display()))?;
    Ok((verifier, certs))
}

impl CaStore {
    /// Loads the CA file; an error says what is wrong with it.
    pub fn open(name: impl Into<String>, path: &Path) -> Result<Arc<CaStore>, String> {
        let seen = stamp(path);
        let current = ca_verifier(path)?;
        Ok(Arc::new(CaStore {
            name: name.into(),
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(current),
            seen: Mutex::new(seen),
        }))
    }

    /// Reads the file again: `Ok(true)` new CAs verify new connections, `Ok(false)` the
    /// same ones, `Err` the file is not usable (logged) and the CAs in use stay.
    pub fn reload(&self) -> Result<bool, String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_locked(&mut seen)
    }

    /// Reloads only when the file changed since it was last read; `None`: nothing changed.
    pub fn poll(&self) -> Option<Result<bool, String>> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == stamp(&self.path) {
            return None;
        }
        Some(self.reload_locked(&mut seen))
    }

    fn reload_locked(&self, seen: &mut Option<Stamp>) -> Result<bool, String> {
        *seen = stamp(&self.path);
        let counts = reload_counts();
        match ca_verifier(&self.path) {
            Ok(v) if v.1 == self.current.load().1 => {
                counts.unchanged.fetch_add(1, Relaxed);
                Ok(false)
            }
            Ok(v) => {
                self.current.store(Arc::new(v));
                counts.loaded.fetch_add(1, Relaxed);
                tracing::info!(tls = %self.name, ca = %self.path.display(), "CA file reloaded: new connections are verified with it");
                Ok(true)
            }
            Err(e) => {
                counts.failed.fetch_add(1, Relaxed);
                tracing::warn!(tls = %self.name, error = %e, "CA file not reloaded: keeping the CAs in use");
                Err(e)
            }
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for CaStore {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.current
            .load()
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current.load().0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current.load().0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current.load().0.supported_verify_schemes()
    }
}

/// A client config that verifies servers with the CAs of `ca` as they are at each handshake
/// and presents `cert`'s current pair when asked, offering `alpn`.
pub fn client_config_with_stores(ca: Arc<CaStore>, cert: Option<Arc<CertStore>>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(ca);
    let mut c = match cert {
        Some(store) => builder.with_client_cert_resolver(store),
        None => builder.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A client config that verifies servers against `roots`, offering `alpn` (empty: none).
pub fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_config_with_cert(roots, None, alpn)
}

/// [`client_config`] that also presents `cert`'s current pair when the server asks for one.
pub fn client_config_with_cert(
    roots: RootCertStore,
    cert: Option<Arc<CertStore>>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    let mut c = match cert {
        Some(store) => builder.with_client_cert_resolver(store),
        None => builder.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// The name a server's certificate must carry: a DNS name or an IP address, as written.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| format!("{host:?} is not a DNS name or IP address for TLS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, tag: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let (cert, key) = (dir.join(format!("{tag}.crt")), dir.join(format!("{tag}.key")));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cutover-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_by_name() {
        let d = tmp("mismatch");
        let (cert, _) = pair(&d, "a", &["localhost"]);
        let (_, other_key) = pair(&d, "b", &["localhost"]);
        let e = load_pair(&cert, &other_key).unwrap_err();
        assert!(e.contains("does not match the certificate"), "{e}");
        assert!(e.contains("b.key") && e.contains("a.crt"), "{e}");
        let e = load_pair(&d.join("missing.crt"), &other_key).unwrap_err();
        assert!(
            e.contains("cannot read the certificate file") && e.contains("missing.crt"),
            "{e}"
        );
        std::fs::write(d.join("empty.crt"), "not pem\n").unwrap();
        let e = load_pair(&d.join("empty.crt"), &other_key).unwrap_err();
        assert!(e.contains("holds no certificate"), "{e}");
        let e = load_pair(&cert, &cert).unwrap_err();
        assert!(e.contains("holds no private key"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_store_keeps_its_pair_through_a_half_renewal_and_takes_the_whole_one() {
        let d = tmp("renew");
        let (cert, key) = pair(&d, "live", &["localhost"]);
        let store = CertStore::open("services.chat.tls", &cert, &key).unwrap();
        let first = store.current().cert.clone();
        assert!(store.poll().is_none(), "nothing changed");
        assert_eq!(store.reload(), Ok(false), "same files, same pair");

        // An ACME client renames the new certificate in first, then the new key.
        let (new_cert, new_key) = pair(&d, "next", &["localhost", "chat.example"]);
        std::fs::rename(&new_cert, &cert).unwrap();
        let e = store.poll().expect("the cert file changed").unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        assert_eq!(store.current().cert, first, "the old pair stays in use");
        assert!(
            store.poll().is_none(),
            "a broken pair is reported once, not at every poll"
        );
        std::fs::rename(&new_key, &key).unwrap();
        assert_eq!(store.poll(), Some(Ok(true)));
        assert_ne!(store.current().cert, first);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_ca_store_keeps_its_cas_through_a_broken_file_and_takes_a_new_one() {
        let d = tmp("ca");
        let (first, _) = pair(&d, "ca1", &["ca1"]);
        let path = d.join("ca.pem");
        std::fs::copy(&first, &path).unwrap();
        let store = CaStore::open("store.tls.ca", &path).unwrap();
        let before = store.current.load().1.clone();
        assert!(store.poll().is_none(), "nothing changed");
        assert_eq!(store.reload(), Ok(false));
        std::fs::write(&path, "half written").unwrap();
        let e = store.poll().expect("the file changed").unwrap_err();
        assert!(e.contains("holds no certificate"), "{e}");
        assert_eq!(store.current.load().1, before, "the CAs in use stay");
        let (second, _) = pair(&d, "ca2", &["ca2"]);
        std::fs::copy(&second, &path).unwrap();
        assert_eq!(store.reload(), Ok(true));
        assert_ne!(store.current.load().1, before);
        let _ = std::fs::remove_dir_all(&d);
    }
}
