"""Adversarial review (the V2 / OCSF operations, end to end): BatchUpdateFindingsV2 and the V2
reads, as a member with valid keys, as the SRE whose account they share, and as the auditor
who reads the decision log afterwards.

- HOLE (fixed): the decision record of a BatchUpdateFindingsV2 did not say which account each
  finding was named for. A V2 finding is the triple (CloudAccountUid, FindingInfoUid,
  MetadataProductUid) and the policies judged the account, but the record's `findings` kept
  only `Ids` and `ProductArn`, and V2's identifiers are moved out of `input.request.body`: a
  member refused for naming another account's finding left a record that did not say which
  account, and an administrator's change to account B's finding read the same as one to
  account C's (with `audit.include_input = false`, an import's `AwsAccountId` was lost the
  same way). The record's finding groups now carry `AccountId` (the claimed account; absent
  when the request names none: BatchUpdateFindings, MetadataUids), and an OCSF event names it
  as each resource's `owner.account`.
- Held: a member's GetFindingsV2, GetFindingStatisticsV2 and GetResourcesV2 (re-signed, they
  would read every account's OCSF findings with hubgate's role) are 403 OPERATION_NOT_ALLOWED
  (an AccessDeniedException SDKs do not retry) before any upstream call, with a decision
  record, even when the body filters on the member's own cloud.account.uid: hubgate has no
  confinement for V2 reads, and refuses rather than forward them unconfined.
- Held (covered elsewhere, not repeated here): every StatusId and SeverityId value, as
  numbers, strings, fractions, `-0` and exponents (test_adversarial_operations2.py,
  test_adversarial_model2.py); MetadataUids and FindingIdentifiers together, MetadataUids of
  any account for members, a finding named for two accounts, CloudAccountUid look-alikes
  (test_adversarial_operations.py, test_other_operations.py); V2 writes leaving the V1 state
  cached before them unknown, with and without the settle journal (test_adversarial_state.py,
  test_settle.py, test_replicas.py).
- Left alone, documented (README, "How the policy-capable operations look to a policy"): V2
  ownership rests on CloudAccountUid as sent. It is one of the three identifiers that name
  the finding, so a member that names its own account names only its own account's findings;
  Security Hub sets `cloud.account.uid` from where a finding lives (for an ASFF import, its
  `AwsAccountId`, which must be the importing account unless the product is an allow-listed
  partner), so a member cannot give another account's finding its own account through hubgate:
  its imports are off by default and, with `member_imports = "own-findings"`, must claim its
  own account, which makes a finding of its own account, not another's.
- Left alone (noticed): one (FindingInfoUid, MetadataProductUid) named for two accounts is a
  400 for administrators too, though to V2 those are two findings (the decision keys findings
  by the two; such ids embed the account in practice); an OCSF event types a V2 finding as
  "AwsSecurityFinding"; `hubgate eval` places a V2 "own account" denial at hubgate.rego's rule
  of the same message (it locates rules by message text), not operations.rego's.
"""

from __future__ import annotations

import json

import pytest

from helpers import (ADMIN_ACCOUNT, MEMBER_ACCOUNT, OTHER_ACCOUNT, PRODUCT_ARN, assert_envelope,
                     audit_verify, ocsf_schema_errors)

V2 = "/findingsv2/batchupdatev2"


def ident(uid: str, account: str) -> dict:
    return {"CloudAccountUid": account, "FindingInfoUid": uid, "MetadataProductUid": PRODUCT_ARN}


def places(record: dict) -> list[tuple[str, str, str | None]]:
    """The record's findings flattened in place order: (Id, ProductArn, AccountId)."""
    return [(i, g["ProductArn"], g.get("AccountId")) for g in record["findings"] for i in g["Ids"]]


