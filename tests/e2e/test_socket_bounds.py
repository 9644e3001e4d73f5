"""Bounds and strictness at the socket: framing and header checks, header/body/idle timeouts,
connection and in-flight caps, and the hyper-level refusals counted in /metrics.

Everything here talks to hubgate over raw sockets (python `socket`), so that the bytes on the
wire are exactly the ones under test; every wait is bounded."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from helpers import (
    ADMIN,
    ADMIN_ACCOUNT,
    MEMBER,
    REGION,
    Creds,
    assert_envelope,
    ident,
    metric,
    sign,
    wait_until,
)

HEADER_MS = 1000
BODY_MS = 1000
IDLE_MS = 1500
MAX_IN_FLIGHT = 2
SOCKET_LIMITS = {
    "header_read_timeout_ms": HEADER_MS,
    "body_read_timeout_ms": BODY_MS,
    "idle_timeout_ms": IDLE_MS,
    "max_in_flight": MAX_IN_FLIGHT,
    # One caller (the administrator) may fill the whole cap in these tests.
    "max_in_flight_per_caller": MAX_IN_FLIGHT,
}
BUF = "/findings/batchupdate"
NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
WAIT = 5.0  # the longest any single socket wait may take


@pytest.fixture
def hg(make_fake, make_hubgate):
    """A hubgate with small socket limits in front of its own fake (seeded)."""
    return make_hubgate({"server": SOCKET_LIMITS}, fake=make_fake())


# ---------------------------------------------------------------------------
# raw HTTP/1.1 over a socket


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    s.settimeout(WAIT)
    return s


class Reply:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)


def read_reply(s: socket.socket, timeout: float = WAIT) -> Reply:
    """Read one HTTP/1.1 response (Content-Length or chunked body) within timeout seconds."""
    deadline = time.monotonic() + timeout
    buf = b""

    def more():
        nonlocal buf
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no complete response within {timeout}s; got {buf[:300]!r}")
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed mid-response; got {buf[:300]!r}")
        buf += chunk

    while b"\r\n\r\n" not in buf:
        more()
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            more()
        return Reply(status, headers, buf[:n])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                more()
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                more()
            body, buf = body + buf[:size], buf[size + 2:]
            if size == 0:
                return Reply(status, headers, body)
    return Reply(status, headers, buf)


def closed_within(s: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closed the connection (EOF or reset), or None if it stayed open
    for timeout seconds. Any bytes that arrive meanwhile are read and dropped."""
    start = time.monotonic()
    while (left := timeout - (time.monotonic() - start)) > 0:
        ready, _, _ = select.select([s], [], [], left)
        if not ready:
            continue
        try:
            if not s.recv(65536):
                return time.monotonic() - start
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    return None


def head_bytes(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def signed_headers(hg, body: bytes, method: str = "PATCH", path: str = BUF,
                   creds: Creds = ADMIN, token: str | None = None,
                   host: str | None = None) -> list[tuple[str, str]]:
    """Host, X-Amz-Date, Authorization (and X-Amz-Security-Token when token is given) of a
    request SigV4-signed for `host` (hubgate's by default), plus Content-Type."""
    host = host or hg.host
    if token is None:
        signed = sign(creds, method, host, path, body, {"Content-Type": "application/json"})
        return list(signed.items())
    req = AWSRequest(method=method, url=f"http://{host}{path}", data=body,
                     headers={"Content-Type": "application/json", "Host": host})
    SigV4Auth(Credentials(creds.access_key, creds.secret_key, token), "securityhub",
              REGION).add_auth(req)
    return list(req.headers.items())


def exchange(port: int, data: bytes) -> tuple[Reply, socket.socket]:
    s = connect(port)
    s.sendall(data)
    return read_reply(s), s


def chunked(body: bytes) -> bytes:
    half = len(body) // 2
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p) \
        + b"0\r\n\r\n"


def assert_nothing_forwarded(hg):
    time.sleep(0.1)
    assert hg.fake.requests() == [], hg.fake.requests()


# ---------------------------------------------------------------------------
# framing and header strictness


