"""Adversarial request bodies: where what the policies see could differ from what Security Hub
would execute (review adv3)."""

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import (ADMIN_ACCOUNT, MEMBER_ACCOUNT, OTHER_ACCOUNT, POLICY_DIR, PRODUCT_ARN,
                     assert_envelope, finding, ident)

# serde_json's private marker for an arbitrary-precision number. regorus reads an object whose
# first key is this as a number (and fails on a value that is not one), so a caller-chosen map
# key could turn an object of the body into a number, or the whole body into nothing.
MARKER = "$serde_json::private::Number"

CUSTOM_IMPORT_RULE = """package hubgate

# A site rule that judges imported content, where policies/README.md says such rules look.
deny contains {"msg": "custom: CRITICAL imports need review", "finding": null} if {
	input.operation == "BatchImportFindings"
	some f in input.request.body.Findings
	f.FindingProviderFields.Severity.Label == "CRITICAL"
}

deny contains {"msg": "custom: the owner tag may not be set", "finding": null} if {
	input.operation == "BatchUpdateFindings"
	input.request.body.UserDefinedFields.owner
}
"""


@pytest.fixture
def custom(tmp_path, make_hubgate, seeded_fake):
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    (policies / "custom.rego").write_text(CUSTOM_IMPORT_RULE)
    return make_hubgate({"policy": {"dir": str(policies)}}, fake=seeded_fake)


def critical_import(fid, extra=None):
    f = {"SchemaVersion": "2018-10-08", "Id": fid, "ProductArn": PRODUCT_ARN,
         "GeneratorId": "g", "AwsAccountId": ADMIN_ACCOUNT, "Types": ["Effects/Data Exposure"],
         "CreatedAt": "2026-11-24T00:00:00Z", "UpdatedAt": "2026-11-24T00:00:00Z",
         "FindingProviderFields": {"Severity": {"Label": "CRITICAL"}},
         "Severity": {"Label": "CRITICAL"}, "Title": "t", "Description": "d",
         "Resources": [{"Type": "Other", "Id": "r"}]}
    f.update(extra or {})
    return f


def test_control_custom_import_rule_refuses_a_critical_import(custom):
    resp = custom.send("POST", "/findings/import", {"Findings": [critical_import("new-1")]},
                       who="admin")
    body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "custom: CRITICAL imports need review" in body["error"]["message"]


@pytest.mark.parametrize("value", ["not-a-number", "5"])
def test_marker_key_in_an_import_does_not_blind_body_rules(custom, value):
    """Attack: one ProductFields key named like serde_json's private number marker. regorus's
    deserializer then fails on the body (a non-number value) and hubgate passes the body to the
    policies as undefined, so a rule on imported content never fires; the import is
    forwarded."""
    f = critical_import("new-1", {"ProductFields": {MARKER: value, "x": "y"}})
    resp = custom.send("POST", "/findings/import", {"Findings": [f]}, who="admin")
    assert resp.status in (400, 403), (resp.status, resp.text)
    assert custom.fake.requests(path="/findings/import") == []


@pytest.mark.parametrize("value", ["not-a-number", "5"])
def test_marker_key_in_user_defined_fields_does_not_blind_body_rules(custom, value):
    body = {"FindingIdentifiers": [ident("f-admin")],
            "UserDefinedFields": {MARKER: value, "owner": "someone-else"}}
    resp = custom.send("PATCH", "/findings/batchupdate", body, who="admin")
    assert resp.status in (400, 403), (resp.status, resp.text)
    if resp.status == 403:
        assert "custom: the owner tag" in resp.json()["error"]["message"], resp.text
    assert custom.fake.buf_calls() == []


def test_a_stored_marker_key_does_not_turn_a_members_lookup_into_a_5xx(hubgate):
    """Attack (a member planting data): a member may set UserDefinedFields on its own finding;
    one named like the marker made every later GetFindings page holding that finding unreadable
    to hubgate, so each member request on it became 502 UPSTREAM_UNAVAILABLE, a status SDKs
    retry. The stored finding is ordinary JSON and must be judged like any other."""
    f = finding("f-own-marked", MEMBER_ACCOUNT, "HIGH")
    f["UserDefinedFields"] = {MARKER: "not-a-number"}
    hubgate.fake.add_findings([f])
    resp = hubgate.send("PATCH", "/findings/batchupdate",
                        {"FindingIdentifiers": [ident("f-own-marked")],
                         "Note": {"Text": "looked at it", "UpdatedBy": "me"}}, who="member")
    assert resp.status < 500, (resp.status, resp.text)
    assert resp.status == 200, (resp.status, resp.text)
    assert len(hubgate.fake.buf_calls()) == 1


