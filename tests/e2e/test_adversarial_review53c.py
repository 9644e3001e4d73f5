"""Adversarial review 53c (the finding-state cache as a security boundary). An attacker holds
MEMBER keys (account 222222222222); the administrator and another account (333333333333)
share hubgate with it. Each test asserts the SAFE outcome: a failing test shows a hole.

- HOLE (fixed in stop 53 once the import is answered, and in stop 54 while it is in
  flight): an administrator's BatchImportFindings claiming account 333 for the Id and
  ProductArn of a finding cached as the member's (222's) left that entry in place
  (Enricher::evict kept "another account's finding of the identifier"). The member's next
  write naming the identifier, judged on the cached entry, was forwarded and changed account
  333's finding (here lowered CRITICAL to HIGH and RESOLVED), with the journal on or off. The
  entry is now evicted when the import is answered, and a fresh lookup sees the second owner
  and refuses. While the import was in flight, Sending::effect passed over it as "claiming
  another account"; an import is now scoped to the account it claims only when a member sent
  it and claims its own account (review 49's case, test_adversarial_cache3.py). An
  administrator's import may touch the finding whoever owns it: the member's update is
  refused as settling (503).
- Held: forward-allowed registers, writes through and journals only the findings it sends."""

from __future__ import annotations

import threading

import pytest

from helpers import MEMBER_ACCOUNT, OTHER_ACCOUNT, finding, ident, wait_until

IMPORT = "/findings/import"
NOTE = {"Text": "triaged", "UpdatedBy": "soc"}


def upd(*fids, **fields) -> dict:
    return {"FindingIdentifiers": [ident(f) for f in fids], **fields}


def importable(fid: str, account: str, label: str = "HIGH") -> dict:
    f = finding(fid, account, label)
    for k in ("WorkflowState", "Workflow", "Note", "RecordState"):
        f.pop(k)
    return f


def stack(make_hubgate, fake, enrichment: dict | None = None, **sections):
    overrides = {"enrichment": {"cache_ttl_ms": 60000, **(enrichment or {})},
                 "upstream": {"timeout_ms": 2000}}
    for k, v in sections.items():
        overrides.setdefault(k, {}).update(v)
    return make_hubgate(overrides, fake=fake)


# --- 1. an administrator's import that gives another account a copy of a member's identifier


@pytest.mark.parametrize("cache_ttl_ms,settle_ms", [(5000, 300000), (60000, 0)],
                         ids=["defaults", "no-journal"])
def test_an_import_giving_another_account_the_members_identifier_is_not_the_members(
        make_hubgate, seeded_fake, cache_ttl_ms, settle_ms):
    """The member's finding F (Id, ProductArn) is cached as account 222's. The administrator
    then imports a finding with the same Id and ProductArn claiming account 333 (a partner
    product's id in each account; in the fake, which keeps one finding per identifier, it
    becomes 333's). Until stop 53 an import evicted only the claimed account's entries, so F's
    entry stayed 222's, and the member's next write naming F was judged as on its own finding:
    it changed account 333's finding. hubgate forwarded the import itself: this is not the
    cache_ttl_ms bound on writers outside hubgate. The entry is evicted now, and the fresh
    read refuses."""
    fake = seeded_fake
    hg = stack(make_hubgate, fake, {"cache_ttl_ms": cache_ttl_ms, "settle_ms": settle_ms})
    warm = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert warm.status == 200, warm.text
    r = hg.send("POST", IMPORT, {"Findings": [importable("f-own-high", OTHER_ACCOUNT, "CRITICAL")]},
                who="admin")
    assert r.status == 200 and r.json()["SuccessCount"] == 1, r.text
    assert fake.findings()["f-own-high"]["AwsAccountId"] == OTHER_ACCOUNT
    before = len(fake.buf_calls())
    # HIGH over 333's CRITICAL (judged HIGH to HIGH on the cached entry) and RESOLVED.
    attack = hg.buf(upd("f-own-high", Severity={"Label": "HIGH"},
                        Workflow={"Status": "RESOLVED"}, Note={"Text": "mine now", "UpdatedBy": "m"}),
                    who="member")
    assert attack.status in (403, 503), attack.text
    assert len(fake.buf_calls()) == before, "the member's write reached account 333's finding"
    other = fake.findings()["f-own-high"]
    assert other["Severity"]["Label"] == "CRITICAL" and "Workflow" not in other, other


