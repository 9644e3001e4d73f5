"""Adversarial review (what Security Hub answers: what hubgate reads, relays and believes,
third round).

The upstream is the scripted Security Hub of test_adversarial_upstream.py (`Quirky`); its
handlers answer as a test needs. The first two rounds (test_adversarial_upstream.py,
test_adversarial_fwd2.py) covered the lookup's pages and the forward's ProcessedFindings;
this round reads the error answers as botocore does (research/securityhub-api.md §botocore).

- HOLE (fixed): a lookup refused with a throttle named in the body's `Code` (or `code` beside
  a `__type`), without x-amzn-ErrorType, was read by `__type` first and without `Code`: a
  fault, 502 UPSTREAM_UNAVAILABLE at once, with no retry within the deadline and the pace not
  slowed. botocore's rest-json parser lets a top-level `code`/`Code` override `__type`, and
  backs off on it; hubgate now reads the body's error type the same way.
- HOLE (fixed): a refusal from Security Hub that is not a throttle or a refusal of hubgate's
  credentials (its own signature refused on a forward; AccessDenied on a lookup) lost AWS's
  x-amzn-RequestId: the record of the forward had `upstream_request_id: null` beside its
  `upstream_status: 403`, and a lookup's refusal named no request id anywhere, so an SRE had
  nothing to give AWS support. The forward's record keeps it, and the message (envelope,
  record, log) names it.
- HOLE (fixed): an x-amzn-ErrorType spelled `<namespace>#Name` (a form Smithy's restJson1
  asks clients to accept, and botocore cuts) was cut only at `:`, so its name was never
  recognised. A forward answered 403 `...#InvalidSignatureException` was relayed to the
  member whole: AWS's message repeats the canonical request it expected, hubgate's session
  token in it. `...#ExpiredTokenException` reached the member as its own token's expiry (not
  retried by SDKs, and hubgate fetched no new credentials), `...#ThrottlingException` on a
  400 as an error nobody backed off on (not 429, the pace not slowed).
- HOLE (fixed): a lookup refused for hubgate's credentials named by its body alone
  (`{"__type": "...#ExpiredTokenException"}`, no x-amzn-ErrorType; botocore reads it so) was
  a 502 UPSTREAM_UNAVAILABLE, and no new credentials were fetched: every lookup failed so
  until the old credentials neared the expiry their source reported. Now read as a throttle
  in a lookup's body is: 503 UPSTREAM_CREDENTIALS_REFUSED, new credentials fetched.
- HOLE (fixed): the same refusals of a forward named by the body alone (`__type`, no
  x-amzn-ErrorType; botocore reads them so) were relayed unread: the signature refusal with
  AWS's echo of hubgate's session token, the expired token as the member's own, a throttle
  as a 400 that slowed no pace and was not recorded as throttled. A resigned forward's 4xx
  without that header is now read (it is small) and judged as its body names it.
- Held: a forward throttled as AWS spells it (400 `ThrottlingException:<namespace>`, 503
  `SlowDown`) is 429 THROTTLED (ThrottlingException, Retry-After) with the record's
  upstream status and request id, marked throttled; nothing written through.
- Held: a 3xx answer to a forward is relayed as it came (never followed), nothing applied.
- Held (probed, not kept as tests): a GetFindings answer with its `Findings` member twice
  (a CRITICAL list, then a LOW one) is unreadable (502), never read either way; a lookup
  refused 403 AccessDeniedException is 502 UPSTREAM_UNAVAILABLE, nothing forwarded; a 2xx
  other than 200 on a lookup is read as a success, as botocore reads it.
- Noticed, left alone: a lookup answered with one of botocore's transient codes on a 4xx
  (`RequestTimeoutException`) is a 502 at once, not retried by hubgate (the caller's SDK
  retries the 502); a lookup's throttle keeps no AWS request id (its record has no upstream
  call of its own); Set-Cookie and Location of an answer are relayed (SDKs ignore them).
"""

