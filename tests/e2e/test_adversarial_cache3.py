"""Adversarial review (the finding-state cache, its lookups and contested findings, third
round). An attacker holds MEMBER keys; another member account (OTHER_MEMBER) and the
administrator share hubgate with it. The upstream is the scripted Security Hub of
test_adversarial_upstream.py (`Quirky`), here also answering BatchUpdateFindingsV2 (applied to
the ASFF finding it names: the worst case hubgate assumes) and BatchImportFindings (refused,
after `import_delay`).

- HOLE (fixed): a BatchUpdateFindings in flight beside a write hubgate cannot name findings of
  (a V2 write of the finding's account, UpdateFindings) was written through when answered,
  over a state read after the other write's answer: an administrator's LOW, answered after
  their V2 CRITICAL sent later (which Security Hub applied last), left LOW cached over
  CRITICAL, and with enrichment.settle_ms = 0 a member's LOW was judged no lowering and
  forwarded. Such a finding's entry is now dropped (Sending::beside), as for two
  BatchUpdateFindings of other values in flight at once (review 48). With the settle journal
  on, the V2's account is unknown for the window (held).
- HOLE (fixed): findings asked for again (a write landed while their call was out) waited in
  one turn for all accounts, first in, first out. A member keeping its hundreds of findings
  looked up while V2 status changes to its own account were answered had them all asked again,
  and another account's finding asked again (an administrator's note landed during its lookup)
  waited behind that backlog: 13 calls after its first lookup, where its turn now comes within
  a few. Each account's findings asked again are now a turn of their own.
- HOLE (fixed): with member imports on ("own-findings"), a member's import naming another
  account's finding's Id and ProductArn under its own account (refused by Security Hub), in
  flight while that account's member noted its finding, contested the identifier: the other
  account's finding was unknown to everyone for settle_ms (five minutes of 503
  STATE_SETTLING) for the price of one import. An import claiming an account can change only
  that account's finding; it is now "beside" the change for that account's copy only.
- HOLE (fixed): with member imports on, the same imports, one every tenth of a second, each
  counted as a write to every finding of the identifier: the other account's lookup of its
  own finding was asked for again at every answer (and its cached entry evicted), until its
  member's one-finding note ran out of quota.max_wait_ms (504 after 3 s and 7 GetFindings
  calls). An import claiming an account is now a write to that account's finding only (and to
  one not found, which it may create).
- Held (by the API model, left alone): "a coalesced lookup's 4xx fails its sharers" cannot be
  caused by a caller. Every identifier hubgate lets reach a lookup (Id of 1 to 512
  characters, ProductArn of 12 to 2048, each with a non-space, at most 20 keys a call, so at
  most 20 values for each of the two attributes) is a valid GetFindings StringFilter value
  (NonEmptyString, no length limit), and a GetFindings page is read up to 32 MiB; a 4xx would
  be Security Hub's own fault, answered 502 (retried by SDKs) to each sharer.
- Held (checked by hand): a finding a member's request found missing (cached as not found for
  negative_ttl_ms), then imported by the administrator, then lowered by the member: refused as
  settling (the import's window), or, with settle_ms = 0, judged on the imported CRITICAL
  (403), never on the cached "not found".
- Held (by reading, left alone): filling the cache with made-up identifiers to evict others'
  warm entries needs far more lookups than the GetFindings quota gives (entries live 5 s,
  not-found ones 1 s; 3 calls a second of 20 keys fill at most a few hundred), and the
  contested rule counts every fact the shipped rules read (severity label and rank,
  Normalized mapped to its label, workflow status); RecordState and VerificationState change
  only by writes hubgate cannot model, or are read by no shipped rule.

Each test runs its own hubgate in front of its own scripted upstream.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from helpers import (CALLERS, MEMBER_ACCOUNT, OTHER_ACCOUNT, PRODUCT_ARN, assert_envelope,
                     finding, ident, wait_until)
from test_adversarial_model2 import policies_with, reimport
from test_adversarial_replicas import OTHER_MEMBER, TWO_MEMBERS
from test_adversarial_upstream import NOTE, Quirky, hubgate_on, quirky, upd  # noqa: F401

V2_SEVERITY = {1: "INFORMATIONAL", 2: "LOW", 3: "MEDIUM", 4: "HIGH", 5: "CRITICAL"}


def serve_v2(up: Quirky):
    """BatchUpdateFindingsV2 and BatchImportFindings on the scripted upstream. V2 is applied to
    the ASFF finding its FindingInfoUid names (the worst case hubgate assumes: a V2 write may
    change what GetFindings reads); an import is refused, after `import_delay` seconds."""
    serve = up._serve

    def _serve(h):
        if h.path not in ("/findingsv2/batchupdatev2", "/findings/import"):
            return serve(h)
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        req = json.loads(raw or b"{}")
        with up.lock:
            up.calls.append((h.command, h.path, req))
        if h.path == "/findings/import":
            # Security Hub refuses an import claiming a finding its product does not let the
            # caller write; slowly.
            time.sleep(up.import_delay)
            return answer(h, {"FailedCount": len(req["Findings"]), "SuccessCount": 0,
                              "FailedFindings": [{"Id": f["Id"], "ErrorCode": "AccessDenied",
                                                  "ErrorMessage": "not allowed"}
                                                 for f in req["Findings"]]})
        delay = up.v2_delay
        for i in req.get("FindingIdentifiers", []):
            f = up.findings.get((i["FindingInfoUid"], PRODUCT_ARN))
            if f is not None and "SeverityId" in req:
                f["Severity"] = {"Label": V2_SEVERITY[req["SeverityId"]]}
        time.sleep(delay)
        answer(h, {"ProcessedFindings": [{"FindingIdentifier": i} for i in
                                         req.get("FindingIdentifiers", [])],
                   "UnprocessedFindings": []})

    up.v2_delay = 0.0
    up.import_delay = 0.0
    up._serve = _serve


def answer(h, doc: dict):
    body = json.dumps(doc).encode()
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def v2(fid: str, **fields) -> dict:
    return {"FindingIdentifiers": [{"CloudAccountUid": MEMBER_ACCOUNT, "FindingInfoUid": fid,
                                    "MetadataProductUid": PRODUCT_ARN}], **fields}


@pytest.mark.parametrize("settle_ms", [0, 300000])
def test_a_write_answered_after_a_v2_write_beside_it_is_not_laid_over_a_read_since(
        quirky, make_hubgate, settle_ms):
    """An administrator's LOW (answered late), then, while it is in flight, their V2 CRITICAL
    of the same finding, applied last and answered at once. A member's request reads the
    finding (CRITICAL) before the LOW is answered; the LOW's answer was then written through
    over that read, and with settle_ms = 0 the member's LOW was judged LOW to LOW and
    forwarded. With the settle journal on, the V2's account stays unknown (503)."""
    serve_v2(quirky)
    hg = hubgate_on(make_hubgate, quirky, {"enrichment": {"cache_ttl_ms": 60000,
                                                          "settle_ms": settle_ms}})

    applied = threading.Event()

    def slow_low(req):
        answer = quirky._apply(req)
        if req.get("Severity", {}).get("Label") == "LOW":
            applied.set()
            time.sleep(0.7)
        return answer

    quirky.on_update = slow_low
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "low", hg.buf(upd("f-own-high", Severity={"Label": "LOW"}), who="admin")))
    t.start()
    # The LOW is applied (and its answer held) before the V2 is sent: a condition, not a sleep.
    assert applied.wait(5), "the LOW never reached Security Hub"
    r = hg.send("PATCH", "/findingsv2/batchupdatev2", v2("f-own-high", SeverityId=5),
                who="admin")
    assert r.status == 200, r.body
    assert quirky.severity("f-own-high") == "CRITICAL"
    time.sleep(0.05)
    # The member's read while the LOW is in flight: refused either way (or settling).
    probe = hg.buf(upd("f-own-high", Severity={"Label": "MEDIUM"}, Note=NOTE), who="member")
    assert probe.status in (403, 503), probe.body
    t.join(5)
    assert out["low"].status == 200
    quirky.on_update = None
    lowering = hg.buf(upd("f-own-high", Severity={"Label": "LOW"}, Note=NOTE), who="member")
    if settle_ms:
        assert_envelope(lowering, 503, "STATE_SETTLING", "ServiceUnavailableException")
    else:
        assert_envelope(lowering, 403, "POLICY_DENIED", "AccessDeniedException")
    assert quirky.severity("f-own-high") == "CRITICAL"


