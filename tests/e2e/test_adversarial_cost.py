"""Adversarial review (what one request can cost hubgate): CPU, memory, audit bytes and
upstream calls a caller with valid member keys can make hubgate spend with one request within
server.max_body_bytes, against the real binary and the fake Security Hub.

- HOLE (fixed): the caller texts that become facts of `input.update` had no length bound where
  the schema and model have none: `Note.UpdatedBy` (BatchUpdateFindings and UpdateFindings),
  UpdateFindings' `Note.Text`, each `Types` entry and `RelatedFindings` ids. Each such text is
  written three times into the decision record (`update`, `input.update`,
  `input.request.body`), so a member's 300 KB `Note.UpdatedBy` on its own finding was forwarded
  with a 900 KB record, and the same on UpdateFindings, refused, still wrote 900 KB: records
  three times the body (a 1 MiB request, 3 MiB), with three times the hashing and formatting.
  Such a text over Security Hub's own limit (512 for notes and ids, 2048 for a ProductArn,
  128/1024 for UserDefinedFields; 512 for a Types entry, hubgate's choice) is now a 400
  VALIDATION_ERROR (InvalidInputException, which SDKs do not retry), nothing forwarded, and
  the record stays small.
- Held: a member's ~1 MiB BatchImportFindings (100 findings with large Resources arrays) is
  refused in the first pass with a small envelope and a record no larger than its body
  (`input.request.body` once; the findings are not repeated); a ~1 MiB body of tens of
  thousands of keys is a 400 whose envelope and record are bounded (50 violations, each
  clipped), whatever the body holds.
- Held (measured, not tested here, debug build): CPU is linear in the body's bytes for every
  shape tried (1 MiB note, escapes, 60,000 keys, 500,000 numbers, imports with 20,000
  resources, UpdateFindings filters): at most about 0.7 µs per byte on the debug binary (a 1 MiB
  member import, refused, 0.4–0.7 s, of which the policy 15 ms; about 20–50 ms in a release
  build), a typical 1-finding update 6 ms; the policy passes stay far below eval_timeout_ms
  (the shipped rules do not iterate over the body). The JSON Schemas have no
  anyOf/oneOf/if, their patterns run on the linear regex engine, the strict parser's objects are
  BTreeMaps (no hash flooding), and a 400 formats at most 50 violations.
- HOLE (fixed): nothing bounded the bytes the requests in flight hold. What a request holds
  while it waits for quota grows with its body (about 1.8 MB for the largest BatchUpdateFindings
  the schema lets through, 366 KB), so max_in_flight (256) such requests took the debug binary
  from 69 to 511 MB, past the 512Mi limit of deploy/kubernetes: four callers (each with its
  quarter share) could have the pod killed with every request in flight.
  server.max_in_flight_body_bytes (64 MiB) now caps the body bytes in flight together, each
  request counted at its Content-Length from admission (before its body is read) until it is
  answered: past it, 503 OVERLOADED naming the setting, while small requests go on (the
  same 250 offered at once then peaked at 402 MB, the rest answered 503).
- Held (measured): memory for a refused 1 MiB import peaks at about 60 MB per worker thread
  (parsed body, policy input, record) and is freed after; 20 and 60 such requests at once
  peaked at 184 and 232 MB on the debug binary (the bodies in flight plus two workers' peaks);
  a stalled sink holds at most audit.queue_capacity serialised records (about 2.5 MB each for a
  1 MiB import, measured with a FIFO nobody reads).
- Held: 100 identifiers with 100 distinct ProductArns cost the same 5 GetFindings as 100 of
  one product; /metrics series and stderr lines do not grow with the findings or texts of a
  request.
"""

from __future__ import annotations

import json
import socket

import pytest
from botocore.exceptions import ClientError

from helpers import (CALLERS, MEMBER_ACCOUNT, PRODUCT_ARN, assert_envelope, finding, ident, sign,
                     wait_until)

OWN = ident("f-own-high")


def record_line(hg, decision_id: str) -> bytes:
    """The record of decision_id as written (bytes of its line in the audit file)."""
    hg.audit_for(decision_id)
    lines = [line for line in hg.audit_path.read_bytes().splitlines()
             if decision_id.encode() in line]
    assert len(lines) == 1, decision_id
    return lines[0]


# Each was 200 (forwarded) or 403 with a record three times its body before the fix.
LONG_TEXTS = [
    ("PATCH", "/findings/batchupdate",
     {"FindingIdentifiers": [OWN], "Note": {"Text": "triaged", "UpdatedBy": "u" * 300_000}},
     "/Note/UpdatedBy"),
    ("PATCH", "/findings/batchupdate",
     {"FindingIdentifiers": [OWN],
      "Types": [f"Software and Configuration Checks/{'t' * 6000}{i}" for i in range(50)]},
     "/Types/0"),
    ("PATCH", "/findings",
     {"Filters": {"Id": [{"Value": "f-own-high", "Comparison": "EQUALS"}]},
      "Note": {"Text": "triaged", "UpdatedBy": "u" * 300_000}},
     "/Note/UpdatedBy"),
]


@pytest.mark.parametrize("method, path, body, pointer", LONG_TEXTS,
                         ids=["buf-updated-by", "buf-types", "update-findings-updated-by"])