@pytest.mark.parametrize("te", ["chunked", "  chunked", "Chunked", "gzip, chunked"])
@pytest.mark.parametrize("order", ["cl_first", "te_first"])
def test_content_length_with_transfer_encoding_is_refused(hg, order, te):
    """hyper drops Content-Length when Transfer-Encoding ends in chunked; hubgate still sees
    the conflict (in the raw head) and refuses it, whatever the order or padding."""
    body = json.dumps(NOTE).encode()
    framing = [("Content-Length", str(len(body))), ("Transfer-Encoding", te)]
    if order == "te_first":
        framing.reverse()
    data = head_bytes("PATCH", BUF, signed_headers(hg, body) + framing) + chunked(body)
    reply, s = exchange(hg.port, data)
    with s:
        err = assert_envelope(reply, 400, "VALIDATION_ERROR", "InvalidInputException")
        assert "Content-Length and Transfer-Encoding" in err["error"]["message"], err
        # hyper closes a connection whose framing was ambiguous.
        assert closed_within(s, WAIT) is not None
    assert_nothing_forwarded(hg)
    rec = hg.audit_for(reply.headers["x-amzn-requestid"])
    assert rec["status"] == 400 and rec["forwarded"] is False


def test_the_same_request_chunked_alone_is_served(hg):
    """The control: without Content-Length the chunked request is read, checked, forwarded."""
    body = json.dumps(NOTE).encode()
    data = head_bytes("PATCH", BUF, signed_headers(hg, body)
                      + [("Transfer-Encoding", "chunked")]) + chunked(body)
    reply, s = exchange(hg.port, data)
    s.close()
    assert reply.status == 200, reply.text
    assert len(hg.fake.buf_calls()) == 1


def test_a_head_split_across_the_end_of_the_previous_request_is_still_checked(hg):
    """Request 1 and the start of request 2's head (Content-Length *and* chunked, ending
    inside a header value) in one write; after answer 1, the rest of that value, which starts
    like request 2's request line, and the chunked body. The raw head hubgate checks is the one
    that starts where request 1 ended, so the Content-Length is seen: 400, nothing forwarded."""
    body = json.dumps(NOTE).encode()
    first = head_bytes("GET", "/accounts", [("Host", hg.host), ("Content-Length", "0")])
    head = head_bytes("PATCH", BUF, signed_headers(hg, body) + [
        ("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked"),
        ("X-Pad", f"PATCH {BUF} HTTP/1.1")])
    split = head.index(b"X-Pad: ") + len(b"X-Pad: ")
    assert head[split:].startswith(f"PATCH {BUF} ".encode())
    s = connect(hg.port)
    with s:
        s.sendall(first + head[:split])
        assert_envelope(read_reply(s), 401, "UNAUTHENTICATED", "UnrecognizedClientException")
        time.sleep(0.2)
        s.sendall(head[split:] + chunked(body))
        reply = read_reply(s)
        err = assert_envelope(reply, 400, "VALIDATION_ERROR", "InvalidInputException")
        assert "Content-Length and Transfer-Encoding" in err["error"]["message"], err
        assert closed_within(s, WAIT) is not None
    assert_nothing_forwarded(hg)
    rec = hg.audit_for(reply.headers["x-amzn-requestid"])
    assert rec["status"] == 400 and rec["forwarded"] is False


def test_a_chunked_request_pipelined_behind_another_is_checked_and_served(hg):
    """Its head is kept from where request 1's body ended, so it is verified (and served).
    After a chunked body hubgate cannot tell where the next head starts: that answer closes
    the connection, and the client's next request is checked on a new one."""
    bodies = [json.dumps({**NOTE, "Note": {"Text": f"t{i}", "UpdatedBy": "u"}}).encode()
              for i in range(2)]
    first = head_bytes("PATCH", BUF, signed_headers(hg, bodies[0])
                       + [("Content-Length", str(len(bodies[0])))]) + bodies[0]
    second = head_bytes("PATCH", BUF, signed_headers(hg, bodies[1])
                        + [("Transfer-Encoding", "chunked")]) + chunked(bodies[1])
    s = connect(hg.port)
    with s:
        s.sendall(first + second)
        one, two = read_reply(s), read_reply(s)
        assert one.status == 200, one.text
        assert one.headers.get("connection") != "close", one.headers
        assert two.status == 200, two.text
        assert two.headers.get("connection") == "close", two.headers
        assert closed_within(s, WAIT) is not None
    assert len(hg.fake.buf_calls()) == 2


