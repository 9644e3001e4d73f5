"""policy.on_partial_deny = "forward-allowed": deny part of a batch, apply the rest."""

import json

import pytest

from helpers import assert_envelope, ident


@pytest.fixture
def partial(make_hubgate, seeded_fake):
    return make_hubgate({"policy": {"on_partial_deny": "forward-allowed"}}, fake=seeded_fake)


def test_allowed_findings_are_forwarded_and_denied_ones_merged(partial):
    hg = partial
    client = hg.client("member")
    resp = client.batch_update_findings(
        FindingIdentifiers=[ident("f-own-high"), ident("f-other"), ident("no-such-finding")],
        Severity={"Label": "CRITICAL"})
    assert [f["Id"] for f in resp["ProcessedFindings"]] == ["f-own-high"]
    unprocessed = {u["FindingIdentifier"]["Id"]: u for u in resp["UnprocessedFindings"]}
    assert set(unprocessed) == {"f-other", "no-such-finding"}
    assert unprocessed["f-other"]["ErrorCode"] == "PolicyDenied"
    assert "own account" in unprocessed["f-other"]["ErrorMessage"]
    # one message for both: a member is not told that f-other exists (test_adversarial_oracle)
    assert unprocessed["no-such-finding"]["ErrorMessage"] == unprocessed["f-other"]["ErrorMessage"]
    # exactly the allowed finding went upstream, re-signed
    calls = hg.fake.buf_calls()
    assert len(calls) == 1
    sent = json.loads(calls[0]["body"])
    assert [f["Id"] for f in sent["FindingIdentifiers"]] == ["f-own-high"]
    assert sent["Severity"] == {"Label": "CRITICAL"}
    assert hg.fake.findings()["f-own-high"]["Severity"]["Label"] == "CRITICAL"
    assert hg.fake.findings()["f-other"]["Severity"]["Label"] != "CRITICAL"
    rec = hg.audit_for(resp["ResponseMetadata"]["HTTPHeaders"]["x-hubgate-decision-id"])
    assert rec["forwarded"] is True
    assert rec["result"]["allow"] is False
    assert rec["partial"] == {"forwarded": 1, "denied": 2}


def test_all_denied_is_the_403_envelope(partial):
    hg = partial
    resp = hg.buf({"FindingIdentifiers": [ident("f-other")], "Severity": {"Label": "LOW"}},
                  who="member")
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert hg.fake.buf_calls() == []


def test_a_whole_request_violation_forwards_nothing(partial):
    hg = partial
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high"), ident("f-other")],
                   "Workflow": {"Status": "SUPPRESSED"}}, who="member")
    body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "may not suppress" in body["error"]["message"]
    assert hg.fake.requests() == []


def test_reject_stays_the_default(hubgate):
    resp = hubgate.buf({"FindingIdentifiers": [ident("f-own-high"), ident("f-other")],
                        "Severity": {"Label": "CRITICAL"}}, who="member")
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert hubgate.fake.buf_calls() == []


def test_v2_batches_are_refused_whole(partial):
    """V2 identifiers cannot be cut like V1's: a partly denied V2 batch forwards nothing."""
    hg = partial
    ids = [{"CloudAccountUid": acct, "FindingInfoUid": fid,
            "MetadataProductUid": "arn:aws:securityhub:us-east-1::product/aws/securityhub"}
           for fid, acct in (("f-own-high", "222222222222"), ("f-other", "333333333333"))]
    resp = hg.send("PATCH", "/findingsv2/batchupdatev2",
                   {"FindingIdentifiers": ids, "Comment": "looked"}, who="member")
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert hg.fake.requests() == []
