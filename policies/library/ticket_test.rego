# Tests of library/ticket.rego (closing a finding needs a ticket reference in Note.Text).
package hubgate_ticket_test

import data.hubgate_inputs as t

member := t.member

admin := t.admin

on := {"ticket": "enforce"}

default_msg := "closing a finding needs a ticket reference in Note.Text (pattern: \\b[A-Z][A-Z0-9]+-[0-9]+\\b)"

pending(principal, upd) := t.buf(principal, "pending", [t.own("f1")], upd)

complete(principal, upd) := t.buf(principal, "complete", [t.own("f1")], upd)

# The rule's messages when enforced.
enforced(doc) := {v.msg | some v in t.decide(doc, on).deny}

# --- modes ---

violation := {"msg": default_msg, "finding": null}

test_ticket_enforce_denies if {
	r := t.decide(pending(admin, t.status("RESOLVED")), on)
	r.deny == {violation}
	count(r.warn) == 0
}

test_ticket_warn_warns if {
	r := t.decide(pending(admin, t.status("RESOLVED")), {"ticket": "warn"})
	count(r.deny) == 0
	r.warn == {violation}
}

test_ticket_off_is_silent if {
	r := t.decide(pending(admin, t.status("RESOLVED")), {"ticket": "off"})
	count(r.deny) == 0
	count(r.warn) == 0
}

# Absent (the switch, the library object, or all settings): warn.
test_ticket_absent_setting_warns if {
	r := t.decide(pending(admin, t.status("RESOLVED")), {})
	count(r.deny) == 0
	r.warn == {violation}
	d := t.deny(pending(admin, t.status("RESOLVED"))) with data.hubgate_settings as {}
	w := t.warn(pending(admin, t.status("RESOLVED"))) with data.hubgate_settings as {}
	count(d) == 0
	w == {violation}
}

# A value that is not enforce, warn or off counts as enforce: a typo never turns a rule off.
test_ticket_unknown_mode_enforces if {
	r := t.decide(pending(admin, t.status("RESOLVED")), {"ticket": "enforced"})
	r.deny == {violation}
}

# The shipped data.json enforces nothing: an administrator's suppression with no note succeeds
# (and is recorded as a warning).
test_shipped_settings_do_not_enforce_the_ticket if {
	doc := complete(admin, t.status("SUPPRESSED"))
	count(t.deny(doc)) == 0
	t.warn_msgs(doc) == {default_msg}
}

# --- enforced: denied ---

test_member_resolve_without_note_denied_in_first_pass if {
	enforced(pending(member, t.status("RESOLVED"))) == {default_msg}
}

test_admin_suppress_without_note_denied if {
	enforced(pending(admin, t.status("SUPPRESSED"))) == {default_msg}
	enforced(complete(admin, t.status("SUPPRESSED"))) == {default_msg}
}

test_admin_resolve_with_note_but_no_ticket_denied if {
	enforced(complete(admin, t.status_note("RESOLVED", "fixed, see the wiki"))) == {default_msg}
}

test_near_misses_are_not_tickets if {
	every text in ["sec-123 lower case", "SEC- no number", "SEC123 no dash", "S-1 one letter", "XSEC-12X glued"] {
		enforced(pending(admin, t.status_note("RESOLVED", text))) == {default_msg}
	}
}

# A member suppressing gets both reasons: members may not suppress, and no ticket.
test_member_suppress_without_ticket_gets_both_messages if {
	enforced(pending(member, t.status_note("SUPPRESSED", "noise"))) == {"member accounts may not suppress findings", default_msg}
}

# V2: StatusId 4 RESOLVED, the ticket in Comment (note.updated_by null).
test_v2_resolve_needs_a_ticket if {
	own := [t.claimed("f1", t.own_account)]
	enforced(t.v2(member, own, t.status("RESOLVED"))) == {default_msg}
	comment := t.update({"fields": ["Note.Text", "Workflow.Status"], "workflow_status": "RESOLVED", "note": {"text": "SEC-3 fixed", "updated_by": null}})
	enforced(t.v2(member, own, comment)) == set()
}

