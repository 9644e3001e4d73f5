"""What a newcomer meets when something is not set up yet: each error names the setting, the
file or the command that fixes it. Every test starts the real binary."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from helpers import (CALLERS_TOML, HUBGATE_BIN, POLICY_DIR, REPO, Hubgate, free_port,
                     hubgate_env, ident, run_hubgate, to_toml, wait_until)

DEMO_CALLERS = REPO / "config" / "demo" / "callers.toml"


def write_config(tmp_path, upstream="https://securityhub.us-east-1.amazonaws.com",
                 callers=None, policy_dir=None, **sections) -> str:
    cfg = {
        "server": {"listen": f"127.0.0.1:{free_port()}",
                   "admin_listen": f"127.0.0.1:{free_port()}"},
        "upstream": {"endpoint": upstream, "region": "us-east-1"},
        "identity": {"mode": "sigv4", "callers": str(callers or DEMO_CALLERS)},
        "policy": {"dir": str(policy_dir or POLICY_DIR)},
        "audit": {"sink": "file", "path": str(tmp_path / "audit.ndjson")},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp_path / "hubgate.toml"
    path.write_text(to_toml(cfg))
    return str(path)


# ---------------------------------------------------------------------------
# demo keys


@pytest.mark.parametrize("command", ["serve", "check"])
def test_demo_keys_in_front_of_a_real_upstream_refuse_to_start(tmp_path, command):
    config = write_config(tmp_path)
    r = run_hubgate(command, "--config", config, timeout=20)
    assert r.returncode == {"serve": 2, "check": 1}[command], r
    assert "demo access key id HGDEMOADMIN000000001" in r.stderr, r.stderr
    assert "hubgate keys new --id demo-admin --account 111111111111 --role administrator" \
        in r.stderr, r.stderr
    assert "upstream.endpoint (https://securityhub.us-east-1.amazonaws.com)" in r.stderr
    assert "demo-admin-secret" not in r.stderr + r.stdout


@pytest.mark.parametrize("upstream", ["http://localhost:9", "http://[::1]:9",
                                      "http://127.0.0.2:9"])
def test_demo_keys_are_accepted_with_a_loopback_upstream(tmp_path, upstream):
    r = run_hubgate("check", "--config", write_config(tmp_path, upstream=upstream))
    assert r.returncode == 0, r.stderr
    assert "demo access key" not in r.stderr


def test_demo_key_among_other_callers_is_found(tmp_path):
    callers = tmp_path / "callers.toml"
    callers.write_text(CALLERS_TOML + """
