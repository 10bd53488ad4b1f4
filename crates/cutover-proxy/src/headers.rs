//! What the proxy does with each header, the same for both engines: which ones are
//! hop-by-hop, which ones it owns (forwarding headers, `x-cutover-*`), and the framing and
//! Host rules a request must meet before any byte of it is forwarded.
//!
//! Everything here works on bytes: a header value may carry any octet, and a rule that
//! gives up on a non-UTF-8 value (instead of reading it byte by byte) is a rule an attacker
//! can switch off.

use std::net::IpAddr;

/// How the proxy treats a request header of this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Forwarded as it came, unless `Connection` names it.
    Plain,
    /// Connection-specific: never forwarded (`te: trailers` aside).
    HopByHop,
    Te,
    Expect,
    Host,
    ContentLength,
    TransferEncoding,
    /// Set by the proxy itself; a client's value passes only from a trusted proxy.
    Forwarding(Forwarding),
    /// `x-cutover-*`: the proxy's own response headers; never taken from a client.
    Cutover,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarding {
    For,
    Proto,
    Host,
    /// `Forwarded` (RFC 7239) and `X-Real-IP`: not set by cutover, but read by applications
    /// as the client's address, so a client must not be able to choose them.
    Other,
}

impl Class {
    /// `Connection` may remove only what is really the sender's business: never the
    /// framing, the Host or the headers the proxy writes itself (`Connection: host` once
    /// sent HTTP/1.1 requests upstream without a Host).
    pub(crate) fn removable_by_connection(self) -> bool {
        matches!(self, Class::Plain | Class::HopByHop)
    }
}

/// The class of a request header. Names are compared ignoring ASCII case, dispatched on
/// length first so most names are settled with one comparison; the test below lists every
/// name against its class, so a wrong length (the bug that let client `X-Forwarded-For`
/// lines through) cannot hide.
/// `name == lower` ignoring ASCII case, for a header name (`tchar`s only) and a target of
/// lower-case letters and `-`: setting bit 5 lower-cases a letter and leaves `-` and every
/// other `tchar` that could match as they are, so whole 8-byte words compare at once
/// (`eq_ignore_ascii_case` goes byte by byte: ~10 instructions a byte, on every header).
#[inline]
fn is_name(name: &[u8], lower: &[u8]) -> bool {
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    const CASE: u64 = 0x2020_2020_2020_2020;
    if n < 8 {
        return name.iter().zip(lower).all(|(a, b)| a | 0x20 == *b);
    }
    // The first and last words cover any length from 8 to 16, with the middle one up to 24
    // (the longest name compared is 17 bytes).
    debug_assert!(n <= 24, "is_name compares names of up to 24 bytes");
    let ok = |at: usize| word(name, at) | CASE == word(lower, at);
    ok(0) && ok(n - 8) && (n <= 16 || ok(8))
}

pub(crate) fn class(name: &[u8]) -> Class {
    let Some(&first) = name.first() else {
        return Class::Plain;
    };
    let is = |lower: &[u8]| is_name(name, lower);
    // Length and first letter settle most names before any full comparison: this runs for
    // every header of every message, twice or three times (a profile showed it costing ~900
    // instructions a request when it compared whole names first).
    let c = match (name.len(), first | 0x20) {
        (2, b't') if is(b"te") => Class::Te,
        (4, b'h') if is(b"host") => Class::Host,
        (6, b'e') if is(b"expect") => Class::Expect,
        (7, b't') if is(b"trailer") => Class::HopByHop,
        (7, b'u') if is(b"upgrade") => Class::HopByHop,
        (9, b'f') if is(b"forwarded") => Class::Forwarding(Forwarding::Other),
        (9, b'x') if is(b"x-real-ip") => Class::Forwarding(Forwarding::Other),
        (10, b'c') if is(b"connection") => Class::HopByHop,
        (10, b'k') if is(b"keep-alive") => Class::HopByHop,
        (14, b'c') if is(b"content-length") => Class::ContentLength,
        // RFC 9113 §3.2.1 (and 7540's): connection-specific, part of the deprecated h2c upgrade.
        (14, b'h') if is(b"http2-settings") => Class::HopByHop,
        (15, b'x') if is(b"x-forwarded-for") => Class::Forwarding(Forwarding::For),
        (16, b'p') if is(b"proxy-connection") => Class::HopByHop,
        (16, b'x') if is(b"x-forwarded-host") => Class::Forwarding(Forwarding::Host),
        (17, b't') if is(b"transfer-encoding") => Class::TransferEncoding,
        (17, b'x') if is(b"x-forwarded-proto") => Class::Forwarding(Forwarding::Proto),
        _ => Class::Plain,
    };
    if c == Class::Plain && first | 0x20 == b'x' && name.len() > 10 && is_name(&name[..10], b"x-cutover-") {
        return Class::Cutover;
    }
    c
}

