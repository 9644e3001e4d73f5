# Tests of reopen.rego (members may not reopen a RESOLVED finding).
package hubgate_reopen_test

import data.hubgate

arn := "arn:aws:securityhub:us-east-1::product/aws/securityhub"

member := {"id": "m", "account_id": "222222222222", "role": "member", "attributes": {}}

admin := {"id": "a", "account_id": "111111111111", "role": "administrator", "attributes": {}}

# input.update as hubgate builds it: every key present, null when the body does not set it.
update(status) := {
	"fields": ["Workflow.Status"], "workflow_status": status,
	"severity_label": null, "severity_rank": null, "severity_normalized": null,
	"verification_state": null, "confidence": null, "criticality": null,
	"note": null, "types": null, "user_defined_fields": null, "related_findings": null,
}

# One of the caller's findings in the given workflow status (complete pass).
finding(id, status) := {
	"Id": id, "ProductArn": arn, "account_id": "222222222222",
	"severity_label": "HIGH", "severity_rank": 3, "workflow_status": status,
	"current": {"AwsAccountId": "222222222222", "Workflow": {"Status": status}},
}

missing(id) := {
	"Id": id, "ProductArn": arn, "account_id": null, "severity_label": null,
	"severity_rank": null, "workflow_status": null, "current": null,
}

complete(principal, findings, upd) := {
	"version": 1, "operation": "BatchUpdateFindings", "enrichment": "complete",
	"principal": principal, "request": {}, "findings": findings, "update": upd,
	"summary": {
		"accounts": ["222222222222"], "max_severity_rank": 3,
		"missing": count([f | some f in findings; f.current == null]),
	},
}

stripped(findings) := [{"Id": f.Id, "ProductArn": f.ProductArn} | some f in findings]

# The same request before enrichment: identifiers only, no state keys.
pending(principal, findings, upd) := {
	"version": 1, "operation": "BatchUpdateFindings", "enrichment": "pending",
	"principal": principal, "request": {}, "findings": stripped(findings), "update": upd,
	"summary": {},
}

deny(d) := result if {
	result := hubgate.deny with input as d
}

reopen := "member accounts may not reopen a RESOLVED finding"

test_member_reopen_denied_per_finding if {
	every status in ["NEW", "NOTIFIED"] {
		deny(complete(member, [finding("r", "RESOLVED")], update(status))) == {{"msg": reopen, "finding": {"Id": "r", "ProductArn": arn}}}
	}
}

# In a mixed batch only the RESOLVED findings are named.
test_member_reopen_names_only_resolved_findings if {
	fs := [finding("new", "NEW"), finding("r1", "RESOLVED"), finding("notified", "NOTIFIED"), finding("r2", "RESOLVED")]
	d := deny(complete(member, fs, update("NOTIFIED")))
	{v.finding.Id | some v in d} == {"r1", "r2"}
	{v.msg | some v in d} == {reopen}
}

# State is unknown in the first pass: the rule waits for the complete pass.
test_reopen_waits_for_enrichment if {
	count(deny(pending(member, [finding("r", "RESOLVED")], update("NEW")))) == 0
}

test_member_notify_open_findings_allowed if {
	fs := [finding("a", "NEW"), finding("b", "NOTIFIED")]
	count(deny(complete(member, fs, update("NOTIFIED")))) == 0
	count(deny(complete(member, fs, update("NEW")))) == 0
}

# Other changes to a RESOLVED finding are not a reopening (resolving it again needs a ticket).
test_member_other_updates_of_resolved_finding_allowed if {
	note_only := object.union(update(null), {"fields": ["Note.Text", "Note.UpdatedBy"], "note": {"text": "still fixed", "updated_by": "m"}})
	count(deny(complete(member, [finding("r", "RESOLVED")], note_only))) == 0
	re_resolve := object.union(update("RESOLVED"), {"note": {"text": "SEC-9 verified", "updated_by": "m"}})
	count(deny(complete(member, [finding("r", "RESOLVED")], re_resolve))) == 0
}

# Only RESOLVED counts: a SUPPRESSED finding is hubgate.rego's and the administrators' concern.
test_member_unsuppress_not_judged_here if {
	count(deny(complete(member, [finding("s", "SUPPRESSED")], update("NEW")))) == 0
}

test_admin_reopen_allowed if {
	count(deny(complete(admin, [finding("r", "RESOLVED")], update("NEW")))) == 0
}

# An unknown finding has workflow_status null: only "not found" names it.
test_unknown_finding_is_not_a_reopening if {
	d := deny(complete(member, [missing("gone")], update("NEW")))
	{v.msg | some v in d} == {"finding not found in Security Hub"}
}
