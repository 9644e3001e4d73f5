"""Upstream failures: unreachable (502) and too slow (504), and hubgate's own credentials."""

import threading
import time

import pytest
from botocore.exceptions import ClientError

from helpers import (OWN_ACCOUNT_FILTER, CredentialEndpoint, assert_envelope,
                     container_credentials, free_port, ident, wait_until)
from test_quota import retrying_client

SUPPRESS = {"FindingIdentifiers": [ident("f-other")], "Workflow": {"Status": "SUPPRESSED"},
            "Note": {"Text": "RISK-1 accepted after review", "UpdatedBy": "sec-team"}}


def assert_upstream_error(hg, resp, status, code, forward_attempted=False):
    assert_envelope(resp, status, code, "InternalException")
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["status"] == status
    assert rec["error"]["code"] == code
    if not forward_attempted:  # failed during the enrichment lookup: nothing was forwarded
        assert rec["forwarded"] is False


def test_closed_upstream_port_is_502(make_hubgate):
    hg = make_hubgate(upstream_endpoint=f"http://127.0.0.1:{free_port()}")
    assert_upstream_error(hg, hg.buf(SUPPRESS, who="admin"), 502, "UPSTREAM_UNAVAILABLE")
    # a read-only forward fails the same way
    own = {"MaxResults": 1, "Filters": OWN_ACCOUNT_FILTER}
    assert_upstream_error(hg, hg.send("POST", "/findings", own, who="member"),
                          502, "UPSTREAM_UNAVAILABLE", forward_attempted=True)


def test_stopped_fake_is_502_and_boto3_sees_internal_exception(make_fake, make_hubgate):
    fake = make_fake()
    hg = make_hubgate(fake=fake)
    ok = hg.buf({"FindingIdentifiers": [ident("f-admin")],
                 "Note": {"Text": "t", "UpdatedBy": "u"}}, who="admin")
    assert ok.status == 200, ok.text
    fake.stop()
    assert_upstream_error(hg, hg.buf(SUPPRESS, who="admin"), 502, "UPSTREAM_UNAVAILABLE")
    with pytest.raises(ClientError) as e:
        hg.client("admin").batch_update_findings(**SUPPRESS)
    assert e.value.response["Error"]["Code"] == "InternalException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502


@pytest.fixture
def slow(make_fake, make_hubgate):
    fake = make_fake()
    hg = make_hubgate({"upstream": {"timeout_ms": 500}}, fake=fake)
    fake.configure(delay_ms=2000)
    return hg


def test_slow_enrichment_lookup_is_504(slow):
    started = time.monotonic()
    # a member's request needs the findings' state (an administrator's would make no lookup)
    resp = slow.buf({"FindingIdentifiers": [ident("f-own-high")],
                     "Note": {"Text": "t", "UpdatedBy": "u"}}, who="member")
    elapsed = time.monotonic() - started
    assert_upstream_error(slow, resp, 504, "UPSTREAM_TIMEOUT")
    assert elapsed < 1.9, f"hubgate waited {elapsed:.2f}s, timeout_ms is 500"
    # the lookup was attempted; the update itself never went out
    seen = {(r["method"], r["path"]) for r in slow.fake.requests()}
    assert seen == {("POST", "/findings")}
    assert slow.fake.findings()["f-own-high"]["Note"]["Text"] == "seed"


def test_slow_forward_is_504(slow):
    resp = slow.send("GET", "/accounts", b"", who="admin")
    assert_upstream_error(slow, resp, 504, "UPSTREAM_TIMEOUT", forward_attempted=True)


def test_lookup_refused_by_upstream_fails_closed(make_fake, make_hubgate):
    """Security Hub refusing hubgate's GetFindings (here: a bad signature) is not 'not found':
    nothing is forwarded and the caller gets a 5xx. A forward whose signature, hubgate's own,
    Security Hub refuses is hubgate's failure too: 502, not AWS's 403 InvalidSignatureException
    relayed (which told a caller whose signature hubgate had verified that its own was wrong,
    and carried AWS's echo of hubgate's signed request, its session token included)."""
    fake = make_fake(secret_key="not-hubgates-secret")
    hg = make_hubgate(fake=fake)
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Note": {"Text": "t", "UpdatedBy": "u"}}, who="member")
    assert resp.status in (502, 500), resp.text
    assert resp.headers["x-amzn-errortype"] == "InternalException"
    assert [(r["method"], r["path"]) for r in fake.requests()] == [("POST", "/findings")]
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["forwarded"] is False

    fwd = hg.send("GET", "/accounts", b"", who="admin")
    err = assert_envelope(fwd, 502, "UPSTREAM_UNAVAILABLE", "InternalException")
    assert "HTTP 403" in err["error"]["message"], err
    rec = hg.audit_for(fwd.headers["x-amzn-requestid"])
    assert rec["upstream_status"] == 403 and rec["forwarded"] is True, rec


