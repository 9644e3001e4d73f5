"""Adversarial review (quota, pacing, coalescing, the lookup cache; one replica, no Redis).

- An upstream that sends a forwarded write's answer head and then stalls its body: hubgate
  must answer within upstream.timeout_ms (504), not hang holding the request, its audit slot
  and its in-flight registration.
- One member keeping many read-only GetFindings of its own waiting for the account's
  GetFindings quota (a SIEM export through hubgate, or on purpose): hubgate's lookups, which
  every member's decision needs, must not starve behind them (429 for everyone else).
- One member keeping many allowed writes waiting for the BatchUpdateFindings quota: an
  administrator's write must not become one ticket among them all (429).
- One member keeping the lookups busy (unknown findings, request after request): an
  administrator's read must still get its turn (lookups must not take strict priority).
- A wait for quota that runs out: measured in hubgate_quota_wait_seconds, counted in
  hubgate_quota_exhausted_total, and the refused request is never sent later.
- Held: a Severity.Normalized-only change is written through as the label Security Hub
  derives, so the next decision (from the cache) sees the raise.
- Held: a forward throttled with HTTP 400 and a throttling error type (namespace after a
  colon, or LimitExceededException) is 429 THROTTLED, counted, and sent once.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from helpers import (ADMIN_ACCOUNT, CALLERS_TOML, MEMBER_ACCOUNT, OTHER_ACCOUNT,
                     OWN_ACCOUNT_FILTER, Creds, LoopbackServer, assert_envelope, finding,
                     ident, recv_head)


class StallingUpstream:
    """A minimal HTTP/1.1 upstream on 127.0.0.1: reads each request whole, answers with the
    head of a 200 and part of its body, then sends nothing more until `release` (or the hold
    time) ends. Signatures are not checked: only what hubgate does with the answer matters."""

    STALLED_200 = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   b"x-amzn-RequestId: stall-1\r\nContent-Length: 1000\r\n\r\n"
                   b'{"ProcessedFindings": [')

    def __init__(self, hold: float = 10.0, answer: bytes = STALLED_200):
        """answer: the bytes sent for every request before the stall (a whole response, for
        an upstream that answers and then keeps the connection idle)."""
        self.hold = hold
        self.answer = answer
        self.release = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self.server = LoopbackServer(lambda conn, _n: self._one(conn))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def _one(self, conn: socket.socket):
        # LoopbackServer closes the connection and ignores OSError.
        conn.settimeout(self.hold + 5)
        data = recv_head(conn)
        if data is None:
            return
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            rest += chunk
        self.requests.append((method, path))
        conn.sendall(self.answer)
        self.release.wait(self.hold)

    def stop(self):
        self.release.set()
        self.server.close()


@pytest.fixture
def stalling():
    up = StallingUpstream()
    yield up
    up.stop()


def test_a_forwarded_writes_answer_that_stalls_mid_body_is_504_within_the_timeout(
        stalling, make_hubgate):
    """The write's answer head came within upstream.timeout_ms, its body never does: hubgate
    reads that answer (to learn what was processed) and must stop at the timeout, answering
    504, rather than hold the caller until the upstream lets go."""
    hg = make_hubgate({"upstream": {"timeout_ms": 500}}, upstream_endpoint=stalling.endpoint)
    # an administrator's note needs no lookup: the only upstream call is the forward
    body = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
    started = time.monotonic()
    resp = hg.buf(body, who="admin")
    elapsed = time.monotonic() - started
    assert elapsed < 4, f"hubgate held the request {elapsed:.1f}s with timeout_ms = 500"
    err = assert_envelope(resp, 504, "UPSTREAM_TIMEOUT", "InternalException")
    assert stalling.requests == [("PATCH", "/findings/batchupdate")]
    rec = hg.audit_for(err["error"]["request_id"])
    # An answer whose body never came is no answer (README, `forwarded`): the write may have
    # been applied, which the record says (until the forward review of stop 48 it said
    # forwarded: true, upstream_status 200, as if Security Hub had answered).
    assert rec["forwarded"] is False and rec["outcome_unknown"] is True, rec
    assert rec["status"] == 504, rec
    assert rec["error"]["message"].endswith("Security Hub may have applied it"), rec["error"]


SECOND_MEMBER = Creds("HGTESTMEMBER00000002", "second-member-secret")
TWO_MEMBERS = CALLERS_TOML + f"""
[[caller]]
id = "member-b"
account_id = "{OTHER_ACCOUNT}"
role = "member"
access_key_id = "{SECOND_MEMBER.access_key}"
secret_access_key = "{SECOND_MEMBER.secret_key}"
"""


class Flood:
    """`threads` threads sending `send()` again and again until stopped, counting the statuses
    answered. While it runs, `timed(call)` makes one more request and returns it with how long
    it took."""

    def __init__(self, send, threads: int):
        self.send, self.stop, self.answered = send, threading.Event(), {}
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self.stop.is_set():
            try:
                status = self.send().status
                self.answered[status] = self.answered.get(status, 0) + 1
            except OSError:
                pass

    def timed(self, settle: float, call):
        """Starts the flood, waits `settle` seconds for it to fill the queues, then times
        `call()`; the flood stops either way."""
        for t in self.threads:
            t.start()
        try:
            time.sleep(settle)
            started = time.monotonic()
            resp = call()
            return resp, time.monotonic() - started
        finally:
            self.stop.set()
            for t in self.threads:
                t.join(10)


def test_a_members_read_only_get_findings_flood_does_not_starve_other_accounts_lookups(
        make_fake, make_hubgate):
    """Member A keeps 24 of its own GetFindings waiting for the GetFindings quota (3/s), each
    retried as soon as it is answered. Member B's note on its own finding needs one lookup:
    A's reads hold one place in line and the lookups another, so B is answered within
    quota.max_wait_ms, where, taking turns with every waiting read, the lookup got about one
    call in 25 and B got 429. The two places race for each call the bucket gives (about 3 a
    second): B usually waits under a second, and the bound leaves room for a run of lost races
    on a loaded machine (2.5 s once in a full suite run)."""
    fake = make_fake()
    fake.quota_on()
    hg = make_hubgate({"quota": {"max_wait_ms": 3000}}, fake=fake, callers_toml=TWO_MEMBERS)
    flood = Flood(lambda: hg.send("POST", "/findings",
                                  {"MaxResults": 1, "Filters": OWN_ACCOUNT_FILTER}, who="member"),
                  threads=24)
    # after 1.5 s the flood has drained the burst and every reader is waiting for quota
    resp, elapsed = flood.timed(1.5, lambda: hg.buf(
        {"FindingIdentifiers": [ident("f-other")], "Note": {"Text": "mine", "UpdatedBy": "b"}},
        creds=SECOND_MEMBER))
    answered = flood.answered
    assert resp.status == 200, (resp.status, resp.text, f"{elapsed:.1f}s", answered)
    assert elapsed < 2.9, f"B's lookup waited {elapsed:.1f}s behind A's reads"
    assert answered.get(200, 0) > 0, answered
    assert fake.op_stats("GetFindings")["throttled"] == 0
    assert fake.findings()["f-other"]["Note"]["Text"] == "mine"


def metric_samples(hg) -> dict:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    out = {}
    for family in text_string_to_metric_families(hg.admin("/metrics").text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_a_wait_for_quota_that_runs_out_is_measured_and_counted(make_fake, make_hubgate):
    """An SRE reads hubgate_quota_wait_seconds to see how long requests wait for the account's
    quota: the waits that ran out (429) are the ones that matter most, and must be in it; and
    hubgate's own pacing running out is counted apart from Security Hub's throttles. The
    request refused 429 is never sent afterwards. (Since stop 50 a wait the bucket cannot end
    before the deadline is refused at once, so the refused wait is in the histogram with about
    no time; until then it waited out its 300 ms.)"""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 300},
                       "quota.limits": {"BatchUpdateFindings": {"rate": 1.0, "burst": 2}}},
                      fake=fake)
    body = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
    assert hg.buf(body, who="admin").status == 200
    assert_envelope(hg.buf(body, who="admin"), 429, "THROTTLED", "ThrottlingException")
    m = metric_samples(hg)
    assert m[("hubgate_quota_wait_seconds_count", frozenset())] == 2, m
    assert m[("hubgate_quota_wait_seconds_sum", frozenset())] < 0.25, m
    op = frozenset({"operation": "BatchUpdateFindings"}.items())
    assert m.get(("hubgate_quota_exhausted_total", op)) == 1, m
    assert m.get(("hubgate_upstream_throttled_total", op), 0) == 0, m
    # the refused request is not sent later, once the quota it waited for comes in
    time.sleep(1.3)
    assert len(fake.buf_calls()) == 1


SAME_ACCOUNT_MEMBER = Creds("HGTESTMEMBER00000003", "same-account-member-secret")


@pytest.mark.parametrize("member_account, target", [
    (MEMBER_ACCOUNT, "f-own-high"),
    # a member principal in the administrator's own account: a line per account would put
    # the administrator's write behind all of the member's
    (ADMIN_ACCOUNT, "f-admin"),
])
def test_a_members_flood_of_allowed_writes_does_not_starve_an_administrators_write(
        make_fake, make_hubgate, member_account, target):
    """Member A keeps 30 allowed notes on its own finding waiting for the BatchUpdateFindings
    quota (paced here at 4/s). The administrator's note waits for the same bucket: each
    caller's requests wait for it one at a time, so the administrator competes with A's one
    waiting write, not with all 30, and is answered within quota.max_wait_ms."""
    fake = make_fake()
    callers = CALLERS_TOML + f"""
