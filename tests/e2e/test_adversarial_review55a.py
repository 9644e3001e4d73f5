"""Adversarial review 55a: the typed request parsing (src/request.rs `Judged::read`, the
generated model in src/request/model.rs, src/validate.rs `parse_strict`, src/policy/input.rs
`normalise`). The attacker holds MEMBER keys (account 222222222222). Each test asserts the SAFE
outcome: refused with the envelope, a non-retryable 4xx and nothing forwarded; or, where AWS
would accept the body, that the policy judged the value AWS will apply. A failing test shows a
hole. Inputs already pinned elsewhere (1e1/1E1/-0/0.0/10.0/1.5 on Normalized, 5.0 on
Confidence, 3.0/3E0/-0 on StatusId, 1e0 on SeverityId, past-u64, BOM, lone surrogate,
lower-case member names, Cyrillic member name, V2 statuses 0/3/5/6/99) are not repeated.

Probes and what they showed (debug build of 2026-12-07; 153 tests, all passing: no hole):

- Held: number spellings on Severity.Normalized (1e400, -1e-400, 10e-1, 1.0e1, 7E+1, 070,
  +70, 0x46, 1 and 400 zeros, "70", 9223372036854775808), Severity.Product (1e400, "1e1"),
  Confidence and Criticality (1e1, 10e-1, 1.0e1, -0.0, +1, 01, 1e400, -1e-400,
  9223372036854775808), V2 StatusId and SeverityId (1e400, "4", 04, 0x4, 4.000, -4, 1e-400,
  4e0): 400 VALIDATION_ERROR / InvalidInputException, no lookup, nothing written
  (src/validate.rs parse_strict, then src/request.rs Judged::read refuses floats for i64).
  Normalized 101, -1, 1000, -100: 400.
- Held: enum spellings (Workflow.Status 'resolved', 'Resolved ', 'RESOLVED\\u0000',
  fullwidth, 'SUPPRESSED\\u200b', 'SUPPRESSED\\ufeff', '', Kelvin-sign 'NOTIFIED\\u212a';
  Label 'low', fullwidth 'Ｌow', 'LOW ', 'INFORMATIONAL\\u00a0', dotted-I; VerificationState
  'false_positive', ''): 400.
- Held: escaped spellings that AWS unescapes ('\\u0053UPPRESSED', '\\u004cOW',
  'Work\\u0066low', '\\u0053everity' with Normalized 0, V2 '\\u0053tatusId' 3): judged as
  the unescaped value, 403 POLICY_DENIED, nothing written.
- Held: null for every member a rule reads (Workflow, Workflow.Status, Severity, its Label and
  Normalized, Note, Note.Text, Note {}, VerificationState, UserDefinedFields and a value of it,
  RelatedFindings, [{}], a null RelatedFinding Id, Confidence, Types, [null]; V2 Comment,
  SeverityId, StatusId, MetadataUids; an own-findings import's Workflow, Severity.Label,
  Note.UpdatedAt, FindingProviderFields, AwsAccountId, and AwsAccountId as a number): 400.
- Held: empty members beside a forbidden change: Severity {} + SUPPRESSED is 400 (the schema's
  minProperties); UserDefinedFields {} + RelatedFindings [] + SUPPRESSED, Workflow {} +
  Label LOW, Types [] + Normalized 0: 403. Severity {} alone: 400.
- Held: duplicate keys whose second copy is escaped (top level, Severity.Label,
  Workflow.Status, a UserDefinedFields key, FindingIdentifiers[0].Id, V2 StatusId, V2
  CloudAccountUid; an administrator's import's AwsAccountId and a key deep in
  Resources[0].Details; a member own-findings import's AwsAccountId): 400, nothing forwarded.
- Held: trailing garbage (a second JSON document, with or without a newline, a comment, NUL,
  a stray brace, form feed, U+00A0) and UTF-16 bodies (with and without BOM): 400. 200 000
  '[': 400 and hubgate serves the next note. An administrator's import 127 levels deep
  in Resources[0].Details.Other: 400 at /Findings/0/Resources/0/Details/Other/a (the schema: a
  map of strings; the ASFF has no free-form member a deep value could hide in), hubgate alive.
- Held: Severity.Normalized boundaries on f-own-high (HIGH): 1, 39, 40, 69 denied 403; 70, 89,
  90, 100 forwarded. Label + Normalized disagreeing at a boundary (CRITICAL+89, HIGH+90,
  INFORMATIONAL+1, LOW+0, MEDIUM+39): 400 (src/policy/input.rs normalise).
- Held: the member's own finding named twice (once escaped) with a lowering: 403; account
  333's finding with an escaped Id beside the member's own: 403; V2 naming one finding for two
  accounts: 400; numbers/strings/arrays where strings/objects belong (CloudAccountUid
  222222222222 as a number, Id 1, UDF value 1, Note/Workflow/Severity as strings, Status as
  an array): 400.
- Held: a member's UpdateFindings filtered to its own account (also with '\\u0041wsAccountId'):
  403. member_imports = "own-findings": imports of 333's finding (claiming 333, ' 222...',
  '222...\\u200b', and a mixed own + 333's batch): refused, nothing forwarded. V2 with both
  FindingIdentifiers (own) and MetadataUids (333's): 400.
- Held: on_partial_deny = "forward-allowed": an escaped 333 identifier is dropped from the
  rewritten body (only f-own-high sent, f-other untouched); the rewrite keeps Normalized 90
  and Product 7E1 as 90 and 70.0.

HOLES: none found.
"""

