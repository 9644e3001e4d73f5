"""Enrichment: hubgate reads the targeted findings with GetFindings, in chunks of <= 20 ids."""

import pytest
from botocore.exceptions import ClientError

from helpers import (
    MEMBER_ACCOUNT,
    OTHER_ACCOUNT,
    OTHER_PRODUCT_ARN,
    PRODUCT_ARN,
    UPSTREAM_KEY,
    finding,
    header,
    ident,
)

N = 45


@pytest.fixture
def many(hubgate):
    """45 HIGH findings of the member's account, on top of the usual seed."""
    hubgate.fake.add_findings([finding(f"bulk-{i:02d}", MEMBER_ACCOUNT, "HIGH", 70)
                               for i in range(N)])
    return hubgate


def raise_all(hg, ids, product_arn=PRODUCT_ARN):
    return hg.client("member").batch_update_findings(
        FindingIdentifiers=[ident(i, product_arn) for i in ids], Severity={"Label": "CRITICAL"})


def check_lookups(fake, expected_ids: set):
    calls = fake.get_findings_calls()
    looked_up = set()
    for body in calls:
        ids = body["Filters"]["Id"]
        assert 1 <= len(ids) <= 20, f"{len(ids)} Id values in one GetFindings call"
        assert all(f["Comparison"] == "EQUALS" for f in ids)
        arns = body["Filters"].get("ProductArn", [])
        assert len(arns) <= 20
        assert all(f["Comparison"] == "EQUALS" for f in arns)
        assert 1 <= body.get("MaxResults", 100) <= 100
        looked_up |= {f["Value"] for f in ids}
    assert looked_up == expected_ids
    for rec in fake.requests("POST", "/findings"):
        assert f"Credential={UPSTREAM_KEY}/" in header(rec, "Authorization")
        assert rec["signature_valid"] is True
    return calls


def test_45_findings_are_looked_up_in_chunks_of_20(many):
    ids = [f"bulk-{i:02d}" for i in range(N)]
    resp = raise_all(many, ids)
    assert len(resp["ProcessedFindings"]) == N
    calls = check_lookups(many.fake, set(ids))
    assert len(calls) >= 3
    assert len(many.fake.buf_calls()) == 1
    stored = many.fake.findings()
    assert all(stored[i]["Severity"]["Label"] == "CRITICAL" for i in ids)


def test_lookups_follow_next_token(many):
    many.fake.configure(page_size=7)
    ids = [f"bulk-{i:02d}" for i in range(N)]
    resp = raise_all(many, ids)
    assert len(resp["ProcessedFindings"]) == N
    calls = check_lookups(many.fake, set(ids))
    assert len(calls) >= 7  # 20 ids per chunk at 7 per page: 3 + 3 + 1 pages at least
    assert any("NextToken" in c for c in calls)
    assert len(many.fake.buf_calls()) == 1


def test_pagination_finds_a_lowering_on_the_last_page(many):
    """A finding only visible on a later page still gets checked."""
    many.fake.configure(page_size=3)
    ids = [f"bulk-{i:02d}" for i in range(10)]
    many.fake.add_findings([finding("bulk-09", MEMBER_ACCOUNT, "CRITICAL", 95)])
    client = many.client("member")
    with pytest.raises(ClientError) as e:
        client.batch_update_findings(FindingIdentifiers=[ident(i) for i in ids],
                                   Severity={"Label": "HIGH"})
    assert "member accounts may not lower a finding's severity" in str(e.value)
    assert many.fake.buf_calls() == []


def test_same_id_under_two_products_is_matched_by_pair(hubgate):
    """(Id, ProductArn) pairs are matched locally: the same Id in another product is another
    finding, and another account's."""
    hubgate.fake.add_findings([finding("f-own-high", OTHER_ACCOUNT, "HIGH", 70,
                                       product_arn=OTHER_PRODUCT_ARN)])
    with pytest.raises(ClientError) as e:
        raise_all(hubgate, ["f-own-high"], OTHER_PRODUCT_ARN)
    assert "member accounts may only update findings of their own account" in str(e.value)
    resp = raise_all(hubgate, ["f-own-high"], PRODUCT_ARN)
    assert resp["ProcessedFindings"] == [ident("f-own-high")]


@pytest.fixture
def cached(make_hubgate, seeded_fake):
    return make_hubgate({"enrichment": {"cache_ttl_ms": 60000}}, fake=seeded_fake)


def test_cache_serves_repeat_lookups(cached):
    """Denied requests forward nothing, so the cached state stays valid and is reused."""
    hg = cached
    lower = {"FindingIdentifiers": [ident("f-own-high")], "Severity": {"Label": "LOW"}}
    for _ in range(3):
        assert hg.buf(lower, who="member").status == 403
    assert len(hg.fake.get_findings_calls()) == 1
    assert hg.fake.buf_calls() == []


def test_forwarded_update_invalidates_the_cached_state(cached):
    """Admin raises HIGH to CRITICAL; a member then asking for HIGH is a lowering, not a raise."""
    hg = cached
    member_note = {"FindingIdentifiers": [ident("f-own-high")],
                   "Note": {"Text": "looked at it", "UpdatedBy": "member"}}
    assert hg.buf(member_note, who="member").status == 200      # caches HIGH
    assert hg.buf({"FindingIdentifiers": [ident("f-own-high")], "Severity": {"Label": "CRITICAL"}},
                  who="admin").status == 200
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high")], "Severity": {"Label": "HIGH"}},
                  who="member")
    assert resp.status == 403, resp.text
    assert "lower a finding's severity (CRITICAL to HIGH)" in resp.json()["error"]["message"]
