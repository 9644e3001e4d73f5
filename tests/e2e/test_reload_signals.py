"""SIGHUP while hubgate starts, and a reload that never ends.

- A SIGHUP that came before the runtime listened for it (while the configuration was read:
  here a pipe, as `--config <(…)` gives) took SIGHUP's default action and killed hubgate
  before it served. It is caught from the first line of `serve` on and becomes a reload once
  serving.
- A reload blocked on a file that never answers (a hung network mount; here a FIFO with no
  writer) held every later reload behind it without a word. It still holds them (nothing can
  cancel a read), but /readyz now says the set may be stale (`reload_running_s`) and every
  later ask logs why it waits; once the file answers, the reload asked meanwhile runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from helpers import HUBGATE_BIN, POLICY_DIR, hubgate_env, wait_until


def sighup_caught(pid: int) -> bool:
    """SIGHUP (1) is bit 0 of the caught-signals mask."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & 1)
    return False


def open_fifo_for_writing(path, deadline_s: float) -> int | None:
    """None when no reader opened it within the deadline (ENXIO without a reader)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            return fd
        except OSError:
            time.sleep(0.01)
    return None


def test_a_sighup_while_the_configuration_is_read_reloads_once_serving(
        request, make_hubgate, seeded_fake):
    hg = make_hubgate({}, fake=seeded_fake, start=False)
    hg.write_config()
    text = hg.config_path.read_bytes()
    hg.config_path.unlink()
    os.mkfifo(hg.config_path)
    stderr = open(hg.stderr_path, "ab")
    request.addfinalizer(stderr.close)
    hg.proc = subprocess.Popen(
        [str(HUBGATE_BIN), "serve", "--config", str(hg.config_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        cwd=hg.workdir, env=hubgate_env())
    try:
        # hubgate now waits for the configuration's writer. The fixed build has caught SIGHUP
        # by then; the old one had not (it dies of the signal below). The wait ends as soon
        # as the signal is caught: its bound is what a loaded machine may take to start a
        # 350 MB debug binary, and only the old build waits it out.
        try:
            wait_until(lambda: sighup_caught(hg.proc.pid), 10, "SIGHUP caught before the config")
        except AssertionError:
            pass
        hg.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        assert hg.proc.poll() is None, (
            f"a SIGHUP while the configuration was read killed hubgate "
            f"(exit {hg.proc.returncode})")
        fd = open_fifo_for_writing(hg.config_path, 5)
        assert fd is not None, "hubgate never opened its configuration"
        os.write(fd, text)
        os.close(fd)
        wait_until(lambda: hg.admin("/readyz", timeout=1).status_code == 200, 15, "ready")
        wait_until(lambda: "a SIGHUP came while hubgate started; reloading" in hg.stderr_text()
                   and "callers reloaded" in hg.stderr_text(), 10, "the reload once serving")
        assert hg.proc.poll() is None
    finally:
        if hg.proc.poll() is None:
            hg.proc.kill()
            hg.proc.wait(5)


def test_a_reload_stuck_on_a_file_says_so_and_the_next_runs_when_it_answers(
        make_hubgate, seeded_fake, tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies, ignore=shutil.ignore_patterns("*_test.rego"))
    hg = make_hubgate({"policy": {"dir": str(policies), "watch_interval_ms": 0}},
                      fake=seeded_fake)
    first = hg.admin("/readyz").json()["checks"]["policy"]
    assert first["stale"] is False and first["reload_running_s"] is None

    # A file that blocks its reader until someone writes: the reload hangs on it.
    hold = policies / "zz_hold.rego"
    os.mkfifo(hold)
    hg.proc.send_signal(signal.SIGHUP)
    fd = open_fifo_for_writing(hold, 5)
    assert fd is not None, "the reload never opened the held file"
    try:
        def stuck():
            policy = hg.admin("/readyz", timeout=1).json()["checks"]["policy"]
            return policy["stale"] and (policy["reload_running_s"] or 0) >= 5
        wait_until(stuck, 9, "/readyz to report the stuck reload")
        # A later ask waits behind it, and says why.
        hg.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "a reload has not finished" in hg.stderr_text(), 5,
                   "the log to say why the reload waits")
        # The file becomes a regular one (the next reload must not block on the FIFO again),
        # then the reader blocked in the FIFO gets its text: the stuck reload ends, sees the
        # folder changed under it and reads it again, then the waiting reload runs.
        hold.unlink()
        hold.write_text("package hubgate\n")
        os.write(fd, b"package hubgate\n")
    finally:
        os.close(fd)

    def recovered():
        policy = hg.admin("/readyz", timeout=1).json()["checks"]["policy"]
        return not policy["stale"] and policy["reload_running_s"] is None \
            and policy["revision"] != first["revision"]
    wait_until(recovered, 10, "the reloads to finish and the set to be fresh")
    assert hg.proc.poll() is None
