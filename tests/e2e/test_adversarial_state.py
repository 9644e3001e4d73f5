"""Adversarial review (state): ways a member's forbidden change could be forwarded when a
decision is made without, or on stale, finding state.

- policy.on_partial_deny = "forward-allowed" when the FIRST pass (before any lookup) denies some
  findings one by one: the other findings must still be judged with their state.
- A partial decision voided while it waited for quota and decided again: the audit record
  describes the last decision.
- Writes hubgate cannot map to cache entries (V2 by account, UpdateFindings): in flight, a
  decision on cached state meanwhile is refused as settling; answered, the state cached before
  them is not decided on (refused as settling, or read again); sent while a decision on cached
  state waits for quota, they void it.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from test_in_flight import in_flight

from helpers import (MEMBER_ACCOUNT, OTHER_PRODUCT_ARN, POLICY_DIR, PRODUCT_ARN,
                     assert_envelope, finding, ident)

# A rule about the request alone (policies/README.md: such rules "should not mention
# input.enrichment", so they fire in the first pass, before any lookup) that names findings.
REQUEST_ONLY_PER_FINDING_RULE = """package hubgate

deny contains {"msg": "GuardDuty findings are changed in GuardDuty", "finding": finding_ref(f)} if {
\tsome f in input.findings
\tf.ProductArn == "%s"
}
""" % OTHER_PRODUCT_ARN

GD = "g-own"  # the member's own GuardDuty finding: denied by the rule above in the first pass


@pytest.fixture
def partial_with_request_rule(tmp_path, make_fake, make_hubgate):
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    (policies / "no_guardduty.rego").write_text(REQUEST_ONLY_PER_FINDING_RULE)
    fake = make_fake()
    fake.add_findings([finding(GD, MEMBER_ACCOUNT, "LOW", product_arn=OTHER_PRODUCT_ARN)])
    hg = make_hubgate({"policy": {"dir": str(policies), "on_partial_deny": "forward-allowed"}},
                      fake=fake)
    return fake, hg


@pytest.mark.parametrize("target, update, field, before", [
    # another account's finding: the ownership rule needs state
    ("f-other", {"Workflow": {"Status": "RESOLVED"}}, ("Workflow", "Status"), "NEW"),
    # the member's HIGH finding lowered: "not lower" needs state
    ("f-own-high", {"Severity": {"Label": "LOW"}}, ("Severity", "Label"), "HIGH"),
    # a finding Security Hub does not have: refused for members, needs state
    ("no-such-finding", {"Workflow": {"Status": "RESOLVED"}}, None, None),
])
def test_first_pass_partial_denial_does_not_skip_the_state_rules_for_the_rest(
        partial_with_request_rule, target, update, field, before):
    """A member names one finding a request-only rule denies in the first pass together with
    a finding whose own denial needs its state. The first pass names only the GuardDuty
    finding, so no lookup is made; the rest must not be forwarded unjudged."""
    fake, hg = partial_with_request_rule
    resp = hg.buf({"FindingIdentifiers": [ident(GD, OTHER_PRODUCT_ARN), ident(target)],
                   **update}, who="member")
    sent = [json.loads(c["body"]) for c in fake.buf_calls()]
    forwarded = [i["Id"] for s in sent for i in s["FindingIdentifiers"]]
    assert target not in forwarded, (resp.status, resp.text, sent)
    if field:
        assert fake.findings()[target][field[0]][field[1]] == before
    assert resp.status == 403, resp.text


def test_first_pass_partial_denial_still_cuts_a_batch_that_needs_no_state(
        partial_with_request_rule):
    """The control: an administrator's request needs no finding state (needs_state), so the
    first pass decides it, and the same per-finding denial still forwards the rest, with no
    lookup."""
    fake, hg = partial_with_request_rule
    resp = hg.buf({"FindingIdentifiers": [ident(GD, OTHER_PRODUCT_ARN), ident("f-other")],
                   "Workflow": {"Status": "RESOLVED"}}, who="admin")
    assert resp.status == 200, resp.text
    assert [u["FindingIdentifier"]["Id"] for u in resp.json()["UnprocessedFindings"]] == [GD]
    sent = [json.loads(c["body"]) for c in fake.buf_calls()]
    assert [[i["Id"] for i in s["FindingIdentifiers"]] for s in sent] == [["f-other"]]
    assert fake.op_stats("GetFindings")["calls"] == 0
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["partial"] == {"forwarded": 1, "denied": 1}, rec


# --- A partial decision voided while it waited for quota, then decided again ---------------

FID = "f-own-medium"  # SEED: the member's finding, MEDIUM
NOTE = {"Note": {"Text": "looking into it", "UpdatedBy": "adversarial-e2e"}}
# As test_cache_soundness.GATED: one BatchUpdateFindings call every 2 s, so a member's request
# decided at 1 s is sent at 4 s, after the member's own earlier write (decided at 0.1 s, in the
# same caller's quota line, sent at 2 s and answered at 3.5 s). (Until review 51 the earlier
# write was an administrator's, ordered first by an audit queue of one record; forwards now
# reserve their records' places from a pool of their own, and two accounts' requests met the
# bucket in either order.)
GATED_PARTIAL = {"enrichment": {"cache_ttl_ms": 60000},
                 "quota": {"limits": {"BatchUpdateFindings": {"rate": 0.5, "burst": 1}}},
                 "policy": {"on_partial_deny": "forward-allowed"}}


def write_behind(fake, hg, start: float, update: dict):
    """The member's write to FID, sent with the call at 2 s and answered 1.5 s later; returns at
    1 s after `start`, before it is sent."""
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 1500})
    answers = {}

    def write():
        answers["write"] = hg.buf({"FindingIdentifiers": [ident(FID)], **update}, who="member")

    writing = threading.Thread(target=write)
    time.sleep(max(0.0, start + 0.1 - time.monotonic()))
    writing.start()
    time.sleep(max(0.0, start + 1.0 - time.monotonic()))
    assert len(fake.buf_calls()) == 1, "the earlier write is not sent yet"
    return writing, answers


def test_a_partial_decision_voided_and_refused_whole_is_not_recorded_as_partial(
        make_fake, make_hubgate):
    """The member's HIGH on [FID (MEDIUM), f-other] is first decided as a partial forward (FID
    raised, f-other another account's). While it waits for quota, the member's own earlier
    CRITICAL on FID is sent and answered, so it is decided again: now both are denied and
    nothing is forwarded. The audit record must describe that last decision, not say that one
    finding was forwarded."""
    fake = make_fake()
    hg = make_hubgate(GATED_PARTIAL, fake=fake)
    start = time.monotonic()
    assert hg.buf({"FindingIdentifiers": [ident(FID)], **NOTE}, who="member").status == 200
    writing, answers = write_behind(fake, hg, start, {"Severity": {"Label": "CRITICAL"}})
    resp = hg.buf({"FindingIdentifiers": [ident(FID), ident("f-other")],
                   "Severity": {"Label": "HIGH"}}, who="member")
    writing.join(30)
    assert answers["write"].status == 200, answers["write"].text
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["forwarded"] is False, rec
    assert rec.get("partial") is None, rec["partial"]


# --- Writes hubgate cannot map to cache entries, in flight: V2 (by account), UpdateFindings --

V2 = "/findingsv2/batchupdatev2"


@pytest.mark.parametrize("write", ["v2", "update_findings"])
def test_a_cached_decision_while_an_unmappable_write_is_in_flight_is_refused(
        make_fake, make_hubgate, write):
    """The member's MEDIUM finding is cached. The administrator's V2 SeverityId 5 on the
    member's account (or an UpdateFindings, which names a filter) is in flight: it may land
    before the member's write. The member's MEDIUM (no change on the cached state) must not be
    forwarded meanwhile: refused as settling, retryable. (The UpdateFindings sets RecordState:
    one that sets only a note refuses nothing in flight, test_adversarial_newcode51.py.)"""
    fake = make_fake()
    hg = make_hubgate({"enrichment": {"enabled": True, "cache_ttl_ms": 60000, "settle_ms": 0}},
                      fake=fake)
    assert hg.buf({"FindingIdentifiers": [ident(FID)], **NOTE}, who="member").status == 200
    if write == "v2":
        fake.configure(answer_delay_ms={"BatchUpdateFindingsV2": 1500})
        path, body = V2, {"FindingIdentifiers": [{"CloudAccountUid": MEMBER_ACCOUNT,
                                                  "FindingInfoUid": FID,
                                                  "MetadataProductUid": PRODUCT_ARN}],
                          "SeverityId": 5}
    else:
        fake.configure(answer_delay_ms={"UpdateFindings": 1500})
        path, body = "/findings", {"Filters": {"AwsAccountId": [
            {"Value": MEMBER_ACCOUNT, "Comparison": "EQUALS"}]},
            "Note": {"Text": "bulk", "UpdatedBy": "admin"}, "RecordState": "ACTIVE"}
    method = "PATCH"
    thread, answers = in_flight(fake, lambda: hg.send(method, path, body, who="admin"), path)
    resp = hg.buf({"FindingIdentifiers": [ident(FID)], "Severity": {"Label": "MEDIUM"}},
                  who="member")
    assert thread.is_alive(), "answered before the member's request was decided"
    thread.join(30)
    assert_envelope(resp, 503, "STATE_SETTLING", "ServiceUnavailableException")
    assert [c for c in fake.buf_calls() if "MEDIUM" in c["body"]] == []


def cached_member_finding(make_fake, make_hubgate, settle_ms):
    """A fake and a hubgate (cache_ttl_ms 60 s; settle_ms as given, or the default) whose cache
    holds FID, read by a member's note that was forwarded."""
    fake = make_fake()
    enrichment = {"enabled": True, "cache_ttl_ms": 60000}
    if settle_ms is not None:
        enrichment["settle_ms"] = settle_ms
    hg = make_hubgate({"enrichment": enrichment}, fake=fake)
    assert hg.buf({"FindingIdentifiers": [ident(FID)], **NOTE}, who="member").status == 200
    return fake, hg


