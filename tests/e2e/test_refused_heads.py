"""Request heads the HTTP layer refuses, over HTTP/1.1: the envelope, a record, then close.

hyper (hubgate's HTTP layer) refuses some request heads before any request exists: a head it
cannot parse (a header name that is not a token, a control character in a value, a protocol
that is not HTTP/1.0 or HTTP/1.1, a method that is not a token, a bad target), a framing header
it will not accept (a Content-Length that is not one decimal number, a Transfer-Encoding that
does not end with chunked), or one over its limits (a target over 65,534 bytes: 414; a head over
96 KiB arriving in several reads, or more than 100 header fields: 431). hyper's own answer is a
bare `HTTP/1.1 400 Bad Request\\r\\nconnection: close\\r\\ncontent-length: 0\\r\\ndate: ...` and
no audit record. hubgate now answers such a head itself:

- the same status hyper chose (400, 414 or 431), hubgate's JSON error envelope
  (`x-amzn-errortype: InvalidInputException`, `x-amzn-requestid`, code VALIDATION_ERROR, the
  message "the request head could not be read: <what>; nothing was forwarded, and the connection
  is closed"), `connection: close` and a content-length that matches the body;
- its audit record is written before the answer is sent: status, error, forwarded false,
  decision_id == x-amzn-requestid, `method` and `request_path` as far as the request line parsed
  (no query string: it may carry a presigned request's signature);
- then the connection is closed, and nothing reaches Security Hub.

Covered here: every cause, one by one (answer, close, record, no upstream call); near misses
that stay hubgate's ordinary answers (a 65,534-byte target, a ~100 KB head in one read, bare LF
line ends); a refusal pipelined behind a valid note on one connection, and one after a
keep-alive answer; canaries in a refused head's Authorization, X-Amz-Security-Token and query
string reach neither the answer, nor the audit file, nor the log at RUST_LOG=trace; the chain
verifies after a run of refusals, and hubgate_requests_total and
hubgate_connection_errors_total count them.

Found while writing these (2026-12-07, debug binary):
- A head over 96 KiB (several reads, or 140 KB in one) is recorded with method "" and
  request_path "": hubgate does not keep a head that long, so it cannot name its request line
  even though that line parsed. Accepted below.
- An absolute-form target with userinfo (`GET http://user:SECRET@h/p HTTP/3.7`) was recorded
  with the userinfo in request_path; hubgate's ordinary answer to the same target (as HTTP/1.1)
  records only "/p", and so does a refused head's record now
  (test_userinfo_in_a_refused_absolute_target_is_not_recorded).
- A space in the target (`PATCH /a b HTTP/1.1`) was named as a bad protocol (httparse reads "b"
  as one); it is now named as a space in the target.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from helpers import (MEMBER, Response, assert_envelope, audit_verify, hubgate_env, ident,
                     metric, sign, wait_until)

BUF = "/findings/batchupdate"
PREFIX = "the request head could not be read: "
SUFFIX = "; nothing was forwarded, and the connection is closed"

TOO_LONG_TARGET = "the request target is over 65,534 bytes, the HTTP layer's limit"
TOO_BIG = "it is over 96 KiB (or has more than 100 header fields), the HTTP layer's limit"
TOO_MANY = "it has more than 100 header fields, the HTTP layer's limit"
BAD_NAME = ("a header field name is not a token (RFC 9110 \u00a75.1): it has a space, a control "
            "character or a delimiter, or a space before its colon")
BAD_VALUE = "a header field value has a control character"
BAD_VERSION = "the request line's protocol is not HTTP/1.0 or HTTP/1.1"
BAD_METHOD = "the request line's method is not a token"
BAD_TARGET = "the request line's target is not a valid request target"
BAD_URI = "the request target is not a valid URI"
CL_NOT_NUMBER = "its Content-Length is not a decimal number"
CL_DIFFER = "it has Content-Length values that differ"
TE_NOT_CHUNKED = "its Transfer-Encoding does not end with chunked"
CL_TOO_LARGE = "its Content-Length is larger than the HTTP layer can read"
TE_ON_HTTP_10 = ("it is an HTTP/1.0 request with a Transfer-Encoding, which HTTP/1.0 does not "
                 "have")

READ_TIMEOUT = 5  # every socket here is bounded by it
ANY = object()  # a record field whose value is not asserted


def refusal_message(what: str) -> str:
    return PREFIX + what + SUFFIX


# -- raw HTTP/1.1 -------------------------------------------------------------------------------


def connect(hg) -> socket.socket:
    return socket.create_connection(("127.0.0.1", hg.port), timeout=READ_TIMEOUT)


def read_until_close(s: socket.socket) -> tuple[bytes, bool]:
    """Everything the socket gives until hubgate closes it: (bytes, closed). closed is False if
    READ_TIMEOUT passed first (the connection was left open)."""
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return data, False
        if not chunk:
            return data, True
        data += chunk


def parse_responses(data: bytes) -> list[Response]:
    """Split raw HTTP/1.1 answers (each framed by Content-Length) into Responses; each has the
    raw head's header names in order as `header_names` (lower case)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"an answer with no end of head: {data[:300]!r}"
        lines = head.decode("latin-1").split("\r\n")
        version, status, _reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers, names = {}, []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"header {name} twice: {head!r}"
            headers[name.lower()] = value.strip()
            names.append(name.lower())
        length = int(headers["content-length"])
        assert len(rest) >= length, f"a body shorter than its content-length: {data[:300]!r}"
        resp = Response(int(status), headers, rest[:length])
        resp.header_names = names
        out.append(resp)
        data = rest[length:]
    return out


