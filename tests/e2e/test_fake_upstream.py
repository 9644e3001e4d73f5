"""Sanity checks of the fake Security Hub itself (no hubgate involved).

If these fail, every other result in the suite is suspect."""

import json
import threading
import time

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from helpers import (
    MEMBER_ACCOUNT,
    PRODUCT_ARN,
    REGION,
    UPSTREAM_KEY,
    UPSTREAM_SECRET,
    Creds,
    finding,
    ident,
    raw_request,
    sign,
)


def direct_client(fake, key=UPSTREAM_KEY, secret=UPSTREAM_SECRET):
    return boto3.session.Session().client(
        "securityhub", endpoint_url=fake.endpoint, region_name=REGION,
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=10))


@pytest.fixture
def seeded(fake):
    fake.reset()
    fake.add_findings([finding(f"s-{i}", MEMBER_ACCOUNT) for i in range(10)])
    return fake


def test_signed_requests_are_accepted_and_recorded(seeded):
    c = direct_client(seeded)
    assert c.describe_hub()["HubArn"].endswith(":hub/default")
    r = c.batch_update_findings(FindingIdentifiers=[ident("s-1"), ident("nope")],
                                Severity={"Normalized": 10})
    assert r["ProcessedFindings"] == [ident("s-1")]
    assert r["UnprocessedFindings"][0]["ErrorCode"] == "FindingNotFound"
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    assert seeded.findings()["s-1"]["Severity"] == {"Label": "LOW", "Normalized": 10}
    recorded = seeded.requests()
    assert [(r["method"], r["path"]) for r in recorded] == [
        ("GET", "/accounts"), ("PATCH", "/findings/batchupdate")]
    assert all(r["signature_valid"] for r in recorded)


@pytest.mark.parametrize("key,secret,error_type", [
    (UPSTREAM_KEY, "wrong-secret", "InvalidSignatureException"),
    # a key AWS does not know (deleted, rotated, a revoked session), as AWS answers it
    ("AKIAOTHERKEY00000000", UPSTREAM_SECRET, "UnrecognizedClientException"),
])
def test_bad_credentials_are_rejected(seeded, key, secret, error_type):
    with pytest.raises(ClientError) as e:
        direct_client(seeded, key, secret).describe_hub()
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert e.value.response["Error"]["Code"] == error_type


def test_tampered_body_is_rejected(seeded):
    host = f"127.0.0.1:{seeded.port}"
    body = json.dumps({"FindingIdentifiers": [ident("s-1")]}).encode()
    headers = sign(Creds(UPSTREAM_KEY, UPSTREAM_SECRET), "PATCH", host,
                   "/findings/batchupdate", body, {"Content-Type": "application/json"})
    tampered = body.replace(b"s-1", b"s-2")
    r = raw_request(seeded.port, "PATCH", "/findings/batchupdate", tampered, headers)
    assert r.status == 403
    assert r.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert "message" in r.json()
    ok = raw_request(seeded.port, "PATCH", "/findings/batchupdate", body, headers)
    assert ok.status == 200, ok.text


def test_get_findings_filters_limits_and_pages(seeded):
    seeded.configure(page_size=3)
    c = direct_client(seeded)
    flt = {"Id": [{"Value": f"s-{i}", "Comparison": "EQUALS"} for i in range(8)],
           "ProductArn": [{"Value": PRODUCT_ARN, "Comparison": "EQUALS"}]}
    pages = list(c.get_paginator("get_findings").paginate(Filters=flt))
    assert len(pages) == 3
    assert [f["Id"] for p in pages for f in p["Findings"]] == [f"s-{i}" for i in range(8)]
    with pytest.raises(ClientError) as e:
        c.get_findings(Filters={"Id": [{"Value": f"s-{i}", "Comparison": "EQUALS"}
                                       for i in range(21)]})
    assert e.value.response["Error"]["Code"] == "InvalidInputException"


# ---------------------------------------------------------------------------
# quota mode (off unless /_fake/config {"quota": true})


def _buf(fid):
    return {"FindingIdentifiers": [ident(fid)], "Note": {"Text": "n", "UpdatedBy": "t"}}


def test_quota_mode_is_off_by_default_and_after_reset(seeded):
    c = direct_client(seeded)
    for _ in range(10):  # over GetFindings' burst of 6
        c.get_findings(MaxResults=1)
    assert seeded.op_stats("GetFindings") == {"calls": 10, "throttled": 0}
    seeded.quota_on()
    seeded.reset()
    assert seeded.configure()["quota"] is False
    assert seeded.op_stats("GetFindings") == {"calls": 0, "throttled": 0}


