//! Fleet mode's building blocks: an etcd client ([`etcd`]), the key layout under
//! `/cutover/<fleet>/` ([`Keys`]) and the documents stored there ([`doc`]). What a router
//! does with them (read, apply, acknowledge, watch) lives in `cutover-control`'s `fleet`.
//!
//! # Layout
//! - `etcd`: the v3 JSON gateway over hyper, member failover, watch streams.
//! - `access`: TLS to `https://` members, client certificates, etcd's user and its token.
//! - `doc`: the service document, the history record and the router's ack, with validation;
//!   the host agents' registration, desired processes and reports.
//! - `hosts`: what a router knows of the host agents (their registrations and reports).

#![forbid(unsafe_code)]

pub mod access;
pub mod doc;
pub mod etcd;
pub mod hosts;

pub use access::{Access, Credentials};
pub use etcd::{Etcd, EtcdError};

/// `d` scaled by a factor between 0.5 and 1.5, so clients cut off together (an etcd outage)
/// do not come back in lockstep and hit the members at the same instant.
pub fn jittered(d: std::time::Duration) -> std::time::Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    // The clock's low digits are as good as random for spreading retries.
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

/// The keys of one fleet, all under `/cutover/<fleet>/`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `fleet` is validated by the config (letters, digits, `-`, `_`).
    pub fn new(fleet: &str) -> Keys {
        Keys {
            prefix: format!("/cutover/{fleet}/"),
        }
    }

    /// Everything of the fleet: what a router watches.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What a router watches: everything of the fleet but the routers' acks and the switches'
    /// history records, as `[key, range_end)` ranges. Every router watching every ack made
    /// the events per switch grow as N²; the acks are read by whoever waits for them.
    pub fn watched(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let p = &self.prefix;
        let end = |k: &str| {
            let mut e = k.as_bytes().to_vec();
            // The keys are ASCII and end in '/': the next byte value bounds the prefix.
            *e.last_mut().expect("not empty") += 1;
            e
        };
        let history = format!("{p}history/");
        let routers = self.routers();
        vec![
            (p.as_bytes().to_vec(), history.as_bytes().to_vec()),
            (end(&history), routers.as_bytes().to_vec()),
            (end(&routers), end(p)),
        ]
    }

    pub fn services(&self) -> String {
        format!("{}services/", self.prefix)
    }

    /// One service's document: a switch is one put of it.
    pub fn service(&self, name: &str) -> String {
        format!("{}services/{name}", self.prefix)
    }

    /// The service a key of [`Keys::services`] names.
    pub fn service_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix("services/")
    }

    /// One history record; the generation is zero-padded so keys sort in order.
    pub fn history(&self, name: &str, generation: u64) -> String {
        format!("{}history/{name}/{generation:020}", self.prefix)
    }

    pub fn routers(&self) -> String {
        format!("{}routers/", self.prefix)
    }

    /// A router's ack, on its lease: gone when the router is.
    pub fn router(&self, id: &str) -> String {
        format!("{}routers/{id}", self.prefix)
    }

    pub fn router_id<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix("routers/")
    }

    /// The elected controller's key, on its lease (`doc::LeaderDoc`).
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    pub fn releases(&self) -> String {
        format!("{}releases/", self.prefix)
    }

    /// Every release document of one service.
    pub fn service_releases(&self, service: &str) -> String {
        format!("{}releases/{service}/", self.prefix)
    }

    /// The service and id a key of [`Keys::releases`] names.
    pub fn release_of<'k>(&self, key: &'k str) -> Option<(&'k str, i64)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("releases/")?;
        let (service, id) = rest.split_once('/')?;
        Some((service, id.parse().ok()?))
    }

    /// One release document; the id is zero-padded so keys sort in order.
    pub fn release(&self, service: &str, id: i64) -> String {
        format!("{}releases/{service}/{id:020}", self.prefix)
    }

    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.prefix)
    }

    /// A host agent's registration (`doc::HostDoc`), kept when the agent is gone: routers
    /// go on reaching its model servers at the address it advertised.
    pub fn host(&self, name: &str) -> String {
        format!("{}hosts/{name}", self.prefix)
    }

    pub fn host_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix("hosts/")
    }

    pub fn agents(&self) -> String {
        format!("{}agents/", self.prefix)
    }

    /// A host agent's presence, on its lease: gone when the agent is cut from etcd.
    pub fn agent(&self, host: &str) -> String {
        format!("{}agents/{host}", self.prefix)
    }

    pub fn agent_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix("agents/")
    }

    pub fn desired(&self) -> String {
        format!("{}desired/", self.prefix)
    }

    /// What one color of a service should run on its hosts (`doc::DesiredProcs`).
    pub fn desired_of(&self, service: &str, color: doc::Color) -> String {
        format!("{}desired/{service}/{}", self.prefix, color.as_str())
    }

    /// The service and color a key of [`Keys::desired`] names.
    pub fn desired_key<'k>(&self, key: &'k str) -> Option<(&'k str, doc::Color)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("desired/")?;
        let (service, color) = rest.split_once('/')?;
        Some((service, color.parse().ok()?))
    }

    pub fn reports(&self) -> String {
        format!("{}reports/", self.prefix)
    }

    /// What one host runs of one color of a service (`doc::HostReport`).
    pub fn report(&self, service: &str, color: doc::Color, host: &str) -> String {
        format!("{}reports/{service}/{}/{host}", self.prefix, color.as_str())
    }

    /// The service, color and host a key of [`Keys::reports`] names.
    pub fn report_key<'k>(&self, key: &'k str) -> Option<(&'k str, doc::Color, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("reports/")?;
        let mut parts = rest.splitn(3, '/');
        let (service, color, host) = (parts.next()?, parts.next()?, parts.next()?);
        Some((service, color.parse().ok()?, host))
    }
}

