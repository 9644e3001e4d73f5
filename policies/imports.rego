# BatchImportFindings by member accounts: refused by default.
#
# What: a member may not call BatchImportFindings unless
# data.hubgate_settings.member_imports == "own-findings". With that setting a member's import is
# judged: every imported finding must claim the member's account (AwsAccountId; the own-account
# rules of operations.rego), and it may not set the fields that are BatchUpdateFindings'
# business, the customer's investigation: Severity.* (top-level Severity), Workflow.*,
# WorkflowState, Note.*, UserDefinedFields, VerificationState, Confidence, Criticality.
# FindingProviderFields.* (the provider's own view, Severity included), Types, RecordState and
# the rest of ASFF stay allowed.
#
# Why the default refuses: hubgate cannot look imported findings up (input.enrichment "none",
# every input.update fact null; only input.update.fields), so it cannot tell a new finding from a
# re-import of an existing one, nor compare with the current severity or status. And ASFF
# requires Severity on every import, so judging field by field refuses almost every real import
# anyway. The trade-off of "own-findings": FindingProviderFields.Severity is allowed (it is the
# provider's severity), and Security Hub copies it to Severity while no BatchUpdateFindings has
# set Severity, so a member that opts in can still lower an untriaged finding's severity through
# a re-import; RecordState ARCHIVED (the provider's lifecycle field) takes the finding out of
# the default views (the ticket rule asks a ticket for it when enforced); and RecordState ACTIVE
# or a Compliance.Status change reopens a RESOLVED finding (the reopen rule refuses both when
# enforced). Turn it on only for members that are finding providers you trust that far,
# or list "FindingProviderFields" and "RecordState" in member_forbidden_fields (fields.rego).
#
# Who: members. Administrators' imports are not restricted by the policies.
#
# Why not IAM: IAM can allow or deny securityhub:BatchImportFindings as a whole, but has no
# condition keys on the imported findings' fields or AwsAccountId. (Security Hub itself refuses
# imports into another account unless the product is allow-listed for it.)
#
# Settings (policies/data.json, "hubgate_settings"): "member_imports": "off" (the default; any
# value but "own-findings" counts as "off") or "own-findings".
#
# Cost: one rule with one comparison for every request that is not a member's import. An
# opted-in member's import costs eight membership tests and one strings.any_prefix_match call;
# the per-field loop runs only when a prefix matched.
package hubgate

# The rules below put their violations in import_violations, and this is the one rule that
# reads it, only for a member's import: other requests enter one rule here, not three (see
# state_violations in hubgate.rego).
deny contains v if {
	member
	input.operation == "BatchImportFindings"
	some v in import_violations
}

import_violations contains {"msg": "member accounts may not import findings (BatchImportFindings): hubgate cannot look imported findings up; an administrator can allow imports of the member's own findings with hubgate_settings.member_imports = \"own-findings\"", "finding": null} if {
	not data.hubgate_settings.member_imports == "own-findings"
}

# The customer-owned fields, by name, and the parents whose every member is customer-owned
# (a sub-member this list does not know yet is refused too).
import_customer_fields := {"Severity", "Workflow", "Note", "WorkflowState", "UserDefinedFields", "VerificationState", "Confidence", "Criticality"}

import_customer_prefixes := ["Severity.", "Workflow.", "Note."]

import_field_msg(field) := {"msg": sprintf("member accounts may not set %s through BatchImportFindings: it is the customer's, to change with BatchUpdateFindings", [field]), "finding": null}

import_violations contains v if {
	data.hubgate_settings.member_imports == "own-findings"
	some field in import_customer_fields
	field in input.update.fields
	v := import_field_msg(field)
}

import_violations contains v if {
	data.hubgate_settings.member_imports == "own-findings"
	input.update.fields != null
	strings.any_prefix_match(input.update.fields, import_customer_prefixes)
	some field in input.update.fields
	strings.any_prefix_match(field, import_customer_prefixes)
	v := import_field_msg(field)
}
