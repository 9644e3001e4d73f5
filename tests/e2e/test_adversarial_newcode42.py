"""Adversarial checks of admission (the caller claimed by the request's head before its body
is read, each caller's share of the in-flight cap: src/identity.rs Claim, src/admission.rs)
and of the pacer's slowdown after Security Hub's throttles (src/quota.rs Slowdown).

Raw sockets and h2 where a client library would not send the bytes under test; every wait is
bounded."""

from __future__ import annotations

import json
import socket
import time

import h2.config
import h2.connection
import h2.events
import pytest
from botocore.exceptions import ClientError

from helpers import (
    ADMIN,
    MEMBER,
    MEMBER_ACCOUNT,
    OWN_ACCOUNT_FILTER,
    assert_envelope,
    finding,
    ident,
    metric,
    wait_until,
)
from test_socket_bounds import (
    BUF,
    Reply,
    closed_within,
    connect,
    head_bytes,
    read_reply,
    signed_headers,
)

NOTE = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}
NOTE_BODY = json.dumps(NOTE).encode()


def raw(method: str, path: str, headers, body: bytes) -> bytes:
    return head_bytes(method, path, list(headers) + [("Content-Length", str(len(body)))]) + body


def member_read(hg) -> bytes:
    """A member's own GetFindings (forwarded, its answer streamed), signed, as raw bytes."""
    body = json.dumps({"Filters": OWN_ACCOUNT_FILTER}).encode()
    return raw("POST", "/findings",
               signed_headers(hg, body, method="POST", path="/findings", creds=MEMBER), body)


def member_note(hg, body: bytes = NOTE_BODY, creds=MEMBER) -> bytes:
    return raw("PATCH", BUF, signed_headers(hg, body, creds=creds), body)


def one(hg, data: bytes) -> Reply:
    s = connect(hg.port)
    try:
        s.sendall(data)
        return read_reply(s)
    finally:
        s.close()


def in_flight(hg, n: int, what: str):
    """Waits until hubgate has n requests in flight (admitted, holding their places)."""
    wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == n, 5, what)


def served_again(hg, timeout: float = 3.0) -> Reply:
    """The member is served (its share is free again) within timeout seconds."""
    last = []

    def ok():
        last[:] = [one(hg, member_read(hg))]
        return last[0].status == 200
    wait_until(ok, timeout, "the member's share to come back", interval=0.1)
    return last[0]


# ---------------------------------------------------------------------------
# The body of a request refused before its body was read is never read as a request.

def smuggled(hg) -> bytes:
    """A whole signed administrator GetFindings: answered (and forwarded) if it were ever
    parsed as a request of its own."""
    body = json.dumps({"Filters": {}}).encode()
    return raw("POST", "/findings",
               signed_headers(hg, body, method="POST", path="/findings", creds=ADMIN), body)


def no_second_response(s: socket.socket, timeout: float = 1.0) -> bytes:
    """What arrives on s within timeout after the first response (b'' if nothing or closed)."""
    got = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.parametrize("framing", ["content-length", "chunked", "expect-100"])
