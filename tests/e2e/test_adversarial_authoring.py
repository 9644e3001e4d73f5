"""Adversarial review (policy authoring): policy sets a security team writes from the
documentation, with the shipped rules or beside them, attacked by a caller with valid member
keys, against the real binary and the fake Security Hub.

- HOLE (fixed): `data.hubgate.needs_state` decided the lookup on anything but `true`: a rule
  that was undefined for a request (a body the bytecode VM failed at evaluation, such as two
  definitions that give different values for one request; or a typo) or answered a
  non-boolean (`needs_state := "ownership" if member`) skipped the lookup, so a member's change
  to another account's finding was forwarded with every rule on finding state unevaluated. Now
  only `false` skips the lookup, undefined looks up, any other value is 500 POLICY_ERROR, and a
  set-valued `needs_state contains ...` is refused when the set loads (`hubgate check` names it).
- Held: a deny rule that uses `with` does not load (the bytecode compiler refuses it, `check`
  names the line); with on_partial_deny = "forward-allowed", a violation naming a finding the
  request does not target, or a finding whose Id is not a string, refuses the whole batch (403,
  nothing forwarded); a `msg` that is not a string is 500 POLICY_ERROR, recorded with the
  error, nothing forwarded.
- HOLE (fixed in stop 46): the served VM treated a rule body that failed at evaluation (a
  builtin's type error, division by zero, conflicting values) as one that does not hold, so a
  deny rule that erred on what a member sent did not fire and the request was forwarded;
  `hubgate test` reported the error. hubgate now serves regorus with a patch
  (vendor/regorus/PATCHES.md) under which such an error ends the evaluation: 500
  POLICY_ERROR, nothing forwarded. The conflict above is now that error too.
"""

from __future__ import annotations

import shutil

import pytest

from helpers import POLICY_DIR, PRODUCT_ARN, assert_envelope, ident, run_hubgate

SCHEMAS = POLICY_DIR / "schemas"


def shipped_plus(tmp_path, name: str, rego: str):
    """A copy of the shipped policy set with one more rule file."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    (policies / name).write_text(rego)
    return policies


def own_set(tmp_path, rego: str):
    """A policy set of one rule file and the shipped schemas."""
    policies = tmp_path / "own"
    policies.mkdir()
    shutil.copytree(SCHEMAS, policies / "schemas")
    (policies / "rules.rego").write_text(rego)
    return policies


def check(tmp_path, policies, **policy):
    """`hubgate check` on a configuration that serves `policies`."""
    cfg = tmp_path / "check.toml"
    (tmp_path / "callers.toml").write_text("")
    extra = "".join(f'{k} = "{v}"\n' for k, v in policy.items())
    cfg.write_text(
        '[server]\nlisten = "127.0.0.1:1"\nadmin_listen = "127.0.0.1:2"\n'
        '[upstream]\nendpoint = "http://127.0.0.1:3"\nregion = "us-east-1"\n'
        '[identity]\nmode = "sigv4"\ncallers = "callers.toml"\n'
        f'[policy]\ndir = "{policies}"\n{extra}'
        '[audit]\nsink = "stdout"\n')
    return run_hubgate("check", "--config", str(cfg))


def note_on(*ids):
    return {"FindingIdentifiers": [ident(i) for i in ids],
            "Note": {"Text": "triaged", "UpdatedBy": "member"}}


# ---------------------------------------------------------------------------
# HOLE (fixed): needs_state answered anything but true skipped the lookup

# "A note alone never needs finding state": the shipped `needs_state if member` says true for
# a member's note, this says false, and the two definitions conflict. OPA and `hubgate test`
# stop with a conflict error; the served VM gives the rule no value, which skipped the lookup.
NOTES_NEED_NO_STATE = """package hubgate

needs_state := false if input.update.fields == ["Note.Text", "Note.UpdatedBy"]
"""

# A rule meant to say why the lookup is needed: a string is not an answer.
NEEDS_STATE_AS_A_REASON = """package hubgate

member if input.principal.role == "member"

needs_state := "ownership" if member

