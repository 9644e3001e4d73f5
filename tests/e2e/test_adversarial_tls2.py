"""Adversarial probes of TLS and mTLS on the proxy listener, second round (review round
adv-tls2): which CA may name a caller, and for how long.

HOLE (fixed): a certificate's subject CN named a caller even when a CA on its chain had name
  constraints. webpki holds name constraints to the SANs only and never reads the CN, so a
  sub-CA delegated to a team and limited to `*.teamx.corp` (the standard way to delegate
  issuance) could issue `CN=admin-cli` (with a SAN inside its subtree, or none) and be mapped as
  the administrator: the request was forwarded as admin-cli's. Now the CN of a chain with a
  name-constrained CA (an intermediate the client sends, or a `client_ca` CA itself) names no
  caller; its SANs, which the constraints bind, still do. The 401 says why.

HOLE (fixed): a `client_ca` CA vouched for its certificates after it had expired (and before
  it was valid). webpki never reads a trust anchor's dates, so an expired CA left in the bundle
  (or one whose key leaked once nobody guarded it) went on minting callers, and a connection
  opened before the CA expired went on naming its caller (the README said a connection is
  checked again once "a CA of its chain has expired"). Now each CA is trusted only within its
  validity period: the handshake fails as an invalid certificate, and an open connection's next
  request gets 401 and the connection is closed.

HOLE (fixed): a graceful stop waited for every connection still in its TLS handshake, up to the
  10 s handshake timeout. Anyone who can reach the port (no key or certificate needed) opened a
  TCP connection and sent nothing: each SIGTERM (rolling deploy, scale-in) then took 10 s, and
  with `shutdown_grace_ms` below that ran into the halt ("grace period over; ending the requests
  still in hubgate"). A connection still in its handshake has no request: a stop now drops it
  at once.

HOLE (fixed, stop 49): a `client_ca` bundle whose CAs had all expired loaded without a word
  (every client certificate then refused, and nothing said why), and no expiry was anywhere
  an SRE could alert on. The log names lapsed CAs (and an expired serving certificate) at start
  and on reload, and `hubgate_tls_certificate_not_after_timestamp_seconds` gives both expiries.

Held: a client certificate whose extended key usage is serverAuth only, and an end-entity
  certificate that is itself a CA (cA true), fail the handshake (`invalid_certificate`);
  a TLS ClientHello sent to the plain-HTTP admin port gets an answer at once (no hang).
Held (probed, not kept as tests): SNI of an IP address, of 253 characters or with a trailing
  dot is served; a client whose ALPN list has neither h2 nor http/1.1 is refused with
  no_application_protocol (`tls_error`); a TLS 1.2 renegotiation request does not crash or
  hang hubgate; a reload with a valid key of another certificate keeps the previous
  certificate serving, logs `TLS reload failed; keeping the previous certificate … KeyMismatch`
  and /readyz says stale; a silent TCP connection to the TLS port holds a connection slot for
  the 10 s handshake timeout, less than the 60 s idle timeout a silent plain-HTTP one holds.
Held (existing suites, not repeated): plain HTTP to the TLS port, TLS 1.1, ALPN, session
  resumption off, expired / not-yet-valid / untrusted client certificates, SAN over CN, several
  callers named at once, DNS SANs shaped like URIs, look-alike CNs, a CA removed by a reload,
  a certificate expiring on an open HTTP/1.1 or h2 connection, torn key reloads.

Every network wait is bounded (socket timeouts of WAIT seconds, helpers.HTTP_TIMEOUT)."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from helpers import ADMIN_ACCOUNT, MEMBER_ACCOUNT
from pki import CA, client_context, handshake_failures, key_pem, new_key, try_https_get
from test_adversarial_identity import as_envelope, closed_by_server, connect, exchange

WAIT = 5.0
CALLERS = f"""\
[[caller]]
id = "admin-cli"
account_id = "{ADMIN_ACCOUNT}"
role = "administrator"
client_cert_cn = "admin-cli"

