# Tests of policies/fields.rego.
package fields_test

import data.hubgate_inputs as t

member := t.member

admin := t.admin

types_update := t.update({"fields": ["Types"], "types": ["Effects/Data Exposure"]})

test_shipped_settings_forbid_no_extra_field if {
	count(t.deny(t.buf(member, "pending", [t.own("f1")], types_update))) == 0
}

test_forbidden_fields_apply_to_members_only if {
	d := t.msgs(t.buf(member, "pending", [t.own("f1")], types_update)) with data.hubgate_settings.member_forbidden_fields as ["Types", "RelatedFindings"]
	d == {"member accounts may not set Types"}
	a := t.deny(t.buf(admin, "pending", [t.own("f1")], types_update)) with data.hubgate_settings.member_forbidden_fields as ["Types"]
	count(a) == 0
}

# Judged on fields alone: a null fact does not matter, and imports are judged too.
test_forbidden_fields_null_fact if {
	d := t.msgs(t.buf(member, "pending", [t.own("f1")], t.null_fact(["Types"]))) with data.hubgate_settings.member_forbidden_fields as ["Types"]
	d == {"member accounts may not set Types"}
	i := t.msgs(t.bif(member, [t.claimed("f1", t.own_account)], t.provider_fields)) with data.hubgate_settings as {"member_imports": "own-findings", "member_forbidden_fields": ["Types"]}
	i == {"member accounts may not set Types"}
}

# A parent forbids its members; Severity.Label and Severity.Normalized forbid each other.
test_forbidden_parents_and_spellings if {
	normalized := t.update({"fields": ["Severity.Normalized"], "severity_label": "HIGH", "severity_rank": 3, "severity_normalized": 80})
	a := t.msgs(t.buf(member, "pending", [t.own("f1")], normalized)) with data.hubgate_settings.member_forbidden_fields as ["Severity.Label"]
	a == {"member accounts may not set Severity.Normalized"}
	b := t.msgs(t.buf(member, "pending", [t.own("f1")], t.severity("HIGH", 3))) with data.hubgate_settings.member_forbidden_fields as ["Severity"]
	b == {"member accounts may not set Severity.Label"}
	c := t.msgs(t.buf(member, "pending", [t.own("f1")], t.note_only("x"))) with data.hubgate_settings.member_forbidden_fields as ["Note"]
	c == {"member accounts may not set Note.Text", "member accounts may not set Note.UpdatedBy"}
}

test_member_workflow_statuses_narrow_what_members_set if {
	notified := t.status("NOTIFIED")
	count(t.deny(t.buf(member, "pending", [t.own("f1")], notified))) == 0
	d := t.msgs(t.buf(member, "pending", [t.own("f1")], notified)) with data.hubgate_settings.member_workflow_statuses as ["RESOLVED"]
	d == {"member accounts may not set Workflow.Status to NOTIFIED"}
	a := t.deny(t.buf(admin, "pending", [t.own("f1")], notified)) with data.hubgate_settings.member_workflow_statuses as ["RESOLVED"]
	count(a) == 0
}

# V2 statuses beyond NEW, NOTIFIED, RESOLVED are refused for members by the shipped list.
test_v2_other_statuses_refused_for_members if {
	every s in ["UNKNOWN", "ARCHIVED", "OTHER"] {
		t.msgs(t.v2(member, [t.claimed("f1", t.own_account)], t.status(s))) == {sprintf("member accounts may not set Workflow.Status to %s", [s])}
	}
}

test_member_workflow_statuses_null_workflow_status if {
	t.msgs(t.buf(member, "pending", [t.own("f1")], t.null_fact(["Workflow.Status"]))) == {t.cannot("Workflow.Status")}
	d := t.msgs(t.buf(member, "pending", [t.own("f1")], t.absent_fact(["Workflow.Status"], "workflow_status"))) with data.hubgate_settings.member_workflow_statuses as ["RESOLVED"]
	d == {t.cannot("Workflow.Status")}
}

test_suppressed_is_reported_once if {
	t.msgs(t.buf(member, "pending", [t.own("f1")], t.status_note("SUPPRESSED", "RISK-1"))) == {"member accounts may not suppress findings"}
}