def head(method: str, target: str, hg, *lines: str, version: str = "HTTP/1.1") -> bytes:
    """A request head: the request line, Host, the given header lines, the blank line."""
    return (f"{method} {target} {version}\r\nHost: {hg.host}\r\n"
            + "".join(line + "\r\n" for line in lines) + "\r\n").encode("latin-1")


def signed_note(hg, text: str) -> bytes:
    """A member's signed Note on its own finding, as raw bytes (head and body)."""
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Note": {"Text": text, "UpdatedBy": "e2e"}}).encode()
    h = sign(MEMBER, "PATCH", hg.host, BUF, body, {"Content-Type": "application/json"})
    return (f"PATCH {BUF} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_answer(s: socket.socket) -> bytes | None:
    """One Content-Length framed answer, leaving the connection open; None when none came
    within the socket's timeout (or the connection closed first)."""
    data = b""
    while True:
        head_, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head_.split(b"\r\n")[1:]
                           if line.lower().startswith(b"content-length:")), 0)
            if len(rest) >= length:
                return data
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return None
        if not chunk:
            return None
        data += chunk


def read_one_answer(s: socket.socket) -> bytes:
    """One whole answer (head and Content-Length body), leaving the connection open."""
    data = read_answer(s)
    assert data is not None, "no whole answer before the timeout or the close"
    return data


def send_in_pieces(s: socket.socket, data: bytes, piece: int = 8192, pause: float = 0.01):
    for i in range(0, len(data), piece):
        s.sendall(data[i:i + piece])
        time.sleep(pause)


def over_96k_in_reads(hg) -> bytes:
    """A head that is not yet complete at 96 KiB + 200 bytes: sent in pieces, every byte is
    sent before the HTTP layer can refuse it (none arrive after the close)."""
    start = f"PATCH {BUF} HTTP/1.1\r\nHost: {hg.host}\r\nX-Pad: ".encode()
    return start + b"a" * (96 * 1024 + 200 - len(start))


