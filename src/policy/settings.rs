//! The shipped rules' settings (`hubgate_settings` in `data.json`), read when a set loads (serve,
//! reload and `check` alike), so that a setting the rules would read as matching nothing makes
//! the set fail to load instead of switching its rule off silently:
//! - each `member_forbidden_fields` entry must be a field some request under policy can set.
//!   fields.rego compares the entries with `input.update.fields`, so a misspelt path
//!   (`Workflow.status`) forbade nothing;
//! - each setting the rules iterate over or match must have the shape they read. Rego gives no
//!   iterations over a string and `x in "RESOLVED"` never holds, so `member_forbidden_fields =
//!   "RecordState"` forbade nothing, `ticket_required_for = "RESOLVED"` required no ticket, and
//!   `library = "enforce"` (not an object of rule names) left every library rule warning;
//! - each status `member_workflow_statuses` and `ticket_required_for` list must be one
//!   `input.update.workflow_status` can be: `"Resolved"` matched no request.

use std::path::PathBuf;

use serde_json::Value;

use super::input::WORKFLOW_STATUSES;
use super::FileTexts;

/// A `hubgate_settings` entry the shipped rules would read as matching nothing.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BadSetting {
    /// A `member_forbidden_fields` entry that names no field of any request under policy.
    #[error(
        "{}: hubgate_settings.member_forbidden_fields: {entry} is no field of \
         BatchUpdateFindings, BatchUpdateFindingsV2, UpdateFindings or an imported finding \
         (misspelt?), so it forbids nothing; list ASFF paths as input.update.fields names them \
         (Workflow.Status, Severity, FindingProviderFields.Severity) or V2's StatusId, \
         SeverityId, Comment",
        file.display()
    )]
    UnknownForbiddenField { file: PathBuf, entry: Value },
    /// A setting whose JSON type is not the one its rule reads.
    #[error(
        "{}: hubgate_settings{}{key}: {value} is not {expected}, so {effect}",
        file.display(),
        if key.is_empty() { "" } else { "." }
    )]
    WrongType {
        file: PathBuf,
        key: &'static str,
        value: Value,
        expected: &'static str,
        effect: &'static str,
    },
    /// A status entry that no request's `input.update.workflow_status` can be.
    #[error(
        "{}: hubgate_settings.{key}: {entry} is no Workflow.Status a request can set \
         (misspelt?), so {effect}; the statuses are {}",
        file.display(),
        WORKFLOW_STATUSES.join(", ")
    )]
    UnknownStatus {
        file: PathBuf,
        key: &'static str,
        entry: Value,
        effect: &'static str,
    },
}

/// Every bad setting of a set, one line each.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct BadSettings(pub Vec<BadSetting>);

/// The settings that are lists of statuses, with what an entry outside the vocabulary does.
const STATUS_LISTS: [(&str, &str); 2] = [
    (
        "member_workflow_statuses",
        "members may set no status it names",
    ),
    ("ticket_required_for", "no closure it names needs a ticket"),
];

