"""Adversarial review (policy): the shipped policy set and the policy input document, attacked
by a caller with valid member keys, against the real binary and the fake Security Hub.

- member_forbidden_fields: a listed parent other than Severity, Workflow and Note
  (FindingProviderFields) forbade nothing, and a listed member of a field an import sets whole
  (Compliance.Status) forbade nothing either (fixed in fields.rego).
- member_forbidden_fields naming a V2 member as IAM's OCSFSyntaxPath keys do (StatusId,
  SeverityId, Comment) forbade nothing (fixed in fields.rego).
- A misspelt member_forbidden_fields entry (Workflow.status) forbade nothing and `hubgate check`
  passed it (fixed: check reads each entry against the operation schemas).
- Held: with member imports on, every customer-owned field (and its deprecated or derived
  spelling) is refused whatever else the import says, also in a second copy of one finding;
  on_partial_deny = "forward-allowed" never cuts a V2 batch or an import; enum values in another
  case, with a space or in look-alike letters are 400 before any lookup.
"""

from __future__ import annotations

import json
import shutil

import botocore.exceptions
import pytest

from helpers import (MEMBER_ACCOUNT, OTHER_ACCOUNT, POLICY_DIR, PRODUCT_ARN, REPO,
                     assert_envelope, finding, run_hubgate)

IMPORT = "/findings/import"


def policies_with(tmp_path, **settings):
    """A copy of the shipped policy set with these hubgate_settings changed."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    data = json.loads((policies / "data.json").read_text())
    data["hubgate_settings"].update(settings)
    (policies / "data.json").write_text(json.dumps(data))
    return policies


def reimport(fid="f-own-high", **changes):
    """The member's own seeded finding as its provider would re-import it: severity only in
    FindingProviderFields, none of the customer's fields; `changes` replace members."""
    f = finding(fid, MEMBER_ACCOUNT, "HIGH", 70)
    for customer in ("Severity", "Workflow", "WorkflowState", "Note"):
        f.pop(customer)
    f["FindingProviderFields"] = {"Severity": {"Label": "HIGH"}}
    f.update(changes)
    return f


def v2_ident(uid, account):
    return {"CloudAccountUid": account, "FindingInfoUid": uid, "MetadataProductUid": PRODUCT_ARN}


def imports_sent(fake):
    return fake.requests("POST", IMPORT)


# ---------------------------------------------------------------------------
# HOLE (fixed): member_forbidden_fields matched parents from a fixed table


@pytest.fixture
def forbidding(tmp_path, make_hubgate, seeded_fake):
    """Member imports on, with member_forbidden_fields as given."""
    def make(forbidden):
        policies = policies_with(tmp_path, member_imports="own-findings",
                                 member_forbidden_fields=forbidden)
        return make_hubgate({"policy": {"dir": str(policies)}}, fake=seeded_fake)
    return make


@pytest.mark.parametrize("forbidden, changes, named", [
    # the documented trade-off of member imports, closed the obvious way: the provider's
    # severity is what Security Hub copies to Severity on an untriaged finding
    (["FindingProviderFields"], {"FindingProviderFields": {"Severity": {"Label": "LOW"}}},
     "FindingProviderFields.Severity"),
    # an import's fields name Compliance whole; the IAM-style path under it must still count
    (["Compliance.Status"], {"Compliance": {"Status": "PASSED"}}, "Compliance.Status"),
])
def test_a_forbidden_path_nested_with_what_an_import_sets_is_refused(forbidding, forbidden,
                                                                      changes, named):
    """Attack: an administrator turns member imports on and forbids a field by its parent (or by
    a member under a field imports set whole), as IAM's ASFFSyntaxPath keys allow; the member
    re-imports its HIGH finding as LOW (or PASSED) through boto3. hubgate matched only the exact
    path and Severity/Workflow/Note parents, so the import was forwarded."""
    hg = forbidding(forbidden)
    client = hg.client("member")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.batch_import_findings(Findings=[reimport(**changes)])
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403, err
    assert err["Error"]["Code"] == "AccessDeniedException", err
    assert f"member accounts may not set {named}" in err["Error"]["Message"], err
    assert imports_sent(hg.fake) == []


def test_a_forbidden_parent_leaves_other_fields_and_administrators_alone(forbidding):
    """The control: the same forbidden parent does not refuse an import that does not nest with
    it, nor an administrator's import. (That a name which only begins like a field is no parent
    is fields_test.rego's; such a name, "Comp", no longer loads at all: see
    test_check_names_a_forbidden_field_no_request_can_set.)"""
    hg = forbidding(["FindingProviderFields.Types"])
    ok = hg.send("POST", IMPORT, {"Findings": [reimport(Compliance={"Status": "PASSED"})]},
                 who="member")
    assert ok.headers.get("x-hubgate-decision-id"), (ok.status, ok.text)
    admin = hg.send("POST", IMPORT, {"Findings": [reimport(
        FindingProviderFields={"Types": ["Effects/Data Exposure"]})]}, who="admin")
    assert admin.headers.get("x-hubgate-decision-id"), (admin.status, admin.text)
    assert len(imports_sent(hg.fake)) == 2