from __future__ import annotations

import json

import pytest

from helpers import assert_envelope
from test_adversarial_upstream import NOTE, hubgate_on, quirky, upd  # noqa: F401 (fixture)


@pytest.mark.parametrize("body", [
    {"Code": "Throttling", "Message": "Rate exceeded"},
    {"__type": "com.amazonaws.securityhub#InternalException", "code": "ThrottlingException",
     "message": "Rate exceeded"},
], ids=["Code", "code-over-__type"])
def test_a_lookup_throttle_named_by_the_bodys_code_is_retried_as_a_throttle(
        quirky, make_hubgate, body):
    """The first GetFindings is throttled, named only by the body (no x-amzn-ErrorType),
    as botocore reads a rest-json error: `code`/`Code` before `__type`. hubgate must back off
    and ask again (it is a throttle, not a fault): the member's note goes through."""
    hg = hubgate_on(make_hubgate, quirky)
    answers = [(400, {}, json.dumps(body).encode())]
    quirky.on_get = lambda req, default: answers.pop() if answers else None
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert resp.status == 200, resp.text
    assert quirky.count("/findings") == 2


def test_a_refusal_keeps_aws_request_id(quirky, make_hubgate):
    """A forward whose signature AWS refused (403 InvalidSignatureException) and a lookup AWS
    refused (403 AccessDeniedException): both answered with x-amzn-RequestId. The forward's
    record keeps it in upstream_request_id; the lookup's refusal names it in its message."""
    hg = hubgate_on(make_hubgate, quirky)
    quirky.on_update = lambda req: (403, {"x-amzn-ErrorType": "InvalidSignatureException",
                                          "x-amzn-RequestId": "aws-sig-1"},
                                    b'{"message": "signature mismatch"}')
    resp = hg.buf(upd("f-admin", Note=NOTE), who="admin")
    body = assert_envelope(resp, 502, "UPSTREAM_UNAVAILABLE", "InternalException")
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["upstream_status"] == 403 and rec["upstream_request_id"] == "aws-sig-1", rec
    assert "aws-sig-1" in body["error"]["message"], body

    quirky.on_get = lambda req, default: (403, {"x-amzn-ErrorType": "AccessDeniedException",
                                                "x-amzn-RequestId": "aws-get-1"},
                                          b'{"message": "not authorized"}')
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    body = assert_envelope(resp, 502, "UPSTREAM_UNAVAILABLE", "InternalException")
    assert "aws-get-1" in body["error"]["message"], body
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert "aws-get-1" in rec["error"]["message"], rec
    assert rec["forwarded"] is False, rec


TOKEN = "FwoGZXIvYXdzEHubgateSessionToken"
ECHO = ("The request signature we calculated does not match the signature you provided. "
        "The Canonical String for this request should have been 'PATCH\n/findings/batchupdate"
        "\n\nhost:securityhub\nx-amz-security-token:" + TOKEN + "\n'")


@pytest.mark.parametrize("name,status,code,error_type", [
    ("InvalidSignatureException", 502, "UPSTREAM_UNAVAILABLE", "InternalException"),
    ("ExpiredTokenException", 503, "UPSTREAM_CREDENTIALS_REFUSED",
     "ServiceUnavailableException"),
    ("ThrottlingException", 429, "THROTTLED", "ThrottlingException"),
])
def test_an_error_type_with_a_namespace_is_read_by_its_name(quirky, make_hubgate, name,
                                                             status, code, error_type):
    """A forward answered 403 (400 for the throttle) with `x-amzn-ErrorType:
    com.amazon.coral.service#<name>`: read as botocore reads it, it is hubgate's signature or
    credentials refused, or a throttle; never AWS's answer relayed to the member."""
    hg = hubgate_on(make_hubgate, quirky)
    quirky.on_update = lambda req: (
        400 if name == "ThrottlingException" else 403,
        {"x-amzn-ErrorType": f"com.amazon.coral.service#{name}", "x-amzn-RequestId": "aws-1"},
        json.dumps({"message": ECHO}).encode())
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert TOKEN not in resp.text
    assert_envelope(resp, status, code, error_type)
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["upstream_request_id"] == "aws-1", rec
    assert TOKEN not in json.dumps(rec)


