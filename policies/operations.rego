# Rules for the finding-changing operations hubgate cannot look findings up for:
# BatchUpdateFindingsV2 (OCSF identifiers), UpdateFindings (a filter, not identifiers) and
# BatchImportFindings (the findings are the request). For them input.enrichment is "none" and
# each finding carries only what the request claims (claimed_account_id).
#
# The rules on input.update (suppress, tickets, verification state, ...) already cover these
# operations: hubgate normalises StatusId 3 to workflow_status "SUPPRESSED", SeverityId to a
# severity label and Comment to update.note. What is left is what needs finding state.
package hubgate

no_state if input.enrichment == "none"

# A member names its own account's findings only. AWS enforces this too; refusing here keeps a
# mistaken batch out of the audit trail as an applied change.
deny contains {"msg": "member accounts may only update findings of their own account", "finding": finding_ref(f)} if {
	member
	no_state
	some f in input.findings
	f.claimed_account_id != input.principal.account_id
}

# V2 MetadataUids carry no account: hubgate cannot tell whose finding it is.
deny contains {"msg": "member accounts must name findings by FindingIdentifiers (with CloudAccountUid), not MetadataUids", "finding": null} if {
	member
	input.operation == "BatchUpdateFindingsV2"
	some f in input.findings
	not f.claimed_account_id
}

# "May not lower severity" needs the current severity, which hubgate cannot read for these
# operations; rather than guess, members may not change severity through them at all.
deny contains {"msg": sprintf("member accounts may not change severity through %s: hubgate cannot see the current severity", [input.operation]), "finding": null} if {
	member
	no_state
	input.update.severity_rank != null
}

# UpdateFindings changes (or archives) every finding a filter matches, with no per-finding
# check possible: administrators only.
deny contains {"msg": "member accounts may not use UpdateFindings: it changes every finding a filter matches", "finding": null} if {
	member
	input.operation == "UpdateFindings"
}
