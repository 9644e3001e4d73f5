"""Adversarial review of the replicas' Redis coordination: two hubgate replicas sharing a
redis-server the test starts on 127.0.0.1 (as test_replicas.py does), attacked by a member with
valid keys and by the things an SRE sees happen to a Redis (restarts, data loss, garbage,
a full memory, a password)."""

from __future__ import annotations

import time

import pytest

from helpers import MEMBER_ACCOUNT, finding, ident, wait_until
from test_quota import severity
from test_replicas import (  # noqa: F401 - fixtures
    LOWER,
    coordination,
    coordination_state,
    note_ids,
    quota_fake,
    redis_server,
    replicas,
)


def both_ok(*hgs, timeout=10):
    for hg in hgs:
        wait_until(lambda hg=hg: coordination_state(hg) == "ok", timeout, "the replica to (re)join")


def test_a_redis_restart_does_not_lose_another_replicas_write_still_settling(
        replicas, quota_fake, redis_server):
    """Redis restarts (no persistence: it comes back empty) while Security Hub is still
    applying an administrator's raise forwarded by replica 1. Replica 2 must still lay that
    raise over what it reads: a member's lowering through it is judged CRITICAL to MEDIUM."""
    r1, r2 = replicas(extra={"enrichment": {"enabled": True, "cache_ttl_ms": 0}})
    quota_fake.configure(apply_delay_ms=6000)
    raised = r1.buf(severity("f-own-medium", "CRITICAL"), who="admin")
    assert raised.status == 200, raised.text
    redis_server.stop()
    redis_server.start()
    time.sleep(1.5)  # a few probes
    both_ok(r1, r2)
    assert quota_fake.findings()["f-own-medium"]["Severity"]["Label"] == "MEDIUM"
    lowered = r2.buf(severity("f-own-medium", "MEDIUM"), who="member")
    assert lowered.status == 403, lowered.text
    assert f"{LOWER} (CRITICAL to MEDIUM)" in lowered.json()["error"]["message"], lowered.text


def test_a_flushed_redis_does_not_lose_another_replicas_write_still_settling(
        replicas, quota_fake, redis_server):
    """FLUSHALL (an operator, or another application sharing the Redis) drops no connection, so
    no call fails. The replicas must still notice that the shared journal is gone and share
    their own again: replica 1's raise, which Security Hub is still applying, is laid over what
    replica 2 reads."""
    r1, r2 = replicas(extra={"enrichment": {"enabled": True, "cache_ttl_ms": 0},
                             "coordination": {**coordination(redis_server)}})
    quota_fake.configure(apply_delay_ms=6000)
    raised = r1.buf(severity("f-own-medium", "CRITICAL"), who="admin")
    assert raised.status == 200, raised.text
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    time.sleep(1.0)  # a few probes (probe_interval_ms = 200)
    both_ok(r1, r2)
    assert quota_fake.findings()["f-own-medium"]["Severity"]["Label"] == "MEDIUM"
    lowered = r2.buf(severity("f-own-medium", "MEDIUM"), who="member")
    assert lowered.status == 403, lowered.text
    assert f"{LOWER} (CRITICAL to MEDIUM)" in lowered.json()["error"]["message"], lowered.text
