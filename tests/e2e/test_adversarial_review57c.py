"""Adversarial review 57c: heads hyper refuses itself, against hubgate's takeover gate
(framing::refusable / framing::head_refused, server::conn::Clock::refused_head).

Since review 57b, hubgate replaces hyper's bare 400/414/431 with its envelope and a record only
when the kept head has a fault `framing::refusable` recognises (or the head reached 96 KiB).
Every `return Err(..)` of hyper 1.12's `Server::parse` (proto/h1/role.rs), of `io.rs`'s buffer
limit, and the checks it calls (httparse 1.10.1, `headers::content_length_parse`,
`headers::is_chunked_`, `DecodedLength::checked_new`, `Method::from_bytes`, `http::Uri`,
`HeaderName::from_bytes` in `header_name!`) was compared with `refusable`; each test sends a
head on 127.0.0.1 and asserts the SAFE outcome: hyper's status in hubgate's envelope, one
refusal record written before the answer, the close, nothing forwarded.

Held (these pass): a bad header name sent one byte at a time (hyper only parses once the end of
the head is in, `is_complete_fast`); differing Content-Lengths after empty lines; a
Content-Length of u64::MAX (431, `checked_new`) pipelined behind a valid note; Transfer-Encoding
on an HTTP/1.0 head after an HTTP/1.0 keep-alive request (hyper's HTTP/1.0 refusal); a 65,535
byte target after 200 bytes of empty lines, sent in pieces (414).

Missed (hyper's bare answer went out with no record; each fixed in stop 57, and the tests
below failed before the fix):
1. A bare CR among the empty lines before the request line (`\\rGET / HTTP/1.1...`).
   httparse's `skip_empty_lines` takes `\\r` only as part of `\\r\\n` (else Err(NewLine) ->
   hyper 400), but `Capture::follow` skips any run of `\\r`/`\\n` bytes as blank lines, so the
   kept head is the valid `GET / HTTP/1.1...`, `refusable` says no, and the refusal is bare.
2. A Content-Length list of equal values (`Content-Length: 2, 2`, or a second line `2, 2`).
   hyper 1.12's server reads Content-Length with `headers::content_length_parse`, which is
   `from_digits(value)`: one number, no list (400, `Parse::content_length_invalid`);
   `framing_fault` splits on ',' and accepts a list of equal numbers.
3. A Transfer-Encoding with an obs-text byte before its final `chunked` (`gzip\\xff, chunked`).
   `headers::is_chunked_` needs `HeaderValue::to_str()` (visible ASCII) and answers "not
   chunked" (400, `transfer_encoding_invalid`); `framing_fault` compares the bytes of the last
   coding only.
4. A head that is a strict prefix of the h2 preface (`PRI * HTTP/2.0\\r\\n\\r\\n`) followed by
   FIN. hyper-util's `read_version` takes EOF for HTTP/1, hyper answers Err(Version) with its
   bare 400 (`has_h2_prefix` needs all 24 bytes); hubgate's `Clock::received` still has the
   protocol `Unknown` (every byte matched the preface so far), so `refused_head` is None.

Wrong message (the envelope and record named a fault hyper did not refuse for; fixed):
5. A header name of 64 KiB in a ~64 KiB head: hyper's 431 (`record_header_indices`), named
   "it is over 96 KiB (or has more than 100 header fields)" (`head_refused`'s (431, _) arm).
6. `Transfer-Encoding: gzip` then `Content-Length: abc`: hyper skips a Content-Length after a
   Transfer-Encoding and refuses the coding; hubgate names the Content-Length. Same with
   `Transfer-Encoding: chunked` then `Content-Length: x` on HTTP/1.0 (hyper refuses the TE).

Takeover of a head hyper accepts (the 57b bug through `refusable`'s other side; fixed):
7. `framing_fault` reads Content-Length lines hyper skips (after a Transfer-Encoding), so a
   pipelined `Transfer-Encoding: chunked` + `Content-Length: x` head, which hyper accepts, is
   "refusable": a previous answer's tail shaped like hyper's refusal is taken over. Seen
   every run: the 200's body (130 bytes declared) gets the 400 envelope spliced in after its
   first 27 bytes, a VALIDATION_ERROR "its Content-Length is not a decimal number" record is
   written for a head hyper accepted, and that request's own 400 (Content-Length with
   Transfer-Encoding, recorded) is never sent. Not forwarded, as framing::check refuses it.

Not tested (no answer to take over): the whole h2 preface pipelined behind an HTTP/1.1 request
is refused by hyper with no answer at all (`has_h2_prefix` -> `Error::new_version_h2`): the
connection closes after the first answer and the preface leaves no record, an exception
README's Guarantees do not list.

The fixes: `Capture::follow` skips empty lines as httparse does (a CR not followed by LF starts
the head); `framing_fault` reads the framing headers as hyper's `Server::parse` does, line by
line (one number per Content-Length line, those after a Transfer-Encoding skipped, a
Transfer-Encoding on HTTP/1.0 refused where it stands, the last Transfer-Encoding only as
visible ASCII); `Clock::refused_head` also answers while the protocol is still `Unknown`; a
64 KiB header name is named as such.
"""

