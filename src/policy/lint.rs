//! The policy set's lints, run by every load (serve, reload, `check`, `eval`): rules that can
//! never hold because they read what nothing provides. A path the input document cannot have
//! (`input.update.verificationstate`), a `data.` document no data.json or rule provides, a
//! deny rule in a package hubgate does not read, a setting no rule reads: Rego leaves such a
//! rule undefined, and an undefined deny rule allows. `check` reported them and exited 1, but
//! serve and reload took such a set, and a data.json pushed with a misspelt key turned a rule
//! off in the running hubgate (review 55c).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::identity::{Principal, Role};
use crate::policy::code_only;
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

/// The input document's shape: the union of the documents hubgate builds for each enrichment
/// state, built by the same code the proxy uses, so this list cannot drift from it.
pub(crate) fn shape() -> Value {
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
pub(crate) fn unknown_member(shape: &Value, path: &[String]) -> Option<(usize, Vec<String>)> {
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

/// The unknown `input.` paths of these rule files.
pub fn unknown_fields(files: &[(PathBuf, String)]) -> Vec<UnknownField> {
    let shape = shape();
    let mut out = Vec::new();
    for (file, text) in files {
        out.extend(check_text(&shape, file, text));
    }
    out
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

/// A rule named like one hubgate reads (`deny`, `warn`, `needs_state`) in a package it does
/// not read: hubgate reads `data.hubgate.*` only, so `package hubgate.custom` (or a misspelt
/// `package hubgat`) with `deny contains ...` compiled, served, and refused nothing, while
/// `check` said the set was valid.
#[derive(Debug, PartialEq)]
pub struct UnreadRule {
    pub file: PathBuf,
    pub line: u32,
    /// `data.<package>.<name>`.
    pub rule: String,
}

impl std::fmt::Display for UnreadRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.rule.rsplit('.').next().unwrap_or(&self.rule);
        write!(
            f,
            "{}:{}: {} is never read: hubgate reads data.hubgate.{name}, and no rule of the set refers to {}",
            self.file.display(),
            self.line,
            self.rule,
            self.rule.rsplit_once('.').map_or("", |(package, _)| package)
        )
    }
}

/// The rules of `files` named `deny`, `warn` or `needs_state` outside `package hubgate` that no
/// other file of the set reads: by the rule's own path (`data.<package>.deny`, as a reference
/// or an import) or the package's whole (`import data.<package>`, `data.<package>[k]`). A set
/// that reads them from a rule of its own (`deny contains v if some v in data.custom.deny`) is
/// not flagged. A reference to another rule of the package (a helper beside the deny rule) or
/// a comment or message that mentions the package reads nothing: taken as a read of the
/// package, each left a deny rule hubgate never reads unnamed while check said valid.
pub fn unread_entry_rules(files: &[(PathBuf, String)]) -> Vec<UnreadRule> {
    use regorus::unstable::{Rule, RuleHead};
    // Only code reads a rule: comments and string literals blanked out.
    let code: Vec<(&PathBuf, String)> = files.iter().map(|(f, t)| (f, code_only(t))).collect();
    let mut out = Vec::new();
    for (file, text) in files {
        // The set compiled already (serve's load); a file that does not parse alone is not ours
        // to report.
        let mut engine = regorus::Engine::new();
        if engine
            .add_policy(file.display().to_string(), text.clone())
            .is_err()
        {
            continue;
        }
        for module in engine.get_modules().clone() {
            let Ok(package) = regorus::utils::get_path_string(&module.package.refr, Some("data"))
            else {
                continue;
            };
            if package == "data.hubgate" {
                continue;
            }
            for rule in &module.policy {
                let (refr, span) = match &**rule {
                    Rule::Spec {
                        head: RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. },
                        span,
                        ..
                    } => (refr, span),
                    Rule::Default { refr, span, .. } => (refr, span),
                    _ => continue,
                };
                let Ok(name) = regorus::utils::get_path_string(refr, None) else {
                    continue;
                };
                if ["deny", "warn", "needs_state"].contains(&name.as_str())
                    && !code
                        .iter()
                        .any(|(other, t)| *other != file && reads_rule(t, &package, &name))
                    && !out
                        .iter()
                        .any(|u: &UnreadRule| u.rule == format!("{package}.{name}"))
                {
                    out.push(UnreadRule {
                        file: file.to_path_buf(),
                        line: span.line,
                        rule: format!("{package}.{name}"),
                    });
                }
            }
        }
    }
    out
}

