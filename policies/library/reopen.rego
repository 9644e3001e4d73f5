# Library rule "reopen" (default: warn). Members may not reopen a RESOLVED finding: a member's
# request that sets Workflow.Status to an open status (anything but RESOLVED, SUPPRESSED,
# ARCHIVED or DELETED: NEW, NOTIFIED, and V2's UNKNOWN and OTHER) is a violation for each
# targeted finding whose current status is RESOLVED. Reopening restarts the investigation and its
# clock, so it is left to the administrator account. Members may still resolve, and may move NEW
# and NOTIFIED findings between those two states.
#
# Who: members. Operations:
#   BatchUpdateFindings: judged in the "complete" pass, per finding. A found finding whose
#     current status is unknown (null) is a violation; unknown findings (and, in a member's
#     input, other accounts') are left to the "not one of the member's findings" rule. With
#     enrichment "disabled" no status is ever known: refused (whole request).
#   BatchUpdateFindingsV2: hubgate cannot see the current status, so any open status (StatusId 0,
#     1, 2, 99) is a violation for the whole request.
#   UpdateFindings sets no status. BatchImportFindings: a member's import may not set Workflow.*
#     at all (imports.rego), but Security Hub itself sets a NOTIFIED or RESOLVED finding back to
#     NEW when an import changes its RecordState from ARCHIVED to ACTIVE, or its
#     Compliance.Status from PASSED to WARNING, FAILED or NOT_AVAILABLE (the model's
#     WorkflowStatus documentation). hubgate cannot see the current status or record state, so,
#     as for V2's open statuses, each imported finding a member's import sets ACTIVE or to such a
#     compliance status is a violation (judged on request.body.Findings; an import's facts are
#     null). Only with member_imports = "own-findings": otherwise imports.rego refuses them all.
#   Workflow.Status set without a status to judge: a violation.
#
# Why not IAM: IAM conditions only see the request, never the finding's stored state. Denying
# Workflow.Status NEW or NOTIFIED in IAM would forbid every such update, not only the reopening
# of resolved findings, and IAM refuses a whole batch where this rule names each finding at fault.
#
# Settings: "library": {"reopen": "enforce" | "warn" | "off"}, default "warn". Adjust: edit the
# closed statuses or the current status below.
#
# Two passes: the current status is known only in the "complete" pass, so the per-finding rules
# require `enriched` and never fire in the first pass (where the key is absent).
#
# Cost: whole-request guards first (mode, member, the requested status), so a request that does
# not ask for an open status never iterates. An open-status request iterates once over the
# findings with one string comparison each and no builtin. (input.summary has no status facts.)
# A member's import that sets RecordState or Compliance iterates once over its findings, with
# two comparisons each.
package hubgate

reopen_closed_statuses := {"RESOLVED", "SUPPRESSED", "ARCHIVED", "DELETED"}

# The requested status, when it is an open one.
reopen_requested := status if {
	status := input.update.workflow_status
	status != null
	not status in reopen_closed_statuses
}

reopen_violations contains {"msg": "member accounts may not reopen a RESOLVED finding", "finding": finding_ref(f)} if {
	member
	enriched
	reopen_requested
	some f in input.findings
	f.workflow_status == "RESOLVED"
	own_finding(f) # another account's status is not told (hubgate.rego)
}

reopen_violations contains {"msg": "hubgate cannot see this finding's current Workflow.Status, so member accounts may not reopen it", "finding": finding_ref(f)} if {
	member
	enriched
	reopen_requested
	some f in input.findings
	f.current != null
	not f.workflow_status != null
	own_finding(f)
}

# No current status for this operation (V2), or none ever (enrichment disabled).
reopen_violations contains {"msg": sprintf("member accounts may not reopen findings through %s (Workflow.Status %s): hubgate cannot see whether the finding is RESOLVED", [input.operation, status]), "finding": null} if {
	member
	input.enrichment in {"none", "disabled"}
	update_op
	status := reopen_requested
}

reopen_violations contains {"msg": "member accounts may not reactivate findings through BatchImportFindings (RecordState ACTIVE, or Compliance.Status WARNING, FAILED or NOT_AVAILABLE): Security Hub reopens a RESOLVED finding that is reactivated, and hubgate cannot see whether it is RESOLVED", "finding": finding_ref(f)} if {
	member
	input.operation == "BatchImportFindings"
	some field in reopen_import_fields
	field in input.update.fields
	some f in input.request.body.Findings
	reopen_reactivates(f)
}

# The members of an imported finding whose change makes Security Hub reopen it.
reopen_import_fields := ["RecordState", "Compliance"]

reopen_reactivates(f) if f.RecordState == "ACTIVE"

reopen_reactivates(f) if f.Compliance.Status in {"WARNING", "FAILED", "NOT_AVAILABLE"}

reopen_violations contains v if {
	member
	"Workflow.Status" in input.update.fields
	not input.update.workflow_status != null
	update_op
	v := cannot_judge("Workflow.Status")
}

deny contains v if {
	library_enforced("reopen")
	some v in reopen_violations
}

warn contains v if {
	library_warned("reopen")
	some v in reopen_violations
}
