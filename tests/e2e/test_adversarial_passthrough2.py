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
"""

from __future__ import annotations

import json

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from helpers import MEMBER_ACCOUNT, assert_envelope, ident, raw_request, sign
from pki import client_context
from test_mtls import RUNNER_SAN, pki  # noqa: F401 (fixture)
from test_passthrough import PT_ADMIN, PT_MEMBER, REAL_HOST

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
