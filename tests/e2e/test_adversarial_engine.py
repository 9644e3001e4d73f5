"""Adversarial review (the policy engine): where the served bytecode VM decided a request
otherwise than `hubgate test`'s interpreter (and OPA) for a reasonable deny-style rule, attacked
by a caller with valid member keys, against the real binary and the fake Security Hub. The
differential cases behind each finding are unit tests in src/policy/tests.rs.

- HOLE (fixed): an undefined value did not make a rule body undefined on the VM. The
  published bytecode compiler bound `t := e` with `e` undefined and went on (and `[a, b] := e`
  held for any `e` of two members, an object or a string); it yielded an undefined
  comprehension term, object comprehension key or value, and partial object key; a complete
  rule whose head value was undefined did not fall through to its `else`; and a function's
  `default` (`default rank(_) := 0`) was never its value. So a helper such as `ticketed if {
  t := regex.find_n("RISK-[0-9]+", input.update.note.text, 1)[0] }` held for a note with no
  ticket, `count([t | t := input.request.body.Note.Ticket]) == 0` was false without a ticket,
  and `rank(label) < rank(current)` was undefined for a label the table lacks: each deny rule
  on them did not fire and a member's note or severity change was forwarded. Fixed in
  vendor/regorus (PATCHES.md): the head, term and assignment are guarded as Rego defines them,
  a function's default is compiled, and a call with an undefined argument stays undefined.
- HOLE (fixed): `not [x, _] = e` / `not {"k": _} = e` never held on the VM (the pattern's own
  checks ended the whole body), so a deny rule on it never fired. Such a set no longer loads;
  the message points to a helper rule, which decides as the interpreter does.
- Held: `with`, `print`, `walk` as a relation and partial object rules with constant keys do
  not load (the bytecode compiler refuses them); `some x in e` over a value that is not a
  collection is undefined on the VM, as in OPA (the interpreter errs: fails closed under `hubgate
  test` only); comparisons across types, 1 == 1.0, -0, huge and float numbers, unicode strings
  and about thirty builtins on caller text of every JSON type decide alike on both engines.
"""

from __future__ import annotations

import pytest

from helpers import assert_envelope, ident
from test_adversarial_authoring import check, own_set

# Each rule refuses a member's note without a ticket, or a severity the table does not rank.
# Before the fix none of these fired on the served VM: the note was forwarded.
UNDEFINED_VALUES = r"""package hubgate

member if input.principal.role == "member"

# an assignment of an undefined value
ticketed if { t := regex.find_n("RISK-[0-9]+", input.update.note.text, 1)[0] }

deny contains {"msg": "assignment: a note needs a ticket", "finding": null} if {
	member
	input.update.note
	not ticketed
}

# an array comprehension's term
deny contains {"msg": "comprehension: a note needs a ticket", "finding": null} if {
	member
	input.update.note
	tickets := [t | t := regex.find_n("RISK-[0-9]+", input.update.note.text, 1)[0]]
	count(tickets) == 0
}

# a partial object's key
owners[input.request.body.UserDefinedFields.owner] := true

deny contains {"msg": "partial object: a note names an owner", "finding": null} if {
	member
	input.update.note
	count(owners) == 0
}

# a head value before its else
confidence := input.request.body.Confidence if { true } else := 0

deny contains {"msg": "else: a member states a confidence", "finding": null} if {
	member
	input.update.note
	confidence < 1
}

# a function's default
default rank(_) := 0

rank("LOW") := 1

deny contains {"msg": "default: a note names a ranked label", "finding": null} if {
	member
	input.update.note
	rank(object.get(input.request.body, ["UserDefinedFields", "label"], "none")) < 1
}
"""

MESSAGES = {
    "assignment: a note needs a ticket",
    "comprehension: a note needs a ticket",
    "partial object: a note names an owner",
    "else: a member states a confidence",
    "default: a note names a ranked label",
}


# ---------------------------------------------------------------------------
# HOLE (fixed): an undefined value let a deny rule's helper hold


def test_an_undefined_value_does_not_let_a_members_note_through(tmp_path, make_hubgate,
                                                                 seeded_fake):
    hg = make_hubgate({"policy": {"dir": str(own_set(tmp_path, UNDEFINED_VALUES))}},
                      fake=seeded_fake)
    r = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                "Note": {"Text": "looked at it", "UpdatedBy": "member"}}, who="member")
    assert seeded_fake.buf_calls() == [], f"forwarded: {r.status} {r.text}"
    body = assert_envelope(r, 403, "POLICY_DENIED", "AccessDeniedException")
    got = {d["msg"] for d in body["error"]["details"]}
    assert got == MESSAGES, f"rules that did not fire: {sorted(MESSAGES - got)}"
    # a note the rules accept is forwarded: they decide, they do not refuse everything
    ok = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                 "Note": {"Text": "RISK-7", "UpdatedBy": "member"}, "Confidence": 50,
                 "UserDefinedFields": {"owner": "m", "label": "LOW"}}, who="member")
    assert ok.status == 200, ok.text
    assert len(seeded_fake.buf_calls()) == 1


# ---------------------------------------------------------------------------
# HOLE (fixed): `not` over a destructuring pattern never held on the VM


def test_a_not_over_a_destructuring_pattern_does_not_load(tmp_path):
    policies = own_set(tmp_path, """package hubgate

deny contains {"msg": "a note needs an owner", "finding": null} if {
	input.update.note
	not {"Owner": _} = input.request.body.Note
}
""")
    r = check(tmp_path, policies)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "helper rule" in r.stderr, r.stderr
