# Tests of library/reopen.rego (members may not reopen a RESOLVED finding).
package hubgate_reopen_test

import data.hubgate_inputs as t

member := t.member

admin := t.admin

on := {"reopen": "enforce"}

reopen := "member accounts may not reopen a RESOLVED finding"

unknown_current := "hubgate cannot see this finding's current Workflow.Status, so member accounts may not reopen it"

# Another account's finding and one not found: one message (hubgate.rego).
not_members := "member accounts may only update findings of their own account: this account has no such finding"

complete(principal, findings, upd) := t.buf(principal, "complete", findings, upd)

enforced(d) := t.decide(d, on).deny

enforced_msgs(d) := {v.msg | some v in enforced(d)}

v2_msg(s) := sprintf("member accounts may not reopen findings through BatchUpdateFindingsV2 (Workflow.Status %s): hubgate cannot see whether the finding is RESOLVED", [s])

# --- modes ---

resolved := [t.own_in("r", "RESOLVED")]

violation := {"msg": reopen, "finding": t.ref("r")}

test_reopen_enforce_denies if {
	r := t.decide(complete(member, resolved, t.status("NEW")), on)
	r.deny == {violation}
	count(r.warn) == 0
}

# Another account's RESOLVED (or unreadable) status is not told: the ownership rule alone
# refuses its finding.
test_reopen_other_account_status_not_told if {
	fs := [t.finding("o", t.other_account, "HIGH", 3, "RESOLVED"), t.finding("u", t.other_account, "HIGH", 3, null)]
	msgs := enforced_msgs(complete(member, fs, t.status("NEW")))
	not reopen in msgs
	not unknown_current in msgs
	not_members in msgs
}

test_reopen_warn_warns if {
	r := t.decide(complete(member, resolved, t.status("NEW")), {"reopen": "warn"})
	count(r.deny) == 0
	r.warn == {violation}
}

test_reopen_off_is_silent if {
	r := t.decide(complete(member, resolved, t.status("NEW")), {"reopen": "off"})
	count(r.deny) == 0
	count(r.warn) == 0
}

test_reopen_absent_setting_warns if {
	r := t.decide(complete(member, resolved, t.status("NEW")), {})
	count(r.deny) == 0
	r.warn == {violation}
	count(t.deny(complete(member, resolved, t.status("NEW")))) == 0
}

# --- enforced: BatchUpdateFindings ---

test_member_reopen_denied_per_finding if {
	every s in ["NEW", "NOTIFIED"] {
		enforced(complete(member, resolved, t.status(s))) == {violation}
	}
}

# In a mixed batch only the RESOLVED findings are named.
test_member_reopen_names_only_resolved_findings if {
	fs := [t.own_in("new", "NEW"), t.own_in("r1", "RESOLVED"), t.own_in("notified", "NOTIFIED"), t.own_in("r2", "RESOLVED")]
	d := enforced(complete(member, fs, t.status("NOTIFIED")))
	{v.finding.Id | some v in d} == {"r1", "r2"}
	{v.msg | some v in d} == {reopen}
}

# State is unknown in the first pass: the per-finding rule waits for the complete pass.
test_reopen_waits_for_enrichment if {
	count(enforced(t.buf(member, "pending", resolved, t.status("NEW")))) == 0
}

test_member_notify_open_findings_allowed if {
	fs := [t.own_in("a", "NEW"), t.own_in("b", "NOTIFIED")]
	count(enforced(complete(member, fs, t.status("NOTIFIED")))) == 0
	count(enforced(complete(member, fs, t.status("NEW")))) == 0
}

# Other changes to a RESOLVED finding are not a reopening.
test_member_other_updates_of_resolved_finding_allowed if {
	count(enforced(complete(member, resolved, t.note_only("still fixed")))) == 0
	count(enforced(complete(member, resolved, t.status_note("RESOLVED", "SEC-9 verified")))) == 0
}

# Only RESOLVED counts: a SUPPRESSED finding is hubgate.rego's and the administrators' concern.
test_member_unsuppress_not_judged_here if {
	count(enforced(complete(member, [t.own_in("s", "SUPPRESSED")], t.status("NEW")))) == 0
}

test_admin_reopen_allowed if {
	count(enforced(complete(admin, resolved, t.status("NEW")))) == 0
}

# An unknown finding: only the "not one of the member's findings" rule names it.
test_unknown_finding_is_not_a_reopening if {
	enforced_msgs(complete(member, [t.missing("gone")], t.status("NEW"))) == {not_members}
}

# --- null facts (enforced) ---

