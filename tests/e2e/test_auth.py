"""SigV4 authentication of callers (identity.mode = "sigv4")."""

import datetime as dt
import json

import pytest
from botocore.exceptions import ClientError

from helpers import ADMIN, MEMBER, Creds, assert_envelope, ident

BODY = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}


def assert_unauthenticated(hubgate, resp, error_type):
    body = assert_envelope(resp, 401, "UNAUTHENTICATED", error_type)
    assert hubgate.fake.requests() == []
    rec = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["status"] == 401
    assert rec["forwarded"] is False
    assert rec["principal"] is None
    return body


def test_wrong_secret_is_invalid_signature(hubgate):
    resp = hubgate.buf(BODY, creds=Creds(ADMIN.access_key, "not-the-admin-secret"))
    assert_unauthenticated(hubgate, resp, "InvalidSignatureException")


def test_unknown_access_key_is_unrecognized_client(hubgate):
    resp = hubgate.buf(BODY, creds=Creds("AKIAUNKNOWN000000000", ADMIN.secret_key))
    assert_unauthenticated(hubgate, resp, "UnrecognizedClientException")


def test_member_key_with_admin_secret_is_invalid_signature(hubgate):
    resp = hubgate.buf(BODY, creds=Creds(MEMBER.access_key, ADMIN.secret_key))
    assert_unauthenticated(hubgate, resp, "InvalidSignatureException")


@pytest.mark.parametrize("path,method,payload", [
    ("/findings/batchupdate", "PATCH", BODY),
    ("/findings", "POST", {"MaxResults": 1}),   # read-only routes are authenticated too
    ("/accounts", "GET", b""),
])
def test_missing_authorization_is_401(hubgate, path, method, payload):
    resp = hubgate.send(method, path, payload, who=None)
    assert_unauthenticated(hubgate, resp, "UnrecognizedClientException")


@pytest.mark.parametrize("authorization", [
    "Bearer abc",
    "AWS4-HMAC-SHA256",
    "AWS4-HMAC-SHA256 Credential=HGTESTADMIN000000001/20240101/us-east-1/securityhub/aws4_request",
])
def test_malformed_authorization_is_401(hubgate, authorization):
    resp = hubgate.buf(BODY, who=None, extra_headers={"Authorization": authorization,
                                                      "X-Amz-Date": "20240101T000000Z"})
    assert resp.status == 401, resp.text
    assert resp.json()["error"]["code"] == "UNAUTHENTICATED"
    assert resp.headers["x-amzn-errortype"] in ("UnrecognizedClientException",
                                                "InvalidSignatureException")
    assert hubgate.fake.requests() == []


@pytest.mark.parametrize("minutes", [-20, 20])
def test_request_dated_20_minutes_off_is_rejected(hubgate, minutes):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes)
    resp = hubgate.buf(BODY, who="admin", when=when)
    assert_unauthenticated(hubgate, resp, "InvalidSignatureException")


def test_request_dated_5_minutes_ago_is_accepted(hubgate):
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    resp = hubgate.buf(BODY, who="admin", when=when)
    assert resp.status == 200, resp.text


def test_body_changed_after_signing_is_invalid_signature(hubgate):
    signed = json.dumps(BODY).encode()
    sent = signed.replace(b"f-admin", b"f-other")
    resp = hubgate.buf(sent, who="admin", body_for_signature=signed)
    assert_unauthenticated(hubgate, resp, "InvalidSignatureException")


def test_boto3_with_wrong_secret_gets_typed_error(hubgate):
    client = hubgate.client(creds=Creds(MEMBER.access_key, "wrong"))
    with pytest.raises(ClientError) as e:
        client.batch_update_findings(FindingIdentifiers=[ident("f-own-high")],
                                     Severity={"Label": "CRITICAL"})
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert e.value.response["Error"]["Message"].startswith("UNAUTHENTICATED: ")
    assert hubgate.fake.requests() == []
