"""policy.mode = "dry-run", enrichment disabled, and HTTP/2 (h2c) on the proxy port."""

import json
import socket

import h2.config
import h2.connection
import h2.events
import pytest

from helpers import assert_envelope, ident, sign, CALLERS

SUPPRESS = {"FindingIdentifiers": [ident("f-own-high")], "Workflow": {"Status": "SUPPRESSED"}}


@pytest.fixture
def dry_run(make_hubgate, seeded_fake):
    return make_hubgate({"policy": {"mode": "dry-run"}}, fake=seeded_fake)


def test_dry_run_forwards_and_records_what_would_be_denied(dry_run):
    hg = dry_run
    resp = hg.buf(SUPPRESS, who="member")
    assert resp.status == 200, resp.text
    assert hg.fake.findings()["f-own-high"]["Workflow"]["Status"] == "SUPPRESSED"
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["dry_run"] is True
    assert rec["forwarded"] is True
    assert rec["result"]["allow"] is False
    assert "member accounts may not suppress findings" in [
        v["msg"] for v in rec["result"]["violations"]]


def test_a_dry_run_denial_whose_forward_goes_unanswered_is_still_counted_dry_run(make_fake,
                                                                                  make_hubgate):
    """A dry-run denial is never enforced: forwarded, then left without an answer (a
    timeout), it counted as decision="deny" in hubgate_requests_total, and a rollout's
    dashboard showed enforcement where there was none."""
    fake = make_fake()
    hg = make_hubgate({"policy": {"mode": "dry-run"}, "upstream": {"timeout_ms": 500},
                       "enrichment": {"cache_ttl_ms": 60000}}, fake=fake)
    # the member's note puts f-own-high's state in the cache: the suppression needs no lookup
    note = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}
    assert hg.buf(note, who="member").status == 200
    fake.configure(delay_ms=2000)
    resp = hg.buf(SUPPRESS, who="member")
    assert_envelope(resp, 504, "UPSTREAM_TIMEOUT", "InternalException")
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert (rec["dry_run"], rec["result"]["allow"]) == (True, False), rec
    series = ('hubgate_requests_total{operation="BatchUpdateFindings",'
              'decision="dry_run_deny",status="504"} 1')
    metrics = hg.admin("/metrics").text
    assert series in metrics.splitlines(), [
        line for line in metrics.splitlines() if line.startswith("hubgate_requests_total")]


def test_dry_run_still_rejects_what_cannot_be_judged(dry_run):
    """Dry-run relaxes the policy, never authentication or validation."""
    hg = dry_run
    assert_envelope(hg.buf({"FindingIdentifiers": []}, who="member"), 400, "VALIDATION_ERROR",
                    "InvalidInputException")
    assert_envelope(hg.buf(SUPPRESS, who=None), 401, "UNAUTHENTICATED",
                    "UnrecognizedClientException")
    assert hg.fake.buf_calls() == []


@pytest.fixture
def no_enrichment(make_hubgate, seeded_fake):
    return make_hubgate({"enrichment": {"enabled": False}}, fake=seeded_fake)


def test_without_enrichment_members_are_refused_and_nothing_is_looked_up(no_enrichment):
    hg = no_enrichment
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Severity": {"Label": "CRITICAL"}}, who="member")
    body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "enrichment is disabled" in body["error"]["message"]
    assert hg.fake.requests() == []


def test_without_enrichment_administrators_are_forwarded(no_enrichment):
    hg = no_enrichment
    resp = hg.buf({"FindingIdentifiers": [ident("f-other")],
                   "Workflow": {"Status": "NOTIFIED"}}, who="admin")
    assert resp.status == 200, resp.text
    assert hg.fake.get_findings_calls() == []
    assert len(hg.fake.buf_calls()) == 1


def test_http2_prior_knowledge_is_served(hubgate):
    """h2c: the same envelope over HTTP/2 (hyper-util's auto builder)."""
    body = json.dumps(SUPPRESS).encode()
    headers = sign(CALLERS["member"], "PATCH", hubgate.host, "/findings/batchupdate", body,
                   {"Content-Type": "application/json"})
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    sock = socket.create_connection(("127.0.0.1", hubgate.port), timeout=5)
    try:
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        request_headers = [(":method", "PATCH"), (":path", "/findings/batchupdate"),
                           (":scheme", "http"), (":authority", hubgate.host)]
        request_headers += [(k.lower(), v) for k, v in headers.items() if k.lower() != "host"]
        conn.send_headers(1, request_headers)
        conn.send_data(1, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        status, data, done = None, b"", False
        while not done:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the response ended"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    assert status == b"403"
    envelope = json.loads(data)
    assert envelope["error"]["code"] == "POLICY_DENIED"
    assert "member accounts may not suppress findings" in envelope["message"]
    assert hubgate.fake.requests() == []


def test_dry_run_through_boto3(dry_run):
    """An SDK caller in dry-run sees Security Hub's answer; the audit record says what would
    have been denied."""
    resp = dry_run.client("member").batch_update_findings(
        FindingIdentifiers=[ident("f-own-high")], Severity={"Label": "LOW"})
    assert [f["Id"] for f in resp["ProcessedFindings"]] == ["f-own-high"]
    rec = dry_run.audit_for(resp["ResponseMetadata"]["HTTPHeaders"]["x-hubgate-decision-id"])
    assert rec["dry_run"] is True and rec["forwarded"] is True
    assert rec["result"]["allow"] is False
    assert any("lower a finding's severity (HIGH to LOW)" in v["msg"]
               for v in rec["result"]["violations"])
