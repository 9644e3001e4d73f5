"""Adversarial review (quota, pacing and throttling, second round; one replica, no Redis).

- HOLE (fixed): a GetFindings lookup throttled in a spelling hubgate did not know was a 502
  UPSTREAM_UNAVAILABLE at once: HTTP 503 `SlowDown`, `BandwidthLimitExceeded` (and the rest of
  botocore's throttling codes hubgate's list left out), or a 400 whose body alone names the
  throttle (`{"__type": "...#ThrottlingException"}`, read by SDKs when `x-amzn-ErrorType` is
  absent). No retry within quota.max_wait_ms, no slowing down, not `throttled` in the record,
  and SDKs retried it as a server fault. It is now retried like any throttle (then 429
  THROTTLED).
- HOLE (fixed): a `quota.limits.<Operation>.rate` too high for a nanosecond period (1e12, to
  leave a local emulator unpaced) made governor's period zero, and the bucket fell back to one
  call a second: the higher the rate configured, the slower hubgate paced, and requests past
  the burst got 429. `hubgate check` called the configuration valid.
- HOLE (fixed): a client that went away while its request waited for quota (an SDK's read
  timeout, a Lambda's) still had its write forwarded when the quota came, up to
  quota.max_wait_ms later, next to the retry it had sent: the write applied twice, the
  account's quota spent for nobody, and the caller's place in line held meanwhile. It now
  stops waiting at once, sends nothing, and is recorded as 499 CLIENT_ABORTED.
- HOLE (fixed, session 48): a client that went away while its decision waited for lookups
  (a member's 60-finding raise, three GetFindings calls paced one per 2 s) kept its request
  waiting until every lookup was made: the calls still queued were sent for nobody, spending
  the account's GetFindings quota (3 a second, shared by every caller). Its decision now stops
  waiting when the client goes, and the lookups nobody else waits for are dropped unsent.
- Held: a lookup throttled with HTTP 429 and an empty or HTML body is retried, then allowed.
- Held (checked by hand): `hubgate check` refuses a rate of nan, inf, 0 or below, and a burst
  of 0; a rate of 1e-300 is valid and paces (429 past the burst), without panic or division
  by zero.
"""

from __future__ import annotations

import time

import pytest

from helpers import MEMBER_ACCOUNT, finding, ident, wait_until
from test_adversarial_upstream import NOTE, Quirky, quirky, upd  # noqa: F401 (fixture)
from test_client_abort import send_and_hang_up


@pytest.mark.parametrize("status,headers,body", [
    (503, {"x-amzn-ErrorType": "SlowDown"}, b'{"message": "Please reduce your request rate."}'),
    (400, {"x-amzn-ErrorType": "BandwidthLimitExceeded"}, b'{"message": "Rate exceeded"}'),
    (400, {}, b'{"__type": "com.amazonaws.securityhub#ThrottlingException", '
              b'"message": "Rate exceeded"}'),
    # held
    (429, {"Content-Type": "text/html"}, b"<html><body>Too Many Requests</body></html>"),
    (429, {}, b""),
], ids=["503-SlowDown", "BandwidthLimitExceeded", "body-__type", "429-html", "429-empty"])
def test_a_lookup_throttled_in_any_spelling_sdks_know_is_retried(quirky, make_hubgate,
                                                                 status, headers, body):
    """The member's note needs its finding's state; Security Hub throttles the first
    GetFindings, then answers. hubgate must retry it within max_wait_ms and allow the note,
    recording the throttle, not answer 502 at the first throttle it cannot spell."""
    throttled = []

    def once(_req, _default):
        if not throttled:
            throttled.append(1)
            return status, headers, body
        return None

    quirky.on_get = once
    hg = make_hubgate({"upstream": {"timeout_ms": 1000}, "quota": {"max_wait_ms": 4000}},
                      upstream_endpoint=quirky.endpoint)
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert resp.status == 200, resp.text
    assert quirky.count("/findings") == 2
    assert quirky.count("/findings/batchupdate") == 1
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["throttled"] is True, rec
    assert rec["metrics"]["counter_lookup_calls"] == 2, rec["metrics"]


