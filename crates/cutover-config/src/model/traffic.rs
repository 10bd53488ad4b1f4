//! `traffic`, `sticky` and `header_route` of `[services.NAME.release]`: how a release moves
//! traffic (all at once, a canary step, linear steps), what keeps a client on one color
//! while it is split, and the testers' header route to the idle color.

use serde::Deserialize;

use crate::value::Duration;

/// How a release moves traffic to the new color.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Traffic {
    /// Blue-green: 100% in one switch.
    #[default]
    AllAtOnce,
    /// `percent` of the traffic for `bake`, judged by the gates; then all of it.
    Canary { percent: u8, bake: Duration },
    /// `step`, 2×`step`, ... percent, each for `interval`; then all of it.
    Linear { step: u8, interval: Duration },
}

/// One step of a progressive release: the new color's share and how long it is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub weight: u8,
    pub bake: std::time::Duration,
}

impl Traffic {
    /// The mode's name as the API and the release document show it.
    pub fn name(&self) -> &'static str {
        match self {
            Traffic::AllAtOnce => "all_at_once",
            Traffic::Canary { .. } => "canary",
            Traffic::Linear { .. } => "linear",
        }
    }

    /// The steps before the full switch (none for `all_at_once`).
    pub fn steps(&self) -> Vec<Step> {
        match *self {
            Traffic::AllAtOnce => Vec::new(),
            Traffic::Canary { percent, bake } => vec![Step {
                weight: percent,
                bake: bake.get(),
            }],
            Traffic::Linear { step, interval } => (1..)
                .map(|i| u32::from(step) * i)
                .take_while(|w| *w < 100)
                .map(|w| Step {
                    weight: w as u8,
                    bake: interval.get(),
                })
                .collect(),
        }
    }

    /// What is wrong with the mode, as (key under `traffic`, message).
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        let (key, n, d) = match *self {
            Traffic::AllAtOnce => return None,
            Traffic::Canary { percent, bake } => ("canary.percent", percent, bake),
            Traffic::Linear { step, interval } => ("linear.step", step, interval),
        };
        if !(1..=99).contains(&n) {
            return Some((key, format!("must be a percentage from 1 to 99, got {n}")));
        }
        if d.get().is_zero() {
            let key = if key.starts_with("canary") {
                "canary.bake"
            } else {
                "linear.interval"
            };
            return Some((key, "must be longer than 0s: each step is judged by the gates".into()));
        }
        None
    }
}

/// `sticky = { header = "x-user-id" } | { body_field = "user" } | { token = true }`: one key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    pub header: Option<String>,
    pub body_field: Option<String>,
    pub token: Option<bool>,
}

impl StickyConfig {
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        let set = [
            self.header.is_some(),
            self.body_field.is_some(),
            self.token == Some(true),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Some((
                "",
                "expected exactly one of header = \"NAME\", body_field = \"FIELD\" or token = true".into(),
            ));
        }
        if let Some(h) = &self.header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Some(("header", format!("{h:?} is not a valid header name")));
            }
        }
        if self.body_field.as_deref() == Some("") {
            return Some((
                "body_field",
                "must name a top-level JSON field, such as \"user\"".into(),
            ));
        }
        None
    }
}

/// `header_route = { header = "x-cutover-color", tokens_file = "testers.tokens" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRouteConfig {
    pub header: String,
    /// One token per line; blank lines and `#` comments skipped. Relative to the config.
    pub tokens_file: std::path::PathBuf,
    /// Read from `tokens_file` when the config is loaded.
    #[serde(skip)]
    pub tokens: Vec<String>,
}

/// The tokens of a tokens file's text.
pub fn tokens_of(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_steps_stop_below_100_and_canary_is_one_step() {
        let lin = Traffic::Linear {
            step: 30,
            interval: Duration::from_secs(60),
        };
        let w: Vec<u8> = lin.steps().iter().map(|s| s.weight).collect();
        assert_eq!(w, vec![30, 60, 90]);
        let can = Traffic::Canary {
            percent: 10,
            bake: Duration::from_secs(300),
        };
        assert_eq!(can.steps().len(), 1);
        assert!(Traffic::AllAtOnce.steps().is_empty());
        let bad = Traffic::Canary {
            percent: 100,
            bake: Duration::from_secs(1),
        };
        assert_eq!(bad.invalid().map(|e| e.0), Some("canary.percent"));
    }
}