def test_a_stalled_credential_source_fails_requests_fast_and_still_delivers(make_fake,
                                                                            make_hubgate):
    """hubgate fetched its own credentials inside the request that needed them, under a lock
    every other request queued on: a credential endpoint that accepted and never answered held
    each request for as long as the SDK's own timeouts and retries took, whatever
    upstream.timeout_ms said. A request now waits at most upstream.timeout_ms for the fetch
    (502, which SDKs retry), and the fetch goes on: once the endpoint answers, requests are
    signed with what it gave."""
    released = threading.Event()

    def answer(conn, _n):
        # accepted, and not answered until released
        if released.wait(30):
            conn.settimeout(5)
            conn.recv(65536)
            conn.sendall(container_credentials())

    source = CredentialEndpoint(answer)
    fake = make_fake()
    hg = make_hubgate({"upstream": {"timeout_ms": 500}}, fake=fake, env=source.env(),
                      start=False)
    hg.start(ready_path="/healthz")
    note = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
    for _ in range(3):
        started = time.monotonic()
        resp = hg.buf(note, who="admin")
        elapsed = time.monotonic() - started
        body = assert_envelope(resp, 502, "UPSTREAM_UNAVAILABLE", "InternalException")
        assert "did not answer within upstream.timeout_ms (500 ms)" in body["error"]["message"]
        assert elapsed < 2.5, f"a request waited {elapsed:.1f}s for the credential source"
    assert hg.fake.buf_calls() == []
    assert source.connections == 1, "one fetch, shared by every request that waited"
    released.set()

    def signed():
        return hg.buf(note, who="admin").status == 200

    wait_until(signed, 10, "a request signed with the credentials the source gave")
    assert hg.admin("/readyz").status_code == 200
    assert source.connections == 1, "the first fetch, not a new one, delivered"
    assert fake.findings()["f-admin"]["Note"]["Text"] == "t"


# A session Security Hub no longer honours (revoked, or deleted) while the credential source
# still says it is valid for an hour.
REVOKED_KEY = "ASIAREVOKEDSESSION01"


def revoked_then_valid():
    """A container credentials endpoint whose first answer is a session AWS refuses, and
    every later one hubgate's valid keys."""
    def answer(conn, n):
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(container_credentials(access_key=REVOKED_KEY) if n == 1
                     else container_credentials())
    return CredentialEndpoint(answer)


@pytest.mark.parametrize("call", ["forward", "lookup"])
def test_credentials_aws_refuses_are_fetched_again_and_the_sdks_retry_passes(call, make_fake,
                                                                            make_hubgate):
    """hubgate fetched its credentials again only near the expiry its source gave: credentials
    AWS refused (a revoked role session, a deleted key) were used for up to an hour, every
    call refused, and a forward's 403 UnrecognizedClientException went back to the caller as
    its own (SDKs do not retry it; the caller's key was fine). Now the caller gets 503
    UPSTREAM_CREDENTIALS_REFUSED (SDKs retry it), hubgate fetches again at once, and the
    retry is signed with the new credentials: boto3 with standard retries just succeeds."""
    source = revoked_then_valid()
    fake = make_fake()
    hg = make_hubgate(fake=fake, env=source.env())
    # An administrator's note is forwarded without a lookup; a member's raise is looked up.
    if call == "forward":
        who, fid, change = "admin", "f-admin", {"Note": {"Text": "t", "UpdatedBy": "u"}}
    else:
        who, fid, change = "member", "f-own-high", {"Severity": {"Label": "CRITICAL"}}
    request = {"FindingIdentifiers": [ident(fid)], **change}
    seeded = fake.findings()[fid]
    resp = hg.buf(request, who=who)
    body = assert_envelope(resp, 503, "UPSTREAM_CREDENTIALS_REFUSED",
                           "ServiceUnavailableException")
    message = body["error"]["message"]
    assert "refused hubgate's own AWS credentials" in message, message
    assert "UnrecognizedClientException" in message and "nothing was applied" in message
    assert REVOKED_KEY not in message
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert (rec["status"], rec["error"]["code"]) == (503, "UPSTREAM_CREDENTIALS_REFUSED")
    # Security Hub answered the forward (with a refusal); a lookup's failure forwards nothing.
    assert rec["forwarded"] is (call == "forward")
    assert rec["upstream_status"] == (403 if call == "forward" else None)
    assert fake.findings()[fid] == seeded, "nothing was applied"
    wait_until(lambda: source.connections == 2, 5, "a fetch of new credentials")
    # A real SDK's retry of that 503 passes.
    out = retrying_client(hg, who=who, max_attempts=3).batch_update_findings(**request)
    assert [p["Id"] for p in out["ProcessedFindings"]] == [fid]
    applied = fake.findings()[fid]
    if call == "forward":
        assert applied["Note"]["Text"] == "t"
    else:
        assert applied["Severity"]["Label"] == "CRITICAL"
    assert source.connections == 2, "fetched once, not at every request"

