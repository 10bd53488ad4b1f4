//! The client the control plane uses to talk to a color's endpoints directly (not through
//! the proxy), in the service's upstream protocol and over TLS to `https://` endpoints: for
//! release steps (warm-up, smoke checks), external scrape gates and standby sleep/wake.

use std::net::SocketAddr;

use bytes::Bytes;
use cutover_proxy::tls::EndpointConnector;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::ServiceCtl;

/// A client that talks to the color's endpoints directly (not through the proxy), in the
/// service's upstream protocol, over TLS to `https://` endpoints.
#[derive(Clone)]
pub(crate) struct StepClient {
    pub(crate) http: Client<EndpointConnector, Full<Bytes>>,
    pub(crate) scheme: &'static str,
}

pub(crate) fn client(svc: &ServiceCtl) -> StepClient {
    let settings = svc.proxy.settings();
    let mut b = Client::builder(TokioExecutor::new());
    if settings.protocol == cutover_proxy::Protocol::H2c {
        b.http2_only(true);
    }
    // Each address's certificate name (the host as configured), for both colors' endpoints.
    let names = cutover_proxy::Color::ALL
        .into_iter()
        .filter_map(|c| svc.route(c))
        .flat_map(|r| {
            r.endpoints()
                .iter()
                .filter_map(|e| e.tls_name().map(|n| (e.addr, n.clone())))
                .collect::<Vec<_>>()
        })
        .collect();
    let connector = EndpointConnector::new(settings.upstream_tls.clone(), names, settings.connect_timeout);
    StepClient {
        scheme: connector.scheme(),
        http: b.build(connector),
    }
}

impl StepClient {
    /// The URI of `path` on one endpoint, in the service's scheme.
    pub(crate) fn uri(&self, addr: SocketAddr, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }

    /// Sends a request built by the caller (the shadow's mirrored copies).
    pub(crate) async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.http.request(req).await.map_err(|e| e.to_string())
    }
}
