"""Adversarial probes at the wire (review round h2): connection-level abuse of both listeners,
HTTP/2 pseudo-header and header abuse, HTTP/1.1 targets and framing that no client library
would send, and what reaches Security Hub for each.

Every request goes out on a raw socket (HTTP/1.1) or through the `h2` state machine with its
own validation switched off, so the bytes are exactly the ones under test; every wait is
bounded."""

from __future__ import annotations

import json
import resource
import socket
import struct
import time

import h2.config
import h2.connection
import h2.errors
import pytest

from helpers import ADMIN, MEMBER, assert_envelope, header, ident, sign, wait_until
from test_adversarial_http import h2_request, h2_signed
from test_passthrough import CALLERS, PT_ADMIN, REAL_HOST
from test_socket_bounds import (
    closed_within,
    connect,
    exchange,
    head_bytes,
    metric,
    signed_headers,
)

BUF = "/findings/batchupdate"
NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
WAIT = 5.0


@pytest.fixture
def hg(make_fake, make_hubgate):
    """A hubgate in front of its own (seeded) fake, with short socket clocks."""
    return make_hubgate({"server": {"header_read_timeout_ms": 1000, "idle_timeout_ms": 1500,
                                    "body_read_timeout_ms": 1500}}, fake=make_fake())


def forwarded(hg) -> list[tuple[str, str]]:
    time.sleep(0.2)
    return [(r["method"], r.get("raw_path") or r["path"]) for r in hg.fake.requests()]


# ---------------------------------------------------------------------------
# the admin listener: bounded like the proxy's


def _low_fd_limit():
    # hubgate's file-descriptor limit, small enough to reach with a few hundred sockets.
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_connections_to_the_admin_port_cannot_starve_the_proxy_of_file_descriptors(
        make_fake, make_hubgate):
    """Connections to the admin port that send nothing used to stay open for ever (hyper's
    header timer never starts on a connection without a byte), and the admin port took any
    number of them: a client on the pod network could open them until hubgate had no file
    descriptor left, and the proxy listener then accepted nothing. Now the admin port takes at
    most 64 connections at a time (past that, closed at accept and counted) and closes one that
    sends nothing within header_read_timeout_ms; the proxy keeps serving."""
    hg = make_hubgate({"server": {"header_read_timeout_ms": 1000}}, fake=make_fake(),
                      popen_kw={"preexec_fn": _low_fd_limit})
    flood = []
    try:
        for _ in range(300):
            flood.append(socket.create_connection(("127.0.0.1", hg.admin_port), timeout=2))
        body = json.dumps({"Filters": {}}).encode()
        request = head_bytes("POST", "/findings",
                             signed_headers(hg, body, method="POST", path="/findings")
                             + [("Content-Length", str(len(body)))]) + body
        s = socket.create_connection(("127.0.0.1", hg.port), timeout=3)
        s.settimeout(3)
        try:
            s.sendall(request)
            assert s.recv(12).startswith(b"HTTP/1.1 200"), "the proxy did not answer"
        except (TimeoutError, socket.timeout):
            pytest.fail("the proxy accepted nothing while the admin port was flooded")
        finally:
            s.close()
        # Of the flood, those over the cap were closed at once, the rest within the header
        # timeout: none stays open.
        assert all(closed_within(c, 3) is not None for c in flood), \
            "an idle admin connection stayed open"
    finally:
        for c in flood:
            c.close()
    # (Some of the first ones may have been closed by their clock before the last came.)
    wait_until(lambda: metric(hg, "hubgate_connections_refused_total", kind="admin") > 0, 5,
               "the refused admin connections to be counted")
    assert hg.admin("/healthz").status_code == 200


