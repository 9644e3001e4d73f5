"""The finding-state cache as a security boundary: ways a member could have a forbidden change
judged on state older than what hubgate itself knows.

- A write-through must not make an entry look fresher than the read it came from: the fields
  the update did not set are as stale as before (the cache_ttl_ms bound), and an expired entry
  is not revived.
- A lookup that begins after a write hubgate forwarded must not be handed the answer of a
  GetFindings call made before that write.
- A request decided while a write to its findings is in flight is judged with that write laid
  over as well as without it; one decided on state that a write hubgate sent afterwards changed
  while the request waited for quota is decided again before anything is sent.
- A finding Security Hub did not list as processed is forgotten, not kept as it was.

Each test runs its own hubgate in front of its own fake (seeded with SEED, no quotas)."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from helpers import MEMBER_ACCOUNT, finding, ident

LOWER = "member accounts may not lower a finding's severity"
FID = "f-own-medium"  # SEED: the member's finding, MEDIUM


def body(*fids: str, **update) -> dict:
    return {"FindingIdentifiers": [ident(f) for f in fids], **update}


NOTE = {"Note": {"Text": "looking into it", "UpdatedBy": "soundness-e2e"}}


def outside_writer_sets(fake, fid: str, label: str, normalized: int):
    """A change hubgate does not see: an automation rule, the console, the provider."""
    fake.add_findings([finding(fid, MEMBER_ACCOUNT, label, normalized)])


@pytest.fixture
def stack(make_fake, make_hubgate):
    def make(overrides: dict):
        fake = make_fake()
        cfg = {"enrichment": {"enabled": True}}
        for k, v in overrides.items():
            cfg.setdefault(k, {}).update(v)
        return fake, make_hubgate(cfg, fake=fake)
    return make


def get_findings_calls(fake) -> int:
    return fake.op_stats("GetFindings")["calls"]


def voided(hg) -> dict:
    """hubgate_decisions_voided_total by kind."""
    return {s.labels["kind"]: s.value
            for family in text_string_to_metric_families(hg.admin("/metrics").text)
            for s in family.samples if s.name == "hubgate_decisions_voided_total"}


def assert_lowering_refused(resp, fake):
    """The member's MEDIUM was judged against CRITICAL, refused, and not applied."""
    assert resp.status == 403, resp.text
    assert f"{LOWER} (CRITICAL to MEDIUM)" in resp.json()["error"]["message"], resp.text
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"


def test_a_write_through_keeps_the_age_of_the_read_it_was_laid_over(stack):
    """The member's notes are written through to the cached entry every 0.4 s, for three times
    the TTL. The severity an outside writer raised meanwhile is not in that entry; once the TTL
    of the read has passed, the member's lowering must be judged on a new lookup (CRITICAL),
    not on the entry its own notes kept touching (MEDIUM)."""
    ttl = 1200
    fake, hg = stack({"enrichment": {"cache_ttl_ms": ttl}})
    first = hg.buf(body(FID, **NOTE), who="member")
    assert first.status == 200, first.text
    assert get_findings_calls(fake) == 1
    outside_writer_sets(fake, FID, "CRITICAL", 90)

    until = time.monotonic() + 3 * ttl / 1000
    notes = 0
    while time.monotonic() < until:
        time.sleep(0.4)
        r = hg.buf(body(FID, **NOTE), who="member")
        assert r.status == 200, r.text
        notes += 1
    assert notes >= 6
    # the notes themselves looked the finding up again once the read was older than the TTL
    assert get_findings_calls(fake) >= 2

    resp = hg.buf(body(FID, Severity={"Label": "MEDIUM"}), who="member")
    assert_lowering_refused(resp, fake)


def test_a_write_through_does_not_revive_an_expired_entry(stack):
    """An administrator's note needs no lookup; written through onto an entry that expired long
    ago, it must not make that entry current again."""
    ttl = 600
    fake, hg = stack({"enrichment": {"cache_ttl_ms": ttl}})
    assert hg.buf(body(FID, **NOTE), who="member").status == 200
    time.sleep(3 * ttl / 1000)
    outside_writer_sets(fake, FID, "CRITICAL", 90)
    calls = get_findings_calls(fake)
    admin = hg.buf(body(FID, Note={"Text": "triaged", "UpdatedBy": "soc"}), who="admin")
    assert admin.status == 200, admin.text
    assert get_findings_calls(fake) == calls, "an administrator's note makes no lookup"

    resp = hg.buf(body(FID, Severity={"Label": "MEDIUM"}), who="member")
    assert_lowering_refused(resp, fake)
    assert get_findings_calls(fake) == calls + 1
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["metrics"]["counter_cache_hits"] == 0, rec["metrics"]


