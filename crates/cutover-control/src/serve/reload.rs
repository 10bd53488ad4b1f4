//! Configuration reload (SIGHUP, `POST /v1/reload`, `cutover reload`) of a running `serve`.
//!
//! A reload reads the config file again and validates it whole; an invalid file changes
//! nothing (logged, counted, answered with file, line and key). Then every change that cannot
//! be applied in place is refused, again before anything changes: `[admin]` and `[store]`,
//! and the per-service cases [`ServiceCtl::refusal`] names; a service with a release in
//! progress is not touched either. Then the new listeners are bound (a new service, a changed
//! address); a bind that fails undoes the others. Only then are changes applied: services
//! added (restored from the store like at start-up), services changed in place, listeners
//! whose address changed replaced (the old one stops accepting and drains its connections
//! for the grace period), services removed (their listeners drain the same way; their
//! managed processes keep running, as when cutover stops). A listener whose address did not
//! change is never touched: no connection of an unchanged service notices a reload.
//!
//! The decisions ([`refusal_of_file`], [`plan`], [`binds`]) are pure functions of the two
//! configurations and what the running services say; [`Serving::reload`] runs their effects.
//!
//! [`ServiceCtl::refusal`]: crate::service::ServiceCtl::refusal

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use cutover_config::Config;
use cutover_proxy::listener;
use cutover_store::{EventRecord, HistoryKind};
use tokio::net::TcpListener;

pub use super::listeners::Serving;
use crate::api::reload::{Reload, ReloadFuture};
pub use crate::api::reload::{ReloadError, ReloadReport};

/// What a running service says of the new configuration.
#[derive(Debug, Default)]
struct Seen {
    /// Its new section, if it has one: why it cannot be applied in place, else what changes.
    next: Option<Result<Vec<String>, String>>,
    /// The release in progress: (id, version).
    release: Option<(i64, String)>,
}

/// What a reload will do, decided before anything changes.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    added: Vec<String>,
    removed: Vec<String>,
    /// Per service changed in place, what changes (`health`, `listen`, ...).
    changed: Vec<(String, Vec<String>)>,
}

/// Why the file as a whole cannot be reloaded: `[admin]`, `[store]` or the shared listeners
/// changed (each read at start only).
fn refusal_of_file(old: &Config, new: &Config) -> Option<String> {
    if format!("{:?}", old.admin) != format!("{:?}", new.admin)
        || format!("{:?}", old.store) != format!("{:?}", new.store)
    {
        return Some(
            "[admin] and [store] are read at start only; restart cutover (`serve --upgrade` keeps connections) to change them"
                .into(),
        );
    }
    shared_change(old, new)
}

/// The services added, removed and changed, or why the reload is refused: the first
/// refusal in the new file's order, then a service removed mid-release, then (in fleet mode)
/// any service added or removed.
fn plan(new: &Config, running: &BTreeMap<String, Seen>, fleet: bool) -> Result<Plan, String> {
    let mut plan = Plan::default();
    for name in new.services.keys() {
        let Some(seen) = running.get(name) else {
            plan.added.push(name.clone());
            continue;
        };
        let what = match &seen.next {
            Some(Ok(what)) => what,
            Some(Err(why)) => return Err(why.clone()),
            None => continue,
        };
        if what.is_empty() {
            continue;
        }
        if let Some((id, version)) = &seen.release {
            return Err(format!(
                "release {id} of {name} ({version}) is in progress; wait for it or abort it, then reload"
            ));
        }
        plan.changed.push((name.clone(), what.clone()));
    }
    for (name, seen) in running {
        if new.services.contains_key(name) {
            continue;
        }
        if let Some((id, version)) = &seen.release {
            return Err(format!(
                "release {id} of {name} ({version}) is in progress; a service cannot be removed mid-release"
            ));
        }
        plan.removed.push(name.clone());
    }
    if fleet && !(plan.added.is_empty() && plan.removed.is_empty()) {
        return Err(
            "in fleet mode a reload does not add or remove services yet (every router must agree on the set): \
             change the config of every router and restart them one at a time (`serve --upgrade`)"
                .into(),
        );
    }
    Ok(plan)
}

/// The listeners to bind: (service, preview, address, config key) for every address the new
/// file asks for that no loop serves yet (`have` says what a loop was configured with).
fn binds(new: &Config, have: impl Fn(&str, bool) -> Option<SocketAddr>) -> Vec<(String, bool, SocketAddr, String)> {
    let mut out = Vec::new();
    for cfg in new.services.values() {
        // A shared listener's services have no live listener of their own.
        let own = cfg.shared.is_none().then_some(cfg.listen);
        for (preview, want) in [(false, own), (true, cfg.preview_listen)] {
            let Some(want) = want else { continue };
            if have(&cfg.name, preview) == Some(want) {
                continue;
            }
            let key = format!(
                "services.{}.{}",
                cfg.name,
                if preview { "preview_listen" } else { "listen" }
            );
            out.push((cfg.name.clone(), preview, want, key));
        }
    }
    out
}