def test_a_v2_record_names_the_account_each_finding_was_named_for(hubgate):
    """A member's V2 naming another account's finding is refused; its record says which
    account (the violation's place points at it). An administrator's V2 naming one product's
    findings in two accounts is recorded as two groups, each with its account; a V1 record
    has no AccountId (the request names none)."""
    refused = hubgate.send("PATCH", V2, {"FindingIdentifiers": [ident("f-x", OTHER_ACCOUNT)],
                                         "Comment": "looked"}, who="member")
    assert_envelope(refused, 403, "POLICY_DENIED", "AccessDeniedException")
    rec = hubgate.audit_for(refused.headers["x-amzn-requestid"])
    assert places(rec) == [("f-x", PRODUCT_ARN, OTHER_ACCOUNT)], rec["findings"]
    [violation] = rec["result"]["violations"]
    assert "own account" in violation["msg"] and violation["findings"] == [0], violation

    body = {"FindingIdentifiers": [ident("f-a", MEMBER_ACCOUNT), ident("f-b", OTHER_ACCOUNT),
                                   ident("f-c", MEMBER_ACCOUNT)], "StatusId": 4,
            "Comment": "SEC-9 fixed"}
    allowed = hubgate.send("PATCH", V2, body, who="admin")
    assert allowed.status == 200, allowed.text
    rec = hubgate.audit_for(allowed.headers["x-hubgate-decision-id"])
    assert rec["findings"] == [
        {"Ids": ["f-a", "f-c"], "ProductArn": PRODUCT_ARN, "AccountId": MEMBER_ACCOUNT},
        {"Ids": ["f-b"], "ProductArn": PRODUCT_ARN, "AccountId": OTHER_ACCOUNT},
    ], rec["findings"]
    assert len(hubgate.fake.requests("PATCH", V2)) == 1

    v1 = hubgate.buf({"FindingIdentifiers": [{"Id": "f-own-high", "ProductArn": PRODUCT_ARN}],
                      "Note": {"Text": "t", "UpdatedBy": "u"}}, who="member")
    assert v1.status == 200, v1.text
    rec = hubgate.audit_for(v1.headers["x-hubgate-decision-id"])
    assert rec["findings"] == [{"Ids": ["f-own-high"], "ProductArn": PRODUCT_ARN}]


def test_a_v2_ocsf_event_names_each_finding_s_account(make_hubgate, seeded_fake):
    """With audit.format = "ocsf" and include_input = false (so no copy of the body is left),
    each resource of a V2 event has its account as `owner.account`, the event still validates
    against the OCSF schema it declares, and the log's chain verifies."""
    hg = make_hubgate({"audit": {"format": "ocsf", "include_input": False}}, fake=seeded_fake)
    resp = hg.send("PATCH", V2, {"FindingIdentifiers": [ident("f-b", OTHER_ACCOUNT)],
                                 "StatusId": 4, "Comment": "SEC-9 fixed"}, who="admin")
    assert resp.status == 200, resp.text
    rid = resp.headers["x-hubgate-decision-id"]
    [event] = [r for r in hg.audit_records() if r.get("metadata", {}).get("uid") == rid] or [None]
    assert event, hg.audit_records()
    [resource] = event["resources"]
    assert resource["uid"] == "f-b"
    assert resource["owner"]["account"]["uid"] == OTHER_ACCOUNT, json.dumps(resource)
    assert event["actor"]["user"]["account"]["uid"] == ADMIN_ACCOUNT
    errors = ocsf_schema_errors(event)
    assert not errors, errors
    hg.stop()
    out = audit_verify(hg.audit_path)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", ["/findingsv2", "/findingsv2/statistics", "/resourcesv2"])
def test_a_member_s_v2_reads_are_refused_before_any_call(hubgate, path):
    body = {"Filters": {"CompositeFilters": [{"StringFilters": [
        {"FieldName": "cloud.account.uid",
         "Filter": {"Value": MEMBER_ACCOUNT, "Comparison": "EQUALS"}}]}]}}
    resp = hubgate.send("POST", path, body, who="member")
    err = assert_envelope(resp, 403, "OPERATION_NOT_ALLOWED", "AccessDeniedException")["error"]
    assert "members may not call" in err["message"], err
    assert hubgate.fake.requests() == []
    rec = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["forwarded"] is False and rec["status"] == 403
