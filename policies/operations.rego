# Rules for the finding-changing operations hubgate cannot look findings up for:
# BatchUpdateFindingsV2 (OCSF identifiers), UpdateFindings (a filter, not identifiers) and
# BatchImportFindings (the findings are the request). For them input.enrichment is "none" and
# each finding carries only what the request claims (claimed_account_id: V2 CloudAccountUid,
# import AwsAccountId).
#
# What: members name only their own account's findings, and name each finding's account; they
# may not change severity through these operations ("may not lower" needs the current
# severity); they may not use UpdateFindings at all.
#
# Who: members. Administrators are not restricted here.
#
# Why not IAM: IAM sees neither a V2 finding's account nor an imported finding's AwsAccountId
# as a condition, and cannot tell a severity raise from a lowering.
#
# The rules on input.update (suppress, statuses, the library) already cover V2: hubgate
# normalises StatusId to update.workflow_status, SeverityId to a severity label and rank, and
# Comment to update.note. What is left here is what needs finding state.
#
# Settings: none (imports by members: imports.rego, hubgate_settings.member_imports).
#
# Cost: a few comparisons on the request (the rules after UpdateFindings's sit behind one that
# tests member and no_state once); one pass over the (claimed) findings for members, with no
# builtin.
package hubgate

no_state if input.enrichment == "none"

# UpdateFindings changes (or archives) every finding a filter matches, with no per-finding
# check possible: administrators only. A rule of its own, whatever the enrichment state says.
deny contains {"msg": "member accounts may not use UpdateFindings: it changes every finding a filter matches", "finding": null} if {
	member
	input.operation == "UpdateFindings"
}

# The rules below put their violations in no_state_violations, and this is the one rule that
# reads it, only for a member's request of these operations: other requests enter one rule
# here, not four (see state_violations in hubgate.rego).
deny contains v if {
	member
	no_state
	some v in no_state_violations
}

# "May not lower severity" needs the current severity, which hubgate cannot read for these
# operations; rather than guess, members may not change severity through them at all. Judged
# on fields, so every SeverityId (0 UNKNOWN and 99 OTHER included) counts. Imports: imports.rego.
no_state_violations contains {"msg": sprintf("member accounts may not change severity through %s: hubgate cannot see the current severity", [input.operation]), "finding": null} if {
	severity_touched
	update_op
}

# A member names its own account's findings only. AWS enforces this too; refusing here keeps a
# mistaken batch out of the audit trail as an applied change.
no_state_violations contains {"msg": "member accounts may only update findings of their own account", "finding": finding_ref(f)} if {
	some f in input.findings
	f.claimed_account_id != null
	f.claimed_account_id != input.principal.account_id
}

# A finding without a claimed account (V2 MetadataUids, or a null claim) cannot be attributed.
no_state_violations contains {"msg": "member accounts must name findings by FindingIdentifiers (with CloudAccountUid), not MetadataUids", "finding": null} if {
	input.operation == "BatchUpdateFindingsV2"
	some f in input.findings
	not f.claimed_account_id != null
}

no_state_violations contains {"msg": sprintf("member accounts must name each finding's account in %s: hubgate cannot look findings up", [input.operation]), "finding": null} if {
	input.operation != "BatchUpdateFindingsV2"
	some f in input.findings
	not f.claimed_account_id != null
}
