"""Adversarial review (the finding-state cache and enrichment, second round): what a member
with valid keys can make the cache hold, and whether what it holds after a write is what
Security Hub holds, however the write names its findings.

- HOLE (fixed): a finding cached as not found counted as nothing in the cache's size, and the
  cache was bounded by its number of entries alone (50,000): a member naming made-up
  identifiers as long as the body allows (hundreds of kilobytes each, refused as not found)
  made hubgate hold every one of them until that count was reached, while
  hubgate_enrichment_cache_bytes said 0. Each entry now counts its identifiers, and
  enrichment.max_cache_bytes bounds what the cache holds (oldest first past it).
- HOLE (fixed): every named finding a BatchUpdateFindings answer did not list as processed was
  kept in the settle journal for settle_ms (5 minutes), even those Security Hub reported as
  FindingNotFound, which the write cannot have changed: in dry-run, where a member's refused
  requests are forwarded, its made-up identifiers were held for five minutes (27 MB in 18 s
  of one member's requests). Such findings are now only dropped from the cache.
- Held: one GetFindings call shared by two accounts' requests decides each on its own
  caller: the finding's owner is allowed, the other member refused as not its account.
- Held: a write naming the cached finding with a JSON escape in its Id, twice, setting only
  Severity.Normalized, is written through as the label Security Hub derives (CRITICAL): a
  member's lowering to HIGH is refused from the cache, with no lookup.

Each test runs its own hubgate in front of its own fake (seeded with SEED, no quotas).
"""

from __future__ import annotations

import threading

from test_adversarial_replicas import OTHER_MEMBER, TWO_MEMBERS

from helpers import ADMIN, MEMBER_ACCOUNT, ident

FID = "f-own-medium"  # SEED: the member's finding, MEDIUM
NOTE = {"Note": {"Text": "looking into it", "UpdatedBy": "cache2-e2e"}}


