# hubgate's shipped policy library: what member accounts may do to findings.
#
# Decision entrypoint: data.hubgate.deny, a set of {"msg", "finding"} (finding null for a
# whole-request violation). The input document is described in policies/README.md.
#
# Rules run twice per request: first with input.enrichment == "pending" (no finding state yet;
# a violation here refuses the request without any call to Security Hub), then with
# "complete". A rule that needs finding state must require `enriched`, so that it never
# fires on state that was simply not looked up yet.
package hubgate

member if input.principal.role == "member"

enriched if input.enrichment == "complete"

finding_ref(f) := {"Id": f.Id, "ProductArn": f.ProductArn}

# Suppressing hides a finding from every view; only administrators may do it.
deny contains {"msg": "member accounts may not suppress findings", "finding": null} if {
	member
	input.update.workflow_status == "SUPPRESSED"
}

# A member account owns its findings and no one else's. input.summary lets the common case
# (every finding is the caller's) pass without iterating over the findings.
deny contains {"msg": "member accounts may only update findings of their own account", "finding": finding_ref(f)} if {
	member
	enriched
	some account in input.summary.accounts
	account != input.principal.account_id
	some f in input.findings
	f.account_id == account
}

# Severity may go up, never down, for members. Ranks are computed by hubgate from the label,
# or from Severity.Normalized (0 INFORMATIONAL, 1-39 LOW, 40-69 MEDIUM, 70-89 HIGH, 90-100 CRITICAL).
deny contains {"msg": msg, "finding": finding_ref(f)} if {
	member
	enriched
	requested := input.update.severity_rank
	requested != null
	input.summary.max_severity_rank > requested
	some f in input.findings
	f.severity_rank != null
	f.severity_rank > requested
	msg := sprintf("member accounts may not lower a finding's severity (%s to %s)", [f.severity_label, input.update.severity_label])
}

# An identifier Security Hub does not know is refused for everyone: the policy cannot judge it.
deny contains {"msg": "finding not found in Security Hub", "finding": finding_ref(f)} if {
	enriched
	input.summary.missing > 0
	some f in input.findings
	f.current == null
}

# Without enrichment hubgate cannot tell whose finding it is; members are refused, not trusted.
deny contains {"msg": "finding ownership cannot be verified because enrichment is disabled", "finding": null} if {
	member
	input.enrichment == "disabled"
}
