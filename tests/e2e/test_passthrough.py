"""upstream.auth = "passthrough": the caller signs for the real Security Hub host with its own
keys (which hubgate never sees); hubgate maps the claimed key to a caller, decides, and forwards
the request byte for byte. Its own GetFindings lookups are signed with its own key."""

from __future__ import annotations

import base64
import re

import pytest
from botocore.exceptions import ClientError

from helpers import (
    ADMIN_ACCOUNT,
    MEMBER_ACCOUNT,
    REGION,
    UPSTREAM_KEY,
    Creds,
    header,
    ident,
)

REAL_HOST = f"securityhub.{REGION}.amazonaws.com"
# the callers' own keys: the fake (standing in for AWS) knows them, hubgate does not
PT_ADMIN = Creds("AKIAPASSADMIN0000001", "pass-admin-secret-known-to-aws-only")
PT_MEMBER = Creds("AKIAPASSMEMBER000001", "pass-member-secret-known-to-aws-only")
CALLERS = f"""\
[[caller]]
id = "pt-admin"
account_id = "{ADMIN_ACCOUNT}"
role = "administrator"
access_key_id = "{PT_ADMIN.access_key}"

[[caller]]
id = "pt-member"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
access_key_id = "{PT_MEMBER.access_key}"
"""
SUPPRESS = {"Workflow": {"Status": "SUPPRESSED"},
            "Note": {"Text": "accepted risk, SEC-123", "UpdatedBy": "e2e"}}


@pytest.fixture
def passthrough(make_fake, make_hubgate):
    fake = make_fake(extra_credentials=[PT_ADMIN, PT_MEMBER])  # seeded with SEED
    return make_hubgate({"upstream": {"auth": "passthrough"}}, fake=fake, callers_toml=CALLERS)


def pt_client(hg, creds: Creds):
    """A boto3 client that connects to hubgate but signs for the real Security Hub host, and
    records what it sent: client.sent = [(headers dict, body bytes)]."""
    client = hg.client(creds=creds)

    def set_host(request, **_):
        request.headers["Host"] = REAL_HOST

    def capture(request, **_):
        body = request.body
        if hasattr(body, "read"):
            pos = body.tell()
            data = body.read()
            body.seek(pos)
            body = data
        body = body if isinstance(body, bytes) else (body or "").encode()
        headers = {k.lower(): v.decode() if isinstance(v, bytes) else v
                   for k, v in request.headers.items()}
        client.sent.append((headers, body))

    client.sent = []
    client.meta.events.register("before-sign.securityhub.*", set_host)
    client.meta.events.register("before-send.securityhub.*", capture)
    return client


def assert_lookups_signed_by_hubgate(fake, expect_some: bool = True):
    lookups = fake.requests("POST", "/findings")
    assert lookups or not expect_some, "hubgate looked nothing up"
    for r in lookups:
        auth = header(r, "Authorization")
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={UPSTREAM_KEY}/"), auth
        assert r["signature_valid"] is True and r["access_key"] == UPSTREAM_KEY, r
        assert header(r, "Host") == f"127.0.0.1:{fake.port}", r["headers"]


def assert_forwarded_exactly(fake, client, creds: Creds):
    calls = fake.buf_calls()
    assert len(calls) == 1, calls
    got = calls[0]
    sent_headers, sent_body = client.sent[-1]
    assert base64.b64decode(got["body_b64"]) == sent_body, "body bytes changed on the way"
    for name in ("Authorization", "X-Amz-Date", "Host", "Content-Type"):
        assert header(got, name) == sent_headers[name.lower()], name
    assert header(got, "Host") == REAL_HOST
    assert re.match(rf"AWS4-HMAC-SHA256 Credential={creds.access_key}/",
                    header(got, "Authorization"))
    # the fake checked the caller's own signature, computed for the real host name
    assert got["signature_valid"] is True, got.get("signature_error")
    assert got["access_key"] == creds.access_key
    return got


def test_allowed_admin_request_is_forwarded_byte_for_byte(passthrough):
    hg, fake = passthrough, passthrough.fake
    c = pt_client(hg, PT_ADMIN)
    resp = c.batch_update_findings(FindingIdentifiers=[ident("f-other")], **SUPPRESS)
    assert [f["Id"] for f in resp["ProcessedFindings"]] == ["f-other"]
    assert fake.findings()["f-other"]["Workflow"]["Status"] == "SUPPRESSED"
    assert_forwarded_exactly(fake, c, PT_ADMIN)
    # an administrator's request needs no finding state (needs_state): no lookup at all
    assert_lookups_signed_by_hubgate(fake, expect_some=False)
    assert fake.requests("POST", "/findings") == []
    rec = hg.audit_for(resp["ResponseMetadata"]["HTTPHeaders"]["x-hubgate-decision-id"])
    assert rec["principal"]["id"] == "pt-admin" and rec["forwarded"] is True, rec


