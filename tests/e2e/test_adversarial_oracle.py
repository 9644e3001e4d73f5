"""Adversarial review: what a member learns through hubgate about findings of other accounts
(an existence oracle). hubgate looks findings up with its own role, which reads every
account's; whatever differs in the answer to a member between "this identifier is another
account's finding" and "no finding has this identifier" tells the member what its own
credentials cannot.

- HOLE (fixed): a member's BatchUpdateFindings naming another account's finding was refused
  "member accounts may only update findings of their own account", one naming an unknown
  identifier "finding not found in Security Hub" (the same in each UnprocessedFindings
  ErrorMessage with on_partial_deny = "forward-allowed", and in `hubgate eval`). A member's
  policy input now holds another account's finding exactly as one not found (null facts, null
  `current`, counted in `summary.missing`: `Document::withheld` in src/policy/input.rs), so no
  rule, shipped or an operator's, can tell them apart; the shipped policies give both one
  message ("... of their own account: this account has no such finding"). Administrators'
  answers are unchanged (another account's finding is theirs to change, an unknown one gets
  Security Hub's own UnprocessedFindings). The decision record says which it was (its new
  `withheld`: the places of the findings found in another account).
- HOLE (fixed): while a write that may have changed any finding was settling (an
  administrator's UpdateFindings, for enrichment.settle_ms), a member naming an unknown
  identifier got 503 STATE_SETTLING ("any finding ... was changed through hubgate by
  UpdateFindings ..."), one naming another account's finding 403: the member learned the
  identifier's existence (and that the security team had just changed findings), and its SDK
  retried the unknown identifier for nothing. For a member the settle refusals now judge only
  its own found findings (`judged_by` in src/enrich.rs): an identifier not found is refused
  whatever a settling write did, so it cannot be settling for the member.
- Held (by reading operations.rego): V2 (BatchUpdateFindingsV2) is judged on the account the
  request claims (CloudAccountUid), UpdateFindings (filters) is refused for members, both
  before and without any lookup: no existence to learn.
- Held (by reading imports.rego): BatchImportFindings by a member is judged on the claimed
  AwsAccountId only; nothing is looked up.
- Held: headers (x-amzn-ErrorType, no Retry-After) and status are the same for both, and the
  per-finding ErrorCode of UnprocessedFindings too.

Noticed, left alone:
- Timing: a found finding is cached for enrichment.cache_ttl_ms (5 s), one not found for
  negative_ttl_ms (1 s); between the two, a member repeating a request on another account's
  finding is answered from the cache, on an unknown identifier after a GetFindings call (tens
  of milliseconds more against AWS). Closing it costs either quota (re-reading other accounts'
  findings for members) or staleness; setting negative_ttl_ms = cache_ttl_ms closes it.
- A member's own import in flight (or settling) and its update of the imported finding at
  once (by reading `judged_by`): the update, reading the finding as not found, was 503 STATE_SETTLING (its SDK
  retried), and is now 403 like any identifier not found. The member's own race; failing
  closed either way, and an import's answer retires the "not found" it cached.
- Dry-run forwards a member's refused request with hubgate's credentials by design; Security
  Hub's answer (ProcessedFindings vs UnprocessedFindings) then tells the two apart.
"""

import json

from helpers import (MEMBER_ACCOUNT, OTHER_ACCOUNT, PRODUCT_ARN, REPO, assert_envelope, ident,
                     run_hubgate)

ONE = ("member accounts may only update findings of their own account: "
       "this account has no such finding")
NOTE = {"Note": {"Text": "oracle probe", "UpdatedBy": "oracle"}}


def body(*fids, **update):
    return {"FindingIdentifiers": [ident(f) for f in fids], **(update or NOTE)}


def test_member_cannot_tell_another_accounts_finding_from_an_unknown_one(hubgate):
    """The whole-request refusal: same status, headers, code and message for both; the
    administrator still changes another account's finding."""
    other = hubgate.buf(body("f-other"), who="member")
    unknown = hubgate.buf(body("no-such-finding"), who="member")
    got = assert_envelope(other, 403, "POLICY_DENIED", "AccessDeniedException")
    assert [d["msg"] for d in got["error"]["details"]] == [ONE], got
    assert_envelope(unknown, 403, "POLICY_DENIED", "AccessDeniedException")
    strip = lambda r, fid: (r.status, r.headers.get("x-amzn-errortype"),  # noqa: E731
                            "retry-after" in r.headers,
                            r.json()["error"]["message"].replace(fid, "X"),
                            [d["msg"] for d in r.json()["error"]["details"]])
    assert strip(other, "f-other") == strip(unknown, "no-such-finding"), (other.text,
                                                                         unknown.text)
    # the operator's record still says which it was
    record = lambda r: hubgate.audit_for(r.headers["x-amzn-requestid"])  # noqa: E731
    assert record(other).get("withheld") == [0], record(other)
    assert "withheld" not in record(unknown), record(unknown)
    assert hubgate.buf(body("f-other"), who="admin").status == 200


