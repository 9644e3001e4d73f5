"""Adversarial review of the audit trail, reload and the policy tools: scenarios that broke a
promise (each asserts the promised behaviour) and ones no other test pins."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from helpers import (
    HUBGATE_BIN,
    audit_verify,
    hubgate_env,
    ident,
    run_hubgate,
    wait_until,
)

SUPPRESS_MEMBER = {"FindingIdentifiers": [ident("f-own-high")],
                   "Workflow": {"Status": "SUPPRESSED"}}


def note(fid: str, text: str = "adversarial note") -> dict:
    return {"FindingIdentifiers": [ident(fid)], "Note": {"Text": text, "UpdatedBy": "e2e"}}


def intact(out: subprocess.CompletedProcess):
    assert out.returncode == 0 and "BROKEN" not in out.stdout, (out.stdout, out.stderr)


# ---------------------------------------------------------------------------
# restarts: the chain an honest restart writes must verify


def test_a_restart_under_another_instance_name_keeps_a_verifiable_log(make_fake, make_hubgate):
    """A Deployment's pod gets a new name at every restart (HOSTNAME), and the audit file on its
    volume is appended to and its chain continued: the honest log must still verify."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": False}}, fake=fake,
                      env={**hubgate_env(), "HUBGATE_INSTANCE_ID": "hubgate-7d9f-aaaaa"})
    assert hg.buf(note("f-admin"), who="admin").status == 200
    hg.stop()
    hg.env = {**hubgate_env(), "HUBGATE_INSTANCE_ID": "hubgate-7d9f-bbbbb"}
    hg.start()
    assert hg.buf(note("f-admin"), who="admin").status == 200
    hg.stop()
    records = hg.audit_records()
    assert [r["chain"]["seq"] for r in records] == [1, 2]
    intact(audit_verify(hg.audit_path))


