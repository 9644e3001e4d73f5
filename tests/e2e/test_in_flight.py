"""Writes hubgate has sent and Security Hub has not answered yet. Security Hub may apply such a
write at any moment before its answer comes, and hubgate writes it through to the cache (or
keeps it in the settle journal) only once it has. A request decided in between, on one of the
write's findings, must hold whether the write lands or not (README: Quota, "Writes in flight").

The fake answers BatchUpdateFindings (or BatchImportFindings) seconds after it receives it, so
each test has a window in which the administrator's write is in flight; the member's request is
sent only once the fake has the write, and answered while the write is still unanswered."""

from __future__ import annotations

import json
import threading
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from helpers import MEMBER_ACCOUNT, PRODUCT_ARN, assert_envelope, ident

LOWER = "member accounts may not lower a finding's severity"
FID = "f-own-medium"  # SEED: the member's finding, MEDIUM
NOTE = {"Note": {"Text": "looking into it", "UpdatedBy": "in-flight-e2e"}}
ANSWER_S = 1.2  # within the e2e configuration's upstream.timeout_ms (2 s)


def body(*fids: str, **update) -> dict:
    return {"FindingIdentifiers": [ident(f) for f in fids], **update}


@pytest.fixture
def stack(make_fake, make_hubgate):
    def make(enrichment: dict, upstream: dict | None = None):
        fake = make_fake()
        cfg = {"enrichment": {"enabled": True, **enrichment}}
        if upstream:
            cfg["upstream"] = upstream
        return fake, make_hubgate(cfg, fake=fake)
    return make


def in_flight(fake, send, path: str = "/findings/batchupdate") -> tuple[threading.Thread, dict]:
    """Starts `send` (the administrator's write) in a thread; returns once the fake has it."""
    before = len(fake.requests(path=path))
    answers: dict = {}
    thread = threading.Thread(target=lambda: answers.__setitem__("admin", send()))
    thread.start()
    until = time.monotonic() + 10
    while len(fake.requests(path=path)) == before:
        assert time.monotonic() < until, "the write never reached the fake"
        time.sleep(0.02)
    return thread, answers


def writes_in_flight(hg) -> float:
    for family in text_string_to_metric_families(hg.admin("/metrics").text):
        for s in family.samples:
            if s.name == "hubgate_enrichment_writes_in_flight":
                return s.value
    raise AssertionError("no hubgate_enrichment_writes_in_flight in /metrics")


# (enrichment settings, fake settings): the member's state from the cache, where the raise is
# not written through until its answer; and from GetFindings, with Security Hub applying the
# raise only after it answers (its own lag), so that the lookup reads MEDIUM.
CASES = {
    "cached": ({"cache_ttl_ms": 60000}, {}),
    "looked up": ({"cache_ttl_ms": 0}, {"apply_delay_ms": 4000}),
}


@pytest.mark.parametrize("case", CASES)
def test_a_lowering_decided_while_a_raise_is_in_flight_is_refused(stack, case):
    """The administrator raises F to CRITICAL; the member's HIGH, decided before Security Hub
    answers the raise, is judged with the raise laid over (CRITICAL to HIGH) as well as on
    MEDIUM, refused at once, and never sent: the raise stands."""
    enrichment, lag = CASES[case]
    fake, hg = stack(enrichment)
    assert hg.buf(body(FID, **NOTE), who="member").status == 200  # cached: MEDIUM
    fake.configure(answer_delay_ms={"BatchUpdateFindings": int(ANSWER_S * 1000)}, **lag)
    raising, answers = in_flight(
        fake, lambda: hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="admin"))

    lowered = hg.buf(body(FID, Severity={"Label": "HIGH"}), who="member")
    assert writes_in_flight(hg) == 1
    assert raising.is_alive(), "decided while the raise was still unanswered"
    assert_envelope(lowered, 403, "POLICY_DENIED", "AccessDeniedException")
    assert f"{LOWER} (CRITICAL to HIGH)" in lowered.json()["error"]["message"], lowered.text
    raising.join(30)
    assert answers["admin"].status == 200, answers["admin"].text
    assert writes_in_flight(hg) == 0
    rec = hg.audit_for(lowered.headers["x-amzn-requestid"])
    assert rec["forwarded"] is False, rec
    assert rec["settling"] == [0], "judged both ways, with the raise laid over F"
    time.sleep(lag.get("apply_delay_ms", 0) / 1000)
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"
    sent = [json.loads(c["body"]).get("Severity") for c in fake.buf_calls()]
    assert sent == [None, {"Label": "CRITICAL"}], "the note and the raise; never the HIGH"


