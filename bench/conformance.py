#!/usr/bin/env python3
"""HTTP/1.1 conformance side by side: the table of tests/conformance/cases.toml (the one the e2e
test `conformance` runs against cutover) run against cutover, nginx and HAProxy on loopback,
each in front of its own instance of the same raw recording upstream. Prints a markdown table
and writes it to bench/results/conformance-latest.md. Python 3.11 standard library only.

    python3 bench/conformance.py                  # all three proxies, every case (~30 s)
    python3 bench/conformance.py --case te-and-cl --details   # one case, and what each proxy did
    python3 bench/conformance.py --cutover PATH   # another cutover binary

A case is judged with the rules of crates/cutover/tests/e2e/conformance.rs: the raw request on a
new connection; up to `responses` complete responses, the close, or 5 s; the first status; the
requests the upstream received (after 100 ms, for every case: the Rust runner waits only where
nothing is to be forwarded); its head and body; what the client received. Each proxy has its own
recorder, so the three run side by side; bytes a recorder still holds from an earlier case do
not count against the next one.

nginx and HAProxy run with their default parsing settings (no buffer or strictness tuning) as
plain reverse proxies, HTTP/1.1 with keep-alive to the upstream. Some expectations of the table
are cutover's own policy rather than HTTP/1.1 rules (the proxy owns X-Forwarded-*, x-cutover-*
headers, chunked bodies are framed anew, trailers are filtered ...): a failure of only those is
marked †. A failure where the proxy did something else the RFCs allow (another refusal status,
the RFC's other option, such as unfolding obs-fold instead of refusing it) is marked ‡; a
malformed chunked body read leniently but passed on clean, °.
"""
import argparse
import datetime
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = os.path.join(ROOT, "tests", "conformance", "cases.toml")
RESULTS = os.path.join(ROOT, "bench", "results", "conformance-latest.md")
CUTOVER_BIN = "/var/tmp/cutover-conformance-bin"
BUILD_TARGET = "/var/tmp/cutover-bench-target"
NGINX, HAPROXY = "/usr/sbin/nginx", "/usr/sbin/haproxy"
DEFAULT_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
DEADLINE = 5.0  # per case, as in the Rust runner
SETTLE = 0.1  # before the upstream's record is read
PROXIES = ["cutover", "nginx", "haproxy"]
TITLE = {"cutover": "cutover", "nginx": "nginx", "haproxy": "HAProxy"}


# --- The table ------------------------------------------------------------------------------


REPEAT = re.compile(rb"\{([0-9]+)\*([^}]+)\}")


def bytes_of(s):
    """`\\xHH` stands for one byte; `{N*c}` for `c` repeated N times (as conformance.rs); any
    other `{` is itself (JSON bodies)."""
    b = s.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(b):
        if b[i] == 0x5C and b[i + 1 : i + 2] == b"x" and i + 3 < len(b):
            out.append(int(b[i + 2 : i + 4].decode(), 16))
            i += 4
        elif b[i] == 0x7B and REPEAT.match(b, i):
            m = REPEAT.match(b, i)
            out += m.group(2) * int(m.group(1))
            i = m.end()
        else:
            out.append(b[i])
            i += 1
    return bytes(out)


def load_cases():
    with open(CASES, "rb") as f:
        cases = tomllib.load(f)["case"]
    for c in cases:
        c.setdefault("responses", 1)
        c.setdefault("head", False)
        for k in ["upstream_has", "upstream_lacks", "upstream_once", "client_has", "client_lacks"]:
            c.setdefault(k, [])
        exp = c["expect"]
        default_fwd = int("response" in c or (isinstance(exp, int) and 200 <= exp < 300))
        c.setdefault("forwarded", default_fwd)
    return cases


# --- Framing, read the way the Rust runner reads it ------------------------------------------

HEX = re.compile(r"\+?[0-9a-fA-F]+")
DEC = re.compile(r"\+?[0-9]+")


def chunked_end(b):
    """End of a chunked body in b (after its trailers), or None: conformance.rs's chunked_end."""
    at = 0
    while True:
        nl = b.find(b"\r\n", at)
        if nl < 0:
            return None
        size_text = b[at:nl].decode("utf-8", "replace").split(";")[0].strip()
        if not HEX.fullmatch(size_text):
            return None
        size = int(size_text.lstrip("+"), 16)
        if size >= 1 << 64:
            return None
        at = nl + 2
        if size == 0:
            while True:
                nl = b.find(b"\r\n", at)
                if nl < 0:
                    return None
                empty = nl == at
                at = nl + 2
                if empty:
                    return at
        at += size + 2
        if at > len(b):
            return None


def dechunk(b):
    """(data, trailer lines) of a well-formed chunked body that is all of b, else None."""
    at, data = 0, bytearray()
    while True:
        nl = b.find(b"\r\n", at)
        if nl < 0:
            return None
        line = b[at:nl].split(b";")[0]
        if not re.fullmatch(rb"[0-9a-fA-F]+", line):
            return None
        size = int(line, 16)
        at = nl + 2
        if size == 0:
            trailers = []
            while True:
                nl = b.find(b"\r\n", at)
                if nl < 0:
                    return None
                if nl == at:
                    return (bytes(data), trailers) if nl + 2 == len(b) else None
                trailers.append(b[at:nl].lower())
                at = nl + 2
        if b[at + size : at + size + 2] != b"\r\n":
            return None
        data += b[at : at + size]
        at += size + 2


