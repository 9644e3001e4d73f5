//! The policy input document (version 1): facts computed once in Rust so that rules compare
//! values instead of calling builtins. Documented in policies/README.md.

use serde_json::{json, Map, Value};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use regorus::Value as RValue;

use crate::enrich::{CurrentFinding, FindingKey};
use crate::identity::Principal;

pub const INPUT_VERSION: u64 = 1;

/// Severity labels in rank order; the rank is what "lower" means.
pub const SEVERITY_LABELS: [&str; 5] = ["INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"];

pub fn label_rank(label: &str) -> Option<u64> {
    SEVERITY_LABELS
        .iter()
        .position(|l| *l == label)
        .map(|p| p as u64)
}

/// The label Security Hub derives from `Severity.Normalized` when no label is given.
pub fn label_for_normalized(n: i64) -> Option<&'static str> {
    Some(match n {
        0 => "INFORMATIONAL",
        1..=39 => "LOW",
        40..=69 => "MEDIUM",
        70..=89 => "HIGH",
        90..=100 => "CRITICAL",
        _ => return None,
    })
}

/// The effective label of a severity object: `Label`, else derived from `Normalized`.
pub fn effective_label(severity: &Value) -> Option<&'static str> {
    if let Some(label) = severity.get("Label").and_then(Value::as_str) {
        return label_rank(label).map(|r| SEVERITY_LABELS[r as usize]);
    }
    severity
        .get("Normalized")
        .and_then(Value::as_i64)
        .and_then(label_for_normalized)
}

/// Where the findings' current state stands when the policy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrichment {
    /// First pass, before any upstream lookup: `current` and `account_id` are null.
    Pending,
    /// Lookups done: `current` is the finding, or null when Security Hub does not have it.
    Complete,
    /// `enrichment.enabled = false`: state is never looked up.
    Disabled,
    /// The operation names no findings GetFindings can look up (V2 identifiers, filters,
    /// imports): `claimed_account_id` is what the request says, nothing more.
    NotApplicable,
}

impl Enrichment {
    pub fn as_str(self) -> &'static str {
        match self {
            Enrichment::Pending => "pending",
            Enrichment::Complete => "complete",
            Enrichment::Disabled => "disabled",
            Enrichment::NotApplicable => "none",
        }
    }
}

/// Request facts that do not change between the two evaluation passes.
pub struct RequestFacts<'a> {
    pub operation: &'static str,
    pub principal: &'a Principal,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Map<String, Value>,
    pub source_ip: String,
    pub request_id: &'a str,
    pub time: String,
}

/// The requested change of a BatchUpdateFindings body, normalised so that one rule covers every
/// spelling (e.g. `Severity.Normalized` alone counts as its derived label).
pub fn normalise_update(body: &Value) -> Value {
    let severity = body.get("Severity");
    let label = severity.and_then(effective_label);
    let note = body.get("Note");
    let mut fields: Vec<&str> = Vec::new();
    for (top, subs) in [
        ("Workflow", &["Status"][..]),
        ("Severity", &["Label", "Normalized", "Product"][..]),
        ("Note", &["Text", "UpdatedBy"][..]),
    ] {
        if let Some(obj) = body.get(top).and_then(Value::as_object) {
            for sub in subs {
                if obj.contains_key(*sub) {
                    fields.push(match (top, *sub) {
                        ("Workflow", _) => "Workflow.Status",
                        ("Severity", "Label") => "Severity.Label",
                        ("Severity", "Normalized") => "Severity.Normalized",
                        ("Severity", _) => "Severity.Product",
                        ("Note", "Text") => "Note.Text",
                        _ => "Note.UpdatedBy",
                    });
                }
            }
        }
    }
    for top in [
        "VerificationState",
        "Confidence",
        "Criticality",
        "Types",
        "UserDefinedFields",
        "RelatedFindings",
    ] {
        if body.get(top).is_some() {
            fields.push(top);
        }
    }
    json!({
        "fields": fields,
        "workflow_status": body.pointer("/Workflow/Status"),
        "severity_label": label,
        "severity_rank": label.and_then(label_rank),
        "severity_normalized": severity.and_then(|s| s.get("Normalized")),
        "verification_state": body.get("VerificationState"),
        "confidence": body.get("Confidence"),
        "criticality": body.get("Criticality"),
        "note": note.map(|n| json!({"text": n.get("Text"), "updated_by": n.get("UpdatedBy")})),
        "types": body.get("Types"),
        "user_defined_fields": body.get("UserDefinedFields"),
        "related_findings": body.get("RelatedFindings"),
    })
}

