"""Security Hub applies BatchUpdateFindings asynchronously ("can take several minutes"): for a
while after a write hubgate forwarded, GetFindings may still report the finding as it was. The
fake here answers a BatchUpdateFindings at once and applies it later (apply_delay_ms).

- A change hubgate forwarded is laid over what GetFindings reports for enrichment.settle_ms, so
  a member cannot undo an administrator's raise in that window, cached or not.
- The decision must also hold on the state as reported: the overlay must not hide a change
  another writer made after hubgate's own.
- After a write hubgate cannot model, the finding's state is unknown for the window: a
  decision that reads it is refused with a retryable 503 and Retry-After, and costs no lookup
  (a member's, once hubgate has read that the finding is the member's own).

Each test runs its own hubgate in front of its own fake (seeded with SEED, no quotas)."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from helpers import (
    CALLERS_TOML,
    MEMBER_ACCOUNT,
    OTHER_ACCOUNT,
    Creds,
    assert_envelope,
    finding,
    ident,
)

LOWER = "member accounts may not lower a finding's severity"
FID = "f-own-medium"  # SEED: the member's finding, MEDIUM
LAG_MS = 3000


def body(*fids: str, **update) -> dict:
    return {"FindingIdentifiers": [ident(f) for f in fids], **update}


NOTE = {"Note": {"Text": "looking into it", "UpdatedBy": "settle-e2e"}}


@pytest.fixture
def stack(make_fake, make_hubgate):
    def make(enrichment: dict):
        fake = make_fake()
        return fake, make_hubgate({"enrichment": {"enabled": True, **enrichment}}, fake=fake)
    return make


def metric(hg, name: str) -> float:
    for family in text_string_to_metric_families(hg.admin("/metrics").text):
        for s in family.samples:
            if s.name == name:
                return s.value
    raise AssertionError(f"no {name} in /metrics")


def get_findings_calls(fake) -> int:
    return fake.op_stats("GetFindings")["calls"]


# How the member's finding came to be read before the administrator's raise: never (its
# state is looked up after the raise), cached with no TTL, or cached and expired since.
CASES = {
    "uncached": ({"cache_ttl_ms": 60000}, False, 0),
    "ttl0": ({"cache_ttl_ms": 0}, True, 0),
    "expired": ({"cache_ttl_ms": 500}, True, 0.8),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("settle_ms", [None, 0])
def test_an_administrators_raise_security_hub_has_not_applied_yet_is_not_undone(
        stack, case, settle_ms):
    """The administrator raises F to CRITICAL; Security Hub answers at once and applies it 3 s
    later. The member's lowering to MEDIUM, sent meanwhile, reads MEDIUM from GetFindings. With
    the default settle_ms it is refused as CRITICAL to MEDIUM, and the raise stands; with
    settle_ms = 0 (the window off) it goes through and undoes the raise, which is what the
    window is for."""
    enrichment, read_before, wait_s = CASES[case]
    if settle_ms is not None:
        enrichment = {**enrichment, "settle_ms": settle_ms}
    fake, hg = stack(enrichment)
    if read_before:
        assert hg.buf(body(FID, **NOTE), who="member").status == 200
    fake.configure(apply_delay_ms=LAG_MS)
    time.sleep(wait_s)
    raised = hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="admin")
    assert raised.status == 200, raised.text
    assert fake.findings()[FID]["Severity"]["Label"] == "MEDIUM", "not applied yet"
    calls = get_findings_calls(fake)

    lowered = hg.buf(body(FID, Severity={"Label": "MEDIUM"}), who="member")
    assert get_findings_calls(fake) == calls + 1, "the member's request read F again"
    time.sleep(LAG_MS / 1000 + 1)
    final = fake.findings()[FID]["Severity"]["Label"]
    if settle_ms == 0:
        assert lowered.status == 200, lowered.text
        assert final == "MEDIUM", "without the window, the raise is undone"
        assert "settling" not in hg.audit_for(lowered.headers["x-hubgate-decision-id"])
        return
    assert_envelope(lowered, 403, "POLICY_DENIED", "AccessDeniedException")
    assert f"{LOWER} (CRITICAL to MEDIUM)" in lowered.json()["error"]["message"], lowered.text
    assert final == "CRITICAL"
    assert metric(hg, "hubgate_enrichment_settle_overlaid_total") >= 1
    assert hg.audit_for(lowered.headers["x-amzn-requestid"])["settling"] == [0]


def test_the_audit_record_names_the_findings_judged_with_hubgates_writes_laid_over(stack):
    """Of a member's note on two findings, only the one the administrator just raised (not
    applied yet) is judged with that raise laid over: the record names it by its place."""
    fake, hg = stack({"cache_ttl_ms": 0})
    fake.configure(apply_delay_ms=LAG_MS)
    assert hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="admin").status == 200
    note = hg.buf(body("f-own-high", FID, **NOTE), who="member")
    assert note.status == 200, note.text
    rec = hg.audit_for(note.headers["x-hubgate-decision-id"])
    assert rec["settling"] == [1], rec
    assert rec["findings"][0]["Ids"] == ["f-own-high", FID], rec["findings"]
    time.sleep(LAG_MS / 1000 + 0.5)


def test_the_decision_also_holds_on_the_state_security_hub_reports(stack):
    """The member raises its finding to HIGH (applied at once). Another writer then sets it
    CRITICAL. Laying hubgate's own HIGH over that would make the member's HIGH look like no
    change; judged on the state as reported too, it is a lowering from CRITICAL."""
    fake, hg = stack({"cache_ttl_ms": 0})
    assert hg.buf(body(FID, Severity={"Label": "HIGH"}), who="member").status == 200
    fake.add_findings([finding(FID, MEMBER_ACCOUNT, "CRITICAL", 90)])
    resp = hg.buf(body(FID, Severity={"Label": "HIGH"}), who="member")
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert f"{LOWER} (CRITICAL to HIGH)" in resp.json()["error"]["message"], resp.text
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"


def test_a_change_security_hub_reports_applied_stops_being_laid_over(stack):
    """Once GetFindings shows hubgate's write applied, the journal drops it: a later change by
    another writer to the same field is then judged as it is, not against hubgate's write."""
    fake, hg = stack({"cache_ttl_ms": 0})
    assert hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="member").status == 200
    assert metric(hg, "hubgate_enrichment_settling_findings") == 1
    # read back (CRITICAL, as written): Security Hub has applied it
    assert hg.buf(body(FID, **NOTE), who="member").status == 200
    assert metric(hg, "hubgate_enrichment_settling_findings") == 1, "the note is kept"
    fake.add_findings([finding(FID, MEMBER_ACCOUNT, "LOW", 10)])
    raised = hg.buf(body(FID, Severity={"Label": "MEDIUM"}), who="member")
    assert raised.status == 200, f"LOW to MEDIUM is a raise: {raised.text}"


