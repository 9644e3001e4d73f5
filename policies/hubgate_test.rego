# Tests of the shipped rules; run them with `hubgate test policies`.
package hubgate_test

import data.hubgate

arn := "arn:aws:securityhub:us-east-1::product/aws/securityhub"

member := {"id": "m", "account_id": "222222222222", "role": "member", "attributes": {}}

admin := {"id": "a", "account_id": "111111111111", "role": "administrator", "attributes": {}}

finding(id, account, label, rank) := {
	"Id": id, "ProductArn": arn, "account_id": account,
	"severity_label": label, "severity_rank": rank, "workflow_status": "NEW",
	"current": {"AwsAccountId": account, "Severity": {"Label": label}, "Workflow": {"Status": "NEW"}},
}

missing(id) := {
	"Id": id, "ProductArn": arn, "account_id": null, "severity_label": null,
	"severity_rank": null, "workflow_status": null, "current": null,
}

no_update := {"fields": [], "workflow_status": null, "severity_label": null, "severity_rank": null}

# The input hubgate builds, including the summary it computes over the findings.
doc(principal, phase, findings, update) := {
	"version": 1, "operation": "BatchUpdateFindings", "enrichment": phase,
	"principal": principal, "request": {}, "findings": findings,
	"update": object.union(no_update, update),
	"summary": summary(phase, findings),
}

summary(phase, findings) := {
	"accounts": {f.account_id | some f in findings; f.current != null},
	"max_severity_rank": max({f.severity_rank | some f in findings; f.severity_rank != null} | {-1}),
	"missing": count([f | some f in findings; f.current == null]),
} if phase == "complete"

summary(phase, _) := {} if phase != "complete"

suppress := {"fields": ["Workflow.Status"], "workflow_status": "SUPPRESSED"}

msgs(input_doc) := {v.msg | some v in hubgate.deny with input as input_doc}

test_member_suppress_denied_before_enrichment if {
	"member accounts may not suppress findings" in msgs(doc(member, "pending", [missing("f1")], suppress))
}

# Resolving and suppressing also need a ticket reference in the note (ticket.rego, for everyone);
# these tests give one so that they test only the rules of this file.
ticket_note := {"text": "SEC-1 done", "updated_by": "t"}

test_admin_suppress_allowed if {
	update := object.union(suppress, {"fields": ["Workflow.Status", "Note.Text", "Note.UpdatedBy"], "note": ticket_note})
	count(msgs(doc(admin, "complete", [finding("f1", "222222222222", "HIGH", 3)], update))) == 0
}

test_member_resolve_own_finding_allowed if {
	update := {"fields": ["Workflow.Status", "Note.Text", "Note.UpdatedBy"], "workflow_status": "RESOLVED", "note": ticket_note}
	count(msgs(doc(member, "complete", [finding("f1", "222222222222", "HIGH", 3)], update))) == 0
}

test_member_other_account_denied if {
	update := {"fields": ["Workflow.Status"], "workflow_status": "NOTIFIED"}
	d := hubgate.deny with input as doc(member, "complete", [finding("f1", "333333333333", "LOW", 1)], update)
	some v in d
	v.msg == "member accounts may only update findings of their own account"
	v.finding == {"Id": "f1", "ProductArn": arn}
}

test_admin_other_account_allowed if {
	update := {"fields": ["Workflow.Status"], "workflow_status": "NOTIFIED"}
	count(msgs(doc(admin, "complete", [finding("f1", "333333333333", "LOW", 1)], update))) == 0
}

test_member_lowering_severity_denied if {
	update := {"fields": ["Severity.Label"], "severity_label": "LOW", "severity_rank": 1}
	"member accounts may not lower a finding's severity (HIGH to LOW)" in msgs(doc(member, "complete", [finding("f1", "222222222222", "HIGH", 3)], update))
}

test_member_lowering_only_judged_per_finding if {
	update := {"fields": ["Severity.Label"], "severity_label": "MEDIUM", "severity_rank": 2}
	d := hubgate.deny with input as doc(member, "complete", [finding("hi", "222222222222", "HIGH", 3), finding("lo", "222222222222", "LOW", 1)], update)
	count(d) == 1
	some v in d
	v.finding.Id == "hi"
}

test_member_raising_severity_allowed if {
	update := {"fields": ["Severity.Label"], "severity_label": "CRITICAL", "severity_rank": 4}
	count(msgs(doc(member, "complete", [finding("f1", "222222222222", "HIGH", 3)], update))) == 0
}

test_member_same_severity_allowed if {
	update := {"fields": ["Severity.Normalized"], "severity_label": "HIGH", "severity_rank": 3}
	count(msgs(doc(member, "complete", [finding("f1", "222222222222", "HIGH", 3)], update))) == 0
}

test_note_only_update_is_not_a_severity_change if {
	update := {"fields": ["Note.Text", "Note.UpdatedBy"]}
	count(msgs(doc(member, "complete", [finding("f1", "222222222222", "CRITICAL", 4)], update))) == 0
}

test_admin_lowering_severity_allowed if {
	update := {"fields": ["Severity.Label"], "severity_label": "INFORMATIONAL", "severity_rank": 0}
	count(msgs(doc(admin, "complete", [finding("f1", "222222222222", "HIGH", 3)], update))) == 0
}

test_unknown_finding_denied_for_everyone if {
	"finding not found in Security Hub" in msgs(doc(admin, "complete", [missing("nope")], suppress))
	"finding not found in Security Hub" in msgs(doc(member, "complete", [missing("nope")], no_update))
}

test_state_rules_wait_for_enrichment if {
	update := {"fields": ["Severity.Label"], "severity_label": "LOW", "severity_rank": 1}
	count(msgs(doc(member, "pending", [missing("f1")], update))) == 0
}

test_members_refused_without_enrichment if {
	"finding ownership cannot be verified because enrichment is disabled" in msgs(doc(member, "disabled", [missing("f1")], no_update))
	count(msgs(doc(admin, "disabled", [missing("f1")], no_update))) == 0
}
