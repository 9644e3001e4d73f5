"""Adversarial review (second) of the audit trail under pressure: the live file deleted or moved
under a running hubgate, two hubgates on one file, a disk that fills up, a kill mid-burst.
Each test asserts the promised behaviour: no record lost, a chain an auditor can verify."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import (
    assert_envelope,
    audit_verify,
    ident,
    wait_until,
)
from test_audit_trail import caller_id, intact


def note(fid: str = "f-admin", text: str = "durability note") -> dict:
    return {"FindingIdentifiers": [ident(fid)], "Note": {"Text": text, "UpdatedBy": "e2e"}}


def lines_of(*files: Path) -> list[dict]:
    out = []
    for f in files:
        if f.exists():
            out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


# ---------------------------------------------------------------------------
# the live file taken away under a running hubgate


@pytest.mark.parametrize("how", ["deleted", "moved", "moved_and_recreated"])
def test_records_follow_the_audit_path_when_the_live_file_is_taken_away(make_fake, make_hubgate,
                                                                        how):
    """logrotate without copytruncate moves the live file away (and `create` puts an empty
    one in its place); an operator may delete it. hubgate kept writing into the old inode:
    a deleted file swallowed every later record of forwarded requests without an error, and a
    moved one took them under the rotated name for good. Records must follow `audit.path`,
    the chain continuing into the new file."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": False, "fsync": "always"}}, fake=fake)
    first = hg.buf(note(), who="admin")
    assert first.status == 200, first.text
    hg.audit_for(caller_id(first))
    moved = hg.workdir / "audit.ndjson-20261206"
    if how == "deleted":
        hg.audit_path.unlink()
    else:
        hg.audit_path.rename(moved)
        if how == "moved_and_recreated":
            hg.audit_path.touch()
    later = [hg.buf(note(), who="admin") for _ in range(3)]
    assert [r.status for r in later] == [200] * 3, [r.text for r in later]
    ids = [caller_id(r) for r in later]

    def all_there():
        return set(ids) <= {r["decision_id"] for r in lines_of(hg.audit_path)}

    wait_until(all_there, 5, "the later records in the file at audit.path")
    hg.stop()
    records = lines_of(hg.audit_path)
    assert [r["chain"]["seq"] for r in records] == [2, 3, 4], records
    if how != "deleted":
        intact(audit_verify(moved, hg.audit_path), 4)
    assert "audit file" in hg.stderr_text(), "the operator is not told the file was replaced"