def test_absolute_form_target_is_refused(hg):
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body) + [("Content-Length", str(len(body)))]
    data = head_bytes("PATCH", f"http://evil.example{BUF}", headers) + body
    reply, s = exchange(hg.port, data)
    s.close()
    err = assert_envelope(reply, 404, "NOT_FOUND", "ResourceNotFoundException")
    assert "http://evil.example" in err["error"]["message"], err
    assert_nothing_forwarded(hg)


@pytest.mark.parametrize("name", ["Authorization", "X-Amz-Date", "Host",
                                  "X-Amz-Content-Sha256", "X-Amz-Security-Token"])
def test_repeated_security_header_is_refused(hg, name):
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body) + [("Content-Length", str(len(body)))]
    have = [v for k, v in headers if k.lower() == name.lower()]
    first = have[0] if have else "e3b0c44298fc1c149afbf4c8996fb924"
    headers += [(name, first), (name.lower(), first + "0")] if not have else \
        [(name, first + "0")]
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, headers) + body)
    s.close()
    err = assert_envelope(reply, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert name.lower() in err["error"]["message"] and "more than once" in err["error"]["message"]
    assert_nothing_forwarded(hg)


def test_session_token_with_a_hubgate_key_is_unauthenticated(hg):
    """hubgate keys are long-term keys: a (validly signed) X-Amz-Security-Token is refused."""
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body, token="FwoGZXIvYXdzEXAMPLETOKEN")
    assert any(k.lower() == "x-amz-security-token" for k, _ in headers)
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, headers
                                            + [("Content-Length", str(len(body)))]) + body)
    s.close()
    err = assert_envelope(reply, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
    assert "X-Amz-Security-Token" in err["error"]["message"], err
    assert_nothing_forwarded(hg)


# Temporary credentials (an ASIA key id): the session token goes with them, as AWS requires.
PT_ADMIN = Creds("ASIAPASSADMIN0000001", "pass-admin-secret-known-to-aws-only")
PT_CALLERS = f"""\
[[caller]]
id = "pt-admin"
account_id = "{ADMIN_ACCOUNT}"
role = "administrator"
access_key_id = "{PT_ADMIN.access_key}"
"""


def test_passthrough_keeps_the_session_token_but_not_a_repeated_one(make_fake, make_hubgate):
    """In passthrough the token is the caller's real AWS session token: forwarded. Repeated
    security headers are refused in every mode."""
    fake = make_fake(extra_credentials=[PT_ADMIN])
    hg = make_hubgate({"upstream": {"auth": "passthrough"}, "server": SOCKET_LIMITS},
                      fake=fake, callers_toml=PT_CALLERS)
    real_host = f"securityhub.{REGION}.amazonaws.com"
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body, creds=PT_ADMIN, token="FwoGZXIvYXdzPASSTHROUGH",
                             host=real_host) + [("Content-Length", str(len(body)))]
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, headers) + body)
    s.close()
    assert reply.status == 200, reply.text
    [call] = fake.buf_calls()
    assert call["signature_valid"] is True, call.get("signature_error")
    token = [v for k, v in headers if k.lower() == "x-amz-security-token"][0]
    dup = headers + [("X-Amz-Security-Token", token)]
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, dup) + body)
    s.close()
    assert_envelope(reply, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert len(fake.buf_calls()) == 1


# ---------------------------------------------------------------------------
# timeouts


def test_a_client_dripping_its_head_is_cut_off_while_others_are_served(hg):
    before = metric(hg, "hubgate_connection_errors_total", kind="header_timeout")
    slow = connect(hg.port)
    started = time.monotonic()
    slow.sendall(b"PATCH /findings/batchupdate HTTP/1.1\r\n")
    closed_after = None
    served = None
    i = 0
    while time.monotonic() - started < WAIT:
        try:
            slow.sendall(f"X-Drip-{i}: a\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            closed_after = time.monotonic() - started
            break
        if closed_within(slow, 0.1) is not None:
            closed_after = time.monotonic() - started
            break
        i += 1
        if served is None and i == 3:
            # Meanwhile a legitimate request on another connection is served.
            body = json.dumps(NOTE).encode()
            reply, s = exchange(hg.port, head_bytes(
                "PATCH", BUF, signed_headers(hg, body)
                + [("Content-Length", str(len(body)))]) + body)
            s.close()
            served = reply.status
    slow.close()
    assert served == 200
    assert closed_after is not None, "the dripping client was never cut off"
    assert HEADER_MS / 1000 * 0.8 <= closed_after <= HEADER_MS / 1000 + 1.5, closed_after
    # The connection's task counts the timeout just after closing the socket.
    wait_until(lambda: metric(hg, "hubgate_connection_errors_total", kind="header_timeout")
               == before + 1, 5, "the header timeout to be counted")


def test_a_stalled_body_is_answered_408_within_the_body_timeout(hg):
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body) + [("Content-Length", str(len(body)))]
    s = connect(hg.port)
    s.sendall(head_bytes("PATCH", BUF, headers) + body[:10])
    started = time.monotonic()
    reply = read_reply(s, timeout=BODY_MS / 1000 + 3)
    took = time.monotonic() - started
    assert BODY_MS / 1000 * 0.8 <= took <= BODY_MS / 1000 + 1.5, took
    err = assert_envelope(reply, 408, "REQUEST_TIMEOUT", "RequestTimeoutException")
    assert "body_read_timeout_ms" in err["error"]["message"]
    # The rest of the body can never be taken for a new request: the connection closes.
    assert closed_within(s, WAIT) is not None
    s.close()
    assert_nothing_forwarded(hg)
    rec = hg.audit_for(reply.headers["x-amzn-requestid"])
    assert rec["status"] == 408 and rec["forwarded"] is False


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(hg):
    before = metric(hg, "hubgate_connection_errors_total", kind="idle_timeout")
    body = json.dumps(NOTE).encode()
    s = connect(hg.port)
    s.sendall(head_bytes("PATCH", BUF, signed_headers(hg, body)
                         + [("Content-Length", str(len(body)))]) + body)
    assert read_reply(s).status == 200
    answered = time.monotonic()
    closed = closed_within(s, IDLE_MS / 1000 + 3)
    s.close()
    assert closed is not None, "the idle connection stayed open"
    # Closed by the idle clock, not by the (shorter) header-read timeout.
    assert IDLE_MS / 1000 * 0.85 <= time.monotonic() - answered <= IDLE_MS / 1000 + 1.5
    # A connection that never sends a byte is closed the same way (hyper-util's protocol
    # detection has no timer of its own).
    silent = connect(hg.port)
    assert closed_within(silent, IDLE_MS / 1000 + 3) is not None
    silent.close()
    wait_until(lambda: metric(hg, "hubgate_connection_errors_total",
                              kind="idle_timeout") == before + 2, 3, "idle_timeout counted")


# ---------------------------------------------------------------------------
# caps


def test_requests_over_max_in_flight_get_503_overloaded(hg):
    # Slower than the test needs, faster than upstream.timeout_ms (2000 in these configs).
    hg.fake.configure(delay_ms=1200)
    body = json.dumps({"Filters": {}}).encode()
    results = []

    def held():
        reply, s = exchange(hg.port, head_bytes(
            "POST", "/findings", signed_headers(hg, body, method="POST", path="/findings")
            + [("Content-Length", str(len(body)))]) + body)
        s.close()
        results.append(reply.status)

    threads = [threading.Thread(target=held) for _ in range(MAX_IN_FLIGHT)]
    for t in threads:
        t.start()
    wait_until(lambda: len(hg.fake.requests("POST", "/findings")) == MAX_IN_FLIGHT, 3,
               "both held requests to reach the (slow) fake")
    assert metric(hg, "hubgate_requests_in_flight") == MAX_IN_FLIGHT
    started = time.monotonic()
    reply, s = exchange(hg.port, head_bytes(
        "POST", "/findings", signed_headers(hg, body, method="POST", path="/findings")
        + [("Content-Length", str(len(body)))]) + body)
    s.close()
    assert time.monotonic() - started < 1.0
    err = assert_envelope(reply, 503, "OVERLOADED", "ServiceUnavailableException")
    assert "server.max_in_flight" in err["error"]["message"]
    rec = hg.audit_for(reply.headers["x-amzn-requestid"])
    assert rec["status"] == 503 and rec["forwarded"] is False
    # A request refused before it is admitted takes no slot, so it gets its own answer, one
    # SDKs do not retry, while the cap is full: no caller (401), no such operation (404).
    unsigned, s = exchange(hg.port, head_bytes(
        "POST", "/findings", [("Host", hg.host), ("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))]) + body)
    s.close()
    assert_envelope(unsigned, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
    nowhere, s = exchange(hg.port, head_bytes("GET", "/nothing-here", [("Host", hg.host)]))
    s.close()
    assert_envelope(nowhere, 404, "NOT_FOUND", "ResourceNotFoundException")
    for t in threads:
        t.join(WAIT)
    assert results == [200] * MAX_IN_FLIGHT
    assert len(hg.fake.requests("POST", "/findings")) == MAX_IN_FLIGHT
    # The permits came back.
    hg.fake.configure(delay_ms=0)
    reply, s = exchange(hg.port, head_bytes(
        "POST", "/findings", signed_headers(hg, body, method="POST", path="/findings")
        + [("Content-Length", str(len(body)))]) + body)
    s.close()
    assert reply.status == 200, reply.text


def h2_reader(hg, window: int = 0):
    """An h2c connection to hubgate whose client never opens its flow-control window: it sends
    requests and reads response heads (acknowledging settings and pings), never a body."""
    sock = connect(hg.port)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    answered: dict[int, int] = {}

    def send(method: str, path: str, headers=(), body: bytes = b"") -> int:
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", method), (":path", path), (":scheme", "http"),
                                   (":authority", hg.host), *headers], end_stream=not body)
        if body:
            conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        return stream

    def heads(n: int) -> bool:
        ready, _, _ = select.select([sock], [], [], 0.05)
        if ready:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    answered[event.stream_id] = int(dict(event.headers)[b":status"])
            sock.sendall(conn.data_to_send())
        return len(answered) >= n

    return sock, send, heads, answered


def describe_findings(hg) -> Reply:
    body = json.dumps({"Filters": {}}).encode()
    reply, s = exchange(hg.port, head_bytes(
        "POST", "/findings", signed_headers(hg, body, method="POST", path="/findings")
        + [("Content-Length", str(len(body)))]) + body)
    s.close()
    return reply


def stalled(hg, headers: list[tuple[str, str]], body: bytes) -> socket.socket:
    """A request whose head is sent whole and its body only in part: it waits for the rest."""
    s = connect(hg.port)
    s.sendall(head_bytes("PATCH", BUF, headers + [("Content-Length", str(len(body)))])
              + body[:10])
    return s


def test_a_client_without_keys_cannot_hold_in_flight_slots_by_sending_slowly(make_fake,
                                                                             make_hubgate):
    """A request whose head names no caller is refused before its body is read: a client
    with no keys that sends max_in_flight heads and dribbles their bodies holds no slot, and
    callers are served meanwhile. (Before, each such request held its slot for the whole of
    body_read_timeout_ms, and every caller got 503 OVERLOADED.)"""
    limit, body_ms = 2, 4000
    hg = make_hubgate({"server": {**SOCKET_LIMITS, "max_in_flight": limit,
                                  "body_read_timeout_ms": body_ms}}, fake=make_fake())
    body = json.dumps(NOTE).encode()
    unknown = Creds("HGTESTNOBODY00000001", "not-a-caller")
    cases = [
        [("Host", hg.host), ("Content-Type", "application/json")],   # no Authorization
        signed_headers(hg, body, creds=unknown),                      # a key no caller has
    ]
    started = time.monotonic()
    attackers, replies = [], []
    for headers in cases:
        s = stalled(hg, headers, body)
        attackers.append(s)
        replies.append(read_reply(s, timeout=WAIT))
    assert time.monotonic() - started < body_ms / 1000, "refused only after the body timeout"
    for reply in replies:
        assert_envelope(reply, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
    reply = describe_findings(hg)
    assert reply.status == 200, reply.text
    for s in attackers:
        s.close()
    recs = [r for r in hg.audit_records() if r["status"] == 401]
    assert len(recs) == 2 and all(r["forwarded"] is False for r in recs), recs
    assert hg.fake.buf_calls() == []


def test_a_caller_holding_its_share_of_in_flight_leaves_the_others_theirs(make_fake,
                                                                          make_hubgate):
    """One caller may hold at most server.max_in_flight_per_caller requests at once: a member
    that keeps its share busy (bodies sent slowly) gets 503 OVERLOADED for one more, at once,
    while the administrator is served; the share comes back when the member's requests end."""
    limit, share, body_ms = 4, 2, 3000
    hg = make_hubgate({"server": {**SOCKET_LIMITS, "max_in_flight": limit,
                                  "max_in_flight_per_caller": share,
                                  "body_read_timeout_ms": body_ms}}, fake=make_fake())
    body = json.dumps(NOTE).encode()
    held = [stalled(hg, signed_headers(hg, body, creds=MEMBER), body) for _ in range(share)]
    wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == share, 3,
               "the member's slow requests to be in flight")
    started = time.monotonic()
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, signed_headers(
        hg, body, creds=MEMBER) + [("Content-Length", str(len(body)))]) + body)
    s.close()
    assert time.monotonic() - started < 1.0
    err = assert_envelope(reply, 503, "OVERLOADED", "ServiceUnavailableException")
    assert "server.max_in_flight_per_caller" in err["error"]["message"], err
    # Named by the key id the client sent, not by the caller's id: the head is not proven yet.
    assert ("the caller of access key HGTESTMEMBER00000001 already has 2 requests in flight"
            in err["error"]["message"]), err
    assert "member" not in err["error"]["message"].replace("MEMBER", ""), err
    rec = hg.audit_for(reply.headers["x-amzn-requestid"])
    assert rec["status"] == 503 and rec["forwarded"] is False, rec
    # The administrator has a share of its own.
    reply = describe_findings(hg)
    assert reply.status == 200, reply.text
    # The member's slow requests end (408 at the body timeout), and its share comes back.
    for s in held:
        assert read_reply(s, timeout=body_ms / 1000 + WAIT).status == 408
        s.close()
    wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == 0, 3, "the slots back")
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, signed_headers(
        hg, body, creds=MEMBER) + [("Content-Length", str(len(body)))]) + body)
    s.close()
    assert reply.status != 503, reply.text


