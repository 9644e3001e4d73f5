//! `hubgate check`'s reading of the rules' `input.` paths: a path the input document cannot
//! have (`input.update.verificationstate`) is an error, because Rego leaves a rule that reads it
//! undefined, and an undefined deny rule allows.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::identity::{Principal, Role};
use crate::policy::input::{self, Enrichment, RequestFacts, Update};

/// A path in a rule that names a member the input document does not have.
#[derive(Debug, PartialEq)]
pub struct UnknownField {
    pub file: PathBuf,
    pub line: usize,
    /// The path as the rule spells it, up to the unknown member.
    pub path: String,
    /// The members the object holding it has.
    pub known: Vec<String>,
}

impl std::fmt::Display for UnknownField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (parent, name) = self.path.rsplit_once('.').unwrap_or(("input", &self.path));
        write!(
            f,
            "{}:{}: {}: {parent} has no field {name:?} (known: {})",
            self.file.display(),
            self.line,
            self.path,
            self.known.join(", ")
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: cannot read: {source}")]
pub struct LintError {
    file: PathBuf,
    source: std::io::Error,
}

/// The input document's shape: the union of the documents hubgate builds for each enrichment
/// state, built by the same code the proxy uses, so this list cannot drift from it.
fn shape() -> Value {
    let principal = Principal {
        id: String::new(),
        account_id: String::new(),
        role: Role::Member,
        attributes: Map::new(),
    };
    let facts = RequestFacts {
        operation: "BatchUpdateFindings",
        principal: &principal,
        method: "PATCH",
        path: "/findings/batchupdate",
        headers: Map::new(),
        source_ip: String::new(),
        request_id: "",
        time: String::new(),
    };
    let update = Update::default().to_value();
    let mut out = Value::Object(Map::new());
    for enrichment in [
        Enrichment::Pending,
        Enrichment::Complete,
        Enrichment::Disabled,
        Enrichment::NotApplicable,
    ] {
        let doc = input::document(&facts, &Value::Null, &update, &[], None, enrichment);
        if let Ok(doc) = serde_json::to_value(&doc) {
            merge(&mut out, doc);
        }
    }
    out
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        // A member that is null in one document and an object in another is the object.
        (into @ Value::Null, from) => *into = from,
        _ => {}
    }
}

/// The text with comments and string literals blanked out (lines kept), so that neither is
/// read as a reference.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                out.push(' ');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => {
                            out.push(if c == '\n' { '\n' } else { ' ' });
                            break;
                        }
                        _ => {}
                    }
                }
            }
            '`' => {
                out.push(' ');
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    } else if c == '`' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

const INPUT: [char; 5] = ['i', 'n', 'p', 'u', 't'];

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every `input.a.b…` path in the text, with its line: the dotted members after `input`, up to
/// the first `[`, call or other token.
fn references(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for (n, line) in code_only(text).lines().enumerate() {
        let bytes: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < bytes.len() {
            let starts = bytes[i..].starts_with(&INPUT);
            let before_ok = i == 0 || !(is_ident(bytes[i - 1]) || bytes[i - 1] == '.');
            if !(starts && before_ok) {
                i += 1;
                continue;
            }
            let mut j = i + INPUT.len();
            if j < bytes.len() && is_ident(bytes[j]) {
                i = j;
                continue;
            }
            let mut path = Vec::new();
            while j < bytes.len() && bytes[j] == '.' {
                let start = j + 1;
                let mut end = start;
                while end < bytes.len() && is_ident(bytes[end]) {
                    end += 1;
                }
                if end == start {
                    break;
                }
                path.push(bytes[start..end].iter().collect());
                j = end;
            }
            if !path.is_empty() {
                out.push((n + 1, path));
            }
            i = j.max(i + 1);
        }
    }
    out
}

/// The first member of `path` that the shape says cannot exist. An object with no members
/// (headers, attributes) or a value that is not an object (the body, lists) ends the check:
/// its members depend on the request.
fn unknown_member(shape: &Value, path: &[String]) -> Option<(usize, Vec<String>)> {
    let mut node = shape;
    for (i, name) in path.iter().enumerate() {
        let Value::Object(members) = node else {
            return None;
        };
        if members.is_empty() {
            return None;
        }
        match members.get(name) {
            Some(next) => node = next,
            None => {
                let known: BTreeSet<String> = members.keys().cloned().collect();
                return Some((i, known.into_iter().collect()));
            }
        }
    }
    None
}

fn read(file: &Path) -> Result<String, LintError> {
    std::fs::read_to_string(file).map_err(|source| LintError {
        file: file.to_path_buf(),
        source,
    })
}

/// The unknown `input.` paths of these rule files.
pub fn unknown_fields(files: &[PathBuf]) -> Result<Vec<UnknownField>, LintError> {
    let shape = shape();
    let mut out = Vec::new();
    for file in files {
        out.extend(check_text(&shape, file, &read(file)?));
    }
    Ok(out)
}

fn check_text(shape: &Value, file: &Path, text: &str) -> Vec<UnknownField> {
    let mut out = Vec::new();
    for (line, path) in references(text) {
        if let Some((at, known)) = unknown_member(shape, &path) {
            out.push(UnknownField {
                file: file.to_path_buf(),
                line,
                path: format!("input.{}", path[..=at].join(".")),
                known,
            });
        }
    }
    out
}