# V2's other closing statuses, StatusId 5 ARCHIVED and 6 DELETED (the statuses the reopen rule
# counts as closed): an administrator closes with them too, and needs a ticket as for RESOLVED.
test_v2_archive_and_delete_need_a_ticket if {
	other := [t.claimed("f1", t.other_account)]
	every s in ["ARCHIVED", "DELETED"] {
		enforced(t.v2(admin, other, t.status(s))) == {default_msg}
		comment := t.update({"fields": ["Note.Text", "Workflow.Status"], "workflow_status": s, "note": {"text": "SEC-4 retired", "updated_by": null}})
		enforced(t.v2(admin, other, comment)) == set()
	}
}

# UpdateFindings' RecordState ARCHIVED takes every finding its filter matches out of the
# default views: a ticket in Note.Text, under the entry "ARCHIVED"; ACTIVE needs none.
test_update_findings_archive_needs_a_ticket if {
	archive := t.update({"fields": ["RecordState"], "record_state": "ARCHIVED"})
	enforced(t.uf(admin, archive)) == {default_msg}
	noted := t.update({"fields": ["Note.Text", "Note.UpdatedBy", "RecordState"], "record_state": "ARCHIVED", "note": t.note("SEC-9 bulk cleanup")})
	enforced(t.uf(admin, noted)) == set()
	active := t.update({"fields": ["RecordState"], "record_state": "ACTIVE"})
	enforced(t.uf(admin, active)) == set()
	only_statuses := enforced(t.uf(admin, archive)) with data.hubgate_settings.ticket_required_for as ["RESOLVED", "SUPPRESSED"]
	only_statuses == set()
}

# --- null facts (enforced) ---

# Workflow.Status set without a status: cannot tell whether it closes; refused for everyone.
test_ticket_null_workflow_status if {
	enforced(pending(admin, t.null_fact(["Workflow.Status"]))) == {t.cannot("Workflow.Status")}
	enforced(pending(admin, t.absent_fact(["Workflow.Status"], "workflow_status"))) == {t.cannot("Workflow.Status")}
	enforced(pending(admin, t.nothing)) == set()
}

# RecordState set without a record state: cannot tell whether it archives; refused for everyone.
test_ticket_null_record_state if {
	enforced(t.uf(admin, t.null_fact(["RecordState"]))) == {t.cannot("RecordState")}
	enforced(t.uf(admin, t.absent_fact(["RecordState"], "record_state"))) == {t.cannot("RecordState")}
}

# Note.Text set without a note, or a note without text: no ticket.
test_ticket_null_note if {
	no_note := t.update({"fields": ["Note.Text", "Workflow.Status"], "workflow_status": "RESOLVED"})
	enforced(pending(admin, no_note)) == {default_msg}
	null_text := t.update({"fields": ["Note.Text", "Workflow.Status"], "workflow_status": "RESOLVED", "note": {"text": null, "updated_by": "a"}})
	enforced(pending(admin, null_text)) == {default_msg}
	absent_note := t.absent_fact(["Workflow.Status"], "note")
	enforced(pending(admin, object.union(absent_note, {"workflow_status": "RESOLVED"}))) == {default_msg}
}

# --- enforced: allowed ---

test_resolve_with_ticket_allowed if {
	enforced(pending(member, t.status_note("RESOLVED", "SEC-123 fixed"))) == set()
	enforced(complete(member, t.status_note("RESOLVED", "SEC-123 fixed"))) == set()
}

test_admin_suppress_with_ticket_allowed if {
	enforced(complete(admin, t.status_note("SUPPRESSED", "accepted risk, see RISK-42."))) == set()
}

test_ticket_anywhere_in_the_note if {
	every text in ["fixed in OPS-7", "(INC2-0042) rotated keys", "see\nSEC-1"] {
		enforced(pending(admin, t.status_note("RESOLVED", text))) == set()
	}
}

test_other_statuses_and_no_status_need_no_ticket if {
	enforced(pending(member, t.status("NEW"))) == set()
	enforced(pending(member, t.status("NOTIFIED"))) == set()
	enforced(pending(member, t.note_only("just a comment"))) == set()
}

# --- settings (policies/data.json) ---

test_shipped_pattern_is_valid_and_matches_typical_tickets if {
	regex.match(data.hubgate_settings.ticket_pattern, "SEC-123")
	data.hubgate_settings.ticket_required_for == ["RESOLVED", "SUPPRESSED", "ARCHIVED", "DELETED"]
}