def test_a_client_that_never_reads_hubgates_envelopes_holds_no_in_flight_slot(make_fake,
                                                                            make_hubgate):
    """An unauthenticated h2c client with SETTINGS_INITIAL_WINDOW_SIZE = 0 sends max_in_flight
    requests: hubgate answers each with its own envelope (404), which the client never reads.
    An envelope is whole once made, so its request holds no slot while it waits to be sent:
    other callers are served meanwhile. The connection still ends within
    response_send_timeout_ms."""
    limit, send_ms = 8, 2000
    hg = make_hubgate({"server": {**SOCKET_LIMITS, "max_in_flight": limit,
                                  "idle_timeout_ms": 10000,
                                  "response_send_timeout_ms": send_ms}}, fake=make_fake())
    attacker, send, heads, answered = h2_reader(hg)
    for _ in range(limit):
        send("GET", "/nothing-here")
    started = time.monotonic()
    wait_until(lambda: heads(limit), WAIT, "the attacker's response heads", interval=0)
    assert set(answered.values()) == {404}, answered
    assert metric(hg, "hubgate_requests_in_flight") == 0
    reply = describe_findings(hg)
    assert time.monotonic() - started < send_ms / 1000, "too slow to see the slots held"
    assert reply.status == 200, reply.text
    closed = closed_within(attacker, send_ms / 1000 + WAIT)
    attacker.close()
    assert closed is not None, "the attacker's connection stayed open"
    # counted once the connection's task has closed it: just after the client sees the close
    wait_until(lambda: metric(hg, "hubgate_connection_errors_total", kind="send_timeout") == 1,
               3, "the send timeout counted")
    recs = [r for r in hg.audit_records() if r["status"] == 404]
    assert len(recs) == limit, recs
    assert hg.fake.buf_calls() == []


