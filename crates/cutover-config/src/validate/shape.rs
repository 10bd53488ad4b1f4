//! A file whose shape does not deserialize: the error serde stopped at, then each part of
//! the file read again on its own with every key that does not fit taken out in turn, so
//! one typo hides no other error.

use toml::Spanned;

use super::Source;
use crate::error::ConfigError;
use crate::raw::{RawConfig, RawService};

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

impl Source<'_> {
    /// The errors of a file whose shape did not deserialize: the one serde stopped at, then
    /// those of every part deserialized on its own ([`Source::part`]: `[admin]` with
    /// `[store]`, and each service), then the validation of what they hold, so a typo hides
    /// no other error.
    pub(super) fn shape_errors<E: std::borrow::Borrow<toml::de::Error>>(
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
    pub(super) fn part<T: serde::de::DeserializeOwned>(
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
}
