"""Adversarial review of the replicas' lookup claims and shared cache (session 50). Two replicas
share a redis-server the test starts on 127.0.0.1 (`redis_server` of test_replicas.py) and the
scripted Security Hub of test_adversarial_upstream.py (`Quirky`); replica 1's claims last 6 s
(`lookup_claim_ms`), so a claim left behind shows in replica 2's latency.

HOLE (fixed): a replica stopped (SIGTERM, grace over) while its lookup of a finding was in
flight left the lookup's claim in Redis: every other replica's request for that finding waited
the claim out (lookup_claim_ms, 2 s by default; 5.8 s here) before looking it up itself. The
stopping replica now releases every claim it holds after the drain or halt (within
op_timeout_ms) and takes no more.
HOLE (fixed): a lookup nobody waited for any more (every request waiting for it gave up at its
deadline) ran on until Security Hub answered or the call timed out, holding its claim: the
other replicas' requests for those findings waited for it (3.5 s here) for an answer nobody on
its replica wanted. A lookup's claims are now released once no request waits for it (the call
runs on: an SDK's retry of the 504 joins it, and its answer is still stored if no write came
in), and a claim handed back to a replica for findings dropped before their lookup was sent is
released too. Claims now carry their replica's token, so a replica releases (or, storing, deletes) only
its own: one that outlived lookup_claim_ms may be another replica's by then.
HOLE (fixed): a replica waiting on another's claims for a batch of findings, one of whose
claims came free (its lookup failed) while another was still held, ended the wait without
handing the freed finding back when the requests waiting for the others had gone (a request
naming both gave up at its deadline): the freed finding stayed marked in flight on that
replica with no lookup behind it, and every later request for it there waited to its deadline
and was answered 504, for as long as the replica ran; its claim, taken, was left to expire. A
member can set this up with its own findings and a slow Security Hub. The wait now hands back
what it took before it ends.
HOLE (fixed): the same wait handed back the findings it took only once every other one was
settled: a request for the freed finding alone waited for the slowest claim of the batch (to
lookup_claim_ms, here 3 s, past a deadline shorter than that: 504). Each is now handed back as
soon as it is taken.

Held (kept as tests): the request whose deadline passed is answered 504 UPSTREAM_TIMEOUT
(envelope, a status SDKs retry).

Held (tried against the binary, not kept):
- a request waiting on another replica's live claim past its own quota.max_wait_ms is
  answered 504 UPSTREAM_TIMEOUT at its deadline, never later, never held by the claim.

Held (read in the code):
- a lookup that fails (an upstream error, throttles past the retries) releases its claims
  (STORE with a write count that never matches); while it retries under throttling it keeps
  them, which spares the shared quota a second lookup.
- claim keys are a SHA-256 of the Id's length, the Id and the ProductArn: Ids with separators,
  long or unicode Ids cannot collide. Claim expiry and entries' read times are Redis's clock
  (PX, TIME), never a replica's, so a replica whose clock is off changes nothing.
- an entry stored from a read that a write (on any replica) overtook is refused by the
  finding's write count; one stored under a generation that has since been retired is refused
  by the generation check.
- a value in Redis that cannot be read (short, not UTF-8, bad JSON) is a miss in the scripts
  (`live` is false) and in `decode`; it is looked up again, not trusted.

Noticed and left alone: a member can make hubgate look up findings of other accounts (it is
refused for ownership after the lookup, which fills the shared cache); each costs GetFindings
quota, which is the quota area's to bound, and holds the other replicas off only while the
lookup runs.
"""

from __future__ import annotations

import signal
import threading
import time

from helpers import PRODUCT_ARN, assert_envelope, hubgate_env, wait_until
from test_adversarial_upstream import NOTE, quirky, upd  # noqa: F401 (fixture)
from test_replicas import coordination, coordination_state, redis_server  # noqa: F401

# Long enough that a claim left behind shows in the other replica's latency.
CLAIM_MS = 6000


def two_on(make_hubgate, up, redis, *, quota=None, server=None):
    """Replica 1 with `quota` and `server` (it is the one that leaves claims behind)."""
    out = []
    for i in (1, 2):
        env = {**hubgate_env(), "HUBGATE_INSTANCE_ID": f"replica-{i}"}
        out.append(make_hubgate({
            "upstream": {"timeout_ms": 5000},
            "enrichment": {"enabled": True, "cache_ttl_ms": 60000},
            "quota": (quota or {}) if i == 1 else {},
            "server": (server or {}) if i == 1 else {},
            "coordination": {**coordination(redis), "lookup_claim_ms": CLAIM_MS}},
            upstream_endpoint=up.endpoint, env=env))
    for hg in out:
        wait_until(lambda hg=hg: coordination_state(hg) == "ok", 10, "the replica to join")
    return out


def stall_first_lookup(quirky, hold: float):
    """The first GetFindings is answered after `hold` seconds, the others at once."""
    first = threading.Event()

    def stalled(req, default):
        if not first.is_set():
            first.set()
            time.sleep(hold)
        return None

    quirky.on_get = stalled
    return first


