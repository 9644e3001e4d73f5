"""Adversarial review (BatchImportFindings, second round), as a member with valid keys, as an
administrator's typo, and as an SRE running replicas.

- HOLE (fixed): an administrator's import whose AwsAccountId is not an account id as AWS
  writes one (``"222222222222 "``) leaves the finding "whoever owns it" unknown for
  settle_ms on the replica that sent it (README), but was shared through Redis scoped to the
  text ``"222222222222 "``: on every other replica the member's finding of account
  222222222222 was not settling, and while Security Hub had not yet shown the re-import as
  CRITICAL, the member's MEDIUM through another replica was judged "no change" on the
  MEDIUM it read and forwarded (a lowering once the import lands).
- HOLE (fixed): an imported finding's Id and ProductArn had no length bound (the model's
  AwsSecurityFinding says Id 1-512, ProductArn 12-2048; BatchUpdateFindings' identifiers were
  bounded in review 45's round), and hubgate keeps every imported finding's identifier in the
  settle journal for settle_ms (5 minutes) whatever Security Hub answers. A member with
  imports on (or any member in dry-run, whose refused imports are forwarded) sent 100
  findings with 9.5 KB Ids per 1 MiB request: +68 MB RSS after 30 requests, growing at the
  import quota (10/s) for five minutes, past the 512Mi of deploy/kubernetes. Now a 400
  VALIDATION_ERROR naming the member, for everyone, before any policy; nothing forwarded.

Held (tried against the real binary; most are kept as tests in the files named):
- Held: a member's re-import with member_imports "own-findings" setting Severity (also `{}`),
  Workflow, WorkflowState, Note, UserDefinedFields, VerificationState, Confidence or
  Criticality is refused whole, with an envelope and an audit record, nothing sent
  (test_adversarial_policy); FindingProviderFields.Severity/Confidence, RecordState ARCHIVED,
  Compliance, Types and RelatedFindings are let through, as imports.rego documents as its
  trade-off (the scores, reopen and ticket library rules judge them when enforced).
- Held: an imported finding claiming another account, or an account look-alike, is refused
  for members; one (Id, ProductArn) claimed for two accounts is a 400 for everyone; 0 and 101
  findings are 400; null members are 400 (test_adversarial_operations).
- Held: unknown members and other spellings of member names (`severity`) are 400
  (deny_unknown_fields and the schema); enum values in another case are 400.
- Held: an import in flight, or answered, is never decided on the state cached before it, on
  one replica or two (test_adversarial_operations, test_in_flight); an import claiming an
  account leaves another account's copy of the identifier alone (test_adversarial_cache3).
- Held: a member's refused import forwards nothing and evicts nothing.

Noticed and left alone:
- An administrator's re-import that archives a finding passes the ticket rule with the ticket
  in its own Note.Text, which Security Hub ignores on a finding that exists: the ticket is in
  the audit record only.
- Every finding of an import is journaled as unknown for settle_ms, also one the answer lists
  in FailedFindings (members wait on findings the import did not change); failed findings are
  named by Id only, so telling them apart needs care.
- A 1 MiB import body (imports off, refused) costs about 1.5 s in a debug build before the
  policy refuses it, and its audit record carries the whole body (include_input): the cost of
  any body up to max_body_bytes, not of imports alone.
"""

from __future__ import annotations

import json

import pytest

from test_adversarial_operations import IMPORT, NOTE, imported
from test_adversarial_policy import policies_with, reimport
from test_replicas import (  # noqa: F401 - fixtures
    quota_fake,
    redis_server,
    replicas,
)

from helpers import MEMBER_ACCOUNT, PRODUCT_ARN, SEED, assert_envelope, ident

FID = "f-own-medium"  # SEED: the member's finding, MEDIUM


def seeded(fid: str) -> dict:
    return next(f for f in SEED if f["Id"] == fid)


# --- HOLE: an import's odd account spelling, shared through Redis ---------------------------


