//! The chunked transfer coding (RFC 9112 §7.1): a strict incremental decoder and the
//! encoder the proxy writes its own chunks with.
//!
//! Chunked bodies are never passed on byte for byte: the decoder accepts only the RFC's
//! grammar (extensions as `;name[=token|"quoted"]`, trailer fields as field lines) and the
//! proxy writes its own clean chunks and the trailers it kept, so no peer downstream can
//! read the body's framing differently from the way the proxy read it.

use std::io::Write as _;

use crate::headers::{forbidden_trailer, tchar};

/// Longest run of chunk extensions accepted on one size line (nobody sends them; a long one
/// is an attack).
const MAX_CHUNK_EXT: u16 = 4096;
/// Trailer section limit.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of the size; `any` once one was read.
    Size {
        any: bool,
    },
    /// White space after the size or after an extension's value: `;` must follow (the
    /// grammar has no white space before the line's CR).
    ExtGap,
    /// After `;`: white space, then the extension's name.
    ExtNameStart,
    ExtName,
    /// White space after a name: `=` or `;`.
    ExtAfterName,
    /// After `=`: white space, then a token or a quoted string.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// After a quoted value's closing quote: `;`, white space or CR.
    ExtQuotedEnd,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// The start of a trailer line, or of the empty line that ends the message.
    TrailerStart,
    TrailerName,
    /// After the name's `:`; `started` once a byte other than white space came.
    TrailerValue {
        started: bool,
    },
    TrailerLf,
    EndLf,
    Done,
}

