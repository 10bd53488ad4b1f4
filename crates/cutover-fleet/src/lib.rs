//! Fleet mode's building blocks: an etcd client ([`etcd`]), the key layout under
//! `/cutover/<fleet>/` ([`Keys`]) and the documents stored there ([`doc`]). What a router
//! does with them (read, apply, acknowledge, watch) lives in `cutover-control`'s `fleet`.
//!
//! # Layout
//! - `etcd`: the v3 JSON gateway over hyper, member failover, watch streams.
//! - `doc`: the service document, the history record and the router's ack, with validation.

#![forbid(unsafe_code)]

pub mod doc;
pub mod etcd;

pub use etcd::{Etcd, EtcdError};

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