def test_an_unread_body_after_an_early_401_is_never_parsed_as_a_request(make_fake,
                                                                       make_hubgate, framing):
    """A request that names no caller is answered 401 before its body is read (admission).
    On a kept-alive HTTP/1.1 connection the unread body, here a whole signed request, must be
    skipped by its framing or the connection closed: never answered as a request of its own."""
    hg = make_hubgate({}, fake=make_fake())
    inner = smuggled(hg)
    headers = [("Host", hg.host), ("Content-Type", "application/json")]
    s = connect(hg.port)
    try:
        if framing == "content-length":
            s.sendall(head_bytes("PATCH", BUF, headers + [("Content-Length", str(len(inner)))])
                      + inner)
        elif framing == "chunked":
            s.sendall(head_bytes("PATCH", BUF, headers + [("Transfer-Encoding", "chunked")])
                      + b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner))
        else:
            s.sendall(head_bytes("PATCH", BUF, headers + [("Content-Length", str(len(inner))),
                                                           ("Expect", "100-continue")]))
        first = read_reply(s)
        assert_envelope(first, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
        if framing == "expect-100":
            # No 100 Continue was sent; a client that sends its body anyway
            try:
                s.sendall(inner)
            except (BrokenPipeError, ConnectionResetError):
                pass
        rest = no_second_response(s)
        assert b"HTTP/1.1" not in rest, rest[:300]
    finally:
        s.close()
    time.sleep(0.2)
    assert hg.fake.requests() == [], hg.fake.requests()
    assert [r["status"] for r in hg.audit_records()] == [401]


def test_a_request_pipelined_behind_an_early_401_is_read_from_its_own_head(make_fake,
                                                                          make_hubgate):
    """The unread body of a request refused at admission, followed on the same connection by
    a caller's request: hyper skips the body by its Content-Length, and the next request is
    read from its own head and served, each with its own record."""
    hg = make_hubgate({}, fake=make_fake())
    junk = b'{"FindingIdentifiers": []}' + b" " * 2000
    first = head_bytes("PATCH", BUF, [("Host", hg.host), ("Content-Type", "application/json"),
                                      ("Content-Length", str(len(junk)))]) + junk
    s = connect(hg.port)
    try:
        s.sendall(first + member_read(hg))
        assert_envelope(read_reply(s), 401, "UNAUTHENTICATED", "UnrecognizedClientException")
        second = read_reply(s)
    finally:
        s.close()
    assert second.status == 200, second.text
    # a forwarded request's record is written just after its answer
    wait_until(lambda: len(hg.audit_records()) == 2, 5, "both records")
    assert sorted(r["status"] for r in hg.audit_records()) == [200, 401]
    assert len(hg.fake.get_findings_calls()) == 1


# ---------------------------------------------------------------------------
# A caller's share comes back however its request ends.

def h2_conn(hg):
    sock = connect(hg.port)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def h2_head(hg, conn, body: bytes, creds=MEMBER) -> int:
    stream = conn.get_next_available_stream_id()
    headers = [(":method", "PATCH"), (":path", BUF), (":scheme", "http"),
               (":authority", hg.host)]
    headers += [(k.lower(), v) for k, v in signed_headers(hg, body, creds=creds)
                if k.lower() != "host"]
    headers.append(("content-length", str(len(body))))
    conn.send_headers(stream, headers)
    return stream


def end_h1_abort_mid_body(hg):
    in_flight(hg, 0, "the member's last request to give its place back")
    s = connect(hg.port)
    data = member_note(hg)
    s.sendall(data[:-10])
    in_flight(hg, 1, "the request to be admitted")
    s.close()


def end_h2_rst_mid_body(hg):
    in_flight(hg, 0, "the member's last request to give its place back")
    sock, conn = h2_conn(hg)
    stream = h2_head(hg, conn, NOTE_BODY)
    conn.send_data(stream, NOTE_BODY[:10])
    sock.sendall(conn.data_to_send())
    in_flight(hg, 1, "the request to be admitted")
    conn.reset_stream(stream)
    sock.sendall(conn.data_to_send())
    time.sleep(0.2)
    # the connection stays open: only the stream was cancelled
    assert closed_within(sock, 0.1) is None
    sock.close()


def end_h2_connection_drop_mid_body(hg):
    in_flight(hg, 0, "the member's last request to give its place back")
    sock, conn = h2_conn(hg)
    stream = h2_head(hg, conn, NOTE_BODY)
    conn.send_data(stream, NOTE_BODY[:10])
    sock.sendall(conn.data_to_send())
    in_flight(hg, 1, "the request to be admitted")
    sock.close()


def end_body_timeout(hg):
    s = connect(hg.port)
    s.sendall(member_note(hg)[:-10])
    reply = read_reply(s, timeout=3)
    s.close()
    assert_envelope(reply, 408, "REQUEST_TIMEOUT", "RequestTimeoutException")


def end_bad_signature(hg):
    wrong = NOTE_BODY.replace(b'"t"', b'"x"')
    headers = signed_headers(hg, NOTE_BODY, creds=MEMBER)
    reply = one(hg, raw("PATCH", BUF, headers, wrong))
    assert_envelope(reply, 401, "UNAUTHENTICATED", "InvalidSignatureException")


def end_bad_content_type(hg):
    headers = [(k, "text/plain" if k.lower() == "content-type" else v)
               for k, v in signed_headers(hg, NOTE_BODY, creds=MEMBER)]
    reply = one(hg, raw("PATCH", BUF, headers, NOTE_BODY))
    assert reply.status in (401, 415), reply.text


def end_invalid_body(hg):
    body = b'{"FindingIdentifiers": 1}'
    reply = one(hg, member_note(hg, body))
    assert_envelope(reply, 400, "VALIDATION_ERROR", "InvalidInputException")


def end_policy_denied(hg):
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Workflow": {"Status": "SUPPRESSED"}}).encode()
    reply = one(hg, member_note(hg, body))
    assert reply.status == 403, reply.text


def end_forwarded_answer_never_read(hg):
    s = connect(hg.port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(member_read(hg))
    time.sleep(0.3)
    s.close()


def end_caller_busy(hg):
    """The member's one place is held by a stalled body; one more request is 503, then the
    stalled one times out (408)."""
    in_flight(hg, 0, "the member's last request to give its place back")
    s = connect(hg.port)
    s.sendall(member_note(hg)[:-10])
    # The stalled request must hold the place before the next is sent: sent at once, the
    # next could be admitted first, and the stalled one refused in its place.
    in_flight(hg, 1, "the stalled request to be admitted")
    reply = one(hg, member_read(hg))
    err = assert_envelope(reply, 503, "OVERLOADED", "ServiceUnavailableException")
    assert "max_in_flight_per_caller" in err["error"]["message"], err
    assert read_reply(s, timeout=3).status == 408
    s.close()


ENDINGS = [end_h1_abort_mid_body, end_h2_rst_mid_body, end_h2_connection_drop_mid_body,
           end_body_timeout, end_bad_signature, end_bad_content_type, end_invalid_body,
           end_policy_denied, end_forwarded_answer_never_read, end_caller_busy]


def test_a_callers_share_comes_back_however_its_requests_end(make_fake, make_hubgate):
    """With a share of one request, every way a member's request can end (aborted mid-body
    over HTTP/1 and HTTP/2, a stream reset, the body timeout, a bad signature, a bad content
    type, an invalid body, a policy denial, a streamed answer the client never reads, a 503
    for the share itself) gives the place back: each is followed by a request that is
    served. A leak of a single place would leave the member 503 for good."""
    hg = make_hubgate({"server": {"max_in_flight": 8, "max_in_flight_per_caller": 1,
                                  "body_read_timeout_ms": 1000}}, fake=make_fake())
    for end in ENDINGS:
        for _ in range(2):
            end(hg)
            served_again(hg)
    # Every request got exactly one record (none lost for those that ended early).
    recs = hg.audit_records()
    ids = [r["decision_id"] for r in recs]
    assert len(ids) == len(set(ids)), "a request recorded twice"


def test_a_client_that_knows_only_a_key_id_does_not_learn_whose_it_is(make_fake, make_hubgate):
    """A client with a caller's access key id but not its secret is admitted on the head's
    claim (the signature needs the body) and can hold that caller's share while it sends its
    bodies slowly. The 503 for one more such request must not tell it the caller's id in the
    callers file (no 401 does): it names the key id the client sent. Its record names no
    principal, and the administrator is served meanwhile."""
    hg = make_hubgate({"server": {"max_in_flight": 8, "max_in_flight_per_caller": 1,
                                  "body_read_timeout_ms": 1500}}, fake=make_fake())
    from helpers import Creds
    impostor = Creds(MEMBER.access_key, "not-the-members-secret")
    s = connect(hg.port)
    s.sendall(member_note(hg, creds=impostor)[:-10])
    # admitted (holding the share) before the second is sent, or the second could take it
    in_flight(hg, 1, "the impostor's stalled request to be admitted")
    reply = one(hg, member_note(hg, creds=impostor))
    err = assert_envelope(reply, 503, "OVERLOADED", "ServiceUnavailableException")
    message = err["error"]["message"]
    assert f"access key {MEMBER.access_key} already has 1 requests in flight" in message, err
    assert "member" not in message.replace(MEMBER.access_key, ""), err
    rec = hg.audit_for(reply.headers["x-amzn-requestid"])
    assert rec["status"] == 503 and not rec.get("principal"), rec
    body = json.dumps({"Filters": {}}).encode()
    admin = one(hg, raw("POST", "/findings",
                        signed_headers(hg, body, method="POST", path="/findings", creds=ADMIN),
                        body))
    assert admin.status == 200, admin.text
    # the impostor's stalled request ends at the body timeout, and the share comes back
    assert read_reply(s, timeout=3).status == 408
    s.close()
    served_again(hg)


# ---------------------------------------------------------------------------
# A reload of the callers file while a body is read


def test_a_caller_removed_while_its_body_is_read_is_refused(make_fake, make_hubgate):
    """The caller is claimed from the head, before the body is read, and proven by its
    signature once the body has come. A reload of the callers file in between that removes
    the caller's key must refuse the request: a revoked key's request whose head came just
    before the revocation must not be forwarded up to body_read_timeout_ms later. (Before
    admission, the caller was authenticated only once the body had come.)"""
    hg = make_hubgate({"policy": {"watch_interval_ms": 100},
                       "server": {"body_read_timeout_ms": 8000}}, fake=make_fake())
    data = member_note(hg)
    s = connect(hg.port)
    try:
        s.sendall(data[:-10])
        # the head is read and the caller claimed before the reload (else it is refused as
        # unknown, or judged in its new role, from its head alone: not the case tested)
        in_flight(hg, 1, "the request to be admitted")
        callers = hg.workdir / "callers.toml"
        text = callers.read_text()
        reloaded = hg.stderr_text().count("callers reloaded")
        callers.write_text(text[:text.index('[[caller]]\nid = "member"')])
        wait_until(lambda: hg.stderr_text().count("callers reloaded") > reloaded, 5,
                   "the callers file to be reloaded")
        s.sendall(data[-10:])
        reply = read_reply(s)
    finally:
        s.close()
    assert_envelope(reply, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
    time.sleep(0.1)
    assert hg.fake.buf_calls() == []
    rec = hg.audit_for(reply.headers["x-amzn-requestid"])
    assert rec["status"] == 401 and rec["forwarded"] is False, rec


def test_a_caller_demoted_while_its_body_is_read_is_judged_in_its_new_role(make_fake,
                                                                            make_hubgate):
    """The same reload that changes a caller's role (administrator to member) while its body
    is read: the request is judged as the caller is now, a member that may not touch another
    account's finding."""
    hg = make_hubgate({"policy": {"watch_interval_ms": 100},
                       "server": {"body_read_timeout_ms": 8000}}, fake=make_fake())
    body = json.dumps({"FindingIdentifiers": [ident("f-other")],
                       "Note": {"Text": "t", "UpdatedBy": "u"}}).encode()
    data = raw("PATCH", BUF, signed_headers(hg, body, creds=ADMIN), body)
    s = connect(hg.port)
    try:
        s.sendall(data[:-10])
        # the head is read and the caller claimed before the reload (else it is refused as
        # unknown, or judged in its new role, from its head alone: not the case tested)
        in_flight(hg, 1, "the request to be admitted")
        callers = hg.workdir / "callers.toml"
        text = callers.read_text()
        reloaded = hg.stderr_text().count("callers reloaded")
        demoted = text.replace('account_id = "111111111111"\nrole = "administrator"',
                               f'account_id = "{MEMBER_ACCOUNT}"\nrole = "member"', 1)
        assert demoted != text
        callers.write_text(demoted)
        wait_until(lambda: hg.stderr_text().count("callers reloaded") > reloaded, 5,
                   "the callers file to be reloaded")
        s.sendall(data[-10:])
        reply = read_reply(s)
    finally:
        s.close()
    assert reply.status == 403, reply.text
    time.sleep(0.1)
    assert hg.fake.buf_calls() == []


# ---------------------------------------------------------------------------
# The slowdown after throttles


def pace_of(hg, operation: str) -> float | None:
    for line in hg.admin("/metrics").text.splitlines():
        if line.startswith(f'hubgate_quota_pace{{operation="{operation}"}} '):
            return float(line.split(" ")[1])
    return None


def test_a_slowed_pace_never_holds_a_request_past_max_wait(make_fake, make_hubgate):
    """After a throttle halves GetFindings' pace (1/s to 0.5/s: one call every 2 s), requests
    that need a lookup, and a member's own forwarded GetFindings, are answered within
    quota.max_wait_ms (a 429 THROTTLED, retryable), never held for the slowed interval."""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 400},
                       "quota.limits": {"GetFindings": {"rate": 1.0, "burst": 2}}}, fake=fake)
    fake.add_findings([finding("p-1", MEMBER_ACCOUNT, "HIGH")])
    fake.throttle_next(GetFindings=1)
    client = hg.client("member")
    t = time.monotonic()
    for _ in range(3):
        try:
            client.batch_update_findings(FindingIdentifiers=[ident("p-1")],
                                         Note={"Text": "t", "UpdatedBy": "u"})
        except ClientError as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 429, e.response
        assert time.monotonic() - t < 1.5, "a request waited past quota.max_wait_ms"
        t = time.monotonic()
    assert pace_of(hg, "GetFindings") is not None and pace_of(hg, "GetFindings") < 1.0
    t = time.monotonic()
    reply = one(hg, member_read(hg))
    assert time.monotonic() - t < 1.5
    assert reply.status in (200, 429), reply.text


