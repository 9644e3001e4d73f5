"""Adversarial probes at the edge (review round adv-edge): paths whose label values decode to
other routes, methods no operation has, passthrough requests that carry a second set of
credentials, and client certificates that chain oddly, name two callers, or have expired since
their TLS session began, or are listed in client_ca themselves.

Every request is bounded by helpers.HTTP_TIMEOUT or the socket timeouts below."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helpers import (
    ADMIN_ACCOUNT,
    MEMBER_ACCOUNT,
    assert_envelope,
    ident,
    raw_request,
    run_hubgate,
    sign,
    wait_until,
)
from pki import CA, client_context, handshake_failures, key_pem, new_key, try_https_get
from test_passthrough import PT_MEMBER, REAL_HOST, passthrough  # noqa: F401 (fixture)

NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
WAIT = 5.0


def nothing_forwarded(hg):
    time.sleep(0.1)
    assert hg.fake.requests() == [], hg.fake.requests()


# ---------------------------------------------------------------------------
# routes


@pytest.fixture
def insights_forwarded(make_hubgate, seeded_fake):
    """An operator let insight updates through unchecked ([operations] UpdateInsight)."""
    return make_hubgate({"operations": {"UpdateInsight": "forward"}}, fake=seeded_fake)


# Label values that are one raw segment but decode to several, some of them dot segments: a
# front end that decodes before it normalises reads another operation than the one routed.
TRAVERSALS = [
    ("PATCH", "/insights/..%2F..%2Fautomationrulesv2%2Frule-1"),        # UpdateAutomationRuleV2
    ("PATCH", "/insights/x%2F..%2F..%2F..%2Fstandards%2Fcontrol%2Farn"),  # UpdateStandardsControl
    ("PATCH", "/insights/%2E%2E%5C%2E%2E%5Caccounts"),                   # `\` read as `/`
    ("PATCH", "/insights/..;/automationrulesv2/rule-1"),                 # `..;` read as `..`
    ("PATCH", "/insights/arn%00/x"),                                     # a control character
    ("GET", "/tags/..%2F..%2Faccounts"),
    ("GET", "/insights/results/a%5C..%5C..%5Cmembers"),
]


def test_a_label_value_that_decodes_to_dot_segments_is_not_routed(insights_forwarded):
    hg = insights_forwarded
    for method, path in TRAVERSALS:
        resp = hg.send(method, path, {"Name": "x"} if method == "PATCH" else b"",
                       who="member", content_type="application/json")
        body = assert_envelope(resp, 404, "NOT_FOUND", "ResourceNotFoundException")
        assert path in body["error"]["message"], body
    nothing_forwarded(hg)
    # Control: an insight ARN as boto3 sends it (greedy label, `/` kept, `:` encoded) is still
    # the operation the operator let through, forwarded with its path unchanged.
    arn_path = ("/insights/arn%3Aaws%3Asecurityhub%3Aus-east-1%3A111111111111%3Ainsight/"
                "111111111111/custom/a.b..c")
    resp = hg.send("PATCH", arn_path, {"Name": "x"}, who="admin")
    assert resp.headers.get("x-hubgate-decision-id"), (resp.status, resp.text)
    [seen] = hg.fake.requests()
    assert (seen["method"], seen["raw_path"]) == ("PATCH", arn_path), seen


def test_an_escaped_letter_in_a_label_does_not_reach_a_denied_sibling(make_hubgate,
                                                                      seeded_fake):
    """`/automationrulesv2/list` is ListAutomationRulesV2; `%6Cist` was routed as
    GetAutomationRuleV2 (a label), past an operator's deny of the list, although it decodes to
    the same path."""
    hg = make_hubgate({"operations": {"ListAutomationRulesV2": "deny"}}, fake=seeded_fake)
    denied = hg.send("GET", "/automationrulesv2/list", b"", who="member", content_type=None)
    assert_envelope(denied, 403, "OPERATION_NOT_ALLOWED", "AccessDeniedException")
    for path in ("/automationrulesv2/%6Cist", "/automationrulesv2/lis%74"):
        resp = hg.send("GET", path, b"", who="member", content_type=None)
        assert_envelope(resp, 404, "NOT_FOUND", "ResourceNotFoundException")
    nothing_forwarded(hg)
    # Control: a rule id is still GetAutomationRuleV2, forwarded.
    resp = hg.send("GET", "/automationrulesv2/rule-1", b"", who="admin", content_type=None)
    assert resp.headers.get("x-hubgate-decision-id"), (resp.status, resp.text)
    assert [r["raw_path"] for r in hg.fake.requests()] == ["/automationrulesv2/rule-1"]


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "patch", "TRACE"])
def test_methods_no_operation_has_are_404_and_never_forwarded(hubgate, method):
    body = json.dumps(NOTE).encode() if method == "patch" else b""
    resp = hubgate.send(method, "/findings/batchupdate", body, who="admin")
    assert resp.status == 404, (resp.status, resp.text)
    if method != "HEAD":
        assert_envelope(resp, 404, "NOT_FOUND", "ResourceNotFoundException")
    nothing_forwarded(hubgate)


# ---------------------------------------------------------------------------
# passthrough


def test_passthrough_refuses_query_credentials_beside_the_mapped_header(passthrough):  # noqa: F811
    """hubgate maps the Authorization header's key; a query string could carry a second set of
    credentials for AWS to read instead. Refused at authentication, before the guarded route's
    own refusal of any query string (test_adversarial_passthrough.py has the forwarded routes)."""
    hg = passthrough
    query = ("?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             f"&X-Amz-Credential={PT_MEMBER.access_key}%2F20260101%2Fus-east-1%2Fsecurityhub"
             "%2Faws4_request&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "0" * 64)
    path = "/findings/batchupdate" + query
    body = json.dumps(NOTE).encode()
    headers = sign(PT_MEMBER, "PATCH", REAL_HOST, path, body,
                   {"Content-Type": "application/json"})
    resp = raw_request(hg.port, "PATCH", path, body, headers)
    err = assert_envelope(resp, 401, "UNAUTHENTICATED", "UnrecognizedClientException")["error"]
    assert "query string" in err["message"] and "X-Amz-" in err["message"], err
    nothing_forwarded(hg)


# ---------------------------------------------------------------------------
# mTLS

RUNNER_SAN = "spiffe://corp/ns/soar/sa/runner"
ADMIN_SAN = "spiffe://corp/ns/sec/sa/admin"
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
client_cert_san = "{ADMIN_SAN}"
client_cert_cn = "admin-cli"
"""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def intermediate(root: CA, name: str, not_before=None, not_after=None) -> CA:
    """A CA whose certificate the root signed."""
    sub = CA(name)
    sub.cert = (
        x509.CertificateBuilder()
        .subject_name(sub.cert.subject).issuer_name(root.cert.subject)
        .public_key(sub.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - dt.timedelta(days=1))
        .not_valid_after(not_after or _now() + dt.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(sub.key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            root.key.public_key()), critical=False)
        .sign(root.key, hashes.SHA256()))
    return sub


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge-pki")
    root = CA("edge root CA")
    out = {"root": root, "dir": folder, "ca_file": root.write(folder / "ca.pem"),
           "server": root.server_cert().write(folder, "server")}
    good = intermediate(root, "edge intermediate")
    expired = intermediate(root, "edge expired intermediate",
                           _now() - dt.timedelta(days=5), _now() - dt.timedelta(days=1))
    issued = {
        "via_intermediate": (good.issue(cn="admin-cli", client=True), [good]),
        "via_expired_intermediate": (expired.issue(cn="admin-cli", client=True), [expired]),
        "server_auth_only": (root.issue(cn="admin-cli", server=True), []),
        "two_callers_member_first": (root.issue(uris=[RUNNER_SAN, ADMIN_SAN], client=True), []),
        "two_callers_admin_first": (root.issue(uris=[ADMIN_SAN, RUNNER_SAN], client=True), []),
    }
    for name, (cert, chain) in issued.items():
        pem, key = cert.write(folder, name)
        pem.write_bytes(cert.cert_pem() + b"".join(c.cert_pem() for c in chain))
        out[name] = (pem, key)
    # The intermediate CA's own certificate and key, presented as if it were a client's.
    out["ca_as_client"] = good.issue(cn="unused").write(folder, "ca_as_client")
    out["ca_as_client"][0].write_bytes(good.cert_pem())
    out["ca_as_client"][1].write_bytes(key_pem(good.key))
    return out