def head_end(buf):
    """Length of the head (through the empty line) if buf holds a whole one."""
    ends = [i + 3 for i in [buf.find(b"\n\r\n")] if i >= 0] + [i + 2 for i in [buf.find(b"\n\n")] if i >= 0]
    return min(ends) if ends else None


def headers_of(head):
    """[(lowercase name, value)] of a head, loosely: every line with a colon after the first."""
    out = []
    for line in re.split(rb"\r?\n", head)[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            out.append((name.decode("latin-1").lower(), value.decode("utf-8", "replace").strip()))
    return out


def header(hs, name):
    return next((v for n, v in hs if n == name), None)


def whole_request(buf):
    """(head length, total length) of the first whole request in buf: the recorder's own plain
    reading (any Transfer-Encoding: chunked; else Content-Length; else no body)."""
    hl = head_end(buf)
    if hl is None:
        return None
    hs = headers_of(buf[:hl])
    if header(hs, "transfer-encoding") is not None:
        n = chunked_end(buf[hl:])
        return None if n is None else (hl, hl + n)
    cl = header(hs, "content-length")
    n = int(cl.lstrip("+")) if cl is not None and DEC.fullmatch(cl) else 0
    return (hl, hl + n) if len(buf) >= hl + n else None


STATUS_LINE = re.compile(rb"HTTP/1\.\d (\d{3})(?: |\r?$)")


def close_delimited(buf):
    """The status of a response with neither Content-Length nor Transfer-Encoding (its body
    ends at the close), or None."""
    end = head_end(buf)
    if end is None:
        return None
    lines = buf[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    names = {l.split(b":", 1)[0].strip().lower() for l in lines[1:] if b":" in l}
    if b"content-length" in names or b"transfer-encoding" in names:
        return None
    return int(parts[1])


def whole_response(buf, head):
    """(status, length) of the first complete response in buf, or None (conformance.rs's
    whole_response: a close-delimited body is complete only at the close, see client())."""
    hl = head_end(buf)
    if hl is None:
        return None
    m = STATUS_LINE.match(re.split(rb"\r?\n", buf[:hl], maxsplit=1)[0])
    if not m:
        return None
    code = int(m.group(1))
    hs = headers_of(buf[:hl])
    if head or code in (204, 304) or 100 <= code < 200:
        return code, hl
    if header(hs, "transfer-encoding") is not None:
        n = chunked_end(buf[hl:])
        return None if n is None else (code, hl + n)
    cl = header(hs, "content-length")
    if cl is None or not DEC.fullmatch(cl):
        return None
    n = int(cl.lstrip("+"))
    return (code, hl + n) if len(buf) >= hl + n else None


# --- The recording upstream -----------------------------------------------------------------


class Recorder:
    """A raw upstream: records every request but `GET /health`, answers each with the current
    canned response, and keeps the bytes of each connection that do not (yet) form a request."""

    def __init__(self):
        self.lock = threading.Lock()
        self.got = []  # (head, body)
        self.response = DEFAULT_RESPONSE
        self.close_after = False  # the case's `upstream_closes`
        self.die_on_reused = False  # the case's `pooled_dies`: armed after its warm-up
        self.gen = 0  # bumped by reset(): bytes pending from an earlier case are not this one's
        self.pending = {}  # connection number -> (gen of its last bytes, bytes not yet a request)
        self.conns = {}
        self.n = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            s.settimeout(120)
            with self.lock:
                self.n += 1
                cid = self.n
                self.conns[cid] = s
            threading.Thread(target=self._serve, args=(s, cid), daemon=True).start()

    def _serve(self, s, cid):
        buf = b""
        answered = 0
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                buf += data
                while (r := whole_request(buf)) is not None:
                    hl, total = r
                    head, body, buf = buf[:hl], buf[hl:total], buf[total:]
                    health = head.startswith(b"GET /health ")
                    if health:
                        answer = DEFAULT_RESPONSE
                    else:
                        with self.lock:
                            self.got.append((head, body))
                            answer = self.response
                            # A request on a connection that already answered one: read,
                            # then closed without a byte of answer (once).
                            die = answered > 0 and self.die_on_reused
                            self.die_on_reused = self.die_on_reused and not die
                        if die:
                            return
                    answered += 1
                    s.sendall(answer)
                    if not health and self.close_after:
                        return
                with self.lock:
                    self.pending[cid] = (self.gen, buf)
        except OSError:
            pass
        finally:
            with self.lock:
                self.pending.pop(cid, None)
                self.conns.pop(cid, None)
            s.close()

    def reset(self, response, close_after=False):
        with self.lock:
            self.got = []
            self.response = response or DEFAULT_RESPONSE
            self.close_after = close_after
            self.die_on_reused = False
            self.gen += 1

    def arm(self):
        """After a warm-up request: forget it, and let the next reused connection die."""
        with self.lock:
            self.got = []
            self.die_on_reused = True

    def snapshot(self):
        with self.lock:
            part = [b for g, b in self.pending.values() if g == self.gen and b]
            return list(self.got), part

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns.values())
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --- The client ---------------------------------------------------------------------------


class View:
    pass


WARM_UP = b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n"


def client(port, req, want, head, probe_close=False, warm=None):
    """Send req on a new connection; read until `want` complete responses, the close, or 5 s.
    With `warm` (the recorder of a `pooled_dies` case), a warm-up request goes first on the
    same connection, so the proxy's upstream connection that answered it is pooled when req
    comes; the recorder is armed between the two."""
    v = View()
    v.statuses, v.closed, v.timed_out, v.final = [], False, False, None
    buf, at = b"", 0
    deadline = time.monotonic() + DEADLINE
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError as e:
        v.text, v.raw, v.incomplete, v.error = "", b"", False, f"connect: {e}"
        return v
    v.error = None
    if warm is not None:
        wbuf = b""
        s.settimeout(DEADLINE)
        try:
            s.sendall(WARM_UP)
            while whole_response(wbuf, False) is None:
                data = s.recv(65536)
                if not data:
                    break
                wbuf += data
        except OSError:
            pass
        warm.arm()
    try:
        s.sendall(req)
    except OSError:
        pass  # the proxy may answer and close before reading it all (the Rust runner ignores this too)

    def read(until):
        nonlocal buf
        left = until - time.monotonic()
        if left <= 0:
            return "timeout"
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except socket.timeout:
            return "timeout"
        except OSError:
            return "closed"
        if not data:
            return "closed"
        buf += data
        return None

    while True:
        while (r := whole_response(buf[at:], head and not v.statuses)) is not None:
            v.statuses.append(r[0])
            at += r[1]
        if len(v.statuses) >= want:
            break
        end = read(deadline)
        if end:
            v.closed, v.timed_out = end == "closed", end == "timeout"
            # A body delimited by the close is complete now.
            if v.closed and (code := close_delimited(buf[at:])) is not None:
                v.statuses.append(code)
                at = len(buf)
            break
    v.raw = buf
    v.incomplete = at < len(buf)
    v.text = buf.decode("utf-8", "replace").lower()
    # For the table only (the judgment above is final): after only 1xx, the final status; and
    # whether the proxy closes the connection after its answer.
    v.final = next((x for x in v.statuses if x >= 200), None)
    if v.statuses and v.final is None and not v.closed:
        until = time.monotonic() + 1.0
        while True:
            rest = buf[at:]
            while v.final is None and (r := whole_response(rest, False)) is not None:
                if r[0] >= 200:
                    v.final = r[0]
                rest = rest[r[1] :]
            if v.final is not None or read(until):
                break
    if probe_close and not v.closed:
        until = time.monotonic() + 1.0
        while True:
            end = read(until)
            if end:
                v.closed = end == "closed"
                break
    s.close()
    return v


# --- Judging ------------------------------------------------------------------------------

# Expectations that are cutover's own policy rather than HTTP/1.1 rules, by case: patterns of
# check keys (see judge()) and a label for the table.
POLICY = {
    "xff-client-line": (["up_*"], "XFF replaced, not appended"),
    "xff-two-lines-odd-case": (["up_*"], "one XFF line, client's dropped"),
    "xfh-xfp-spoofed": (["up_*"], "sets X-Forwarded-Host/Proto"),
    "forwarded-and-real-ip": (["up_*"], "strips Forwarded, X-Real-IP"),
    "x-cutover-request-headers": (["up_*", "client_*"], "owns x-cutover-*"),
    "connection-xff": (["up_has:x-forwarded-host*"], "sets X-Forwarded-Host"),
    "hop-by-hop-set": (["up_lacks:trailer"], "drops Trailer"),
    "te-trailers-kept": (["up_has:*"], "forwards TE: trailers (gRPC)"),
    "te-upper-case": (["up_has:*", "up_body:framing"], "chunked forwarded as chunked"),
    "cl-leading-zeros": (["up_has:*"], "canonical Content-Length"),
    "chunk-ext-valid": (["up_body:framing"], "chunks framed anew"),
    "chunk-size-leading-zeros": (["up_body:framing"], "chunks framed anew"),
    "trailer-forbidden-dropped": (["up_lacks:*", "up_body:framing", "up_body:trailers"], "request trailers filtered, kept"),
    "host-ipv6": (["up_has:*"], "Host sent as received"),
    "absolute-overrides-host": (["up_has:*"], "origin-form upstream, Host with port"),
    "http10-no-host": (["up_has:*"], "endpoint address as Host"),
    "header-line-15k": (["status", "fwd", "up_*"], "16 KiB per header line"),
    "resp-chunk-ext": (["client_lacks:*"], "response chunks framed anew"),
    "resp-x-cutover-headers": (["client_*"], "owns x-cutover-*"),
    "resp-trailers-forbidden-dropped": (["client_lacks:*"], "response trailers filtered"),
}


def up0(c):
    return c["got"][0] if len(c["got"]) == 1 else (b"", b"")


def accepted(c):
    v = c["view"]
    return bool(v.statuses) and 200 <= v.statuses[0] < 300 and len(c["got"]) == 1


def up_head(c):
    return up0(c)[0].lower()


def up_data(c):
    head, body = up0(c)
    if header(headers_of(head), "transfer-encoding") is not None:
        d = dechunk(body)
        return d[0] if d else None
    return body


BARE_CR = re.compile(rb"\r(?!\n)")
FOLD = re.compile(rb"\n[ \t]")

# What the RFCs allow instead of the table's expectation, by case: (holds?, label, RFC).
ALT = {
    "xff-folded": (lambda c: accepted(c) and not FOLD.search(up_head(c)), "unfolded", "RFC 9112 §5.2"),
    "obs-fold-header": (lambda c: accepted(c) and not FOLD.search(up_head(c)), "unfolded", "RFC 9112 §5.2"),
    "te-and-cl": (
        lambda c: accepted(c) and b"content-length" not in up_head(c) and up_data(c) == b"hello"
        and (c["view"].closed or "connection: close" in c["view"].text),
        "TE won, CL dropped, closed", "RFC 9112 §6.3"),
    "cl-list": (
        lambda c: accepted(c) and up_head(c).count(b"\ncontent-length: 5\r\n") == 1 and up_data(c) == b"hello",
        "one value kept", "RFC 9110 §8.6"),
    "cl-duplicate-lines": (
        lambda c: accepted(c) and up_head(c).count(b"\ncontent-length:") == 1 and up_data(c) == b"hello",
        "merged into one", "RFC 9110 §8.6"),
    "double-space": (lambda c: accepted(c) and up_head(c).startswith(b"get / http/1.1\r\n"), "normalized", "RFC 9112 §3"),
    "bare-cr-in-request-line": (lambda c: accepted(c) and not BARE_CR.search(up_head(c)), "CR replaced", "RFC 9112 §2.2"),
    "nul-in-header-value": (lambda c: accepted(c) and b"\0" not in up_head(c), "NUL replaced", "RFC 9110 §5.5"),
    "bare-cr-in-header-value": (lambda c: accepted(c) and not BARE_CR.search(up_head(c)), "CR replaced", "RFC 9110 §5.5"),
    "trailer-obs-fold": (
        lambda c: accepted(c) and up_data(c) == b"hello" and b"x-a: 1" in up0(c)[1].lower() and not FOLD.search(up0(c)[1]),
        "trailer unfolded", "RFC 9112 §5.2"),
    "host-empty": (lambda c: accepted(c) and up_head(c).count(b"\nhost:") == 1, "empty Host is valid", "RFC 9110 §7.2"),
    "resp-te-gzip": (
        lambda c: c["view"].statuses[:1] == [200] and not c["view"].incomplete and "gzip" in c["view"].text,
        "relayed the coding", "RFC 9112 §6.1"),
    "resp-cl-and-te": (
        lambda c: c["view"].statuses[:1] == [200] and "hello" in c["view"].text and "content-length: 2" not in c["view"].text,
        "TE won, CL removed", "RFC 9112 §6.3"),
    "resp-100-then-200": (lambda c: c["view"].statuses[:1] == [100] and c["view"].final == 200, "relayed the 1xx", "RFC 9110 §15.2: a proxy MUST forward 1xx"),
    "resp-103-then-200": (lambda c: c["view"].statuses[:1] == [103] and c["view"].final == 200, "relayed the 1xx", "RFC 9110 §15.2: a proxy MUST forward 1xx"),
}
PROBE_CLOSE = {"te-and-cl"}

CLEAN_BODIES = {(b"content-length: 5", b"hello"), (b"transfer-encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n")}


def lenient(case, c):
    """A malformed chunked body (request or response) the proxy read anyway, where what went on
    is clean: the upstream got exactly `hello`, framed anew; or the client got `hello` re-chunked
    and none of the bad bytes."""
    exp = case["expect"]
    if case["class"] == "chunked" and isinstance(exp, int) and exp >= 400 and accepted(c):
        head, body = up0(c)
        return any(h in head.lower() and body == b for h, b in CLEAN_BODIES)
    if case["class"] == "response" and exp == "cut":
        v = c["view"]
        return v.statuses[:1] == [200] and v.raw.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n") and not any(
            s.lower() in v.text for s in case["client_lacks"] if s != "hello")
    return False


