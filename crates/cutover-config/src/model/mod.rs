//! The typed model: what a config is once it is read and checked. Every value has its type
//! (addresses, durations, paths made absolute) and every default is filled in; the
//! sections with more than a few keys have a file of their own, each default beside its
//! field.

mod external;
mod health;
mod limits;
mod release;
mod run;
mod shadow;
mod traffic;
mod webhooks;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use crate::value::{Duration, EndpointSpec};

pub use external::{PrometheusGate, Reduce, ScrapeGate};
pub use health::{Expect, HealthConfig, ProbeConfig, ProbeKind, RequestSpec};
pub use limits::LimitsConfig;
pub use release::{
    HooksConfig, OnInconclusive, Promotion, ReleaseConfig, SmokeConfig, Standby, VerifyConfig, WarmupConfig,
};
pub use run::{ColorPorts, RestartPolicy, RunConfig, PLACEHOLDERS};
pub use shadow::{ShadowConfig, ShadowInconclusive, ShadowThresholds};
pub use traffic::{tokens_of, HeaderRouteConfig, Step, StickyConfig, Traffic};
pub(crate) use webhooks::invalid_url;
pub use webhooks::{ApprovalWebhookConfig, WebhookConfig, WEBHOOK_EVENTS};

/// The whole configuration after validation. Paths are absolute (resolved against the
/// config file's folder).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub services: BTreeMap<String, ServiceConfig>,
    /// Shared listeners (`[listeners.NAME]`): one address for the services that name it.
    pub listeners: BTreeMap<String, ListenerConfig>,
}

/// A shared listener: one address whose requests go to the service their Host, path or
/// OpenAI `model` field matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// The listener speaks TLS only, with this certificate (as a service's `tls`).
    pub tls: Option<TlsConfig>,
}

/// How a service on a shared listener is chosen for a request. Host and path prefix are
/// read from the head; the model from the first bytes of a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMatch {
    /// The `[listeners.NAME]` this service takes its requests from.
    pub listener: String,
    /// OpenAI model names (the request body's `model` field) this service answers.
    pub model: Vec<String>,
    /// The `Host` (without port, lowercase) this service answers.
    pub host: Option<String>,
    /// The path prefix this service answers (the longest matching prefix wins).
    pub path_prefix: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Port 0: the kernel picks one; `serve` reports it (log, `address_file`).
    pub listen: SocketAddr,
    pub token_file: PathBuf,
    /// Named tokens with roles (hashed); a missing file holds none. Re-read by `serve` when
    /// it changes.
    pub tokens_file: PathBuf,
    /// Where `serve` writes the admin address it bound, and where clients given `--config`
    /// read it when `listen` says port 0.
    pub address_file: Option<PathBuf>,
    /// The admin API speaks HTTPS only, with this certificate.
    pub tls: Option<TlsConfig>,
}

/// The defaults of `[admin]`: loopback only, files next to the config.
impl AdminConfig {
    pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));
    pub const TOKEN_FILE: &'static str = "admin.token";
    pub const TOKENS_FILE: &'static str = "tokens.toml";
}

/// How cutover checks the certificates of `https://` endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// PEM file of the CA(s) to trust, checked at load; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// A listener's certificate chain and private key (PEM files, paths absolute), checked when
/// the config loads: both parse and the key is the certificate's. `serve` reads them again
/// when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite file: the whole state, or in fleet mode this router's snapshot of it.
    pub path: PathBuf,
    /// Folder for managed processes' logs and other runtime files (default: next to the store).
    pub data_dir: PathBuf,
    /// Fleet mode (`url = "etcd://..."`): the routing state is shared through etcd.
    pub fleet: Option<FleetConfig>,
}

/// The defaults of `[store]`: files next to the config.
impl StoreConfig {
    pub const PATH: &'static str = "cutover.db";
    /// Beside the store file, whatever its name.
    pub const DATA_DIR: &'static str = "cutover-data";
}

/// `[store] url`, `fleet`, `router_id`, `ack_timeout`: this router's place in a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Each etcd member's `host:port`, in the order of `url`.
    pub members: Vec<String>,
    /// The fleet's name: its keys live under `/cutover/<name>/`.
    pub name: String,
    /// `None`: `<hostname>-<admin port>`, decided once the admin listener is bound.
    pub router_id: Option<String>,
    /// How long a switch waits for every live router's ack before answering.
    pub ack_timeout: Duration,
    /// `Some` when the members are `https://` (`[store] tls`).
    pub tls: Option<EtcdTls>,
    /// etcd's own user (`[store] username`, `password_file`).
    pub user: Option<EtcdUser>,
}

impl FleetConfig {
    /// A switch answers within a few seconds even when a router is away.
    pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
}

/// TLS to `https://` etcd members. Paths are absolute and were checked at load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdTls {
    /// PEM CA(s) that signed the members' certificates; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// The certificate and key presented to members started with `--client-cert-auth`;
    /// read again when the files change, as the listeners' are.
    pub client: Option<TlsConfig>,
}