/// Incremental decoder: it never buffers data, it only says where the data is and where
/// the message ends. Trailer fields it accepts (less the forbidden ones) are kept in
/// [`Chunked::trailers`] to be written again by the encoder.
#[derive(Debug, Clone)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    ext_len: u16,
    trailer_len: usize,
    /// Accepted trailer lines as `name: value\r\n`; allocates only for a message that has some.
    trailers: Vec<u8>,
    /// Where the trailer line being read starts in `trailers`, and whether it is kept.
    line_start: usize,
    keep_line: bool,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub(crate) const fn new() -> Chunked {
        Chunked {
            state: State::Size { any: false },
            size: 0,
            ext_len: 0,
            trailer_len: 0,
            trailers: Vec::new(),
            line_start: 0,
            keep_line: false,
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The trailer fields kept, each `name: value\r\n` (empty when there were none).
    pub(crate) fn trailers(&self) -> &[u8] {
        &self.trailers
    }

    /// Consume `input` up to the end of the message; `data` sees each piece of body data.
    /// Returns the bytes consumed (less than `input.len()` only when the message ended).
    pub(crate) fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data(left) = self.state {
                let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                data(&input[i..i + take]);
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                continue;
            }
            if self.state == State::Done {
                return Ok(i);
            }
            let b = input[i];
            i += 1;
            self.state = self.step(b)?;
            if self.state == State::Done {
                return Ok(i);
            }
        }
        Ok(i)
    }

    fn ext_byte(&mut self) -> Result<(), &'static str> {
        self.ext_len += 1;
        if self.ext_len > MAX_CHUNK_EXT {
            return Err("chunk extension too long");
        }
        Ok(())
    }

    fn step(&mut self, b: u8) -> Result<State, &'static str> {
        use State::*;
        match self.state {
            Size { .. } | ExtGap | SizeLf => self.size_step(b),
            ExtNameStart | ExtName | ExtAfterName | ExtValueStart | ExtToken | ExtQuoted | ExtQuotedEscape
            | ExtQuotedEnd => {
                self.ext_byte()?;
                self.ext_step(b, b == b' ' || b == b'\t')
            }
            DataCr => match b {
                b'\r' => Ok(DataLf),
                _ => Err("expected CRLF after chunk data"),
            },
            DataLf => match b {
                b'\n' => Ok(Size { any: false }),
                _ => Err("expected CRLF after chunk data"),
            },
            TrailerStart | TrailerName | TrailerValue { .. } | TrailerLf | EndLf => self.trailer_step(b),
            Data(_) | Done => unreachable!("handled by feed"),
        }
    }

    /// The size line up to its extensions, and its end.
    fn size_step(&mut self, b: u8) -> Result<State, &'static str> {
        use State::*;
        let ws = b == b' ' || b == b'\t';
        Ok(match self.state {
            Size { any } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                    // Leading zeros cost nothing; only a size past 2^60 is refused.
                    if self.size >> 56 != 0 {
                        return Err("chunk size too large");
                    }
                    self.size = self.size * 16 + d;
                    Size { any: true }
                }
                _ if !any => return Err("malformed chunk size"),
                b';' => {
                    self.ext_len = 0;
                    ExtNameStart
                }
                b'\r' => SizeLf,
                _ if ws => {
                    self.ext_len = 0;
                    ExtGap
                }
                _ => return Err("malformed chunk size line"),
            },
            ExtGap => match b {
                _ if ws => {
                    self.ext_byte()?;
                    ExtGap
                }
                b';' => ExtNameStart,
                _ => return Err("malformed chunk extension"),
            },
            SizeLf => match b {
                b'\n' if self.size == 0 => TrailerStart,
                b'\n' => {
                    let n = self.size;
                    self.size = 0;
                    Data(n)
                }
                _ => return Err("expected LF after chunk size"),
            },
            _ => unreachable!("size_step is called for size states"),
        })
    }

    /// The trailer section: field lines, kept unless forbidden, then the empty line.
    fn trailer_step(&mut self, b: u8) -> Result<State, &'static str> {
        use State::*;
        let ws = b == b' ' || b == b'\t';
        Ok(match self.state {
            TrailerStart => match b {
                b'\r' => EndLf,
                _ if tchar(b) => {
                    self.trailer_byte()?;
                    self.line_start = self.trailers.len();
                    self.trailers.push(b);
                    TrailerName
                }
                _ if ws => return Err("obsolete line folding in trailers"),
                _ => return Err("malformed trailer field"),
            },
            TrailerName => {
                self.trailer_byte()?;
                match b {
                    _ if tchar(b) => {
                        self.trailers.push(b);
                        TrailerName
                    }
                    b':' => {
                        self.keep_line = !forbidden_trailer(&self.trailers[self.line_start..]);
                        if self.keep_line {
                            self.trailers.extend_from_slice(b": ");
                        } else {
                            self.trailers.truncate(self.line_start);
                        }
                        TrailerValue { started: false }
                    }
                    _ => return Err("malformed trailer field name"),
                }
            }
            TrailerValue { started } => {
                self.trailer_byte()?;
                match b {
                    b'\r' => {
                        if self.keep_line {
                            while matches!(self.trailers.last(), Some(b' ' | b'\t')) {
                                self.trailers.pop();
                            }
                            self.trailers.extend_from_slice(b"\r\n");
                        }
                        TrailerLf
                    }
                    // Leading white space is not part of the value.
                    _ if ws && !started => TrailerValue { started },
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {
                        if self.keep_line {
                            self.trailers.push(b);
                        }
                        TrailerValue { started: true }
                    }
                    _ => return Err("control byte in a trailer field"),
                }
            }
            TrailerLf => match b {
                b'\n' => TrailerStart,
                _ => return Err("expected LF in trailers"),
            },
            EndLf => match b {
                b'\n' => Done,
                _ => return Err("expected LF at the end of the trailers"),
            },
            _ => unreachable!("trailer_step is called for trailer states"),
        })
    }

    /// The extension grammar: `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`.
    fn ext_step(&mut self, b: u8, ws: bool) -> Result<State, &'static str> {
        use State::*;
        Ok(match (self.state, b) {
            (ExtNameStart, _) if ws => ExtNameStart,
            (ExtNameStart | ExtName, _) if tchar(b) => ExtName,
            (ExtName | ExtAfterName, _) if ws => ExtAfterName,
            (ExtName | ExtAfterName | ExtToken, b';') => ExtNameStart,
            (ExtName | ExtToken, b'\r') => SizeLf,
            (ExtName | ExtAfterName, b'=') => ExtValueStart,
            (ExtValueStart, _) if ws => ExtValueStart,
            (ExtValueStart, b'"') => ExtQuoted,
            (ExtValueStart | ExtToken, _) if tchar(b) => ExtToken,
            (ExtToken, _) if ws => ExtGap,
            (ExtQuoted, b'"') => ExtQuotedEnd,
            (ExtQuoted, b'\\') => ExtQuotedEscape,
            (ExtQuoted, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff) => ExtQuoted,
            (ExtQuotedEscape, b'\t' | b' '..=b'~' | 0x80..=0xff) => ExtQuoted,
            (ExtQuotedEnd, b';') => ExtNameStart,
            (ExtQuotedEnd, b'\r') => SizeLf,
            (ExtQuotedEnd, _) if ws => ExtGap,
            _ => return Err("malformed chunk extension"),
        })
    }

    fn trailer_byte(&mut self) -> Result<(), &'static str> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILERS {
            return Err("trailer section too large");
        }
        Ok(())
    }
}