def up_host(c):
    return header(headers_of(up0(c)[0]), "host")


def request_line(c):
    return up0(c)[0].split(b"\r\n")[0].decode("latin-1")


# A few words on what a proxy did instead, where the generic words would say little.
EXPLAIN = {
    "te-http10": lambda c: "TE sent on to 1.0" if b"http/1.0\r\n" in up_head(c) and b"transfer-encoding" in up_head(c) else None,
    "host-userinfo": lambda c: f'upstream Host "{up_host(c)}"' if c["got"] else None,
    "host-path": lambda c: f'upstream Host "{up_host(c)}"' if c["got"] else None,
    "host-list": lambda c: f'upstream Host "{up_host(c)}"' if c["got"] else None,
    "host-missing": lambda c: "no Host upstream" if c["got"] and up_host(c) is None else None,
    "absolute-userinfo": lambda c: "userinfo sent on" if b"user:pw@" in up_head(c) else None,
    "http09": lambda c: "sent on as HTTP/0.9" if b"http/0.9\r\n" in up_head(c) else None,
    "http20-in-request-line": lambda c: "served as 1.1" if accepted(c) else None,
    "connect": lambda c: "CONNECT sent on: tunnel" if up_head(c).startswith(b"connect ") else None,
    "nul-in-header-value": lambda c: "NUL sent on" if b"\0" in up_head(c) else None,
    "trailer-nul": lambda c: "NUL trailer sent on" if b"\0" in up0(c)[1] else None,
    "http10-no-host": lambda c: (("sent on as 1.0, " if request_line(c).endswith("HTTP/1.0") else "1.1 upstream, ") + "no Host") if c["got"] and up_host(c) is None else None,
    "connection-non-ascii": lambda c: "Connection not applied" if b"x-secret: 1" in up_head(c) else None,
    "resp-te-gzip": lambda c: "gzip coding dropped" if c["view"].statuses[:1] == [200] and "gzip" not in c["view"].text else None,
    "resp-chunk-size-junk": lambda c: "bad chunk read" if c["view"].statuses[:1] == [200] else None,
}