/// What the policy input needs from a request body, whatever operation it is.
pub struct Normalised {
    pub keys: Vec<FindingKey>,
    /// The account each finding belongs to by the request's own say (V2, imports).
    pub claimed_accounts: Vec<Option<String>>,
    pub update: Value,
    /// GetFindings can look these findings up (BatchUpdateFindings only).
    pub enrichable: bool,
    /// Body members moved to input.findings, so they are not in the input twice.
    pub strip: &'static [&'static str],
}

/// OCSF `status_id` of BatchUpdateFindingsV2, as the ASFF workflow status one rule covers.
fn v2_status(id: i64) -> Option<&'static str> {
    Some(match id {
        1 => "NEW",
        2 => "NOTIFIED",
        3 => "SUPPRESSED",
        4 => "RESOLVED",
        5 => "ARCHIVED",
        6 => "DELETED",
        99 => "OTHER",
        _ => return None,
    })
}

/// OCSF `severity_id` as an ASFF severity label (Fatal counts as CRITICAL).
fn v2_severity(id: i64) -> Option<&'static str> {
    Some(match id {
        1 => "INFORMATIONAL",
        2 => "LOW",
        3 => "MEDIUM",
        4 => "HIGH",
        5 | 6 => "CRITICAL",
        _ => return None,
    })
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `input.update` with every member present (null when the operation does not set it) and
/// `set` laid over it, so rules read the same shape whatever the operation.
fn update_with(fields: Vec<&str>, set: Value) -> Value {
    let mut update = json!({
        "fields": fields,
        "workflow_status": null, "severity_label": null, "severity_rank": null,
        "severity_normalized": null, "verification_state": null, "confidence": null,
        "criticality": null, "note": null, "types": null, "user_defined_fields": null,
        "related_findings": null,
    });
    if let (Some(update), Value::Object(set)) = (update.as_object_mut(), set) {
        update.extend(set);
    }
    update
}

/// The findings a list in the body names, with the account each claims to belong to.
fn claimed_findings(
    list: Option<&Value>,
    id: &str,
    product_arn: &str,
    account: &str,
) -> (Vec<FindingKey>, Vec<Option<String>>) {
    list.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|f| {
                    (
                        (
                            str_at(f, id).unwrap_or("").to_string(),
                            str_at(f, product_arn).unwrap_or("").to_string(),
                        ),
                        str_at(f, account).map(str::to_string),
                    )
                })
                .unzip()
        })
        .unwrap_or_default()
}