[[caller]]
id = "teamx-runner"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
client_cert_san = "runner.teamx.corp"
"""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(name: str, issuer: CA | None = None, permitted_dns: list[str] | None = None,
            not_before: dt.datetime | None = None,
            not_after: dt.datetime | None = None) -> CA:
    """A CA (self-signed, or issued by `issuer`), optionally name-constrained to DNS subtrees,
    with the given validity; it issues like pki.CA."""
    ca = CA.__new__(CA)
    ca.key = new_key("ec")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = issuer or ca
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - dt.timedelta(hours=1))
        .not_valid_after(not_after or _now() + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None
                                             else 0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer.key.public_key()), critical=False)
    )
    if permitted_dns:
        builder = builder.add_extension(x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(d) for d in permitted_dns],
            excluded_subtrees=None), critical=True)
    ca.cert = builder.sign(signer.key, hashes.SHA256())
    return ca


def write_leaf(folder, name: str, issued, *chain: CA):
    """NAME.pem (the certificate, then the intermediates the client sends) and NAME.key."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    cert.write_bytes(issued.cert_pem() + b"".join(c.cert_pem() for c in chain))
    key.write_bytes(key_pem(issued.key))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls2-pki")
    ca = CA("tls2 client CA")
    return {"dir": folder, "ca": ca, "ca_file": ca.write(folder / "ca.pem"),
            "server": ca.server_cert().write(folder, "server")}


def mtls_hubgate(make_hubgate, fake, pki, client_ca, callers=CALLERS):
    cert, key = pki["server"]
    return make_hubgate(
        {"server": {"tls_cert": str(cert), "tls_key": str(key), "client_ca": str(client_ca)},
         "identity": {"mode": "mtls"}, "policy": {"watch_interval_ms": 0}},
        fake=fake, callers_toml=callers, scheme="https", ca_file=pki["ca_file"])


# ---------------------------------------------------------------------------
# name constraints bind SANs, not the CN