# Workflow.Status set without a status: refused for members in the first pass.
test_reopen_null_workflow_status if {
	enforced_msgs(t.buf(member, "pending", resolved, t.null_fact(["Workflow.Status"]))) == {t.cannot("Workflow.Status")}
	enforced_msgs(t.buf(member, "pending", resolved, t.absent_fact(["Workflow.Status"], "workflow_status"))) == {t.cannot("Workflow.Status")}
	w := t.decide(t.buf(member, "pending", resolved, t.null_fact(["Workflow.Status"])), {})
	{v.msg | some v in w.warn} == {t.cannot("Workflow.Status")}
	count(enforced(t.buf(admin, "pending", resolved, t.null_fact(["Workflow.Status"])))) == 0
}

# A found finding whose current status is null or absent: it may be RESOLVED; refused.
test_reopen_null_current_workflow_status if {
	null_status := t.own_in("x", null)
	enforced(complete(member, [null_status], t.status("NEW"))) == {{"msg": unknown_current, "finding": t.ref("x")}}
	absent_status := object.remove(t.own_in("y", "NEW"), ["workflow_status"])
	enforced(complete(member, [absent_status], t.status("NOTIFIED"))) == {{"msg": unknown_current, "finding": t.ref("y")}}
	count(enforced(complete(member, [null_status], t.status_note("RESOLVED", "SEC-1")))) == 0
}

# --- matrix ---

# BatchUpdateFindingsV2 (StatusId 1 NEW, 2 NOTIFIED, and 0 UNKNOWN, 99 OTHER): no current status,
# so an open status is refused for members, for the whole request.
test_matrix_reopen_v2_refused_for_members if {
	own := [t.claimed("f1", t.own_account)]
	every s in ["NEW", "NOTIFIED"] {
		r := t.decide(t.v2(member, own, t.status(s)), on)
		r.deny == {{"msg": v2_msg(s), "finding": null}}
		w := t.decide(t.v2(member, own, t.status(s)), {})
		count(w.deny) == 0
		w.warn == {{"msg": v2_msg(s), "finding": null}}
		o := t.decide(t.v2(member, own, t.status(s)), {"reopen": "off"})
		count(o.deny) + count(o.warn) == 0
	}
	every s in ["UNKNOWN", "OTHER"] {
		v2_msg(s) in enforced_msgs(t.v2(member, own, t.status(s)))
	}
	count(enforced(t.v2(member, own, t.status("RESOLVED")))) == 0
	count(enforced(t.v2(admin, own, t.status("NEW")))) == 0
}

# BatchUpdateFindings without enrichment: no status is ever known; refused (the core refuses too).
test_matrix_reopen_disabled_refused_for_members if {
	d := enforced_msgs(t.buf(member, "disabled", resolved, t.status("NEW")))
	"member accounts may not reopen findings through BatchUpdateFindings (Workflow.Status NEW): hubgate cannot see whether the finding is RESOLVED" in d
}

# BatchImportFindings: a member's import may not set Workflow.* (imports.rego), whatever the mode.
test_matrix_reopen_import_refused_for_members if {
	fields := array.concat(t.provider_fields, ["Workflow.Status"])
	every mode in ["enforce", "warn", "off"] {
		r := t.decide(t.bif(member, [t.claimed("f1", t.own_account)], fields), {"reopen": mode}) with data.hubgate_settings.member_imports as "own-findings"
		{v.msg | some v in r.deny} == {"member accounts may not set Workflow.Status through BatchImportFindings: it is the customer's, to change with BatchUpdateFindings"}
	}
}

# BatchImportFindings: a re-import that reactivates a finding (RecordState ACTIVE, Compliance.Status
# away from PASSED) makes Security Hub reopen it; hubgate cannot see its current status.
reactivating_import(principal, findings) := object.union(
	t.bif(principal, [t.claimed(f.Id, t.own_account) | some f in findings], ["Compliance", "Id", "ProductArn", "RecordState"]),
	{"request": {"body": {"Findings": findings}}},
)

reactivate_msg := "member accounts may not reactivate findings through BatchImportFindings (RecordState ACTIVE, or Compliance.Status WARNING, FAILED or NOT_AVAILABLE): Security Hub reopens a RESOLVED finding that is reactivated, and hubgate cannot see whether it is RESOLVED"

test_member_import_that_reactivates_is_a_reopening if {
	findings := [
		{"Id": "f1", "ProductArn": t.arn, "RecordState": "ACTIVE"},
		{"Id": "f2", "ProductArn": t.arn, "RecordState": "ARCHIVED", "Compliance": {"Status": "FAILED"}},
		{"Id": "f3", "ProductArn": t.arn, "RecordState": "ARCHIVED", "Compliance": {"Status": "PASSED"}},
		{"Id": "f4", "ProductArn": t.arn, "Compliance": {}},
	]
	r := t.decide(reactivating_import(member, findings), {"reopen": "enforce"}) with data.hubgate_settings.member_imports as "own-findings"
	r.deny == {{"msg": reactivate_msg, "finding": t.ref("f1")}, {"msg": reactivate_msg, "finding": t.ref("f2")}}
	a := t.decide(reactivating_import(admin, findings), {"reopen": "enforce"})
	count(a.deny) == 0
}
