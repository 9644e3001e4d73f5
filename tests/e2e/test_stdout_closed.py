"""The CLI's output commands when stdout's reader is gone (`hubgate test policies | head`):
no panic, the rest of the output is dropped, and the exit status is the command's own."""

import os
import subprocess

import pytest

from helpers import HUBGATE_BIN, PRODUCT_ARN, REPO, hubgate_env

CONFIG = str(REPO / "config" / "demo" / "hubgate.toml")


def run_into_closed_pipe(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run hubgate with stdout on a pipe whose read end is already closed: its first write
    fails with EPIPE (Rust ignores SIGPIPE, so the error reaches the write)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([str(HUBGATE_BIN), *args], env=hubgate_env(), stdout=write_end,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                              timeout=timeout)
    finally:
        os.close(write_end)


@pytest.fixture
def request_file(tmp_path):
    path = tmp_path / "req.json"
    path.write_text('{"FindingIdentifiers": [{"Id": "f-1", "ProductArn": "%s"}],'
                    ' "Note": {"Text": "triaged", "UpdatedBy": "m"}}' % PRODUCT_ARN)
    return str(path)


@pytest.mark.parametrize("args, status", [
    (["test", "policies", "--coverage", "--config", CONFIG], 0),
    (["check", "--config", CONFIG], 0),
    (["keys", "new", "--id", "x", "--account", "222222222222", "--role", "member"], 0),
    (["eval", "--config", CONFIG, "--as", "member:222222222222", "--input", "--request"], 0),
    (["audit", "verify", "--key-file"], 1),   # a broken chain: BROKEN on stdout, status 1
], ids=["test", "check", "keys-new", "eval", "audit-verify-broken"])
def test_closed_stdout_is_not_a_panic(args, status, request_file, tmp_path):
    if args[-1] == "--request":
        args = [*args, request_file]
    if args[-1] == "--key-file":
        (tmp_path / "key").write_text("k\n")
        (tmp_path / "audit.ndjson").write_text("not a record\n")
        args = [*args, str(tmp_path / "key"), str(tmp_path / "audit.ndjson")]
    r = run_into_closed_pipe(*args)
    assert "panicked" not in r.stderr, r.stderr
    assert "Broken pipe" not in r.stderr, r.stderr
    assert r.returncode == status, (r.returncode, r.stderr)


def test_failing_policy_tests_still_fail_with_a_closed_stdout(tmp_path):
    (tmp_path / "p.rego").write_text(
        "package hubgate\n\nimport rego.v1\n\ntest_fails if { 1 == 2 }\n")
    r = run_into_closed_pipe("test", str(tmp_path), "--config", CONFIG)
    assert "panicked" not in r.stderr, r.stderr
    assert r.returncode == 1, (r.returncode, r.stderr)
