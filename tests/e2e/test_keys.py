"""`hubgate keys new`: a caller key pair and its callers-file entry, which a running hubgate
picks up (policy.watch_interval_ms) without a restart, and forgets when it is removed."""

from __future__ import annotations

import re
import time
import tomllib

import pytest
from botocore.exceptions import ClientError

from helpers import MEMBER_ACCOUNT, Creds, ident, run_hubgate, wait_until

KEY_ID = re.compile(r"^access_key_id\s*=\s*(\S+)$", re.M)
SECRET = re.compile(r"^secret_access_key\s*=\s*(\S+)$", re.M)
SUPPRESS = {"Workflow": {"Status": "SUPPRESSED"},
            "Note": {"Text": "accepted risk, SEC-123", "UpdatedBy": "e2e"}}
NOTE = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "soar"}}


def new_key(id_="soar", account=MEMBER_ACCOUNT, role="member"):
    """Run `hubgate keys new`; return (key id, secret, callers-file entry text)."""
    res = run_hubgate("keys", "new", "--id", id_, "--account", account, "--role", role)
    assert res.returncode == 0, res.stderr
    key, secret = KEY_ID.search(res.stdout), SECRET.search(res.stdout)
    assert key and secret, res.stdout
    entry = res.stdout[res.stdout.index("[[caller]]"):]
    return key.group(1), secret.group(1), entry


def test_keys_new_prints_a_key_a_secret_and_the_entry():
    key, secret, entry = new_key()
    assert len(key) == 20 and key.startswith("HG"), key
    assert re.fullmatch(r"HG[A-Z2-7]{18}", key), key
    assert len(secret) == 40 and re.fullmatch(r"[A-Za-z0-9+/]{40}", secret), secret
    parsed = tomllib.loads(entry)["caller"]
    assert parsed == [{"id": "soar", "account_id": MEMBER_ACCOUNT, "role": "member",
                       "access_key_id": key, "secret_access_key": secret}], parsed

    key2, secret2, _ = new_key()
    assert key2 != key and secret2 != secret


@pytest.mark.parametrize("args", [
    ["--id", "soar", "--account", "12345", "--role", "member"],
    ["--id", "soar", "--account", MEMBER_ACCOUNT, "--role", "root"],
    ["--id", 'so"ar', "--account", MEMBER_ACCOUNT, "--role", "member"],
])
def test_keys_new_refuses_bad_arguments(args):
    res = run_hubgate("keys", "new", *args)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "secret_access_key" not in res.stdout


def test_a_new_key_works_without_restart_and_stops_when_removed(make_hubgate, seeded_fake):
    hg = make_hubgate({"policy": {"watch_interval_ms": 100}}, fake=seeded_fake)
    key, secret, entry = new_key()
    creds = Creds(key, secret)
    assert hg.buf(NOTE, creds=creds).status == 401

    callers = hg.workdir / "callers.toml"
    original = callers.read_text()
    callers.write_text(original + "\n" + entry)
    wait_until(lambda: hg.buf(NOTE, creds=creds).status != 401, 10,
               "the appended key to be accepted")

    client = hg.client(creds=creds)
    resp = client.batch_update_findings(**NOTE)
    assert [f["Id"] for f in resp["ProcessedFindings"]] == ["f-own-high"]
    rec = hg.audit_for(resp["ResponseMetadata"]["HTTPHeaders"]["x-hubgate-decision-id"])
    assert rec["principal"] == {"id": "soar", "account_id": MEMBER_ACCOUNT, "role": "member"}
    with pytest.raises(ClientError) as e:
        client.batch_update_findings(FindingIdentifiers=[ident("f-own-high")], **SUPPRESS)
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "member accounts may not suppress findings" in e.value.response["Error"]["Message"]

    callers.write_text(original)
    time.sleep(0.01)
    wait_until(lambda: hg.buf(NOTE, creds=creds).status == 401, 10,
               "the removed key to be refused")
    with pytest.raises(ClientError) as e:
        client.batch_update_findings(**NOTE)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    # the callers that were there all along still work
    assert hg.buf(NOTE, who="member").status == 200
    assert hg.admin("/readyz").status_code == 200


def test_a_callers_file_caught_mid_write_is_not_loaded(make_hubgate, seeded_fake):
    """A callers file rewritten in place is empty between its truncation and its write. The
    watcher reloads a change only once the files look the same twice 250 ms apart, so a check
    that lands in that window never loads an empty file and refuses every caller. Checked every
    20 ms, a 40 ms window was caught before the change on nearly every rewrite."""
    hg = make_hubgate({"policy": {"watch_interval_ms": 20}}, fake=seeded_fake)
    callers = hg.workdir / "callers.toml"
    original = callers.read_bytes()
    for rewrites in range(1, 6):
        with open(callers, "wb") as f:
            f.flush()
            time.sleep(0.04)
            f.write(original + b"\n")
        wait_until(lambda: hg.stderr_text().count("callers reloaded") >= rewrites, 10,
                   "the rewritten callers file to be reloaded")
        assert hg.buf(NOTE, who="member").status == 200
    reloads = re.findall(r"callers reloaded callers=(\d+)", hg.stderr_text())
    assert reloads and set(reloads) == {"2"}, reloads
