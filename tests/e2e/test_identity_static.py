"""identity.mode = "static": every request is the configured principal, unsigned or not."""

import pytest

from helpers import assert_envelope, ident


@pytest.fixture
def static_member(make_hubgate, seeded_fake):
    return make_hubgate({"identity": {"mode": "static", "static_principal": "member"}},
                        fake=seeded_fake)


def test_unsigned_suppress_is_denied_as_member(static_member):
    hg = static_member
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Workflow": {"Status": "SUPPRESSED"}}, who=None)
    body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "member accounts may not suppress findings" in body["error"]["message"]
    assert hg.fake.requests() == []
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["principal"]["id"] == "member"
    assert rec["principal"]["account_id"] == "222222222222"
    assert rec["principal"]["role"] == "member"


def test_unsigned_raise_is_forwarded_as_member(static_member):
    hg = static_member
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Severity": {"Label": "CRITICAL"}}, who=None)
    assert resp.status == 200, resp.text
    assert hg.fake.findings()["f-own-high"]["Severity"]["Label"] == "CRITICAL"
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["principal"]["id"] == "member"