def test_after_a_write_hubgate_cannot_model_the_findings_state_is_unknown_for_the_window(stack):
    """The administrator sets UserDefinedFields on F, a change hubgate does not lay over a
    state. Until settle_ms has passed, the member's request on F is refused as retryable with
    Retry-After, without a lookup; a finding the write did not name is judged as usual, and so
    is F once the window is over."""
    settle_ms = 2500
    fake, hg = stack({"cache_ttl_ms": 0, "settle_ms": settle_ms})
    admin = hg.buf(body(FID, UserDefinedFields={"ticket": "SEC-9"}), who="admin")
    assert admin.status == 200, admin.text
    started = time.monotonic()
    calls = get_findings_calls(fake)

    resp = hg.buf(body(FID, **NOTE), who="member")
    err = assert_envelope(resp, 503, "STATE_SETTLING", "ServiceUnavailableException")["error"]
    assert f'finding "{FID}"' in err["message"], err
    assert "BatchUpdateFindings" in err["message"], err
    assert 1 <= int(resp.headers["retry-after"]) <= 3, resp.headers
    # One lookup, to tell that F is the member's own: a member is refused as settling only for
    # its own findings (another account's is refused for ownership, test_adversarial_newcode49)
    assert get_findings_calls(fake) == calls + 1, "F's account read once"
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["forwarded"] is False, rec
    assert fake.findings()[FID].get("Note", {}).get("Text") != NOTE["Note"]["Text"]
    assert metric(hg, "hubgate_enrichment_settle_refused_total") == 1
    retry = hg.buf(body(FID, **NOTE), who="member")
    assert_envelope(retry, 503, "STATE_SETTLING", "ServiceUnavailableException")
    assert get_findings_calls(fake) == calls + 1, "the retry is refused before any lookup"

    other = hg.buf(body("f-own-high", **NOTE), who="member")
    assert other.status == 200, other.text

    time.sleep(max(0.0, started + settle_ms / 1000 + 0.3 - time.monotonic()))
    later = hg.buf(body(FID, **NOTE), who="member")
    assert later.status == 200, later.text
    assert fake.findings()[FID]["Note"]["Text"] == NOTE["Note"]["Text"]


