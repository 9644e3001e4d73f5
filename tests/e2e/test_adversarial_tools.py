"""Adversarial review of the command-line tools and the configuration contract: `hubgate
check` against what `serve` does at start, `hubgate test` without a folder, `hubgate eval`
against what `serve` does with the same request, `hubgate audit verify` against edited logs and
keys, and `hubgate keys new`."""

import hashlib
import hmac
import json
import subprocess

import pytest

from helpers import (HUBGATE_BIN, MEMBER_ACCOUNT, REPO, SEED, audit_verify, hubgate_env,
                     ident, run_hubgate)
from test_replicas import redis_server  # noqa: F401 - fixture: a Redis of the test's own


@pytest.fixture(autouse=True)
def _need_binary():
    assert HUBGATE_BIN.exists(), f"hubgate binary not found at {HUBGATE_BIN}"


def base_config(tmp_path, extra: str = "") -> str:
    """A configuration `check` accepts: the shipped policies, the empty production callers
    file, ephemeral ports; `extra` is appended (whole tables)."""
    return (f'[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
            f'[policy]\ndir = "{REPO / "policies"}"\n'
            f'[identity]\ncallers = "{REPO / "config" / "callers.toml"}"\n' + extra)


# ---------------------------------------------------------------------------
# hubgate check against what serve refuses at start


@pytest.mark.parametrize("case", ["redis_password_env", "audit_path_is_a_folder",
                                  "audit_path_below_a_file"])
def test_check_fails_where_serve_would_not_start_redis_and_audit_file(tmp_path, case):
    """`hubgate check` said "config: … is valid" (exit 0) for configurations `serve` stopped
    at start with: a `coordination.redis_password_env` that is not set, and an audit file
    sink whose path is a folder or lies below a file."""
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("")
    extra = {
        "redis_password_env": '[coordination]\nredis_url = "redis://127.0.0.1:6379/0"\n'
                              'redis_password_env = "HG_ADV_TOOLS_UNSET_PASSWORD"\n',
        "audit_path_is_a_folder": '[audit]\nsink = "file"\npath = "a-folder"\n',
        "audit_path_below_a_file": '[audit]\nsink = "file"\npath = "a-file/sub/audit.ndjson"\n',
    }[case]
    config = tmp_path / "hubgate.toml"
    config.write_text(base_config(tmp_path, extra))
    serve = run_hubgate("serve", "--config", str(config), timeout=30)
    assert serve.returncode != 0, serve.stderr[-500:]
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "is valid" not in r.stdout, r.stdout
    named = {"redis_password_env": "HG_ADV_TOOLS_UNSET_PASSWORD",
             "audit_path_is_a_folder": "a-folder",
             "audit_path_below_a_file": "a-file"}[case]
    assert named in r.stderr, r.stderr


def test_a_cache_ttl_redis_refuses_is_refused_by_check(tmp_path, make_hubgate, seeded_fake,
                                                       redis_server):
    """A huge enrichment.cache_ttl_ms passed check, and with [coordination] Redis refused
    every shared cache entry's expiry ("invalid expire time"): each replica ran degraded for
    good. Durations are now at most a day; a day still works with Redis."""
    big = 9223372036854775807
    config = tmp_path / "hubgate.toml"
    config.write_text(base_config(tmp_path, f"[enrichment]\ncache_ttl_ms = {big}\n"))
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "enrichment.cache_ttl_ms: must be at most 86400000" in r.stderr, r.stderr

    hg = make_hubgate({"enrichment": {"cache_ttl_ms": 86400000},
                       "coordination": {"redis_url": redis_server.url}},
                      fake=seeded_fake)
    # Shared from the start, so that a degraded state below comes from the update's writes.
    assert _coordination_ok_within(hg, 5.0), hg.admin("/readyz", timeout=5).json()
    hg.client("member").batch_update_findings(FindingIdentifiers=[ident("f-own-high")],
                                              Note={"Text": "x", "UpdatedBy": "me"})
    ready = hg.admin("/readyz", timeout=5).json()
    assert ready["checks"]["coordination"]["state"] == "ok", ready


