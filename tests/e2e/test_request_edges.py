"""Request edges where hubgate and Security Hub could read one request two ways: a repeated
Authorization component in passthrough, headers that could name another operation or method,
content and transfer codings, trailers, a repeated Content-Length, Content-Type parameters, and a
BatchUpdateFindingsV2 that names no finding.

Most requests go out on raw sockets (test_socket_bounds' helpers), since a client library would
refuse or rewrite them. Every refusal is the envelope, a non-retryable 4xx, with an audit record,
and nothing reaches the fake upstream."""

from __future__ import annotations

import json
import time

import pytest

from helpers import (
    ADMIN,
    MEMBER,
    Creds,
    assert_envelope,
    ident,
    sign,
)
from test_passthrough import CALLERS as PT_CALLERS
from test_passthrough import PT_ADMIN, PT_MEMBER, REAL_HOST
from test_socket_bounds import chunked, exchange, head_bytes

BUF = "/findings/batchupdate"
V2 = "/findingsv2/batchupdatev2"
NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}


@pytest.fixture
def passthrough(make_fake, make_hubgate):
    fake = make_fake(extra_credentials=[PT_ADMIN, PT_MEMBER])
    return make_hubgate({"upstream": {"auth": "passthrough"}}, fake=fake,
                        callers_toml=PT_CALLERS)


def signed(hg, body: bytes, method: str = "PATCH", path: str = BUF, creds: Creds = ADMIN,
           host: str | None = None, extra: dict | None = None,
           content_type: str = "application/json") -> list[tuple[str, str]]:
    """The headers of a request SigV4-signed for `host` (hubgate's by default), `extra`
    included in the signature, as a caller that wanted them to reach AWS would sign them."""
    headers = {"Content-Type": content_type, **(extra or {})}
    return list(sign(creds, method, host or hg.host, path, body, headers).items())


def send(hg, method: str, path: str, headers: list[tuple[str, str]], body: bytes,
         framing: list[tuple[str, str]] | None = None, raw_body: bytes | None = None):
    """One request on its own connection; Content-Length unless `framing` says otherwise."""
    framing = framing if framing is not None else [("Content-Length", str(len(body)))]
    data = head_bytes(method, path, headers + framing) + (body if raw_body is None else raw_body)
    reply, s = exchange(hg.port, data)
    s.close()
    return reply


def refused(hg, reply, status: int, code: str, error_type: str, words: str) -> dict:
    """The envelope with `words` in its message, an audit record of the refusal, and no
    upstream call at all."""
    body = assert_envelope(reply, status, code, error_type)
    assert words in body["error"]["message"], body
    rec = hg.audit_for(reply.headers["x-amzn-requestid"])
    assert rec["status"] == status and rec["forwarded"] is False, rec
    assert rec["error"]["code"] == code, rec
    time.sleep(0.1)
    assert hg.fake.requests() == [], hg.fake.requests()
    return body


