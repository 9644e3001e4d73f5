"""Adversarial review 55b: "never log a secret" and "lose no audit record", end to end.

Every secret hubgate meets carries the marker CANARY (key ids never do), and every output is
searched for it; every answer a client got is matched with its audit record by decision id
(or by count where the client never got an answer), then `hubgate audit verify` runs.

Probes and what they showed (debug binary, 2026-12-07):

Never log a secret
- test_canaries_reach_no_output_at_trace_level [hubgate+text log, ocsf+json log]: Held.
  Inline / secret_env / secret_file caller secrets, caller signatures and a signed session
  token, hubgate's own secret and AWS_SESSION_TOKEN, the HMAC key, a Redis password in
  redis_url (dead loopback port), RUST_LOG=trace; 200, 403, 401 (bad signature, stale, token on
  a hubgate key, Signature=<secret>), 400, 413, 415, 404, a read; a broken callers reload:
  nothing in stderr, stdout, the audit file, any answer, /metrics, /readyz, /healthz, or
  `audit verify` with the right key, a wrong --key-env and a wrong --key-file.
- test_cli_commands_with_every_secret_configured_print_none: Held (check, eval --input with
  --principal and --current, test, serve/check failing on a bad setting, at trace).
- test_a_malformed_redis_url_is_refused_without_its_password (8 spellings): Held.
- test_an_access_key_id_pasted_together_with_its_secret_is_not_printed (/, space, comma, tab,
  NBSP): Held at check, serve and a reload (/readyz, log).
- test_a_tls_key_that_does_not_parse_is_never_quoted: Held (check, serve, reload, /readyz).
- test_an_upstream_403_echoing_the_headers_leaks_no_session_token: Held (lookup refused with
  an echo of every header, hubgate's session token first; forward refused likewise).
- test_a_container_credential_source_answering_badly_is_never_quoted (4 shapes): Held.
- test_a_broken_shared_credentials_file_is_never_quoted: Held.
- test_a_credential_process_with_unusable_output_is_never_quoted: Held for bad Version,
  bad Expiration, cut JSON. HOLE [FAIL]: a `credential_process` that exits 1 and says on
  stderr "session <token> expired": its stderr is copied into the 502 UPSTREAM_UNAVAILABLE
  envelope every caller gets, the audit record, /readyz `upstream_credentials.error` and the
  log (hubgate::proxy WARN, and aws_config's own WARN lines, shown at the default level).
  Cause: src/upstream.rs:credentials_error passes the provider's error chain verbatim into
  UpstreamError::Credentials (no cut as for Security Hub's messages), and src/cli.rs's log
  filter (never_logged) drops aws_sigv4 only, not aws_config's credential-chain warnings.
  Fixed in stop 55: a failing source is named by kind only, and no aws_* crate's event is
  logged.
- test_a_web_identity_token_refused_by_sts_is_never_quoted: HOLE, same cause: an STS (via
  AWS_ENDPOINT_URL_STS) whose InvalidIdentityToken message repeats the request puts the web
  identity token in both answers, the audit record, /readyz and stderr. Fixed with the above.
- test_a_redis_error_that_repeats_the_auth_arguments_is_never_quoted: Held (/readyz says
  "Password authentication failed", no password).

Lose no audit record
- test_every_kind_of_answer_has_exactly_its_record_in_a_keyed_ocsf_log: Held (200, 403, 400,
  401 x3, 404, 408, 413, 415, 429 from a throttled forward, 503 in-flight cap; each id is one
  OCSF metadata.uid; keyed chain verifies).
- test_h2_streams_reset_while_their_forward_is_in_flight_are_each_recorded: Held.
- test_sigterm_with_h1_h2_in_flight_and_a_half_sent_body_records_every_answer: Held.
- test_a_reload_storm_with_rotating_callers_during_traffic_records_every_answer: Held.
- test_pipelined_requests_closed_unread_leave_no_forward_unrecorded: Held.
- test_requests_paced_then_cut_by_a_short_grace_each_have_their_record: Held (503 STOPPING
  and UPSTREAM_INTERRUPTED recorded, exit 0).
- test_a_head_the_http_layer_refuses_is_answered_with_a_record: HOLE (documented in README's
  Socket limits table as hyper's own answer): a 70 KB target gets hyper's plain 414 and a
  head with "Bad Header: x" a plain 400; neither has an audit record nor the envelope (only
  hubgate_connection_errors_total). Cause: src/server/conn.rs (hyper answers parse errors
  itself; error_kind only counts them). A 100 KB header (one read) was served (401, recorded).
  Fixed since: hubgate takes hyper's refusal over (src/server/conn.rs, proxy::refuse_head):
  it is now answered with the envelope (same status, VALIDATION_ERROR) and recorded before the
  answer; the test asserts both, one record per answer (see also test_refused_heads.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import signal
import socket
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.errors
import pytest

from helpers import (ADMIN_ACCOUNT, HUBGATE_BIN, MEMBER_ACCOUNT, POLICY_DIR, UPSTREAM_KEY,
                     Creds, LoopbackServer, audit_verify, free_port, hubgate_env, ident,
                     raw_request, recv_head, sign, to_toml, wait_until)
from test_adversarial_h2 import Wire
from test_adversarial_http import h2_signed

BUF = "/findings/batchupdate"
MARK = "CANARY"

# -- the canaries -----------------------------------------------------------------------------
C_ADMIN_SECRET = "CANARYadminSecretInline01"
C_MEMBER_SECRET = "CANARYmemberSecretEnv02"
C_FILE_SECRET = "CANARYmember2SecretFile03"
C_CALLER_TOKEN = "CANARYcallerSessionToken04"
C_UP_SECRET = "CANARYupstreamSecret05"
C_UP_TOKEN = "CANARYupstreamSessionToken06"
C_HMAC = "CANARYauditHmacKey07"
C_REDIS = "CANARYredisPassw0rd08"
C_WRONG_KEY = "CANARYwrongVerifyKey09"

ADMIN = Creds("HGREVIEWADMIN0000001", C_ADMIN_SECRET)
MEMBER = Creds("HGREVIEWMEMBER000001", C_MEMBER_SECRET)
MEMBER2 = Creds("HGREVIEWMEMBER000002", C_FILE_SECRET)

CALLERS = f"""\
[[caller]]
id = "admin"
account_id = "{ADMIN_ACCOUNT}"
role = "administrator"
access_key_id = "{ADMIN.access_key}"
secret_access_key = "{ADMIN.secret_key}"

[[caller]]
id = "member"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
access_key_id = "{MEMBER.access_key}"
secret_env = "HG_REVIEW_MEMBER_SECRET"