def _coordination_ok_within(hg, seconds: float) -> bool:
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if hg.admin("/readyz", timeout=5).json()["checks"]["coordination"]["state"] == "ok":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("table", ['[audit]\nhmac_key_env = ""\n',
                                   '[coordination]\nredis_url = "redis://127.0.0.1:6379/0"\n'
                                   'redis_password_env = ""\n'])
def test_an_empty_variable_name_is_a_configuration_error(tmp_path, table):
    """An empty variable name (a template's unset value) was taken as a name: check exited 1
    with "audit.hmac_key_env names , which is not set" instead of naming the setting as
    invalid (status 2)."""
    config = tmp_path / "hubgate.toml"
    config.write_text(base_config(tmp_path, table))
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "is not an environment variable name" in r.stderr, r.stderr


@pytest.mark.parametrize("endpoint,cautioned", [
    ("http://securityhub.us-east-1.amazonaws.com", True),
    ("http://10.0.0.7:4566", True),
    ("http://127.0.0.1:4566", False),
    ("https://securityhub.us-east-1.amazonaws.com", False),
])
def test_check_cautions_about_plain_http_to_another_host(tmp_path, endpoint, cautioned):
    """http:// is meant for an emulator on this machine; to another host (an https typo) the
    finding state the policies judge crossed the network unauthenticated, and check said
    nothing."""
    config = tmp_path / "hubgate.toml"
    config.write_text(base_config(tmp_path, f'[upstream]\nendpoint = "{endpoint}"\n'))
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    caution = [line for line in r.stderr.splitlines() if "plain http://" in line]
    assert len(caution) == int(cautioned), r.stderr
    if cautioned:
        assert caution[0].startswith("hubgate: caution: upstream.endpoint"), caution


def test_check_creates_nothing_for_an_audit_file_to_be_made(tmp_path):
    """An audit path whose folders do not exist yet is valid (serve creates them), and check
    creates neither the folders nor the file."""
    config = tmp_path / "hubgate.toml"
    config.write_text(base_config(tmp_path, '[audit]\nsink = "file"\npath = "logs/a/audit.ndjson"\n'))
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "logs").exists()


def test_check_names_an_unset_redis_password_variable_never_the_url_password(tmp_path):
    config = tmp_path / "hubgate.toml"
    config.write_text(base_config(tmp_path, '[coordination]\n'
                                            'redis_url = "redis://u:hunter2-secret@127.0.0.1:6379/0"\n'
                                            'redis_password_env = "HG_ADV_TOOLS_UNSET_PASSWORD"\n'))
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode != 0
    assert "hunter2-secret" not in r.stdout + r.stderr


# ---------------------------------------------------------------------------
# hubgate test without a folder


@pytest.mark.parametrize("via", ["--config", "HUBGATE_CONFIG"])
def test_hubgate_test_refuses_a_configuration_that_does_not_load(tmp_path, via):
    """Without a folder, `hubgate test` runs the configured policy.dir. A configuration that
    did not load was ignored: `./policies` was tested instead (135 passed, exit 0 from the
    repository root), and read as a pass of the configured policies."""
    broken = tmp_path / "hubgate.toml"
    broken.write_text(f'[policy]\ndir = "{tmp_path / "mine"}"\nmodee = "enforce"\n')
    args = [str(HUBGATE_BIN), "test"]
    env = hubgate_env()
    if via == "--config":
        args += ["--config", str(broken)]
    else:
        env["HUBGATE_CONFIG"] = str(broken)
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2, (r.returncode, r.stdout[-300:], r.stderr)
    assert "passed" not in r.stdout, r.stdout[-300:]
    assert "modee" in r.stderr, r.stderr


