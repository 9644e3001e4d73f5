# Tests of policies/operations.rego (BatchUpdateFindingsV2, UpdateFindings, BatchImportFindings).
package operations_test

import data.hubgate_inputs as t

member := t.member

admin := t.admin

own := t.claimed("f1", t.own_account)

theirs := t.claimed("f2", t.other_account)

own_account := "member accounts may only update findings of their own account"

v2_severity := "member accounts may not change severity through BatchUpdateFindingsV2: hubgate cannot see the current severity"

metadata_uids := "member accounts must name findings by FindingIdentifiers (with CloudAccountUid), not MetadataUids"

test_v2_suppress_is_denied_like_v1 if {
	"member accounts may not suppress findings" in t.msgs(t.v2(member, [own], t.status("SUPPRESSED")))
}

test_v2_comment_on_own_finding_allowed if {
	upd := t.update({"fields": ["Note.Text"], "note": {"text": "looked at it", "updated_by": null}})
	count(t.deny(t.v2(member, [own], upd))) == 0
}

test_v2_resolve_own_allowed if {
	count(t.deny(t.v2(member, [own], t.status("RESOLVED")))) == 0
}

test_v2_other_account_denied if {
	t.deny(t.v2(member, [own, theirs], t.nothing)) == {{"msg": own_account, "finding": t.ref("f2")}}
	count(t.deny(t.v2(admin, [own, theirs], t.nothing))) == 0
}

test_matrix_own_account_v2_metadata_uids_refused_for_members if {
	t.msgs(t.v2(member, [t.by_uid("uid-1")], t.nothing)) == {metadata_uids}
	count(t.deny(t.v2(admin, [t.by_uid("uid-1")], t.nothing))) == 0
}

# A null claim counts as none (not as a foreign account, not as the member's).
test_own_account_null_claimed_account_id if {
	t.msgs(t.v2(member, [t.claimed("f1", null)], t.nothing)) == {metadata_uids}
	"member accounts must name each finding's account in BatchImportFindings: hubgate cannot look findings up" in t.msgs(t.bif(member, [t.claimed("f1", null)], t.provider_fields))
}

# Every SeverityId is a severity change, whatever rank it maps to (0 UNKNOWN and 99 OTHER rank 0,
# the bug that let SeverityId 0 through when it had no rank).
test_matrix_lower_severity_v2_refused_for_members if {
	every sev in [["UNKNOWN", 0], ["INFORMATIONAL", 0], ["LOW", 1], ["CRITICAL", 4], ["OTHER", 0]] {
		t.msgs(t.v2(member, [own], t.severity(sev[0], sev[1]))) == {v2_severity}
	}
	count(t.deny(t.v2(admin, [theirs], t.severity("LOW", 1)))) == 0
}

# Severity.Label set but no label or rank: still refused, with the "cannot judge" reason too.
test_v2_severity_null_severity_rank if {
	t.msgs(t.v2(member, [own], t.null_fact(["Severity.Label"]))) == {v2_severity, t.cannot("Severity.Label")}
	t.msgs(t.v2(member, [own], t.absent_fact(["Severity.Label"], "severity_rank"))) == {v2_severity, t.cannot("Severity.Label")}
	count(t.deny(t.v2(admin, [own], t.null_fact(["Severity.Label"])))) == 0
}

# UpdateFindings names no findings (a filter): ownership cannot be judged, members are refused.
test_matrix_own_account_update_findings_refused_for_members if {
	archive := t.update({"fields": ["RecordState"], "record_state": "ARCHIVED"})
	t.msgs(t.uf(member, archive)) == {"member accounts may not use UpdateFindings: it changes every finding a filter matches"}
	count(t.deny(t.uf(admin, archive))) == 0
	count(t.deny(t.uf(admin, t.note_only("x")))) == 0
}

test_import_of_another_accounts_finding_denied if {
	d := t.deny(t.bif(member, [own, theirs], t.provider_fields)) with data.hubgate_settings.member_imports as "own-findings"
	d == {{"msg": own_account, "finding": t.ref("f2")}}
}
