"""SigV4 authentication of callers (identity.mode = "sigv4")."""

import datetime as dt
import json
import socket
import time

import pytest
from botocore.exceptions import ClientError

from helpers import (
    ADMIN,
    MEMBER,
    MEMBER_SECRET,
    Creds,
    Response,
    assert_envelope,
    ident,
    sign,
)

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


# ---------------------------------------------------------------------------
# a caller's secret sent in the wrong place is never echoed


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> Response:
    """Send raw bytes (a request with Connection: close) and read the answer until close."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(data)
        while chunk := s.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip())
                   for k, v in (line.split(":", 1) for line in lines[1:]))
    return Response(int(lines[0].split(" ")[1]), headers, body)


def raw_request_bytes(target: str, headers: dict, body: bytes) -> bytes:
    lines = [f"PATCH {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_never_echoed(hubgate, resp: Response, secret: str):
    """The secret is in neither the answer (head or body), the audit file nor hubgate's log."""
    assert secret not in resp.text and secret not in json.dumps(resp.headers), resp.text
    time.sleep(0.1)
    for path in hubgate.audit_files():
        assert secret not in path.read_text(errors="replace"), path
    assert secret not in hubgate.stderr_text()


@pytest.mark.parametrize("stray", ["{secret}", "{secret}=x", "X-{secret}"])
def test_a_secret_pasted_into_the_authorization_header_is_never_echoed(hubgate, stray):
    """A mis-pasted header (`..., Signature=<hex>, <secret>`) is refused by the component's
    place, never its text: the message reaches the audit record."""
    body = json.dumps(BODY).encode()
    headers = sign(MEMBER, "PATCH", hubgate.host, "/findings/batchupdate", body,
                   {"Content-Type": "application/json"})
    headers["Authorization"] += ", " + stray.format(secret=MEMBER_SECRET)
    resp = raw_exchange(hubgate.port, raw_request_bytes("/findings/batchupdate", headers, body))
    err = assert_unauthenticated(hubgate, resp, "UnrecognizedClientException")
    assert "component 4 after AWS4-HMAC-SHA256" in err["error"]["message"], err
    assert_never_echoed(hubgate, resp, MEMBER_SECRET)
    # Nor a piece of the header (the session's secrets scan looks for this one).
    assert_never_echoed(hubgate, resp, "Signature=")


def test_a_secret_sent_as_the_access_key_id_is_never_echoed(hubgate):
    """Key id and secret swapped in the client's settings: the secret lands in Credential."""
    body = json.dumps(BODY).encode()
    swapped = Creds(MEMBER_SECRET, MEMBER.access_key)
    headers = sign(swapped, "PATCH", hubgate.host, "/findings/batchupdate", body,
                   {"Content-Type": "application/json"})
    resp = raw_exchange(hubgate.port, raw_request_bytes("/findings/batchupdate", headers, body))
    err = assert_unauthenticated(hubgate, resp, "UnrecognizedClientException")
    assert err["error"]["message"].startswith("unknown access key id (not shown"), err
    assert_never_echoed(hubgate, resp, MEMBER_SECRET)
    # A key id of an access key id's shape is still named, as before.
    resp = hubgate.buf(BODY, creds=Creds("AKIAUNKNOWN000000000", ADMIN.secret_key))
    err = assert_unauthenticated(hubgate, resp, "UnrecognizedClientException")
    assert err["error"]["message"] == "unknown access key id AKIAUNKNOWN000000000", err


def test_userinfo_in_an_absolute_form_target_is_never_echoed(hubgate):
    """`PATCH http://KEY:SECRET@host/path`: still 404 NOT_FOUND, and the message names the
    scheme, host and port only."""
    body = json.dumps(BODY).encode()
    headers = sign(MEMBER, "PATCH", hubgate.host, "/findings/batchupdate", body,
                   {"Content-Type": "application/json"})
    target = f"http://{MEMBER.access_key}:{MEMBER_SECRET}@{hubgate.host}/findings/batchupdate"
    resp = raw_exchange(hubgate.port, raw_request_bytes(target, headers, body))
    err = assert_envelope(resp, 404, "NOT_FOUND", "ResourceNotFoundException")
    message = err["error"]["message"]
    assert f'"http://{hubgate.host}"' in message, message
    assert MEMBER.access_key not in message and "@" not in message, message
    assert hubgate.fake.requests() == []
    rec = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["status"] == 404 and rec["forwarded"] is False
    assert_never_echoed(hubgate, resp, MEMBER_SECRET)
