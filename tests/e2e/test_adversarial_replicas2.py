"""Adversarial review of the replicas' Redis coordination, second round (session 45): replicas
that do not share one configuration, and a Redis that evicts hubgate's keys. Two replicas share
a redis-server the test starts on 127.0.0.1 (the fixtures of test_replicas.py).

HOLE (fixed): a V2 write through a replica whose settle_ms covered its own cache_ttl_ms retired
nothing in Redis, and a retirement's mark lasted only the writer's cache_ttl_ms + 5 s. An entry
that a replica with a longer cache_ttl_ms (a rolling change of it) had stored outlived both:
after the write's window, a member's lowering of the finding the administrator had just raised
was judged on that entry, read before the raise, and allowed.
HOLE (fixed): a Redis that evicts keys (maxmemory-policy volatile-lru, ElastiCache's default;
every key hubgate writes but its marker has a TTL, so those are the ones evicted) dropped the
settle journal entry of an administrator's raise still being applied, with no call failing and
the marker intact: both replicas stayed "ok", and the member's lowering through the other
replica was allowed. The probe now reads Redis's evicted-keys count.

Held (not kept as tests):
- tried against the binary: a wrong-type value at `<prefix>:gen` (another application) fails
  the scripts, the replicas fall back and judge alone (403 for the lowering, 200 for a note);
  an administrator's raise whose answer was lost (upstream.timeout_ms passed, applied later)
  still refuses the member's lowering through the other replica.
- read in the code: finding keys are length-prefixed SHA-256 of Id and ProductArn (the first
  review's collision test); journal paths are fixed member names and values JSON, so no text a
  caller chooses can split an item; account text reaches `ja:`/`ar:`/`jo:` keys only by exact
  match; bucket keys use the callers file's accounts; pacing and TTLs use Redis's clock (TIME,
  PX), so the replicas' clocks need not agree.
"""

from __future__ import annotations

import re
import socket
import time

from helpers import MEMBER_ACCOUNT, finding, hubgate_env, wait_until
from test_adversarial_replicas import _finding_hash, both_ok
from test_quota import severity
from test_replicas import (  # noqa: F401 - fixtures
    LOWER,
    _r29_v2_note,
    coordination,
    coordination_state,
    note_ids,
    quota_fake,
    redis_server,
    replicas,
)


def _replica(make_hubgate, quota_fake, redis_server, i: int, enrichment: dict):
    env = {**hubgate_env(), "HUBGATE_INSTANCE_ID": f"replica-{i}"}
    return make_hubgate({
        "enrichment": {"enabled": True, **enrichment},
        "quota": {"max_wait_ms": 8000},
        "quota.limits": {"GetFindings": {"rate": 3.0, "burst": 6}},
        "coordination": coordination(redis_server)}, fake=quota_fake, env=env)


def test_a_v2_write_retires_entries_a_replica_with_a_longer_cache_ttl_stored(
        make_hubgate, quota_fake, redis_server):
    """Replica 1 caches for 60 s, replica 2 for 2 s with a 3 s settle window (a rolling change
    of cache_ttl_ms). The member's note through replica 1 shares F as MEDIUM for 60 s. The
    administrator's V2 write through replica 2 raises F to CRITICAL. After replica 2's window
    the member's lowering to MEDIUM through replica 2 must be judged CRITICAL to MEDIUM: the
    shared entry was read before the write."""
    r1 = _replica(make_hubgate, quota_fake, redis_server, 1,
                  {"cache_ttl_ms": 60000, "settle_ms": 120000})
    r2 = _replica(make_hubgate, quota_fake, redis_server, 2,
                  {"cache_ttl_ms": 2000, "settle_ms": 3000})
    for hg in (r1, r2):
        wait_until(lambda hg=hg: coordination_state(hg) == "ok", 10, "the replica to join")
    fid = "f-own-medium"
    assert r1.buf(note_ids([fid]), who="member").status == 200  # shared as MEDIUM for 60 s
    quota_fake.add_findings([finding(fid, MEMBER_ACCOUNT, "CRITICAL", 90)])  # the V2's effect
    v2 = r2.send("PATCH", "/findingsv2/batchupdatev2", _r29_v2_note(MEMBER_ACCOUNT, fid), who="admin")
    assert v2.status == 200, v2.text
    time.sleep(3.3)  # replica 2's settle window is over
    lowered = r2.buf(severity(fid, "MEDIUM"), who="member")
    assert lowered.status == 403, (
        f"the member lowered a CRITICAL finding ({lowered.status}): judged on the entry "
        f"replica 1 stored before the V2 write: {lowered.text}")
    assert f"{LOWER} (CRITICAL to MEDIUM)" in lowered.json()["error"]["message"], lowered.text