@pytest.mark.parametrize("forbidden", ["StatusId", "Workflow.Status"])
def test_a_v2_member_name_in_forbidden_fields_forbids_its_change(tmp_path, make_hubgate,
                                                                  seeded_fake, forbidden):
    """Attack: an administrator forbids members to change status, naming the V2 member as IAM's
    securityhub:OCSFSyntaxPath/StatusId key does; the member resolves its own finding through V2
    (and through V1). The name matched none of input.update.fields (ASFF paths), so both were
    forwarded."""
    policies = policies_with(tmp_path, member_forbidden_fields=[forbidden])
    hg = make_hubgate({"policy": {"dir": str(policies)}}, fake=seeded_fake)
    v2 = hg.send("PATCH", "/findingsv2/batchupdatev2", {
        "FindingIdentifiers": [v2_ident("f-own-high", MEMBER_ACCOUNT)], "StatusId": 4},
        who="member")
    body = assert_envelope(v2, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "member accounts may not set Workflow.Status" in body["error"]["message"], body
    v1 = hg.send("PATCH", "/findings/batchupdate", {
        "FindingIdentifiers": [{"Id": "f-own-high", "ProductArn": PRODUCT_ARN}],
        "Workflow": {"Status": "RESOLVED"}}, who="member")
    assert_envelope(v1, 403, "POLICY_DENIED", "AccessDeniedException")
    assert [r for r in hg.fake.requests() if r["method"] == "PATCH"] == []
    # the control: a comment alone is not a status change
    ok = hg.send("PATCH", "/findingsv2/batchupdatev2", {
        "FindingIdentifiers": [v2_ident("f-own-high", MEMBER_ACCOUNT)], "Comment": "seen"},
        who="member")
    assert ok.headers.get("x-hubgate-decision-id"), (ok.status, ok.text)


# ---------------------------------------------------------------------------
# Held: member imports ("own-findings") refuse every customer-owned field, in any spelling


CUSTOMER_CHANGES = {
    # the deprecated spelling of Workflow.Status
    "workflow-state": {"WorkflowState": "RESOLVED"},
    # an empty Workflow or Severity sets no member: still the customer's object
    "empty-workflow": {"Workflow": {}},
    "empty-severity": {"Severity": {}},
    # Severity.Normalized alone means a label (10 is LOW) to Security Hub
    "normalized-only": {"Severity": {"Normalized": 10}},
    "severity-product-only": {"Severity": {"Product": 1.5}},
    "verification": {"VerificationState": "FALSE_POSITIVE"},
    "note": {"Note": {"Text": "overwritten", "UpdatedBy": "member",
                      "UpdatedAt": "2026-11-24T00:00:00Z"}},
    "user-defined": {"UserDefinedFields": {"triage": "done"}},
    "confidence": {"Confidence": 0},
    "criticality": {"Criticality": 0},
}


@pytest.fixture
def member_imports(tmp_path, make_hubgate, seeded_fake):
    policies = policies_with(tmp_path, member_imports="own-findings")
    return make_hubgate({"policy": {"dir": str(policies),
                                    "on_partial_deny": "forward-allowed"}}, fake=seeded_fake)


def test_member_reimports_may_set_no_customer_field_in_any_spelling(member_imports):
    """Attack: with member imports on, re-import the member's own finding with one customer-owned
    field changed (each alone, beside a valid FindingProviderFields), by a spelling that the
    customer-field rule could miss. Every one is refused, naming the field, and nothing is sent;
    the provider's own re-import is forwarded (the control)."""
    hg = member_imports
    for name, changes in CUSTOMER_CHANGES.items():
        resp = hg.send("POST", IMPORT, {"Findings": [reimport(**changes)]}, who="member")
        body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
        field = next(iter(changes))
        assert f"may not set {field}" in body["error"]["message"], (name, body)
    # the same finding twice in one import, once harmless and once suppressing: the fields are
    # the union over the findings, so the second copy is judged too
    twice = hg.send("POST", IMPORT, {"Findings": [
        reimport(), reimport(Workflow={"Status": "SUPPRESSED"})]}, who="member")
    body = assert_envelope(twice, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "may not set Workflow.Status" in body["error"]["message"], body
    assert imports_sent(hg.fake) == []
    ok = hg.send("POST", IMPORT, {"Findings": [reimport()]}, who="member")
    assert ok.headers.get("x-hubgate-decision-id"), (ok.status, ok.text)
    assert len(imports_sent(hg.fake)) == 1


def test_forward_allowed_never_cuts_a_v2_batch_or_an_import(member_imports):
    """Attack: on_partial_deny = "forward-allowed" cuts a BatchUpdateFindings batch to its allowed
    findings. A member mixes its own finding with another account's in a V2 batch and in an
    import, hoping for the same cut: hubgate cannot rewrite either (no per-finding rewrite is
    checked for them), so both are refused whole and nothing is sent."""
    hg = member_imports
    v2 = hg.send("PATCH", "/findingsv2/batchupdatev2", {
        "FindingIdentifiers": [v2_ident("f-own-high", MEMBER_ACCOUNT),
                               v2_ident("f-other", OTHER_ACCOUNT)],
        "StatusId": 4, "Comment": "SEC-1 fixed"}, who="member")
    body = assert_envelope(v2, 403, "POLICY_DENIED", "AccessDeniedException")
    assert [d["finding"]["Id"] for d in body["error"]["details"]] == ["f-other"], body
    other = reimport("f-other")
    other["AwsAccountId"] = OTHER_ACCOUNT
    imp = hg.send("POST", IMPORT, {"Findings": [reimport(), other]}, who="member")
    body = assert_envelope(imp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert [d["finding"]["Id"] for d in body["error"]["details"]] == ["f-other"], body
    assert hg.fake.requests("PATCH", "/findingsv2/batchupdatev2") == []
    assert imports_sent(hg.fake) == []


# ---------------------------------------------------------------------------
# Held: enum values in another spelling are refused before any policy, lookup or write

OWN_V1 = '"FindingIdentifiers":[{"Id":"f-own-high","ProductArn":"%s"}]' % PRODUCT_ARN
SPELLINGS = {
    "status-lowercase": '{%s,"Workflow":{"Status":"suppressed"}}',
    "status-trailing-space": '{%s,"Workflow":{"Status":"SUPPRESSED "}}',
    # Cyrillic DZE for the S: looks the same, is another value
    "status-lookalike": '{%s,"Workflow":{"Status":"\u0405UPPRESSED"}}',
    "label-lowercase": '{%s,"Severity":{"Label":"low"}}',
    "label-fullwidth": '{%s,"Severity":{"Label":"\uff2c\uff2f\uff37"}}',
    "verification-mixed-case": '{%s,"VerificationState":"False_Positive"}',
}


@pytest.mark.parametrize("template", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_enum_values_in_another_spelling_are_400_before_anything_else(hubgate, template):
    resp = hubgate.send("PATCH", "/findings/batchupdate", template % OWN_V1, who="member")
    assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert hubgate.fake.requests() == []


# ---------------------------------------------------------------------------
# HOLE (fixed): a misspelt member_forbidden_fields entry forbade nothing, and check passed


def check_with(tmp_path, forbidden):
    policies = policies_with(tmp_path, member_forbidden_fields=forbidden)
    config = tmp_path / "hubgate.toml"
    config.write_text(f'[identity]\ncallers = "{REPO / "config" / "callers.toml"}"\n'
                      f'[policy]\ndir = "{policies}"\n')
    return run_hubgate("check", "--config", str(config))


def test_check_names_a_forbidden_field_no_request_can_set(tmp_path):
    """An administrator forbids members to change status and spells the path as it is not
    written (Workflow.status): fields.rego compares exact paths, so every status change stayed
    allowed, and `hubgate check` said the set was valid. Every path an operation can set (V2's
    names and paths under a map included) still passes."""
    r = check_with(tmp_path / "bad", ["Workflow.status", "Types", "Severty"])
    assert r.returncode != 0, r.stdout + r.stderr
    assert 'member_forbidden_fields: "Workflow.status" is no field' in r.stderr, r.stderr
    assert 'member_forbidden_fields: "Severty" is no field' in r.stderr, r.stderr
    assert '"Types"' not in r.stderr, r.stderr
    # Fail closed where it counts: serve does not start with such a set (nor does a reload
    # load one), rather than serve a rule that forbids nothing.
    r = run_hubgate("serve", "--config", str(tmp_path / "bad" / "hubgate.toml"), timeout=20)
    assert r.returncode != 0, r.stdout + r.stderr
    assert 'member_forbidden_fields: "Workflow.status" is no field' in r.stderr, r.stderr
    r = check_with(tmp_path / "ok", ["Workflow.Status", "StatusId", "FindingProviderFields",
                                     "Compliance.Status", "UserDefinedFields.owner"])
    assert r.returncode == 0, r.stdout + r.stderr
