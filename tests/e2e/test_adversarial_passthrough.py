"""Adversarial review of upstream.auth = "passthrough": the caller's own signature goes to AWS,
so what hubgate judged must be what AWS runs, and AWS's answers to the caller's own call must
reach it as AWS gave them (its status, its body, its request id), never dressed up as a
decision or a failure of hubgate's."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from helpers import Creds, header, ident, raw_request, sign
from test_passthrough import (  # noqa: F401 (fixture)
    PT_ADMIN, PT_MEMBER, REAL_HOST, SUPPRESS, passthrough, pt_client,
)

MEMBER_FILTER = {"AwsAccountId": [{"Value": "222222222222", "Comparison": "EQUALS"}]}


def pace_of(hg, operation: str):
    for line in hg.admin("/metrics").text.splitlines():
        if line.startswith(f'hubgate_quota_pace{{operation="{operation}"}}'):
            return float(line.split()[-1])
    return None


def last_answered(fake, path: str) -> dict:
    calls = [r for r in fake.requests() if r["path"] == path and "status" in r]
    assert calls, fake.requests()
    return calls[-1]


@pytest.mark.parametrize("call", ["write", "read"])
def test_aws_throttling_the_callers_own_call_reaches_it_as_aws_gave_it(passthrough, call):
    """In passthrough a forward is the caller's own call, signed with its own keys, on its own
    account's quota. AWS throttling it used to come back as hubgate's envelope, "THROTTLED:
    Security Hub throttled hubgate's BatchUpdateFindings call", with hubgate's decision id in
    place of AWS's request id: it blamed hubgate's account, which an SRE would then go and
    look at, and the caller lost the id AWS support and CloudTrail know the call by. AWS's
    answer now goes back unchanged (still 429, which SDKs back off on), recorded as throttled."""
    hg, fake = passthrough, passthrough.fake
    if call == "write":
        c = pt_client(hg, PT_ADMIN)
        fake.throttle_next(BatchUpdateFindings=1)
        path = "/findings/batchupdate"
        run = lambda: c.batch_update_findings(  # noqa: E731
            FindingIdentifiers=[ident("f-other")], Note={"Text": "t", "UpdatedBy": "u"})
    else:
        c = pt_client(hg, PT_MEMBER)
        fake.throttle_next(GetFindings=1)
        path = "/findings"
        run = lambda: c.get_findings(Filters=MEMBER_FILTER)  # noqa: E731
    with pytest.raises(ClientError) as e:
        run()
    err = e.value.response
    aws = last_answered(fake, path)
    assert aws["status"] == 429 and aws.get("throttled") is True, aws
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 429, err
    assert err["Error"]["Code"] == "TooManyRequestsException", err
    assert err["Error"]["Message"] == "Rate exceeded", err
    assert "hubgate" not in json.dumps(err["Error"]), err
    headers = err["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-requestid"] == aws["request_id"], (headers, aws["request_id"])
    rec = hg.audit_for(headers["x-hubgate-decision-id"])
    assert rec["throttled"] is True and rec["forwarded"] is True, rec
    assert rec["upstream_status"] == 429 and rec["status"] == 429, rec
    assert rec["upstream_request_id"] == aws["request_id"], rec
    assert rec["principal"]["id"] == ("pt-admin" if call == "write" else "pt-member"), rec
    # the caller's account was busy, not hubgate's: the pace stays whole
    assert pace_of(hg, "BatchUpdateFindings") is None
    assert pace_of(hg, "GetFindings") is None
    # nothing was applied, and the next call goes through
    assert fake.findings()["f-other"]["Note"]["Text"] != "t"
    run()


def nothing_forwarded(fake):
    assert [r for r in fake.requests() if r["path"] != "/findings"] == [], fake.requests()


@pytest.mark.parametrize("name", ["X-Amz-Credential", "X%2DAmz-Signature"])
def test_query_string_credentials_beside_the_header_are_refused_on_forwarded_routes(
        passthrough, name):
    """A read routed "forward" keeps its query string. hubgate maps the Authorization header's
    key to a caller (and records it); a presigned URL's parameters in the query carry a second
    set of credentials, which AWS could read instead: the call would run as someone the audit
    record does not name. Guarded routes refuse any query string; forwarded ones used to pass
    this one on. Refused as it is on every route, with the parameter's name percent-decoded
    as AWS reads it."""
    hg, fake = passthrough, passthrough.fake
    value = (f"{PT_ADMIN.access_key}%2F20260101%2Fus-east-1%2Fsecurityhub%2Faws4_request"
             if "Credential" in name else "0" * 64)
    path = f"/accounts?HubArn=arn%3Ahub&{name}={value}"
    headers = sign(PT_MEMBER, "GET", REAL_HOST, path, b"")
    resp = raw_request(hg.port, "GET", path, b"", headers)
    assert resp.status == 401, (resp.status, resp.text)
    body = resp.json()
    assert body["error"]["code"] == "UNAUTHENTICATED", body
    assert "query string" in body["error"]["message"], body
    assert fake.requests() == []
    # the same read without them goes through, signed by the caller
    path = "/accounts?HubArn=arn%3Ahub"
    headers = sign(PT_MEMBER, "GET", REAL_HOST, path, b"")
    resp = raw_request(hg.port, "GET", path, b"", headers)
    assert resp.status == 200, (resp.status, resp.text)
    got = fake.requests()[-1]
    assert got["signature_valid"] is True and got["access_key"] == PT_MEMBER.access_key, got


def test_a_signature_for_another_region_is_refused_before_any_lookup(passthrough):
    """hubgate forwards to upstream.endpoint and looks findings up in upstream.region. A caller
    whose SDK is set to another region signs for that region: AWS's endpoint refuses such a
    signature, but only after hubgate had spent a GetFindings lookup (hubgate's own account's
    quota, 3/s) and a policy decision on it, and the caller read AWS's bare signature error.
    Refused at once with the region to sign for."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    hg, fake = passthrough, passthrough.fake
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Note": {"Text": "n", "UpdatedBy": "u"}}).encode()
    host = "securityhub.eu-west-1.amazonaws.com"
    req = AWSRequest(method="PATCH", url=f"http://{host}/findings/batchupdate", data=body,
                     headers={"Content-Type": "application/json", "Host": host})
    SigV4Auth(Credentials(PT_MEMBER.access_key, PT_MEMBER.secret_key), "securityhub",
              "eu-west-1").add_auth(req)
    resp = raw_request(hg.port, "PATCH", "/findings/batchupdate", body, dict(req.headers.items()))
    assert resp.status == 401, (resp.status, resp.text)
    err = resp.json()["error"]
    assert err["code"] == "UNAUTHENTICATED" and "sign for us-east-1" in err["message"], err
    assert fake.requests() == [], fake.requests()
    assert hg.audit_for(resp.headers["x-amzn-requestid"])["forwarded"] is False


