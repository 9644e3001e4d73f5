"""Adversarial probes at the wire, third round (review round wire3): the host a policy sees,
Content-Length spellings, HTTP/1 trailers, upgrades, and a client that half-closes.

HOLE (fixed): the host of an h2 request was not in the policy input. hubgate checks a SigV4
signature against the Host header or, when there is none (every h2 client sends `:authority`
instead), the request's authority; but `input.request.headers.host` was read from the Host
header alone, so over h2 it was absent. A site rule keyed on the host (policies/README.md lists
it among the headers a policy may read) judged the same signed request differently over h2 and
HTTP/1: one that allows only requests that came through a given name refused every h2 caller,
and one that refuses requests sent to a given name (a public ingress, say) let every h2 caller
through. Now the host a signature is checked against and the host the policy input shows are
one reading (`framing::host`).

HOLE (fixed): sockets that send nothing held max_connections for a minute. A new connection
was given idle_timeout_ms (60 s by default) to start its first request, the wait meant for a
keep-alive connection between requests: a client without keys that opened max_connections
(1024) sockets and sent nothing, reopening them once a minute, kept every other caller at 503
OVERLOADED. Now a new connection must start its first request within header_read_timeout_ms
(10 s by default; idle_timeout_ms if shorter), as Go's ReadHeaderTimeout runs from accept; over
h2 the preface, SETTINGS and PINGs are no request. Left open: such a client can still hold the
slots by reopening every header_read_timeout_ms, or with heads it drips (header_read_timeout_ms
each): per-source limits belong to the load balancer in front (hubgate behind one sees a single
source), README says to keep the listener off untrusted networks.

Held: `Content-Length` spelled as a list of equal values (`n,n`, `n, n`) or with a sign
(`+n`) is hyper's bare 400, nothing forwarded, on its own connection.
Held: HTTP/1 trailers after a chunked body that name `X-Amz-Date` and a second `Content-Type`
are refused (400 VALIDATION_ERROR), nothing forwarded (the h2 case is test_adversarial_http's).
Held: chunk lines hyper reads leniently (200 leading zeros, an extension, a space after the
size) are served with exactly the checked bytes forwarded under hubgate's own Content-Length;
ones it cannot read (not hex, past 2^64, negative, no CRLF after the data, bare LF) are 400
VALIDATION_ERROR with nothing forwarded.
Held: `Upgrade: h2c` on an HTTP/1.1 request is not taken up: the request is served as HTTP/1.1,
no `Upgrade` or `HTTP2-Settings` reaches Security Hub, and the request pipelined behind it is
read from its own head and served.
Held (left alone, documented here): a client that sends a whole request and then half-closes
its side (shutdown(SHUT_WR), as `nc -N` does) gets no answer. hyper's HTTP/1 half-close support
is off, and the end of a client's stream is how hubgate learns that a client has given up (an
SDK's timeout) so that a write it no longer waits for is not sent; a half-close and a close look
the same until a write fails. What happens is a race: hyper drops the request unread (nothing
decided, nothing forwarded, no record), or the handler sees the client leave (499
CLIENT_ABORTED), or the request was already on its way and is forwarded, recorded as such, its
answer lost (in 15 tries: 12 dropped, 3 forwarded). SDKs and the AWS CLI do not half-close.
Held (decided, left alone): "any Host". hubgate accepts any Host header: in sigv4 mode the
host is part of the caller's own signature, which only proves the caller's key (a replay needs
the signed request, and README says a replay within 15 minutes is judged again); in mtls and
static modes nothing signs it, and `input.request.headers.host` is then what the caller says
(policies/README.md says so). Nothing else depends on it: a re-signed forward carries
hubgate's own host, and passthrough forwards to upstream.endpoint whatever Host says.
Held (checked by hand, not kept as tests): boto3 sending BatchImportFindings bodies of
1.2, 3 and 6 MB to a hubgate with the default 1 MiB max_body_bytes gets the 413
PAYLOAD_TOO_LARGE envelope each time (not a connection reset it would retry), each recorded.
Decided, not a hole: an h2 header list over 16 KiB gets hyper's plain 431 before hubgate sees
it (README's socket table says so): nothing is forwarded or spent, SDKs do not retry a 431, and
no SDK request comes near 16 KiB of headers.
Not checked here, from reading hyper 1.12: hyper sends no 100 Continue over h2 (an h2
`expect: 100-continue` body is read like any other, once its caller is admitted).

Every request goes out on a raw socket (HTTP/1.1) or through the `h2` state machine with its
own validation switched off; every wait is bounded."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import time

import pytest

from helpers import POLICY_DIR, assert_envelope, ident, wait_until
from test_adversarial_http import h2_request, h2_signed
from test_socket_bounds import closed_within, connect, head_bytes, read_reply, signed_headers

BUF = "/findings/batchupdate"
NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
WAIT = 5.0

# A site rule on the host: writes are taken only through the gateway's own name (here its
# loopback address, which is what the tests sign for).
HOST_RULE = """package hubgate

