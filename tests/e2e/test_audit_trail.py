"""The audit trail under stress: concurrency, SIGTERM under load, a sink that blocks or fails,
tamper evidence through `hubgate audit verify`, restarts, masking and secrets."""

from __future__ import annotations

import http.client
import json
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from helpers import (
    ADMIN,
    ADMIN_ACCOUNT,
    SECRETS,
    STARTED,
    Creds,
    assert_envelope,
    audit_verify,
    finding,
    ident,
    metric,
    wait_until,
)

SUPPRESS_MEMBER = {"FindingIdentifiers": [ident("f-own-high")],
                   "Workflow": {"Status": "SUPPRESSED"}}


def note(fid: str, text: str = "audit-trail note") -> dict:
    return {"FindingIdentifiers": [ident(fid)], "Note": {"Text": text, "UpdatedBy": "e2e"}}


def caller_id(resp) -> str | None:
    """The decision id the caller saw: x-hubgate-decision-id on a forwarded answer,
    x-amzn-RequestId on hubgate's own errors."""
    return resp.headers.get("x-hubgate-decision-id") or resp.headers.get("x-amzn-requestid")


def records_of(files) -> list[dict]:
    out = []
    for f in files:
        out += [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
    return out


def intact(result, records: int | None = None):
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    m = re.search(r"intact: (\d+) records, sequence (\d+) to (\d+)", result.stdout)
    assert m, result.stdout
    if records is not None:
        assert int(m.group(1)) == records, result.stdout
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def broken_at(result, file: Path, line: int, reason: str | None = None):
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    m = re.search(r"BROKEN: (.+):(\d+): (.*)", result.stdout)
    assert m, result.stdout
    assert (m.group(1), int(m.group(2))) == (str(file), line), result.stdout
    if reason:
        assert reason in m.group(3), result.stdout


# ---------------------------------------------------------------------------
# concurrency


def test_concurrent_mixed_requests_one_record_each(make_fake, make_hubgate):
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": False}}, fake=fake)
    kinds = {
        "allow": (lambda: hg.buf(note("f-admin"), who="admin"), 200),
        "read": (lambda: hg.send("GET", "/accounts", b"", who="admin"), 200),
        "deny": (lambda: hg.buf(SUPPRESS_MEMBER, who="member"), 403),
        "bad": (lambda: hg.buf(b"{not json", who="admin"), 400),
        "auth": (lambda: hg.buf(note("f-admin"), creds=Creds(ADMIN.access_key, "wrong")), 401),
        "route": (lambda: hg.send("PATCH", "/findings/nowhere", note("f-admin"), who="admin"),
                  404),
    }
    plan = [list(kinds)[i % len(kinds)] for i in range(200)]

    def one(kind):
        fn, want = kinds[kind]
        resp = fn()
        return kind, want, resp

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, plan))

    seen = []
    for kind, want, resp in results:
        assert resp.status == want, (kind, resp.status, resp.text)
        if want == 200:
            assert resp.headers.get("x-hubgate-decision-id"), (kind, resp.headers)
        else:
            assert "x-hubgate-decision-id" not in resp.headers, (kind, resp.headers)
            assert resp.json()["error"]["request_id"] == resp.headers["x-amzn-requestid"]
        seen.append((caller_id(resp), kind, want))
    ids = [rid for rid, _, _ in seen]
    assert all(ids) and len(set(ids)) == 200, "every caller saw a distinct decision id"

    wait_until(lambda: len(hg.audit_records()) >= 200, 15, "200 audit records")
    time.sleep(0.3)
    records = hg.audit_records()
    assert len(records) == 200, f"{len(records)} records for 200 requests"
    by_id = {}
    for r in records:
        assert r["decision_id"] not in by_id, f"duplicate record {r['decision_id']}"
        by_id[r["decision_id"]] = r
    for rid, kind, want in seen:
        assert rid in by_id, f"no record for {kind} request {rid}"
        assert by_id[rid]["status"] == want, (kind, by_id[rid])
        assert by_id[rid]["forwarded"] == (want == 200), (kind, by_id[rid])
    # the fake got exactly the forwarded batch updates
    assert len(fake.buf_calls()) == plan.count("allow")
    assert [r["chain"]["seq"] for r in records] == list(range(1, 201))
    intact(audit_verify(hg.audit_path), 200)
    assert "sequence 1 to 200" in audit_verify(hg.audit_path).stdout


