# Closing a finding needs a ticket: setting Workflow.Status to RESOLVED or SUPPRESSED is refused
# unless the same request sets a Note whose text contains a ticket reference (e.g. "SEC-123").
#
# Who: every principal, administrators included. This rule is about the audit trail, not about
# authority: administrators close most findings, and a suppression by an administrator hides the
# finding from every account, so their closures are the ones that most need a reason someone can
# look up. (Who may suppress at all is decided by hubgate.rego.)
#
# Why not IAM: the securityhub:ASFFSyntaxPath/Note.Text condition key only offers string and
# glob matching (StringLike "*SEC-*" also accepts "SEC-" or "see SEC-later"), and an IAM
# condition cannot say "Note.Text must match when Workflow.Status is X" for a pattern.
#
# Settings (policies/data.json, key "hubgate_settings"; both optional, defaults below):
#   "ticket_pattern":      a regular expression (Rust regex syntax) that Note.Text must match
#                          somewhere; in JSON, escape backslashes ("\\b").
#   "ticket_required_for": the Workflow.Status values that need a ticket. [] disables the rule;
#                          ["SUPPRESSED"] asks only suppressions for one.
# The settings live under data.hubgate_settings, not data.hubgate: data.json is merged at the root
# of `data`, and data.hubgate is this package, whose rule names could clash with settings keys.
# An invalid pattern makes every closure fail (refused, never allowed); ticket_test.rego checks
# the shipped pattern, so `hubgate test` catches a typo before it serves.
#
# Cost: one regex.match per evaluation pass, on the request alone (never per finding), and only
# when the requested status needs a ticket. The rule does not need finding state, so it refuses
# in the first pass, before any lookup.
package hubgate

# The settings, or their defaults when data.json leaves them out. Written as two exclusive rules
# rather than with `default`: regorus's interpreter (`hubgate test`) does not apply a `default`
# used by a deny rule in a file that loads after another file defining deny (see "Known
# interpreter issue" in policies/README.md); the served RVM handles both forms.
ticket_pattern := data.hubgate_settings.ticket_pattern

ticket_pattern := `\b[A-Z][A-Z0-9]+-[0-9]+\b` if not data.hubgate_settings.ticket_pattern

ticket_required_for := data.hubgate_settings.ticket_required_for

ticket_required_for := ["RESOLVED", "SUPPRESSED"] if not data.hubgate_settings.ticket_required_for

deny contains {"msg": msg, "finding": null} if {
	input.update.workflow_status in ticket_required_for
	pattern := ticket_pattern

	# No Note in the body: input.update.note is null, .text is undefined, and `not` holds.
	not regex.match(pattern, input.update.note.text)
	msg := sprintf("resolving or suppressing a finding needs a ticket reference in Note.Text (pattern: %s)", [pattern])
}
