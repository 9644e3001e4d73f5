"""Adversarial review of upstream.auth = "passthrough", second round: the caller's own SigV4
signature goes to AWS, so whatever names the caller to hubgate, the head AWS will read must be
one AWS can accept for the request hubgate judged, and it must be judged before hubgate spends
anything (its own GetFindings quota) on it.

- HOLE (fixed): with identity.mode = "mtls" (README: "works with passthrough") or "static",
  hubgate never read the Authorization header it forwarded. A request signed for another
  region (README, step 4: "refused … sign for us-east-1"), one whose SignedHeaders leaves host
  out, one carrying a presigned URL's credentials in its query string beside the header, and
  one not signed at all were looked up on hubgate's own GetFindings quota, decided, recorded as
  forwarded and sent for AWS to refuse. The SigV4 head checks of sigv4 mode now run in every
  identity mode when the upstream is passthrough (401 UNAUTHENTICATED, nothing looked up or
  forwarded); the certificate still names the caller.
- HOLE (fixed): AWS answers a signature it cannot match (InvalidSignatureException) with a
  message that goes on to repeat the canonical request it expected, signed header values
  included: `x-amz-security-token:<token>`. For hubgate's own GetFindings lookups (signed with
  hubgate's credentials in passthrough too, temporary wherever hubgate runs on a role) that
  message was repeated up to 1,024 characters in the 502 envelope any member reads, in the
  audit record and in the log: hubgate's session token handed to callers. The message is now
  cut where the echo starts.
- Held: a write sent chunked with `Expect: 100-continue` goes up with the exact bytes judged
  (one Content-Length, the caller's signature valid at the fake); the same framing around a
  member's suppression is refused, with nothing forwarded.
- Held (read, not re-tested: test_adversarial_passthrough.py, test_request_edges.py): two
  Credentials, a repeated Authorization or X-Amz-Security-Token, query-string credentials
  beside the header (percent-encoded names too), a region or host AWS would refuse, h2's
  :authority as Host, AWS's 403 and 429 relayed as AWS gave them.
- Held (probed, not kept): an Authorization header folded over two lines (obs-fold) is hyper's
  own 400, nothing forwarded.
- Held (read in the code): passthrough GetFindings forwards pace on hubgate's own bucket
  (hubgate's account may be the caller's); a forward AWS answers 4xx (a forged signature's
  403, the caller's 429) evicts nothing and writes nothing through.
"""

from __future__ import annotations

import base64
import json

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from helpers import (MEMBER_ACCOUNT, SEED, assert_envelope, hubgate_env, ident, raw_request,
                     sign)
from pki import client_context
from test_adversarial_upstream import Quirky
from test_mtls import RUNNER_SAN, pki  # noqa: F401 (fixture)
from test_passthrough import CALLERS as PT_CALLERS
from test_passthrough import PT_ADMIN, PT_MEMBER, REAL_HOST, SUPPRESS, passthrough  # noqa: F401

MTLS_CALLERS = f"""\
[[caller]]
id = "soar-runner"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
client_cert_san = "{RUNNER_SAN}"
"""
NOTE = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                   "Note": {"Text": "from the runner", "UpdatedBy": "u"}}).encode()
BUF = "/findings/batchupdate"


@pytest.fixture
def mtls_passthrough(make_fake, make_hubgate, pki):  # noqa: F811
    fake = make_fake(extra_credentials=[PT_ADMIN, PT_MEMBER])
    cert, key = pki["server"]
    return make_hubgate(
        {"server": {"tls_cert": str(cert), "tls_key": str(key),
                    "client_ca": str(pki["ca_file"])},
         "identity": {"mode": "mtls"}, "upstream": {"auth": "passthrough"}},
        fake=fake, callers_toml=MTLS_CALLERS, scheme="https", ca_file=pki["ca_file"])


def signed_for(region: str, method: str, path: str, body: bytes, drop_host=False) -> dict:
    host = f"securityhub.{region}.amazonaws.com"

    class Signer(SigV4Auth):
        def headers_to_sign(self, request):
            signed = super().headers_to_sign(request)
            if drop_host:
                del signed["host"]
            return signed

    req = AWSRequest(method=method, url=f"https://{host}{path}", data=body,
                     headers={"Content-Type": "application/json", "Host": host})
    Signer(Credentials(PT_MEMBER.access_key, PT_MEMBER.secret_key), "securityhub",
           region).add_auth(req)
    return dict(req.headers.items())


