# Tests of library/verification.rego (members may not mark findings FALSE_POSITIVE or BENIGN_POSITIVE).
package hubgate_verification_test

import data.hubgate_inputs as t

member := t.member

admin := t.admin

on := {"verification": "enforce"}

refused := "member accounts may not mark findings FALSE_POSITIVE or BENIGN_POSITIVE"

state(s) := t.update({"fields": ["VerificationState"], "verification_state": s})

doc(principal, phase, upd) := t.buf(principal, phase, [t.own("f1")], upd)

enforced(d) := {v.msg | some v in t.decide(d, on).deny}

# --- modes ---

test_verification_enforce_denies if {
	r := t.decide(doc(member, "pending", state("FALSE_POSITIVE")), on)
	r.deny == {{"msg": refused, "finding": null}}
	count(r.warn) == 0
}

test_verification_warn_warns if {
	r := t.decide(doc(member, "pending", state("FALSE_POSITIVE")), {"verification": "warn"})
	count(r.deny) == 0
	r.warn == {{"msg": refused, "finding": null}}
}

test_verification_off_is_silent if {
	r := t.decide(doc(member, "pending", state("FALSE_POSITIVE")), {"verification": "off"})
	count(r.deny) == 0
	count(r.warn) == 0
}

test_verification_absent_setting_warns if {
	r := t.decide(doc(member, "pending", state("BENIGN_POSITIVE")), {})
	count(r.deny) == 0
	r.warn == {{"msg": refused, "finding": null}}
	count(t.deny(doc(member, "pending", state("BENIGN_POSITIVE")))) == 0
}

# --- enforced ---

test_member_false_or_benign_positive_denied_in_both_passes if {
	every s in ["FALSE_POSITIVE", "BENIGN_POSITIVE"] {
		every phase in ["pending", "complete"] {
			enforced(doc(member, phase, state(s))) == {refused}
		}
	}
}

# A reason in the note does not help: the verdict is the administrator's to give.
test_member_false_positive_with_ticket_still_denied if {
	upd := t.update({"fields": ["Note.Text", "Note.UpdatedBy", "VerificationState"], "verification_state": "FALSE_POSITIVE", "note": t.note("SEC-1 noise")})
	enforced(doc(member, "pending", upd)) == {refused}
}

test_member_true_positive_or_unknown_allowed if {
	every s in ["TRUE_POSITIVE", "UNKNOWN"] {
		enforced(doc(member, "complete", state(s))) == set()
	}
}

test_member_without_verification_state_allowed if {
	enforced(doc(member, "complete", t.note_only("looking"))) == set()
}

test_admin_false_or_benign_positive_allowed if {
	every s in ["FALSE_POSITIVE", "BENIGN_POSITIVE"] {
		enforced(doc(admin, "complete", state(s))) == set()
	}
}

# VerificationState set without a value: refused for members (when enforced), in the first pass.
test_verification_null_verification_state if {
	enforced(doc(member, "pending", t.null_fact(["VerificationState"]))) == {t.cannot("VerificationState")}
	enforced(doc(member, "pending", t.absent_fact(["VerificationState"], "verification_state"))) == {t.cannot("VerificationState")}
	enforced(doc(admin, "pending", t.null_fact(["VerificationState"]))) == set()
	w := t.decide(doc(member, "pending", t.null_fact(["VerificationState"])), {})
	{v.msg | some v in w.warn} == {t.cannot("VerificationState")}
}

# --- matrix ---

# BatchImportFindings: a member's import may not set VerificationState (imports.rego), whatever the mode.
test_matrix_verification_import_refused_for_members if {
	fields := array.concat(t.provider_fields, ["VerificationState"])
	every mode in ["enforce", "warn", "off"] {
		r := t.decide(t.bif(member, [t.claimed("f1", t.own_account)], fields), {"verification": mode}) with data.hubgate_settings.member_imports as "own-findings"
		{v.msg | some v in r.deny} == {"member accounts may not set VerificationState through BatchImportFindings: it is the customer's, to change with BatchUpdateFindings"}
	}
}