def test_an_import_in_flight_giving_another_account_the_members_identifier(
        make_hubgate, seeded_fake):
    """As above, while the administrator's import claiming 333 is in flight (applied at once,
    answered late): the member's write naming F, judged on F's cached entry (222's), must not
    be forwarded while the import may be creating 333's copy."""
    fake = seeded_fake
    hg = stack(make_hubgate, fake, {"settle_ms": 0})
    assert hg.buf(upd("f-own-high", Note=NOTE), who="member").status == 200
    fake.configure(answer_delay_ms={"BatchImportFindings": 1500})
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", hg.send(
        "POST", IMPORT, {"Findings": [importable("f-own-high", OTHER_ACCOUNT, "CRITICAL")]},
        who="admin")))
    t.start()
    wait_until(lambda: fake.findings()["f-own-high"]["AwsAccountId"] == OTHER_ACCOUNT, 5,
               "the import to be applied")
    before = len(fake.buf_calls())
    attack = hg.buf(upd("f-own-high", Severity={"Label": "HIGH"},
                        Workflow={"Status": "RESOLVED"}), who="member")
    t.join(10)
    assert out["r"].status == 200, out["r"].text
    assert attack.status in (403, 503), attack.text
    assert len(fake.buf_calls()) == before, "the member's write reached account 333's finding"


# --- 2. forward-allowed: the cut-out finding takes none of the write ----------------------


def test_a_partial_forwards_denied_finding_is_not_written_through(make_hubgate, seeded_fake):
    """forward-allowed: HIGH for f-own-medium (a raise, sent) and f-own-critical (a lowering,
    cut). The cut finding's cached CRITICAL must stay CRITICAL: a second HIGH for it alone
    is still a lowering."""
    fake = seeded_fake
    fake.add_findings([finding("f-own-critical", MEMBER_ACCOUNT, "CRITICAL")])
    hg = stack(make_hubgate, fake, policy={"on_partial_deny": "forward-allowed"})
    r = hg.buf(upd("f-own-medium", "f-own-critical", Severity={"Label": "HIGH"}), who="member")
    assert r.status == 200, r.text
    assert [u["FindingIdentifier"]["Id"] for u in r.json()["UnprocessedFindings"]] == \
        ["f-own-critical"]
    again = hg.buf(upd("f-own-critical", Severity={"Label": "HIGH"}), who="member")
    assert again.status == 403, again.text
    assert fake.findings()["f-own-critical"]["Severity"]["Label"] == "CRITICAL"


def test_a_partial_forward_in_flight_is_laid_over_only_what_it_sends(make_hubgate,
                                                                      seeded_fake):
    """The partial forward above held at Security Hub (answer late); meanwhile the member's
    HIGH for f-own-critical alone, decided on the cached CRITICAL, must be refused, and after
    the answer too."""
    fake = seeded_fake
    fake.add_findings([finding("f-own-critical", MEMBER_ACCOUNT, "CRITICAL")])
    hg = stack(make_hubgate, fake, policy={"on_partial_deny": "forward-allowed"})
    assert hg.buf(upd("f-own-medium", "f-own-critical", Note=NOTE), who="member").status == 200
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 1200})
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", hg.buf(
        upd("f-own-medium", "f-own-critical", Severity={"Label": "HIGH"}), who="member")))
    t.start()
    wait_until(lambda: len(fake.buf_calls()) == 2, 5, "the partial forward to be sent")
    during = hg.buf(upd("f-own-critical", Severity={"Label": "HIGH"}), who="member")
    t.join(10)
    fake.configure(answer_delay_ms={})
    after = hg.buf(upd("f-own-critical", Severity={"Label": "HIGH"}), who="member")
    assert out["r"].status == 200, out["r"].text
    assert during.status in (403, 503), during.text
    assert after.status == 403, after.text
    assert fake.findings()["f-own-critical"]["Severity"]["Label"] == "CRITICAL"