def test_mtls_passthrough_checks_the_signature_head_it_forwards(mtls_passthrough, pki):  # noqa: F811
    hg, fake = mtls_passthrough, mtls_passthrough.fake
    ctx = client_context(pki["ca_file"], tuple(map(str, pki["runner"])))
    query_creds = (f"/accounts?HubArn=arn%3Ahub&X-Amz-Credential={PT_ADMIN.access_key}"
                   "%2F20260101%2Fus-east-1%2Fsecurityhub%2Faws4_request")
    cases = [
        ("another region", "PATCH", BUF, NOTE, signed_for("eu-west-1", "PATCH", BUF, NOTE),
         "sign for us-east-1"),
        ("host not signed", "PATCH", BUF, NOTE,
         signed_for("us-east-1", "PATCH", BUF, NOTE, drop_host=True), "must include host"),
        ("not signed", "PATCH", BUF, NOTE,
         {"Content-Type": "application/json", "Host": REAL_HOST}, "not signed"),
        ("query credentials", "GET", query_creds, b"",
         sign(PT_MEMBER, "GET", REAL_HOST, query_creds, b""), "query string"),
    ]
    for what, method, path, body, headers, said in cases:
        resp = raw_request(hg.port, method, path, body, headers, ssl_context=ctx)
        err = assert_envelope(resp, 401, "UNAUTHENTICATED",
                              resp.headers.get("x-amzn-errortype", "?"))["error"]
        assert said in err["message"], (what, err)
        assert fake.requests() == [], (what, fake.requests())  # no lookup, no forward
        rec = hg.audit_for(resp.headers["x-amzn-requestid"])
        assert rec["forwarded"] is False and rec["status"] == 401, (what, rec)
    # a request signed as AWS will accept it goes through, judged as the certificate's caller
    resp = raw_request(hg.port, "PATCH", BUF, NOTE,
                       sign(PT_MEMBER, "PATCH", REAL_HOST, BUF, NOTE,
                            {"Content-Type": "application/json"}), ssl_context=ctx)
    assert resp.status == 200, resp.text
    got = [r for r in fake.requests() if r["path"] == BUF][-1]
    assert got["signature_valid"] is True and got["access_key"] == PT_MEMBER.access_key, got
    assert hg.audit_for(resp.headers["x-hubgate-decision-id"])["principal"]["id"] == "soar-runner"
    assert fake.findings()["f-own-high"]["Note"]["Text"] == "from the runner"


# hubgate's own session token (its credentials are temporary wherever it runs on a role: IRSA,
# ECS, an instance profile), as the credential chain hands it over
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEHubgateOwnSessionToken" + "Zm9vYmFy" * 40


def test_aws_echo_of_hubgates_signed_request_is_not_repeated(make_hubgate):
    """AWS answers a signature it cannot match with InvalidSignatureException, whose message
    goes on with the canonical request it expected: every signed header's value, hubgate's
    X-Amz-Security-Token among them. hubgate repeated that message (up to 1,024 characters) in
    the envelope any caller reads, in the audit record and in the log."""
    upstream = Quirky(SEED)
    canonical = ("POST\n/findings\n\ncontent-type:application/json\n"
                 "host:securityhub.us-east-1.amazonaws.com\nx-amz-date:20261206T000000Z\n"
                 f"x-amz-security-token:{SESSION_TOKEN}\n\n"
                 "content-type;host;x-amz-date;x-amz-security-token\n" + "e3b0" * 16)
    message = ("The request signature we calculated does not match the signature you provided. "
               "Check your AWS Secret Access Key and signing method. Consult the service "
               "documentation for details.\n\nThe Canonical String for this request should "
               f"have been\n'{canonical}'\n\nThe String-to-Sign should have been\n'AWS4-HMAC-"
               "SHA256\n20261206T000000Z\n20261206/us-east-1/securityhub/aws4_request\n"
               + "ab" * 32 + "'\n")
    upstream.on_get = lambda req, default: (
        403, {"x-amzn-ErrorType": "InvalidSignatureException"},
        json.dumps({"message": message}).encode())
    hg = make_hubgate({"upstream": {"auth": "passthrough"}},
                      upstream_endpoint=upstream.endpoint, callers_toml=PT_CALLERS,
                      env={**hubgate_env(), "AWS_SESSION_TOKEN": SESSION_TOKEN})
    resp = raw_request(hg.port, "PATCH", BUF, NOTE,
                       sign(PT_MEMBER, "PATCH", REAL_HOST, BUF, NOTE,
                            {"Content-Type": "application/json"}))
    assert resp.status >= 500, resp.text
    assert upstream.count(BUF) == 0
    assert "does not match the signature" in resp.text, resp.text  # AWS's own words stay
    assert SESSION_TOKEN[:24] not in resp.text, resp.text
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert "does not match the signature" in json.dumps(rec), rec
    assert rec["forwarded"] is False, rec
    hg.stop()
    for where, text in [("audit", hg.audit_path.read_text()), ("log", hg.stderr_text())]:
        assert SESSION_TOKEN[:24] not in text, where
    upstream.server.shutdown()


def test_chunked_expect_continue_writes_go_up_as_judged(passthrough):  # noqa: F811
    hg, fake = passthrough, passthrough.fake
    for body, allowed in [(NOTE, True),
                          (json.dumps({"FindingIdentifiers": [ident("f-own-medium")],
                                       **SUPPRESS}).encode(), False)]:
        headers = sign(PT_MEMBER, "PATCH", REAL_HOST, BUF, body,
                       {"Content-Type": "application/json"})
        headers["Expect"] = "100-continue"
        before = len([r for r in fake.requests() if r["path"] == BUF])
        resp = raw_request(hg.port, "PATCH", BUF, body, headers, chunked=True)
        sent = [r for r in fake.requests() if r["path"] == BUF]
        if not allowed:
            assert resp.status == 403 and "suppress" in resp.text, resp.text
            assert len(sent) == before, sent
            continue
        assert resp.status == 200, resp.text
        got = sent[-1]
        assert got["signature_valid"] is True, got
        assert base64.b64decode(got["body_b64"]) == body
        names = [k.lower() for k, _ in got["headers"]]
        assert "transfer-encoding" not in names and names.count("content-length") == 1, names
        assert fake.findings()["f-own-high"]["Note"]["Text"] == "from the runner"
    assert fake.findings()["f-own-medium"]["Workflow"]["Status"] == "NEW"
