//! Loads `cutover.toml` and validates it with no side effects (stage one of start-up).
//!
//! Every error names the file, the line and the dotted key, and says what was expected.
//! Unknown keys are errors: a typo must never silently turn a safety setting off.
//!
//! # Layout
//! - [`Config`] and friends: the validated, typed configuration.
//! - [`Duration`]: a `"500ms"`/`"30s"`/`"10m"` string in the file.
//! - [`load`] / [`parse`]: read, deserialize, then check cross-field rules.
//! - [`check`] (`checks`): configs that parse but cannot work, and warnings about this machine.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use toml::Spanned;

mod checks;
mod external;
mod shadow;
mod shared;
mod traffic;
mod webhooks;
pub use checks::{check, PLACEHOLDERS};
pub use external::{PrometheusGate, Reduce, ScrapeGate};
pub use shadow::{ShadowConfig, ShadowInconclusive, ShadowThresholds};
pub use traffic::{HeaderRouteConfig, Step, StickyConfig, Traffic};
pub use webhooks::{ApprovalWebhookConfig, WebhookConfig, WEBHOOK_EVENTS};

/// A configuration error, already located in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line; 0 when the error is about the whole file (for example, it cannot be read).
    pub line: usize,
    /// Dotted key path, e.g. `services.chat.health.interval`; empty when not known.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A duration written as a string such as `"500ms"`, `"30s"`, `"10m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Duration).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); expected a string such as \"500ms\", \"30s\" or \"10m\""
            ))
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

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

/// The members of an etcd URL and how they are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMembers {
    /// Each member's `HOST:PORT`, in the URL's order.
    pub addrs: Vec<String>,
    /// Every member is `https://`.
    pub https: bool,
}

/// Parses an etcd URL: `etcd://HOST:PORT[,HOST:PORT...]` (plain HTTP), or each member with
/// its scheme as etcdctl's `--endpoints` takes them (`https://HOST:PORT,https://HOST:PORT`).
/// Members must all be `http://` or all `https://`.
pub fn etcd_members(url: &str) -> Result<EtcdMembers, String> {
    let expected = "expected \"etcd://HOST:PORT[,HOST:PORT...]\" or \"https://HOST:PORT[,https://HOST:PORT...]\" (fleet mode), or leave `url` out for the SQLite store alone";
    let (rest, default_scheme) = match url.strip_prefix("etcd://") {
        Some(rest) => (rest, Some(false)),
        None => (url, None),
    };
    let mut addrs = Vec::new();
    let mut schemes: Vec<(bool, &str)> = Vec::new();
    for m in rest.split(',') {
        let m = m.trim();
        let (https, addr) = match (m.strip_prefix("https://"), m.strip_prefix("http://"), default_scheme) {
            (Some(a), _, _) => (true, a),
            (None, Some(a), _) => (false, a),
            (None, None, Some(d)) => (d, m),
            (None, None, None) => return Err(format!("{url:?} is not an etcd URL; {expected}")),
        };
        let addr = addr.trim_end_matches('/');
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            return Err(format!(
                "member {m:?} of {url:?} is not HOST:PORT (members are HOST:PORT, separated by commas)"
            ));
        }
        schemes.push((https, m));
        addrs.push(addr.to_string());
    }
    let https = schemes.first().is_some_and(|(h, _)| *h);
    if let Some((_, odd)) = schemes.iter().find(|(h, _)| *h != https) {
        return Err(format!(
            "{url:?} mixes http:// and https:// members ({odd:?} is not like the first): every member is reached the same way, all https:// (with `tls`) or all plain"
        ));
    }
    Ok(EtcdMembers { addrs, https })
}

/// The files and names of how to reach etcd, as a config or `cutover agent`'s flags give
/// them (paths already absolute).
#[derive(Debug, Clone, Default)]
pub struct EtcdAccessInput {
    pub url: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// How to reach etcd, checked: what [`etcd_access`] makes of an [`EtcdAccessInput`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAccess {
    pub members: EtcdMembers,
    /// `Some` exactly when the members are `https://`.
    pub tls: Option<EtcdTls>,
    pub user: Option<EtcdUser>,
}

/// Which setting of [`EtcdAccessInput`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdSetting {
    Url,
    Tls,
    Ca,
    Cert,
    Key,
    Username,
    PasswordFile,
}

/// [`etcd_members`] and everything else about reaching etcd, checked together and with the
/// files read now: `https://` needs no file (system roots) but TLS files need `https://`; a
/// certificate needs its key; a user needs a readable, non-empty password file and
/// `https://` (a password or token in clear would let anyone on the path write the fleet's
/// keys, and with them what the host agents run).
pub fn etcd_access(i: &EtcdAccessInput) -> Result<EtcdAccess, (EtcdSetting, String)> {
    use EtcdSetting as S;
    let members = etcd_members(&i.url).map_err(|m| (S::Url, m))?;
    let has_tls_files = i.ca.is_some() || i.cert.is_some() || i.key.is_some();
    if has_tls_files && !members.https {
        return Err((
            S::Tls,
            "TLS settings need https:// members (write the URL as \"https://HOST:PORT,https://HOST:PORT\")".into(),
        ));
    }
    let tls = if members.https {
        if let Some(ca) = &i.ca {
            ca_certificates(ca).map_err(|m| (S::Ca, m))?;
        }
        let client = match (&i.cert, &i.key) {
            (Some(cert), Some(key)) => {
                tls_pair(cert, key).map_err(|(which, m)| (if which == "cert" { S::Cert } else { S::Key }, m))?;
                Some(TlsConfig {
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
            (Some(_), None) => return Err((S::Key, "a client certificate needs its private key too".into())),
            (None, Some(_)) => return Err((S::Cert, "a client key needs its certificate too".into())),
            (None, None) => None,
        };
        Some(EtcdTls {
            ca: i.ca.clone(),
            client,
        })
    } else {
        None
    };
    let user = match (&i.username, &i.password_file) {
        (None, None) => None,
        (Some(_), None) => return Err((S::PasswordFile, "an etcd user needs its password file (the password itself is never written in a config or on a command line)".into())),
        (None, Some(_)) => return Err((S::Username, "a password file needs the etcd user's name".into())),
        (Some(name), Some(file)) => {
            if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err((S::Username, format!("{name:?} is not an etcd user name")));
            }
            if !members.https {
                return Err((S::Username, "etcd's password and token would cross the network in clear: use https:// members (with `tls`)".into()));
            }
            password_file(file).map_err(|m| (S::PasswordFile, m))?;
            Some(EtcdUser {
                name: name.clone(),
                password_file: file.clone(),
            })
        }
    };
    Ok(EtcdAccess { members, tls, user })
}

/// That a password file is readable and its first line is not empty (its content is never
/// shown).
fn password_file(p: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read the password file {}: {e}", p.display()))?;
    if text.lines().next().unwrap_or("").is_empty() {
        return Err(format!(
            "the password file {} is empty (the password is its first line)",
            p.display()
        ));
    }
    Ok(())
}

/// A fleet name or router id: it becomes part of etcd keys.
pub fn is_key_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A host agent's name: one DNS-style name, so it is a valid endpoint name and etcd key.
pub fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The upstream protocol a service's model servers speak (`"http1"`, `"h2c"` or `"h2"`).
pub use cutover_types::Protocol as UpstreamProtocol;

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

/// Where the two colors' endpoints come from.
#[derive(Debug, Clone)]
pub enum Environments {
    /// Deployed by the user's own pipeline; cutover only routes and records versions.
    Static { blue: StaticColor, green: StaticColor },
    /// Processes cutover starts itself from one template shared by both colors.
    Managed(RunConfig),
}

/// One configured upstream: `IP:PORT`, `[V6]:PORT` or `NAME:PORT`, optionally written with
/// `http://`. A name is resolved when `serve` starts and again every `resolve_interval`; each
/// address it resolves to is an endpoint of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointSpec {
    /// The host as written, without brackets: an IP address or a DNS name. For `https://`,
    /// the name the model server's certificate must carry (and the SNI cutover sends).
    pub host: String,
    pub port: u16,
    /// Written `https://`: cutover talks TLS to this endpoint.
    pub tls: bool,
}

impl EndpointSpec {
    /// The address itself when the host is an IP literal (nothing to resolve).
    pub fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }

    pub fn from_addr(a: SocketAddr) -> EndpointSpec {
        EndpointSpec {
            host: a.ip().to_string(),
            port: a.port(),
            tls: false,
        }
    }

    /// Parses an endpoint as the config writes it; the error says what was wrong.
    pub fn parse(s: &str) -> Result<EndpointSpec, String> {
        const WANT: &str = "expected HOST:PORT such as \"10.0.0.5:8000\" or \"gpu-a.internal:8000\"";
        let (rest, tls) = if let Some(r) = s.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = s.strip_prefix("https://") {
            (r, true)
        } else if s.contains("://") {
            return Err(format!("{s:?}: unknown scheme (http:// or https://); {WANT}"));
        } else {
            (s, false)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Ok(a) = rest.parse::<SocketAddr>() {
            return Ok(EndpointSpec {
                tls,
                ..EndpointSpec::from_addr(a)
            });
        }
        if rest.contains(['/', '@', '?', '#', ' ']) || rest.starts_with('[') {
            return Err(format!("{s:?} is not an address; {WANT}"));
        }
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(format!("{s:?} has no port; {WANT}"));
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{s:?}: the port must be 1 to 65535; {WANT}")),
        };
        if host.parse::<std::net::Ipv4Addr>().is_ok() || !is_dns_name(host) {
            return Err(format!(
                "{s:?}: {host:?} is neither an IP address nor a DNS name; {WANT}"
            ));
        }
        Ok(EndpointSpec {
            host: host.to_ascii_lowercase(),
            port,
            tls,
        })
    }
}

