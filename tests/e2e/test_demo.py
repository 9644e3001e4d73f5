"""README's first command, `bash config/demo/run.sh`, as a newcomer meets it: in a terminal,
the commands it prints pasted into a shell with the plain AWS CLI, then Ctrl-C."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading

import pytest
import requests

from helpers import HUBGATE_BIN, REPO, free_port, wait_until

DEMO = REPO / "config" / "demo"


class Terminal:
    """The demo script in a pseudo-terminal of its own, as when a user runs it."""

    def __init__(self, env: dict):
        master, slave = os.openpty()
        self.master = master
        self.proc = subprocess.Popen(
            ["bash", str(DEMO / "run.sh")], cwd="/", env=env, pass_fds=(slave,),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # A session whose controlling terminal is the pty, in its foreground: Ctrl-C
            # typed there reaches the script as it reaches it from a user's terminal.
            preexec_fn=lambda: os.login_tty(slave))
        os.close(slave)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    @property
    def output(self) -> str:
        text = b"".join(self.chunks).decode(errors="replace").replace("\r\n", "\n")
        return re.sub(r"\x1b\[[0-9;]*m", "", text)  # hubgate colours its log on a terminal

    def ctrl_c(self):
        os.write(self.master, b"\x03")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        try:
            os.close(self.master)
        except OSError:
            pass


def port_open(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/", timeout=0.5)
        return True
    except requests.ConnectionError:
        return False


@pytest.fixture
def demo():
    ports = {"HUBGATE_DEMO_PORT": free_port(), "HUBGATE_DEMO_ADMIN_PORT": free_port(),
             "HUBGATE_DEMO_UPSTREAM_PORT": free_port()}
    # A newcomer's environment: none of the test suite's AWS settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({k: str(v) for k, v in ports.items()}, HUBGATE_BIN=str(HUBGATE_BIN),
               TERM="dumb")
    term = Terminal(env)
    try:
        wait_until(lambda: "Press Ctrl-C" in term.output or term.proc.poll() is not None,
                   120, "the demo to print its commands")
        assert term.proc.poll() is None, term.output
        yield term, ports
    finally:
        term.close()


def printed_commands(output: str) -> list[str]:
    """The AWS CLI commands the demo prints, in order."""
    return [line.strip() for line in output.splitlines()
            if line.strip().startswith("AWS_CONFIG_FILE=")]


def run_printed(cmd: str) -> subprocess.CompletedProcess:
    # Pasted into a shell in the repository, by someone whose own AWS settings are elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = "/nonexistent"
    return subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


def test_demo_prints_commands_that_allow_and_deny_then_stops_on_ctrl_c(demo):
    term, ports = demo
    out = term.output
    assert f"http://127.0.0.1:{ports['HUBGATE_DEMO_PORT']}" in out, out
    commands = printed_commands(out)
    assert len(commands) == 4, out
    admin_suppress, member_suppress, member_lower, look = commands
    for cmd in commands:
        assert f"--endpoint-url http://127.0.0.1:{ports['HUBGATE_DEMO_PORT']}" in cmd, cmd
        assert shlex.split(cmd)  # one line a shell can take as it is

    r = run_printed(member_suppress)
    assert r.returncode == 255, r
    assert "AccessDeniedException" in r.stderr and \
        "POLICY_DENIED: member accounts may not suppress findings" in r.stderr, r.stderr

    r = run_printed(member_lower)
    assert r.returncode == 255, r
    assert "POLICY_DENIED: member accounts may not lower a finding's severity (CRITICAL to LOW)" \
        in r.stderr, r.stderr

    r = run_printed(admin_suppress)
    assert r.returncode == 0, r
    assert '"ProcessedFindings"' in r.stdout and "demo-s3-bucket-public" in r.stdout, r.stdout

    # The stand-in applied the allowed change and nothing else.
    r = run_printed(look)
    assert r.returncode == 0, r
    rows = {m.group(1): (m.group(2), m.group(3)) for m in
            re.finditer(r"\|\s+(demo-[\w-]+)\s+\|\s+(\w+)\s+\|\s+(\w+)\s+\|", r.stdout)}
    assert rows == {"demo-s3-bucket-public": ("HIGH", "SUPPRESSED"),
                    "demo-root-mfa": ("CRITICAL", "NEW"),
                    "demo-guardduty-recon": ("MEDIUM", "NEW")}, r.stdout

    # One audit record per request, on the demo's terminal.
    wait_until(lambda: term.output.count('"decision_id"') >= 4, 10, "the audit records")

    term.ctrl_c()
    wait_until(lambda: term.proc.poll() is not None, 20, "the demo to stop on Ctrl-C")
    assert term.proc.returncode == 0, term.output
    assert "INFO hubgate::server: stopped" in term.output, term.output[-2000:]
    for port in ports.values():
        assert not port_open(port), f"something still listens on {port}"


def test_demo_requirements_pin_what_the_test_suite_pins():
    """The demo installs a subset of tests/requirements.txt into the same .venv: the same
    versions, or one would downgrade the other."""
    def pins(path):
        return dict(line.split("==") for line in path.read_text().splitlines()
                    if line and not line.startswith("#"))
    demo, suite = pins(DEMO / "requirements.txt"), pins(REPO / "tests" / "requirements.txt")
    assert demo, "config/demo/requirements.txt pins nothing"
    assert {k: suite.get(k) for k in demo} == demo


def test_demo_config_points_only_at_loopback():
    text = (DEMO / "hubgate.toml").read_text()
    endpoints = re.findall(r'^endpoint\s*=\s*"([^"]+)"', text, re.M)
    assert endpoints == ["http://127.0.0.1:8085"], endpoints
    assert "HGDEMO" not in (REPO / "config" / "callers.toml").read_text()
