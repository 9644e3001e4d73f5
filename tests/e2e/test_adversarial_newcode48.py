"""Adversarial review of session 48's new code (b091373..): the stop's halt, the settings
validated at load, contested findings, lookups retried, the text log's escaping.

- HOLE (fixed): the stop's halt striking while hubgate read a forwarded BatchUpdateFindings
  answer (its head came, its body had not) returned before marking the answer lost: the record
  said forwarded, upstream_status 200, outcome_unknown false, for a write whose
  ProcessedFindings nobody read, against README (an unreadable answer is outcome unknown, not
  forwarded) and unlike a timeout or a cut body at the same point (src/proxy.rs read_answer:
  one exit for every unread answer).
- Held: a stop's halt while a forward's head is awaited (outcome unknown, one record).
- Held: a misspelt `library` rule name ("reopn"): `hubgate check` names it (lint), and serve
  starting with it is README's documented scope of the textual checks (not changed).
"""

from __future__ import annotations

import signal
import subprocess
import threading

import pytest

from helpers import ident, wait_until
from test_adversarial_quota import StallingUpstream


@pytest.fixture
def stalling():
    up = StallingUpstream(hold=15.0)
    yield up
    up.stop()


def test_a_halt_while_the_answer_body_is_read_records_the_outcome_unknown(stalling,
                                                                          make_hubgate):
    """SRE: SIGTERM while an administrator's BatchUpdateFindings has its answer's head (200)
    but not its body, and shutdown_grace_ms runs out. The record must say what a timeout at
    the same point says: not forwarded (no answer read), outcome unknown, 503
    UPSTREAM_INTERRUPTED. It said forwarded with the head's 200 and outcome_unknown false, so
    an auditor read a write Security Hub answered, though nobody read which findings it
    processed."""
    hg = make_hubgate({"server": {"shutdown_grace_ms": 300},
                       "upstream": {"timeout_ms": 20000}},
                      upstream_endpoint=stalling.endpoint)
    body = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
    answered = {}

    def send():
        try:
            answered["r"] = hg.buf(body, who="admin")
        except OSError as e:
            answered["r"] = e

    t = threading.Thread(target=send, daemon=True)
    t.start()
    wait_until(lambda: stalling.requests, 10, "the write at the stalling upstream")
    hg.proc.send_signal(signal.SIGTERM)
    try:
        hg.proc.wait(0.3 + 3 + 5)
    except subprocess.TimeoutExpired:
        pytest.fail("hubgate did not end after its grace period")
    t.join(5)
    records = hg.audit_records()
    assert len(records) == 1, records
    rec = records[0]
    assert rec["status"] == 503 and rec["error"]["code"] == "UPSTREAM_INTERRUPTED", rec
    assert rec.get("outcome_unknown") is True and rec["forwarded"] is False, rec
    assert "Security Hub may have applied it" in rec["error"]["message"], rec["error"]

