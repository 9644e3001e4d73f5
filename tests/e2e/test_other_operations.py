"""BatchUpdateFindingsV2, UpdateFindings and BatchImportFindings under policy, and the
per-operation routing table ([operations] deny | policy | forward)."""

import json
import shutil

import pytest

from helpers import MEMBER_ACCOUNT, OTHER_ACCOUNT, POLICY_DIR, PRODUCT_ARN, assert_envelope

V2 = "/findingsv2/batchupdatev2"


def v2_ident(uid, account=MEMBER_ACCOUNT):
    return {"CloudAccountUid": account, "FindingInfoUid": uid, "MetadataProductUid": PRODUCT_ARN}


def test_v2_suppress_is_stopped_by_the_same_rule_as_v1(hubgate):
    resp = hubgate.send("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-own-high")],
                                      "StatusId": 3, "Comment": "SEC-1 noise"}, who="member")
    body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "member accounts may not suppress findings" in body["error"]["message"]
    rec = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["operation"] == "BatchUpdateFindingsV2"
    assert rec["update"]["workflow_status"] == "SUPPRESSED"
    assert hubgate.fake.requests() == []


def test_v2_other_account_and_metadata_uids_are_refused_for_members(hubgate):
    other = hubgate.send("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-other", OTHER_ACCOUNT)],
                                       "Comment": "looked"}, who="member")
    assert "own account" in assert_envelope(other, 403, "POLICY_DENIED",
                                            "AccessDeniedException")["error"]["message"]
    uids = hubgate.send("PATCH", V2, {"MetadataUids": ["uid-1"], "Comment": "looked"},
                        who="member")
    assert "MetadataUids" in assert_envelope(uids, 403, "POLICY_DENIED",
                                             "AccessDeniedException")["error"]["message"]
    assert hubgate.fake.requests() == []


def test_v2_within_the_rules_is_forwarded_unchanged(hubgate):
    body = {"FindingIdentifiers": [v2_ident("f-own-high")], "Comment": "looked at it"}
    resp = hubgate.send("PATCH", V2, body, who="member")
    # the fake has no V2 implementation: what matters is that hubgate forwarded it, re-signed
    assert resp.headers.get("x-hubgate-decision-id"), resp.text
    calls = hubgate.fake.requests("PATCH", V2)
    assert len(calls) == 1
    assert hubgate.fake.get_findings_calls() == []  # V2 identifiers are not looked up


def test_v2_schema_violations_are_validation_errors(hubgate):
    resp = hubgate.send("PATCH", V2, {"FindingIdentifiers": [v2_ident("f")], "StatusId": "3"},
                        who="admin")
    err = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")["error"]
    assert any(d["path"] == "/StatusId" for d in err["details"]), err


def test_update_findings_is_for_administrators(hubgate):
    body = {"Filters": {"AwsAccountId": [{"Value": MEMBER_ACCOUNT, "Comparison": "EQUALS"}]},
            "RecordState": "ARCHIVED"}
    member = hubgate.send("PATCH", "/findings", body, who="member")
    assert_envelope(member, 403, "POLICY_DENIED", "AccessDeniedException")
    admin = hubgate.send("PATCH", "/findings", body, who="admin")
    assert admin.headers.get("x-hubgate-decision-id"), admin.text
    assert len(hubgate.fake.requests("PATCH", "/findings")) == 1


def imported(fid, account):
    return {"SchemaVersion": "2018-10-08", "Id": fid, "ProductArn": PRODUCT_ARN,
            "GeneratorId": "g", "AwsAccountId": account, "Types": ["Effects/Data Exposure"],
            "CreatedAt": "2026-11-24T00:00:00Z", "UpdatedAt": "2026-11-24T00:00:00Z",
            "Severity": {"Label": "LOW"}, "Title": "t", "Description": "d",
            "Resources": [{"Type": "Other", "Id": "r"}]}


def test_member_imports_are_refused_by_default(hubgate):
    resp = hubgate.send("POST", "/findings/import",
                        {"Findings": [imported("new-1", MEMBER_ACCOUNT)]}, who="member")
    body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert all(d["finding"] is None for d in body["error"]["details"]), body
    assert hubgate.fake.requests(path="/findings/import") == []


