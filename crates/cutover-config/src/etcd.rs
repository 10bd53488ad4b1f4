//! How to reach etcd in fleet mode: the members of an etcd URL, and the TLS files and user
//! that go with them, checked together with their files read now. `[store]` and
//! `cutover agent`'s flags both come here.

use std::path::{Path, PathBuf};

use crate::model::{EtcdTls, EtcdUser, TlsConfig};
use crate::pem::{ca_certificates, tls_pair, PairFile};

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
                tls_pair(cert, key)
                    .map_err(|(which, m)| (if which == PairFile::Cert { S::Cert } else { S::Key }, m))?;
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