[[caller]]
id = "member2"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
access_key_id = "{MEMBER2.access_key}"
secret_file = "member2.secret"
"""

NOTE_OWN = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}
SUPPRESS_OWN = {"FindingIdentifiers": [ident("f-own-high")], "Workflow": {"Status": "SUPPRESSED"}}


def canary_env(**extra) -> dict:
    env = hubgate_env()
    env.update({"AWS_SECRET_ACCESS_KEY": C_UP_SECRET, "AWS_SESSION_TOKEN": C_UP_TOKEN,
                "HG_REVIEW_MEMBER_SECRET": C_MEMBER_SECRET, "HG_REVIEW_HMAC": C_HMAC,
                "HG_REVIEW_WRONG": C_WRONG_KEY})
    env.update(extra)
    return env


def unused_port() -> int:
    """A loopback port nothing listens on (never 6379)."""
    while True:
        p = free_port()
        if p != 6379:
            return p


def run_briefly(args, env, secs: float = 3.0) -> str:
    """Run a hubgate command; a `serve` that starts is stopped (SIGTERM) after `secs`.
    Returns stdout + stderr."""
    p = subprocess.Popen([str(HUBGATE_BIN), *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=secs)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
    return out + err


def leaks(texts: dict, extra: list[str] = ()) -> list[str]:
    """Where a canary (or one of `extra`) shows up: ["where: ...context..."]."""
    found = []
    for where, text in texts.items():
        for needle in [MARK, *extra]:
            i = text.find(needle)
            if i >= 0:
                found.append(f"{where}: {needle!r}: ...{text[max(0, i - 120):i + 80]!r}...")
    return found


def start_canary_hubgate(make_fake, make_hubgate, overrides=None, env_extra=None, fake=None):
    fake = fake or make_fake(secret_key=C_UP_SECRET)
    hg = make_hubgate(overrides or {}, fake=fake, env=canary_env(**(env_extra or {})),
                      callers_toml=CALLERS, start=False)
    hg.workdir.mkdir(parents=True, exist_ok=True)
    (hg.workdir / "member2.secret").write_text(C_FILE_SECRET + "\n")
    return hg.start(), fake


def signed(hg, creds, body, method="PATCH", path=BUF, token=None, when=None, ct="application/json"):
    """(headers, signature) for a raw request; a session token is signed along."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    headers = {"Content-Type": ct} if ct else {}
    if token:
        headers["X-Amz-Security-Token"] = token
    h = sign(creds, method, hg.host, path, body, headers, when)
    return h, h["Authorization"].rsplit("Signature=", 1)[1]


def send(hg, creds, body, sigs: list, **kw):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    method, path = kw.pop("method", "PATCH"), kw.pop("path", BUF)
    h, sig = signed(hg, creds, body, method=method, path=path, **kw)
    sigs.append(sig)
    return raw_request(hg.port, method, path, body, h)


def decision_id(resp) -> str:
    return resp.headers.get("x-hubgate-decision-id") or resp.headers.get("x-amzn-requestid")


def record_ids(path, ocsf=False) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.append(r["metadata"]["uid"] if ocsf else r["decision_id"])
    return out


# =============================================================================================
# 1. Never log a secret
# =============================================================================================


@pytest.mark.parametrize("audit_format,log_format", [("hubgate", "text"), ("ocsf", "json")])
def test_canaries_reach_no_output_at_trace_level(make_fake, make_hubgate, audit_format,
                                                 log_format):
    """Every secret at once (inline, env and file caller secrets, the caller's signature and
    session token, hubgate's own secret and session token, the HMAC key, a Redis password
    pointing at a dead loopback port) at RUST_LOG=trace; traffic of every outcome, a broken
    callers reload; stderr, stdout, the audit file, every answer, /metrics, /readyz, /healthz,
    and `audit verify` (right and wrong key) hold none of them."""
    redis_port = unused_port()
    hg, fake = start_canary_hubgate(make_fake, make_hubgate, {
        "server": {"max_body_bytes": 4096},
        "audit": {"format": audit_format, "include_input": True, "hmac_key_env": "HG_REVIEW_HMAC"},
        "log": {"format": log_format},
        "coordination": {"redis_url": f"redis://hubgate:{C_REDIS}@127.0.0.1:{redis_port}/0",
                         "op_timeout_ms": 50, "probe_interval_ms": 100},
    }, env_extra={"RUST_LOG": "trace"})
    sigs: list[str] = []
    answers = []
    stale = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    wrong = Creds(ADMIN.access_key, "CANARYnotTheSecret10")
    cases = [
        (ADMIN, NOTE_OWN, {}, 200),
        (ADMIN, NOTE_OWN, {"token": C_CALLER_TOKEN}, 401),  # hubgate keys take no token
        (MEMBER, SUPPRESS_OWN, {}, 403),
        (MEMBER, SUPPRESS_OWN, {"token": C_CALLER_TOKEN}, 401),
        (MEMBER2, NOTE_OWN, {}, 200),
        (wrong, NOTE_OWN, {"token": C_CALLER_TOKEN}, 401),
        (ADMIN, NOTE_OWN, {"token": C_CALLER_TOKEN, "when": stale}, 401),
        (ADMIN, NOTE_OWN, {"when": stale}, 401),
        (ADMIN, b"{" + b" " * 5000 + b"}", {"token": C_CALLER_TOKEN}, 413),
        (ADMIN, b"{not json", {}, 400),
        (ADMIN, b"{not json", {"token": C_CALLER_TOKEN}, 401),
        (ADMIN, NOTE_OWN, {"ct": "text/plain"}, 415),
        (ADMIN, b"", {"token": C_CALLER_TOKEN, "path": "/no/such/route", "method": "GET",
                      "ct": None}, 404),
        (ADMIN, {"MaxResults": 1}, {"path": "/findings", "method": "POST"}, 200),
        (ADMIN, {"MaxResults": 1}, {"token": C_CALLER_TOKEN, "path": "/findings",
                                    "method": "POST"}, 401),
    ]
    for creds, body, kw, want in cases:
        resp = send(hg, creds, body, sigs, **kw)
        answers.append(resp)
        assert resp.status == want, (want, resp.status, resp.text)
    # an Authorization header whose Signature is the secret itself (a hand-rolled client)
    forged = {"Content-Type": "application/json",
              "Authorization": f"AWS4-HMAC-SHA256 Credential={ADMIN.access_key}/20261207/"
                               f"us-east-1/securityhub/aws4_request, SignedHeaders=host, "
                               f"Signature={C_ADMIN_SECRET}",
              "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
              "X-Amz-Security-Token": C_CALLER_TOKEN}
    answers.append(raw_request(hg.port, "PATCH", BUF, json.dumps(NOTE_OWN).encode(), forged))
    assert answers[-1].status == 401, answers[-1].text
    # a callers reload that fails on a line holding a secret
    (hg.workdir / "callers.toml").write_text(CALLERS.replace(
        f'secret_access_key = "{C_ADMIN_SECRET}"', f'secret_access_key = "{C_ADMIN_SECRET}'))
    hg.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: hg.admin("/readyz").json()["checks"]["policy"]["stale"], 10,
               "the broken callers reload")
    admin = {p: hg.admin(p).text for p in ("/metrics", "/readyz", "/healthz")}
    hg.stop()
    assert hg.proc.returncode == 0, hg.stderr_text()[-2000:]
    right = audit_verify(hg.audit_path, key_env="HG_REVIEW_HMAC", env=canary_env())
    assert right.returncode == 0, right.stdout + right.stderr
    bad_env = audit_verify(hg.audit_path, key_env="HG_REVIEW_WRONG", env=canary_env())
    keyfile = hg.workdir / "wrong.key"
    keyfile.write_text(C_WRONG_KEY)
    bad_file = subprocess.run([str(HUBGATE_BIN), "audit", "verify", str(hg.audit_path),
                               "--key-file", str(keyfile)], env=canary_env(),
                              capture_output=True, text=True, timeout=30)
    assert bad_env.returncode == 1 and bad_file.returncode == 1, bad_env.stdout + bad_file.stdout
    stderr = hg.stderr_text()
    assert "TRACE" in stderr or '"TRACE"' in stderr, "trace logging was not on"
    texts = {"stderr": stderr, "stdout": (hg.workdir / "hubgate.stdout").read_text(),
             "audit": hg.audit_path.read_text(),
             **{f"answer{i}": json.dumps(a.headers) + a.text for i, a in enumerate(answers)},
             **{f"admin{p}": t for p, t in admin.items()},
             "verify": right.stdout + right.stderr + bad_env.stdout + bad_env.stderr
             + bad_file.stdout + bad_file.stderr}
    assert not leaks(texts, sigs + ["Signature="]), leaks(texts, sigs + ["Signature="])[:6]


