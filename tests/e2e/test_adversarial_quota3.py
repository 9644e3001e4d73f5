"""Adversarial review (quota, pacing and throttling, third round; one replica, no Redis).

- HOLE (fixed): the lookup queue took turns per account: a playbook with its own keys in a
  member account, adding a note to one finding, waited behind the whole backlog of a bulk
  job another principal of the same account had queued (1.7 s at 10 GetFindings a second,
  until the bulk requests ran out of max_wait_ms; behind a job that kept sending, 429). Turns
  are now per caller (principal), as the quota's lines are.
- HOLE (fixed): a lookup waiting for quota to retry after a 5xx, or for its next page, was
  counted as a call out to Security Hub: a request whose deadline came then was answered 504
  UPSTREAM_TIMEOUT "Security Hub did not answer within 1500 ms" (Security Hub had answered
  a 500, or a first page, in milliseconds; hubgate was pacing). It is 429 THROTTLED now. And
  the next page was still sent once its quota came, for nobody (the retry path checked, the
  page path did not).
- HOLE (fixed): quota.max_wait_ms = 0 was valid, and then every request that needed a lookup
  was refused 429 "had no room within 0 ms" with the quota full (the wait was over before the
  lookup queue was served: no GetFindings call was made), retried by SDKs for ever. `hubgate
  check` now refuses anything under 100 ms.
- Held: a lookup retried after a 5xx waits for its token and is counted in the record's
  lookup calls; a forward's 5xx is relayed as it came and never sent again by hubgate.
- Held (measured by hand, not kept as a test for CI's time): six boto3 callers with standard
  retries (max_attempts 3) sending twelve 100-finding member updates at once through hubgate
  to the fake in quota mode: 1200 findings applied in 19 s, 60 GetFindings calls (the
  minimum), 0 throttled by the fake, 0 caller errors, 0 SDK retries.
- Held (by reading, round 2 checked by hand): rates of 1e-300 and 1e12, burst 1, and a share
  whose burst rounds below 1 all pace (a burst of at least 1, an interval between 1 ns and
  1e6 s), without panic.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from helpers import (CALLERS_TOML, MEMBER_ACCOUNT, POLICY_DIR, Creds, assert_envelope, finding,
                     ident, run_hubgate)
from test_adversarial_upstream import NOTE, Quirky, quirky, upd  # noqa: F401 (fixture)

SAME_ACCOUNT_MEMBER = Creds("HGTESTMEMBER00000003", "same-account-member-secret")
SAME_ACCOUNT = CALLERS_TOML + f"""
[[caller]]
id = "member-playbook"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
access_key_id = "{SAME_ACCOUNT_MEMBER.access_key}"
secret_access_key = "{SAME_ACCOUNT_MEMBER.secret_key}"
"""


def test_a_bulk_job_does_not_hold_another_caller_of_its_account_behind_its_backlog(
        make_fake, make_hubgate):
    """Principal "member" of account 222222222222 runs a bulk raise: six requests of 100 of
    its own findings, 30 GetFindings calls paced at 10 a second (3 s). Meanwhile a playbook
    with its own keys in the same account adds a note to one finding. Its lookup must take a
    turn beside the bulk job's (the next call or the one after), not wait for the whole
    backlog: queued per account, it waited until the bulk requests ahead of it had run out of
    max_wait_ms (2 s) themselves, 1.7 s, and behind a bulk job that kept sending (SDK workers
    retrying) it ran out of max_wait_ms too (429)."""
    fake = make_fake()
    bulk = [[f"f-bulk-{j}-{i}" for i in range(100)] for j in range(6)]
    fake.add_findings([finding(fid, MEMBER_ACCOUNT, "HIGH", 70) for ids in bulk for fid in ids])
    fake.add_findings([finding("f-playbook", MEMBER_ACCOUNT, "HIGH", 70)])
    hg = make_hubgate({"quota": {"max_wait_ms": 2000, "limits": {
        "GetFindings": {"rate": 10, "burst": 2}}}}, fake=fake, callers_toml=SAME_ACCOUNT)
    answered = []

    def raise_all(ids):
        answered.append(hg.buf({"FindingIdentifiers": [ident(f) for f in ids],
                                "Severity": {"Label": "CRITICAL"}}, who="member").status)
    threads = [threading.Thread(target=raise_all, args=(ids,), daemon=True) for ids in bulk]
    for t in threads:
        t.start()
    time.sleep(0.4)
    started = time.monotonic()
    resp = hg.buf({"FindingIdentifiers": [ident("f-playbook")],
                   "Note": {"Text": "triaged", "UpdatedBy": "playbook"}},
                  creds=SAME_ACCOUNT_MEMBER)
    elapsed = time.monotonic() - started
    for t in threads:
        t.join(10)
    assert resp.status == 200, (resp.text, round(elapsed, 2))
    # two calls at 10 a second, with room for a loaded machine
    assert elapsed < 1.0, f"the playbook's note waited {elapsed:.1f}s behind the bulk job"
    assert fake.findings()["f-playbook"]["Note"]["Text"] == "triaged"
    # the bulk job itself is not starved either: its first requests went through
    assert 200 in answered, answered


def _first_call_5xx(calls):
    def on_get(_req, _default):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return 500, {"x-amzn-ErrorType": "InternalException"}, b'{"message": "boom"}'
        return None
    return on_get


def _two_pages(calls):
    def on_get(req, default):
        calls.append(time.monotonic())
        if not req.get("NextToken"):
            return 200, {}, json.dumps({"Findings": [], "NextToken": "page-2"}).encode()
        return None
    return on_get


@pytest.mark.parametrize("script", [_first_call_5xx, _two_pages], ids=["retry-after-5xx",
                                                                       "next-page"])
def test_a_lookup_waiting_for_quota_at_the_deadline_is_429_not_504(quirky, make_hubgate,
                                                                   script):
    """GetFindings paced at one call per 2 s; the member's note needs one lookup, which
    Security Hub answers at once: with a 500 (hubgate retries it), or with a first page that
    has a NextToken. The next call waits for quota past max_wait_ms (1.5 s): the request ran
    out of quota (429 THROTTLED, which SDKs back off on), it was not Security Hub that "did
    not answer within 1500 ms" (504). Nothing is sent for it once it has gone."""
    calls = []
    quirky.on_get = script(calls)
    hg = make_hubgate({"upstream": {"timeout_ms": 1000}, "quota": {"max_wait_ms": 1500, "limits": {
        "GetFindings": {"rate": 0.5, "burst": 2}}}}, upstream_endpoint=quirky.endpoint)
    started = time.monotonic()
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    body = assert_envelope(resp, 429, "THROTTLED", "ThrottlingException")
    assert "GetFindings quota" in body["error"]["message"], body
    rec = hg.audit_for(body["error"]["request_id"])
    assert rec["status"] == 429 and rec["forwarded"] is False, rec
    assert rec["metrics"]["counter_lookup_calls"] == 1, rec["metrics"]
    # the next call's quota comes 2 s after the first: nothing is sent for nobody then
    time.sleep(max(0.0, 2.4 - (time.monotonic() - started)))
    assert len(calls) == 1, [round(c - started, 2) for c in calls]
    assert quirky.count("/findings/batchupdate") == 0