/// A DNS name as RFC 1123 allows in a host: dot-separated labels of letters, digits and
/// inner hyphens, 63 bytes a label, 253 in all (a trailing dot is the root, allowed).
fn is_dns_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        // All digits and dots is a mistyped IPv4 address, not a name.
        && !h.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
pub struct StaticColor {
    pub endpoints: Vec<EndpointSpec>,
    /// Version label to show before any release recorded one.
    pub version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// argv template; `{version}`, `{port}`, `{color}`, `{replica}`, `{host}` are substituted.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub ports: ColorPorts,
    #[serde(default = "defaults::stop_timeout")]
    pub stop_timeout: Duration,
    /// Working directory of the processes (relative to the config file's folder).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Host the processes listen on, used to build endpoint addresses.
    #[serde(default = "defaults::run_host")]
    pub host: String,
    /// Fleet mode: the host agents (`cutover agent --host NAME`) that run this service's
    /// processes, each on every port of `ports`; empty runs them on this machine. Routers
    /// reach them at the address each agent advertises.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Whether a managed process of the live color (or the old color while it stays warm)
    /// that exits without being asked to is started again.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// At most this many restarts of one color within `restart_window`; then cutover stops
    /// trying and says so (a crash loop needs a person, not a faster loop).
    #[serde(default = "defaults::restart_limit")]
    pub restart_limit: u32,
    #[serde(default = "defaults::restart_window")]
    pub restart_window: Duration,
}

/// `[services.NAME.run] restart`.
pub use cutover_types::RestartPolicy;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorPorts {
    pub blue: Vec<u16>,
    pub green: Vec<u16>,
}

/// What an active health check asks an endpoint (`health.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// `GET path`, healthy on an expected status (default 2xx and 3xx).
    #[default]
    Http,
    /// `grpc.health.v1.Health/Check` over h2c, healthy only on `SERVING`.
    Grpc,
    /// A tiny real request (`request`), its answer checked against `expect`: a model server
    /// whose `/health` stays 200 while its engine is wedged fails this one.
    Generation,
}

/// Expected HTTP statuses: `200`, `"200-299"`, or a list of those (`[200, "300-399"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(pub Vec<(u16, u16)>);

impl StatusSet {
    /// 2xx and 3xx: what `http` probes accepted before `status` existed.
    pub fn success_or_redirect() -> StatusSet {
        StatusSet(vec![(200, 399)])
    }
}

impl<'de> Deserialize<'de> for StatusSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum One {
            Code(i64),
            Range(String),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Many {
            One(One),
            List(Vec<One>),
        }
        const WANT: &str = "expected a status such as 200, a range such as \"200-299\", or a list of those";
        let code = |n: i64| -> Result<u16, D::Error> {
            match u16::try_from(n) {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(serde::de::Error::custom(format!(
                    "status {n} is not 100 to 599; {WANT}"
                ))),
            }
        };
        let one = |o: One| -> Result<(u16, u16), D::Error> {
            match o {
                One::Code(n) => code(n).map(|c| (c, c)),
                One::Range(s) => {
                    let parse = |t: &str| {
                        t.trim()
                            .parse::<i64>()
                            .map_err(|_| serde::de::Error::custom(format!("{s:?}: {WANT}")))
                    };
                    let (a, b) = match s.split_once('-') {
                        Some((a, b)) => (code(parse(a)?)?, code(parse(b)?)?),
                        None => {
                            let c = code(parse(&s)?)?;
                            (c, c)
                        }
                    };
                    if a > b {
                        return Err(serde::de::Error::custom(format!("{s:?}: the range is empty; {WANT}")));
                    }
                    Ok((a, b))
                }
            }
        };
        let ranges = match Many::deserialize(d).map_err(|_| serde::de::Error::custom(WANT))? {
            Many::One(o) => vec![one(o)?],
            Many::List(l) if l.is_empty() => {
                return Err(serde::de::Error::custom(format!("the list is empty; {WANT}")))
            }
            Many::List(l) => l.into_iter().map(one).collect::<Result<_, _>>()?,
        };
        Ok(StatusSet(ranges))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default)]
    pub kind: ProbeKind,
    /// `http` probes: the path to `GET`.
    #[serde(default = "defaults::health_path")]
    pub path: String,
    /// `http` probes: the statuses that mean healthy (default 2xx and 3xx).
    #[serde(default)]
    pub status: Option<StatusSet>,
    /// `grpc` probes: the service name asked about; `""` is the server as a whole.
    #[serde(default)]
    pub service: String,
    /// `generation` probes: the request (method, path, body, headers).
    #[serde(default)]
    pub request: Option<RequestSpec>,
    /// `generation` probes: what the answer must look like (status, JSON pointers, text);
    /// status 200 when not given.
    #[serde(default)]
    pub expect: Option<Expect>,
    #[serde(default = "defaults::health_interval")]
    pub interval: Duration,
    #[serde(default = "defaults::health_timeout")]
    pub timeout: Duration,
    /// Consecutive successes before an unhealthy endpoint is healthy again.
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures before a healthy endpoint is taken out of rotation.
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// A probe that times out is not counted against an endpoint that finished proxied
    /// requests within this window while its color answered 2xx/3xx; `"0s"` turns it off.
    #[serde(default = "defaults::passive_window")]
    pub passive_window: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: ProbeKind::Http,
            path: defaults::health_path(),
            status: None,
            service: String::new(),
            request: None,
            expect: None,
            interval: defaults::health_interval(),
            timeout: defaults::health_timeout(),
            healthy_threshold: defaults::healthy_threshold(),
            unhealthy_threshold: defaults::unhealthy_threshold(),
            passive_window: defaults::passive_window(),
        }
    }
}

/// Limits and timeouts of a service's listeners and upstream calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request head (request line + headers); larger gets 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Longest single header line (431) or request line (414).
    #[serde(default = "defaults::max_header_line_bytes")]
    pub max_header_line_bytes: usize,
    /// A client must send its whole request head within this time.
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Largest request body; larger gets 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// Client connections open at once per listener; more wait in the kernel backlog.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// Time from sending the request to the upstream's response head (a model may think long).
    #[serde(default = "defaults::first_byte_timeout")]
    pub first_byte_timeout: Duration,
    /// Whole exchange, first request byte to last response byte; the only limit on a live stream.
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout: Duration,
    /// Idle upstream connections kept per endpoint.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle: usize,
    #[serde(default = "defaults::pool_idle_timeout")]
    pub pool_idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: defaults::max_header_bytes(),
            max_header_line_bytes: defaults::max_header_line_bytes(),
            header_read_timeout: defaults::header_read_timeout(),
            max_body_bytes: defaults::max_body_bytes(),
            max_connections: defaults::max_connections(),
            connect_timeout: defaults::connect_timeout(),
            first_byte_timeout: defaults::first_byte_timeout(),
            request_timeout: defaults::request_timeout(),
            pool_max_idle: defaults::pool_max_idle(),
            pool_idle_timeout: defaults::pool_idle_timeout(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Promotion {
    #[default]
    Auto,
    Manual,
}

/// What the old color does once a release has switched away from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Standby {
    /// Stopped (managed) or marked stale (static) after `scale_down_delay`.
    #[default]
    Stop,
    /// Left up and warm: a rollback is one switch for as long as it runs.
    Keep,
    /// Put to sleep right after the switch (`POST /sleep?level=1`, vLLM's sleep mode frees
    /// accelerator memory); a rollback wakes it (`POST /wake_up`) before it switches.
    Sleep,
}