/// Whether the code `text` may read `rule` of `package` (`data.a.b`): it names
/// `data.a.b.rule`, or the package whole (`data.a.b`, `data.a.b[...]`), but not another of its
/// rules (`data.a.b.other`) nor another package (`data.a.bc`).
fn reads_rule(text: &str, package: &str, rule: &str) -> bool {
    text.match_indices(package).any(|(at, _)| {
        if text[..at].chars().next_back().is_some_and(is_ident) {
            return false;
        }
        let rest = &text[at + package.len()..];
        match rest.strip_prefix('.') {
            Some(member) => member
                .strip_prefix(rule)
                .is_some_and(|after| !after.starts_with(is_ident)),
            None => !rest.starts_with(is_ident),
        }
    })
}

/// A rule's `data.NAME` that nothing provides: no data.json has the top-level key NAME and no
/// package starts with NAME. Rego leaves the reference undefined, so a rule reading it never
/// holds: `import data.blocked_products` with no `blocked_products` in data.json compiled,
/// served, and its deny rule refused nothing, while `check` said the set was valid.
#[derive(Debug, PartialEq)]
pub struct UnknownData {
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
}

impl std::fmt::Display for UnknownData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: data.{}: no data.json has the key {:?} and no package or rule is named so, so a rule that reads it never holds",
            self.file.display(),
            self.line,
            self.name,
            self.name
        )
    }
}

/// The `data.` references of `rego` that nothing provides: no data.json path, no package or
/// rule of `rego`, and not the optional `hubgate_settings`. Below a data.json value, what a
/// document holds depends on its data, so a reference is checked down to the first member a
/// data.json or a rule provides; within a package, each member must be a rule or a package
/// below it (`data.hubgate.blocked_products` with no such rule in package hubgate is undefined,
/// as `data.blocked_products` is with no such key).
pub fn unknown_data(rego: &[(PathBuf, String)], data: &[(PathBuf, String)]) -> Vec<UnknownData> {
    let texts: Vec<(&PathBuf, &String, String)> =
        rego.iter().map(|(f, t)| (f, t, code_only(t))).collect();
    // What provides a document whole (below it, anything): a data.json value that is not an
    // object, a rule. The settings document is optional: the shipped rules read each setting
    // with a default beside it (policies/README.md), and its keys are checked by
    // `unread_settings`.
    let mut whole: BTreeSet<String> = BTreeSet::from(["hubgate_settings".to_string()]);
    // A data.json object holds its members and no others: below it, a member it does not have
    // is undefined (`data.team.blocked_products` with data.json's `team` lacking it), as a
    // top-level key is. Checking stopped at the first member a data.json provided, so such a
    // misspelling passed `check` (review 55c).
    let mut objects: BTreeSet<String> = BTreeSet::new();
    fn data_paths(
        prefix: &str,
        doc: &Map<String, Value>,
        whole: &mut BTreeSet<String>,
        objects: &mut BTreeSet<String>,
    ) {
        for (k, v) in doc {
            let path = match prefix {
                "" => k.clone(),
                _ => format!("{prefix}.{k}"),
            };
            match v {
                Value::Object(inner) => {
                    data_paths(&path, inner, whole, objects);
                    objects.insert(path);
                }
                _ => {
                    whole.insert(path);
                }
            }
        }
    }
    for (_, text) in data {
        if let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(text) {
            data_paths("", &doc, &mut whole, &mut objects);
        }
    }
    // The packages, and what is below them: a reference to a package (or a part of its path)
    // is an object of its rules.
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    for (file, raw, text) in &texts {
        let mut engine = regorus::Engine::new();
        if engine
            .add_policy(file.display().to_string(), raw.to_string())
            .is_err()
        {
            // Not parsed alone (the set compiled already): nothing below its package is known.
            if let Some(package) = package_path(text) {
                whole.insert(package);
            }
            continue;
        }
        for module in engine.get_modules().clone() {
            let Ok(package) = regorus::utils::get_path_string(&module.package.refr, None) else {
                continue;
            };
            namespaces.insert(package.clone());
            for rule in &module.policy {
                use regorus::unstable::{Rule, RuleHead};
                let refr = match &**rule {
                    Rule::Spec {
                        head:
                            RuleHead::Compr { refr, .. }
                            | RuleHead::Set { refr, .. }
                            | RuleHead::Func { refr, .. },
                        ..
                    } => refr,
                    Rule::Default { refr, .. } => refr,
                };
                match regorus::utils::get_path_string(refr, None) {
                    Ok(name) => {
                        let path = format!("{package}.{name}");
                        // A rule `a.b := ...` makes `a` an object too.
                        namespaces.insert(path.clone());
                        whole.insert(path);
                    }
                    // A head this cannot name (`p[x] := ...`): the package is open below.
                    Err(_) => {
                        whole.insert(package.clone());
                    }
                }
            }
        }
    }
    let is_namespace = |path: &str| {
        namespaces
            .iter()
            .any(|n| n == path || n.strip_prefix(path).is_some_and(|r| r.starts_with('.')))
    };
    let mut out = Vec::new();
    for (file, _, text) in &texts {
        for (i, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("data.") {
                if line[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| is_ident(c) || c == '.')
                {
                    continue;
                }
                let path: String = line[at + 5..]
                    .chars()
                    .take_while(|c| is_ident(*c) || *c == '.')
                    .collect();
                let members: Vec<&str> = path.split('.').take_while(|m| !m.is_empty()).collect();
                for n in 1..=members.len() {
                    let prefix = members[..n].join(".");
                    if whole.contains(&prefix) {
                        break;
                    }
                    if !(objects.contains(&prefix) || is_namespace(&prefix)) {
                        out.push(UnknownData {
                            file: file.to_path_buf(),
                            line: i + 1,
                            name: prefix,
                        });
                        break;
                    }
                }
            }
        }
    }
    out
}

