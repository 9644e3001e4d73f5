"""Adversarial review (policy): the shipped policy set and the policy input document, attacked
by a caller with valid member keys, against the real binary and the fake Security Hub.

- member_forbidden_fields: a listed parent other than Severity, Workflow and Note
  (FindingProviderFields) forbade nothing, and a listed member of a field an import sets whole
  (Compliance.Status) forbade nothing either (fixed in fields.rego).
- Held: with member imports on, every customer-owned field (and its deprecated or derived
  spelling) is refused whatever else the import says.
"""

from __future__ import annotations

import json
import shutil

import botocore.exceptions
import pytest

from helpers import MEMBER_ACCOUNT, POLICY_DIR, PRODUCT_ARN, assert_envelope, finding

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
    it (a name that only begins like it is no parent), nor an administrator's import."""
    hg = forbidding(["FindingProviderFields.Types", "Comp"])
    ok = hg.send("POST", IMPORT, {"Findings": [reimport(Compliance={"Status": "PASSED"})]},
                 who="member")
    assert ok.headers.get("x-hubgate-decision-id"), (ok.status, ok.text)
    admin = hg.send("POST", IMPORT, {"Findings": [reimport(
        FindingProviderFields={"Types": ["Effects/Data Exposure"]})]}, who="admin")
    assert admin.headers.get("x-hubgate-decision-id"), (admin.status, admin.text)
    assert len(imports_sent(hg.fake)) == 2