def test_a_client_that_never_reads_forwarded_answers_holds_slots_until_the_send_timeout(
        make_fake, make_hubgate):
    """A caller with keys and an h2 window of 0 sends max_in_flight forwarded requests: each
    answer's body streams from Security Hub and cannot be sent, so each request keeps its slot
    (and callers meanwhile get 503 OVERLOADED) until response_send_timeout_ms closes the
    connection; then the slots are free again."""
    limit, send_ms = 8, 2000
    hg = make_hubgate({"server": {**SOCKET_LIMITS, "max_in_flight": limit,
                                  "max_in_flight_per_caller": limit,
                                  "idle_timeout_ms": 10000,
                                  "response_send_timeout_ms": send_ms}}, fake=make_fake())
    body = json.dumps({"Filters": {}}).encode()
    attacker, send, heads, answered = h2_reader(hg)
    for _ in range(limit):
        signed = [(k.lower(), v) for k, v in
                  signed_headers(hg, body, method="POST", path="/findings")
                  if k.lower() != "host"]
        send("POST", "/findings", signed + [("content-length", str(len(body)))], body)
    started = time.monotonic()
    wait_until(lambda: heads(limit), WAIT, "the attacker's response heads", interval=0)
    assert set(answered.values()) == {200}, answered
    reply = describe_findings(hg)
    assert time.monotonic() - started < send_ms / 1000, "too slow to see the slots held"
    err = assert_envelope(reply, 503, "OVERLOADED", "ServiceUnavailableException")
    assert "server.max_in_flight" in err["error"]["message"], err
    closed = closed_within(attacker, send_ms / 1000 + WAIT)
    attacker.close()
    assert closed is not None, "the attacker's connection stayed open"
    assert send_ms / 1000 - 0.5 <= time.monotonic() - started <= send_ms / 1000 + WAIT
    wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == 0, 3,
               "the in-flight slots to come back")
    reply = describe_findings(hg)
    assert reply.status == 200, reply.text
    # counted once the connection's task has closed it: just after the client sees the close
    wait_until(lambda: metric(hg, "hubgate_connection_errors_total", kind="send_timeout") == 1,
               3, "the send timeout counted")
    # The attacker's requests and the last one were forwarded, answered and recorded (a
    # record just after its answer).
    wait_until(lambda: len([r for r in hg.audit_records() if r["status"] == 200]) == limit + 1,
               3, "every forwarded request's record")
    assert len(hg.fake.requests("POST", "/findings")) == limit + 1