def assert_refusal(resp: Response, status: int, what: str) -> str:
    """The envelope of a refused head; returns its request id."""
    body = assert_envelope(resp, status, "VALIDATION_ERROR", "InvalidInputException")
    assert body["error"]["message"] == refusal_message(what), body
    assert body["message"] == "VALIDATION_ERROR: " + refusal_message(what), body
    assert resp.headers.get("connection") == "close", resp.headers
    assert int(resp.headers["content-length"]) == len(resp.body), resp.headers
    assert "x-hubgate-decision-id" not in resp.headers or \
        resp.headers["x-hubgate-decision-id"] == resp.headers["x-amzn-requestid"], resp.headers
    return resp.headers["x-amzn-requestid"]


def assert_refusal_record(rec: dict, rid: str, status: int, what: str, method, path):
    assert rec["decision_id"] == rid, rec
    assert rec["status"] == status, rec
    assert rec["error"] == {"code": "VALIDATION_ERROR", "message": refusal_message(what)}, rec
    assert rec["forwarded"] is False, rec
    assert rec["upstream_status"] is None and rec["principal"] is None, rec
    if method is not ANY:
        assert rec["method"] == method, rec
    if path is not ANY:
        assert rec["request_path"] == path, rec


def upstream_calls(hg) -> list:
    """Every Security Hub request the (seeded, reset) fake received."""
    return hg.fake.requests()


# -- 1. every cause -----------------------------------------------------------------------------