/// Normalises any policy-capable operation's body, so that "members may not suppress" is one
/// rule whether the request said `Workflow.Status`, `StatusId` or anything else.
pub fn normalise(operation: &str, body: &Value) -> Normalised {
    let empty = Vec::new();
    match operation {
        "BatchUpdateFindingsV2" => {
            let (mut keys, mut claimed) = claimed_findings(
                body.get("FindingIdentifiers"),
                "FindingInfoUid",
                "MetadataProductUid",
                "CloudAccountUid",
            );
            for uid in body
                .get("MetadataUids")
                .and_then(Value::as_array)
                .unwrap_or(&empty)
            {
                keys.push((uid.as_str().unwrap_or("").to_string(), String::new()));
                claimed.push(None);
            }
            let status = body.get("StatusId").and_then(Value::as_i64);
            let severity = body.get("SeverityId").and_then(Value::as_i64);
            let label = severity.and_then(v2_severity);
            let mut fields = Vec::new();
            if status.is_some() {
                fields.push("Workflow.Status");
            }
            if severity.is_some() {
                fields.push("Severity.Label");
            }
            if body.get("Comment").is_some() {
                fields.push("Note.Text");
            }
            let update = update_with(
                fields,
                json!({
                    "workflow_status": status.map(|s| v2_status(s).unwrap_or("UNKNOWN")),
                    "severity_label": label,
                    "severity_rank": label.and_then(label_rank),
                    "note": body.get("Comment").map(|c| json!({"text": c, "updated_by": null})),
                }),
            );
            Normalised {
                keys,
                claimed_accounts: claimed,
                update,
                enrichable: false,
                strip: &["FindingIdentifiers", "MetadataUids"],
            }
        }
        "UpdateFindings" => {
            let mut fields = vec!["RecordState"];
            if body.get("Note").is_some() {
                fields = vec!["Note.Text", "Note.UpdatedBy"];
                if body.get("RecordState").is_some() {
                    fields.push("RecordState");
                }
            }
            let update = update_with(
                fields,
                json!({
                    "record_state": body.get("RecordState"),
                    "note": body.get("Note").map(|n| json!({"text": n.get("Text"), "updated_by": n.get("UpdatedBy")})),
                }),
            );
            Normalised {
                keys: Vec::new(),
                claimed_accounts: Vec::new(),
                update,
                enrichable: false,
                strip: &[],
            }
        }
        "BatchImportFindings" => {
            let (keys, claimed) =
                claimed_findings(body.get("Findings"), "Id", "ProductArn", "AwsAccountId");
            // The imported findings stay in request.body: their content is what is judged.
            Normalised {
                keys,
                claimed_accounts: claimed,
                update: update_with(vec!["Findings"], json!({})),
                enrichable: false,
                strip: &[],
            }
        }
        _ => {
            let keys: Vec<FindingKey> = body
                .get("FindingIdentifiers")
                .and_then(Value::as_array)
                .unwrap_or(&empty)
                .iter()
                .filter_map(|f| {
                    Some((
                        str_at(f, "Id")?.to_string(),
                        str_at(f, "ProductArn")?.to_string(),
                    ))
                })
                .collect();
            let n = keys.len();
            Normalised {
                keys,
                claimed_accounts: vec![None; n],
                update: normalise_update(body),
                enrichable: true,
                strip: &["FindingIdentifiers"],
            }
        }
    }
}

/// The fields of a stored finding that policies see as `current`; the rest (resources,
/// descriptions) stays out of the input to keep evaluation cheap.
pub const CURRENT_FIELDS: [&str; 15] = [
    "AwsAccountId",
    "ProductArn",
    "GeneratorId",
    "ProductName",
    "CompanyName",
    "Types",
    "Severity",
    "Workflow",
    "RecordState",
    "VerificationState",
    "Confidence",
    "Criticality",
    "Note",
    "UserDefinedFields",
    "Compliance",
];

/// Object keys of the finding entries, made once: a regorus string is reference counted, so
/// cloning a key is cheaper than allocating it for every finding of every request.
struct EntryKeys {
    id: RValue,
    product_arn: RValue,
    account_id: RValue,
    severity_label: RValue,
    severity_rank: RValue,
    workflow_status: RValue,
    current: RValue,
}

fn keys() -> &'static EntryKeys {
    static KEYS: OnceLock<EntryKeys> = OnceLock::new();
    KEYS.get_or_init(|| EntryKeys {
        id: RValue::from("Id"),
        product_arn: RValue::from("ProductArn"),
        account_id: RValue::from("account_id"),
        severity_label: RValue::from("severity_label"),
        severity_rank: RValue::from("severity_rank"),
        workflow_status: RValue::from("workflow_status"),
        current: RValue::from("current"),
    })
}

fn opt_str(v: Option<&str>) -> RValue {
    v.map_or(RValue::Null, RValue::from)
}