from __future__ import annotations

import json
import time

import pytest

from helpers import ADMIN_ACCOUNT, MEMBER_ACCOUNT, OTHER_ACCOUNT, PRODUCT_ARN, assert_envelope
from test_soundness import assert_no_write, denied

V1 = "/findings/batchupdate"
V2 = "/findingsv2/batchupdatev2"
IMPORT = "/findings/import"
UPDATE = "/findings"  # UpdateFindings: PATCH /findings
OWN = '"FindingIdentifiers":[{"Id":"f-own-high","ProductArn":"%s"}]' % PRODUCT_ARN
V2_OWN = ('"FindingIdentifiers":[{"CloudAccountUid":"%s","FindingInfoUid":"f-own-high",'
          '"MetadataProductUid":"%s"}]' % (MEMBER_ACCOUNT, PRODUCT_ARN))


def invalid(resp) -> dict:
    return assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")


def writes(fake) -> list:
    """Every call but a GetFindings lookup that reached the fake."""
    return [(r["method"], r["path"]) for r in fake.requests()
            if (r["method"], r["path"]) != ("POST", "/findings")]


def refused_untouched(hg, resp, statuses=(400, 403)):
    """A refusal in hubgate's envelope, a non-retryable 4xx, nothing forwarded."""
    assert resp.status in statuses, (resp.status, resp.text[:400])
    if resp.status == 400:
        invalid(resp)
    elif resp.status == 403:
        assert resp.json()["error"]["code"] in ("POLICY_DENIED", "OPERATION_NOT_ALLOWED"), \
            resp.text
    else:
        assert_envelope(resp, resp.status, resp.json()["error"]["code"],
                        resp.headers.get("x-amzn-errortype"))
    assert_no_write(hg.fake)


def send_raw(hg, path: str, body: str | bytes, who: str = "member"):
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    return hg.send("PATCH" if path != IMPORT else "POST", path, body, who=who)


# --------------------------------------------------------------------------------------------
# 1. numbers where integers belong (and one double)

NUMBERS = [
    *[("/Severity/Normalized", '{%s,"Severity":{"Normalized":%s}}' % (OWN, lit), lit) for lit in
      ("1e400", "-1e-400", "10e-1", "1.0e1", "7E+1", "070", "+70", "0x46", "1" + "0" * 400,
       '"70"', "9223372036854775808")],
    *[("/Severity/Product", '{%s,"Severity":{"Product":%s}}' % (OWN, lit), lit)
      for lit in ("1e400", '"1e1"')],
    *[(f"/{m}", '{%s,"%s":%s}' % (OWN, m, lit), lit) for m in ("Confidence", "Criticality")
      for lit in ("1e1", "10e-1", "1.0e1", "-0.0", "+1", "01", "1e400", "-1e-400",
                  "9223372036854775808")],
    *[(f"/{m}", '{%s,"%s":%s}' % (V2_OWN, m, lit), lit) for m in ("StatusId", "SeverityId")
      for lit in ("1e400", '"4"', "04", "0x4", "4.000", "-4", "1e-400", "4e0")],
]


