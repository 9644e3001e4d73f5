"""Adversarial review of what hubgate tells operators, third round: the OCSF event of a request
with a method of its own, and /readyz while the audit sink has stalled.

HOLE (fixed): an OCSF event's `http_request.http_method` was the request's method as it came.
OCSF 1.6.0 makes it an enum (OPTIONS, GET, HEAD, POST, PUT, DELETE, TRACE, CONNECT, PATCH);
hyper accepts any token, and routing answers 404 to `FOO`, `patch` or `PROPFIND`: each such
request, from a client without keys, made an event that fails the schema, which a SIEM that
validates on intake drops, so an attacker's probes never reached the SIEM. Such a method is now
left out of `http_method` and kept in `unmapped.http_method`.

HOLE (fixed): /readyz said `audit: ok` and `ready: true` while the audit sink had stalled (a
FIFO whose reader stopped reading, a hung disk: no write fails, the queue stays full) and every
forwarded request was refused 503 AUDIT_UNAVAILABLE ("the queue stayed full"): a load balancer
kept sending all traffic to a replica that could forward nothing, and an SRE alerting on
readiness saw nothing. The check now fails once a request found the queue full for
`enqueue_timeout_ms` and while it is still full of records; ready again once the writer
makes room.

HOLE (fixed): `hubgate_audit_queue_depth` ("audit records waiting for the writer") was the
queue's used capacity, which holds the place each forwarded request reserves before its forward
until its answer: with Security Hub slow, the gauge stood at the number of forwards in flight,
up to `queue_capacity`, while the writer was idle and nothing waited for it, and an SRE
alerting on it paged for a slow audit disk. It now counts records sent to the writer and not
yet taken.

HOLE (fixed; unit test `audit::tests::every_record_a_failed_flush_loses_reaches_the_log`, as a
batch that fails only at its flush is not reproducible from outside): `hubgate_audit_records_total`
counted a record when its line entered hubgate's buffer. A batch whose flush then failed (a full
disk) went to the operational log whole, yet its lines were counted written (7 of 20 in the
unit test, 0 in the sink): a dashboard comparing records with requests saw no gap. Records are
now counted once flushed.

HOLE (fixed): the places forwards reserve for their records (before the forward, held until
Security Hub answers) were taken from `audit.queue_capacity` (256, as `server.max_in_flight`):
while that many forwards waited on a slow Security Hub, a request refused meanwhile (a keyless
404 or 401, a 503 OVERLOADED, a member's denial) waited `enqueue_timeout_ms` for a place and its
record went to the operational log only, not to the audit file and its chain. Forwards now
reserve from a pool of their own (`server.max_in_flight` places) once the room of records
waiting for the writer (`queue_capacity`) has space; only records waiting hold that room.

Held: OCSF events of the other odd request targets (`OPTIONS *`, `CONNECT host:port`, an
absolute-form URI) and of bodies with empty identifiers validate.
Held: metric label values are all fixed by hubgate (operations, kinds, reasons, ops); no
caller-chosen text reaches /metrics.
"""

from __future__ import annotations

import threading

from helpers import assert_envelope, ident, wait_until
from test_adversarial_audit_durability import StalledFifo
from test_adversarial_observe import assert_valid_ocsf, ocsf_event

NOTE_OWN = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}