def test_a_lookup_refusing_the_credentials_by_its_body_alone_is_a_credentials_refusal(
        quirky, make_hubgate):
    """GetFindings answered 403 with the error type in the body only: hubgate's credentials
    were refused, nothing was applied, a retry with new ones may pass (503, not 502)."""
    hg = hubgate_on(make_hubgate, quirky)
    quirky.on_get = lambda req, default: (403, {}, json.dumps({
        "__type": "com.amazonaws.securityhub#ExpiredTokenException",
        "message": "The security token included in the request is expired"}).encode())
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert_envelope(resp, 503, "UPSTREAM_CREDENTIALS_REFUSED", "ServiceUnavailableException")


def test_held_a_forwards_throttle_in_any_spelling_is_429_and_a_3xx_is_relayed(
        quirky, make_hubgate):
    """Throttles as AWS's front ends spell them are 429 THROTTLED with AWS's request id in
    the record; a redirect is relayed, never followed."""
    hg = hubgate_on(make_hubgate, quirky)
    for status, error_type in [(400, "ThrottlingException:http://internal.amazon.com/coral/"),
                               (503, "SlowDown")]:
        quirky.on_update = lambda req: (status, {"x-amzn-ErrorType": error_type,
                                                 "x-amzn-RequestId": "aws-thr"},
                                        b'{"message": "Rate exceeded"}')
        resp = hg.buf(upd("f-admin", Severity={"Label": "CRITICAL"}), who="admin")
        assert_envelope(resp, 429, "THROTTLED", "ThrottlingException")
        rec = hg.audit_for(resp.headers["x-amzn-requestid"])
        assert rec["throttled"] is True and rec["upstream_request_id"] == "aws-thr", rec
        assert rec["upstream_status"] == status, rec
    quirky.on_update = lambda req: (302, {"Location": "http://127.0.0.1:9/"}, b"")
    resp = hg.buf(upd("f-admin", Note=NOTE), who="admin")
    assert resp.status == 302 and resp.headers["location"] == "http://127.0.0.1:9/"
    assert quirky.count("/findings/batchupdate") == 3
    assert quirky.severity("f-admin") == "LOW"


@pytest.mark.parametrize("name,status,code,error_type", [
    ("InvalidSignatureException", 502, "UPSTREAM_UNAVAILABLE", "InternalException"),
    ("ExpiredTokenException", 503, "UPSTREAM_CREDENTIALS_REFUSED",
     "ServiceUnavailableException"),
    ("ThrottlingException", 429, "THROTTLED", "ThrottlingException"),
])
def test_a_forwards_refusal_named_by_its_body_alone_is_not_relayed(quirky, make_hubgate, name,
                                                                    status, code, error_type):
    """A forward answered 403 (400 for the throttle) whose error type is only in its body:
    hubgate's signature or credentials refused, or a throttle (429, recorded as one), never
    AWS's answer (and its echo of hubgate's token) relayed."""
    hg = hubgate_on(make_hubgate, quirky)
    quirky.on_update = lambda req: (
        400 if name == "ThrottlingException" else 403, {"x-amzn-RequestId": "aws-2"},
        json.dumps({"__type": f"com.amazon.coral.service#{name}", "message": ECHO}).encode())
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert TOKEN not in resp.text
    assert_envelope(resp, status, code, error_type)
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["upstream_request_id"] == "aws-2", rec
    assert rec["throttled"] is (name == "ThrottlingException"), rec
    # Any other untyped 4xx is relayed as it came, whole.
    quirky.on_update = lambda req: (400, {}, b'{"message": "bad input"}')
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert resp.status == 400 and resp.json() == {"message": "bad input"}, resp.text
