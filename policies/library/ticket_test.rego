# Tests of ticket.rego (closing a finding needs a ticket reference in Note.Text).
package hubgate_ticket_test

import data.hubgate

arn := "arn:aws:securityhub:us-east-1::product/aws/securityhub"

member := {"id": "m", "account_id": "222222222222", "role": "member", "attributes": {}}

admin := {"id": "a", "account_id": "111111111111", "role": "administrator", "attributes": {}}

# input.update as hubgate builds it: every key present, null when the body does not set it.
update(status, note) := {
	"fields": [], "workflow_status": status,
	"severity_label": null, "severity_rank": null, "severity_normalized": null,
	"verification_state": null, "confidence": null, "criticality": null,
	"note": note, "types": null, "user_defined_fields": null, "related_findings": null,
}

note(text) := {"text": text, "updated_by": "me"}

own := {
	"Id": "f1", "ProductArn": arn, "account_id": "222222222222",
	"severity_label": "HIGH", "severity_rank": 3, "workflow_status": "NEW",
	"current": {"AwsAccountId": "222222222222", "Workflow": {"Status": "NEW"}},
}

# First pass: identifiers only. Complete pass: the caller's own NEW finding, with its summary.
pending(principal, upd) := {
	"version": 1, "operation": "BatchUpdateFindings", "enrichment": "pending",
	"principal": principal, "request": {}, "summary": {},
	"findings": [{"Id": "f1", "ProductArn": arn}], "update": upd,
}

complete(principal, upd) := {
	"version": 1, "operation": "BatchUpdateFindings", "enrichment": "complete",
	"principal": principal, "request": {},
	"summary": {"accounts": ["222222222222"], "max_severity_rank": 3, "missing": 0},
	"findings": [own], "update": upd,
}

msgs(doc) := {v.msg | some v in hubgate.deny with input as doc}

default_msg := "resolving or suppressing a finding needs a ticket reference in Note.Text (pattern: \\b[A-Z][A-Z0-9]+-[0-9]+\\b)"

# --- denied ---

test_member_resolve_without_note_denied_in_first_pass if {
	msgs(pending(member, update("RESOLVED", null))) == {default_msg}
}

test_admin_suppress_without_note_denied if {
	msgs(pending(admin, update("SUPPRESSED", null))) == {default_msg}
	msgs(complete(admin, update("SUPPRESSED", null))) == {default_msg}
}

test_admin_resolve_with_note_but_no_ticket_denied if {
	msgs(complete(admin, update("RESOLVED", note("fixed, see the wiki")))) == {default_msg}
}

test_near_misses_are_not_tickets if {
	every text in ["sec-123 lower case", "SEC- no number", "SEC123 no dash", "S-1 one letter", "XSEC-12X glued"] {
		msgs(pending(admin, update("RESOLVED", note(text)))) == {default_msg}
	}
}

# A member suppressing gets both reasons: members may not suppress, and no ticket.
test_member_suppress_without_ticket_gets_both_messages if {
	m := msgs(pending(member, update("SUPPRESSED", note("noise"))))
	m == {"member accounts may not suppress findings", default_msg}
}

# --- allowed ---

test_resolve_with_ticket_allowed if {
	msgs(pending(member, update("RESOLVED", note("SEC-123 fixed")))) == set()
	msgs(complete(member, update("RESOLVED", note("SEC-123 fixed")))) == set()
}

test_admin_suppress_with_ticket_allowed if {
	msgs(complete(admin, update("SUPPRESSED", note("accepted risk, see RISK-42.")))) == set()
}

test_ticket_anywhere_in_the_note if {
	every text in ["fixed in OPS-7", "(INC2-0042) rotated keys", "see\nSEC-1"] {
		msgs(pending(admin, update("RESOLVED", note(text)))) == set()
	}
}

test_other_statuses_and_no_status_need_no_ticket if {
	msgs(pending(member, update("NEW", null))) == set()
	msgs(pending(member, update("NOTIFIED", null))) == set()
	msgs(pending(member, update(null, note("just a comment")))) == set()
}

# --- settings (policies/data.json) ---

test_shipped_pattern_is_valid_and_matches_typical_tickets if {
	regex.match(data.hubgate_settings.ticket_pattern, "SEC-123")
	data.hubgate_settings.ticket_required_for == ["RESOLVED", "SUPPRESSED"]
}

test_custom_pattern_is_used_and_shown if {
	d := hubgate.deny with input as pending(admin, update("RESOLVED", note("SEC-1"))) with data.hubgate_settings.ticket_pattern as `^JIRA-[0-9]+`
	{v.msg | some v in d} == {"resolving or suppressing a finding needs a ticket reference in Note.Text (pattern: ^JIRA-[0-9]+)"}
	ok := hubgate.deny with input as pending(admin, update("RESOLVED", note("JIRA-9 done"))) with data.hubgate_settings.ticket_pattern as `^JIRA-[0-9]+`
	count(ok) == 0
}

test_required_for_only_suppressed if {
	resolve := hubgate.deny with input as pending(admin, update("RESOLVED", null)) with data.hubgate_settings.ticket_required_for as ["SUPPRESSED"]
	count(resolve) == 0
	suppress := hubgate.deny with input as pending(admin, update("SUPPRESSED", null)) with data.hubgate_settings.ticket_required_for as ["SUPPRESSED"]
	{v.msg | some v in suppress} == {default_msg}
}

test_empty_required_for_disables_the_rule if {
	d := hubgate.deny with input as pending(admin, update("SUPPRESSED", null)) with data.hubgate_settings.ticket_required_for as []
	count(d) == 0
}

# Without any data.json the defaults apply: the same pattern, RESOLVED and SUPPRESSED.
test_defaults_without_settings if {
	hubgate.ticket_pattern == `\b[A-Z][A-Z0-9]+-[0-9]+\b` with data.hubgate_settings as {}
	hubgate.ticket_required_for == ["RESOLVED", "SUPPRESSED"] with data.hubgate_settings as {}
	d := hubgate.deny with input as pending(admin, update("RESOLVED", null)) with data.hubgate_settings as {}
	{v.msg | some v in d} == {default_msg}
	ok := hubgate.deny with input as pending(admin, update("RESOLVED", note("SEC-5"))) with data.hubgate_settings as {}
	count(ok) == 0
}