def test_cli_commands_with_every_secret_configured_print_none(tmp_path, make_fake):
    """`check`, `eval` (with --input), `test`, and a `serve` that fails on a bad setting, run on
    a configuration holding every secret: no output names one."""
    fake = make_fake(secret_key=C_UP_SECRET)
    (tmp_path / "callers.toml").write_text(CALLERS)
    (tmp_path / "member2.secret").write_text(C_FILE_SECRET)
    cfg = {
        "server": {"listen": f"127.0.0.1:{free_port()}", "admin_listen": f"127.0.0.1:{free_port()}"},
        "upstream": {"endpoint": fake.endpoint},
        "identity": {"callers": "callers.toml"},
        "policy": {"dir": str(POLICY_DIR)},
        "coordination": {"redis_url": f"redis://:{C_REDIS}@127.0.0.1:{unused_port()}/0"},
        "audit": {"sink": "file", "path": "audit.ndjson", "hmac_key_env": "HG_REVIEW_HMAC"},
    }
    good = tmp_path / "hubgate.toml"
    good.write_text(to_toml(cfg))
    req = tmp_path / "req.json"
    req.write_text(json.dumps(SUPPRESS_OWN))
    current = tmp_path / "current.json"
    current.write_text(json.dumps({"Findings": []}))
    bad = tmp_path / "bad.toml"
    bad.write_text(to_toml({**cfg, "server": {**cfg["server"], "max_body_bytes": 0}}))
    bad2 = tmp_path / "bad2.toml"
    bad2.write_text(to_toml(cfg) + "\n[coordination]\nfallback_share = 2\n")
    runs = {
        "check": ["check", "--config", str(good)],
        "eval": ["eval", "--config", str(good), "--request", str(req), "--principal", "member",
                 "--input"],
        "eval-current": ["eval", "--config", str(good), "--request", str(req), "--principal",
                         "member2", "--current", str(current), "--input"],
        "test": ["test", "--config", str(good)],
        "serve-bad": ["serve", "--config", str(bad)],
        "serve-dup": ["serve", "--config", str(bad2)],
        "check-bad": ["check", "--config", str(bad)],
    }
    texts = {}
    for name, args in runs.items():
        r = subprocess.run([str(HUBGATE_BIN), *args], env=canary_env(RUST_LOG="trace"),
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        texts[name] = r.stdout + r.stderr
        if name.startswith(("serve", "check-bad")):
            assert r.returncode != 0, (name, texts[name])
    assert not leaks(texts), leaks(texts)


@pytest.mark.parametrize("url", [
    "redis://:{pw}@127.0.0.1:notaport/0",
    "redis://user:{pw}@127.0.0.1:1/notadb",
    "http://user:{pw}@127.0.0.1:1/0",
    "redis://user:{pw}@[::1/0",
    "redis://user:{pw}%zz@127.0.0.1:1/0",
    "redis://user:{pw}@127.0.0.1:1/0?bad=1",
    "redis:// user:{pw}@127.0.0.1:1/0",
    "{pw}",
])
def test_a_malformed_redis_url_is_refused_without_its_password(tmp_path, url):
    """A redis_url that does not parse (or is refused for its form) still holds a password:
    `check` and `serve` refuse it without quoting it."""
    url = url.format(pw=C_REDIS)
    cfg = (f'[server]\nlisten = "127.0.0.1:{free_port()}"\nadmin_listen = "127.0.0.1:{free_port()}"\n'
           f'[policy]\ndir = "{POLICY_DIR}"\n[identity]\ncallers = "callers.toml"\n'
           f'[coordination]\nredis_url = {json.dumps(url)}\n')
    (tmp_path / "callers.toml").write_text("")
    (tmp_path / "hubgate.toml").write_text(cfg)
    texts = {cmd: run_briefly([cmd, "--config", str(tmp_path / "hubgate.toml")],
                              canary_env(RUST_LOG="trace"))
             for cmd in ("check", "serve")}
    assert not leaks(texts), leaks(texts)


@pytest.mark.parametrize("key_id", [
    "HGPASTEDKEY000001/CANARYpastedSecretXx",
    "HGPASTEDKEY000001 CANARYpastedSecretXx",
    "HGPASTEDKEY000001,CANARYpastedSecretXx",
    "HGPASTEDKEY000001\tCANARYpastedSecretXx",
    "HGPASTEDKEY000001:CANARYpastedSecretXx\u00a0",
])
def test_an_access_key_id_pasted_together_with_its_secret_is_not_printed(tmp_path, make_fake,
                                                                         make_hubgate, key_id):
    """`access_key_id = "AKID/secret"` (the two pasted on one line, as `aws configure` shows
    them): refused as a key id no Authorization header can carry, at check, at start and by a
    reload (stderr, /readyz), without printing the secret part."""
    callers = (f'[[caller]]\nid = "p"\naccount_id = "{MEMBER_ACCOUNT}"\nrole = "member"\n'
               f'access_key_id = {json.dumps(key_id)}\nsecret_access_key = "plain-secret-x"\n')
    (tmp_path / "callers.toml").write_text(callers)
    (tmp_path / "hubgate.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\nadmin_listen = "127.0.0.1:{free_port()}"\n'
        f'[policy]\ndir = "{POLICY_DIR}"\n[identity]\ncallers = "callers.toml"\n')
    texts = {}
    for cmd in ("check", "serve"):
        r = subprocess.run([str(HUBGATE_BIN), cmd, "--config", str(tmp_path / "hubgate.toml")],
                           env=canary_env(), capture_output=True, text=True, timeout=20,
                           stdin=subprocess.DEVNULL)
        texts[cmd] = r.stdout + r.stderr
    # a reload that brings the same entry in
    hg = make_hubgate(fake=make_fake())
    (hg.workdir / "callers.toml").write_text(callers)
    hg.proc.send_signal(signal.SIGHUP)
    err = wait_until(lambda: hg.admin("/readyz").json()["checks"]["policy"]["last_reload_error"],
                     10, "the callers reload to fail")
    texts["readyz"] = json.dumps(err)
    hg.stop()
    texts["reload-stderr"] = hg.stderr_text()
    assert not leaks(texts), leaks(texts)


def test_a_tls_key_that_does_not_parse_is_never_quoted(tmp_path, make_fake, make_hubgate):
    """A TLS key file whose PEM body is not a key (a canary in base64's alphabet, or a key
    with a corrupt line): `check` and `serve` refuse it, a reload to it keeps the old key; no
    byte of the file reaches the output, /readyz or the log."""
    from pki import CA
    cert, key = CA().server_cert(key_kind="ec").write(tmp_path, "server")
    real = key.read_text().splitlines()
    bodies = {
        "canary": "-----BEGIN PRIVATE KEY-----\nCANARYpemBodyAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
                  "-----END PRIVATE KEY-----\n",
        "corrupt": "\n".join(real[:2] + ["CANARYcorruptLine!!"] + real[2:]) + "\n",
        "wrongtag": "-----BEGIN CANARY PRIVATE KEY-----\n"
                    + base64.b64encode(b"CANARYinside").decode()
                    + "\n-----END CANARY PRIVATE KEY-----\n",
    }
    texts = {}
    for name, text in bodies.items():
        bad = tmp_path / f"{name}.key"
        bad.write_text(text)
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
                       f'admin_listen = "127.0.0.1:{free_port()}"\ntls_cert = "{cert}"\n'
                       f'tls_key = "{bad}"\n[policy]\ndir = "{POLICY_DIR}"\n'
                       f'[identity]\ncallers = "{tmp_path / "callers.toml"}"\n')
        (tmp_path / "callers.toml").write_text("")
        for cmd in ("check", "serve"):
            r = subprocess.run([str(HUBGATE_BIN), cmd, "--config", str(cfg)], env=canary_env(),
                               capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
            assert r.returncode != 0, (name, cmd, r.stderr)
            texts[f"{name}-{cmd}"] = r.stdout + r.stderr
    # a hubgate with a good key, then the key file replaced by each broken one and reloaded
    hg = make_hubgate({"server": {"tls_cert": str(cert), "tls_key": str(key)}},
                      fake=make_fake(), scheme="https", start=False)
    hg.start(ready_path="/healthz")
    for name, text in bodies.items():
        key.write_text(text)
        hg.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: hg.admin("/readyz").json()["checks"]["tls"]["last_reload_error"], 10,
                   "the key reload to fail")
        texts[f"readyz-{name}"] = hg.admin("/readyz").text
    hg.stop()
    texts["serve-stderr"] = hg.stderr_text()
    assert not leaks(texts), leaks(texts)


