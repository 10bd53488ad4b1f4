//! The documents fleet mode keeps in etcd: one per service (a switch is one put of it), one
//! history record per switch, and each router's ack. Parsing validates: a document a router
//! cannot apply is rejected with the reason, never half applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The words documents share with the rest of cutover, spelled as the store and the API spell
/// them.
pub use cutover_types::{Color, HistoryKind, RestartPolicy};

/// The version at each color.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    pub blue: Option<String>,
    pub green: Option<String>,
}

/// One service's routing, the whole of it: `services/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDoc {
    /// Increases by one with every switch; a router applies only a higher one.
    pub generation: u64,
    /// `None` before anything was live.
    pub live: Option<Color>,
    pub versions: Versions,
    /// A progressive release's step: the share (0-100) of the live traffic that goes to the
    /// other color. 0 (and absent, in documents from before steps) outside one.
    #[serde(default)]
    pub weight: u8,
    /// The writer's hash of the service's configuration (endpoints, versions as configured):
    /// routers whose configuration differs show it in `GET /v1/fleet`.
    #[serde(default)]
    pub config_hash: String,
    pub updated_at: String,
    pub actor: String,
    /// The router that wrote it: with `updated_at`, what makes two writers' documents
    /// differ, so a retried write can tell its own document from a rival's.
    #[serde(default)]
    pub router: String,
}

/// The most a document may weigh: a service document is a few hundred bytes.
pub const MAX_DOC_BYTES: usize = 64 * 1024;

impl ServiceDoc {
    /// Parses and checks a stored document; the error says what is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<ServiceDoc, String> {
        if bytes.len() > MAX_DOC_BYTES {
            return Err(format!(
                "document of {} bytes, over the {MAX_DOC_BYTES}-byte limit",
                bytes.len()
            ));
        }
        let doc: ServiceDoc = serde_json::from_slice(bytes).map_err(|e| format!("invalid service document: {e}"))?;
        if doc.live.is_none() && doc.generation > 0 {
            return Err(format!(
                "invalid service document: generation {} with nothing live",
                doc.generation
            ));
        }
        Ok(doc)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a service document serializes")
    }
}

/// One switch, as `history/<name>/<generation>` records it (written in the switch's txn).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub at: String,
    /// What the switch was (`switched`, `rolled_back` or `stepped`).
    pub kind: HistoryKind,
    pub from: Option<Color>,
    pub to: Color,
    pub generation: u64,
    pub version: Option<String>,
    pub actor: String,
    pub reason: String,
    /// The router whose admin API took the switch.
    pub router: String,
}

/// What a router says about what it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Everything the router read is applied.
    Synced,
    /// A document could not be applied (`reason`); the router keeps its previous state.
    Rejected,
}

/// A router's ack, `routers/<id>`, on its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The generation applied per service.
    pub generations: BTreeMap<String, u64>,
    /// A hash of what is applied (services, generations, live colors): equal hashes, equal
    /// routing.
    pub hash: String,
    pub status: AckStatus,
    /// Why a document was rejected, naming the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where this router's admin API listens.
    pub admin_url: String,
    /// The etcd revision the router has applied up to.
    pub revision: i64,
    pub at: String,
}

impl Ack {
    pub fn parse(bytes: &[u8]) -> Result<Ack, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid ack: {e}"))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an ack serializes")
    }
}

/// The elected controller, `leader`, on the leader's lease: gone when its lease is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderDoc {
    pub router_id: String,
    /// Where the leader's admin API listens: other routers forward release requests there.
    pub admin_url: String,
    /// When it won (RFC 3339).
    pub since: String,
}

impl LeaderDoc {
    pub fn parse(bytes: &[u8]) -> Result<LeaderDoc, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid leader document: {e}"))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a leader document serializes")
    }
}

/// A host agent's registration, `hosts/<name>`: where routers reach its model servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDoc {
    /// The address the agent's model servers listen on and routers connect to: an IP
    /// address or a DNS name.
    pub advertise: String,
    /// When the agent (re)registered (RFC 3339).
    pub since: String,
    /// The agent's pid, for people reading etcd.
    #[serde(default)]
    pub pid: u32,
}

impl HostDoc {
    pub fn parse(bytes: &[u8]) -> Result<HostDoc, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid host document: {e}"))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a host document serializes")
    }
}

/// Whether a color's processes should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wanted {
    Run,
    Stop,
}

/// What an exit of a running process leads to on the agent (the supervisor's role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcRole {
    /// Being released: an exit fails the release, no restart.
    Releasing,
    /// Live or warm: restarted by the policy.
    Serving,
    /// Neither: reported only.
    Idle,
}

/// The managed environment's template as the controller's config says it, sent to agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTemplate {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Ports on each host, per color.
    pub blue_ports: Vec<u16>,
    pub green_ports: Vec<u16>,
    /// Absolute, or `None`: the agent's own working directory.
    pub workdir: Option<String>,
    /// Written `on-failure` or `never`.
    pub restart: RestartPolicy,
    pub restart_limit: u32,
    pub restart_window_ms: u64,
    pub stop_timeout_ms: u64,
}