def test_a_lookup_begun_after_a_write_is_not_handed_the_state_read_before_it(stack):
    """GetFindings reads at once and answers 1.5 s later. The member's note starts a lookup of
    F (it reads MEDIUM); the administrator's raise to CRITICAL is applied and answered while
    that call is out; a member request sent after the raise, which would join the call in
    flight, must be judged on CRITICAL."""
    fake, hg = stack({"enrichment": {"cache_ttl_ms": 60000}})
    fake.configure(answer_delay_ms={"GetFindings": 1500})
    answers = {}
    note = threading.Thread(
        target=lambda: answers.__setitem__("note", hg.buf(body(FID, **NOTE), who="member")))
    note.start()
    time.sleep(0.4)  # the note's GetFindings has read MEDIUM and is being answered
    raised = hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="admin")
    assert raised.status == 200, raised.text
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"
    lowered = hg.buf(body(FID, Severity={"Label": "MEDIUM"}), who="member")
    note.join(30)
    assert answers["note"].status == 200, answers["note"].text
    assert_lowering_refused(lowered, fake)
    # the call read before the raise was not used: F was asked for again, and the request that
    # joined the first call is charged for both
    assert get_findings_calls(fake) == 2
    rec = hg.audit_for(lowered.headers["x-amzn-requestid"])
    assert rec["metrics"]["counter_lookup_calls"] == 2, rec["metrics"]


def test_a_request_decided_while_a_write_to_its_findings_is_in_flight_is_judged_with_it(stack):
    """BatchUpdateFindings is paced to one call per 2 s and answered 1.5 s after it is applied.
    The administrator's raise takes the next call (sent at 2 s; answered at 3.5 s). The
    member's lowering, decided at 2.3 s on the cached MEDIUM, is decided while the raise is in
    flight: Security Hub may apply it at any moment, so the lowering is judged with it laid
    over too, and refused at once, without waiting for the call after (4 s) and without being
    decided again. (Before writes in flight were registered, this request was allowed on
    MEDIUM and only its re-check at 4 s, after the raise's answer, caught it.)"""
    fake, hg = stack({"enrichment": {"cache_ttl_ms": 60000},
                      "quota": {"limits": {"BatchUpdateFindings": {"rate": 0.5, "burst": 1}}}})
    start = time.monotonic()
    assert hg.buf(body(FID, **NOTE), who="member").status == 200  # caches MEDIUM, takes the call
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 1500})
    answers = {}

    def admin():
        answers["admin"] = hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="admin")

    raising = threading.Thread(target=admin)
    raising.start()
    time.sleep(max(0.0, start + 2.3 - time.monotonic()))
    lowered = hg.buf(body(FID, Severity={"Label": "MEDIUM"}), who="member")
    answered_at = time.monotonic() - start
    raising.join(30)
    assert answers["admin"].status == 200, answers["admin"].text
    assert_lowering_refused(lowered, fake)
    assert answered_at < 3.5, f"answered at {answered_at:.1f} s: it waited for the raise"
    rec = hg.audit_for(lowered.headers["x-amzn-requestid"])
    assert rec["metrics"]["counter_cache_hits"] == 1, rec["metrics"]
    assert rec["metrics"]["counter_lookup_calls"] == 0, rec["metrics"]
    assert rec["settling"] == [0], "judged with the raise laid over, and on MEDIUM"
    assert voided(hg) == {}
    assert rec["forwarded"] is False, rec
    assert len(fake.buf_calls()) == 2, "the note and the raise; the lowering was never sent"


# BatchUpdateFindings is paced to one call per 2 s. The raise (decided at 0.1 s, sent with the
# call at 2 s, answered at 3.5 s) is the member's own, so it waits in the same caller's line as
# the member's later request (decided at 1 s, before the raise was sent), which therefore gets
# the call after it, at 4 s: by then the raise has been sent and answered since that decision
# read its state. (Until review 51's audit change, the administrator raised and an audit queue
# of one record ordered the two: a forward reserved its record's place before it waited for
# quota. Forwards now reserve from a pool of their own, and two accounts' requests waiting at
# the bucket are served in either order.)
GATED = {"enrichment": {"cache_ttl_ms": 60000},
         "quota": {"limits": {"BatchUpdateFindings": {"rate": 0.5, "burst": 1}}}}


def raise_behind(fake, hg, start: float) -> tuple[threading.Thread, dict]:
    """The member's raise, sent with the call at 2 s and answered 1.5 s later; returns at 1 s
    after `start`, before it is sent."""
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 1500})
    answers = {}

    def raise_it():
        answers["raise"] = hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="member")

    raising = threading.Thread(target=raise_it)
    time.sleep(max(0.0, start + 0.1 - time.monotonic()))
    raising.start()
    time.sleep(max(0.0, start + 1.0 - time.monotonic()))
    assert len(fake.buf_calls()) == 1, "the raise is not sent yet"
    return raising, answers