/// What a role may do with a range of keys (`etcdctl role grant-permission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Read,
    Write,
    ReadWrite,
}

impl Perm {
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Read => "read",
            Perm::Write => "write",
            Perm::ReadWrite => "readwrite",
        }
    }
}

/// One permission of a least-privilege etcd role: `key` alone, or every key under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub perm: Perm,
    pub key: String,
    pub prefix: bool,
}

impl Grant {
    fn new(perm: Perm, key: String, prefix: bool) -> Grant {
        Grant { perm, key, prefix }
    }

    /// `etcdctl` arguments that grant it to `role`.
    pub fn etcdctl_args(&self, role: &str) -> Vec<String> {
        let mut a = vec!["role".into(), "grant-permission".into(), role.into()];
        if self.prefix {
            a.push("--prefix=true".into());
        }
        a.push(self.perm.as_str().into());
        a.push(self.key.clone());
        a
    }
}

impl Keys {
    /// A router's role: it reads the whole fleet (one watch over the prefix) and writes
    /// switches (`services/`, `history/`), its ack (`routers/`), and, because any router may
    /// be elected, the leader's keys: `leader`, `releases/` and `desired/` (what the host
    /// agents run). Whoever holds it chooses the commands the agents start.
    pub fn router_grants(&self) -> Vec<Grant> {
        let mut g = vec![Grant::new(Perm::Read, self.prefix.clone(), true)];
        for k in [
            self.services(),
            format!("{}history/", self.prefix),
            self.routers(),
            self.releases(),
            self.desired(),
        ] {
            g.push(Grant::new(Perm::ReadWrite, k, true));
        }
        g.push(Grant::new(Perm::ReadWrite, self.leader(), false));
        g
    }