/// Whether a response header is the proxy's to write (framing, hop-by-hop, `x-cutover-*`).
pub(crate) fn response_skip(name: &[u8]) -> bool {
    class(name).response_skip()
}

impl Class {
    /// A response header of this class is the proxy's to write.
    pub(crate) fn response_skip(self) -> bool {
        matches!(
            self,
            Class::HopByHop | Class::Te | Class::ContentLength | Class::TransferEncoding | Class::Cutover
        )
    }
}

/// Trailer fields that must not arrive after the body: framing, routing, authentication
/// and the fields a recipient reads before the content (RFC 9110 §6.5.1). Dropped.
pub(crate) fn forbidden_trailer(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 14] = [
        b"authorization",
        b"cache-control",
        b"content-encoding",
        b"content-range",
        b"content-type",
        b"cookie",
        b"expect",
        b"max-forwards",
        b"proxy-authorization",
        b"range",
        b"set-cookie",
        b"www-authenticate",
        b"proxy-authenticate",
        b"age",
    ];
    class(name) != Class::Plain || NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// `tchar` of RFC 9110 §5.6.2: what a token (header name, coding, chunk-ext name) is made of.
pub(crate) fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if !ows(*first) {
            break;
        }
        v = rest;
    }
    while let [rest @ .., last] = v {
        if !ows(*last) {
            break;
        }
        v = rest;
    }
    v
}

/// The elements of a comma-separated header list, trimmed, empty ones skipped (RFC 9110
/// §5.6.1 asks recipients to accept them).
pub(crate) fn list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|e| !e.is_empty())
}

/// A Content-Length value: digits only (no sign, no list, no spaces inside). Leading zeros
/// are allowed and do not count against the size: only a value past `u64` is refused.
pub(crate) fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// What the `Transfer-Encoding` lines of a message say about its framing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Codings {
    /// Exactly `chunked`: the only coding the proxy forwards.
    Chunked,
    /// A valid list whose final coding is chunked, with others before it (`gzip, chunked`).
    Unsupported(String),
    /// A valid list whose final coding is not chunked: a request must be refused; a
    /// response is then delimited by the close of its connection (RFC 9112 §6.3).
    NotChunkedFinal,
    /// Not a list of codings at all: empty, bytes outside the token grammar, `chunked`
    /// twice or with parameters.
    Invalid(String),
}

/// Read every `Transfer-Encoding` line of a message as one list (RFC 9110 §5.3).
pub(crate) fn transfer_codings<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Codings {
    let mut n = 0usize;
    let mut chunked_at: Option<usize> = None;
    let mut other: Option<String> = None;
    for element in lines.flat_map(list) {
        let (name, params) = match element.iter().position(|&b| b == b';') {
            Some(i) => (trim(&element[..i]), Some(&element[i + 1..])),
            None => (element, None),
        };
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return Codings::Invalid(format!(
                "transfer-encoding element {:?} is not a coding",
                String::from_utf8_lossy(element)
            ));
        }
        if let Some(p) = params {
            if !valid_params(p) {
                return Codings::Invalid(format!(
                    "transfer-encoding parameters {:?} are malformed",
                    String::from_utf8_lossy(p)
                ));
            }
        }
        if name.eq_ignore_ascii_case(b"chunked") {
            if chunked_at.is_some() {
                return Codings::Invalid("chunked applied more than once".into());
            }
            if params.is_some() {
                return Codings::Invalid("chunked takes no parameters".into());
            }
            chunked_at = Some(n);
        } else if other.is_none() {
            other = Some(String::from_utf8_lossy(name).into_owned());
        }
        n += 1;
    }
    if n == 0 {
        return Codings::Invalid("transfer-encoding names no coding".into());
    }
    match chunked_at {
        Some(i) if i + 1 == n => match other {
            None => Codings::Chunked,
            Some(o) => Codings::Unsupported(o),
        },
        Some(_) => Codings::Invalid("chunked is not the final transfer coding".into()),
        None => Codings::NotChunkedFinal,
    }
}