@pytest.mark.parametrize("through", ["same-replica", "other-replica"])
def test_an_import_claiming_an_odd_account_spelling_settles_on_every_replica(
        replicas, quota_fake, through):
    """The administrator re-imports the member's MEDIUM finding as CRITICAL, with a trailing
    space in AwsAccountId, through replica 1. Security Hub has not shown the import yet (its
    GetFindings still answers the MEDIUM finding of 222222222222: its processing lag, which the
    settle journal is for). The member's MEDIUM is refused as settling on the replica that
    sent the import and, through Redis, on the other one; never forwarded as "no change"."""
    r1, r2 = replicas()
    assert r2.buf({"FindingIdentifiers": [ident(FID)], **NOTE}, who="member").status == 200
    odd = imported(FID, MEMBER_ACCOUNT + " ", "CRITICAL")
    admin = r1.send("POST", IMPORT, {"Findings": [odd]}, who="admin")
    assert admin.status == 200, admin.text
    quota_fake.add_findings([seeded(FID)])  # Security Hub's lag: the import not shown yet
    hg = r1 if through == "same-replica" else r2
    resp = hg.buf({"FindingIdentifiers": [ident(FID)], "Severity": {"Label": "MEDIUM"}},
                  who="member")
    err = assert_envelope(resp, 503, "STATE_SETTLING", "ServiceUnavailableException")
    assert "BatchImportFindings" in err["error"]["message"], err
    assert resp.headers.get("retry-after"), resp.headers
    assert [c for c in quota_fake.buf_calls() if "MEDIUM" in c["body"]] == []


# --- HOLE: an imported finding's identifiers are as long as a finding's can be ---------------


@pytest.mark.parametrize("where, fid, arn", [
    ("/Findings/1/Id", "i" * 513, PRODUCT_ARN),
    ("/Findings/1/ProductArn", "f-long-arn", "a" * 2049),
    ("/Findings/1/ProductArn", "f-short-arn", "a" * 11),
], ids=["id-513", "arn-2049", "arn-11"])
def test_imported_identifiers_no_finding_can_have_are_400(hubgate, where, fid, arn):
    ok = imported("f-ok", MEMBER_ACCOUNT, provider=True)
    bad = dict(imported(fid, MEMBER_ACCOUNT, provider=True), ProductArn=arn)
    resp = hubgate.send("POST", IMPORT, {"Findings": [ok, bad]}, who="admin")
    err = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert where in [d["path"] for d in err["error"]["details"]], err
    assert len(resp.text) < 4096, "the identifier is not echoed whole"
    record = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert record["forwarded"] is False and record["result"]["allow"] is False, record
    assert hubgate.fake.requests(path=IMPORT) == []
    # the longest identifiers a finding can have are imported
    edge = dict(imported("i" * 512, MEMBER_ACCOUNT, provider=True), ProductArn="a" * 2048)
    assert hubgate.send("POST", IMPORT, {"Findings": [edge]}, who="admin").status == 200
    assert len(hubgate.fake.requests(path=IMPORT)) == 1


# --- Held: spellings of a member's re-import ------------------------------------------------


@pytest.fixture
def member_imports(tmp_path, make_hubgate, seeded_fake):
    policies = policies_with(tmp_path, member_imports="own-findings")
    return make_hubgate({"policy": {"dir": str(policies)}}, fake=seeded_fake)


def test_spellings_of_a_members_reimport_are_refused(member_imports):
    """With member imports on, a member's re-import of its own finding that smuggles a
    customer-owned field or another account by spelling is refused (400 or 403, an envelope
    and an audit record each), and nothing is sent; the plain re-import is forwarded."""
    hg = member_imports
    plain = json.dumps({"Findings": [reimport()]})
    assert plain.endswith("}]}")
    head = plain[:-3]
    cases = {
        # the key in another case: an unknown member, not Severity
        "lowercase-key": (head + ', "severity": {"Label": "LOW"}}]}', 400),
        # the key written with an escape is the key Severity
        "escaped-key": (head + ', "\\u0053everity": {"Label": "LOW"}}]}', 403),
        "enum-lowercase": (head + ', "RecordState": "archived"}]}', 400),
        "duplicate-key": (head + ', "FindingProviderFields": {"Severity": {"Label": "LOW"}}}]}',
                          400),
        "fullwidth-account": (json.dumps({"Findings": [dict(
            reimport(), AwsAccountId="２２２２２２２２２２２２")]}), 403),
    }
    for name, (body, status) in cases.items():
        resp = hg.send("POST", IMPORT, body, who="member")
        code, kind = {400: ("VALIDATION_ERROR", "InvalidInputException"),
                      403: ("POLICY_DENIED", "AccessDeniedException")}[status]
        err = assert_envelope(resp, status, code, kind)
        hg.audit_for(err["error"]["request_id"])
        assert hg.fake.requests(path=IMPORT) == [], name
    assert hg.send("POST", IMPORT, plain, who="member").status == 200
