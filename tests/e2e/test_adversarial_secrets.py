"""Adversarial review of "never log a secret", end to end: each secret hubgate meets carries a
marker, the real binary is driven through good requests, refusals, bad settings, reloads,
upstream errors and trace logging, and every output is searched for the marker.

HOLE (fixed): at RUST_LOG=trace (or `aws_sigv4=trace`) the aws_sigv4 crate logged every
request it signed with all its headers. Verifying a caller's signature signs the caller's
request again, so each header the caller signed (a Cookie, another system's API key) reached
stderr as the caller sent it. aws_sigv4's events are now kept out of the log whatever RUST_LOG
says.

HOLE (fixed): a secret pasted where its file's path belongs was printed by the error saying no
such file exists: `secret_file` (callers file), `server.tls_key` (a PEM key, printed whole with
its lines) and `audit.hmac_key_file`, to stderr, `hubgate check` and, for a callers reload,
/readyz; `hubgate audit verify --key-env/--key-file` printed a key given in place of a
variable's name or a path. The path (or name) is now shown only when something is there (or it
has a variable name's shape), as `secret_env` already did.

HOLE (fixed): `upstream.endpoint = "https://user:password@host"` was accepted (the user and
password are never sent: hubgate signs with SigV4) and logged at start in "hubgate is
serving"; one that did not parse was quoted whole in the error. It is refused, and the error
never quotes an endpoint holding an `@`.

HOLE (fixed): Security Hub's IncompleteSignatureException repeats the request's Authorization
header ("... Authorization=AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...").
With long-term keys (no x-amz-security-token to cut at) hubgate's own signature went into the
502 envelope any caller reads, the audit record and the log; the message is now cut before an
`Authorization=` or `Signature=` echo too.

Held: a Redis password in `coordination.redis_url` (user and password, or password only) or in
`redis_password_env`, with Redis refusing it (AUTH failure) or accepting it, at
RUST_LOG=trace: absent from stderr, /readyz, /metrics and the audit file.
Held: malformed Authorization headers (Bearer, Basic, a bad Signature, an extra component, an
unknown Credential), presigned query strings (X-Amz-Signature, X-Amz-Security-Token) on guarded,
read and unknown routes: the marker reaches neither the answer, the audit record (with
include_input) nor the debug log.
Held: callers-file TOML errors on a line holding a secret (unterminated, misspelt key, literal
and multi-line strings, duplicate key, wrong type, bad escape) and secrets refused for their
form (control character, surrounding whitespace) never show the secret.
Held: Cookie, Proxy-Authorization and X-Api-Key headers never reach the audit record's input
(allow-listed headers only), nor a resigned forward.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess

from helpers import (HUBGATE_BIN, REPO, LoopbackServer, hubgate_env, ident, recv_head,
                     run_hubgate, wait_until)

NOTE_OWN = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}


def everything(hg) -> str:
    """stderr, stdout and the audit file of a stopped hubgate."""
    out = hg.stderr_text() + (hg.workdir / "hubgate.stdout").read_text(errors="replace")
    return out + (hg.audit_path.read_text() if hg.audit_path.exists() else "")


def test_trace_logging_never_shows_the_headers_a_caller_signed(make_fake, make_hubgate):
    """A member signs a Cookie and an API key of another system with its request; hubgate runs
    at RUST_LOG=trace. Neither value reaches stderr, the audit file or the answer."""
    env = {**hubgate_env(), "RUST_LOG": "trace"}
    hg = make_hubgate({"audit": {"include_input": True}}, fake=make_fake(), env=env)
    extra = {"Cookie": "session=MARKCOOKIE7f3", "X-Api-Key": "MARKAPIKEY9c1"}
    resp = hg.buf(NOTE_OWN, who="member", extra_headers=extra)
    assert resp.status == 200, resp.text
    hg.audit_for(resp.headers["x-hubgate-decision-id"])
    hg.stop()
    out = everything(hg)
    assert "TRACE" in out, "trace logging was not on"
    for marker in ("MARKCOOKIE7f3", "MARKAPIKEY9c1"):
        assert marker not in out + resp.text, [line for line in out.splitlines()
                                               if marker in line][:2]


PASTED_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYMARKPASTED"
PASTED_PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvMARKPEMBODYQIBADANBg\n-----END PRIVATE KEY-----"


def config_text(tmp_path, extra: str = "", callers: str | None = None) -> str:
    callers_file = REPO / "config" / "callers.toml"
    if callers is not None:
        callers_file = tmp_path / "callers.toml"
        callers_file.write_text(callers)
    return (f'[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n{extra}'
            f'[policy]\ndir = "{REPO / "policies"}"\n'
            f'[identity]\ncallers = "{callers_file}"\n')


def pasted_callers(secret: str) -> str:
    return ('[[caller]]\nid = "m"\naccount_id = "222222222222"\nrole = "member"\n'
            f'access_key_id = "HGPASTEDCALLER000001"\nsecret_file = {json.dumps(secret)}\n')


def test_a_secret_pasted_where_its_files_path_belongs_is_never_printed(tmp_path, make_fake,
                                                                        make_hubgate):
    """secret_file, server.tls_key and audit.hmac_key_file each given the secret itself, and
    `audit verify` given a key for --key-env and --key-file: each is refused, naming the
    setting, and the secret is printed nowhere; nor in /readyz after a callers reload."""
    from pki import CA
    cert, _key = CA().server_cert(key_kind="ec").write(tmp_path, "server")
    cases = {
        "secret_file": config_text(tmp_path, callers=pasted_callers(PASTED_SECRET)),
        "tls_key": config_text(tmp_path, f'tls_cert = "{cert}"\ntls_key = {json.dumps(PASTED_PEM)}\n'),
        "hmac_key_file": config_text(tmp_path) + (
            f'[audit]\nsink = "stdout"\nhmac_key_file = {json.dumps(PASTED_SECRET)}\n'),
    }
    for name, text in cases.items():
        config = tmp_path / f"{name}.toml"
        config.write_text(text)
        r = run_hubgate("check", "--config", str(config))
        out = r.stdout + r.stderr
        assert r.returncode != 0, (name, out)
        assert "MARKPASTED" not in out and "MARKPEMBODY" not in out, (name, out)
        assert "not shown" in out, (name, out)
    (tmp_path / "audit.ndjson").write_text("")
    for flag in ("--key-env", "--key-file"):
        r = subprocess.run([str(HUBGATE_BIN), "audit", "verify",
                            flag, PASTED_SECRET, str(tmp_path / "audit.ndjson")],
                           env=hubgate_env(), capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        assert r.returncode != 0, (flag, r.stderr)
        assert "MARKPASTED" not in r.stdout + r.stderr, (flag, r.stderr)

    # A reload of a callers file whose secret_file was replaced by the secret: /readyz says
    # why the reload failed, without the secret.
    hg = make_hubgate(fake=make_fake())
    (hg.workdir / "callers.toml").write_text(pasted_callers(PASTED_SECRET))
    hg.proc.send_signal(signal.SIGHUP)
    stale = lambda: hg.admin("/readyz").json()["checks"]["policy"].get("last_reload_error")  # noqa: E731
    error = wait_until(stale, 10, "the callers reload to fail")
    assert "secret_file" in error and "MARKPASTED" not in error, error
    hg.stop()
    assert "MARKPASTED" not in everything(hg)


def test_an_upstream_endpoint_with_a_password_is_refused_and_never_printed(tmp_path):
    """A user and password in upstream.endpoint are never sent; `check` accepted them and
    `serve` logged the endpoint at start. Refused now, and a malformed one is not quoted."""
    for endpoint in ("https://hub:MARKEPPW1@securityhub.us-east-1.amazonaws.com",
                     "https://hub:MARK EPPW2@securityhub.us-east-1.amazonaws.com"):
        config = tmp_path / "hubgate.toml"
        config.write_text(config_text(tmp_path) + f'[upstream]\nendpoint = "{endpoint}"\n')
        r = run_hubgate("check", "--config", str(config))
        out = r.stdout + r.stderr
        assert r.returncode == 2, (endpoint, out)
        assert "upstream.endpoint" in out and "EPPW" not in out, (endpoint, out)


def incomplete_signature_upstream() -> LoopbackServer:
    """Security Hub refusing every call as AWS does an incomplete signature: 400
    IncompleteSignatureException, its message repeating the Authorization header it got."""
    def serve(conn, _n):
        conn.settimeout(5)
        head = recv_head(conn) or b""
        m = re.search(rb"(?im)^authorization: *(.*?)\r?$", head)
        auth = m.group(1).decode() if m else ""
        body = json.dumps({
            "__type": "IncompleteSignatureException",
            "message": "Authorization header requires 'Credential' parameter. "
                       f"Authorization={auth}"}).encode()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                     b"x-amzn-ErrorType: IncompleteSignatureException:http://internal.amazon.com/"
                     b"coral/com.amazon.coral.service/\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    return LoopbackServer(serve)


def test_an_echo_of_hubgates_authorization_header_is_cut(make_hubgate):
    """hubgate signs with long-term keys (no session token); Security Hub answers the lookup
    and a forwarded read with an IncompleteSignatureException echoing the Authorization header.
    Neither the envelopes, the audit records nor the log hold hubgate's signature."""
    up = incomplete_signature_upstream()
    try:
        hg = make_hubgate(upstream_endpoint=f"http://127.0.0.1:{up.port}")
        lookup = hg.buf(NOTE_OWN, who="member")
        read = hg.send("GET", "/accounts", b"", who="admin")
        for resp in (lookup, read):
            assert resp.status == 502, resp.text
            assert "requires 'Credential' parameter" in resp.json()["error"]["message"], resp.text
            hg.audit_for(resp.headers["x-amzn-requestid"])
        hg.stop()
        out = everything(hg) + lookup.text + read.text
        assert "Signature=" not in out, [line for line in out.splitlines()
                                         if "Signature=" in line][:2]
    finally:
        up.close()