deny contains {"msg": "custom: writes only through the gateway's name", "finding": null} if {
	not startswith(object.get(input.request.headers, "host", ""), "127.0.0.1:")
}
"""


@pytest.fixture
def hg(make_fake, make_hubgate):
    return make_hubgate({"server": {"body_read_timeout_ms": 1500}}, fake=make_fake())


def forwarded(hg) -> list:
    time.sleep(0.2)
    return hg.fake.requests()


def test_the_host_a_policy_sees_is_the_host_the_signature_was_checked_against(
        tmp_path, make_fake, make_hubgate):
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    (policies / "host.rego").write_text(HOST_RULE)
    hg = make_hubgate({"policy": {"dir": str(policies)}}, fake=make_fake())
    body = json.dumps(NOTE).encode()
    over_h1 = hg.buf(NOTE)
    assert over_h1.status == 200, over_h1.text
    # The same request over h2, signed for the same host, sent as :authority (no Host header).
    over_h2 = h2_request(hg, h2_signed(hg, body), [body])
    assert over_h2.status == 200, over_h2.body[:400]
    wait_until(lambda: len(hg.audit_records()) == 2, WAIT, "both records")
    hosts = [r["input"]["request"]["headers"].get("host") for r in hg.audit_records()]
    assert hosts == [hg.host, hg.host], hosts


def test_sockets_that_send_nothing_hold_connection_slots_only_the_header_timeout(
        make_fake, make_hubgate):
    """A client without keys fills max_connections with sockets that send nothing (default
    idle_timeout_ms 60 s, header_read_timeout_ms 10 s; here 30 s and 1 s): another caller is
    served once header_read_timeout_ms has passed, not after idle_timeout_ms."""
    hg = make_hubgate({"server": {"max_connections": 4, "header_read_timeout_ms": 1000,
                                  "idle_timeout_ms": 30_000}}, fake=make_fake())
    silent = [connect(hg.port) for _ in range(4)]
    try:
        time.sleep(0.2)
        body = json.dumps(NOTE).encode()
        refused = exchange_once(hg, body)
        assert refused.status == 503, refused.text
        # The silent sockets are closed a header timeout after they were accepted.
        assert all(closed_within(s, WAIT) is not None for s in silent)
        served = exchange_once(hg, body)
        assert served.status == 200, served.text
    finally:
        for s in silent:
            s.close()


def exchange_once(hg, body: bytes):
    s = connect(hg.port)
    try:
        s.sendall(head_bytes("PATCH", BUF, signed_headers(hg, body)
                             + [("Content-Length", str(len(body)))]) + body)
        return read_reply(s)
    finally:
        s.close()


@pytest.mark.parametrize("spelling", ["{n},{n}", "{n}, {n}", "+{n}"])
def test_content_length_spelled_as_a_list_or_with_a_sign_is_refused(hg, spelling):
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body) + [("Content-Length", spelling.format(n=len(body)))]
    s = connect(hg.port)
    try:
        s.sendall(head_bytes("PATCH", BUF, headers) + body)
        assert read_reply(s).status == 400
        assert closed_within(s, WAIT) is not None
    finally:
        s.close()
    assert forwarded(hg) == []


def test_http1_trailers_that_name_signed_headers_are_refused(hg):
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body) + [("Transfer-Encoding", "chunked")]
    trailers = b"X-Amz-Date: 20200101T000000Z\r\nContent-Type: text/plain\r\n"
    s = connect(hg.port)
    try:
        s.sendall(head_bytes("PATCH", BUF, headers)
                  + b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailers))
        err = assert_envelope(read_reply(s), 400, "VALIDATION_ERROR", "InvalidInputException")
    finally:
        s.close()
    assert "trailer" in err["error"]["message"], err
    assert forwarded(hg) == []


def test_odd_chunk_lines_are_read_as_hyper_reads_them_or_refused_never_forwarded_otherwise(hg):
    """hubgate forwards the de-chunked body with a Content-Length of its own, so however
    leniently a chunk line is read, Security Hub gets exactly the bytes that were checked; a
    chunk line hyper cannot read is a 400 with nothing forwarded."""
    body = json.dumps(NOTE).encode()
    n = len(body)
    served = {
        "leading zeros": b"%s%x\r\n%s\r\n0\r\n\r\n" % (b"0" * 200, n, body),
        "an extension": b"%x;a=b;c=\"d\"\r\n%s\r\n0\r\n\r\n" % (n, body),
        "a space after the size": b"%x \r\n%s\r\n0\r\n\r\n" % (n, body),
    }
    refused = {
        "not hex": b"zz\r\n%s\r\n0\r\n\r\n" % body,
        "a size past 2^64": b"fffffffffffffffffff\r\n%s\r\n0\r\n\r\n" % body,
        "a negative size": b"-%x\r\n%s\r\n0\r\n\r\n" % (n, body),
        "no CRLF after the data": b"%x\r\n%sXX0\r\n\r\n" % (n, body),
        "bare LF": b"%x\n%s\n0\n\n" % (n, body),
    }
    for name, chunks in {**served, **refused}.items():
        headers = signed_headers(hg, body) + [("Transfer-Encoding", "chunked")]
        s = connect(hg.port)
        try:
            s.sendall(head_bytes("PATCH", BUF, headers) + chunks)
            reply = read_reply(s)
        finally:
            s.close()
        assert reply.status == (200 if name in served else 400), (name, reply.text)
    writes = [r for r in forwarded(hg) if r["path"] == BUF]
    assert [base64.b64decode(r["body_b64"]) for r in writes] == [body] * len(served), writes


def test_an_h2c_upgrade_is_not_taken_up_and_the_next_request_is_read_from_its_own_head(hg):
    body = json.dumps(NOTE).encode()
    length = [("Content-Length", str(len(body)))]
    upgrade = [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
               ("HTTP2-Settings", "AAMAAABkAAQAAP__")]
    s = connect(hg.port)
    try:
        s.sendall(head_bytes("PATCH", BUF, signed_headers(hg, body) + length + upgrade) + body
                  + head_bytes("PATCH", BUF, signed_headers(hg, body) + length) + body)
        first, second = read_reply(s), read_reply(s)
    finally:
        s.close()
    assert (first.status, second.status) == (200, 200), (first.text, second.text)
    sent = forwarded(hg)
    writes = [r for r in sent if r["path"] == BUF]
    assert len(writes) == 2, sent
    for r in writes:
        names = {k.lower() for k, _ in r["headers"]}
        assert not names & {"upgrade", "http2-settings"}, r["headers"]


def test_a_client_that_half_closes_after_its_request_gets_no_answer_and_loses_no_record(hg):
    """Each of a few whole requests followed by shutdown(SHUT_WR): whatever hyper and the
    handler made of it (dropped unread, 499, or forwarded with its answer lost), every write
    that reached Security Hub has its one record saying so, and no record claims a forward
    that did not happen."""
    body = json.dumps(NOTE).encode()
    for _ in range(5):
        headers = signed_headers(hg, body) + [("Content-Length", str(len(body)))]
        s = connect(hg.port)
        try:
            s.sendall(head_bytes("PATCH", BUF, headers) + body)
            s.shutdown(socket.SHUT_WR)
            assert closed_within(s, WAIT) is not None
        finally:
            s.close()
    time.sleep(0.5)
    writes = [r for r in forwarded(hg) if r["path"] == BUF]
    records = hg.audit_records()
    assert sum(r["forwarded"] for r in records) == len(writes), (records, writes)
    assert all(r["status"] == 200 if r["forwarded"] else
               (r["status"], r["error"]["code"]) == (499, "CLIENT_ABORTED") for r in records), \
        records