/// `*( OWS ";" OWS token "=" ( token / quoted-string ) )` after the first `;`, loosely: each
/// parameter must be `token=token` or `token="..."` with no control bytes.
fn valid_params(p: &[u8]) -> bool {
    p.split(|&b| b == b';').all(|param| {
        let param = trim(param);
        let Some(eq) = param.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (k, v) = (trim(&param[..eq]), trim(&param[eq + 1..]));
        let quoted = v.len() >= 2
            && v[0] == b'"'
            && v[v.len() - 1] == b'"'
            && v[1..v.len() - 1]
                .iter()
                .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        !k.is_empty() && k.iter().all(|&b| tchar(b)) && (quoted || (!v.is_empty() && v.iter().all(|&b| tchar(b))))
    })
}

/// A Host value (or an absolute-form target's authority): `host [":" port]` with no
/// userinfo, path, list or white space. Both peers refuse those with 400; forwarding one
/// would hand the upstream (and `X-Forwarded-Host`) a value it may read differently.
pub(crate) fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &v[1..end];
        if inner.is_empty() || !inner.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        match &v[end + 1..] {
            [] => (&v[..0], None),
            [b':', port @ ..] => (&v[..0], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    // reg-name of RFC 3986 less the comma: unreserved, pct-encoded and sub-delims.
    let reg = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+;=".contains(&b);
    let host_ok = host.iter().all(|&b| reg(b)) && (v.first() == Some(&b'[') || !host.is_empty());
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

/// The tokens of every `Connection` line: close, keep-alive, and the names of the other
/// headers that are hop-by-hop for this message. Read byte by byte: an odd byte in one
/// token never disables the others.
pub(crate) struct ConnectionTokens<'a> {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    names: [&'a [u8]; 8],
    n: usize,
    /// More names than fit: every header is then checked against the raw values.
    overflow: bool,
}

impl<'a> ConnectionTokens<'a> {
    pub(crate) fn parse(values: impl Iterator<Item = &'a [u8]>) -> ConnectionTokens<'a> {
        let mut t = ConnectionTokens {
            close: false,
            keep_alive: false,
            names: [b""; 8],
            n: 0,
            overflow: false,
        };
        for tok in values.flat_map(list) {
            if tok.eq_ignore_ascii_case(b"close") {
                t.close = true;
            } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                t.keep_alive = true;
            } else if t.n < t.names.len() {
                t.names[t.n] = tok;
                t.n += 1;
            } else {
                t.overflow = true;
            }
        }
        t
    }

    /// Whether any header names were listed (most messages list none).
    pub(crate) fn any(&self) -> bool {
        self.n > 0 || self.overflow
    }

    /// Whether `name` is listed. `values` are the Connection lines again, read only when
    /// more names were listed than fit.
    pub(crate) fn names<'v>(&self, name: &[u8], values: impl Iterator<Item = &'v [u8]>) -> bool {
        if self.names[..self.n].iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return true;
        }
        self.overflow && values.flat_map(list).any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// What the upstream is told of where a request came from, read by each engine from its own
/// representation of the request.
pub(crate) struct Forwarded<'a> {
    /// The peer is a trusted proxy: its chain, proto and host are kept.
    pub(crate) trusted: bool,
    pub(crate) peer_ip: &'a [u8],
    /// This listener's own `X-Forwarded-Proto`.
    pub(crate) scheme: &'static [u8],
    /// The request's first `X-Forwarded-Proto` and `X-Forwarded-Host` (read only from a
    /// trusted proxy).
    pub(crate) proto: Option<&'a [u8]>,
    pub(crate) fwd_host: Option<&'a [u8]>,
    /// The request's host (the absolute-form target's, else Host).
    pub(crate) host: Option<&'a [u8]>,
}

