"""Sanity checks of the fake Security Hub itself (no hubgate involved).

If these fail, every other result in the suite is suspect."""

import json

import boto3
import pytest
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
    ("AKIAOTHERKEY00000000", UPSTREAM_SECRET, "InvalidSignatureException"),
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
