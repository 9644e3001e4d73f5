"""Adversarial review 53b: smuggling, desync and route confusion, by a caller holding valid
MEMBER keys who wants hubgate to forward something other than what it checked, or to route a
finding-changing call past the checks.

Every test asserts the SAFE behaviour: refused with the envelope (a 4xx) and nothing sent to
Security Hub, or forwarded with exactly the target, method and body bytes that were checked.

Requests go out on raw sockets (HTTP/1.1) or through the `h2` state machine with its own
validation switched off, so the bytes are exactly the ones under test; every wait is
bounded."""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest

from helpers import ADMIN, MEMBER, assert_envelope, ident
from test_adversarial_http import h2_request, h2_signed
from test_socket_bounds import connect, head_bytes, read_reply, signed_headers

BUF = "/findings/batchupdate"
WAIT = 5.0
SUPPRESS = {"FindingIdentifiers": [ident("f-own-high")], "Workflow": {"Status": "SUPPRESSED"}}
NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}


@pytest.fixture
def hg(make_fake, make_hubgate):
    return make_hubgate({"server": {"body_read_timeout_ms": 1500}}, fake=make_fake())


def writes(hg) -> list[dict]:
    """Every finding-changing call the fake received (anything but a GetFindings lookup)."""
    time.sleep(0.2)
    return [r for r in hg.fake.requests() if not (r["method"] == "POST" and r["path"] == "/findings")]


def raw_send(hg, data: bytes, replies: int = 1, linger: float = 0.0) -> list:
    """Sends `data` on one connection and reads up to `replies` answers (fewer if the
    connection closes first)."""
    s = connect(hg.port)
    out = []
    try:
        s.sendall(data)
        for _ in range(replies):
            try:
                out.append(read_reply(s))
            except (AssertionError, ConnectionResetError, socket.timeout):
                break
        if linger:
            time.sleep(linger)
    finally:
        s.close()
    return out


def signed_request(hg, body: bytes, creds=MEMBER, method="PATCH", target=BUF,
                   sign_path: str | None = None, extra: list | None = None,
                   framing: str = "cl") -> bytes:
    headers = signed_headers(hg, body, method=method, path=sign_path or target, creds=creds)
    headers += extra or []
    if framing == "cl":
        return head_bytes(method, target, headers + [("Content-Length", str(len(body)))]) + body
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p)
    return head_bytes(method, target, headers + [("Transfer-Encoding", "chunked")]) \
        + chunks + b"0\r\n\r\n"


def refused(reply, *statuses):
    assert reply.status in statuses, (reply.status, reply.text)
    body = reply.json()
    assert body["success"] is False and body["error"]["code"], body
    assert reply.headers.get("x-amzn-errortype"), reply.headers


# ---------------------------------------------------------------------------
# the request target: the path routed must be the path forwarded


PATH_SPELLINGS = [
    BUF + ";x=1",               # a path parameter (servers that strip `;…` read BUF)
    "/findings;x/batchupdate",
    BUF + "%3Bx",               # an escaped `;`
    BUF + "%3Fx=1",             # an escaped `?`
    BUF + "%23x",               # an escaped `#`
    BUF + "%20",                # an escaped space
    BUF + "%09",                # an escaped tab (a control character)
    BUF + ".",
    BUF + "%2e",
    "/findings\\batchupdate",   # a raw backslash, `/` to some servers
    "/findings%5Cbatchupdate",
    "/findings/./batchupdate%2F",
    "/findings/batchupdat%65",  # an escaped letter
    "/findings/batchupdate\xe2\x80\x8b",  # a zero-width space after the name (raw bytes)
]