@pytest.mark.parametrize("pointer,body,literal", NUMBERS,
                         ids=[f"{p}={lit[:12]}" for p, _, lit in NUMBERS])
def test_number_spellings_are_refused_before_any_lookup(hubgate, pointer, body, literal):
    path = V2 if pointer in ("/StatusId", "/SeverityId") else V1
    resp = send_raw(hubgate, path, body)
    invalid(resp)
    assert hubgate.fake.requests() == [], "refused before any lookup"
    assert_no_write(hubgate.fake)


# --------------------------------------------------------------------------------------------
# 2. enum spellings

ENUMS = [
    *[('"Workflow":{"Status":%s}' % json.dumps(v, ensure_ascii=False), v) for v in
      ("resolved", "Resolved ", "RESOLVED\u0000", "ＲＥＳＯＬＶＥＤ", "SUPPRESSED\u200b", "",
       "NOTIFIED\u212a", "SUPPRESSED\ufeff")],
    *[('"Severity":{"Label":%s}' % json.dumps(v, ensure_ascii=False), v) for v in
      ("low", "Ｌow", "LOW ", "INFORMATIONAL\u00a0", "\u0130NFORMATIONAL")],
    *[('"VerificationState":%s' % json.dumps(v), v) for v in ("false_positive", "")],
]


@pytest.mark.parametrize("member,value", ENUMS, ids=[repr(v) for _, v in ENUMS])
def test_enum_spellings_are_refused(hubgate, member, value):
    resp = send_raw(hubgate, V1, "{%s,%s}" % (OWN, member))
    invalid(resp)
    assert_no_write(hubgate.fake)


ESCAPED = [
    ("suppressed-value", '{%s,"Workflow":{"Status":"\\u0053UPPRESSED"}}' % OWN),
    ("lowering-label", '{%s,"Severity":{"Label":"\\u004cOW"}}' % OWN),
    ("workflow-name", '{%s,"Work\\u0066low":{"Status":"SUPPRESSED"}}' % OWN),
    ("severity-name", '{%s,"\\u0053everity":{"Normalized":0}}' % OWN),
    ("v2-status-name", '{%s,"\\u0053tatusId":3}' % V2_OWN),
]


@pytest.mark.parametrize("body", [b for _, b in ESCAPED], ids=[i for i, _ in ESCAPED])
def test_escaped_spellings_are_judged_as_aws_reads_them(hubgate, body):
    """AWS unescapes names and values: the policy must see SUPPRESSED, LOW, Workflow and
    Severity, and deny (a 400 would be safe too, but this is what AWS applies)."""
    path = V2 if "CloudAccountUid" in body else V1
    resp = send_raw(hubgate, path, body)
    denied(resp)
    assert_no_write(hubgate.fake)


# --------------------------------------------------------------------------------------------
# 3. null vs absent vs empty

NULLS = [
    '"Workflow":null', '"Workflow":{"Status":null}', '"Severity":null',
    '"Severity":{"Label":null}', '"Severity":{"Normalized":null}', '"Note":null',
    '"Note":{"Text":null,"UpdatedBy":"m"}', '"Note":{}', '"VerificationState":null',
    '"UserDefinedFields":null', '"UserDefinedFields":{"k":null}', '"RelatedFindings":null',
    '"RelatedFindings":[{}]', '"RelatedFindings":[{"Id":null,"ProductArn":"%s"}]' % PRODUCT_ARN,
    '"Confidence":null', '"Types":null', '"Types":[null]',
]


@pytest.mark.parametrize("member", NULLS)
def test_null_or_empty_where_a_value_belongs_is_refused(hubgate, member):
    resp = send_raw(hubgate, V1, "{%s,%s}" % (OWN, member))
    invalid(resp)
    assert hubgate.fake.requests() == []


EMPTY_BESIDE = [
    '{%s,"Severity":{},"Workflow":{"Status":"SUPPRESSED"}}' % OWN,
    '{%s,"UserDefinedFields":{},"RelatedFindings":[],"Workflow":{"Status":"SUPPRESSED"}}' % OWN,
    '{%s,"Workflow":{},"Severity":{"Label":"LOW"}}' % OWN,
    '{%s,"Types":[],"Severity":{"Normalized":0}}' % OWN,
]


