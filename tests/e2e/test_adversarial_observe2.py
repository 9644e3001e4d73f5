"""Adversarial review of what hubgate tells operators, second round: the operational log, the
OCSF event's verdict, the chain over caller-chosen values, and secrets at trace level.

HOLE (fixed): the text operational log wrote `%value` fields as they were. A lookup that
Security Hub refused is logged at warn with its error message, which quotes what Security Hub
(or whatever answers at upstream.endpoint) wrote, and may echo what a caller sent: a newline in
it started a forged line of its own (`INFO hubgate::server: ...`), an escape sequence reached
the operator's terminal. Every value of the text format now has its control characters escaped.

HOLE (fixed): a forward that Security Hub throttled (answered 429 THROTTLED by hubgate) was an
OCSF event with action Denied and severity Medium: a SIEM counted each throttle as a policy
denial of a request the policy allowed and hubgate sent. README says Denied only for an error
raised before sending; the action is now the policy's verdict once the request went out.

HOLE (fixed): a forward-allowed request whose allowed part was sent and left unanswered (504,
outcome unknown: Security Hub may have applied it) was counted decision="deny" in
hubgate_requests_total: a dashboard showed nothing going out. It is now "partial", as its record
says (partial, outcome_unknown).

Held: `audit verify` verifies records holding the numbers a caller chose in an import (1 ULP
floats, subnormals, -0.0, integers past u64) and note texts with U+2028, NUL, emoji, ESC.
Held: hubgate's own session token from a container credentials endpoint, at RUST_LOG=trace,
reaches neither stderr nor /readyz.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time

from helpers import (ADMIN_ACCOUNT, UPSTREAM_KEY, UPSTREAM_SECRET, CredentialEndpoint,
                     LoopbackServer, audit_verify, finding, ident, wait_until, recv_head)

NOTE_OWN = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z +(TRACE|DEBUG|INFO|WARN|ERROR) ")


def ocsf_event(hg, decision_id: str) -> dict:
    def find():
        return [r for r in hg.audit_records() if r.get("metadata", {}).get("uid") == decision_id]
    recs = wait_until(find, 5, f"the OCSF event of {decision_id}")
    assert len(recs) == 1, recs
    return recs[0]


def test_an_upstream_error_message_cannot_forge_a_log_line(make_hubgate):
    """Security Hub refuses the lookup with a message holding a newline, a forged log line and
    an escape sequence. Every line of stderr is one of hubgate's events, none holds a control
    character, and the message is there, escaped."""
    forged = "INFO hubgate::server: policies reloaded revision=sha256:forged"
    message = f"bad filter\n2026-12-06T00:00:00.000000Z  {forged}\x1b[2J\r"
    body = json.dumps({"__type": "InvalidInputException", "message": message}).encode()
    answer = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
              b"x-amzn-ErrorType: InvalidInputException\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    def serve(conn, _n):
        conn.settimeout(5)
        data = recv_head(conn)
        if data is None:
            return
        conn.sendall(answer)

    upstream = LoopbackServer(serve)
    try:
        hg = make_hubgate({}, upstream_endpoint=f"http://127.0.0.1:{upstream.port}",
                          start=False)
        hg.start(ready_path="/healthz")
        resp = hg.buf(NOTE_OWN, who="member")
        assert resp.status == 502, resp.text
        decision = resp.headers["x-amzn-requestid"]
        wait_until(lambda: decision in hg.stderr_text(), 5, "the warning")
        text = hg.stderr_text()
    finally:
        upstream.close()
    strays = [line for line in text.splitlines() if not LOG_LINE.match(line)]
    assert not strays, strays
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text), repr(text[-600:])
    warning = next(line for line in text.splitlines() if decision in line)
    assert r"bad filter\n2026-12-06T00:00:00.000000Z  INFO" in warning, warning
    assert r"\u001b[2J\r" in warning, warning
    # the record keeps Security Hub's message as it was (JSON escapes it)
    record = hg.audit_for(decision)
    assert message in record["error"]["message"], record["error"]


def test_a_forward_security_hub_throttled_is_not_an_ocsf_policy_denial(make_fake,
                                                                       make_hubgate):
    """The policy allows the member's note, hubgate sends it, Security Hub throttles it until
    quota.max_wait_ms runs out: 429 THROTTLED. The event's action is the policy's (Allowed,
    Informational), its status a Failure; a lookup hubgate's pacing never sent stays Denied."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"format": "ocsf", "include_input": False},
                       "quota": {"max_wait_ms": 300}}, fake=fake)
    fake.throttle_next(BatchUpdateFindings=50)
    resp = hg.buf(NOTE_OWN, who="member")
    assert resp.status == 429, resp.text
    event = ocsf_event(hg, resp.headers["x-amzn-requestid"])
    assert event["unmapped"]["forwarded"] is True and event["unmapped"]["upstream_status"] == 429
    assert (event["action"], event["disposition"], event["severity"]) == (
        "Allowed", "Allowed", "Informational"), event
    assert (event["status"], event["status_code"]) == ("Failure", "429"), event
    assert not event["unmapped"]["violations"]
    # Security Hub's throttle of the lookup: nothing was sent, the request was refused
    fake.configure(throttle_next={"BatchUpdateFindings": 0, "GetFindings": 50})
    lookup = hg.buf({"FindingIdentifiers": [ident("f-own-medium")],
                     "Note": {"Text": "t", "UpdatedBy": "u"}}, who="member")
    assert lookup.status == 429, lookup.text
    event = ocsf_event(hg, lookup.headers["x-amzn-requestid"])
    assert (event["action"], event["disposition"]) == ("Denied", "Blocked"), event