def test_a_request_whose_findings_change_while_it_waits_is_decided_again(stack):
    """The member's MEDIUM, decided at 1 s on the cached MEDIUM (no change), waits (GATED); the
    raise is sent and answered meanwhile. Before anything is sent the request is decided again
    on what it read with the raise laid over (CRITICAL), with no lookup, and refused."""
    fake, hg = stack(GATED)
    start = time.monotonic()
    assert hg.buf(body(FID, **NOTE), who="member").status == 200  # caches MEDIUM, takes the call
    raising, answers = raise_behind(fake, hg, start)
    lowered = hg.buf(body(FID, Severity={"Label": "MEDIUM"}), who="member")
    raising.join(30)
    assert answers["raise"].status == 200, answers["raise"].text
    assert_lowering_refused(lowered, fake)
    rec = hg.audit_for(lowered.headers["x-amzn-requestid"])
    # decided twice, with no lookup: on the cached MEDIUM, then on it with the raise laid over
    assert rec["metrics"]["counter_cache_hits"] == 2, rec["metrics"]
    assert rec["metrics"]["counter_lookup_calls"] == 0, rec["metrics"]
    assert voided(hg) == {"replayed": 1.0}
    assert rec["forwarded"] is False, rec
    assert len(fake.buf_calls()) == 2, "the note and the raise; the lowering was never sent"


def test_a_decision_made_again_on_the_writes_laid_over_is_sent_with_the_quota_already_taken(
        stack):
    """As above, but the member's request is a note: decided again on CRITICAL, it is allowed.
    It is sent with the BatchUpdateFindings call it already waited for (at 4 s), not after
    waiting for another (at 6 s): waiting again would waste that call, and give writes landing
    meanwhile another chance to void the decision."""
    fake, hg = stack(GATED)
    start = time.monotonic()
    assert hg.buf(body(FID, **NOTE), who="member").status == 200  # caches MEDIUM, takes the call
    raising, answers = raise_behind(fake, hg, start)
    note = hg.buf(body(FID, Note={"Text": "second look", "UpdatedBy": "member"}), who="member")
    sent_by = time.monotonic() - start - 1.5  # the fake answers 1.5 s after it applies
    raising.join(30)
    assert answers["raise"].status == 200, answers["raise"].text
    assert note.status == 200, note.text
    assert voided(hg) == {"replayed": 1.0}
    assert sent_by < 5.0, f"sent {sent_by:.1f} s after the start: it waited for quota again"
    rec = hg.audit_for(note.headers["x-hubgate-decision-id"])
    assert rec["forwarded"] is True, rec
    assert rec["metrics"]["counter_lookup_calls"] == 0, rec["metrics"]
    assert len(fake.buf_calls()) == 3
    assert fake.findings()[FID]["Note"]["Text"] == "second look"


def test_a_write_already_judged_in_flight_does_not_void_the_decision_when_answered(stack):
    """The member's note is decided at 2.3 s, while the raise (sent at 2 s) is in flight: it is
    judged with the raise laid over and without it, and allowed. When it gets its call (4 s)
    the raise has been answered, which it already took into account: it is sent as decided,
    not decided again."""
    fake, hg = stack({"enrichment": {"cache_ttl_ms": 60000},
                      "quota": {"limits": {"BatchUpdateFindings": {"rate": 0.5, "burst": 1}}}})
    start = time.monotonic()
    assert hg.buf(body(FID, **NOTE), who="member").status == 200  # caches MEDIUM, takes the call
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 1500})
    answers = {}

    def admin():
        answers["admin"] = hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="admin")

    raising = threading.Thread(target=admin)
    raising.start()
    time.sleep(max(0.0, start + 2.3 - time.monotonic()))
    note = hg.buf(body(FID, Note={"Text": "second look", "UpdatedBy": "member"}), who="member")
    raising.join(30)
    assert answers["admin"].status == 200, answers["admin"].text
    assert note.status == 200, note.text
    assert voided(hg) == {}
    rec = hg.audit_for(note.headers["x-hubgate-decision-id"])
    assert rec["settling"] == [0], rec
    assert rec["metrics"]["counter_cache_hits"] == 1, rec["metrics"]
    assert len(fake.buf_calls()) == 3
    assert fake.findings()[FID]["Note"]["Text"] == "second look"
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"


def test_a_finding_not_listed_as_processed_is_forgotten(stack):
    """The member's finding is cached (MEDIUM). Security Hub then answers a note on it with
    FindingNotFound (it is gone for a moment), and the finding comes back as CRITICAL. The
    entry for it must not outlive that unprocessed answer: the member's lowering is judged on
    a new lookup."""
    fake, hg = stack({"enrichment": {"cache_ttl_ms": 60000}})
    assert hg.buf(body(FID, **NOTE), who="member").status == 200
    fake.reset()
    note = hg.buf(body(FID, **NOTE), who="member")
    assert note.status == 200, note.text
    assert note.json()["UnprocessedFindings"][0]["ErrorCode"] == "FindingNotFound", note.text
    fake.add_findings([finding(FID, MEMBER_ACCOUNT, "CRITICAL", 90)])
    calls = get_findings_calls(fake)
    resp = hg.buf(body(FID, Severity={"Label": "MEDIUM"}), who="member")
    assert_lowering_refused(resp, fake)
    assert get_findings_calls(fake) == calls + 1
