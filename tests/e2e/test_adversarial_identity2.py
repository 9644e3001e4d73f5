"""Adversarial probes of caller identity, second round (review round adv-identity2): how the
callers file reads a secret and reports a bad value, who a refusal names, the demo keys, and
SigV4 replays.

HOLE (fixed): a secret read from `secret_env` kept a trailing newline, while the same secret
  read with `secret_file` had it trimmed. A Kubernetes `secretKeyRef` to a Secret made with
  `kubectl create secret --from-file` (or `echo`) carries the file's newline, so the caller's
  every request was 401 InvalidSignatureException, with nothing saying why. Any secret with
  surrounding whitespace or a control character left (`secret_access_key = "abc "`, a
  `secret_file` with a trailing space or a CR in the middle) loaded too and could not be used by
  an SDK (the AWS CLI's config file strips surrounding whitespace). Now every source trims
  trailing newlines, and what remains with surrounding whitespace or a control character is
  refused at load (`serve`, `check` and a reload), naming the caller and where the secret came
  from, never the secret.

HOLE (fixed): a secret pasted where the callers file wants an environment variable's name
  (`secret_env = "<the secret>"`, read as "the secret, from the environment") or an account id
  was quoted whole in the load's error (`secret_env names wJalr…, which is not set`), which
  reaches hubgate's log, `hubgate check`, and on a reload the log and /readyz. Such a value is
  now named only when it has the shape of what belongs there (an upper-case variable name, a
  mistyped account id of digits); otherwise "(not shown: it could be a secret)".

HOLE (fixed): a refusal after the head named a known access key said nothing of that key
  unless the signature itself failed: a request dated 16 minutes off, one with a session token,
  one whose SignedHeaders left out `x-amz-date` or `host`, one with presigned-URL credentials
  beside the header. Its decision record (whose principal stays unset until a signature is
  proven) said what was wrong but not who tried, so a stolen key replayed after its window, or
  tried with a session token, left no trace of which key. Each such refusal now ends
  "(access key id HG…)" (the key as the callers file lists it; never the signature), keeping
  its x-amzn-ErrorType.

HOLE (fixed): the shipped demo keys were refused (with a non-loopback upstream) by their
  access key ids only. A demo entry copied with its key id renamed (`HGPRODADMIN…`) kept a
  secret that is in the repository, under a key id that is no secret (logs, audit records, 503
  messages name it): anyone who learned it acted as that caller at a real Security Hub. A demo
  secret now counts as a demo key under any key id, at start, in `hubgate check` and on reload.

Held: the same signed request sent twice within its window is judged and forwarded twice, as
  AWS does (README, Deployment model, now says so); moved to another operation's path it is
  401 InvalidSignatureException, and nothing is forwarded.
Held (probed, not kept as tests): a date 14 minutes ahead is accepted, as at AWS; the right
  signature in upper-case hex is 401 InvalidSignatureException; an mtls-mode request's Authorization
  is ignored (README says so), and in sigv4 mode with client_ca the signature names the caller
  (README now says the certificate need not be mapped to it).
Held (first round and earlier suites, not repeated here): UNSIGNED-PAYLOAD, a repeated
  Authorization header or component, presigned credentials beside the header, a session token,
  signed headers without host or x-amz-date, ±20 minutes of skew, SAN over CN and several SANs
  naming different callers, a certificate plus a signature naming another caller.

Every network wait is bounded (helpers.HTTP_TIMEOUT; `hubgate check` runs within 30 s)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest

from helpers import (
    ADMIN_ACCOUNT,
    HUBGATE_BIN,
    MEMBER,
    MEMBER_ACCOUNT,
    MEMBER_SECRET,
    Hubgate,
    assert_envelope,
    hubgate_env,
    ident,
    raw_request,
    sign,
    wait_until,
)

BUF = "/findings/batchupdate"
OWN_NOTE = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}


# ---------------------------------------------------------------------------
# 1. secrets as the callers file reads them


def test_a_secret_env_with_a_trailing_newline_is_the_secret(make_hubgate, seeded_fake):
    """The member's secret comes from an environment variable holding it and a newline (a
    Kubernetes secretKeyRef to a Secret made from a file): its signed requests verify, as they
    do when the same text is read with secret_file."""
    env = {**hubgate_env(), "HG_TEST_MEMBER_SECRET": MEMBER_SECRET + "\n"}
    hg = make_hubgate(fake=seeded_fake, env=env)
    reply = hg.buf(OWN_NOTE, who="member")
    assert reply.status == 200, reply.text
    assert len(seeded_fake.buf_calls()) == 1


def _check(tmp_path, entry: str, env: dict | None = None,
           account: str = MEMBER_ACCOUNT) -> subprocess.CompletedProcess:
    """`hubgate check` of a callers file with one member entry ending in `entry`."""
    hg = Hubgate(tmp_path, "http://127.0.0.1:9", {},
                 callers_toml=f'[[caller]]\nid = "member"\naccount_id = "{account}"\n'
                              f'role = "member"\naccess_key_id = "{MEMBER.access_key}"\n{entry}\n')
    hg.write_config()
    return subprocess.run([str(HUBGATE_BIN), "check", "--config", str(hg.config_path)],
                          capture_output=True, text=True, timeout=30,
                          env={**hubgate_env(), **(env or {})})


SECRET_WITH_SPACE = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("entry,env,source", [
    (f'secret_access_key = "{SECRET_WITH_SPACE} "', None, "secret_access_key"),
    (f'secret_access_key = " {SECRET_WITH_SPACE}"', None, "secret_access_key"),
    ('secret_env = "HG_ID2_SECRET"', {"HG_ID2_SECRET": f"{SECRET_WITH_SPACE}\t\n"},
     "secret_env HG_ID2_SECRET"),
    ('secret_file = "member.secret"', None, "secret_file"),
])
def test_a_secret_no_sdk_can_send_is_refused_at_load(tmp_path, entry, env, source):
    """Whitespace around a secret, or a control character in it, is a paste slip no client
    reproduces: refused naming the caller and the source, the secret never shown."""
    (tmp_path / "member.secret").write_text(f"{SECRET_WITH_SPACE[:20]}\r{SECRET_WITH_SPACE[20:]}\n")
    r = _check(tmp_path, entry, env)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert 'caller "member"' in out and source in out, out
    assert "whitespace" in out or "control character" in out, out
    assert SECRET_WITH_SPACE[:12] not in out and SECRET_WITH_SPACE[-12:] not in out, out


PASTED = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_a_secret_pasted_as_secret_env_is_never_shown_by_a_reload(make_hubgate, seeded_fake):
    """A running hubgate's callers file gets `secret_env = "<the secret>"`: the reload fails
    and keeps the callers in force, and neither the log nor /readyz holds the secret."""
    hg = make_hubgate(fake=seeded_fake)
    callers = hg.workdir / "callers.toml"
    callers.write_text(callers.read_text().replace(
        'secret_env = "HG_TEST_MEMBER_SECRET"', f'secret_env = "{PASTED}"'))
    wait_until(lambda: "callers reload failed" in hg.stderr_text(), 10,
               "the callers reload to fail")
    ready = hg.admin("/readyz").text
    assert "secret_env names (not shown: it could be a secret)" in hg.stderr_text()
    assert PASTED[:12] not in hg.stderr_text() and PASTED[:12] not in ready, ready
    assert hg.buf(OWN_NOTE, who="member").status == 200


def test_a_secret_pasted_as_account_id_is_never_shown_by_check(tmp_path):
    assert _check(tmp_path, 'secret_access_key = "s"').returncode == 0  # the control
    r = _check(tmp_path, 'secret_access_key = "s"', account=PASTED)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "account_id (not shown" in out, out
    assert PASTED[:12] not in out, out


# ---------------------------------------------------------------------------
# 2. who a refusal names


def _member_headers(hg, body: bytes, when=None, extra=None) -> dict:
    return sign(MEMBER, "PATCH", hg.host, BUF, body,
                {"Content-Type": "application/json", **(extra or {})}, when)


@pytest.mark.parametrize("case,error_type,words", [
    ("stale", "InvalidSignatureException", "more than 15 minutes"),
    ("session token", "UnrecognizedClientException", "X-Amz-Security-Token is not accepted"),
    ("x-amz-date unsigned", "UnrecognizedClientException", "SignedHeaders must include"),
])
def test_a_refusal_of_a_known_key_names_the_key_in_its_record(hubgate, case, error_type,
                                                              words):
    body = json.dumps(OWN_NOTE).encode()
    if case == "stale":
        late = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=16)
        headers = _member_headers(hubgate, body, when=late)
    elif case == "session token":
        headers = _member_headers(hubgate, body, extra={"X-Amz-Security-Token": "FwoGZXIvEX"})
    else:
        headers = _member_headers(hubgate, body)
        auth = headers["Authorization"]
        headers["Authorization"] = auth.replace(";x-amz-date", "")
        assert headers["Authorization"] != auth
    reply = raw_request(hubgate.port, "PATCH", BUF, body, headers)
    err = assert_envelope(reply, 401, "UNAUTHENTICATED", error_type)
    message = err["error"]["message"]
    assert words in message and message.endswith(f"(access key id {MEMBER.access_key})"), err
    rec = hubgate.audit_for(reply.headers["x-amzn-requestid"])
    assert rec["error"]["message"] == message and rec["principal"] is None, rec
    signature = headers["Authorization"].split("Signature=")[1]
    assert signature not in json.dumps(rec) and MEMBER_SECRET not in json.dumps(rec), rec
    assert hubgate.fake.requests() == []


def test_a_replay_is_judged_again_but_cannot_be_moved_to_another_operation(hubgate):
    body = json.dumps(OWN_NOTE).encode()
    headers = _member_headers(hubgate, body)
    for _ in range(2):
        assert raw_request(hubgate.port, "PATCH", BUF, body, headers).status == 200
    assert len(hubgate.fake.buf_calls()) == 2
    reply = raw_request(hubgate.port, "PATCH", "/findingsv2/batchupdatev2", body, headers)
    err = assert_envelope(reply, 401, "UNAUTHENTICATED", "InvalidSignatureException")
    assert MEMBER.access_key in err["error"]["message"], err
    assert len(hubgate.fake.buf_calls()) == 2


def test_a_caller_that_signed_for_another_region_is_refused_not_re_signed(hubgate):
    """A boto3 client configured for eu-west-1, pointed at a hubgate that forwards to
    us-east-1. Its signature verified (the region is only a part of the scope), and hubgate
    re-signed the change for us-east-1: a caller's change for one region's Security Hub landed
    in another's, and the record named the caller as if all were well. Now it is refused,
    with the region to sign for, and nothing is sent (found by the session-48 review of the
    left-alone list; the identity review's probe had judged it harmless)."""
    import boto3
    from botocore.config import Config
    client = boto3.session.Session().client(
        "securityhub", endpoint_url=hubgate.url, region_name="eu-west-1",
        aws_access_key_id=MEMBER.access_key, aws_secret_access_key=MEMBER.secret_key,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
    with pytest.raises(client.exceptions.ClientError) as e:
        client.batch_update_findings(**OWN_NOTE)
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 401, err
    assert err["Error"]["Code"] == "UnrecognizedClientException", err
    assert "sign for us-east-1" in err["Error"]["Message"], err
    assert hubgate.fake.buf_calls() == []


def test_a_demo_secret_under_a_renamed_key_id_is_refused_with_a_real_upstream(tmp_path):
    entry = 'secret_access_key = "demo-admin-secret-DO-NOT-USE-IN-PRODUCTION"'
    hg = Hubgate(tmp_path, "https://securityhub.us-east-1.amazonaws.com", {},
                 callers_toml=f'[[caller]]\nid = "ops-admin"\naccount_id = "{ADMIN_ACCOUNT}"\n'
                              f'role = "administrator"\naccess_key_id = "HGPRODADMIN000000001"\n'
                              f'{entry}\n')
    hg.write_config()
    r = subprocess.run([str(HUBGATE_BIN), "check", "--config", str(hg.config_path)],
                       capture_output=True, text=True, timeout=30, env=hubgate_env())
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "the secret of a demo key (under access key id HGPRODADMIN000000001)" in out, out
    assert "DO-NOT-USE" not in out, out