# (id, head builder, status, what, recorded method, recorded request_path)
CASES = [
    ("target-over-65534", lambda hg: head("GET", "/" + "a" * 65_534, hg), 414, TOO_LONG_TARGET,
     "GET", ANY),
    ("target-70k-with-query", lambda hg: head("GET", "/p" + "a" * 70_000 + "?q=1", hg), 414,
     TOO_LONG_TARGET, "GET", ANY),
    ("head-over-96k-in-reads", None, 431, TOO_BIG, ANY, ANY),
    ("101-header-fields", lambda hg: head("PATCH", BUF, hg, *[f"X-H{i}: v" for i in range(100)],
                                          "Content-Length: 0"), 431, TOO_MANY, "PATCH", BUF),
    ("name-with-space", lambda hg: head("PATCH", BUF, hg, "Bad Header: x", "Content-Length: 0"),
     400, BAD_NAME, "PATCH", BUF),
    ("space-before-colon", lambda hg: head("PATCH", BUF, hg, "Host : x", "Content-Length: 0"),
     400, BAD_NAME, "PATCH", BUF),
    ("name-with-tab", lambda hg: head("PATCH", BUF, hg, "X\tA: x"), 400, BAD_NAME, "PATCH", BUF),
    ("obs-fold", lambda hg: head("PATCH", BUF, hg, "X-A: a", "  b", "Content-Length: 0"),
     400, BAD_NAME, "PATCH", BUF),
    ("value-with-0x01", lambda hg: head("PATCH", BUF, hg, "X-A: a\x01b", "Content-Length: 0"),
     400, BAD_VALUE, "PATCH", BUF),
    ("value-with-nul", lambda hg: head("PATCH", BUF, hg, "X-A: a\x00b"), 400, BAD_VALUE,
     "PATCH", BUF),
    ("value-with-del", lambda hg: head("PATCH", BUF, hg, "X-A: a\x7fb"), 400, BAD_VALUE,
     "PATCH", BUF),
    ("value-with-bare-cr", lambda hg: head("PATCH", BUF, hg, "X-A: a\rb"), 400, BAD_VALUE,
     "PATCH", BUF),
    ("http-3.7", lambda hg: head("PATCH", BUF, hg, "Content-Length: 0", version="HTTP/3.7"),
     400, BAD_VERSION, "PATCH", BUF),
    ("lower-case-http", lambda hg: head("PATCH", BUF, hg, version="http/1.1"), 400,
     BAD_VERSION, "PATCH", BUF),
    ("method-with-control-byte", lambda hg: head("PA\x01CH", BUF, hg, "Content-Length: 0"),
     400, BAD_METHOD, "", ""),
    ("tls-client-hello", lambda hg: b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"x" * 50
     + b"\r\n\r\n", 400, BAD_METHOD, "", ""),
    ("target-with-control-byte", lambda hg: head("PATCH", "/a\x01b", hg), 400, BAD_TARGET,
     "PATCH", ""),
    ("space-in-target", lambda hg: head("PATCH", "/a b", hg, "Content-Length: 0"), 400,
     "the request line has more than three parts: its target has a space (which must be sent "
     "as %20)", "PATCH", "/a"),
    ("absolute-target-with-userinfo", lambda hg: head("GET", "http://AKID:pw@h/p?q=1", hg,
                                                      version="HTTP/3.7"), 400, BAD_VERSION,
     "GET", "/p"),
    ("no-protocol", lambda hg: b"GET /\r\n\r\n", 400, BAD_TARGET, "GET", ""),
    ("target-not-a-uri", lambda hg: head("PATCH", "/a<b", hg, "Content-Length: 0"), 400,
     BAD_URI, "PATCH", "/a<b"),
    ("content-length-abc", lambda hg: head("PATCH", BUF, hg, "Content-Length: abc"), 400,
     CL_NOT_NUMBER, "PATCH", BUF),
    ("content-length-negative", lambda hg: head("PATCH", BUF, hg, "Content-Length: -1"), 400,
     CL_NOT_NUMBER, "PATCH", BUF),
    ("content-length-plus", lambda hg: head("PATCH", BUF, hg, "Content-Length: +3"), 400,
     CL_NOT_NUMBER, "PATCH", BUF),
    ("two-content-lengths", lambda hg: head("PATCH", BUF, hg, "Content-Length: 3",
                                            "Content-Length: 4"), 400, CL_DIFFER, "PATCH", BUF),
    # hyper reads each Content-Length line as one number: a list is not one (review 57c).
    ("content-length-list", lambda hg: head("PATCH", BUF, hg, "Content-Length: 3, 4"), 400,
     CL_NOT_NUMBER, "PATCH", BUF),
    ("transfer-encoding-gzip", lambda hg: head("PATCH", BUF, hg, "Transfer-Encoding: gzip"),
     400, TE_NOT_CHUNKED, "PATCH", BUF),
    ("transfer-encoding-chunked-gzip", lambda hg: head("PATCH", BUF, hg,
                                                       "Transfer-Encoding: chunked, gzip"),
     400, TE_NOT_CHUNKED, "PATCH", BUF),
    ("two-transfer-encodings", lambda hg: head("PATCH", BUF, hg, "Transfer-Encoding: chunked",
                                               "Transfer-Encoding: gzip"),
     400, TE_NOT_CHUNKED, "PATCH", BUF),
    ("content-length-overflows", lambda hg: head("PATCH", BUF, hg,
                                                 "Content-Length: 99999999999999999999999"),
     400, CL_TOO_LARGE, "PATCH", BUF),
    ("content-length-at-u64-max", lambda hg: head("PATCH", BUF, hg,
                                                  "Content-Length: 18446744073709551615"),
     431, CL_TOO_LARGE, "PATCH", BUF),
    ("chunked-on-http-1.0", lambda hg: head("PATCH", BUF, hg, "Transfer-Encoding: chunked",
                                            version="HTTP/1.0"), 400, TE_ON_HTTP_10, "PATCH",
     BUF),
    ("query-dropped-from-path", lambda hg: head("GET", "/x?a=1&X-Amz-Signature=abc", hg,
                                                version="HTTP/3.7"), 400, BAD_VERSION, "GET",
     "/x"),
]


@pytest.mark.parametrize("name,build,status,what,method,path", CASES,
                         ids=[c[0] for c in CASES])
