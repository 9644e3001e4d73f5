"""Accounts take turns at hubgate's quota before their callers do; a wait that cannot end in
time ends at once.

In `resign` mode every caller spends hubgate's one GetFindings quota. Turns per caller alone
gave an account running many principals (automation roles, people) one turn per principal:
six busy roles in one member account left another member account one call in seven. Turns go
in two levels now, accounts first and each account's callers within it, in the lookup queue
(src/enrich/queue.rs) and in the pacer's lines for forwards (src/quota.rs).

And a forward that the quota cannot serve before its deadline is answered 429 at once, with
Retry-After, instead of after waiting out quota.max_wait_ms.
"""

from __future__ import annotations

import threading
import time

from helpers import (CALLERS_TOML, MEMBER_ACCOUNT, OTHER_ACCOUNT, Creds, assert_envelope, finding,
                     ident)

ROLES = [Creds(f"HGTESTROLE{n:010d}", f"role-secret-{n}") for n in range(6)]
LONE = Creds("HGTESTLONE0000000001", "lone-secret")
CALLERS = CALLERS_TOML + "".join(f"""
[[caller]]
id = "role-{n}"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
access_key_id = "{c.access_key}"
secret_access_key = "{c.secret_key}"
""" for n, c in enumerate(ROLES)) + f"""
[[caller]]
id = "lone"
account_id = "{OTHER_ACCOUNT}"
role = "member"
access_key_id = "{LONE.access_key}"
secret_access_key = "{LONE.secret_key}"
"""


def test_an_account_with_many_busy_callers_gets_one_turn_in_two_not_six_in_seven(
        make_fake, make_hubgate):
    """Six roles of account 222222222222 each raise 100 of their findings (30 GetFindings
    calls), while the one caller of account 333333333333 raises 100 of its own (5 calls), all
    at once, at 10 GetFindings a second. The lone account's calls alternate with the busy
    account's once it has findings waiting. Per caller it held one turn in seven, and its
    fifth call came about 35th (after 3.5 s)."""
    fake = make_fake()
    mine = {n: [f"f-role{n}-{i}" for i in range(100)] for n in range(len(ROLES))}
    lone = [f"f-lone-{i}" for i in range(100)]
    fake.add_findings([finding(f, MEMBER_ACCOUNT, "LOW", 10) for ids in mine.values() for f in ids])
    fake.add_findings([finding(f, OTHER_ACCOUNT, "LOW", 10) for f in lone])
    hg = make_hubgate({"quota": {"max_wait_ms": 8000, "limits": {
        "GetFindings": {"rate": 10, "burst": 2}}}}, fake=fake, callers_toml=CALLERS)
    answers: dict[str, int] = {}

    def raise_all(name, creds, ids):
        answers[name] = hg.buf({"FindingIdentifiers": [ident(f) for f in ids],
                                "Severity": {"Label": "HIGH"}}, creds=creds).status

    threads = [threading.Thread(target=raise_all, args=(f"role-{n}", c, mine[n]), daemon=True)
               for n, c in enumerate(ROLES)]
    for t in threads:
        t.start()
    # the roles' lookups are queued first: the lone account comes last, as a newcomer
    time.sleep(0.3)
    late = threading.Thread(target=raise_all, args=("lone", LONE, lone), daemon=True)
    late.start()
    for t in [*threads, late]:
        t.join(30)
    assert answers == {**{f"role-{n}": 200 for n in range(len(ROLES))}, "lone": 200}, answers
    calls = fake.get_findings_calls()
    assert len(calls) == 35, len(calls)

    def whose(call):
        ids = [v["Value"] for v in call["Filters"]["Id"]]
        return "lone" if ids[0].startswith("f-lone-") else "roles"
    order = [whose(c) for c in calls]
    at = [n for n, w in enumerate(order) if w == "lone"]
    # its first call waits for the calls already out when it came (about 0.3 s of them),
    # then every other call is its own
    gaps = [b - a for a, b in zip(at, at[1:])]
    assert at[-1] < 18 and max(gaps) <= 3, \
        f"the lone account's calls came at {at} of {len(order)}"
    assert fake.findings()["f-lone-99"]["Severity"]["Label"] == "HIGH"


def test_a_request_the_quota_cannot_serve_in_time_gets_its_429_at_once(make_fake, make_hubgate):
    """BatchUpdateFindings paced at one call in 5 s, max_wait_ms 1000: the administrator's
    second note cannot get a call before its deadline, so it is answered 429 at once, with
    Retry-After 5, not after waiting its whole second (holding its in-flight slot and its
    account's place at the bucket for nothing)."""
    fake = make_fake()
    fake.add_findings([finding("f-admin-1", MEMBER_ACCOUNT, "LOW", 10)])
    hg = make_hubgate({"quota": {"max_wait_ms": 1000, "limits": {
        "BatchUpdateFindings": {"rate": 0.2, "burst": 2}}}}, fake=fake)
    note = {"FindingIdentifiers": [ident("f-admin-1")],
            "Note": {"Text": "triaged", "UpdatedBy": "soc"}}
    assert hg.buf(note, who="admin").status == 200
    started = time.monotonic()
    resp = hg.buf(note, who="admin")
    elapsed = time.monotonic() - started
    body = assert_envelope(resp, 429, "THROTTLED", "ThrottlingException")
    assert "BatchUpdateFindings quota" in body["error"]["message"], body
    assert resp.headers["retry-after"] == "5", resp.headers
    assert elapsed < 0.6, f"the 429 came after {elapsed:.2f}s"
    assert len(fake.buf_calls()) == 1