/// Append `d` as one chunk. The size line is written in place: no string per chunk (one
/// chunk per token on a stream).
pub(crate) fn chunk(out: &mut Vec<u8>, d: &[u8]) {
    if d.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", d.len());
    out.extend_from_slice(d);
    out.extend_from_slice(b"\r\n");
}

/// Append the last chunk and the trailer fields kept by `dec`.
pub(crate) fn last_chunk(out: &mut Vec<u8>, trailers: &[u8]) {
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers);
    out.extend_from_slice(b"\r\n");
}

/// The data, the trailer fields (lower-case name, trimmed value) and the length of the
/// chunked message the reference decoder read.
#[cfg(any(test, fuzzing))]
pub(crate) type Decoded = (Vec<u8>, Vec<(String, String)>, usize);

/// A second, independent reading of a chunked body (whole input at once, written as
/// plainly as the RFC reads), for tests and the fuzzer to check what the proxy writes.
#[cfg(any(test, fuzzing))]
pub(crate) fn reference_decode(mut b: &[u8]) -> Option<Decoded> {
    let total = b.len();
    let mut data = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let line = &b[..line_end];
        let size_end = line.iter().position(|&c| c == b';').unwrap_or(line.len());
        let size_str = std::str::from_utf8(&line[..size_end]).ok()?.trim_matches([' ', '\t']);
        let size = usize::from_str_radix(size_str, 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            break;
        }
        data.extend_from_slice(b.get(..size)?);
        if b.get(size..size + 2)? != b"\r\n" {
            return None;
        }
        b = &b[size + 2..];
    }
    let mut trailers = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let line = &b[..line_end];
        b = &b[line_end + 2..];
        if line.is_empty() {
            return Some((data, trailers, total - b.len()));
        }
        let line = String::from_utf8_lossy(line);
        let (k, v) = line.split_once(':')?;
        trailers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(wire: &[u8]) -> Result<(Vec<u8>, usize, Chunked), &'static str> {
        let mut dec = Chunked::new();
        let mut data = Vec::new();
        let n = dec.feed(wire, |d| data.extend_from_slice(d))?;
        Ok((data, n, dec))
    }

    fn encode(pieces: &[Vec<u8>], ext: bool, trailers: bool) -> Vec<u8> {
        let mut v = Vec::new();
        for p in pieces.iter().filter(|p| !p.is_empty()) {
            v.extend_from_slice(format!("{:X}", p.len()).as_bytes());
            if ext {
                v.extend_from_slice(b" ; name=value;q=\"a \\\" b\";flag");
            }
            v.extend_from_slice(b"\r\n");
            v.extend_from_slice(p);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"0\r\n");
        if trailers {
            v.extend_from_slice(b"grpc-status: 0\r\nContent-Length: 5\r\nx-sum:  abc  \r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    proptest! {
        #[test]
        fn chunked_decoding_survives_any_split(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            splits in proptest::collection::vec(1usize..64, 1..40),
            ext: bool,
            trailers: bool,
        ) {
            let mut wire = encode(&pieces, ext, trailers);
            let end = wire.len();
            wire.extend_from_slice(b"GET /next HTTP/1.1\r\n");
            let mut dec = Chunked::new();
            let mut data = Vec::new();
            let mut at = 0;
            let mut splits = splits.iter().cycle();
            while !dec.done() && at < wire.len() {
                let n = (*splits.next().unwrap()).min(wire.len() - at);
                let used = dec.feed(&wire[at..at + n], |d| data.extend_from_slice(d)).unwrap();
                prop_assert!(used == n || dec.done());
                at += used;
            }
            prop_assert!(dec.done());
            prop_assert_eq!(at, end, "stops exactly at the end of the message");
            prop_assert_eq!(&data, &pieces.concat());
            let kept: &[u8] = if trailers { b"grpc-status: 0\r\nx-sum: abc\r\n" } else { b"" };
            prop_assert_eq!(dec.trailers(), kept, "forbidden trailers dropped, values trimmed");

            // What the proxy writes instead reads the same in the reference decoder.
            let mut out = Vec::new();
            chunk(&mut out, &data);
            last_chunk(&mut out, dec.trailers());
            let (d2, t2, n2) = reference_decode(&out).expect("our own chunks parse");
            prop_assert_eq!(d2, data);
            prop_assert_eq!(n2, out.len());
            prop_assert_eq!(t2.len(), if trailers { 2 } else { 0 });
        }
    }

    #[test]
    fn framing_outside_the_grammar_is_refused() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b";x\r\n",
            b"10000000000000000\r\n",
            b"5 X\r\nhello\r\n0\r\n\r\n",
            b"5 6\r\nhello\r\n0\r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"x\r\nhello\r\n0\r\n\r\n",
            b"5;a=b c\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"x\"y\r\nhello\r\n0\r\n\r\n",
            b"5;a \r\nhello\r\n0\r\n\r\n",
            b"5;a=b \r\nhello\r\n0\r\n\r\n",
            b"5\r\r\nhello\r\n0\r\n\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\nx: a\r\n folded\r\n\r\n",
            b"0\r\nGET / HTTP/1.1\r\n\r\n",
            b"0\r\nx: a\x00b\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\nx: a\rb\r\n\r\n",
            b"0\r\n\r\r\n",
            b"-1\r\n",
            b"0x5\r\n",
        ] {
            assert!(decode(bad).is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        let mut long_ext = b"5;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'x', 5000));
        assert!(decode(&long_ext).is_err());
        let mut long_trailer = b"0\r\nx: ".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'y', MAX_TRAILERS + 1));
        assert!(decode(&long_trailer).is_err());
    }

    #[test]
    fn leading_zeros_count_nothing_and_what_follows_the_end_is_left() {
        let (data, n, dec) = decode(b"0000000000000000000005\r\nhello\r\n00\r\n\r\nGET").unwrap();
        assert_eq!((data.as_slice(), n, dec.done()), (&b"hello"[..], 37, true));
        let (data, _, dec) = decode(b"5 ; a = b ;c=\"q\\\"x\";d\r\nhello\r\n0\r\nTrailer-X:\t v \r\n\r\n").unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(dec.trailers(), b"Trailer-X: v\r\n");
        assert!(decode(b"fffffffffffffff\r\n").is_ok(), "2^60 - 1 is a size");
    }
}