@pytest.fixture
def mtls(make_hubgate, seeded_fake, pki):
    cert, key = pki["server"]
    return make_hubgate(
        {"server": {"tls_cert": str(cert), "tls_key": str(key),
                    "client_ca": str(pki["ca_file"])},
         "identity": {"mode": "mtls"}},
        fake=seeded_fake, callers_toml=CALLERS, scheme="https", ca_file=pki["ca_file"])


@pytest.mark.parametrize("name", ["via_expired_intermediate", "server_auth_only", "ca_as_client"])
def test_certificates_that_do_not_make_a_client_chain_fail_the_handshake(mtls, pki, name):
    before = handshake_failures(mtls).get("invalid_certificate", 0)
    got, exc = try_https_get(mtls.port, client_context(pki["ca_file"], cert=pki[name]),
                             "/findings")
    assert got == b"" and exc is not None, (got, exc)
    # The connection's task counts the failure just after closing, so the client can see the
    # close first.
    wait_until(lambda: handshake_failures(mtls).get("invalid_certificate", 0) > before, 5,
               "the handshake failure to be counted")
    nothing_forwarded(mtls)
    assert mtls.audit_records() == []


def test_a_client_chain_through_a_valid_intermediate_names_its_caller(mtls, pki):
    resp = mtls.buf(NOTE, who=None, ssl_context=client_context(
        pki["ca_file"], cert=pki["via_intermediate"]))
    assert resp.status == 200, resp.text
    rec = mtls.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["principal"]["id"] == "admin-cli" and rec["forwarded"] is True, rec