def v2_note(account: str, fid: str) -> dict:
    return {"FindingIdentifiers": [{"CloudAccountUid": account, "FindingInfoUid": fid,
                                    "MetadataProductUid": "x"}], "Comment": "triaged"}


def v2_status(account: str, fid: str) -> dict:
    """A V2 write that changes a fact decisions read (the workflow status), not only a note."""
    return {**v2_note(account, fid), "StatusId": 2}


def test_a_v2_write_leaves_unknown_only_the_findings_of_the_accounts_it_names(stack):
    """BatchUpdateFindingsV2 names findings by OCSF identifiers hubgate cannot map to the ones
    GetFindings reads, but each names its account: the state of that account's findings is
    unknown for the window, and no other account's. MetadataUids name no account: every
    finding's state is unknown. (A V2 that only comments changes no fact a decision reads and
    leaves nothing unknown: test_adversarial_v2r2.py.)"""
    fake, hg = stack({"cache_ttl_ms": 0, "settle_ms": 60000})
    elsewhere = hg.send("PATCH", "/findingsv2/batchupdatev2",
                        v2_status(OTHER_ACCOUNT, "f-other"), who="admin")
    assert elsewhere.status == 200, elsewhere.text
    assert hg.buf(body(FID, **NOTE), who="member").status == 200, "another account's write"

    mine = hg.send("PATCH", "/findingsv2/batchupdatev2",
                   v2_status(MEMBER_ACCOUNT, "f-own-high"), who="member")
    assert mine.status == 200, mine.text
    resp = hg.buf(body(FID, **NOTE), who="member")
    err = assert_envelope(resp, 503, "STATE_SETTLING", "ServiceUnavailableException")["error"]
    assert err["message"].startswith(f'finding "{FID}" of '), err
    assert "BatchUpdateFindingsV2" in err["message"], err
    assert 50 <= int(resp.headers["retry-after"]) <= 60, resp.headers

    uids = hg.send("PATCH", "/findingsv2/batchupdatev2",
                   {"MetadataUids": ["uid-1"], "Comment": "triaged", "StatusId": 2}, who="admin")
    assert uids.status == 200, uids.text
    resp = hg.buf(body("f-own-high", **NOTE), who="member")
    err = assert_envelope(resp, 503, "STATE_SETTLING", "ServiceUnavailableException")["error"]
    assert err["message"].startswith("any finding was changed through hubgate by "
                                     "BatchUpdateFindingsV2"), err