def test_connections_over_max_connections_get_503_and_are_counted(make_fake, make_hubgate):
    hg = make_hubgate({"server": {**SOCKET_LIMITS, "max_connections": 2,
                                  "idle_timeout_ms": 10000}}, fake=make_fake())
    held = [connect(hg.port) for _ in range(2)]
    wait_until(lambda: metric(hg, "hubgate_connections_open") == 2, 3, "two open connections")
    body = json.dumps(NOTE).encode()
    request = head_bytes("PATCH", BUF, signed_headers(hg, body)
                         + [("Content-Length", str(len(body)))]) + body
    reply, s = exchange(hg.port, request)
    err = assert_envelope(reply, 503, "OVERLOADED", "ServiceUnavailableException")
    assert "server.max_connections" in err["error"]["message"]
    assert reply.headers.get("connection") == "close"
    assert closed_within(s, WAIT) is not None
    s.close()
    assert_nothing_forwarded(hg)
    wait_until(lambda: metric(hg, "hubgate_connections_refused_total", kind="overloaded") == 1,
               3, "the refused connection counted")
    # A slot that frees up is used again.
    held.pop().close()
    wait_until(lambda: metric(hg, "hubgate_connections_open") == 1, 3, "a slot to free up")
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, signed_headers(hg, body)
                                            + [("Content-Length", str(len(body)))]) + body)
    s.close()
    assert reply.status == 200, reply.text
    for c in held:
        c.close()