@pytest.mark.parametrize("name", ["two_callers_member_first", "two_callers_admin_first"])
def test_a_certificate_that_names_two_callers_names_neither(mtls, pki, name):
    """Which caller such a certificate was mapped to was the order its issuer wrote its names
    in: an administrator's SAN first made it the administrator."""
    resp = mtls.buf(NOTE, who=None, ssl_context=client_context(pki["ca_file"], cert=pki[name]))
    body = assert_envelope(resp, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
    message = body["error"]["message"]
    assert "more than one caller" in message, body
    assert RUNNER_SAN in message and ADMIN_SAN in message, body
    nothing_forwarded(mtls)
    rec = mtls.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["principal"] is None and rec["status"] == 401, rec


def _exchange(sock: ssl.SSLSocket, port: int) -> bytes:
    data = json.dumps(NOTE).encode()
    sock.sendall(
        (f"PATCH /findings/batchupdate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
         f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
         "Connection: close\r\n\r\n").encode() + data)
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def test_an_expired_client_certificate_cannot_resume_its_session(mtls, pki, tmp_path):
    """A resumed TLS session is not verified again: the certificate stored with it went on
    naming the administrator after it had expired."""
    expires = _now() + dt.timedelta(seconds=3)
    cert = pki["root"].issue(cn="admin-cli", client=True,
                             not_before=_now() - dt.timedelta(hours=1),
                             not_after=expires).write(tmp_path, "short")
    sessions = {}
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(pki["ca_file"], cert=cert)
        ctx.maximum_version = version
        raw = socket.create_connection(("127.0.0.1", mtls.port), timeout=WAIT)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert _exchange(s, mtls.port).startswith(b"HTTP/1.1 200 "), version
            sessions[version] = (ctx, s.session)
    forwarded = len(mtls.fake.buf_calls())
    time.sleep(max(0.0, (expires - _now()).total_seconds()) + 1.2)
    for version, (ctx, session) in sessions.items():
        raw = socket.create_connection(("127.0.0.1", mtls.port), timeout=WAIT)
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
                got = _exchange(s, mtls.port)
                reused = s.session_reused
        except (ssl.SSLError, OSError) as e:
            got, reused = b"", f"refused: {e}"
        finally:
            raw.close()
        assert not got.startswith(b"HTTP/"), (version, reused, got[:200])
    assert len(mtls.fake.buf_calls()) == forwarded


def self_signed(cn: str, key) -> x509.Certificate:
    """A self-signed client certificate (cA false) for `cn`."""
    name = lambda n: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n)])  # noqa: E731
    return (x509.CertificateBuilder()
            .subject_name(name(cn)).issuer_name(name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(hours=1))
            .not_valid_after(_now() + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))


def test_client_certificates_pinned_as_client_ca_are_refused(make_hubgate, seeded_fake, pki,
                                                             tmp_path):
    """Self-signed client certificates listed in client_ca (pinning) were trust anchors like
    any CA: the member signed a certificate with CN=admin-cli with its own key, in its own
    name, and hubgate took it for the administrator. Such a bundle no longer loads."""
    member_key = new_key("ec")
    member = self_signed("member-cli", member_key)
    bundle = tmp_path / "clients.pem"
    bundle.write_bytes(pki["root"].cert_pem() + member.public_bytes(serialization.Encoding.PEM))
    cert, key = pki["server"]
    hg = make_hubgate(
        {"server": {"tls_cert": str(cert), "tls_key": str(key), "client_ca": str(bundle)},
         "identity": {"mode": "mtls"}},
        fake=seeded_fake, callers_toml=CALLERS,
        scheme="https", ca_file=pki["ca_file"], start=False)
    hg.write_config()
    for command in ("check", "serve"):
        done = run_hubgate(command, "--config", str(hg.config_path), timeout=10)
        assert done.returncode != 0, (command, done.stdout, done.stderr)
        assert f"{bundle}: certificate 2 (CN=member-cli) is not a CA certificate" \
            in done.stderr, (command, done.stderr)
    assert hg.fake.requests() == []
