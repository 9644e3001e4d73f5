//! The shipped rules' settings that name request fields: each `member_forbidden_fields` entry
//! of `data.json` must be a field some request under policy can set. fields.rego compares the
//! entries with `input.update.fields`, so a misspelt path (`Workflow.status`) forbade nothing,
//! silently; a set holding one does not load (serve, reload and `check` alike).

use std::path::PathBuf;

use serde_json::Value;

use super::FileTexts;

/// A `hubgate_settings.member_forbidden_fields` entry that names no field of any request under
/// policy.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error(
    "{}: hubgate_settings.member_forbidden_fields: {entry} is no field of BatchUpdateFindings, \
     BatchUpdateFindingsV2, UpdateFindings or an imported finding (misspelt?), so it forbids \
     nothing; list ASFF paths as input.update.fields names them (Workflow.Status, Severity, \
     FindingProviderFields.Severity) or V2's StatusId, SeverityId, Comment",
    file.display()
)]
pub struct UnknownForbiddenField {
    pub file: PathBuf,
    pub entry: Value,
}

/// Every unknown entry of a set, one line each.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct UnknownForbiddenFields(pub Vec<UnknownForbiddenField>);

/// Where the fields a request can set start in each operation's schema (`schemas/<Op>.json`):
/// (operation, pointer to the object whose properties are fields, members that name findings
/// rather than set anything).
const FIELD_ROOTS: [(&str, &str, &[&str]); 4] = [
    ("BatchUpdateFindings", "", &["FindingIdentifiers"]),
    (
        "BatchUpdateFindingsV2",
        "",
        &["FindingIdentifiers", "MetadataUids"],
    ),
    ("UpdateFindings", "", &["Filters"]),
    ("BatchImportFindings", "/properties/Findings", &[]),
];

/// The node a schema node stands for: its `$ref` (`#/$defs/X`) followed, and an array's items.
fn schema_node<'a>(doc: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..32 {
        if let Some(target) = node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| doc.pointer(p))
        {
            node = target;
        } else if node.get("type").and_then(Value::as_str) == Some("array") {
            match node.get("items") {
                Some(items) => node = items,
                None => break,
            }
        } else {
            break;
        }
    }
    node
}

/// Whether the dotted `path` names a member under `node`; below a map (an object whose
/// `additionalProperties` is a schema: UserDefinedFields, ProductFields) any key does.
fn schema_has(doc: &Value, node: &Value, path: &str, skip: &[&str]) -> bool {
    let mut node = schema_node(doc, node);
    for (i, segment) in path.split('.').enumerate() {
        if i == 0 && skip.contains(&segment) {
            return false;
        }
        match node.get("properties").and_then(|p| p.get(segment)) {
            Some(next) => node = schema_node(doc, next),
            None => {
                return node
                    .get("additionalProperties")
                    .is_some_and(Value::is_object)
            }
        }
    }
    true
}

/// The entries of `hubgate_settings.member_forbidden_fields` in these data.json texts that no
/// request can set, read against the operation schemas given (by operation name; an operation
/// whose schema is not loaded is left out). V2's member names (StatusId, SeverityId, Comment)
/// count: fields.rego takes them for the paths they change. A data text that is not JSON is
/// the engine's to refuse.
pub fn unknown_forbidden_fields<'a>(
    data: &FileTexts,
    schemas: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<UnknownForbiddenField> {
    let schemas: Vec<(&str, Value)> = schemas
        .into_iter()
        .filter_map(|(op, text)| Some((op, serde_json::from_str::<Value>(text).ok()?)))
        .collect();
    let roots: Vec<(&Value, &str, &[&str])> = FIELD_ROOTS
        .iter()
        .filter_map(|(op, pointer, skip)| {
            let (_, doc) = schemas.iter().find(|(name, _)| name == op)?;
            Some((doc, *pointer, *skip))
        })
        .collect();
    let mut out = Vec::new();
    for (file, text) in data {
        let Ok(doc) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        let Some(Value::Array(entries)) = doc.pointer("/hubgate_settings/member_forbidden_fields")
        else {
            continue;
        };
        for entry in entries {
            let known = entry.as_str().is_some_and(|path| {
                roots.iter().any(|(doc, pointer, skip)| {
                    doc.pointer(pointer)
                        .is_some_and(|root| schema_has(doc, root, path, skip))
                })
            });
            if !known {
                out.push(UnknownForbiddenField {
                    file: file.clone(),
                    entry: entry.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The shipped schemas: every path an operation can set passes, a misspelt one is named.
    #[test]
    fn forbidden_fields_are_read_against_the_schemas() {
        let known = json!([
            "Types",
            "Severity",
            "Severity.Label",
            "Workflow.Status",
            "WorkflowState",
            "Note.Text",
            "FindingProviderFields",
            "FindingProviderFields.Severity.Label",
            "Compliance.Status",
            "Resources.Tags",
            "UserDefinedFields.reviewer",
            "RecordState",
            "StatusId",
            "SeverityId",
            "Comment",
            "VerificationState",
            "RelatedFindings"
        ]);
        // misspelt, or naming findings rather than a change
        let unknown = json!([
            "Workflow.status",
            "Severty",
            "Note.Txt",
            "FindingIdentifiers",
            "MetadataUids",
            "Filters",
            "Compliance.Stat",
            "",
            5
        ]);
        let entries: Vec<Value> = [&known, &unknown]
            .iter()
            .flat_map(|list| list.as_array().unwrap().iter().cloned())
            .collect();
        let data = vec![(
            PathBuf::from("data.json"),
            json!({"hubgate_settings": {"member_forbidden_fields": entries}}).to_string(),
        )];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schemas");
        let texts: Vec<(&str, String)> = FIELD_ROOTS
            .iter()
            .map(|(op, _, _)| {
                let text = std::fs::read_to_string(dir.join(format!("{op}.json"))).unwrap();
                (*op, text)
            })
            .collect();
        let found: Vec<Value> =
            unknown_forbidden_fields(&data, texts.iter().map(|(op, t)| (*op, t.as_str())))
                .into_iter()
                .map(|u| u.entry)
                .collect();
        assert_eq!(&found, unknown.as_array().unwrap());
        // With no operation's schema loaded, no entry names a field.
        assert_eq!(
            unknown_forbidden_fields(&data, std::iter::empty()).len(),
            entries.len()
        );
    }
}
