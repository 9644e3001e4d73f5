"""Adversarial review (quota fairness and throttling answers, fourth round: session 50's
two-level turns, Retry-After and the early 429).

- HOLE (fixed): after Security Hub throttled a call, the slowed pace RESERVED the next slot
  for a request before it waited for it, and kept it whatever became of the request: a
  client that hung up while waiting (or a request then refused at once by the bucket or by
  Redis) left its slot taken for nobody. A member sending a read of its own findings and
  hanging up 50 ms later, a few times, pushed the operation's next slot past every other
  caller's deadline: the administrator's (or another account's) call was refused 429 at once
  while no call at all was going to Security Hub. The slot is now taken only when it is due
  and the call goes, and given back when the call is refused after it.
- HOLE (fixed): a lookup's retry after a throttle (or its next page) went on waiting for
  quota after every request waiting for it had gone, then took the quota and sent nothing:
  after a throttle, a whole slot of the slowed pace (a second at half of 2/s, 3.3 s at the
  floor of 3/s) spent for nobody, which the next caller (an administrator's read) waited for.
  The wait now ends when the last request goes, taking nothing.
- HOLE (fixed): the same for the lookup queue's own wait for quota: a member's raise whose
  client hung up while its lookup waited for the next GetFindings call still had that call's
  quota taken when it came (nothing left to ask for, nothing sent), and the next caller
  waited a whole interval more (2 s at 0.5/s). Each hung-up request cost everyone one call.
- Held (read): turns are by the callers file's principal id (unique) and account, never by
  anything a request carries: new session names are refused in sigv4 mode, and key ids not
  in the file are 401 before any turn; passthrough's claim of a listed key id is documented.
- Held (read): an early 429 takes nothing: governor's `check` takes only when it passes, the
  Redis GCRA script sets nothing when it answers a wait, and the caller's and account's
  lines are guards dropped with `acquire` (the first test's later read goes at once).
- Held (read): a gone request's queued findings are dropped unsent when they reach the
  front, and its turn ends without a batch; they are bounded by what one batch interval
  lets in.
- Held (measured by hand): an administrator's notes during a member's 100-finding bulk raise
  (GetFindings 1/s) were answered in 0.01 s, 0.2 s and 1.0 s, paced only by
  BatchUpdateFindings (2/s); they wait for no lookup.
- Held (read): Retry-After is an integer of 1..=60 s on THROTTLED (from the pace, NaN and 0
  clamped), the settle window on STATE_SETTLING, 1 s on other 429/503s, on no other status.
"""

from __future__ import annotations

import time

from helpers import ADMIN_ACCOUNT, OWN_ACCOUNT_FILTER, assert_envelope, ident
from test_client_abort import send_and_hang_up

MINE = {"Filters": OWN_ACCOUNT_FILTER}
EVERYTHING = {"Filters": {"AwsAccountId": [{"Value": ADMIN_ACCOUNT, "Comparison": "EQUALS"}]}}


def get_findings_and_hang_up(hg, body: dict, who: str, after: float):
    """A signed GetFindings on a raw socket, closed `after` seconds later, unanswered."""
    send_and_hang_up(hg, body, who, after, method="POST", path="/findings")


def test_callers_that_hang_up_during_a_slowdown_take_no_slot_from_the_others(
        make_fake, make_hubgate):
    """GetFindings at 5/s (a burst the bucket never runs out of), max_wait_ms 1500. Security
    Hub throttles one call: the pace halves (one call per 400 ms). A member then sends six
    reads of its own findings, each hung up 50 ms in. The administrator's read that follows
    must wait for the next slot (400 ms at most) and go; with the slots kept by the requests
    that left, the next one was past its deadline and it got 429 at once, with nothing sent."""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 1500, "limits": {
        "GetFindings": {"rate": 5, "burst": 30}}}}, fake=fake)
    fake.throttle_next(GetFindings=1)
    throttled = hg.send("POST", "/findings", EVERYTHING, who="admin")
    assert_envelope(throttled, 429, "THROTTLED", "ThrottlingException")
    for _ in range(6):
        get_findings_and_hang_up(hg, MINE, "member", 0.05)
    calls_before = len(fake.get_findings_calls())
    started = time.monotonic()
    resp = hg.send("POST", "/findings", EVERYTHING, who="admin")
    elapsed = time.monotonic() - started
    assert resp.status == 200, (resp.status, resp.text, f"after {elapsed:.2f}s",
                                f"{len(fake.get_findings_calls()) - calls_before} calls since")
    assert elapsed < 1.0, f"the read waited {elapsed:.2f}s"


def test_a_lookup_retry_nobody_waits_for_any_more_takes_no_slot(make_fake, make_hubgate):
    """GetFindings at 2/s. A member's raise needs a lookup; Security Hub throttles it, so the
    pace halves (one call a second) and the lookup waits for the next slot to try again. The
    member hangs up 0.3 s in. The retry must stop waiting then: it waited on, took the slot a
    second after the throttle for nobody (nothing was sent), and the administrator's read that
    came next waited another second for quota."""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 3000, "limits": {
        "GetFindings": {"rate": 2, "burst": 30}}}}, fake=fake)
    fake.throttle_next(GetFindings=1)
    throttled_at = time.monotonic()
    send_and_hang_up(hg, {"FindingIdentifiers": [ident("f-own-high")],
                          "Severity": {"Label": "CRITICAL"}}, "member", 0.3)
    time.sleep(max(0.0, 1.2 - (time.monotonic() - throttled_at)))
    started = time.monotonic()
    resp = hg.send("POST", "/findings", EVERYTHING, who="admin")
    elapsed = time.monotonic() - started
    assert resp.status == 200, resp.text
    assert elapsed < 0.5, f"the administrator's read waited {elapsed:.2f}s for quota"
    # the throttled lookup, then the administrator's read: the retry was never sent
    assert len(fake.get_findings_calls()) == 2, fake.get_findings_calls()


def test_a_lookup_nobody_waits_for_any_more_takes_no_call_of_quota(make_fake, make_hubgate):
    """GetFindings at one call per 2 s: the administrator's read takes the call, then a
    member's raise waits for the next one for its lookup, and hangs up 0.3 s in. The lookup
    queue's wait must end with it: it waited on, took the call 2 s after the first for
    nothing (no lookup was left to make), and the administrator's next read, sent then,
    waited 2 s more for quota."""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 3000, "limits": {
        "GetFindings": {"rate": 0.5, "burst": 2}}}}, fake=fake)
    first = time.monotonic()
    assert hg.send("POST", "/findings", EVERYTHING, who="admin").status == 200
    send_and_hang_up(hg, {"FindingIdentifiers": [ident("f-own-high")],
                          "Severity": {"Label": "CRITICAL"}}, "member", 0.3)
    time.sleep(max(0.0, 2.15 - (time.monotonic() - first)))
    started = time.monotonic()
    resp = hg.send("POST", "/findings", EVERYTHING, who="admin")
    elapsed = time.monotonic() - started
    assert resp.status == 200, resp.text
    assert elapsed < 0.8, f"the administrator's read waited {elapsed:.2f}s for quota"
    assert len(fake.get_findings_calls()) == 2, fake.get_findings_calls()
