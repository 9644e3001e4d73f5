"""Adversarial review (operations, second round): what the policy input says a request changes
against what Security Hub does with the same bytes, for BatchUpdateFindings, V2, UpdateFindings
and BatchImportFindings, as a member with valid keys and as the SRE whose quota they spend.

- HOLE (fixed): a BatchUpdateFindings identifier longer than any finding's (the model's
  AwsSecurityFinding doc strings: Id at most 512 characters, ProductArn 12 to 2048) was looked
  up all the same: a GetFindings call of the account's shared quota (3/s) for a finding that
  cannot exist, with a filter value of up to the whole body, cached as "not found" with its
  bytes and quoted back in the refusal. It is now a 400 naming the identifier's member, before
  any upstream call.
- HOLE (fixed): the library's ticket rule asked a ticket of RESOLVED and SUPPRESSED only, while
  Security Hub also closes a finding with V2's StatusId 5 (ARCHIVED) and 6 (DELETED), which
  the reopen rule itself counts as closed, and archives every finding a filter matches with
  UpdateFindings' RecordState ARCHIVED: with the rule enforced, an administrator archived or
  deleted findings with no ticket, the closure the rule exists to document. ARCHIVED and
  DELETED now need one by default (ARCHIVED both as a status and as a RecordState).
- HOLE (fixed): a 400's messages quoted a caller's text whole: an identifier named for two
  accounts (V2, imports), a member name or map key in a JSON pointer or in a schema message.
  One 300 KB key became a 1.8 MB answer and a 600 KB decision record; the audit disk filling
  stops every forward. A validation violation now holds at most a bounded part of each text.
- Held: duplicate keys, also spelt with unicode escapes (`"Stat\\u0075s"`, a map key `"\\u0061"`
  beside `"a"`), are a 400 before any policy, so hubgate never judges one value while AWS
  applies the other; lone surrogates, a BOM, `1E400` and `-0`, `3.0`, `1e1` or a huge integer
  where an integer belongs are 400s too, never a missing fact.
- Held: V2's StatusId 0 (UNKNOWN), 5, 6 and 99 (OTHER) and every SeverityId (0 and 99
  included) are changes a member is refused, never "no change"; a member key spelt in another
  case, a V1 identifier in a V2 list (and the reverse) and empty lists are 400s.
- Held: Severity.Product alone changes neither Label nor Normalized (the API model), so a
  member may set it; Label and Normalized that agree are one change, judged once.
- Held: a member's UpdateFindings (a filter reaches every account's findings) is refused
  whatever it says; an identifier with a space around its Id, or another spelling of
  its ProductArn, is looked up as sent and refused as not found, never matched to the finding.
"""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import (MEMBER_ACCOUNT, OTHER_ACCOUNT, POLICY_DIR, PRODUCT_ARN, assert_envelope,
                     ident)

BUF = "/findings/batchupdate"
V2 = "/findingsv2/batchupdatev2"


def v2_ident(fid: str, account: str = MEMBER_ACCOUNT) -> dict:
    return {"CloudAccountUid": account, "FindingInfoUid": fid, "MetadataProductUid": PRODUCT_ARN}


# --- Identifiers no finding can have ---------------------------------------------------------


def test_an_identifier_longer_than_any_finding_is_400_before_any_lookup(hubgate):
    """An Id of 513 characters, or a ProductArn of 2049 (or 11), names no finding Security Hub
    can hold: refused as invalid, with no GetFindings call. At 512 and 2048 it is still looked
    up (and refused as not found)."""
    fake = hubgate.fake
    for bad, pointer in [(ident("x" * 513), "/FindingIdentifiers/0/Id"),
                         (ident("f-own-high", "a" * 2049), "/FindingIdentifiers/0/ProductArn"),
                         (ident("f-own-high", "arn:aws:sh"), "/FindingIdentifiers/0/ProductArn")]:
        calls = fake.op_stats("GetFindings")["calls"]
        resp = hubgate.buf({"FindingIdentifiers": [bad], "Workflow": {"Status": "NOTIFIED"}},
                           who="member")
        err = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
        assert [d["path"] for d in err["error"]["details"]] == [pointer], err
        assert fake.op_stats("GetFindings")["calls"] == calls, "looked up"
    calls = fake.op_stats("GetFindings")["calls"]
    resp = hubgate.buf({"FindingIdentifiers": [ident("x" * 512, "a" * 2048)],
                        "Workflow": {"Status": "NOTIFIED"}}, who="member")
    err = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "no such finding" in err["error"]["message"], err
    assert fake.op_stats("GetFindings")["calls"] == calls + 1
    assert fake.buf_calls() == []