def test_hubgate_test_without_a_configuration_falls_back_to_policies(tmp_path):
    """The default configuration file absent, `hubgate test` tests `./policies`: here none,
    which fails with status 2, naming the folder."""
    r = subprocess.run([str(HUBGATE_BIN), "test"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL,
                       env={k: v for k, v in hubgate_env().items() if k != "HUBGATE_CONFIG"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "policies" in r.stderr


def test_hubgate_test_fails_a_folder_without_tests(tmp_path):
    """A folder whose rules load but hold no test_ rule is not a pass."""
    (tmp_path / "p.rego").write_text("package hubgate\n\ndeny contains msg if { false; msg := \"x\" }\n")
    r = run_hubgate("test", str(tmp_path))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "no test_ rules" in r.stderr


def test_hubgate_test_runs_an_indented_test_rule(tmp_path):
    """Rego allows a top-level rule to be indented. `hubgate test` found test rules only at
    the start of a line, so an indented failing test never ran and the run passed (exit 0);
    a `test_` name inside a body (a reference, a variable) is still not a test."""
    (tmp_path / "a_test.rego").write_text(
        "package t\n\n"
        "test_helper_use if {\n    test_local := 1\n    test_local == 1\n}\n\n"
        "  test_indented_and_failing if {\n    1 == 2\n  }\n")
    r = run_hubgate("test", str(tmp_path))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "FAIL" in r.stdout and "test_indented_and_failing" in r.stdout, r.stdout
    assert "1 passed, 1 failed" in r.stdout, r.stdout


@pytest.mark.parametrize("value", ["nan", "NaN", "-1", "101", "inf"])
def test_hubgate_test_refuses_a_threshold_that_is_no_percentage(value):
    """`--threshold nan` passed every run (nothing is below NaN): a gate that never closes."""
    r = run_hubgate("test", str(REPO / "policies"), f"--threshold={value}", timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout[-200:], r.stderr)
    assert "percentage" in r.stderr


# ---------------------------------------------------------------------------
# hubgate eval against serve


def eval_files(tmp_path):
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"FindingIdentifiers": [ident("f-own-high"),
                                                          ident("f-own-medium")],
                                   "Severity": {"Label": "MEDIUM"}}))
    current = tmp_path / "current.json"
    current.write_text(json.dumps(SEED))
    return request, current


def run_eval(config, request, current):
    return run_hubgate("eval", "--config", str(config), "--request", str(request), "--as",
                       f"member:{MEMBER_ACCOUNT}", "--current", str(current), timeout=60)


def test_eval_says_which_findings_forward_allowed_forwards_as_serve_does(tmp_path, make_hubgate,
                                                                       seeded_fake):
    """With on_partial_deny = "forward-allowed", eval printed DENY and nothing else for a batch
    the proxy forwards in part; it now names what the proxy forwards, and serve agrees."""
    hg = make_hubgate({"policy": {"on_partial_deny": "forward-allowed"}}, fake=seeded_fake)
    request, current = eval_files(tmp_path)
    r = run_eval(hg.config_path, request, current)
    assert r.returncode == 1, r.stdout + r.stderr
    outcome = [line for line in r.stdout.splitlines() if line.startswith("proxy: ")]
    assert len(outcome) == 1 and "forwards 1 finding(s) (f-own-medium)" in outcome[0], r.stdout

    resp = hg.client("member").batch_update_findings(**json.loads(request.read_text()))
    assert [f["Id"] for f in resp["ProcessedFindings"]] == ["f-own-medium"]
    assert [(u["FindingIdentifier"]["Id"], u["ErrorCode"])
            for u in resp["UnprocessedFindings"]] == [("f-own-high", "PolicyDenied")]


def test_eval_says_dry_run_forwards_a_denied_request_as_serve_does(tmp_path, make_hubgate,
                                                                 seeded_fake):
    """In dry-run, eval printed DENY for a request the proxy forwards whole."""
    hg = make_hubgate({"policy": {"mode": "dry-run"}}, fake=seeded_fake)
    request, current = eval_files(tmp_path)
    r = run_eval(hg.config_path, request, current)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "DENY" in r.stdout
    assert "proxy: forwards it anyway" in r.stdout, r.stdout

    resp = hg.client("member").batch_update_findings(**json.loads(request.read_text()))
    assert sorted(f["Id"] for f in resp["ProcessedFindings"]) == ["f-own-high", "f-own-medium"]


def test_eval_of_a_plain_denial_adds_no_proxy_line(tmp_path):
    """reject (the default) and enforce: the DENY is what the proxy does; no extra line."""
    config = tmp_path / "hubgate.toml"
    config.write_text(base_config(tmp_path))
    request, current = eval_files(tmp_path)
    r = run_eval(config, request, current)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "proxy:" not in r.stdout


