"""Malformed BatchUpdateFindings bodies, body size and content type, sent as raw signed HTTP."""

import json

import pytest

from helpers import PRODUCT_ARN, assert_envelope, ident

GOOD_ID = ident("f-admin")
NOTE = {"Text": "t", "UpdatedBy": "u"}


def body(**members) -> dict:
    return {"FindingIdentifiers": [GOOD_ID], **members}


DUPLICATE_KEY = (
    '{"FindingIdentifiers": [{"Id": "f-admin", "ProductArn": "%s"}], '
    '"FindingIdentifiers": [{"Id": "f-other", "ProductArn": "%s"}]}' % (PRODUCT_ARN, PRODUCT_ARN))

# (test id, request body, JSON pointers a detail may carry, word the detail must mention)
CASES = [
    ("not-json", b"this is not json", {""}, None),
    ("trailing-garbage", json.dumps(body(Note=NOTE)) + " garbage", {""}, None),
    ("trailing-second-object", json.dumps(body(Note=NOTE)) + "{}", {""}, None),
    ("duplicate-key", DUPLICATE_KEY, {"/FindingIdentifiers"}, "duplicate"),
    ("duplicate-key-via-escape", DUPLICATE_KEY.replace('"FindingIdentifiers": [{"Id": "f-other"',
                                                       '"\\u0046indingIdentifiers": [{"Id": "f-other"'),
     {"/FindingIdentifiers"}, "duplicate"),
    ("duplicate-nested-key",
     '{"FindingIdentifiers": [{"Id": "f-admin", "Id": "f-other", "ProductArn": "%s"}]}'
     % PRODUCT_ARN, {"/FindingIdentifiers/0", "/FindingIdentifiers/0/Id"}, "duplicate"),
    ("missing-FindingIdentifiers", {"Note": NOTE}, {"", "/FindingIdentifiers"},
     "FindingIdentifiers"),
    ("empty-FindingIdentifiers", {"FindingIdentifiers": []}, {"/FindingIdentifiers"}, None),
    ("101-identifiers", {"FindingIdentifiers": [ident(f"f-{i}") for i in range(101)]},
     {"/FindingIdentifiers"}, None),
    ("blank-Id", {"FindingIdentifiers": [{"Id": "  ", "ProductArn": PRODUCT_ARN}]},
     {"/FindingIdentifiers/0/Id"}, None),
    ("missing-ProductArn", {"FindingIdentifiers": [{"Id": "f-admin"}]},
     {"/FindingIdentifiers/0", "/FindingIdentifiers/0/ProductArn"}, "ProductArn"),
    ("unknown-member", body(Bogus=1), {"", "/Bogus"}, "Bogus"),
    ("unknown-nested-member", body(Workflow={"Status": "NEW", "Extra": 1}),
     {"/Workflow", "/Workflow/Extra"}, "Extra"),
    ("Workflow.Status-BOGUS", body(Workflow={"Status": "BOGUS"}), {"/Workflow/Status"}, None),
    ("Severity.Label-lowercase", body(Severity={"Label": "low"}), {"/Severity/Label"}, None),
    ("Severity.Normalized-101", body(Severity={"Normalized": 101}),
     {"/Severity/Normalized"}, None),
    ("Confidence-101", body(Confidence=101), {"/Confidence"}, None),
    ("Confidence-negative", body(Confidence=-1), {"/Confidence"}, None),
    ("Confidence-string", body(Confidence="50"), {"/Confidence"}, None),
    ("Criticality-fraction", body(Criticality=1.5), {"/Criticality"}, None),
    ("Note-without-UpdatedBy", body(Note={"Text": "t"}), {"/Note", "/Note/UpdatedBy"},
     "UpdatedBy"),
    ("Types-bad-namespace", body(Types=["Bogus/Namespace"]), {"/Types/0"}, None),
    ("VerificationState-BOGUS", body(VerificationState="MAYBE"), {"/VerificationState"}, None),
    ("Label-disagrees-with-Normalized", body(Severity={"Label": "CRITICAL", "Normalized": 10}),
     {"/Severity"}, "disagrees"),
    ("json-array", [body(Note=NOTE)], {""}, None),
    ("json-string", '"FindingIdentifiers"', {""}, None),
]