/// One finding targeted by the request, as policies see it. Built once per finding state and
/// cached with it by enrichment; only findings with no known state are built per request.
pub fn finding_entry(id: &str, product_arn: &str, current: Option<&Value>) -> RValue {
    let k = keys();
    let mut entry = BTreeMap::new();
    entry.insert(k.id.clone(), RValue::from(id));
    entry.insert(k.product_arn.clone(), RValue::from(product_arn));
    match current {
        None => {
            for key in [
                &k.account_id,
                &k.severity_label,
                &k.severity_rank,
                &k.workflow_status,
                &k.current,
            ] {
                entry.insert(key.clone(), RValue::Null);
            }
        }
        Some(f) => {
            let label = f.get("Severity").and_then(effective_label);
            entry.insert(
                k.account_id.clone(),
                opt_str(f.get("AwsAccountId").and_then(Value::as_str)),
            );
            entry.insert(k.severity_label.clone(), opt_str(label));
            entry.insert(
                k.severity_rank.clone(),
                label
                    .and_then(label_rank)
                    .map_or(RValue::Null, RValue::from),
            );
            entry.insert(
                k.workflow_status.clone(),
                opt_str(f.pointer("/Workflow/Status").and_then(Value::as_str)),
            );
            let mut projected = Map::new();
            for field in CURRENT_FIELDS {
                if let Some(v) = f.get(field) {
                    projected.insert(field.to_string(), v.clone());
                }
            }
            entry.insert(k.current.clone(), RValue::from(Value::Object(projected)));
        }
    }
    RValue::from(entry)
}

/// Facts over all targeted findings, so that rules can rule a request in with a few
/// comparisons and iterate over the findings only to name the ones that violate.
#[derive(Default)]
struct Summary {
    accounts: BTreeSet<String>,
    max_severity_rank: Option<u64>,
    missing: u64,
}

impl Summary {
    fn add(&mut self, f: &CurrentFinding) {
        if let Some(a) = &f.account_id {
            if !self.accounts.contains(a) {
                self.accounts.insert(a.clone());
            }
        }
        self.max_severity_rank = self.max_severity_rank.max(f.severity_rank);
    }

    fn into_value(self, enrichment: Enrichment) -> RValue {
        let mut out = BTreeMap::new();
        if enrichment == Enrichment::Complete {
            let accounts: Vec<RValue> = self.accounts.into_iter().map(RValue::from).collect();
            out.insert(RValue::from("accounts"), RValue::from(accounts));
            out.insert(
                RValue::from("max_severity_rank"),
                self.max_severity_rank.map_or(RValue::Null, RValue::from),
            );
            out.insert(RValue::from("missing"), RValue::from(self.missing));
        }
        RValue::from(out)
    }
}

/// The input document for one evaluation pass. `current` holds what enrichment found.
pub fn document(
    facts: &RequestFacts<'_>,
    body_without_ids: &Value,
    update: &Value,
    keys: &[FindingKey],
    current: Option<&HashMap<FindingKey, Arc<CurrentFinding>>>,
    enrichment: Enrichment,
) -> RValue {
    document_with_claims(
        facts,
        body_without_ids,
        update,
        keys,
        &[],
        current,
        enrichment,
    )
}