def test_a_refused_head_gets_the_envelope_a_record_and_a_close(hubgate, name, build, status,
                                                               what, method, path):
    """Each cause: the envelope with hyper's status and the cause's message, `connection:
    close`, the connection closed by hubgate, exactly one record (already written when the
    answer arrives) matching the answer, and no call to Security Hub."""
    hg = hubgate
    before = len(hg.audit_records())
    with connect(hg) as s:
        if build is None:  # over 96 KiB, in several reads
            send_in_pieces(s, over_96k_in_reads(hg))
        else:
            s.sendall(build(hg))
        data, closed = read_until_close(s)
    # Written before the answer was sent: there at once, no waiting.
    new = hg.audit_records()[before:]
    assert closed, f"hubgate left the connection open after {data[:300]!r}"
    answers = parse_responses(data)
    assert len(answers) == 1, data[:600]
    rid = assert_refusal(answers[0], status, what)
    assert len(new) == 1, new
    assert_refusal_record(new[0], rid, status, what, method, path)
    if path is ANY:
        assert "?" not in new[0]["request_path"], new[0]["request_path"]
        assert new[0]["request_path"] in ("", BUF) or new[0]["request_path"].startswith("/"), \
            new[0]["request_path"][:80]
    time.sleep(0.1)
    assert hg.audit_records()[before:] == new, "a second record for one refused head"
    assert upstream_calls(hg) == []


NEAR_MISSES = [
    # (id, head builder, status, code)
    ("target-of-65534-bytes", lambda hg: head("GET", "/" + "a" * 65_533, hg), 404,
     "NOT_FOUND"),
    ("100k-head-in-one-read", lambda hg: head("PATCH", BUF, hg, "X-Pad: " + "a" * 100_000,
                                              "Content-Length: 0"), 401, "UNAUTHENTICATED"),
    ("100-header-fields", lambda hg: head("PATCH", BUF, hg, *[f"X-H{i}: v" for i in range(98)],
                                          "Content-Length: 0"), 401, "UNAUTHENTICATED"),
    ("bare-lf-line-ends", lambda hg: head("PATCH", BUF, hg, "Content-Length: 0")
     .replace(b"\r\n", b"\n"), 401, "UNAUTHENTICATED"),
]


@pytest.mark.parametrize("name,build,status,code", NEAR_MISSES, ids=[c[0] for c in NEAR_MISSES])
def test_a_head_just_inside_the_limits_keeps_hubgates_ordinary_answer(hubgate, name, build,
                                                                      status, code):
    """Heads the HTTP layer accepts are not mistaken for refusals: hubgate's ordinary answer
    (not the refusal message), the connection kept open, one record."""
    hg = hubgate
    before = len(hg.audit_records())
    with connect(hg) as s:
        s.settimeout(2)
        s.sendall(build(hg))
        data, closed = read_until_close(s)
    assert not closed, f"the connection was closed after an ordinary answer: {data[:300]!r}"
    answers = parse_responses(data)
    assert len(answers) == 1, data[:600]
    resp = answers[0]
    body = assert_envelope(resp, status, code, resp.headers.get("x-amzn-errortype"))
    assert PREFIX not in body["error"]["message"], body
    assert resp.headers.get("connection") != "close", resp.headers
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["status"] == status and rec["error"]["code"] == code, rec
    assert len(hg.audit_records()) == before + 1
    assert upstream_calls(hg) == []


# -- 2. pipelining ------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["pipelined", "after-the-answer"])
def test_a_refused_head_behind_a_valid_request_on_one_connection(hubgate, when):
    """A member's signed note, then a head with a bad header name, on one connection (in one
    write, or the bad head after the note's answer): the note gets its 200 and reaches Security
    Hub once; the bad head gets the 400 envelope; two records, one per answer."""
    hg = hubgate
    before = len(hg.audit_records())
    note = signed_note(hg, f"before a refused head ({when})")
    bad = head("PATCH", BUF, hg, "Bad Header: x", "Content-Length: 0")
    with connect(hg) as s:
        if when == "pipelined":
            s.sendall(note + bad)
        else:
            s.sendall(note)
            first = read_one_answer(s)
            s.sendall(bad)
        data, closed = read_until_close(s)
        if when != "pipelined":
            data = first + data
    assert closed, data[-300:]
    answers = parse_responses(data)
    assert [a.status for a in answers] == [200, 400], [(a.status, a.text[:200]) for a in answers]
    ok, refused = answers
    assert ok.json()["ProcessedFindings"] == [ident("f-own-high")], ok.text
    assert ok.headers.get("connection") != "close", ok.headers
    rid = assert_refusal(refused, 400, BAD_NAME)
    ok_id = ok.headers["x-hubgate-decision-id"]
    new = hg.audit_records()[before:]
    assert len(new) == 2, [(r["status"], r["error"]) for r in new]
    by_id = {r["decision_id"]: r for r in new}
    assert set(by_id) == {ok_id, rid}, (ok_id, rid, list(by_id))
    assert by_id[ok_id]["status"] == 200 and by_id[ok_id]["forwarded"] is True, by_id[ok_id]
    assert_refusal_record(by_id[rid], rid, 400, BAD_NAME, "PATCH", BUF)
    assert len(hg.fake.buf_calls()) == 1, hg.fake.buf_calls()