def test_a_copytruncated_file_keeps_its_rotation_size(make_fake, make_hubgate):
    """logrotate's copytruncate empties the live file under hubgate: the size hubgate counted
    for rotation must follow, or it rotates a nearly empty file at once."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": False, "max_bytes": 6000, "max_files": 3}},
                      fake=fake)
    for _ in range(4):
        assert hg.buf(note(), who="admin").status == 200
    wait_until(lambda: len(lines_of(hg.audit_path)) == 4, 5, "4 records")
    size = hg.audit_path.stat().st_size
    assert 1500 < size < 6000, size  # each record well under max_bytes / 2
    shutil.copy(hg.audit_path, hg.workdir / "copy")
    with open(hg.audit_path, "r+b") as f:
        f.truncate(0)
    assert hg.buf(note(), who="admin").status == 200
    wait_until(lambda: len(lines_of(hg.audit_path)) == 1, 5, "the record after the truncation")
    hg.stop()
    assert not (hg.workdir / "audit.ndjson.1").exists(), \
        "rotated a one-record file: the size before the truncation was still counted"


# ---------------------------------------------------------------------------
# two writers


def test_a_second_hubgate_on_the_same_audit_file_is_refused(make_fake, make_hubgate):
    """Two hubgates appending to one file (a copy-pasted unit, a Deployment scaled to 2 on a
    ReadWriteMany volume) each continue the chain from the head they read at start: their
    records interleave with clashing sequence numbers and the honest log verifies as BROKEN.
    The second must refuse to start, naming the file."""
    fake = make_fake()
    first = make_hubgate({"audit": {"include_input": False}}, fake=fake)
    assert first.buf(note(), who="admin").status == 200
    second = make_hubgate({"audit": {"include_input": False,
                                     "path": str(first.audit_path)}},
                          fake=fake, start=False)
    with pytest.raises(AssertionError) as refused:
        second.start(ready_timeout=8)
    assert str(first.audit_path) in second.stderr_text(), second.stderr_text()[-2000:]
    assert "in use" in second.stderr_text(), second.stderr_text()[-2000:]
    del refused
    assert first.buf(note(), who="admin").status == 200
    first.stop()
    intact(audit_verify(first.audit_path), 2)
    # once the first has stopped, the file is free again
    second.start()
    assert second.buf(note(), who="admin").status == 200
    second.stop()
    intact(audit_verify(first.audit_path), 3)


# ---------------------------------------------------------------------------
# a disk that fills up


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KiB tmpfs (root and mount needed; skipped otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)],
                          capture_output=True, timeout=10)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace')}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def test_a_full_disk_refuses_leaves_no_torn_record_and_the_chain_resumes(make_fake, make_hubgate,
                                                                         small_disk):
    """The disk fills up mid-batch: the caller gets 503 AUDIT_UNAVAILABLE, nothing more is
    forwarded, every answered request's record is in the file or on stderr, and no half-written
    line is left in the file: with one, `audit verify` stopped at it for good, and every record
    written after the restart went unchecked. Once space comes back, the same hubgate resumes
    forwarding within a few seconds (it refused every forwarded request until a restart), and
    the chain continues from the last record in the file."""
    fake = make_fake()
    audit = small_disk / "audit.ndjson"
    hg = make_hubgate({"audit": {"path": str(audit), "include_input": True,
                                 "fsync": "always"}}, fake=fake)
    filler = small_disk / "filler"
    # leave room for a handful of records (each about 3 KiB with its input)
    with open(filler, "wb") as f:
        try:
            f.write(b"x" * (170 * 1024))
        except OSError:
            pass
    answers = []
    for i in range(60):
        resp = hg.buf(note(text=f"durability {i} " + "n" * 480), who="admin")
        answers.append(resp)
        if resp.status == 503:
            break
    statuses = [r.status for r in answers]
    assert statuses[-1] == 503, statuses
    assert set(statuses[:-1]) == {200}, statuses
    body = assert_envelope(answers[-1], 503, "AUDIT_UNAVAILABLE", "ServiceUnavailableException")
    assert "tries it again every second" in body["message"], body
    assert len(fake.buf_calls()) == len(answers) - 1
    assert hg.admin("/readyz").status_code == 503
    # still full: still refused, nothing forwarded
    time.sleep(1.5)
    again = hg.buf(note(text="while full"), who="admin")
    assert_envelope(again, 503, "AUDIT_UNAVAILABLE", "ServiceUnavailableException")
    assert len(fake.buf_calls()) == len(answers) - 1
    # space comes back: the same process takes records again
    filler.unlink()
    wait_until(lambda: hg.admin("/readyz").status_code == 200, 5, "the sink to be tried again")
    resumed = hg.buf(note(text="after the disk was freed"), who="admin")
    assert resumed.status == 200, resumed.text
    hg.stop()
    answered = {caller_id(r) for r in answers[:-1]}
    in_file = set(re.findall(r'"decision_id":"([^"]+)"', audit.read_text(errors="replace")))
    on_stderr = set(re.findall(r'"decision_id":"([^"]+)"', hg.stderr_text()))
    assert answered <= in_file | on_stderr, answered - in_file - on_stderr
    assert audit.read_bytes().endswith(b"\n"), "a half-written record was left in the file"
    records = lines_of(audit)
    assert records[-1]["decision_id"] == caller_id(resumed)
    intact(audit_verify(audit), len(records))
    # a restart continues the same chain
    hg.start()
    resp = hg.buf(note(), who="admin")
    assert resp.status == 200, resp.text
    hg.stop()
    records = lines_of(audit)
    assert records[-1]["decision_id"] == caller_id(resp)
    intact(audit_verify(audit), len(records))


# ---------------------------------------------------------------------------
# a crash mid-burst


def test_a_torn_record_is_reported_and_the_records_after_it_are_still_checked(make_fake,
                                                                              make_hubgate):
    """A SIGKILL between two writes of a batch tears a record; the restart continues the chain
    from the record before it. `audit verify` must name the tear precisely and still check
    every record after it: it stopped at the tear, so a record modified after it went unseen."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": False}}, fake=fake)
    for _ in range(3):
        assert hg.buf(note(), who="admin").status == 200
    wait_until(lambda: len(lines_of(hg.audit_path)) == 3, 5, "3 records")
    hg.proc.kill()
    hg.proc.wait(5)
    text = hg.audit_path.read_bytes()
    last = text.rstrip(b"\n").rsplit(b"\n", 1)[1]
    # the torn third record: the restart continues from the second
    hg.audit_path.write_bytes(text[: len(text) - len(last) - 1] + last[: len(last) // 2])
    hg.start()
    for _ in range(2):
        assert hg.buf(note(), who="admin").status == 200
    hg.stop()
    lines = hg.audit_path.read_text().splitlines()
    assert len(lines) == 5
    assert [json.loads(line)["chain"]["seq"] for line in lines[3:]] == [3, 4]
    out = audit_verify(hg.audit_path)
    assert out.returncode == 1, out.stdout
    assert f"{hg.audit_path}:3:" in out.stdout and "torn" in out.stdout, out.stdout
    # a record after the tear edited: verify must see it
    edited = json.loads(lines[4])
    edited["status"] = 403
    lines[4] = json.dumps(edited, separators=(",", ":"), sort_keys=False)
    hg.audit_path.write_text("\n".join(lines) + "\n")
    out = audit_verify(hg.audit_path)
    assert out.returncode == 1
    assert f"{hg.audit_path}:5:" in out.stdout, out.stdout


def test_sigkill_mid_burst_restart_continues_the_chain(make_fake, make_hubgate):
    """hubgate killed (OOM killer) during a burst: the next start continues the chain from the
    last record written, and the log verifies. Pins that no record an answer named before the
    kill's last flush is missing beyond the ones still queued."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": False, "fsync": "never"}}, fake=fake)
    answers = [hg.buf(note(), who="admin") for _ in range(15)]
    assert {r.status for r in answers} == {200}
    wait_until(lambda: len(lines_of(hg.audit_path)) == 15, 5, "15 records")
    hg.proc.send_signal(signal.SIGKILL)
    hg.proc.wait(5)
    hg.start()
    resp = hg.buf(note(), who="admin")
    assert resp.status == 200
    hg.stop()
    records = lines_of(hg.audit_path)
    assert [r["chain"]["seq"] for r in records] == list(range(1, 17))
    intact(audit_verify(hg.audit_path), 16)


# ---------------------------------------------------------------------------
# verify against adversarial files


def test_verify_on_an_empty_file_and_a_spliced_log(make_fake, make_hubgate, tmp_path):
    """An empty file verifies as no records (not as intact history); a record from another
    log spliced in is a break at that line."""
    fake = make_fake()
    a = make_hubgate({"audit": {"include_input": False}}, fake=fake)
    b = make_hubgate({"audit": {"include_input": False}}, fake=fake)
    for hg in (a, b):
        for _ in range(3):
            assert hg.buf(note(), who="admin").status == 200
        hg.stop()
    empty = tmp_path / "empty.ndjson"
    empty.write_bytes(b"")
    out = audit_verify(empty)
    assert out.returncode == 0 and "0 records" in out.stdout, out.stdout
    la = a.audit_path.read_text().splitlines()
    lb = b.audit_path.read_text().splitlines()
    spliced = tmp_path / "spliced.ndjson"
    spliced.write_text("\n".join([la[0], lb[1], la[2]]) + "\n")
    out = audit_verify(spliced)
    assert out.returncode == 1 and f"{spliced}:2:" in out.stdout, out.stdout


# ---------------------------------------------------------------------------
# a FIFO as the audit path (a pipe to a log shipper)


def test_a_fifo_audit_path_starts_and_a_stalled_reader_gets_503(make_fake, make_hubgate,
                                                                  tmp_path):
    """`audit.path` a FIFO read by a shipper: hubgate opened it to read back the chain's head
    before opening it to write, and opening a FIFO to read waits for a writer: it never
    started. Once serving, a reader that stops reading is back-pressure bounded by
    enqueue_timeout_ms: 503 AUDIT_UNAVAILABLE, nothing forwarded unrecorded."""
    import threading

    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    go_on = threading.Event()

    def reader():
        with open(fifo, "rb") as f:
            got.append(f.readline())
            go_on.wait(30)  # stalls: the pipe fills up behind it
            got.append(f.read())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    fake = make_fake()
    hg = make_hubgate({"audit": {"path": str(fifo), "include_input": True, "queue_capacity": 2,
                                 "enqueue_timeout_ms": 300}}, fake=fake, start=False)
    hg.start(ready_timeout=8)
    first = hg.buf(note(), who="admin")
    assert first.status == 200, first.text
    wait_until(lambda: got, 5, "the first record through the FIFO")
    assert json.loads(got[0])["decision_id"] == caller_id(first)
    answers = []
    for i in range(120):
        resp = hg.buf(note(text=f"fifo {i} " + "p" * 400), who="admin")
        answers.append(resp)
        if resp.status == 503:
            break
    assert answers[-1].status == 503, [r.status for r in answers][-5:]
    assert_envelope(answers[-1], 503, "AUDIT_UNAVAILABLE", "ServiceUnavailableException")
    ok = [r for r in answers if r.status == 200]
    assert len(fake.buf_calls()) == len(ok) + 1
    go_on.set()
    wait_until(lambda: hg.admin("/readyz").status_code == 200, 10, "the sink to drain")
    hg.stop()
    t.join(10)
    text = b"".join(got).decode()
    ids = {json.loads(line)["decision_id"] for line in text.splitlines() if line.strip()}
    assert {caller_id(r) for r in ok} <= ids


class StalledFifo:
    """A FIFO for `audit.path` whose reader opens it, shrinks its pipe to `pipe_bytes` and then
    reads nothing until `drain` (a log shipper that stopped reading)."""

    def __init__(self, tmp_path: Path, pipe_bytes: int):
        import fcntl
        import threading

        self.path = tmp_path / "audit.fifo"
        os.mkfifo(self.path)
        self.opened, self._go_on = threading.Event(), threading.Event()
        self._got: list[bytes] = []

        def reader():
            with open(self.path, "rb", buffering=0) as f:
                fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, pipe_bytes)
                self.opened.set()
                self._go_on.wait(30)
                while chunk := f.read(65536):
                    self._got.append(chunk)

        self._reader = threading.Thread(target=reader, daemon=True)
        self._reader.start()

    def read_on(self):
        """The reader reads again, until hubgate closes the pipe."""
        self._go_on.set()

    def drain(self) -> bytes:
        """Everything written to the pipe, once hubgate has closed it."""
        self.read_on()
        self._reader.join(10)
        return b"".join(self._got)


def test_no_caller_is_answered_before_its_record_reaches_the_sink(tmp_path, make_fake,
                                                                   make_hubgate):
    """A caller that got its answer must never lack a record, even if hubgate is killed the
    next moment (the OOM killer, a SIGKILL after the grace period). hubgate answered as soon
    as the record was queued for the writer thread: a kill then lost every queued record of
    requests already answered, forwarded ones included. Now an answer waits until its record
    is out of hubgate's hands (flushed into the file or pipe). The sink here is a FIFO whose
    reader has stopped reading, its pipe shrunk to four pages: only the requests whose records
    fit may be answered, and after a SIGKILL every answered request's record is in the pipe."""
    import threading

    fifo = StalledFifo(tmp_path, 16384)
    fake = make_fake()
    hg = make_hubgate({"audit": {"path": str(fifo.path), "include_input": True,
                                 "write_timeout_ms": 20000}}, fake=fake, start=False)
    hg.start(ready_timeout=8)
    assert fifo.opened.wait(5)
    answers: dict[int, object] = {}

    def send(i: int):
        try:
            answers[i] = hg.buf(note(text=f"kill {i}"), who="admin")
        except OSError:
            pass  # still waiting when hubgate was killed: not answered

    senders = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(16)]
    for s in senders:
        s.start()
        time.sleep(0.05)
    time.sleep(1.5)
    answered = dict(answers)
    hg.proc.send_signal(signal.SIGKILL)
    hg.proc.wait(5)
    text = fifo.drain().decode(errors="replace")
    for s in senders:
        s.join(10)
    in_pipe = set()
    for line in text.splitlines():
        try:
            in_pipe.add(json.loads(line)["decision_id"])
        except ValueError:
            pass  # the record the kill cut short
    ok = {i: caller_id(r) for i, r in answered.items() if r.status == 200}
    assert ok, "no request was answered: the pipe holds at least one record"
    lost = {i: d for i, d in ok.items() if d not in in_pipe}
    assert not lost, (f"answered {sorted(ok)}, but the records of {sorted(lost)} never reached "
                      f"the sink ({len(in_pipe)} records in the pipe)")
    assert len(ok) < len(senders), "every record fitted in the pipe: the test proves nothing"


# ---------------------------------------------------------------------------
# rotation edges


@pytest.mark.parametrize("max_files", [0, 2])
def test_max_bytes_below_one_record_keeps_each_record_whole(make_fake, make_hubgate, max_files):
    """max_bytes smaller than one record: each record is written whole, alone in its file
    (never split, never dropped), and the files kept verify as one chain; max_files = 0
    keeps only the live file, whose chain notes the records rotated away."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": False, "max_bytes": 100,
                                 "max_files": max_files}}, fake=fake)
    ids = []
    for _ in range(4):
        resp = hg.buf(note(), who="admin")
        assert resp.status == 200
        ids.append(caller_id(resp))
        # one at a time: each its own batch
        wait_until(lambda: ids[-1] in hg.audit_path.read_text(), 5, "the record")
    hg.stop()
    files = hg.audit_files()
    assert len(files) == max_files + 1, files
    for f in files:
        assert len(f.read_text().splitlines()) == 1, f
    records = lines_of(*files)
    assert [r["decision_id"] for r in records] == ids[-(max_files + 1):]
    _, first, last = intact(audit_verify(*files), max_files + 1)
    assert (first, last) == (4 - max_files, 4)


# ---------------------------------------------------------------------------
# secrets


def test_no_secret_reaches_any_output_with_a_token_and_a_keyed_chain(make_fake, make_hubgate):
    """A session token, a forged Authorization, the chain's HMAC key and the callers' secrets
    appear nowhere: audit file, stderr, stdout, /metrics, verify's output."""
    from helpers import ADMIN, MEMBER_SECRET, UPSTREAM_SECRET

    hmac_key = "hmac-key-never-logged-5Jw2"
    token = "session-token-never-logged-Xq81"
    forged_sig = "f00dfacef00dfacef00dfacef00dfacef00dfacef00dfacef00dfacef00dface"
    env_key = {"HG_TEST_AUDIT_KEY": hmac_key}
    from helpers import hubgate_env

    fake = make_fake()
    hg = make_hubgate({"audit": {"hmac_key_env": "HG_TEST_AUDIT_KEY", "include_input": True}},
                      fake=fake, env={**hubgate_env(), **env_key})
    statuses = [
        hg.buf(note(), who="admin", extra_headers={"X-Amz-Security-Token": token}).status,
        hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                "Workflow": {"Status": "SUPPRESSED"}}, who="member").status,
        hg.buf(note(), who=None, extra_headers={
            "Authorization": "AWS4-HMAC-SHA256 Credential=HGTESTADMIN000000001/20261206/"
                             f"us-east-1/securityhub/aws4_request, SignedHeaders=host, "
                             f"Signature={forged_sig}",
            "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
            "X-Amz-Security-Token": token}).status,
    ]
    assert statuses[1] == 403 and statuses[2] == 401, statuses
    metrics = hg.admin("/metrics").text
    hg.stop()
    verify = audit_verify(hg.audit_path, key_env="HG_TEST_AUDIT_KEY", env=env_key)
    intact(verify, 3)
    texts = {
        "audit": hg.audit_path.read_text(),
        "stderr": hg.stderr_text(),
        "stdout": (hg.workdir / "hubgate.stdout").read_text(errors="replace"),
        "metrics": metrics,
        "verify": verify.stdout + verify.stderr,
    }
    for secret in [hmac_key, token, forged_sig, ADMIN.secret_key, MEMBER_SECRET,
                   UPSTREAM_SECRET]:
        for where, text in texts.items():
            assert secret not in text, f"{secret!r} in {where}"