def test_the_admin_port_speaks_http1_only_and_drops_what_it_is_not_sent(hg):
    """An h2 preface on the admin port is not an HTTP/1 request (hyper answers 400 and
    closes); a head sent slowly is cut off at header_read_timeout_ms; a keep-alive connection
    between scrapes is closed after it too."""
    s = connect(hg.admin_port)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    assert closed_within(s, WAIT) is not None, "the h2 connection stayed open"
    s.close()
    s = connect(hg.admin_port)
    s.sendall(b"GET /heal")
    assert closed_within(s, WAIT) is not None, "a half-sent head held the connection"
    s.close()
    s = connect(hg.admin_port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    took = closed_within(s, WAIT)
    s.close()
    assert took is not None and took < 1.0 + 1.0, took


# ---------------------------------------------------------------------------
# HTTP/2: a client that leaves mid-body


@pytest.mark.parametrize("how", ["rst_stream", "goaway", "close"])
def test_an_h2_client_that_leaves_mid_body_is_recorded_as_an_abort(hg, how):
    """Over HTTP/1 a client that closes the connection mid-body is recorded as 499
    CLIENT_ABORTED. Over h2 the same departure (a RST_STREAM CANCEL, as SDKs send on a timeout;
    a GOAWAY; the socket closed) was recorded as 400 VALIDATION_ERROR "could not read the
    request body", which blamed the client's input for a cancelled request and counted it
    among the 400s. Nothing is forwarded either way."""
    body = json.dumps(NOTE).encode()
    before = len(hg.audit_records())
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    s = connect(hg.port)
    try:
        conn.initiate_connection()
        conn.send_headers(1, h2_signed(hg, body), end_stream=False)
        conn.send_data(1, body[:10])
        s.sendall(conn.data_to_send())
        # The head names a caller, so the request is admitted and reading its body.
        wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == 1, WAIT,
                   "the request to be admitted")
        if how == "rst_stream":
            conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
        elif how == "goaway":
            conn.close_connection()
        s.sendall(conn.data_to_send())
    finally:
        if how != "rst_stream":
            s.close()
    wait_until(lambda: len(hg.audit_records()) > before, WAIT, "the audit record")
    s.close()
    record = hg.audit_records()[before]
    assert record["status"] == 499, record
    assert record["error"]["code"] == "CLIENT_ABORTED", record
    assert record["forwarded"] is False, record
    assert forwarded(hg) == []
    wait_until(lambda: requests_with_status(hg, "499") == 1, WAIT, "the 499 counted")
    assert requests_with_status(hg, "400") == 0


def requests_with_status(hg, status: str) -> float:
    """hubgate_requests_total summed over every series with this status."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in hg.admin("/metrics").text.splitlines()
               if line.startswith("hubgate_requests_total{") and f'status="{status}"' in line)


# ---------------------------------------------------------------------------
# HTTP/1.1: what a connection may make hubgate hold before it names a caller


def test_a_request_head_over_96_kib_is_refused_at_once_not_buffered(make_fake, make_hubgate):
    """hyper buffered up to about 400 KiB of an unfinished request head per connection (and
    hubgate a copy of its first 64 KiB) for header_read_timeout_ms, before any caller was
    named: about 570 KiB a connection, so a few hundred connections from a client without keys
    took hubgate past the memory limit of the shipped manifests (512Mi, 256Mi as a sidecar).
    A head may now be 96 KiB: past that hyper answers 431 and closes at once, whatever the
    header timeout. A request target up to hyper's URI limit is still answered 414."""
    hg = make_hubgate({"server": {"header_read_timeout_ms": 20000, "idle_timeout_ms": 20000}},
                      fake=make_fake())
    pad = "X-Pad: " + "a" * 4000 + "\r\n"
    partial = ("GET /accounts HTTP/1.1\r\nHost: x\r\n" + pad * 50).encode()  # 200 KiB, unfinished
    held = []
    try:
        for _ in range(20):
            s = connect(hg.port)
            s.sendall(partial)
            held.append(s)
        for s in held:
            took = closed_within(s, 3)
            assert took is not None, "an unfinished 200 KiB head was buffered, not refused"
    finally:
        for s in held:
            s.close()
    s = connect(hg.port)
    s.sendall(partial + b"\r\n")
    reply = s.recv(64)
    s.close()
    assert reply.startswith(b"HTTP/1.1 431"), reply
    # An ordinary head with a long target: hyper's own 414, as before.
    reply, s = exchange(hg.port, head_bytes("GET", "/" + "a" * 70000, [("Host", hg.host)]))
    s.close()
    assert reply.status == 414
    # And an SDK-sized one is served.
    reply, s = exchange(hg.port, head_bytes("GET", "/accounts", signed_headers(
        hg, b"", method="GET", path="/accounts") + [("X-Pad", "a" * 8000)]))
    s.close()
    assert reply.status == 200, reply.text
    assert forwarded(hg) == [("GET", "/accounts")]


