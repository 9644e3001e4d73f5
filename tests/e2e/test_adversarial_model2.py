"""Adversarial review (the typed request model, second round): what a request touches against
what the policies are told it touches, for every finding-changing operation, as a caller with
valid keys and as the SRE whose account they share.

DRAFT
"""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import (ADMIN_ACCOUNT, MEMBER_ACCOUNT, OTHER_ACCOUNT, POLICY_DIR, PRODUCT_ARN,
                     assert_envelope, finding, ident)

BUF = "/findings/batchupdate"
V2 = "/findingsv2/batchupdatev2"
IMPORT = "/findings/import"
TICKET_MSG = "closing a finding needs a ticket"


def policies_with(tmp_path, library=None, **settings):
    """A copy of the shipped policy set with these hubgate_settings (and library modes)."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    data = json.loads((policies / "data.json").read_text())
    data["hubgate_settings"].update(settings)
    data["hubgate_settings"].setdefault("library", {}).update(library or {})
    (policies / "data.json").write_text(json.dumps(data))
    return policies


def reimport(fid: str, account: str, **changes) -> dict:
    """A seeded finding as its provider re-imports it: severity only in FindingProviderFields,
    none of the customer's fields; `changes` replace members."""
    f = finding(fid, account, "MEDIUM", 40)
    for customer in ("Severity", "Workflow", "WorkflowState", "Note", "RecordState"):
        f.pop(customer)
    f["FindingProviderFields"] = {"Severity": {"Label": "MEDIUM"}}
    f.update(changes)
    return f


# --- An import's RecordState ARCHIVED closes a finding as UpdateFindings' does ---------------


def test_an_import_that_archives_a_finding_needs_a_ticket(hubgate, make_hubgate, tmp_path):
    """RecordState ARCHIVED takes an existing finding out of the default views, whether
    UpdateFindings or a re-import sets it (an import cannot change an existing finding's
    Workflow, but it does change its RecordState). The ticket rule asked a ticket of the first
    only: with the rule at its default (warn), an administrator's archiving re-import left no
    warning in the decision record, and enforced it was forwarded without a ticket."""
    fake = hubgate.fake
    archive = {"Findings": [reimport("f-other", OTHER_ACCOUNT, RecordState="ARCHIVED")]}
    resp = hubgate.send("POST", IMPORT, archive, who="admin")
    assert resp.status == 200, resp.text
    record = hubgate.audit_for(resp.headers["x-hubgate-decision-id"])
    warnings = [w["msg"] for w in record["result"]["warnings"]]
    assert any(TICKET_MSG in m for m in warnings), record["result"]

    hg = make_hubgate({"policy": {"dir": str(policies_with(tmp_path, {"ticket": "enforce"}))}},
                      fake=fake)
    sent = len(fake.requests("POST", IMPORT))
    resp = hg.send("POST", IMPORT, archive, who="admin")
    err = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert TICKET_MSG in err["error"]["message"], err
    assert len(fake.requests("POST", IMPORT)) == sent, "forwarded"
    # The ticket goes where an import carries a note: the archived finding's own Note.Text.
    # Another finding's ticket does not count for it, and an import that keeps its findings
    # ACTIVE (the provider's usual re-import) needs none.
    noted = reimport("f-other", OTHER_ACCOUNT, RecordState="ARCHIVED",
                     Note={"Text": "retired in SEC-77", "UpdatedBy": "soc",
                           "UpdatedAt": "2024-01-02T00:00:00.000Z"})
    two = {"Findings": [noted, reimport("f-admin", ADMIN_ACCOUNT, RecordState="ARCHIVED")]}
    resp = hg.send("POST", IMPORT, two, who="admin")
    err = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert [d["finding"]["Id"] for d in err["error"]["details"]] == ["f-admin"], err
    for ok in ({"Findings": [noted]},
               {"Findings": [reimport("f-other", OTHER_ACCOUNT, RecordState="ACTIVE")]}):
        resp = hg.send("POST", IMPORT, ok, who="admin")
        assert resp.status == 200, resp.text


# --- A re-import that reactivates a finding reopens it ----------------------------------------


def test_a_member_import_that_reactivates_a_finding_is_a_reopening(make_hubgate, make_fake,
                                                                   tmp_path):
    """Security Hub sets a NOTIFIED or RESOLVED finding back to NEW when its RecordState goes
    from ARCHIVED to ACTIVE or its Compliance.Status from PASSED to WARNING, FAILED or
    NOT_AVAILABLE (the model's WorkflowStatus documentation). With member imports on and the
    reopen rule enforced, a member could not set Workflow.Status, but reopened its RESOLVED
    finding all the same by re-importing it ACTIVE (or FAILED): forwarded. hubgate cannot see
    the finding's current status or record state, so such an import is now refused for members,
    as V2's open statuses are; one that keeps a finding archived or passed is forwarded."""
    fake = make_fake()
    closed = finding("f-own-high", MEMBER_ACCOUNT, "HIGH", 70, status="RESOLVED")
    closed["RecordState"] = "ARCHIVED"
    closed["Compliance"] = {"Status": "PASSED"}
    fake.add_findings([closed])
    policies = policies_with(tmp_path, {"reopen": "enforce"}, member_imports="own-findings")
    hg = make_hubgate({"policy": {"dir": str(policies)}}, fake=fake)
    for changes in ({"RecordState": "ACTIVE"}, {"Compliance": {"Status": "FAILED"}},
                   {"RecordState": "ARCHIVED", "Compliance": {"Status": "NOT_AVAILABLE"}}):
        body = {"Findings": [reimport("f-own-high", MEMBER_ACCOUNT, **changes)]}
        resp = hg.send("POST", IMPORT, body, who="member")
        err = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
        assert "reopen" in err["error"]["message"], (changes, err)
        assert [d["finding"]["Id"] for d in err["error"]["details"]] == ["f-own-high"], err
    assert fake.requests("POST", IMPORT) == [], "forwarded"
    for changes in ({"RecordState": "ARCHIVED"}, {"Compliance": {"Status": "PASSED"}}):
        body = {"Findings": [reimport("f-own-high", MEMBER_ACCOUNT, **changes)]}
        resp = hg.send("POST", IMPORT, body, who="member")
        assert resp.status == 200, (changes, resp.text)
