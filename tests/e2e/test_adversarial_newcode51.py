"""Adversarial review of session 51's merged code (30ae225..1096ae8): the settle journal's
`enrich::Reach` (a note-only V2 Comment / UpdateFindings Note journals nothing), the slowed
pace's `SlowedSlot` / `take_slowed` / `wait_slowed`, the quota waits that end when nobody waits
(`quota_for`, `no_live_work`), and the lookup claims' `Taking` / `close` / `held_of` / `forget`
with the stop's second signal.

- HOLE (fixed): 86b1e4b let a note-only V2 `Comment` (or UpdateFindings `Note`) leave
  nothing settling once answered, but while it was in flight it still made every finding of
  the account it named (of every account, with `MetadataUids` or a filter) unknown: each
  member decision on them was refused 503 STATE_SETTLING ("is being changed through hubgate
  by BatchUpdateFindingsV2 ... in a way hubgate cannot tell"). An administrator's triage
  playbook commenting on an account's findings one after another (or a member commenting on
  its own, for its account's other principals) kept one comment in flight at all times, and
  every member's resolve, raise or note on that account was refused for as long as it ran
  (SDKs retry the 503 a few times, then fail). A V1 note in flight refuses nothing (it is
  laid over); a write of notes only now refuses nothing in flight either
  (`Sending::effect` skips `Reach::Notes`), and is still registered so that a write answered
  beside it knows it may have landed last. A V2 setting `StatusId` in flight still refuses.
- HOLE (fixed): the same write, once answered, voided every lookup and decision in flight on
  the account it named (every account's, for `MetadataUids` or a filter), as a write that may
  change facts does (`wrote_accounts`): each was looked up again. With a playbook commenting
  one finding after another, every member decision on that account was looked up again at
  each comment's answer until it ran out of time: 504 UPSTREAM_TIMEOUT ("Security Hub did not
  answer") after `max_wait_ms` (10 s by default, with some 30 GetFindings calls: the whole 3/s
  quota every account shares). A write of notes only now voids nothing in flight
  (`State::wrote_notes`); what was read before it is still not cached as fresh (`Retired`,
  by read time; for one with no account, `Retired::everything`). Decisions straddling a
  comment are judged on their read (a raise allowed, a lowering refused, one lookup each).
- Held: `Update::sets_only_note` cannot be met by a write that changes a fact a shipped rule
  reads. The typed V2 request has five members and `deny_unknown_fields`, the schema has
  `additionalProperties: false` and integer `SeverityId`/`StatusId`: a lower-case `statusId`,
  an ASFF `Severity` or `Workflow` on V2, a null, `4.0` or `"1"` for an id, an empty or blank
  `Comment`, and an UpdateFindings `Note` beside an unknown member are all 400
  VALIDATION_ERROR, never forwarded (kept as a test). An empty change (identifiers only) is
  "note only" and journals nothing, which is right: it changes nothing.
- Held: shipped rules read `current` only for account, severity, workflow status and
  RecordState/Compliance (reopen.rego); the ticket rule reads the request's own note
  (`update.note`), never `current.Note`.
- Held: after a throttle, an administrator's reads, a member's reads and the lookup queue
  waiting for the slowed pace together never get one slot twice: the calls reach Security
  Hub one slowed interval apart (kept as a test). Who takes a due slot is random among the
  waiters (at most one per account, `account_lines`), as the bucket's turns already are.
- Held (read): a `SlowedSlot` given back restores the pace only if nothing was taken and no
  throttle moved it since (`next == set`): a throttle always moves `next` past a slot taken
  before it (within the gap, a slot can be taken only if the slowed interval is under 1 s,
  and the pace then recovers too slowly for the throttle's `after` to fall behind it);
  `before` is never in the future (a slot is taken only when due), so a give-back never
  pushes anyone back. `wait_slowed` sleeps until the due instant plus jitter and cannot spin;
  with a deadline it ends with the early 429.
- Held (read): `quota_for` and `drive`'s `no_live_work` poll every 50 ms only while a wait
  for quota is under way; the drive loop returns to its notified wait (created before the
  check) when nothing is live, so it neither spins nor misses a request queued meanwhile.
- Held (read): `Taking::begin` counts before it reads `closed` and `close` sets `closed`
  before it reads the count; every claim call is bounded by op_timeout (and the halt's Redis
  cut-off), and `release_all`'s own timeout is a backstop, so a stop waits at most twice
  op_timeout, and a second signal exits at once (test_adversarial_lifecycle4).

Noticed and left alone: `Claims::forget` removes a base whatever its age; a `release` of a
claim dropped before its lookup was sent (`release_unclaimed`, in the background) whose reply
is handled after this replica's new claim of the same finding in the same generation forgets
the new claim, which a stop would then leave to expire (lookup_claim_ms). The claim's own
store still releases it; the window is one Redis round trip, and no test could aim at it.
"""