# -- 3. secrets ---------------------------------------------------------------------------------

SECRET_CANARY = "SECRETCANARYq8Zr1"
TOKEN_CANARY = "TOKENCANARYw4Lp2"
SIG_CANARY = "SIGCANARYm7Hx3"
CANARIES = [SECRET_CANARY, TOKEN_CANARY, SIG_CANARY, "CANARY"]


def canary_head(hg, version: str = "HTTP/1.1", *extra: str) -> bytes:
    auth = (f"Authorization: AWS4-HMAC-SHA256 Credential={MEMBER.access_key}/20261207/us-east-1/"
            f"securityhub/aws4_request/{SECRET_CANARY}, SignedHeaders=host;x-amz-date, "
            f"Signature={SIG_CANARY}0123456789abcdef")
    return head("PATCH", f"{BUF}?X-Amz-Signature={SIG_CANARY}&X-Amz-Credential={SECRET_CANARY}",
                hg, auth, f"X-Amz-Security-Token: {TOKEN_CANARY}",
                "X-Amz-Date: 20261207T000000Z", *extra, version=version)


def test_a_refused_head_with_credentials_quotes_none_of_them(make_fake, make_hubgate):
    """A refused head carrying an Authorization header, a session token and a presigned query
    (refused for a bad header name, for HTTP/3.7, for more than 100 fields, and as a 414):
    no canary appears in the answers, the audit file or hubgate's log at RUST_LOG=trace; each
    record's request_path is the path without its query."""
    hg = make_hubgate(fake=make_fake(), env={**hubgate_env(), "RUST_LOG": "trace"})
    long_query = f"?X-Amz-Signature={SIG_CANARY}&pad={'a' * 70_000}"
    heads = [
        (400, BAD_NAME, canary_head(hg, "HTTP/1.1", "Bad Header: x")),
        (400, BAD_VERSION, canary_head(hg, "HTTP/3.7")),
        (431, TOO_MANY, canary_head(hg, "HTTP/1.1", *[f"X-H{i}: v" for i in range(100)])),
        (414, TOO_LONG_TARGET, head("GET", BUF + long_query, hg,
                                    f"X-Amz-Security-Token: {TOKEN_CANARY}")),
    ]
    answers = []
    for status, what, raw in heads:
        with connect(hg) as s:
            s.sendall(raw)
            data, closed = read_until_close(s)
        assert closed, data[:300]
        [resp] = parse_responses(data)
        rid = assert_refusal(resp, status, what)
        answers.append((rid, status, what, data))
    hg.stop()
    recs = {r["decision_id"]: r for r in hg.audit_records()}
    assert len(recs) == len(heads), list(recs)
    for rid, status, what, data in answers:
        method = "GET" if status == 414 else "PATCH"
        assert_refusal_record(recs[rid], rid, status, what, method, BUF)
        for canary in CANARIES:
            assert canary.encode() not in data, (canary, data)
    audit = hg.audit_path.read_text()
    stderr = hg.stderr_text()
    assert "TRACE" in stderr or "DEBUG" in stderr, "the log is not at trace level"
    for canary in CANARIES:
        assert canary not in audit, canary
        assert canary not in stderr, canary
    assert hg.fake.buf_calls() == []


