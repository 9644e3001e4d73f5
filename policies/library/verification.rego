# Members may not declare a finding a false or benign positive: VerificationState FALSE_POSITIVE
# or BENIGN_POSITIVE in a member's request is refused. Such a verdict takes the finding out of
# most triage views, so it is left to the administrator (security) account. Members may still
# set UNKNOWN or TRUE_POSITIVE.
#
# Why hubgate and not (only) IAM: IAM can express this one; it is the documented pattern
# "Effect: Deny" with "ForAnyValue:StringEquals" on securityhub:ASFFSyntaxPath/VerificationState.
# Keeping it here puts every member restriction in one reviewed, tested place, gives callers a
# readable reason, and lands in hubgate's audit record. Keep the IAM deny too if callers can
# reach Security Hub without hubgate (defence in depth).
#
# Disable: delete this file. Adjust: edit the set of states below. No data.json setting.
#
# Cost: one comparison on the request; it refuses in the first pass, before any lookup.
package hubgate

deny contains {"msg": "member accounts may not mark findings FALSE_POSITIVE or BENIGN_POSITIVE", "finding": null} if {
	member
	input.update.verification_state in {"FALSE_POSITIVE", "BENIGN_POSITIVE"}
}