def test_quota_mode_throttles_over_the_burst_and_does_not_apply(seeded):
    c = direct_client(seeded)
    # boto3 loads its models on a client's first call: done before the buckets start filling,
    # the 7 calls below fit in the third of a second before GetFindings' next token.
    c.get_findings(MaxResults=1)
    seeded.quota_on(BatchUpdateFindings=[1, 2])
    for _ in range(6):
        c.get_findings(MaxResults=1)
    with pytest.raises(ClientError) as e:
        c.get_findings(MaxResults=1)
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert err["Error"] == {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}
    c.batch_update_findings(**_buf("s-1"))
    c.batch_update_findings(**_buf("s-2"))
    with pytest.raises(ClientError) as e:
        c.batch_update_findings(**_buf("s-3"))
    assert e.value.response["Error"]["Code"] == "TooManyRequestsException"
    notes = {i: f["Note"]["Text"] for i, f in seeded.findings().items()}
    assert notes["s-1"] == notes["s-2"] == "n" and notes["s-3"] == "seed"
    stats = seeded.stats()
    assert stats["GetFindings"] == {"calls": 8, "throttled": 1}  # the warm-up call and 7
    assert stats["BatchUpdateFindings"] == {"calls": 3, "throttled": 1, "findings_processed": 2,
                                            "findings_unprocessed": 0}
    time.sleep(1.05)  # 1 token/s back
    c.batch_update_findings(**_buf("s-3"))
    rec = seeded.requests("PATCH", "/findings/batchupdate")
    assert [r["status"] for r in rec] == [200, 200, 429, 200]
    assert [r.get("throttled", False) for r in rec] == [False, False, True, False]


def test_throttle_next_throttles_whatever_the_quota(seeded):
    seeded.throttle_next(GetFindings=2)
    c = direct_client(seeded)
    for _ in range(2):
        r = raw_request(seeded.port, "POST", "/findings", b"{}",
                        sign(Creds(UPSTREAM_KEY, UPSTREAM_SECRET), "POST",
                             f"127.0.0.1:{seeded.port}", "/findings", b"{}"))
        assert r.status == 429, r.text
        assert r.headers["x-amzn-errortype"] == "TooManyRequestsException"
        assert r.json() == {"__type": "TooManyRequestsException", "message": "Rate exceeded"}
    assert c.get_findings()["Findings"]
    assert seeded.op_stats("GetFindings") == {"calls": 3, "throttled": 2}
    assert seeded.configure()["throttle_next"] == {"GetFindings": 0}


def test_boto3_standard_retries_back_off_on_the_fakes_throttle(seeded):
    seeded.throttle_next(GetFindings=1)
    c = boto3.session.Session().client(
        "securityhub", endpoint_url=seeded.endpoint, region_name=REGION,
        aws_access_key_id=UPSTREAM_KEY, aws_secret_access_key=UPSTREAM_SECRET,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=10))
    resp = c.get_findings(MaxResults=1)
    assert resp["ResponseMetadata"]["RetryAttempts"] == 1
    assert seeded.op_stats("GetFindings") == {"calls": 2, "throttled": 1}


def test_quota_buckets_are_thread_safe(seeded):
    """20 concurrent GetFindings against burst 6 (rate 0.01): exactly 6 pass."""
    seeded.quota_on(GetFindings=[0.01, 6])
    statuses = []

    def call():
        body = b"{}"
        r = raw_request(seeded.port, "POST", "/findings", body,
                        sign(Creds(UPSTREAM_KEY, UPSTREAM_SECRET), "POST",
                             f"127.0.0.1:{seeded.port}", "/findings", body))
        statuses.append(r.status)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert sorted(statuses) == [200] * 6 + [429] * 14
    assert seeded.op_stats("GetFindings") == {"calls": 20, "throttled": 14}


def test_quota_config_is_checked(seeded):
    for bad in ({"quota": 1}, {"quota_limits": {"GetFindings": [0, 1]}},
                {"quota_limits": {"GetFindings": 3}}, {"throttle_next": {"GetFindings": -1}}):
        r = requests.post(f"{seeded.endpoint}/_fake/config", json=bad, timeout=5)
        assert r.status_code == 400, (bad, r.text)
