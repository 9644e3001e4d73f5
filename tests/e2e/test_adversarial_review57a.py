"""Adversarial review 57a: hubgate's takeover of hyper's own refusals (server::conn::ClockedIo,
framing::hyper_refusal / head_refused, proxy::refuse_head), as a caller holding member keys,
and `hubgate audit verify --min-seq`.

ClockedIo recognises hyper's bare refusal of a request head as it is written (`HTTP/1.1 400|414|
431 ...`, `connection: close`, `content-length: 0`, `date`, nothing else) on an HTTP/1
connection with no request in progress, and writes hubgate's envelope, after its record, in its
place. Probes and what they showed (debug binary, 2026-12-07):

Held
- An upstream 400 with an empty body, relayed in resign and in passthrough: relayed as it is
  (it carries x-hubgate-decision-id, so it never looks like hyper's refusal), one record, the
  keep-alive connection serves the next request.
- A valid note + a bad head + a valid note in one write: 200, then the 400 envelope, close; the
  third request never reaches Security Hub; one record per answer.
- Heads that start like the h2 preface and then are not (`PRI * HTTP/2.0 ... SX`), and a
  `PRI` method with a bad header: the envelope and a record.
- Canaries (Authorization, X-Amz-Security-Token, presigned query) in a refused head pipelined
  behind a valid request, at RUST_LOG=trace: in no answer, record or log line.
- A client that half-closes right after its bad head still gets the envelope; one record.
- `audit verify --min-seq`: a tail cut (bare N and CHAIN=N), a record removed from the middle,
  two records swapped, all BROKEN (exit 1) with the file:line or the numbers.

Holes found, each fixed in stop 57 (the tests below failed before the fix)
- A forwarded answer's body whose last data frame *is* bytes shaped like hyper's refusal
  (an upstream that sends its body in two writes, the second `HTTP/1.1 400 Bad Request\\r\\n
  connection: close\\r\\ncontent-length: 0\\r\\ndate: ...\\r\\n\\r\\n`) is taken over: the client
  gets the refusal envelope spliced into the 200's body (more bytes than its Content-Length),
  an extra VALIDATION_ERROR "refused head" record is written for a head that never existed, the
  connection is NOT closed, and from then on every answer on it is swallowed (reported written,
  never sent), while the next request on it is still forwarded to Security Hub and recorded as
  200: a forwarded change whose answer the caller never gets. Resign and passthrough alike.
  Cause: ClockedIo::take_over (src/server/conn.rs) matches whatever buffer hyper writes with
  no request in progress (the Held guard is dropped once hyper has taken the body's last frame,
  before hyper flushes it), not only the start of a response; Clock::refused_head answers
  Some(None) even when no head byte has been read (Capture::Reading empty / Body / Lost).
- A bad head after an HTTP/1.0 keep-alive request on the same connection gets hyper's bare
  `HTTP/1.0 400 Bad Request\\r\\ncontent-length: 0\\r\\ndate: ...` with no envelope and no
  audit record: hyper writes its refusal in the connection's version (enforce_version), with no
  `connection: close`, and framing::hyper_refusal only knows the HTTP/1.1 shape.
- `audit verify FILE --min-seq CHAIN=N` on an emptied (truncated to 0 bytes) newest file says
  `intact: 0 records, sequence 0 to 0` before its BROKEN line (exit status 1 is right).

The fixes: Clock::refused_head names a head only while one is begun that hyper can be
refusing (a head that does not parse so far, a complete head not yet started, or one over
hyper's buffer limit, the empty lines before it counted as hyper counts them), so refusal-
shaped bytes written at any other time pass untouched; framing::hyper_refusal knows hyper's
HTTP/1.0 form; `audit verify` says `0 records: ... nothing was verified` for files with none.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import pytest

from helpers import (HUBGATE_BIN, MEMBER, LoopbackServer, audit_verify, hubgate_env, metric,
                     recv_head, sign, wait_until)
from test_refused_heads import (BAD_NAME, BAD_VERSION, assert_refusal, assert_refusal_record,
                                head, parse_responses, read_answer, read_until_close,
                                signed_note)

READ_TIMEOUT = 4
REFUSAL_SHAPE = (b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n"
                 b"date: Mon, 07 Dec 2026 18:50:54 GMT\r\n\r\n")
VALIDATION = "VALIDATION_ERROR"


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)


def drain(s: socket.socket, wait: float = 1.0) -> bytes:
    """Whatever else arrives within `wait` seconds."""
    s.settimeout(wait)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    s.settimeout(READ_TIMEOUT)
    return out


def signed_get(host: str, path: str = "/standards", version: str = "HTTP/1.1",
               extra: str = "") -> bytes:
    """A member's signed DescribeStandards (a catalogue members may read), raw."""
    h = sign(MEMBER, "GET", host, path, b"")
    return (f"GET {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            + extra + "\r\n").encode()


class ScriptedUpstream(LoopbackServer):
    """A Security Hub stand-in on 127.0.0.1 that answers every request (keep-alive) with
    `parts`, written one by one with `gap` seconds between them."""

    def __init__(self, parts: list[bytes], gap: float = 0.3):
        self.parts, self.gap, self.heads = parts, gap, []
        super().__init__(self._serve_conn)

    def _serve_conn(self, conn, _n):
        conn.settimeout(10)
        while True:
            data = recv_head(conn)
            if data is None:
                return
            self.heads.append(data.split(b"\r\n", 1)[0])
            for i, part in enumerate(self.parts):
                if i:
                    time.sleep(self.gap)
                conn.sendall(part)


# A 200 whose body Security Hub sends in two writes, the second the bytes of hyper's bare 400.
TAIL_HEAD = b'{"Standards": [], "Note": "'
TAIL_BODY = TAIL_HEAD + REFUSAL_SHAPE


def refusal_shaped_tail(gap: float = 0.3) -> ScriptedUpstream:
    """An upstream answering every request 200 with TAIL_BODY, its last bytes (REFUSAL_SHAPE)
    a write of their own, `gap` seconds after the rest."""
    return ScriptedUpstream([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"x-amzn-RequestId: up-1\r\nContent-Length: %d\r\n\r\n"
                             % len(TAIL_BODY) + TAIL_HEAD, REFUSAL_SHAPE], gap=gap)


def start_on(make_hubgate, upstream: ScriptedUpstream, auth: str, **kw):
    hg = make_hubgate({"upstream": {"auth": auth}},
                      upstream_endpoint=f"http://127.0.0.1:{upstream.port}", start=False, **kw)
    return hg.start(ready_path="/healthz")


def refusal_records(recs: list[dict]) -> list[dict]:
    return [r for r in recs if (r.get("error") or {}).get("code") == VALIDATION]


# -- 1a. answers that are not hyper's refusal are never taken over -----------------------------


@pytest.mark.parametrize("auth", ["resign", "passthrough"])
def test_an_upstream_400_with_an_empty_body_is_relayed_not_taken_over(make_hubgate, auth):
    """Security Hub answers 400 with no body and `Connection: close` (stripped as hop-by-hop):
    the client gets that 400 with x-hubgate-decision-id and no envelope, one forwarded record,
    no refusal record, and its keep-alive connection answers the next request too."""
    up = ScriptedUpstream([b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                           b"Content-Length: 0\r\n\r\n"])
    try:
        hg = start_on(make_hubgate, up, auth)
        with connect(hg.port) as s:
            answers = []
            for _ in range(2):
                s.sendall(signed_get(hg.host))
                raw = read_answer(s)
                assert raw is not None, f"no answer ({auth}); so far {answers}"
                answers.append(raw)
        for raw in answers:
            [resp] = parse_responses(raw)
            assert resp.status == 400 and resp.body == b"", raw
            assert "x-hubgate-decision-id" in resp.headers, raw
            assert "x-amzn-errortype" not in resp.headers, raw
        wait_until(lambda: len(hg.audit_records()) >= 2, 5, "two records")
        recs = hg.audit_records()
        assert len(recs) == 2 and all(r["forwarded"] for r in recs), recs
        assert refusal_records(recs) == [], recs
        assert len(up.heads) == 2
    finally:
        up.close()


@pytest.mark.parametrize("auth", ["resign", "passthrough"])
def test_a_streamed_body_tail_shaped_like_hypers_refusal_is_relayed_untouched(make_hubgate, auth):
    """Security Hub's 200 arrives in two writes, the second one bytes shaped like hyper's
    bare 400. hubgate relays the body exactly (Content-Length bytes, nothing more), writes one
    record per request and none for a refused head, and answers the next request on the same
    connection."""
    body = TAIL_BODY
    up = refusal_shaped_tail()
    try:
        hg = start_on(make_hubgate, up, auth)
        with connect(hg.port) as s:
            s.sendall(signed_get(hg.host))
            first = read_answer(s)
            assert first is not None, "no first answer"
            first += drain(s, 0.8)  # anything spliced in after the body
            s.sendall(signed_get(hg.host))
            second = read_answer(s)
        # the state hubgate is left in, whatever the client saw
        wait_until(lambda: len(up.heads) == 2 and len(hg.audit_records()) >= 2, 5,
                   "both requests forwarded and recorded")
        recs = hg.audit_records()
        assert refusal_records(recs) == [], \
            [(r["status"], r["error"]) for r in refusal_records(recs)]
        [resp] = parse_responses(first)
        assert resp.status == 200 and resp.body == body, first[:400]
        assert second is not None, \
            "the second request was forwarded upstream, but its answer never reached the client"
        assert len(recs) == 2, [(r["status"], r["error"]) for r in recs]
    finally:
        up.close()


# -- 1b/1e. refusals on a connection that carried requests before -----------------------------


def test_valid_then_bad_head_then_valid_in_one_write_forwards_only_the_first(hubgate):
    """A member's note, a head with a bad header name, another note, in one write: the note's
    200, then the 400 envelope, then the close; Security Hub sees only the first note; one
    record per answer (and none for the third request)."""
    hg = hubgate
    before = len(hg.audit_records())
    bad = head("PATCH", "/findings/batchupdate", hg, "Bad Header: x", "Content-Length: 0")
    with connect(hg.port) as s:
        s.sendall(signed_note(hg, "first") + bad + signed_note(hg, "third, never forwarded"))
        data, closed = read_until_close(s)
    assert closed, data[-300:]
    answers = parse_responses(data)
    assert [a.status for a in answers] == [200, 400], [(a.status, a.text[:200]) for a in answers]
    rid = assert_refusal(answers[1], 400, BAD_NAME)
    new = hg.audit_records()[before:]
    assert len(new) == 2, [(r["status"], r["error"]) for r in new]
    assert_refusal_record(new[1], rid, 400, BAD_NAME, "PATCH", "/findings/batchupdate")
    notes = [json.loads(c["body"])["Note"]["Text"] if isinstance(c.get("body"), str)
             else c for c in hg.fake.buf_calls()]
    assert len(hg.fake.buf_calls()) == 1, notes


def test_a_bad_head_after_an_http10_keep_alive_request_gets_the_envelope_and_a_record(hubgate):
    """`GET /standards HTTP/1.0` with `Connection: keep-alive` (forwarded, answered, kept
    open), then a head with a bad header name on the same connection: the 400 envelope and a
    refusal record, like the same bad head after an HTTP/1.1 request."""
    hg = hubgate
    before = len(hg.audit_records())
    bad = head("PATCH", "/findings/batchupdate", hg, "Bad Header: x", "Content-Length: 0")
    with connect(hg.port) as s:
        s.sendall(signed_get(hg.host, version="HTTP/1.0", extra="Connection: keep-alive\r\n")
                  + bad)
        data, closed = read_until_close(s)
    assert closed, data[-300:]
    time.sleep(0.2)  # a record would be written before its answer: this only guards the count
    new = hg.audit_records()[before:]
    first, _, second = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.0 ") or first.startswith(b"HTTP/1.1 "), data[:300]
    assert len(refusal_records(new)) == 1, (data.decode("latin-1")[-400:],
                                            [(r["status"], r["error"]) for r in new])
    assert b'"code":"VALIDATION_ERROR"' in data, data.decode("latin-1")[-400:]


@pytest.mark.parametrize("raw,what,method", [
    (b"PRI * HTTP/2.0\r\n\r\nSX\r\n\r\n", BAD_VERSION, "PRI"),
    (b"PRI * HTTP/2.0\r\n\r\nZZ", BAD_VERSION, "PRI"),
    (b"PRI * HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", BAD_NAME, "PRI"),
], ids=["h2-preface-then-junk", "h2-preface-cut", "pri-method-bad-header"])
def test_heads_that_start_like_the_h2_preface_are_answered_and_recorded(hubgate, raw, what,
                                                                       method):
    """While the first bytes could still be h2's preface the protocol is not known; once they
    are not, a refusal is still taken over: the envelope, one record, the close."""
    hg = hubgate
    before = len(hg.audit_records())
    with connect(hg.port) as s:
        s.sendall(raw)
        data, closed = read_until_close(s)
    assert closed, data[:300]
    [resp] = parse_responses(data)
    rid = assert_refusal(resp, 400, what)
    new = hg.audit_records()[before:]
    assert len(new) == 1, new
    assert_refusal_record(new[0], rid, 400, what, method, "")
    assert hg.fake.requests() == []


def test_a_client_that_half_closes_after_its_bad_head_still_gets_one_record(hubgate):
    """The bad head, then FIN at once: hubgate still answers (the envelope) and writes exactly
    one record; it was counted once in hubgate_requests_total."""
    hg = hubgate
    before = len(hg.audit_records())
    counted = metric(hg, "hubgate_requests_total", operation="unknown", decision="rejected",
                     status="400")
    with connect(hg.port) as s:
        s.sendall(head("PATCH", "/findings/batchupdate", hg, "X-A: a\x01b"))
        s.shutdown(socket.SHUT_WR)
        data, closed = read_until_close(s)
    assert closed
    [resp] = parse_responses(data)
    assert_refusal(resp, 400, "a header field value has a control character")
    wait_until(lambda: metric(hg, "hubgate_requests_total", operation="unknown",
                              decision="rejected", status="400") == counted + 1, 5, "counted")
    assert len(hg.audit_records()) == before + 1


# -- 1d. secrets --------------------------------------------------------------------------------

TOKEN = "TOKENCANARYr57aX"
SIG = "SIGCANARYr57aY"
SECRET = "SECRETCANARYr57aZ"


def test_credentials_in_a_refused_head_behind_valid_requests_reach_no_output(make_fake,
                                                                             make_hubgate):
    """A member's note, then a refused head (bad header name) carrying an Authorization header,
    a session token and a presigned query, then another note, in one write, at RUST_LOG=trace:
    no canary in the answers, the audit file or the log; the refusal's record names the path
    without its query."""
    fake = make_fake()
    hg = make_hubgate(fake=fake, env={**hubgate_env(), "RUST_LOG": "trace"})
    target = f"/findings/batchupdate?X-Amz-Signature={SIG}&X-Amz-Credential={SECRET}"
    bad = head("PATCH", target, hg,
               f"Authorization: AWS4-HMAC-SHA256 Credential={MEMBER.access_key}/20261207/"
               f"us-east-1/securityhub/aws4_request, SignedHeaders=host, Signature={SIG}",
               f"X-Amz-Security-Token: {TOKEN}", f"X-Amz-Security-Token {SECRET}: x")
    with connect(hg.port) as s:
        s.sendall(signed_note(hg, "before") + bad + signed_note(hg, "after"))
        data, closed = read_until_close(s)
    assert closed
    answers = parse_responses(data)
    assert [a.status for a in answers] == [200, 400], data[-400:]
    rid = assert_refusal(answers[1], 400, BAD_NAME)
    hg.stop()
    rec = next(r for r in hg.audit_records() if r["decision_id"] == rid)
    assert rec["request_path"] == "/findings/batchupdate", rec
    stderr = hg.stderr_text()
    assert "TRACE" in stderr, "the log is not at trace level"
    texts = {"answers": data.decode("latin-1"), "audit": hg.audit_path.read_text(),
             "log": stderr}
    found = [(where, c) for where, t in texts.items() for c in (TOKEN, SIG, SECRET) if c in t]
    assert not found, found
    assert len(fake.buf_calls()) == 1


# -- 3. audit verify --min-seq ------------------------------------------------------------------


def verify_out(*files, min_seq=()) -> tuple[int, str]:
    v = audit_verify(*files, min_seq=min_seq)
    return v.returncode, v.stdout + v.stderr


@pytest.fixture
def chain_log(hubgate, tmp_path):
    """Five records of the shared hubgate's chain, copied out, with the chain's id and the
    sequence number /metrics published for its last record."""
    hg = hubgate
    for i in range(5):
        assert hg.send("PATCH", "/findings/batchupdate",
                       {"FindingIdentifiers": [{"Id": "f-own-high", "ProductArn":
                                                "arn:aws:securityhub:us-east-1::product/aws/"
                                                "securityhub"}],
                        "Note": {"Text": f"chain {i}", "UpdatedBy": "u"}},
                       creds=MEMBER).status == 200
    lines = [ln for ln in hg.audit_path.read_text().splitlines() if ln.strip()]
    last = json.loads(lines[-1])["chain"]
    wait_until(lambda: metric(hg, "hubgate_audit_chain_seq", chain=last["id"]) == last["seq"], 5,
               "hubgate_audit_chain_seq to reach the last record")
    lines = lines[-5:]
    assert len(lines) == 5
    return tmp_path, lines, last["id"], last["seq"]


def write(path, lines):
    path.write_text("".join(ln + "\n" for ln in lines))
    return path


def test_verify_min_seq_catches_a_tail_cut_a_splice_and_a_swap(chain_log):
    """With the scraped number: the full copy passes; the last two records cut (bare N and
    CHAIN=N) say which number was reached; a middle record removed and two records swapped are
    BROKEN at that file's line."""
    tmp, lines, cid, seq = chain_log
    code, out = verify_out(write(tmp / "full.ndjson", lines), min_seq=(f"{cid}={seq}",))
    assert code == 0 and out.startswith("intact: 5 records"), out
    cut = write(tmp / "cut.ndjson", lines[:3])
    for m in (str(seq), f"{cid}={seq}"):
        code, out = verify_out(cut, min_seq=(m,))
        assert code == 1, out
        assert f"the newest record is number {seq - 2}, but the chain had reached record {seq}" \
            in out, out
        assert "intact" not in out, out
    spliced = write(tmp / "spliced.ndjson", lines[:2] + lines[3:])
    code, out = verify_out(spliced, min_seq=(f"{cid}={seq}",))
    assert code == 1 and "spliced.ndjson:3:" in out and "deleted or reordered" in out, out
    swapped = write(tmp / "swapped.ndjson", lines[:2] + [lines[3], lines[2]] + lines[4:])
    code, out = verify_out(swapped, min_seq=(f"{cid}={seq}",))
    assert code == 1 and "swapped.ndjson:3:" in out, out


def test_verify_min_seq_on_an_emptied_file_says_broken_only(chain_log):
    """The newest file truncated to nothing: exit 1, a BROKEN line, and no line claiming the
    log intact."""
    tmp, _lines, cid, seq = chain_log
    empty = write(tmp / "empty.ndjson", [])
    code, out = verify_out(empty, min_seq=(f"{cid}={seq}",))
    assert code == 1 and "BROKEN" in out, out
    assert not any(ln.startswith("intact") for ln in out.splitlines()), out