def test_a_raise_that_times_out_is_still_laid_over(stack):
    """Security Hub applies the raise but answers after upstream.timeout_ms: while it is in
    flight the member's lowering is refused on the write in flight, and after hubgate gives up
    (504), on the settle journal, which keeps a write of unknown outcome."""
    fake, hg = stack({"cache_ttl_ms": 0}, upstream={"timeout_ms": 1500})
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 3000}, apply_delay_ms=2500)
    raising, answers = in_flight(
        fake, lambda: hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="admin"))
    during = hg.buf(body(FID, Severity={"Label": "HIGH"}), who="member")
    assert raising.is_alive()
    assert f"{LOWER} (CRITICAL to HIGH)" in during.json()["error"]["message"], during.text
    raising.join(30)
    assert answers["admin"].status == 504, answers["admin"].text
    after = hg.buf(body(FID, Severity={"Label": "HIGH"}), who="member")
    assert f"{LOWER} (CRITICAL to HIGH)" in after.json()["error"]["message"], after.text
    time.sleep(2.5)
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"
    assert len(fake.buf_calls()) == 1, "only the raise was sent"


def test_a_change_that_holds_either_way_is_allowed_while_a_write_is_in_flight(stack):
    """Not everything is refused meanwhile: the member's note holds whether the
    administrator's raise lands or not, so it is allowed, judged both ways, and sent."""
    fake, hg = stack({"cache_ttl_ms": 60000})
    assert hg.buf(body(FID, **NOTE), who="member").status == 200
    fake.configure(answer_delay_ms={"BatchUpdateFindings": int(ANSWER_S * 1000)})
    raising, answers = in_flight(
        fake, lambda: hg.buf(body(FID, Severity={"Label": "CRITICAL"}), who="admin"))
    note = hg.buf(body(FID, Note={"Text": "second look", "UpdatedBy": "member"}), who="member")
    raising.join(30)
    assert answers["admin"].status == 200, answers["admin"].text
    assert note.status == 200, note.text
    assert hg.audit_for(note.headers["x-hubgate-decision-id"])["settling"] == [0]
    assert fake.findings()[FID]["Note"]["Text"] == "second look"
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"


def test_an_import_in_flight_makes_its_findings_state_unknown_until_it_is_answered(stack):
    """An administrator's re-import of F (an effect hubgate cannot model) is in flight: the
    member's state-reading request on F is refused with 503 STATE_SETTLING, retryable after a
    second, without a GetFindings call. With the settle journal off, it is served again as soon
    as the import is answered."""
    fake, hg = stack({"cache_ttl_ms": 60000, "settle_ms": 0})
    assert hg.buf(body(FID, **NOTE), who="member").status == 200
    fake.configure(answer_delay_ms={"BatchImportFindings": int(ANSWER_S * 1000)})
    reimport = {"SchemaVersion": "2018-10-08", "Id": FID, "ProductArn": PRODUCT_ARN,
                "GeneratorId": "g", "AwsAccountId": MEMBER_ACCOUNT, "Types": ["Effects/x"],
                "CreatedAt": "2026-11-24T00:00:00Z", "UpdatedAt": "2026-11-24T00:00:00Z",
                "Severity": {"Label": "CRITICAL"}, "Title": "t", "Description": "d",
                "Resources": [{"Type": "Other", "Id": "r"}]}
    importing, answers = in_flight(
        fake, lambda: hg.send("POST", "/findings/import", {"Findings": [reimport]}, who="admin"),
        path="/findings/import")
    calls = fake.op_stats("GetFindings")["calls"]
    refused = hg.buf(body(FID, **NOTE), who="member")
    assert importing.is_alive()
    err = assert_envelope(refused, 503, "STATE_SETTLING", "ServiceUnavailableException")["error"]
    assert f'finding "{FID}"' in err["message"], err
    assert "BatchImportFindings" in err["message"] and "not answered yet" in err["message"], err
    assert refused.headers["retry-after"] == "1", refused.headers
    assert fake.op_stats("GetFindings")["calls"] == calls, "refused before any lookup"
    importing.join(30)
    assert answers["admin"].status == 200, answers["admin"].text
    served = hg.buf(body(FID, **NOTE), who="member")
    assert served.status == 200, served.text