from __future__ import annotations

import socket
import time

import pytest

from helpers import MEMBER, Response, assert_envelope, sign, wait_until
from test_adversarial_review57a import TAIL_BODY, refusal_shaped_tail, signed_get, start_on
from test_review57b_legit_heads import note
from test_refused_heads import (ANY, BAD_NAME, CL_DIFFER, CL_TOO_LARGE, PREFIX,
                                SUFFIX, TE_NOT_CHUNKED, TE_ON_HTTP_10, TOO_BIG, TOO_LONG_TARGET,
                                assert_refusal, assert_refusal_record, connect, head,
                                read_until_close, signed_note)

BUF = "/findings/batchupdate"


def answers_of(data: bytes) -> list[tuple[str, Response]]:
    """Content-Length framed answers of any HTTP/1 version: [(version, Response)]."""
    out = []
    while data:
        head_, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"an answer with no end of head: {data[:300]!r}"
        lines = head_.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", len(rest)))
        out.append((version, Response(int(status), headers, rest[:length])))
        data = rest[length:]
    return out


def exchange(hg, parts: list[bytes], piece: int = 0, gap: float = 0.15, fin: bool = False):
    """Sends `parts` on one connection (`gap` s apart; each in `piece`-byte writes if given),
    optionally half-closes, reads until hubgate closes. Returns (answers, closed, new records,
    raw bytes)."""
    before = len(hg.audit_records())
    with connect(hg) as s:
        for i, part in enumerate(parts):
            if i:
                time.sleep(gap)
            if piece:
                for at in range(0, len(part), piece):
                    s.sendall(part[at:at + piece])
                    time.sleep(0.001 if piece < 64 else 0.005)
            else:
                s.sendall(part)
        if fin:
            s.shutdown(socket.SHUT_WR)
        data, closed = read_until_close(s)
    return answers_of(data), closed, hg.audit_records()[before:], data


def assert_safe(hg, got, statuses: list[int], status: int, what=None, method=ANY, path=ANY,
                forwarded: int = 0):
    """The safe outcome: the answers before the refused head (`statuses`), then hyper's status
    in the envelope (message `what`, or any refusal message when None), `connection: close`,
    the close, one refusal record matching it (written before the answer), and at Security Hub
    only the `forwarded` notes sent before the refused head (and their lookups)."""
    answers, closed, new, data = got
    assert [a.status for _, a in answers] == statuses + [status], data[-500:]
    resp = answers[-1][1]
    assert resp.body, f"hyper's bare answer, no envelope: {data[-200:]!r}"
    if what is None:
        body = assert_envelope(resp, status, "VALIDATION_ERROR", "InvalidInputException")
        msg = body["error"]["message"]
        assert msg.startswith(PREFIX) and msg.endswith(SUFFIX), msg
        assert resp.headers.get("connection") == "close", resp.headers
        rid = resp.headers["x-amzn-requestid"]
        what = msg[len(PREFIX):-len(SUFFIX)]
    else:
        rid = assert_refusal(resp, status, what)
    assert closed, f"hubgate left the connection open: {data[-300:]!r}"
    refusals = [r for r in new if r["decision_id"] == rid]
    assert len(refusals) == 1 and len(new) == len(statuses) + 1, \
        [(r["status"], r["error"]) for r in new]
    assert_refusal_record(refusals[0], rid, status, what, method, path)
    calls = hg.fake.requests()
    assert len(hg.fake.buf_calls()) == forwarded, calls
    assert all((c["method"], c["path"]) in (("PATCH", BUF), ("POST", "/findings"))
               for c in calls), calls


