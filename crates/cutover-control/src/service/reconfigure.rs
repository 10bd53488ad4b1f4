//! A reload's changes to one running service, applied in place: the routes, their in-flight
//! counts and drain signals, the processes and every open connection stay as they are.
//!
//! What cannot change in place is refused before anything is applied ([`ServiceCtl::refusal`]):
//! static ↔ managed, the upstream protocol (pools and engines differ), and a managed
//! service's `run.host`/`run.ports` (its processes run there; a new layout takes a release
//! to a service added under another name).

use std::sync::Arc;

use cutover_config::{Environments, ServiceConfig};
use cutover_proxy::{health, Color, Endpoint};

use super::{health_spec, settings_from, ServiceCtl};

/// `a != b` for config parts: they are plain data whose Debug form shows every field.
fn differ<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

impl ServiceCtl {
    /// Why `new` cannot be applied to this service in place, if it cannot.
    pub(crate) fn refusal(&self, new: &ServiceConfig) -> Option<String> {
        let old = self.cfg();
        let name = &self.name;
        match (&old.environments, &new.environments) {
            (Environments::Static { .. }, Environments::Managed(_))
            | (Environments::Managed(_), Environments::Static { .. }) => {
                return Some(format!(
                    "services.{name}: switching between static endpoints and a managed `run` table is not applied by reload; \
                     add the new form as a service of another name, move traffic, then remove this one"
                ));
            }
            (Environments::Managed(a), Environments::Managed(b))
                if a.host != b.host || a.hosts != b.hosts || differ(&a.ports, &b.ports) =>
            {
                return Some(format!(
                    "services.{name}.run: `host`, `hosts` and `ports` cannot change while cutover runs processes there; \
                     the rest of `run` (command, env, restart, ...) can"
                ));
            }
            _ => {}
        }
        if old.tls != new.tls {
            return Some(format!(
                "services.{name}.tls: turning TLS on or off, or naming other certificate files, is not applied by reload \
                 (the listeners would change protocol under their clients); restart cutover to change it. New contents \
                 of the same files are read by every reload and within seconds by themselves"
            ));
        }
        if old.upstream_tls != new.upstream_tls {
            return Some(format!(
                "services.{name}: switching its endpoints between http:// and https://, or `upstream_tls`, is not applied by \
                 reload (connection pools and engines differ); restart cutover (`serve --upgrade` keeps connections) to change it"
            ));
        }
        if old.upstream_protocol != new.upstream_protocol {
            return Some(format!(
                "services.{name}.upstream_protocol: changing the upstream protocol is not applied by reload (connection pools and \
                 engines differ); restart cutover (`serve --upgrade` keeps connections) to change it"
            ));
        }
        None
    }

    /// What differs between the running configuration and `new`, as the reload reports it.
    pub(crate) fn changes(&self, new: &ServiceConfig) -> Vec<String> {
        let old = self.cfg();
        let mut out = Vec::new();
        let mut note = |changed: bool, what: &str| {
            if changed {
                out.push(what.to_string());
            }
        };
        note(old.listen != new.listen, "listen");
        note(old.preview_listen != new.preview_listen, "preview_listen");
        // Against the settings the data plane runs with: building them from the old config again
        // would load the upstream CA roots again for nothing.
        note(
            differ(&*self.proxy.settings(), &settings_from(new)),
            "limits/forwarding",
        );
        note(differ(&old.health, &new.health), "health");
        note(old.resolve_interval != new.resolve_interval, "resolve_interval");
        note(differ(&old.release, &new.release), "release");
        match (&old.environments, &new.environments) {
            (Environments::Static { blue: ob, green: og }, Environments::Static { blue: nb, green: ng }) => {
                note(ob.endpoints != nb.endpoints, "blue.endpoints");
                note(og.endpoints != ng.endpoints, "green.endpoints");
                note(ob.version != nb.version || og.version != ng.version, "version labels");
            }
            (Environments::Managed(a), Environments::Managed(b)) => note(differ(a, b), "run"),
            _ => note(true, "environments"),
        }
        out
    }

    /// Applies `new` (already checked by [`refusal`](Self::refusal)): the new settings
    /// take effect for new connections and requests, new health checks replace the old
    /// ones, the endpoint sets move to the new lists in place, the next process start uses
    /// the new `run` template. Listeners are the reload's (it re-binds a changed address).
    pub(crate) async fn reconfigure(self: &Arc<Self>, new: ServiceConfig) {
        let old = self.cfg();
        let new_settings = settings_from(&new);
        let settings_changed = differ(&*self.proxy.settings(), &new_settings);
        let health_changed = differ(&old.health, &new.health);
        let pools_changed = {
            let (a, b) = (&old.limits, &new.limits);
            a.connect_timeout != b.connect_timeout
                || a.pool_max_idle != b.pool_max_idle
                || a.pool_idle_timeout != b.pool_idle_timeout
        };
        if let (Some(procs), Environments::Managed(run)) = (&self.procs, &new.environments) {
            procs.set_run(run.clone());
        }
        self.cfg.store(Arc::new(new.clone()));
        if settings_changed {
            self.proxy.set_settings(new_settings);
        }
        if health_changed {
            self.health.store(Arc::new(health_spec(&new)));
        }
        // New names resolve now; a name dropped from the lists is forgotten.
        self.resolve_names().await;
        for c in Color::ALL {
            if pools_changed {
                // Pools hold their settings: endpoints anew (health carried over, so no
                // routing changes), idle connections of the old pools close as they drop.
                self.renew_endpoints(c);
            }
            self.refresh_endpoints(c).await;
            if health_changed || pools_changed {
                self.restart_checks(c);
            }
        }
        self.ensure_resolver();
    }

    /// `color`'s endpoints replaced by new ones at the same addresses with the same health.
    fn renew_endpoints(&self, color: Color) {
        let Some(route) = self.route(color) else { return };
        let settings = self.proxy.settings();
        let next = route
            .endpoints()
            .iter()
            .map(|e| {
                let n = Endpoint::named(e.addr, e.name.clone(), &settings);
                n.set_health(e.health());
                n
            })
            .collect();
        route.set_endpoints(next);
    }

    /// New health checks for `color` if it is checked (new probe settings or endpoints).
    fn restart_checks(&self, color: Color) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots[color.index()].as_mut().filter(|s| s.checks.is_some()) {
            slot.checks = Some(health::spawn(&self.name, &slot.route, &self.health()));
        }
    }
}