[[caller]]
id = "demo-member"
account_id = "222222222222"
role = "member"
access_key_id = "HGDEMOMEMBER00000001"
secret_env = "HG_TEST_MEMBER_SECRET"
""")
    r = run_hubgate("check", "--config", write_config(tmp_path, callers=callers))
    assert r.returncode == 1, r
    assert "caller \"demo-member\" uses the demo access key id HGDEMOMEMBER00000001" \
        in r.stderr, r.stderr


def test_production_example_config_checks_and_holds_no_demo_key():
    r = run_hubgate("check", "--config", str(REPO / "config" / "hubgate.toml"))
    assert r.returncode == 0, r.stderr
    assert "(0 keyed callers)" in r.stdout, r.stdout


# ---------------------------------------------------------------------------
# credentials


def test_missing_aws_credentials_name_the_chain_not_imds(tmp_path, fake):
    """No credentials anywhere (an empty HOME, no AWS_ variables, instance metadata off):
    /readyz and the forwarded request say which sources hubgate tried and what to set, on one
    line, and the log carries no SDK dump."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "AWS_EC2_METADATA_DISABLED": "true",
           "HG_TEST_MEMBER_SECRET": hubgate_env()["HG_TEST_MEMBER_SECRET"]}
    hg = Hubgate(tmp_path / "hg", fake.endpoint, env=env)
    hg.start(ready_path="/healthz")
    try:
        ready = hg.admin("/readyz")
        assert ready.status_code == 503, ready.text
        error = ready.json()["checks"]["upstream_credentials"]["error"]
        for source in ["environment (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                       "profile (AWS_PROFILE", "web identity (AWS_WEB_IDENTITY_TOKEN_FILE",
                       "container (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                       "instance metadata"]:
            assert source in error, error
        assert "IMDS" not in error and "\n" not in error, error

        # An administrator's request needs no lookup: it fails at signing the forward.
        r = hg.buf({"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "x",
                                                                         "UpdatedBy": "y"}})
        assert r.status == 502, r.text
        assert r.json()["error"]["message"].startswith(
            "hubgate has no AWS credentials to sign with: no source of the standard AWS "
            "credential chain has any"), r.text
    finally:
        hg.stop()
    log = hg.stderr_text()
    assert "IMDS" not in log, log
    assert "aws_config" not in log, log
    assert not [line for line in log.splitlines() if line.startswith("  ")], log


def test_the_credential_chains_failure_is_logged_at_debug_level(tmp_path, fake):
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "AWS_EC2_METADATA_DISABLED": "true", "RUST_LOG": "debug",
           "HG_TEST_MEMBER_SECRET": hubgate_env()["HG_TEST_MEMBER_SECRET"]}
    hg = Hubgate(tmp_path / "hg", fake.endpoint, env=env)
    hg.start(ready_path="/healthz")
    try:
        assert hg.admin("/readyz").status_code == 503
    finally:
        hg.stop()
    assert "the AWS credential chain yielded no credentials" in hg.stderr_text()


# ---------------------------------------------------------------------------
# errors that name the setting


def test_missing_callers_file_names_identity_callers(tmp_path):
    config = write_config(tmp_path, callers=tmp_path / "nowhere.toml")
    for command in ["serve", "check"]:
        r = run_hubgate(command, "--config", config)
        assert r.returncode != 0, r
        assert "cannot read the callers file (identity.callers)" in r.stderr, r.stderr
        assert "nowhere.toml" in r.stderr


@pytest.mark.parametrize("which,setting", [("listen", "server.listen"),
                                           ("admin_listen", "server.admin_listen")])
def test_port_in_use_names_the_setting(tmp_path, which, setting):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        config = write_config(tmp_path, upstream="http://127.0.0.1:9",
                              server={which: addr})
        r = run_hubgate("serve", "--config", config)
    assert r.returncode == 1, r
    assert f"cannot listen on {addr} ({setting}): " in r.stderr, r.stderr


@pytest.mark.parametrize("command", [["serve"], ["check"], ["eval", "--request", "x.json"]])
def test_no_config_outside_the_repository_hints_at_config_and_hubgate_config(tmp_path, command):
    env = {k: v for k, v in hubgate_env().items() if k != "HUBGATE_CONFIG"}
    r = subprocess.run([str(HUBGATE_BIN), *command], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, r
    assert "config/hubgate.toml: cannot read" in r.stderr, r.stderr
    assert "--config PATH or HUBGATE_CONFIG=PATH" in r.stderr, r.stderr


def policies_with(tmp_path, rule: str):
    """A copy of the shipped policies plus one rule file."""
    import shutil
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    (policies / "extra.rego").write_text(rule)
    return policies


def test_check_stops_after_a_policy_failure(tmp_path):
    policies = policies_with(tmp_path, "package hubgate\n\ndeny contains x if {\n")
    r = run_hubgate("check", "--config",
                    write_config(tmp_path, upstream="http://127.0.0.1:9", policy_dir=policies))
    assert r.returncode == 1, r
    assert "extra.rego" in r.stderr, r.stderr
    assert "routes:" not in r.stdout and "is valid" not in r.stdout, r.stdout


def test_a_misspelt_input_field_fails_check_naming_the_known_ones(tmp_path):
    policies = policies_with(tmp_path, """package hubgate

deny contains {"msg": "no benign positives", "finding": null} if {
\tinput.update.verificationstate == "BENIGN_POSITIVE"
}
""")
    r = run_hubgate("check", "--config",
                    write_config(tmp_path, upstream="http://127.0.0.1:9", policy_dir=policies))
    assert r.returncode == 1, r
    assert "extra.rego:4: input.update.verificationstate: input.update has no field " \
        "\"verificationstate\" (known: " in r.stderr, r.stderr
    assert "verification_state" in r.stderr and "workflow_status" in r.stderr, r.stderr
    assert "routes:" not in r.stdout


def test_shipped_policies_pass_the_field_check():
    r = run_hubgate("check", "--config", str(REPO / "config" / "demo" / "hubgate.toml"))
    assert r.returncode == 0, r.stderr
    assert "has no field" not in r.stderr


def test_recovery_after_a_failed_reload_is_logged(tmp_path, fake):
    import shutil
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    hg = Hubgate(tmp_path / "hg", fake.endpoint,
                 overrides={"policy": {"dir": str(policies), "watch_interval_ms": 100}})
    hg.start()
    try:
        (policies / "broken.rego").write_text("package hubgate\n\ndeny contains x if {\n")
        wait_until(lambda: hg.admin("/readyz").json()["checks"]["policy"]["stale"], 10,
                   "the failed reload")
        ready = hg.admin("/readyz")
        assert ready.status_code == 200, ready.text  # the last good set still serves
        (policies / "broken.rego").unlink()
        wait_until(lambda: not hg.admin("/readyz").json()["checks"]["policy"]["stale"], 10,
                   "the fixed reload")
        wait_until(lambda: "the previous reload error is resolved" in hg.stderr_text(), 5,
                   "the recovery in the log")
    finally:
        hg.stop()