# -- held: covered faults in awkward shapes ------------------------------------------------------

def _ka10_note(hg) -> bytes:
    """A member's signed note in HTTP/1.0 with `Connection: keep-alive` (answered, kept open)."""
    return note(hg, "57c HTTP/1.0 keep-alive", version="HTTP/1.0",
                extra=("Connection: keep-alive",))


HELD = [
    # (id, parts(hg), piece, answers before, status, what, method, path, forwarded)
    ("bad-name-one-byte-at-a-time",
     lambda hg: [head("PATCH", BUF, hg, "Bad Header: x", "Content-Length: 0")], 1,
     [], 400, BAD_NAME, "PATCH", BUF, 0),
    ("blank-lines-then-differing-content-lengths",
     lambda hg: [b"\r\n\n\r\n" + head("PATCH", BUF, hg, "Content-Length: 3",
                                      "Content-Length: 4")], 0,
     [], 400, CL_DIFFER, "PATCH", BUF, 0),
    ("u64-max-content-length-pipelined-behind-a-note",
     lambda hg: [signed_note(hg, "57c before u64::MAX")
                 + head("PATCH", BUF, hg, "Content-Length: 18446744073709551615")], 0,
     [200], 431, CL_TOO_LARGE, "PATCH", BUF, 1),
    ("te-on-http10-after-an-http10-keep-alive-request",
     lambda hg: [_ka10_note(hg) + head("PATCH", BUF, hg, "Transfer-Encoding: chunked",
                                      version="HTTP/1.0")], 0,
     [200], 400, TE_ON_HTTP_10, "PATCH", BUF, 1),
    ("65535-byte-target-after-blank-lines-in-pieces",
     lambda hg: [b"\r\n" * 100 + head("GET", "/" + "a" * 65_534, hg)], 8192,
     [], 414, TOO_LONG_TARGET, "GET", ANY, 0),
]


@pytest.mark.parametrize("parts,piece,before,status,what,method,path,forwarded",
                         [c[1:] for c in HELD], ids=[c[0] for c in HELD])
def test_a_covered_fault_in_an_awkward_shape_gets_the_envelope(hubgate, parts, piece, before,
                                                               status, what, method, path,
                                                               forwarded):
    hg = hubgate
    assert_safe(hg, exchange(hg, parts(hg), piece=piece), before, status, what, method, path,
                forwarded)


# -- missed 1: a bare CR before the request line -------------------------------------------------

def _get(hg) -> bytes:
    return head("GET", "/standards", hg)


BARE_CR = [
    # (id, parts(hg), answers before, forwarded)
    ("cr-first", lambda hg: [b"\r" + _get(hg)], [], 0),
    ("cr-after-blank-lines", lambda hg: [b"\r\n\n\r" + _get(hg)], [], 0),
    ("cr-alone-then-the-head-in-a-later-read", lambda hg: [b"\r", _get(hg)], [], 0),
    ("cr-pipelined-behind-a-note",
     lambda hg: [signed_note(hg, "57c before a bare CR") + b"\r" + _get(hg)], [200], 1),
    ("cr-after-an-http10-keep-alive-request", lambda hg: [_ka10_note(hg) + b"\r" + _get(hg)],
     [200], 1),
]


@pytest.mark.parametrize("parts,before,forwarded", [c[1:] for c in BARE_CR],
                         ids=[c[0] for c in BARE_CR])
def test_a_bare_cr_before_the_request_line_is_refused_with_a_record(hubgate, parts, before,
                                                                    forwarded):
    hg = hubgate
    assert_safe(hg, exchange(hg, parts(hg)), before, 400, forwarded=forwarded)


# -- missed 2 and 3: framing headers hyper refuses and framing_fault accepts -------------------