def test_per_finding_apply_answers_both_alike(make_hubgate, fake):
    """forward-allowed: the member's own finding is forwarded, the two others land in
    UnprocessedFindings with one ErrorCode and one ErrorMessage."""
    hg = make_hubgate({"policy": {"on_partial_deny": "forward-allowed"}}, fake=fake)
    r = hg.buf(body("f-own-high", "f-other", "no-such-finding"), who="member")
    assert r.status == 200, r.text
    unprocessed = {u["FindingIdentifier"]["Id"]: u for u in r.json()["UnprocessedFindings"]}
    assert set(unprocessed) == {"f-other", "no-such-finding"}, r.text
    a, b = unprocessed["f-other"], unprocessed["no-such-finding"]
    assert (a["ErrorCode"], a["ErrorMessage"]) == (b["ErrorCode"], b["ErrorMessage"]), r.text
    assert ONE in a["ErrorMessage"], r.text


def test_an_unknown_identifier_is_not_settling_for_a_member(make_hubgate, make_fake):
    """An administrator's UpdateFindings (a RecordState: a note alone changes no fact a
    decision reads) may have changed any finding: for settle_ms the
    member's own findings are refused 503 STATE_SETTLING (held), but an identifier not found
    is refused for ownership like another account's finding, not asked to retry."""
    fake = make_fake()
    hg = make_hubgate({"enrichment": {"enabled": True, "cache_ttl_ms": 0, "settle_ms": 60000}},
                      fake=fake)
    r = hg.send("PATCH", "/findings",
                {"Filters": {"Id": [{"Value": "f-admin", "Comparison": "EQUALS"}]},
                 "Note": {"Text": "admin note", "UpdatedBy": "sec"}, "RecordState": "ACTIVE"},
                who="admin")
    assert r.status == 200, r.text
    own = hg.buf(body("f-own-high"), who="member")
    assert_envelope(own, 503, "STATE_SETTLING", "ServiceUnavailableException")
    answers = {fid: hg.buf(body(fid), who="member") for fid in ("f-other", "no-such-finding")}
    for fid, resp in answers.items():
        got = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
        assert [d["msg"] for d in got["error"]["details"]] == [ONE], (fid, got)
        assert "retry-after" not in resp.headers, (fid, resp.headers)


def test_eval_answers_a_member_alike(tmp_path):
    """`hubgate eval` judges as serving does: for a member, another account's finding (in the
    --current file) and an identifier not in it are explained by one message."""
    req = tmp_path / "r.json"
    req.write_text(json.dumps(body("f-theirs", "f-gone")))
    cur = tmp_path / "c.json"
    cur.write_text(json.dumps({"Findings": [
        {"Id": "f-theirs", "ProductArn": PRODUCT_ARN, "AwsAccountId": OTHER_ACCOUNT,
         "Severity": {"Label": "HIGH"}, "Workflow": {"Status": "NEW"}}]}))
    r = run_hubgate("eval", "--config", str(REPO / "config" / "demo" / "hubgate.toml"),
                    "--request", str(req), "--as", f"member:{MEMBER_ACCOUNT}",
                    "--current", str(cur), "--input")
    assert r.returncode == 1, r.stdout + r.stderr
    # the member's input itself: no rule of an operator's can tell the two apart either
    head = "input (second pass (with finding state)):\n"
    doc, _ = json.JSONDecoder().raw_decode(r.stdout[r.stdout.index(head) + len(head):])
    theirs, gone = ({k: v for k, v in f.items() if k != "Id"} for f in doc["findings"])
    assert theirs == gone and theirs["current"] is None, doc["findings"]
    assert doc["summary"]["missing"] == 2 and OTHER_ACCOUNT not in json.dumps(doc["summary"])
    lines = [line.split(" [finding ")[0] for line in r.stdout.splitlines() if "[finding f-" in line]
    assert len(lines) == 2 and lines[0] == lines[1] and ONE in lines[0], r.stdout