# ---------------------------------------------------------------------------
# HTTP/2: pseudo-headers and headers no client library sends (edges that hold)


def _h2_base(hg, body: bytes) -> list[tuple[str, str]]:
    return h2_signed(hg, body)


MALFORMED_H2 = {
    "duplicate :path": lambda b: b[:2] + [(":path", "/findings")] + b[2:],
    "no :scheme": lambda b: [h for h in b if h[0] != ":scheme"],
    "pseudo-header after a regular one": lambda b: b[:1] + b[2:] + [b[1]],
    "unknown pseudo-header": lambda b: b + [(":protocol", "websocket")],
    "connection header": lambda b: b + [("connection", "keep-alive")],
    "te other than trailers": lambda b: b + [("te", "gzip")],
    "transfer-encoding": lambda b: b + [("transfer-encoding", "chunked")],
    ":path that is an absolute URI": lambda b: [(k, "http://evil.example" + BUF if k == ":path"
                                                 else v) for k, v in b],
    "empty :path": lambda b: [(k, "" if k == ":path" else v) for k, v in b],
}


@pytest.mark.parametrize("case", list(MALFORMED_H2))
def test_a_malformed_h2_request_is_reset_and_never_forwarded(hg, case):
    """The h2 layer refuses a request whose pseudo-headers or connection-specific headers are
    malformed (RFC 9113 §8.2-8.3) with a stream reset: a signed administrator's update never
    reaches the handler, so nothing is forwarded and nothing recorded; the connection's other
    streams and hubgate go on."""
    body = json.dumps(NOTE).encode()
    reply = h2_request(hg, MALFORMED_H2[case](_h2_base(hg, body)), [body])
    assert reply.status is None and reply.reset is not None, vars(reply)
    assert forwarded(hg) == []
    assert hg.audit_records() == []
    assert h2_request(hg, _h2_base(hg, body), [body]).status == 200


def test_an_upper_case_h2_header_name_ends_the_connection_not_forwarded(hg):
    """Header names are lower-case in h2 (RFC 9113 §8.2.1): one that is not is a connection
    error; what was sent is never handled."""
    body = json.dumps(NOTE).encode()
    try:
        reply = h2_request(hg, _h2_base(hg, body) + [("X-Amz-Target", "x")], [body])
        assert reply.status is None, vars(reply)
    except (BrokenPipeError, ConnectionResetError):
        pass  # hubgate ended the connection while the request was still being written
    assert forwarded(hg) == []
    assert hg.audit_records() == []


def test_h2_signature_is_checked_on_the_host_header_and_the_forward_carries_hubgates_own(hg):
    """With both a host header and :authority, SigV4 is checked over `host` (what every SDK
    signs), whatever :authority says; the re-signed forward carries the upstream's Host, never
    either of the caller's. A host header that is not the signed one fails the signature."""
    body = json.dumps(NOTE).encode()
    base = _h2_base(hg, body)
    spoofed = [(k, "evil.example" if k == ":authority" else v) for k, v in base]
    reply = h2_request(hg, spoofed + [("host", hg.host)], [body])
    assert reply.status == 200, vars(reply)
    sent = hg.fake.buf_calls()
    assert len(sent) == 1
    hosts = [v for k, v in sent[0]["headers"] if k.lower() == "host"]
    assert hosts == [hg.fake.endpoint.split("://", 1)[1]], hosts
    hg.fake.reset()
    reply = h2_request(hg, base + [("host", "evil.example")], [body])
    assert reply.status == 401, vars(reply)
    assert reply.json()["__type"] == "InvalidSignatureException"
    assert forwarded(hg) == []