impl Serving {
    /// Reads the config file again and applies what changed; see the module docs.
    pub async fn reload(&self, actor: &str) -> Result<ReloadReport, ReloadError> {
        let _one = self.reloading.lock().await;
        // Not while a successor takes the listeners over (it would miss what changes), nor
        // ever after it did: the store is the successor's then.
        let _permit = self.ctl.pause.enter().await;
        // Certificates first, whatever becomes of the configuration: a SIGHUP from a renewal
        // hook must not depend on the config file being valid.
        let certs = self.certs.clone();
        let certificates = tokio::task::spawn_blocking(move || certs.reload())
            .await
            .unwrap_or_default();
        let r = self.reload_inner(actor).await.map(|mut report| {
            report.certificates = certificates;
            report
        });
        let counts = &self.ctl.reloads;
        match &r {
            Ok(report) => {
                counts.ok.fetch_add(1, Relaxed);
                tracing::info!(actor, changes = %report.summary(), "configuration reloaded");
            }
            Err(e) => {
                counts.error.fetch_add(1, Relaxed);
                tracing::error!(actor, error = %e, "configuration reload failed; the running configuration is unchanged");
            }
        }
        r
    }

    /// Reads and decides (nothing changes on a refusal), binds (dropping what was bound on
    /// a failure undoes it), then applies.
    async fn reload_inner(&self, actor: &str) -> Result<ReloadReport, ReloadError> {
        let path = self.config_path.clone();
        let new = tokio::task::spawn_blocking(move || cutover_config::load(&path))
            .await
            .map_err(|e| ReloadError::Refused(format!("the config reader failed: {e}")))?
            .map_err(ReloadError::Invalid)?;
        if let Some(why) = refusal_of_file(&self.ctl.config, &new) {
            return Err(ReloadError::Refused(why));
        }
        let plan = plan(&new, &self.seen(&new), self.ctl.fleet().is_some()).map_err(ReloadError::Refused)?;
        let mut bound: Vec<(String, bool, TcpListener, SocketAddr)> = Vec::new();
        for (name, preview, want, key) in binds(&new, |s, p| self.configured(s, p)) {
            let l = listener::bind(want)
                .map_err(|e| ReloadError::Bind(crate::procs::supervisor::cannot_listen(&key, want, &e)))?;
            bound.push((name, preview, l, want));
        }
        let report = self.apply(&new, plan, bound).await?;
        self.record(actor, &report);
        self.write_addresses();
        Ok(report)
    }

    /// What each running service says of `new`.
    fn seen(&self, new: &Config) -> BTreeMap<String, Seen> {
        let running = self.ctl.services();
        running
            .iter()
            .map(|(name, svc)| {
                let next = new
                    .services
                    .get(name)
                    .map(|cfg| svc.refusal(cfg).map_or_else(|| Ok(svc.changes(cfg)), Err));
                let release = self.ctl.active_release_doc(name).map(|d| (d.id, d.version));
                (name.clone(), Seen { next, release })
            })
            .collect()
    }

    /// The effects of a decided reload, in order: services added, changed in place, the new
    /// listeners started, previews the file dropped and removed services' listeners stopped.
    async fn apply(
        &self,
        new: &Config,
        plan: Plan,
        bound: Vec<(String, bool, TcpListener, SocketAddr)>,
    ) -> Result<ReloadReport, ReloadError> {
        let mut report = ReloadReport {
            added: plan.added,
            removed: plan.removed,
            ..Default::default()
        };
        for name in &report.added {
            self.ctl
                .add_service(&new.services[name])
                .map_err(|e| ReloadError::Refused(format!("cannot add service {name}: {e}")))?
                .start_resolving()
                .await;
        }
        for (name, what) in plan.changed {
            let svc = self.ctl.service(&name).expect("a running service");
            svc.reconfigure(new.services[&name].clone()).await;
            report.changed.insert(name, what);
        }
        for (name, preview, l, want) in bound {
            self.start(&name, preview, l, want)
                .map_err(|e| ReloadError::Bind(e.to_string()))?;
        }
        // A preview listener the new config dropped.
        for cfg in new.services.values() {
            if cfg.preview_listen.is_none() {
                self.stop_loop(&cfg.name, true);
            }
        }
        for name in &report.removed {
            self.stop_loop(name, false);
            self.stop_loop(name, true);
            self.certs.remove(&format!("services.{name}.tls"));
            let _ = self.ctl.remove_service(name);
        }
        Ok(report)
    }