def test_a_members_findings_asked_again_do_not_hold_another_accounts_asked_again(
        make_hubgate):
    """A member keeps 300 of its findings being looked up (three notes of 100, over and over)
    and sends V2 status changes to its own account meanwhile, so each of its lookups answered
    after one is asked again. Another account's finding is asked again too (an administrator's
    note landed while it was looked up). All findings asked again waited in one turn, first in,
    first out: the other account's came after the member's backlog, 13 calls after its first
    lookup; each account's are now a turn of their own."""
    attacker = [f"a-{i}" for i in range(300)]
    up = Quirky([finding(f, MEMBER_ACCOUNT, "HIGH", 70) for f in attacker]
                + [finding("f-other", OTHER_ACCOUNT, "MEDIUM", 40)])
    serve_v2(up)
    stop = threading.Event()
    threads = []
    try:
        def slow_get(req, default):
            time.sleep(0.5)

        up.on_get = slow_get
        hg = make_hubgate({"upstream": {"timeout_ms": 3000},
                           "enrichment": {"cache_ttl_ms": 0, "settle_ms": 0},
                           "quota": {"max_wait_ms": 8000},
                           "quota.limits": {"GetFindings": {"rate": 5.0, "burst": 1}}},
                          upstream_endpoint=up.endpoint, callers_toml=TWO_MEMBERS)

        def flood(ids):
            while not stop.is_set():
                hg.buf({"FindingIdentifiers": [ident(i) for i in ids], "Note": NOTE},
                       who="member")

        def own_v2():
            while not stop.is_set():
                hg.send("PATCH", "/findingsv2/batchupdatev2", v2("a-0", StatusId=2),
                        who="member")
                time.sleep(0.05)

        threads = [threading.Thread(target=flood, args=(attacker[i:i + 100],))
                   for i in (0, 100, 200)] + [threading.Thread(target=own_v2)]
        for t in threads:
            t.start()
        time.sleep(2.0)

        def lookups():
            with up.lock:
                return [r for m, p, r in up.calls if (m, p) == ("POST", "/findings")]

        def victims(calls):
            return [n for n, r in enumerate(calls)
                    if any(c["Value"] == "f-other" for c in r["Filters"]["Id"])]

        out = {}
        victim = threading.Thread(target=lambda: out.setdefault("v", hg.buf(
            upd("f-other", Note=NOTE), creds=OTHER_MEMBER)))
        victim.start()
        wait_until(lambda: victims(lookups()), 5, "the other account's lookup to go out")
        time.sleep(0.1)
        assert hg.buf(upd("f-other", Note=NOTE), who="admin").status == 200
        victim.join(15)
        assert out["v"].status == 200, out["v"].body
        first, again = victims(lookups())[:2]
        assert again - first <= 7, f"asked again {again - first} calls after its first lookup"
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        up.stop()