@pytest.mark.parametrize("method,path,shown", [("CONNECT", None, "CONNECT "),
                                               ("OPTIONS", "*", "OPTIONS *")])
def test_h2_connect_and_asterisk_targets_get_the_404_envelope(hg, method, path, shown):
    headers = [(":method", method), (":authority", hg.host)]
    if path is not None:
        headers += [(":path", path), (":scheme", "http")]
    reply = h2_request(hg, headers, [])
    assert reply.status == 404, vars(reply)
    body = reply.json()
    assert body["error"]["code"] == "NOT_FOUND" and shown in body["error"]["message"], body
    assert forwarded(hg) == []


def test_a_rapid_reset_flood_ends_the_connection_and_holds_nothing(hg):
    """Streams opened with an administrator's signed head and reset at once (the "rapid reset"
    pattern): h2 ends the connection (GOAWAY too_many_resets) after a few; the requests that
    were admitted are recorded as aborted, none is forwarded, every in-flight slot is back, and
    hubgate serves the next caller."""
    body = json.dumps(NOTE).encode()
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
    s = connect(hg.port)
    terminated = None
    try:
        conn.initiate_connection()
        headers = _h2_base(hg, body)
        try:
            for i in range(1000):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers, end_stream=False)
                conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                if i % 25 == 0:
                    s.sendall(conn.data_to_send())
            s.sendall(conn.data_to_send())
        except (BrokenPipeError, ConnectionResetError):
            pass
        deadline = time.monotonic() + WAIT
        while terminated is None and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ConnectionTerminated):
                    terminated = event.additional_data
    finally:
        s.close()
    assert terminated == b"too_many_resets", terminated
    wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == 0, WAIT, "the slots back")
    time.sleep(0.3)
    records = hg.audit_records()
    assert len(records) < 100, len(records)
    assert all(r["status"] == 499 and not r["forwarded"] for r in records), records
    assert forwarded(hg) == []
    assert h2_request(hg, _h2_base(hg, body), [body]).status == 200


# ---------------------------------------------------------------------------
# HTTP/1.1: targets and heads no client library sends (edges that hold)


@pytest.mark.parametrize("case", ["obs-fold", "space before colon", "NUL in a value",
                                  "HTTP/1.0 with Transfer-Encoding", "HTTP/1.2"])
