"""Adversarial review (quota, pacing and throttling, third round; one replica, no Redis).

(draft)
"""

from __future__ import annotations

import threading
import time

import pytest

from helpers import (CALLERS_TOML, MEMBER_ACCOUNT, Creds, assert_envelope, finding, ident)

SAME_ACCOUNT_MEMBER = Creds("HGTESTMEMBER00000003", "same-account-member-secret")
SAME_ACCOUNT = CALLERS_TOML + f"""
[[caller]]
id = "member-playbook"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
access_key_id = "{SAME_ACCOUNT_MEMBER.access_key}"
secret_access_key = "{SAME_ACCOUNT_MEMBER.secret_key}"
"""


def test_a_bulk_job_does_not_hold_another_caller_of_its_account_behind_its_backlog(
        make_fake, make_hubgate):
    """Principal "member" of account 222222222222 runs a bulk raise: six requests of 100 of
    its own findings, 30 GetFindings calls paced at 10 a second (3 s). Meanwhile a playbook
    with its own keys in the same account adds a note to one finding. Its lookup must take a
    turn beside the bulk job's (the next call or the one after), not wait for the whole
    backlog: queued per account, it waited until the bulk requests ahead of it had run out of
    max_wait_ms (2 s) themselves, 1.7 s, and behind a bulk job that kept sending (SDK workers
    retrying) it ran out of max_wait_ms too (429)."""
    fake = make_fake()
    bulk = [[f"f-bulk-{j}-{i}" for i in range(100)] for j in range(6)]
    fake.add_findings([finding(fid, MEMBER_ACCOUNT, "HIGH", 70) for ids in bulk for fid in ids])
    fake.add_findings([finding("f-playbook", MEMBER_ACCOUNT, "HIGH", 70)])
    hg = make_hubgate({"quota": {"max_wait_ms": 2000, "limits": {
        "GetFindings": {"rate": 10, "burst": 2}}}}, fake=fake, callers_toml=SAME_ACCOUNT)
    answered = []

    def raise_all(ids):
        answered.append(hg.buf({"FindingIdentifiers": [ident(f) for f in ids],
                                "Severity": {"Label": "CRITICAL"}}, who="member").status)
    threads = [threading.Thread(target=raise_all, args=(ids,), daemon=True) for ids in bulk]
    for t in threads:
        t.start()
    time.sleep(0.4)
    started = time.monotonic()
    resp = hg.buf({"FindingIdentifiers": [ident("f-playbook")],
                   "Note": {"Text": "triaged", "UpdatedBy": "playbook"}},
                  creds=SAME_ACCOUNT_MEMBER)
    elapsed = time.monotonic() - started
    for t in threads:
        t.join(10)
    assert resp.status == 200, (resp.text, round(elapsed, 2))
    # two calls at 10 a second, with room for a loaded machine
    assert elapsed < 1.0, f"the playbook's note waited {elapsed:.1f}s behind the bulk job"
    assert fake.findings()["f-playbook"]["Note"]["Text"] == "triaged"
    # the bulk job itself is not starved either: its first requests went through
    assert 200 in answered, answered
