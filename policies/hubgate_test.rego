# Tests of hubgate.rego (the default rules); run them with `hubgate test policies`.
package hubgate_test

import data.hubgate_inputs as t

member := t.member

admin := t.admin

suppress := t.status("SUPPRESSED")

incomplete := "finding state is incomplete: hubgate cannot judge this request"

# One message for another account's finding and for one not found: a member is not told which.
own_account := "member accounts may only update findings of their own account: this account has no such finding"

not_found := own_account

current_severity := "hubgate cannot see this finding's current severity, so member accounts may not change it"

# --- suppression ---

test_member_suppress_denied_before_enrichment if {
	t.msgs(t.buf(member, "pending", [t.own("f1")], suppress)) == {"member accounts may not suppress findings"}
}

# The default set needs no note: a newcomer's administrator suppresses with no Note.
test_admin_suppress_allowed if {
	count(t.deny(t.buf(admin, "pending", [t.own("f1")], suppress))) == 0
	count(t.deny(t.buf(admin, "complete", [t.own("f1")], suppress))) == 0
}

test_member_resolve_own_finding_allowed if {
	count(t.deny(t.buf(member, "complete", [t.own("f1")], t.status_note("RESOLVED", "fixed")))) == 0
}

# Workflow.Status is set but has no status: a member is refused (before any lookup); nothing
# touched, nothing refused; administrators are not judged.
test_suppress_null_workflow_status if {
	every phase in ["pending", "complete"] {
		t.msgs(t.buf(member, phase, [t.own("f1")], t.null_fact(["Workflow.Status"]))) == {t.cannot("Workflow.Status")}
	}
	t.msgs(t.v2(member, [t.claimed("f1", t.own_account)], t.null_fact(["Workflow.Status"]))) == {t.cannot("Workflow.Status")}
	count(t.deny(t.buf(member, "pending", [t.own("f1")], t.nothing))) == 0
	count(t.deny(t.buf(admin, "pending", [t.own("f1")], t.null_fact(["Workflow.Status"])))) == 0
}

test_suppress_absent_workflow_status if {
	doc := t.buf(member, "pending", [t.own("f1")], t.absent_fact(["Workflow.Status"], "workflow_status"))
	t.msgs(doc) == {t.cannot("Workflow.Status")}
}

# The fact alone is enough: SUPPRESSED is refused even if fields failed to list it.
test_suppress_fact_without_field if {
	upd := t.update({"workflow_status": "SUPPRESSED"})
	"member accounts may not suppress findings" in t.msgs(t.buf(member, "pending", [t.own("f1")], upd))
}

# --- ownership ---

test_member_other_account_denied if {
	d := t.deny(t.buf(member, "complete", [t.finding("f1", t.other_account, "LOW", 1, "NEW")], t.status("NOTIFIED")))
	d == {{"msg": own_account, "finding": t.ref("f1")}}
}

test_admin_other_account_allowed if {
	count(t.deny(t.buf(admin, "complete", [t.finding("f1", t.other_account, "LOW", 1, "NEW")], t.status("NOTIFIED")))) == 0
}

# A found finding without an account: a null among summary.accounts is a foreign account.
test_own_account_null_account_id if {
	f := t.finding("f1", null, "LOW", 1, "NEW")
	doc := t.put(t.buf(member, "complete", [f], t.note_only("x")), "summary", {"accounts": [null], "max_severity_rank": 1, "missing": 0})
	t.deny(doc) == {{"msg": own_account, "finding": t.ref("f1")}}
}

# Without summary.accounts (absent or null) the shortcut would stay silent: members are refused.
test_own_account_null_summary_accounts if {
	base := t.buf(member, "complete", [t.finding("f1", t.other_account, "LOW", 1, "NEW")], t.note_only("x"))
	absent := t.put(base, "summary", {"max_severity_rank": 1, "missing": 0})
	incomplete in t.msgs(absent)
	null_accounts := t.put(base, "summary", {"accounts": null, "max_severity_rank": 1, "missing": 0})
	incomplete in t.msgs(null_accounts)
	count(t.deny(t.put(absent, "principal", admin))) == 0
}

# Another account's finding is refused for ownership alone: no message tells the member its
# severity, nor that hubgate cannot read it (its own finding in the same request still does).
test_member_other_account_state_not_told if {
	other := t.finding("o", t.other_account, "CRITICAL", 4, "NEW")
	unranked := t.finding("u", t.other_account, null, null, "NEW")
	d := t.deny(t.buf(member, "complete", [other, unranked, t.own("f1")], t.severity("LOW", 1)))
	d == {
		{"msg": own_account, "finding": t.ref("o")},
		{"msg": own_account, "finding": t.ref("u")},
		{"msg": "member accounts may not lower a finding's severity (HIGH to LOW)", "finding": t.ref("f1")},
	}
}

# --- severity ---

test_member_lowering_severity_denied if {
	d := t.deny(t.buf(member, "complete", [t.own("f1")], t.severity("LOW", 1)))
	d == {{"msg": "member accounts may not lower a finding's severity (HIGH to LOW)", "finding": t.ref("f1")}}
}