def all_values(record: dict, name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


# ---------------------------------------------------------------------------
# 1. passthrough: one Authorization header, one reading


def test_passthrough_repeated_credential_is_401_and_never_forwarded(passthrough):
    """A member signs with its own key and appends an administrator's Credential: hubgate
    used to map the last one while AWS may read the first. Now the header is refused."""
    hg = passthrough
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Workflow": {"Status": "SUPPRESSED"}}).encode()
    headers = dict(signed(hg, body, creds=PT_MEMBER, host=REAL_HOST))
    auth = headers["Authorization"]
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/", 1)[1]
    for forged in [f"{auth}, Credential={PT_ADMIN.access_key}/{scope}",
                   auth.replace("Credential=", f"Credential={PT_ADMIN.access_key}/{scope}, "
                                "Credential=", 1),
                   f"{auth}, SignedHeaders=host",
                   f"{auth}, Signature={'0' * 64}"]:
        h = {**headers, "Authorization": forged}
        reply = send(hg, "PATCH", BUF, list(h.items()), body)
        err = refused(hg, reply, 401, "UNAUTHENTICATED", "UnrecognizedClientException",
                      "appears more than once")
        assert "component" in err["error"]["message"], err
        rec = hg.audit_for(reply.headers["x-amzn-requestid"])
        assert rec["principal"] is None, rec


def test_passthrough_single_credential_is_still_forwarded(passthrough):
    """The control: the same member request with one Credential reaches the upstream, signed
    by the member (a Note on its own finding, which the policy allows)."""
    hg = passthrough
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Note": {"Text": "t", "UpdatedBy": "u"}}).encode()
    reply = send(hg, "PATCH", BUF, signed(hg, body, creds=PT_MEMBER, host=REAL_HOST), body)
    assert reply.status == 200, reply.text
    [call] = hg.fake.buf_calls()
    assert call["access_key"] == PT_MEMBER.access_key and call["signature_valid"] is True


# ---------------------------------------------------------------------------
# 2. headers that could name another operation or method


OVERRIDES = ["X-Amz-Target", "X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method",
             "X-Original-URL", "X-Rewrite-URL"]
BUF_VALUE = {"X-Amz-Target": "SecurityHubAPIService.BatchUpdateFindings",
             "X-Original-URL": "/findings/batchupdate", "X-Rewrite-URL": "/findings/batchupdate"}


@pytest.mark.parametrize("name", OVERRIDES)
@pytest.mark.parametrize("route", ["policy", "forward"])
def test_operation_and_method_overrides_are_refused_on_every_route(hubgate, name, route):
    """GetFindings (routed forward, its body never parsed) carrying a suppressing
    BatchUpdateFindings body and a header naming that operation was forwarded and re-signed
    with hubgate's role. Refused now, on policy routes too, even when the caller signed it."""
    value = BUF_VALUE.get(name, "PATCH")
    body = json.dumps({"FindingIdentifiers": [ident("f-other")],
                       "Workflow": {"Status": "SUPPRESSED"}}).encode()
    method, path = ("PATCH", BUF) if route == "policy" else ("POST", "/findings")
    reply = send(hubgate, method, path,
                 signed(hubgate, body, method, path, creds=MEMBER, extra={name: value}), body)
    refused(hubgate, reply, 400, "VALIDATION_ERROR", "InvalidInputException",
            f"the {name.lower()} header is not accepted")


@pytest.mark.parametrize("mode", ["resign", "passthrough"])
def test_an_older_aws_signature_header_is_refused(hubgate, passthrough, mode):
    """X-Amzn-Authorization (AWS's signature version 3) beside a SigV4 Authorization header:
    in passthrough hubgate names the caller by the Authorization header's key, and AWS checks
    a signature. Had AWS read this header instead, a member signing here with its own key
    and claiming an administrator's key id there was judged as the administrator."""
    hg, creds, host = ((hubgate, MEMBER, None) if mode == "resign"
                       else (passthrough, PT_MEMBER, REAL_HOST))
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Note": {"Text": "n", "UpdatedBy": "u"}}).encode()
    extra = {"X-Amzn-Authorization":
             "AWS3-HTTPS AWSAccessKeyId=AKIDMEMBER,Algorithm=HmacSHA256,Signature=x"}
    kw = {"host": host} if host else {}
    reply = send(hg, "PATCH", BUF, signed(hg, body, "PATCH", BUF, creds=creds, extra=extra, **kw),
                 body)
    refused(hg, reply, 400, "VALIDATION_ERROR", "InvalidInputException",
            "the x-amzn-authorization header is not accepted")


def test_passthrough_get_findings_with_x_amz_target_is_refused(passthrough):
    hg = passthrough
    body = json.dumps({"FindingIdentifiers": [ident("f-other")],
                       "Workflow": {"Status": "SUPPRESSED"}}).encode()
    reply = send(hg, "POST", "/findings",
                 signed(hg, body, "POST", "/findings", creds=PT_MEMBER, host=REAL_HOST,
                        extra=BUF_VALUE), body)
    refused(hg, reply, 400, "VALIDATION_ERROR", "InvalidInputException",
            "the x-amz-target header is not accepted")


@pytest.mark.parametrize("coding", ["gzip", "aws-chunked", "identity, gzip", "br"])
def test_content_codings_other_than_identity_are_refused(hubgate, coding):
    body = json.dumps(NOTE).encode()
    reply = send(hubgate, "PATCH", BUF,
                 signed(hubgate, body, extra={"Content-Encoding": coding}), body)
    refused(hubgate, reply, 400, "VALIDATION_ERROR", "InvalidInputException",
            f"Content-Encoding {json.dumps(coding)} is not accepted")


def test_identity_content_coding_is_served(hubgate):
    body = json.dumps(NOTE).encode()
    reply = send(hubgate, "PATCH", BUF,
                 signed(hubgate, body, extra={"Content-Encoding": "identity"}), body)
    assert reply.status == 200, reply.text
    assert len(hubgate.fake.buf_calls()) == 1


def test_a_resigned_forward_carries_only_allow_listed_headers(hubgate):
    """Re-signed with hubgate's role, a forward carries the SDK's headers (content type, user
    agent, trace id) and none of the caller's others; a header Connection names is hop-by-hop."""
    body = json.dumps(NOTE).encode()
    extra = {"User-Agent": "edge-test/1", "X-Amzn-Trace-Id": "Root=1-edge",
             "X-Custom-Thing": "must-not-reach-aws", "Amz-Sdk-Request": "attempt=1"}
    reply = send(hubgate, "PATCH", BUF, signed(hubgate, body, extra=extra), body)
    assert reply.status == 200, reply.text
    [call] = hubgate.fake.buf_calls()
    assert all_values(call, "User-Agent") == ["edge-test/1"], call["headers"]
    assert all_values(call, "X-Amzn-Trace-Id") == ["Root=1-edge"], call["headers"]
    assert all_values(call, "Amz-Sdk-Request") == ["attempt=1"], call["headers"]
    assert all_values(call, "X-Custom-Thing") == [], call["headers"]
    assert call["signature_valid"] is True, call.get("signature_error")

    reply = send(hubgate, "PATCH", BUF, signed(hubgate, body, extra=extra)
                 + [("Connection", "keep-alive, X-Amzn-Trace-Id")], body)
    assert reply.status == 200, reply.text
    call = hubgate.fake.buf_calls()[-1]
    assert all_values(call, "X-Amzn-Trace-Id") == [], call["headers"]
    assert all_values(call, "User-Agent") == ["edge-test/1"], call["headers"]


def test_passthrough_drops_the_headers_connection_names(passthrough):
    hg = passthrough
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Note": {"Text": "t", "UpdatedBy": "u"}}).encode()
    headers = signed(hg, body, creds=PT_MEMBER, host=REAL_HOST)
    headers += [("X-Hop", "one hop only"), ("X-End", "end to end"),
                ("Connection", "keep-alive, X-Hop")]
    reply = send(hg, "PATCH", BUF, headers, body)
    assert reply.status == 200, reply.text
    [call] = hg.fake.buf_calls()
    assert all_values(call, "X-Hop") == [] and all_values(call, "Connection") == []
    assert all_values(call, "X-End") == ["end to end"]
    assert call["signature_valid"] is True, call.get("signature_error")


@pytest.mark.parametrize("named", ["Content-Type", "Authorization", "X-Amz-Date"])
def test_connection_naming_a_header_hubgate_reads_is_refused(hubgate, named):
    body = json.dumps(NOTE).encode()
    reply = send(hubgate, "PATCH", BUF,
                 signed(hubgate, body) + [("Connection", f"keep-alive, {named}")], body)
    refused(hubgate, reply, 400, "VALIDATION_ERROR", "InvalidInputException",
            f"the Connection header names {json.dumps(named)}")


@pytest.mark.parametrize("content_type", ["application/x-amz-json-1.1",
                                          "application/x-amz-json-1.0"])
def test_aws_json_content_types_are_415_on_policy_routes(hubgate, content_type):
    """Security Hub is restJson1 (the SDKs send application/json); the awsJson types belong
    with X-Amz-Target."""
    body = json.dumps(NOTE).encode()
    reply = send(hubgate, "PATCH", BUF, signed(hubgate, body, content_type=content_type), body)
    refused(hubgate, reply, 415, "UNSUPPORTED_MEDIA_TYPE", "InvalidInputException",
            f"Content-Type {json.dumps(content_type)} is not supported")


# ---------------------------------------------------------------------------
# 3. transfer codings and trailers


@pytest.mark.parametrize("te", ["gzip, chunked", "identity, chunked", "chunked, chunked"])
def test_transfer_codings_other_than_chunked_are_refused(hubgate, te):
    body = json.dumps(NOTE).encode()
    reply = send(hubgate, "PATCH", BUF, signed(hubgate, body), body,
                 framing=[("Transfer-Encoding", te)], raw_body=chunked(body))
    refused(hubgate, reply, 400, "VALIDATION_ERROR", "InvalidInputException",
            f"Transfer-Encoding {json.dumps(te)} is not accepted")


def test_chunked_in_any_case_is_served(hubgate):
    body = json.dumps(NOTE).encode()
    reply = send(hubgate, "PATCH", BUF, signed(hubgate, body), body,
                 framing=[("Transfer-Encoding", "Chunked")], raw_body=chunked(body))
    assert reply.status == 200, reply.text
    assert len(hubgate.fake.buf_calls()) == 1


def test_trailers_are_refused(hubgate):
    """A trailer would be dropped on the way up (the body goes whole, with Content-Length)."""
    body = json.dumps(NOTE).encode()
    with_trailer = chunked(body)[:-2] + b"X-Amz-Target: SecurityHubAPIService.X\r\n\r\n"
    reply = send(hubgate, "PATCH", BUF, signed(hubgate, body), body,
                 framing=[("Transfer-Encoding", "chunked")], raw_body=with_trailer)
    refused(hubgate, reply, 400, "VALIDATION_ERROR", "InvalidInputException",
            "trailer fields")


# ---------------------------------------------------------------------------
# 4. Content-Length twice


def test_an_equal_second_content_length_is_refused(hubgate):
    """hyper answers two different values itself (a bare 400, see test_socket_bounds) and keeps
    only one of two equal ones; hubgate reads the raw head and answers with the envelope."""
    body = json.dumps(NOTE).encode()
    n = str(len(body))
    reply = send(hubgate, "PATCH", BUF, signed(hubgate, body), body,
                 framing=[("Content-Length", n), ("content-length", n)])
    refused(hubgate, reply, 400, "VALIDATION_ERROR", "InvalidInputException",
            "the content-length header appears more than once")


# ---------------------------------------------------------------------------
# 5. Content-Type parameters


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-16",
                                          "application/json; charset=iso-8859-1",
                                          "application/json; charset=utf-8; charset=utf-16"])