/// The package a Rego text declares (`a.b` of `package a.b`), read from its text.
fn package_path(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let package = line.trim().strip_prefix("package ")?;
        Some(
            package
                .trim()
                .chars()
                .take_while(|c| is_ident(*c) || *c == '.')
                .collect(),
        )
    })
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
    rego: &[(PathBuf, String)],
    data: &[(PathBuf, String)],
) -> Vec<UnreadSetting> {
    let mut text = String::new();
    for (_, rule) in rego.iter().filter(|(f, _)| !crate::policy::is_test_file(f)) {
        text.push_str(rule);
        text.push('\n');
    }
    let reads = |patterns: &[String]| patterns.iter().any(|p| text.contains(p.as_str()));
    let mut out = Vec::new();
    for (file, raw) in data {
        // PolicySet::load has refused a data.json that is not a JSON object already.
        let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(raw) else {
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
    out
}

/// A rule's read of a request body member (`input.request.body.Workflow`): the body is one
/// operation's spelling of a change, and BatchUpdateFindingsV2, UpdateFindings and imports spell
/// the same change otherwise (V2's `StatusId` 3 is `Workflow.Status` SUPPRESSED). A deny rule
/// on the member is undefined where it is absent, and allows (review 55c). Not an error: a rule
/// may read the body on purpose (one operation's members no fact carries), so `check` cautions.
#[derive(Debug, PartialEq)]
pub struct BodyRead {
    pub file: PathBuf,
    pub line: usize,
    pub path: String,
}

impl std::fmt::Display for BodyRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {} reads one operation's spelling of the change: other operations spell \
             it otherwise (BatchUpdateFindingsV2's StatusId, UpdateFindings' filters), and a \
             rule that finds it absent is undefined, so it refuses nothing; judge \
             input.update's facts (policies/README.md)",
            self.file.display(),
            self.line,
            self.path
        )
    }
}

/// The reads of request body members in `rego`'s rules (test files excluded), but an
/// import's `Findings`, where its findings' content is judged.
pub fn body_reads(rego: &[(PathBuf, String)]) -> Vec<BodyRead> {
    let mut out = Vec::new();
    for (file, text) in rego.iter().filter(|(f, _)| !crate::policy::is_test_file(f)) {
        for (line, path) in references(text) {
            if let [request, body, member, ..] = path.as_slice() {
                if request == "request" && body == "body" && member != "Findings" {
                    out.push(BodyRead {
                        file: file.clone(),
                        line,
                        path: format!("input.{}", path.join(".")),
                    });
                }
            }
        }
    }
    out
}

/// What the lints found in a policy set; empty for a set that may serve.
#[derive(Debug, Default)]
pub struct Lints {
    settings: Vec<UnreadSetting>,
    fields: Vec<UnknownField>,
    entries: Vec<UnreadRule>,
    data: Vec<UnknownData>,
}

