# Members may not reopen a RESOLVED finding: a member's request that sets Workflow.Status to NEW
# or NOTIFIED is refused for each targeted finding whose current status is RESOLVED. Reopening
# restarts the investigation and its clock, so it is left to the administrator account.
# Members may still resolve, and may move NEW and NOTIFIED findings between those two states.
#
# Why not IAM: IAM conditions only see the request, never the finding's stored state
# (securityhub-api.md §4, "What IAM cannot express", item 2). Denying Workflow.Status NEW or
# NOTIFIED in IAM would forbid every such update, not only the reopening of resolved findings,
# and IAM refuses a whole batch where this rule names each finding at fault.
#
# Disable: delete this file. Adjust: edit the requested statuses or the current status below.
# No data.json setting.
#
# Two passes: the current status is known only in the "complete" pass, so the rule requires
# `enriched` and never fires in the first pass (where the key is absent). Unknown findings have
# workflow_status null and are left to the "finding not found" rule.
#
# Cost: whole-request guards first (member, enriched, the requested status), so a request that
# does not ask for NEW or NOTIFIED never iterates. A NEW/NOTIFIED request iterates once over the
# findings with one string comparison each and no builtin. (input.summary has no status facts.)
package hubgate

deny contains {"msg": "member accounts may not reopen a RESOLVED finding", "finding": finding_ref(f)} if {
	member
	enriched
	input.update.workflow_status in {"NEW", "NOTIFIED"}
	some f in input.findings
	f.workflow_status == "RESOLVED"
}