# A listed parent forbids every field under it, whichever parent: FindingProviderFields too
# (an import's fields name its members, FindingProviderFields.Severity).
test_forbidden_parent_forbids_every_member if {
	settings := {"member_imports": "own-findings", "member_forbidden_fields": ["FindingProviderFields"]}
	d := t.msgs(t.bif(member, [t.claimed("f1", t.own_account)], t.provider_fields)) with data.hubgate_settings as settings
	d == {"member accounts may not set FindingProviderFields.Severity"}
	a := t.deny(t.bif(admin, [t.claimed("f1", t.own_account)], t.provider_fields)) with data.hubgate_settings as settings
	count(a) == 0
	# a prefix of a name is no parent: "Finding" forbids nothing here
	n := t.deny(t.bif(member, [t.claimed("f1", t.own_account)], t.provider_fields)) with data.hubgate_settings as {"member_imports": "own-findings", "member_forbidden_fields": ["Finding", "Type"]}
	count(n) == 0
}

# A listed member is forbidden when the request sets its parent whole: an import lists
# Compliance, not Compliance.Status.
test_forbidden_member_of_a_field_set_whole if {
	fields := array.concat(t.provider_fields, ["Compliance"])
	settings := {"member_imports": "own-findings", "member_forbidden_fields": ["Compliance.Status"]}
	d := t.msgs(t.bif(member, [t.claimed("f1", t.own_account)], fields)) with data.hubgate_settings as settings
	d == {"member accounts may not set Compliance.Status: the request sets all of Compliance"}
	deeper := {"member_imports": "own-findings", "member_forbidden_fields": ["FindingProviderFields.Severity.Label"]}
	e := t.msgs(t.bif(member, [t.claimed("f1", t.own_account)], t.provider_fields)) with data.hubgate_settings as deeper
	e == {"member accounts may not set FindingProviderFields.Severity.Label: the request sets all of FindingProviderFields.Severity"}
}

# Workflow.Status and the deprecated WorkflowState are two spellings of one change.
test_forbidden_workflow_spellings if {
	fields := array.concat(t.provider_fields, ["WorkflowState"])
	every forbidden in ["Workflow", "Workflow.Status"] {
		d := t.msgs(t.bif(member, [t.claimed("f1", t.own_account)], fields)) with data.hubgate_settings.member_forbidden_fields as [forbidden]
		"member accounts may not set WorkflowState" in d
	}
	s := t.msgs(t.buf(member, "pending", [t.own("f1")], t.status("RESOLVED"))) with data.hubgate_settings.member_forbidden_fields as ["WorkflowState"]
	s == {"member accounts may not set Workflow.Status"}
}

# V2's member names (IAM's OCSFSyntaxPath spelling) forbid the paths they change, V1 included.
test_forbidden_ocsf_names if {
	own := [t.claimed("f1", t.own_account)]
	s := t.msgs(t.v2(member, own, t.status("RESOLVED"))) with data.hubgate_settings.member_forbidden_fields as ["StatusId"]
	s == {"member accounts may not set Workflow.Status"}
	v := t.msgs(t.buf(member, "pending", [t.own("f1")], t.status("RESOLVED"))) with data.hubgate_settings.member_forbidden_fields as ["StatusId"]
	v == {"member accounts may not set Workflow.Status"}
	c := t.msgs(t.v2(member, own, t.update({"fields": ["Note.Text"], "note": {"text": "x", "updated_by": null}}))) with data.hubgate_settings.member_forbidden_fields as ["Comment"]
	c == {"member accounts may not set Note.Text"}
	normalized := t.update({"fields": ["Severity.Normalized"], "severity_label": "HIGH", "severity_rank": 3, "severity_normalized": 80})
	n := t.msgs(t.buf(member, "pending", [t.own("f1")], normalized)) with data.hubgate_settings.member_forbidden_fields as ["SeverityId"]
	n == {"member accounts may not set Severity.Normalized"}
}

# With fields null, the input guard refuses (403), not an evaluation error (500).
test_forbidden_paths_with_null_fields if {
	doc := t.put(t.buf(member, "pending", [t.own("f1")], t.nothing), "update", object.union(t.no_facts, {"fields": null}))
	d := t.msgs(doc) with data.hubgate_settings.member_forbidden_fields as ["FindingProviderFields"]
	d == {"the policy input has no update.fields: hubgate cannot judge this request"}
}