@pytest.mark.parametrize("auth", ["resign", "passthrough"])
def test_a_throttled_forward_slows_the_pace_only_where_hubgate_signs(make_fake, make_hubgate,
                                                                     auth):
    """Security Hub throttles a forwarded BatchUpdateFindings. In resign mode that is
    hubgate's own account's quota: the operation's pace is halved. In passthrough the call
    spent the caller's own account's quota: one caller whose account is busy must not slow
    every caller's forwards, so the pace stays whole (no hubgate_quota_pace series)."""
    from test_passthrough import CALLERS, PT_ADMIN, pt_client
    if auth == "passthrough":
        fake = make_fake(extra_credentials=[PT_ADMIN])
        hg = make_hubgate({"upstream": {"auth": "passthrough"}}, fake=fake,
                          callers_toml=CALLERS)
        client = pt_client(hg, PT_ADMIN)
    else:
        fake = make_fake()
        hg = make_hubgate({}, fake=fake)
        client = hg.client("admin")
    fake.throttle_next(BatchUpdateFindings=1)
    with pytest.raises(ClientError) as e:
        client.batch_update_findings(FindingIdentifiers=[ident("f-other")],
                                     Note={"Text": "t", "UpdatedBy": "u"})
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429, e.value.response
    assert fake.op_stats("BatchUpdateFindings")["throttled"] == 1
    pace = pace_of(hg, "BatchUpdateFindings")
    if auth == "passthrough":
        assert pace is None, pace
    else:
        assert pace is not None and 0.45 < pace < 0.6, pace
    assert pace_of(hg, "GetFindings") is None