def short(s):
    s = s.strip().replace("\r\n", " ").replace("x-forwarded-for", "xff")
    s = s.replace("x-forwarded-host", "xfh").replace("x-forwarded-proto", "xfp")
    return s if len(s) <= 22 else s[:20] + "…"


ONCE_ABBR = {"x-forwarded-for": "xff", "x-forwarded-host": "xfh", "x-forwarded-proto": "xfp"}


def judge(case, view, got, part):
    """Every expectation of the case that failed: [(key, words, message)]."""
    fails = []
    exp = case["expect"]
    first = view.statuses[0] if view.statuses else None
    if exp == "cut":
        if first is not None and 200 <= first < 300 and not view.incomplete:
            fails.append(("status", "complete", f"expected a cut response, got a complete {first}"))
    elif first != exp:
        if first is not None and 200 <= first < 300 and exp >= 300:
            words = "not refused"
        elif first is not None and first >= 400 and 200 <= exp < 300:
            words = "refused"
        else:
            words = f"want {exp}"
        fails.append(("status", words, f"expected {exp}, got {first}"))
    for s in case["client_has"]:
        if s.lower() not in view.text:
            fails.append((f"client_has:{s}", f'no "{short(s.lower())}"', f"client lacks {s!r}"))
    for s in case["client_lacks"]:
        if s.lower() in view.text:
            fails.append((f"client_lacks:{s}", f'relayed "{short(s.lower())}"', f"client got {s!r}"))
    if len(got) != case["forwarded"]:
        words = "forwarded" if case["forwarded"] == 0 else f"fwd×{len(got)}"
        fails.append(("fwd", words, f"upstream received {len(got)} requests, expected {case['forwarded']}"))
    if case["forwarded"] == 0 and part:
        fails.append(("pending", "part upstream", f"upstream holds part of a request: {part[0][:80]!r}"))
    if not got:
        return fails
    head, body = got[0]
    lhead, lall = head.lower(), head.lower() + body.lower()
    for s in case["upstream_has"]:
        if bytes_of(s).lower() not in lhead:
            fails.append((f"up_has:{s}", f'no "{short(s.lower())}"', f"upstream head lacks {s!r}"))
    for s in case["upstream_lacks"]:
        b = bytes_of(s).lower()
        if b in lall:
            if re.fullmatch(rb"[a-z0-9-]+", b):  # a header name: say so, or (only in a value) nothing
                words = f"kept {s.lower()}" if re.search(rb"(^|\n)" + re.escape(b) + rb":", lhead) else None
            else:
                words = f'kept "{short(s.lower())}"'
            fails.append((f"up_lacks:{s}", words, f"upstream got {s!r}"))
    for name in case["upstream_once"]:
        n = sum(1 for line in lhead.split(b"\r\n") if line.startswith(name.encode() + b":"))
        if n != 1:
            fails.append((f"up_once:{name}", f"{ONCE_ABBR.get(name, name)}×{n}", f"upstream head has {n} {name} lines"))
    if "upstream_body" in case:
        want = bytes_of(case["upstream_body"])
        if body != want:
            w = dechunk(want) or (want, [])
            g = dechunk(body) if header(headers_of(head), "transfer-encoding") is not None else (body, [])
            if g and g[0] == w[0]:
                key, words = ("up_body:framing", "framed otherwise") if g[1] == w[1] else ("up_body:trailers", "trailers differ")
            else:
                key, words = "up_body:data", "body differs"
            fails.append((key, words, f"upstream body {body[:80]!r}, expected {want!r}"))
    return fails