from __future__ import annotations

import threading
import time

from helpers import (ADMIN_ACCOUNT, MEMBER_ACCOUNT, OWN_ACCOUNT_FILTER, PRODUCT_ARN,
                     assert_envelope, ident)

V2 = "/findingsv2/batchupdatev2"
EVERYTHING = {"Filters": {"AwsAccountId": [{"Value": ADMIN_ACCOUNT, "Comparison": "EQUALS"}]}}
NOTE = {"Text": "SEC-7 fixed", "UpdatedBy": "soar"}


def v2_ident(uid: str, account: str = MEMBER_ACCOUNT) -> dict:
    return {"CloudAccountUid": account, "FindingInfoUid": uid, "MetadataProductUid": PRODUCT_ARN}


def test_what_looks_like_a_note_but_is_not_is_refused_before_it_is_exempt(make_hubgate,
                                                                          seeded_fake):
    """Default settle_ms. Every V2 (or UpdateFindings) body that a loose reading could take
    for a note only, while it sets (or might set) something else, is a 400 and is never
    forwarded; the truly empty change is forwarded and leaves nothing settling."""
    hg = make_hubgate({}, fake=seeded_fake)
    own = {"FindingIdentifiers": [v2_ident("f-own-high")]}
    for extra in ({"statusId": 4, "Comment": "x"}, {"StatusId": None, "Comment": "x"},
                  {"StatusId": 4.0, "Comment": "x"}, {"SeverityId": "1", "Comment": "x"},
                  {"Severity": {"Label": "LOW"}, "Comment": "x"},
                  {"Workflow": {"Status": "SUPPRESSED"}, "Comment": "x"},
                  {"Comment": ""}, {"Comment": " "}):
        resp = hg.send("PATCH", V2, {**own, **extra}, who="member")
        assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
    filters = {"Id": [{"Value": "f-own-high", "Comparison": "EQUALS"}]}
    for extra in ({"recordState": "ARCHIVED"}, {"Workflow": {"Status": "SUPPRESSED"}}):
        resp = hg.send("PATCH", "/findings", {"Filters": filters, "Note": NOTE, **extra},
                       who="admin")
        assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert seeded_fake.requests(path=V2) == []
    assert seeded_fake.requests("PATCH", "/findings") == []
    # identifiers only: nothing changes, nothing is left settling
    assert hg.send("PATCH", V2, own, who="member").status == 200
    resolve = hg.buf({"FindingIdentifiers": [ident("f-own-medium")],
                      "Workflow": {"Status": "RESOLVED"}, "Note": NOTE}, who="member")
    assert resolve.status == 200, resolve.text


def test_a_note_answered_while_a_decision_reads_state_leaves_the_read_standing(make_hubgate,
                                                                             seeded_fake):
    """GetFindings answers 0.8 s late. While the member's raise (then its lowering) waits for
    its lookup, the member comments on another of its findings through V2. The read in flight
    stands (a note changes no fact): the raise is allowed and the lowering refused, on one
    lookup each, and neither is refused as settling."""
    hg = make_hubgate({}, fake=seeded_fake)
    seeded_fake.configure(answer_delay_ms={"GetFindings": 800})
    comment = {"FindingIdentifiers": [v2_ident("f-own-high")], "Comment": "triaged"}
    for fid, label, status in (("f-own-medium", "CRITICAL", 200), ("f-own-high", "LOW", 403)):
        calls = len(seeded_fake.get_findings_calls())
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", hg.buf(
            {"FindingIdentifiers": [ident(fid)], "Severity": {"Label": label}}, who="member")),
            daemon=True)
        t.start()
        time.sleep(0.3)
        assert hg.send("PATCH", V2, comment, who="member").status == 200
        t.join(10)
        resp = out["r"]
        assert resp.status == status, resp.text
        if status == 403:
            assert "may not lower" in resp.json()["error"]["message"], resp.text
        assert len(seeded_fake.get_findings_calls()) - calls == 1, "looked up again"