def test_the_chain_verifies_over_numbers_and_texts_a_caller_chose(make_fake, make_hubgate):
    fake = make_fake()
    hg = make_hubgate({"audit": {"include_input": True}}, fake=fake)
    raw = json.dumps({"Findings": [finding("f-imp", ADMIN_ACCOUNT)]})
    for number in ["1.0000000000000002", "5e-324", "0.1e1", "-0.0", "9007199254740993",
                   "18446744073709551616", "-9223372036854775809", "1.7976931348623157e308"]:
        body = raw.replace('"Normalized": 70', f'"Normalized": 70, "Product": {number}')
        assert hg.send("POST", "/findings/import", body.encode(), who="admin").status == 200
    note = {"Text": "a\u2028b\u0000c\U0001F600\x1b[31m", "UpdatedBy": "u\x7f\x85"}
    assert hg.buf({"FindingIdentifiers": [ident("f-own-high")], "Note": note},
                  who="member").status == 200
    hg.stop()
    verify = audit_verify(hg.audit_path)
    assert verify.returncode == 0 and "intact: 9 records" in verify.stdout, (
        verify.stdout + verify.stderr)


def test_hubgate_s_own_session_token_stays_out_at_trace_level(make_fake, make_hubgate):
    token = "container-session-token-never-logged-9Qw"
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    body = json.dumps({"AccessKeyId": UPSTREAM_KEY, "SecretAccessKey": UPSTREAM_SECRET,
                       "Token": token,
                       "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    def serve(conn, _n):
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(answer)

    endpoint = CredentialEndpoint(serve)
    try:
        hg = make_hubgate({}, fake=make_fake(), env={**endpoint.env(), "RUST_LOG": "trace"})
        assert hg.buf(NOTE_OWN, who="member").status == 200
        readyz = hg.admin("/readyz").text
        time.sleep(0.2)
        text = hg.stderr_text()
    finally:
        endpoint.close()
    assert "TRACE" in text
    for secret in (token, UPSTREAM_SECRET):
        assert secret not in text and secret not in readyz, secret


def test_a_partial_forward_left_unanswered_is_counted_partial(make_fake, make_hubgate):
    """forward-allowed sends the member's own finding and refuses the other account's; Security
    Hub applies the write and answers after upstream.timeout_ms (504, outcome unknown). The
    record says the part went out; hubgate_requests_total counted it decision="deny", as if
    nothing had been sent."""
    fake = make_fake()
    hg = make_hubgate({"upstream": {"timeout_ms": 500},
                       "policy": {"on_partial_deny": "forward-allowed"}}, fake=fake)
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 1500})
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high"), ident("f-other")],
                   "Note": {"Text": "t", "UpdatedBy": "u"}}, who="member")
    assert resp.status == 504, resp.text
    record = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert record["partial"] == {"forwarded": 1, "denied": 1}, record
    assert record["outcome_unknown"] is True and record["forwarded"] is False, record
    series = [line for line in hg.admin("/metrics").text.splitlines()
              if line.startswith("hubgate_requests_total{") and 'status="504"' in line]
    assert len(series) == 1 and 'decision="partial"' in series[0], series
