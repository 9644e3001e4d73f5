"""Adversarial review (the V2 / OCSF operations, second round): BatchUpdateFindingsV2 beside
BatchUpdateFindings on the same findings, as a member with valid keys and as the SRE whose
SOAR runs through hubgate. Round 1 is test_adversarial_v2.py; what it and the other V2 files
cover is not repeated.

- HOLE (fixed): a BatchUpdateFindingsV2 that only comments (`Comment`, a triage note), or an
  UpdateFindings that only sets `Note`, was kept in the settle journal as a write "hubgate
  cannot model": every finding of the account it named (of every account, with `MetadataUids`
  or a filter) was refused with 503 STATE_SETTLING for `enrichment.settle_ms` (five minutes
  by default) to every member. One comment on one finding, by an administrator or by a member
  on its own account, locked that account's members out of resolving any of their findings
  (SDKs retry the 503 for seconds, then fail). A note changes none of the facts decisions are
  judged on (account, severity, workflow status), and hubgate already lets two notes in flight
  at once pass for that reason. Such a write now retires the cached states it may touch (a
  rule may read `current.Note`) but leaves nothing unknown once answered; a V2 write setting
  `StatusId` or `SeverityId` (or UpdateFindings' `RecordState`) still does.
- Held: after an administrator's V2 on another account, and after one with `MetadataUids`,
  a member's update of that account's finding, or of an identifier Security Hub does not
  have, is refused for ownership (403), never with the STATE_SETTLING that would tell the
  member the finding exists; its own finding is the one that waits.
- Held: a V2 forward Security Hub throttles is 429 THROTTLED (ThrottlingException, with
  Retry-After), recorded as forwarded with the account each finding was named for, and changes
  nothing in the cache.
- Held: every V2 automation-rule write (Create/Update/DeleteAutomationRuleV2) is 403
  OPERATION_NOT_ALLOWED by default, before any upstream call; routed "forward", a member is
  still refused (403, the rule would change findings unjudged), and an administrator's rule,
  which changes findings later and server-side, leaves every finding's state unknown for the
  window (503 STATE_SETTLING naming CreateAutomationRuleV2). (The fake now accepts
  CreateAutomationRuleV2: a 404 from it was a refused write, which changes nothing.)
- Held: the OCSF event of a V2 naming findings by `MetadataUids` (no account, no product)
  and of a member's V2 refused for another account validate against the OCSF schema.
"""

from __future__ import annotations

import pytest

from helpers import (MEMBER_ACCOUNT, OTHER_ACCOUNT, PRODUCT_ARN, assert_envelope, ident,
                     ocsf_schema_errors)

V2 = "/findingsv2/batchupdatev2"
NOTE = {"Note": {"Text": "looking into it", "UpdatedBy": "soar"}}
RESOLVE = {"Workflow": {"Status": "RESOLVED"}, "Note": {"Text": "SEC-7 fixed", "UpdatedBy": "soar"}}


def v2_ident(uid: str, account: str = MEMBER_ACCOUNT) -> dict:
    return {"CloudAccountUid": account, "FindingInfoUid": uid, "MetadataProductUid": PRODUCT_ARN}


def resolve(hg, fid: str = "f-own-high"):
    return hg.buf({"FindingIdentifiers": [ident(fid)], **RESOLVE}, who="member")


@pytest.mark.parametrize("who,path,write", [
    ("admin", V2, {"FindingIdentifiers": [v2_ident("f-own-medium")], "Comment": "triaged"}),
    ("member", V2, {"FindingIdentifiers": [v2_ident("f-own-medium")], "Comment": "triaged"}),
    ("admin", V2, {"MetadataUids": ["uid-1"], "Comment": "triaged"}),
    ("admin", "/findings", {"Filters": {"Id": [{"Value": "f-own-medium", "Comparison": "EQUALS"}]},
                            "Note": {"Text": "triaged", "UpdatedBy": "admin"}}),
])
def test_a_note_through_v2_or_updatefindings_does_not_lock_the_account_out(
        make_hubgate, seeded_fake, who, path, write):
    """Default settle_ms (5 min). A note on one finding of the member's account, named by
    OCSF identifiers, MetadataUids or a filter, is forwarded; the member's resolution of
    another of its findings right after is judged (on a fresh read), not refused as settling."""
    hg = make_hubgate({}, fake=seeded_fake)
    assert resolve(hg, "f-own-medium").status == 200  # read and cached before the note
    resp = hg.send("PATCH", path, write, who=who)
    assert resp.status == 200, resp.text
    calls = len(seeded_fake.get_findings_calls())
    after = resolve(hg)
    assert after.status == 200, after.text
    again = resolve(hg, "f-own-medium")
    assert again.status == 200, again.text
    # The cached state was retired all the same: the note's finding is read again.
    assert len(seeded_fake.get_findings_calls()) > calls


def test_a_v2_status_or_severity_change_still_leaves_the_account_settling(make_hubgate,
                                                                          seeded_fake):
    """What the note's exemption must not reach: a V2 setting StatusId (with a comment) or
    SeverityId leaves every finding of its account unknown for the window."""
    hg = make_hubgate({}, fake=seeded_fake)
    for change in ({"StatusId": 1, "Comment": "reopened"}, {"SeverityId": 5}):
        hg.stop()
        hg.start()
        resp = hg.send("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-own-medium")], **change},
                       who="admin")
        assert resp.status == 200, resp.text
        err = assert_envelope(resolve(hg), 503, "STATE_SETTLING",
                              "ServiceUnavailableException")["error"]
        assert "BatchUpdateFindingsV2" in err["message"], err


