"""Adversarial review 53d: an attacker holding valid MEMBER keys (one member account, many
connections) against hubgate's admission, quota turns and audit trail. Each test asserts the
SAFE outcome, so a failing test is a hole.

- HOLE (fixed in stop 53): server.max_in_flight_body_bytes was one pool for every caller,
  and with the defaults one caller's share (64 = max_in_flight / 4) of max_body_bytes (1 MiB)
  requests was the whole pool (64 MiB). A member's 64 slow bodies, or 64 signed notes padded
  with JSON whitespace to 1 MiB and waiting for their lookups, left every other caller 503
  OVERLOADED for any request with a body. A caller's body bytes now have a share too
  (src/admission.rs).
- HOLE (fixed in stop 53): the lookup queue dropped a gone request's findings only when they
  reached its front. Behind one live request waiting for GetFindings quota, a member's
  requests that hung up left all their findings queued: 24,000 findings (+60 MB RSS, debug
  build) for one request in flight after 3 s; at the default quota too, with live 20-finding
  requests spaced among them. The queue is now rid of them once they are half of it
  (src/enrich.rs State::make_room_in_queue).
- Held: a flood of early refusals of every kind during SIGHUPs; control characters in texts.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from helpers import CALLERS, OWN_ACCOUNT_FILTER, ident, sign, wait_until
from test_client_abort import send_raw_and_hang_up

V1 = "/findings/batchupdate"
OWN = ident("f-own-high")
ADMINS = ident("f-admin")


def metric(hg, name: str) -> float:
    total = 0.0
    for line in hg.admin("/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


def open_slow_bodies(hg, n: int, who: str = "member", declared: int | None = None,
                     chunked: bool = False) -> list[socket.socket]:
    """n signed requests whose heads are sent whole and whose bodies never finish."""
    body = b"{" + b" " * ((declared or 2) - 2) + b"}"
    headers = sign(CALLERS[who], "PATCH", hg.host, V1, body, {"Content-Type": "application/json"})
    head = f"PATCH {V1} HTTP/1.1\r\nHost: {hg.host}\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    else:
        head += f"Content-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "host")
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", hg.port), timeout=5)
        socks.append(s)
        first = b"10\r\n" + body[:16] + b"\r\n" if chunked else body[:16]
        s.sendall(head.encode() + b"\r\n" + first)
    return socks


# ---------------------------------------------------------------------------
# (c) one member holds the whole server.max_in_flight_body_bytes


def refusals_of(socks: list[socket.socket]) -> list[bytes]:
    """The answers already sent on these connections (non-blocking reads)."""
    got = []
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(4096)
        except (BlockingIOError, ConnectionResetError):
            data = b""
        if data:
            got.append(data)
    return got


BYTE_SHARE = "its share of server.max_in_flight_body_bytes"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_one_members_slow_bodies_leave_the_administrator_room_for_a_small_write(
        make_hubgate, make_fake, chunked):
    """Defaults: max_in_flight 256, a caller's share 64, max_body_bytes 1 MiB,
    max_in_flight_body_bytes 64 MiB = 64 x max_body_bytes. Until review 53 a member's 64
    requests (its share of requests) each declaring 1 MiB (or chunked: counted as
    max_body_bytes) and sending it slowly held the whole byte cap, and the administrator's
    150-byte write got 503. A caller's bytes now have a share too (a quarter, 16 MiB): the
    member holds 16 such requests, the rest get 503 naming that share, and the administrator
    is served."""
    hg = make_hubgate({}, fake=make_fake())
    socks = []
    try:
        socks = open_slow_bodies(hg, 64, declared=1_048_576, chunked=chunked)
        wait_until(lambda: metric(hg, "hubgate_requests_in_flight") >= 16, 10,
                   "the member's slow requests in flight")
        time.sleep(0.5)
        assert metric(hg, "hubgate_requests_in_flight") == 16
        refused = refusals_of(socks)
        assert len(refused) == 48, len(refused)
        assert all(r.startswith(b"HTTP/1.1 503") and BYTE_SHARE.encode() in r
                   for r in refused), refused[:1]
        resp = hg.send("PATCH", V1, {"FindingIdentifiers": [ADMINS],
                                      "Note": {"Text": "triage", "UpdatedBy": "admin"}},
                       who="admin")
        assert resp.status == 200, (resp.status, resp.text)
    finally:
        for s in socks:
            s.close()


def test_one_members_whole_bodies_waiting_for_lookups_leave_the_administrator_room(
        make_hubgate, make_fake):
    """The same without slow bodies: the member's 64 well-formed, signed notes on its own
    finding, each padded with JSON whitespace to max_body_bytes (1 MiB), wait for their
    lookups (GetFindings paced at one call per 5 s). Until review 53 they held 64 MiB, the
    whole server.max_in_flight_body_bytes, and the administrator's note got 503; now at most
    16 of them are in flight, and the administrator's 150-byte note is served."""
    hg = make_hubgate({"quota": {"max_wait_ms": 6000,
                                 "limits": {"GetFindings": {"rate": 0.2, "burst": 2}}}},
                      fake=make_fake())
    hg.send("PATCH", V1, {"FindingIdentifiers": [ident("spend-the-burst")],
                          "Note": {"Text": "t", "UpdatedBy": "m"}}, who="member")
    note = json.dumps({"FindingIdentifiers": [OWN],
                       "Note": {"Text": "bulk", "UpdatedBy": "m"}}).encode()
    padded = note[:-1] + b" " * (1_048_576 - len(note)) + b"}"
    threads = [threading.Thread(target=hang_up_after_sending, args=(hg, padded, 5.0),
                                daemon=True) for _ in range(64)]
    for t in threads:
        t.start()
    wait_until(lambda: metric(hg, "hubgate_requests_in_flight") >= 16
               and metric(hg, "hubgate_enrichment_queued_findings") >= 1, 8,
               "the member's notes waiting for their lookups")
    time.sleep(0.5)
    assert metric(hg, "hubgate_requests_in_flight") <= 16
    resp = hg.send("PATCH", V1, {"FindingIdentifiers": [ADMINS],
                                  "Note": {"Text": "triage", "UpdatedBy": "admin"}},
                   who="admin")
    assert resp.status == 200, (resp.status, resp.text)


