"""Adversarial review (lifecycle, fourth round): work a stop, or a client going away, cuts
off part-way.

Two replicas share a redis-server (`redis_server` of test_replicas.py) and the scripted
Security Hub of test_adversarial_upstream.py (`Quirky`); replica 1 reaches Redis through a TCP
proxy the test holds, so a Redis call of its can be made to be in flight at a chosen moment.

- HOLE (fixed): a replica stopped while one of its lookup claims was being taken (the claim
  reached Redis, its answer had not come back) left that claim in Redis: the stop's
  `release_all` released the claims the replica knew it held, and this one it learnt of only
  when the answer came, after `release_all` had run (and the runtime's end then cut the call
  off). Every other replica's request for the finding waited the claim out (lookup_claim_ms,
  6 s here). The stop now waits for the claims being taken (within op_timeout_ms and the
  halt's Redis cut-off) before it releases what the replica holds; a second signal during
  that wait (or the release, which could already take op_timeout_ms, up to 60 s, unheard)
  exits at once with status 1 (kept as a test: without it the second SIGTERM waited 2.2 s).
- HOLE (fixed): after Security Hub throttled a write, the operation's slowed pace reserved a
  moment for each call before it waited for it; a request whose wait was cut off (its client
  left, an SDK's read timeout, a Lambda's end; or the halt) took its moment with it. Each such
  request pushed every later call one slowed interval further out, while the quota at that
  moment went unused: the administrator's write that stayed was refused 429 THROTTLED at
  once, its slot 4 s out past its 3 s wait, where the slot the member's gone request left was
  2 s out. A slot whose wait is cut off is now handed to the next call.
- Held (kept as a test): a forward whose client closed its socket while Security Hub had not
  answered, and a SIGTERM then, runs on in its own task: recorded (forwarded), written through
  to Redis (or evicted there) before hubgate exits 0, so the other replica judges the next request on it.
- Held (read in the code): a lookup's own releases and stores keep their claims held until
  their Redis call has ended (749b5d7), `release_unclaimed` goes through the same `release`;
  a request's write-through, eviction and settle-journal writes run in the request's own task,
  which holds its in-flight permit (the drain waits for it) and its `Unrecorded` mark (the
  halt waits for it) until its record is written; a request dropped at the halt before it was
  sent leaves no finding in flight (`StopsWaiting`, `InFlight` and `Batch` are undone on drop);
  a reload runs in a blocking task that the runtime's end bounds at 500 ms and writes nothing.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

from helpers import CALLERS, assert_envelope, hubgate_env, ident, sign, wait_until
from test_adversarial_upstream import NOTE, quirky, upd  # noqa: F401 (fixture)
from test_replicas import coordination, coordination_state, redis_server  # noqa: F401

# Long enough that a claim left behind shows in the other replica's latency.
CLAIM_MS = 6000
# The claim script's `lookup_claim_ms` argument, as RESP sends it: only a claim carries it.
CLAIM_ARG = b"\r\n$4\r\n6000\r\n"


class HeldRedis:
    """A TCP proxy in front of Redis. Once armed, the answers to a client's claim (and
    everything after it on that connection) are held back until `release()`: the claim has
    reached Redis, its answer has not reached hubgate."""

    def __init__(self, port: int):
        self.upstream = port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.claimed = threading.Event()
        self.released = threading.Event()
        self.closing = threading.Event()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self):
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            for s in (client, server):
                s.settimeout(0.2)
                self.socks.append(s)
            held = threading.Event()
            threading.Thread(target=self._up, args=(client, server, held), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, held), daemon=True).start()

    def _pump(self, src, on_data):
        while not self.closing.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            if not on_data(data):
                return

    def _up(self, client, server, held):
        seen = bytearray()

        def on(data):
            seen.extend(data)
            if self.armed.is_set() and CLAIM_ARG in seen and not held.is_set():
                held.set()
                self.claimed.set()
            del seen[:-len(CLAIM_ARG)]
            try:
                server.sendall(data)
            except OSError:
                return False
            return True
        self._pump(client, on)

    def _down(self, server, client, held):
        def on(data):
            # The answer to the claim comes after the claim was sent: held from then on.
            if held.is_set() and not self.released.is_set():
                self.released.wait(10)
            try:
                client.sendall(data)
            except OSError:
                return False
            return True
        self._pump(server, on)

    def release(self):
        self.released.set()

    def close(self):
        self.closing.set()
        self.released.set()
        for s in [self.listener, *self.socks]:
            try:
                s.close()
            except OSError:
                pass


def two_on(make_hubgate, up, redis, proxy, server=None, quota=None):
    """Replica 1 reaches Redis through `proxy` and stops after 200 ms of grace (or as
    `server` says); its Redis calls may take 3 s (the held answer must not fail them)."""
    out = []
    for i in (1, 2):
        env = {**hubgate_env(), "HUBGATE_INSTANCE_ID": f"replica-{i}"}
        coord = {**coordination(redis), "lookup_claim_ms": CLAIM_MS}
        settings = {}
        if i == 1:
            coord.update({"redis_url": proxy.url, "op_timeout_ms": 3000})
            settings = {"server": server or {"shutdown_grace_ms": 200}, "quota": quota or {}}
        out.append(make_hubgate({
            "upstream": {"timeout_ms": 5000},
            "enrichment": {"enabled": True, "cache_ttl_ms": 60000},
            **settings,
            "coordination": coord},
            upstream_endpoint=up.endpoint, env=env))
    for hg in out:
        wait_until(lambda hg=hg: coordination_state(hg) == "ok", 10, "the replica to join")
    return out


def test_a_claim_being_taken_at_the_stop_is_released(quirky, make_hubgate, redis_server):
    """Replica 1's claim of f-own-high reaches Redis; its answer is held until 0.8 s after
    the SIGTERM (past the grace, within the halt's Redis cut-off). Replica 2 then looks the
    finding up at once, not after the claim's 6 s."""
    proxy = HeldRedis(redis_server.port)
    try:
        r1, r2 = two_on(make_hubgate, quirky, redis_server, proxy)
        # Redis learns the scripts first (redis-rs sends EVALSHA, then the script on NOSCRIPT):
        # the claim armed below is then the one Redis runs.
        assert r1.buf(upd("f-own-critical", Note=NOTE), who="member").status == 200
        proxy.armed.set()
        out = {}
        t = threading.Thread(
            target=lambda: out.setdefault("r", r1.buf(upd("f-own-high", Note=NOTE), who="member")),
            daemon=True)
        t.start()
        assert proxy.claimed.wait(5), "replica 1 never claimed the lookup"
        signalled = time.monotonic()
        r1.proc.send_signal(signal.SIGTERM)
        time.sleep(max(0.0, signalled + 0.8 - time.monotonic()))
        proxy.release()
        r1.proc.wait(10)
        t.join(5)
        t0 = time.monotonic()
        r = r2.buf(upd("f-own-high", Note=NOTE), who="member")
        took = time.monotonic() - t0
        assert r.status == 200, r.text
        assert took < 1.5, took
    finally:
        proxy.close()


def test_a_second_signal_while_the_stop_waits_for_a_claim_exits_at_once(
        quirky, make_hubgate, redis_server):
    """Held (guards the fix above): the stop waits for a claim being taken (up to
    op_timeout_ms, 3 s here, then the release as long); a second SIGTERM meanwhile exits at
    once with status 1, as everywhere else in the stop."""
    proxy = HeldRedis(redis_server.port)
    try:
        r1, _ = two_on(make_hubgate, quirky, redis_server, proxy,
                       server={"shutdown_grace_ms": 5000}, quota={"max_wait_ms": 500})
        assert r1.buf(upd("f-own-critical", Note=NOTE), who="member").status == 200
        proxy.armed.set()
        t = threading.Thread(
            target=lambda: r1.buf(upd("f-own-high", Note=NOTE), who="member"), daemon=True)
        t.start()
        assert proxy.claimed.wait(5), "replica 1 never claimed the lookup"
        t.join(5)  # its request gave up at its deadline: nothing is left to drain
        r1.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        signalled = time.monotonic()
        r1.proc.send_signal(signal.SIGTERM)
        assert r1.proc.wait(5) == 1
        assert time.monotonic() - signalled < 1.0
    finally:
        proxy.close()


def test_a_slowed_slot_a_client_left_is_not_lost(make_fake, make_hubgate):
    """Security Hub throttles a write: BatchUpdateFindings is slowed to half its 1/s (a slot
    every 2 s). A member's write takes the next slot and its client leaves while it waits; the
    administrator's write, with 3 s to wait, takes that slot and is sent, instead of being
    refused 429 for a slot 4 s out while the quota goes unused."""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 3000},
                       "quota.limits": {"BatchUpdateFindings": {"rate": 1.0, "burst": 5}}},
                      fake=fake)
    note = {"Text": "t", "UpdatedBy": "u"}
    fake.throttle_next(BatchUpdateFindings=1)
    assert_envelope(hg.buf({"FindingIdentifiers": [ident("f-admin")], "Note": note}),
                    429, "THROTTLED", "ThrottlingException")
    path = "/findings/batchupdate"
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")], "Note": note}).encode()
    headers = sign(CALLERS["member"], "PATCH", hg.host, path, body,
                   {"Content-Type": "application/json"})
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": len(body)}.items())
    with socket.create_connection(("127.0.0.1", hg.port), timeout=5) as gone:
        gone.sendall(f"PATCH {path} HTTP/1.1\r\n{head}\r\n".encode() + body)
        time.sleep(0.4)
        gone.shutdown(socket.SHUT_RDWR)
    t0 = time.monotonic()
    r = hg.buf({"FindingIdentifiers": [ident("f-admin")], "Note": note})
    took = time.monotonic() - t0
    assert r.status == 200, (r.status, r.text, took)
    assert [c for c in fake.buf_calls() if "f-own-high" in json.dumps(c)] == []