def echo_upstream(status=403):
    """An upstream answering every call with `status` and an AWS-shaped error whose message
    repeats every header it received (as some proxies and WAFs in front of AWS do)."""
    def answer(conn, _n):
        head = recv_head(conn)
        if head is None:
            return
        text = head.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        lines = text.split("\r\n")[1:]
        msg = "Request forbidden by the gateway; request headers were: " + " | ".join(lines)
        body = json.dumps({"__type": "AccessDeniedException", "message": msg,
                           "Message": msg}).encode()
        conn.sendall(b"HTTP/1.1 %d Forbidden\r\nContent-Type: application/json\r\n"
                     b"x-amzn-RequestId: echo-req-1\r\nx-amzn-ErrorType: AccessDeniedException\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (status, len(body)) + body)
    return LoopbackServer(answer)


def test_an_upstream_403_echoing_the_headers_leaks_no_session_token(make_hubgate):
    """Security Hub (or a gateway before it) refuses hubgate's own lookup with a 403 whose
    message repeats the request's headers, hubgate's session token among them (before any
    `Authorization=`). hubgate's envelope, the audit record and the debug log repeat the
    message: none may carry the token or the signature."""
    up = echo_upstream()
    try:
        hg = make_hubgate({"audit": {"include_input": True}},
                          upstream_endpoint=f"http://127.0.0.1:{up.port}", callers_toml=CALLERS,
                          env=canary_env(RUST_LOG="debug"), start=False)
        hg.workdir.mkdir(parents=True, exist_ok=True)
        (hg.workdir / "member2.secret").write_text(C_FILE_SECRET)
        hg.start()
        sigs: list[str] = []
        lookup = send(hg, MEMBER, NOTE_OWN, sigs)  # needs a lookup: hubgate's own call refused
        assert lookup.status >= 400, lookup.text
        hg.audit_for(decision_id(lookup))
        fwd = send(hg, ADMIN, NOTE_OWN, sigs)  # forwarded whole; its answer is Security Hub's
        assert fwd.status == 403, fwd.text
        hg.audit_for(decision_id(fwd))
        hg.stop()
    finally:
        up.close()
    texts = {"lookup-answer": lookup.text, "audit": hg.audit_path.read_text(),
             "stderr": hg.stderr_text()}
    assert "forbidden by the gateway" in texts["audit"] + texts["lookup-answer"], texts
    assert not leaks(texts, ["Signature="]), leaks(texts, ["Signature="])[:4]


# =============================================================================================
# 2. Lose no audit record
# =============================================================================================


def assert_records_match(hg, answered_ids: list[str], ocsf=False, extra_unanswered=0,
                         key_env=None, env=None):
    """Every answered id has exactly one record; the file holds no more than those plus
    `extra_unanswered`; the chain verifies."""
    ids = record_ids(hg.audit_path, ocsf)
    missing = [i for i in answered_ids if i not in ids]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not missing, f"{len(missing)} answers without a record: {missing[:5]}"
    assert not dup, f"records written twice: {dup[:5]}"
    assert len(ids) <= len(answered_ids) + extra_unanswered, (len(ids), len(answered_ids))
    v = audit_verify(hg.audit_path, key_env=key_env, env=env)
    assert v.returncode == 0, v.stdout + v.stderr
    return ids


def test_every_kind_of_answer_has_exactly_its_record_in_a_keyed_ocsf_log(make_fake,
                                                                         make_hubgate):
    """200, 403, 400, 401 (bad signature, stale, unknown key), 404, 413, 415, 408, 429 (Security
    Hub throttled the forward) and 503 (in-flight cap) answers: each answer's decision id is the
    metadata.uid of exactly one OCSF event, and the keyed chain verifies."""
    hg, fake = start_canary_hubgate(make_fake, make_hubgate, {
        "server": {"max_body_bytes": 4096, "body_read_timeout_ms": 600, "max_in_flight": 2,
                   "max_in_flight_per_caller": 2},
        "audit": {"format": "ocsf", "hmac_key_env": "HG_REVIEW_HMAC"},
        "quota": {"max_wait_ms": 300},
    })
    sigs: list[str] = []
    answered: list[tuple[int, str]] = []

    def note(resp):
        answered.append((resp.status, decision_id(resp)))
        return resp

    stale = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    note(send(hg, ADMIN, NOTE_OWN, sigs))
    note(send(hg, MEMBER, SUPPRESS_OWN, sigs))
    note(send(hg, MEMBER2, b"{", sigs))
    note(send(hg, Creds(ADMIN.access_key, "nope"), NOTE_OWN, sigs))
    note(send(hg, ADMIN, NOTE_OWN, sigs, when=stale))
    note(send(hg, Creds("HGNOSUCHKEY000000001", "x"), NOTE_OWN, sigs))
    note(send(hg, ADMIN, b"", sigs, method="GET", path="/nope", ct=None))
    note(send(hg, ADMIN, b"{" + b" " * 5000 + b"}", sigs))
    note(send(hg, ADMIN, NOTE_OWN, sigs, ct="text/plain"))
    # 408: the head, half the body, then silence
    raw = json.dumps(NOTE_OWN).encode()
    h, _ = signed(hg, ADMIN, raw)
    head = f"PATCH {BUF} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    head += f"Content-Length: {len(raw)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", hg.port), timeout=5) as s:
        s.sendall(head.encode() + raw[:5])
        got = recv_head(s) or b""
        while b"}" not in got.split(b"\r\n\r\n", 1)[-1]:
            more = s.recv(65536)
            if not more:
                break
            got += more
    status = int(got.split(b" ", 2)[1]) if got else 0
    rid = [ln.split(b":", 1)[1].strip().decode() for ln in got.split(b"\r\n")
           if ln.lower().startswith(b"x-amzn-requestid:")]
    assert status == 408 and rid, got[:300]
    answered.append((status, rid[0]))
    # 429: Security Hub throttles the forward (and its retries, if any)
    fake.throttle_next(BatchUpdateFindings=20)
    r = note(send(hg, ADMIN, NOTE_OWN, sigs))
    fake.throttle_next(BatchUpdateFindings=0)
    assert r.status == 429, r.text
    # 503: the in-flight cap, with a slow Security Hub
    fake.configure(delay_ms=800)
    results = []
    threads = [threading.Thread(target=lambda: results.append(send(hg, ADMIN, NOTE_OWN, sigs)))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    fake.configure(delay_ms=0)
    for r in results:
        note(r)
    statuses = sorted(s for s, _ in answered)
    assert 503 in statuses, statuses
    assert {200, 400, 401, 403, 404, 408, 413, 415, 429, 503} <= set(statuses), statuses
    assert all(i for _, i in answered), answered
    hg.stop()
    assert_records_match(hg, [i for _, i in answered], ocsf=True, key_env="HG_REVIEW_HMAC",
                         env=canary_env())


def h2_open(hg):
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    s = socket.create_connection(("127.0.0.1", hg.port), timeout=10)
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return conn, s


def test_h2_streams_reset_while_their_forward_is_in_flight_are_each_recorded(make_fake,
                                                                              make_hubgate):
    """Six h2 streams with whole bodies, Security Hub slow; once all six reached Security Hub
    the client resets three (RST_STREAM CANCEL) and closes the connection. Each forwarded
    request has one record (forwarded, or outcome_unknown), and the chain verifies."""
    fake = make_fake()
    fake.configure(delay_ms=1200)
    hg = make_hubgate(fake=fake)
    body = json.dumps({"FindingIdentifiers": [ident("f-admin")],
                       "Note": {"Text": "h2", "UpdatedBy": "u"}}).encode()
    from helpers import ADMIN as HADMIN
    conn, s = h2_open(hg)
    sids = [1, 3, 5, 7, 9, 11]
    for sid in sids:
        conn.send_headers(sid, h2_signed(hg, body, creds=HADMIN), end_stream=False)
        conn.send_data(sid, body, end_stream=True)
    s.sendall(conn.data_to_send())
    wait_until(lambda: len(fake.buf_calls()) == 6, 10, "six forwards at Security Hub")
    for sid in sids[:3]:
        conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    s.sendall(conn.data_to_send())
    s.close()
    wait_until(lambda: len(hg.audit_records()) >= 6, 10, "six records")
    time.sleep(1.5)
    recs = hg.audit_records()
    assert len(recs) == 6, [(r["status"], r.get("error")) for r in recs]
    assert all(r["forwarded"] or r.get("outcome_unknown") for r in recs), recs
    hg.stop()
    assert_records_match(hg, [r["decision_id"] for r in recs])


def test_sigterm_with_h1_h2_in_flight_and_a_half_sent_body_records_every_answer(make_fake,
                                                                               make_hubgate):
    """SIGTERM while four HTTP/1 forwards and two h2 forwards wait on a slow Security Hub and a
    third client is half-way through its body: every answer a client got (200s, and the
    half-sent body's refusal) has its record; hubgate exits 0 and the chain verifies."""
    fake = make_fake()
    fake.configure(delay_ms=1500)
    hg = make_hubgate({"server": {"shutdown_grace_ms": 5000}}, fake=fake)
    from helpers import ADMIN as HADMIN
    body = json.dumps({"FindingIdentifiers": [ident("f-admin")],
                       "Note": {"Text": "stop", "UpdatedBy": "u"}}).encode()
    results = []

    def h1():
        try:
            results.append(hg.send("PATCH", BUF, body, creds=HADMIN))
        except OSError as e:  # the connection closed without an answer
            results.append(e)

    threads = [threading.Thread(target=h1) for _ in range(4)]
    for t in threads:
        t.start()
    conn, s = h2_open(hg)
    for sid in (1, 3):
        conn.send_headers(sid, h2_signed(hg, body, creds=HADMIN), end_stream=False)
        conn.send_data(sid, body, end_stream=True)
    s.sendall(conn.data_to_send())
    # the half-sent body
    h = sign(HADMIN, "PATCH", hg.host, BUF, body, {"Content-Type": "application/json"})
    head = f"PATCH {BUF} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    slow = socket.create_connection(("127.0.0.1", hg.port), timeout=10)
    slow.sendall(head.encode() + body[:7])
    wait_until(lambda: len(fake.buf_calls()) == 6, 10, "six forwards at Security Hub")
    hg.proc.send_signal(signal.SIGTERM)
    wire = Wire(s)
    wire.read(lambda w: {1, 3} <= set(w.status), timeout=10)
    h2ids = [w.get("x-hubgate-decision-id") or w.get("x-amzn-requestid")
             for w in wire.headers.values()]
    slow_answer = b""
    try:
        slow.settimeout(8)
        while True:
            chunk = slow.recv(65536)
            if not chunk:
                break
            slow_answer += chunk
    except OSError:
        pass
    slow.close()
    for t in threads:
        t.join(15)
    s.close()
    hg.proc.wait(15)
    assert hg.proc.returncode == 0, hg.stderr_text()[-2000:]
    assert [getattr(r, "status", r) for r in results] == [200] * 4, results
    assert len(h2ids) == 2 and all(h2ids), (wire.status, wire.goaways, wire.resets)
    answered = [decision_id(r) for r in results] + h2ids
    if slow_answer:
        rid = [ln.split(b":", 1)[1].strip().decode() for ln in slow_answer.split(b"\r\n")
               if ln.lower().startswith(b"x-amzn-requestid:")]
        assert rid, slow_answer[:300]
        answered += rid
    assert_records_match(hg, answered, extra_unanswered=1)


def test_a_reload_storm_with_rotating_callers_during_traffic_records_every_answer(
        make_fake, make_hubgate):
    """Four clients send notes while the callers file is rewritten (member2's secret rotated,
    the file broken, restored) and SIGHUP sent 15 times: each 200/401/403 answer has exactly one
    record, nothing is recorded twice, and the chain verifies."""
    hg, fake = start_canary_hubgate(make_fake, make_hubgate,
                                    {"policy": {"watch_interval_ms": 0}})
    stop = threading.Event()
    answers = []
    lock = threading.Lock()

    def client(creds):
        while not stop.is_set():
            r = hg.send("PATCH", BUF, NOTE_OWN, creds=creds)
            with lock:
                answers.append(r)

    threads = [threading.Thread(target=client, args=(c,)) for c in (ADMIN, MEMBER, MEMBER2,
                                                                     MEMBER2)]
    for t in threads:
        t.start()
    try:
        for i in range(15):
            if i % 3 == 0:
                (hg.workdir / "member2.secret").write_text("rotated-secret-x" + str(i))
            elif i % 3 == 1:
                (hg.workdir / "callers.toml").write_text(CALLERS + "[[caller\n")
            else:
                (hg.workdir / "callers.toml").write_text(CALLERS)
                (hg.workdir / "member2.secret").write_text(C_FILE_SECRET)
            hg.proc.send_signal(signal.SIGHUP)
            time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    statuses = {r.status for r in answers}
    assert statuses <= {200, 401, 403}, statuses
    assert 200 in statuses and len(answers) > 20, (statuses, len(answers))
    hg.stop()
    assert hg.proc.returncode == 0
    assert_records_match(hg, [decision_id(r) for r in answers], key_env=None)
    # no forward without its record
    fwd = [r for r in hg.audit_records() if r["forwarded"] or r.get("outcome_unknown")]
    assert len(fwd) == len(fake.buf_calls()), (len(fwd), len(fake.buf_calls()))


def test_pipelined_requests_closed_unread_leave_no_forward_unrecorded(make_fake, make_hubgate):
    """Eight pipelined notes on one HTTP/1 connection, the connection shut right after the
    last byte, never read: whatever reached Security Hub has a record, each record is one
    request, and the chain verifies."""
    fake = make_fake()
    fake.configure(delay_ms=100)
    hg = make_hubgate(fake=fake)
    from helpers import ADMIN as HADMIN
    raw = b""
    for i in range(8):
        body = json.dumps({"FindingIdentifiers": [ident("f-admin")],
                           "Note": {"Text": f"p{i}", "UpdatedBy": "u"}}).encode()
        h = sign(HADMIN, "PATCH", hg.host, BUF, body, {"Content-Type": "application/json"})
        raw += (f"PATCH {BUF} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
                + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", hg.port), timeout=5) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        time.sleep(0.15)
    time.sleep(2)
    hg.stop()
    recs = hg.audit_records()
    fwd = [r for r in recs if r["forwarded"] or r.get("outcome_unknown")]
    assert len(fwd) == len(fake.buf_calls()), (len(fwd), len(fake.buf_calls()),
                                                [(r["status"], r.get("error")) for r in recs])
    ids = [r["decision_id"] for r in recs]
    assert len(ids) == len(set(ids)) and len(ids) <= 8, ids
    v = audit_verify(hg.audit_path)
    assert v.returncode == 0, v.stdout + v.stderr


def test_a_head_the_http_layer_refuses_is_answered_with_a_record(make_fake, make_hubgate):
    """A request whose target is over hyper's URI limit (414) or whose head does not parse (a
    header name with a space: 400) is refused by the HTTP layer before any request exists. An
    answer a client got must have its record ("one record per request, ... including requests
    refused before routing"), and be the error envelope: hubgate answers in hyper's place. A
    100 KB header arriving in one read is accepted, and gets hubgate's ordinary 401."""
    fake = make_fake()
    hg = make_hubgate(fake=fake)
    got = []
    for name, line, want in [("uri", f"GET /{'a' * 70_000} HTTP/1.1\r\n", 414),
                             ("bad-header", f"PATCH {BUF} HTTP/1.1\r\nBad Header: x\r\n", 400),
                             ("big-header", f"PATCH {BUF} HTTP/1.1\r\nX-Pad: {'a' * 100_000}\r\n",
                              401)]:
        with socket.create_connection(("127.0.0.1", hg.port), timeout=5) as s:
            s.sendall((line + f"Host: {hg.host}\r\nContent-Length: 0\r\n\r\n").encode())
            head = recv_head(s) or b""
            head_part, _, body = head.partition(b"\r\n\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (ln.partition(":") for ln in head_part.decode("latin-1").split("\r\n")[1:])}
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        assert head.startswith(b"HTTP/1.1 %d " % want), (name, head[:300])
        assert len(body) == length, (name, head[:300], body)
        envelope = json.loads(body)
        assert envelope["success"] is False, envelope
        rid = headers.get("x-amzn-requestid")
        assert rid and envelope["error"]["request_id"] == rid, (name, headers, envelope)
        if want != 401:
            assert envelope["error"]["code"] == "VALIDATION_ERROR", envelope
            assert headers.get("x-amzn-errortype") == "InvalidInputException", headers
            assert headers.get("connection") == "close", headers
            assert envelope["error"]["message"].startswith(
                "the request head could not be read: "), envelope
        else:
            assert envelope["error"]["code"] == "UNAUTHENTICATED", envelope
        got.append((name, want, rid, envelope["error"]["code"]))
    time.sleep(0.5)
    hg.stop()
    recs = hg.audit_records()
    assert len(recs) == len(got), ([g[:2] for g in got], [(r["status"], r["error"]) for r in recs])
    by_id = {r["decision_id"]: r for r in recs}
    assert set(by_id) == {rid for _, _, rid, _ in got}, (list(by_id), got)
    for name, want, rid, code in got:
        rec = by_id[rid]
        assert rec["status"] == want and rec["error"]["code"] == code, (name, rec)
        assert rec["forwarded"] is False, (name, rec)
    assert fake.buf_calls() == []
    v = audit_verify(hg.audit_path)
    assert v.returncode == 0, v.stdout + v.stderr


# =============================================================================================
# 1b. Secrets in hubgate's own credential chain, when a source answers badly
# =============================================================================================


def http_answer(status: int, body: bytes, ctype: str = "application/json") -> bytes:
    return (b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, ctype.encode(), len(body)) + body)


def credential_texts(hg, sends=2) -> dict:
    """Answers of a few requests, /readyz, /metrics, then (stopped) stderr and the audit file."""
    texts = {}
    for i in range(sends):
        from helpers import MEMBER as HMEMBER
        r = hg.send("PATCH", BUF, NOTE_OWN, creds=HMEMBER)
        texts[f"answer{i}"] = r.text
    texts["readyz"] = hg.admin("/readyz").text
    texts["metrics"] = hg.admin("/metrics").text
    time.sleep(0.3)
    hg.stop()
    texts["stderr"] = hg.stderr_text()
    texts["audit"] = hg.audit_path.read_text() if hg.audit_path.exists() else ""
    return texts


@pytest.mark.parametrize("how", ["bad-expiration", "not-json", "error-echo", "no-key-id"])
def test_a_container_credential_source_answering_badly_is_never_quoted(make_fake, make_hubgate,
                                                                        how):
    """The container credentials endpoint answers with the secret and token in a document
    hubgate cannot use (an Expiration that is no date, JSON cut short, an error body that
    repeats them, no AccessKeyId): the reason may reach /readyz, the 502 envelope and the debug
    log; the secret and token may not."""
    doc = {"AccessKeyId": UPSTREAM_KEY, "SecretAccessKey": C_UP_SECRET, "Token": C_UP_TOKEN,
           "Expiration": "2099-01-01T00:00:00Z"}
    if how == "bad-expiration":
        answer = http_answer(200, json.dumps({**doc, "Expiration": "CANARYnotadate"}).encode())
    elif how == "not-json":
        answer = http_answer(200, json.dumps(doc).encode()[:-12])
    elif how == "no-key-id":
        answer = http_answer(200, json.dumps({k: v for k, v in doc.items()
                                              if k != "AccessKeyId"}).encode())
    else:
        answer = http_answer(500, json.dumps({"code": "InternalError",
                                              "message": f"cached credentials {json.dumps(doc)}"}
                                             ).encode())

    def serve(conn, _n):
        if recv_head(conn) is not None:
            conn.sendall(answer)

    from helpers import CredentialEndpoint
    endpoint = CredentialEndpoint(serve)
    try:
        hg = make_hubgate({}, fake=make_fake(), env={**endpoint.env(), "RUST_LOG": "debug"},
                          start=False)
        hg.start(ready_path="/healthz")
        texts = credential_texts(hg)
    finally:
        endpoint.close()
    assert not leaks(texts), leaks(texts)[:4]


def test_a_broken_shared_credentials_file_is_never_quoted(tmp_path, make_fake, make_hubgate):
    """hubgate's credentials from a profile file with a line the parser refuses next to the
    secret (and a secret on the broken line): the error in /readyz, envelopes and the debug
    log names the file, never a line's text."""
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = HUBGATEUPSTREAM00001\n"
                     f"aws_secret_access_key {C_UP_SECRET}\n"
                     f"aws_session_token = {C_UP_TOKEN}\n[broken\nCANARYstray = {C_UP_SECRET}\n")
    env = {k: v for k, v in hubgate_env().items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update({"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_PROFILE": "default",
                "RUST_LOG": "debug"})
    hg = make_hubgate({}, fake=make_fake(), env=env, start=False)
    hg.start(ready_path="/healthz")
    texts = credential_texts(hg)
    assert not leaks(texts), leaks(texts)[:4]


def test_a_web_identity_token_refused_by_sts_is_never_quoted(tmp_path, make_fake, make_hubgate):
    """Web identity (EKS): the token file holds a canary, and STS (a loopback echo reached via
    AWS_ENDPOINT_URL_STS) refuses it with an error that repeats the request it got, token
    included. /readyz, envelopes and the debug log must not carry the token."""
    def serve(conn, _n):
        data = recv_head(conn)
        if data is None:
            return
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            more = conn.recv(65536)
            if not more:
                break
            rest += more
        msg = ("Invalid identity token in request: " + rest.decode(errors="replace")).replace(
            "&", "&amp;").replace("<", "&lt;")
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>"
                f"<Message>{msg}</Message></Error><RequestId>r1</RequestId></ErrorResponse>")
        conn.sendall(http_answer(400, body.encode(), "text/xml"))

    sts = LoopbackServer(serve)
    token = tmp_path / "token"
    token.write_text("CANARYwebIdentityToken11")
    env = {k: v for k, v in hubgate_env().items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update({"AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
                "AWS_ROLE_ARN": "arn:aws:iam::111111111111:role/hubgate",
                "AWS_ROLE_SESSION_NAME": "hubgate", "AWS_ENDPOINT_URL_STS":
                f"http://127.0.0.1:{sts.port}", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{sts.port}",
                "RUST_LOG": "debug"})
    try:
        hg = make_hubgate({}, fake=make_fake(), env=env, start=False)
        hg.start(ready_path="/healthz")
        texts = credential_texts(hg)
    finally:
        sts.close()
    assert sts.connections >= 1, "STS was never asked: the probe did not reach the echo"
    assert not leaks(texts), sorted({x.split(":")[0] for x in leaks(texts)})


@pytest.mark.parametrize("output", [
    '{"Version": 2, "AccessKeyId": "HUBGATEUPSTREAM00001", "SecretAccessKey": "%s", '
    '"SessionToken": "%s"}',
    '{"Version": 1, "AccessKeyId": "HUBGATEUPSTREAM00001", "SecretAccessKey": "%s", '
    '"SessionToken": "%s", "Expiration": "CANARYnotadate"}',
    '{"Version": 1, "AccessKeyId": "HUBGATEUPSTREAM00001", "SecretAccessKey": "%s", '
    '"SessionToken": "%s"',
    'FAIL',
])
def test_a_credential_process_with_unusable_output_is_never_quoted(tmp_path, make_fake,
                                                                    make_hubgate, output):
    """A profile's `credential_process` prints the secret and token in output hubgate cannot
    use (an unknown Version, an Expiration that is no date, JSON cut short). The reason may be
    told; the secret and the token may not reach the envelope, the record, /readyz or the log."""
    script = tmp_path / "creds.sh"
    if output == "FAIL":  # a helper that fails, saying what it had on stdout and stderr
        script.write_text(f"#!/bin/sh\necho 'cached secret {C_UP_SECRET}'\n"
                          f"echo 'session {C_UP_TOKEN} expired' >&2\nexit 1\n")
    else:
        script.write_text("#!/bin/sh\ncat <<'EOF'\n" + output % (C_UP_SECRET, C_UP_TOKEN)
                          + "\nEOF\n")
    script.chmod(0o755)
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\ncredential_process = {script}\n")
    env = {k: v for k, v in hubgate_env().items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update({"AWS_CONFIG_FILE": str(config), "AWS_PROFILE": "default", "RUST_LOG": "debug"})
    hg = make_hubgate({}, fake=make_fake(), env=env, start=False)
    hg.start(ready_path="/healthz")
    texts = credential_texts(hg)
    assert "credential" in texts["answer0"].lower() or "credential" in texts["readyz"].lower(), \
        texts["answer0"]
    assert not leaks(texts), sorted({x.split(":")[0] for x in leaks(texts)})


# =============================================================================================
# 2b. Pacing, then a stop whose grace runs out while requests wait for quota
# =============================================================================================


def test_requests_paced_then_cut_by_a_short_grace_each_have_their_record(make_fake,
                                                                          make_hubgate):
    """hubgate's own pacing of BatchUpdateFindings (1/s, burst 3) with 10 notes at once: some
    are forwarded, some wait for quota; SIGTERM with a 400 ms grace cuts the waiting ones (503
    STOPPING) and a forward left on a slow Security Hub (503 UPSTREAM_INTERRUPTED). Every answer
    a client got has exactly one record, no forward is unrecorded, and the chain verifies."""
    fake = make_fake()
    hg = make_hubgate({"server": {"shutdown_grace_ms": 400},
                       "quota": {"max_wait_ms": 8000,
                                 "limits": {"BatchUpdateFindings": {"rate": 1, "burst": 3}}}},
                      fake=fake)
    from helpers import ADMIN as HADMIN
    results = []
    lock = threading.Lock()

    def one(i):
        body = json.dumps({"FindingIdentifiers": [ident("f-admin")],
                           "Note": {"Text": f"paced {i}", "UpdatedBy": "u"}}).encode()
        try:
            r = hg.send("PATCH", BUF, body, creds=HADMIN)
        except OSError as e:
            r = e
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    wait_until(lambda: len(fake.buf_calls()) >= 2, 10, "the burst to go out")
    fake.configure(delay_ms=3000)  # the next forward hangs past the grace
    wait_until(lambda: len(fake.buf_calls()) >= 3, 10, "one more forward to go out")
    time.sleep(0.2)
    hg.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(20)
    hg.proc.wait(20)
    fake.configure(delay_ms=0)
    cut = [r for r in results if isinstance(r, Exception)]
    assert not cut, f"{len(cut)} clients cut off without an answer: {cut[:2]}"
    statuses = sorted(r.status for r in results)
    assert 503 in statuses, statuses
    answered = [decision_id(r) for r in results]
    assert_records_match(hg, answered)
    recs = hg.audit_records()
    fwd = [r for r in recs if r["forwarded"] or r.get("outcome_unknown")]
    assert len(fwd) == len(fake.buf_calls()), (len(fwd), len(fake.buf_calls()))
    assert hg.proc.returncode == 0, hg.stderr_text()[-1500:]


def test_a_redis_error_that_repeats_the_auth_arguments_is_never_quoted(make_fake, make_hubgate):
    """A Redis (or a proxy before it) without AUTH answers as Redis 6+ does for an unknown
    command: `-ERR unknown command 'AUTH', with args beginning with: 'hubgate' '<password>'`.
    The reason reaches /readyz (`coordination.last_error`) and the log; the password may not."""
    def commands(buf: bytes):
        """Whole RESP commands at the start of buf: (list of arg lists, rest)."""
        out = []
        while buf.startswith(b"*") and b"\r\n" in buf:
            n_line, rest = buf.split(b"\r\n", 1)
            args = []
            for _ in range(int(n_line[1:])):
                if b"\r\n" not in rest:
                    return out, buf
                size_line, rest = rest.split(b"\r\n", 1)
                size = int(size_line[1:])
                if len(rest) < size + 2:
                    return out, buf
                args.append(rest[:size].decode(errors="replace"))
                rest = rest[size + 2:]
            out.append(args)
            buf = rest
        return out, buf

    def serve(conn, _n):
        conn.settimeout(5)
        buf = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            cmds, buf = commands(buf + chunk)
            for args in cmds:
                quoted = " ".join(f"'{a}'" for a in args[1:3])
                conn.sendall(f"-ERR unknown command '{args[0]}', with args beginning with: "
                             f"{quoted}\r\n".encode())

    redis = LoopbackServer(serve)
    try:
        hg = make_hubgate({"coordination": {
            "redis_url": f"redis://hubgate:{C_REDIS}@127.0.0.1:{redis.port}/0",
            "op_timeout_ms": 200, "probe_interval_ms": 100}},
            fake=make_fake(secret_key=C_UP_SECRET), env=canary_env(RUST_LOG="debug"), start=False)
        hg.start(ready_path="/healthz")
        wait_until(lambda: redis.connections >= 1, 10, "hubgate to reach the fake Redis")
        time.sleep(0.5)
        texts = credential_texts(hg)
    finally:
        redis.close()
    assert "authentication failed" in texts["readyz"].lower(), texts["readyz"]
    assert not leaks(texts), sorted({x.split(":")[0] for x in leaks(texts)})
