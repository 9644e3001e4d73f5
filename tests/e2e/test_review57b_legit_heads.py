"""Review 57b: FALSE REFUSALS and FALSE TAKEOVERS with legitimate traffic, after stop 57's
change to hubgate's takeover of hyper's own refusals (server::conn::ClockedIo,
Clock::refused_head, Capture; framing::hyper_refusal / refusable).

A takeover must happen only while a head is begun that hyper can be refusing. Legitimate
clients must never be refused, never have an answer altered, and every answer must have exactly
one right audit record. Every test asserts that outcome; a strict xfail marks a hole found.

Scenarios (debug binary, 2026-12-07):
- HTTP/1.0 without keep-alive; HTTP/1.0 with `Connection: keep-alive`, sequential and
  pipelined                                                                          -> held
- HTTP/1.1 keep-alive: sequential, pipelined in one write, across writes split inside the
  request line / the head's end / the body, byte by byte                            -> held
- empty lines (CRLF and bare LF) before the first request line and between pipelined
  requests, in one write and byte by byte                                            -> held
- large valid heads: 60 KiB in one write; 95 KiB with its 1 KiB of empty lines before it,
  in 4 KiB writes then byte by byte; exactly H1_MAX_BUFFER (96 KiB = 98,304 bytes) with the
  empty lines, its last byte sent alone                                              -> held
- the same head one byte longer (incomplete at 98,304 bytes with its empty lines): the 431
  envelope, a record, the close                                                      -> held
- a 60 KiB request target, in one write and split with its end byte by byte         -> held
- upstream answers streamed in many writes (Content-Length and chunked, resign and
  passthrough, and close-delimited to an HTTP/1.0 client), whose pieces look like response
  heads and like hyper's refusal (HTTP/1.1 400 and 431, HTTP/1.0 400), sequential requests
                                                                                     -> held
- boto3 calls interleaved with raw keep-alive requests                               -> held

FOUND, and fixed in stop 57 (the test below failed before the fix): the 57a hole is still open for a client that PIPELINES. Security
Hub's 200 streamed in two writes, the second bytes shaped like hyper's bare 400, with the
client's next (valid, signed) request already sent: hubgate splices its refusal envelope into
the 200's body (130 bytes of body declared, the envelope's head and JSON after the first 27),
writes a VALIDATION_ERROR "it is not a valid HTTP/1.1 request head" record for a head that is
valid, and then forwards the next request to Security Hub and records it 200 while its answer
is never sent (ClockedIo is in Refusal::Answered and swallows every write). Resign and
passthrough alike. Cause: Clock::refused_head (src/server/conn.rs) answers Some for
`Capture::Complete` ("a complete head not yet started") with `in_flight == 0`; with a
pipelined request that is exactly the state while hyper flushes the previous answer's last
body frame after proxy::Held dropped its RequestGuard (the guard goes when the body's last
frame is taken, before hyper writes it). A complete head can be refused (a framing fault),
but hyper parses a pipelined head only once the answer before it is written whole, so no
refusal can be under way while an answer's last bytes are still being written: the takeover
also needs "no answer partly written" (e.g. the guard released only after hyper has flushed
the body's last frame, or the write stream followed to where each response ends).

The fix: a whole head is taken for refused only when it has a fault hyper refuses
(framing::refusable: it does not parse, a framing header hyper refuses, a target over 65,534
bytes or not a URI, a Transfer-Encoding on HTTP/1.0, a header name of 64 KiB); a whole head
without one is a pipelined request hyper will start, and refusal-shaped bytes written before
it are the previous answer's.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from helpers import (ADMIN, MEMBER, OWN_ACCOUNT_FILTER, PRODUCT_ARN, ident, metric, sign,
                     wait_until)
from test_adversarial_review57a import (REFUSAL_SHAPE, TAIL_BODY, ScriptedUpstream,
                                        refusal_shaped_tail, start_on)
from test_refused_heads import TOO_BIG, assert_refusal, assert_refusal_record, parse_responses

BUF = "/findings/batchupdate"
WAIT = 5  # every socket wait is bounded by it
LIMIT = 96 * 1024  # src/server.rs H1_MAX_BUFFER: hyper's buffer, the longest head in reads
REFUSAL_10 = (b"HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\n"
              b"date: Mon, 07 Dec 2026 18:50:54 GMT\r\n\r\n")
REFUSAL_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n"
               b"content-length: 0\r\ndate: Mon, 07 Dec 2026 18:50:54 GMT\r\n\r\n")
RESPONSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
REFUSAL_KINDS = ("bad_request", "header_too_large", "uri_too_long")


# -- raw HTTP/1 ---------------------------------------------------------------------------------


class Answer:
    def __init__(self, version, status, headers, body, raw):
        self.version, self.status, self.headers, self.body, self.raw = (version, status,
                                                                        headers, body, raw)

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Answer({self.raw[:400]!r})"


class Conn:
    """A raw HTTP/1 client socket on 127.0.0.1 that reads whole answers (Content-Length,
    chunked or close-delimited framing), every wait bounded by WAIT."""

    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False
        self.reads = 0  # recv calls that brought bytes

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.s.close()

    def send(self, data: bytes):
        self.s.sendall(data)

    def send_pieces(self, data: bytes, sizes, pause: float = 0.002):
        """data in writes of the given sizes (cycled), each flushed alone (TCP_NODELAY)."""
        i, k = 0, 0
        while i < len(data):
            n = sizes[k % len(sizes)]
            self.s.sendall(data[i:i + n])
            i, k = i + n, k + 1
            time.sleep(pause)

    def _more(self):
        assert not self.eof, f"closed by hubgate; unread: {self.buf[:300]!r}"
        try:
            chunk = self.s.recv(65536)
        except socket.timeout:
            raise AssertionError(f"no whole answer within {WAIT}s; have {self.buf[:400]!r}")
        if not chunk:
            self.eof = True
        else:
            self.reads += 1
        self.buf += chunk

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, _ = (lines[0] + " ").split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"header {name} twice: {head!r}"
            headers[name.lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, at = b"", 0
            while True:
                while b"\r\n" not in rest[at:]:
                    self._more()
                    rest = self.buf.partition(b"\r\n\r\n")[2]
                line_end = rest.index(b"\r\n", at)
                size = int(rest[at:line_end].split(b";")[0], 16)
                while len(rest) < line_end + 2 + size + 2:
                    self._more()
                    rest = self.buf.partition(b"\r\n\r\n")[2]
                body += rest[line_end + 2:line_end + 2 + size]
                assert rest[line_end + 2 + size:line_end + 4 + size] == b"\r\n", rest[:300]
                at = line_end + 4 + size
                if size == 0:
                    break
            used = at
        elif "content-length" in headers:
            length = int(headers["content-length"])
            while len(rest) < length:
                self._more()
                rest = self.buf.partition(b"\r\n\r\n")[2]
            body, used = rest[:length], length
        else:  # close-delimited
            while not self.eof:
                self._more()
            rest = self.buf.partition(b"\r\n\r\n")[2]
            body, used = rest, len(rest)
        raw = head + b"\r\n\r\n" + rest[:used]
        self.buf = rest[used:]
        return Answer(version, int(status), headers, body, raw)

    def closed(self, wait: float = WAIT) -> bool:
        """Whether hubgate closes the connection within `wait` (with nothing more sent)."""
        if self.eof:
            return not self.buf
        self.s.settimeout(wait)
        try:
            chunk = self.s.recv(65536)
        except socket.timeout:
            return False
        finally:
            self.s.settimeout(WAIT)
        assert not chunk, f"unexpected bytes after the answers: {(self.buf + chunk)[:400]!r}"
        self.eof = True
        return True

    def nothing_within(self, wait: float) -> bool:
        """Nothing arrives (and no close) within `wait` seconds."""
        self.s.settimeout(wait)
        try:
            chunk = self.s.recv(65536)
        except socket.timeout:
            return True
        finally:
            self.s.settimeout(WAIT)
        self.buf += chunk
        self.eof = not chunk
        return False


def note(hg, text: str, version: str = "HTTP/1.1", extra: tuple = (), creds=MEMBER) -> bytes:
    """A signed Note on the member's own finding (raw head and body); `extra` header lines are
    added unsigned after the signed ones."""
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Note": {"Text": text, "UpdatedBy": "r57b"}}).encode()
    h = sign(creds, "PATCH", hg.host, BUF, body, {"Content-Type": "application/json"})
    return (f"PATCH {BUF} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            + "".join(line + "\r\n" for line in extra)
            + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


def signed_get(hg, target: str, version: str = "HTTP/1.1", extra: tuple = (),
               creds=ADMIN) -> bytes:
    """A signed GET (no body) of `target`, raw: by default the administrator's (members may
    not call DescribeHub, `/accounts`)."""
    h = sign(creds, "GET", hg.host, target, b"")
    return (f"GET {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            + "".join(line + "\r\n" for line in extra) + "\r\n").encode("latin-1")


def pads(total: int, each: int = 4000) -> tuple:
    """Unsigned `X-Pad-N: aaaa` header lines of about `total` bytes together."""
    lines, n = [], 0
    while total > 0:
        size = min(each, total)
        line = f"X-Pad-{n}: " + "a" * max(1, size - len(f"X-Pad-{n}: ") - 2)
        lines.append(line)
        total -= len(line) + 2
        n += 1
    return tuple(lines)


def padded_note(hg, text: str, head_len: int) -> bytes:
    """A signed note whose head (request line to the empty line) is exactly head_len bytes."""
    bare = note(hg, text)
    base = bare.index(b"\r\n\r\n") + 4
    raw = note(hg, text, extra=pads(head_len - base))
    got = raw.index(b"\r\n\r\n") + 4
    # adjust the last pad line to the exact length
    extra = list(pads(head_len - base))
    extra[-1] += "a" * (head_len - got)
    raw = note(hg, text, extra=tuple(extra))
    assert raw.index(b"\r\n\r\n") + 4 == head_len, (raw.index(b"\r\n\r\n") + 4, head_len)
    return raw


def refusal_counts(hg) -> tuple:
    return tuple(metric(hg, "hubgate_connection_errors_total", kind=k) for k in REFUSAL_KINDS) \
        + (metric(hg, "hubgate_requests_total", operation="unknown", decision="rejected",
                  status="400"),)


def assert_forwarded_ok(hg, answers, before: int, version_out: str | None = None):
    """Every answer a forwarded 200 (ProcessedFindings for notes), with exactly one record
    each, 200/forwarded, none a refusal; no other record since `before`."""
    ids = []
    for a in answers:
        assert a.status == 200, a
        if version_out:
            assert a.version == version_out, a
        assert "x-amzn-errortype" not in a.headers, a
        ids.append(a.headers["x-hubgate-decision-id"])
    wait_until(lambda: len(hg.audit_records()) >= before + len(answers), 5,
               f"{len(answers)} records")
    new = hg.audit_records()[before:]
    assert [r["decision_id"] for r in new] == ids, \
        ([(r["status"], r["error"]) for r in new], ids)
    for r in new:
        assert r["status"] == 200 and r["forwarded"] is True and r["error"] is None, r
    return new


# -- 1. HTTP/1.0 and keep-alive --------------------------------------------------------------------


def test_http10_clients_with_and_without_keep_alive(hubgate):
    """HTTP/1.0 with no Connection header: its 200, then the close (hyper's HTTP/1.0 rule).
    Then HTTP/1.0 with `Connection: keep-alive` on a new connection: two notes one after the
    other, then three in one write: five 200s, each `connection: keep-alive`, the connection
    kept. Six records, six notes upstream, nothing refused."""
    hg = hubgate
    before, counts = len(hg.audit_records()), refusal_counts(hg)
    with Conn(hg.port) as c:
        c.send(note(hg, "1.0 alone", version="HTTP/1.0"))
        alone = c.answer()
        assert c.closed(), "an HTTP/1.0 request without keep-alive left the connection open"
    assert alone.headers.get("connection", "close").lower() != "keep-alive", alone
    ka = ("Connection: keep-alive",)
    answers = []
    with Conn(hg.port) as c:
        for i in range(2):
            c.send(note(hg, f"1.0 ka {i}", version="HTTP/1.0", extra=ka))
            answers.append(c.answer())
        c.send(b"".join(note(hg, f"1.0 ka pipelined {i}", version="HTTP/1.0", extra=ka)
                        for i in range(3)))
        answers += [c.answer() for _ in range(3)]
        assert not c.closed(0.3), "the keep-alive connection was closed"
    for a in answers:
        assert a.headers.get("connection", "").lower() == "keep-alive", a
    for a in [alone] + answers:
        assert a.json()["ProcessedFindings"] == [ident("f-own-high")], a
    assert_forwarded_ok(hg, [alone] + answers, before)
    texts = [json.loads(c["body"])["Note"]["Text"] for c in hg.fake.buf_calls()]
    assert texts == ["1.0 alone", "1.0 ka 0", "1.0 ka 1"] + [f"1.0 ka pipelined {i}"
                                                             for i in range(3)], texts
    assert refusal_counts(hg) == counts


def _three(hg, tag):
    return [note(hg, f"{tag} 0"), signed_get(hg, "/accounts"), note(hg, f"{tag} 2")]


@pytest.mark.parametrize("how", ["sequential", "one-write", "split-everywhere"])
def test_http11_keep_alive_several_requests(hubgate, how):
    """Three requests (note, DescribeHub, note) on one HTTP/1.1 connection: one after the
    other; pipelined in one write; pipelined with the stream cut into 1..13-byte writes (so
    writes end inside request lines, inside `\\r\\n\\r\\n`, inside bodies). Three 200s in order,
    the right bodies, three records, nothing refused, the connection kept."""
    hg = hubgate
    before, counts = len(hg.audit_records()), refusal_counts(hg)
    reqs = _three(hg, how)
    with Conn(hg.port) as c:
        if how == "sequential":
            answers = []
            for r in reqs:
                c.send(r)
                answers.append(c.answer())
        else:
            if how == "one-write":
                c.send(b"".join(reqs))
            else:
                c.send_pieces(b"".join(reqs), [1, 2, 3, 5, 8, 13, 1, 1, 4], pause=0.0005)
            answers = [c.answer() for _ in reqs]
        assert not c.closed(0.3), "the keep-alive connection was closed"
    assert answers[0].json()["ProcessedFindings"] == [ident("f-own-high")]
    assert "HubArn" in answers[1].json(), answers[1]
    assert answers[2].json()["ProcessedFindings"] == [ident("f-own-high")]
    assert_forwarded_ok(hg, answers, before)
    texts = [json.loads(c["body"])["Note"]["Text"] for c in hg.fake.buf_calls()]
    assert texts == [f"{how} 0", f"{how} 2"], texts
    assert refusal_counts(hg) == counts


@pytest.mark.parametrize("how", ["one-write", "byte-by-byte"])
def test_empty_lines_before_and_between_pipelined_requests(hubgate, how):
    """`\\r\\n\\r\\n` before the first request line, `\\n\\n` (bare LF) and `\\r\\n\\n\\r\\n`
    between pipelined requests (RFC 9112 §2.2: a server ignores them), in one write or one
    byte at a time: every request answered 200 and recorded, none refused."""
    hg = hubgate
    before, counts = len(hg.audit_records()), refusal_counts(hg)
    reqs = _three(hg, how)
    stream = b"\r\n\r\n" + reqs[0] + b"\n\n" + reqs[1] + b"\r\n\n\r\n" + reqs[2]
    with Conn(hg.port) as c:
        if how == "one-write":
            c.send(stream)
        else:
            c.send_pieces(stream, [1], pause=0.0002)
        answers = [c.answer() for _ in reqs]
        # and after an answer, empty lines alone then a request
        c.send(b"\n\r\n")
        assert c.nothing_within(0.2), c.buf[:300]
        c.send(note(hg, f"{how} after blanks"))
        answers.append(c.answer())
        assert not c.closed(0.3)
    assert_forwarded_ok(hg, answers, before)
    assert len(hg.fake.buf_calls()) == 3
    assert refusal_counts(hg) == counts


# -- 2. large heads ------------------------------------------------------------------------------


@pytest.mark.parametrize("head_len,blanks,how", [
    (60 * 1024, b"", "one-write"),
    (95 * 1024 - 1024, b"\r\n" * 256 + b"\n" * 512, "pieces-then-bytes"),
    (LIMIT - 1000, b"\r\n" * 250 + b"\n" * 500, "limit-last-byte-alone"),
], ids=["60k-one-write", "95k-with-1k-blanks-pieces-then-bytes", "exactly-96k-with-blanks"])
def test_a_large_valid_head_is_served(hubgate, head_len, blanks, how):
    """A signed note with unsigned X-Pad headers making its head `head_len` bytes, after
    `blanks` empty-line bytes: in one write; in 4 KiB writes with the last 300 bytes one at a
    time; or the whole 98,304 bytes (head and empty lines, hyper's buffer exactly) with its
    last byte sent alone after the rest was seen to draw no answer. Each: 200, the note
    forwarded, one record; the connection kept, and a next request on it served."""
    hg = hubgate
    before, counts = len(hg.audit_records()), refusal_counts(hg)
    raw = blanks + padded_note(hg, f"large {head_len}", head_len)
    end = raw.index(b"\r\n\r\n", len(blanks)) + 4
    if how == "limit-last-byte-alone":
        assert end == LIMIT, end
    with Conn(hg.port) as c:
        if how == "one-write":
            c.send(raw)
        elif how == "pieces-then-bytes":
            c.send_pieces(raw[:end - 300], [4096], pause=0.001)
            c.send_pieces(raw[end - 300:end], [1], pause=0.0005)
            c.send(raw[end:])
        else:
            c.send_pieces(raw[:end - 1], [8192], pause=0.001)
            assert c.nothing_within(0.4), f"an answer to an incomplete head: {c.buf[:400]!r}"
            c.send(raw[end - 1:])
        answers = [c.answer()]
        c.send(note(hg, "after the large head"))
        answers.append(c.answer())
        assert not c.closed(0.3)
    assert answers[0].json()["ProcessedFindings"] == [ident("f-own-high")], answers[0]
    assert_forwarded_ok(hg, answers, before)
    assert len(hg.fake.buf_calls()) == 2
    assert refusal_counts(hg) == counts


def test_one_byte_over_the_limit_with_empty_lines_gets_the_431_envelope(hubgate):
    """The same kind of head, one byte longer than hyper's buffer with its 1,500 empty-line
    bytes: the first 98,304 bytes (head incomplete) draw the 431 envelope, a record naming
    the size limit, the close; nothing forwarded."""
    hg = hubgate
    before = len(hg.audit_records())
    blanks = b"\r\n" * 250 + b"\n" * 1000
    raw = blanks + padded_note(hg, "one over", LIMIT - len(blanks) + 1)
    with Conn(hg.port) as c:
        c.send_pieces(raw[:LIMIT], [8192], pause=0.001)
        data = b""
        while not c.eof:
            c._more()
        data = c.buf
    [resp] = parse_responses(data)
    rid = assert_refusal(resp, 431, TOO_BIG)
    new = hg.audit_records()[before:]
    assert len(new) == 1, new
    assert_refusal_record(new[0], rid, 431, TOO_BIG, "", "")  # not kept: too long
    assert hg.fake.buf_calls() == []


@pytest.mark.parametrize("how", ["one-write", "split-end-byte-by-byte"])
def test_a_60k_request_target_is_served(hubgate, how):
    """A member's signed DescribeHub with a 60 KiB query (`HubArn=...`): hubgate's ordinary
    answer (forwarded, 200), one record, the connection kept; in one write, or with the
    target's last 200 bytes and the rest of the head one byte at a time."""
    hg = hubgate
    before, counts = len(hg.audit_records()), refusal_counts(hg)
    target = "/accounts?HubArn=" + "a" * (60 * 1024 - len("/accounts?HubArn="))
    raw = signed_get(hg, target)
    assert raw.index(b" HTTP/1.1") - len("GET ") == 60 * 1024
    with Conn(hg.port) as c:
        if how == "one-write":
            c.send(raw)
        else:
            cut = raw.index(b" HTTP/1.1") - 200
            c.send_pieces(raw[:cut], [4096], pause=0.001)
            c.send_pieces(raw[cut:], [1], pause=0.0003)
        answers = [c.answer()]
        c.send(note(hg, "after a long target"))
        answers.append(c.answer())
        assert not c.closed(0.3)
    assert_forwarded_ok(hg, answers, before)
    gets = hg.fake.requests("GET", "/accounts")
    assert len(gets) == 1, gets
    assert refusal_counts(hg) == counts


# -- 3. upstream answers streamed in many writes ---------------------------------------------------

PIECES = [b'{"Standards": [], "Note": "', RESPONSE_HEAD, b"x", REFUSAL_SHAPE, REFUSAL_431,
          REFUSAL_10, b'"}']


def upstream_answer(framing: str, request_id: str) -> list[bytes]:
    body = b"".join(PIECES)
    if framing == "length":
        return [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-amzn-RequestId: "
                + request_id.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
                + PIECES[0]] + PIECES[1:]
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-amzn-RequestId: "
            + request_id.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunks = [b"%x\r\n%s\r\n" % (len(p), p) for p in PIECES]
    return [head + chunks[0]] + chunks[1:-1] + [chunks[-1] + b"0\r\n\r\n"]


@pytest.mark.parametrize("auth,framing,version", [
    ("resign", "length", "HTTP/1.1"),
    ("passthrough", "length", "HTTP/1.1"),
    ("resign", "chunked", "HTTP/1.1"),
    ("passthrough", "chunked", "HTTP/1.1"),
    ("resign", "chunked", "HTTP/1.0"),
], ids=["resign-length", "passthrough-length", "resign-chunked", "passthrough-chunked",
        "resign-chunked-to-http10-close-delimited"])
def test_an_answer_streamed_in_many_writes_is_relayed_exactly(make_hubgate, auth, framing,
                                                              version):
    """Security Hub's 200 arrives in seven writes, among them bytes shaped like a response
    head, like hyper's HTTP/1.1 400 and 431 refusals and like its HTTP/1.0 400. Two requests
    one after the other on one connection (HTTP/1.1) or one (HTTP/1.0 keep-alive, whose
    answer to a chunked upstream is close-delimited): each answer's body is exactly Security
    Hub's, nothing is added, each request has one forwarded record and none is a refusal."""
    up = ScriptedUpstream(upstream_answer(framing, "up-57b"), gap=0.06)
    expected = b"".join(PIECES)
    try:
        hg = start_on(make_hubgate, up, auth)
        rounds = 2 if version == "HTTP/1.1" else 1
        extra = ("Connection: keep-alive",) if version == "HTTP/1.0" else ()
        answers = []
        with Conn(hg.port) as c:
            for _ in range(rounds):
                c.send(signed_get(hg, "/standards", version=version, extra=extra, creds=MEMBER))
                reads = c.reads
                answers.append(c.answer())
                # streamed: the pieces came to the client in several writes, not as one
                assert c.reads - reads >= 4, c.reads - reads
            if version == "HTTP/1.0":
                assert c.eof or c.closed(), "a close-delimited answer must end with the close"
            else:
                assert c.nothing_within(0.5), f"bytes after the answers: {c.buf[:400]!r}"
        for a in answers:
            assert a.status == 200 and a.body == expected, a
            assert a.headers["x-amzn-requestid"] == "up-57b", a
        wait_until(lambda: len(hg.audit_records()) >= rounds, 5, "the records")
        time.sleep(0.2)  # a stray refusal record would come with its (already sent) answer
        recs = hg.audit_records()
        assert [r["decision_id"] for r in recs] == \
            [a.headers["x-hubgate-decision-id"] for a in answers], \
            [(r["status"], r["error"]) for r in recs]
        assert all(r["forwarded"] and r["status"] == 200 for r in recs), recs
        assert len(up.heads) == rounds
        assert refusal_counts(hg)[:3] == (0, 0, 0)
    finally:
        up.close()


@pytest.mark.parametrize("auth", ["resign", "passthrough"])
def test_a_pipelined_request_behind_a_refusal_shaped_tail_gets_its_answer(make_hubgate, auth):
    """Two signed GETs in one write; Security Hub answers each 200 in two writes, the second
    the bytes of hyper's bare 400. The client gets both answers, bodies exact, nothing
    spliced; two forwarded records and no refusal record."""
    body = TAIL_BODY
    up = refusal_shaped_tail(gap=0.15)
    try:
        hg = start_on(make_hubgate, up, auth)
        with Conn(hg.port) as c:
            c.send(signed_get(hg, "/standards", creds=MEMBER)
                   + signed_get(hg, "/standards", creds=MEMBER))
            first = c.answer()
            # whatever hubgate did, it has forwarded and recorded both by now
            wait_until(lambda: len(up.heads) == 2 and len(hg.audit_records()) >= 2, 5,
                       "both forwarded and recorded")
            refused = [r for r in hg.audit_records()
                       if (r.get("error") or {}).get("code") == "VALIDATION_ERROR"]
            assert first.status == 200 and first.body == body, first
            assert refused == [], [(r["status"], r["error"]) for r in refused]
            second = c.answer()
        assert second.status == 200 and second.body == body, second
        assert len(hg.audit_records()) == 2
    finally:
        up.close()


# -- 4. an SDK on keep-alive ---------------------------------------------------------------------


def test_boto3_calls_interleaved_with_raw_keep_alive_requests(hubgate):
    """boto3 (its pooled keep-alive connection) and a raw keep-alive socket taking turns:
    batch_update_findings, get_findings (member, own account), describe_hub, raw notes with
    empty lines before them. Every call succeeds with the right content, one forwarded record
    each, nothing refused."""
    hg = hubgate
    before, counts = len(hg.audit_records()), refusal_counts(hg)
    sdk = hg.client(creds=MEMBER)
    admin = hg.client(creds=ADMIN)
    ids = []
    with Conn(hg.port) as c:
        for i in range(2):
            r = sdk.batch_update_findings(
                FindingIdentifiers=[{"Id": "f-own-high", "ProductArn": PRODUCT_ARN}],
                Note={"Text": f"boto3 {i}", "UpdatedBy": "r57b"})
            assert r["ProcessedFindings"] == [ident("f-own-high")], r
            ids.append(r["ResponseMetadata"]["HTTPHeaders"]["x-hubgate-decision-id"])
            c.send(b"\r\n" + note(hg, f"raw {i}"))
            a = c.answer()
            assert a.status == 200, a
            ids.append(a.headers["x-hubgate-decision-id"])
            g = sdk.get_findings(Filters=OWN_ACCOUNT_FILTER)
            assert {f["Id"] for f in g["Findings"]} == {"f-own-high", "f-own-medium"}, g
            ids.append(g["ResponseMetadata"]["HTTPHeaders"]["x-hubgate-decision-id"])
            h = admin.describe_hub()
            assert "HubArn" in h, h
            ids.append(h["ResponseMetadata"]["HTTPHeaders"]["x-hubgate-decision-id"])
        assert not c.closed(0.2)
    wait_until(lambda: len(hg.audit_records()) >= before + len(ids), 5, "the records")
    new = hg.audit_records()[before:]
    assert [r["decision_id"] for r in new] == ids, [(r["status"], r["error"]) for r in new]
    assert all(r["status"] == 200 and r["forwarded"] for r in new), new
    texts = [json.loads(c["body"])["Note"]["Text"] for c in hg.fake.buf_calls()]
    assert texts == ["boto3 0", "raw 0", "boto3 1", "raw 1"], texts
    assert refusal_counts(hg) == counts