    /// One history line per service the reload touched.
    fn record(&self, actor: &str, report: &ReloadReport) {
        let mut lines: Vec<(&str, String)> = Vec::new();
        for n in &report.added {
            lines.push((n, "reload: added to the configuration".into()));
        }
        for n in &report.removed {
            lines.push((
                n,
                "reload: removed from the configuration (managed processes keep running)".into(),
            ));
        }
        for (n, what) in &report.changed {
            lines.push((n, format!("reload: changed {}", what.join(", "))));
        }
        for (service, reason) in lines {
            let r = self.ctl.store.record_event(&EventRecord {
                service,
                kind: HistoryKind::Reconfigured,
                color: None,
                version: None,
                actor,
                reason: &reason,
                release_id: None,
            });
            if let Err(e) = r {
                tracing::error!(service, error = %e, "cannot record the reload in history");
            }
        }
    }
}

/// Why a reload cannot apply the new config's shared listeners, if it changed them: the
/// listener's rules are fixed while it serves (its requests pick among them without a lock).
fn shared_change(old: &Config, new: &Config) -> Option<String> {
    let matches = |c: &Config| -> BTreeMap<String, Option<cutover_config::SharedMatch>> {
        c.services
            .iter()
            .map(|(n, s)| (n.clone(), s.shared.clone()))
            .filter(|(_, m)| m.is_some())
            .collect()
    };
    if old.listeners == new.listeners && matches(old) == matches(new) {
        return None;
    }
    Some(
        "shared listeners ([listeners.NAME], and the `listener` and `match` of their services) are read at start only: \
         restart cutover (`serve --upgrade` keeps connections) to change them"
            .into(),
    )
}

/// The admin API's `POST /v1/reload` comes here.
impl Reload for Serving {
    fn reload<'a>(&'a self, actor: &'a str) -> ReloadFuture<'a> {
        Box::pin(Serving::reload(self, actor))
    }
}

#[cfg(test)]
mod tests {
    use super::super::listeners::shared_front;
    use super::*;
    use cutover_proxy::Protocol;
    use std::sync::Arc;

    const SHARED: &str = r#"
[listeners.api]
listen = "127.0.0.1:0"
[services.chat]
listener = "api"
match = { model = ["a"] }
[services.chat.blue]
endpoints = ["127.0.0.1:9001"]
[services.chat.green]
endpoints = ["127.0.0.1:9002"]
"#;

    fn parse(text: &str) -> Config {
        cutover_config::parse(std::path::Path::new("/etc/cutover/cutover.toml"), text).unwrap()
    }