FRAMING = [
    ("content-length-list-of-equal-values",
     lambda hg: [head("PATCH", BUF, hg, "Content-Length: 2, 2")], [], 0),
    ("content-length-then-an-equal-list",
     lambda hg: [head("PATCH", BUF, hg, "Content-Length: 2", "Content-Length: 2,2")], [], 0),
    ("equal-list-after-an-http10-keep-alive-request",
     lambda hg: [_ka10_note(hg) + head("PATCH", BUF, hg, "Content-Length: 12, 12",
                                      version="HTTP/1.0")], [200], 1),
    ("transfer-encoding-obs-text-before-chunked",
     lambda hg: [head("PATCH", BUF, hg, "Transfer-Encoding: gzip\xff, chunked")], [], 0),
]


@pytest.mark.parametrize("parts,before,forwarded", [c[1:] for c in FRAMING],
                         ids=[c[0] for c in FRAMING])
def test_a_framing_header_hyper_refuses_is_refused_with_a_record(hubgate, parts, before,
                                                                 forwarded):
    hg = hubgate
    assert_safe(hg, exchange(hg, parts(hg)), before, 400, method="PATCH", path=BUF,
                forwarded=forwarded)


# -- missed 4: a prefix of the h2 preface, then FIN ----------------------------------------------

def test_a_cut_h2_preface_then_fin_is_refused_with_a_record(hubgate):
    hg = hubgate
    assert_safe(hg, exchange(hg, [b"PRI * HTTP/2.0\r\n\r\n"], fin=True), [], 400,
                method="PRI", path="")


# -- wrong message 5 and 6 -----------------------------------------------------------------------

def test_a_64k_header_name_is_named_as_such(hubgate):
    hg = hubgate
    raw = head("PATCH", BUF, hg, "X" * 65_536 + ": v")
    assert len(raw) < 96 * 1024 - 1024
    got = exchange(hg, [raw])
    assert_safe(hg, got, [], 431, method="PATCH", path=BUF)
    msg = got[0][-1][1].json()["error"]["message"]
    assert TOO_BIG not in msg and "name" in msg, msg


WRONG_CAUSE = [
    ("te-gzip-then-bad-content-length",
     ("Transfer-Encoding: gzip", "Content-Length: abc"), "HTTP/1.1", TE_NOT_CHUNKED),
    ("http10-te-then-bad-content-length",
     ("Transfer-Encoding: chunked", "Content-Length: x"), "HTTP/1.0", TE_ON_HTTP_10),
]


@pytest.mark.parametrize("lines,version,what", [c[1:] for c in WRONG_CAUSE],
                         ids=[c[0] for c in WRONG_CAUSE])
def test_a_refused_head_is_named_by_what_hyper_refused(hubgate, lines, version, what):
    hg = hubgate
    got = exchange(hg, [head("PATCH", BUF, hg, *lines, version=version)])
    assert_safe(hg, got, [], 400, what, "PATCH", BUF)


# -- 7. a head hyper accepts, taken for refused --------------------------------------------------

def test_a_pipelined_head_hyper_accepts_does_not_make_a_tail_a_refusal(make_hubgate):
    body = TAIL_BODY
    up = refusal_shaped_tail(gap=0.15)
    try:
        hg = start_on(make_hubgate, up, "resign")
        h = sign(MEMBER, "GET", hg.host, "/standards", b"")
        second = ("GET /standards HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
                  + "Transfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n0\r\n\r\n").encode()
        with connect(hg) as s:
            s.sendall(signed_get(hg.host) + second)
            data, _closed = read_until_close(s)
        wait_until(lambda: len(hg.audit_records()) >= 2, 5, "both requests recorded")
        time.sleep(0.2)
        recs = hg.audit_records()
        taken = [r for r in recs if (r.get("error") or {}).get("message", "").startswith(PREFIX)]
        assert taken == [], [(r["status"], r["error"]) for r in taken]
        answers = answers_of(data)
        assert answers[0][1].status == 200 and answers[0][1].body == body, data[:500]
        assert len(answers) == 2, data[-500:]
        assert len(up.heads) == 1 and len(recs) == 2, [(r["status"], r["error"]) for r in recs]
    finally:
        up.close()

