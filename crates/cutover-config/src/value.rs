//! Values the file writes as strings and the model keeps typed: durations, HTTP status
//! sets, endpoint and CIDR addresses, and the words that become etcd keys or HTTP tokens.
//! Each parses on its own, with an error that says what was expected.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer};

/// A duration written as a string such as `"500ms"`, `"30s"`, `"10m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Duration).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); expected a string such as \"500ms\", \"30s\" or \"10m\""
            ))
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Expected HTTP statuses: `200`, `"200-299"`, or a list of those (`[200, "300-399"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(pub Vec<(u16, u16)>);

impl StatusSet {
    /// 2xx and 3xx: what `http` probes accepted before `status` existed.
    pub fn success_or_redirect() -> StatusSet {
        StatusSet(vec![(200, 399)])
    }
}

impl<'de> Deserialize<'de> for StatusSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum One {
            Code(i64),
            Range(String),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Many {
            One(One),
            List(Vec<One>),
        }
        const WANT: &str = "expected a status such as 200, a range such as \"200-299\", or a list of those";
        let code = |n: i64| -> Result<u16, D::Error> {
            match u16::try_from(n) {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(serde::de::Error::custom(format!(
                    "status {n} is not 100 to 599; {WANT}"
                ))),
            }
        };
        let one = |o: One| -> Result<(u16, u16), D::Error> {
            match o {
                One::Code(n) => code(n).map(|c| (c, c)),
                One::Range(s) => {
                    let parse = |t: &str| {
                        t.trim()
                            .parse::<i64>()
                            .map_err(|_| serde::de::Error::custom(format!("{s:?}: {WANT}")))
                    };
                    let (a, b) = match s.split_once('-') {
                        Some((a, b)) => (code(parse(a)?)?, code(parse(b)?)?),
                        None => {
                            let c = code(parse(&s)?)?;
                            (c, c)
                        }
                    };
                    if a > b {
                        return Err(serde::de::Error::custom(format!("{s:?}: the range is empty; {WANT}")));
                    }
                    Ok((a, b))
                }
            }
        };
        let ranges = match Many::deserialize(d).map_err(|_| serde::de::Error::custom(WANT))? {
            Many::One(o) => vec![one(o)?],
            Many::List(l) if l.is_empty() => {
                return Err(serde::de::Error::custom(format!("the list is empty; {WANT}")))
            }
            Many::List(l) => l.into_iter().map(one).collect::<Result<_, _>>()?,
        };
        Ok(StatusSet(ranges))
    }
}

/// One configured upstream: `IP:PORT`, `[V6]:PORT` or `NAME:PORT`, optionally written with
/// `http://`. A name is resolved when `serve` starts and again every `resolve_interval`; each
/// address it resolves to is an endpoint of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointSpec {
    /// The host as written, without brackets: an IP address or a DNS name. For `https://`,
    /// the name the model server's certificate must carry (and the SNI cutover sends).
    pub host: String,
    pub port: u16,
    /// Written `https://`: cutover talks TLS to this endpoint.
    pub tls: bool,
}

impl EndpointSpec {
    /// The address itself when the host is an IP literal (nothing to resolve).
    pub fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }

    pub fn from_addr(a: SocketAddr) -> EndpointSpec {
        EndpointSpec {
            host: a.ip().to_string(),
            port: a.port(),
            tls: false,
        }
    }

    /// Parses an endpoint as the config writes it; the error says what was wrong.
    pub fn parse(s: &str) -> Result<EndpointSpec, String> {
        const WANT: &str = "expected HOST:PORT such as \"10.0.0.5:8000\" or \"gpu-a.internal:8000\"";
        let (rest, tls) = if let Some(r) = s.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = s.strip_prefix("https://") {
            (r, true)
        } else if s.contains("://") {
            return Err(format!("{s:?}: unknown scheme (http:// or https://); {WANT}"));
        } else {
            (s, false)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Ok(a) = rest.parse::<SocketAddr>() {
            return Ok(EndpointSpec {
                tls,
                ..EndpointSpec::from_addr(a)
            });
        }
        if rest.contains(['/', '@', '?', '#', ' ']) || rest.starts_with('[') {
            return Err(format!("{s:?} is not an address; {WANT}"));
        }
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(format!("{s:?} has no port; {WANT}"));
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{s:?}: the port must be 1 to 65535; {WANT}")),
        };
        if host.parse::<std::net::Ipv4Addr>().is_ok() || !is_dns_name(host) {
            return Err(format!(
                "{s:?}: {host:?} is neither an IP address nor a DNS name; {WANT}"
            ));
        }
        Ok(EndpointSpec {
            host: host.to_ascii_lowercase(),
            port,
            tls,
        })
    }
}

/// A DNS name as RFC 1123 allows in a host: dot-separated labels of letters, digits and
/// inner hyphens, 63 bytes a label, 253 in all (a trailing dot is the root, allowed).
fn is_dns_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        // All digits and dots is a mistyped IPv4 address, not a name.
        && !h.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A fleet name or router id: it becomes part of etcd keys.
pub fn is_key_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A host agent's name: one DNS-style name, so it is a valid endpoint name and etcd key.
pub fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Methods and header names are tokens: letters, digits and a few marks (RFC 9110 §5.6.2).
pub(crate) fn http_method_invalid(m: &str) -> bool {
    m.is_empty()
        || !m
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An address or a CIDR block (`10.0.0.0/8`, `::1`) as (address, prefix length).
pub(crate) fn cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block such as \"10.0.0.0/8\""))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match bits {
        None => Ok((ip, max)),
        Some(b) => match b.trim().parse::<u8>() {
            Ok(n) if n <= max => Ok((ip, n)),
            _ => Err(format!("{s:?}: the prefix length must be 0 to {max}")),
        },
    }
}