[[caller]]
id = "member-a"
account_id = "{member_account}"
role = "member"
access_key_id = "{SAME_ACCOUNT_MEMBER.access_key}"
secret_access_key = "{SAME_ACCOUNT_MEMBER.secret_key}"
"""
    hg = make_hubgate({"quota": {"max_wait_ms": 3000},
                       "quota.limits": {"BatchUpdateFindings": {"rate": 4.0, "burst": 2}},
                       "enrichment": {"cache_ttl_ms": 60000}}, fake=fake, callers_toml=callers)
    mine = {"FindingIdentifiers": [ident(target)],
            "Note": {"Text": "bulk", "UpdatedBy": "a"}}
    first = hg.buf(mine, creds=SAME_ACCOUNT_MEMBER)  # A's finding's state is now cached
    assert first.status == 200, first.text
    flood = Flood(lambda: hg.buf(mine, creds=SAME_ACCOUNT_MEMBER), threads=30)
    resp, elapsed = flood.timed(1.0, lambda: hg.buf(
        {"FindingIdentifiers": [ident("f-other")], "Note": {"Text": "admin", "UpdatedBy": "sec"}},
        who="admin"))
    answered = flood.answered
    assert resp.status == 200, (resp.status, resp.text, f"{elapsed:.1f}s", answered)
    assert elapsed < 2.5, f"the administrator's write waited {elapsed:.1f}s"
    assert answered.get(200, 0) > 0, answered
    assert fake.findings()["f-other"]["Note"]["Text"] == "admin"


def test_a_normalized_only_severity_is_written_through_as_the_label_security_hub_derives(
        make_fake, make_hubgate):
    """The member raises its MEDIUM finding with Severity.Normalized = 95 alone; Security Hub
    derives CRITICAL. Another writer then sets MEDIUM again. With the settle journal off, only
    the write-through can know: the member's HIGH, judged from the cache, is a lowering of
    CRITICAL (a write-through that kept MEDIUM, or a new lookup, would allow it)."""
    fake = make_fake()
    hg = make_hubgate({"enrichment": {"cache_ttl_ms": 60000, "settle_ms": 0}}, fake=fake)
    raised = hg.buf({"FindingIdentifiers": [ident("f-own-medium")],
                     "Severity": {"Normalized": 95}}, who="member")
    assert raised.status == 200, raised.text
    assert fake.findings()["f-own-medium"]["Severity"]["Label"] == "CRITICAL"
    fake.add_findings([finding("f-own-medium", MEMBER_ACCOUNT, "MEDIUM", 45)])
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-medium")],
                   "Severity": {"Label": "HIGH"}}, who="member")
    assert resp.status == 403, resp.text
    assert "(CRITICAL to HIGH)" in resp.json()["error"]["message"], resp.text
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["metrics"]["counter_cache_hits"] == 1, rec["metrics"]
    assert rec["metrics"]["counter_lookup_calls"] == 0, rec["metrics"]
    assert fake.findings()["f-own-medium"]["Severity"]["Label"] == "MEDIUM"


def test_the_lookups_metric_counts_get_findings_calls_not_requests_that_shared_them(
        make_fake, make_hubgate):
    """Two members' requests about one finding arrive together and share one GetFindings call:
    hubgate_enrichment_lookups_total ("GetFindings calls made for enrichment") must say 1, as
    Security Hub (and the account's quota) saw, not 1 per request that waited on it."""
    fake = make_fake()
    hg = make_hubgate({}, fake=fake, callers_toml=TWO_MEMBERS)
    fake.configure(delay_ms=400)
    body = {"FindingIdentifiers": [ident("f-other")], "Note": {"Text": "t", "UpdatedBy": "u"}}
    answers = []
    threads = [threading.Thread(target=lambda c=c: answers.append(hg.buf(body, creds=c)))
               for c in (SECOND_MEMBER, SECOND_MEMBER)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert sorted(a.status for a in answers) == [200, 200], [a.text for a in answers]
    assert fake.op_stats("GetFindings")["calls"] == 1
    m = metric_samples(hg)
    assert m[("hubgate_enrichment_lookups_total", frozenset())] == 1, m


def test_a_members_lookup_flood_does_not_starve_an_administrators_read(make_fake, make_hubgate):
    """Member A names new, unknown findings in request after request (8 at a time, 20 each):
    every one costs a GetFindings lookup, so lookups always wait for quota. The
    administrator's own GetFindings (read-only) takes turns with them and is answered within
    quota.max_wait_ms; giving lookups strict priority left it waiting until A stopped (429)."""
    fake = make_fake()
    fake.quota_on()
    hg = make_hubgate({"quota": {"max_wait_ms": 3000}}, fake=fake)
    counter = iter(range(10**6))
    flood = Flood(lambda: hg.buf({"FindingIdentifiers": [ident(f"nope-{next(counter)}")
                                                         for _ in range(20)],
                                  "Note": {"Text": "t", "UpdatedBy": "a"}}, who="member"),
                  threads=8)
    resp, elapsed = flood.timed(1.5, lambda: hg.send("POST", "/findings", {"MaxResults": 1},
                                                     who="admin"))
    answered = flood.answered
    assert resp.status == 200, (resp.status, resp.text, f"{elapsed:.1f}s", answered)
    assert answered.get(403, 0) > 0, answered  # A's lookups were being made meanwhile
    assert fake.op_stats("GetFindings")["throttled"] == 0


def throttle_answer(status: str, error_type: str) -> bytes:
    body = b'{"__type": "ThrottlingException", "message": "Rate exceeded"}'
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"x-amzn-ErrorType: {error_type}\r\nx-amzn-RequestId: thr-1\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


@pytest.mark.parametrize("status, error_type", [
    # how AWS's JSON services spell it: the type, a colon, the namespace
    ("400 Bad Request",
     "ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/"),
    ("400 Bad Request", "LimitExceededException"),
])
def test_a_throttle_spelled_as_a_400_with_an_error_type_is_429_throttled(
        make_hubgate, status, error_type):
    """Security Hub may throttle with HTTP 400 and a throttling error type (with its namespace
    after a colon): a forward so answered is 429 THROTTLED (which SDKs back off on, and which
    tells the caller nothing was applied), counted as a throttle, and sent once."""
    up = StallingUpstream(hold=0, answer=throttle_answer(status, error_type))
    try:
        hg = make_hubgate({}, upstream_endpoint=up.endpoint)
        resp = hg.buf({"FindingIdentifiers": [ident("f-admin")],
                       "Note": {"Text": "t", "UpdatedBy": "u"}}, who="admin")
        body = assert_envelope(resp, 429, "THROTTLED", "ThrottlingException")
        assert up.requests == [("PATCH", "/findings/batchupdate")]
        rec = hg.audit_for(body["error"]["request_id"])
        assert rec["throttled"] is True, rec
        op = frozenset({"operation": "BatchUpdateFindings"}.items())
        assert metric_samples(hg).get(("hubgate_upstream_throttled_total", op)) == 1
    finally:
        up.stop()


def test_a_lookup_sent_but_unanswered_at_the_deadline_is_not_reported_as_quota(
        make_fake, make_hubgate):
    """The quota had room: the GetFindings call went out at once, and Security Hub is slow
    (1.5 s). The member's request can wait quota.max_wait_ms = 500: it ends then, as 504
    UPSTREAM_TIMEOUT, not as 429 "hubgate's GetFindings quota had no room", which sent an SRE
    after the quota (and counted in hubgate_quota_exhausted_total) during a latency problem."""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 500}, "upstream": {"timeout_ms": 4000}},
                      fake=fake)
    fake.configure(delay_ms=1500)
    started = time.monotonic()
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Note": {"Text": "t", "UpdatedBy": "u"}}, who="member")
    elapsed = time.monotonic() - started
    body = assert_envelope(resp, 504, "UPSTREAM_TIMEOUT", "InternalException")
    assert elapsed < 1.4, f"the request waited {elapsed:.1f}s with max_wait_ms = 500"
    rec = hg.audit_for(body["error"]["request_id"])
    assert rec["throttled"] is False and rec["forwarded"] is False, rec
    assert fake.buf_calls() == []
    m = metric_samples(hg)
    assert not any(k[0] == "hubgate_quota_exhausted_total" for k in m), m
