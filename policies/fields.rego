# The IAM field restrictions of the Security Hub documentation, as data: which ASFF fields
# member accounts may not set at all, and which Workflow.Status values they may set.
#
# IAM can say the same with `securityhub:ASFFSyntaxPath/<field>` conditions (Null = false to
# forbid a field, StringEquals for values), but only for BatchUpdateFindings spelled one way:
# hubgate's input.update.fields lists what the request sets whatever the operation (V1 or V2)
# or spelling (Severity.Normalized counts as Severity.Label's field too), so one list covers all.
#
# Settings (policies/data.json, "hubgate_settings"; both optional):
#   "member_forbidden_fields":   ASFF paths members may not set, e.g. ["Types", "RelatedFindings",
#                                "UserDefinedFields"] (the AWS managed policy
#                                AWSSystemsManagerOpsDataSyncServiceRolePolicy forbids these and more).
#   "member_workflow_statuses":  the Workflow.Status values members may set, e.g. ["RESOLVED"]
#                                for the docs' "only allow member accounts to set RESOLVED".
# Shipped: no field forbidden beyond the other rules, every status but SUPPRESSED allowed.
package hubgate

member_forbidden_fields := data.hubgate_settings.member_forbidden_fields

member_forbidden_fields := [] if not data.hubgate_settings.member_forbidden_fields

member_workflow_statuses := data.hubgate_settings.member_workflow_statuses

member_workflow_statuses := ["NEW", "NOTIFIED", "RESOLVED"] if not data.hubgate_settings.member_workflow_statuses

deny contains {"msg": sprintf("member accounts may not set %s", [field]), "finding": null} if {
	member
	some field in input.update.fields
	field in member_forbidden_fields
}

deny contains {"msg": sprintf("member accounts may not set Workflow.Status to %s", [status]), "finding": null} if {
	member
	status := input.update.workflow_status
	status != null
	status != "SUPPRESSED" # hubgate.rego says it for SUPPRESSED
	not status in member_workflow_statuses
}
