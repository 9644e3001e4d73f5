"""Routing: exact (method, path) matches only; other finding-changing operations are refused."""

import pytest

from helpers import OWN_ACCOUNT_FILTER, assert_envelope, ident

BUF_BODY = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}


@pytest.mark.parametrize("method,path", [
    ("GET", "/nope"),
    ("POST", "/"),
    ("GET", "/findings/batchupdate"),
    ("PATCH", "/findings/batchupdate/"),
    ("PATCH", "//findings/batchupdate"),
    ("PATCH", "/findings//batchupdate"),
    ("PATCH", "/findings/./batchupdate"),
    ("PATCH", "/findings/../findings/batchupdate"),
    ("PATCH", "/findings%2Fbatchupdate"),
    ("PATCH", "/findings%2fbatchupdate"),
    ("PATCH", "/%66indings/batchupdate"),
    ("PATCH", "/findings/batchupdat%65"),
    ("PATCH", "/FINDINGS/BATCHUPDATE"),
    ("PATCH", "/findings/batchupdate;x=1"),
    ("POST", "/findings/"),
])
def test_unknown_route_or_path_variant_is_404(hubgate, method, path):
    resp = hubgate.send(method, path, BUF_BODY, who="admin")
    assert_envelope(resp, 404, "NOT_FOUND", "ResourceNotFoundException")
    assert hubgate.fake.requests() == []
    rec = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["status"] == 404 and rec["forwarded"] is False


def test_unsigned_unknown_route_is_still_404(hubgate):
    """Routing comes before authentication."""
    resp = hubgate.send("GET", "/nope", b"", who=None, content_type=None)
    assert_envelope(resp, 404, "NOT_FOUND", "ResourceNotFoundException")


@pytest.mark.parametrize("method,path,payload", [
    ("POST", "/automationrules/create", {"RuleName": "r"}),
    ("PATCH", "/automationrules/update", {"UpdateAutomationRulesRequestItems": []}),
    ("POST", "/automationrules/delete", {"AutomationRulesArns": ["a"]}),
    ("DELETE", "/accounts", b""),                                                 # DisableSecurityHub
    ("PATCH", "/accounts", {"AutoEnableControls": False}),
    ("POST", "/standards/deregister", {"StandardsSubscriptionArns": ["a"]}),
])
def test_other_finding_changing_operations_are_not_allowed(hubgate, method, path, payload):
    resp = hubgate.send(method, path, payload, who="admin")
    assert_envelope(resp, 403, "OPERATION_NOT_ALLOWED", "AccessDeniedException")
    assert hubgate.fake.requests() == []
    rec = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["status"] == 403 and rec["forwarded"] is False


def test_get_findings_and_update_findings_share_a_path(hubgate):
    """POST /findings (GetFindings) is forwarded, PATCH /findings (UpdateFindings) is judged."""
    get = hubgate.send("POST", "/findings", {"MaxResults": 1, "Filters": OWN_ACCOUNT_FILTER},
                       who="member")
    assert get.status == 200, get.text
    assert get.headers.get("x-hubgate-decision-id")
    upd = hubgate.send("PATCH", "/findings", {"Filters": {}, "RecordState": "ARCHIVED"},
                       who="member")
    body = assert_envelope(upd, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "may not use UpdateFindings" in body["error"]["message"]
    assert [(r["method"], r["path"]) for r in hubgate.fake.requests()] == [("POST", "/findings")]


def test_query_string_on_a_guarded_operation_is_refused(hubgate):
    """BatchUpdateFindings has no query members: an unchecked query is never forwarded."""
    resp = hubgate.send("PATCH", "/findings/batchupdate?Workflow.Status=SUPPRESSED", BUF_BODY,
                        who="admin")
    err = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")["error"]
    assert "query string" in err["message"]
    assert hubgate.fake.requests() == []


def test_query_string_on_a_read_only_operation_is_forwarded(hubgate):
    resp = hubgate.send("GET", "/accounts?HubArn=x", b"", who="admin", content_type=None)
    assert resp.status == 200, resp.text
    assert [(r["method"], r["path"], r["query"]) for r in hubgate.fake.requests()] == [
        ("GET", "/accounts", "HubArn=x")]