def in_background(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    return t, out


def timed(fn):
    t0 = time.monotonic()
    r = fn()
    return r, time.monotonic() - t0


def test_a_halted_replicas_claim_is_released(quirky, make_hubgate, redis_server):
    """Replica 1 is stopped while its lookup is in flight (Security Hub answers in 4 s): replica
    2 then looks the finding up at once, not after the claim's 6 s."""
    r1, r2 = two_on(make_hubgate, quirky, redis_server, server={"shutdown_grace_ms": 200})
    first = stall_first_lookup(quirky, 4)
    t, out = in_background(lambda: r1.buf(upd("f-own-high", Note=NOTE), who="member"))
    assert first.wait(5)
    r1.proc.send_signal(signal.SIGTERM)
    r1.proc.wait(10)
    t.join(5)
    r, took = timed(lambda: r2.buf(upd("f-own-high", Note=NOTE), who="member"))
    assert r.status == 200, r.text
    assert took < 1.5, took


def test_a_lookup_nobody_waits_for_releases_its_claim(quirky, make_hubgate, redis_server):
    """Replica 1's only request gives up after 1 s (quota.max_wait_ms), its lookup unanswered
    (Security Hub answers in 4.5 s): replica 2 then looks the finding up at once."""
    r1, r2 = two_on(make_hubgate, quirky, redis_server, quota={"max_wait_ms": 1000})
    first = stall_first_lookup(quirky, 4.5)
    t, out = in_background(lambda: r1.buf(upd("f-own-high", Note=NOTE), who="member"))
    assert first.wait(5)
    t.join(5)
    assert_envelope(out["r"], 504, "UPSTREAM_TIMEOUT", "InternalException")
    r, took = timed(lambda: r2.buf(upd("f-own-high", Note=NOTE), who="member"))
    assert r.status == 200, r.text
    assert took < 1.5, took
    # replica 1's call runs on (a retry of the 504 would join it): replica 2 made the second
    assert quirky.count("/findings") == 2


def one_slow_one_failed(quirky, r2):
    """Replica 2 looks up f-own-critical (Security Hub answers in 4 s) and, apart,
    f-own-high (a 400 after 0.4 s, which releases its claim). Returns the two requests'
    threads and the event set when the 400 is on its way."""
    failed, slow_sent = threading.Event(), threading.Event()

    def scripted(req, default):
        ids = [c["Value"] for c in req.get("Filters", {}).get("Id", [])]
        if "f-own-critical" in ids and not failed.is_set():
            slow_sent.set()
            time.sleep(4)
        elif ids == ["f-own-high"] and not failed.is_set():
            failed.set()
            time.sleep(0.4)
            return 400, {}, b'{"__type": "InvalidInputException", "message": "no"}'
        return None

    quirky.on_get = scripted
    slow, _ = in_background(lambda: r2.buf(upd("f-own-critical", Note=NOTE), who="member"))
    # Conditions, not sleeps: each lookup reaches Security Hub only after its claim is in
    # Redis, so replica 2 holds both claims from here, however loaded the machine.
    assert slow_sent.wait(5), "replica 2 never looked up f-own-critical"
    bad, _ = in_background(lambda: r2.buf(upd("f-own-high", Note=NOTE), who="member"))
    assert failed.wait(5), "replica 2 never looked up f-own-high"
    return slow, bad, failed


BOTH = {"FindingIdentifiers": [{"Id": "f-own-critical", "ProductArn": PRODUCT_ARN},
                               {"Id": "f-own-high", "ProductArn": PRODUCT_ARN}], "Note": NOTE}


def test_a_finding_handed_back_beside_one_nobody_waits_for_is_not_stuck(
        quirky, make_hubgate, redis_server):
    """Replica 1's request for both waits on replica 2; f-own-high's claim comes free and
    replica 1 takes it, f-own-critical is still claimed when the request gives up (1 s). The
    wait for replica 2 then ended without handing f-own-high back: it stayed marked in flight
    on replica 1 with no lookup behind it, and every later request for it there waited to its
    deadline (504), for good."""
    r1, r2 = two_on(make_hubgate, quirky, redis_server, quota={"max_wait_ms": 1000})
    slow, bad, failed = one_slow_one_failed(quirky, r2)
    both = r1.buf(BOTH, who="member")
    assert_envelope(both, 504, "UPSTREAM_TIMEOUT", "InternalException")
    assert failed.is_set()
    time.sleep(0.2)
    r, took = timed(lambda: r1.buf(upd("f-own-high", Note=NOTE), who="member"))
    assert r.status == 200, r.text
    assert took < 0.9, took
    slow.join(6)
    bad.join(2)


def test_a_finding_another_replica_let_go_is_looked_up_without_waiting_for_the_others(
        quirky, make_hubgate, redis_server):
    """The same, but replica 1's request for both waits on: f-own-high, free after 0.6 s, was
    handed back only with f-own-critical (4 s), so a request for f-own-high alone waited
    that long too."""
    r1, r2 = two_on(make_hubgate, quirky, redis_server)
    slow, bad, failed = one_slow_one_failed(quirky, r2)
    t, out = in_background(lambda: r1.buf(BOTH, who="member"))
    time.sleep(0.6)
    assert failed.is_set()
    r, took = timed(lambda: r1.buf(upd("f-own-high", Note=NOTE), who="member"))
    assert r.status == 200, r.text
    assert took < 1.5, took
    t.join(6)
    assert out["r"].status == 200, out["r"].text
    slow.join(6)
    bad.join(2)
