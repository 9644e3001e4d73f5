"""Security Hub's quotas: pacing, throttles as 429 THROTTLED, lookups that
are made only when needed, and a cache that a forwarded update writes through.

Every test runs an isolated hubgate in front of its own fake with the fake's quota mode on (AWS's
documented quotas; `throttle_next` throttles the next calls of an operation whatever the quota)."""

from __future__ import annotations

import json
import threading
import time
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from helpers import (
    CALLERS,
    CALLERS_TOML,
    MEMBER_ACCOUNT,
    OTHER_ACCOUNT,
    REGION,
    Creds,
    assert_envelope,
    decision_id_of_boto,
    finding,
    ident,
    named_findings,
    wait_until,
)

LOWER = "member accounts may not lower a finding's severity"


def severity(fid: str, label: str) -> dict:
    return {"FindingIdentifiers": [ident(fid)], "Severity": {"Label": label}}


def note(*fids: str, text: str = "triaged") -> dict:
    return {"FindingIdentifiers": [ident(f) for f in fids],
            "Note": {"Text": text, "UpdatedBy": "quota-e2e"}}


def retrying_client(hg, who: str = "member", max_attempts: int = 10):
    """A boto3 client as SOAR playbooks configure it: standard retries, which back off on
    ThrottlingException."""
    creds = CALLERS[who]
    return boto3.session.Session().client(
        "securityhub", endpoint_url=hg.url, region_name=REGION,
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
        config=Config(retries={"mode": "standard", "max_attempts": max_attempts},
                      connect_timeout=5, read_timeout=30))


def gauge(hg, name: str) -> float:
    """An unlabelled gauge's value from /metrics."""
    for family in text_string_to_metric_families(hg.admin("/metrics").text):
        for s in family.samples:
            if s.name == name and not s.labels:
                return s.value
    raise AssertionError(f"{name} not in /metrics")