def test_a_charset_other_than_utf8_is_415(hubgate, content_type):
    body = json.dumps(NOTE).encode()
    reply = send(hubgate, "PATCH", BUF, signed(hubgate, body, content_type=content_type), body)
    refused(hubgate, reply, 415, "UNSUPPORTED_MEDIA_TYPE", "InvalidInputException",
            "Content-Type parameter")


def test_charset_utf8_is_served(hubgate):
    body = json.dumps(NOTE).encode()
    reply = send(hubgate, "PATCH", BUF,
                 signed(hubgate, body, content_type="application/json; charset=UTF-8"), body)
    assert reply.status == 200, reply.text
    assert len(hubgate.fake.buf_calls()) == 1


# ---------------------------------------------------------------------------
# 6. BatchUpdateFindingsV2 must name its findings


@pytest.mark.parametrize("update", [{"StatusId": 4}, {"Comment": "c"},
                                    {"FindingIdentifiers": [], "StatusId": 4},
                                    {"MetadataUids": [], "StatusId": 4}])
def test_v2_naming_no_finding_is_400(hubgate, update):
    resp = hubgate.send("PATCH", V2, update, who="member")
    body = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert "names no finding" in body["error"]["message"], body
    rec = hubgate.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["status"] == 400 and rec["forwarded"] is False, rec
    time.sleep(0.1)
    assert hubgate.fake.requests("PATCH", V2) == []


def test_v2_naming_a_finding_still_passes_validation(hubgate):
    """The control: MetadataUids alone is judged (the shipped policy decides, not validation)."""
    resp = hubgate.send("PATCH", V2, {"MetadataUids": ["uid-1"], "Comment": "looked"},
                        who="admin")
    assert resp.status != 400, resp.text