def test_allowed_member_request_is_forwarded_byte_for_byte(passthrough):
    hg, fake = passthrough, passthrough.fake
    c = pt_client(hg, PT_MEMBER)
    resp = c.batch_update_findings(FindingIdentifiers=[ident("f-own-high")],
                                   Note={"Text": "triaged ✓ (ünïcode)", "UpdatedBy": "pt"})
    assert [f["Id"] for f in resp["ProcessedFindings"]] == ["f-own-high"]
    assert fake.findings()["f-own-high"]["Note"]["Text"] == "triaged ✓ (ünïcode)"
    assert_forwarded_exactly(fake, c, PT_MEMBER)
    assert_lookups_signed_by_hubgate(fake)


def test_denied_request_is_not_forwarded(passthrough):
    hg, fake = passthrough, passthrough.fake
    c = pt_client(hg, PT_MEMBER)
    with pytest.raises(ClientError) as e:
        c.batch_update_findings(FindingIdentifiers=[ident("f-own-high")], **SUPPRESS)
    err = e.value.response
    assert err["Error"]["Code"] == "AccessDeniedException", err
    assert err["Error"]["Message"].startswith("POLICY_DENIED: "), err
    assert "member accounts may not suppress findings" in err["Error"]["Message"], err
    assert fake.buf_calls() == []
    assert fake.findings()["f-own-high"]["Workflow"]["Status"] == "NEW"
    # whatever hubgate looked up (the rule may decide before any lookup) went with its own key
    assert_lookups_signed_by_hubgate(fake, expect_some=False)
    assert all(PT_MEMBER.access_key not in (header(r, "Authorization") or "")
               for r in fake.requests())
    rec = hg.audit_for(err["ResponseMetadata"]["RequestId"])
    assert rec["principal"]["id"] == "pt-member" and rec["forwarded"] is False, rec

    # a denial that needs the finding's account: looked up with hubgate's key, not the caller's
    with pytest.raises(ClientError) as e:
        c.batch_update_findings(FindingIdentifiers=[ident("f-other")],
                                Note={"Text": "mine?", "UpdatedBy": "pt"})
    err = e.value.response
    assert err["Error"]["Code"] == "AccessDeniedException", err
    assert "member accounts may only update findings of their own account" \
        in err["Error"]["Message"], err
    assert fake.buf_calls() == []
    assert_lookups_signed_by_hubgate(fake)
    assert all(PT_MEMBER.access_key not in (header(r, "Authorization") or "")
               for r in fake.requests())


def test_unknown_claimed_key_is_401_without_upstream_call(passthrough):
    hg, fake = passthrough, passthrough.fake
    c = pt_client(hg, Creds("AKIAUNKNOWN000000001", "whatever"))
    with pytest.raises(ClientError) as e:
        c.batch_update_findings(FindingIdentifiers=[ident("f-other")], **SUPPRESS)
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 401, err
    assert err["Error"]["Code"] == "UnrecognizedClientException", err
    assert err["Error"]["Message"].startswith("UNAUTHENTICATED: "), err
    assert fake.requests() == []


def test_forged_signature_for_a_known_key_is_refused_by_upstream(passthrough):
    """hubgate does not check passthrough signatures; the upstream does, on the exact bytes."""
    hg, fake = passthrough, passthrough.fake
    c = pt_client(hg, Creds(PT_ADMIN.access_key, "not-the-real-secret"))
    with pytest.raises(ClientError) as e:
        c.batch_update_findings(FindingIdentifiers=[ident("f-other")], **SUPPRESS)
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403, err
    assert err["Error"]["Code"] == "InvalidSignatureException", err
    calls = fake.buf_calls()
    assert len(calls) == 1 and calls[0]["signature_valid"] is False, calls
    assert fake.findings()["f-other"]["Workflow"]["Status"] == "NEW"