/// What verification does when the bake window ends with fewer than `min_requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnInconclusive {
    /// Keep the new version live and complete the release, recording it as inconclusive.
    #[default]
    Complete,
    /// Treat "not enough evidence" as a failure and roll back.
    Rollback,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseConfig {
    #[serde(default = "defaults::health_timeout_release")]
    pub health_timeout: Duration,
    #[serde(default)]
    pub warmup: Option<WarmupConfig>,
    #[serde(default)]
    pub promotion: Promotion,
    /// With manual promotion: approve by itself after this long (unset: wait forever).
    #[serde(default)]
    pub auto_promote_after: Option<Duration>,
    #[serde(default = "defaults::scale_down_delay")]
    pub scale_down_delay: Duration,
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Duration,
    #[serde(default)]
    pub smoke: Vec<SmokeConfig>,
    #[serde(default)]
    pub verify: Option<VerifyConfig>,
    /// The shadowing phase (absent: no mirroring, the phase is skipped).
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
    #[serde(default)]
    pub hooks: HooksConfig,
    /// How traffic moves to the new color: `all_at_once` (default), a canary step, linear steps.
    #[serde(default)]
    pub traffic: Traffic,
    /// What keeps a client on one color while traffic is split (absent: a draw per request).
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    /// A header plus token that reaches the idle color on the main listener (absent: off).
    #[serde(default)]
    pub header_route: Option<HeaderRouteConfig>,
    /// Signed JSON POSTs on release events; never waited for.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// With manual promotion: a 2xx from this endpoint approves the release.
    #[serde(default)]
    pub approval_webhook: Option<ApprovalWebhookConfig>,
    /// What the old color does after a switch: `stop` (after `scale_down_delay`), `keep`
    /// (stays up), or `sleep` (vLLM sleep mode; woken for a rollback).
    #[serde(default)]
    pub standby: Standby,
    /// How long waking a sleeping color may take (every endpoint awake and healthy) before
    /// the switch or rollback that needed it fails, leaving live traffic where it was.
    #[serde(default = "defaults::wake_timeout")]
    pub wake_timeout: Duration,
    /// Deadline of each phase that has none of its own (warm-up, smoke, hooks).
    #[serde(default = "defaults::phase_timeout")]
    pub phase_timeout: Duration,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig {
            health_timeout: defaults::health_timeout_release(),
            warmup: None,
            promotion: Promotion::Auto,
            auto_promote_after: None,
            scale_down_delay: defaults::scale_down_delay(),
            drain_timeout: defaults::drain_timeout(),
            smoke: Vec::new(),
            verify: None,
            shadow: None,
            hooks: HooksConfig::default(),
            traffic: Traffic::AllAtOnce,
            sticky: None,
            header_route: None,
            webhooks: Vec::new(),
            approval_webhook: None,
            standby: Standby::default(),
            wake_timeout: defaults::wake_timeout(),
            phase_timeout: defaults::phase_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "defaults::method")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    #[serde(default = "defaults::warmup_requests")]
    pub requests: u32,
    #[serde(default = "defaults::warmup_concurrency")]
    pub concurrency: u32,
    pub request: RequestSpec,
    /// Failed warm-up requests tolerated per endpoint (a 5xx or no answer); more abort the
    /// release before the switch.
    #[serde(default)]
    pub max_failures: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeConfig {
    pub name: String,
    pub request: RequestSpec,
    #[serde(default)]
    pub expect: Expect,
    /// Times the check is sent to each endpoint; every answer must pass. A build that fails
    /// a fraction of its requests is caught by repeating, not by one lucky answer.
    #[serde(default = "defaults::smoke_repeat")]
    pub repeat: u32,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub status: Option<u16>,
    /// JSON pointer → expected value.
    #[serde(default)]
    pub json: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub body_contains: Option<String>,
    #[serde(default)]
    pub max_latency: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    #[serde(default = "defaults::bake")]
    pub bake: Duration,
    #[serde(default = "defaults::max_error_rate")]
    pub max_error_rate: f64,
    /// Whole-request p99 of plain answers (event streams are judged by the gates below).
    #[serde(default)]
    pub max_p99_latency: Option<Duration>,
    /// Time to first token of event streams.
    #[serde(default)]
    pub max_ttft_p50: Option<Duration>,
    #[serde(default)]
    pub max_ttft_p99: Option<Duration>,
    /// Stalls between a stream's events.
    #[serde(default)]
    pub max_token_gap_p99: Option<Duration>,
    /// The median stream's events per second.
    #[serde(default)]
    pub min_tokens_per_second: Option<f64>,
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u64,
    #[serde(default = "defaults::yes")]
    pub auto_rollback: bool,
    #[serde(default)]
    pub on_inconclusive: OnInconclusive,
    /// PromQL gates read through the bake (see `external`).
    #[serde(default)]
    pub prometheus: Vec<PrometheusGate>,
    /// Gates on one metric of the new color's own `/metrics` endpoints.
    #[serde(default)]
    pub scrape: Vec<ScrapeGate>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Run while provisioning, before cutover waits for health: for static environments,
    /// the user's own deploy of the idle color (`CUTOVER_ENDPOINTS` names its addresses).
    #[serde(default)]
    pub provision: Vec<Vec<String>>,
    #[serde(default)]
    pub pre_switch: Vec<Vec<String>>,
    #[serde(default)]
    pub post_switch: Vec<Vec<String>>,
    #[serde(default)]
    pub on_rollback: Vec<Vec<String>>,
    /// Run once the old color has stopped after `scale_down_delay`: the contract step of an
    /// expand/contract migration, safe only once the old version is gone.
    #[serde(default)]
    pub post_scale_down: Vec<Vec<String>>,
    #[serde(default = "defaults::hook_timeout")]
    pub timeout: Duration,
}

mod defaults {
    use super::Duration;
    pub fn wake_timeout() -> Duration {
        Duration(std::time::Duration::from_secs(60))
    }
    pub fn resolve_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub fn stop_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn run_host() -> String {
        "127.0.0.1".into()
    }
    pub fn restart_limit() -> u32 {
        5
    }
    pub fn restart_window() -> Duration {
        Duration::from_secs(600)
    }
    pub fn health_path() -> String {
        "/health".into()
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn healthy_threshold() -> u32 {
        1
    }
    pub fn unhealthy_threshold() -> u32 {
        2
    }
    pub fn passive_window() -> Duration {
        // A few probe intervals: long enough to span a probe that queued behind a generation
        // (llama-cpp-python's /v1/models took 1.5-9.5 s under load), short enough that a
        // server that stopped answering loses its cover within seconds.
        Duration::from_secs(10)
    }
    pub fn max_header_bytes() -> usize {
        64 * 1024
    }
    pub fn max_header_line_bytes() -> usize {
        // nginx allows 8 KiB per line, HAProxy 16 KiB for a whole head: 16 KiB fits a long
        // JWT or a cookie jar and refuses a 60 KB value.
        16 * 1024
    }
    pub fn retry_non_idempotent() -> bool {
        // A generation has no side effect beyond its cost; a 502 for a request the server
        // never read (it closed the idle connection as the request arrived) is worse. Which
        // requests count as generations is `retry_paths`.
        true
    }
    pub fn retry_paths() -> Vec<String> {
        // The side-effect-free inference paths of OpenAI-style servers, vLLM, SGLang, TGI,
        // TEI and llama.cpp's server: generating, embedding, scoring and tokenizing change
        // nothing on the server. Not `/v1/responses` (it stores by default), files,
        // batches, fine-tuning, assistants or anything else that creates a resource.
        [
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
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn upgrade_protocols() -> Vec<String> {
        // Realtime and streaming-ASR endpoints speak WebSocket; nothing else is tunnelled
        // unless a service asks for it.
        vec!["websocket".to_string()]
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_body_bytes() -> u64 {
        // Streamed, never buffered: room for a 25 MiB image sent as base64 in JSON.
        256 * 1024 * 1024
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn first_byte_timeout() -> Duration {
        // The official openai client waits 600 s and retries a 504 twice: a shorter limit
        // runs a long non-streaming generation three times and still fails.
        Duration::from_secs(600)
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn pool_max_idle() -> usize {
        256
    }
    pub fn pool_idle_timeout() -> Duration {
        // Below uvicorn's 5 s keep-alive (vLLM and many Python model servers), so we stop
        // reusing a connection before the server may close it under our feet.
        Duration::from_secs(4)
    }
    pub fn health_timeout_release() -> Duration {
        Duration::from_secs(600)
    }
    pub fn scale_down_delay() -> Duration {
        Duration::from_secs(600)
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn phase_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn method() -> String {
        "GET".into()
    }
    pub fn warmup_requests() -> u32 {
        20
    }
    pub fn warmup_concurrency() -> u32 {
        2
    }
    pub fn bake() -> Duration {
        Duration::from_secs(120)
    }
    pub fn smoke_repeat() -> u32 {
        1
    }
    pub fn max_error_rate() -> f64 {
        0.01
    }
    pub fn min_requests() -> u64 {
        20
    }
    pub fn yes() -> bool {
        true
    }
    pub fn hook_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

// ---- the file's shape, before validation -------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    services: BTreeMap<String, Spanned<RawService>>,
    #[serde(default)]
    listeners: BTreeMap<String, Spanned<RawListener>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    listen: Spanned<String>,
    tls: Option<RawTls>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    model: Vec<Spanned<String>>,
    host: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token_file: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    address_file: Option<PathBuf>,
    /// Must be set to bind the admin API to a non-loopback address.
    #[serde(default)]
    allow_remote: bool,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    url: Option<Spanned<String>>,
    fleet: Option<Spanned<String>>,
    router_id: Option<Spanned<String>>,
    ack_timeout: Option<Spanned<Duration>>,
    tls: Option<RawEtcdTls>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    /// Never accepted: present only to say why.
    password: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcdTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    listen: Option<Spanned<String>>,
    /// A shared listener's name, instead of `listen`.
    listener: Option<Spanned<String>>,
    #[serde(rename = "match")]
    matches: Option<Spanned<RawMatch>>,
    preview_listen: Option<Spanned<String>>,
    /// Must be set to bind the preview listener to a non-loopback address.
    #[serde(default)]
    preview_allow_remote: bool,
    tls: Option<RawTls>,
    upstream_tls: Option<RawUpstreamTls>,
    /// Lets blue and green share endpoints (benchmarks and test rigs: a switch then changes
    /// only the version label).
    #[serde(default)]
    allow_shared_endpoints: bool,
    #[serde(default)]
    upstream_protocol: UpstreamProtocol,
    #[serde(default)]
    access_log: bool,
    #[serde(default = "defaults::yes")]
    response_headers: bool,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default = "defaults::retry_non_idempotent")]
    retry_non_idempotent: bool,
    retry_paths: Option<Vec<Spanned<String>>>,
    upgrade_protocols: Option<Vec<Spanned<String>>>,
    #[serde(default = "defaults::resolve_interval")]
    resolve_interval: Duration,
    #[serde(default)]
    health: HealthConfig,
    #[serde(default)]
    limits: LimitsConfig,
    blue: Option<Spanned<RawStaticColor>>,
    green: Option<Spanned<RawStaticColor>>,
    run: Option<Spanned<RunConfig>>,
    #[serde(default)]
    release: ReleaseConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStaticColor {
    endpoints: Vec<Spanned<String>>,
    version: Option<String>,
}

/// Reads and validates a config file; the first error (see [`load_all`] for every one).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_all(path).map_err(first)
}

/// Reads and validates a config file, reporting every error it finds, in file order.
pub fn load_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }]
    })?;
    parse_all(path, &text)
}

fn first(mut errors: Vec<ConfigError>) -> ConfigError {
    errors.swap_remove(0)
}

/// Validates config text; `path` names it in errors and anchors relative paths. The first
/// error (see [`parse_all`] for every one).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_all(path, text).map_err(first)
}