def test_check_refuses_a_max_wait_too_short_for_any_lookup(tmp_path):
    """quota.max_wait_ms = 0 was valid: every member request was then 429 "hubgate's
    GetFindings quota (3/s) had no room within 0 ms" with the quota full (the wait was over
    before the lookup queue was served, so no GetFindings call was ever made), and SDKs
    retried it for ever. `hubgate check` must refuse it (and anything under 100 ms)."""
    (tmp_path / "callers.toml").write_text("")
    results = {}
    for ms in (0, 50, 100):
        cfg = tmp_path / f"wait{ms}.toml"
        cfg.write_text(
            '[server]\nlisten = "127.0.0.1:1"\nadmin_listen = "127.0.0.1:2"\n'
            '[upstream]\nendpoint = "http://127.0.0.1:3"\nregion = "us-east-1"\n'
            '[identity]\nmode = "sigv4"\ncallers = "callers.toml"\n'
            f'[policy]\ndir = "{POLICY_DIR}"\n[audit]\nsink = "stdout"\n'
            f'[quota]\nmax_wait_ms = {ms}\n')
        results[ms] = run_hubgate("check", "--config", str(cfg))
    for ms in (0, 50):
        r = results[ms]
        assert r.returncode != 0, (ms, r.stdout, r.stderr)
        assert "quota.max_wait_ms" in r.stderr, r.stderr
    assert results[100].returncode == 0, results[100].stderr