/// Where [`Forwarded::write`] puts its header lines: the HTTP/1.1 engine's head bytes, or a
/// header map on the hyper engine.
pub(crate) trait HeaderSink {
    fn begin(&mut self, name: &'static str);
    fn push(&mut self, value: &[u8]);
    fn end(&mut self);
}

impl Forwarded<'_> {
    /// The X-Forwarded-* lines of both engines: exactly one `X-Forwarded-For`, a trusted
    /// proxy's chain (the items of all its lines, in order) and then the peer, from anyone
    /// else the peer alone; then `X-Forwarded-Proto` and `X-Forwarded-Host`, a trusted
    /// proxy's or this listener's own.
    pub(crate) fn write<'c>(&self, chain: impl Iterator<Item = &'c [u8]>, sink: &mut impl HeaderSink) {
        sink.begin("x-forwarded-for");
        if self.trusted {
            for hop in chain.flat_map(list) {
                sink.push(hop);
                sink.push(b", ");
            }
        }
        sink.push(self.peer_ip);
        sink.end();
        let (proto, fwd_host) = match self.trusted {
            true => (self.proto, self.fwd_host),
            false => (None, None),
        };
        sink.begin("x-forwarded-proto");
        sink.push(proto.unwrap_or(self.scheme));
        sink.end();
        if let Some(h) = fwd_host.or(self.host) {
            sink.begin("x-forwarded-host");
            sink.push(h);
            sink.end();
        }
    }
}

impl HeaderSink for Vec<u8> {
    fn begin(&mut self, name: &'static str) {
        self.extend_from_slice(name.as_bytes());
        self.extend_from_slice(b": ");
    }
    fn push(&mut self, value: &[u8]) {
        self.extend_from_slice(value);
    }
    fn end(&mut self) {
        self.extend_from_slice(b"\r\n");
    }
}