def _fill(redis, prefix: str, n: int, size: int, ttl_s: int = 3600) -> list[bytes]:
    """Another application's n keys of `size` bytes (with a TTL), pipelined on one socket."""
    value = b"x" * size
    payload = b"".join(
        b"*5\r\n$3\r\nSET\r\n" + f"${len(k)}\r\n{k}\r\n".encode()
        + f"${size}\r\n".encode() + value + b"\r\n$2\r\nEX\r\n"
        + f"${len(str(ttl_s))}\r\n{ttl_s}\r\n".encode()
        for k in (f"{prefix}:{i}" for i in range(n)))
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as s:
        s.sendall(payload)
        replies = b""
        while replies.count(b"\r\n") < n:
            chunk = s.recv(65536)
            assert chunk, "Redis closed the connection"
            replies += chunk
    return replies.split(b"\r\n")[:n]


def test_keys_a_redis_evicted_are_shared_again_before_anything_is_judged_on_it(
        replicas, quota_fake, redis_server):
    """The Redis evicts (maxmemory-policy volatile-lru, ElastiCache's default; every key hubgate
    writes but its marker has a TTL). The administrator's raise through replica 1 is still
    being applied when another application's keys fill the memory, and Redis evicts the raise's
    settle journal entry: no call fails, and the marker is still there. The replicas must notice
    the eviction, and replica 1 share its journal again: the member's lowering through replica 2
    is judged CRITICAL to MEDIUM."""
    r1, r2 = replicas(extra={"enrichment": {"enabled": True, "cache_ttl_ms": 0}})
    used = int(re.search(rb"used_memory:(\d+)", redis_server.command("INFO", "memory")).group(1))
    for setting in (("maxmemory-policy", "volatile-lru"), ("maxmemory", str(used + 2_000_000))):
        assert redis_server.command("CONFIG", "SET", *setting).startswith(b"+OK")
    quota_fake.configure(apply_delay_ms=8000)
    raised = r1.buf(severity("f-own-medium", "CRITICAL"), who="admin")
    assert raised.status == 200, raised.text
    journal = f"hubgate:jp:{_finding_hash('f-own-medium')}"
    assert redis_server.command("EXISTS", journal).startswith(b":1")
    for batch in range(40):
        assert all(r == b"+OK" for r in _fill(redis_server, f"other-app:{batch}", 20, 50_000))
        if redis_server.command("EXISTS", journal).startswith(b":0"):
            break
    assert redis_server.command("EXISTS", journal).startswith(b":0"), "not evicted"
    # the operator makes room; hubgate's keys stay gone
    assert redis_server.command("CONFIG", "SET", "maxmemory", "0").startswith(b"+OK")
    # replica 1 shares its journal again as it rejoins, once a probe saw the eviction
    wait_until(lambda: redis_server.command("EXISTS", journal).startswith(b":1"), 10,
               "replica 1's journal to be shared again")
    both_ok(r1, r2)
    assert quota_fake.findings()["f-own-medium"]["Severity"]["Label"] == "MEDIUM"
    lowered = r2.buf(severity("f-own-medium", "MEDIUM"), who="member")
    assert lowered.status == 403, (
        f"the member's lowering was judged without the evicted raise ({lowered.status}): "
        f"{lowered.text}")
    assert f"{LOWER} (CRITICAL to MEDIUM)" in lowered.json()["error"]["message"], lowered.text
    for hg in (r1, r2):
        assert "evicted keys" in hg.stderr_text(), f"{hg.host} did not say why it fell back"