def test_eval_refuses_a_body_larger_than_serve_accepts(tmp_path, make_hubgate, seeded_fake):
    """eval judged a body over server.max_body_bytes, which the proxy refuses with 413 before
    reading it, and printed ALLOW (exit 0) for a request the proxy never forwards."""
    hg = make_hubgate({"server": {"max_body_bytes": 200}}, fake=seeded_fake)
    request = tmp_path / "req.json"
    body = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "x" * 200,
                                                                 "UpdatedBy": "me"}}
    request.write_text(json.dumps(body))
    r = run_hubgate("eval", "--config", str(hg.config_path), "--request", str(request),
                    "--as", f"member:{MEMBER_ACCOUNT}", timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("PAYLOAD_TOO_LARGE") and "413" in r.stdout, r.stdout
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        hg.client("member").batch_update_findings(**body)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_eval_refuses_a_policy_set_serve_would_not_start_with(tmp_path):
    """A policy-routed operation without its schema stops serve and check; eval judged
    requests with that set anyway (exit 0 or 1, as if it were the set in force)."""
    import shutil
    pol = tmp_path / "policies"
    shutil.copytree(REPO / "policies", pol)
    (pol / "schemas" / "BatchImportFindings.json").unlink()
    config = tmp_path / "hubgate.toml"
    config.write_text(base_config(tmp_path).replace(str(REPO / "policies"), str(pol)))
    request, current = eval_files(tmp_path)
    r = run_eval(config, request, current)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "schemas/BatchImportFindings.json" in r.stderr, r.stderr
    assert run_hubgate("check", "--config", str(config)).returncode != 0


# ---------------------------------------------------------------------------
# hubgate audit verify


def seal(records, key=None, start_seq=1, prev="0" * 64):
    """Lines sealed as README's "The hash chain" describes, independently of hubgate."""
    out = []
    for i, record in enumerate(records):
        seq = start_seq + i
        body = json.dumps(record, sort_keys=True, separators=(",", ":"))
        msg = f"{prev}\n{seq}\n{body}".encode()
        digest = (hmac.new(key, msg, hashlib.sha256) if key else hashlib.sha256(msg)).hexdigest()
        chain = json.dumps({"hash": digest, "prev": prev, "seq": seq}, separators=(",", ":"))
        out.append('{"chain":' + chain + ("," + body[1:] if len(body) > 2 else "}"))
        prev = digest
    return out


RECORDS = [{"decision_id": f"d{i}", "result": {"allow": i % 2 == 0}} for i in range(4)]


def write_log(tmp_path, name, lines, end="\n"):
    path = tmp_path / name
    path.write_bytes((end.join(lines) + end).encode())
    return path


def test_verify_reads_lines_sealed_as_documented(tmp_path):
    """The documented format is the one verified: an independent sealer's log is intact,
    with CRLF line ends too, and with its key."""
    assert audit_verify(write_log(tmp_path, "a", seal(RECORDS))).returncode == 0
    crlf = audit_verify(write_log(tmp_path, "b", seal(RECORDS), end="\r\n"))
    assert crlf.returncode == 0 and "intact: 4 records" in crlf.stdout, crlf.stdout
    keyed = write_log(tmp_path, "c", seal(RECORDS, key=b"k3y"))
    assert audit_verify(keyed, key_env="HG_K", env={"HG_K": "k3y"}).returncode == 0
    assert audit_verify(keyed).returncode == 1


@pytest.mark.parametrize("how", ["key-env", "key-file"])
def test_verify_refuses_an_empty_key(tmp_path, how):
    """serve refuses an empty HMAC key, so no log is written with one; verify took an empty
    variable (or file) as a key and reported an honest log as modified (BROKEN, exit 1)
    instead of naming the mistake (exit 2)."""
    log = write_log(tmp_path, "audit.ndjson", seal(RECORDS))
    if how == "key-env":
        r = audit_verify(log, key_env="HG_EMPTY_KEY", env={"HG_EMPTY_KEY": ""})
    else:
        (tmp_path / "key").write_bytes(b"")
        r = subprocess.run([str(HUBGATE_BIN), "audit", "verify", str(log), "--key-file",
                            str(tmp_path / "key")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "empty" in r.stderr and "BROKEN" not in r.stdout, (r.stdout, r.stderr)


def test_verify_reports_a_sequence_past_its_limit_as_broken_not_a_crash(tmp_path):
    """A record at seq 2^64-1 followed by another panicked verify (exit 101, a Rust backtrace)
    instead of reporting the break."""
    first = seal([{"decision_id": "a"}], start_seq=2**64 - 1)
    prev = json.loads(first[0])["chain"]["hash"]
    wrapped = seal([{"decision_id": "b"}], start_seq=0, prev=prev)
    r = audit_verify(write_log(tmp_path, "audit.ndjson", first + wrapped))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr[-500:])
    assert "BROKEN" in r.stdout and "panicked" not in r.stderr


def test_verify_reads_a_file_named_twice_once(tmp_path):
    """`audit verify audit.ndjson* audit.ndjson`, or a link to the log beside it: the same
    file read twice made its records follow themselves, and an honest log read as BROKEN."""
    log = write_log(tmp_path, "audit.ndjson", seal(RECORDS))
    (tmp_path / "current.ndjson").symlink_to(log)
    r = audit_verify(log, log, tmp_path / "current.ndjson")
    assert r.returncode == 0 and "intact: 4 records" in r.stdout, (r.stdout, r.stderr)


def test_verify_finds_a_member_added_to_chain_even_with_a_key(tmp_path):
    """The hash covers the record without `chain`, so a member slipped into `chain`
    ("chain":{…,"approved_by":"ciso"}) was covered by nothing and a keyed log verified as
    intact: no key is needed to add it."""
    lines = seal(RECORDS, key=b"k3y")
    edited = json.loads(lines[1])
    edited["chain"]["approved_by"] = "ciso"
    lines[1] = json.dumps(edited, separators=(",", ":"))
    r = audit_verify(write_log(tmp_path, "audit.ndjson", lines), key_env="HG_K",
                     env={"HG_K": "k3y"})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "audit.ndjson:2:" in r.stdout and "approved_by" in r.stdout, r.stdout


def test_records_holding_callers_number_forms_verify(make_hubgate, seeded_fake):
    """An import's numbers as a caller spells them (1.0E+2, an integer past 2^64, -0.0, the
    smallest subnormal) reach the record's input; the log written by serve verifies."""
    from helpers import ADMIN_ACCOUNT, finding, wait_until
    hg = make_hubgate({}, fake=seeded_fake)
    text = json.dumps({"Findings": [finding("f-num", ADMIN_ACCOUNT)]})
    for number in ["1.0E+2", "123456789012345678901234567890", "-0.0", "5e-324"]:
        body = text.replace('"Normalized": 70', f'"Normalized": 70, "Product": {number}')
        assert hg.send("POST", "/findings/import", body).status == 200, number
    wait_until(lambda: sum(1 for f in hg.audit_files() for _ in open(f)) >= 4, 10,
               "four audit records")
    r = audit_verify(*hg.audit_files())
    assert r.returncode == 0 and "intact: 4 records" in r.stdout, (r.stdout, r.stderr)


def test_a_log_whose_key_changed_at_a_restart_verifies_with_both_keys(make_hubgate,
                                                                   seeded_fake):
    """An HMAC key rotated at a restart (the Secret updated, the pod restarted): serve continues
    the chain under the new key, and the honest log verified under neither key alone (BROKEN
    at line 1 or at the first record of the new key), with no way to say it was intact.
    `--key-env OLD --key-env NEW` verifies it and says where the new key took over; the old
    key may not seal a record after the new one took over."""
    from helpers import hubgate_env
    old, new = {"HG_KEY": "old-audit-key-2718"}, {"HG_KEY": "new-audit-key-1618"}
    hg = make_hubgate({"audit": {"hmac_key_env": "HG_KEY", "include_input": False}},
                      fake=seeded_fake, env={**hubgate_env(), **old})
    note = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "n", "UpdatedBy": "me"}}
    for _ in range(2):
        assert hg.buf(note, who="admin").status == 200
    hg.stop()
    hg.env = {**hubgate_env(), **new}
    hg.start()
    for _ in range(2):
        assert hg.buf(note, who="admin").status == 200
    hg.stop()
    env = {"HG_OLD": old["HG_KEY"], "HG_NEW": new["HG_KEY"]}
    both = subprocess.run([str(HUBGATE_BIN), "audit", "verify", str(hg.audit_path),
                           "--key-env", "HG_OLD", "--key-env", "HG_NEW"],
                          env={**hubgate_env(), **env}, capture_output=True, text=True,
                          timeout=30)
    assert both.returncode == 0, (both.stdout, both.stderr)
    assert "intact: 4 records" in both.stdout, both.stdout
    assert "from record 3 on, the records are sealed with key 2" in both.stdout, both.stdout
    # the old key cannot take a record back after the new one took over
    lines = hg.audit_path.read_text().splitlines()
    relinked = seal([{"decision_id": "forged"}], key=old["HG_KEY"].encode(), start_seq=5,
                    prev=json.loads(lines[-1])["chain"]["hash"])
    hg.audit_path.write_text("\n".join(lines + relinked) + "\n")
    forged = subprocess.run([str(HUBGATE_BIN), "audit", "verify", str(hg.audit_path),
                             "--key-env", "HG_OLD", "--key-env", "HG_NEW"],
                            env={**hubgate_env(), **env}, capture_output=True, text=True,
                            timeout=30)
    assert forged.returncode == 1 and ":5:" in forged.stdout, forged.stdout


