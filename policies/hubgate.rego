# hubgate's default rules: what member accounts may do to findings (the seed's policy, enforced).
#
# What: members may update only their own account's findings, may not suppress, and may not
# lower a finding's severity; an identifier Security Hub does not know is refused for members;
# members are refused whenever hubgate cannot know whose findings they are (enrichment disabled,
# an enrichment state that does not fit the operation, an operation this set does not know, an
# incomplete summary). operations.rego, fields.rego and imports.rego add the rules for the
# operations hubgate cannot look up; policies/library/ holds the opt-in rules.
#
# Who: members (input.principal.role == "member"). Administrators may update findings of any
# account, suppress, and change severity either way; for an unknown finding they get Security
# Hub's own UnprocessedFindings answer. The one rule for everyone is the input guard (no
# input.update.fields: no rule could judge the request).
#
# Why not IAM: suppression alone could be an IAM deny on securityhub:ASFFSyntaxPath/Workflow.Status,
# but only for BatchUpdateFindings (BatchUpdateFindingsV2's StatusId 3 is the same change under
# another name). Ownership and "not lower" need the finding's stored account and severity, which
# IAM conditions never see.
#
# Sound by construction: a rule asking "does this request change X" tests
# `"X" in input.update.fields`. A rule that needs a value refuses members when the field is set
# but its fact is null or absent (`not fact != null` holds exactly then), with the one message of
# cannot_judge(field), rather than staying silent. Rules on finding state in the "complete" pass
# fall back to iterating over the findings, or refuse, when a summary fact is missing.
#
# Two passes (BatchUpdateFindings): first input.enrichment == "pending" (no finding state; a
# violation refuses without any call to Security Hub), then "complete". A rule on finding state
# is a member of state_violations, which deny reads only when `enriched`, so it never fires on
# state that was simply not looked up yet.
#
# Settings: none.
#
# Cost: whole-request guards first (a few comparisons, no builtin); the rules on finding state
# sit behind one rule that tests member and enriched once; input.summary lets the common case
# (every finding the caller's, none above the requested severity, none missing) pass without
# iterating; sprintf only builds the messages of violations.
package hubgate

member if input.principal.role == "member"

# Finding state (a GetFindings lookup, which spends the account's quota of 3 per second) is
# needed only when a rule can use it, and every rule that reads state is about members: an
# administrator's request is judged on the request alone, with no call to Security Hub.
# hubgate reads this in the first pass, and only `false` skips the lookup: undefined looks up
# (a rule body that fails at evaluation is undefined when serving), so the skip is stated for
# the role it is meant for, not inferred from the absence of a reason. A policy set that does
# not define it always looks up. A rule of your own that reads finding state for
# administrators must narrow the `false`.
needs_state if member

needs_state := false if input.principal.role == "administrator"

enriched if input.enrichment == "complete"

# The operations whose input.update carries facts. An import's update carries only fields; its
# findings are judged by imports.rego (and operations.rego for their accounts).
update_op if input.operation != "BatchImportFindings"

finding_ref(f) := {"Id": f.Id, "ProductArn": f.ProductArn}

# The one violation for "the request sets this field, but the input has no value to judge it by".
# Every rule that needs the value uses it, so the gap is reported once however many rules read it.
cannot_judge(field) := {"msg": sprintf("hubgate cannot judge %s: the request sets it but the policy input has no value for it", [field]), "finding": null}

# Severity.Normalized is another spelling of Severity.Label's change (update.severity_rank).
severity_touched if "Severity.Label" in input.update.fields

severity_touched if "Severity.Normalized" in input.update.fields

# --- Whole-request guards ---

# Every rule reads input.update.fields: without it none would fire. Everyone is refused.
deny contains {"msg": "the policy input has no update.fields: hubgate cannot judge this request", "finding": null} if {
	not input.update.fields != null
}

# The operations this set judges; any other one reaching the policies is refused for members.
judged_operations := {"BatchUpdateFindings", "BatchUpdateFindingsV2", "UpdateFindings", "BatchImportFindings"}

deny contains {"msg": sprintf("member accounts may not call %v: the policy set does not judge it", [object.get(input, "operation", null)]), "finding": null} if {
	member
	not input.operation in judged_operations
}

# Without enrichment hubgate cannot tell whose finding it is; members are refused, not trusted.
deny contains {"msg": "finding ownership cannot be verified because enrichment is disabled", "finding": null} if {
	member
	input.enrichment == "disabled"
}

# The enrichment state must fit the operation: BatchUpdateFindings is looked up (pending,
# complete, disabled), the others never are (none). Any other state would leave the ownership
# rules of both kinds silent.
deny contains {"msg": sprintf("finding ownership cannot be verified: enrichment %v does not fit %v", [object.get(input, "enrichment", null), input.operation]), "finding": null} if {
	member
	input.operation == "BatchUpdateFindings"
	not input.enrichment in {"pending", "complete", "disabled"}
}