/// Which peers may tell the proxy who the client is: their `X-Forwarded-*`, `Forwarded`
/// and `X-Real-IP` are kept (and `X-Forwarded-For` appended to). Everyone else's are
/// replaced: an application that trusts its one proxy must not be handed any address a
/// client chooses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Blocks as (address, prefix length), validated by the config.
    pub fn new(blocks: impl IntoIterator<Item = (IpAddr, u8)>) -> TrustedProxies {
        TrustedProxies(blocks.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|&(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            _ => false,
        })
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rest = bits % 8;
    a[..full] == b[..full] && (rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_special_name_has_its_class_in_any_case() {
        let table: [(&str, Class); 18] = [
            ("te", Class::Te),
            ("host", Class::Host),
            ("expect", Class::Expect),
            ("trailer", Class::HopByHop),
            ("upgrade", Class::HopByHop),
            ("connection", Class::HopByHop),
            ("keep-alive", Class::HopByHop),
            ("proxy-connection", Class::HopByHop),
            ("content-length", Class::ContentLength),
            ("transfer-encoding", Class::TransferEncoding),
            ("x-forwarded-for", Class::Forwarding(Forwarding::For)),
            ("x-forwarded-proto", Class::Forwarding(Forwarding::Proto)),
            ("x-forwarded-host", Class::Forwarding(Forwarding::Host)),
            ("forwarded", Class::Forwarding(Forwarding::Other)),
            ("x-real-ip", Class::Forwarding(Forwarding::Other)),
            ("x-cutover-color", Class::Cutover),
            ("x-cutover-anything", Class::Cutover),
            ("x-forwarded-port", Class::Plain),
        ];
        for (name, want) in table {
            assert_eq!(class(name.as_bytes()), want, "{name}");
            assert_eq!(class(name.to_ascii_uppercase().as_bytes()), want, "{name} upper");
        }
        for plain in [
            "accept",
            "x-cutover",
            "x-cutover-",
            "authorization",
            "content-type",
            "x-forwarded",
        ] {
            assert_eq!(class(plain.as_bytes()), Class::Plain, "{plain}");
        }
        assert!(!Class::Host.removable_by_connection());
        assert!(!Class::Forwarding(Forwarding::For).removable_by_connection());
        assert!(Class::Plain.removable_by_connection());
        assert!(
            forbidden_trailer(b"Content-Length") && forbidden_trailer(b"host") && forbidden_trailer(b"Authorization")
        );
        assert!(!forbidden_trailer(b"grpc-status") && !forbidden_trailer(b"x-checksum"));
    }

    #[test]
    fn content_length_counts_value_not_digits() {
        assert_eq!(content_length(b"0005"), Some(5));
        assert_eq!(content_length(b"000000000000000000000000000042"), Some(42));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+5",
            b"-1",
            b"5 ",
            b"5,5",
            b"0x10",
            b" 5",
        ] {
            assert_eq!(content_length(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn transfer_codings_must_be_a_clean_list_ending_in_chunked() {
        let one = |v: &[u8]| transfer_codings(std::iter::once(v));
        assert_eq!(one(b"chunked"), Codings::Chunked);
        assert_eq!(one(b"Chunked"), Codings::Chunked);
        assert_eq!(one(b" , chunked ,"), Codings::Chunked);
        assert_eq!(transfer_codings([&b""[..], b"chunked"].into_iter()), Codings::Chunked);
        assert!(matches!(one(b"gzip, chunked"), Codings::Unsupported(c) if c == "gzip"));
        assert!(matches!(one(b"x-custom;q=1, chunked"), Codings::Unsupported(_)));
        assert_eq!(one(b"gzip"), Codings::NotChunkedFinal);
        for bad in [
            &b""[..],
            b",,",
            b" ",
            b"chunked\xff",
            b"\xffchunked",
            b"chunked, chunked",
            b"chunked, gzip",
            b"chunked;foo=bar",
            b"chu nked",
            b"chunked\x00",
            b"gzip;=x, chunked",
            b"\"chunked\"",
        ] {
            assert!(
                matches!(one(bad), Codings::Invalid(_)),
                "{:?} gave {:?}",
                String::from_utf8_lossy(bad),
                one(bad)
            );
        }
        assert!(matches!(
            transfer_codings([&b"chunked"[..], b"chunked"].into_iter()),
            Codings::Invalid(_)
        ));
    }

    #[test]
    fn hosts_are_authorities_without_userinfo_path_or_lists() {
        for ok in [
            "a",
            "api.example:8080",
            "127.0.0.1",
            "[::1]:9000",
            "[fe80::1]",
            "xn--bcher-kva.example",
            "a:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "user:pw@host",
            "a@b",
            "a/b",
            "a,b",
            "a b",
            "a\tb",
            "[::1",
            "[::1]x",
            "host:80:80x",
            "host:99999999",
            "h\u{e9}",
            "a?b",
            "a#b",
            "a\\b",
            ":80",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn connection_tokens_survive_odd_bytes() {
        let v: [&[u8]; 2] = [b"close, x-a\xff", b"X-B, keep-alive"];
        let t = ConnectionTokens::parse(v.into_iter());
        assert!(t.close && t.keep_alive);
        assert!(t.names(b"x-b", v.into_iter()));
        assert!(t.names(b"x-a\xff", v.into_iter()));
        assert!(!t.names(b"x-a", v.into_iter()));
        let many: Vec<u8> = (0..20).map(|i| format!("x-{i},")).collect::<String>().into_bytes();
        let t = ConnectionTokens::parse(std::iter::once(&many[..]));
        assert!(t.any() && t.names(b"x-19", std::iter::once(&many[..])));
    }

    fn blocks(v: &[(&str, u8)]) -> TrustedProxies {
        TrustedProxies::new(v.iter().map(|(a, b)| (a.parse().unwrap(), *b)))
    }

    #[test]
    fn trusted_proxies_match_by_prefix() {
        let t = blocks(&[("10.0.0.0", 8), ("192.168.1.7", 32), ("fd00::", 8)]);
        for ip in ["10.1.2.3", "192.168.1.7", "fd12::1", "::ffff:10.9.9.9"] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.168.1.8", "fe80::1", "127.0.0.1"] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
        let odd = blocks(&[("172.16.0.0", 12)]);
        assert!(odd.contains("172.31.255.255".parse().unwrap()));
        assert!(!odd.contains("172.32.0.0".parse().unwrap()));
        assert!(blocks(&[("0.0.0.0", 0)]).contains("8.8.8.8".parse().unwrap()));
        assert!(blocks(&[("::", 0)]).contains("fe80::1".parse().unwrap()));
    }
}
