//! The file's shape, as serde reads it and before validation: addresses and names still
//! strings with their place in the file (`Spanned`), keys that are optional here and get
//! their defaults in the model. Sections whose shape is already their type (limits, run,
//! release) are read straight into the model's types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::model::{
    Expect, Http1Engine, LimitsConfig, ProbeKind, ReleaseConfig, RequestSpec, RunConfig, UpstreamProtocol,
};
use crate::value::{Duration, StatusSet};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) admin: RawAdmin,
    #[serde(default)]
    pub(crate) store: RawStore,
    #[serde(default)]
    pub(crate) services: BTreeMap<String, Spanned<RawService>>,
    #[serde(default)]
    pub(crate) listeners: BTreeMap<String, Spanned<RawListener>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) listen: Spanned<String>,
    pub(crate) tls: Option<RawTls>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    #[serde(default)]
    pub(crate) model: Vec<Spanned<String>>,
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) tokens_file: Option<PathBuf>,
    pub(crate) address_file: Option<PathBuf>,
    /// Must be set to bind the admin API to a non-loopback address.
    #[serde(default)]
    pub(crate) allow_remote: bool,
    pub(crate) tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) path: Option<PathBuf>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) url: Option<Spanned<String>>,
    pub(crate) fleet: Option<Spanned<String>>,
    pub(crate) router_id: Option<Spanned<String>>,
    pub(crate) ack_timeout: Option<Spanned<Duration>>,
    pub(crate) tls: Option<RawEtcdTls>,
    pub(crate) username: Option<Spanned<String>>,
    pub(crate) password_file: Option<Spanned<PathBuf>>,
    /// Never accepted: present only to say why.
    pub(crate) password: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEtcdTls {
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub(crate) listen: Option<Spanned<String>>,
    /// A shared listener's name, instead of `listen`.
    pub(crate) listener: Option<Spanned<String>>,
    #[serde(rename = "match")]
    pub(crate) matches: Option<Spanned<RawMatch>>,
    pub(crate) preview_listen: Option<Spanned<String>>,
    /// Must be set to bind the preview listener to a non-loopback address.
    #[serde(default)]
    pub(crate) preview_allow_remote: bool,
    pub(crate) tls: Option<RawTls>,
    pub(crate) upstream_tls: Option<RawUpstreamTls>,
    /// Lets blue and green share endpoints (benchmarks and test rigs: a switch then changes
    /// only the version label).
    #[serde(default)]
    pub(crate) allow_shared_endpoints: bool,
    #[serde(default)]
    pub(crate) upstream_protocol: UpstreamProtocol,
    #[serde(default)]
    pub(crate) http1_engine: Http1Engine,
    #[serde(default)]
    pub(crate) access_log: bool,
    pub(crate) response_headers: Option<bool>,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<Spanned<String>>,
    pub(crate) retry_non_idempotent: Option<bool>,
    pub(crate) retry_paths: Option<Vec<Spanned<String>>>,
    pub(crate) upgrade_protocols: Option<Vec<Spanned<String>>>,
    pub(crate) resolve_interval: Option<Duration>,
    #[serde(default)]
    pub(crate) health: RawHealth,
    #[serde(default)]
    pub(crate) limits: LimitsConfig,
    pub(crate) blue: Option<Spanned<RawStaticColor>>,
    pub(crate) green: Option<Spanned<RawStaticColor>>,
    pub(crate) run: Option<Spanned<RunConfig>>,
    #[serde(default)]
    pub(crate) release: ReleaseConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStaticColor {
    pub(crate) endpoints: Vec<Spanned<String>>,
    pub(crate) version: Option<String>,
}

/// `health = { ... }` as written: the keys every probe has, and each kind's own keys with
/// their place in the file, so that a key of another kind is refused where it stands when
/// the table becomes a [`crate::model::ProbeConfig`] (the kind may come after it, or not
/// at all).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) kind: Option<Spanned<ProbeKind>>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) status: Option<Spanned<StatusSet>>,
    pub(crate) service: Option<Spanned<String>>,
    pub(crate) request: Option<Spanned<RequestSpec>>,
    pub(crate) expect: Option<Spanned<Expect>>,
    pub(crate) interval: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) healthy_threshold: Option<u32>,
    pub(crate) unhealthy_threshold: Option<u32>,
    pub(crate) passive_window: Option<Duration>,
}