def test_aws_refusing_the_callers_signature_reaches_it_unchanged_and_is_recorded(passthrough):
    """Whoever claims a listed key id without its secret has hubgate decide as that caller
    (documented); AWS then refuses the signature. That refusal is AWS's answer to the
    caller's own call: it must reach the caller byte for byte with AWS's request id, never as
    hubgate's envelope claiming a policy decision, and the record must say AWS refused it."""
    hg, fake = passthrough, passthrough.fake
    body = json.dumps({"FindingIdentifiers": [ident("f-other")], **SUPPRESS}).encode()
    forged = Creds(PT_ADMIN.access_key, "a secret the sender does not have")
    headers = sign(forged, "PATCH", REAL_HOST, "/findings/batchupdate", body,
                   {"Content-Type": "application/json"})
    resp = raw_request(hg.port, "PATCH", "/findings/batchupdate", body, headers)
    aws = last_answered(fake, "/findings/batchupdate")
    assert aws["signature_valid"] is False and aws["status"] == 403, aws
    assert resp.status == 403, (resp.status, resp.text)
    assert resp.headers["x-amzn-errortype"] == "InvalidSignatureException", resp.headers
    assert resp.headers["x-amzn-requestid"] == aws["request_id"], resp.headers
    assert resp.json() == {"message": aws.get("signature_error") or resp.json()["message"]}
    assert "success" not in resp.json() and "POLICY_DENIED" not in resp.text, resp.text
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["principal"]["id"] == "pt-admin", rec
    assert rec["forwarded"] is True and rec["upstream_status"] == 403, rec
    assert rec["upstream_request_id"] == aws["request_id"] and rec["status"] == 403, rec
    assert rec["throttled"] is False, rec
    assert fake.findings()["f-other"]["Workflow"]["Status"] == "NEW"