def test_what_hyper_refuses_itself_is_counted(hg):
    """Malformed heads never reach hubgate's handler: hyper answers (400, 431, 414) and closes;
    /metrics counts them."""
    def count(kind):
        return metric(hg, "hubgate_connection_errors_total", kind=kind)

    bad, large, uri = count("bad_request"), count("header_too_large"), count("uri_too_long")
    # Transfer-Encoding that does not end in chunked: hyper's own 400.
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, [("Host", hg.host),
                                                           ("Transfer-Encoding", "gzip")]))
    s.close()
    assert reply.status == 400
    # Two different Content-Length values: hyper's own 400.
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, [
        ("Host", hg.host), ("Content-Length", "2"), ("Content-Length", "3")]) + b"{}")
    s.close()
    assert reply.status == 400
    # More headers than hyper takes: 431.
    many = [("Host", hg.host)] + [(f"X-Pad-{i}", "a") for i in range(150)]
    reply, s = exchange(hg.port, head_bytes("GET", "/accounts", many))
    s.close()
    assert reply.status == 431
    # A request target over hyper's limit: 414.
    reply, s = exchange(hg.port, head_bytes("GET", "/" + "a" * 70000, [("Host", hg.host)]))
    s.close()
    assert reply.status == 414
    wait_until(lambda: (count("bad_request"), count("header_too_large"), count("uri_too_long"))
               == (bad + 2, large + 1, uri + 1), 3, "hyper's refusals counted")
    assert_nothing_forwarded(hg)
    text = hg.admin("/metrics").text
    assert re.search(r'^hubgate_connection_errors_total\{kind="bad_request"\} \d+', text, re.M)