@pytest.mark.parametrize("body", EMPTY_BESIDE, ids=["severity", "udf-related", "workflow",
                                                     "types"])
def test_empty_members_beside_a_forbidden_change_do_not_hide_it(hubgate, body):
    resp = send_raw(hubgate, V1, body)
    refused_untouched(hubgate, resp)


def test_empty_severity_alone_is_not_a_lowering(hubgate):
    """Severity {} changes nothing at AWS; whatever hubgate answers, the stored severity of
    f-own-high stays HIGH."""
    resp = send_raw(hubgate, V1, '{%s,"Severity":{}}' % OWN)
    assert resp.status < 500, resp.text
    time.sleep(0.1)
    assert hubgate.fake.findings()["f-own-high"]["Severity"]["Label"] == "HIGH"


# --------------------------------------------------------------------------------------------
# 4. duplicate keys, the second spelled with an escape

DUPLICATES = [
    ("top", V1, '{%s,"Severity":{"Label":"HIGH"},"\\u0053everity":{"Label":"LOW"}}' % OWN),
    ("label", V1, '{%s,"Severity":{"Label":"HIGH","\\u004cabel":"LOW"}}' % OWN),
    ("status", V1, '{%s,"Workflow":{"Status":"NOTIFIED","\\u0053tatus":"SUPPRESSED"}}' % OWN),
    ("udf-key", V1, '{%s,"UserDefinedFields":{"owner":"a","\\u006fwner":"b"}}' % OWN),
    ("identifier-id", V1, '{"FindingIdentifiers":[{"Id":"f-own-high","\\u0049d":"f-other",'
                          '"ProductArn":"%s"}],"Workflow":{"Status":"NOTIFIED"}}' % PRODUCT_ARN),
    ("v2-status", V2, '{%s,"StatusId":1,"\\u0053tatusId":3}' % V2_OWN),
    ("v2-account", V2, ('{"FindingIdentifiers":[{"CloudAccountUid":"%s","\\u0043loudAccountUid":'
                        '"%s","FindingInfoUid":"f-other","MetadataProductUid":"%s"}],'
                        '"StatusId":2}' % (MEMBER_ACCOUNT, OTHER_ACCOUNT, PRODUCT_ARN))),
]


@pytest.mark.parametrize("path,body", [d[1:] for d in DUPLICATES], ids=[d[0] for d in DUPLICATES])
def test_duplicate_keys_with_escaped_spellings_are_refused(hubgate, path, body):
    resp = send_raw(hubgate, path, body)
    invalid(resp)
    assert hubgate.fake.requests() == []


def admin_import(**changes) -> dict:
    from test_adversarial_model2 import reimport
    return reimport("f-admin-new", ADMIN_ACCOUNT, **changes)


@pytest.mark.parametrize("where", ["account", "deep"])
def test_an_administrators_import_with_a_duplicate_key_is_not_forwarded(hubgate, where):
    """Administrators' imports are allowed: a duplicate missed there would be forwarded with
    AWS picking either copy."""
    doc = json.dumps({"Findings": [admin_import(Resources=[{
        "Type": "Other", "Id": "r", "Details": {"Other": {"k": "SENTINEL"}}}])]})
    if where == "account":
        doc = doc.replace('"AwsAccountId": "%s"' % ADMIN_ACCOUNT,
                          '"AwsAccountId": "%s", "\\u0041wsAccountId": "%s"'
                          % (ADMIN_ACCOUNT, OTHER_ACCOUNT))
    else:
        doc = doc.replace('"k": "SENTINEL"', '"k": "SENTINEL", "\\u006b": "other"')
    assert doc.count("\\u00") == 1
    resp = send_raw(hubgate, IMPORT, doc, who="admin")
    invalid(resp)
    assert writes(hubgate.fake) == []


# --------------------------------------------------------------------------------------------
# 5. trailing garbage, encodings, nesting

SUPPRESS = '{%s,"Workflow":{"Status":"SUPPRESSED"}}' % OWN
NOTE = '{%s,"Note":{"Text":"triaged","UpdatedBy":"m"}}' % OWN
GARBAGE = [
    ("second-document", (NOTE + SUPPRESS).encode()),
    ("second-document-after-newline", (NOTE + "\n" + SUPPRESS).encode()),
    ("comment", (NOTE + " /* x */").encode()),
    ("nul", NOTE.encode() + b"\x00"),
    ("stray-brace", (NOTE + "}").encode()),
    ("utf16-bom", NOTE.encode("utf-16")),
    ("utf16le", NOTE.encode("utf-16-le")),
    ("form-feed", NOTE.encode() + b"\x0c"),
    ("nbsp-after", NOTE.encode() + "\u00a0".encode()),
]


