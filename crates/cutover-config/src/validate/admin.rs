//! `[admin]` and `[store]` (fleet mode's keys among them), and the `tls` tables of every
//! listener: the files they name are read and checked now.

use std::path::Path;

use toml::Spanned;

use super::{Claims, Source, Span};
use crate::error::ConfigError;
use crate::etcd::{etcd_access, EtcdAccess, EtcdAccessInput, EtcdSetting};
use crate::model::{AdminConfig, FleetConfig, StoreConfig, TlsConfig};
use crate::pem::tls_pair;
use crate::raw::{RawAdmin, RawStore, RawTls};
use crate::value::is_key_word;

impl Source<'_> {
    pub(super) fn admin(&self, raw: &RawAdmin, claims: &mut Claims) -> Result<AdminConfig, ConfigError> {
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
                let a = AdminConfig::LISTEN;
                self.claim(claims, a, "admin.listen".into(), 0..0)?;
                a
            }
        };
        Ok(AdminConfig {
            listen,
            token_file: self.resolve(raw.token_file.as_deref().unwrap_or(Path::new(AdminConfig::TOKEN_FILE))),
            tokens_file: self.resolve(
                raw.tokens_file
                    .as_deref()
                    .unwrap_or(Path::new(AdminConfig::TOKENS_FILE)),
            ),
            address_file: raw.address_file.as_deref().map(|p| self.resolve(p)),
            tls: self.tls(raw.tls.as_ref(), "admin.tls", 0..0)?,
        })
    }

    /// A listener's `tls` table, its files read and checked now: an error names `KEY.cert` or
    /// `KEY.key`, whichever file is wrong.
    pub(super) fn tls(
        &self,
        raw: Option<&RawTls>,
        key: &str,
        fallback: Span,
    ) -> Result<Option<TlsConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let t = TlsConfig {
            cert: self.resolve(&raw.cert),
            key: self.resolve(&raw.key),
        };
        let near = self.span_of(key).unwrap_or(fallback);
        if let Err((which, m)) = tls_pair(&t.cert, &t.key) {
            return self.err_at(format!("{key}.{}", which.key()), near, m);
        }
        Ok(Some(t))
    }

    pub(super) fn store(&self, raw: &RawStore) -> Result<StoreConfig, ConfigError> {
        let path = self.resolve(raw.path.as_deref().unwrap_or(Path::new(StoreConfig::PATH)));
        let data_dir = match &raw.data_dir {
            Some(d) => self.resolve(d),
            None => path.parent().unwrap_or(Path::new(".")).join(StoreConfig::DATA_DIR),
        };
        let fleet = self.fleet(raw)?;
        Ok(StoreConfig { path, data_dir, fleet })
    }

    /// Fleet mode's keys: all of them need `url`, and `url` needs `fleet`.
    pub(super) fn fleet(&self, raw: &RawStore) -> Result<Option<FleetConfig>, ConfigError> {
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
            None => FleetConfig::ACK_TIMEOUT,
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
    pub(super) fn etcd_access(&self, raw: &RawStore, url: &Spanned<String>) -> Result<EtcdAccess, ConfigError> {
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
}
