# Input documents as hubgate builds them (version 1, with the input.update of policies/README.md),
# shared by every test file: `import data.hubgate_inputs as t`. No test_ rules here.
package hubgate_inputs

arn := "arn:aws:securityhub:us-east-1::product/aws/securityhub"

own_account := "222222222222"

other_account := "333333333333"

member := {"id": "m", "account_id": own_account, "role": "member", "attributes": {}}

admin := {"id": "a", "account_id": "111111111111", "role": "administrator", "attributes": {}}

# --- input.update ---

# Every fact null unless given. A test gives `fields` as hubgate would list them; a test of a
# null or absent fact lists the field and leaves the fact null (or removes it).
no_facts := {
	"fields": [], "workflow_status": null,
	"severity_label": null, "severity_rank": null, "severity_normalized": null, "severity_product": null,
	"note": null, "verification_state": null, "confidence": null, "criticality": null,
	"types": null, "user_defined_fields": null, "related_findings": null, "record_state": null,
}

update(u) := object.union(no_facts, u)

nothing := update({})

status(s) := update({"fields": ["Workflow.Status"], "workflow_status": s})

note(text) := {"text": text, "updated_by": "t"}

status_note(s, text) := update({"fields": ["Note.Text", "Note.UpdatedBy", "Workflow.Status"], "workflow_status": s, "note": note(text)})

note_only(text) := update({"fields": ["Note.Text", "Note.UpdatedBy"], "note": note(text)})

severity(label, rank) := update({"fields": ["Severity.Label"], "severity_label": label, "severity_rank": rank})

# The field is listed, its fact is null (`null_fact`) or absent from input.update (`absent_fact`).
null_fact(fields) := update({"fields": fields})

absent_fact(fields, fact) := object.remove(update({"fields": fields}), [fact])

# --- findings ---

# A finding Security Hub returned (complete pass).
finding(id, account, label, rank, wf) := {
	"Id": id, "ProductArn": arn, "account_id": account,
	"severity_label": label, "severity_rank": rank, "workflow_status": wf,
	"current": {
		"AwsAccountId": account, "ProductArn": arn, "Severity": {"Label": label},
		"Workflow": {"Status": wf}, "RecordState": "ACTIVE",
	},
}

own(id) := finding(id, own_account, "HIGH", 3, "NEW")

own_in(id, wf) := finding(id, own_account, "HIGH", 3, wf)

# An identifier Security Hub did not return.
missing(id) := {
	"Id": id, "ProductArn": arn, "account_id": null, "severity_label": null,
	"severity_rank": null, "workflow_status": null, "current": null,
}

ident(f) := {"Id": f.Id, "ProductArn": f.ProductArn}

ref(id) := {"Id": id, "ProductArn": arn}

# As hubgate computes it: accounts and ranks of the found findings (nulls left out).
summary(findings) := {
	"accounts": sort({f.account_id | some f in findings; f.current != null; f.account_id != null}),
	"max_severity_rank": max_rank(findings),
	"missing": count([f | some f in findings; f.current == null]),
	"unranked": count([f | some f in findings; f.current != null; not f.severity_rank != null]),
}

ranks(findings) := {f.severity_rank | some f in findings; f.current != null; f.severity_rank != null}

max_rank(findings) := max(ranks(findings)) if count(ranks(findings)) > 0

max_rank(findings) := null if count(ranks(findings)) == 0

# --- documents, one per operation ---

# BatchUpdateFindings in a pass. "pending" and "disabled" carry identifiers only and summary {}.
buf(principal, phase, findings, u) := {
	"version": 1, "operation": "BatchUpdateFindings", "enrichment": phase,
	"principal": principal, "request": {}, "update": u,
	"findings": entries(phase, findings), "summary": summary_in(phase, findings),
}

entries(phase, findings) := findings if phase == "complete"

entries(phase, findings) := [ident(f) | some f in findings] if phase != "complete"

summary_in(phase, findings) := summary(findings) if phase == "complete"

summary_in(phase, _) := {} if phase != "complete"

# Findings named by the request itself (V2 CloudAccountUid, import AwsAccountId).
claimed(id, account) := {"Id": id, "ProductArn": arn, "claimed_account_id": account}

# A V2 MetadataUid: no account.
by_uid(uid) := {"Id": uid, "ProductArn": ""}

v2(principal, findings, u) := {
	"version": 1, "operation": "BatchUpdateFindingsV2", "enrichment": "none",
	"principal": principal, "request": {}, "findings": findings, "summary": {}, "update": u,
}

uf(principal, u) := {
	"version": 1, "operation": "UpdateFindings", "enrichment": "none",
	"principal": principal, "request": {}, "findings": [], "summary": {}, "update": u,
}

# An import: every fact null, only fields (the union over the imported findings).
bif(principal, findings, fields) := {
	"version": 1, "operation": "BatchImportFindings", "enrichment": "none",
	"principal": principal, "request": {}, "findings": findings, "summary": {},
	"update": update({"fields": fields}),
}

# The fields of a minimal ASFF import: Severity is required, so every real import sets it.
asff_fields := [
	"AwsAccountId", "CreatedAt", "Description", "GeneratorId", "Id", "ProductArn",
	"Resources", "SchemaVersion", "Severity.Label", "Title", "Types", "UpdatedAt",
]

# The same finding with its severity only as the provider's (FindingProviderFields.Severity).
provider_fields := [
	"AwsAccountId", "CreatedAt", "Description", "FindingProviderFields.Severity", "GeneratorId",
	"Id", "ProductArn", "RecordState", "Resources", "SchemaVersion", "Title", "Types", "UpdatedAt",
]

# doc with `key` replaced by `value` (object.union would merge nested objects).
put(doc, key, value) := object.union(object.remove(doc, [key]), {key: value})

# --- results ---

cannot(field) := sprintf("hubgate cannot judge %s: the request sets it but the policy input has no value for it", [field])

deny(doc) := d if {
	d := data.hubgate.deny with input as doc
}

warn(doc) := w if {
	w := data.hubgate.warn with input as doc
}

msgs(doc) := {v.msg | some v in deny(doc)}

warn_msgs(doc) := {v.msg | some v in warn(doc)}

# deny and warn with the library switches set to `library` (e.g. {"reopen": "enforce"}).
decide(doc, library) := {"deny": d, "warn": w} if {
	d := data.hubgate.deny with input as doc with data.hubgate_settings.library as library
	w := data.hubgate.warn with input as doc with data.hubgate_settings.library as library
}

# All four library rules in one mode.
all_library(mode) := {"ticket": mode, "verification": mode, "scores": mode, "reopen": mode}
