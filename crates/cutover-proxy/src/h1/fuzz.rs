//! The HTTP/1.1 parsers under arbitrary input (cargo-fuzz target `h1_wire`, and the unit
//! test below over the committed seeds): what the proxy writes must read the same in a
//! second, independent parser as the proxy read it.

use super::chunked::{self, Chunked};
use super::request::{self, MAX_HEADERS};
use super::response::{self, ResponseContext, ResponseParse};
use super::Framing;

/// An accepted request is rewritten into a head that `httparse` reads completely, with the
/// framing the proxy decided (one header at most, the same length), one Host and one
/// X-Forwarded-For, and none of the proxy's own or hop-by-hop headers; a chunked body the
/// proxy accepts decodes to the same data and ends at the same byte in the reference
/// decoder, and so does the proxy's re-framing of it; refusals write nothing; chunked
/// decoding gives the same result however the input is split.
pub(crate) fn wire(data: &[u8]) {
    let t = request::Target {
        peer_ip: b"10.1.2.3",
        trusted: data.first().is_some_and(|b| b & 2 == 2),
        scheme: b"http",
        want_path: true,
        max_line: 8 * 1024,
        upgrades: &[],
        drop: None,
    };
    let mut out = Vec::new();
    match request::request_head(data, &t, &mut out) {
        Ok(Some(h)) => {
            check_rewritten(&out, &h);
            if h.body == Framing::Chunked {
                check_body(&data[h.head_len..]);
            }
        }
        Ok(None) | Err(_) => assert!(out.is_empty(), "nothing written unless accepted"),
    }
    let tagged = crate::route::ColorRoute::with_endpoints(crate::route::Color::Blue, Some("v1".into()), Vec::new());
    let cx = ResponseContext {
        upgrade: data.get(2).is_some_and(|b| b & 1 == 1),
        head_request: data.first().is_some_and(|b| b & 1 == 1),
        client_minor: data.get(1).map_or(1, |b| b & 1),
        client_keep_alive: true,
        tags: Some(&tagged),
    };
    let mut out = Vec::new();
    if let Ok(ResponseParse::Head(h)) = response::response_head(data, &cx, &mut out) {
        assert!(h.head_len <= data.len());
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
        let mut r = httparse::Response::new(&mut hs);
        assert!(matches!(r.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
        let cutover = r.headers.iter().filter(|x| x.name.starts_with("x-cutover-")).count();
        assert_eq!(cutover, 2, "exactly the proxy's own color and version");
    }
    check_splits(data);
}

fn check_rewritten(out: &[u8], h: &request::RequestHead) {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    let mut r = httparse::Request::new(&mut hs);
    match r.parse(out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!("rewritten head does not parse: {other:?}"),
    }
    assert_eq!(r.version, Some(1));
    let headers = &*r.headers;
    let named = |n: &'static str| headers.iter().filter(move |x| x.name.eq_ignore_ascii_case(n));
    let lengths: Vec<_> = named("content-length").collect();
    let tes: Vec<_> = named("transfer-encoding").collect();
    match h.body {
        Framing::None => assert!(lengths.is_empty() && tes.is_empty()),
        Framing::Length(n) => {
            assert!(tes.is_empty() && lengths.len() == 1);
            assert_eq!(
                std::str::from_utf8(lengths[0].value).ok().and_then(|v| v.parse().ok()),
                Some(n)
            );
        }
        Framing::Chunked => assert!(lengths.is_empty() && tes.len() == 1 && tes[0].value == b"chunked"),
        Framing::Close => panic!("a request is never close-delimited"),
    }
    assert_eq!(named("x-forwarded-for").count(), 1);
    assert!(named("host").count() == 1 || h.needs_host);
    for gone in [
        "connection",
        "keep-alive",
        "upgrade",
        "expect",
        "proxy-connection",
        "trailer",
    ] {
        assert_eq!(named(gone).count(), 0, "{gone} forwarded");
    }
    assert!(!headers
        .iter()
        .any(|x| x.name.len() > 10 && x.name[..10].eq_ignore_ascii_case("x-cutover-")));
}

fn check_body(body: &[u8]) {
    let mut dec = Chunked::new();
    let mut data = Vec::new();
    let Ok(n) = dec.feed(body, |d| data.extend_from_slice(d)) else {
        return;
    };
    if !dec.done() {
        return;
    }
    // What the proxy accepted, a plain reading of the RFC accepts the same way.
    let (ref_data, _, ref_n) = chunked::reference_decode(body).expect("accepted body parses in the reference");
    assert_eq!((&ref_data, ref_n), (&data, n));
    let mut framed = Vec::new();
    chunked::chunk(&mut framed, &data);
    chunked::last_chunk(&mut framed, dec.trailers());
    let (again, _, m) = chunked::reference_decode(&framed).expect("our own chunks parse");
    assert_eq!((again, m), (data, framed.len()));
}

fn check_splits(data: &[u8]) {
    let (mut whole, mut split) = (Chunked::new(), Chunked::new());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let r1 = whole.feed(data, |d| a.extend_from_slice(d));
    let cut = data.first().map_or(0, |&c| c as usize % (data.len() + 1));
    let r2 = split.feed(&data[..cut], |d| b.extend_from_slice(d)).and_then(|n| {
        if n < cut || split.done() {
            Ok(n)
        } else {
            split.feed(&data[cut..], |d| b.extend_from_slice(d)).map(|m| n + m)
        }
    });
    match (r1, r2) {
        (Ok(n1), Ok(n2)) => {
            assert_eq!(whole.done(), split.done());
            if whole.done() {
                assert_eq!(n1, n2);
                assert_eq!(whole.trailers(), split.trailers());
            }
            assert_eq!(a, b);
        }
        (Err(_), Err(_)) => {}
        (x, y) => panic!("split and whole decoding disagree: {x:?} vs {y:?}"),
    }
}

#[cfg(test)]
mod tests {
    /// Every committed seed of the fuzz target keeps the invariants (so they are checked on
    /// every `cargo test`, not only when the fuzzer runs).
    #[test]
    fn committed_seeds_keep_the_invariants() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/h1_wire");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/h1_wire exists") {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            super::wire(&bytes);
            n += 1;
        }
        assert!(n >= 5, "only {n} seeds in {}", dir.display());
    }
}
