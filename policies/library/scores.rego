# Members may not change Confidence or Criticality: a member's request that sets either field is
# refused, whatever the value. Both scores drive prioritisation across accounts, so they are set
# by the administrator (security) account or by the product that reported the finding.
#
# "Change" means "sets the field": the rule does not compare with the finding's current value.
# One value in the body applies to every finding of the batch, and judging "unchanged" would
# need finding state and an iteration over the findings. A member tool that resends the current
# value must leave the field out.
#
# Why hubgate and not (only) IAM: IAM can express this one with the documented
# "Null": {"securityhub:ASFFSyntaxPath/Confidence": "false"} pattern (and the same for
# Criticality). It lives here too for one reviewed place, a readable reason and the audit record.
#
# Disable: delete this file (or one of the two rules). No data.json setting.
#
# Cost: two null comparisons on the request; it refuses in the first pass, before any lookup.
package hubgate

deny contains {"msg": "member accounts may not change Confidence or Criticality", "finding": null} if {
	member
	input.update.confidence != null
}

deny contains {"msg": "member accounts may not change Confidence or Criticality", "finding": null} if {
	member
	input.update.criticality != null
}