# ---------------------------------------------------------------------------
# One identifier, two findings: GetFindings answering the same (Id, ProductArn) twice

PARTNER_ARN = "arn:aws:securityhub:us-east-1::product/examplecorp/example-scanner"


class TwoAccountsUpstream:
    """An upstream whose GetFindings answers one (Id, ProductArn) with two findings (`order`:
    the account of each, in the order sent; `labels`: their severities), and which records
    every BatchUpdateFindings it gets."""

    def __init__(self, order, labels=("HIGH", "HIGH")):
        self.order = order
        self.labels = labels
        self.received = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                found = [finding("f-shared", account, label, product_arn=PARTNER_ARN)
                         for account, label in zip(outer.order, outer.labels)]
                self._send({"Findings": found})

            def do_PATCH(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.received.append((self.path, body))
                self._send({"ProcessedFindings": [ident("f-shared", PARTNER_ARN)],
                            "UnprocessedFindings": []})

            def _send(self, payload):
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("x-amzn-requestid", "up-1")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def members_update(make_hubgate, up, update: dict) -> tuple[int, int]:
    """The member's update of f-shared through a hubgate in front of `up` (stopped after):
    the answer's status and how many BatchUpdateFindings reached `up`."""
    try:
        hg = make_hubgate(upstream_endpoint=up.endpoint)
        resp = hg.send("PATCH", "/findings/batchupdate",
                       {"FindingIdentifiers": [ident("f-shared", PARTNER_ARN)], **update},
                       who="member")
        assert resp.status in (200, 403), (resp.status, resp.text)
        return resp.status, len(up.received)
    finally:
        up.stop()


@pytest.mark.parametrize("order", [(OTHER_ACCOUNT, MEMBER_ACCOUNT), (MEMBER_ACCOUNT, OTHER_ACCOUNT)],
                         ids=["victim-first", "member-first"])
def test_an_identifier_that_names_findings_of_two_accounts_is_refused_for_members(
        make_hubgate, order):
    """Attack: (Id, ProductArn) is unique per product only by the provider's promise; a partner
    product's Id can recur in two accounts (e.g. a member importing a copy of a victim's finding
    under the partner's ProductArn). hubgate's lookup then reads two findings for one key and
    kept the last one: with the member's copy last, the ownership rule saw only the member's
    account, while BatchUpdateFindings, signed with hubgate's administrator role, names both.
    A key that Security Hub answers for two accounts must not be judged as either one alone."""
    status, received = members_update(make_hubgate, TwoAccountsUpstream(order),
                                      {"Workflow": {"Status": "RESOLVED"}})
    assert status == 403 and received == 0


@pytest.mark.parametrize("labels", [("LOW", "CRITICAL"), ("CRITICAL", "LOW")],
                         ids=["low-first", "critical-first"])
def test_two_states_of_one_accounts_finding_are_not_judged_by_either(make_hubgate, labels):
    """The same key answered twice for the member's own account, with two severities: a raise
    to HIGH judged by the LOW copy alone would lower the CRITICAL one. Neither state is the
    finding's, so the member is refused; the same state read twice is that state."""
    raise_to_high = {"Severity": {"Label": "HIGH"}}
    status, received = members_update(
        make_hubgate, TwoAccountsUpstream((MEMBER_ACCOUNT, MEMBER_ACCOUNT), labels), raise_to_high)
    assert status == 403 and received == 0
    status, received = members_update(
        make_hubgate, TwoAccountsUpstream((MEMBER_ACCOUNT, MEMBER_ACCOUNT), ("LOW", "LOW")),
        raise_to_high)
    assert status == 200 and received == 1


# ---------------------------------------------------------------------------
# serde_json's raw-value marker in the audit trail

RAW_MARKER = "$serde_json::private::RawValue"


@pytest.mark.parametrize("who", ["admin", "member"])
def test_a_raw_value_marker_key_does_not_break_the_audit_chain(make_hubgate, seeded_fake, who):
    """Attack (any caller): a UserDefinedFields key named like serde_json's raw-value marker.
    The record holds it as written and is sealed over those bytes; `hubgate audit verify` read
    the line with serde_json's Value, which (feature raw_value) replaces such an object with
    the JSON its string holds, so the re-serialised record no longer matched its hash: an honest
    log reported "modified" at the caller's record, and the chain could no longer vouch for the
    records after it."""
    from helpers import audit_verify
    hg = make_hubgate(fake=seeded_fake)
    target = "f-admin" if who == "admin" else "f-own-high"
    resp = hg.send("PATCH", "/findings/batchupdate",
                   {"FindingIdentifiers": [ident(target)],
                    "UserDefinedFields": {RAW_MARKER: '{"x": 1}'}}, who=who)
    decision = resp.headers.get("x-hubgate-decision-id") or resp.headers["x-amzn-requestid"]
    hg.audit_for(decision)
    done = audit_verify(hg.audit_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_repeated_key_inserted_into_a_record_is_tampering(make_hubgate, seeded_fake):
    """Tampering: a record edited to say "allow": true in a first copy of "result", keeping the
    sealed copy after it. serde_json's Value keeps the last copy, so the record re-serialised to
    the sealed bytes and verified intact, while a reader that keeps the first copy (many log
    tools) sees the forged verdict. A record with a repeated key is not one hubgate wrote."""
    from helpers import audit_verify
    hg = make_hubgate(fake=seeded_fake)
    resp = hg.send("PATCH", "/findings/batchupdate",
                   {"FindingIdentifiers": [ident("f-other")],
                    "Workflow": {"Status": "SUPPRESSED"}}, who="member")
    assert resp.status == 403
    hg.audit_for(resp.headers["x-amzn-requestid"])
    assert audit_verify(hg.audit_path).returncode == 0
    line = hg.audit_path.read_text().splitlines()[0]
    chain_end = line.index("},") + 2
    forged = line[:chain_end] + '"result":{"allow":true,"violations":[]},' + line[chain_end:]
    assert json.loads(forged)["result"]["allow"] is False  # Python keeps the last copy too
    hg.audit_path.write_text(forged + "\n")
    done = audit_verify(hg.audit_path)
    assert done.returncode != 0, done.stdout


# ---------------------------------------------------------------------------
# Spellings that held (not pinned elsewhere): each is refused before anything is written

V1 = "/findings/batchupdate"
V2 = "/findingsv2/batchupdatev2"
V1_OWN = '"FindingIdentifiers":[{"Id":"f-own-high","ProductArn":"%s"}]' % PRODUCT_ARN


def v2_ids(account, uid="f-own-high"):
    return ('"FindingIdentifiers":[{"CloudAccountUid":"%s","FindingInfoUid":"%s",'
            '"MetadataProductUid":"%s"}]' % (account, uid, PRODUCT_ARN))


HELD = [
    # a member key in another case: an unknown member to hubgate, whatever AWS makes of it
    ("lowercase-member", V1, '{%s,"workflow":{"Status":"SUPPRESSED"}}' % V1_OWN, 400),
    ("lowercase-nested-member", V1, '{%s,"Workflow":{"status":"SUPPRESSED"}}' % V1_OWN, 400),
    ("byte-order-mark", V1, '\ufeff{%s,"Workflow":{"Status":"SUPPRESSED"}}' % V1_OWN, 400),
    ("lone-surrogate", V1, '{"FindingIdentifiers":[{"Id":"f-other\\ud800","ProductArn":"%s"}],'
                           '"Workflow":{"Status":"RESOLVED"}}' % PRODUCT_ARN, 400),
    # lookups are exact: another account's Id with a trailing space or a NUL is not found
    ("padded-other-id", V1, '{"FindingIdentifiers":[{"Id":"f-other ","ProductArn":"%s"}],'
                            '"Workflow":{"Status":"RESOLVED"}}' % PRODUCT_ARN, 403),
    ("nul-other-id", V1, '{"FindingIdentifiers":[{"Id":"f-other\\u0000","ProductArn":"%s"}],'
                         '"Workflow":{"Status":"RESOLVED"}}' % PRODUCT_ARN, 403),
    # V2: a claimed account that only looks like the member's is another account
    ("v2-padded-account", V2, '{%s,"Comment":"c"}' % v2_ids(" " + MEMBER_ACCOUNT), 403),
    ("v2-escaped-status", V2, '{%s,"StatusId":3}' % v2_ids(MEMBER_ACCOUNT).replace(
        "CloudAccountUid", "\\u0043loudAccountUid"), 403),
    # an integer past u64 is a float to a JSON reader: refused, never wrapped into 0-100
    ("normalized-past-u64", V1, '{%s,"Severity":{"Normalized":18446744073709551616}}' % V1_OWN,
     400),
    ("confidence-near-100", V1, '{%s,"Confidence":100.0000000000000001}' % V1_OWN, 400),
]


@pytest.mark.parametrize("path,body,status", [h[1:] for h in HELD], ids=[h[0] for h in HELD])
def test_odd_spellings_are_refused_before_any_write(hubgate, path, body, status):
    resp = hubgate.send("PATCH", path, body.encode("utf-8", "surrogatepass"), who="member")
    assert resp.status == status, (resp.status, resp.text)
    assert [r for r in hubgate.fake.requests() if r["method"] == "PATCH"] == []
