# Library rule "ticket" (default: warn). Closing a finding needs a ticket: setting
# Workflow.Status to RESOLVED, SUPPRESSED, ARCHIVED or DELETED (V2's StatusId 4, 3, 5, 6), or
# RecordState to ARCHIVED, is a violation unless the same request sets a note whose text
# contains a ticket reference (e.g. "SEC-123").
#
# Who: every principal, administrators included. This rule is about the audit trail, not about
# authority: administrators close most findings, and a suppression by an administrator hides the
# finding from every account, so their closures are the ones that most need a reason someone can
# look up. (Who may suppress at all is decided by hubgate.rego.)
#
# Operations: BatchUpdateFindings (Note.Text), BatchUpdateFindingsV2 (StatusId 3, 4, 5 or 6, the
# ticket in Comment) and UpdateFindings (RecordState ARCHIVED, the ticket in Note.Text: it takes
# every finding its filter matches out of the default views, as V2's ARCHIVED status takes one;
# the one entry "ARCHIVED" of ticket_required_for asks a ticket of both). The reopen rule counts
# the same four statuses as closed. BatchImportFindings: Security Hub does not let an import
# change an existing finding's Workflow (and a member's import may not set Workflow.* at all,
# imports.rego), but a re-import does change its RecordState: each imported finding with
# RecordState ARCHIVED needs the ticket in its own Note.Text, the one note an import carries
# (judged on request.body.Findings, as an import's facts are null; a violation per finding).
# Workflow.Status set without a status to judge is a violation (for everyone: the rule cannot
# tell whether it is a closure).
#
# Why not IAM: the securityhub:ASFFSyntaxPath/Note.Text condition key only offers string and
# glob matching (StringLike "*SEC-*" also accepts "SEC-" or "see SEC-later"), and an IAM
# condition cannot say "Note.Text must match when Workflow.Status is X" for a pattern.
#
# Settings (policies/data.json, key "hubgate_settings"; all optional, defaults below):
#   "library": {"ticket": "enforce" | "warn" | "off"}   default "warn" (see library.rego)
#   "ticket_pattern":      a regular expression (Rust regex syntax) that Note.Text must match
#                          somewhere; in JSON, escape backslashes ("\\b").
#   "ticket_required_for": the Workflow.Status values that need a ticket ("ARCHIVED" also
#                          stands for RecordState ARCHIVED). [] disables the rule;
#                          ["SUPPRESSED"] asks only suppressions for one.
# The settings live under data.hubgate_settings, not data.hubgate: data.json is merged at the root
# of `data`, and data.hubgate is this package, whose rule names could clash with settings keys.
# An invalid pattern makes every closure fail (a violation, or a policy error; never allowed);
# ticket_test.rego checks the shipped pattern, so `hubgate test` catches a typo before it serves.
#
# Cost: one regex.match per evaluation pass, on the request alone (never per finding state), and
# only when the mode is not "off" and the requested status needs a ticket; an import, one per
# imported finding that sets RecordState ARCHIVED. The rule does not need finding state, so when
# enforced it refuses in the first pass, before any lookup.
package hubgate

# The settings, or their defaults when data.json leaves them out. Written as two exclusive rules
# rather than with `default`: regorus's interpreter (`hubgate test`) does not apply a `default`
# used by a deny rule in a file that loads after another file defining deny (see "Known
# interpreter issue" in policies/README.md); the served RVM handles both forms.
ticket_pattern := data.hubgate_settings.ticket_pattern

ticket_pattern := `\b[A-Z][A-Z0-9]+-[0-9]+\b` if not data.hubgate_settings.ticket_pattern

ticket_required_for := data.hubgate_settings.ticket_required_for

ticket_required_for := ["RESOLVED", "SUPPRESSED", "ARCHIVED", "DELETED"] if not data.hubgate_settings.ticket_required_for

ticket_msg := sprintf("closing a finding needs a ticket reference in Note.Text (pattern: %s)", [ticket_pattern])

# The request closes findings in a way that needs a ticket: a status in ticket_required_for, or
# RecordState ARCHIVED when "ARCHIVED" is in it (archived as a record or as a status, the finding
# leaves the default views alike).
ticket_closes if input.update.workflow_status in ticket_required_for

ticket_closes if {
	input.update.record_state == "ARCHIVED"
	"ARCHIVED" in ticket_required_for
}

# An import archiving a finding: the ticket must be in that finding's own note (another
# finding's ticket in the same batch documents another closure). Iterates over the imported
# findings only when some finding sets RecordState and ARCHIVED needs a ticket.
ticket_violations contains {"msg": ticket_msg, "finding": finding_ref(f)} if {
	input.operation == "BatchImportFindings"
	"RecordState" in input.update.fields
	"ARCHIVED" in ticket_required_for
	some f in input.request.body.Findings
	f.RecordState == "ARCHIVED"
	not ticket_in_note(f)
}

ticket_in_note(f) if regex.match(ticket_pattern, f.Note.Text)

# No note text at all (no Note, or a note without text).
ticket_violations contains {"msg": ticket_msg, "finding": null} if {
	ticket_closes
	not input.update.note.text != null
}

ticket_violations contains {"msg": ticket_msg, "finding": null} if {
	ticket_closes
	text := input.update.note.text
	text != null
	not regex.match(ticket_pattern, text)
}

ticket_violations contains v if {
	"Workflow.Status" in input.update.fields
	not input.update.workflow_status != null
	update_op
	v := cannot_judge("Workflow.Status")
}

ticket_violations contains v if {
	"RecordState" in input.update.fields
	not input.update.record_state != null
	update_op
	v := cannot_judge("RecordState")
}

deny contains v if {
	library_enforced("ticket")
	some v in ticket_violations
}

warn contains v if {
	library_warned("ticket")
	some v in ticket_violations
}
