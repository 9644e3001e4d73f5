# Library rule "scores" (default: warn). Members may not change Confidence or Criticality: a
# member's request that sets either field is a violation, whatever the value. Both scores drive
# prioritisation across accounts, so they are set by the administrator (security) account or by
# the product that reported the finding.
#
# "Change" means "sets the field" (`"Confidence" in input.update.fields`): the rule reads no
# value and does not compare with the finding's current one. One value in the body applies to
# every finding of the batch, and judging "unchanged" would need finding state and an iteration
# over the findings. A member tool that resends the current value must leave the field out.
#
# Who: members. Operations: every one whose fields can name them: BatchUpdateFindings and
# BatchImportFindings (judged on fields alone; an import is also imports.rego's). V2 and
# UpdateFindings have no such field. An import's FindingProviderFields.Confidence and
# .Criticality count too: Security Hub copies the provider's values to the top-level scores
# while no BatchUpdateFindings has set them, so with member_imports = "own-findings" a re-import
# would otherwise change an untriaged finding's scores.
#
# Why hubgate and not (only) IAM: IAM can express this one with the documented
# "Null": {"securityhub:ASFFSyntaxPath/Confidence": "false"} pattern (and the same for
# Criticality). It lives here too for one reviewed place, a readable reason and the audit record.
#
# Settings: "library": {"scores": "enforce" | "warn" | "off"}, default "warn".
#
# Cost: four membership tests on input.update.fields; when enforced it refuses in the first pass,
# before any lookup.
package hubgate

scores_violations contains {"msg": "member accounts may not change Confidence or Criticality", "finding": null} if {
	member
	"Confidence" in input.update.fields
}

scores_violations contains {"msg": "member accounts may not change Confidence or Criticality", "finding": null} if {
	member
	"Criticality" in input.update.fields
}

scores_violations contains {"msg": "member accounts may not change Confidence or Criticality", "finding": null} if {
	member
	"FindingProviderFields.Confidence" in input.update.fields
}

scores_violations contains {"msg": "member accounts may not change Confidence or Criticality", "finding": null} if {
	member
	"FindingProviderFields.Criticality" in input.update.fields
}

deny contains v if {
	library_enforced("scores")
	some v in scores_violations
}

warn contains v if {
	library_warned("scores")
	some v in scores_violations
}
