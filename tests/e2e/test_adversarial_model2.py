"""Adversarial review (the typed request model, second round): what a request touches against
what the policies are told it touches, for every finding-changing operation, as a caller with
valid keys and as the SRE whose account they share.

- HOLE (fixed): an import archives a finding as UpdateFindings' RecordState ARCHIVED does (an
  import cannot change an existing finding's Workflow, but a re-import changes its
  RecordState), and the ticket rule asked a ticket of UpdateFindings only: at its default
  (warn) an administrator's archiving re-import left no warning in its decision record, and
  enforced it was forwarded without a ticket. Each imported finding with RecordState ARCHIVED
  now needs a ticket in its own Note.Text (policies/library/ticket.rego).
- HOLE (fixed): Security Hub sets a NOTIFIED or RESOLVED finding back to NEW when its
  RecordState goes from ARCHIVED to ACTIVE or its Compliance.Status from PASSED to WARNING,
  FAILED or NOT_AVAILABLE (the model's WorkflowStatus documentation). With member imports on
  and the reopen rule enforced, a member that may not set Workflow.Status reopened its RESOLVED
  finding by re-importing it ACTIVE or FAILED. Such an import is now a reopening hubgate cannot
  judge, refused per finding, as V2's open statuses are (policies/library/reopen.rego).
- Held: every member of the four operations' inputs in the botocore model is typed (the
  107 filters of UpdateFindings included) or refused; over-long UTF-8, a look-alike (Cyrillic)
  member name, a duplicate key inside the second of two identifiers, Confidence -1,
  Criticality 101, a score as text, 70.5 where an integer belongs and a structure written as an
  array are 400s before any lookup; an Id with a NUL is looked up as sent and refused as not
  found; V2 with both lists (one empty) or SeverityId 7 is a 400, a MetadataUid (no account to
  judge) a 403; an import of 101 findings a 400, one over server.max_body_bytes a 413 (AWS takes
  6 MB batches: README now says a provider's larger batches need a larger bound). Each has an
  envelope SDKs do not retry, a decision record, and nothing forwarded.
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


# --- Held ------------------------------------------------------------------------------------

OWN = {"Id": "f-own-high", "ProductArn": PRODUCT_ARN}


def v2_ident(fid: str, account: str = MEMBER_ACCOUNT) -> dict:
    return {"CloudAccountUid": account, "FindingInfoUid": fid, "MetadataProductUid": PRODUCT_ARN}


def j(obj) -> bytes:
    return json.dumps(obj).encode()


HELD = [
    # (id, path, raw body, status, error code): every one refused, nothing forwarded
    ("overlong-utf8-id", BUF,
     b'{"FindingIdentifiers": [{"Id": "f-own-\xc0\xafhigh", "ProductArn": "' + PRODUCT_ARN.encode()
     + b'"}], "Workflow": {"Status": "NOTIFIED"}}', 400, "VALIDATION_ERROR"),
    # looked up as sent (NUL and all) and not found: never matched to f-own-high
    ("nul-in-id", BUF, j({"FindingIdentifiers": [{"Id": "f-own-high\u0000", "ProductArn":
                                                  PRODUCT_ARN}],
                          "Workflow": {"Status": "SUPPRESSED"}}), 403, "POLICY_DENIED"),
    ("cyrillic-member-name", BUF, j({"FindingIdentifiers": [OWN],
                                     "W\u043erkflow": {"Status": "SUPPRESSED"}}),
     400, "VALIDATION_ERROR"),
    ("duplicate-key-in-second-identifier", BUF,
     ('{"FindingIdentifiers": [{"Id": "f-own-high", "ProductArn": "%s"}, {"Id": "f-own-high", '
      '"Id": "f-other", "ProductArn": "%s"}], "Workflow": {"Status": "NOTIFIED"}}'
      % (PRODUCT_ARN, PRODUCT_ARN)).encode(), 400, "VALIDATION_ERROR"),
    ("negative-confidence", BUF, j({"FindingIdentifiers": [OWN], "Confidence": -1}), 400,
     "VALIDATION_ERROR"),
    ("criticality-over-100", BUF, j({"FindingIdentifiers": [OWN], "Criticality": 101}), 400,
     "VALIDATION_ERROR"),
    ("confidence-as-string", BUF, j({"FindingIdentifiers": [OWN], "Confidence": "50"}), 400,
     "VALIDATION_ERROR"),
    ("normalized-half", BUF, j({"FindingIdentifiers": [OWN], "Severity": {"Normalized": 70.5}}),
     400, "VALIDATION_ERROR"),
    ("severity-as-array", BUF, j({"FindingIdentifiers": [OWN], "Severity": ["LOW", 1]}), 400,
     "VALIDATION_ERROR"),
    ("v2-both-lists-one-empty", V2, j({"FindingIdentifiers": [v2_ident("f-own-high")],
                                        "MetadataUids": [], "StatusId": 4}),
     400, "VALIDATION_ERROR"),
    ("v2-severity-id-7", V2, j({"FindingIdentifiers": [v2_ident("f-own-high")],
                                "SeverityId": 7}), 400, "VALIDATION_ERROR"),
    ("v2-uid-of-another-account", V2, j({"MetadataUids": ["f-other"], "StatusId": 2}), 403,
     "POLICY_DENIED"),
    ("import-101-findings", IMPORT,
     j({"Findings": [reimport(f"f-{i}", MEMBER_ACCOUNT) for i in range(101)]}), 400,
     "VALIDATION_ERROR"),
    # Security Hub takes up to 6 MB; hubgate's default bound is 1 MiB (README says so)
    ("import-over-max-body", IMPORT,
     j({"Findings": [reimport(f"f-{i}", MEMBER_ACCOUNT, Description="d" * 12_000)
                     for i in range(100)]}), 413, "PAYLOAD_TOO_LARGE"),
]


@pytest.mark.parametrize("path, raw, status, code", [h[1:] for h in HELD],
                         ids=[h[0] for h in HELD])
def test_held_member_bodies_are_refused_before_anything_is_sent(hubgate, path, raw, status,
                                                                code):
    """Over-long UTF-8, a NUL in an Id, a look-alike member name, a duplicate key inside the
    second of two identifiers, scores out of range or as text, a fraction where an integer
    belongs, a structure written as an array, V2's two lists together (one empty) or an
    undefined SeverityId, a MetadataUid (no account to judge), an import of 101 findings or over
    server.max_body_bytes: each
    is refused with an envelope SDKs do not retry and a decision record, and nothing reaches
    Security Hub but the NUL Id's lookup."""
    fake = hubgate.fake
    method = "POST" if path == IMPORT else "PATCH"
    resp = hubgate.send(method, path, raw, who="member")
    error_type = {400: "InvalidInputException", 403: "AccessDeniedException",
                  413: "InvalidInputException"}[status]
    assert_envelope(resp, status, code, error_type)
    record = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert record["forwarded"] is False, record
    assert fake.requests(path=path) == []