/// The shape each setting's rule reads: (key, the JSON type, its name, what another type does).
/// `member_imports` and the library's modes are left out: any other value there already
/// refuses (imports off, the rule enforced).
type Shape = (&'static str, fn(&Value) -> bool, &'static str, &'static str);
const SHAPES: [Shape; 5] = [
    (
        "member_forbidden_fields",
        Value::is_array,
        "a list of ASFF paths",
        "it forbids nothing",
    ),
    (
        "member_workflow_statuses",
        Value::is_array,
        "a list of Workflow.Status values",
        "members may set no status",
    ),
    (
        "ticket_required_for",
        Value::is_array,
        "a list of Workflow.Status values",
        "no closure needs a ticket",
    ),
    (
        "library",
        Value::is_object,
        "an object of library rule names to \"enforce\", \"warn\" or \"off\"",
        "every library rule stays at its default (warn)",
    ),
    (
        "ticket_pattern",
        Value::is_string,
        "a regular expression (a string)",
        "every closure is a policy error",
    ),
];

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

/// The bad settings of these data.json texts (see the module comment). Forbidden fields are
/// read against the operation schemas given (by operation name; an operation whose schema is
/// not loaded is left out). V2's member names (StatusId, SeverityId, Comment) count:
/// fields.rego takes them for the paths they change. A data text that is not JSON is the
/// engine's to refuse.
pub fn bad_settings<'a>(
    data: &FileTexts,
    schemas: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<BadSetting> {
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
        let Some(settings) = doc.get("hubgate_settings") else {
            continue;
        };
        let Some(settings) = settings.as_object() else {
            out.push(BadSetting::WrongType {
                file: file.clone(),
                key: "",
                value: settings.clone(),
                expected: "an object of settings",
                effect: "every shipped rule runs with its defaults",
            });
            continue;
        };
        for (key, fits, expected, effect) in SHAPES {
            if let Some(value) = settings.get(key).filter(|v| !fits(v)) {
                out.push(BadSetting::WrongType {
                    file: file.clone(),
                    key,
                    value: value.clone(),
                    expected,
                    effect,
                });
            }
        }
        if let Some(Value::Array(entries)) = settings.get("member_forbidden_fields") {
            for entry in entries {
                let known = entry.as_str().is_some_and(|path| {
                    roots.iter().any(|(doc, pointer, skip)| {
                        doc.pointer(pointer)
                            .is_some_and(|root| schema_has(doc, root, path, skip))
                    })
                });
                if !known {
                    out.push(BadSetting::UnknownForbiddenField {
                        file: file.clone(),
                        entry: entry.clone(),
                    });
                }
            }
        }
        for (key, effect) in STATUS_LISTS {
            let Some(Value::Array(entries)) = settings.get(key) else {
                continue;
            };
            for entry in entries {
                if !entry
                    .as_str()
                    .is_some_and(|s| WORKFLOW_STATUSES.contains(&s))
                {
                    out.push(BadSetting::UnknownStatus {
                        file: file.clone(),
                        key,
                        entry: entry.clone(),
                        effect,
                    });
                }
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
        let found: Vec<Value> = bad_settings(&data, texts.iter().map(|(op, t)| (*op, t.as_str())))
            .into_iter()
            .map(|b| match b {
                BadSetting::UnknownForbiddenField { entry, .. } => entry,
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(&found, unknown.as_array().unwrap());
        // With no operation's schema loaded, no entry names a field.
        assert_eq!(bad_settings(&data, std::iter::empty()).len(), entries.len());
    }

    fn bad(settings: Value) -> Vec<String> {
        let data = vec![(
            PathBuf::from("data.json"),
            json!({"hubgate_settings": settings}).to_string(),
        )];
        bad_settings(&data, std::iter::empty())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// A setting of another JSON type than its rule reads matched nothing in Rego (no
    /// iterations over a string, `x in "RESOLVED"` never true): its rule was off, silently.
    #[test]
    fn settings_of_the_wrong_shape_are_named() {
        let shipped = include_str!("../../policies/data.json");
        let shipped: Value = serde_json::from_str(shipped).unwrap();
        assert_eq!(
            bad(shipped["hubgate_settings"].clone()),
            Vec::<String>::new()
        );
        assert_eq!(
            bad(
                json!({"member_forbidden_fields": [], "member_workflow_statuses": ["RESOLVED"],
                       "ticket_required_for": [], "library": {}, "ticket_pattern": "X-[0-9]+",
                       "member_imports": "anything", "my_own_setting": 5})
            ),
            Vec::<String>::new()
        );
        for (settings, says) in [
            (
                json!({"member_forbidden_fields": "RecordState"}),
                r#"hubgate_settings.member_forbidden_fields: "RecordState" is not a list of ASFF paths, so it forbids nothing"#,
            ),
            (
                json!({"ticket_required_for": "RESOLVED"}),
                r#"hubgate_settings.ticket_required_for: "RESOLVED" is not a list"#,
            ),
            (
                json!({"member_workflow_statuses": {"RESOLVED": true}}),
                "hubgate_settings.member_workflow_statuses: {\"RESOLVED\":true} is not a list",
            ),
            (
                json!({"library": "enforce"}),
                r#"hubgate_settings.library: "enforce" is not an object of library rule names"#,
            ),
            (
                json!({"ticket_pattern": false}),
                "hubgate_settings.ticket_pattern: false is not a regular expression",
            ),
        ] {
            let got = bad(settings);
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(got[0].contains(says), "{got:?}");
        }
        let got = bad(json!([]));
        assert!(
            got[0].contains("hubgate_settings: [] is not an object of settings"),
            "{got:?}"
        );
    }

    /// A status no request can set matched no request: "Resolved" let members resolve nothing,
    /// and in ticket_required_for required no ticket.
    #[test]
    fn status_lists_are_read_against_the_statuses_requests_set() {
        let got = bad(
            json!({"member_workflow_statuses": ["RESOLVED", "Resolved", 4],
                             "ticket_required_for": WORKFLOW_STATUSES}),
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains(r#"member_workflow_statuses: "Resolved" is no Workflow.Status"#));
        assert!(got[1].contains("member_workflow_statuses: 4 is no Workflow.Status"));
        let got = bad(json!({"ticket_required_for": ["CLOSED"]}));
        assert!(
            got[0].contains("so no closure it names needs a ticket"),
            "{got:?}"
        );
    }
}