/// Validates config text, reporting every error, in file order (never an empty list). Text
/// that is not TOML stops at its syntax error; each part of the file (`[admin]` and
/// `[store]`, each service) is read and checked on its own (see [`Source::part`]).
pub fn parse_all(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    let ctx = Source {
        path,
        text,
        doc: toml::de::DeTable::parse(text).ok(),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| vec![ctx.toml_error(&e, String::new())])?;
    let errors = match serde_path_to_error::deserialize::<_, RawConfig>(de) {
        Ok(raw) => match ctx.validate(raw) {
            Ok(cfg) => return Ok(cfg),
            Err(errors) => errors,
        },
        Err(e) => ctx.shape_errors(&e),
    };
    // A part deserialized again on its own repeats the error the whole file stopped at.
    let mut once: Vec<ConfigError> = Vec::with_capacity(errors.len());
    for e in errors {
        if !once.contains(&e) {
            once.push(e);
        }
    }
    once.sort_by_key(|e| e.line);
    Err(once)
}

/// A deserialization error's key: `Spanned<T>` shows up in the path as a private field; it
/// is not a key of the file.
fn path_key<E>(e: &serde_path_to_error::Error<E>, prefix: &str) -> String {
    let path = e.path().to_string();
    let key: Vec<&str> = path
        .split('.')
        .filter(|part| !part.is_empty() && *part != "$__serde_spanned_private_value")
        .collect();
    match (key.join("."), prefix) {
        (k, "") => k,
        (k, p) if k.is_empty() => p.to_string(),
        (k, p) => format!("{p}.{k}"),
    }
}

/// The field a serde "missing field `NAME`" message names.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// Removes the deepest table key on `path` from `v` (an array element goes with its whole
/// array, which is a key's value); how many parts of `path` name the key removed.
fn remove_key(v: &mut toml::de::DeValue<'_>, path: &[&str]) -> Option<usize> {
    use toml::de::DeValue;
    let (first, rest) = path.split_first()?;
    match v {
        DeValue::Table(t) => {
            let deeper = t
                .get_mut(*first)
                .filter(|_| !rest.is_empty())
                .and_then(|child| remove_key(child.get_mut(), rest));
            match deeper {
                Some(n) => Some(n + 1),
                None => t.remove(*first).map(|_| 1),
            }
        }
        DeValue::Array(a) => {
            let child = a.get_mut(first.parse::<usize>().ok()?)?;
            remove_key(child.get_mut(), rest).map(|n| n + 1)
        }
        _ => None,
    }
}

/// Methods and header names are tokens: letters, digits and a few marks (RFC 9110 §5.6.2).
fn http_method_invalid(m: &str) -> bool {
    m.is_empty()
        || !m
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An address or a CIDR block (`10.0.0.0/8`, `::1`) as (address, prefix length).
fn cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block such as \"10.0.0.0/8\""))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match bits {
        None => Ok((ip, max)),
        Some(b) => match b.trim().parse::<u8>() {
            Ok(n) if n <= max => Ok((ip, n)),
            _ => Err(format!("{s:?}: the prefix length must be 0 to {max}")),
        },
    }
}

type Span = std::ops::Range<usize>;

/// The value of a check that passed; a failed one's error joins `errors`.
fn keep<T>(errors: &mut Vec<ConfigError>, r: Result<T, ConfigError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// That a CA file is readable and holds PEM certificates.
fn ca_certificates(p: &Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let text = std::fs::read(p).map_err(|e| format!("cannot read the CA file {}: {e}", p.display()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)",
            p.display()
        ));
    }
    Ok(())
}

/// Whether a certificate file and a key file make a pair rustls can serve (the checks of
/// `cutover_proxy::tls::load_pair`, which serve uses and which this crate cannot depend on):
/// on failure, which key is wrong (`cert` or `key`) and why.
fn tls_pair(cert: &Path, key: &Path) -> Result<(), (&'static str, String)> {
    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let c = |m: String| ("cert", m);
    let text =
        std::fs::read(cert).map_err(|e| c(format!("cannot read the certificate file {}: {e}", cert.display())))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| c(format!("{}: not a PEM certificate file: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(c(format!(
            "{} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)",
            cert.display()
        )));
    }
    let k = |m: String| ("key", m);
    let text = std::fs::read(key).map_err(|e| k(format!("cannot read the key file {}: {e}", key.display())))?;
    let der = PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        pem::Error::NoItemsFound => k(format!(
            "{} holds no private key (expected a PEM \"-----BEGIN PRIVATE KEY-----\", RSA or EC key block)",
            key.display()
        )),
        e => k(format!("{}: not a PEM private key file: {e}", key.display())),
    })?;
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| k(format!("{}: unusable private key: {e}", key.display())))?;
    match rustls::sign::CertifiedKey::new(chain, signer).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(k(format!(
            "the private key in {} does not match the certificate in {} (the first certificate must be the one the key signs for)",
            key.display(),
            cert.display()
        ))),
        Err(e) => Err(c(format!("{}: the certificate cannot be parsed: {e}", cert.display()))),
    }
}

/// The source being validated, for locating errors.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    /// The document with the span of every key, for errors about a value the typed
    /// structures keep without its position (`None` only when the text does not parse,
    /// which fails earlier).
    doc: Option<Spanned<toml::de::DeTable<'a>>>,
}