def is_policy(case, key):
    pats = POLICY.get(case["name"], ([], ""))[0]
    return (any(fnmatch.fnmatchcase(key, p) for p in pats) or "x-cutover" in key.lower()
            or key in ("up_body:framing", "up_body:trailers"))


def classify(case, c):
    """pass | policy (†) | alt (‡, the RFC's other option) | code (‡, another refusal status) |
    refused (a valid request refused) | fail."""
    fails = c["fails"]
    if not fails:
        return "pass", ""
    alt = ALT.get(case["name"])
    if alt and alt[0](c):
        return "alt", f"{alt[1]} ({alt[2]})"
    real = [f for f in fails if not is_policy(case, f[0])]
    if not real:
        return "policy", ""
    if lenient(case, c):
        return "lenient", ""
    exp, v = case["expect"], c["view"]
    if (isinstance(exp, int) and exp >= 400 and v.statuses and v.statuses[0] >= 400
            and [f[0] for f in real] == ["status"]):
        return "code", f"{v.statuses[0]} for {exp}"
    if isinstance(exp, int) and 200 <= exp < 300 and v.statuses and v.statuses[0] >= 400 and not c["got"]:
        return "refused", ""
    return "fail", ""


def run_case(case, port, rec):
    rec.reset(bytes_of(case["response"]) if "response" in case else None, case.get("upstream_closes", False))
    warm = rec if case.get("pooled_dies") else None
    view = client(port, bytes_of(case["request"]), case["responses"], case["head"], case["name"] in PROBE_CLOSE, warm)
    time.sleep(SETTLE)
    got, part = rec.snapshot()
    c = {"view": view, "got": got, "part": part}
    c["fails"] = judge(case, view, got, part)
    c["kind"], c["note"] = classify(case, c)
    return c