# ---------------------------------------------------------------------------
# SIGTERM under load


def test_sigterm_under_load_drains_and_records_every_answer(make_fake, make_hubgate):
    grace_ms = 3000
    fake = make_fake()
    fake.configure(delay_ms=200)
    # policy.eval_timeout_ms is wall-clock: on a loaded 2-CPU machine a debug build's
    # evaluation, descheduled for longer than the default 100 ms, is a 500 POLICY_ERROR, which
    # is not what this test is about. (Seen once in a full run; not reproduced since: the
    # error body below tells the cause if an unexpected status comes back.)
    hg = make_hubgate({"server": {"shutdown_grace_ms": grace_ms},
                       "policy": {"eval_timeout_ms": 5000},
                       "audit": {"include_input": False}}, fake=fake)
    stop = threading.Event()
    # (started_at, ended_at, kind, status or None, decision id or None, error or the body of
    # an answer that is neither 200 nor 403)
    outcomes = []
    lock = threading.Lock()

    def worker(n):
        i = 0
        while not stop.is_set():
            kind = "allow" if (n + i) % 3 else "deny"
            started = time.monotonic()
            try:
                resp = (hg.buf(note("f-admin"), who="admin") if kind == "allow"
                        else hg.buf(SUPPRESS_MEMBER, who="member"))
                result = (resp.status, caller_id(resp),
                          None if resp.status in (200, 403) else resp.text[:500])
            except (OSError, http.client.HTTPException) as e:
                result = (None, None, repr(e))
            with lock:
                outcomes.append((started, time.monotonic(), kind, *result))
            i += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    term_at = time.monotonic()
    hg.proc.send_signal(signal.SIGTERM)
    try:
        code = hg.proc.wait(grace_ms / 1000 + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hubgate did not exit within shutdown_grace_ms + 5 s")
    exited_at = time.monotonic()
    time.sleep(0.3)  # let the workers see refused connections
    stop.set()
    for t in threads:
        t.join(HTTP_JOIN)
    assert code == 0, hg.stderr_text()[-3000:]
    assert exited_at - term_at < grace_ms / 1000 + 5

    answered = [o for o in outcomes if o[3] is not None]
    unanswered = [o for o in outcomes if o[3] is None]
    assert answered and unanswered, (len(answered), len(unanswered))
    for o in answered:
        assert o[3] == (200 if o[2] == "allow" else 403), (o, hg.stderr_text()[-3000:])
        assert o[4], o
    # requests already in flight when the signal came were drained, not cut off
    in_flight = [o for o in answered if o[0] < term_at < o[1]]
    assert in_flight, "no request was in flight at SIGTERM: the test proves nothing"
    cut = [o for o in unanswered if o[0] < term_at - 0.05]
    assert not cut, f"requests accepted before SIGTERM got no answer: {cut[:3]}"

    records = hg.audit_records()
    ids = [r["decision_id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate audit records"
    answered_ids = {o[4] for o in answered}
    missing = answered_ids - set(ids)
    assert not missing, f"{len(missing)} answered requests have no audit record"
    # a record whose decision id no client saw can only belong to an unanswered request
    extra = set(ids) - answered_ids
    assert len(extra) <= len(unanswered), (len(extra), len(unanswered))
    # nothing reached Security Hub without a record
    forwarded = [r for r in records if r["forwarded"]]
    assert len(fake.buf_calls()) == len(forwarded)
    intact(audit_verify(hg.audit_path), len(records))


HTTP_JOIN = 20


# ---------------------------------------------------------------------------
# a sink that blocks, a sink that fails


def many_findings(n=100):
    return [finding(f"f-bulk-{i:03d}", ADMIN_ACCOUNT, "LOW") for i in range(n)]


def bulk_update(n=100) -> dict:
    return {"FindingIdentifiers": [ident(f"f-bulk-{i:03d}") for i in range(n)],
            "Note": {"Text": "bulk", "UpdatedBy": "e2e"}}


def test_blocked_stdout_sink_refuses_instead_of_forwarding_unrecorded(make_fake, make_hubgate):
    fake = make_fake()
    fake.add_findings(many_findings())
    hg = make_hubgate({"audit": {"sink": "stdout", "path": None, "queue_capacity": 2,
                                 "enqueue_timeout_ms": 300, "include_input": True}},
                      fake=fake, popen_kw={"stdout": subprocess.PIPE})
    answers = []
    for _ in range(100):
        resp = hg.buf(bulk_update(), who="admin")
        answers.append(resp)
        if resp.status == 503:
            break
    statuses = [r.status for r in answers]
    assert statuses[-1] == 503, f"never refused in 100 requests: {statuses}"
    assert set(statuses[:-1]) == {200}, statuses
    body = assert_envelope(answers[-1], 503, "AUDIT_UNAVAILABLE", "ServiceUnavailableException")
    assert "x-hubgate-decision-id" not in answers[-1].headers
    # the refused request never reached Security Hub
    ok = [r for r in answers if r.status == 200]
    assert len(fake.buf_calls()) == len(ok), (len(fake.buf_calls()), len(ok))

    # unblock the sink: read stdout in a thread, then stop
    chunks = []
    reader = threading.Thread(target=lambda: chunks.append(hg.proc.stdout.read()), daemon=True)
    reader.start()
    wait_until(lambda: hg.admin("/readyz").status_code == 200, 10, "the sink to drain")
    hg.stop()
    reader.join(15)
    text = b"".join(chunks).decode()
    (hg.workdir / "hubgate.stdout.drained").write_text(text)  # for the session secrets scan
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    by_id = {r["decision_id"]: r for r in records}
    assert len(by_id) == len(records), "duplicate records"
    for r in ok:
        rid = r.headers["x-hubgate-decision-id"]
        assert rid in by_id and by_id[rid]["forwarded"] is True, f"forwarded without record {rid}"
    refused = by_id.get(body["error"]["request_id"])
    assert refused is None or refused["forwarded"] is False, refused
    assert len([r for r in records if r["forwarded"]]) == len(fake.buf_calls())


def _limit_memory():
    # hubgate reads the audit file at startup to continue its chain; /dev/full reads as an
    # endless stream of zeros, so cap the address space to keep a bug from eating the host.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_failing_file_sink_refuses_and_is_not_ready(make_fake, make_hubgate):
    fake = make_fake()
    hg = make_hubgate({"audit": {"path": "/dev/full"}}, fake=fake,
                      popen_kw={"preexec_fn": _limit_memory})
    first = hg.buf(note("f-admin"), who="admin")
    assert first.status == 200, first.text  # forwarded before the write could fail

    def audit_down():
        r = hg.admin("/readyz")
        return r.status_code == 503 and r.json()["checks"]["audit"]["ok"] is False and r.json()

    ready = wait_until(audit_down, 10, "/readyz to report the audit sink down")
    assert ready["ready"] is False
    for _ in range(3):
        resp = hg.buf(note("f-admin"), who="admin")
        assert_envelope(resp, 503, "AUDIT_UNAVAILABLE", "ServiceUnavailableException")
        resp = hg.send("GET", "/accounts", b"", who="admin")
        assert_envelope(resp, 503, "AUDIT_UNAVAILABLE", "ServiceUnavailableException")
    assert len(fake.buf_calls()) == 1, "a request was forwarded after the sink failed"
    assert len(fake.requests("GET", "/accounts")) == 0
    assert hg.admin("/healthz").status_code == 200


def test_dev_full_sink_does_not_read_the_device_into_memory(make_fake, make_hubgate):
    """Starting on a character device (or a huge log) must not read it whole into memory."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"path": "/dev/full"}}, fake=fake,
                      popen_kw={"preexec_fn": _limit_memory})
    status = Path(f"/proc/{hg.proc.pid}/status").read_text()
    peak_kb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    assert peak_kb < 300 * 1024, f"hubgate's peak RSS at startup was {peak_kb // 1024} MiB"


# ---------------------------------------------------------------------------
# tamper evidence


@pytest.fixture
def rotated_log(make_fake, make_hubgate, tmp_path):
    """A stopped hubgate's rotated audit log: (hubgate, files oldest first)."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"max_bytes": 4500, "max_files": 5, "include_input": False}},
                      fake=fake)
    for i in range(60):
        resp = hg.buf(note("f-admin"), who="admin") if i % 2 else hg.buf(SUPPRESS_MEMBER,
                                                                          who="member")
        assert resp.status in (200, 403), resp.text
    hg.stop()
    assert hg.proc.returncode == 0
    files = hg.audit_files()
    assert [f.name for f in files] == [f"audit.ndjson.{n}" for n in (5, 4, 3, 2, 1)] + [
        "audit.ndjson"], files
    for f in files[:-1]:
        assert f.stat().st_size <= 4500, (f, f.stat().st_size)
    return hg, files


def copies(files, dest: Path) -> list[Path]:
    dest.mkdir()
    return [Path(shutil.copy(f, dest / f.name)) for f in files]


def lines_of(f: Path) -> list[bytes]:
    return f.read_bytes().split(b"\n")[:-1]


def write_lines(f: Path, lines):
    f.write_bytes(b"".join(line + b"\n" for line in lines))


def test_rotated_log_verifies_and_every_tampering_is_found(rotated_log, tmp_path):
    hg, files = rotated_log
    total = sum(len(lines_of(f)) for f in files)
    n, first, last = intact(audit_verify(*files), total)
    assert last == 60 and first == 60 - total + 1, (n, first, last)
    assert first > 1  # the oldest were rotated away, and verify says so
    assert "note: the chain starts at record" in audit_verify(*files).stdout
    # the newest file alone verifies as a chain starting mid-way
    intact(audit_verify(files[-1]), len(lines_of(files[-1])))
    # a rotated middle file (not the first given) with at least two records
    target = 2
    assert len(lines_of(files[target])) >= 2, [len(lines_of(f)) for f in files]

    # 1. a field modified (status of the file's second record)
    c = copies(files, tmp_path / "modified")
    ls = lines_of(c[target])
    rec = json.loads(ls[1])
    rec["status"] = 200 if rec["status"] != 200 else 403
    ls[1] = json.dumps(rec, separators=(",", ":"), sort_keys=True).encode()
    write_lines(c[target], ls)
    broken_at(audit_verify(*c), c[target], 2, "modified")

    # 2. a line deleted (the file's first record: its successor no longer follows the
    #    previous file's last record)
    c = copies(files, tmp_path / "deleted")
    ls = lines_of(c[target])
    del ls[0]
    write_lines(c[target], ls)
    broken_at(audit_verify(*c), c[target], 1, "deleted or reordered")

    # 3. two lines swapped
    c = copies(files, tmp_path / "swapped")
    ls = lines_of(c[target])
    ls[0], ls[1] = ls[1], ls[0]
    write_lines(c[target], ls)
    broken_at(audit_verify(*c), c[target], 1)

    # 4. the last line truncated (a torn write)
    c = copies(files, tmp_path / "truncated")
    ls = lines_of(c[-1])
    ls[-1] = ls[-1][: len(ls[-1]) // 2]
    write_lines(c[-1], ls)
    broken_at(audit_verify(*c), c[-1], len(ls), "truncated")

    # 5. a whole rotated middle file deleted
    c = copies(files, tmp_path / "file-gone")
    gone = c.pop(2)
    broken_at(audit_verify(*c), c[2], 1, "deleted or reordered")
    assert gone.name == "audit.ndjson.3"

    # the originals are still intact, given oldest first or newest first (as a shell expands
    # audit.ndjson*)
    intact(audit_verify(*files), total)
    intact(audit_verify(*reversed(files)), total)


def test_keyed_chain_needs_the_key(make_fake, make_hubgate):
    from helpers import hubgate_env

    key_env = {"HG_TEST_AUDIT_KEY": "audit-hmac-key-e2e-3141"}
    fake = make_fake()
    hg = make_hubgate({"audit": {"hmac_key_env": "HG_TEST_AUDIT_KEY"}}, fake=fake,
                      env={**hubgate_env(), **key_env})
    for _ in range(3):
        assert hg.buf(note("f-admin"), who="admin").status == 200
    hg.buf(SUPPRESS_MEMBER, who="member")
    hg.stop()
    intact(audit_verify(hg.audit_path, key_env="HG_TEST_AUDIT_KEY", env=key_env), 4)
    broken_at(audit_verify(hg.audit_path), hg.audit_path, 1, "modified")
    broken_at(audit_verify(hg.audit_path, key_env="HG_TEST_AUDIT_KEY",
                           env={"HG_TEST_AUDIT_KEY": "another-key"}),
              hg.audit_path, 1, "modified")
    assert "audit-hmac-key-e2e-3141" not in hg.audit_path.read_text()
    assert "audit-hmac-key-e2e-3141" not in hg.stderr_text()


def test_restart_continues_the_chain(make_fake, make_hubgate):
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": False}}, fake=fake)
    for _ in range(3):
        assert hg.buf(note("f-admin"), who="admin").status == 200
    hg.stop()
    assert hg.proc.returncode == 0
    before = hg.audit_records()
    assert [r["chain"]["seq"] for r in before] == [1, 2, 3]
    hg.start()
    for _ in range(2):
        assert hg.buf(SUPPRESS_MEMBER, who="member").status == 403
    hg.stop()
    records = hg.audit_records()
    assert [r["chain"]["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[3]["chain"]["prev"] == before[2]["chain"]["hash"]
    out = audit_verify(hg.audit_path)
    intact(out, 5)
    assert "sequence 1 to 5" in out.stdout


def test_a_log_cut_at_its_end_fails_against_the_scraped_chain_seq(make_fake, make_hubgate,
                                                                  tmp_path):
    """The chain alone cannot show records cut from the newest file's end; the last sequence
    number /metrics gave (hubgate_audit_chain_seq, scraped into a system the log's writers
    cannot rewrite) can, through `audit verify --min-seq`."""
    hg = make_hubgate({"audit": {"include_input": False}}, fake=make_fake())
    for _ in range(4):
        assert hg.buf(note("f-admin"), who="admin").status == 200
    head = hg.audit_records()[-1]["chain"]
    chain, last = head["id"], head["seq"]
    # The answer waits for its record to be flushed, and the series moves with the flush.
    assert metric(hg, "hubgate_audit_chain_seq", chain=chain) == last == 4
    hg.stop()
    # A restart continues the chain: the series says so before any new record.
    hg.start()
    assert metric(hg, "hubgate_audit_chain_seq", chain=chain) == 4
    assert hg.buf(note("f-admin"), who="admin").status == 200
    assert metric(hg, "hubgate_audit_chain_seq", chain=chain) == 5
    hg.stop()

    whole = hg.audit_path
    cut = tmp_path / "cut.ndjson"
    cut.write_text("".join(whole.read_text().splitlines(keepends=True)[:3]))
    intact(audit_verify(whole, min_seq=("5",)), 5)
    intact(audit_verify(whole, min_seq=(f"{chain}=5",)), 5)
    intact(audit_verify(whole, min_seq=("3",)), 5)
    # Without the scraped number, the cut log reads as intact: what README says it cannot show.
    intact(audit_verify(cut), 3)
    for given in ("5", f"{chain}=5"):
        out = audit_verify(cut, min_seq=(given,))
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert "BROKEN: the newest record is number 3, but the chain had reached record 5 " \
               "(--min-seq): records were cut from the end" in out.stdout, out.stdout
        assert "intact" not in out.stdout, out.stdout
    # A chain named that no file holds: its files are all missing.
    other = "0" * 32
    out = audit_verify(whole, min_seq=(f"{other}=2",))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert f"chain {other}: BROKEN: no file given holds a record of this chain" in out.stdout
    # Unreadable numbers are usage errors (exit 2), never a pass.
    for bad in ("0", "-1", "x", f"{chain}=", "=5", "5.0"):
        out = audit_verify(whole, min_seq=(bad,))
        assert out.returncode == 2, (bad, out.stdout, out.stderr)
        assert "intact" not in out.stdout, (bad, out.stdout)


def test_min_seq_names_each_chain_when_replicas_files_are_verified_together(make_fake,
                                                                           make_hubgate,
                                                                           tmp_path):
    """Two replicas' logs in one verify: a bare --min-seq cannot say which chain it means
    (exit 2, naming both ids); named, each chain is held to its own number."""
    fake = make_fake()
    heads = []
    for n in (2, 3):
        hg = make_hubgate({"audit": {"include_input": False}}, fake=fake)
        for _ in range(n):
            assert hg.buf(note("f-admin"), who="admin").status == 200
        heads.append((hg.audit_path, hg.audit_records()[-1]["chain"]["id"]))
        assert metric(hg, "hubgate_audit_chain_seq", chain=heads[-1][1]) == n
        hg.stop()
    (a, a_id), (b, b_id) = heads
    assert a_id != b_id
    out = audit_verify(a, b, min_seq=("2",))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert a_id in out.stderr and b_id in out.stderr and "CHAIN=2" in out.stderr, out.stderr
    out = audit_verify(a, b, min_seq=(f"{a_id}=2", f"{b_id}=3"))
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.count("intact") == 2, out.stdout
    # b's last record cut: only b's chain is BROKEN
    cut = tmp_path / "b-cut.ndjson"
    cut.write_text("".join(b.read_text().splitlines(keepends=True)[:2]))
    out = audit_verify(a, cut, min_seq=(f"{a_id}=2", f"{b_id}=3"))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout.count("intact") == 1, out.stdout
    assert "BROKEN: the newest record is number 2, but the chain had reached record 3" \
        in out.stdout, out.stdout


# ---------------------------------------------------------------------------
# masking


def test_masked_note_text_never_reaches_the_file(make_fake, make_hubgate):
    secret_note = "masked-note-text-8d1f"
    fake = make_fake()
    # The text is in three places of a record with include_input: the request body and the
    # normalised update, both inside the input, and the record's own update.
    mask = ["/input/request/body/Note/Text", "/input/update/note/text", "/update/note/text"]
    hg = make_hubgate({"audit": {"include_input": True, "mask": mask}}, fake=fake)
    resp = hg.buf(note("f-admin", secret_note), who="admin")
    assert resp.status == 200
    resp2 = hg.buf(note("f-own-high", secret_note), who="member")
    assert resp2.status == 200, resp2.text
    for r in (resp, resp2):
        rec = hg.audit_for(r.headers["x-hubgate-decision-id"])
        assert rec["erased"] == mask, rec
        assert "text" not in rec["update"]["note"], rec["update"]
        assert rec["update"]["note"]["updated_by"] == "e2e"
        assert "Text" not in rec["input"]["request"]["body"]["Note"]
        assert rec["input"]["request"]["body"]["Note"]["UpdatedBy"] == "e2e"
        assert "text" not in rec["input"]["update"]["note"], rec["input"]["update"]
    # a record without a note lists nothing erased
    denied = hg.buf(SUPPRESS_MEMBER, who="member")
    assert "erased" not in hg.audit_for(denied.headers["x-amzn-requestid"])
    hg.stop()
    assert secret_note not in hg.audit_path.read_text()
    # masking is for the record only: Security Hub got the text
    assert all(secret_note in c["body"] for c in fake.buf_calls())
    intact(audit_verify(hg.audit_path), 3)


def test_masked_note_text_never_reaches_an_ocsf_file(make_fake, make_hubgate):
    """The pointers name the hubgate record also when the log is OCSF: the event is mapped
    from the masked record, and lists what was erased in `unmapped.erased`."""
    secret_note = "masked-ocsf-note-3c2a"
    fake = make_fake()
    mask = ["/input/request/body/Note/Text", "/input/update/note/text", "/update/note/text",
            "/source_ip"]
    hg = make_hubgate({"audit": {"format": "ocsf", "include_input": True, "mask": mask}},
                      fake=fake)
    resp = hg.buf(note("f-admin", secret_note), who="admin")
    assert resp.status == 200, resp.text
    rid = resp.headers["x-hubgate-decision-id"]
    wait_until(lambda: any(e.get("metadata", {}).get("uid") == rid for e in hg.audit_records()),
               5, "the OCSF event")
    event = next(e for e in hg.audit_records() if e.get("metadata", {}).get("uid") == rid)
    assert event["unmapped"]["erased"] == mask, event["unmapped"]
    assert event["unmapped"]["update"]["note"] == {"updated_by": "e2e"}, event["unmapped"]
    assert event["unmapped"]["input"]["request"]["body"]["Note"] == {"UpdatedBy": "e2e"}
    assert "src_endpoint" not in event, "the only attribute of src_endpoint was erased"
    assert event["action"] == "Allowed" and event["status_id"] == 1, event
    assert event["actor"]["user"]["type"] == "administrator"
    hg.stop()
    assert secret_note not in hg.audit_path.read_text()
    assert all(secret_note in c["body"] for c in fake.buf_calls())
    intact(audit_verify(hg.audit_path), 1)


# ---------------------------------------------------------------------------
# secrets, over the whole session


@pytest.mark.session_last
def test_no_secret_in_any_hubgate_file_of_the_session():
    assert STARTED, "no hubgate was started in this session"
    scanned = 0
    for hg in STARTED:
        candidates = [hg.stderr_path, hg.workdir / "hubgate.stdout",
                      hg.workdir / "hubgate.stdout.drained"]
        candidates += list(hg.workdir.glob("*.ndjson*"))
        try:
            candidates += [f for f in hg.audit_files() if f.is_file()]
        except (OSError, ValueError):
            pass
        for f in candidates:
            if not f.is_file() or str(f).startswith("/dev/"):
                continue
            text = f.read_text(errors="replace")
            scanned += 1
            for secret in SECRETS:
                assert secret not in text, f"{secret!r} found in {f}"
    assert scanned >= len(STARTED)


def test_stop_is_prompt_with_idle_admin_connections_open(make_hubgate, seeded_fake):
    """Idle keep-alive connections to the admin port must not hold the audit writer open."""
    hg = make_hubgate({}, fake=seeded_fake)
    session = requests.Session()  # keeps its admin connection open
    for path in ("/readyz", "/healthz", "/metrics") * 2:
        assert session.get(f"http://127.0.0.1:{hg.admin_port}{path}", timeout=5).status_code == 200
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Workflow": {"Status": "SUPPRESSED"}}, who="member")
    assert resp.status == 403
    started = time.monotonic()
    hg.proc.send_signal(signal.SIGTERM)
    assert hg.proc.wait(10) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"took {elapsed:.1f} s to stop"
    assert "did not finish" not in hg.stderr_text()
    assert hg.audit_for(resp.headers["x-amzn-requestid"])["status"] == 403
    session.close()


def test_a_second_signal_exits_at_once(make_hubgate, make_fake):
    """The first SIGTERM drains (here: a request the slow fake holds for 3 s); a second one
    exits immediately with status 1."""
    fake = make_fake()
    fake.configure(delay_ms=3000)
    hg = make_hubgate({"server": {"shutdown_grace_ms": 20000}, "upstream": {"timeout_ms": 10000}},
                      fake=fake)
    def in_flight():
        try:
            hg.buf({"FindingIdentifiers": [ident("f-own-high")], "Severity": {"Label": "CRITICAL"}},
                   who="member")
        except Exception:  # the forced exit cuts the connection: that is the point
            pass

    pending = threading.Thread(target=in_flight, daemon=True)
    pending.start()
    time.sleep(0.5)
    hg.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert hg.proc.poll() is None, "the first signal drains, it does not exit"
    started = time.monotonic()
    hg.proc.send_signal(signal.SIGTERM)
    assert hg.proc.wait(5) == 1
    assert time.monotonic() - started < 2
    assert "second signal" in hg.stderr_text()