deny contains {"msg": "member accounts may update only their own findings", "finding": {"Id": f.Id, "ProductArn": f.ProductArn}} if {
	member
	input.enrichment == "complete"
	some f in input.findings
	f.account_id != input.principal.account_id
}
"""


@pytest.mark.parametrize("kind", ["conflict", "string"])
def test_a_needs_state_that_is_not_false_never_skips_the_member_lookup(
        tmp_path, make_hubgate, seeded_fake, kind):
    if kind == "conflict":
        policies = shipped_plus(tmp_path, "notes.rego", NOTES_NEED_NO_STATE)
    else:
        policies = own_set(tmp_path, NEEDS_STATE_AS_A_REASON)
    hg = make_hubgate({"policy": {"dir": str(policies)}}, fake=seeded_fake)
    # the member annotates another account's finding
    r = hg.buf(note_on("f-other"), who="member")
    assert seeded_fake.buf_calls() == [], f"forwarded unjudged: {r.status} {r.text}"
    body = assert_envelope(r, 500, "POLICY_ERROR", "InternalException")
    rec = hg.audit_for(r.headers["x-amzn-requestid"])
    assert rec["forwarded"] is False and rec["error"]["code"] == "POLICY_ERROR", rec
    if kind == "conflict":
        # OPA and `hubgate test` stop with a conflict error; so does the served VM now
        assert "Conflicting values" in body["error"]["message"], body
        # and on the member's own finding too: the two definitions conflict for every note
        again = hg.buf(note_on("f-own-high"), who="member")
        assert_envelope(again, 500, "POLICY_ERROR", "InternalException")
        assert seeded_fake.buf_calls() == []
    else:
        assert "needs_state must be true or false" in body["error"]["message"], body


def test_a_set_valued_needs_state_does_not_load(tmp_path):
    policies = own_set(tmp_path, NEEDS_STATE_AS_A_REASON.replace(
        'needs_state := "ownership" if member', 'needs_state contains "ownership" if member'))
    r = check(tmp_path, policies)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "needs_state must be true or false" in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# Held: rules the served VM cannot run, and violations of odd shapes


def test_a_rule_that_uses_with_does_not_load(tmp_path):
    policies = own_set(tmp_path, """package hubgate

member if input.principal.role == "member"

admin_view if not member

deny contains {"msg": "w", "finding": null} if {
	member
	admin_view with input.principal.role as "administrator"
}
""")
    r = check(tmp_path, policies)
    assert r.returncode != 0 and "rules.rego:9" in r.stderr, r.stdout + r.stderr


ODD_VIOLATIONS = f"""package hubgate

deny contains {{"msg": "names a finding the request does not", "finding": {{"Id": "f-admin", "ProductArn": "{PRODUCT_ARN}"}}}} if {{
	input.request.body.Note.Text == "foreign"
}}

deny contains {{"msg": "an Id that is not a string", "finding": {{"Id": 7, "ProductArn": "{PRODUCT_ARN}"}}}} if {{
	input.request.body.Note.Text == "number"
}}

deny contains {{"msg": 7, "finding": null}} if {{
	input.request.body.Note.Text == "seven"
}}
"""


def test_odd_violations_refuse_the_whole_batch(tmp_path, make_hubgate, seeded_fake):
    policies = own_set(tmp_path, ODD_VIOLATIONS)
    hg = make_hubgate({"policy": {"dir": str(policies), "on_partial_deny": "forward-allowed"}},
                      fake=seeded_fake)

    def note(text):
        return {"FindingIdentifiers": [ident("f-own-high"), ident("f-own-medium")],
                "Note": {"Text": text, "UpdatedBy": "member"}}

    for text in ("foreign", "number"):
        r = hg.buf(note(text), who="member")
        assert_envelope(r, 403, "POLICY_DENIED", "AccessDeniedException")
    r = hg.buf(note("seven"), who="member")
    body = assert_envelope(r, 500, "POLICY_ERROR", "InternalException")
    assert "no string msg" in body["error"]["message"], body
    rec = hg.audit_for(r.headers["x-amzn-requestid"])
    assert rec["forwarded"] is False and rec["error"]["code"] == "POLICY_ERROR", rec
    assert seeded_fake.buf_calls() == []


# ---------------------------------------------------------------------------
# HOLE (fixed): a deny rule whose body errs on what a member sends did not fire

# "Members may reference only tickets up to 5000 in a note" (e.g. `JIRA:1234`). The body errs
# when what follows the colon is not a number (to_number raises); a note without one colon
# does not reach to_number.
TICKET_RULE = """package hubgate

deny contains {"msg": "members may reference only tickets up to 5000", "finding": null} if {
	input.principal.role == "member"
	"Note.Text" in input.update.fields
	parts := split(input.update.note.text, ":")
	count(parts) == 2
	to_number(parts[1]) > 5000
}
"""


@pytest.mark.parametrize("text", ["JIRA:abc", "JIRA:", "JIRA:0x1F"])
def test_a_deny_rule_whose_body_errs_refuses_the_request(
        tmp_path, make_hubgate, seeded_fake, text):
    hg = make_hubgate({"policy": {"dir": str(shipped_plus(tmp_path, "tickets.rego", TICKET_RULE))}},
                      fake=seeded_fake)
    r = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                "Note": {"Text": text, "UpdatedBy": "member"}}, who="member")
    body = assert_envelope(r, 500, "POLICY_ERROR", "InternalException")
    assert "to_number" in body["error"]["message"] or "number" in body["error"]["message"], body
    rec = hg.audit_for(r.headers["x-amzn-requestid"])
    assert rec["forwarded"] is False and rec["error"]["code"] == "POLICY_ERROR", rec
    assert seeded_fake.buf_calls() == [], "a request the policies could not judge was forwarded"
    # the rule itself still decides what it can read
    over = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Note": {"Text": "JIRA:9000", "UpdatedBy": "member"}}, who="member")
    assert_envelope(over, 403, "POLICY_DENIED", "AccessDeniedException")
    ok = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                 "Note": {"Text": "JIRA:42", "UpdatedBy": "member"}}, who="member")
    assert ok.status == 200, ok.text
    assert len(seeded_fake.buf_calls()) == 1
