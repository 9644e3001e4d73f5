"""boto3 clients pointed at hubgate: the shipped policies, forwarding and read-only routes."""

import json
import shutil

import pytest
from botocore.exceptions import ClientError

from helpers import (
    ADMIN_ACCOUNT,
    MEMBER_ACCOUNT,
    POLICY_DIR,
    PRODUCT_ARN,
    UPSTREAM_KEY,
    capture_sent,
    decision_id_of_boto,
    header,
    ident,
    named_findings,
)

SUPPRESS = "member accounts may not suppress findings"
LOWER = "member accounts may not lower a finding's severity"
OWN_ACCOUNT = "member accounts may only update findings of their own account: this account has no such finding"
NOT_FOUND = "member accounts may only update findings of their own account: this account has no such finding"


def expect_denied(hg, call, reason: str) -> ClientError:
    """call() must raise AccessDeniedException naming reason, with one matching audit record."""
    with pytest.raises(ClientError) as e:
        call()
    err = e.value
    assert type(err).__name__ == "AccessDeniedException", err
    assert err.response["Error"]["Code"] == "AccessDeniedException"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert reason in err.response["Error"]["Message"], err
    assert err.response["Error"]["Message"].startswith("POLICY_DENIED: ")
    rid = err.response["ResponseMetadata"]["RequestId"]
    rec = hg.audit_for(rid)
    assert rec["result"]["allow"] is False
    assert any(reason in v["msg"] for v in rec["result"]["violations"]), rec
    assert rec["forwarded"] is False
    assert rec["status"] == 403
    assert rec["operation"] == "BatchUpdateFindings"
    return err


def assert_forwarded(hg, resp: dict) -> dict:
    """resp came from the fake through hubgate; return its audit record."""
    hdrs = resp["ResponseMetadata"]["HTTPHeaders"]
    decision = hdrs.get("x-hubgate-decision-id")
    assert decision, hdrs
    upstream_rid = hdrs["x-amzn-requestid"]
    assert upstream_rid != decision, "forwarded responses keep the upstream's request id"
    rec = hg.audit_for(decision)
    assert rec["forwarded"] is True
    assert rec["status"] == 200
    assert rec["upstream_status"] == 200
    assert rec["upstream_request_id"] == upstream_rid
    return rec


def only_lookups(fake):
    """The fake saw GetFindings lookups at most, and no BatchUpdateFindings."""
    assert fake.buf_calls() == []
    assert {(r["method"], r["path"]) for r in fake.requests()} <= {("POST", "/findings")}


# --- administrators ---------------------------------------------------------


def test_admin_suppress_is_forwarded_and_applied(hubgate):
    fake = hubgate.fake
    client = hubgate.client("admin")
    sent = capture_sent(client)
    resp = client.batch_update_findings(
        FindingIdentifiers=[ident("f-other"), ident("f-own-high")],
        Workflow={"Status": "SUPPRESSED"},
        Note={"Text": "RISK-7 accepted risk", "UpdatedBy": "admin"})
    assert sorted(f["Id"] for f in resp["ProcessedFindings"]) == ["f-other", "f-own-high"]
    assert resp["UnprocessedFindings"] == []
    rec = assert_forwarded(hubgate, resp)
    assert rec["principal"]["id"] == "admin"
    assert rec["principal"]["account_id"] == ADMIN_ACCOUNT
    assert rec["principal"]["role"] == "administrator"
    assert rec["result"]["allow"] is True
    # grouped by product: each ARN once
    assert rec["findings"] == [{"ProductArn": PRODUCT_ARN, "Ids": ["f-other", "f-own-high"]}]

    stored = fake.findings()
    assert stored["f-other"]["Workflow"]["Status"] == "SUPPRESSED"
    assert stored["f-own-high"]["Workflow"]["Status"] == "SUPPRESSED"
    assert stored["f-other"]["Note"]["Text"] == "RISK-7 accepted risk"

    [forwarded] = fake.buf_calls()
    # the bytes that were checked are the bytes that are forwarded, re-signed by hubgate
    assert forwarded["body"].encode() == sent[-1][2]
    auth = header(forwarded, "Authorization")
    assert f"Credential={UPSTREAM_KEY}/" in auth
    assert forwarded["signature_valid"] is True