def test_a_head_hyper_refuses_is_never_forwarded(hg, case):
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body)
    version, extra, data = "HTTP/1.1", [], body
    if case == "obs-fold":
        extra = ["X-Fold: a", " b", f"Content-Length: {len(body)}"]
    elif case == "space before colon":
        extra = [f"Content-Length : {len(body)}"]
    elif case == "NUL in a value":
        extra = ["X-Nul: a\x00b", f"Content-Length: {len(body)}"]
    elif case == "HTTP/1.0 with Transfer-Encoding":
        version, extra = "HTTP/1.0", ["Transfer-Encoding: chunked"]
        data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        version, extra = "HTTP/1.2", [f"Content-Length: {len(body)}"]
    lines = [f"PATCH {BUF} {version}"] + [f"{k}: {v}" for k, v in headers] + extra
    reply, s = exchange(hg.port, ("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    s.close()
    assert reply.status == 400, reply.text
    assert forwarded(hg) == []


def test_a_lower_case_method_is_another_method(hg):
    """Methods are case-sensitive: `patch` is no Security Hub operation's method, whatever
    its path (a front end that upper-cased it would run BatchUpdateFindings unjudged)."""
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body, method="patch") + [("Content-Length", str(len(body)))]
    reply, s = exchange(hg.port, head_bytes("patch", BUF, headers) + body)
    s.close()
    err = assert_envelope(reply, 404, "NOT_FOUND", "ResourceNotFoundException")
    assert "patch /findings/batchupdate" in err["error"]["message"], err
    assert forwarded(hg) == []


def test_a_fragment_in_the_target_is_not_forwarded_and_the_path_judged_is_the_path_sent(hg):
    """A request target may not carry a fragment (RFC 9112 §3.2), but the URI parser drops it
    before hubgate sees the target: the path routed, signed, judged and forwarded is the same,
    without it, and the member's suppression is still refused."""
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Workflow": {"Status": "SUPPRESSED"}}).encode()
    headers = signed_headers(hg, body, creds=MEMBER) + [("Content-Length", str(len(body)))]
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF + "#admin", headers) + body)
    s.close()
    assert_envelope(reply, 403, "POLICY_DENIED", "AccessDeniedException")
    assert hg.fake.buf_calls() == []
    body = json.dumps(NOTE).encode()
    headers = signed_headers(hg, body, creds=ADMIN) + [("Content-Length", str(len(body)))]
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF + "#x", headers) + body)
    s.close()
    assert reply.status == 200, reply.text
    assert [c["raw_path"] for c in hg.fake.buf_calls()] == [BUF]


def test_h2_pings_or_an_unfinished_header_block_do_not_keep_a_connection_past_idle(hg):
    """An h2 connection with no request in progress is closed, however busy it keeps the
    wire: PINGs every 200 ms do not count as activity, nor does a HEADERS frame whose header
    block never ends (END_HEADERS never comes). These two never started a request, so they
    are closed header_read_timeout_ms after they were accepted (idle_timeout_ms is the wait
    between requests)."""
    def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) \
            + struct.pack(">I", stream) + payload

    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
    pinger, stuck = connect(hg.port), connect(hg.port)
    try:
        pinger.sendall(preface)
        # HEADERS without END_HEADERS: `:method GET` (indexed), then nothing more.
        stuck.sendall(preface + frame(1, 0x1, 1, b"\x82"))
        started = time.monotonic()
        closed = None
        while time.monotonic() - started < 1.5 + WAIT:
            try:
                pinger.sendall(frame(6, 0, 0, b"12345678"))
            except (BrokenPipeError, ConnectionResetError):
                closed = time.monotonic() - started
                break
            if closed_within(pinger, 0.2) is not None:
                closed = time.monotonic() - started
                break
        assert closed is not None, "PINGs kept the connection open"
        assert 0.7 <= closed <= 1.0 + 2.0, closed
        took = closed_within(stuck, WAIT)
        assert took is not None, "an unfinished header block kept the connection open"
    finally:
        pinger.close()
        stuck.close()
    # A connection's task counts its error just after closing it.
    wait_until(lambda: metric(hg, "hubgate_connection_errors_total", kind="idle_timeout") >= 2,
               5, "both idle timeouts to be counted")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-content-length"])
def test_an_h2_body_over_max_body_bytes_is_413_whether_or_not_it_is_declared(
        make_fake, make_hubgate, declared):
    """h2 need not declare a body's length: one sent in DATA frames alone is cut off at
    server.max_body_bytes like a declared one (which is refused before it is read)."""
    hg = make_hubgate({"server": {"max_body_bytes": 1000}}, fake=make_fake())
    note = dict(NOTE, Note={"Text": "x" * 4000, "UpdatedBy": "u"})
    body = json.dumps(note).encode()
    headers = h2_signed(hg, body)
    if declared:
        headers += [("content-length", str(len(body)))]
    reply = h2_request(hg, headers, [body[i:i + 900] for i in range(0, len(body), 900)])
    assert reply.status == 413, vars(reply)
    assert reply.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert forwarded(hg) == []


# ---------------------------------------------------------------------------
# passthrough over h2: the Host the caller signed is the one Security Hub gets