@pytest.mark.parametrize("body", [g[1] for g in GARBAGE], ids=[g[0] for g in GARBAGE])
def test_trailing_garbage_and_other_encodings_are_refused(hubgate, body):
    resp = send_raw(hubgate, V1, body)
    invalid(resp)
    assert hubgate.fake.requests() == []


def test_a_deeply_nested_body_is_a_400_and_hubgate_lives(hubgate):
    body = '{%s,"Workflow":%s}' % (OWN, "[" * 200_000)
    resp = send_raw(hubgate, V1, body)
    invalid(resp)
    assert hubgate.proc.poll() is None
    ok = send_raw(hubgate, V1, NOTE)
    assert ok.status == 200, ok.text[:300]


def test_an_import_nested_just_under_the_limit_is_answered_sanely(hubgate):
    """127 levels inside an administrator's import (serde_json stops at 128): every stage
    after parsing (schema, typed read, regorus value, audit) must cope: forwarded whole, or a
    400; never a 5xx or a dead process."""
    inner = "{}"
    for _ in range(120):
        inner = '{"a":%s}' % inner
    doc = json.dumps({"Findings": [admin_import(Resources=[{
        "Type": "Other", "Id": "r", "Details": {"Other": {"k": "PLACEHOLDER"}}}])]})
    doc = doc.replace('{"k": "PLACEHOLDER"}', inner)
    resp = send_raw(hubgate, IMPORT, doc, who="admin")
    assert resp.status in (200, 400), (resp.status, resp.text[:400])
    if resp.status == 400:
        invalid(resp)
        assert writes(hubgate.fake) == []
    else:
        sent = [r for r in hubgate.fake.requests("POST", IMPORT)]
        assert len(sent) == 1 and sent[0]["body"].encode() == doc.encode(), sent[:1]
    assert hubgate.proc.poll() is None
    ok = send_raw(hubgate, V1, NOTE)
    assert ok.status == 200, ok.text[:300]


# --------------------------------------------------------------------------------------------
# 6. severity: the label the policy judges is the label AWS derives


@pytest.mark.parametrize("n,allowed", [(1, False), (39, False), (40, False), (69, False),
                                       (70, True), (89, True), (90, True), (100, True)])
def test_normalized_boundaries_are_judged_as_aws_labels_them(hubgate, n, allowed):
    """f-own-high is HIGH (70): AWS labels 1-39 LOW, 40-69 MEDIUM, 70-89 HIGH, 90-100 CRITICAL.
    Below 70 is a lowering (403); 70 and up is not (forwarded)."""
    resp = send_raw(hubgate, V1, '{%s,"Severity":{"Normalized":%d}}' % (OWN, n))
    if allowed:
        assert resp.status == 200, (n, resp.status, resp.text[:300])
        assert len(hubgate.fake.buf_calls()) == 1
    else:
        denied(resp)
        assert_no_write(hubgate.fake)


@pytest.mark.parametrize("label,n", [("CRITICAL", 89), ("HIGH", 90), ("INFORMATIONAL", 1),
                                     ("LOW", 0), ("MEDIUM", 39)])
def test_label_and_normalized_disagreeing_at_a_boundary_are_refused(hubgate, label, n):
    resp = send_raw(hubgate, V1, '{%s,"Severity":{"Label":"%s","Normalized":%d}}'
                    % (OWN, label, n))
    invalid(resp)
    assert hubgate.fake.requests() == []


# --------------------------------------------------------------------------------------------
# 7. other accounts' findings: UpdateFindings, imports, V2 with both lists


@pytest.mark.parametrize("name", ["AwsAccountId", "\\u0041wsAccountId"])
def test_a_members_update_findings_filtered_to_its_own_account_is_refused(hubgate, name):
    body = ('{"Filters":{"%s":[{"Value":"%s","Comparison":"EQUALS"}]},'
            '"Note":{"Text":"x","UpdatedBy":"m"}}' % (name, MEMBER_ACCOUNT))
    resp = send_raw(hubgate, UPDATE, body)
    denied(resp)
    assert_no_write(hubgate.fake)