def test_a_members_import_naming_another_accounts_finding_does_not_lock_it(
        quirky, make_hubgate, tmp_path):
    """With member imports on ("own-findings"), a member imports a finding with another
    account's finding's Id and ProductArn, claiming its own account (Security Hub refuses it,
    slowly). The other account's member notes its finding meanwhile. The two writes in flight
    to one identifier contested it: the finding was unknown to everyone for settle_ms (five
    minutes of 503 STATE_SETTLING), at the cost of one import. An import claiming an account
    can change only that account's finding: the other account's is judged as usual. The
    member's own finding is unknown while its import is in flight and for the window (held)."""
    serve_v2(quirky)
    quirky.import_delay = 0.6
    policies = policies_with(tmp_path, member_imports="own-findings")
    hg = make_hubgate({"policy": {"dir": str(policies)}, "upstream": {"timeout_ms": 3000}},
                      upstream_endpoint=quirky.endpoint, callers_toml=TWO_MEMBERS)

    def beside_an_import(fid, creds):
        out = {}
        sent = quirky.count("/findings/import")
        t = threading.Thread(target=lambda: out.setdefault("import", hg.send(
            "POST", "/findings/import", {"Findings": [reimport(fid, MEMBER_ACCOUNT)]},
            who="member")))
        t.start()
        # The import is in flight (at Security Hub, answered 0.6 s later): a condition, not
        # a sleep, so the note below is decided beside it however loaded the machine.
        wait_until(lambda: quirky.count("/findings/import") > sent, 5,
                   "the import to reach Security Hub")
        during = hg.buf(upd(fid, Note=NOTE), creds=creds)
        t.join(5)
        assert out["import"].status == 200
        return during, hg.buf(upd(fid, Note=NOTE), creds=creds)

    during, again = beside_an_import("f-other", OTHER_MEMBER)
    assert during.status == 200, during.body
    assert again.status == 200, again.body
    for answer in beside_an_import("f-own-high", CALLERS["member"]):
        assert_envelope(answer, 503, "STATE_SETTLING", "ServiceUnavailableException")


def test_a_members_imports_naming_another_accounts_finding_do_not_hold_its_lookup(
        quirky, make_hubgate, tmp_path):
    """With member imports on, a member imports a finding with another account's finding's Id
    and ProductArn under its own account, every tenth of a second (Security Hub refuses each at
    once). Each answer counted as a write to the identifier, so the other account's lookup of
    its own finding, 0.4 s long, was asked for again at every answer: its member's one-finding
    note waited out quota.max_wait_ms (504 after 3 s and 7 GetFindings calls). An import
    claiming an account changes only that account's finding: one lookup, answered."""
    serve_v2(quirky)
    policies = policies_with(tmp_path, member_imports="own-findings")
    hg = make_hubgate({"policy": {"dir": str(policies)}, "upstream": {"timeout_ms": 3000},
                       "quota": {"max_wait_ms": 3000}},
                      upstream_endpoint=quirky.endpoint, callers_toml=TWO_MEMBERS)

    def slow_get(req, default):
        time.sleep(0.4)

    quirky.on_get = slow_get
    stop = threading.Event()

    def imports():
        while not stop.is_set():
            hg.send("POST", "/findings/import",
                    {"Findings": [reimport("f-other", MEMBER_ACCOUNT)]}, who="member")
            time.sleep(0.05)

    t = threading.Thread(target=imports)
    t.start()
    try:
        time.sleep(0.3)
        note = hg.buf(upd("f-other", Note=NOTE), creds=OTHER_MEMBER)
    finally:
        stop.set()
        t.join(5)
    assert note.status == 200, note.body
    assert quirky.count("/findings") <= 2