impl Lints {
    /// Every lint over the set's rule files and data.json files.
    /// `data` is the set's data.json files: the only JSON a set reads as data
    /// (`policy::list_files`).
    pub fn of(rego: &[(PathBuf, String)], data: &[(PathBuf, String)]) -> Lints {
        Lints {
            settings: unread_settings(rego, data),
            fields: unknown_fields(rego),
            entries: unread_entry_rules(rego),
            data: unknown_data(rego, data),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
            && self.fields.is_empty()
            && self.entries.is_empty()
            && self.data.is_empty()
    }

    /// Each finding on a line, each kind's advice after its findings.
    pub fn lines(&self) -> Vec<String> {
        fn kind<T: std::fmt::Display>(found: &[T], hint: &str, out: &mut Vec<String>) {
            if !found.is_empty() {
                out.extend(found.iter().map(T::to_string));
                out.push(hint.to_string());
            }
        }
        let mut out = Vec::new();
        kind(
            &self.settings,
            "a setting no rule reads leaves the rule it was meant for at its default; see policies/README.md for the settings",
            &mut out,
        );
        kind(
            &self.fields,
            "a rule that reads a field the input document does not have is never true; see policies/README.md for the input document",
            &mut out,
        );
        kind(
            &self.entries,
            "hubgate reads deny, warn and needs_state of package hubgate only: put the rule in package hubgate, or read it from a rule there",
            &mut out,
        );
        kind(
            &self.data,
            "a data document is provided by a top-level key of data.json or by a package; see policies/README.md for the settings",
            &mut out,
        );
        out
    }
}

impl std::fmt::Display for Lints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the policy set has rules that can never hold, so it does not serve (hubgate check \
             names the same): {}",
            self.lines().join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of the set: its path (under `dir`, never written: the lints read texts) and text.
    fn write_in(dir: &Path, name: &str, text: &str) -> (PathBuf, String) {
        (dir.join(name), text.to_string())
    }

    fn check(text: &str) -> Vec<String> {
        check_text(&shape(), Path::new("p.rego"), text)
            .iter()
            .map(|u| u.path.clone())
            .collect()
    }

    #[test]
    fn an_entry_rule_outside_package_hubgate_is_unread_unless_referred_to() {
        let dir = Path::new("/policies");
        let write = |name: &str, text: &str| write_in(dir, name, text);
        let custom = write(
            "custom.rego",
            "package hubgate.custom\n\ndeny contains \"x\" if true\n\nother if true\n",
        );
        let typo = write(
            "typo.rego",
            "package hubgat\n\nwarn contains \"y\" if true\n",
        );
        let own = write(
            "own.rego",
            "package hubgate\n\ndeny contains \"z\" if true\n",
        );
        let found = unread_entry_rules(&[custom.clone(), typo.clone(), own.clone()]);
        let rules: Vec<(&str, u32)> = found.iter().map(|u| (u.rule.as_str(), u.line)).collect();
        assert_eq!(
            rules,
            vec![("data.hubgate.custom.deny", 3), ("data.hubgat.warn", 3)]
        );
        // read from package hubgate: not flagged; a longer name is another package
        let reader = write(
            "reader.rego",
            "package hubgate\n\ndeny contains v if some v in data.hubgate.customs.deny\n\ndeny contains v if some v in data.hubgate.custom.deny\n",
        );
        assert!(unread_entry_rules(&[custom.clone(), reader]).is_empty());
        // the whole package imported: it may be read through its alias
        let whole = write(
            "whole.rego",
            "package hubgate\n\nimport data.hubgate.custom\n\ndeny contains v if some v in custom.deny\n",
        );
        assert!(unread_entry_rules(&[custom, whole]).is_empty());
    }

    /// A helper of the package read from package hubgate, or the package named in a comment or
    /// a message, reads no deny rule of it.
    #[test]
    fn a_helper_or_a_mention_of_the_package_reads_no_entry_rule() {
        let dir = Path::new("/policies");
        let write = |name: &str, text: &str| write_in(dir, name, text);
        let custom = write(
            "custom.rego",
            "package hubgate.custom\n\nblocked := {\"p\"}\n\ndeny contains \"x\" if true\n",
        );
        for (n, reader) in [
            "package hubgate\n\ndeny contains \"y\" if input.x in data.hubgate.custom.blocked\n",
            "package hubgate\n\nimport data.hubgate.custom.blocked\n\ndeny contains \"y\" if input.x in blocked\n",
            "package hubgate\n\n# team rules: data.hubgate.custom.deny\ndeny contains \"y\" if false\n",
            "package hubgate\n\ndeny contains \"see data.hubgate.custom\" if false\n",
        ]
        .into_iter()
        .enumerate()
        {
            let reader = write(&format!("reader{n}.rego"), reader);
            let found = unread_entry_rules(&[custom.clone(), reader]);
            let rules: Vec<&str> = found.iter().map(|u| u.rule.as_str()).collect();
            assert_eq!(rules, vec!["data.hubgate.custom.deny"], "reader {n}");
        }
    }