test_member_lowering_only_judged_per_finding if {
	fs := [t.own("hi"), t.finding("lo", t.own_account, "LOW", 1, "NEW")]
	d := t.deny(t.buf(member, "complete", fs, t.severity("MEDIUM", 2)))
	{v.finding.Id | some v in d} == {"hi"}
}

test_member_raising_severity_allowed if {
	count(t.deny(t.buf(member, "complete", [t.own("f1")], t.severity("CRITICAL", 4)))) == 0
}

test_member_same_severity_allowed if {
	upd := t.update({"fields": ["Severity.Normalized"], "severity_label": "HIGH", "severity_rank": 3, "severity_normalized": 75})
	count(t.deny(t.buf(member, "complete", [t.own("f1")], upd))) == 0
}

test_member_lowering_through_normalized_denied if {
	upd := t.update({"fields": ["Severity.Normalized"], "severity_label": "LOW", "severity_rank": 1, "severity_normalized": 10})
	"member accounts may not lower a finding's severity (HIGH to LOW)" in t.msgs(t.buf(member, "complete", [t.own("f1")], upd))
}

test_note_only_update_is_not_a_severity_change if {
	count(t.deny(t.buf(member, "complete", [t.finding("f1", t.own_account, "CRITICAL", 4, "NEW")], t.note_only("x")))) == 0
}

test_admin_lowering_severity_allowed if {
	count(t.deny(t.buf(admin, "complete", [t.own("f1")], t.severity("INFORMATIONAL", 0)))) == 0
}

# A severity field is set but no requested rank: refused in both passes, for either spelling.
test_severity_null_severity_rank if {
	every field in ["Severity.Label", "Severity.Normalized"] {
		every phase in ["pending", "complete"] {
			t.msgs(t.buf(member, phase, [t.own("f1")], t.null_fact([field]))) == {t.cannot(field)}
		}
	}
	count(t.deny(t.buf(admin, "pending", [t.own("f1")], t.null_fact(["Severity.Label"])))) == 0
}

test_severity_absent_severity_rank if {
	doc := t.buf(member, "pending", [t.own("f1")], t.absent_fact(["Severity.Label"], "severity_rank"))
	t.msgs(doc) == {t.cannot("Severity.Label")}
}

# A found finding with no current rank: its severity may not be changed by a member, not even
# raised; untouched severity, nothing refused.
test_severity_null_current_rank if {
	f := t.finding("f1", t.own_account, null, null, "NEW")
	t.deny(t.buf(member, "complete", [f], t.severity("CRITICAL", 4))) == {{"msg": current_severity, "finding": t.ref("f1")}}
	count(t.deny(t.buf(member, "complete", [f], t.note_only("x")))) == 0
	count(t.deny(t.buf(admin, "complete", [f], t.severity("LOW", 1)))) == 0
}

test_severity_absent_current_rank if {
	f := object.remove(t.finding("f1", t.own_account, "HIGH", 3, "NEW"), ["severity_rank"])
	doc := t.put(t.buf(member, "complete", [f], t.severity("LOW", 1)), "summary", {"accounts": [t.own_account], "max_severity_rank": null, "missing": 0})
	t.deny(doc) == {{"msg": current_severity, "finding": t.ref("f1")}}
}

# summary.unranked as hubgate computes it lets the rule skip iterating; absent or null, the
# rule iterates and still names the unranked finding.
test_severity_unranked_summary if {
	f := t.finding("f1", t.own_account, null, null, "NEW")
	base := t.buf(member, "complete", [f, t.own("f2")], t.severity("CRITICAL", 4))
	base.summary.unranked == 1
	t.deny(base) == {{"msg": current_severity, "finding": t.ref("f1")}}
	for_absent := t.put(base, "summary", object.remove(base.summary, ["unranked"]))
	t.deny(for_absent) == {{"msg": current_severity, "finding": t.ref("f1")}}
	for_null := t.put(base, "summary", object.union(base.summary, {"unranked": null}))
	t.deny(for_null) == {{"msg": current_severity, "finding": t.ref("f1")}}
	count(t.deny(t.buf(member, "complete", [t.own("f2")], t.severity("CRITICAL", 4)))) == 0
}

# Without summary.max_severity_rank the rule iterates instead of skipping.
test_severity_absent_summary_max_rank if {
	base := t.buf(member, "complete", [t.own("f1")], t.severity("LOW", 1))
	doc := t.put(base, "summary", {"accounts": [t.own_account], "missing": 0})
	"member accounts may not lower a finding's severity (HIGH to LOW)" in t.msgs(doc)
}

# The rank alone is judged even if fields failed to list it.
test_severity_fact_without_field if {
	upd := t.update({"severity_label": "LOW", "severity_rank": 1})
	"member accounts may not lower a finding's severity (HIGH to LOW)" in t.msgs(t.buf(member, "complete", [t.own("f1")], upd))
}

# --- unknown findings ---