@pytest.mark.parametrize("settle_ms", [0, None])
def test_an_answered_update_findings_leaves_no_cached_state_to_decide_on(
        make_fake, make_hubgate, settle_ms):
    """The administrator's UpdateFindings (a filter: hubgate cannot tell which findings it
    changed) is answered. Without the settle journal, the member's next request on its cached
    finding is decided on a new GetFindings call, not on what was cached before; with it, the
    member's state-reading requests are refused as settling, before any lookup. (It sets
    RecordState: one that sets only a note leaves nothing unknown, test_adversarial_v2r2.py.)"""
    fake, hg = cached_member_finding(make_fake, make_hubgate, settle_ms)
    cached = hg.buf({"FindingIdentifiers": [ident(FID)], **NOTE}, who="member")
    assert hg.audit_for(cached.headers["x-hubgate-decision-id"])["metrics"][
        "counter_lookup_calls"] == 0, "cached before the write"
    admin = hg.send("PATCH", "/findings", {
        "Filters": {"AwsAccountId": [{"Value": MEMBER_ACCOUNT, "Comparison": "EQUALS"}]},
        "Note": {"Text": "bulk triage", "UpdatedBy": "admin"}, "RecordState": "ACTIVE"},
        who="admin")
    assert admin.status == 200, admin.text
    assert fake.findings()[FID]["Note"]["Text"] == "bulk triage"
    calls = fake.op_stats("GetFindings")["calls"]
    resp = hg.buf({"FindingIdentifiers": [ident(FID)], **NOTE}, who="member")
    if settle_ms == 0:
        assert resp.status == 200, resp.text
        assert hg.audit_for(resp.headers["x-hubgate-decision-id"])["metrics"][
            "counter_lookup_calls"] == 1
        assert fake.op_stats("GetFindings")["calls"] == calls + 1
    else:
        err = assert_envelope(resp, 503, "STATE_SETTLING", "ServiceUnavailableException")
        assert "UpdateFindings" in err["error"]["message"], err
        assert fake.op_stats("GetFindings")["calls"] == calls