@pytest.mark.parametrize("constrained", ["intermediate", "client_ca"])
def test_a_name_constrained_ca_cannot_name_a_caller_by_cn(make_hubgate, seeded_fake, pki,
                                                          tmp_path, constrained):
    """A team's CA limited to *.teamx.corp issues CN=admin-cli: it was mapped as the
    administrator and its request forwarded. `intermediate`: a sub-CA of the client_ca root
    that the client sends itself; `client_ca`: the constrained CA is in the bundle."""
    bundle = tmp_path / "clients.pem"
    if constrained == "intermediate":
        team = make_ca("teamx CA", issuer=pki["ca"], permitted_dns=["teamx.corp"])
        bundle.write_bytes(pki["ca"].cert_pem())
        sent = (team,)
    else:
        team = make_ca("teamx CA", permitted_dns=["teamx.corp"])
        bundle.write_bytes(pki["ca"].cert_pem() + team.cert_pem())
        sent = ()
    hg = mtls_hubgate(make_hubgate, seeded_fake, pki, bundle)
    forged = {
        "with_san": write_leaf(tmp_path, "forged-san", team.issue(
            cn="admin-cli", dns=["svc.teamx.corp"], client=True), *sent),
        "without_san": write_leaf(tmp_path, "forged-cn", team.issue(
            cn="admin-cli", client=True), *sent),
    }
    for what, leaf in forged.items():
        with connect(hg.port, client_context(pki["ca_file"], cert=leaf)) as s:
            answer = exchange(s, hg.port)
        body = as_envelope(answer, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
        message = body["error"]["message"]
        assert "CN=admin-cli" in message and "name constraints" in message, (what, message)
        rec = hg.audit_for(answer.headers["x-amzn-requestid"])
        assert rec["forwarded"] is False and rec["principal"] is None, rec
        assert "CN=admin-cli" in str(rec), rec
    assert seeded_fake.buf_calls() == []
    # The SAN the constraints bind still names its caller (a member: denied on admin's finding).
    runner = write_leaf(tmp_path, "runner", team.issue(
        cn="admin-cli", dns=["runner.teamx.corp"], client=True), *sent)
    with connect(hg.port, client_context(pki["ca_file"], cert=runner)) as s:
        answer = exchange(s, hg.port)
    as_envelope(answer, 403, "POLICY_DENIED", "AccessDeniedException")
    assert hg.audit_for(answer.headers["x-amzn-requestid"])["principal"]["id"] == "teamx-runner"
    # An unconstrained CA's CN still names its caller.
    admin = pki["ca"].issue(cn="admin-cli", client=True).write(tmp_path, "admin")
    with connect(hg.port, client_context(pki["ca_file"], cert=admin)) as s:
        assert exchange(s, hg.port).status == 200
    assert len(seeded_fake.buf_calls()) == 1


# ---------------------------------------------------------------------------
# a CA's own validity period


def test_a_client_ca_out_of_its_validity_vouches_for_no_one(make_hubgate, seeded_fake, pki,
                                                            tmp_path):
    """An expired CA (and one not yet valid) left in client_ca: a certificate it issued, itself
    within its dates, passed the handshake and was served as admin-cli."""
    expired = make_ca("expired CA", not_before=_now() - dt.timedelta(days=30),
                      not_after=_now() - dt.timedelta(days=1))
    future = make_ca("future CA", not_before=_now() + dt.timedelta(days=1),
                     not_after=_now() + dt.timedelta(days=30))
    bundle = tmp_path / "clients.pem"
    bundle.write_bytes(expired.cert_pem() + future.cert_pem() + pki["ca"].cert_pem())
    hg = mtls_hubgate(make_hubgate, seeded_fake, pki, bundle)
    for ca in (expired, future):
        leaf = ca.issue(cn="admin-cli", client=True).write(tmp_path, ca.cert.serial_number)
        got, error = try_https_get(hg.port, client_context(pki["ca_file"], cert=leaf),
                                   timeout=WAIT)
        assert got == b"" and isinstance(error, (ssl.SSLError, OSError)), (got, error)
    assert handshake_failures(hg).get("invalid_certificate") == 2
    assert "expired" in hg.stderr_text() and "not valid before" in hg.stderr_text()
    # The CA within its dates, in the same bundle, still vouches.
    admin = pki["ca"].issue(cn="admin-cli", client=True).write(tmp_path, "admin")
    with connect(hg.port, client_context(pki["ca_file"], cert=admin)) as s:
        assert exchange(s, hg.port).status == 200
    assert len(seeded_fake.buf_calls()) == 1


def test_a_client_ca_that_expires_under_an_open_connection_stops_it(make_hubgate, seeded_fake,
                                                                    pki, tmp_path):
    """The connection's own certificate is valid for a week; its CA expires a few seconds in.
    The next request on the connection was still served as admin-cli."""
    short = make_ca("short-lived CA", not_after=_now() + dt.timedelta(seconds=4))
    bundle = short.write(tmp_path / "clients.pem")
    hg = mtls_hubgate(make_hubgate, seeded_fake, pki, bundle)
    leaf = short.issue(cn="admin-cli", client=True).write(tmp_path, "admin")
    with connect(hg.port, client_context(pki["ca_file"], cert=leaf)) as s:
        assert exchange(s, hg.port).status == 200
        forwarded = len(seeded_fake.buf_calls())
        deadline = short.cert.not_valid_after_utc + dt.timedelta(seconds=1.2)
        time.sleep(max(0.0, (deadline - _now()).total_seconds()))
        late = exchange(s, hg.port)
        body = as_envelope(late, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
        assert "no longer verifies" in body["error"]["message"], body
        assert closed_by_server(s)
    assert len(seeded_fake.buf_calls()) == forwarded


# ---------------------------------------------------------------------------
# a stop and the handshakes under way


def test_a_stop_does_not_wait_for_a_handshake_that_never_comes(make_hubgate, seeded_fake, pki):
    cert, key = pki["server"]
    hg = make_hubgate({"server": {"tls_cert": str(cert), "tls_key": str(key),
                                  "shutdown_grace_ms": 30000}},
                      fake=seeded_fake, scheme="https", ca_file=pki["ca_file"])
    silent = socket.create_connection(("127.0.0.1", hg.port), timeout=WAIT)
    try:
        half = socket.create_connection(("127.0.0.1", hg.port), timeout=WAIT)
        half.sendall(b"\x16\x03\x01\x02\x00")  # a ClientHello's record header, then nothing
        time.sleep(0.3)
        started = time.monotonic()
        hg.proc.send_signal(signal.SIGTERM)
        code = hg.proc.wait(15)
        took = time.monotonic() - started
    finally:
        silent.close()
    half.close()
    assert code == 0 and took < 3, (code, took)
    assert "stopped" in hg.stderr_text()


# ---------------------------------------------------------------------------
# what held


def test_held_wrong_usage_client_certificates_and_tls_to_the_admin_port(make_hubgate,
                                                                        seeded_fake, pki,
                                                                        tmp_path):
    hg = mtls_hubgate(make_hubgate, seeded_fake, pki, pki["ca_file"])
    server_only = pki["ca"].issue(cn="admin-cli", server=True).write(tmp_path, "server-only")
    ca_itself = make_ca("admin-cli", issuer=pki["ca"])
    as_leaf = write_leaf(tmp_path, "ca-as-leaf", ca_itself)
    for leaf in (server_only, as_leaf):
        got, error = try_https_get(hg.port, client_context(pki["ca_file"], cert=leaf),
                                   timeout=WAIT)
        assert got == b"" and error is not None, (got, error)
    assert handshake_failures(hg).get("invalid_certificate") == 2
    assert seeded_fake.buf_calls() == []
    # TLS to the admin port: answered (plain HTTP 400, then closed) at once, no hang.
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", hg.admin_port), timeout=WAIT)
    started = time.monotonic()
    with pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw).close()
    raw.close()
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------------------
# what the loaded certificates cannot do, and when they expire


def not_after_metric(hg) -> dict[str, float]:
    """hubgate_tls_certificate_not_after_timestamp_seconds by certificate, from /metrics."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    resp = hg.admin("/metrics")
    assert resp.status_code == 200, resp.text
    return {s.labels["certificate"]: s.value
            for family in text_string_to_metric_families(resp.text)
            for s in family.samples
            if s.name == "hubgate_tls_certificate_not_after_timestamp_seconds"}


def test_certificate_expiries_are_in_metrics_and_a_bundle_of_lapsed_cas_is_named(
        make_hubgate, seeded_fake, pki, tmp_path):
    """A client_ca bundle whose CAs had all expired loaded without a word: every client
    certificate was refused, and nothing said why until a client complained. The serving and
    client CA expiries were nowhere an SRE could alert on before they came."""
    expired = make_ca("lapsed CA", not_before=_now() - dt.timedelta(days=30),
                      not_after=_now() - dt.timedelta(days=1))
    bundle = tmp_path / "clients.pem"
    bundle.write_bytes(expired.cert_pem() + pki["ca"].cert_pem())
    hg = mtls_hubgate(make_hubgate, seeded_fake, pki, bundle)
    served = x509.load_pem_x509_certificate(pki["server"][0].read_bytes())
    expiries = not_after_metric(hg)
    assert expiries == {
        "serving": served.not_valid_after_utc.timestamp(),
        "client_ca": expired.cert.not_valid_after_utc.timestamp(),  # the earliest CA's
    }, expiries
    assert "holds CAs that are expired or not yet valid" in hg.stderr_text()
    assert "CN=lapsed CA" in hg.stderr_text()

    # Only lapsed CAs left: every client certificate is refused, and the reload says so.
    bundle.write_bytes(expired.cert_pem())
    hg.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "no CA in client_ca" not in hg.stderr_text():
        assert time.monotonic() < deadline, hg.stderr_text()[-2000:]
        time.sleep(0.05)
    assert "every client certificate is refused" in hg.stderr_text()
