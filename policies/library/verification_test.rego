# Tests of verification.rego (members may not mark findings FALSE_POSITIVE or BENIGN_POSITIVE).
package hubgate_verification_test

import data.hubgate

arn := "arn:aws:securityhub:us-east-1::product/aws/securityhub"

member := {"id": "m", "account_id": "222222222222", "role": "member", "attributes": {}}

admin := {"id": "a", "account_id": "111111111111", "role": "administrator", "attributes": {}}

# input.update as hubgate builds it: every key present, null when the body does not set it.
update(state, note) := {
	"fields": [], "workflow_status": null,
	"severity_label": null, "severity_rank": null, "severity_normalized": null,
	"verification_state": state, "confidence": null, "criticality": null,
	"note": note, "types": null, "user_defined_fields": null, "related_findings": null,
}

own := {
	"Id": "f1", "ProductArn": arn, "account_id": "222222222222",
	"severity_label": "HIGH", "severity_rank": 3, "workflow_status": "NEW",
	"current": {"AwsAccountId": "222222222222", "Workflow": {"Status": "NEW"}},
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

msgs(d) := {v.msg | some v in hubgate.deny with input as d}

refused := "member accounts may not mark findings FALSE_POSITIVE or BENIGN_POSITIVE"

test_member_false_or_benign_positive_denied_in_both_passes if {
	every state in ["FALSE_POSITIVE", "BENIGN_POSITIVE"] {
		every phase in ["pending", "complete"] {
			msgs(doc(member, phase, update(state, null))) == {refused}
		}
	}
}

# A reason in the note does not help: the verdict is the administrator's to give.
test_member_false_positive_with_ticket_still_denied if {
	msgs(doc(member, "pending", update("FALSE_POSITIVE", {"text": "SEC-1 noise", "updated_by": "m"}))) == {refused}
}

test_member_true_positive_or_unknown_allowed if {
	every state in ["TRUE_POSITIVE", "UNKNOWN"] {
		msgs(doc(member, "complete", update(state, null))) == set()
	}
}

test_member_without_verification_state_allowed if {
	msgs(doc(member, "complete", update(null, {"text": "looking", "updated_by": "m"}))) == set()
}

test_admin_false_or_benign_positive_allowed if {
	every state in ["FALSE_POSITIVE", "BENIGN_POSITIVE"] {
		msgs(doc(admin, "complete", update(state, null))) == set()
	}
}