# ---------------------------------------------------------------------------
# (b) lookups of requests whose clients left stay queued while the lookup queue waits


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def hang_up_after_sending(hg, raw: bytes, after: float):
    send_raw_and_hang_up(hg, raw, "member", after)


def test_the_lookups_of_requests_whose_clients_left_do_not_pile_up(make_hubgate, make_fake):
    """GetFindings paced at one call per 5 s (max_wait 6 s). A member's one-finding note waits
    at the front of the lookup queue for the next call. Behind it the member sends notes on 100
    made-up identifiers of its account (512-character ids, 2048-character product ARNs: a
    260 KB body) and hangs up each 0.3 s later: each is answered 499 and frees its share and
    its body bytes. README: the request's findings still queued "that no other request waits
    for are dropped, unsent". They must not stay in memory: the lookup queue may hold no more
    findings than the requests still waiting for them name."""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 6000,
                                 "limits": {"GetFindings": {"rate": 0.2, "burst": 2}}}},
                      fake=fake)
    live = []
    for i in range(2):
        raw = json.dumps({"FindingIdentifiers": [ident(f"live-{i}")],
                          "Note": {"Text": "t", "UpdatedBy": "m"}}).encode()
        t = threading.Thread(target=hang_up_after_sending, args=(hg, raw, 6.0), daemon=True)
        t.start()
        live.append(t)
        time.sleep(0.6)
    sent = [0]
    stop = time.monotonic() + 3.0

    def flood(w):
        n = 0
        while time.monotonic() < stop:
            ids = [{"Id": f"w{w}-n{n}-k{k}-".ljust(512, "x"),
                    "ProductArn": ("arn:aws:securityhub:us-east-1::product/" + "p" * 2048)[:2048]}
                   for k in range(100)]
            raw = json.dumps({"FindingIdentifiers": ids,
                              "Note": {"Text": "t", "UpdatedBy": "m"}}).encode()
            hang_up_after_sending(hg, raw, 0.3)
            n += 1
            sent[0] += 1
    workers = [threading.Thread(target=flood, args=(w,), daemon=True) for w in range(24)]
    before = rss_kb(hg.proc.pid)
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    time.sleep(0.5)
    queued = metric(hg, "hubgate_enrichment_queued_findings")
    in_flight = metric(hg, "hubgate_requests_in_flight")
    after = rss_kb(hg.proc.pid)
    aborted = sum(1 for r in hg.audit_records() if r["status"] == 499)
    print(f"sent={sent[0]} aborted={aborted} queued={queued} in_flight={in_flight} "
          f"rss {before}->{after} kB")
    assert queued <= 100 * in_flight + 10, \
        (f"{queued:.0f} findings queued for {in_flight:.0f} requests in flight after "
         f"{aborted} requests were recorded 499; RSS {before} -> {after} kB")


