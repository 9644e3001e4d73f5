# The IAM field restrictions of the Security Hub documentation, as data: which ASFF fields
# member accounts may not set at all, and which Workflow.Status values they may set.
#
# IAM can say the same with `securityhub:ASFFSyntaxPath/<field>` conditions (Null = false to
# forbid a field, StringEquals for values), but only for BatchUpdateFindings spelled one way:
# hubgate's input.update.fields lists what the request sets whatever the operation (V2's StatusId
# is Workflow.Status, SeverityId is Severity.Label), so one list covers all. A listed parent
# ("Severity", "FindingProviderFields", any path) forbids every field under it; a listed member
# ("Compliance.Status") is forbidden too when the request sets its parent whole (an import's
# fields name most members whole: "Compliance", not "Compliance.Status"); and two spellings of one
# change forbid each other (Severity.Label and Severity.Normalized, Workflow.Status and the
# deprecated WorkflowState). V2's names (StatusId, SeverityId, Comment, as IAM's OCSFSyntaxPath
# keys spell them) forbid the ASFF paths they change, in every operation.
#
# Settings (policies/data.json, "hubgate_settings"; both optional):
#   "member_forbidden_fields":   ASFF paths members may not set, e.g. ["Types", "RelatedFindings",
#                                "UserDefinedFields"] (the AWS managed policy
#                                AWSSystemsManagerOpsDataSyncServiceRolePolicy forbids these and more).
#   "member_workflow_statuses":  the Workflow.Status values members may set, e.g. ["RESOLVED"]
#                                for the docs' "only allow member accounts to set RESOLVED".
# Shipped: no field forbidden beyond the other rules; statuses NEW, NOTIFIED and RESOLVED.
#
# Who: members. Operations: the forbidden fields are judged on input.update.fields alone, so for
# every operation, imports included. The statuses need update.workflow_status: BatchUpdateFindings
# and V2 (StatusId 0 UNKNOWN, 5 ARCHIVED, 99 OTHER are refused by the shipped list); an import's
# Workflow.Status is imports.rego's. Workflow.Status set without a status to judge: refused.
#
# Cost: per forbidden field (none shipped), one comparison and two startswith calls per field
# of the request; one membership test for Workflow.Status, for members; sprintf only for
# violations.
package hubgate

member_forbidden_fields := data.hubgate_settings.member_forbidden_fields

member_forbidden_fields := [] if not data.hubgate_settings.member_forbidden_fields

member_workflow_statuses := data.hubgate_settings.member_workflow_statuses

member_workflow_statuses := ["NEW", "NOTIFIED", "RESOLVED"] if not data.hubgate_settings.member_workflow_statuses

# The forbidden fields with their other spellings (built once per evaluation; empty with the
# shipped settings). Members of a forbidden parent are matched by path below, not listed here:
# a table of parents missed FindingProviderFields, so forbidding it let an import set
# FindingProviderFields.Severity.
field_aliases := {
	"Severity.Label": ["Severity.Normalized"],
	"Severity.Normalized": ["Severity.Label"],
	"Workflow": ["WorkflowState"],
	"Workflow.Status": ["WorkflowState"],
	"WorkflowState": ["Workflow.Status"],
	# BatchUpdateFindingsV2's members, by the names IAM's securityhub:OCSFSyntaxPath keys use:
	# input.update.fields lists them as the ASFF paths they change, so these names alone would
	# match nothing.
	"StatusId": ["Workflow.Status"],
	"SeverityId": ["Severity.Label", "Severity.Normalized"],
	"Comment": ["Note.Text"],
}

member_forbidden contains field if some field in member_forbidden_fields

member_forbidden contains alias if {
	some field in member_forbidden_fields
	some alias in field_aliases[field]
}

# A forbidden path and a field of the request that match or nest: the same path, the field
# under the forbidden parent, or the forbidden member under a field the request sets whole.
# One rule, entered once per pass: with the shipped settings (nothing forbidden) it iterates
# over nothing; otherwise over the request's fields once per forbidden one.
deny contains {"msg": msg, "finding": null} if {
	member
	some forbidden in member_forbidden
	input.update.fields != null # the input guard refuses; iterating over null is an error
	some field in input.update.fields
	msg := forbidden_field_msg(field, forbidden)
}

forbidden_field_msg(field, forbidden) := sprintf("member accounts may not set %s", [field]) if {
	field == forbidden
}

forbidden_field_msg(field, forbidden) := sprintf("member accounts may not set %s", [field]) if {
	startswith(field, concat("", [forbidden, "."]))
}

forbidden_field_msg(field, forbidden) := sprintf("member accounts may not set %s: the request sets all of %s", [forbidden, field]) if {
	startswith(forbidden, concat("", [field, "."]))
}

deny contains {"msg": sprintf("member accounts may not set Workflow.Status to %s", [status]), "finding": null} if {
	member
	status := input.update.workflow_status
	status != null
	status != "SUPPRESSED" # hubgate.rego says it for SUPPRESSED
	not status in member_workflow_statuses
}

deny contains v if {
	member
	"Workflow.Status" in input.update.fields
	not input.update.workflow_status != null
	update_op
	v := cannot_judge("Workflow.Status")
}