def shown_status(v):
    if v.statuses:
        s = str(v.statuses[0])
        if 100 <= v.statuses[0] < 200 and v.final:
            s += f"→{v.final}"
        return s
    if v.error:
        return "no connect"
    if v.raw:
        return "cut"
    return "closed" if v.closed else "timeout"


MARK = {"policy": " †", "alt": " ‡", "code": " ‡", "lenient": " °"}


def cell(case, c):
    s = shown_status(c["view"])
    n = len(c["got"])
    if n:
        s += " fwd" + (f"×{n}" if n > 1 else "")
    if c["part"] and not n:
        s += " part"
    if c["kind"] == "pass":
        return s
    words = []
    real = [f for f in c["fails"] if not is_policy(case, f[0])] if c["kind"] != "policy" else c["fails"]
    for f in real:
        if f[1] is not None and f[1] not in words and not (f[0] == "fwd" and words and words[0] in ("not refused", "refused")):
            words.append(f[1])
    if c["view"].timed_out and not c["view"].raw:
        words = ["no answer in 5 s"]
    if c["kind"] == "fail" and case["name"] in EXPLAIN:
        w = EXPLAIN[case["name"]](c)
        if w:
            words = [w]
    if c["kind"] == "alt":
        words = [ALT[case["name"]][1]]
    if c["kind"] == "lenient":
        words = ["accepted, clean upstream" if case["class"] == "chunked" else "accepted, re-chunked"]
    if c["kind"] == "code":
        words = []
    text = ", ".join(words[:3]) + (", …" if len(words) > 3 else "")
    return f"{s} ✗{' ' + text if text else ''}{MARK.get(c['kind'], '')}".replace("|", "\\|")


def expected_cell(case):
    s = str(case["expect"])
    if case["forwarded"]:
        s += " fwd" + (f"×{case['forwarded']}" if case["forwarded"] > 1 else "")
    if case["responses"] > 1:
        s += f", {case['responses']} answers"
    return s


def policy_label(case):
    if case["name"] in POLICY:
        return POLICY[case["name"]][1]
    if any("x-cutover" in s.lower() for k in ["upstream_has", "upstream_lacks", "client_has", "client_lacks"] for s in case[k]):
        return "owns x-cutover-*"
    return ""


# --- The proxies --------------------------------------------------------------------------


class Proxies:
    """Every process started here, stopped (process group: nginx's workers too) by stop_all()."""

    def __init__(self, work):
        self.work, self.procs = work, []

    def start(self, name, cmd, env=None):
        log = open(os.path.join(self.work, f"{name}.out"), "ab")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True, cwd=self.work)
        self.procs.append((name, p))
        return p

    def stop_all(self):
        for _, p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        end = time.monotonic() + 5
        for _, p in self.procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # whatever is left of its group (nginx workers)
            except OSError:
                pass
            try:
                p.wait(1)
            except subprocess.TimeoutExpired:
                pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what}: nothing listens on 127.0.0.1:{port} after {timeout} s")