def test_a_caller_text_past_its_limit_is_refused_and_not_recorded_three_times(
        hubgate, method, path, body, pointer):
    raw = json.dumps(body).encode()
    resp = hubgate.send(method, path, raw, who="member")
    env = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert [d["path"] for d in env["error"]["details"]] == [pointer], env
    assert len(resp.body) < 4096, len(resp.body)
    assert not hubgate.fake.requests("PATCH"), "nothing forwarded"
    line = record_line(hubgate, resp.headers["x-amzn-requestid"])
    assert len(line) < 16_384, (len(line), len(raw))


def test_boto3_gets_a_typed_error_it_does_not_retry(hubgate):
    """What an SDK sees: InvalidInputException on the first attempt (standard retries do not
    retry it), and the longest texts Security Hub takes still go through."""
    client = hubgate.client("member")
    with pytest.raises(ClientError) as e:
        client.batch_update_findings(FindingIdentifiers=[OWN],
                                     Note={"Text": "triaged", "UpdatedBy": "u" * 513})
    assert e.value.response["Error"]["Code"] == "InvalidInputException"
    assert e.value.response["ResponseMetadata"].get("RetryAttempts", 0) == 0
    assert not hubgate.fake.requests("PATCH")
    at_limits = client.batch_update_findings(
        FindingIdentifiers=[OWN], Note={"Text": "é" * 512, "UpdatedBy": "u" * 512},
        Types=[f"TTPs/{'t' * 500}{i}" for i in range(50)],
        RelatedFindings=[{"Id": "r" * 512, "ProductArn": PRODUCT_ARN}])
    assert at_limits["UnprocessedFindings"] == [], at_limits


def test_a_megabyte_refusal_costs_a_bounded_answer_and_record(hubgate):
    """A member's ~1 MiB import is refused whole in the first pass; a ~1 MiB body of keys is a
    400. Neither answer nor record grows past the body."""
    imported = []
    for i in range(100):
        f = finding(f"imp-{i}", MEMBER_ACCOUNT)
        f["Resources"] = [{"Type": "Other", "Id": f"r{j}"} for j in range(250)]
        imported.append(f)
    raw = json.dumps({"Findings": imported}).encode()
    assert 800_000 < len(raw) < 1_048_576
    resp = hubgate.send("POST", "/findings/import", raw, who="member")
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert len(resp.body) < 4096
    assert len(record_line(hubgate, resp.headers["x-amzn-requestid"])) <= len(raw)

    keys = ",".join(f'"k{i}":"v"' for i in range(80_000))
    raw = ('{"FindingIdentifiers":[%s],"UserDefinedFields":{%s}}'
           % (json.dumps(OWN), keys)).encode()
    assert len(raw) < 1_048_576
    resp = hubgate.send("PATCH", "/findings/batchupdate", raw, who="member")
    assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert len(resp.body) < 65_536
    assert len(record_line(hubgate, resp.headers["x-amzn-requestid"])) < 65_536
    assert not hubgate.fake.requests("PATCH") and not hubgate.fake.requests("POST", "/findings/import")


def test_body_bytes_in_flight_are_capped(make_hubgate, make_fake):
    """A member's 64 requests whose 1.04 MB bodies are being sent slowly hold 66.56 MB of
    server.max_in_flight_body_bytes (64 MiB) from their heads on: another caller's 600 KB
    request would pass it and is a 503 OVERLOADED (retryable) naming the setting, while a
    small request is served; once they are gone, the 600 KB request is admitted (and judged: a
    400 for its note here). Before the cap, all were admitted, and nothing bounded the bytes
    held by max_in_flight requests. The member may hold every slot here
    (max_in_flight_per_caller = max_in_flight, and so the whole cap): with the default share
    it holds a quarter of the bytes (test_adversarial_review53d.py)."""
    hg = make_hubgate({"server": {"max_in_flight_per_caller": 256}}, fake=make_fake())
    path = "/findings/batchupdate"
    big = json.dumps({"FindingIdentifiers": [OWN],
                      "Note": {"Text": "x" * 600_000, "UpdatedBy": "me"}}).encode()
    held = b"{" + b" " * 1_039_998 + b"}"
    headers = sign(CALLERS["member"], "PATCH", hg.host, path, held,
                   {"Content-Type": "application/json"})
    head = f"PATCH {path} HTTP/1.1\r\nHost: {hg.host}\r\nContent-Length: {len(held)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "host")
    slow = []
    try:
        for _ in range(64):
            conn = socket.create_connection(("127.0.0.1", hg.port), timeout=5)
            slow.append(conn)
            conn.sendall(head.encode() + b"\r\n" + held[:100])
        wait_until(lambda: "hubgate_requests_in_flight 64" in hg.admin("/metrics").text, 10,
                   "the slow requests in flight")
        resp = hg.send("PATCH", path, big, who="admin")
        env = assert_envelope(resp, 503, "OVERLOADED", "ServiceUnavailableException")
        assert "server.max_in_flight_body_bytes" in env["error"]["message"], env
        small = hg.send("PATCH", path, {"FindingIdentifiers": [OWN],
                                        "Severity": {"Label": "CRITICAL"}}, who="admin")
        assert small.status == 200, small.text
    finally:
        for conn in slow:
            conn.close()
    again = wait_until(lambda: (r := hg.send("PATCH", path, big, who="admin")).status != 503
                       and r, 10, "the body bytes given back")
    assert_envelope(again, 400, "VALIDATION_ERROR", "InvalidInputException")
