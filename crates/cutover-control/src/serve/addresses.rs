//! The addresses file (`serve --addresses-file`, JSON) and `admin.address_file`: written once
//! everything serves, and the former again whenever a reload binds listeners; one type and
//! one writer for both, so the file a reload rewrites has what start-up wrote.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::service::BoundAddrs;

/// What one `serve` bound, as written to `--addresses-file`.
#[derive(Debug, Clone, Serialize)]
pub struct Addresses {
    pub admin: SocketAddr,
    pub services: BTreeMap<String, BoundAddrs>,
    /// Shared listeners (`[listeners.NAME]`) by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, SocketAddr>,
}

impl Addresses {
    /// Writes the JSON form to `path` (with a rename: a reader never sees half of it).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_atomically(path, &serde_json::to_string_pretty(self)?)
    }
}

/// Writes `admin.address_file` and `--addresses-file`: present means everything serves.
pub(super) fn write_addresses(admin: Option<&Path>, all: Option<&Path>, addresses: &Addresses) -> anyhow::Result<()> {
    if let Some(path) = admin {
        write_atomically(path, &format!("{}\n", addresses.admin))?;
    }
    if let Some(path) = all {
        addresses.write(path)?;
    }
    Ok(())
}

/// Writes a file of bound addresses with a rename, so a reader never sees half of one.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write the addresses file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write the addresses file {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_holds_every_listener_and_no_temporary_is_left() {
        let dir = std::env::temp_dir().join(format!("cutover-addresses-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("addresses.json");
        let a = Addresses {
            admin: "127.0.0.1:7000".parse().unwrap(),
            services: BTreeMap::from([(
                "chat".to_string(),
                BoundAddrs {
                    listen: "127.0.0.1:7001".parse().unwrap(),
                    preview_listen: None,
                },
            )]),
            listeners: BTreeMap::from([("api".to_string(), "127.0.0.1:7002".parse().unwrap())]),
        };
        a.write(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["admin"], "127.0.0.1:7000");
        assert_eq!(v["services"]["chat"]["listen"], "127.0.0.1:7001");
        assert_eq!(v["listeners"]["api"], "127.0.0.1:7002");
        assert!(!path.with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