deny contains {"msg": sprintf("finding ownership cannot be verified: enrichment %v does not fit %v", [object.get(input, "enrichment", null), input.operation]), "finding": null} if {
	member
	input.operation != "BatchUpdateFindings"
	not input.enrichment == "none"
}

# --- Rules on finding state (members, complete pass) ---

# What members may not do, judged on the findings' state: the rules on state (the two guards
# next, and those of Ownership, Severity and Unknown findings below) put their violations in
# state_violations, and this is the one rule that reads it, only for a member in the complete
# pass. So the first pass and administrators enter one rule here, not one per violation: each
# rule the VM enters costs about 4.5 k instructions, however early its body fails. A rule of
# your own on finding state for members can join the set; one for anyone else needs its own
# guards (and `enriched`, so that state not looked up yet is not read as absent).
deny contains v if {
	member
	enriched
	some v in state_violations
}

# The complete pass's shortcuts read input.summary; without its facts they would stay silent.
state_violations contains {"msg": "finding state is incomplete: hubgate cannot judge this request", "finding": null} if {
	not input.summary.accounts != null
}

state_violations contains {"msg": "finding state is incomplete: hubgate cannot judge this request", "finding": null} if {
	not input.summary.missing != null
}

# --- Suppression ---

# Suppressing hides a finding from every view; only administrators may do it. (The fact alone is
# enough: a SUPPRESSED status is refused even if fields failed to list it.)
deny contains {"msg": "member accounts may not suppress findings", "finding": null} if {
	member
	input.update.workflow_status == "SUPPRESSED"
}

deny contains v if {
	member
	"Workflow.Status" in input.update.fields
	not input.update.workflow_status != null
	update_op
	v := cannot_judge("Workflow.Status")
}

# --- Ownership ---

# A member account owns its findings and no one else's. input.summary lets the common case
# (every finding is the caller's) pass without iterating over the findings.
# The one message for a finding that is not one of the member's: of another account, or not
# found at all. hubgate looks findings up with its own role, which sees every account's; two
# messages would tell a member whether an identifier exists in another account, which its own
# credentials cannot. (A member's input cannot tell the two apart either: another account's
# finding reaches it as one not found. The audit record says which it was.)
not_members_finding := "member accounts may only update findings of their own account: this account has no such finding"

state_violations contains {"msg": not_members_finding, "finding": finding_ref(f)} if {
	accounts := input.summary.accounts
	accounts != null # the guard above refuses; iterating over null would be an evaluation error
	some account in accounts
	account != input.principal.account_id
	some f in input.findings
	f.account_id == account
}

# --- Another account's state ---

# The rules below that judge a finding's current state (its severity here, its status in the
# library) name only the member's own findings. Looked up with hubgate's role, another
# account's finding is one the member's own credentials cannot read: a refusal quoting its
# severity ("MEDIUM to LOW"), or saying that it is RESOLVED or unranked, would read it for the
# member, one guessed label at a time. Every found finding of another account (or of none) is
# refused by the ownership rule above, for itself, so leaving it out here refuses nothing less.
own_finding(f) if f.account_id == input.principal.account_id

# --- Severity ---

# Severity may go up, never down, for members. Ranks are computed by hubgate from the label, or
# from Severity.Normalized (0 INFORMATIONAL, 1-39 LOW, 40-69 MEDIUM, 70-89 HIGH, 90-100 CRITICAL).
# Without summary.max_severity_rank the rule iterates instead of skipping (`not ... <=`).
state_violations contains {"msg": msg, "finding": finding_ref(f)} if {
	requested := input.update.severity_rank
	requested != null
	not input.summary.max_severity_rank <= requested
	some f in input.findings
	f.severity_rank > requested
	own_finding(f)
	msg := sprintf("member accounts may not lower a finding's severity (%v to %v)", [f.severity_label, input.update.severity_label])
}

# A severity field is set, but no requested rank: refused in either pass, before any lookup.
deny contains v if {
	member
	some field in ["Severity.Label", "Severity.Normalized"]
	field in input.update.fields
	not input.update.severity_rank != null
	update_op
	v := cannot_judge(field)
}

# A found finding whose current severity has no rank (summary.max_severity_rank leaves it out):
# "not lower" cannot be judged for it. Iterates only when a member changes severity and
# summary.unranked does not say that none is unranked (absent, it iterates).
state_violations contains {"msg": "hubgate cannot see this finding's current severity, so member accounts may not change it", "finding": finding_ref(f)} if {
	severity_touched
	not input.summary.unranked == 0
	some f in input.findings
	f.current != null
	not f.severity_rank != null
	own_finding(f)
}

# --- Unknown findings ---

# An identifier Security Hub does not know, or (in a member's input) one of another account's
# findings, is refused for members with the ownership message: no rule can judge it, and the
# member is not told which it was. Administrators get Security Hub's own answer
# (UnprocessedFindings).
state_violations contains {"msg": not_members_finding, "finding": finding_ref(f)} if {
	input.summary.missing > 0
	some f in input.findings
	not f.current != null
}