def test_a_record_whose_newline_was_lost_is_not_glued_to_the_next_start(make_fake, make_hubgate):
    """A record of 8 KiB or more is written past the writer's buffer and its newline after it,
    so a SIGKILL (the OOM killer) can leave a complete last record without its newline. The
    next start continues the chain from that record; its first record must be a line of its own
    (readable, and the log verifiable), not glued to the end of the last one."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": False}}, fake=fake)
    assert hg.buf(note("f-admin"), who="admin").status == 200
    hg.stop()
    text = hg.audit_path.read_bytes()
    assert text.endswith(b"\n")
    hg.audit_path.write_bytes(text[:-1])
    hg.start()
    assert hg.buf(note("f-admin"), who="admin").status == 200
    hg.stop()
    lines = hg.audit_path.read_text().splitlines()
    assert len(lines) == 2, lines
    assert [json.loads(line)["chain"]["seq"] for line in lines] == [1, 2]
    intact(audit_verify(hg.audit_path))


def test_verify_finds_a_member_slipped_in_before_the_real_one(make_fake, make_hubgate):
    """A denial's line edited to carry `"forwarded":true,"status":200` (and a forged allow)
    ahead of the real members: serde_json keeps the last value, so the hash still matched and
    verify said intact, while a reader that takes a key's first occurrence (simdjson-based
    ones, some SIEM extractors) reads a forwarded, allowed request. Even with the HMAC key."""
    key_env = {"HG_TEST_AUDIT_KEY": "audit-hmac-key-adv4"}
    fake = make_fake()
    hg = make_hubgate({"audit": {"hmac_key_env": "HG_TEST_AUDIT_KEY", "include_input": False}},
                      fake=fake, env={**hubgate_env(), **key_env})
    assert hg.buf(SUPPRESS_MEMBER, who="member").status == 403
    hg.stop()
    line = hg.audit_path.read_text().splitlines()[0]
    assert '"forwarded":false' in line
    head, rest = line.split("},", 1)
    forged = head + '},"forwarded":true,"result":{"allow":true,"violations":[],"warnings":[]},' \
        '"status":200,' + rest
    assert json.loads(forged)["forwarded"] is False  # last-wins readers still see the truth
    hg.audit_path.write_text(forged + "\n")
    out = audit_verify(hg.audit_path, key_env="HG_TEST_AUDIT_KEY", env=key_env)
    assert out.returncode == 1 and "BROKEN" in out.stdout, (out.stdout, out.stderr)
    assert ":1:" in out.stdout and "modified" in out.stdout, out.stdout


# ---------------------------------------------------------------------------
# policy tools


REPO = Path(__file__).resolve().parents[2]


def policy_copy(tmp_path: Path, settings: dict) -> Path:
    """The shipped policy set with hubgate_settings changed, and a config that loads it."""
    import shutil

    pol = tmp_path / "policies"
    shutil.copytree(REPO / "policies", pol)
    data = json.loads((pol / "data.json").read_text())
    data["hubgate_settings"].update(settings)
    (pol / "data.json").write_text(json.dumps(data))
    demo = (REPO / "config" / "demo" / "hubgate.toml").read_text()
    config = tmp_path / "hubgate.toml"
    config.write_text(demo.replace('dir = "../../policies"', f'dir = "{pol}"')
                      .replace('callers = "callers.toml"',
                               f'callers = "{REPO / "config" / "demo" / "callers.toml"}"'))
    return config


@pytest.mark.parametrize("settings, named", [
    # meant to enforce the ticket rule: the name is misspelt, so it stays a warning
    ({"library": {"tickets": "enforce"}}, "hubgate_settings.library.tickets"),
    # meant to forbid members setting Types: the key is misspelt, so nothing is forbidden
    ({"member_forbiden_fields": ["Types"]}, "hubgate_settings.member_forbiden_fields"),
])
def test_check_refuses_a_misspelt_setting_that_changes_nothing(tmp_path, settings, named):
    """The library promises that "a typo never switches a rule off silently"; a misspelt rule
    name or setting key does exactly that, and `hubgate check` said the set was valid."""
    config = policy_copy(tmp_path, settings)
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode != 0, r.stdout + r.stderr
    assert named in r.stderr, r.stderr
    # the shipped settings, spelt right, pass
    ok = policy_copy(tmp_path / "ok", {"library": {"ticket": "enforce"},
                                       "member_forbidden_fields": ["Types"]})
    r = run_hubgate("check", "--config", str(ok))
    assert r.returncode == 0, r.stdout + r.stderr


def test_hubgate_test_bounds_a_test_that_never_ends(tmp_path):
    """serve bounds every evaluation (policy.eval_timeout_ms); `hubgate test` ran a test rule
    that never ends forever, hanging the CI job that gates the policy change."""
    (tmp_path / "p.rego").write_text(
        "package hubgate\n"
        "import rego.v1\n"
        "deny contains {\"msg\": \"never\", \"finding\": null} if input.operation == \"x\"\n"
        "test_quick if { true }\n"
        "test_endless if {\n"
        "  some i in numbers.range(1, 100000)\n"
        "  some j in numbers.range(1, 100000)\n"
        "  i * j == -1\n"
        "}\n")
    try:
        r = subprocess.run([str(HUBGATE_BIN), "test", str(tmp_path)], env=hubgate_env(),
                           capture_output=True, text=True, timeout=40,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("hubgate test did not end within 40 s")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "PASS" in r.stdout and "test_quick" in r.stdout, r.stdout
    assert "FAIL" in r.stdout and "test_endless" in r.stdout, r.stdout


@pytest.mark.parametrize("name", ["ops\x7fbot", "ops\x01bot", "ops\x1bbot"])
def test_keys_new_refuses_an_id_its_entry_could_not_hold(name):
    """`keys new` printed a callers-file entry with a control character in a TOML string and
    exited 0; pasted in, the callers file no longer parses (a restart refuses to serve)."""
    r = run_hubgate("keys", "new", "--id", name, "--account", "111111111111", "--role", "member")
    assert r.returncode == 2, r.stdout
    assert "secret_access_key" not in r.stdout


# ---------------------------------------------------------------------------
# a failing sink


def _limit_file_size():
    """Writes past 64 KiB fail with EFBIG (a full disk, a quota) instead of killing hubgate."""
    import resource
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_every_answered_request_of_a_failing_sink_is_recorded_somewhere(make_fake, make_hubgate):
    """"The record that failed is written to stderr with the error, so it is not lost with the
    sink": a disk that fills mid-record (EFBIG here) leaves a torn line; every forwarded
    request's record is in the file or on stderr. (The batch a failed flush lost on HEAD is
    shown by the unit test audit::tests::every_record_a_failed_flush_loses_reaches_the_log:
    this traffic is too slow to batch reliably.)"""
    from concurrent.futures import ThreadPoolExecutor

    fake = make_fake()
    # stderr through a pipe: the file size limit would cut a stderr file too
    # fsync at every flush: records queue up behind it and are written as batches
    hg = make_hubgate({"audit": {"include_input": False, "fsync": "always"}}, fake=fake,
                      popen_kw={"preexec_fn": _limit_file_size, "stderr": subprocess.PIPE})
    captured = []
    reader = threading.Thread(target=lambda: captured.append(hg.proc.stderr.read()))
    reader.start()
    # small records sent concurrently: the writer takes them in batches, several to a flush
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: hg.buf(note("f-admin"), who="admin"), range(200)))
    hg.stop()
    reader.join(10)
    forwarded = {a.headers.get("x-hubgate-decision-id") for a in answers if a.status == 200}
    assert forwarded and any(a.status == 503 for a in answers), sorted({a.status for a in answers})
    in_file = set()
    for line in hg.audit_path.read_text(errors="replace").splitlines():
        try:
            in_file.add(json.loads(line)["decision_id"])
        except ValueError:
            pass  # the torn line the failed write left
    stderr = b"".join(captured).decode(errors="replace")
    lost = [d for d in forwarded if d not in in_file and d not in stderr]
    assert not lost, (f"{len(lost)} of {len(forwarded)} forwarded requests have no record in "
                      f"the file or on stderr: {lost[:3]}")


# ---------------------------------------------------------------------------
# masking


def readme_mask() -> list[str]:
    """The `audit.mask` the README's Masking section gives for keeping note texts out."""
    import re
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Masking"):text.index("### OCSF")]
    return json.loads(re.search(r"^mask = (\[.*\])$", section, re.M).group(1))