    /// The role of the agent of `host`: it reads `desired/` and writes its registration,
    /// its presence and the reports of what it runs; it can never change what any host runs.
    /// Reports are keyed by service first, so `reports/` is granted whole.
    pub fn agent_grants(&self, host: &str) -> Vec<Grant> {
        vec![
            Grant::new(Perm::Read, self.desired(), true),
            Grant::new(Perm::Write, self.host(host), false),
            Grant::new(Perm::Write, self.agent(host), false),
            Grant::new(Perm::Write, self.reports(), true),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_watches_every_key_of_the_fleet_but_the_acks_and_the_history() {
        let k = Keys::new("prod");
        let ranges = k.watched();
        let watched = |key: &str| {
            ranges
                .iter()
                .any(|(a, b)| a.as_slice() <= key.as_bytes() && key.as_bytes() < b.as_slice())
        };
        for key in [
            k.service("chat"),
            k.leader(),
            k.release("chat", 7),
            k.host("gpu-a"),
            k.agent("gpu-a"),
            k.desired_of("chat", doc::Color::Blue),
            k.report("chat", doc::Color::Green, "gpu-b"),
        ] {
            assert!(watched(&key), "{key} is not watched");
        }
        for key in [
            k.router("edge-1"),
            k.history("chat", 3),
            "/cutover/prod0".to_string(),
            "/cutover/pro/x".into(),
        ] {
            assert!(!watched(&key), "{key} is watched");
        }
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        let d = std::time::Duration::from_millis(400);
        for _ in 0..100 {
            let j = jittered(d);
            assert!(j >= d / 2 && j <= d * 3 / 2, "{j:?}");
        }
    }

    #[test]
    fn clients_spread_over_members_stably() {
        let members: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", 2379 + i)).collect();
        let starts: std::collections::BTreeSet<usize> = (0..30)
            .map(|i| etcd::spread_index(&format!("router-{i}"), members.len()))
            .collect();
        assert_eq!(starts.len(), 3, "30 names land on every member");
        assert_eq!(etcd::spread_index("edge-1", 3), etcd::spread_index("edge-1", 3));
    }

    #[test]
    fn keys_sit_under_the_fleet_prefix_and_parse_back() {
        let k = Keys::new("prod");
        assert_eq!(k.service("chat"), "/cutover/prod/services/chat");
        assert_eq!(k.service_name(&k.service("chat")), Some("chat"));
        assert_eq!(k.history("chat", 7), "/cutover/prod/history/chat/00000000000000000007");
        assert_eq!(k.router_id(&k.router("r1")), Some("r1"));
        assert_eq!(k.service_name("/cutover/other/services/chat"), None);
        assert!(k.history("chat", 10) > k.history("chat", 9));
        assert_eq!(k.release("chat", 3), "/cutover/prod/releases/chat/00000000000000000003");
        assert!(k.release("chat", 3).starts_with(&k.service_releases("chat")));
        assert!(k.release("chat", 10) > k.release("chat", 9));
        assert_eq!(k.release_of(&k.release("chat", 12)), Some(("chat", 12)));
        assert_eq!(k.release_of(&k.service("chat")), None);
        assert_eq!(k.host_name(&k.host("gpu-a")), Some("gpu-a"));
        assert_eq!(k.agent_name(&k.agent("gpu-a")), Some("gpu-a"));
        let d = k.desired_of("chat", doc::Color::Green);
        assert_eq!(d, "/cutover/prod/desired/chat/green");
        assert_eq!(k.desired_key(&d), Some(("chat", doc::Color::Green)));
        let r = k.report("chat", doc::Color::Blue, "gpu-b");
        assert_eq!(k.report_key(&r), Some(("chat", doc::Color::Blue, "gpu-b")));
        assert_eq!(k.report_key(&d), None);
        assert_eq!(k.desired_key(&k.service("chat")), None);
    }

    #[test]
    fn an_agents_role_grants_nothing_under_desired_but_read() {
        let k = Keys::new("prod");
        let agent = k.agent_grants("gpu-a");
        assert!(agent
            .iter()
            .filter(|g| k.desired_of("chat", doc::Color::Green).starts_with(&g.key) || g.key.starts_with(&k.desired()))
            .all(|g| g.perm == Perm::Read));
        assert_eq!(
            agent[1].etcdctl_args("cutover-agent-gpu-a"),
            [
                "role",
                "grant-permission",
                "cutover-agent-gpu-a",
                "write",
                "/cutover/prod/hosts/gpu-a"
            ]
        );
        let router = k.router_grants();
        assert!(router.iter().any(|g| g.key == k.desired() && g.perm == Perm::ReadWrite));
        assert_eq!(
            router[0].etcdctl_args("cutover-router"),
            [
                "role",
                "grant-permission",
                "cutover-router",
                "--prefix=true",
                "read",
                "/cutover/prod/"
            ]
        );
    }
}
