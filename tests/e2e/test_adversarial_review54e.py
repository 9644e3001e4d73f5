"""Adversarial review 54e: today's import scoping (`enrich::Importer`) and an import's eviction
across replicas sharing one Redis. An attacker holds MEMBER keys (account 222222222222); the
administrator and another member account (333333333333) share the fleet. Two replicas (A and
B) share a redis-server the test starts on 127.0.0.1 (`redis_server` of test_replicas.py) and
the fake Security Hub (one finding per Id + ProductArn: an import claiming 333 for the
member's identifier makes it 333's). Each test asserts the SAFE outcome: a failing test shows
a hole. Results against the binary at acafc21:

1. OPEN (xfail, strict; README's replicas' "Writes in flight" limit). An administrator's import through A claiming 333 for the Id/ProductArn
   of f-own-high (cached as 222's, through B), held in flight (the fake applies it at once and
   answers 1.5 s late); meanwhile the member's HIGH + RESOLVED of f-own-high through B was
   forwarded (200, ProcessedFindings): it changed account 333's CRITICAL copy. In-flight
   writes are registered only in the sending replica's `State::sending`
   (`Enricher::sending`); nothing reaches Redis until the answer (`Enricher::evict`:
   `unshare` + `Journaled::Unknown`), so B's shared entry (222's, tag confirmed) is still
   live and B judges on the one owner it read. README's "Writes in flight ... see only the
   writes their own replica sent" covers it in general; its import paragraph ("Until stop 54
   ... the member's update is now refused as settling (503) until the import is answered")
   held on replica A only; README now says so. Sharing writes in flight through Redis is
   not built (each replica registers only its own).
2. Held. The same import answered, then the member's update through B: refused and not
   forwarded when Security Hub shows the import (403 on a fresh read), when it lags (still
   reads 222's finding: 503 STATE_SETTLING from A's shared journal entry scoped to no
   account), and with settle_ms = 0 (the shared entry was evicted: 403).
3. Held. A member's own-account import (member_imports "own-findings") of f-other (333's)
   through A, in flight and answered: 333's member's notes on f-other through B (and A) are
   200: the shared scope is 222, and B reads the finding as 333's.
4. Held. Redis killed while the administrator's import (as 1) is in flight through A,
   answered during the outage: the member's update through B is refused (B falls back,
   forgets its cache, reads 333's finding); after Redis restarts and A shares its journal
   again, with Security Hub lagging (reads 222's), refused again (503). Not forwarded.
5. Held. A member's own-account import of f-other through A while Redis is down, shared again
   on rejoin: it keeps its scope (222); 333's member's note through B is 200.

Not tried (documented, README "What this costs"): a replica cut off from Redis alone (its
connection stalled, the shared entry not deleted) leaves the others judging on that entry
until it rejoins or cache_ttl_ms runs out.
"""

from __future__ import annotations

import threading
import time

import pytest

from helpers import MEMBER_ACCOUNT, OTHER_ACCOUNT, SEED, hubgate_env, ident, wait_until
from test_adversarial_model2 import policies_with, reimport
from test_adversarial_replicas import OTHER_MEMBER, TWO_MEMBERS
from test_adversarial_review53c import IMPORT, NOTE, importable, upd
from test_replicas import coordination, coordination_state, redis_server  # noqa: F401

ATTACK = {"Severity": {"Label": "HIGH"}, "Workflow": {"Status": "RESOLVED"}}


def seeded(fid: str) -> dict:
    return next(f for f in SEED if f["Id"] == fid)


def fleet(make_hubgate, fake, redis, enrichment: dict | None = None, **kw):
    """Replicas A and B on one Redis and one fake."""
    out, extra = [], kw.pop("overrides", {})
    for name in ("a", "b"):
        env = {**hubgate_env(), "HUBGATE_INSTANCE_ID": f"replica-{name}"}
        out.append(make_hubgate({
            "enrichment": {"enabled": True, "cache_ttl_ms": 60000, **(enrichment or {})},
            "upstream": {"timeout_ms": 3000},
            **extra,
            "coordination": coordination(redis)}, fake=fake, env=env, **kw))
    for hg in out:
        wait_until(lambda hg=hg: coordination_state(hg) == "ok", 10, "the replica to join")
    return out


def in_background(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()))
    t.start()
    return t, out


def admin_import_to_333(a):
    return a.send("POST", IMPORT, {"Findings": [importable("f-own-high", OTHER_ACCOUNT,
                                                           "CRITICAL")]}, who="admin")


def import_in_flight_through_a(make_hubgate, fake, redis_server):
    """Replicas A and B; f-own-high read through B as the member's (222's); then the
    administrator's import claiming 333 for it through A, applied at once and answered 1.5 s
    late: returns A, B and the import's thread and answer."""
    a, b = fleet(make_hubgate, fake, redis_server)
    assert b.buf(upd("f-own-high", Note=NOTE), who="member").status == 200
    fake.configure(answer_delay_ms={"BatchImportFindings": 1500})
    t, out = in_background(lambda: admin_import_to_333(a))
    wait_until(lambda: fake.findings()["f-own-high"]["AwsAccountId"] == OTHER_ACCOUNT, 5,
               "the import to be applied")
    return a, b, t, out


def refused_and_not_forwarded(fake, answer, before):
    assert answer.status in (403, 503), answer.text
    assert len(fake.buf_calls()) == before, "the member's write reached account 333's finding"


# --- 1. in flight through A, the member's update through B ----------------------------------


@pytest.mark.xfail(strict=True, reason=(
    "open: writes in flight are registered on the replica that sent them only; another "
    "replica sees an import once it is answered (README, what sharing through Redis does not "
    "cover)"))