@pytest.mark.parametrize("where", [":authority", "host header"])
def test_passthrough_over_h2_forwards_the_host_the_caller_signed(make_fake, make_hubgate, where):
    """In passthrough the caller signs for the real Security Hub host. Over h2 it may name
    that host in :authority alone (what an h2 client does) or in a host header beside an
    :authority of hubgate's address: either way the forward carries it as Host, so Security
    Hub (the fake) verifies the caller's own signature; hubgate's address never replaces it."""
    fake = make_fake(extra_credentials=[PT_ADMIN])
    hg = make_hubgate({"upstream": {"auth": "passthrough"}}, fake=fake, callers_toml=CALLERS)
    body = json.dumps(NOTE).encode()
    signed = sign(PT_ADMIN, "PATCH", REAL_HOST, BUF, body, {"Content-Type": "application/json"})
    rest = [(k.lower(), v) for k, v in signed.items() if k.lower() != "host"]
    pseudo = [(":method", "PATCH"), (":path", BUF), (":scheme", "http")]
    if where == ":authority":
        headers = pseudo + [(":authority", REAL_HOST)] + rest
    else:
        headers = pseudo + [(":authority", hg.host)] + rest + [("host", REAL_HOST)]
    reply = h2_request(hg, headers, [body])
    assert reply.status == 200, vars(reply)
    calls = fake.buf_calls()
    assert len(calls) == 1, calls
    assert header(calls[0], "Host") == REAL_HOST, calls[0]["headers"]
    assert calls[0]["signature_valid"] is True, calls[0].get("signature_error")
    assert calls[0]["access_key"] == PT_ADMIN.access_key


# ---------------------------------------------------------------------------
# which Host the signature is checked over


def test_a_host_header_that_is_not_text_is_refused_not_passed_over_for_the_authority(hg):
    """The signature is checked over the Host header whenever there is one. A Host holding a
    byte that is not text (obs-text, 0xFF) was passed over as if absent: over h2 the request
    was then checked, and allowed, against :authority while it carried another host; over
    HTTP/1 it was told "the request has no Host". Both are now 401 naming the Host header."""
    body = json.dumps(NOTE).encode()
    reply = h2_request(hg, _h2_base(hg, body) + [("host", b"evil\xff.example")], [body])
    assert reply.status == 401, vars(reply)
    message = reply.json()["error"]["message"]
    assert "the Host header is not a host name" in message, message
    assert forwarded(hg) == []
    headers = [(k, v) for k, v in signed_headers(hg, body) if k.lower() != "host"]
    data = head_bytes("PATCH", BUF, headers + [("Content-Length", str(len(body)))])
    data = data.replace(b"\r\n\r\n", b"\r\nHost: evil\xff.example\r\n\r\n", 1) + body
    reply, s = exchange(hg.port, data)
    s.close()
    err = assert_envelope(reply, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
    assert "the Host header is not a host name" in err["error"]["message"], err
    assert forwarded(hg) == []


def test_an_h2_connection_over_max_connections_gets_the_503_envelope(make_fake, make_hubgate):
    """Over server.max_connections a plain-HTTP connection is answered 503 OVERLOADED and
    closed; an h2c one (prior knowledge) gets the same envelope on its stream, and nothing is
    forwarded or recorded."""
    hg = make_hubgate({"server": {"max_connections": 1, "idle_timeout_ms": 10000}},
                      fake=make_fake())
    held = connect(hg.port)
    try:
        wait_until(lambda: metric(hg, "hubgate_connections_open") == 1, WAIT, "the held one")
        body = json.dumps(NOTE).encode()
        reply = h2_request(hg, _h2_base(hg, body), [body])
        assert reply.status == 503, vars(reply)
        assert reply.headers.get("x-amzn-errortype") == "ServiceUnavailableException"
        assert "server.max_connections" in reply.json()["error"]["message"]
    finally:
        held.close()
    assert forwarded(hg) == []
    assert hg.audit_records() == []