def test_admin_may_lower_severity_of_any_account(hubgate):
    resp = hubgate.client("admin").batch_update_findings(
        FindingIdentifiers=[ident("f-other")], Severity={"Label": "INFORMATIONAL"})
    assert_forwarded(hubgate, resp)
    assert hubgate.fake.findings()["f-other"]["Severity"]["Label"] == "INFORMATIONAL"


def test_unknown_finding_is_denied_for_members(hubgate):
    """Its owner cannot be verified, so a member may not name it."""
    client = hubgate.client("member")
    expect_denied(hubgate, lambda: client.batch_update_findings(
        FindingIdentifiers=[ident("f-does-not-exist")], Note={"Text": "x", "UpdatedBy": "m"}),
        NOT_FOUND)
    only_lookups(hubgate.fake)
    assert len(hubgate.fake.get_findings_calls()) >= 1


def test_unknown_finding_of_an_administrator_is_left_to_security_hub(hubgate):
    """Administrators may update any account's findings: Security Hub itself answers an unknown
    identifier in UnprocessedFindings, so hubgate does not refuse it."""
    client = hubgate.client("admin")
    resp = client.batch_update_findings(
        FindingIdentifiers=[ident("f-does-not-exist")], Note={"Text": "x", "UpdatedBy": "a"})
    assert_forwarded(hubgate, resp)
    assert [u["FindingIdentifier"]["Id"] for u in resp["UnprocessedFindings"]] == ["f-does-not-exist"]


# --- members ----------------------------------------------------------------


def test_member_suppress_is_denied_without_any_upstream_call(hubgate):
    client = hubgate.client("member")
    err = expect_denied(hubgate, lambda: client.batch_update_findings(
        FindingIdentifiers=[ident("f-own-high")], Workflow={"Status": "SUPPRESSED"}), SUPPRESS)
    assert SUPPRESS in str(err)
    assert hubgate.fake.requests() == []
    assert hubgate.fake.findings()["f-own-high"]["Workflow"]["Status"] == "NEW"


@pytest.mark.parametrize("severity", [{"Label": "LOW"}, {"Normalized": 10},
                                      {"Label": "MEDIUM"}, {"Normalized": 69}])
def test_member_lowering_severity_is_denied(hubgate, severity):
    client = hubgate.client("member")
    expect_denied(hubgate, lambda: client.batch_update_findings(
        FindingIdentifiers=[ident("f-own-high")], Severity=severity), LOWER)
    only_lookups(hubgate.fake)
    assert hubgate.fake.findings()["f-own-high"]["Severity"] == {"Label": "HIGH",
                                                                 "Normalized": 70}


@pytest.mark.parametrize("severity,label", [
    ({"Label": "CRITICAL"}, "CRITICAL"),
    ({"Normalized": 95}, "CRITICAL"),
    ({"Normalized": 85}, "HIGH"),  # same rank is not lowering
])
def test_member_raising_severity_is_forwarded(hubgate, severity, label):
    resp = hubgate.client("member").batch_update_findings(
        FindingIdentifiers=[ident("f-own-high")], Severity=severity)
    assert resp["ProcessedFindings"] == [ident("f-own-high")]
    rec = assert_forwarded(hubgate, resp)
    assert rec["principal"]["id"] == "member"
    assert rec["principal"]["account_id"] == MEMBER_ACCOUNT
    assert rec["principal"]["role"] == "member"
    assert hubgate.fake.findings()["f-own-high"]["Severity"]["Label"] == label
    assert len(hubgate.fake.buf_calls()) == 1


def test_member_note_on_own_finding_is_forwarded(hubgate):
    resp = hubgate.client("member").batch_update_findings(
        FindingIdentifiers=[ident("f-own-medium")], Note={"Text": "triaged", "UpdatedBy": "m"},
        VerificationState="TRUE_POSITIVE",
        UserDefinedFields={"ticket": "SEC-1"}, Workflow={"Status": "NOTIFIED"})
    assert_forwarded(hubgate, resp)
    f = hubgate.fake.findings()["f-own-medium"]
    assert f["Note"]["Text"] == "triaged"
    assert f["VerificationState"] == "TRUE_POSITIVE"
    assert f["UserDefinedFields"] == {"ticket": "SEC-1"}
    assert f["Workflow"]["Status"] == "NOTIFIED"


