"""Adversarial review (session 50): per-finding apply (`policy.on_partial_deny =
"forward-allowed"`) and dry-run, as a member with valid keys and as an SRE on quotas.

- HOLE (fixed): a cut request (some findings denied, the rest to be forwarded) that hubgate
  refused before it went out (its own BatchUpdateFindings quota ran out within
  quota.max_wait_ms: 429 THROTTLED; likewise the audit sink failing, the caller gone or
  changed) was recorded with `partial: {forwarded: 1, denied: 1}` beside `forwarded: false`:
  the record said a finding had been sent that never left. `partial` is now recorded only for
  a cut request that was sent (answered, or left with its outcome unknown), as the metrics'
  `decision="partial"` already was.
- HOLE (fixed): an allowed finding named twice in a cut request was counted twice in the
  record's `partial.forwarded` (`{forwarded: 2, denied: 1}` for a request naming two
  findings), and registered, written through and checked against the answer once per place
  (its first place, unmatched, evicted as a write of unknown outcome: the state just written
  through was dropped, and the next decision on the finding spent a GetFindings of the shared
  quota). The cut is now counted and tracked on the de-duplicated findings, as a whole forward
  is.
- Held: the cut body is the checked body but for the denied identifiers (escapes decoded to
  the same characters, numbers re-spelt only as equal values, Note and UserDefinedFields as
  sent), re-signed; identifiers repeated stay repeated, as a whole forward sends them.
- Held (probed, not kept as tests: the code reads plainly and other files cover the paths):
  a violation naming a finding the request does not name, or `finding: null` beside
  per-finding ones, or naming every finding, refuses the whole request (403, nothing sent);
  Security Hub's 4xx to the cut goes back as it came, cache untouched, its 5xx too with the
  forwarded findings evicted, its 429 becomes 429 THROTTLED with the cache unchanged; a 200
  hubgate cannot merge (gzip although identity was asked) is 502, evicted, recorded forwarded
  with `partial`; a denied finding's cached state stays as it was (its lowering is still
  judged on the old severity, from the cache); dry-run with forward-allowed forwards whole
  (`dry_run: true`, `partial: null`, decision="dry_run_deny"), written through as applied.
"""

from __future__ import annotations

import json

import pytest

from helpers import ident

SEV_CRITICAL = {"Severity": {"Label": "CRITICAL"}}


def member_cut(hg, extra=None):
    """own finding + another account's: one forwarded, one denied."""
    body = {"FindingIdentifiers": [ident("f-own-high"), ident("f-other")], **SEV_CRITICAL,
            **(extra or {})}
    resp = hg.buf(body, who="member")
    rid = resp.headers.get("x-hubgate-decision-id") or resp.headers.get("x-amzn-requestid")
    return resp, hg.audit_for(rid)


def test_a_cut_request_hubgate_throttled_records_no_partial_forward(make_hubgate, seeded_fake):
    hg = make_hubgate({"policy": {"on_partial_deny": "forward-allowed"},
                       "quota": {"max_wait_ms": 100,
                                 "limits": {"BatchUpdateFindings": {"rate": 0.01, "burst": 2}}}},
                      fake=seeded_fake)
    resp, rec = member_cut(hg)
    assert resp.status == 200, resp.text
    assert rec["forwarded"] is True and rec["partial"] == {"forwarded": 1, "denied": 1}
    # The one usable call of the burst is spent: the next cut waits 100 ms and is refused.
    resp, rec = member_cut(hg)
    assert resp.status == 429, resp.text
    assert rec["throttled"] is True and rec["forwarded"] is False
    assert rec["partial"] is None, rec
    assert len(hg.fake.buf_calls()) == 1


def test_an_allowed_finding_named_twice_is_one_forwarded_finding(make_hubgate, seeded_fake):
    """[own, own, other]: the bytes sent keep the caller's identifiers but the denied one; the
    record counts one finding forwarded, as the request names one; the state written through
    for it stays cached (the next decision on it spends no GetFindings)."""
    hg = make_hubgate({"policy": {"on_partial_deny": "forward-allowed"},
                       "enrichment": {"cache_ttl_ms": 5000}}, fake=seeded_fake)
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high"), ident("f-own-high"),
                                          ident("f-other")], **SEV_CRITICAL}, who="member")
    assert resp.status == 200, resp.text
    sent = json.loads(hg.fake.buf_calls()[0]["body"])
    assert [f["Id"] for f in sent["FindingIdentifiers"]] == ["f-own-high", "f-own-high"]
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["findings"][0]["Ids"] == ["f-own-high", "f-other"]
    assert rec["partial"] == {"forwarded": 1, "denied": 1}, rec["partial"]
    assert hg.fake.findings()["f-other"]["Severity"]["Label"] == "MEDIUM"
    lookups = len(hg.fake.get_findings_calls())
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high")], "Severity": {"Label": "HIGH"}},
                  who="member")
    # judged on the state written through (CRITICAL), from the cache
    assert resp.status == 403 and "CRITICAL to HIGH" in resp.text, resp.text
    assert len(hg.fake.get_findings_calls()) == lookups, "the written-through state was evicted"


def test_the_cut_body_carries_the_judged_update_member_for_member(make_hubgate, seeded_fake):
    """Held: the re-serialised body is the checked one but for the denied identifier: escapes
    become the same characters (U+2028, an astral pair), a number is re-spelt only as the
    same value (1E2 as 100.0), Note and UserDefinedFields as sent."""
    hg = make_hubgate({"policy": {"on_partial_deny": "forward-allowed"}}, fake=seeded_fake)
    raw = ('{"FindingIdentifiers": [%s, %s], "Note": {"Text": "x\\u2028y \\ud83d\\ude00 \\/",'
           ' "UpdatedBy": "m\\u00e9"}, "UserDefinedFields": {"k\\u0041": "v"},'
           ' "Severity": {"Label": "CRITICAL", "Product": 1E2}}'
           % (json.dumps(ident("f-own-high")), json.dumps(ident("f-other"))))
    resp = hg.buf(raw.encode(), who="member")
    assert resp.status == 200, resp.text
    sent = json.loads(hg.fake.buf_calls()[0]["body"])
    judged = json.loads(raw)
    judged["FindingIdentifiers"] = [ident("f-own-high")]
    assert sent == judged
    assert sent["Note"]["Text"] == "x\u2028y \U0001F600 /"
    assert [u["FindingIdentifier"]["Id"] for u in resp.json()["UnprocessedFindings"]] == \
        ["f-other"]