/// Every address a listener of ours takes, and every managed port, with the key that took
/// it: two of them on one address would fail at bind time or proxy to themselves.
#[derive(Default)]
struct Claims {
    addrs: HashMap<SocketAddr, String>,
    managed_ports: HashMap<u16, String>,
    /// The shared listeners' addresses by name (read before the services that name them).
    listeners: HashMap<String, SocketAddr>,
    /// `[store] url` is set: managed services may run on host agents.
    fleet: bool,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    fn toml_error(&self, e: &toml::de::Error, key: String) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: e.span().map(|s| self.line_of(s.start)).unwrap_or(0),
            key,
            message: e.message().trim().to_string(),
        }
    }

    fn err<T>(&self, span: Span, key: String, message: String) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self.path.to_path_buf(),
            line: self.line_of(span.start),
            key,
            message,
        })
    }

    /// The span of the value at a dotted key (array elements by index), if the file has it.
    fn span_of(&self, key: &str) -> Option<Span> {
        let doc = self.doc.as_ref()?;
        let mut parts = key.split('.');
        let mut span = None;
        let mut table = Some(doc.get_ref());
        let mut array: Option<&[Spanned<toml::de::DeValue<'_>>]> = None;
        for part in &mut parts {
            let v = match (table, array) {
                (Some(t), _) => t.get(part)?,
                (None, Some(a)) => a.get(part.parse::<usize>().ok()?)?,
                (None, None) => return None,
            };
            span = Some(v.span());
            (table, array) = match v.get_ref() {
                toml::de::DeValue::Table(t) => (Some(t), None),
                toml::de::DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
        }
        span
    }

    /// An error about `key`, on its own line when the file names it, else at `fallback`
    /// (the nearest enclosing table: a default value has no line of its own).
    fn err_at<T>(&self, key: String, fallback: Span, message: String) -> Result<T, ConfigError> {
        let span = self.span_of(&key).unwrap_or(fallback);
        self.err(span, key, message)
    }

    /// The config file's folder, absolute: managed processes and hooks run from it.
    fn dir(&self) -> PathBuf {
        let abs = std::path::absolute(self.path).unwrap_or_else(|_| self.path.to_path_buf());
        abs.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir().join(p)
        }
    }

    fn addr(&self, s: &Spanned<String>, key: String) -> Result<SocketAddr, ConfigError> {
        s.get_ref().parse::<SocketAddr>().or_else(|_| {
            self.err(
                s.span(),
                key,
                format!(
                    "invalid address {:?}; expected IP:PORT such as \"127.0.0.1:8080\"",
                    s.get_ref()
                ),
            )
        })
    }

    /// Records that `key` listens on `addr`; port 0 never collides (the kernel picks).
    fn claim(&self, claims: &mut Claims, addr: SocketAddr, key: String, span: Span) -> Result<(), ConfigError> {
        if addr.port() == 0 {
            return Ok(());
        }
        if let Some(other) = claims.addrs.get(&addr) {
            return self.err(span, key, format!("address {addr} is already used by `{other}`"));
        }
        claims.addrs.insert(addr, key);
        Ok(())
    }

    /// Every error of a file whose shape deserialized: `[admin]`, `[store]` and each service
    /// are checked on their own, so one run names the problems of all of them.
    fn validate(&self, raw: RawConfig) -> Result<Config, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut claims = Claims::default();
        let admin = keep(&mut errors, self.admin(&raw.admin, &mut claims));
        let store = keep(&mut errors, self.store(&raw.store));
        claims.fleet = store.as_ref().is_some_and(|s| s.fleet.is_some());
        if raw.services.is_empty() && !self.has_services() {
            errors.push(self.no_services());
        }
        let listeners = self.listeners(&raw.listeners, &mut claims, &mut errors);
        let mut services = BTreeMap::new();
        for (name, svc) in raw.services {
            match self.service(&name, svc, &mut claims) {
                Ok(svc) => {
                    services.insert(name, svc);
                }
                Err(e) => errors.extend(e),
            }
        }
        keep(&mut errors, self.no_self_proxy(&services, &claims));
        errors.extend(self.shared_routes(&raw.listeners, &services));
        match (admin, store) {
            (Some(admin), Some(store)) if errors.is_empty() => Ok(Config {
                path: std::path::absolute(self.path).unwrap_or_else(|_| self.path.to_path_buf()),
                admin,
                store,
                services,
                listeners,
            }),
            _ => Err(errors),
        }
    }

    /// A file with no service would run a router that serves nothing: a truncated or wrong
    /// file more likely than a wish.
    fn no_services(&self) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: self.span_of("services").map(|s| self.line_of(s.start)).unwrap_or(0),
            key: "services".into(),
            message: "no service is configured: add a [services.NAME] table with `listen` and its environments \
                      (static [services.NAME.blue]/[services.NAME.green] endpoints or a managed [services.NAME.run]); \
                      see examples/static.toml"
                .into(),
        }
    }

    /// The errors of a file whose shape did not deserialize: the one serde stopped at, then
    /// those of every part deserialized on its own ([`Source::part`]: `[admin]` with
    /// `[store]`, and each service), then the validation of what they hold, so a typo hides
    /// no other error.
    fn shape_errors<E: std::borrow::Borrow<toml::de::Error>>(
        &self,
        e: &serde_path_to_error::Error<E>,
    ) -> Vec<ConfigError> {
        let mut errors = vec![self.toml_error(e.inner().borrow(), path_key(e, ""))];
        let Some(doc) = &self.doc else { return errors };
        let mut top = doc.get_ref().clone();
        let services = top.remove("services");
        let top = toml::Spanned::new(doc.span(), toml::de::DeValue::Table(top));
        let mut raw: RawConfig = self.part(top, "", &mut errors).unwrap_or_default();
        if let Some(toml::de::DeValue::Table(services)) = services.map(|s| s.into_inner()) {
            for (name, svc) in services {
                let prefix = format!("services.{}", name.get_ref());
                if let Some(svc) = self.part::<Spanned<RawService>>(svc, &prefix, &mut errors) {
                    raw.services.insert(name.get_ref().to_string(), svc);
                }
            }
        }
        if let Err(more) = self.validate(raw) {
            errors.extend(more);
        }
        errors
    }

    /// Deserializes one part of the file (`prefix`: its key), reporting every key that does
    /// not fit: each error's key is removed and the part tried again, so the next wrong key
    /// shows too. `None` when it does not deserialize even so (a required key is missing).
    fn part<T: serde::de::DeserializeOwned>(
        &self,
        mut value: Spanned<toml::de::DeValue<'_>>,
        prefix: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<T> {
        let mut removed: Vec<String> = Vec::new();
        // Bounded: each round removes a key, but a file may have many.
        for _ in 0..32 {
            let e = match serde_path_to_error::deserialize::<_, T>(toml::de::ValueDeserializer::from(value.clone())) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let key = path_key(&e, "");
            if let Some(field) = missing_field(e.inner().message()) {
                // A key taken out for its error is now missing: that error is said already.
                // Otherwise the table lacks a required key: taking the table out would only
                // make another error up. Either way the part ends here.
                let gone = if key.is_empty() {
                    field
                } else {
                    format!("{key}.{field}")
                };
                if !removed.contains(&gone) {
                    errors.push(self.toml_error(e.inner(), path_key(&e, prefix)));
                }
                return None;
            }
            errors.push(self.toml_error(e.inner(), path_key(&e, prefix)));
            // `endpoints[1]` is the element 1 of `endpoints`.
            let dotted = key.replace('[', ".").replace(']', "");
            let parts: Vec<&str> = dotted.split('.').filter(|p| !p.is_empty()).collect();
            let depth = remove_key(value.get_mut(), &parts)?;
            removed.push(parts[..depth].join("."));
        }
        None
    }

    /// True when the file has at least one `[services.NAME]` table.
    fn has_services(&self) -> bool {
        let Some(doc) = &self.doc else { return false };
        matches!(doc.get_ref().get("services").map(|s| s.get_ref()), Some(toml::de::DeValue::Table(t)) if !t.is_empty())
    }

    fn admin(&self, raw: &RawAdmin, claims: &mut Claims) -> Result<AdminConfig, ConfigError> {
        let listen = match &raw.listen {
            Some(s) => {
                let a = self.addr(s, "admin.listen".into())?;
                if !a.ip().is_loopback() && !raw.allow_remote {
                    return self.err(
                        s.span(),
                        "admin.listen".into(),
                        format!("{a} is not a loopback address; the admin API can switch live traffic, so set `admin.allow_remote = true` to expose it on purpose"),
                    );
                }
                self.claim(claims, a, "admin.listen".into(), s.span())?;
                a
            }
            None => {
                let a: SocketAddr = "127.0.0.1:9901".parse().expect("constant address");
                self.claim(claims, a, "admin.listen".into(), 0..0)?;
                a
            }
        };
        Ok(AdminConfig {
            listen,
            token_file: self.resolve(raw.token_file.as_deref().unwrap_or(Path::new("admin.token"))),
            tokens_file: self.resolve(raw.tokens_file.as_deref().unwrap_or(Path::new("tokens.toml"))),
            address_file: raw.address_file.as_deref().map(|p| self.resolve(p)),
            tls: self.tls(raw.tls.as_ref(), "admin.tls", 0..0)?,
        })
    }

    /// TLS to the endpoints: on when they are `https://`, which must then be all of them (one
    /// connection pool kind and one engine per service); `upstream_tls` only with them.
    fn upstream_tls(
        &self,
        name: &str,
        raw: Option<&RawUpstreamTls>,
        env: &Environments,
        span: Span,
    ) -> Result<Option<UpstreamTls>, ConfigError> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        let https = match env {
            Environments::Static { blue, green } => {
                let all: Vec<(&str, &EndpointSpec)> = blue
                    .endpoints
                    .iter()
                    .map(|e| ("blue", e))
                    .chain(green.endpoints.iter().map(|e| ("green", e)))
                    .collect();
                if let Some((color, plain)) = all
                    .iter()
                    .find(|(_, e)| !e.tls)
                    .filter(|_| all.iter().any(|(_, e)| e.tls))
                {
                    return self.err_at(
                        k(&format!("{color}.endpoints")),
                        span,
                        format!("{plain} is plain HTTP while other endpoints of the service are https://: TLS to model servers is per service, so write every endpoint of both colors with https://, or none"),
                    );
                }
                all.iter().any(|(_, e)| e.tls)
            }
            Environments::Managed(_) => false,
        };
        match (https, raw) {
            (false, None) => Ok(None),
            (false, Some(_)) => self.err_at(
                k("upstream_tls"),
                span,
                "has no effect: no endpoint of the service is https:// (managed environments are always plain HTTP)"
                    .into(),
            ),
            (true, None) => Ok(Some(UpstreamTls::default())),
            (true, Some(r)) => {
                let ca_file = r.ca_file.as_deref().map(|p| self.resolve(p));
                if let Some(p) = &ca_file {
                    if let Err(m) = ca_certificates(p) {
                        return self.err_at(k("upstream_tls.ca_file"), span, m);
                    }
                }
                Ok(Some(UpstreamTls { ca_file }))
            }
        }
    }

    /// A listener's `tls` table, its files read and checked now: an error names `KEY.cert` or
    /// `KEY.key`, whichever file is wrong.
    fn tls(&self, raw: Option<&RawTls>, key: &str, fallback: Span) -> Result<Option<TlsConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let t = TlsConfig {
            cert: self.resolve(&raw.cert),
            key: self.resolve(&raw.key),
        };
        let near = self.span_of(key).unwrap_or(fallback);
        if let Err((which, m)) = tls_pair(&t.cert, &t.key) {
            return self.err_at(format!("{key}.{which}"), near, m);
        }
        Ok(Some(t))
    }

    fn store(&self, raw: &RawStore) -> Result<StoreConfig, ConfigError> {
        let path = self.resolve(raw.path.as_deref().unwrap_or(Path::new("cutover.db")));
        let data_dir = match &raw.data_dir {
            Some(d) => self.resolve(d),
            None => path.parent().unwrap_or(Path::new(".")).join("cutover-data"),
        };
        let fleet = self.fleet(raw)?;
        Ok(StoreConfig { path, data_dir, fleet })
    }

    /// Fleet mode's keys: all of them need `url`, and `url` needs `fleet`.
    fn fleet(&self, raw: &RawStore) -> Result<Option<FleetConfig>, ConfigError> {
        if let Some(p) = &raw.password {
            return self.err(
                p.span(),
                "store.password".into(),
                "a password is never written in a config: put it in a file readable only by cutover and set `password_file`".into(),
            );
        }
        let Some(url) = &raw.url else {
            if let Some(span) = raw.tls.as_ref().and_then(|_| self.span_of("store.tls")) {
                return self.err(
                    span,
                    "store.tls".into(),
                    "only meaningful in fleet mode: set `store.url = \"https://HOST:PORT,...\"` too".into(),
                );
            }
            for (key, span) in [
                ("fleet", raw.fleet.as_ref().map(Spanned::span)),
                ("router_id", raw.router_id.as_ref().map(Spanned::span)),
                ("ack_timeout", raw.ack_timeout.as_ref().map(Spanned::span)),
                ("username", raw.username.as_ref().map(Spanned::span)),
                ("password_file", raw.password_file.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    return self.err(
                        span,
                        format!("store.{key}"),
                        "only meaningful in fleet mode: set `store.url = \"etcd://HOST:PORT,...\"` too".into(),
                    );
                }
            }
            return Ok(None);
        };
        let EtcdAccess { members, tls, user } = self.etcd_access(raw, url)?;
        let Some(fleet) = &raw.fleet else {
            return self.err(
                url.span(),
                "store.fleet".into(),
                "fleet mode (`store.url`) needs `store.fleet = \"NAME\"`: the fleet's keys live under /cutover/NAME/"
                    .into(),
            );
        };
        let word = |s: &Spanned<String>, key: &str| {
            if is_key_word(s.get_ref()) {
                Ok(s.get_ref().clone())
            } else {
                self.err(
                    s.span(),
                    format!("store.{key}"),
                    format!("{:?}: use 1-128 letters, digits, '-', '_' or '.'", s.get_ref()),
                )
            }
        };
        let name = word(fleet, "fleet")?;
        let router_id = raw.router_id.as_ref().map(|r| word(r, "router_id")).transpose()?;
        let ack_timeout = match &raw.ack_timeout {
            Some(t) if t.get_ref().get().is_zero() || t.get_ref().get() > std::time::Duration::from_secs(60) => {
                return self.err(
                    t.span(),
                    "store.ack_timeout".into(),
                    "must be more than 0 and at most 60s".into(),
                )
            }
            Some(t) => *t.get_ref(),
            None => Duration::from_secs(2),
        };
        Ok(Some(FleetConfig {
            members: members.addrs,
            name,
            router_id,
            ack_timeout,
            tls,
            user,
        }))
    }

    /// `store.url`, `tls`, `username` and `password_file` through [`etcd_access`], its error
    /// placed on the key it is about.
    fn etcd_access(&self, raw: &RawStore, url: &Spanned<String>) -> Result<EtcdAccess, ConfigError> {
        let t = raw.tls.as_ref();
        let input = EtcdAccessInput {
            url: url.get_ref().clone(),
            ca: t.and_then(|t| t.ca.as_deref()).map(|p| self.resolve(p)),
            cert: t.and_then(|t| t.cert.as_deref()).map(|p| self.resolve(p)),
            key: t.and_then(|t| t.key.as_deref()).map(|p| self.resolve(p)),
            username: raw.username.as_ref().map(|u| u.get_ref().clone()),
            password_file: raw.password_file.as_ref().map(|p| self.resolve(p.get_ref())),
        };
        etcd_access(&input).or_else(|(which, m)| {
            let key = match which {
                EtcdSetting::Url => "store.url",
                EtcdSetting::Tls => "store.tls",
                EtcdSetting::Ca => "store.tls.ca",
                EtcdSetting::Cert => "store.tls.cert",
                EtcdSetting::Key => "store.tls.key",
                EtcdSetting::Username => "store.username",
                EtcdSetting::PasswordFile => "store.password_file",
            };
            let near = match which {
                EtcdSetting::Username => raw.username.as_ref().map(Spanned::span),
                EtcdSetting::PasswordFile => raw.password_file.as_ref().map(Spanned::span),
                _ => None,
            };
            // A missing key of `tls` is pointed at by the table itself.
            let near = near
                .or_else(|| self.span_of(key))
                .or_else(|| self.span_of("store.tls"))
                .unwrap_or_else(|| url.span());
            self.err(near, key.into(), m)
        })
    }

    /// One service, every independent check run: all their errors, or the service.
    fn service(
        &self,
        name: &str,
        svc: Spanned<RawService>,
        claims: &mut Claims,
    ) -> Result<ServiceConfig, Vec<ConfigError>> {
        let span = svc.span();
        let mut svc = svc.into_inner();
        let k = |rest: &str| format!("services.{name}.{rest}");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(vec![ConfigError {
                file: self.path.to_path_buf(),
                line: self.line_of(span.start),
                key: format!("services.{name}"),
                message: "service names may use only letters, digits, '-' and '_'".into(),
            }]);
        }
        let mut errors = Vec::new();
        let listen = keep(&mut errors, self.service_listen(name, &svc, claims, &span));
        let shared = listen.as_ref().and_then(|(_, s)| s.clone());
        let listen = listen.map(|(a, _)| a);
        let preview_listen = keep(&mut errors, self.preview_listen(name, &svc, claims));
        let tls = keep(&mut errors, self.tls(svc.tls.as_ref(), &k("tls"), span.clone()));
        let trusted_proxies = keep(
            &mut errors,
            svc.trusted_proxies
                .iter()
                .enumerate()
                .map(|(i, p)| cidr(p.get_ref()).or_else(|m| self.err(p.span(), k(&format!("trusted_proxies[{i}]")), m)))
                .collect::<Result<Vec<_>, _>>(),
        );
        keep(
            &mut errors,
            self.health(name, &svc.health, svc.upstream_protocol, span.clone()),
        );
        errors.extend(self.limits(name, &svc, &span));
        let environments = keep(
            &mut errors,
            self.environments(name, svc.blue, svc.green, svc.run, span.clone(), claims),
        );
        let upstream_tls = environments.as_ref().and_then(|env| {
            if !svc.allow_shared_endpoints {
                keep(&mut errors, self.colors_apart(name, env));
            }
            keep(
                &mut errors,
                self.upstream_tls(name, svc.upstream_tls.as_ref(), env, span.clone()),
            )
        });
        let retry_paths = keep(&mut errors, self.retry_paths(name, svc.retry_paths.as_deref()));
        let upgrade_protocols = keep(
            &mut errors,
            self.upgrade_protocols(name, svc.upgrade_protocols.as_deref()),
        );
        errors.extend(self.release(name, &svc.release, span.clone()));
        errors.extend(self.traffic(name, &mut svc.release, span));
        let (
            Some(listen),
            Some(preview_listen),
            Some(tls),
            Some(trusted_proxies),
            Some(environments),
            Some(upstream_tls),
            Some(retry_paths),
            Some(upgrade_protocols),
        ) = (
            listen,
            preview_listen,
            tls,
            trusted_proxies,
            environments,
            upstream_tls,
            retry_paths,
            upgrade_protocols,
        )
        else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ServiceConfig {
            name: name.to_string(),
            listen,
            shared,
            preview_listen,
            tls,
            upstream_tls,
            upstream_protocol: svc.upstream_protocol,
            access_log: svc.access_log,
            response_headers: svc.response_headers,
            trusted_proxies,
            retry_non_idempotent: svc.retry_non_idempotent,
            retry_paths,
            upgrade_protocols,
            resolve_interval: svc.resolve_interval,
            health: svc.health,
            limits: svc.limits,
            environments,
            release: self.release_paths(svc.release),
        })
    }

    /// The release's files (webhook secrets) resolved against the config's folder.
    fn release_paths(&self, mut rel: ReleaseConfig) -> ReleaseConfig {
        for w in &mut rel.webhooks {
            w.secret_file = w.secret_file.as_deref().map(|p| self.resolve(p));
        }
        if let Some(a) = &mut rel.approval_webhook {
            a.secret_file = a.secret_file.as_deref().map(|p| self.resolve(p));
        }
        rel
    }

    /// Each path absolute, without a query or fragment (they are matched exactly against
    /// the request's path).
    fn retry_paths(&self, name: &str, paths: Option<&[Spanned<String>]>) -> Result<Vec<String>, ConfigError> {
        let Some(paths) = paths else {
            return Ok(defaults::retry_paths());
        };
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let v = p.get_ref();
                if !v.starts_with('/') || v.contains(['?', '#']) || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return self.err(
                        p.span(),
                        format!("services.{name}.retry_paths[{i}]"),
                        format!("expected a path such as \"/v1/chat/completions\" (starting with '/', no query, no spaces), got {v:?}"),
                    );
                }
                Ok(v.clone())
            })
            .collect()
    }

    /// Upgrade tokens (RFC 9110 §7.8 protocol names), lowercased; `h2c` is refused: a
    /// tunnelled HTTP/2 connection would bypass every per-request rule of the proxy.
    fn upgrade_protocols(&self, name: &str, list: Option<&[Spanned<String>]>) -> Result<Vec<String>, ConfigError> {
        let Some(list) = list else {
            return Ok(defaults::upgrade_protocols());
        };
        list.iter()
            .enumerate()
            .map(|(i, p)| {
                let v = p.get_ref();
                let key = format!("services.{name}.upgrade_protocols[{i}]");
                if v.eq_ignore_ascii_case("h2c") {
                    return self.err(
                        p.span(),
                        key,
                        "h2c is never tunnelled (h2c smuggling; RFC 9113 §3.1 deprecated the upgrade): HTTP/2 clients use prior knowledge, which cutover serves itself".into(),
                    );
                }
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if v.is_empty() || !v.bytes().all(token) {
                    return self.err(
                        p.span(),
                        key,
                        format!("expected an Upgrade protocol name such as \"websocket\" (a token, no version or spaces), got {v:?}"),
                    );
                }
                Ok(v.to_ascii_lowercase())
            })
            .collect()
    }

    fn preview_listen(
        &self,
        name: &str,
        svc: &RawService,
        claims: &mut Claims,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        let key = format!("services.{name}.preview_listen");
        let Some(s) = &svc.preview_listen else { return Ok(None) };
        let a = self.addr(s, key.clone())?;
        if !a.ip().is_loopback() && !svc.preview_allow_remote {
            return self.err(
                s.span(),
                key,
                format!("{a} is not a loopback address; the preview listener serves an unreleased version, so set `preview_allow_remote = true` to expose it on purpose"),
            );
        }
        self.claim(claims, a, key, s.span())?;
        Ok(Some(a))
    }

    /// The service's limits and resolve interval, each checked on its own.
    fn limits(&self, name: &str, svc: &RawService, span: &Span) -> Vec<ConfigError> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        let mut errors = Vec::new();
        if svc.limits.max_header_line_bytes < 1024 {
            keep(
                &mut errors,
                self.err_at::<()>(
                    k("limits.max_header_line_bytes"),
                    span.clone(),
                    "must be at least 1024".into(),
                ),
            );
        }
        if svc.resolve_interval.get() < std::time::Duration::from_secs(1) {
            keep(
                &mut errors,
                self.err_at::<()>(
                    k("resolve_interval"),
                    span.clone(),
                    "must be at least 1s: names are resolved again this often".into(),
                ),
            );
        }
        if svc.limits.max_connections == 0 {
            keep(
                &mut errors,
                self.err_at::<()>(k("limits.max_connections"), span.clone(), "must be at least 1".into()),
            );
        }
        errors
    }

    fn health(&self, name: &str, h: &HealthConfig, protocol: UpstreamProtocol, span: Span) -> Result<(), ConfigError> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        // The `health` table when the file has one, else the service: a default has no line.
        let near = self.span_of(&k("health")).unwrap_or(span.clone());
        if !h.path.starts_with('/') {
            return self.err_at(k("health.path"), near, format!("must start with '/', got {:?}", h.path));
        }
        if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
            return self.err_at(
                k("health"),
                span,
                "healthy_threshold and unhealthy_threshold must be at least 1".into(),
            );
        }
        if h.interval.get().is_zero() || h.timeout.get().is_zero() {
            return self.err_at(
                k("health"),
                span,
                "interval and timeout must be greater than zero".into(),
            );
        }
        // Keys of one kind given to another would be silently ignored: refuse them, as an
        // unknown key is refused.
        let kind = match h.kind {
            ProbeKind::Http => "http",
            ProbeKind::Grpc => "grpc",
            ProbeKind::Generation => "generation",
        };
        let given = |key: &str| self.span_of(&k(&format!("health.{key}"))).is_some();
        let only = [
            ("path", ProbeKind::Http),
            ("status", ProbeKind::Http),
            ("service", ProbeKind::Grpc),
            ("request", ProbeKind::Generation),
            ("expect", ProbeKind::Generation),
        ];
        for (key, owner) in only {
            if h.kind != owner && given(key) {
                let owner = match owner {
                    ProbeKind::Http => "http",
                    ProbeKind::Grpc => "grpc",
                    ProbeKind::Generation => "generation",
                };
                return self.err_at(
                    k(&format!("health.{key}")),
                    near,
                    format!("`{key}` is for kind = \"{owner}\" probes; this one is kind = \"{kind}\""),
                );
            }
        }
        match h.kind {
            ProbeKind::Http => {}
            ProbeKind::Grpc => {
                if protocol != UpstreamProtocol::H2c {
                    return self.err_at(
                        k("health.kind"),
                        near,
                        "a grpc probe speaks HTTP/2 to the endpoints: set upstream_protocol = \"h2c\" (gRPC model servers need it for their traffic too)".into(),
                    );
                }
            }
            ProbeKind::Generation => {
                let Some(req) = &h.request else {
                    return self.err_at(
                        k("health.kind"),
                        near,
                        "a generation probe needs `request = { method, path, body }`, e.g. a 1-token completion".into(),
                    );
                };
                if !req.path.starts_with('/') {
                    return self.err_at(
                        k("health.request.path"),
                        near,
                        format!("must start with '/', got {:?}", req.path),
                    );
                }
                if http_method_invalid(&req.method) {
                    return self.err_at(
                        k("health.request.method"),
                        near,
                        format!("{:?} is not an HTTP method such as \"POST\"", req.method),
                    );
                }
                if let Some(name) = req.headers.keys().find(|n| http_method_invalid(n)) {
                    return self.err_at(
                        k("health.request.headers"),
                        near,
                        format!("{name:?} is not a header name"),
                    );
                }
                if let Some((name, _)) = req
                    .headers
                    .iter()
                    .find(|(_, v)| v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f))
                {
                    return self.err_at(
                        k(&format!("health.request.headers.{name}")),
                        near,
                        "a header value may not hold control characters (line breaks included)".into(),
                    );
                }
                if let Some(e) = &h.expect {
                    if let Some(st) = e.status.filter(|s| !(100..=599).contains(s)) {
                        return self.err_at(
                            k("health.expect.status"),
                            near,
                            format!("status {st} is not 100 to 599"),
                        );
                    }
                    if e.max_latency.is_some() {
                        return self.err_at(
                            k("health.expect.max_latency"),
                            near,
                            "a probe's time limit is `health.timeout`".into(),
                        );
                    }
                    if let Some(bad) = e.json.keys().find(|p| !p.is_empty() && !p.starts_with('/')) {
                        return self.err_at(
                            k("health.expect.json"),
                            near,
                            format!("{bad:?} is not a JSON pointer such as \"/object\""),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn environments(
        &self,
        name: &str,
        blue: Option<Spanned<RawStaticColor>>,
        green: Option<Spanned<RawStaticColor>>,
        run: Option<Spanned<RunConfig>>,
        span: Span,
        claims: &mut Claims,
    ) -> Result<Environments, ConfigError> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        match (blue, green, run) {
            (Some(b), Some(g), None) => Ok(Environments::Static {
                blue: self.static_color(b, &k("blue"))?,
                green: self.static_color(g, &k("green"))?,
            }),
            (None, None, Some(run)) => self.managed(name, run, claims).map(Environments::Managed),
            (None, None, None) => self.err(
                span,
                format!("services.{name}"),
                "needs either static endpoints ([services.NAME.blue] and [services.NAME.green]) or a managed environment ([services.NAME.run])".into(),
            ),
            (b, g, Some(run)) if b.is_some() || g.is_some() => {
                self.err(run.span(), k("run"), "use either static endpoints (blue/green) or `run`, not both".into())
            }
            _ => self.err(span, format!("services.{name}"), "static endpoints need both [blue] and [green] tables".into()),
        }
    }

    fn managed(&self, name: &str, run: Spanned<RunConfig>, claims: &mut Claims) -> Result<RunConfig, ConfigError> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        let rspan = run.span();
        let mut run = run.into_inner();
        if run.command.is_empty() {
            return self.err(rspan, k("run.command"), "must name a program to run".into());
        }
        self.run_template(name, &run, &rspan)?;
        // The line of `ports` (or of the offending port) when the file has it, not the header.
        let at = |key: &str| self.span_of(key).unwrap_or_else(|| rspan.clone());
        if run.ports.blue.is_empty() || run.ports.green.is_empty() {
            return self.err(
                at(&k("run.ports")),
                k("run.ports"),
                "each color needs at least one port (one per replica)".into(),
            );
        }
        if run.ports.blue.len() != run.ports.green.len() {
            return self.err(
                at(&k("run.ports")),
                k("run.ports"),
                "both colors must have the same number of ports: they are identical environments".into(),
            );
        }
        for (color, ports) in [("blue", &run.ports.blue), ("green", &run.ports.green)] {
            for (i, p) in ports.iter().enumerate() {
                let key = format!("{}.{color}", k("run.ports"));
                let span = at(&format!("{key}.{i}"));
                if *p == 0 {
                    return self.err(
                        span,
                        key,
                        "port 0 is not allowed: cutover must know where the model server listens".into(),
                    );
                }
                if let Some(other) = claims.managed_ports.insert(*p, key.clone()) {
                    return self.err(span, key, format!("port {p} is also used by `{other}`"));
                }
                // On host agents the ports are the agents' machines', not this one's.
                if !run.hosts.is_empty() {
                    continue;
                }
                if let Ok(ip) = run.host.parse() {
                    self.claim(claims, SocketAddr::new(ip, *p), key, span)?;
                }
            }
        }
        if run.host.parse::<std::net::IpAddr>().is_err() {
            return self.err(
                at(&k("run.host")),
                k("run.host"),
                format!("invalid IP address {:?}", run.host),
            );
        }
        self.run_hosts(name, &run, &rspan, claims.fleet)?;
        run.workdir = run.workdir.map(|w| self.resolve(&w));
        Ok(run)
    }

    /// `run.hosts`: fleet mode only, each a host agent's name (it becomes part of etcd keys
    /// and of endpoint names), no name twice.
    fn run_hosts(&self, name: &str, run: &RunConfig, rspan: &Span, fleet: bool) -> Result<(), ConfigError> {
        if run.hosts.is_empty() {
            return Ok(());
        }
        let key = format!("services.{name}.run.hosts");
        let span = self.span_of(&key).unwrap_or_else(|| rspan.clone());
        if !fleet {
            return self.err(
                span,
                key,
                "host agents are a fleet mode feature: set `store.url = \"etcd://HOST:PORT,...\"` and `store.fleet`, or leave `hosts` out to run the processes on this machine".into(),
            );
        }
        for (i, h) in run.hosts.iter().enumerate() {
            if !is_host_name(h) {
                return self.err(
                    span,
                    format!("{key}[{i}]"),
                    format!("{h:?} is not a host agent name (letters, digits, `-`, `.`; what `cutover agent --host` was given)"),
                );
            }
            if run.hosts[..i].contains(h) {
                return self.err(span, format!("{key}[{i}]"), format!("host {h:?} is listed twice"));
            }
        }
        Ok(())
    }

    /// Cross-field rules of `[services.NAME.release]`, each reported on the line of its key.
    /// Every error of a service's release table.
    fn release(&self, name: &str, rel: &ReleaseConfig, span: Span) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let k = |rest: &str| format!("services.{name}.release.{rest}");
        // The nearest table the file has, for a key that only has its default.
        let near = |sub: &str| {
            self.span_of(&k(sub))
                .or_else(|| self.span_of(&format!("services.{name}.release")))
                .unwrap_or(span.clone())
        };
        if let Some(v) = &rel.verify {
            if !(0.0..=1.0).contains(&v.max_error_rate) {
                keep::<()>(
                    &mut errors,
                    self.err_at(
                        k("verify.max_error_rate"),
                        near("verify"),
                        format!("must be between 0 and 1, got {}", v.max_error_rate),
                    ),
                );
            }
            if let Some(t) = v.min_tokens_per_second {
                if !(t.is_finite() && t > 0.0) {
                    keep::<()>(
                        &mut errors,
                        self.err_at(
                            k("verify.min_tokens_per_second"),
                            near("verify.min_tokens_per_second"),
                            format!("must be a positive number of tokens per second, got {t}"),
                        ),
                    );
                }
            }
        }
        if let Some(v) = &rel.verify {
            errors.extend(self.external_gates(name, v, near("verify")));
        }
        errors.extend(self.webhooks(name, rel, near("webhooks")));
        if let Some(sh) = &rel.shadow {
            errors.extend(self.shadow(name, sh, near("shadow")));
        }
        if let Some((i, _)) = rel.smoke.iter().enumerate().find(|(_, s)| s.repeat == 0) {
            keep::<()>(
                &mut errors,
                self.err_at(
                    k(&format!("smoke.{i}.repeat")),
                    near("smoke"),
                    "must be at least 1".into(),
                ),
            );
        }
        if let Some(w) = &rel.warmup {
            if w.concurrency == 0 {
                keep::<()>(
                    &mut errors,
                    self.err_at(k("warmup.concurrency"), near("warmup"), "must be at least 1".into()),
                );
            }
        }
        let h = &rel.hooks;
        let stages = [
            ("provision", &h.provision),
            ("pre_switch", &h.pre_switch),
            ("post_switch", &h.post_switch),
            ("on_rollback", &h.on_rollback),
            ("post_scale_down", &h.post_scale_down),
        ];
        let mut n = 0;
        for (stage, hooks) in stages {
            for (i, hook) in hooks.iter().enumerate() {
                n += 1;
                if hook.is_empty() {
                    let span = self
                        .span_of(&k(&format!("hooks.{stage}.{i}")))
                        .unwrap_or_else(|| near("hooks"));
                    keep::<()>(
                        &mut errors,
                        self.err(span, k("hooks"), format!("hook #{n} is an empty argv list")),
                    );
                }
            }
        }
        for (i, s) in rel.smoke.iter().enumerate() {
            if !s.request.path.starts_with('/') {
                let span = self
                    .span_of(&k(&format!("smoke.{i}.request.path")))
                    .unwrap_or_else(|| near("smoke"));
                keep::<()>(
                    &mut errors,
                    self.err(
                        span,
                        k("smoke.request.path"),
                        format!("smoke check {:?}: path must start with '/'", s.name),
                    ),
                );
            }
        }
        errors
    }

    /// `traffic`, `sticky` and `header_route`: each in range; the header route's tokens are
    /// read here (an unreadable or empty file is an error, not a route nobody can use).
    fn traffic(&self, name: &str, rel: &mut ReleaseConfig, span: Span) -> Vec<ConfigError> {
        let k = |rest: &str| format!("services.{name}.release.{rest}");
        let near = |sub: &str| {
            self.span_of(&k(sub))
                .or_else(|| self.span_of(&format!("services.{name}.release")))
                .unwrap_or(span.clone())
        };
        let mut errors = Vec::new();
        let dotted = |table: &str, key: &str| {
            if key.is_empty() {
                k(table)
            } else {
                k(&format!("{table}.{key}"))
            }
        };
        if let Some((key, message)) = rel.traffic.invalid() {
            keep::<()>(
                &mut errors,
                self.err_at(dotted("traffic", key), near("traffic"), message),
            );
        }
        if let Some((key, message)) = rel.sticky.as_ref().and_then(|s| s.invalid()) {
            keep::<()>(&mut errors, self.err_at(dotted("sticky", key), near("sticky"), message));
        }
        if let Some(hr) = rel.header_route.as_mut() {
            if http::HeaderName::from_bytes(hr.header.as_bytes()).is_err() {
                let message = format!("{:?} is not a valid header name", hr.header);
                keep::<()>(
                    &mut errors,
                    self.err_at(k("header_route.header"), near("header_route"), message),
                );
            }
            hr.tokens_file = self.resolve(&hr.tokens_file);
            match std::fs::read_to_string(&hr.tokens_file) {
                Ok(text) if !traffic::tokens_of(&text).is_empty() => hr.tokens = traffic::tokens_of(&text),
                r => {
                    let why = r.err().map_or("it has no token".to_string(), |e| e.to_string());
                    let message = format!("cannot use {}: {why} (one token per line)", hr.tokens_file.display());
                    keep::<()>(
                        &mut errors,
                        self.err_at(k("header_route.tokens_file"), near("header_route"), message),
                    );
                }
            }
        }
        errors
    }

    /// `[[...webhooks]]` and `[...approval_webhook]`: http:// URLs, known events.
    fn webhooks(&self, name: &str, rel: &ReleaseConfig, near: Span) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let k = |rest: &str| format!("services.{name}.release.{rest}");
        for (i, w) in rel.webhooks.iter().enumerate() {
            if let Some((key, message)) = w.invalid() {
                let span = self
                    .span_of(&k(&format!("webhooks.{i}.{key}")))
                    .or_else(|| self.span_of(&k(&format!("webhooks.{i}"))))
                    .unwrap_or_else(|| near.clone());
                keep::<()>(&mut errors, self.err(span, k(&format!("webhooks.{key}")), message));
            }
        }
        if let Some((key, message)) = rel
            .approval_webhook
            .as_ref()
            .and_then(|a| webhooks::invalid_url(&a.url))
        {
            let key = k(&format!("approval_webhook.{key}"));
            keep::<()>(&mut errors, self.err_at(key, near, message));
        }
        errors
    }

    /// `[[...verify.prometheus]]` and `[[...verify.scrape]]`: a threshold each, valid sources.
    fn external_gates(&self, name: &str, v: &VerifyConfig, near: Span) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let found = v
            .prometheus
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.invalid().map(|e| ("prometheus", i, e)))
            .chain(
                v.scrape
                    .iter()
                    .enumerate()
                    .filter_map(|(i, g)| g.invalid().map(|e| ("scrape", i, e))),
            );
        for (kind, i, (key, message)) in found {
            let at = format!("services.{name}.release.verify.{kind}.{i}");
            let span = self
                .span_of(&format!("{at}.{key}"))
                .or_else(|| self.span_of(&at))
                .unwrap_or_else(|| near.clone());
            keep::<()>(
                &mut errors,
                self.err(span, format!("services.{name}.release.verify.{kind}.{key}"), message),
            );
        }
        errors
    }

    /// `[services.NAME.release.shadow]`: each key in range, `min_pairs` set where the phase
    /// reads it.
    fn shadow(&self, name: &str, sh: &ShadowConfig, table: Span) -> Vec<ConfigError> {
        let k = |rest: &str| format!("services.{name}.release.shadow.{rest}");
        let mut errors = Vec::new();
        if let Some((key, message)) = sh.invalid() {
            keep::<()>(&mut errors, self.err_at(k(key), table.clone(), message));
        }
        if let Some(span) = self.span_of(&k("thresholds.min_pairs")) {
            let msg = "set the phase's shadow.min_pairs instead".to_string();
            keep::<()>(&mut errors, self.err(span, k("thresholds.min_pairs"), msg));
        }
        errors
    }

    /// A listener of ours on an upstream's address would proxy to itself.
    fn no_self_proxy(&self, services: &BTreeMap<String, ServiceConfig>, claims: &Claims) -> Result<(), ConfigError> {
        for svc in services.values() {
            let Environments::Static { blue, green } = &svc.environments else {
                continue;
            };
            for (color, c) in [("blue", blue), ("green", green)] {
                for e in c.endpoints.iter().filter_map(EndpointSpec::literal) {
                    if let Some(owner) = claims.addrs.get(&e) {
                        let key = format!("services.{}.{color}.endpoints", svc.name);
                        let span = self.span_of(&key).unwrap_or(0..0);
                        return self.err(
                            span,
                            key,
                            format!("endpoint {e} is also the address of `{owner}`; cutover would proxy to itself"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn static_color(&self, c: Spanned<RawStaticColor>, key: &str) -> Result<StaticColor, ConfigError> {
        let span = c.span();
        let c = c.into_inner();
        if c.endpoints.is_empty() {
            return self.err(span, format!("{key}.endpoints"), "needs at least one HOST:PORT".into());
        }
        let mut endpoints = Vec::new();
        for e in &c.endpoints {
            let a = EndpointSpec::parse(e.get_ref()).or_else(|m| self.err(e.span(), format!("{key}.endpoints"), m))?;
            if endpoints.contains(&a) {
                return self.err(
                    e.span(),
                    format!("{key}.endpoints"),
                    format!("endpoint {a} is listed twice"),
                );
            }
            endpoints.push(a);
        }
        Ok(StaticColor {
            endpoints,
            version: c.version,
        })
    }
}

#[cfg(test)]
mod tests;