def stalled_stdout_hubgate(make_fake, make_hubgate, audit=None, server=None):
    """A hubgate whose audit sink is stdout piped to a reader that never reads, sent
    administrators' notes until the full pipe and queue make it refuse one (503)."""
    hg = make_hubgate({"audit": {"sink": "stdout", "path": None, "include_input": True,
                                 "queue_capacity": 2, "enqueue_timeout_ms": 200, **(audit or {})},
                       **({"server": server} if server else {})},
                      fake=make_fake(), popen_kw={"stdout": subprocess.PIPE})
    for i in range(120):
        if hg.buf(note(text=f"stall {i} " + "s" * 400), who="admin").status == 503:
            return hg
    pytest.fail("the stalled sink never refused")


def test_a_refusal_whose_record_finds_no_room_logs_the_record(make_fake, make_hubgate):
    """A stalled sink (stdout piped to a reader that stopped reading) and a member's denied
    attempt: the denial is still answered 403 after enqueue_timeout_ms, and its record, which
    found no room in the queue, goes to stderr whole (who, what, the verdict), masked as the
    sink would have it. Only its decision id was logged: nothing said who tried what."""
    hg = stalled_stdout_hubgate(make_fake, make_hubgate,
                                audit={"queue_capacity": 1, "mask": ["/update/note/text"]})
    denied = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                     "Workflow": {"Status": "SUPPRESSED"},
                     "Note": {"Text": "masked-note-text-9Zk", "UpdatedBy": "e2e"}},
                    who="member")
    assert denied.status == 403, denied.text
    rid = caller_id(denied)
    hg.proc.kill()  # stdout is never read: no drain
    hg.proc.wait(5)
    lines = [line for line in hg.stderr_text().splitlines()
             if "audit record of a rejected request was not written" in line and rid in line]
    assert lines, hg.stderr_text()[-3000:]
    assert "record=" in lines[0], lines[0]
    logged = lines[0][lines[0].index("record=") + len("record="):]
    logged = json.loads(logged[: logged.rindex("}") + 1])
    assert logged["decision_id"] == rid
    assert logged["principal"]["id"] == "member"
    assert logged["status"] == 403 and logged["forwarded"] is False
    assert logged["result"]["allow"] is False and logged["result"]["violations"]
    assert "masked-note-text-9Zk" not in hg.stderr_text()


