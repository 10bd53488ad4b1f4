//! How the etcd client reaches its members: TLS to `https://` members (the CA to trust and a
//! client certificate to present) and etcd's own user, whose token goes with every call.
//!
//! The certificate files are read by `cutover_proxy::tls` (one copy of the PEM handling in
//! the workspace): the client certificate comes from a `CertStore`, the same kind the
//! listeners use, and the CA file from a `CaStore`, so whoever polls and reloads those also
//! renews what etcd sees and what etcd is checked with.
//!
//! etcd's JSON gateway never takes the user from a certificate's Common Name: with
//! `--client-cert-auth` and auth enabled it refuses any certificate that has a CN
//! (etcd-io/etcd#10366). Through the gateway, the certificate proves the client may connect;
//! the user and password name who it is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cutover_proxy::tls::{self, CaStore, CertStore, EndpointStream, TlsConnector};
use hyper_util::rt::TokioIo;

/// What a client needs besides the members' addresses. `Default`: plain HTTP, no user.
#[derive(Clone, Default)]
pub struct Access {
    /// `Some`: the members are `https://`, verified (and the client authenticated) by this.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// etcd's own user (`etcdctl auth enable`): authenticated once, then its token is sent
    /// with every call and renewed when etcd says it is no longer valid.
    pub user: Option<Credentials>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("https", &self.tls.is_some())
            .field("client_cert", &self.has_client_cert())
            .field("user", &self.user.as_ref().map(|u| &u.name))
            .finish()
    }
}

impl Access {
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn has_client_cert(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|c| c.client_auth_cert_resolver.has_certs())
    }
}

/// An etcd user. The password stays in its file: it is read at each authentication (a
/// rotated password is picked up by the next one) and never kept, logged or shown.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub name: String,
    pub password_file: PathBuf,
}

impl Credentials {
    /// The password: the file's first line.
    pub(crate) fn password(&self) -> Result<String, String> {
        let text = std::fs::read_to_string(&self.password_file).map_err(|e| {
            format!(
                "cannot read the etcd password file {}: {e}",
                self.password_file.display()
            )
        })?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(format!(
                "the etcd password file {} is empty",
                self.password_file.display()
            ));
        }
        Ok(line)
    }
}

/// The TLS settings of `https://` members: trust the CA(s) of `ca` as the store holds them
/// at each handshake (else the system's roots) and present `cert`'s pair when a member asks
/// for a client certificate. HTTP/1.1 only: each watch stream keeps its own connection, as
/// over plain HTTP.
pub fn tls_config(ca: Option<Arc<CaStore>>, cert: Option<Arc<CertStore>>) -> Result<Arc<rustls::ClientConfig>, String> {
    match ca {
        Some(ca) => Ok(tls::client_config_with_stores(ca, cert, &[tls::ALPN_HTTP1])),
        None => Ok(tls::client_config_with_cert(
            tls::roots(None)?,
            cert,
            &[tls::ALPN_HTTP1],
        )),
    }
}

/// Why a connection to a member failed, with a hint when it is the client certificate: a
/// member that requires one and got none (or one it does not trust) ends the handshake with
/// an alert, which without the hint reads like a network fault.
pub(crate) fn explain(detail: String, access: &Access) -> String {
    if detail.contains("UnknownIssuer") {
        return format!("{detail} (the member's certificate is not signed by a CA of the configured CA file)");
    }
    if detail.contains("NotValidForName") {
        return format!("{detail} (the member's certificate does not name the host as the etcd URL writes it)");
    }
    let refused = [
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "certificate required",
    ];
    if !refused.iter().any(|r| detail.contains(r)) {
        return detail;
    }
    if access.has_client_cert() {
        format!("{detail} (etcd refused the client certificate presented: is it signed by a CA in etcd's --trusted-ca-file, and still valid?)")
    } else {
        format!("{detail} (etcd requires a client certificate and none is configured)")
    }
}

/// `e` and every error beneath it: hyper's own text ("client error (Connect)") hides the
/// part that says what went wrong.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Dials a member's `host:port` (a name or an address), then TLS when the members are
/// `https://`, checking the member's certificate against the host as written.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(access: &Access, timeout: Duration) -> Connector {
        Connector {
            tls: access.tls.clone().map(TlsConnector::from),
            timeout,
        }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = EndpointStream;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<EndpointStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_string();
            let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(2379);
            let connect = async {
                let tcp = tokio::net::TcpStream::connect((bare.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                let Some(tls) = &this.tls else {
                    return Ok::<_, BoxError>(EndpointStream::Plain(TokioIo::new(tcp)));
                };
                let name = tls::server_name(&bare)?;
                let s = tls.connect(name, tcp).await.map_err(|e| {
                    // rustls' error arrives inside an io::Error; its text is the useful part.
                    let inner = e.get_ref().map(|i| i.to_string()).unwrap_or_else(|| e.to_string());
                    format!("TLS handshake with {host}:{port} failed: {inner}")
                })?;
                Ok(EndpointStream::Tls(Box::new(TokioIo::new(s))))
            };
            tokio::time::timeout(this.timeout, connect)
                .await
                .map_err(|_| format!("connect to {host}:{port} timed out"))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_handshake_says_whether_a_certificate_was_missing() {
        let plain = Access::default();
        let e = explain("received fatal alert: CertificateRequired".into(), &plain);
        assert!(
            e.contains("requires a client certificate and none is configured"),
            "{e}"
        );
        let other = explain("connection refused".into(), &plain);
        assert_eq!(other, "connection refused");
    }

    #[test]
    fn the_password_is_the_files_first_line_and_an_empty_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("cutover-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = Credentials {
            name: "router".into(),
            password_file: f.clone(),
        };
        assert_eq!(c.password().unwrap(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        let e = c.password().unwrap_err();
        assert!(e.contains("is empty") && !e.contains("s3cret"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