def http(method, url, body=None, headers=None, timeout=3):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def start_cutover(px, binary, upstream):
    d = os.path.join(px.work, "cutover")
    os.makedirs(d)
    admin, listen = free_port(), free_port()
    cfg = os.path.join(d, "cutover.toml")
    with open(cfg, "w") as f:
        f.write(f"""[admin]
listen = "127.0.0.1:{admin}"

[store]
path = "cutover.db"

[services.chat]
listen = "127.0.0.1:{listen}"
health = {{ path = "/health", interval = "1h" }}
allow_shared_endpoints = true

[services.chat.blue]
endpoints = ["127.0.0.1:{upstream}"]

[services.chat.green]
endpoints = ["127.0.0.1:{upstream}"]
""")
    p = px.start("cutover", [binary, "serve", "--config", cfg, "--grace", "1s"], env=dict(os.environ, RUST_LOG="info"))
    end = time.monotonic() + 15
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"cutover exited with {p.returncode}: see {px.work}/cutover.out")
        try:
            if http("GET", f"http://127.0.0.1:{admin}/healthz", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError("cutover: no GET /healthz 200 in 15 s")
        time.sleep(0.05)
    token = open(os.path.join(d, "admin.token")).read().strip()
    st, body = http("POST", f"http://127.0.0.1:{admin}/v1/services/chat/switch",
                    json.dumps({"to": "blue", "force": True}).encode(),
                    {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    if st != 200:
        raise RuntimeError(f"cutover switch: {st} {body!r}")
    wait_port(listen, p, "cutover")
    return listen


def start_nginx(px, upstream):
    d = os.path.join(px.work, "nginx")
    os.makedirs(d)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    cfg = os.path.join(d, "nginx.conf")
    with open(cfg, "w") as f:
        f.write(f"""{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream recorder {{ server 127.0.0.1:{upstream}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://recorder;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
""")
    p = px.start("nginx", [NGINX, "-p", d + "/", "-e", f"{d}/error.log", "-c", cfg])
    wait_port(port, p, "nginx")
    return port


def start_haproxy(px, upstream):
    d = os.path.join(px.work, "haproxy")
    os.makedirs(d)
    port = free_port()
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
  pidfile {d}/haproxy.pid
  log stdout format raw local0 info

defaults
  mode http
  log global
  option httplog
  option forwardfor
  http-reuse safe
  timeout connect 5s
  timeout client 30s
  timeout server 30s

frontend conformance
  bind 127.0.0.1:{port}
  default_backend recorder

backend recorder
  server recorder 127.0.0.1:{upstream}
""")
    p = px.start("haproxy", [HAPROXY, "-db", "-f", cfg])
    wait_port(port, p, "haproxy")
    return port


def version_of(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"


def cutover_binary(arg):
    if arg:
        return arg
    if os.access(CUTOVER_BIN, os.X_OK):
        return CUTOVER_BIN
    print(f"{CUTOVER_BIN} missing: building cutover in {BUILD_TARGET}", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-p", "cutover"], cwd=ROOT, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=BUILD_TARGET))
    return os.path.join(BUILD_TARGET, "release", "cutover")


# --- Report ---------------------------------------------------------------------------------

LEGEND = """Cells: the first status the client got (`cut`: a response started and was cut; `closed`: the
connection closed with no byte; `timeout`: nothing in 5 s; `100→200`: a 1xx, then the final
status), `fwd` when the upstream received the request (`×N` for N requests), `part` when it holds
part of one. ✗ and a few words: an expectation of the case failed, marked by why:

- † only expectations that are cutover's own policy failed (column "cutover policy"), not
  HTTP/1.1 rules: who owns X-Forwarded-*, x-cutover-* headers, chunked bodies framed anew,
  trailers filtered, Host kept as sent, limits.
- ‡ the proxy did something else the RFCs allow: another refusal status, or the RFC's other
  option (listed under the table), such as unfolding obs-fold instead of refusing it.
- ° lenient: a malformed chunked body read anyway, and what went on was clean (the upstream got
  exactly the 5 bytes, framed anew; the client got them re-chunked). Not what RFC 9112 §7.1
  allows, and a parse two readers could disagree on, but nothing malformed was passed on.
- no mark: the proxy refused a valid request, or passed on something the RFCs say it must not."""


def report(cases, results):
    out = []
    out.append("| case | class | cutover | nginx | HAProxy | expected | cutover policy |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for case in cases:
        r = [cell(case, results[p][case["name"]]) if case["name"] in results[p] else "–" for p in PROXIES]
        out.append(f"| {case['name']} | {case['class']} | {r[0]} | {r[1]} | {r[2]} | {expected_cell(case)} | {policy_label(case)} |")
    table = "\n".join(out)
    summary = []
    for p in PROXIES:
        rs = results[p]
        if not rs:
            continue
        kinds = [rs[c["name"]]["kind"] for c in cases if c["name"] in rs]
        n = {k: kinds.count(k) for k in ["pass", "policy", "alt", "code", "lenient", "refused", "fail"]}
        summary.append(
            f"- **{TITLE[p]}**: {n['pass']} / {len(kinds)} passed; "
            f"{n['pass'] + n['policy'] + n['alt'] + n['code']} / {len(kinds)} counting † and ‡ as passes. "
            f"Failed: † {n['policy']} on cutover policy only; ‡ {n['code']} another refusal status, "
            f"{n['alt']} the RFC's other option; ° {n['lenient']} lenient with a clean result; "
            f"✗ {n['refused']} valid requests refused, {n['fail']} other")
    notes = []
    for case in cases:
        for p in PROXIES:
            c = results[p].get(case["name"])
            if c and c["kind"] == "alt":
                notes.append(f"- {case['name']}, {TITLE[p]}: {c['note']}")
    det = []
    for case in cases:
        for p in PROXIES:
            c = results[p].get(case["name"])
            if c and c["fails"]:
                msg = "; ".join(f[2] for f in c["fails"])
                uh, ub = (c["got"][0][0][:400], c["got"][0][1][:200]) if c["got"] else (b"", b"")
                det.append(f"- {case['name']} / {TITLE[p]} [{c['kind']}]: {msg}"
                           + (f"; upstream head {uh!r}" if uh else "")
                           + (f", body {ub!r}" if ub else "")
                           + f"; client {c['view'].raw[:300]!r}")
    return table, summary, notes, det


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cutover", help=f"cutover binary (default {CUTOVER_BIN}, else built)")
    ap.add_argument("--only", action="append", choices=PROXIES, help="run only this proxy (repeatable)")
    ap.add_argument("--case", action="append", help="run only this case (repeatable)")
    ap.add_argument("--details", action="store_true", help="print what every failure saw")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {os.path.relpath(RESULTS, ROOT)}")
    a = ap.parse_args()
    proxies = a.only or PROXIES
    cases = load_cases()
    if a.case:
        cases = [c for c in cases if c["name"] in a.case]
        if not cases:
            sys.exit("no such case")
    for tool in [NGINX, HAPROXY]:
        if os.path.basename(tool) in proxies and not os.access(tool, os.X_OK):
            sys.exit(f"{tool} missing (apt-get install nginx haproxy)")

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started in the background, where SIGINT is ignored
    binary = cutover_binary(a.cutover) if "cutover" in proxies else None
    work = tempfile.mkdtemp(prefix="cutover-conformance-")
    px = Proxies(work)
    recs = {}
    results = {p: {} for p in PROXIES}
    started = time.monotonic()
    ok = interrupted = False
    try:
        ports = {}
        for p in proxies:
            recs[p] = Recorder()
            if p == "cutover":
                ports[p] = start_cutover(px, binary, recs[p].port)
            elif p == "nginx":
                ports[p] = start_nginx(px, recs[p].port)
            else:
                ports[p] = start_haproxy(px, recs[p].port)

        def run_all(p):
            for case in cases:
                results[p][case["name"]] = run_case(case, ports[p], recs[p])

        threads = [threading.Thread(target=run_all, args=(p,), daemon=True) for p in proxies]
        for t in threads:
            t.start()
        end = time.monotonic() + 150
        for t in threads:
            t.join(max(0, end - time.monotonic()))
        if any(t.is_alive() for t in threads):
            print("warning: a proxy's run did not finish in 150 s; its missing cases show as –", file=sys.stderr)
        for p in proxies:
            if px.procs and any(n == p and pr.poll() is not None for n, pr in px.procs):
                print(f"warning: {p} exited during the run: see {work}/{p}.out", file=sys.stderr)
        ok = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        px.stop_all()
        for r in recs.values():
            r.close()
        if (ok or interrupted) and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs and configs kept in {work}", file=sys.stderr)

    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cutover": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown",
        "nginx": version_of([NGINX, "-v"]).replace("nginx version: ", ""),
        "haproxy": version_of([HAPROXY, "-v"]).split(" - ")[0].replace("HAProxy version", "HAProxy"),
        "binary": binary,
        "built": datetime.datetime.fromtimestamp(os.path.getmtime(binary)).astimezone().strftime("%Y-%m-%d %H:%M %Z")
        if binary else "-",
    }
    table, summary, notes, det = report(cases, results)
    secs = time.monotonic() - started
    print(table)
    print()
    print("\n".join(summary))
    if notes:
        print("\n‡ the RFC's other option:\n" + "\n".join(notes))
    if a.details:
        print("\nDetails:\n" + "\n".join(det))
    print(f"\n{len(cases)} cases × {len(proxies)} proxies in {secs:.0f} s", file=sys.stderr)
    if a.no_write or a.case or a.only:
        return
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(f"""# HTTP/1.1 conformance: cutover, nginx and HAProxy side by side

Written by `python3 bench/conformance.py` on {meta['date']}: the {len(cases)} cases of
`tests/conformance/cases.toml` sent as raw bytes to each proxy, each in front of a raw recording
upstream on loopback. cutover at commit `{meta['cutover']}` (binary `{meta['binary']}`, built
{meta['built']}; its own HTTP/1.1 engine, so the table's `[case.hyper]` overrides are not used),
{meta['nginx']}, {meta['haproxy']}. nginx and HAProxy run with
their default parsing settings as plain reverse proxies (nginx: `proxy_http_version 1.1`,
upstream keepalive, `Host $host`, `X-Forwarded-For $proxy_add_x_forwarded_for`; HAProxy:
`mode http`, `option forwardfor`, `http-reuse safe`).

{LEGEND}

{table}

{chr(10).join(summary)}
""")
        if notes:
            f.write("\n‡ the RFC's other option, where a proxy took it:\n\n" + "\n".join(notes) + "\n")
        f.write("\n## What each failure saw\n\n" + "\n".join(det) + "\n")
    print(f"wrote {os.path.relpath(RESULTS, ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: proxies stopped")
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"error: {e}")