def test_a_refusal_of_the_callers_own_credentials_goes_back_unchanged(make_fake, make_hubgate):
    """A refusal of the credentials a call was signed with is turned into hubgate's 503
    UPSTREAM_CREDENTIALS_REFUSED only when hubgate signed it (resign, lookups). In
    passthrough the caller signed the forward: AWS's refusal of the caller's key (here one AWS
    no longer knows) is the caller's to see, as it came."""
    fake = make_fake(extra_credentials=[PT_MEMBER])  # PT_ADMIN's key deleted at AWS
    hg = make_hubgate({"upstream": {"auth": "passthrough"}}, fake=fake, callers_toml=CALLERS)
    c = pt_client(hg, PT_ADMIN)
    with pytest.raises(ClientError) as e:
        c.batch_update_findings(FindingIdentifiers=[ident("f-other")], **SUPPRESS)
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403, err
    assert err["Error"]["Code"] == "UnrecognizedClientException", err
    assert err["Error"]["Message"] == "The security token included in the request is invalid."
    assert fake.findings()["f-other"]["Workflow"]["Status"] == "NEW"


@pytest.mark.parametrize("auth", ["passthrough", "resign"])
def test_forwards_pace_on_the_account_aws_charges(make_fake, make_hubgate, auth):
    """In passthrough AWS charges each forward to the caller's own account, so each account's
    writes pace on a bucket of their own: an administrator using up its BatchUpdateFindings
    burst leaves a member of another account its whole burst. In resign mode every forward
    spends hubgate's one account, and the member's write waits for the same bucket (429)."""
    # a burst of 3 less hubgate's call of headroom: two writes at once per bucket
    overrides = {"quota": {"max_wait_ms": 300},
                 "quota.limits": {"BatchUpdateFindings": {"rate": 0.2, "burst": 3}}}
    if auth == "passthrough":
        fake = make_fake(extra_credentials=[PT_ADMIN, PT_MEMBER])
        hg = make_hubgate({**overrides, "upstream": {"auth": "passthrough"}}, fake=fake,
                          callers_toml=CALLERS)
        admin, member = pt_client(hg, PT_ADMIN), pt_client(hg, PT_MEMBER)
    else:
        fake = make_fake()
        hg = make_hubgate(overrides, fake=fake)
        admin, member = hg.client("admin"), hg.client("member")
    note = {"Note": {"Text": "paced", "UpdatedBy": "e2e"}}

    def throttled(client, fid):
        with pytest.raises(ClientError) as e:
            client.batch_update_findings(FindingIdentifiers=[ident(fid)], **note)
        err = e.value.response
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 429, err
        assert err["Error"]["Code"] == "ThrottlingException", err
        return err["Error"]["Message"]

    for _ in range(2):
        admin.batch_update_findings(FindingIdentifiers=[ident("f-other")], **note)
    message = throttled(admin, "f-other")
    if auth == "passthrough":
        assert f"account {ADMIN_ACCOUNT}'s BatchUpdateFindings quota" in message, message
        for fid in ("f-own-high", "f-own-medium"):
            member.batch_update_findings(FindingIdentifiers=[ident(fid)], **note)
        message = throttled(member, "f-own-high")
        assert f"account {MEMBER_ACCOUNT}'s BatchUpdateFindings quota" in message, message
        assert len(fake.buf_calls()) == 4
    else:
        assert "hubgate's BatchUpdateFindings quota" in message, message
        throttled(member, "f-own-high")
        assert len(fake.buf_calls()) == 2


@pytest.mark.parametrize("name,value,reads_as", [
    ("X_Amz_Target", "SecurityHubAPIService.BatchUpdateFindings", "x-amz-target"),
    ("Transfer_Encoding", "chunked", "transfer-encoding"),
    ("X_Amz_Security_Token", "a-token-hubgate-never-checked", "x-amz-security-token"),
])
def test_a_header_named_with_underscores_for_one_hubgate_refuses_is_not_passed_through(
        passthrough, name, value, reads_as):
    """Passthrough forwards the caller's headers. A name spelled with `_` for `-` is the header
    hubgate refuses (or checks) to a front end that folds one into the other, as CGI-style
    gateways do: until review 53 it went up unchanged. Refused with the header named; the same
    request without it is forwarded."""
    client = pt_client(passthrough, PT_ADMIN)
    note = {"FindingIdentifiers": [ident("f-admin")],
            "Note": {"Text": "triaged", "UpdatedBy": "e2e"}}
    client.batch_update_findings(**note)
    assert len(passthrough.fake.buf_calls()) == 1

    def add(request, **_):
        request.headers[name] = value

    client.meta.events.register("before-sign.securityhub.*", add)
    with pytest.raises(ClientError) as err:
        client.batch_update_findings(**note)
    error = err.value.response["Error"]
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400, err.value.response
    assert error["Code"] == "InvalidInputException", error
    assert f"the {name.lower()} header is not accepted" in error["Message"], error
    assert f"it is {reads_as}" in error["Message"], error
    assert len(passthrough.fake.buf_calls()) == 1, "the request with the look-alike was forwarded"