@pytest.mark.parametrize("edit", ["duplicated", "swapped", "another_chain", "truncated",
                                  "trailing_garbage", "number_form"])
def test_verify_finds_each_edit(tmp_path, edit):
    lines = seal(RECORDS)
    other = seal([{"decision_id": "x"}] * 4)
    edited = {
        "duplicated": lines[:2] + [lines[1]] + lines[2:],
        "swapped": [lines[0], lines[2], lines[1], lines[3]],
        "another_chain": lines[:2] + other[2:],
        "truncated": lines[:3] + [lines[3][:-10]],
        "trailing_garbage": lines + ["x"],
        "number_form": [lines[0].replace('"seq":1', '"seq":1.0')] + lines[1:],
    }[edit]
    r = audit_verify(write_log(tmp_path, "audit.ndjson", edited))
    assert r.returncode == 1 and "BROKEN" in r.stdout, (edit, r.stdout, r.stderr)


def test_verify_a_rotated_log_given_in_any_order_and_a_missing_middle_file(tmp_path):
    lines = seal(RECORDS + RECORDS)
    old = write_log(tmp_path, "audit.ndjson.2", lines[:3])
    mid = write_log(tmp_path, "audit.ndjson.1", lines[3:5])
    new = write_log(tmp_path, "audit.ndjson", lines[5:])
    r = audit_verify(new, mid, old)
    assert r.returncode == 0 and "intact: 8 records, sequence 1 to 8" in r.stdout, r.stdout
    r = audit_verify(new, old)
    assert r.returncode == 1 and "sequence number 6 follows 3" in r.stdout, r.stdout


# ---------------------------------------------------------------------------
# hubgate keys new


def test_keys_new_writes_only_stdout_and_its_entry_loads(tmp_path):
    """The secret goes to stdout only (nothing on stderr, no file written), and the printed
    entry is a callers file `check` accepts."""
    r = subprocess.run([str(HUBGATE_BIN), "keys", "new", "--id", "soar\trunner", "--account",
                        MEMBER_ACCOUNT, "--role", "member"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert list(tmp_path.iterdir()) == []
    entry = r.stdout.split("\n\n", 1)[1]
    (tmp_path / "callers.toml").write_text(entry)
    config = tmp_path / "hubgate.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
                      f'[policy]\ndir = "{REPO / "policies"}"\n')
    c = run_hubgate("check", "--config", str(config))
    assert c.returncode == 0 and "(1 keyed callers)" in c.stdout, c.stdout + c.stderr
