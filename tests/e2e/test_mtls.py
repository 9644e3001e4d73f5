"""mTLS (server.client_ca, identity.mode = "mtls"): callers by client-certificate URI SAN or CN,
handshakes refused for untrusted, expired and missing certificates, 401 for unmapped names."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.exceptions import ClientError

from helpers import (
    ADMIN_ACCOUNT,
    MEMBER_ACCOUNT,
    Creds,
    assert_envelope,
    ident,
    wait_until,
)
from pki import CA, client_context, handshake_failures, try_https_get

RUNNER_SAN = "spiffe://corp/ns/soar/sa/runner"
CALLERS = f"""\
[[caller]]
id = "soar-runner"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
client_cert_san = "{RUNNER_SAN}"

[[caller]]
id = "admin-cli"
account_id = "{ADMIN_ACCOUNT}"
role = "administrator"
client_cert_cn = "admin-cli"
"""
# boto3 insists on signing; in mtls mode hubgate ignores (and strips) the signature.
ANY_KEYS = Creds("AKIDMTLSUNUSED000001", "unused-secret")
SUPPRESS = {"Workflow": {"Status": "SUPPRESSED"},
            "Note": {"Text": "accepted risk, SEC-123", "UpdatedBy": "e2e"}}
MEMBER_SUPPRESS = "member accounts may not suppress findings"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The CA, another CA, and client certificates written to a folder."""
    folder = tmp_path_factory.mktemp("mtls-pki")
    ca, other = CA("hubgate e2e client CA"), CA("some other CA")
    now = dt.datetime.now(dt.timezone.utc)
    out = {"dir": folder, "ca": ca, "ca_file": ca.write(folder / "ca.pem")}
    out["server"] = ca.server_cert().write(folder, "server")
    certs = {
        "runner": ca.issue(uris=[RUNNER_SAN], client=True),
        "admin": ca.issue(cn="admin-cli", client=True, key_kind="ec"),
        "both": ca.issue(cn="admin-cli", uris=[RUNNER_SAN], client=True),
        "dns_admin": ca.issue(cn="admin-cli", dns=["runner.corp.internal"], client=True),
        "unmapped": ca.issue(cn="nobody", uris=["spiffe://corp/ns/other/sa/x"], client=True),
        "other_ca": other.issue(cn="admin-cli", uris=[RUNNER_SAN], client=True),
        "expired": ca.issue(cn="admin-cli", uris=[RUNNER_SAN], client=True,
                            not_before=now - dt.timedelta(days=3),
                            not_after=now - dt.timedelta(days=1)),
    }
    for name, issued in certs.items():
        out[name] = issued.write(folder, name)
    return out


@pytest.fixture
def mtls(make_hubgate, seeded_fake, pki):
    cert, key = pki["server"]
    return make_hubgate(
        {"server": {"tls_cert": str(cert), "tls_key": str(key),
                    "client_ca": str(pki["ca_file"])},
         "identity": {"mode": "mtls"}},
        fake=seeded_fake, callers_toml=CALLERS, scheme="https", ca_file=pki["ca_file"])


def client(hg, pki, name):
    return hg.client(creds=ANY_KEYS, client_cert=tuple(map(str, pki[name])))


def denied(hg, call) -> dict:
    """call() is refused with 403 POLICY_DENIED (member suppress); returns its audit record."""
    with pytest.raises(ClientError) as e:
        call()
    err = e.value.response
    assert err["Error"]["Code"] == "AccessDeniedException", err
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err["Error"]["Message"].startswith("POLICY_DENIED: "), err
    assert MEMBER_SUPPRESS in err["Error"]["Message"], err
    rec = hg.audit_for(err["ResponseMetadata"]["RequestId"])
    assert rec["forwarded"] is False
    return rec


