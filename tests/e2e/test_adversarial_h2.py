"""Adversarial probes of HTTP/2 and connection-level abuse, second round (review round h2abuse):
rapid reset paced past h2's own limit, a certificate that lapses on a long-lived h2 connection,
a client that ignores the GOAWAY of a stop, header-block floods, and a graceful stop with h2
streams in flight.

HOLE (fixed): "rapid reset", paced. h2 closes a connection whose client resets more than 20
streams it has not accepted yet (test_adversarial_wire covers that), but hubgate runs every
request in a task of its own that outlives a reset (so that a forwarded request is still
recorded): a client that waits until its streams are accepted (a PING after the HEADERS tells it
when) and then resets them was never stopped. Knowing only a caller's access key id (no
secret), one connection opened stream after stream, each admitted (a slot, the caller's share),
read, and recorded as a 499: 3000 records in 6 s, no GOAWAY, for as long as it liked. Now a
connection whose client resets 100 of its requests before they are answered, and more than half
of those it started, is shut down (GOAWAY, then closed), and counted in
hubgate_connection_errors_total{kind="stream_resets"}.

HOLE (fixed): an h2 connection outliving its client certificate. README said the connection
is closed after the 401 `UNAUTHENTICATED` (the client certificate this connection was opened
with no longer verifies); over HTTP/1 `Connection: close` did it, over h2 (where that header
means nothing) the connection stayed open and kept taking streams. Now hubgate sends GOAWAY
once that 401 is sent and closes the connection; a stream that starts after is refused
(REFUSED_STREAM), not handled.

HOLE (fixed): a graceful stop that an h2 client keeps feeding. On SIGTERM hyper sends GOAWAY
with the last stream id 2^31-1 and a ping, and only sends the final GOAWAY when the ping comes
back: a client that never acknowledges it went on opening streams, and hubgate went on
forwarding them (20 in 3 s) until shutdown_grace_ms cut the drain short, with the requests then
under way answered 503 AUDIT_UNAVAILABLE and their records only in the log; an idle client doing
the same held every stop for the whole grace period. Now a request that starts after the stop
is refused (REFUSED_STREAM: not handled, safe to send to another replica), and a connection is
dropped once its requests under way are answered (after 1 s more for the GOAWAY's ping).

Held: h2's own limits answer an HPACK bomb (a header indexed thousands of times: GOAWAY
ENHANCE_YOUR_CALM header_list_way_too_large) and a CONTINUATION flood (too_many_continuations)
at once, with hubgate's memory unchanged; SETTINGS, PING and WINDOW_UPDATE floods cost a frame
each and a PING flood from a client that does not read stops being read (checked by hand).
Held: a client that resets a few streams keeps its connection (the budget needs 100 resets, and
more than half of the requests).
Held: SIGTERM with h2 streams in flight: each is forwarded, answered and recorded once, one
reset by its client mid-forward included, and hubgate exits 0.
Held: after the reset flood every slot and the caller's share are back, and each reset request
that hubgate took up has one 499 record.
Held (checked by hand, not kept as tests): one member with 20 streams on two h2 connections
holds its share (a quarter of max_in_flight) and gets 503 OVERLOADED at once for the rest while
the administrator is served; a forwarded answer to an h2 client with a window of 0 holds its
slot until response_send_timeout_ms (test_socket_bounds covers it); an h2 header list over
16 KiB gets hyper's plain 431 on its stream before hubgate sees the request.

Every request goes out through the `h2` state machine with its validation off, or as raw
frames; every wait is bounded."""

from __future__ import annotations

import datetime as dt
import json
import signal
import socket
import struct
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hpack
import pytest

from helpers import MEMBER, ident, wait_until
from pki import client_context
from test_adversarial_http import h2_request, h2_signed
from test_adversarial_identity import connect as tls_connect
from test_adversarial_identity import h2_stream, pki, tls_hubgate  # noqa: F401 (fixture)
from test_socket_bounds import connect, metric

BUF = "/findings/batchupdate"
NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
OWN_NOTE = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}
WAIT = 5.0
RESET_BUDGET = 100  # src/server/conn.rs


@pytest.fixture
def hg(make_fake, make_hubgate):
    return make_hubgate({"server": {"body_read_timeout_ms": 3000}}, fake=make_fake())


def h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False,
        validate_inbound_headers=False))
    conn.initiate_connection()
    return conn


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) \
        + struct.pack(">I", stream) + payload