def test_a_members_own_reads_are_not_confined_in_passthrough(passthrough):
    """In resign mode a member's GetFindings must filter on its own account (hubgate's role
    would read every account). In passthrough the read is signed with the member's own keys
    and AWS decides what they may read: hubgate forwards it as signed, unfiltered."""
    hg, fake = passthrough, passthrough.fake
    c = pt_client(hg, PT_MEMBER)
    resp = c.get_findings(MaxResults=50)
    assert resp["Findings"], resp
    got = last_answered(fake, "/findings")
    assert got["signature_valid"] is True and got["access_key"] == PT_MEMBER.access_key, got
    assert header(got, "Host") == REAL_HOST


def test_a_forward_carries_exactly_the_callers_headers(passthrough):
    """The caller chose what it signed and what it sent; hubgate adds nothing (not even the
    Accept-Encoding: identity it sets on a re-signed write whose answer it reads, which in
    passthrough would change a header the caller may have signed) and drops only hop-by-hop
    headers, those Connection names included."""
    hg, fake = passthrough, passthrough.fake
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Note": {"Text": "n", "UpdatedBy": "u"}}).encode()
    extra = {"Content-Type": "application/json", "Accept-Encoding": "gzip, br",
             "X-Custom-Signed": "kept", "User-Agent": "adv/1"}
    headers = sign(PT_MEMBER, "PATCH", REAL_HOST, "/findings/batchupdate", body, extra)
    headers["X-Unsigned-Extra"] = "kept too"
    headers["X-Hop"] = "dropped"
    headers["Connection"] = "keep-alive, X-Hop"
    headers["Keep-Alive"] = "timeout=5"
    resp = raw_request(hg.port, "PATCH", "/findings/batchupdate", body, headers)
    assert resp.status == 200, (resp.status, resp.text)
    got = last_answered(fake, "/findings/batchupdate")
    assert got["signature_valid"] is True, got
    arrived = {k.lower(): v for k, v in got["headers"]}
    sent = {k.lower(): v for k, v in headers.items()}
    for hop in ("connection", "keep-alive", "x-hop"):
        sent.pop(hop)
    assert arrived.pop("content-length") == str(len(body))
    assert arrived == sent, (arrived, sent)


def test_a_signature_that_leaves_host_out_is_refused_before_any_lookup(passthrough):
    """SigV4 must sign Host, and AWS refuses a signature that does not. hubgate used to map
    the key, look the finding up on its own quota and decide, then forward a request AWS
    could only refuse."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    class NoHost(SigV4Auth):
        def headers_to_sign(self, request):
            signed = super().headers_to_sign(request)
            del signed["host"]
            return signed

    hg, fake = passthrough, passthrough.fake
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Note": {"Text": "n", "UpdatedBy": "u"}}).encode()
    req = AWSRequest(method="PATCH", url=f"http://{REAL_HOST}/findings/batchupdate", data=body,
                     headers={"Content-Type": "application/json", "Host": REAL_HOST})
    NoHost(Credentials(PT_MEMBER.access_key, PT_MEMBER.secret_key), "securityhub",
           "us-east-1").add_auth(req)
    assert "host" not in req.headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
    resp = raw_request(hg.port, "PATCH", "/findings/batchupdate", body, dict(req.headers.items()))
    assert resp.status == 401, (resp.status, resp.text)
    assert "must include host" in resp.json()["error"]["message"], resp.text
    assert fake.requests() == [], fake.requests()


def test_an_h2_request_goes_up_with_the_authority_it_signed_as_its_host(passthrough):
    """Over HTTP/2 the caller's signed host is its :authority, not a Host header. The forward
    must carry it as Host, or AWS checks the signature over the endpoint's own host name and
    refuses a request hubgate allowed."""
    from test_adversarial_http import h2_request
    hg, fake = passthrough, passthrough.fake
    path = "/findings/batchupdate"
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Note": {"Text": "over h2", "UpdatedBy": "u"}}).encode()
    signed = sign(PT_MEMBER, "PATCH", REAL_HOST, path, body, {"Content-Type": "application/json"})
    headers = [(":method", "PATCH"), (":path", path), (":scheme", "http"),
               (":authority", REAL_HOST)] + [(k.lower(), v) for k, v in signed.items()
                                             if k.lower() != "host"]
    reply = h2_request(hg, headers, [body])
    assert reply.status == 200, (reply.status, reply.body)
    got = last_answered(fake, path)
    assert header(got, "Host") == REAL_HOST, got["headers"]
    assert got["signature_valid"] is True and got["access_key"] == PT_MEMBER.access_key, got
    assert fake.findings()["f-own-high"]["Note"]["Text"] == "over h2"