def test_path_spellings_of_batchupdate_are_404_and_never_forwarded(hg):
    """An administrator's note sent at spellings of BatchUpdateFindings' path that a lenient
    front end could read as that path (path parameters, escaped delimiters, a backslash, a
    trailing dot or invisible character): hubgate routes the exact path only (404), so no
    write goes up under a target other than the one routed and judged."""
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body, path=BUF, creds=ADMIN)
    for target in PATH_SPELLINGS:
        data = (b"PATCH " + target.encode("latin-1") + b" HTTP/1.1\r\n"
                + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
                + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        replies = raw_send(hg, data)
        assert replies, f"no answer for {target!r}"
        # hyper's own bare 400 for a target it cannot parse is as safe as the 404 envelope
        if replies[0].status != 400 or replies[0].body:
            assert_envelope(replies[0], 404, "NOT_FOUND", "ResourceNotFoundException")
    assert writes(hg) == []


def test_an_empty_query_on_a_guarded_route_is_refused_or_forwarded_as_routed(hg):
    """`PATCH /findings/batchupdate?`: an empty query. Either refused like any query, or
    forwarded with the very target that was routed and judged."""
    body = json.dumps(SUPPRESS).encode()
    [reply] = raw_send(hg, signed_request(hg, body, target=BUF + "?"))
    refused(reply, 400, 403, 404)
    assert writes(hg) == []
    body = json.dumps(NOTE).encode()
    [reply] = raw_send(hg, signed_request(hg, body, creds=ADMIN, target=BUF + "?"))
    if reply.status == 200:
        [call] = hg.fake.buf_calls()
        assert call["query"] == "" and base64.b64decode(call["body_b64"]) == body, call
    else:
        refused(reply, 400, 404)
        assert writes(hg) == []


# ---------------------------------------------------------------------------
# HTTP/2 (h2c, prior knowledge): pseudo-headers that disagree with what is routed


def _swap(headers, name, value):
    out = [(k, v) for k, v in headers if k != name]
    return ([(name, value)] if value is not None else []) + out


H2_VARIANTS = {
    "empty-query": lambda h: _swap(h, ":path", BUF + "?"),
    "no-leading-slash": lambda h: _swap(h, ":path", BUF[1:]),
    "absolute-path": lambda h: _swap(h, ":path", "http://127.0.0.1" + BUF),
    "fragment-only-query": lambda h: _swap(h, ":path", BUF + "?#"),
    "path-twice": lambda h: h + [(":path", "/findings")],
    "method-twice": lambda h: h + [(":method", "POST")],
    "lower-method": lambda h: _swap(h, ":method", "patch"),
    "no-path": lambda h: _swap(h, ":path", None),
    "asterisk": lambda h: _swap(h, ":path", "*"),
    "pseudo-after-regular": lambda h: [x for x in h if x[0] != ":path"] + [(":path", BUF)],
    "unknown-pseudo": lambda h: h + [(":protocol", "websocket")],
    "connection-header": lambda h: h + [("connection", "keep-alive")],
    "transfer-encoding": lambda h: h + [("transfer-encoding", "chunked")],
    "content-encoding": lambda h: h + [("content-encoding", "gzip")],
    "method-override": lambda h: h + [("x-http-method-override", "POST")],
    "x-amz-target": lambda h: h + [("x-amz-target", "SecurityHubAPIService.GetFindings")],
    "two-content-types": lambda h: h + [("content-type", "application/x-amz-json-1.1")],
}


def test_h2_pseudo_header_tricks_never_forward_a_write(hg):
    """An administrator's allowed note over h2 (it goes up when sent plainly), its head bent
    one way at a time: a second :path or :method, an absolute or relative :path, an empty
    query, a pseudo-header after a regular one, connection-specific headers, a coding or an
    override. Each is refused (an envelope, a stream reset or the connection ended), so no
    write goes up whose target or reading differs from the one judged."""
    body = json.dumps(NOTE).encode()
    for variant, bend in sorted(H2_VARIANTS.items()):
        reply = h2_request(hg, bend(h2_signed(hg, body, creds=ADMIN)), [body])
        if reply.status is not None:
            assert 400 <= reply.status < 500, (variant, reply.status, reply.body[:300])
            if reply.body:
                assert json.loads(reply.body)["success"] is False, variant
        else:
            assert reply.reset is not None or reply.closed, (variant, vars(reply))
        assert writes(hg) == [], variant
    # the same request, unbent, goes up: the variants were refused for what they bent
    assert h2_request(hg, h2_signed(hg, body, creds=ADMIN), [body]).status == 200
    [call] = hg.fake.buf_calls()
    assert base64.b64decode(call["body_b64"]) == body and call["raw_path"] == BUF


# ---------------------------------------------------------------------------
# HTTP/1.1 keep-alive: requests pipelined behind others are each read from their own head


def test_a_members_suppression_pipelined_behind_an_allowed_write_is_judged_on_its_own(hg):
    """An administrator's allowed note and a member's suppression in one send on one
    keep-alive connection: the first goes up byte for byte, the second is refused."""
    first = json.dumps(NOTE).encode()
    second = json.dumps(SUPPRESS).encode()
    replies = raw_send(hg, signed_request(hg, first, creds=ADMIN)
                       + signed_request(hg, second, creds=MEMBER), replies=2)
    assert [r.status for r in replies][:1] == [200], [(r.status, r.text) for r in replies]
    if len(replies) == 2:
        assert_envelope(replies[1], 403, "POLICY_DENIED", "AccessDeniedException")
    calls = hg.fake.buf_calls()
    assert [base64.b64decode(c["body_b64"]) for c in calls] == [first], calls


@pytest.mark.parametrize("first_framing", ["cl", "chunked"])
def test_a_second_pipelined_write_framed_by_both_length_and_chunks_is_refused(hg, first_framing):
    """A keep-alive connection whose second request carries both Content-Length and
    Transfer-Encoding (the classic CL.TE desync): refused whatever the first request's
    framing, never forwarded."""
    first = json.dumps(NOTE).encode()
    second = json.dumps(SUPPRESS).encode()
    half = len(second) // 2
    smuggle_head = head_bytes("PATCH", BUF, signed_headers(hg, second, creds=MEMBER) + [
        ("Content-Length", str(len(second))), ("Transfer-Encoding", "chunked")])
    smuggle = smuggle_head + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        half, second[:half], len(second) - half, second[half:])
    replies = raw_send(hg, signed_request(hg, first, creds=ADMIN, framing=first_framing)
                       + smuggle, replies=2)
    assert replies and replies[0].status == 200, [(r.status, r.text) for r in replies]
    if len(replies) == 2:
        refused(replies[1], 400)
    assert [base64.b64decode(c["body_b64"]) for c in hg.fake.buf_calls()] == [first]


