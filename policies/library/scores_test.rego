# Tests of library/scores.rego (members may not change Confidence or Criticality).
package hubgate_scores_test

import data.hubgate_inputs as t

member := t.member

admin := t.admin

on := {"scores": "enforce"}

refused := {"msg": "member accounts may not change Confidence or Criticality", "finding": null}

scores(confidence, criticality) := t.update({
	"fields": [field | some i, field in ["Confidence", "Criticality"]; [confidence, criticality][i] != null],
	"confidence": confidence, "criticality": criticality,
})

doc(principal, phase, upd) := t.buf(principal, phase, [t.own("f1")], upd)

enforced(d) := t.decide(d, on).deny

# --- modes ---

test_scores_enforce_denies if {
	r := t.decide(doc(member, "pending", scores(80, null)), on)
	r.deny == {refused}
	count(r.warn) == 0
}

test_scores_warn_warns if {
	r := t.decide(doc(member, "pending", scores(80, null)), {"scores": "warn"})
	count(r.deny) == 0
	r.warn == {refused}
}

test_scores_off_is_silent if {
	r := t.decide(doc(member, "pending", scores(80, null)), {"scores": "off"})
	count(r.deny) == 0
	count(r.warn) == 0
}

test_scores_absent_setting_warns if {
	r := t.decide(doc(member, "pending", scores(null, 10)), {})
	count(r.deny) == 0
	r.warn == {refused}
	count(t.deny(doc(member, "pending", scores(null, 10)))) == 0
}

# --- enforced ---

test_member_confidence_denied_in_first_pass if {
	enforced(doc(member, "pending", scores(80, null))) == {refused}
}

test_member_criticality_denied if {
	enforced(doc(member, "complete", scores(null, 10))) == {refused}
}

# Both fields give one violation, not two.
test_member_both_give_one_violation if {
	enforced(doc(member, "pending", scores(80, 90))) == {refused}
}

# 0 is a value, not an absence.
test_member_zero_is_a_change if {
	enforced(doc(member, "pending", scores(0, null))) == {refused}
	enforced(doc(member, "pending", scores(null, 0))) == {refused}
}

# Setting the current value counts too: the rule judges the request, not the difference.
test_member_resending_current_value_denied if {
	enforced(doc(member, "complete", scores(50, 50))) == {refused}
}

test_member_without_scores_allowed if {
	count(enforced(doc(member, "complete", t.note_only("x")))) == 0
}

test_admin_scores_allowed if {
	count(enforced(doc(admin, "complete", scores(0, 100)))) == 0
}

# The field is set but its fact is null or absent: still a change (the rule reads fields).
test_scores_null_confidence if {
	enforced(doc(member, "pending", t.null_fact(["Confidence"]))) == {refused}
	enforced(doc(member, "pending", t.absent_fact(["Confidence"], "confidence"))) == {refused}
}

test_scores_null_criticality if {
	enforced(doc(member, "pending", t.null_fact(["Criticality"]))) == {refused}
	enforced(doc(member, "pending", t.absent_fact(["Criticality"], "criticality"))) == {refused}
}

# --- matrix ---

# BatchImportFindings: judged on fields (and refused by imports.rego as customer-owned).
test_matrix_scores_import_judged if {
	fields := array.concat(t.provider_fields, ["Confidence"])
	r := t.decide(t.bif(member, [t.claimed("f1", t.own_account)], fields), on) with data.hubgate_settings.member_imports as "own-findings"
	refused in r.deny
	"member accounts may not set Confidence through BatchImportFindings: it is the customer's, to change with BatchUpdateFindings" in {v.msg | some v in r.deny}
	w := t.decide(t.bif(member, [t.claimed("f1", t.own_account)], fields), {}) with data.hubgate_settings.member_imports as "own-findings"
	w.warn == {refused}
}

# The provider's scores, which Security Hub copies to the top-level ones while no
# BatchUpdateFindings has set them: a member's opted-in import that sets them changes them too.
test_matrix_scores_import_provider_scores_every_one if {
	every field in ["FindingProviderFields.Confidence", "FindingProviderFields.Criticality"] {
		fields := ["AwsAccountId", "Id", "ProductArn", field]
		r := t.decide(t.bif(member, [t.claimed("f1", t.own_account)], fields), on) with data.hubgate_settings.member_imports as "own-findings"
		r.deny == {refused}
	}
}

# The provider's severity stays the documented trade-off of "own-findings", not this rule's.
test_matrix_scores_import_provider_severity_not_judged if {
	fields := ["AwsAccountId", "Id", "ProductArn", "FindingProviderFields.Severity"]
	r := t.decide(t.bif(member, [t.claimed("f1", t.own_account)], fields), on) with data.hubgate_settings.member_imports as "own-findings"
	count(r.deny) == 0
}