def test_userinfo_in_a_refused_absolute_target_is_not_recorded(hubgate):
    """`GET http://user:SECRET@host/p?... HTTP/3.7`: the record names the path (as hubgate's
    ordinary answer to `... HTTP/1.1` does, "/p"), never the userinfo's password."""
    hg = hubgate
    target = f"http://AKID:{SECRET_CANARY}@h/p?X-Amz-Signature={SIG_CANARY}"
    with connect(hg) as s:
        s.sendall(head("GET", target, hg, version="HTTP/3.7"))
        data, closed = read_until_close(s)
    [resp] = parse_responses(data)
    rid = assert_refusal(resp, 400, BAD_VERSION)
    rec = hg.audit_for(rid)
    assert SIG_CANARY not in json.dumps(rec)
    assert SECRET_CANARY not in json.dumps(rec), rec["request_path"]
    assert rec["request_path"] == "/p", rec


# -- 4. the chain and the metrics ---------------------------------------------------------------


def test_refusals_keep_the_chain_and_are_counted(make_fake, make_hubgate):
    """Refusals between ordinary requests: `hubgate audit verify` accepts the chain;
    hubgate_requests_total{operation="unknown",decision="rejected"} and
    hubgate_connection_errors_total{kind=bad_request|uri_too_long|header_too_large} count one
    per refused head; the ordinary requests are counted as before."""
    fake = make_fake()
    hg = make_hubgate(fake=fake)
    bad_400 = [head("PATCH", BUF, hg, "Bad Header: x"), head("PATCH", BUF, hg, version="HTTP/3.7"),
               head("PATCH", BUF, hg, "Content-Length: abc"),
               head("PATCH", BUF, hg, "Transfer-Encoding: gzip"),
               head("PA\x01CH", BUF, hg)]
    sent = [(400, raw) for raw in bad_400] + [
        (414, head("GET", "/" + "a" * 70_000, hg)),
        (431, head("PATCH", BUF, hg, *[f"X-H{i}: v" for i in range(101)])),
        (431, None),
    ]
    ids = []
    for i, (status, raw) in enumerate(sent):
        with connect(hg) as s:  # an ordinary note between refusals
            s.sendall(signed_note(hg, f"between refusals {i}"))
            first = read_one_answer(s)
            assert first.startswith(b"HTTP/1.1 200 "), first[:300]
            ids.append(parse_responses(first)[0].headers["x-hubgate-decision-id"])
        with connect(hg) as s:
            if raw is None:
                send_in_pieces(s, over_96k_in_reads(hg))
            else:
                s.sendall(raw)
            data, closed = read_until_close(s)
        assert closed
        [resp] = parse_responses(data)
        assert resp.status == status, resp.text
        ids.append(resp.headers["x-amzn-requestid"])
    rejected = {st: sum(1 for s, _ in sent if s == st) for st in (400, 414, 431)}
    for st, n in rejected.items():
        assert metric(hg, "hubgate_requests_total", operation="unknown", decision="rejected",
                      status=str(st)) == n, (st, hg.admin("/metrics").text)
    assert metric(hg, "hubgate_requests_total", operation="BatchUpdateFindings",
                  decision="allow", status="200") == len(sent)
    for kind, n in [("bad_request", rejected[400]), ("uri_too_long", rejected[414]),
                    ("header_too_large", rejected[431])]:
        wait_until(lambda: metric(hg, "hubgate_connection_errors_total", kind=kind) == n, 5,
                   f"hubgate_connection_errors_total{{kind={kind}}} == {n}")
    hg.stop()
    recs = hg.audit_records()
    assert [r["decision_id"] for r in recs] == ids, ([r["decision_id"] for r in recs], ids)
    assert len(fake.buf_calls()) == len(sent)
    v = audit_verify(hg.audit_path)
    assert v.returncode == 0, v.stdout + v.stderr
