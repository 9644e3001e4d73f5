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
import time

import h2.config
import h2.connection
import h2.errors
import pytest

from helpers import ADMIN, assert_envelope, ident, wait_until
from test_adversarial_http import h2_request, h2_signed
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
        assert all(closed_within(c, 3) is not None for c in flood), "an idle admin connection stayed open"
    finally:
        for c in flood:
            c.close()
    # (Some of the first ones may have been closed by their clock before the last came.)
    assert metric(hg, "hubgate_connections_refused_total", kind="admin") > 0
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