/// What one color of a service should run on its hosts: `desired/<service>/<color>`,
/// written by the controller, read by every agent named in `hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredProcs {
    /// A new start (or stop) has a new epoch; the same epoch with another role only changes
    /// what an exit leads to.
    pub epoch: u64,
    pub wanted: Wanted,
    pub version: Option<String>,
    pub role: ProcRole,
    pub hosts: Vec<String>,
    pub template: RunTemplate,
    pub at: String,
    /// The router that wrote it.
    pub router: String,
}

impl DesiredProcs {
    pub fn parse(bytes: &[u8]) -> Result<DesiredProcs, String> {
        if bytes.len() > MAX_DOC_BYTES {
            return Err(format!("desired document of {} bytes, over the limit", bytes.len()));
        }
        let d: DesiredProcs = serde_json::from_slice(bytes).map_err(|e| format!("invalid desired document: {e}"))?;
        if d.wanted == Wanted::Run && (d.version.is_none() || d.template.command.is_empty()) {
            return Err("invalid desired document: a run without a version or a command".into());
        }
        if d.template.blue_ports.len() != d.template.green_ports.len() {
            return Err("invalid desired document: blue and green have different numbers of ports".into());
        }
        Ok(d)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a desired document serializes")
    }
}

/// Where a host's processes of one epoch are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Started (each process spawned and recorded); health is the routers' to check.
    Running,
    /// The start failed (`error`).
    Failed,
    /// Stopped as asked.
    Stopped,
}

/// One process as an agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedProcess {
    pub replica: u32,
    pub port: u16,
    pub pid: u32,
    pub version: String,
    pub started_at: Option<String>,
    pub log: Option<String>,
}

/// The latest exit nobody asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedExit {
    pub replica: u32,
    pub pid: u32,
    pub version: String,
    pub status: String,
    pub at: String,
    pub log: Option<String>,
    /// The last lines of its log.
    #[serde(default)]
    pub tail: String,
}

/// What one host runs of one color of a service: `reports/<service>/<color>/<host>`,
/// written by its agent whenever it changes (no lease: the last word stays readable while
/// the agent is cut off; `agents/<host>` says whether it is there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// The desired epoch this report is about.
    pub epoch: u64,
    pub state: HostState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub processes: Vec<ReportedProcess>,
    /// Restarts by the policy within this epoch.
    pub restarts: u64,
    pub last_exit: Option<ReportedExit>,
}

impl HostReport {
    pub fn parse(bytes: &[u8]) -> Result<HostReport, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid host report: {e}"))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a host report serializes")
    }
}

/// FNV-1a, 64 bits, as hex: a stable hash of a text (no dependency, no randomized seed).
pub fn hash_hex(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_round_trips_and_bad_ones_say_why() {
        let doc = ServiceDoc {
            generation: 3,
            live: Some(Color::Green),
            weight: 10,
            versions: Versions {
                blue: Some("v1".into()),
                green: Some("v2".into()),
            },
            config_hash: hash_hex("x"),
            updated_at: "2026-01-01T00:00:00Z".into(),
            actor: "alice".into(),
            router: "r1".into(),
        };
        assert_eq!(ServiceDoc::parse(&doc.to_bytes()).unwrap(), doc);
        let e =
            ServiceDoc::parse(br#"{"generation": 4, "live": "purple", "versions": {}, "updated_at": "", "actor": ""}"#)
                .unwrap_err();
        assert!(e.contains("purple"), "{e}");
        let e = ServiceDoc::parse(br#"{"generation": 4, "live": null, "versions": {}, "updated_at": "", "actor": ""}"#)
            .unwrap_err();
        assert!(e.contains("nothing live"), "{e}");
        assert!(ServiceDoc::parse(b"not json")
            .unwrap_err()
            .contains("invalid service document"));
    }

    /// Documents as routers wrote them before the kinds and policies were types: the same
    /// bytes read back as the same words, and are written again unchanged.
    #[test]
    fn stored_history_records_and_templates_keep_their_spelling() {
        let text = r#"{"at":"2026-01-01T00:00:00Z","kind":"rolled_back","from":"green","to":"blue","generation":7,"version":"v1","actor":"alice","reason":"why","router":"r1"}"#;
        let h: HistoryRecord = serde_json::from_str(text).unwrap();
        assert_eq!(
            (h.kind, h.from, h.to),
            (HistoryKind::RolledBack, Some(Color::Green), Color::Blue)
        );
        assert_eq!(serde_json::to_string(&h).unwrap(), text);
        for (spelling, policy) in [
            ("on-failure", RestartPolicy::OnFailure),
            ("never", RestartPolicy::Never),
        ] {
            let text = format!(
                r#"{{"command":["serve"],"env":{{}},"blue_ports":[9001],"green_ports":[9002],"workdir":null,"restart":"{spelling}","restart_limit":5,"restart_window_ms":600000,"stop_timeout_ms":30000}}"#
            );
            let t: RunTemplate = serde_json::from_str(&text).unwrap();
            assert_eq!(t.restart, policy);
            assert_eq!(serde_json::to_string(&t).unwrap(), text);
        }
    }

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(hash_hex(""), "cbf29ce484222325");
        assert_ne!(hash_hex("a"), hash_hex("b"));
    }
}