test_custom_pattern_is_used_and_shown if {
	d := enforced(pending(admin, t.status_note("RESOLVED", "SEC-1"))) with data.hubgate_settings.ticket_pattern as `^JIRA-[0-9]+`
	d == {"closing a finding needs a ticket reference in Note.Text (pattern: ^JIRA-[0-9]+)"}
	ok := enforced(pending(admin, t.status_note("RESOLVED", "JIRA-9 done"))) with data.hubgate_settings.ticket_pattern as `^JIRA-[0-9]+`
	ok == set()
}

test_required_for_only_suppressed if {
	resolve := enforced(pending(admin, t.status("RESOLVED"))) with data.hubgate_settings.ticket_required_for as ["SUPPRESSED"]
	resolve == set()
	suppress := enforced(pending(admin, t.status("SUPPRESSED"))) with data.hubgate_settings.ticket_required_for as ["SUPPRESSED"]
	suppress == {default_msg}
}

test_empty_required_for_disables_the_rule if {
	d := enforced(pending(admin, t.status("SUPPRESSED"))) with data.hubgate_settings.ticket_required_for as []
	d == set()
}

# Without any data.json the defaults apply: the same pattern, the four closing statuses, warn.
test_defaults_without_settings if {
	data.hubgate.ticket_pattern == `\b[A-Z][A-Z0-9]+-[0-9]+\b` with data.hubgate_settings as {}
	data.hubgate.ticket_required_for == ["RESOLVED", "SUPPRESSED", "ARCHIVED", "DELETED"] with data.hubgate_settings as {}
	w := t.warn_msgs(pending(admin, t.status("RESOLVED"))) with data.hubgate_settings as {}
	w == {default_msg}
	ok := t.warn(pending(admin, t.status_note("RESOLVED", "SEC-5"))) with data.hubgate_settings as {}
	count(ok) == 0
}

# --- matrix ---

# BatchImportFindings: a member's import may not set Workflow.* (imports.rego), whatever the mode.
test_matrix_ticket_import_refused_for_members if {
	fields := array.concat(t.provider_fields, ["Workflow.Status"])
	every mode in ["enforce", "warn", "off"] {
		r := t.decide(t.bif(member, [t.claimed("f1", t.own_account)], fields), {"ticket": mode}) with data.hubgate_settings.member_imports as "own-findings"
		{v.msg | some v in r.deny} == {"member accounts may not set Workflow.Status through BatchImportFindings: it is the customer's, to change with BatchUpdateFindings"}
	}
}

# BatchImportFindings: a re-import with RecordState ARCHIVED closes the finding as UpdateFindings'
# ARCHIVED does; the ticket must be in that finding's own Note.Text.
import_of(principal, findings) := object.union(
	t.bif(principal, [t.claimed(f.Id, f.AwsAccountId) | some f in findings], ["AwsAccountId", "Id", "Note.Text", "ProductArn", "RecordState"]),
	{"request": {"body": {"Findings": findings}}},
)

imported(id, record_state, note) := {"Id": id, "ProductArn": t.arn, "AwsAccountId": t.other_account, "RecordState": record_state, "Note": {"Text": note, "UpdatedBy": "soc", "UpdatedAt": "t"}}

test_import_archive_needs_a_ticket_in_its_own_note if {
	doc := import_of(admin, [imported("f1", "ARCHIVED", "SEC-1 retired"), imported("f2", "ARCHIVED", "retired")])
	r := t.decide(doc, on)
	r.deny == {{"msg": default_msg, "finding": t.ref("f2")}}
	w := t.decide(doc, {"ticket": "warn"})
	w.warn == {{"msg": default_msg, "finding": t.ref("f2")}}
}

test_import_kept_active_or_ticketed_needs_no_ticket if {
	every findings in [
		[imported("f1", "ACTIVE", "no ticket")],
		[imported("f1", "ARCHIVED", "closed in SEC-9")],
	] {
		count(t.decide(import_of(admin, findings), on).deny) == 0
	}
	r := t.decide(import_of(admin, [imported("f1", "ARCHIVED", "x")]), on) with data.hubgate_settings.ticket_required_for as ["SUPPRESSED"]
	count(r.deny) == 0
}