def test_sigterm_with_a_stalled_sink_ends_and_says_what_was_not_written(make_fake,
                                                                         make_hubgate):
    """SIGTERM while the sink takes no writes (stdout piped to a reader that stopped): the
    stop waited for room in the full queue for good, so hubgate never ended on SIGTERM (and a
    SIGKILL later lost the queued records without a word). It must end within the grace and
    the writer's 5 s, with a non-zero status that says records were not written."""
    hg = stalled_stdout_hubgate(make_fake, make_hubgate, server={"shutdown_grace_ms": 1000})
    t = time.monotonic()
    hg.proc.send_signal(signal.SIGTERM)
    try:
        code = hg.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("hubgate did not end on SIGTERM with a stalled audit sink")
    assert time.monotonic() - t < 1 + 5 + 3
    assert code == 1, code
    assert "audit writer did not finish" in hg.stderr_text()
    assert "were not written" in hg.stderr_text()


def test_requests_still_in_hubgate_when_the_grace_runs_out_are_recorded(make_fake, make_hubgate):
    """SIGTERM while a forward is in flight and another request waits for its lookups, and the
    grace period runs out before either ends. The runtime's end cut both off: the forward,
    which Security Hub may have applied, had no audit record at all, nor had the request
    waiting for its lookups. Now each ends once the grace has run out, before the audit log
    closes: the forward as 503 UPSTREAM_INTERRUPTED with its outcome unknown, the waiting one
    as 503 STOPPING, not forwarded; the chain verifies."""
    fake = make_fake()
    # Each call is made (the note applied at once) and answered 8 s later.
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 8000, "GetFindings": 8000})
    hg = make_hubgate({"server": {"shutdown_grace_ms": 500},
                       "upstream": {"timeout_ms": 20000}}, fake=fake)
    raise_own = {"FindingIdentifiers": [ident("f-own-high")],
                 "Severity": {"Label": "CRITICAL"}}
    answers = {}

    def send(name, body, who):
        try:
            answers[name] = hg.buf(body, who=who)
        except OSError as e:  # the connection may close before the answer is written
            answers[name] = e

    threads = [threading.Thread(target=send, args=("note", note(), "admin"), daemon=True),
               threading.Thread(target=send, args=("raise", raise_own, "member"), daemon=True)]
    for t in threads:
        t.start()
    wait_until(lambda: {r["operation"] for r in fake.requests()}
               >= {"BatchUpdateFindings", "GetFindings"}, 10, "both calls at the fake")
    hg.proc.send_signal(signal.SIGTERM)
    try:
        hg.proc.wait(0.5 + 3 + 5)
    except subprocess.TimeoutExpired:
        pytest.fail("hubgate did not end after its grace period")
    for t in threads:
        t.join(5)
    stderr = hg.stderr_text()
    assert "have no audit record" not in stderr, stderr[-2000:]
    by_principal = {r["principal"]["id"]: r for r in hg.audit_records()}
    assert set(by_principal) == {"admin", "member"}, (by_principal.keys(), stderr[-2000:])
    forwarded = by_principal["admin"]
    assert forwarded["status"] == 503 and forwarded["outcome_unknown"] is True, forwarded
    assert forwarded["error"]["code"] == "UPSTREAM_INTERRUPTED", forwarded["error"]
    assert "whether Security Hub applied it is unknown" in forwarded["error"]["message"]
    waiting = by_principal["member"]
    assert waiting["status"] == 503 and waiting["forwarded"] is False, waiting
    assert waiting["error"]["code"] == "STOPPING", waiting["error"]
    assert [r["operation"] for r in fake.requests()].count("BatchUpdateFindings") == 1
    # an answer that got out before the connections closed is the envelope the record names
    for name, code in (("note", "UPSTREAM_INTERRUPTED"), ("raise", "STOPPING")):
        if not isinstance(answers.get(name), OSError) and name in answers:
            assert_envelope(answers[name], 503, code, "ServiceUnavailableException")
    intact(audit_verify(hg.audit_path), 2)