# ---------------------------------------------------------------------------
# (a) a flood of early refusals, with reloads, leaves every answer recorded once and right


def test_a_members_flood_of_refusals_during_reloads_leaves_every_answer_recorded_once(
        make_hubgate, make_fake):
    """A member floods (24 threads) requests refused at every early stage (404 path, 415
    content type, 401 bad signature, 400 duplicate key, 403 suppression, 413 body) while the
    operator sends SIGHUP three times and the administrator sends allowed writes. Every answer
    has exactly one record, with the status it was answered, the right principal (null for
    the 401/404/413/415, the member's or the administrator's otherwise), the administrator's
    writes are all served and forwarded, and the chain verifies."""
    import signal as _signal
    from helpers import audit_verify

    fake = make_fake()
    hg = make_hubgate({"server": {"max_body_bytes": 65536}}, fake=fake)
    kinds = {
        "404": lambda: hg.send("PATCH", "/findings/batchupdate/", {"x": 1}, who="member"),
        "415": lambda: hg.send("PATCH", V1, {"FindingIdentifiers": [OWN]}, who="member",
                               content_type="text/plain"),
        "401": lambda: hg.send("PATCH", V1, {"FindingIdentifiers": [OWN]}, who="member",
                               body_for_signature=b"{}"),
        "400": lambda: hg.send("PATCH", V1, b'{"FindingIdentifiers": [], "FindingIdentifiers": []}',
                               who="member"),
        "403": lambda: hg.send("PATCH", V1, {"FindingIdentifiers": [OWN],
                                             "Workflow": {"Status": "SUPPRESSED"}}, who="member"),
        "413": lambda: hg.send("PATCH", V1, b"{" + b" " * 70000 + b"}", who="member"),
    }
    answers = []  # (who, expected status or None, Response)
    lock = threading.Lock()
    stop = time.monotonic() + 3.0

    def member(w):
        names = list(kinds)
        i = w
        while time.monotonic() < stop:
            name = names[i % len(names)]
            i += 1
            try:
                r = kinds[name]()
            except OSError:
                continue
            with lock:
                answers.append(("member", int(name), r))

    def admin():
        while time.monotonic() < stop:
            r = hg.send("PATCH", V1, {"FindingIdentifiers": [ADMINS],
                                      "Note": {"Text": "triage", "UpdatedBy": "admin"}},
                        who="admin")
            with lock:
                answers.append(("admin", 200, r))
            time.sleep(0.05)

    threads = [threading.Thread(target=member, args=(w,), daemon=True) for w in range(24)]
    threads.append(threading.Thread(target=admin, daemon=True))
    for t in threads:
        t.start()
    for _ in range(3):
        time.sleep(0.7)
        hg.proc.send_signal(_signal.SIGHUP)
    for t in threads:
        t.join()
    assert hg.proc.poll() is None
    admin_answers = [r for who, _, r in answers if who == "admin"]
    assert admin_answers and all(r.status == 200 for r in admin_answers), \
        [(r.status, r.text[:200]) for r in admin_answers if r.status != 200][:3]
    wrong = [(who, want, r.status, r.text[:160]) for who, want, r in answers
             if r.status != want]
    assert not wrong, wrong[:5]
    time.sleep(0.5)
    records = {}
    for rec in hg.audit_records():
        records.setdefault(rec["decision_id"], []).append(rec)
    for who, want, r in answers:
        rid = r.headers.get("x-hubgate-decision-id") or r.headers.get("x-amzn-requestid")
        recs = records.get(rid, [])
        assert len(recs) == 1, (who, want, rid, len(recs))
        rec = recs[0]
        assert rec["status"] == r.status, (rec["status"], r.status)
        principal = (rec.get("principal") or {}).get("id")
        expected = None if want in (401, 404, 413, 415) else who
        assert principal == expected, (want, principal, rec.get("error"))
        assert rec["forwarded"] is (want == 200), rec
    assert len(fake.buf_calls()) == len(admin_answers)
    verified = audit_verify(*hg.audit_files())
    assert verified.returncode == 0, verified.stdout + verified.stderr