def test_a_rate_too_fast_to_space_calls_is_not_paced_at_one_a_second(make_fake, make_hubgate):
    """rate = 1e12 (an SRE leaving a local emulator unpaced) with a burst of 3: eight
    administrator notes in a row must all pass within max_wait_ms (300 ms)."""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 300, "limits": {
        "BatchUpdateFindings": {"rate": 1e12, "burst": 3}}}}, fake=fake)
    statuses = [hg.buf(upd("f-admin", Note=NOTE), who="admin").status for _ in range(8)]
    assert statuses == [200] * 8
    assert len(fake.buf_calls()) == 8


def test_a_client_that_leaves_while_waiting_for_quota_has_nothing_sent(make_fake,
                                                                       make_hubgate):
    """BatchUpdateFindings paced at one call per 2 s, burst 1: the administrator's first note
    takes the call; the second waits for quota, and its client hangs up 0.2 s in. Nothing
    must reach Security Hub for it, its wait must end then (not when the quota comes), and it
    is recorded as 499 CLIENT_ABORTED, not forwarded."""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 3000, "limits": {
        "BatchUpdateFindings": {"rate": 0.5, "burst": 2}}}}, fake=fake)
    first = hg.buf(upd("f-admin", Note=NOTE), who="admin")
    assert first.status == 200, first.text
    left = time.monotonic()
    send_and_hang_up(hg, upd("f-admin", Note=NOTE), "admin", 0.2)

    def aborted():
        return [r for r in hg.audit_records() if r["status"] != 200]
    rec = wait_until(aborted, 5, "the departed request's record")[0]
    recorded_after = time.monotonic() - left
    assert rec["status"] == 499 and rec["forwarded"] is False, rec
    assert rec["error"]["code"] == "CLIENT_ABORTED", rec
    assert recorded_after < 1.5, f"the wait went on {recorded_after:.1f}s after the client left"
    # the quota would have come 2 s after the first note: nothing is sent then either
    time.sleep(max(0.0, 2.3 - (time.monotonic() - left)))
    assert len(fake.buf_calls()) == 1, fake.buf_calls()


def test_a_client_that_leaves_while_its_lookups_wait_has_them_dropped(make_fake, make_hubgate):
    """A member's raise of 60 of its findings: three GetFindings calls of 20, paced at one per
    2 s. The client hangs up 0.3 s in, after the first call. The other two must never be sent
    (nobody waits for them), and the request is recorded as 499 CLIENT_ABORTED at once."""
    fake = make_fake()
    ids = [f"f-bulk-{i}" for i in range(60)]
    fake.add_findings([finding(fid, MEMBER_ACCOUNT, "HIGH", 70) for fid in ids])
    hg = make_hubgate({"quota": {"max_wait_ms": 8000, "limits": {
        "GetFindings": {"rate": 0.5, "burst": 1}}}}, fake=fake)
    left = time.monotonic()
    send_and_hang_up(hg, {"FindingIdentifiers": [ident(fid) for fid in ids],
                          "Severity": {"Label": "CRITICAL"}}, "member", 0.3)

    def aborted():
        return [r for r in hg.audit_records() if r["status"] == 499]
    rec = wait_until(aborted, 5, "the departed request's record")[0]
    assert time.monotonic() - left < 1.5, "the decision went on waiting after the client left"
    assert rec["error"]["code"] == "CLIENT_ABORTED" and rec["forwarded"] is False, rec
    # the second call's quota came 2 s after the first, the third's 4 s after
    time.sleep(max(0.0, 4.5 - (time.monotonic() - left)))
    lookups = [r for r in fake.requests() if r.get("operation") == "GetFindings"]
    assert len(lookups) == 1, [len(r.get("body", "")) for r in lookups]
    assert fake.buf_calls() == []