def test_the_documented_note_mask_keeps_a_v2_comment_out_of_the_log(make_fake, make_hubgate):
    """README: "To keep note texts out of the log, mask all three" pointers, "and the text
    appears nowhere in the file". BatchUpdateFindingsV2 (under policy by default) carries the
    note as `Comment`; does the documented mask keep it out?"""
    secret = "v2-comment-text-should-be-masked-41c7"
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": True, "mask": readme_mask()}}, fake=fake)
    ident_v2 = {"CloudAccountUid": "111111111111", "FindingInfoUid": "f-admin",
                "MetadataProductUid": "arn:aws:securityhub:us-east-1::product/aws/securityhub"}
    resp = hg.send("PATCH", "/findingsv2/batchupdatev2",
                   {"FindingIdentifiers": [ident_v2], "Comment": secret}, who="admin")
    rec = hg.audit_for(resp.headers.get("x-hubgate-decision-id")
                       or resp.headers["x-amzn-requestid"])
    hg.stop()
    text = hg.audit_path.read_text()
    where = [k for k in ("update", "input") if secret in json.dumps(rec.get(k))]
    assert secret not in text, f"the V2 comment is in the record's {where} (status {resp.status})"


# ---------------------------------------------------------------------------
# what a record says about a write that went out


def test_a_write_applied_but_answered_too_late_is_not_recorded_as_never_sent(make_fake,
                                                                             make_hubgate):
    """Security Hub applies the write and answers after upstream.timeout_ms: the caller gets
    504, the finding is changed, and the record must not read as a request that never left
    hubgate. It said `forwarded: false` and UPSTREAM_TIMEOUT "Security Hub did not answer within
    500 ms", word for word what a timed-out enrichment lookup (nothing sent) says."""
    import time

    fake = make_fake()
    hg = make_hubgate({"upstream": {"timeout_ms": 500}}, fake=fake)
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 1500})
    resp = hg.buf({"FindingIdentifiers": [ident("f-admin")],
                   "Workflow": {"Status": "NOTIFIED"},
                   "Note": {"Text": "SEC-9 sent", "UpdatedBy": "e2e"}}, who="admin")
    assert resp.status == 504, resp.text
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    time.sleep(1.2)
    assert fake.findings()["f-admin"]["Workflow"]["Status"] == "NOTIFIED"  # applied
    assert len(fake.buf_calls()) == 1
    assert rec["forwarded"] is False and rec["upstream_status"] is None  # no answer
    assert "Security Hub may have applied it" in rec["error"]["message"], rec["error"]
    # a lookup that timed out sent nothing, and does not say so
    fake.configure(answer_delay_ms={"GetFindings": 1500})
    lookup = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                     "Note": {"Text": "t", "UpdatedBy": "u"}}, who="member")
    assert lookup.status == 504, lookup.text
    rec = hg.audit_for(lookup.headers["x-amzn-requestid"])
    assert "may have applied" not in rec["error"]["message"], rec["error"]


# ---------------------------------------------------------------------------
# hubgate check against what serve needs to start