def test_a_request_hidden_in_the_unread_body_of_an_expect_continue_refusal_is_still_judged(hg):
    """A head with `Expect: 100-continue` refused before its body is read (a signature for
    another region), whose client sends the body anyway: that body is itself a member's
    suppression. If hyper reads it as the next request, it is judged like any other (403);
    it never goes up unchecked."""
    inner = signed_request(hg, json.dumps(SUPPRESS).encode(), creds=MEMBER)
    outer_headers = [(k, v.replace("/us-east-1/", "/eu-west-1/") if k == "Authorization" else v)
                     for k, v in signed_headers(hg, inner, creds=MEMBER)]
    outer = head_bytes("PATCH", BUF, outer_headers + [
        ("Content-Length", str(len(inner))), ("Expect", "100-continue")])
    s = connect(hg.port)
    replies = []
    try:
        s.sendall(outer)
        replies.append(read_reply(s))
        try:
            s.sendall(inner)
            replies.append(read_reply(s, timeout=2))
        except (AssertionError, OSError):
            pass
    finally:
        s.close()
    assert_envelope(replies[0], 401, "UNAUTHENTICATED", replies[0].headers["x-amzn-errortype"])
    for r in replies[1:]:
        refused(r, 400, 401, 403)
    assert writes(hg) == []


def test_a_second_request_in_the_body_of_a_get_read_is_not_forwarded_as_part_of_it(hg):
    """A forwarded read (GET /accounts) with a Content-Length body that is itself a member's
    suppression: the read goes up with that body as its body (AWS ignores a GET's body), the
    inner bytes are never read as a second request, nothing is written."""
    inner = signed_request(hg, json.dumps(SUPPRESS).encode(), creds=MEMBER)
    headers = signed_headers(hg, inner, method="GET", path="/accounts", creds=ADMIN)
    outer = head_bytes("GET", "/accounts", headers + [("Content-Length", str(len(inner)))]) + inner
    s = connect(hg.port)
    try:
        s.sendall(outer)
        read_reply(s)  # the fake answers a GET body that is not JSON with a 400, relayed
        s.settimeout(1.0)
        try:
            extra = s.recv(65536)
        except socket.timeout:
            extra = b""
    finally:
        s.close()
    assert extra == b"", extra[:300]
    [read] = hg.fake.requests("GET", "/accounts")
    assert base64.b64decode(read["body_b64"]) == inner
    assert hg.fake.buf_calls() == []


# ---------------------------------------------------------------------------
# HTTP/1.1 heads spelled in ways a front end and hubgate could read differently


def test_a_content_length_with_leading_zeros_frames_the_same_bytes_or_is_refused(hg):
    """`Content-Length: 000…N`: one reading only. hyper reads it as N; the body checked and
    the body forwarded are the same N bytes, under hubgate's own Content-Length."""
    from helpers import header
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body, creds=ADMIN) + [("Content-Length", "000" + str(len(body)))]
    [reply] = raw_send(hg, head_bytes("PATCH", BUF, headers) + body)
    if reply.status == 200:
        [call] = hg.fake.buf_calls()
        assert base64.b64decode(call["body_b64"]) == body
        assert header(call, "Content-Length") == str(len(body)), call["headers"]
    else:
        assert reply.status == 400, reply.text
        assert writes(hg) == []
    # the member's suppression so framed is judged (refused), never sent
    body = json.dumps(SUPPRESS).encode()
    headers = signed_headers(hg, body, creds=MEMBER) + [("Content-Length", "00" + str(len(body)))]
    [reply] = raw_send(hg, head_bytes("PATCH", BUF, headers) + body)
    assert reply.status in (400, 403), reply.text
    assert [base64.b64decode(c["body_b64"]) for c in hg.fake.buf_calls()] in ([], [json.dumps(NOTE).encode()])


