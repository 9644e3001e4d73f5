# Tests of scores.rego (members may not change Confidence or Criticality).
package hubgate_scores_test

import data.hubgate

arn := "arn:aws:securityhub:us-east-1::product/aws/securityhub"

member := {"id": "m", "account_id": "222222222222", "role": "member", "attributes": {}}

admin := {"id": "a", "account_id": "111111111111", "role": "administrator", "attributes": {}}

# input.update as hubgate builds it: every key present, null when the body does not set it.
update(confidence, criticality) := {
	"fields": [], "workflow_status": null,
	"severity_label": null, "severity_rank": null, "severity_normalized": null,
	"verification_state": null, "confidence": confidence, "criticality": criticality,
	"note": null, "types": null, "user_defined_fields": null, "related_findings": null,
}

own := {
	"Id": "f1", "ProductArn": arn, "account_id": "222222222222",
	"severity_label": "HIGH", "severity_rank": 3, "workflow_status": "NEW",
	"current": {"AwsAccountId": "222222222222", "Confidence": 50, "Criticality": 50, "Workflow": {"Status": "NEW"}},
}

# The first pass ("pending") sees identifiers only; the complete pass the caller's own finding.
doc(principal, phase, upd) := {
	"version": 1, "operation": "BatchUpdateFindings", "enrichment": phase,
	"principal": principal, "request": {},
	"summary": summary(phase), "findings": findings(phase), "update": upd,
}

summary("complete") := {"accounts": ["222222222222"], "max_severity_rank": 3, "missing": 0}

summary("pending") := {}

findings("complete") := [own]

findings("pending") := [{"Id": "f1", "ProductArn": arn}]

deny(d) := result if {
	result := hubgate.deny with input as d
}

refused := {"msg": "member accounts may not change Confidence or Criticality", "finding": null}

test_member_confidence_denied_in_first_pass if {
	deny(doc(member, "pending", update(80, null))) == {refused}
}

test_member_criticality_denied if {
	deny(doc(member, "complete", update(null, 10))) == {refused}
}

# Both fields give one violation, not two.
test_member_both_give_one_violation if {
	deny(doc(member, "pending", update(80, 90))) == {refused}
}

# 0 is a value, not an absence.
test_member_zero_is_a_change if {
	deny(doc(member, "pending", update(0, null))) == {refused}
	deny(doc(member, "pending", update(null, 0))) == {refused}
}

# Setting the current value counts too: the rule judges the request, not the difference.
test_member_resending_current_value_denied if {
	deny(doc(member, "complete", update(50, 50))) == {refused}
}

test_member_without_scores_allowed if {
	count(deny(doc(member, "complete", update(null, null)))) == 0
}

test_admin_scores_allowed if {
	count(deny(doc(admin, "complete", update(0, 100)))) == 0
}
