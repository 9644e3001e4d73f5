"""Configuration checking: `hubgate check` and `hubgate serve` with a broken config."""

import subprocess

import pytest

from helpers import HUBGATE_BIN, Hubgate, run_hubgate


@pytest.fixture(autouse=True)
def _need_binary():
    assert HUBGATE_BIN.exists(), f"hubgate binary not found at {HUBGATE_BIN}"


def write_config(tmp_path, overrides=None) -> Hubgate:
    hg = Hubgate(tmp_path, "http://127.0.0.1:9", overrides or {})
    hg.write_config()
    return hg


def test_check_accepts_the_good_config(tmp_path):
    hg = write_config(tmp_path)
    r = run_hubgate("check", "--config", str(hg.config_path))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("overrides,key", [
    ({"server": {"lisen": "127.0.0.1:1"}}, "lisen"),
    ({"upstreams": {"endpoint": "http://127.0.0.1:1"}}, "upstreams"),
    ({"upstream": {"auth": "bogus"}}, "auth"),
    ({"policy": {"mode": "permissive"}}, "mode"),
    ({"identity": {"callers": "does-not-exist.toml"}}, "does-not-exist.toml"),
])
@pytest.mark.parametrize("command", ["serve", "check"])
def test_bad_config_is_refused_naming_the_key(tmp_path, overrides, key, command):
    hg = write_config(tmp_path, overrides)
    try:
        r = run_hubgate(command, "--config", str(hg.config_path), timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`hubgate {command}` kept running with a bad config ({key})")
    assert r.returncode != 0, r
    assert key in r.stderr, r.stderr
    assert "hubgate.toml" in r.stderr or key.endswith(".toml"), r.stderr