def test_a_lookup_retried_after_a_5xx_is_paced_and_counted(quirky, make_hubgate):
    """Held: GetFindings paced at 2 calls a second, burst 1 (after the call of headroom).
    Security Hub answers the first lookup 500: the retry waits for its token (0.5 s after the
    first call), the note is allowed, and the record counts both calls."""
    calls = []
    quirky.on_get = _first_call_5xx(calls)
    hg = make_hubgate({"quota": {"max_wait_ms": 3000, "limits": {
        "GetFindings": {"rate": 2, "burst": 2}}}}, upstream_endpoint=quirky.endpoint)
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert resp.status == 200, resp.text
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.45, calls
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["metrics"]["counter_lookup_calls"] == 2, rec["metrics"]


def test_a_forwards_5xx_is_relayed_and_never_sent_again(quirky, make_hubgate):
    """Held: a write Security Hub answers 500 may have been applied; hubgate relays the 500
    (SDKs retry it, decided anew) and does not send it again itself."""
    quirky.on_update = lambda _req: (500, {"x-amzn-ErrorType": "InternalException"},
                                     b'{"message": "internal"}')
    hg = make_hubgate({}, upstream_endpoint=quirky.endpoint)
    resp = hg.buf(upd("f-admin", Note=NOTE), who="admin")
    assert resp.status == 500, resp.text
    time.sleep(0.5)
    assert quirky.count("/findings/batchupdate") == 1


def test_a_retry_sent_after_a_throttle_that_security_hub_is_slow_to_answer_is_504(
        quirky, make_hubgate):
    """Security Hub throttles the member's lookup (429), hubgate retries it with quota to spare,
    and Security Hub then holds the retry past the request's wait (max_wait_ms 1.5 s, the call's
    own timeout 4 s). The request ran out of time waiting for Security Hub, not for quota: 504
    UPSTREAM_TIMEOUT, as for any slow answer. It was 429 THROTTLED, because the batch stayed
    marked throttled after its retry was sent, and SDKs backed off for a quota that had room.
    The record still says the lookup was throttled, and counts both calls."""
    calls = []

    def throttle_then_stall(_req, _default):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return 429, {"x-amzn-ErrorType": "TooManyRequestsException"}, \
                b'{"__type": "TooManyRequestsException", "message": "Rate exceeded"}'
        time.sleep(3)
        return None

    quirky.on_get = throttle_then_stall
    hg = make_hubgate({"upstream": {"timeout_ms": 4000}, "quota": {"max_wait_ms": 1500}},
                      upstream_endpoint=quirky.endpoint)
    started = time.monotonic()
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert time.monotonic() - started < 3
    body = assert_envelope(resp, 504, "UPSTREAM_TIMEOUT", "InternalException")
    assert len(calls) == 2, calls
    rec = hg.audit_for(body["error"]["request_id"])
    assert rec["status"] == 504 and rec["forwarded"] is False, rec
    assert rec["throttled"] is True, rec
    assert rec["metrics"]["counter_lookup_calls"] == 2, rec["metrics"]
    assert quirky.count("/findings/batchupdate") == 0