CONTENT_TYPES = [
    "application/json, application/x-amz-json-1.1",
    "application/x-amz-json-1.1, application/json",
    "application/json;charset=utf-8, application/cbor",
    "application/json; charset=utf-8; charset=utf-8",
    "application/json; charset=utf-8;",
    "application/json\x0b",
]


def test_a_content_type_that_lists_more_than_json_is_refused(hg):
    """One Content-Type header whose value lists JSON beside another type (or repeats its
    charset, or ends in a stray `;` or a control character): a reader taking the other member
    would parse another protocol. Refused (415, or hyper's 400), nothing sent."""
    body = json.dumps(NOTE).encode()
    for content_type in CONTENT_TYPES:
        headers = [(k, content_type if k == "Content-Type" else v)
                   for k, v in signed_headers(hg, body, creds=ADMIN)]
        [reply] = raw_send(hg, head_bytes("PATCH", BUF, headers + [
            ("Content-Length", str(len(body)))]) + body)
        assert reply.status in (400, 415), (content_type, reply.text)
    assert writes(hg) == []


def test_unusual_expectations_do_not_let_a_body_by_unread(hg):
    """`Expect` values other than the plain `100-continue`: whatever hyper makes of them, the
    member's suppression is read, judged and refused; nothing is sent."""
    body = json.dumps(SUPPRESS).encode()
    for expect in ["100-Continue", "100-continue, x", "200-ok"]:
        headers = signed_headers(hg, body, creds=MEMBER) + [
            ("Content-Length", str(len(body))), ("Expect", expect)]
        s = connect(hg.port)
        try:
            s.sendall(head_bytes("PATCH", BUF, headers) + body)
            reply = read_reply(s)
            if reply.status == 100:  # an interim answer: the final one follows
                reply = read_reply(s)
        finally:
            s.close()
        assert reply.status in (400, 403, 417), (expect, reply.status, reply.text)
    assert writes(hg) == []


@pytest.mark.parametrize("how", ["fragment", "head-over-64-kib"])
def test_a_repeated_content_length_is_refused_however_the_head_is_spelled(hg, how):
    """README (stage 0): `Content-Length` more than once is refused. hyper keeps one of two
    equal lines, so hubgate looks for the second in the raw head it captured. Until review 53
    that head was kept only up to 64 KiB (hyper takes heads up to 96 KiB) and matched to its
    request by a request line that a fragment (`#x`, dropped by the URI parser) made differ:
    either way the raw head was not consulted, and the repeat was forwarded (200)."""
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body, creds=ADMIN) + [
        ("Content-Length", str(len(body))), ("Content-Length", str(len(body)))]
    [plain] = raw_send(hg, head_bytes("PATCH", BUF, headers) + body)
    refused(plain, 400)
    target = BUF
    if how == "fragment":
        target = BUF + "#x"
    else:
        headers = [("X-Padding", "p" * (70 * 1024))] + headers
    [bent] = raw_send(hg, head_bytes("PATCH", target, headers) + body)
    refused(bent, 400)
    assert "content-length header appears more than once" in bent.json()["error"]["message"], \
        bent.text
    assert writes(hg) == []


def test_a_length_framed_write_pipelined_behind_a_chunked_one_is_not_forwarded_unverified(hg):
    """Where a chunked body ends hubgate does not work out, so the heads after it on the same
    connection are not captured and its answer closes the connection. A write already sent
    behind it, framed by Content-Length (maybe twice), has no head to check for a repeat: if it
    is answered at all, it is refused, never forwarded. Both writes are an administrator's
    allowed notes, so only the framing can stop the second."""
    first = json.dumps(NOTE).encode()
    second = json.dumps({**NOTE, "Note": {"Text": "second", "UpdatedBy": "x"}}).encode()
    behind = head_bytes("PATCH", BUF, signed_headers(hg, second, creds=ADMIN) + [
        ("Content-Length", str(len(second))), ("Content-Length", str(len(second)))]) + second
    replies = raw_send(hg, signed_request(hg, first, creds=ADMIN, framing="chunked") + behind,
                       replies=2)
    assert replies and replies[0].status == 200, [(r.status, r.text) for r in replies]
    assert replies[0].headers.get("connection", "").lower() == "close", replies[0].headers
    if len(replies) == 2:
        refused(replies[1], 400)
        assert "could not be verified" in replies[1].json()["error"]["message"], replies[1].text
    assert [base64.b64decode(c["body_b64"]) for c in hg.fake.buf_calls()] == [first]