# --- Closing a finding needs a ticket, however it is closed ----------------------------------


def test_every_closure_needs_a_ticket_when_the_rule_is_enforced(make_fake, make_hubgate,
                                                                tmp_path):
    """With the ticket rule enforced, an administrator's V2 StatusId 5 (ARCHIVED) or 6
    (DELETED) and UpdateFindings' RecordState ARCHIVED need a ticket in the comment or note,
    as RESOLVED and SUPPRESSED do; with one they are forwarded."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    data = json.loads((policies / "data.json").read_text())
    data["hubgate_settings"]["library"]["ticket"] = "enforce"
    (policies / "data.json").write_text(json.dumps(data))
    fake = make_fake()
    hg = make_hubgate({"policy": {"dir": str(policies)}}, fake=fake)
    archive = {"Filters": {"Id": [{"Value": "f-other", "Comparison": "EQUALS"}]},
               "RecordState": "ARCHIVED", "Note": {"Text": "cleanup", "UpdatedBy": "soc"}}
    refused = [
        ("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-other", OTHER_ACCOUNT)],
                       "StatusId": 5}),
        ("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-other", OTHER_ACCOUNT)],
                       "StatusId": 6, "Comment": "gone"}),
        ("PATCH", "/findings", archive),
    ]
    for method, path, body in refused:
        resp = hg.send(method, path, body, who="admin")
        err = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
        assert "ticket" in err["error"]["message"], (body, err)
    assert fake.requests(path=V2) == []
    assert fake.requests(path="/findings", method="PATCH") == []
    allowed = [
        ("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-other", OTHER_ACCOUNT)],
                       "StatusId": 5, "Comment": "SEC-12 retired"}),
        ("PATCH", "/findings", dict(archive, Note={"Text": "SEC-12 cleanup",
                                                   "UpdatedBy": "soc"})),
        ("PATCH", "/findings", dict(archive, RecordState="ACTIVE")),
    ]
    for method, path, body in allowed:
        resp = hg.send(method, path, body, who="admin")
        assert resp.status == 200, (body, resp.text)


# --- What a 400 quotes of the caller --------------------------------------------------------


@pytest.mark.parametrize("path, body", [
    (V2, {"FindingIdentifiers": [
        {"CloudAccountUid": MEMBER_ACCOUNT, "FindingInfoUid": "u" * 200_000,
         "MetadataProductUid": "p" * 100_000},
        {"CloudAccountUid": OTHER_ACCOUNT, "FindingInfoUid": "u" * 200_000,
         "MetadataProductUid": "p" * 100_000}], "Comment": "x"}),
    (BUF, {"FindingIdentifiers": [ident("f-own-high")], "UserDefinedFields": {"k" * 300_000: 5}}),
    (BUF, {"FindingIdentifiers": [ident("f-own-high")], "k" * 300_000: 1}),
], ids=["v2-one-finding-two-accounts", "map-key-in-pointer", "unknown-member"])
def test_a_400_quotes_a_bounded_part_of_what_the_caller_sent(hubgate, path, body):
    """A 300 KB text in a refused body is quoted by its start and length: the answer and the
    decision record stay a few KB, not a multiple of the body."""
    raw = json.dumps(body).encode()
    before = hubgate.audit_path.stat().st_size
    resp = hubgate.send("PATCH", path, raw, who="member")
    err = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert len(resp.text) < 8_000, len(resp.text)
    assert "bytes in all" in json.dumps(err), err
    hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert hubgate.audit_path.stat().st_size - before < 8_000
    assert hubgate.fake.requests(path=path) == []


# --- Held ------------------------------------------------------------------------------------

IDS = '"FindingIdentifiers": [{"Id": "f-own-high", "ProductArn": "%s"}]' % PRODUCT_ARN
V2_IDS = ('"FindingIdentifiers": [{"CloudAccountUid": "%s", "FindingInfoUid": "f-own-high", '
          '"MetadataProductUid": "%s"}]' % (MEMBER_ACCOUNT, PRODUCT_ARN))

HELD = [
    # (path, raw body, status)
    (BUF, '{%s, "Workflow": {"Status": "NEW", "Stat\\u0075s": "SUPPRESSED"}}' % IDS, 400),
    (BUF, '{%s, "UserDefinedFields": {"a": "1", "\\u0061": "2"}}' % IDS, 400),
    (BUF, '{%s, "Note": {"Text": "a\\udc00b", "UpdatedBy": "x"}}' % IDS, 400),
    (BUF, '\ufeff{%s, "Note": {"Text": "ab", "UpdatedBy": "x"}}' % IDS, 400),
    (BUF, '{%s, "Severity": {"Product": 1E400}}' % IDS, 400),
    (BUF, '{%s, "Severity": {"Normalized": 1e1}}' % IDS, 400),
    (BUF, '{%s, "Confidence": 123456789012345678901234567890}' % IDS, 400),
    (BUF, '{%s, "Workflow": {"Status": "suppressed"}}' % IDS, 400),
    (BUF, '{%s, "workflow": {"Status": "SUPPRESSED"}}' % IDS, 400),
    (BUF, '{"FindingIdentifiers": [{"CloudAccountUid": "%s", "FindingInfoUid": "f-own-high", '
          '"MetadataProductUid": "%s"}], "Workflow": {"Status": "NOTIFIED"}}'
          % (MEMBER_ACCOUNT, PRODUCT_ARN), 400),
    (BUF, '{%s, "Severity": {"Label": "LOW", "Normalized": 1}}' % IDS, 403),
    (BUF, '{"FindingIdentifiers": [{"Id": " f-own-high", "ProductArn": "%s"}], '
          '"Workflow": {"Status": "NOTIFIED"}}' % PRODUCT_ARN, 403),
    (BUF, '{"FindingIdentifiers": [{"Id": "f-own-high", "ProductArn": "%s/"}], '
          '"Workflow": {"Status": "NOTIFIED"}}' % PRODUCT_ARN, 403),
    (V2, '{%s, "StatusId": 3.0}' % V2_IDS, 400),
    (V2, '{%s, "StatusId": -0}' % V2_IDS, 400),
    (V2, '{"FindingIdentifiers": [{"Id": "f-own-high", "ProductArn": "%s"}], "StatusId": 4}'
         % PRODUCT_ARN, 400),
    (V2, '{"FindingIdentifiers": [], "Comment": "x"}', 400),
    (V2, '{"MetadataUids": [], "Comment": "x"}', 400),
    (V2, '{%s, "StatusId": 0}' % V2_IDS, 403),
    (V2, '{%s, "StatusId": 5}' % V2_IDS, 403),
    (V2, '{%s, "StatusId": 6}' % V2_IDS, 403),
    (V2, '{%s, "StatusId": 99}' % V2_IDS, 403),
    (V2, '{%s, "SeverityId": 0}' % V2_IDS, 403),
    (V2, '{%s, "SeverityId": 99}' % V2_IDS, 403),
    ("/findings", '{"Filters": {"AwsAccountId": [{"Value": "%s", "Comparison": "EQUALS"}]}, '
                  '"RecordState": "ARCHIVED"}' % MEMBER_ACCOUNT, 403),
]


def test_held_spellings_and_values(hubgate):
    """Each body is refused (400 before any policy, or 403 by it) and nothing is forwarded;
    Severity.Product alone and a Label that agrees with Normalized are forwarded."""
    for path, raw, status in HELD:
        resp = hubgate.send("PATCH", path, raw.encode("utf-8", "surrogatepass"), who="member")
        assert resp.status == status, (raw, resp.text)
    assert hubgate.fake.buf_calls() == []
    assert hubgate.fake.requests(path=V2) == []
    assert hubgate.fake.requests(path="/findings", method="PATCH") == []
    for body in [{"FindingIdentifiers": [ident("f-own-high")], "Severity": {"Product": 0}},
                 {"FindingIdentifiers": [ident("f-own-high")],
                  "Severity": {"Label": "HIGH", "Normalized": 89}}]:
        resp = hubgate.buf(body, who="member")
        assert resp.status == 200, (body, resp.text)
    assert len(hubgate.fake.buf_calls()) == 2
