"""Certificates made at test time (cryptography): a test CA, server and client certificates,
keys in PKCS#8, PKCS#1 (RSA) and SEC1 (EC) PEM, and small TLS client helpers."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_FORMATS = {
    "pkcs8": serialization.PrivateFormat.PKCS8,
    # TraditionalOpenSSL is PKCS#1 ("RSA PRIVATE KEY") for RSA, SEC1 ("EC PRIVATE KEY") for EC.
    "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
    "sec1": serialization.PrivateFormat.TraditionalOpenSSL,
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_key(kind: str = "rsa"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(kind)


def key_pem(key, fmt: str = "pkcs8") -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, KEY_FORMATS[fmt],
                             serialization.NoEncryption())


@dataclass
class Issued:
    cert: x509.Certificate
    key: object

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, folder: Path, name: str, key_format: str = "pkcs8") -> tuple[Path, Path]:
        """Write NAME.pem and NAME.key (the key in key_format); return both paths."""
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        cert_path.write_bytes(self.cert_pem())
        key_path.write_bytes(key_pem(self.key, key_format))
        return cert_path, key_path


class CA:
    """A self-signed test CA that issues server and client certificates."""

    def __init__(self, name: str = "hubgate e2e test CA", key_kind: str = "ec"):
        self.key = new_key(key_kind)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(days=1))
            .not_valid_after(_now() + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert_pem())
        return path

    def issue(self, *, cn: str | None = None, dns: list[str] = (), ips: list[str] = (),
              uris: list[str] = (), server: bool = False, client: bool = False,
              key_kind: str = "rsa", not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None) -> Issued:
        key = new_key(key_kind)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or _now() - dt.timedelta(hours=1))
            .not_valid_after(not_after or _now() + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        names = ([x509.DNSName(d) for d in dns]
                 + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
                 + [x509.UniformResourceIdentifier(u) for u in uris])
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names),
                                            critical=not cn)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
                 ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key)

    def server_cert(self, key_kind: str = "rsa") -> Issued:
        return self.issue(cn="localhost", dns=["localhost"], ips=["127.0.0.1"], server=True,
                          key_kind=key_kind)


# ---------------------------------------------------------------------------
# TLS clients


def client_context(ca_file: Path | None, cert: tuple[Path, Path] | None = None,
                   alpn: list[str] | None = None) -> ssl.SSLContext:
    """A TLS client context that trusts ca_file (and presents cert = (cert.pem, key.pem))."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def peer_serial(sock: ssl.SSLSocket) -> int:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


def tls_connect(port: int, ctx: ssl.SSLContext, timeout: float = 5,
                server_hostname: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def try_https_get(port: int, ctx: ssl.SSLContext, path: str = "/",
                  timeout: float = 5) -> tuple[bytes, BaseException | None]:
    """Handshake, send one HTTP/1.1 request and read until the server closes.

    Returns (bytes received, the exception that ended it or None). With TLS 1.3 a refused
    client certificate only shows after the client's handshake has finished, on the first read."""
    got = b""
    try:
        sock = tls_connect(port, ctx, timeout)
    except (ssl.SSLError, OSError) as e:
        return got, e
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got, None
            got += chunk
    except (ssl.SSLError, OSError) as e:
        return got, e
    finally:
        sock.close()


def handshake_failures(hg) -> dict[str, float]:
    """hubgate_tls_handshake_failures_total by reason, from one /metrics scrape."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    resp = hg.admin("/metrics")
    assert resp.status_code == 200, resp.text
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == "hubgate_tls_handshake_failures_total":
                out[s.labels["reason"]] = s.value
    return out