def test_a_finding_the_overlay_alone_would_allow_is_denied_in_a_partial_forward(stack):
    """forward-allowed: one finding of the request is denied anyway (another account's). The
    rest must still be judged on the states as reported too: F, lowered by the administrator
    through hubgate and set back to CRITICAL by another writer since, is denied."""
    fake, hg = stack({"cache_ttl_ms": 0})
    hg.stop()
    hg.overrides = {**hg.overrides, "policy": {"on_partial_deny": "forward-allowed"}}
    hg.start()
    fake.add_findings([finding(FID, MEMBER_ACCOUNT, "CRITICAL", 90)])
    assert hg.buf(body(FID, Severity={"Label": "LOW"}), who="admin").status == 200
    assert fake.findings()[FID]["Severity"]["Label"] == "LOW"
    fake.add_findings([finding(FID, MEMBER_ACCOUNT, "CRITICAL", 90)])  # another writer
    resp = hg.buf(body(FID, "f-other", Severity={"Label": "LOW"}), who="member")
    assert resp.status == 403, resp.text
    assert f"{LOWER} (CRITICAL to LOW)" in resp.json()["error"]["message"], resp.text
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"


def test_a_lowering_and_its_revert_still_pending_are_not_taken_as_applied(stack):
    """The administrator lowers F to LOW and reverts it to CRITICAL a second later; Security
    Hub applies each 3 s late. Meanwhile GetFindings shows CRITICAL, which is what the two
    writes compose to, but neither is applied: when the lowering is, the revert must still be
    laid over what is read, and the member's LOW refused."""
    fake, hg = stack({"cache_ttl_ms": 0})
    fake.configure(apply_delay_ms=LAG_MS)
    fake.add_findings([finding(FID, MEMBER_ACCOUNT, "CRITICAL", 90)])
    t0 = time.monotonic()
    assert hg.buf(body(FID, Severity={"Label": "LOW"}), who="admin").status == 200
    time.sleep(1)
    assert hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="admin").status == 200
    denied = hg.buf(body(FID, Severity={"Label": "LOW"}), who="member")  # reads CRITICAL
    assert denied.status == 403, denied.text
    time.sleep(max(0.0, t0 + LAG_MS / 1000 + 0.3 - time.monotonic()))
    assert fake.findings()[FID]["Severity"]["Label"] == "LOW", "the lowering is applied"
    resp = hg.buf(body(FID, Severity={"Label": "LOW"}), who="member")
    assert resp.status == 403, resp.text
    assert f"{LOWER} (CRITICAL to LOW)" in resp.json()["error"]["message"], resp.text
    time.sleep(LAG_MS / 1000 + 0.5)
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"


# A member of the other account (333333333333, which owns SEED's f-other).
MEMBER2 = Creds("HGTESTMEMBER00000002", "member2-secret")
CALLERS_WITH_MEMBER2 = CALLERS_TOML + f"""
[[caller]]
id = "member2"
account_id = "{OTHER_ACCOUNT}"
role = "member"
access_key_id = "{MEMBER2.access_key}"
secret_access_key = "{MEMBER2.secret_key}"
"""


def test_a_stream_of_v2_writes_to_one_account_leaves_other_accounts_lookups_and_cache_alone(
        make_fake, make_hubgate):
    """A member sends BatchUpdateFindingsV2 comments on its own account every 100 ms (the
    shipped policies allow it). GetFindings answers in 300 ms. Another account's member must
    not pay for that: its cached finding stays cached, and a lookup of its uncached finding is
    one GetFindings call, not one thrown away and asked again after each V2 until the quota
    runs out (429 after 16 calls, before this was scoped)."""
    fake = make_fake()
    fake.add_findings([finding("f-other-2", OTHER_ACCOUNT, "MEDIUM", 40)])
    hg = make_hubgate({"enrichment": {"enabled": True, "cache_ttl_ms": 60000},
                       "quota": {"max_wait_ms": 5000}},
                      fake=fake, callers_toml=CALLERS_WITH_MEMBER2)
    fake.configure(answer_delay_ms={"GetFindings": 300})
    assert hg.buf(body("f-other", **NOTE), creds=MEMBER2).status == 200  # now cached
    stop, sent = threading.Event(), []

    def own_account_comments():
        while not stop.is_set():
            sent.append(hg.send("PATCH", "/findingsv2/batchupdatev2",
                                v2_note(MEMBER_ACCOUNT, "f-own-high"), who="member").status)
            time.sleep(0.1)

    attacker = threading.Thread(target=own_account_comments, daemon=True)
    attacker.start()
    try:
        time.sleep(0.3)
        calls = get_findings_calls(fake)
        for _ in range(3):
            cached = hg.buf(body("f-other", **NOTE), creds=MEMBER2)
            assert cached.status == 200, cached.text
        assert get_findings_calls(fake) == calls, "another account's cache was cleared"
        fresh = hg.buf(body("f-other-2", **NOTE), creds=MEMBER2)
        assert fresh.status == 200, fresh.text
        rec = hg.audit_for(fresh.headers["x-hubgate-decision-id"])
        assert rec["metrics"]["counter_lookup_calls"] == 1, rec["metrics"]
    finally:
        stop.set()
        attacker.join(10)
    assert len(sent) >= 3 and set(sent) == {200}, sent


