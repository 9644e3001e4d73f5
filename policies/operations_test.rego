# Tests of policies/operations.rego.
package operations_test

import data.hubgate

member := {"id": "m", "account_id": "222222222222", "role": "member", "attributes": {}}

admin := {"id": "a", "account_id": "111111111111", "role": "administrator", "attributes": {}}

no_update := {"fields": [], "workflow_status": null, "severity_label": null, "severity_rank": null}

v2(principal, findings, update) := {
	"version": 1, "operation": "BatchUpdateFindingsV2", "enrichment": "none",
	"principal": principal, "request": {}, "findings": findings,
	"update": object.union(no_update, update), "summary": {},
}

own := {"Id": "f1", "ProductArn": "p", "claimed_account_id": "222222222222"}

theirs := {"Id": "f2", "ProductArn": "p", "claimed_account_id": "333333333333"}

by_uid := {"Id": "uid-1", "ProductArn": ""}

msgs(doc) := {v.msg | some v in hubgate.deny with input as doc}

test_v2_suppress_is_denied_like_v1 if {
	update := {"fields": ["Workflow.Status"], "workflow_status": "SUPPRESSED"}
	"member accounts may not suppress findings" in msgs(v2(member, [own], update))
}

test_v2_resolve_own_with_ticket_is_allowed if {
	update := {"fields": ["Workflow.Status", "Note.Text"], "workflow_status": "NOTIFIED", "note": {"text": "SEC-1 triaged", "updated_by": null}}
	count(msgs(v2(member, [own], update))) == 0
}

test_v2_other_account_denied if {
	"member accounts may only update findings of their own account" in msgs(v2(member, [own, theirs], no_update))
}

test_v2_metadata_uids_need_an_account if {
	"member accounts must name findings by FindingIdentifiers (with CloudAccountUid), not MetadataUids" in msgs(v2(member, [by_uid], no_update))
	count(msgs(v2(admin, [by_uid], no_update))) == 0
}

test_v2_severity_change_refused_for_members if {
	update := {"fields": ["Severity.Label"], "severity_label": "CRITICAL", "severity_rank": 4}
	"member accounts may not change severity through BatchUpdateFindingsV2: hubgate cannot see the current severity" in msgs(v2(member, [own], update))
	count(msgs(v2(admin, [theirs], update))) == 0
}

test_update_findings_is_for_administrators if {
	doc := object.union(v2(member, [], {"fields": ["RecordState"]}), {"operation": "UpdateFindings"})
	"member accounts may not use UpdateFindings: it changes every finding a filter matches" in msgs(doc)
	admin_doc := object.union(v2(admin, [], {"fields": ["RecordState"]}), {"operation": "UpdateFindings"})
	count(msgs(admin_doc)) == 0
}

test_import_of_another_accounts_finding_denied if {
	doc := object.union(v2(member, [own, theirs], {"fields": ["Findings"]}), {"operation": "BatchImportFindings"})
	d := hubgate.deny with input as doc
	some v in d
	v.finding.Id == "f2"
	v.msg == "member accounts may only update findings of their own account"
}