/// An etcd user (`etcdctl user add`): its token is asked for with the password in `password_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUser {
    pub name: String,
    /// Read at each authentication, never kept: a password is never written in a config.
    pub password_file: PathBuf,
}

/// The upstream protocol a service's model servers speak (`"http1"`, `"h2c"` or `"h2"`).
pub use cutover_types::Protocol as UpstreamProtocol;

/// `http1_engine`: `"own"` or `"hyper"`.
pub use cutover_types::Http1Engine;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    /// The service's own listener, or the shared listener's address when `shared` is set.
    pub listen: SocketAddr,
    /// Set when the service takes its requests from a shared listener (`listener = "NAME"`).
    pub shared: Option<SharedMatch>,
    pub preview_listen: Option<SocketAddr>,
    /// Both listeners (`listen` and `preview_listen`) speak TLS only, with this certificate.
    pub tls: Option<TlsConfig>,
    /// The endpoints are `https://` (all of them: TLS to upstreams is per service).
    pub upstream_tls: Option<UpstreamTls>,
    pub upstream_protocol: UpstreamProtocol,
    /// The engine of HTTP/1.1 clients over HTTP/1.1 upstreams: cutover's own (default) or hyper.
    pub http1_engine: Http1Engine,
    /// One log line per request; off by default.
    pub access_log: bool,
    /// `x-cutover-color` and `x-cutover-version` on every answer to a client; on by default
    /// (`response_headers = false` keeps which color served a request private).
    pub response_headers: bool,
    /// Peers (address, prefix length) whose forwarding headers are kept.
    pub trusted_proxies: Vec<(std::net::IpAddr, u8)>,
    /// The master switch for re-sending a non-idempotent request after a reused keep-alive
    /// connection died under it before any answer: when on, such a request goes once more
    /// if it has an `Idempotency-Key` or its path is in `retry_paths`.
    pub retry_non_idempotent: bool,
    /// Paths whose non-idempotent requests have no side effect (generations, embeddings,
    /// tokenization), exact and without the query.
    pub retry_paths: Vec<String>,
    /// `Upgrade` protocols the service tunnels after a 101, lowercase; never `h2c`.
    pub upgrade_protocols: Vec<String>,
    /// How often endpoint names (`gpu-a.internal:8000`) are resolved again.
    pub resolve_interval: Duration,
    pub health: HealthConfig,
    pub limits: LimitsConfig,
    pub environments: Environments,
    pub release: ReleaseConfig,
}

/// The defaults of a service's own keys (its tables' defaults are beside their fields, in
/// their files). The raw service reads each key as an `Option`; these fill the gaps.
impl ServiceConfig {
    /// `x-cutover-color` is on unless a service keeps its colors private.
    pub const RESPONSE_HEADERS: bool = true;
    /// A generation has no side effect beyond its cost; a 502 for a request the server
    /// never read (it closed the idle connection as the request arrived) is worse. Which
    /// requests count as generations is `retry_paths`.
    pub const RETRY_NON_IDEMPOTENT: bool = true;
    pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(10);
    /// The side-effect-free inference paths of OpenAI-style servers, vLLM, SGLang, TGI, TEI
    /// and llama.cpp's server: generating, embedding, scoring and tokenizing change nothing
    /// on the server. Not `/v1/responses` (it stores by default), files, batches,
    /// fine-tuning, assistants or anything else that creates a resource.
    pub const RETRY_PATHS: &'static [&'static str] = &[
        // OpenAI-compatible (vLLM, SGLang, TGI, llama.cpp, mock-model)
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        // vLLM and SGLang: rerank, score, tokenizer
        "/rerank",
        "/v1/rerank",
        "/v2/rerank",
        "/score",
        "/v1/score",
        "/tokenize",
        "/detokenize",
        // TGI and TEI
        "/generate",
        "/generate_stream",
        "/embed",
        "/predict",
        "/decode",
        // llama.cpp's server
        "/completion",
        "/completions",
        "/embedding",
        "/embeddings",
        "/reranking",
        "/v1/reranking",
        "/infill",
    ];
    /// Realtime and streaming-ASR endpoints speak WebSocket; nothing else is tunnelled
    /// unless a service asks for it.
    pub const UPGRADE_PROTOCOLS: &'static [&'static str] = &["websocket"];
}

/// Where the two colors' endpoints come from.
#[derive(Debug, Clone)]
pub enum Environments {
    /// Deployed by the user's own pipeline; cutover only routes and records versions.
    Static { blue: StaticColor, green: StaticColor },
    /// Processes cutover starts itself from one template shared by both colors.
    Managed(RunConfig),
}

#[derive(Debug, Clone)]
pub struct StaticColor {
    pub endpoints: Vec<EndpointSpec>,
    /// Version label to show before any release recorded one.
    pub version: Option<String>,
}