def test_another_account_s_settling_is_not_told_to_a_member(make_hubgate, seeded_fake):
    """After an administrator's V2 change on another account, and after one by MetadataUids,
    the member's update of that account's finding (or of a made-up one) is the ownership
    refusal, not STATE_SETTLING; only its own found finding waits."""
    hg = make_hubgate({}, fake=seeded_fake)
    for write in ({"FindingIdentifiers": [v2_ident("f-other", OTHER_ACCOUNT)], "StatusId": 2},
                  {"MetadataUids": ["uid-1"], "StatusId": 2}):
        assert hg.send("PATCH", V2, write, who="admin").status == 200
        for fid in ("f-other", "no-such-finding"):
            resp = hg.buf({"FindingIdentifiers": [ident(fid)], **NOTE}, who="member")
            err = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")["error"]
            assert "this account has no such finding" in err["message"], err
    own = hg.buf({"FindingIdentifiers": [ident("f-own-high")], **NOTE}, who="member")
    assert_envelope(own, 503, "STATE_SETTLING", "ServiceUnavailableException")


def test_a_throttled_v2_is_a_429_recorded_with_its_accounts(hubgate):
    hubgate.fake.throttle_next(BatchUpdateFindingsV2=1)
    resp = hubgate.send("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-own-high")],
                                      "Comment": "x"}, who="member")
    assert_envelope(resp, 429, "THROTTLED", "ThrottlingException")
    assert resp.headers.get("retry-after"), resp.headers
    rec = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["forwarded"] is True and rec["error"]["code"] == "THROTTLED", rec
    assert rec["findings"] == [{"AccountId": MEMBER_ACCOUNT, "Ids": ["f-own-high"],
                                "ProductArn": PRODUCT_ARN}], rec["findings"]


def test_ocsf_events_of_v2_by_metadata_uids_and_refused_validate(make_hubgate, seeded_fake):
    hg = make_hubgate({"audit": {"format": "ocsf", "include_input": False}}, fake=seeded_fake)
    ids = []
    for body, who, status in [({"MetadataUids": ["m-1", "m-2"], "StatusId": 4,
                                "Comment": "SEC-1 fixed"}, "admin", 200),
                              ({"FindingIdentifiers": [v2_ident("f", OTHER_ACCOUNT)],
                                "StatusId": 3}, "member", 403)]:
        resp = hg.send("PATCH", V2, body, who=who)
        assert resp.status == status, resp.text
        ids.append(resp.headers.get("x-hubgate-decision-id") or resp.headers["x-amzn-requestid"])
    hg.stop()
    events = {r["metadata"]["uid"]: r for r in hg.audit_records() if "metadata" in r}
    for rid in ids:
        event = events[rid]
        errors = ocsf_schema_errors(event)
        assert not errors, errors
    assert [r["uid"] for r in events[ids[0]]["resources"]] == ["m-1", "m-2"]


RULE_V2 = {"RuleName": "raise", "RuleOrder": 1.0, "Description": "d",
           "Criteria": {"OcsfFindingCriteria": {}},
           "Actions": [{"Type": "FINDING_FIELDS_UPDATE",
                        "FindingFieldsUpdate": {"SeverityId": 1}}]}


def test_automation_rules_v2_are_refused_to_members_and_settle_everything(make_hubgate,
                                                                          seeded_fake):
    """By default every V2 automation-rule write is refused (403 OPERATION_NOT_ALLOWED) before
    any upstream call, to administrators too. Routed "forward", a member is still refused
    (the rule would change findings unjudged), and an administrator's rule, which changes
    findings later and server-side, leaves every finding's state unknown for the window."""
    writes = [("POST", "/automationrulesv2/create", RULE_V2),
              ("PATCH", "/automationrulesv2/rule-1", {"RuleStatus": "ENABLED"}),
              ("DELETE", "/automationrulesv2/rule-1", b"")]
    hg = make_hubgate({}, fake=seeded_fake)
    for method, path, body in writes:
        for who in ("member", "admin"):
            assert_envelope(hg.send(method, path, body, who=who), 403, "OPERATION_NOT_ALLOWED",
                            "AccessDeniedException")
    assert seeded_fake.requests(path="/automationrulesv2/create") == []
    hg.stop()
    hg = make_hubgate({"operations": {"CreateAutomationRuleV2": "forward",
                                      "UpdateAutomationRuleV2": "forward",
                                      "DeleteAutomationRuleV2": "forward"}}, fake=seeded_fake)
    for method, path, body in writes:
        assert_envelope(hg.send(method, path, body, who="member"), 403, "OPERATION_NOT_ALLOWED",
                        "AccessDeniedException")
    assert seeded_fake.requests(path="/automationrulesv2/create") == []
    created = hg.send("POST", "/automationrulesv2/create", RULE_V2, who="admin")
    assert created.status == 200, created.text
    assert len(seeded_fake.requests(path="/automationrulesv2/create")) == 1
    err = assert_envelope(resolve(hg), 503, "STATE_SETTLING", "ServiceUnavailableException")
    assert "CreateAutomationRuleV2" in err["error"]["message"], err