@pytest.fixture
def own_imports(make_hubgate, seeded_fake, tmp_path):
    from test_adversarial_model2 import policies_with
    return make_hubgate({"policy": {"dir": str(policies_with(tmp_path,
                                                              member_imports="own-findings"))}},
                        fake=seeded_fake)


def test_member_imports_of_other_accounts_findings_are_refused(own_imports):
    from test_adversarial_model2 import reimport
    hg = own_imports
    cases = [
        [reimport("f-other", OTHER_ACCOUNT)],
        [reimport("f-own-high", MEMBER_ACCOUNT), reimport("f-other", OTHER_ACCOUNT)],
        [reimport("f-other", " " + MEMBER_ACCOUNT)],
        [reimport("f-other", MEMBER_ACCOUNT + "\u200b")],
    ]
    for findings in cases:
        resp = send_raw(hg, IMPORT, json.dumps({"Findings": findings}))
        assert resp.status in (400, 403), (findings[-1]["AwsAccountId"], resp.status, resp.text)
        assert_envelope(resp, resp.status, resp.json()["error"]["code"],
                        resp.headers["x-amzn-errortype"])
    assert writes(hg.fake) == []


def test_member_import_with_a_duplicate_account_key_is_refused(own_imports):
    from test_adversarial_model2 import reimport
    doc = json.dumps({"Findings": [reimport("f-other", MEMBER_ACCOUNT)]})
    doc = doc.replace('"AwsAccountId": "%s"' % MEMBER_ACCOUNT,
                      '"AwsAccountId": "%s", "AwsAccountId": "%s"' % (MEMBER_ACCOUNT,
                                                                      OTHER_ACCOUNT))
    resp = send_raw(own_imports, IMPORT, doc)
    invalid(resp)
    assert writes(own_imports.fake) == []


def test_v2_with_both_lists_naming_another_accounts_finding_is_refused(hubgate):
    body = '{%s,"MetadataUids":["f-other"],"StatusId":4}' % V2_OWN
    resp = send_raw(hubgate, V2, body)
    refused_untouched(hubgate, resp)


# --------------------------------------------------------------------------------------------
# 8. identifiers spelled twice, numbers where strings belong, per-finding rewrites

OTHER_ESCAPED = '{"Id":"f-\\u006fther","ProductArn":"%s"}' % PRODUCT_ARN
OWN_ESCAPED = '{"Id":"f-own-\\u0068igh","ProductArn":"%s"}' % PRODUCT_ARN
OWN_ID = '{"Id":"f-own-high","ProductArn":"%s"}' % PRODUCT_ARN

TWICE = [
    # the member's own finding twice (once escaped) with a lowering: never forwarded
    ("own-twice-lowering", V1, '{"FindingIdentifiers":[%s,%s],"Severity":{"Label":"LOW"}}'
     % (OWN_ID, OWN_ESCAPED)),
    # another account's finding spelled with an escape beside the member's own
    ("escaped-other", V1, '{"FindingIdentifiers":[%s,%s],"Note":{"Text":"x","UpdatedBy":"m"}}'
     % (OWN_ID, OTHER_ESCAPED)),
    # V2: one finding named twice, claimed for the member's account and for 333
    ("v2-two-claims", V2, '{"FindingIdentifiers":[{"CloudAccountUid":"%s","FindingInfoUid":'
     '"f-other","MetadataProductUid":"%s"},{"CloudAccountUid":"%s","FindingInfoUid":"f-other",'
     '"MetadataProductUid":"%s"}],"StatusId":4}'
     % (MEMBER_ACCOUNT, PRODUCT_ARN, OTHER_ACCOUNT, PRODUCT_ARN)),
    # numbers where strings belong (a lenient reader, AWS's perhaps, makes them strings)
    ("v2-account-as-number", V2, '{"FindingIdentifiers":[{"CloudAccountUid":%s,"FindingInfoUid":'
     '"f-own-high","MetadataProductUid":"%s"}],"StatusId":4}' % (MEMBER_ACCOUNT, PRODUCT_ARN)),
    ("id-as-number", V1, '{"FindingIdentifiers":[{"Id":1,"ProductArn":"%s"}],'
     '"Workflow":{"Status":"NOTIFIED"}}' % PRODUCT_ARN),
    ("udf-value-as-number", V1, '{%s,"UserDefinedFields":{"k":1}}' % OWN),
    ("note-as-string", V1, '{%s,"Note":"RISK-1 resolved"}' % OWN),
    ("workflow-as-string", V1, '{%s,"Workflow":"SUPPRESSED"}' % OWN),
    ("severity-as-string", V1, '{%s,"Severity":"LOW"}' % OWN),
    ("status-as-array", V1, '{%s,"Workflow":{"Status":["SUPPRESSED"]}}' % OWN),
]