@pytest.fixture
def enforced_library(tmp_path, make_hubgate, seeded_fake):
    """hubgate with the opinionated library rules (ticket, verification, scores, reopen) enforced
    through data.json, as policies/README.md tells a team to do."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    data = json.loads((policies / "data.json").read_text())
    data["hubgate_settings"]["library"] = {k: "enforce" for k in data["hubgate_settings"]["library"]}
    (policies / "data.json").write_text(json.dumps(data))
    return make_hubgate({"policy": {"dir": str(policies)}}, fake=seeded_fake)


def test_members_may_not_change_scores_or_dismiss_findings(enforced_library):
    hubgate = enforced_library
    client = hubgate.client("member")
    expect_denied(hubgate, lambda: client.batch_update_findings(
        FindingIdentifiers=[ident("f-own-medium")], Confidence=80),
        "member accounts may not change Confidence or Criticality")
    expect_denied(hubgate, lambda: client.batch_update_findings(
        FindingIdentifiers=[ident("f-own-medium")], VerificationState="FALSE_POSITIVE"),
        "member accounts may not mark findings FALSE_POSITIVE or BENIGN_POSITIVE")


def test_resolving_needs_a_ticket_reference(enforced_library):
    hubgate = enforced_library
    client = hubgate.client("member")
    expect_denied(hubgate, lambda: client.batch_update_findings(
        FindingIdentifiers=[ident("f-own-medium")], Workflow={"Status": "RESOLVED"},
        Note={"Text": "fixed it", "UpdatedBy": "m"}),
        "needs a ticket reference in Note.Text")
    resp = client.batch_update_findings(
        FindingIdentifiers=[ident("f-own-medium")], Workflow={"Status": "RESOLVED"},
        Note={"Text": "fixed in SEC-981", "UpdatedBy": "m"})
    assert_forwarded(hubgate, resp)
    assert hubgate.fake.findings()["f-own-medium"]["Workflow"]["Status"] == "RESOLVED"


def test_library_rules_only_warn_by_default(hubgate):
    """Shipped data.json: the opinionated rules are recorded as warnings, nothing is refused."""
    client = hubgate.client("member")
    resp = client.batch_update_findings(
        FindingIdentifiers=[ident("f-own-medium")], Workflow={"Status": "RESOLVED"},
        Note={"Text": "fixed it", "UpdatedBy": "m"}, Confidence=80)
    rec = assert_forwarded(hubgate, resp)
    warnings = " ".join(w["msg"] for w in rec["result"]["warnings"])
    assert "needs a ticket reference" in warnings, rec["result"]
    assert "Confidence or Criticality" in warnings, rec["result"]
    assert rec["result"]["violations"] == []


def test_member_updating_another_accounts_finding_is_denied(hubgate):
    client = hubgate.client("member")
    expect_denied(hubgate, lambda: client.batch_update_findings(
        FindingIdentifiers=[ident("f-other")], Note={"Text": "mine now", "UpdatedBy": "m"}),
        OWN_ACCOUNT)
    only_lookups(hubgate.fake)
    assert hubgate.fake.findings()["f-other"]["Note"]["Text"] == "seed"


def test_member_batch_with_one_foreign_finding_is_rejected_whole(hubgate):
    """on_partial_deny = reject: nothing of the batch is forwarded."""
    client = hubgate.client("member")
    err = expect_denied(hubgate, lambda: client.batch_update_findings(
        FindingIdentifiers=[ident("f-own-high"), ident("f-other")],
        Severity={"Label": "CRITICAL"}), OWN_ACCOUNT)
    only_lookups(hubgate.fake)
    assert hubgate.fake.findings()["f-own-high"]["Severity"]["Label"] == "HIGH"
    rec = hubgate.audit_for(err.response["ResponseMetadata"]["RequestId"])
    denied = {v["msg"]: named_findings(rec, v) for v in rec["result"]["violations"]}
    # grouped by message: the one foreign finding is named, the member's own one is not
    assert denied[OWN_ACCOUNT] == [{"Id": "f-other", "ProductArn": PRODUCT_ARN}], denied


def test_denial_message_names_each_reason_once(hubgate):
    client = hubgate.client("member")
    err = expect_denied(hubgate, lambda: client.batch_update_findings(
        FindingIdentifiers=[ident("f-own-high"), ident("f-other")],
        Workflow={"Status": "SUPPRESSED"}, Severity={"Label": "LOW"}), SUPPRESS)
    # suppression is denied before any upstream call, so the other reasons may be absent;
    # but the message is the distinct reasons joined with "; " and names suppression once
    assert err.response["Error"]["Message"].count(SUPPRESS) == 1


# --- read-only operations ---------------------------------------------------


@pytest.mark.parametrize("who", ["admin", "member"])
def test_get_findings_is_forwarded_unchanged(hubgate, who):
    client = hubgate.client(who)
    sent = capture_sent(client)
    resp = client.get_findings(
        Filters={"AwsAccountId": [{"Value": MEMBER_ACCOUNT, "Comparison": "EQUALS"}]},
        MaxResults=10)
    assert sorted(f["Id"] for f in resp["Findings"]) == ["f-own-high", "f-own-medium"]
    assert resp["Findings"][0]["Severity"]["Label"] in ("HIGH", "MEDIUM")
    rec = assert_forwarded(hubgate, resp)
    assert rec["operation"] == "GetFindings"
    [got] = hubgate.fake.requests()
    assert (got["method"], got["path"]) == ("POST", "/findings")
    assert got["body"].encode() == sent[-1][2]
    assert json.loads(got["body"])["MaxResults"] == 10
    assert f"Credential={UPSTREAM_KEY}/" in header(got, "Authorization")


def test_describe_hub_is_forwarded(hubgate):
    resp = hubgate.client("admin").describe_hub()
    assert resp["HubArn"] == "arn:aws:securityhub:us-east-1:111111111111:hub/default"
    assert resp["AutoEnableControls"] is True
    assert_forwarded(hubgate, resp)
    assert [(r["method"], r["path"]) for r in hubgate.fake.requests()] == [("GET", "/accounts")]


def test_get_findings_paginator_through_hubgate(hubgate):
    hubgate.fake.configure(page_size=1)
    pages = list(hubgate.client("admin").get_paginator("get_findings").paginate(
        Filters={"ProductArn": [{"Value": PRODUCT_ARN, "Comparison": "EQUALS"}]}))
    assert len(pages) == 4
    assert sorted(f["Id"] for p in pages for f in p["Findings"]) == sorted(
        ["f-own-high", "f-own-medium", "f-other", "f-admin"])
    ids = {decision_id_of_boto(p) for p in pages}
    assert len(ids) == 4, "each forwarded call has its own decision id"


def test_member_suppress_spelled_with_json_escapes_is_denied(hubgate):
    """The policy sees decoded JSON: "\\u0053UPPRESSED" is SUPPRESSED."""
    raw = ('{"FindingIdentifiers": [{"Id": "f-own-high", "ProductArn": "%s"}], '
           '"Workflow": {"Status": "\\u0053UPPRESSED"}}' % PRODUCT_ARN)
    resp = hubgate.buf(raw, who="member")
    assert resp.status == 403, resp.text
    assert SUPPRESS in resp.json()["error"]["message"]
    assert hubgate.fake.requests() == []


def test_member_label_and_normalized_disagreeing_is_not_forwarded(hubgate):
    """Label CRITICAL with Normalized 10: what Security Hub applies is unknown (research §1.1),
    and Normalized 10 is LOW. hubgate must reject it (400) or deny it (403), never forward it."""
    client = hubgate.client("member")
    with pytest.raises(ClientError) as e:
        client.batch_update_findings(FindingIdentifiers=[ident("f-own-high")],
                                     Severity={"Label": "CRITICAL", "Normalized": 10})
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403)
    assert hubgate.fake.buf_calls() == []
    assert hubgate.fake.findings()["f-own-high"]["Severity"] == {"Label": "HIGH",
                                                                 "Normalized": 70}
