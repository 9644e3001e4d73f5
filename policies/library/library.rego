# The opt-in policy library: rules that are opinions about how to triage, not the seed's policy.
#
# What: the switch every library rule reads. Each rule puts its violations in a set of its own
# (e.g. ticket_violations) and copies them into deny or warn according to
#     data.hubgate_settings.library.<name> = "enforce" | "warn" | "off"     (default "warn")
# "enforce": into data.hubgate.deny (refuses); "warn": into data.hubgate.warn (the audit record's
# result.warnings, never refuses); "off": not evaluated. Any other value counts as "enforce": a
# typo never switches a rule off silently. Names: ticket, verification, scores, reopen.
#
# Who: as each rule says (ticket: everyone; the others: members).
#
# Why not IAM: see each rule.
#
# Settings: policies/data.json, e.g.
#     {"hubgate_settings": {"library": {"ticket": "enforce", "reopen": "warn", "scores": "off"}}}
#
# Cost: one data lookup per rule and evaluation; an "off" rule costs nothing more. A rule's own
# guards run only when its mode is enforce or warn.
package hubgate

library_enforced(name) if {
	mode := data.hubgate_settings.library[name]
	mode != "warn"
	mode != "off"
}

library_warned(name) if data.hubgate_settings.library[name] == "warn"

library_warned(name) if not data.hubgate_settings.library[name]
