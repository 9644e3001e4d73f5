//! The policy input document (version 1): facts computed once in Rust so that rules compare
//! values instead of calling builtins. Documented in policies/README.md.

use serde_json::{json, Map, Value};

use crate::enrich::CurrentFinding;
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
}

impl Enrichment {
    pub fn as_str(self) -> &'static str {
        match self {
            Enrichment::Pending => "pending",
            Enrichment::Complete => "complete",
            Enrichment::Disabled => "disabled",
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

/// The fields of a stored finding that policies see as `current`; the rest (resources,
/// descriptions) stays out of the input to keep evaluation cheap.
const CURRENT_FIELDS: [&str; 14] = [
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
];

fn project(finding: &Value) -> Value {
    let mut out = Map::new();
    for f in CURRENT_FIELDS {
        if let Some(v) = finding.get(f) {
            out.insert(f.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// One finding targeted by the request, with its current state when known.
pub fn finding_entry(id: &str, product_arn: &str, current: Option<&CurrentFinding>) -> Value {
    match current {
        None => json!({
            "Id": id, "ProductArn": product_arn,
            "account_id": null, "severity_label": null, "severity_rank": null,
            "workflow_status": null, "current": null,
        }),
        Some(c) => {
            let f = &c.finding;
            let label = f.get("Severity").and_then(effective_label);
            json!({
                "Id": id,
                "ProductArn": product_arn,
                "account_id": f.get("AwsAccountId"),
                "severity_label": label,
                "severity_rank": label.and_then(label_rank),
                "workflow_status": f.pointer("/Workflow/Status"),
                "current": project(f),
            })
        }
    }
}

/// Assembles the whole input document.
pub fn build(
    facts: &RequestFacts<'_>,
    body_without_ids: &Value,
    update: &Value,
    findings: Vec<Value>,
    enrichment: Enrichment,
) -> Value {
    json!({
        "version": INPUT_VERSION,
        "operation": facts.operation,
        "enrichment": enrichment.as_str(),
        "principal": facts.principal,
        "request": {
            "method": facts.method,
            "path": facts.path,
            "headers": facts.headers,
            "body": body_without_ids,
            "source_ip": facts.source_ip,
            "request_id": facts.request_id,
            "time": facts.time,
        },
        "findings": findings,
        "update": update,
    })
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
        let f = CurrentFinding {
            finding: json!({"AwsAccountId": "222222222222", "Severity": {"Normalized": 75},
                            "Workflow": {"Status": "NEW"}, "Resources": [{"Id": "big"}]}),
        };
        let e = finding_entry("f", "p", Some(&f));
        assert_eq!(e["account_id"], "222222222222");
        assert_eq!(e["severity_rank"], 3);
        assert_eq!(e["workflow_status"], "NEW");
        assert!(e["current"].get("Resources").is_none());
        let e = finding_entry("f", "p", None);
        assert_eq!(e["current"], Value::Null);
    }
}