def metric(hg, name: str) -> float | None:
    for line in hg.admin("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


# As long as a finding's identifier can be (the model: an Id of at most 512 characters, a
# ProductArn of at most 2048); a longer one is refused before any lookup (see
# test_adversarial_operations2.py), so the most a member can make the cache hold is many of these.
ARN_2048 = "arn:" + "x" * 2044


def made_up(i: int) -> dict:
    """An identifier no finding has, as long as the model lets one be (2,560 characters)."""
    return ident(f"made-up-{i}-".ljust(512, "x"), ARN_2048)


def made_up_batch(i: int) -> list[dict]:
    """A request's worth (100) of made-up identifiers: 256 KB of identifiers."""
    return [made_up(100 * i + j) for j in range(100)]


def test_made_up_identifiers_count_and_stay_within_the_byte_bound(make_fake, make_hubgate):
    """A member names 100 made-up identifiers of 2.5 KB (256 KB) per request; each is refused as
    not found and cached as such (for negative_ttl_ms, and held until the cache makes room). The
    cache must count them (base: _bytes said 0) and, with enrichment.max_cache_bytes, hold no
    more than that (base: every one was kept, up to 50,000). (This test named one identifier of
    300 KB per request until such identifiers became a 400.)"""
    fake = make_fake()
    hg = make_hubgate({"enrichment": {"cache_ttl_ms": 5000}}, fake=fake)
    for i in range(3):
        r = hg.buf({"FindingIdentifiers": made_up_batch(i), **NOTE}, who="member")
        assert r.status == 403, r.text[:300]
        assert "no such finding" in r.json()["error"]["message"], r.text[:300]
    assert metric(hg, "hubgate_enrichment_cache_entries") == 300
    assert metric(hg, "hubgate_enrichment_cache_bytes") >= 300 * 2560

    bound = 2 * 1024 * 1024
    hg = make_hubgate({"enrichment": {"cache_ttl_ms": 5000, "max_cache_bytes": bound}},
                      fake=fake)
    for i in range(10):
        r = hg.buf({"FindingIdentifiers": made_up_batch(i), **NOTE}, who="member")
        assert r.status == 403, r.text[:300]
        held = metric(hg, "hubgate_enrichment_cache_bytes")
        assert 2560 <= held <= bound, (i, held)
    assert metric(hg, "hubgate_enrichment_cache_entries") <= bound // 2560


def test_findings_security_hub_does_not_have_are_not_kept_for_settle_ms(make_fake, make_hubgate):
    """Dry-run forwards the member's refused requests: each names its own finding and two
    made-up identifiers. Security Hub applies the note to the member's finding and
    reports the others as FindingNotFound. Only the member's finding is kept in the settle
    journal (base: all seven findings, the made-up ones for five minutes)."""
    fake = make_fake()
    hg = make_hubgate({"policy": {"mode": "dry-run"}, "enrichment": {"cache_ttl_ms": 5000}},
                      fake=fake)
    for i in range(3):
        ids = [ident(FID), made_up(2 * i), made_up(2 * i + 1)]
        r = hg.buf({"FindingIdentifiers": ids, **NOTE}, who="member")
        assert r.status == 200, r.text[:300]
        codes = [u["ErrorCode"] for u in r.json()["UnprocessedFindings"]]
        assert codes == ["FindingNotFound"] * 2, r.text[:300]
    assert metric(hg, "hubgate_enrichment_settling_findings") == 1
    assert fake.findings()[FID]["Note"]["Text"] == NOTE["Note"]["Text"]


def test_one_lookup_shared_by_two_accounts_decides_each_on_its_caller(make_fake, make_hubgate):
    """GetFindings answers 0.8 s late, so the owner's note and another member's note on the
    same finding, sent together, share one call."""
    fake = make_fake()
    hg = make_hubgate({"enrichment": {"cache_ttl_ms": 5000}}, fake=fake,
                      callers_toml=TWO_MEMBERS)
    fake.configure(answer_delay_ms={"GetFindings": 800})
    answers = {}

    def send(name, **kw):
        answers[name] = hg.buf({"FindingIdentifiers": [ident(FID)], **NOTE}, **kw)

    threads = [threading.Thread(target=send, args=("owner",), kwargs={"who": "member"}),
               threading.Thread(target=send, args=("other",), kwargs={"creds": OTHER_MEMBER})]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers["owner"].status == 200, answers["owner"].text
    assert answers["other"].status == 403, answers["other"].text
    assert "only update findings of their own account" in answers["other"].text
    assert fake.op_stats("GetFindings")["calls"] == 1
    assert len(fake.buf_calls()) == 1


def test_a_write_naming_the_finding_twice_and_escaped_is_written_through(make_fake,
                                                                          make_hubgate):
    """The member's note caches its finding (MEDIUM). The administrator's raise names it as
    "f-own-medi\\u0075m" and again plainly, and sets only Severity.Normalized 95: Security Hub
    derives CRITICAL. The member's HIGH is then judged on the cache, as lowering CRITICAL."""
    fake = make_fake()
    hg = make_hubgate({"enrichment": {"cache_ttl_ms": 60000}}, fake=fake)
    assert hg.buf({"FindingIdentifiers": [ident(FID)], **NOTE}, who="member").status == 200
    arn = ident(FID)["ProductArn"]
    raw = ('{"FindingIdentifiers": [{"Id": "f-own-medi\\u0075m", "ProductArn": "%s"}, '
           '{"Id": "%s", "ProductArn": "%s"}], "Severity": {"Normalized": 95}}' % (arn, FID, arn))
    raised = hg.buf(raw, creds=ADMIN)
    assert raised.status == 200, raised.text
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"
    calls = fake.op_stats("GetFindings")["calls"]
    lowered = hg.buf({"FindingIdentifiers": [ident(FID)], "Severity": {"Label": "HIGH"}},
                     who="member")
    assert lowered.status == 403, lowered.text
    assert "(CRITICAL to HIGH)" in lowered.json()["error"]["message"], lowered.text
    assert fake.op_stats("GetFindings")["calls"] == calls, "judged from the cache"
    assert fake.findings()[FID]["Severity"]["Label"] == "CRITICAL"
    assert fake.findings()[FID]["Workflow"]["Status"] == "NEW"
    assert MEMBER_ACCOUNT == fake.findings()[FID]["AwsAccountId"]
