# Library rule "verification" (default: warn). Members may not declare a finding a false or
# benign positive: VerificationState FALSE_POSITIVE or BENIGN_POSITIVE in a member's request is a
# violation. Such a verdict takes the finding out of most triage views, so it is left to the
# administrator (security) account. Members may still set UNKNOWN or TRUE_POSITIVE.
#
# Who: members. Operations: BatchUpdateFindings (the only one with VerificationState besides
# imports). BatchImportFindings: not judged here; a member's import may not set
# VerificationState at all (imports.rego). VerificationState set without a value to judge is a
# violation.
#
# Why hubgate and not (only) IAM: IAM can express this one; it is the documented pattern
# "Effect: Deny" with "ForAnyValue:StringEquals" on securityhub:ASFFSyntaxPath/VerificationState.
# Keeping it here puts every member restriction in one reviewed, tested place, gives callers a
# readable reason, and lands in hubgate's audit record. Keep the IAM deny too if callers can
# reach Security Hub without hubgate (defence in depth).
#
# Settings: "library": {"verification": "enforce" | "warn" | "off"}, default "warn". Adjust: edit
# the set of states below.
#
# Cost: one comparison on the request; when enforced it refuses in the first pass, before any
# lookup.
package hubgate

verification_violations contains {"msg": "member accounts may not mark findings FALSE_POSITIVE or BENIGN_POSITIVE", "finding": null} if {
	member
	input.update.verification_state in {"FALSE_POSITIVE", "BENIGN_POSITIVE"}
}

verification_violations contains v if {
	member
	"VerificationState" in input.update.fields
	not input.update.verification_state != null
	update_op
	v := cannot_judge("VerificationState")
}

deny contains v if {
	library_enforced("verification")
	some v in verification_violations
}

warn contains v if {
	library_warned("verification")
	some v in verification_violations
}
