"""Adversarial probes at the edge (review round adv-edge): paths whose label values decode to
other routes, methods no operation has, passthrough requests that carry a second set of
credentials, and client certificates that chain oddly, name two callers, or have expired since
their TLS session began.

Every request is bounded by helpers.HTTP_TIMEOUT or the socket timeouts below."""

from __future__ import annotations

import json
import time

import pytest

from helpers import (
    assert_envelope,
    ident,
    raw_request,
    sign,
)
from test_passthrough import PT_MEMBER, REAL_HOST, passthrough  # noqa: F401 (fixture)

NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
WAIT = 5.0


def nothing_forwarded(hg):
    time.sleep(0.1)
    assert hg.fake.requests() == [], hg.fake.requests()


# ---------------------------------------------------------------------------
# routes


@pytest.fixture
def insights_forwarded(make_hubgate, seeded_fake):
    """An operator let insight updates through unchecked ([operations] UpdateInsight)."""
    return make_hubgate({"operations": {"UpdateInsight": "forward"}}, fake=seeded_fake)


# Label values that are one raw segment but decode to several, some of them dot segments: a
# front end that decodes before it normalises reads another operation than the one routed.
TRAVERSALS = [
    ("PATCH", "/insights/..%2F..%2Fautomationrulesv2%2Frule-1"),        # UpdateAutomationRuleV2
    ("PATCH", "/insights/x%2F..%2F..%2F..%2Fstandards%2Fcontrol%2Farn"),  # UpdateStandardsControl
    ("PATCH", "/insights/%2E%2E%5C%2E%2E%5Caccounts"),                   # `\` read as `/`
    ("PATCH", "/insights/..;/automationrulesv2/rule-1"),                 # `..;` read as `..`
    ("PATCH", "/insights/arn%00/x"),                                     # a control character
    ("GET", "/tags/..%2F..%2Faccounts"),
    ("GET", "/insights/results/a%5C..%5C..%5Cmembers"),
]


def test_a_label_value_that_decodes_to_dot_segments_is_not_routed(insights_forwarded):
    hg = insights_forwarded
    for method, path in TRAVERSALS:
        resp = hg.send(method, path, {"Name": "x"} if method == "PATCH" else b"",
                       who="member", content_type="application/json")
        body = assert_envelope(resp, 404, "NOT_FOUND", "ResourceNotFoundException")
        assert path in body["error"]["message"], body
    nothing_forwarded(hg)
    # Control: an insight ARN as boto3 sends it (greedy label, `/` kept, `:` encoded) is still
    # the operation the operator let through, forwarded with its path unchanged.
    arn_path = ("/insights/arn%3Aaws%3Asecurityhub%3Aus-east-1%3A111111111111%3Ainsight/"
                "111111111111/custom/a.b..c")
    resp = hg.send("PATCH", arn_path, {"Name": "x"}, who="member")
    assert resp.headers.get("x-hubgate-decision-id"), (resp.status, resp.text)
    [seen] = hg.fake.requests()
    assert (seen["method"], seen["raw_path"]) == ("PATCH", arn_path), seen


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "patch", "TRACE"])
def test_methods_no_operation_has_are_404_and_never_forwarded(hubgate, method):
    body = json.dumps(NOTE).encode() if method == "patch" else b""
    resp = hubgate.send(method, "/findings/batchupdate", body, who="admin")
    assert resp.status == 404, (resp.status, resp.text)
    if method != "HEAD":
        assert_envelope(resp, 404, "NOT_FOUND", "ResourceNotFoundException")
    nothing_forwarded(hubgate)


# ---------------------------------------------------------------------------
# passthrough


def test_passthrough_refuses_query_credentials_beside_the_mapped_header(passthrough):  # noqa: F811
    """hubgate maps the Authorization header's key; a query string could carry a second set of
    credentials for AWS to read instead. A guarded route takes no query string at all."""
    hg = passthrough
    query = ("?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             f"&X-Amz-Credential={PT_MEMBER.access_key}%2F20260101%2Fus-east-1%2Fsecurityhub"
             "%2Faws4_request&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "0" * 64)
    path = "/findings/batchupdate" + query
    body = json.dumps(NOTE).encode()
    headers = sign(PT_MEMBER, "PATCH", REAL_HOST, path, body,
                   {"Content-Type": "application/json"})
    resp = raw_request(hg.port, "PATCH", path, body, headers)
    err = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")["error"]
    assert "query string" in err["message"], err
    nothing_forwarded(hg)