def test_a_forward_whose_client_left_is_written_through_before_the_stop_ends(
        make_fake, make_hubgate, redis_server):
    """Held: the administrator raises f-own-high to CRITICAL through replica 1 (Security Hub
    answers in 1 s), closes its socket while the call is in flight, and replica 1 is stopped
    (SIGTERM, 5 s grace). The request's own task runs on: the write is recorded (forwarded, its
    answer's status) and written through to Redis before hubgate exits 0, so replica 2, which
    had cached f-own-high as HIGH, refuses the member's HIGH as a lowering."""
    fake = make_fake()
    out = []
    for i in (1, 2):
        env = {**hubgate_env(), "HUBGATE_INSTANCE_ID": f"replica-{i}"}
        out.append(make_hubgate({
            "enrichment": {"enabled": True, "cache_ttl_ms": 60000},
            "server": {"shutdown_grace_ms": 5000} if i == 1 else {},
            "coordination": coordination(redis_server)}, fake=fake, env=env))
    r1, r2 = out
    for hg in out:
        wait_until(lambda hg=hg: coordination_state(hg) == "ok", 10, "the replica to join")
    note = {"Text": "t", "UpdatedBy": "u"}
    assert r2.buf({"FindingIdentifiers": [ident("f-own-high")], "Note": note},
                  who="member").status == 200
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 1000})
    before = len(fake.buf_calls())
    path = "/findings/batchupdate"
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Severity": {"Label": "CRITICAL"}, "Note": note}).encode()
    headers = sign(CALLERS["admin"], "PATCH", r1.host, path, body,
                   {"Content-Type": "application/json"})
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": len(body)}.items())
    with socket.create_connection(("127.0.0.1", r1.port), timeout=5) as gone:
        gone.sendall(f"PATCH {path} HTTP/1.1\r\n{head}\r\n".encode() + body)
        wait_until(lambda: len(fake.buf_calls()) > before, 5, "the write to be sent")
        gone.shutdown(socket.SHUT_RDWR)
    time.sleep(0.1)
    r1.proc.send_signal(signal.SIGTERM)
    assert r1.proc.wait(10) == 0
    fake.configure(answer_delay_ms={})
    admin_writes = [r for r in r1.audit_records() if r.get("forwarded")]
    assert len(admin_writes) == 1, r1.audit_records()
    lowered = r2.buf({"FindingIdentifiers": [ident("f-own-high")],
                      "Severity": {"Label": "HIGH"}, "Note": note}, who="member")
    assert_envelope(lowered, 403, "POLICY_DENIED", "AccessDeniedException")