    #[test]
    fn a_reload_refuses_any_change_to_a_shared_listener_and_allows_the_rest() {
        let old = parse(SHARED);
        assert_eq!(shared_change(&old, &parse(SHARED)), None);
        let limits = format!("{SHARED}[services.chat.limits]\nmax_body_bytes = 1000\n");
        assert_eq!(
            shared_change(&old, &parse(&limits)),
            None,
            "a service's own settings reload"
        );
        for changed in [
            SHARED.replace(r#"["a"]"#, r#"["a", "b"]"#),
            SHARED.replace("127.0.0.1:0", "127.0.0.1:8000"),
            format!(
                "{SHARED}[services.embed]\nlistener = \"api\"\nmatch = {{ model = [\"e\"] }}\n\
                 [services.embed.blue]\nendpoints = [\"127.0.0.1:9011\"]\n[services.embed.green]\nendpoints = [\"127.0.0.1:9012\"]\n"
            ),
        ] {
            let why = shared_change(&old, &parse(&changed)).expect("refused");
            assert!(why.contains("read at start only") && why.contains("serve --upgrade"), "{why}");
        }
    }

    #[test]
    fn a_shared_listener_takes_hyper_when_any_service_needs_it() {
        let cfg = parse(SHARED);
        let chat = Arc::new(cfg.services["chat"].clone());
        assert_eq!(
            shared_front(std::slice::from_ref(&chat)).unwrap().protocol,
            Protocol::Http1
        );
        let h2 = parse(&SHARED.replace(
            "[services.chat.blue]",
            "upstream_protocol = \"h2c\"\n[services.chat.blue]",
        ));
        let h2 = Arc::new(h2.services["chat"].clone());
        assert_eq!(shared_front(&[chat, h2]).unwrap().protocol, Protocol::H2c);
        assert!(shared_front(&[]).is_none());
    }

    const TWO: &str = r#"
[services.chat]
listen = "127.0.0.1:8001"
[services.chat.blue]
endpoints = ["127.0.0.1:9001"]
[services.chat.green]
endpoints = ["127.0.0.1:9002"]
[services.embed]
listen = "127.0.0.1:8002"
preview_listen = "127.0.0.1:8003"
[services.embed.blue]
endpoints = ["127.0.0.1:9003"]
[services.embed.green]
endpoints = ["127.0.0.1:9004"]
"#;

    fn same(next: &[&str]) -> Seen {
        Seen {
            next: Some(Ok(next.iter().map(|s| s.to_string()).collect())),
            release: None,
        }
    }

    #[test]
    fn a_plan_names_what_is_added_changed_and_removed() {
        let new = parse(TWO);
        let running = BTreeMap::from([
            ("chat".to_string(), same(&["health"])),
            ("old".to_string(), Seen::default()),
        ]);
        let p = plan(&new, &running, false).unwrap();
        assert_eq!(p.added, ["embed"]);
        assert_eq!(p.removed, ["old"]);
        assert_eq!(p.changed, [("chat".to_string(), vec!["health".to_string()])]);
        let unchanged = BTreeMap::from([("chat".to_string(), same(&[])), ("embed".to_string(), same(&[]))]);
        assert_eq!(plan(&new, &unchanged, false).unwrap(), Plan::default());
    }

    #[test]
    fn a_plan_refuses_a_service_it_cannot_change_or_that_is_mid_release() {
        let new = parse(TWO);
        let refused = BTreeMap::from([
            (
                "chat".to_string(),
                Seen {
                    next: Some(Err("no".into())),
                    release: None,
                },
            ),
            ("embed".to_string(), same(&[])),
        ]);
        assert_eq!(plan(&new, &refused, false), Err("no".to_string()));
        // A release blocks a change, not an unchanged service.
        let releasing = |what: &[&str]| Seen {
            release: Some((7, "v2".into())),
            ..same(what)
        };
        let busy = BTreeMap::from([("chat".to_string(), releasing(&[])), ("embed".to_string(), same(&[]))]);
        assert!(plan(&new, &busy, false).is_ok());
        let busy = BTreeMap::from([
            ("chat".to_string(), releasing(&["health"])),
            ("embed".to_string(), same(&[])),
        ]);
        let why = plan(&new, &busy, false).unwrap_err();
        assert!(why.contains("release 7 of chat (v2) is in progress"), "{why}");
        let removed = BTreeMap::from([
            ("chat".to_string(), same(&[])),
            ("embed".to_string(), same(&[])),
            (
                "old".to_string(),
                Seen {
                    next: None,
                    release: Some((3, "v9".into())),
                },
            ),
        ]);
        let why = plan(&new, &removed, false).unwrap_err();
        assert!(why.contains("cannot be removed mid-release"), "{why}");
    }

    #[test]
    fn in_fleet_mode_a_plan_neither_adds_nor_removes() {
        let new = parse(TWO);
        let one = BTreeMap::from([("chat".to_string(), same(&[]))]);
        assert!(plan(&new, &one, true).unwrap_err().contains("fleet mode"));
        assert_eq!(plan(&new, &one, false).unwrap().added, ["embed"]);
        let both = BTreeMap::from([
            ("chat".to_string(), same(&["health"])),
            ("embed".to_string(), same(&[])),
        ]);
        assert_eq!(
            plan(&new, &both, true).unwrap().changed.len(),
            1,
            "a change in place is allowed"
        );
    }

    #[test]
    fn binds_are_the_addresses_no_loop_was_started_for() {
        let new = parse(TWO);
        let all = binds(&new, |_, _| None);
        let keys: Vec<_> = all.iter().map(|b| b.3.as_str()).collect();
        assert_eq!(
            keys,
            [
                "services.chat.listen",
                "services.embed.listen",
                "services.embed.preview_listen"
            ]
        );
        let running = |s: &str, p: bool| match (s, p) {
            ("chat", false) => Some("127.0.0.1:8001".parse().unwrap()),
            ("embed", false) => Some("127.0.0.1:9999".parse().unwrap()),
            _ => None,
        };
        let keys: Vec<_> = binds(&new, running).into_iter().map(|b| (b.3, b.2.port())).collect();
        assert_eq!(
            keys,
            [
                ("services.embed.listen".to_string(), 8002),
                ("services.embed.preview_listen".to_string(), 8003)
            ],
            "an unchanged address is not bound again; a moved one and a new preview are"
        );
        // A shared listener's service has no listener of its own.
        assert!(binds(&parse(SHARED), |_, _| None).is_empty());
    }

    #[test]
    fn the_file_is_refused_when_admin_or_store_changes() {
        let old = parse(TWO);
        assert_eq!(refusal_of_file(&old, &parse(TWO)), None);
        let admin = format!("[admin]\nlisten = \"127.0.0.1:7999\"\n{TWO}");
        let why = refusal_of_file(&old, &parse(&admin)).unwrap();
        assert!(why.contains("[admin] and [store]"), "{why}");
    }
}