def test_an_ocsf_event_of_a_method_ocsf_does_not_list_still_validates(make_fake, make_hubgate):
    """A client without keys (and a member) sends requests with methods OCSF's enum does not
    list: each is refused 404 and recorded by an event that validates, its method kept in
    `unmapped`."""
    hg = make_hubgate({"audit": {"format": "ocsf"}}, fake=make_fake())
    for method, who in [("FOO", None), ("patch", "member"), ("PROPFIND", None)]:
        resp = hg.send(method, "/findings/batchupdate", NOTE_OWN, who=who)
        assert_envelope(resp, 404, "NOT_FOUND", "ResourceNotFoundException")
        event = ocsf_event(hg, resp.headers["x-amzn-requestid"])
        assert_valid_ocsf(event)
        assert "http_method" not in event["http_request"], event["http_request"]
        assert event["unmapped"]["http_method"] == method, event["unmapped"]
        assert event["action"] == "Denied" and event["disposition"] == "Blocked", event
    # a method OCSF lists is mapped, and not repeated in unmapped
    resp = hg.buf(NOTE_OWN, who="member")
    assert resp.status == 200, resp.text
    event = ocsf_event(hg, resp.headers["x-hubgate-decision-id"])
    assert_valid_ocsf(event)
    assert event["http_request"]["http_method"] == "PATCH"
    assert "http_method" not in event["unmapped"]


def test_readyz_fails_while_the_audit_sink_stalls(make_fake, make_hubgate, tmp_path):
    """The FIFO's reader stops reading; requests fill the pipe and the queue until one is
    refused 503 AUDIT_UNAVAILABLE. /readyz must then say not ready (audit not ok), and ready
    again once the reader reads on."""
    fifo = StalledFifo(tmp_path, 4096)
    hg = make_hubgate({"audit": {"path": str(fifo.path), "include_input": True,
                                 "queue_capacity": 2, "enqueue_timeout_ms": 300,
                                 "write_timeout_ms": 200}},
                      fake=make_fake(), start=False)
    hg.start(ready_timeout=8)
    assert fifo.opened.wait(5)
    note = {"FindingIdentifiers": [ident("f-admin")],
            "Note": {"Text": "stall " + "s" * 400, "UpdatedBy": "e2e"}}
    for _ in range(40):
        resp = hg.buf(note, who="admin")
        if resp.status != 200:
            break
    assert_envelope(resp, 503, "AUDIT_UNAVAILABLE", "ServiceUnavailableException")
    assert "queue stayed full" in resp.json()["error"]["message"], resp.text
    ready = hg.admin("/readyz")
    try:
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["audit"]["ok"] is False, ready.text
        assert ready.json()["ready"] is False, ready.text
    finally:
        fifo.read_on()
    wait_until(lambda: hg.admin("/readyz").status_code == 200, 5, "the sink to drain")
    assert hg.admin("/readyz").json()["checks"]["audit"]["ok"] is True
    hg.stop()
    fifo.drain()


def slow_forwards(make_fake, make_hubgate, n: int = 4):
    """hubgate with an audit queue of `n` places and `n` forwards in flight that Security Hub
    answers only after 2.5 s; returns (hg, threads, statuses)."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"queue_capacity": n, "enqueue_timeout_ms": 300},
                       "upstream": {"timeout_ms": 5000}}, fake=fake)
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 2500})
    note = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "slow", "UpdatedBy": "u"}}
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(hg.buf(note, who="admin").status))
               for _ in range(n)]
    for th in threads:
        th.start()
    wait_until(lambda: len(fake.buf_calls()) == n, 5, "the forwards to reach Security Hub")
    return hg, threads, statuses


def test_the_audit_queue_depth_counts_records_not_places_of_forwards_in_flight(make_fake,
                                                                               make_hubgate):
    hg, threads, statuses = slow_forwards(make_fake, make_hubgate)
    metrics = hg.admin("/metrics").text
    ready = hg.admin("/readyz")
    for th in threads:
        th.join(10)
    assert statuses == [200] * 4, statuses
    assert "hubgate_audit_queue_depth 0\n" in metrics, \
        [line for line in metrics.splitlines() if "audit_queue" in line]
    assert ready.status_code == 200, ready.text


def test_a_refused_request_s_record_is_written_while_forwards_hold_the_queue(make_fake,
                                                                             make_hubgate):
    hg, threads, _ = slow_forwards(make_fake, make_hubgate)
    refused = hg.send("GET", "/nothing", b"", who=None)
    for th in threads:
        th.join(10)
    assert refused.status == 404, refused.text
    hg.audit_for(refused.headers["x-amzn-requestid"])
