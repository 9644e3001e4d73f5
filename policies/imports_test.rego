# Tests of policies/imports.rego (BatchImportFindings by members).
package imports_test

import data.hubgate_inputs as t

member := t.member

admin := t.admin

own := t.claimed("f1", t.own_account)

theirs := t.claimed("f2", t.other_account)

refused := "member accounts may not import findings (BatchImportFindings): hubgate cannot look imported findings up; an administrator can allow imports of the member's own findings with hubgate_settings.member_imports = \"own-findings\""

field_msg(field) := sprintf("member accounts may not set %s through BatchImportFindings: it is the customer's, to change with BatchUpdateFindings", [field])

# The issue's attack: a member re-imports its own finding with a lower Severity.Label and
# Workflow.Status SUPPRESSED.
attack := array.concat(t.asff_fields, ["Workflow.Status"])

# --- default: refused ---

test_member_import_refused_by_default if {
	every fields in [t.asff_fields, t.provider_fields, attack] {
		t.msgs(t.bif(member, [own], fields)) == {refused}
	}
}

# Setting absent, "off", or anything but "own-findings": refused.
test_member_import_refused_unless_own_findings if {
	every value in ["off", "own", "OWN-FINDINGS", true] {
		d := t.msgs(t.bif(member, [own], t.provider_fields)) with data.hubgate_settings.member_imports as value
		d == {refused}
	}
	a := t.msgs(t.bif(member, [own], t.provider_fields)) with data.hubgate_settings as {}
	a == {refused}
}

test_shipped_setting_refuses_member_imports if {
	not data.hubgate_settings.member_imports == "own-findings"
}

test_attack_refused_by_default if {
	t.msgs(t.bif(member, [own], attack)) == {refused}
}

test_admin_import_allowed_in_both_modes if {
	count(t.deny(t.bif(admin, [own, theirs], attack))) == 0
	d := t.deny(t.bif(admin, [own, theirs], attack)) with data.hubgate_settings.member_imports as "own-findings"
	count(d) == 0
}

# Administrators' imports are not judged by the update rules, even with the whole library
# enforced (an import's facts are all null; Workflow.Status there is not a closure to ticket).
test_admin_import_not_judged_by_update_rules if {
	r := t.decide(t.bif(admin, [own], attack), t.all_library("enforce"))
	count(r.deny) == 0
}

# --- own-findings: judged ---

test_own_findings_allows_provider_fields_only_import if {
	d := t.deny(t.bif(member, [own], t.provider_fields)) with data.hubgate_settings.member_imports as "own-findings"
	count(d) == 0
}

test_own_findings_attack_refused if {
	d := t.msgs(t.bif(member, [own], attack)) with data.hubgate_settings.member_imports as "own-findings"
	d == {field_msg("Severity.Label"), field_msg("Workflow.Status")}
}

test_own_findings_other_account_refused if {
	d := t.deny(t.bif(member, [own, theirs], t.provider_fields)) with data.hubgate_settings.member_imports as "own-findings"
	d == {{"msg": "member accounts may only update findings of their own account", "finding": t.ref("f2")}}
}

test_own_findings_every_customer_field_refused if {
	every field in [
		"Severity", "Severity.Label", "Severity.Normalized", "Severity.Product", "Severity.Original",
		"Workflow", "Workflow.Status", "WorkflowState", "Note", "Note.Text", "Note.UpdatedBy",
		"Note.UpdatedAt", "UserDefinedFields", "VerificationState", "Confidence", "Criticality",
		"Severity.SomethingNew",
	] {
		d := t.msgs(t.bif(member, [own], array.concat(t.provider_fields, [field]))) with data.hubgate_settings.member_imports as "own-findings"
		field_msg(field) in d
	}
}

test_own_findings_provider_severity_allowed if {
	every field in ["FindingProviderFields.Severity", "FindingProviderFields.Confidence", "RecordState", "Types", "RelatedFindings"] {
		d := t.deny(t.bif(member, [own], array.concat(t.provider_fields, [field]))) with data.hubgate_settings.member_imports as "own-findings"
		count(d) == 0
	}
}

# Imports carry no facts: the update rules' "cannot judge" never fires for them; the fields are
# judged by name here.
test_imports_null_facts if {
	d := t.msgs(t.bif(member, [own], ["Id", "Severity.Label", "Workflow.Status", "VerificationState"])) with data.hubgate_settings.member_imports as "own-findings"
	d == {field_msg("Severity.Label"), field_msg("Workflow.Status"), field_msg("VerificationState")}
}

# No fields at all (a malformed input): the guard refuses, the import rules raise no error.
test_imports_null_fields if {
	doc := t.put(t.bif(member, [own], []), "update", t.update({"fields": null}))
	d := t.msgs(doc) with data.hubgate_settings.member_imports as "own-findings"
	d == {"the policy input has no update.fields: hubgate cannot judge this request"}
}

# --- matrix: BatchImportFindings cells "refused for members" (own-findings mode) ---

test_matrix_suppress_import_refused_for_members if {
	d := t.msgs(t.bif(member, [own], array.concat(t.provider_fields, ["Workflow.Status"]))) with data.hubgate_settings.member_imports as "own-findings"
	d == {field_msg("Workflow.Status")}
}

test_matrix_lower_severity_import_refused_for_members if {
	d := t.msgs(t.bif(member, [own], t.asff_fields)) with data.hubgate_settings.member_imports as "own-findings"
	d == {field_msg("Severity.Label")}
}

test_matrix_statuses_import_refused_for_members if {
	d := t.msgs(t.bif(member, [own], array.concat(t.provider_fields, ["Workflow.Status"]))) with data.hubgate_settings as {"member_imports": "own-findings", "member_workflow_statuses": ["NEW", "NOTIFIED", "RESOLVED", "SUPPRESSED"]}
	d == {field_msg("Workflow.Status")}
}