def test_check_fails_where_serve_would_not_start(tmp_path):
    """`hubgate check` said "config: … is valid" (exit 0) for a configuration `serve` refuses
    to start with: a listener certificate that is not there, an audit HMAC key variable that is
    not set."""
    from pki import CA

    base = policy_copy(tmp_path, {}).read_text()
    cases = {
        "tls": base.replace("[server]\n", '[server]\ntls_cert = "/nonexistent/cert.pem"\n'
                                          'tls_key = "/nonexistent/key.pem"\n', 1),
        "hmac": base.replace("[audit]\n", '[audit]\nhmac_key_env = "HG_ADV_UNSET_KEY"\n', 1),
    }
    for name, text in cases.items():
        config = tmp_path / f"{name}.toml"
        config.write_text(text)
        r = run_hubgate("check", "--config", str(config))
        assert r.returncode != 0, (name, r.stdout, r.stderr)
        assert "is valid" not in r.stdout, (name, r.stdout)
        serve = run_hubgate("serve", "--config", str(config), timeout=20)
        assert serve.returncode != 0, (name, serve.stderr[-500:])
    # a real certificate passes
    cert, key = CA().server_cert().write(tmp_path, "server")
    good = tmp_path / "good.toml"
    good.write_text(base.replace("[server]\n", f'[server]\ntls_cert = "{cert}"\n'
                                               f'tls_key = "{key}"\n', 1))
    r = run_hubgate("check", "--config", str(good))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_restart_after_a_record_larger_than_8_mib_continues_the_chain(make_fake, make_hubgate):
    """A restart finds the chain's head in the last 8 MiB of the file. A last record larger than
    that (an import's input with server.max_body_bytes raised: Security Hub takes up to 100
    findings of 240 KB) left no complete record in the window: the chain restarted at seq 1 in
    the middle of the file, and the honest log no longer verified."""
    import hashlib

    env = {**hubgate_env(), "HUBGATE_INSTANCE_ID": "hubgate-big"}
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": False}}, fake=fake, env=env)
    assert hg.buf(note("f-admin"), who="admin").status == 200
    hg.stop()
    last = json.loads(hg.audit_path.read_text().splitlines()[-1])
    # the record such an import leaves, sealed as the writer seals it (no HMAC key)
    body = {"decision_id": "big-import", "input": {"request": {"body": "x" * (9 << 20)}}}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    seq, prev = last["chain"]["seq"] + 1, last["chain"]["hash"]
    digest = hashlib.sha256(f"{prev}\n{seq}\ninstance:hubgate-big\n{text}".encode()).hexdigest()
    chain = json.dumps({"hash": digest, "instance": "hubgate-big", "prev": prev, "seq": seq},
                       separators=(",", ":"))
    with hg.audit_path.open("a") as f:
        f.write('{"chain":' + chain + "," + text[1:] + "\n")
    intact(audit_verify(hg.audit_path))
    hg.start()
    assert hg.buf(note("f-admin"), who="admin").status == 200
    hg.stop()
    seqs = [json.loads(line)["chain"]["seq"] for line in hg.audit_path.read_text().splitlines()]
    assert seqs == [1, 2, 3], seqs
    intact(audit_verify(hg.audit_path))


def test_check_refuses_a_mask_pointer_that_erases_nothing(tmp_path):
    """A misspelt audit.mask pointer (`/update/notes/text`) matches nothing: the note text it
    was meant to keep out of the log stays, silently, and `hubgate check` said valid."""
    base = policy_copy(tmp_path, {}).read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(base.replace("[audit]\n", '[audit]\nmask = ["/update/notes/text"]\n', 1))
    r = run_hubgate("check", "--config", str(bad))
    assert r.returncode != 0 and "/update/notes/text" in r.stderr, r.stdout + r.stderr
    good = tmp_path / "good.toml"
    good.write_text(base.replace("[audit]\n", "[audit]\nmask = " + json.dumps(readme_mask())
                                 + "\n", 1))
    r = run_hubgate("check", "--config", str(good))
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_cautions_about_a_key_file_ending_in_a_newline(tmp_path):
    """An HMAC key file is used byte for byte, its trailing newline included (unlike a callers
    file's secret_file). A key written with `echo` then verifies with `--key-file` but not with
    `--key-env` and the key typed in: `check` says so, and says nothing of a key without one."""
    base = policy_copy(tmp_path, {}).read_text()
    for name, key, cautioned in [("echoed", b"k3y-from-echo\n", True),
                                 ("printf", b"k3y-from-printf", False)]:
        key_file = tmp_path / f"{name}.key"
        key_file.write_bytes(key)
        config = tmp_path / f"{name}.toml"
        config.write_text(base.replace("[audit]\n", f'[audit]\nhmac_key_file = "{key_file}"\n', 1))
        r = run_hubgate("check", "--config", str(config))
        assert r.returncode == 0, (name, r.stdout, r.stderr)
        caution = [line for line in r.stderr.splitlines() if "hmac_key_file" in line]
        if cautioned:
            assert len(caution) == 1 and caution[0].startswith("hubgate: caution: "), r.stderr
            assert "ends with a newline, which is part of the key" in caution[0], caution
        else:
            assert caution == [], r.stderr