@pytest.mark.parametrize("path,body", [t[1:] for t in TWICE], ids=[t[0] for t in TWICE])
def test_identifiers_twice_and_mistyped_members_are_refused(hubgate, path, body):
    resp = send_raw(hubgate, path, body)
    refused_untouched(hubgate, resp)


@pytest.fixture
def partial(make_hubgate, seeded_fake):
    return make_hubgate({"policy": {"on_partial_deny": "forward-allowed"}}, fake=seeded_fake)


def test_forward_allowed_drops_an_escaped_other_accounts_identifier(partial):
    """Per-finding mode re-serialises the body: the identifier of account 333's finding,
    spelled with an escape, is denied and not in what is sent; the member's own is."""
    body = ('{"FindingIdentifiers":[%s,%s],"Workflow":{"Status":"NOTIFIED"}}'
            % (OWN_ID, OTHER_ESCAPED))
    resp = send_raw(partial, V1, body)
    assert resp.status == 200, (resp.status, resp.text[:300])
    sent = partial.fake.buf_calls()
    assert len(sent) == 1, sent
    ids = [i["Id"] for i in json.loads(sent[0]["body"])["FindingIdentifiers"]]
    assert ids == ["f-own-high"], ids
    assert partial.fake.findings()["f-other"]["Workflow"]["Status"] == "NEW"


def test_forward_allowed_rewrite_keeps_the_judged_severity(partial):
    """A rewrite from the parsed value: Normalized 70 (HIGH, allowed on f-own-high, refused on
    nothing) and a Product written 7E1 travel as the same numbers; f-other is dropped."""
    body = ('{"FindingIdentifiers":[%s,%s],"Severity":{"Normalized":90,"Product":7E1}}'
            % (OWN_ID, OTHER_ESCAPED))
    resp = send_raw(partial, V1, body)
    assert resp.status == 200, (resp.status, resp.text[:300])
    sent = partial.fake.buf_calls()
    assert len(sent) == 1, sent
    doc = json.loads(sent[0]["body"])
    assert doc["Severity"] == {"Normalized": 90, "Product": 70.0}, doc
    assert [i["Id"] for i in doc["FindingIdentifiers"]] == ["f-own-high"]


V2_NULLS = ['"Comment":null', '"SeverityId":null', '"StatusId":null', '"MetadataUids":null']


@pytest.mark.parametrize("member", V2_NULLS)
def test_v2_nulls_are_refused(hubgate, member):
    resp = send_raw(hubgate, V2, "{%s,%s}" % (V2_OWN, member))
    invalid(resp)
    assert hubgate.fake.requests() == []


@pytest.mark.parametrize("changes", [{"Workflow": None}, {"Severity": {"Label": None}},
                                     {"Note": {"Text": "x", "UpdatedBy": "m", "UpdatedAt": None}},
                                     {"FindingProviderFields": None}, {"AwsAccountId": None},
                                     {"AwsAccountId": int(MEMBER_ACCOUNT)}])
def test_member_import_nulls_and_numbers_are_refused(own_imports, changes):
    from test_adversarial_model2 import reimport
    resp = send_raw(own_imports, IMPORT, json.dumps({"Findings": [reimport("f-own-high",
                                                                           MEMBER_ACCOUNT,
                                                                           **changes)]}))
    invalid(resp)
    assert writes(own_imports.fake) == []


@pytest.mark.parametrize("n", ["101", "-1", "1000", "-100"])
def test_normalized_out_of_range_is_a_400(hubgate, n):
    resp = send_raw(hubgate, V1, '{%s,"Severity":{"Normalized":%s}}' % (OWN, n))
    invalid(resp)
    assert hubgate.fake.requests() == []
