# Tests of policies/fields.rego.
package fields_test

import data.hubgate

member := {"id": "m", "account_id": "222222222222", "role": "member", "attributes": {}}

admin := {"id": "a", "account_id": "111111111111", "role": "administrator", "attributes": {}}

doc(principal, update) := {
	"version": 1, "operation": "BatchUpdateFindings", "enrichment": "pending",
	"principal": principal, "request": {}, "findings": [], "summary": {},
	"update": object.union({"fields": [], "workflow_status": null, "severity_label": null, "severity_rank": null, "note": null}, update),
}

msgs(d) := {v.msg | some v in hubgate.deny with input as d}

types_update := {"fields": ["Types"], "types": ["Effects/Data Exposure"]}

test_shipped_settings_forbid_no_extra_field if {
	count(msgs(doc(member, types_update))) == 0
}

test_forbidden_fields_apply_to_members_only if {
	"member accounts may not set Types" in msgs(doc(member, types_update)) with data.hubgate_settings.member_forbidden_fields as ["Types", "RelatedFindings"]
	count(msgs(doc(admin, types_update))) == 0 with data.hubgate_settings.member_forbidden_fields as ["Types"]
}

test_member_workflow_statuses_narrow_what_members_set if {
	notified := {"fields": ["Workflow.Status"], "workflow_status": "NOTIFIED"}
	count(msgs(doc(member, notified))) == 0
	"member accounts may not set Workflow.Status to NOTIFIED" in msgs(doc(member, notified)) with data.hubgate_settings.member_workflow_statuses as ["RESOLVED"]
	count(msgs(doc(admin, notified))) == 0 with data.hubgate_settings.member_workflow_statuses as ["RESOLVED"]
}

test_suppressed_is_reported_once if {
	suppress := {"fields": ["Workflow.Status"], "workflow_status": "SUPPRESSED", "note": {"text": "RISK-1", "updated_by": "m"}}
	msgs(doc(member, suppress)) == {"member accounts may not suppress findings"}
}
