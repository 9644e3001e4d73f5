"""Adversarial review, third round: what a member can read through hubgate (src/reads.rs, the
confinement of forwarded calls), and what its refused reads cost.

- HOLE (fixed): a member's GetFindings refused as not confined (403 READ_NOT_CONFINED) quoted
  the body's text whole: a top-level key, a filter name, a key of an AwsAccountId entry, a
  filter's Comparison. A member key sending a 600 KB key made of `"` got 2.4 MB back and put
  1.2 MB on the audit disk per request (2.4 MB in the OCSF format), where every other refusal
  quotes a caller's text bounded (`quoted`, `Violation`): a full audit disk stops every
  forward. The reason is now a type (`reads::Why`) that is bounded when it is made, and each
  key it names is quoted.
- Held: keys spelt with unicode escapes are read as what they spell: `Aws\\u0041ccountId` next
  to `AwsAccountId`, `\\u0046ilters` next to `Filters` are duplicate keys (refused), and
  `FindingIdentifiers` next to the filter is no GetFindings member (refused); nothing forwarded.
- Held: a fragment in the request target (`/findings#?MaxResults=1`) never reaches Security
  Hub: the confined read goes up as `/findings`. A lower-case method (`post /findings`) is no
  operation (404).
- Held: an own-account confined GetFindings whose NextToken, SortCriteria or MaxResults are
  600 KB or out of range is forwarded as sent (Security Hub refuses the range, 400) and its
  decision record stays small.
- Held (read, not tested again): every forwarded read of other accounts' data (GetFindingsV2,
  GetFindingStatisticsV2, GetResourcesV2, GetFindingHistory, GetInsightResults, GetInsights,
  ListFindingAggregators, DescribeHub, ...) is refused to a member by default; the default
  members_may_call lists catalogues only (DescribeProducts, DescribeProductsV2,
  DescribeStandards, GetSecurityControlDefinition, ListSecurityControlDefinitions), whose
  answers name no account's data.
- Left alone: a NextToken is forwarded as sent (as in round two). The fake binds a token to the
  filters it was made for and refuses it under others; whether AWS does is not known
  (research §1.3), and a member can get an administrator's token only from outside hubgate.
- Left alone (fake fidelity, noted): the fake's GetFindings accepts EQUALS and NOT_EQUALS on one
  attribute (AWS refuses them), refuses CONTAINS_WORD (AWS supports it) and knows string
  filters only; no confinement test depends on those.
"""

import json
import socket

from helpers import MEMBER, MEMBER_ACCOUNT, assert_envelope, sign

OWN = {"Value": MEMBER_ACCOUNT, "Comparison": "EQUALS"}
OTHER = {"Value": "333333333333", "Comparison": "EQUALS"}


def forwarded(hg):
    return [(r["method"], r["raw_path"]) for r in hg.fake.requests()]


def test_a_refused_read_quotes_the_body_bounded(hubgate):
    """Each shape reaches another message of reads.rs; each used to come back (and go to the
    audit disk) whole, twice as large as sent for a key of quotes."""
    long = '"' * 300_000
    own = json.dumps(OWN)
    key = json.dumps(long)
    for body in [
        f'{{"Filters": {{"AwsAccountId": [{own}]}}, {key}: 1}}',
        f'{{"Filters": {{"AwsAccountId": [{own}], {key}: []}}}}',
        f'{{"Filters": {{"AwsAccountId": [{{"Value": "{MEMBER_ACCOUNT}", "Comparison": "EQUALS", {key}: 1}}]}}}}',
        f'{{"Filters": {{"AwsAccountId": [{own}], "Id": [{{"Value": "x", "Comparison": {key}}}]}}}}',
    ]:
        resp = hubgate.send("POST", "/findings", body, who="member")
        got = assert_envelope(resp, 403, "READ_NOT_CONFINED", "AccessDeniedException")
        assert len(resp.body) < 16_000, (len(resp.body), resp.body[:300])
        assert "bytes in all" in got["error"]["message"], got["error"]["message"][:300]
        record = hubgate.audit_for(resp.headers["x-amzn-requestid"])
        assert len(json.dumps(record)) < 16_000, len(json.dumps(record))
    assert forwarded(hubgate) == []


def test_escaped_keys_are_read_as_what_they_spell(hubgate):
    own, other = json.dumps(OWN), json.dumps(OTHER)
    for raw, why in [
        (f'{{"Filters": {{"AwsAccountId": [{own}], "Aws\\u0041ccountId": [{other}]}}}}',
         "duplicate key"),
        (f'{{"Filters": {{"AwsAccountId": [{own}]}}, "\\u0046ilters": {{"AwsAccountId": [{other}]}}}}',
         "duplicate key"),
        (f'{{"Filters": {{"AwsAccountId": [{own}]}}, "FindingIdentifiers": [{{"Id": "f-other"}}]}}',
         '"FindingIdentifiers" is not a GetFindings member'),
    ]:
        resp = hubgate.send("POST", "/findings", raw, who="member")
        got = assert_envelope(resp, 403, "READ_NOT_CONFINED", "AccessDeniedException")
        assert why in got["error"]["message"], got
    assert forwarded(hubgate) == []


def raw_exchange(hg, request_line: str, body: bytes, sign_path: str = "/findings") -> bytes:
    headers = sign(MEMBER, "POST", hg.host, sign_path, body, {"Content-Type": "application/json"})
    lines = [request_line, f"Host: {hg.host}", f"Content-Length: {len(body)}",
             "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    with socket.create_connection(("127.0.0.1", hg.port), timeout=10) as s:
        s.settimeout(10)
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_a_fragment_or_a_method_variant_reaches_nothing_unconfined(hubgate):
    body = json.dumps({"Filters": {"AwsAccountId": [OWN]}}).encode()
    answer = raw_exchange(hubgate, "POST /findings#?MaxResults=1 HTTP/1.1", body)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert forwarded(hubgate) == [("POST", "/findings")]
    answer = raw_exchange(hubgate, "post /findings HTTP/1.1",
                          json.dumps({"MaxResults": 1}).encode())
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:300]
    assert forwarded(hubgate) == [("POST", "/findings")]


def test_a_confined_reads_other_members_go_up_as_sent_and_are_recorded_small(hubgate):
    for extra, status in [({"NextToken": '"' * 300_000}, 400),
                          ({"SortCriteria": [{"Field": '"' * 300_000, "SortOrder": "asc"}]}, 200),
                          ({"MaxResults": 101}, 400)]:
        body = json.dumps({"Filters": {"AwsAccountId": [OWN]}, **extra})
        resp = hubgate.send("POST", "/findings", body, who="member")
        assert resp.status == status, (resp.status, resp.body[:300])
        assert json.loads(hubgate.fake.requests()[-1]["body"]) == json.loads(body)
        record = hubgate.audit_for(resp.headers["x-hubgate-decision-id"])
        assert record["forwarded"] is True and len(json.dumps(record)) < 16_000, record