def test_callers_of_every_kind_waiting_for_the_slowed_pace_keep_it(make_fake, make_hubgate):
    """GetFindings at 5/s; Security Hub throttles one call, so the pace halves (one call per
    400 ms, recovering 5% of the rate a second). Then three administrator reads, three member
    reads and three member raises (whose lookups wait in the lookup queue, without a
    deadline) wait for it together: each is answered, and the calls reach Security Hub one
    slowed interval apart, never two on one slot."""
    fake = make_fake()
    hg = make_hubgate({"quota": {"max_wait_ms": 5000, "limits": {
        "GetFindings": {"rate": 5, "burst": 30}}}}, fake=fake)
    fake.throttle_next(GetFindings=1)
    assert_envelope(hg.send("POST", "/findings", EVERYTHING, who="admin"), 429, "THROTTLED",
                    "ThrottlingException")
    started = time.time()
    statuses = []

    def one(kind: str, i: int):
        if kind == "admin":
            r = hg.send("POST", "/findings", EVERYTHING, who="admin")
        elif kind == "member":
            r = hg.send("POST", "/findings", {"Filters": OWN_ACCOUNT_FILTER}, who="member")
        else:
            fid = "f-own-high" if i % 2 else "f-own-medium"
            r = hg.buf({"FindingIdentifiers": [ident(fid)], "Severity": {"Label": "CRITICAL"}},
                       who="member")
        statuses.append((kind, r.status))

    threads = [threading.Thread(target=one, args=(k, i), daemon=True)
               for i in range(3) for k in ("admin", "member", "raise")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(statuses) == 9 and all(s == 200 for _, s in statuses), statuses
    times = sorted(r["time"] for r in fake.requests("POST", "/findings") if r["time"] >= started)
    gaps = [round(b - a, 3) for a, b in zip(times, times[1:])]
    # 0.4 s at the halved pace, 0.33 s by the end as it recovers
    assert len(times) >= 7 and min(gaps) > 0.28, gaps


def test_a_note_in_flight_refuses_no_decision(make_hubgate, seeded_fake):
    """Security Hub answers BatchUpdateFindingsV2 1 s late. While an administrator's comment
    on one of the member's findings (by OCSF identifiers, then by MetadataUids) is in flight,
    the member resolves another of its findings: judged and forwarded, not 503 STATE_SETTLING.
    While a V2 setting StatusId is in flight, the member's resolve is still refused."""
    hg = make_hubgate({}, fake=seeded_fake)
    seeded_fake.configure(answer_delay_ms={"BatchUpdateFindingsV2": 1000})
    resolve = {"FindingIdentifiers": [ident("f-own-medium")],
               "Workflow": {"Status": "RESOLVED"}, "Note": NOTE}
    own = {"FindingIdentifiers": [v2_ident("f-own-high")]}
    for write, status in (({**own, "Comment": "triaged"}, 200),
                          ({"MetadataUids": ["uid-1"], "Comment": "triaged"}, 200),
                          ({**own, "StatusId": 2, "Comment": "SEC-7"}, 503)):
        out = {}
        t = threading.Thread(target=lambda: out.setdefault(
            "w", hg.send("PATCH", V2, write, who="admin")), daemon=True)
        t.start()
        time.sleep(0.3)
        resp = hg.buf(resolve, who="member")
        t.join(10)
        assert out["w"].status == 200, out["w"].text
        if status == 503:
            assert_envelope(resp, 503, "STATE_SETTLING", "ServiceUnavailableException")
            break
        assert resp.status == 200, (write, resp.text)


def test_a_playbook_commenting_does_not_make_decisions_look_up_again_and_again(make_hubgate,
                                                                              seeded_fake):
    """GetFindings answers 0.3 s late; max_wait_ms 2.5 s. An administrator's playbook comments
    through V2 on one of the member's findings, one comment after another. The member's raise
    of another of its findings is decided on one lookup: the comments' answers do not void it
    (each did, and it was looked up again and again, some eight GetFindings calls of the
    quota all accounts share, until it ran out of time)."""
    hg = make_hubgate({"quota": {"max_wait_ms": 2500}}, fake=seeded_fake)
    seeded_fake.configure(answer_delay_ms={"GetFindings": 300})
    comment = {"FindingIdentifiers": [v2_ident("f-own-high")], "Comment": "triaged"}
    stop = threading.Event()
    comments = []

    def playbook():
        while not stop.is_set():
            comments.append(hg.send("PATCH", V2, comment, who="admin").status)

    t = threading.Thread(target=playbook, daemon=True)
    t.start()
    try:
        time.sleep(0.2)
        calls = len(seeded_fake.get_findings_calls())
        started = time.monotonic()
        resp = hg.buf({"FindingIdentifiers": [ident("f-own-medium")],
                       "Severity": {"Label": "CRITICAL"}}, who="member")
        took = time.monotonic() - started
        looked_up = len(seeded_fake.get_findings_calls()) - calls
    finally:
        stop.set()
        t.join(5)
    assert resp.status == 200, (resp.text, f"{took:.1f}s", f"{looked_up} lookups")
    assert looked_up <= 2, looked_up
    assert len(comments) > 5 and set(comments) == {200}, comments