def test_without_the_journal_a_v2_write_makes_its_accounts_cached_findings_read_again(
        make_fake, make_hubgate):
    """With settle_ms = 0 nothing lays a V2 write over what hubgate cached, so the write must
    retire its account's cached findings (an administrator's V2 raise would otherwise leave a
    member's lowering judged on the severity cached before it). The member's next update on
    its cached finding is decided on a new GetFindings call; another account's cached finding
    is still served from the cache."""
    fake = make_fake()
    hg = make_hubgate({"enrichment": {"enabled": True, "cache_ttl_ms": 60000, "settle_ms": 0}},
                      fake=fake, callers_toml=CALLERS_WITH_MEMBER2)
    assert hg.buf(body(FID, **NOTE), who="member").status == 200  # now cached
    assert hg.buf(body("f-other", **NOTE), creds=MEMBER2).status == 200
    cached = hg.buf(body(FID, **NOTE), who="member")
    assert hg.audit_for(cached.headers["x-hubgate-decision-id"])["metrics"][
        "counter_lookup_calls"] == 0, "cached before the write"
    v2 = hg.send("PATCH", "/findingsv2/batchupdatev2", v2_note(MEMBER_ACCOUNT, "f-own-high"),
                 who="admin")
    assert v2.status == 200, v2.text
    calls = get_findings_calls(fake)
    other = hg.buf(body("f-other", **NOTE), creds=MEMBER2)
    assert other.status == 200, other.text
    assert get_findings_calls(fake) == calls, "another account's cached finding was read again"
    own = hg.buf(body(FID, **NOTE), who="member")
    assert own.status == 200, own.text
    rec = hg.audit_for(own.headers["x-hubgate-decision-id"])
    assert rec["metrics"]["counter_lookup_calls"] == 1, rec["metrics"]
    assert get_findings_calls(fake) == calls + 1
    again = hg.buf(body(FID, **NOTE), who="member")
    assert hg.audit_for(again.headers["x-hubgate-decision-id"])["metrics"][
        "counter_lookup_calls"] == 0, "read after the write: cached again"


def test_a_refusal_for_an_accounts_write_is_not_paid_for_again_on_retry(stack):
    """After the member's V2 status change on its own account, its note on another of its
    findings is refused with 503 once the lookup shows the finding is that account's. The SDK's
    retries are refused before any GetFindings call."""
    fake, hg = stack({"cache_ttl_ms": 0, "settle_ms": 60000})
    mine = hg.send("PATCH", "/findingsv2/batchupdatev2",
                   v2_status(MEMBER_ACCOUNT, "f-own-high"), who="member")
    assert mine.status == 200, mine.text
    calls = get_findings_calls(fake)
    for attempt in range(3):
        resp = hg.buf(body(FID, **NOTE), who="member")
        assert_envelope(resp, 503, "STATE_SETTLING", "ServiceUnavailableException")
        assert get_findings_calls(fake) == calls + 1, f"attempt {attempt + 1} read F again"