def voided(hg) -> dict:
    """hubgate_decisions_voided_total by kind."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    return {s.labels["kind"]: s.value
            for family in text_string_to_metric_families(hg.admin("/metrics").text)
            for s in family.samples if s.name == "hubgate_decisions_voided_total"}


def medium_waiting_for_quota(make_fake, make_hubgate):
    """A hubgate whose cache holds FID (MEDIUM, read by a forwarded note) and whose
    BatchUpdateFindings quota allows one call every 2 s; the member's MEDIUM on FID, decided at
    once as no change, is left waiting for that quota in a thread. Returns the fake, the
    hubgate, the thread and the dict its answer lands in (under "member")."""
    fake = make_fake()
    hg = make_hubgate({"enrichment": {"enabled": True, "cache_ttl_ms": 60000, "settle_ms": 0},
                       "quota": {"limits": {"BatchUpdateFindings": {"rate": 0.5, "burst": 1}}}},
                      fake=fake)
    start = time.monotonic()
    assert hg.buf({"FindingIdentifiers": [ident(FID)], **NOTE}, who="member").status == 200
    answers = {}

    def member():
        answers["member"] = hg.buf({"FindingIdentifiers": [ident(FID)],
                                    "Severity": {"Label": "MEDIUM"}}, who="member")

    waiting = threading.Thread(target=member)
    waiting.start()
    time.sleep(max(0.0, start + 0.6 - time.monotonic()))
    assert waiting.is_alive() and len(fake.buf_calls()) == 1, "the member's write waits"
    return fake, hg, waiting, answers


def test_a_v2_write_sent_while_a_cached_decision_waits_for_quota_voids_it(
        make_fake, make_hubgate):
    """The member's MEDIUM on its cached MEDIUM finding is decided at once (no change) and
    waits for the BatchUpdateFindings call (one every 2 s). Meanwhile the administrator's V2
    SeverityId 5 on the member's account is sent and answered (V2 has its own quota). V2
    identifiers do not name cache entries, so the decision is void: nothing is sent until the
    finding has been read again (the fake's V2 changes no ASFF finding, so the new read still
    says MEDIUM and the request is then allowed)."""
    fake, hg, waiting, answers = medium_waiting_for_quota(make_fake, make_hubgate)
    v2 = hg.send("PATCH", V2, {"FindingIdentifiers": [{"CloudAccountUid": MEMBER_ACCOUNT,
                                                       "FindingInfoUid": FID,
                                                       "MetadataProductUid": PRODUCT_ARN}],
                               "SeverityId": 5}, who="admin")
    assert v2.status == 200, v2.text
    calls = fake.op_stats("GetFindings")["calls"]
    waiting.join(30)
    resp = answers["member"]
    assert resp.status == 200, resp.text
    assert voided(hg) == {"reread": 1.0}
    assert fake.op_stats("GetFindings")["calls"] == calls + 1, "read again before it was sent"
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["metrics"]["counter_lookup_calls"] == 1, rec["metrics"]


@pytest.mark.parametrize("settle_ms", [None, 0])
def test_a_v2_raise_is_not_undone_through_v1_on_the_state_cached_before_it(
        make_fake, make_hubgate, settle_ms):
    """The member's MEDIUM finding is cached. The administrator raises it through V2
    (SeverityId 5; the fake's V2 changes no ASFF finding, so the test applies its effect to
    the fake itself). The member then sets MEDIUM through V1, a no-op on the cached state: it
    must be refused, as settling (the journal) or as lowering CRITICAL to MEDIUM (read again
    without it), and never sent."""
    fake, hg = cached_member_finding(make_fake, make_hubgate, settle_ms)
    v2 = hg.send("PATCH", V2, {"FindingIdentifiers": [{"CloudAccountUid": MEMBER_ACCOUNT,
                                                       "FindingInfoUid": FID,
                                                       "MetadataProductUid": PRODUCT_ARN}],
                               "SeverityId": 5}, who="admin")
    assert v2.status == 200, v2.text
    fake.add_findings([finding(FID, MEMBER_ACCOUNT, "CRITICAL", 90)])
    resp = hg.buf({"FindingIdentifiers": [ident(FID)], "Severity": {"Label": "MEDIUM"}},
                  who="member")
    if settle_ms is None:
        assert_envelope(resp, 503, "STATE_SETTLING", "ServiceUnavailableException")
    else:
        body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
        assert "(CRITICAL to MEDIUM)" in body["error"]["message"], body
    assert len(fake.buf_calls()) == 1, "only the note"
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"