class Wire:
    """What the server sends, read frame by frame (the h2 state machine stops reading at the
    first GOAWAY; a graceful one is followed by a ping and the answers still under way):
    answers by stream, GOAWAYs, resets, whether the connection ended. Settings are
    acknowledged, and pings unless ack_pings is off."""

    def __init__(self, sock, ack_pings: bool = True):
        self.sock, self.buf, self.decoder = sock, b"", hpack.Decoder()
        self.ack_pings = ack_pings
        self.status: dict[int, int] = {}
        self.headers: dict[int, dict] = {}
        self.body: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaways: list[tuple[int, int]] = []
        self.closed = False

    def read(self, until, timeout: float = WAIT) -> bool:
        """Reads until until(self) holds (True) or timeout seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while not until(self):
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return until(self)
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                continue
            self.buf += data
            while len(self.buf) >= 9 and len(self.buf) >= 9 + int.from_bytes(self.buf[:3], "big"):
                n = int.from_bytes(self.buf[:3], "big")
                kind, flags = self.buf[3], self.buf[4]
                sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
                self.on_frame(kind, flags, sid, payload)
        return True

    def on_frame(self, kind, flags, sid, payload):
        reply = b""
        if kind == 1:  # HEADERS (hubgate sends no padding, priority or continuation)
            fields = {k.lower(): v for k, v in self.decoder.decode(payload)}
            self.headers[sid] = fields
            self.status[sid] = int(fields[":status"])
        elif kind == 0:
            self.body[sid] = self.body.get(sid, b"") + payload
            if payload:
                reply += frame(8, 0, 0, struct.pack(">I", len(payload)))
        elif kind == 3:
            self.resets[sid] = int.from_bytes(payload, "big")
        elif kind == 7:
            self.goaways.append((int.from_bytes(payload[:4], "big"),
                                 int.from_bytes(payload[4:8], "big")))
        elif kind == 4 and not flags & 1:
            reply += frame(4, 1, 0, b"")
        elif kind == 6 and not flags & 1 and self.ack_pings:
            reply += frame(6, 1, 0, payload)
        if kind in (0, 1) and flags & 1:
            self.ended.add(sid)
        if reply:
            try:
                self.sock.sendall(reply)
            except OSError:
                pass


class Ended(Exception):
    """The server ended the connection (GOAWAY, or closed it)."""


def read_until(s: socket.socket, conn, done, timeout: float = WAIT) -> list:
    """Events until done(events) holds; Ended when the server says GOAWAY or closes."""
    events: list = []
    deadline = time.monotonic() + timeout
    while not done(events):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no answer within {timeout} s: {events}")
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            raise Ended("reset") from None
        if not data:
            raise Ended("closed")
        try:
            new = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            raise Ended("protocol") from None
        events += new
        for e in new:
            if isinstance(e, h2.events.ConnectionTerminated):
                raise Ended(e.additional_data or e.error_code)
        s.sendall(conn.data_to_send())
    return events


def pinged(events) -> bool:
    return any(isinstance(e, h2.events.PingAckReceived) for e in events)


def reset_after_accepted(s, conn, headers, n: int) -> None:
    """n streams with a signed head (their bodies never come), and once a PING has come back
    after them (hubgate has accepted them: they are not h2's pending-accept resets, of which it
    allows 20 at once), a RST_STREAM CANCEL for each."""
    sids = []
    for _ in range(n):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=False)
        sids.append(sid)
    conn.ping(b"accepted")
    s.sendall(conn.data_to_send())
    read_until(s, conn, pinged)
    time.sleep(0.02)  # hyper takes them from h2's queue one by one
    for sid in sids:
        try:
            conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.StreamClosedError:
            pass  # hubgate refused it (REFUSED_STREAM): the connection is closing
    s.sendall(conn.data_to_send())


def test_streams_reset_once_accepted_end_the_connection(hg):
    body = json.dumps(NOTE).encode()
    headers = h2_signed(hg, body, creds=MEMBER)
    s, conn = connect(hg.port), h2_client()
    try:
        s.sendall(conn.data_to_send())
        # A few resets (an SDK's timeouts) and the connection goes on serving.
        reset_after_accepted(s, conn, headers, 20)
        # Their slots come back once hubgate has taken the resets: until then the member's
        # share is full, and its note was a 503 on a loaded CI machine.
        wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == 0, WAIT,
                   "the reset streams' slots back")
        sid = conn.get_next_available_stream_id()
        own = json.dumps(OWN_NOTE).encode()
        conn.send_headers(sid, h2_signed(hg, own, creds=MEMBER), end_stream=False)
        conn.send_data(sid, own, end_stream=True)
        s.sendall(conn.data_to_send())
        events = read_until(s, conn, lambda ev: any(
            isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in ev))
        status = [dict(e.headers)[b":status"] for e in events
                  if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
        assert status == [b"200"], events
        # Then the flood: batches of 20, each reset once hubgate has accepted it.
        ended, sent = None, 0
        try:
            while sent < 20 * 20:
                reset_after_accepted(s, conn, headers, 20)
                sent += 20
            read_until(s, conn, lambda ev: False, timeout=2.0)
        except Ended as e:
            ended = e
        except (BrokenPipeError, ConnectionResetError) as e:
            ended = e
        except AssertionError:
            pass  # nothing came back within the wait: still open
    finally:
        s.close()
    assert ended is not None, f"{sent} streams reset once accepted, and the connection is open"
    # 100 resets in all (20 of them before the flood) are more than half of the 101 requests.
    assert sent <= 6 * 20, f"the connection ended only after {sent} resets"
    wait_until(lambda: metric(hg, "hubgate_connection_errors_total", kind="stream_resets") == 1,
               WAIT, "the connection counted as closed for its resets")
    wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == 0, WAIT, "the slots back")
    records = hg.audit_records()
    aborted = [r for r in records if r["status"] == 499]
    assert RESET_BUDGET <= len(aborted) <= RESET_BUDGET + 20, len(aborted)
    assert all(not r["forwarded"] for r in aborted)
    assert [r["status"] for r in records if r["forwarded"]] == [200]
    # The member's share came back (its next request is not a 503), and others are served.
    assert h2_request(hg, h2_signed(hg, own, creds=MEMBER), [own]).status == 200
    assert h2_request(hg, h2_signed(hg, body), [body]).status == 200


def test_an_h2_connection_outliving_its_certificate_is_shut_down_after_the_401(
        make_hubgate, seeded_fake, pki, tmp_path):  # noqa: F811 (fixture)
    hg = tls_hubgate(make_hubgate, seeded_fake, pki, pki["ca_file"])
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
    cert = pki["ca"].issue(cn="admin-cli", client=True, not_after=expires).write(
        tmp_path, "lapsing-h2")
    body = json.dumps(NOTE).encode()
    head = [(":method", "PATCH"), (":path", BUF), (":scheme", "https"),
            (":authority", hg.host), ("content-type", "application/json"),
            ("content-length", str(len(body)))]
    conn = h2_client()
    with tls_connect(hg.port, client_context(pki["ca_file"], cert=cert, alpn=["h2"])) as s:
        assert s.selected_alpn_protocol() == "h2"
        # A client that ignores the GOAWAY: it does not acknowledge hyper's ping after it and
        # opens another stream.
        wire = Wire(s, ack_pings=False)

        def send(sid: int):
            conn.send_headers(sid, head)
            conn.send_data(sid, body, end_stream=True)
            s.sendall(conn.data_to_send())

        send(1)
        assert wire.read(lambda w: 1 in w.ended) and wire.status[1] == 200, wire.body
        time.sleep(max(0.0, (expires - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.2)
        send(3)
        wire.read(lambda w: 3 in w.ended and w.goaways)
        try:
            send(5)
        except OSError:
            pass  # hyper may have ended the connection already (it has no stream left)
        wire.read(lambda w: w.closed, timeout=3.0)
    assert wire.status.get(3) == 401, (wire.status, wire.body)
    late = json.loads(wire.body[3])
    assert "no longer verifies" in late["error"]["message"], late
    assert wire.goaways, "no GOAWAY after the 401 of a lapsed certificate"
    assert wire.closed, "the connection stayed open after its GOAWAY"
    # Stream 5, if it got there, was refused (REFUSED_STREAM), not handled.
    assert 5 not in wire.status and wire.resets.get(5, 7) == 7, (wire.resets, wire.status)
    assert metric(hg, "hubgate_connection_errors_total", kind="certificate_lapsed") == 1
    rec = hg.audit_for(wire.headers[3]["x-amzn-requestid"])
    assert rec["status"] == 401 and rec["forwarded"] is False, rec
    assert len(hg.audit_records()) == 2


def hpack_int(n: int, prefix: int) -> bytes:
    top = (1 << prefix) - 1
    if n < top:
        return bytes([n])
    out, n = [top], n - top
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes(out + [n])


def rss_kib(hg) -> int:
    with open(f"/proc/{hg.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


@pytest.mark.parametrize("flood", ["hpack bomb", "continuation"])
def test_header_block_floods_end_the_connection_with_memory_unchanged(hg, flood):
    s = connect(hg.port)
    before = rss_kib(hg)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
    try:
        if flood == "hpack bomb":
            # A 4000-byte header put in the dynamic table, then referenced 16000 times in one
            # block of 16 KB: 64 MB of headers.
            big = b"\x40" + hpack_int(5, 7) + b"x-big" + hpack_int(4000, 7) + b"a" * 4000
            s.sendall(frame(1, 0x5, 1, b"\x83\x86\x84" + big))
            for sid in range(3, 43, 2):
                s.sendall(frame(1, 0x5, sid, b"\x83\x86\x84" + b"\xbe" * 16000))
        else:
            s.sendall(frame(1, 0x0, 1, b"\x83\x86\x84"))
            for _ in range(20000):
                s.sendall(frame(9, 0, 1, b""))
    except (BrokenPipeError, ConnectionResetError):
        pass
    got = b""
    s.settimeout(WAIT)
    try:
        while chunk := s.recv(65536):
            got += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    goaway, i = None, 0
    while i + 9 <= len(got):
        length, kind = int.from_bytes(got[i:i + 3], "big"), got[i + 3]
        if kind == 7:
            goaway = got[i + 9:i + 9 + length]
        i += 9 + length
    assert goaway is not None, got[:200]
    assert goaway[4:8] == struct.pack(">I", 11), goaway  # ENHANCE_YOUR_CALM
    assert goaway[8:] in (b"header_list_way_too_large", b"too_many_continuations"), goaway
    assert rss_kib(hg) - before < 8 * 1024
    # The bomb's first block is a request of its own (POST /, no such operation).
    assert [r["status"] for r in hg.audit_records()] in ([], [404])


def test_sigterm_with_h2_streams_in_flight_forwards_answers_and_records_each(
        make_fake, make_hubgate):
    fake = make_fake()
    fake.configure(delay_ms=1200)
    hg = make_hubgate({"server": {"shutdown_grace_ms": 5000},
                       "policy": {"eval_timeout_ms": 5000}}, fake=fake)
    body = json.dumps(NOTE).encode()
    s, conn = connect(hg.port), h2_client()
    sids = []
    for _ in range(3):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, h2_signed(hg, body), end_stream=False)
        conn.send_data(sid, body, end_stream=True)
        sids.append(sid)
    s.sendall(conn.data_to_send())
    wait_until(lambda: len(fake.buf_calls()) == 3, WAIT, "the three forwards")
    # The client gives up on one of them while Security Hub is still answering.
    conn.reset_stream(sids[0], h2.errors.ErrorCodes.CANCEL)
    s.sendall(conn.data_to_send())
    hg.proc.send_signal(signal.SIGTERM)
    wire = Wire(s)
    try:
        wire.read(lambda w: w.closed, timeout=WAIT)
    finally:
        s.close()
    assert wire.goaways, "no GOAWAY on SIGTERM"
    assert {sid: wire.status.get(sid) for sid in sids[1:]} == {sids[1]: 200, sids[2]: 200}
    assert set(sids[1:]) <= wire.ended
    assert hg.proc.wait(10) == 0
    records = hg.audit_records()
    assert sorted((r["status"], r["forwarded"]) for r in records) == [(200, True)] * 3, records
    assert len({r["decision_id"] for r in records}) == 3


def test_a_client_that_ignores_the_stops_goaway_gets_no_new_request_forwarded(
        make_fake, make_hubgate):
    fake = make_fake()
    fake.configure(delay_ms=800)
    grace_ms = 5000
    hg = make_hubgate({"server": {"shutdown_grace_ms": grace_ms},
                       "policy": {"eval_timeout_ms": 5000}}, fake=fake)
    body = json.dumps(NOTE).encode()
    s, conn = connect(hg.port), h2_client()
    # It never acknowledges the ping that follows hyper's first GOAWAY (last stream id 2^31-1),
    # so hyper never sends the second one, and goes on taking the streams it opens.
    wire = Wire(s, ack_pings=False)

    def send() -> int:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, h2_signed(hg, body), end_stream=False)
        conn.send_data(sid, body, end_stream=True)
        s.sendall(conn.data_to_send())
        return sid

    first = send()
    wait_until(lambda: len(fake.buf_calls()) == 1, WAIT, "the first forward")
    hg.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert wire.read(lambda w: w.goaways), "no GOAWAY on SIGTERM"
    later = []
    try:
        while time.monotonic() - stopped < 3.0 and not wire.closed:
            later.append(send())
            wire.read(lambda w: False, timeout=0.15)
    except OSError:
        pass  # hubgate closed the connection
    finally:
        s.close()
    assert hg.proc.wait(grace_ms / 1000 + 5) == 0
    took = time.monotonic() - stopped
    assert len(later) >= 2, later
    assert len(fake.buf_calls()) == 1, f"{len(fake.buf_calls()) - 1} requests forwarded after the stop"
    assert wire.status.get(first) == 200, wire.status
    # Those it opened after the GOAWAY were refused (not handled: safe to send elsewhere).
    assert all(wire.resets.get(sid) == 7 for sid in later if sid in wire.resets), wire.resets
    assert not any(sid in wire.status for sid in later), wire.status
    records = hg.audit_records()
    assert [(r["status"], r["forwarded"]) for r in records] == [(200, True)], records
    assert took < grace_ms / 1000, f"the stop took the whole grace period ({took:.1f} s)"