# ---------------------------------------------------------------------------
# (a) log and record injection through texts a member chooses


def test_control_characters_in_identifiers_and_texts_stay_escaped_in_the_record_and_the_log(
        make_hubgate, make_fake):
    """Identifiers and note texts with a newline, CR, an ANSI escape, NUL-free C0 controls,
    U+2028/U+2029 and a forged JSON record: each record stays one line that parses, the chain
    verifies, and stderr (at debug, where a line per request is written) has no raw control
    character from the request."""
    from helpers import audit_verify, hubgate_env

    fake = make_fake()
    env = {**hubgate_env(), "RUST_LOG": "debug,hyper=info,h2=info,aws=info,aws_config=info,"
                                        "aws_smithy_runtime=info,aws_runtime=info,rustls=info"}
    hg = make_hubgate({}, fake=fake, env=env)
    evil = ('x\n{"chain":{"seq":1},"decision_id":"forged"}\r\n\u001b[31mRED\u001b[0m'
            '\u0007\u0008\u000b\u000c\u2028\u2029\u0085')
    bodies = [
        {"FindingIdentifiers": [ident("f-" + evil)], "Note": {"Text": "n", "UpdatedBy": "m"}},
        {"FindingIdentifiers": [OWN], "Note": {"Text": evil[:500], "UpdatedBy": evil[:100]}},
        {"FindingIdentifiers": [OWN], "Workflow": {"Status": "SUPPRESSED"},
         "Note": {"Text": evil, "UpdatedBy": "m"}},
    ]
    for body in bodies:
        for who in ("member", "admin"):
            r = hg.send("PATCH", V1, body, who=who)
            assert r.status in (200, 400, 403), (r.status, r.text)
    r = hg.send("POST", "/findings", {"Filters": {**OWN_ACCOUNT_FILTER,
                                                    "Id": [{"Value": evil,
                                                            "Comparison": "EQUALS"}]}},
                who="member")
    assert r.status in (200, 400, 403), (r.status, r.text)
    time.sleep(0.5)
    raw = hg.audit_path.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        rec = json.loads(line)
        assert rec["decision_id"] != "forged"
        assert b"\x1b" not in line and b"\r" not in line
    assert len(lines) - 1 == 7, len(lines) - 1
    verified = audit_verify(hg.audit_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    err = hg.stderr_path.read_bytes()
    for ch in (b"\x1b", b"\r", b"\x07", b"\x08", b"\x0b", b"\x0c"):
        assert ch not in err, (ch, err[max(0, err.find(ch) - 200):err.find(ch) + 50])