/// The decision record's shape, as the writer serialises it, with the input document and the
/// normalised update in place: what an `audit.mask` pointer can name.
fn record_shape() -> Value {
    use crate::audit::{Partial, Record, RecordError, RecordPrincipal};
    let record = Record {
        error: Some(RecordError {
            code: "".into(),
            message: String::new(),
        }),
        partial: Some(Partial::default()),
        principal: Some(RecordPrincipal {
            role: Some(Role::Member),
            ..RecordPrincipal::default()
        }),
        update: Some(Update::default().to_value()),
        settling: Some(Vec::new()),
        ..Record::default()
    };
    let mut shape = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(members) = &mut shape {
        members.insert("input".into(), self::shape());
    }
    shape
}

/// The `audit.mask` pointers that name a member the record cannot have (`/update/notes/text`):
/// such a pointer erases nothing, silently, and what it was meant to keep out of the log stays.
/// Each is returned with the members known where it goes wrong. Below a member whose content
/// depends on the request (the body, headers, attributes, lists) nothing is checked.
pub fn unmatchable_mask_pointers(mask: &[String]) -> Vec<(String, Vec<String>)> {
    let shape = record_shape();
    mask.iter()
        .filter_map(|pointer| {
            let path: Vec<String> = pointer
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            unknown_member(&shape, &path).map(|(_, known)| (pointer.clone(), known))
        })
        .collect()
}

/// A data.json setting no rule reads: a misspelt key (`"tickets": "enforce"`,
/// `"member_forbiden_fields"`) leaves the rule it was meant for at its default, silently.
#[derive(Debug, PartialEq)]
pub struct UnreadSetting {
    pub file: PathBuf,
    /// Where the key is, e.g. `hubgate_settings.library.tickets`.
    pub path: String,
}

impl std::fmt::Display for UnreadSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: no rule reads this setting (misspelt?), so it changes nothing",
            self.file.display(),
            self.path
        )
    }
}

/// The data.json keys no rule of `rego` (test files excluded) reads: the top-level keys
/// (`data.K`), the keys of `hubgate_settings` (`hubgate_settings.K`) and the rule names of
/// `hubgate_settings.library` (`library_enforced("N")`, `library_warned("N")`). A rule that
/// reads a key only through a computed name is not seen; `hubgate check` then names the key.
pub fn unread_settings(
    rego: &[PathBuf],
    data: &[PathBuf],
) -> Result<Vec<UnreadSetting>, LintError> {
    let mut text = String::new();
    for file in rego.iter().filter(|f| !crate::policy::is_test_file(f)) {
        text.push_str(&read(file)?);
        text.push('\n');
    }
    let reads = |patterns: &[String]| patterns.iter().any(|p| text.contains(p.as_str()));
    let mut out = Vec::new();
    for file in data {
        let raw = read(file)?;
        // PolicySet::load has refused a data.json that is not a JSON object already.
        let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(&raw) else {
            continue;
        };
        let mut unread = |path: String| {
            out.push(UnreadSetting {
                file: file.clone(),
                path,
            })
        };
        for (key, value) in &doc {
            if !reads(&[format!("data.{key}"), format!("data[\"{key}\"]")]) {
                unread(key.clone());
                continue;
            }
            if key != "hubgate_settings" {
                continue;
            }
            let Value::Object(settings) = value else {
                continue;
            };
            for (name, value) in settings {
                if !reads(&[
                    format!("hubgate_settings.{name}"),
                    format!("hubgate_settings[\"{name}\"]"),
                ]) {
                    unread(format!("hubgate_settings.{name}"));
                    continue;
                }
                if let ("library", Value::Object(rules)) = (name.as_str(), value) {
                    for rule in rules.keys() {
                        if !reads(&[
                            format!("library_enforced(\"{rule}\")"),
                            format!("library_warned(\"{rule}\")"),
                        ]) {
                            unread(format!("hubgate_settings.library.{rule}"));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Vec<String> {
        check_text(&shape(), Path::new("p.rego"), text)
            .iter()
            .map(|u| u.path.clone())
            .collect()
    }

    #[test]
    fn a_misspelt_update_field_is_named_with_the_known_ones() {
        let found = check_text(
            &shape(),
            Path::new("p.rego"),
            "package hubgate\n\ndeny contains v if {\n  input.update.verificationstate == \"BENIGN_POSITIVE\"\n}\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        let text = found[0].to_string();
        assert!(text.starts_with("p.rego:4: input.update.verificationstate: input.update has no field \"verificationstate\""), "{text}");
        assert!(text.contains("verification_state"), "{text}");
        assert!(text.contains("workflow_status"), "{text}");
    }

    #[test]
    fn known_paths_comments_strings_and_open_objects_pass() {
        assert!(check(
            "x if input.update.verification_state == \"A\"\n\
             y if input.update.fields[_] == \"Note.Text\"\n\
             # input.update.nonsense in a comment\n\
             z := \"input.update.nonsense in a string\"\n\
             w if input.principal.attributes.team == \"x\"\n\
             v if input.request.body.Anything\n\
             u if input.request.headers.whatever\n\
             t if input.summary.max_severity_rank > 2\n\
             s if { some f in input.findings; f.current.Severity }\n\
             myinput.update.nonsense\n"
        )
        .is_empty());
    }

    #[test]
    fn unknown_top_level_and_nested_members_are_found() {
        assert_eq!(
            check("a if input.principle.role == \"member\"\nb if input.principal.rol\n"),
            vec!["input.principle", "input.principal.rol"]
        );
    }
}