def test_an_admin_import_in_flight_through_a_is_not_judged_stale_on_b(
        make_hubgate, seeded_fake, redis_server):
    fake = seeded_fake
    a, b, t, out = import_in_flight_through_a(make_hubgate, fake, redis_server)
    before = len(fake.buf_calls())
    attack = b.buf(upd("f-own-high", **ATTACK), who="member")
    t.join(10)
    assert out["r"].status == 200, out["r"].text
    refused_and_not_forwarded(fake, attack, before)


# --- 2. answered through A, within settle_ms, through B -------------------------------------


@pytest.mark.parametrize("settle_ms,lag", [(300000, False), (300000, True), (0, False)],
                         ids=["shown", "lagging", "no-journal"])
def test_an_admin_import_answered_through_a_is_seen_by_b(
        make_hubgate, seeded_fake, redis_server, settle_ms, lag):
    """lagging: GetFindings still answers 222's f-own-high after the import (Security Hub's
    processing lag): B must refuse it as settling, from the journal entry A shared with no
    account scope. Scoped to 333 (the claim), B would read 222's finding as not settling."""
    fake = seeded_fake
    a, b = fleet(make_hubgate, fake, redis_server, {"settle_ms": settle_ms})
    assert b.buf(upd("f-own-high", Note=NOTE), who="member").status == 200
    r = admin_import_to_333(a)
    assert r.status == 200 and r.json()["SuccessCount"] == 1, r.text
    if lag:
        fake.add_findings([seeded("f-own-high")])
    before = len(fake.buf_calls())
    attack = b.buf(upd("f-own-high", **ATTACK), who="member")
    refused_and_not_forwarded(fake, attack, before)
    if lag:
        assert attack.status == 503 and "STATE_SETTLING" in attack.text, attack.text


# --- 3. a member's own-account import of 333's identifier does not lock it on B -------------


def members_imports_fleet(make_hubgate, fake, redis, tmp_path):
    policies = policies_with(tmp_path, member_imports="own-findings")
    return fleet(make_hubgate, fake, redis, overrides={"policy": {"dir": str(policies)}},
                 callers_toml=TWO_MEMBERS)


def member_import_of_other(a):
    return a.send("POST", IMPORT, {"Findings": [reimport("f-other", MEMBER_ACCOUNT)]},
                  who="member")


def test_a_members_import_of_another_accounts_identifier_does_not_lock_it_on_b(
        make_hubgate, seeded_fake, redis_server, tmp_path):
    fake = seeded_fake
    a, b = members_imports_fleet(make_hubgate, fake, redis_server, tmp_path)
    assert b.buf(upd("f-other", Note=NOTE), creds=OTHER_MEMBER).status == 200
    fake.configure(answer_delay_ms={"BatchImportFindings": 1500})
    t, out = in_background(lambda: member_import_of_other(a))
    wait_until(lambda: fake.findings()["f-other"]["AwsAccountId"] == MEMBER_ACCOUNT, 5,
               "the import to reach Security Hub")
    # Security Hub refuses it: account 333's finding is as it was.
    fake.add_findings([seeded("f-other")])
    during = b.buf(upd("f-other", Note=NOTE), creds=OTHER_MEMBER)
    t.join(10)
    assert out["r"].status == 200, out["r"].text
    fake.add_findings([seeded("f-other")])
    after_b = b.buf(upd("f-other", Note=NOTE), creds=OTHER_MEMBER)
    after_a = a.buf(upd("f-other", Note=NOTE), creds=OTHER_MEMBER)
    assert during.status == 200, during.text
    assert after_b.status == 200, after_b.text
    assert after_a.status == 200, after_a.text


# --- 4. Redis dies while the administrator's import is in flight ----------------------------


def rejoined(redis, *replicas):
    redis.start()
    for hg in replicas:
        wait_until(lambda hg=hg: coordination_state(hg) == "ok", 10, "the replica to rejoin")
    time.sleep(0.5)  # the rejoin's journal sharing runs beside the probe


def test_an_admin_import_answered_during_a_redis_outage_is_not_judged_stale_on_b(
        make_hubgate, seeded_fake, redis_server):
    fake = seeded_fake
    a, b, t, out = import_in_flight_through_a(make_hubgate, fake, redis_server)
    redis_server.stop()
    t.join(10)
    assert out["r"].status == 200, out["r"].text
    before = len(fake.buf_calls())
    during = b.buf(upd("f-own-high", **ATTACK), who="member")
    refused_and_not_forwarded(fake, during, before)
    rejoined(redis_server, a, b)
    fake.add_findings([seeded("f-own-high")])  # Security Hub's lag
    after = b.buf(upd("f-own-high", **ATTACK), who="member")
    refused_and_not_forwarded(fake, after, before)


# --- 5. a member's own-account import during an outage, shared again on rejoin ---------------


def test_a_members_import_shared_again_after_an_outage_keeps_its_scope(
        make_hubgate, seeded_fake, redis_server, tmp_path):
    fake = seeded_fake
    a, b = members_imports_fleet(make_hubgate, fake, redis_server, tmp_path)
    assert b.buf(upd("f-other", Note=NOTE), creds=OTHER_MEMBER).status == 200
    redis_server.stop()
    r = member_import_of_other(a)
    assert r.status == 200, r.text
    fake.add_findings([seeded("f-other")])  # Security Hub refused it
    rejoined(redis_server, a, b)
    after_b = b.buf(upd("f-other", Note=NOTE), creds=OTHER_MEMBER)
    assert after_b.status == 200, after_b.text
    # The member's own finding of the identifier would be settling; 333's is not.
    assert fake.findings()["f-other"]["AwsAccountId"] == OTHER_ACCOUNT