def test_uri_san_maps_to_the_member_caller(mtls, pki):
    c = client(mtls, pki, "runner")
    rec = denied(mtls, lambda: c.batch_update_findings(
        FindingIdentifiers=[ident("f-own-high")], **SUPPRESS))
    assert rec["principal"] == {"id": "soar-runner", "account_id": MEMBER_ACCOUNT,
                                "role": "member"}, rec
    assert mtls.fake.buf_calls() == []
    # the same caller may change what members may change
    resp = c.batch_update_findings(FindingIdentifiers=[ident("f-own-high")],
                                   Note={"Text": "looking", "UpdatedBy": "soar"})
    assert [f["Id"] for f in resp["ProcessedFindings"]] == ["f-own-high"]
    assert len(mtls.fake.buf_calls()) == 1


def test_cn_maps_to_the_admin_caller_and_is_forwarded(mtls, pki):
    resp = client(mtls, pki, "admin").batch_update_findings(
        FindingIdentifiers=[ident("f-other")], **SUPPRESS)
    assert [f["Id"] for f in resp["ProcessedFindings"]] == ["f-other"]
    assert mtls.fake.findings()["f-other"]["Workflow"]["Status"] == "SUPPRESSED"
    calls = mtls.fake.buf_calls()
    assert len(calls) == 1 and calls[0]["signature_valid"] is True
    # what reached Security Hub is signed by hubgate, not by the key boto3 made up
    auth = dict((k.lower(), v) for k, v in calls[0]["headers"])["authorization"]
    assert ANY_KEYS.access_key not in auth
    rec = mtls.audit_for(resp["ResponseMetadata"]["HTTPHeaders"]["x-hubgate-decision-id"])
    assert rec["principal"]["id"] == "admin-cli" and rec["forwarded"] is True, rec


def test_san_wins_over_cn(mtls, pki):
    """A certificate whose SAN names the member and whose CN names the admin is the member."""
    rec = denied(mtls, lambda: client(mtls, pki, "both").batch_update_findings(
        FindingIdentifiers=[ident("f-own-high")], **SUPPRESS))
    assert rec["principal"]["id"] == "soar-runner", rec
    assert mtls.fake.buf_calls() == []


def test_unmapped_dns_san_falls_back_to_the_cn(mtls, pki):
    resp = client(mtls, pki, "dns_admin").batch_update_findings(
        FindingIdentifiers=[ident("f-other")], **SUPPRESS)
    rec = mtls.audit_for(resp["ResponseMetadata"]["HTTPHeaders"]["x-hubgate-decision-id"])
    assert rec["principal"]["id"] == "admin-cli", rec


@pytest.mark.parametrize("cert,reason", [
    ("other_ca", "invalid_certificate"),
    ("expired", "invalid_certificate"),
    (None, "no_client_certificate"),
])
def test_handshake_refused(mtls, pki, cert, reason):
    before = handshake_failures(mtls)
    ctx = client_context(pki["ca_file"], cert=pki[cert] if cert else None)
    got, exc = try_https_get(mtls.port, ctx, "/findings")
    assert not got.startswith(b"HTTP/"), got
    assert got == b"" and exc is not None, (got, exc)
    wait_until(lambda: handshake_failures(mtls).get(reason, 0) > before.get(reason, 0), 5,
               f'hubgate_tls_handshake_failures_total{{reason="{reason}"}} to move')
    after = handshake_failures(mtls)
    assert {r for r in after if after[r] > before.get(r, 0)} == {reason}, (before, after)
    # boto3 with that certificate gets a connection error, never a response
    if cert:
        with pytest.raises(Exception) as e:
            client(mtls, pki, cert).batch_update_findings(
                FindingIdentifiers=[ident("f-other")], **SUPPRESS)
        assert not isinstance(e.value, ClientError), e.value
    assert mtls.fake.requests() == []
    assert mtls.audit_records() == []


def test_valid_certificate_with_an_unmapped_name_is_401(mtls, pki):
    ctx = client_context(pki["ca_file"], cert=pki["unmapped"])
    resp = mtls.buf({"FindingIdentifiers": [ident("f-own-high")], **SUPPRESS}, who=None,
                    ssl_context=ctx)
    body = assert_envelope(resp, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
    assert "spiffe://corp/ns/other/sa/x" in body["error"]["message"], body
    assert "CN=nobody" in body["error"]["message"], body
    assert mtls.fake.requests() == []
    rec = mtls.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["principal"] is None and rec["status"] == 401, rec