/// As `document`, with the accounts the request itself claims for its findings.
pub fn document_with_claims(
    facts: &RequestFacts<'_>,
    body_without_ids: &Value,
    update: &Value,
    keys: &[FindingKey],
    claimed_accounts: &[Option<String>],
    current: Option<&HashMap<FindingKey, Arc<CurrentFinding>>>,
    enrichment: Enrichment,
) -> RValue {
    let mut summary = Summary::default();
    let findings: Vec<RValue> = match (enrichment, current) {
        (Enrichment::Complete, Some(current)) => keys
            .iter()
            .map(|key| match current.get(key) {
                Some(state) => {
                    summary.add(state);
                    state.entry.clone()
                }
                None => {
                    summary.missing += 1;
                    finding_entry(&key.0, &key.1, None)
                }
            })
            .collect(),
        // Before enrichment (or without it) only the identifiers are known; state fields are
        // absent, so a rule that reads them stays undefined instead of seeing a false null.
        _ => {
            let k = self::keys();
            let mut arn: Option<(&str, RValue)> = None;
            let claimed_key = RValue::from("claimed_account_id");
            keys.iter()
                .enumerate()
                .map(|(i, (id, product_arn))| {
                    let arn_value = match &arn {
                        Some((a, v)) if *a == product_arn.as_str() => v.clone(),
                        _ => {
                            let v = RValue::from(product_arn.as_str());
                            arn = Some((product_arn.as_str(), v.clone()));
                            v
                        }
                    };
                    let mut entry = BTreeMap::new();
                    entry.insert(k.id.clone(), RValue::from(id.as_str()));
                    entry.insert(k.product_arn.clone(), arn_value);
                    if let Some(Some(account)) = claimed_accounts.get(i) {
                        entry.insert(claimed_key.clone(), RValue::from(account.as_str()));
                    }
                    RValue::from(entry)
                })
                .collect()
        }
    };
    let mut doc = BTreeMap::new();
    let mut put = |k: &str, v: RValue| {
        doc.insert(RValue::from(k), v);
    };
    put("version", RValue::from(INPUT_VERSION));
    put("operation", RValue::from(facts.operation));
    put("enrichment", RValue::from(enrichment.as_str()));
    put(
        "principal",
        RValue::from(serde_json::to_value(facts.principal).unwrap_or(Value::Null)),
    );
    put(
        "request",
        RValue::from(json!({
            "method": facts.method,
            "path": facts.path,
            "headers": facts.headers,
            "body": body_without_ids,
            "source_ip": facts.source_ip,
            "request_id": facts.request_id,
            "time": facts.time,
        })),
    );
    put("findings", RValue::from(findings));
    put("summary", summary.into_value(enrichment));
    put("update", RValue::from(update.clone()));
    RValue::from(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_maps_to_labels_at_the_documented_edges() {
        for (n, l) in [
            (0, "INFORMATIONAL"),
            (1, "LOW"),
            (39, "LOW"),
            (40, "MEDIUM"),
            (69, "MEDIUM"),
            (70, "HIGH"),
            (89, "HIGH"),
            (90, "CRITICAL"),
            (100, "CRITICAL"),
        ] {
            assert_eq!(label_for_normalized(n), Some(l), "{n}");
        }
        assert_eq!(label_for_normalized(101), None);
        assert_eq!(label_for_normalized(-1), None);
    }

    #[test]
    fn update_counts_normalized_as_its_label() {
        let u = normalise_update(&json!({"Severity": {"Normalized": 10}}));
        assert_eq!(u["severity_label"], "LOW");
        assert_eq!(u["severity_rank"], 1);
        assert_eq!(u["fields"], json!(["Severity.Normalized"]));
        let u = normalise_update(
            &json!({"Severity": {"Label": "HIGH"}, "Workflow": {"Status": "SUPPRESSED"}}),
        );
        assert_eq!(u["severity_rank"], 3);
        assert_eq!(u["workflow_status"], "SUPPRESSED");
        let u = normalise_update(&json!({"Note": {"Text": "t", "UpdatedBy": "u"}}));
        assert_eq!(u["severity_rank"], Value::Null);
        assert_eq!(u["note"]["text"], "t");
    }

    #[test]
    fn current_state_is_projected_and_ranked() {
        let f = json!({"AwsAccountId": "222222222222", "Severity": {"Normalized": 75},
                       "Workflow": {"Status": "NEW"}, "Resources": [{"Id": "big"}]});
        let e: Value = serde_json::to_value(finding_entry("f", "p", Some(&f))).unwrap();
        assert_eq!(e["Id"], "f");
        assert_eq!(e["account_id"], "222222222222");
        assert_eq!(e["severity_label"], "HIGH");
        assert_eq!(e["severity_rank"], 3);
        assert_eq!(e["workflow_status"], "NEW");
        assert!(e["current"].get("Resources").is_none());
        assert_eq!(e["current"]["Severity"]["Normalized"], 75);
        let e: Value = serde_json::to_value(finding_entry("f", "p", None)).unwrap();
        assert_eq!(e["current"], Value::Null);
        assert_eq!(e["severity_rank"], Value::Null);
    }
}