    #[test]
    fn a_data_document_nothing_provides_is_named() {
        let dir = Path::new("/policies");
        let write = |name: &str, text: &str| write_in(dir, name, text);
        let rules = write(
            "rules.rego",
            "package hubgate\n\nimport data.blocked_products\n\n\
             x if data.hubgate_settings.a\ny if data.other.z\n\
             # data.in_a_comment\nz := \"data.in_a_string\"\nw if mydata.q\n",
        );
        let other = write("other.rego", "package other.sub\n\nq := 1\n");
        let data = write("data.json", "{\"other_settings\": {}}");
        let found = unknown_data(&[rules, other], &[data]);
        let names: Vec<(&str, usize)> = found.iter().map(|u| (u.name.as_str(), u.line)).collect();
        // package other holds sub alone: data.other.z is undefined too
        assert_eq!(names, vec![("blocked_products", 3), ("other.z", 6)]);
    }

    /// Below a package, each member is a rule or a package: `data.hubgate.blocked_products`
    /// with no such rule never holds. Below a data.json value, or a rule, anything goes.
    #[test]
    fn a_member_no_rule_of_its_package_provides_is_named() {
        let dir = Path::new("/policies");
        let write = |name: &str, text: &str| write_in(dir, name, text);
        let rules = write(
            "rules.rego",
            "package hubgate\n\nimport data.hubgate.custom\n\
             a if input.x in data.hubgate.blocked_products\n\
             b if data.hubgate.member\nc if data.hubgate.custom.list.x\n\
             d if data.lists.products.x\ne if data.hubgate.custom.nope\n\
             f if data.hubgate\ng if data.hubgate.deep.one\n\
             member if true\ndeep.one := 1\n",
        );
        let custom = write(
            "custom.rego",
            "package hubgate.custom\n\nlist := {\"x\": 1}\n",
        );
        let data = write("data.json", "{\"lists\": {\"products\": {}}}");
        let found = unknown_data(&[rules, custom], &[data]);
        let names: Vec<(&str, usize)> = found.iter().map(|u| (u.name.as_str(), u.line)).collect();
        // data.json's `products` is an object without `x`: undefined, as a missing key is.
        assert_eq!(
            names,
            vec![
                ("hubgate.blocked_products", 4),
                ("lists.products.x", 7),
                ("hubgate.custom.nope", 8)
            ]
        );
    }

    #[test]
    fn body_reads_are_named_but_an_imports_findings_and_test_files() {
        let dir = Path::new("/policies");
        let rules = write_in(
            dir,
            "team.rego",
            "package hubgate

a if input.request.body.Workflow.Status == \"SUPPRESSED\"\n\
             b if input.request.body.Findings[_].Severity\nc if input.request.method\n\
             # input.request.body.Note in a comment\nd if input.update.workflow_status\n",
        );
        let tests = write_in(
            dir,
            "team_test.rego",
            "package hubgate

test_a if a with input.request.body.Workflow as {}
",
        );
        let found = body_reads(&[rules, tests]);
        let found: Vec<(&str, usize)> = found.iter().map(|b| (b.path.as_str(), b.line)).collect();
        assert_eq!(found, vec![("input.request.body.Workflow.Status", 3)]);
    }

    #[test]
    fn a_member_a_data_json_object_lacks_is_named_and_values_stay_open() {
        let dir = Path::new("/policies");
        let rules = write_in(
            dir,
            "team.rego",
            "package hubgate

\
             a if input.x in data.team.blocked_products\n\
             b if data.team.blocked_product[_] == input.x\n\
             c if data.team[input.k]\nd if data.team.limits.max > 1\n\
             e if data.team.limits.max.deeper\nf if data.hubgate_settings.anything.at.all\n",
        );
        let data = write_in(
            dir,
            "data.json",
            r#"{"team": {"blocked_product": ["arn"], "limits": {"max": 3}}}"#,
        );
        let found = unknown_data(&[rules], &[data]);
        let names: Vec<(&str, usize)> = found.iter().map(|u| (u.name.as_str(), u.line)).collect();
        // `max` is a number, open below as before; a computed member is not checked.
        assert_eq!(names, vec![("team.blocked_products", 3)]);
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