@pytest.mark.parametrize("payload,paths,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_body_is_rejected_before_any_upstream_call(hubgate, payload, paths, word):
    resp = hubgate.buf(payload, who="admin")
    err = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")["error"]
    details = err["details"]
    assert isinstance(details, list) and details, err
    matching = [d for d in details if d["path"] in paths]
    assert matching, f"no detail with a path in {paths}: {details}"
    assert all(isinstance(d["message"], str) and d["message"] for d in details)
    if word:
        assert any(word.lower() in (d["path"] + " " + d["message"]).lower()
                   for d in matching), details
    assert hubgate.fake.requests() == []
    rec = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["status"] == 400
    assert rec["forwarded"] is False
    assert rec["error"]["code"] == "VALIDATION_ERROR"


def test_validation_happens_after_authentication(hubgate):
    """Order of checks: a bad signature on a malformed body is a 401, not a 400."""
    resp = hubgate.buf(b"not json", who=None,
                       extra_headers={"Authorization": "AWS4-HMAC-SHA256 garbage"})
    assert_envelope(resp, 401, "UNAUTHENTICATED", "UnrecognizedClientException")


def test_body_bytes_are_forwarded_exactly(hubgate):
    raw = ('{ "FindingIdentifiers" :[ {"ProductArn":"%s","Id":"f-admin"} ],\n'
           '  "Note": {"Text": "caf\\u00e9 \\"quoted\\"", "UpdatedBy": "raw"}  }\n' % PRODUCT_ARN)
    resp = hubgate.buf(raw, who="admin")
    assert resp.status == 200, resp.text
    assert resp.headers.get("x-hubgate-decision-id")
    assert resp.json()["ProcessedFindings"] == [GOOD_ID]
    [got] = hubgate.fake.buf_calls()
    assert got["body"] == raw
    assert hubgate.fake.findings()["f-admin"]["Note"]["Text"] == 'caf\u00e9 "quoted"'


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_json_content_types_are_accepted(hubgate, content_type):
    resp = hubgate.buf(body(Note=NOTE), who="admin", content_type=content_type)
    assert resp.status == 200, resp.text
    assert len(hubgate.fake.buf_calls()) == 1


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml",
                                          "application/x-www-form-urlencoded",
                                          "application/x-amz-json-1.1",
                                          "application/json; charset=utf-16"])
def test_non_json_content_type_is_415(hubgate, content_type):
    resp = hubgate.buf(body(Note=NOTE), who="admin", content_type=content_type)
    assert_envelope(resp, 415, "UNSUPPORTED_MEDIA_TYPE", "InvalidInputException")
    assert hubgate.fake.requests() == []
    assert hubgate.audit_for(resp.headers["x-amzn-requestid"])["status"] == 415


def sized_body(size: int) -> bytes:
    """A valid admin BatchUpdateFindings body of exactly size bytes (padded with whitespace)."""
    core = json.dumps(body(Note=NOTE)).encode()
    out = b"{" + b" " * (size - len(core)) + core[1:]
    assert len(out) == size
    return out


@pytest.fixture
def small_body_hubgate(make_hubgate, seeded_fake):
    return make_hubgate({"server": {"max_body_bytes": 4096}}, fake=seeded_fake)


def test_body_over_max_body_bytes_is_413(small_body_hubgate):
    hg = small_body_hubgate
    resp = hg.buf(sized_body(4097), who="admin")
    assert_envelope(resp, 413, "PAYLOAD_TOO_LARGE", "InvalidInputException")
    assert hg.fake.requests() == []
    assert hg.audit_for(resp.headers["x-amzn-requestid"])["status"] == 413

    big = hg.buf(sized_body(20_000), who="admin")
    assert_envelope(big, 413, "PAYLOAD_TOO_LARGE", "InvalidInputException")
    assert hg.fake.requests() == []


def test_body_of_exactly_max_body_bytes_is_accepted(small_body_hubgate):
    resp = small_body_hubgate.buf(sized_body(4096), who="admin")
    assert resp.status == 200, resp.text
    assert len(small_body_hubgate.fake.buf_calls()) == 1


def test_chunked_body_is_checked_like_any_other(hubgate):
    """A body sent with Transfer-Encoding: chunked is read whole, validated and decided on."""
    suppress = {"FindingIdentifiers": [ident("f-own-high")], "Workflow": {"Status": "SUPPRESSED"}}
    resp = hubgate.buf(suppress, who="member", chunked=True)
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert hubgate.fake.requests() == []
    bad = hubgate.buf(b'{"FindingIdentifiers": [], "x": ', who="admin", chunked=True)
    assert_envelope(bad, 400, "VALIDATION_ERROR", "InvalidInputException")
    ok = hubgate.buf(body(Note=NOTE), who="admin", chunked=True)
    assert ok.status == 200, ok.text
    assert len(hubgate.fake.buf_calls()) == 1


def test_long_offending_values_are_not_echoed_back(hubgate):
    """101 identifiers: the detail names the rule, it does not quote the 101-element array."""
    resp = hubgate.buf({"FindingIdentifiers": [ident(f"f-{i}") for i in range(101)]}, who="admin")
    err = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")["error"]
    assert len(resp.text) < 2000, resp.text
    assert "f-50" not in resp.text
    assert [d["path"] for d in err["details"]] == ["/FindingIdentifiers"]