@pytest.fixture
def member_imports(tmp_path, make_hubgate, seeded_fake):
    """member_imports = "own-findings" in data.json: members' imports are judged, not refused."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    data = json.loads((policies / "data.json").read_text())
    data["hubgate_settings"]["member_imports"] = "own-findings"
    (policies / "data.json").write_text(json.dumps(data))
    return make_hubgate({"policy": {"dir": str(policies)}}, fake=seeded_fake)


def provider_import(fid, account):
    """A finding as a product imports it: severity in FindingProviderFields, no customer fields."""
    f = imported(fid, account)
    f["FindingProviderFields"] = {"Severity": f.pop("Severity")}
    return f


def test_import_of_another_accounts_finding_is_refused(member_imports):
    hubgate = member_imports
    resp = hubgate.send("POST", "/findings/import",
                        {"Findings": [provider_import("new-1", MEMBER_ACCOUNT),
                                      provider_import("new-2", OTHER_ACCOUNT)]}, who="member")
    body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert [d["finding"]["Id"] for d in body["error"]["details"]] == ["new-2"]
    ok = hubgate.send("POST", "/findings/import",
                      {"Findings": [provider_import("new-1", MEMBER_ACCOUNT)]}, who="member")
    assert ok.headers.get("x-hubgate-decision-id"), ok.text


def test_member_import_may_not_set_customer_owned_fields(member_imports):
    """Even with member imports on, Severity and Workflow are BatchUpdateFindings' business."""
    f = imported("new-1", MEMBER_ACCOUNT)
    f["Workflow"] = {"Status": "SUPPRESSED"}
    resp = member_imports.send("POST", "/findings/import", {"Findings": [f]}, who="member")
    body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "Severity" in body["error"]["message"] and "Workflow" in body["error"]["message"], body


@pytest.fixture
def routed(make_hubgate, seeded_fake):
    return make_hubgate({"operations": {"BatchUpdateFindingsV2": "deny", "CreateInsight": "forward",
                                        "GetFindings": "deny"}}, fake=seeded_fake)


def test_routing_table_overrides_the_defaults(routed):
    hg = routed
    v2 = hg.send("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-own-high")]}, who="admin")
    assert_envelope(v2, 403, "OPERATION_NOT_ALLOWED", "AccessDeniedException")
    get = hg.send("POST", "/findings", {"MaxResults": 1}, who="admin")
    assert_envelope(get, 403, "OPERATION_NOT_ALLOWED", "AccessDeniedException")
    insight = hg.send("POST", "/insights", {"Name": "n", "Filters": {}, "GroupByAttribute": "x"},
                      who="admin")
    assert insight.headers.get("x-hubgate-decision-id"), insight.text
    assert [(r["method"], r["path"]) for r in hg.fake.requests()] == [("POST", "/insights")]


def test_policy_routing_is_refused_for_operations_hubgate_cannot_judge(tmp_path):
    from helpers import REPO, run_hubgate
    config = tmp_path / "hubgate.toml"
    config.write_text(f'[identity]\ncallers = "{REPO / "config" / "callers.toml"}"\n'
                      f'[policy]\ndir = "{REPO / "policies"}"\n'
                      '[operations]\nCreateInsight = "policy"\n')
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode == 2
    assert "operations.CreateInsight" in r.stderr


def test_boto3_v2_suppress_is_denied_and_comment_forwarded(hubgate):
    """The SDK's own BatchUpdateFindingsV2 call, through hubgate."""
    from botocore.exceptions import ClientError
    client = hubgate.client("member")
    with pytest.raises(ClientError) as e:
        client.batch_update_findings_v2(FindingIdentifiers=[v2_ident("f-own-high")], StatusId=3,
                                        Comment="SEC-4 noise")
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "member accounts may not suppress findings" in e.value.response["Error"]["Message"]
    assert hubgate.fake.requests() == []
    # an allowed V2 call reaches the fake, which lists it as processed
    resp = client.batch_update_findings_v2(FindingIdentifiers=[v2_ident("f-own-high")],
                                           Comment="looked at it")
    assert resp["ProcessedFindings"] == [{"FindingIdentifier": v2_ident("f-own-high")}]
    assert len(hubgate.fake.requests("PATCH", V2)) == 1


def test_v2_naming_one_finding_for_two_accounts_is_refused(hubgate):
    """The decision would see only the first account; Security Hub would get both."""
    resp = hubgate.send("PATCH", V2, {"FindingIdentifiers": [v2_ident("x-uid"),
                                                             v2_ident("x-uid", OTHER_ACCOUNT)],
                                      "Comment": "looked"}, who="member")
    body = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert "for different accounts" in body["error"]["message"], body
    assert hubgate.fake.requests() == []