def throttled_total(hg, operation: str) -> float:
    samples = {}
    for family in text_string_to_metric_families(hg.admin("/metrics").text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples.get(("hubgate_upstream_throttled_total",
                        frozenset({"operation": operation}.items())), 0.0)


@pytest.fixture
def quota_fake(make_fake):
    """A fake seeded with SEED, enforcing Security Hub's documented quotas."""
    fake = make_fake()
    fake.quota_on()
    return fake


@pytest.fixture
def pair(quota_fake, make_hubgate):
    """pair(overrides, **hubgate_kw) -> hubgate in front of quota_fake."""
    def make(overrides: dict | None = None, **hubgate_kw):
        return make_hubgate(overrides or {}, fake=quota_fake, **hubgate_kw)
    return make


CACHED = {"enrichment": {"enabled": True, "cache_ttl_ms": 60000}}


# ---------------------------------------------------------------------------
# throttled lookups


def test_throttled_lookup_is_429_throttled_and_nothing_is_forwarded(pair, quota_fake):
    """Security Hub throttles every GetFindings: hubgate retries within quota.max_wait_ms, then
    answers 429 ThrottlingException (which SDKs back off on) and forwards nothing."""
    hg = pair({"quota": {"max_wait_ms": 300}})
    quota_fake.throttle_next(GetFindings=1000)
    started = time.monotonic()
    resp = hg.buf(severity("f-own-high", "CRITICAL"), who="member")
    elapsed = time.monotonic() - started
    body = assert_envelope(resp, 429, "THROTTLED", "ThrottlingException")
    assert elapsed < 3, f"hubgate held the request {elapsed:.1f}s with max_wait_ms = 300"

    gf = quota_fake.op_stats("GetFindings")
    assert gf["calls"] >= 1 and gf["throttled"] == gf["calls"], gf
    assert quota_fake.op_stats("BatchUpdateFindings")["calls"] == 0
    assert quota_fake.buf_calls() == []
    assert quota_fake.findings()["f-own-high"]["Severity"]["Label"] == "HIGH"

    rec = hg.audit_for(body["error"]["request_id"])
    assert rec["status"] == 429 and rec["forwarded"] is False, rec
    assert rec["error"]["code"] == "THROTTLED", rec
    # a retry already under way when the request gave up may still land: compare once settled
    wait_until(lambda: throttled_total(hg, "GetFindings")
               == quota_fake.op_stats("GetFindings")["throttled"], 5,
               "hubgate's throttle count to match the fake's")


def test_boto3_member_call_succeeds_through_throttled_lookups(pair, quota_fake):
    """Two throttled GetFindings: hubgate retries them itself, or answers 429 and boto3's
    standard retry mode backs off and tries again. Either way the caller sees success, and
    every attempt has its audit record."""
    hg = pair()
    quota_fake.throttle_next(GetFindings=2)
    resp = retrying_client(hg).batch_update_findings(**severity("f-own-high", "CRITICAL"))
    assert resp["ProcessedFindings"] == [ident("f-own-high")]
    assert resp["UnprocessedFindings"] == []
    assert quota_fake.findings()["f-own-high"]["Severity"]["Label"] == "CRITICAL"

    gf = quota_fake.op_stats("GetFindings")
    assert gf == {"calls": 3, "throttled": 2}, gf
    assert quota_fake.op_stats("BatchUpdateFindings")["calls"] == 1

    hg.audit_for(decision_id_of_boto(resp))
    records = hg.audit_records()
    assert len(records) == resp["ResponseMetadata"]["RetryAttempts"] + 1, records
    *retried, last = records
    assert last["status"] == 200 and last["forwarded"] is True, last
    for rec in retried:  # a throttle boto3 retried: 429 THROTTLED, nothing forwarded
        assert rec["status"] == 429 and rec["error"]["code"] == "THROTTLED", rec
        assert rec["throttled"] is True and rec["forwarded"] is False, rec
    assert sum(r["metrics"]["counter_lookup_calls"] for r in records) == gf["calls"]


def test_audit_says_throttled_and_counts_the_failed_lookup_calls(pair, quota_fake):
    hg = pair({"quota": {"max_wait_ms": 1000}})
    ok = hg.buf(note("f-own-medium"), who="member")
    assert ok.status == 200, ok.text
    ok_rec = hg.audit_for(ok.headers["x-hubgate-decision-id"])
    assert ok_rec["throttled"] is False, ok_rec
    assert ok_rec["metrics"]["counter_lookup_calls"] == 1, ok_rec

    quota_fake.throttle_next(GetFindings=1000)
    before = quota_fake.op_stats("GetFindings")["calls"]
    resp = hg.buf(note("f-own-high"), who="member")
    assert_envelope(resp, 429, "THROTTLED", "ThrottlingException")
    made = quota_fake.op_stats("GetFindings")["calls"] - before
    assert made >= 1
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["throttled"] is True, rec
    assert rec["metrics"]["counter_lookup_calls"] == made, (rec["metrics"], made)
    assert rec["forwarded"] is False and rec["status"] == 429, rec


def test_own_pacing_that_runs_out_of_time_is_429_throttled(pair, quota_fake):
    """hubgate's own GetFindings bucket (1 token, then one per 5 s) is empty: the second request
    waits max_wait_ms for a token, gets 429 THROTTLED and Security Hub sees no call for it."""
    hg = pair({"quota": {"max_wait_ms": 300},
               "quota.limits": {"GetFindings": {"rate": 0.2, "burst": 1}}})
    assert hg.buf(note("f-own-high"), who="member").status == 200
    resp = hg.buf(note("f-own-medium"), who="member")
    assert_envelope(resp, 429, "THROTTLED", "ThrottlingException")
    assert quota_fake.op_stats("GetFindings") == {"calls": 1, "throttled": 0}
    assert len(quota_fake.buf_calls()) == 1
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["throttled"] is True and rec["forwarded"] is False, rec
    assert rec["metrics"]["counter_lookup_calls"] == 0, rec


# ---------------------------------------------------------------------------
# pacing


def test_pacing_keeps_four_concurrent_callers_under_the_get_findings_quota(pair, quota_fake):
    """4 callers x 5 member updates of 20 distinct findings: 20 GetFindings at 3/s burst 6.
    hubgate, paced at the fake's own quota, is never throttled by it."""
    hg = pair({"quota": {"max_wait_ms": 10000},
               "quota.limits": {"GetFindings": {"rate": 3.0, "burst": 6},
                                "BatchUpdateFindings": {"rate": 10.0, "burst": 30}}})
    ids = [f"q-{i:03d}" for i in range(400)]
    quota_fake.add_findings([finding(i, MEMBER_ACCOUNT, "HIGH") for i in ids])
    errors, done = [], []

    def worker(w: int):
        client = retrying_client(hg)
        try:
            for k in range(5):
                start = (w * 5 + k) * 20
                resp = client.batch_update_findings(**note(*ids[start:start + 20]))
                assert len(resp["ProcessedFindings"]) == 20, resp
                done.append(resp)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not any(t.is_alive() for t in threads), "callers still running after 40 s"
    assert errors == [] and len(done) == 20, errors

    gf = quota_fake.op_stats("GetFindings")
    assert gf["throttled"] == 0, f"Security Hub throttled hubgate's lookups: {gf}"
    assert 20 <= gf["calls"] <= 24, f"400 ids need 20 GetFindings of 20 ids: {gf}"
    buf = quota_fake.op_stats("BatchUpdateFindings")
    assert buf["throttled"] == 0 and buf["findings_processed"] == 400, buf
    assert all(quota_fake.findings()[i]["Note"]["Text"] == "triaged" for i in ids)


def pace_of(hg, operation: str) -> float | None:
    """hubgate_quota_pace{operation} from /metrics (None: never throttled)."""
    for family in text_string_to_metric_families(hg.admin("/metrics").text):
        for s in family.samples:
            if s.name == "hubgate_quota_pace" and s.labels.get("operation") == operation:
                return s.value
    return None


def test_pacing_slows_down_when_another_client_spends_part_of_the_quota(pair, quota_fake):
    """Another client of the account spends two thirds of the GetFindings quota: the fake
    leaves hubgate 1 call/s (burst 2) of the 3/s it paces to. hubgate halves its pace at the
    first throttle, and again while throttles keep coming, so most of its lookups go through
    the first time, and a retry waits a slowed interval instead of meeting the empty bucket
    again; paced at the full 3/s, two calls in three were throttled. Every update still
    succeeds."""
    quota_fake.quota_on(GetFindings=(1.0, 2), BatchUpdateFindings=(50.0, 50))
    hg = pair({"quota": {"max_wait_ms": 10000},
               "quota.limits": {"GetFindings": {"rate": 3.0, "burst": 6}}})
    ids = [f"s-{i:03d}" for i in range(200)]
    quota_fake.add_findings([finding(i, MEMBER_ACCOUNT, "HIGH") for i in ids])
    assert pace_of(hg, "GetFindings") is None
    client = retrying_client(hg)
    for k in range(10):
        resp = client.batch_update_findings(**note(*ids[k * 20:(k + 1) * 20]))
        assert len(resp["ProcessedFindings"]) == 20, resp
    gf = quota_fake.op_stats("GetFindings")
    # Measured: 14 calls, 4 throttled (two of them in the first second, before the first
    # halving has taken effect); paced at the full rate, 30 calls and 20 throttled.
    assert 10 <= gf["calls"] <= 18, f"lookups retried too often: {gf}"
    assert gf["throttled"] <= 0.4 * gf["calls"], f"throttled too often: {gf}"
    pace = pace_of(hg, "GetFindings")
    assert pace is not None and pace < 1.0, pace
    # BatchUpdateFindings was never throttled, so it is paced at its full rate.
    assert pace_of(hg, "BatchUpdateFindings") is None


SECOND_MEMBER = Creds("HGTESTMEMBER00000002", "second-member-secret")
TWO_MEMBERS = CALLERS_TOML + f"""
[[caller]]
id = "member-b"
account_id = "{OTHER_ACCOUNT}"
role = "member"
access_key_id = "{SECOND_MEMBER.access_key}"
secret_access_key = "{SECOND_MEMBER.secret_key}"
"""


def two_member_gate(pair, quota_fake):
    """hubgate with a second member account (OTHER_ACCOUNT), both paced at 10 GetFindings/s."""
    quota_fake.quota_on(GetFindings=(10.0, 3), BatchUpdateFindings=(50.0, 50))
    return pair({"quota": {"max_wait_ms": 20000},
                 "quota.limits": {"GetFindings": {"rate": 10.0, "burst": 2},
                                  "BatchUpdateFindings": {"rate": 50.0, "burst": 50}}},
                callers_toml=TWO_MEMBERS)


def noting(hg, creds, ids, name, finished, errors):
    """A thread adding a note to ids as creds, no retries; records when it finished. The client
    is made here, before the thread starts: making one takes longer than a GetFindings call,
    and the tests count the calls that go out before a request reaches hubgate."""
    client = boto3.session.Session().client(
        "securityhub", endpoint_url=hg.url, region_name=REGION,
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
        config=Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=30))

    def run():
        try:
            client.batch_update_findings(**note(*ids))
            finished[name] = time.monotonic()
        except ClientError as e:
            errors.append((name, e.response["Error"]["Code"]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((name, repr(e)))
    return threading.Thread(target=run)


def calls_naming(quota_fake, ids) -> tuple[list[set], list[int]]:
    """The Ids of every GetFindings call, and the positions of those naming any of ids."""
    asked = [{f["Value"] for f in call["Filters"]["Id"]}
             for call in quota_fake.get_findings_calls()]
    return asked, [n for n, named in enumerate(asked) if named & set(ids)]


def start_backlog(hg, quota_fake, n_bulk: int, finished: dict, errors: list):
    """Seeds n_bulk of A's findings and 20 of B's (`late`), starts A's updates of its own in
    100s, and returns (bulk ids, late ids, A's threads) once A's lookups are under way."""
    bulk = [f"bulk-{i:03d}" for i in range(n_bulk)]
    late = [f"late-{i:03d}" for i in range(20)]
    quota_fake.add_findings([finding(i, MEMBER_ACCOUNT, "HIGH") for i in bulk]
                            + [finding(i, OTHER_ACCOUNT, "HIGH") for i in late])
    threads = [noting(hg, CALLERS["member"], bulk[k:k + 100], f"a{k}", finished, errors)
               for k in range(0, n_bulk, 100)]
    for t in threads:
        t.start()
    wait_until(lambda: len(quota_fake.get_findings_calls()) >= 3, 10,
               "A's lookups to be under way")
    return bulk, late, threads


def test_a_bulk_job_does_not_hold_another_accounts_lookups_behind_its_backlog(
        pair, quota_fake):
    """Member account A queues 500 lookups (5 concurrent updates of 100 findings: 25
    GetFindings); member account B then updates 20 of its own. Accounts take turns batch by
    batch, so B's GetFindings goes out within two calls of arriving, not after A's backlog, and
    B is answered while A's job is still running."""
    hg = two_member_gate(pair, quota_fake)
    errors, finished = [], {}
    bulk, late, threads = start_backlog(hg, quota_fake, 500, finished, errors)
    # the backlog is visible: hundreds of A's findings queued, one account waiting
    assert gauge(hg, "hubgate_enrichment_queued_findings") >= 100
    assert gauge(hg, "hubgate_enrichment_queued_callers") == 1
    b = noting(hg, SECOND_MEMBER, late, "b", finished, errors)
    calls_before = len(quota_fake.get_findings_calls())
    b.start()
    for t in threads + [b]:
        t.join(40)
    assert not any(t.is_alive() for t in threads + [b]), "updates still running after 40 s"
    assert errors == [], errors

    asked, b_calls = calls_naming(quota_fake, late)
    assert b_calls and set().union(*(asked[n] for n in b_calls)) >= set(late), asked
    assert all(asked[n] <= set(late) for n in b_calls), "a batch holds one account's findings"
    assert b_calls[0] <= calls_before + 3, (
        f"B's lookup was call {b_calls[0]} of {len(asked)}; {calls_before} had gone out when B "
        "arrived: it waited behind A's backlog")
    assert finished["b"] < max(v for k, v in finished.items() if k != "b"), finished
    assert quota_fake.op_stats("GetFindings")["throttled"] == 0
    assert all(quota_fake.findings()[i]["Note"]["Text"] == "triaged" for i in bulk + late)
    assert gauge(hg, "hubgate_enrichment_queued_findings") == 0
    assert gauge(hg, "hubgate_enrichment_queued_callers") == 0


def test_a_finding_another_account_queued_is_queued_in_the_askers_turn_too(pair, quota_fake):
    """Review 30, F2. Account A, with a backlog, names B's 20 findings at its tail (A's request
    is refused, but only after the lookups it needs). B's update of the same findings shares
    A's queued lookups, and used to be served in A's turn, behind A's whole backlog: the
    findings are now queued in B's turn too, and the first turn to come looks them up once."""
    hg = two_member_gate(pair, quota_fake)
    errors, finished = [], {}
    bulk, late, threads = start_backlog(hg, quota_fake, 400, finished, errors)
    naming_b = noting(hg, CALLERS["member"], late, "a-names-b", finished, errors)
    b = noting(hg, SECOND_MEMBER, late, "b", finished, errors)
    naming_b.start()
    time.sleep(0.05)
    calls_before = len(quota_fake.get_findings_calls())
    b.start()
    for t in threads + [naming_b, b]:
        t.join(40)
    assert not any(t.is_alive() for t in threads + [naming_b, b])
    assert errors == [("a-names-b", "AccessDeniedException")], errors

    asked, b_calls = calls_naming(quota_fake, late)
    # Behind A's backlog it was call 20 of 21.
    assert b_calls[0] <= calls_before + 3, (
        f"B's findings went out in call {b_calls[0]} of {len(asked)}; {calls_before} had gone "
        "out when B was sent: B waited behind A's backlog")
    assert len(b_calls) == 1, f"B's findings were looked up once, not once per queue: {b_calls}"
    assert all(quota_fake.findings()[i]["Note"]["Text"] == "triaged" for i in bulk + late)


# ---------------------------------------------------------------------------
# the cache: written through on success, untouched on a throttled forward


def test_forwarded_update_is_written_through_to_the_cache(pair, quota_fake):
    """The member raises HIGH to CRITICAL; someone outside hubgate then sets MEDIUM. Within the
    cache TTL the next decision judges the written-through CRITICAL from the cache (no lookup):
    HIGH is a lowering. A stale cache (HIGH) or a fresh lookup (MEDIUM) would allow it."""
    hg = pair(CACHED)
    raised = hg.buf(severity("f-own-high", "CRITICAL"), who="member")
    assert raised.status == 200, raised.text
    first = hg.audit_for(raised.headers["x-hubgate-decision-id"])
    assert first["metrics"]["counter_lookup_calls"] == 1, first
    assert quota_fake.findings()["f-own-high"]["Severity"]["Label"] == "CRITICAL"

    quota_fake.add_findings([finding("f-own-high", MEMBER_ACCOUNT, "MEDIUM", 45)])
    resp = hg.buf(severity("f-own-high", "HIGH"), who="member")
    assert resp.status == 403, resp.text
    assert f"{LOWER} (CRITICAL to HIGH)" in resp.json()["error"]["message"], resp.text
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["metrics"]["counter_cache_hits"] == 1, rec["metrics"]
    assert rec["metrics"]["counter_lookup_calls"] == 0, rec["metrics"]
    assert quota_fake.op_stats("GetFindings")["calls"] == 1


def test_a_lookup_overlapping_another_findings_write_is_still_cached(pair, quota_fake):
    """Two member requests on different findings overlap: B's lookup is in flight when A's
    update is written through. What B read is still cached (no write touched B's findings), so
    B's next request makes no lookup. Before, any write during a lookup dropped its answers."""
    hg = pair(CACHED)
    a = [f"ovl-a-{i}" for i in range(5)]
    b = [f"ovl-b-{i}" for i in range(5)]
    quota_fake.add_findings([finding(f, MEMBER_ACCOUNT, "HIGH", 70) for f in a + b])
    # Each Security Hub call takes 1 s: A looks up (0-1 s) and updates (1-2 s); B, sent at
    # 1.3 s, looks up from 1.3 s to 2.3 s, across A's write-through at 2 s.
    quota_fake.configure(delay_ms=1000)
    answers = {}

    def send(name, ids, after):
        time.sleep(after)
        answers[name] = hg.buf(note(*ids), who="member")

    threads = [threading.Thread(target=send, args=("a", a, 0)),
               threading.Thread(target=send, args=("b", b, 1.3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {k: r.status for k, r in answers.items()} == {"a": 200, "b": 200}, answers
    rec_a = hg.audit_for(answers["a"].headers["x-hubgate-decision-id"])
    rec_b = hg.audit_for(answers["b"].headers["x-hubgate-decision-id"])
    # both looked up, and A's two calls took the 2 s the overlap above counts on
    assert rec_b["metrics"]["counter_lookup_calls"] == 1, rec_b["metrics"]
    assert rec_a["metrics"]["timer_total_ns"] > 1.9e9, rec_a["metrics"]

    quota_fake.configure(delay_ms=0)
    calls = quota_fake.op_stats("GetFindings")["calls"]
    again = hg.buf(note(*b, text="second pass"), who="member")
    assert again.status == 200, again.text
    rec = hg.audit_for(again.headers["x-hubgate-decision-id"])
    assert rec["metrics"]["counter_cache_hits"] == 5, rec["metrics"]
    assert rec["metrics"]["counter_lookup_calls"] == 0, rec["metrics"]
    assert quota_fake.op_stats("GetFindings")["calls"] == calls


def test_throttled_forward_leaves_the_cache_unchanged(pair, quota_fake):
    """Security Hub throttles the member's raise to CRITICAL: 429 THROTTLED, nothing applied.
    The fake is then set to CRITICAL behind hubgate's back. Asking for HIGH again is allowed
    only if the cache still holds HIGH: a written-through cache (CRITICAL) or a fresh lookup
    (CRITICAL) would call it a lowering."""
    hg = pair(CACHED)
    quota_fake.throttle_next(BatchUpdateFindings=1)
    resp = hg.buf(severity("f-own-high", "CRITICAL"), who="member")
    assert_envelope(resp, 429, "THROTTLED", "ThrottlingException")
    assert quota_fake.op_stats("BatchUpdateFindings") == {
        "calls": 1, "throttled": 1, "findings_processed": 0, "findings_unprocessed": 0}
    assert quota_fake.findings()["f-own-high"]["Severity"]["Label"] == "HIGH"
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["throttled"] is True and rec["status"] == 429, rec
    assert rec["upstream_status"] == 429, rec
    assert rec["metrics"]["counter_lookup_calls"] == 1, rec["metrics"]
    assert throttled_total(hg, "BatchUpdateFindings") == 1

    quota_fake.add_findings([finding("f-own-high", MEMBER_ACCOUNT, "CRITICAL", 90)])
    again = hg.buf(severity("f-own-high", "HIGH"), who="member")
    assert again.status == 200, again.text
    rec = hg.audit_for(again.headers["x-hubgate-decision-id"])
    assert rec["metrics"]["counter_cache_hits"] == 1, rec["metrics"]
    assert rec["metrics"]["counter_lookup_calls"] == 0, rec["metrics"]
    assert rec["throttled"] is False, rec
    assert quota_fake.op_stats("GetFindings")["calls"] == 1


# ---------------------------------------------------------------------------
# look up only what the decision needs


@pytest.mark.parametrize("change", [
    pytest.param({"Note": {"Text": "seen by the SOC", "UpdatedBy": "admin"}}, id="note"),
    pytest.param({"Workflow": {"Status": "NOTIFIED"}}, id="status"),
])
def test_admin_update_makes_no_lookup(pair, quota_fake, change):
    hg = pair()
    body = {"FindingIdentifiers": [ident("f-own-high"), ident("f-other"), ident("f-admin")],
            **change}
    resp = hg.buf(body, who="admin")
    assert resp.status == 200, resp.text
    assert len(resp.json()["ProcessedFindings"]) == 3
    assert quota_fake.op_stats("GetFindings")["calls"] == 0
    assert quota_fake.get_findings_calls() == []
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["metrics"]["counter_lookup_calls"] == 0, rec["metrics"]
    assert rec["forwarded"] is True and rec["throttled"] is False, rec


# ---------------------------------------------------------------------------
# The audit record stays smaller than the request it records


@pytest.mark.parametrize("label, status", [("CRITICAL", 200), ("LOW", 403)])
@pytest.mark.parametrize("id_form", ["short", "arn"])
def test_a_100_finding_record_is_no_larger_than_its_request(pair, quota_fake, label, status,
                                                            id_form):
    """The record holds the input once and lists the findings once (grouped by product), not
    with their looked-up state, and a refusal names its findings by their place in that list,
    one entry per message: allowed or refused, a 100-finding record is no larger than the
    request body, with short identifiers and with Security Hub's 150-character ARNs."""
    hg = pair(CACHED)
    if id_form == "short":
        ids = [f"size-{i:03d}" for i in range(100)]
    else:
        ids = [f"arn:aws:securityhub:us-east-1:{MEMBER_ACCOUNT}:subscription/aws-foundational-"
               f"security-best-practices/v/1.0.0/S3.1/finding/{uuid.UUID(int=i)}"
               for i in range(100)]
    quota_fake.add_findings([finding(i, MEMBER_ACCOUNT, "HIGH", 70) for i in ids])
    request = {"FindingIdentifiers": [ident(i) for i in ids], "Severity": {"Label": label},
               "Note": {"Text": "bulk triage of the quarter", "UpdatedBy": "soar"}}
    # the compact form: the least a client can send for this request
    body_bytes = len(json.dumps(request, separators=(",", ":")).encode())
    client = retrying_client(hg, max_attempts=1)
    if status == 200:
        assert client.batch_update_findings(**request)["UnprocessedFindings"] == []
    else:
        with pytest.raises(ClientError) as e:
            client.batch_update_findings(**request)
        assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    wait_until(lambda: any(r.get("operation") == "BatchUpdateFindings"
                           for r in hg.audit_records()), 10, "the audit record")
    lines = [line for line in hg.audit_path.read_bytes().splitlines()
             if b'"BatchUpdateFindings"' in line]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["status"] == status
    assert record["metrics"]["counter_lookup_calls"] == 5
    assert sorted(record["findings"][0]["Ids"]) == sorted(ids)
    assert "findings" not in record["input"], "the findings are listed once"
    violations = record["result"]["violations"]
    if status == 200:
        assert violations == []
    else:
        # one entry for the one reason, naming all 100 findings
        assert [v["msg"] for v in violations] == [
            "member accounts may not lower a finding's severity (HIGH to LOW)"], violations
        assert sorted(f["Id"] for f in named_findings(record, violations[0])) == sorted(ids)
    assert len(lines[0]) <= body_bytes, (len(lines[0]), body_bytes)