test_unknown_finding_denied_for_members_only if {
	t.deny(t.buf(member, "complete", [t.missing("nope")], t.note_only("x"))) == {{"msg": not_found, "finding": t.ref("nope")}}
	count(t.deny(t.buf(admin, "complete", [t.missing("nope")], suppress))) == 0
}

# A member naming another account's finding and one naming an unknown identifier get the same
# answer (a member's input gives the first as the second; either way the message is one).
test_member_other_account_and_unknown_answered_alike if {
	other := t.deny(t.buf(member, "complete", [t.finding("x", t.other_account, "LOW", 1, "RESOLVED")], t.status("NEW")))
	unknown := t.deny(t.buf(member, "complete", [t.missing("x")], t.status("NEW")))
	other == unknown
	other == {{"msg": own_account, "finding": t.ref("x")}}
}

test_not_found_absent_current if {
	f := object.remove(t.missing("nope"), ["current"])
	doc := t.put(t.buf(member, "complete", [f], t.note_only("x")), "summary", {"accounts": [], "max_severity_rank": null, "missing": 1})
	t.deny(doc) == {{"msg": not_found, "finding": t.ref("nope")}}
}

test_not_found_null_summary_missing if {
	base := t.buf(member, "complete", [t.missing("nope")], t.note_only("x"))
	incomplete in t.msgs(t.put(base, "summary", {"accounts": [], "max_severity_rank": null, "missing": null}))
	incomplete in t.msgs(t.put(base, "summary", {"accounts": [], "max_severity_rank": null}))
}

test_state_rules_wait_for_enrichment if {
	count(t.deny(t.buf(member, "pending", [t.finding("f1", t.other_account, "HIGH", 3, "NEW")], t.severity("LOW", 1)))) == 0
}

# --- guards ---

test_members_refused_without_enrichment if {
	t.msgs(t.buf(member, "disabled", [t.own("f1")], t.note_only("x"))) == {"finding ownership cannot be verified because enrichment is disabled"}
	count(t.deny(t.buf(admin, "disabled", [t.own("f1")], t.note_only("x")))) == 0
}

test_guard_enrichment_must_fit_operation if {
	"finding ownership cannot be verified: enrichment none does not fit BatchUpdateFindings" in t.msgs(t.buf(member, "none", [t.own("f1")], t.note_only("x")))
	t.msgs(t.buf(member, "bogus", [t.own("f1")], t.note_only("x"))) == {"finding ownership cannot be verified: enrichment bogus does not fit BatchUpdateFindings"}
	no_enrichment := object.remove(t.buf(member, "pending", [t.own("f1")], t.note_only("x")), ["enrichment"])
	count(t.deny(no_enrichment)) == 1
	v2_pending := object.union(t.v2(member, [t.claimed("f1", t.own_account)], t.note_only("x")), {"enrichment": "pending"})
	t.msgs(v2_pending) == {"finding ownership cannot be verified: enrichment pending does not fit BatchUpdateFindingsV2"}
	v2_absent := object.remove(t.v2(member, [t.claimed("f1", t.own_account)], t.note_only("x")), ["enrichment"])
	count(t.deny(v2_absent)) == 1
	count(t.deny(t.buf(admin, "bogus", [t.own("f1")], t.note_only("x")))) == 0
}

test_guard_unknown_operation if {
	doc := object.union(t.uf(member, t.nothing), {"operation": "BatchDeleteFindings"})
	t.msgs(doc) == {"member accounts may not call BatchDeleteFindings: the policy set does not judge it"}
	t.msgs(object.remove(doc, ["operation"])) == {"member accounts may not call null: the policy set does not judge it"}
	count(t.deny(t.put(doc, "principal", admin))) == 0
}

# Without input.update.fields no rule could fire: everyone is refused.
test_guard_null_fields if {
	msg := "the policy input has no update.fields: hubgate cannot judge this request"
	every principal in [member, admin] {
		t.msgs(t.buf(principal, "pending", [t.own("f1")], object.remove(t.nothing, ["fields"]))) == {msg}
		t.msgs(t.buf(principal, "pending", [t.own("f1")], t.update({"fields": null}))) == {msg}
	}
	count(t.deny(t.buf(member, "pending", [t.own("f1")], t.nothing))) == 0
}

# --- what needs a lookup ---

# Members' requests need finding state (ownership, severity); administrators' do not, so an
# administrator's note or status change costs no GetFindings call. Only `false` skips the
# lookup (undefined looks up), so the administrators' answer must be exactly false.
test_needs_state_for_members_only if {
	data.hubgate.needs_state with input as t.buf(member, "pending", [t.own("f1")], t.note_only("x"))
	data.hubgate.needs_state == false with input as t.buf(admin, "pending", [t.own("f1")], t.note_only("x"))
	data.hubgate.needs_state == false with input as t.buf(admin, "pending", [t.own("f1")], suppress)
}

# A principal of no known role is never answered `false`: its request looks the findings up.
test_needs_state_never_false_for_other_roles if {
	odd := object.union(member, {"role": "auditor"})
	not data.hubgate.needs_state == false with input as t.buf(odd, "pending", [t.own("f1")], t.note_only("x"))
}
