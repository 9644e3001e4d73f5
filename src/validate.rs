//! Validation: strict JSON parsing (one reading of every body) and the operation's JSON Schema.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::quoted::{bounded, quoted, QUOTED_CHARS};

/// Schema violations beyond this many are summarised, so a hostile body cannot make the
/// envelope larger than itself.
const MAX_REPORTED_ERRORS: usize = 50;

/// One problem with a body, located by JSON pointer ("" is the whole body). Both texts can hold
/// what a caller sent (a member name or a map key in the pointer, an identifier or a key in the
/// message), and each is written into the envelope (the message three times) and the decision
/// record: a violation is made only by `new`, which keeps a bounded part of each, so that no 400
/// quotes a body whole. (One 300 KB map key made a 1.8 MB answer and a 600 KB audit record.)
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    path: String,
    message: String,
}

impl Violation {
    /// How many characters of a message a violation keeps; its pointer keeps `QUOTED_CHARS`.
    /// Room for a message that quotes four caller texts itself (`quoted`, as `normalise` does).
    pub const MESSAGE_CHARS: usize = 5 * QUOTED_CHARS;

    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Violation {
        Violation {
            path: bounded(path.into(), QUOTED_CHARS),
            message: bounded(message.into(), Self::MESSAGE_CHARS),
        }
    }

    /// Where: a JSON pointer, "" for the whole body.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidationErrors {
    pub operation: &'static str,
    pub errors: Vec<Violation>,
}

impl ValidationErrors {
    /// One problem with the request as a whole.
    pub fn whole(operation: &'static str, message: String) -> ValidationErrors {
        ValidationErrors {
            operation,
            errors: vec![Violation::new("", message)],
        }
    }
}

/// jsonschema quotes the offending value in its messages; a 100-element array must not turn
/// into a 20 KB error message (or audit record), so long messages name the rule instead.
const MAX_MESSAGE_CHARS: usize = 240;

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} request", self.operation)?;
        for (i, e) in self.errors.iter().take(3).enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            if e.path.is_empty() {
                write!(f, "{sep}{}", e.message)?;
            } else {
                write!(f, "{sep}{}: {}", e.path, e.message)?;
            }
        }
        if self.errors.len() > 3 {
            write!(f, " (and {} more)", self.errors.len() - 3)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

#[derive(Debug, thiserror::Error)]
pub enum SchemaLoadError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: PathBuf, reason: String },
    #[error("{file}: not a valid JSON Schema: {reason}")]
    Invalid { file: PathBuf, reason: String },
}

/// The compiled schema of every operation that has one.
pub struct Schemas {
    validators: HashMap<String, jsonschema::Validator>,
}

impl fmt::Debug for Schemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schemas")
            .field("operations", &self.validators.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Schemas {
    /// Whether a schema for this operation is loaded.
    pub fn has(&self, operation: &str) -> bool {
        self.validators.contains_key(operation)
    }

    /// Compiles `<dir>/<Operation>.json` for each named operation; every one must exist.
    pub fn load(dir: &Path, operations: &[&str]) -> Result<Schemas, SchemaLoadError> {
        let mut texts = Vec::with_capacity(operations.len());
        for op in operations {
            let file = dir.join(format!("{op}.json"));
            let text = std::fs::read_to_string(&file).map_err(|e| SchemaLoadError::Read {
                file: file.clone(),
                reason: e.to_string(),
            })?;
            texts.push((file, text));
        }
        Schemas::compile(operations.iter().copied().zip(&texts))
    }

    /// Compiles each operation's schema from its file's text, as read once by the caller.
    pub fn compile<'a>(
        schemas: impl IntoIterator<Item = (&'a str, &'a (PathBuf, String))>,
    ) -> Result<Schemas, SchemaLoadError> {
        let mut validators = HashMap::new();
        for (op, (file, text)) in schemas {
            let schema: Value =
                serde_json::from_str(text).map_err(|e| SchemaLoadError::Invalid {
                    file: file.clone(),
                    reason: e.to_string(),
                })?;
            let validator = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|e| SchemaLoadError::Invalid {
                    file: file.clone(),
                    reason: e.to_string(),
                })?;
            validators.insert(op.to_string(), validator);
        }
        Ok(Schemas { validators })
    }

    /// Parses strictly and validates; returns the parsed body for the policy.
    pub fn check(&self, operation: &'static str, body: &[u8]) -> Result<Value, ValidationErrors> {
        let value = parse_strict(body).map_err(|v| ValidationErrors {
            operation,
            errors: vec![v],
        })?;
        let Some(validator) = self.validators.get(operation) else {
            // Fail closed: a guarded operation without a schema is a configuration error
            // that `Schemas::load` already refuses, so this is unreachable in practice.
            return Err(ValidationErrors {
                operation,
                errors: vec![Violation::new(
                    "",
                    "hubgate has no schema for this operation",
                )],
            });
        };
        if validator.is_valid(&value) {
            return Ok(value);
        }
        let mut errors: Vec<Violation> = validator
            .iter_errors(&value)
            .take(MAX_REPORTED_ERRORS)
            .map(|e| {
                let full = e.to_string();
                let message = if full.chars().count() > MAX_MESSAGE_CHARS {
                    e.masked().to_string()
                } else {
                    full
                };
                Violation::new(e.instance_path().to_string(), message)
            })
            .collect();
        errors.sort_by(|a, b| a.path.cmp(&b.path));
        Err(ValidationErrors { operation, errors })
    }
}

/// Parses JSON, refusing duplicate object keys and anything after the value: two readers
/// (hubgate and AWS) must never see two different requests in one body.
pub fn parse_strict(body: &[u8]) -> Result<Value, Violation> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = Strict {
        duplicate: &duplicate,
    };
    let result = seed.deserialize(&mut de).and_then(|v| de.end().map(|_| v));
    result.map_err(|e| match duplicate.into_inner() {
        Some(mut at) => {
            // Segments were collected innermost first, as the error unwound.
            at.reverse();
            Violation::new(pointer(&at), format!("duplicate key ({e})"))
        }
        None => Violation::new("", format!("body is not valid JSON: {e}")),
    })
}

/// A JSON value read by its JSON meaning only, from any deserializer: every object an object.
/// serde_json's own `Value` (feature raw_value) takes an object whose first key is
/// `$serde_json::private::RawValue` for raw JSON text, and callers choose map keys deep in an
/// import; the strict reader's visitor has no such case.
pub fn plain_json<'de, D: de::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    let duplicate = RefCell::new(None);
    Strict {
        duplicate: &duplicate,
    }
    .deserialize(d)
}

enum Segment {
    Key(String),
    Index(usize),
}

fn pointer(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        out.push('/');
        match seg {
            Segment::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Segment::Index(i) => out.push_str(&i.to_string()),
        }
    }
    out
}

/// The strict reader. It records where a duplicate key is only when it finds one: the path is
/// built as the error unwinds, so a valid body costs no per-member bookkeeping.
#[derive(Clone, Copy)]
struct Strict<'a> {
    duplicate: &'a RefCell<Option<Vec<Segment>>>,
}

impl Strict<'_> {
    /// On the way out of a failed element, adds its place to the duplicate's path.
    fn unwinding(&self, segment: impl FnOnce() -> Segment) {
        if let Some(path) = self.duplicate.borrow_mut().as_mut() {
            path.push(segment());
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => return Ok(Value::Array(out)),
                Err(e) => {
                    self.unwinding(|| Segment::Index(out.len()));
                    return Err(e);
                }
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One search per member: the slot found free is the one filled.
            let slot = match out.entry(key) {
                serde_json::map::Entry::Vacant(slot) => slot,
                serde_json::map::Entry::Occupied(taken) => {
                    let key = taken.key();
                    *self.duplicate.borrow_mut() = Some(vec![Segment::Key(key.clone())]);
                    return Err(de::Error::custom(format_args!(
                        "key {key:?} appears more than once"
                    )));
                }
            };
            match map.next_value_seed(self) {
                Ok(value) => {
                    slot.insert(value);
                }
                Err(e) => {
                    self.unwinding(|| Segment::Key(slot.key().clone()));
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// Guarded operations take JSON; anything else is refused before it is read further.
/// A body hubgate reads must say it is JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentTypeError {
    #[error("a Content-Type of application/json is required")]
    Missing,
    #[error("Content-Type {0:?} is not supported: send application/json")]
    Unsupported(String),
    #[error(
        "Content-Type parameter {0:?} is not supported: send application/json, with no \
         parameter or charset=utf-8 (hubgate reads the body as UTF-8)"
    )]
    Parameter(String),
}

/// Security Hub is a restJson1 service: the SDKs and the CLI send `application/json` (boto3's
/// model says `"protocol": "rest-json"`). The awsJson types (`application/x-amz-json-1.x`)
/// belong to services that name the operation in `X-Amz-Target`; they are refused, so a body
/// is never judged as one operation while a front end could read it as another. The only
/// parameter accepted is `charset=utf-8`: hubgate parses the body as UTF-8, and a body
/// labelled otherwise could be read differently upstream.
pub fn check_content_type(value: Option<&http::HeaderValue>) -> Result<(), ContentTypeError> {
    let Some(value) = value else {
        return Err(ContentTypeError::Missing);
    };
    // Not visible ASCII: shown escaped, refused like any other unknown type.
    let text = String::from_utf8_lossy(value.as_bytes());
    let mut parts = text.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "application/json" {
        return Err(ContentTypeError::Unsupported(quoted(&media)));
    }
    let mut charset_seen = false;
    for parameter in parts {
        let parameter = parameter.trim();
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim();
        // A quoted value means the same as the bare token (RFC 9110 §5.6.6).
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let utf8 =
            name.trim().eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8");
        if !utf8 || charset_seen {
            return Err(ContentTypeError::Parameter(quoted(parameter)));
        }
        charset_seen = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing_accepts_ordinary_json() {
        let v = parse_strict(br#"{"a": [1, {"b": null}], "c": 1.5}"#).unwrap();
        assert_eq!(v["a"][1]["b"], Value::Null);
    }

    #[test]
    fn duplicate_keys_are_located() {
        let e = parse_strict(br#"{"a": [{"x": 1}, {"x": 1, "x": 2}]}"#).unwrap_err();
        assert_eq!(e.path, "/a/1/x");
        assert!(e.message.contains("more than once"), "{}", e.message);
        let e = parse_strict(br#"{"a/b": 1, "a/b": 2}"#).unwrap_err();
        assert_eq!(e.path, "/a~1b");
    }

    #[test]
    fn garbage_is_refused() {
        for body in [&b"{} x"[..], b"{", b"", b"nul", b"{\"a\":1}{}"] {
            let e = parse_strict(body).unwrap_err();
            assert_eq!(e.path, "");
            assert!(
                e.message.starts_with("body is not valid JSON"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn content_types() {
        let ok = |s: &str| check_content_type(Some(&http::HeaderValue::from_str(s).unwrap()));
        assert!(ok("application/json").is_ok());
        assert!(ok("Application/JSON; charset=utf-8").is_ok());
        assert!(ok("application/json;charset=\"UTF-8\"").is_ok());
        assert!(ok("text/plain").is_err());
        assert!(check_content_type(None).is_err());
        // The awsJson types name the operation in X-Amz-Target; Security Hub is restJson1.
        for t in ["application/x-amz-json-1.1", "application/x-amz-json-1.0"] {
            assert_eq!(
                ok(t),
                Err(ContentTypeError::Unsupported(t.to_string())),
                "{t}"
            );
        }
        // Only charset=utf-8, once: hubgate reads the body as UTF-8.
        for (t, param) in [
            ("application/json; charset=utf-16", "charset=utf-16"),
            ("application/json; charset=iso-8859-1", "charset=iso-8859-1"),
            (
                "application/json; charset=utf-8; charset=utf-16",
                "charset=utf-16",
            ),
            (
                "application/json; charset=utf-8; charset=utf-8",
                "charset=utf-8",
            ),
            ("application/json; boundary=x", "boundary=x"),
            ("application/json;", ""),
        ] {
            assert_eq!(
                ok(t),
                Err(ContentTypeError::Parameter(param.to_string())),
                "{t}"
            );
        }
    }

    fn schemas() -> Schemas {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schemas");
        Schemas::load(&dir, &["BatchUpdateFindings", "BatchImportFindings"]).unwrap()
    }

    /// The shipped `\S` pattern refuses identifiers of whitespace only, Unicode whitespace
    /// included, as ECMA-262's `\S` does.
    #[test]
    fn non_empty_strings_need_a_non_whitespace_character() {
        let s = schemas();
        let body = |id: &str| {
            serde_json::to_vec(&serde_json::json!({
                "FindingIdentifiers": [{"Id": id, "ProductArn": "arn:aws:securityhub:us-east-1::product/aws/securityhub"}],
                "Note": {"Text": "t", "UpdatedBy": "u"}
            }))
            .unwrap()
        };
        for blank in [" ", "\t\n", "\u{a0}", "\u{2003}\u{3000}"] {
            let err = s.check("BatchUpdateFindings", &body(blank)).unwrap_err();
            assert!(
                err.errors
                    .iter()
                    .any(|v| v.path == "/FindingIdentifiers/0/Id"),
                "{blank:?}: {err}"
            );
        }
        for fine in ["f", " f ", "\u{e9}"] {
            assert!(
                s.check("BatchUpdateFindings", &body(fine)).is_ok(),
                "{fine:?}"
            );
        }
    }

    /// A schema's pattern may use look-around (fancy-regex, as ECMA-262 allows): it loads and
    /// applies.
    #[test]
    fn a_look_around_pattern_loads_and_applies() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("X.json"),
            r#"{"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?!no)"}}}"#,
        )
        .unwrap();
        let s = Schemas::load(dir.path(), &["X"]).unwrap();
        assert!(s.check("X", br#"{"a": "yes"}"#).is_ok());
        assert!(s.check("X", br#"{"a": "nope"}"#).is_err());
    }

    /// An identifier longer than a finding's can be (Id 512 characters, ProductArn 12 to 2048:
    /// the model's AwsSecurityFinding doc strings) names no finding: refused here, so that no
    /// GetFindings call is spent looking it up.
    #[test]
    fn identifiers_no_finding_can_have_are_refused() {
        let s = schemas();
        let body = |id: &str, arn: &str| {
            serde_json::to_vec(&serde_json::json!({
                "FindingIdentifiers": [{"Id": id, "ProductArn": arn}],
                "Note": {"Text": "t", "UpdatedBy": "u"}
            }))
            .unwrap()
        };
        let arn = "arn:aws:securityhub:us-east-1::product/aws/securityhub";
        let (id_512, arn_2048) = ("i".repeat(512), "a".repeat(2048));
        for (id, arn, at) in [
            ("i".repeat(513), arn.to_string(), "/FindingIdentifiers/0/Id"),
            (
                "f".into(),
                "a".repeat(2049),
                "/FindingIdentifiers/0/ProductArn",
            ),
            (
                "f".into(),
                "a".repeat(11),
                "/FindingIdentifiers/0/ProductArn",
            ),
        ] {
            let err = s
                .check("BatchUpdateFindings", &body(&id, &arn))
                .unwrap_err();
            let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths, [at]);
        }
        assert!(s
            .check("BatchUpdateFindings", &body(&id_512, &arn_2048))
            .is_ok());
        assert!(s
            .check("BatchUpdateFindings", &body("f", &"a".repeat(12)))
            .is_ok());
    }

    /// The same bounds for an imported finding's identifiers: an import's are kept in the
    /// settle journal for `settle_ms` after it is sent, whatever Security Hub answers, so an
    /// Id up to the body's size was held for minutes per finding (review 50).
    #[test]
    fn imported_identifiers_no_finding_can_have_are_refused() {
        let s = schemas();
        let body = |id: &str, arn: &str| {
            serde_json::to_vec(&serde_json::json!({"Findings": [{
                "SchemaVersion": "2018-10-08", "Id": id, "ProductArn": arn,
                "GeneratorId": "g", "AwsAccountId": "222222222222",
                "CreatedAt": "2026-01-01T00:00:00Z", "UpdatedAt": "2026-01-01T00:00:00Z",
                "Title": "t", "Description": "d", "Resources": [{"Type": "Other", "Id": "r"}]
            }]}))
            .unwrap()
        };
        let arn = "arn:aws:securityhub:us-east-1:222222222222:product/222222222222/default";
        for (id, arn, at) in [
            ("i".repeat(513), arn.to_string(), "/Findings/0/Id"),
            ("f".into(), "a".repeat(2049), "/Findings/0/ProductArn"),
            ("f".into(), "a".repeat(11), "/Findings/0/ProductArn"),
        ] {
            let err = s
                .check("BatchImportFindings", &body(&id, &arn))
                .unwrap_err();
            let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths, [at]);
        }
        assert!(s
            .check(
                "BatchImportFindings",
                &body(&"i".repeat(512), &"a".repeat(2048))
            )
            .is_ok());
    }

    #[test]
    fn the_shipped_schema_accepts_an_sdk_body() {
        let body = br#"{"FindingIdentifiers": [{"Id": "f-1", "ProductArn": "arn:aws:securityhub:us-east-1::product/aws/securityhub"}], "Workflow": {"Status": "SUPPRESSED"}, "Note": {"Text": "ok", "UpdatedBy": "me"}}"#;
        assert!(schemas().check("BatchUpdateFindings", body).is_ok());
    }

    #[test]
    fn long_values_are_not_echoed() {
        let ids: Vec<String> = (0..101)
            .map(|i| format!(r#"{{"Id": "finding-{i}", "ProductArn": "p"}}"#))
            .collect();
        let body = format!(r#"{{"FindingIdentifiers": [{}]}}"#, ids.join(","));
        let err = schemas()
            .check("BatchUpdateFindings", body.as_bytes())
            .unwrap_err();
        assert_eq!(err.errors[0].path, "/FindingIdentifiers");
        assert!(
            err.errors[0].message.len() <= MAX_MESSAGE_CHARS,
            "{}",
            err.errors[0].message
        );
        assert!(!err.errors[0].message.contains("finding-50"));
    }

    /// A violation keeps a bounded part of what a caller sent, wherever it sits: a 300 KB map
    /// key is in the pointer of the error on its value, and in the schema's message on it.
    #[test]
    fn violations_quote_a_bounded_part_of_the_body() {
        let key = "k".repeat(300_000);
        let body = serde_json::to_vec(&serde_json::json!({
            "FindingIdentifiers": [{"Id": "f", "ProductArn": "arn:aws:securityhub:us-east-1::product/aws/securityhub"}],
            "UserDefinedFields": {key.clone(): 5, "k": "v"},
            key: 1
        }))
        .unwrap();
        let err = schemas().check("BatchUpdateFindings", &body).unwrap_err();
        assert!(err.errors.len() >= 2, "{err}");
        let bound = |max: usize| max + "… (300000 bytes in all)".chars().count();
        for v in &err.errors {
            assert!(
                v.path().chars().count() <= bound(QUOTED_CHARS),
                "{}",
                v.path()
            );
            assert!(
                v.message().chars().count() <= bound(Violation::MESSAGE_CHARS),
                "{}",
                v.message()
            );
        }
        assert!(
            err.to_string().len() < 4 * Violation::MESSAGE_CHARS,
            "{err}"
        );
        let short = Violation::new("/a", "b");
        assert_eq!((short.path(), short.message()), ("/a", "b"));
    }

    #[test]
    fn every_violation_is_listed_with_its_path() {
        let body = br#"{"FindingIdentifiers": [{"Id": " ", "ProductArn": "p"}], "Workflow": {"Status": "BOGUS"}, "Confidence": 101, "Extra": 1}"#;
        let err = schemas().check("BatchUpdateFindings", body).unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"/FindingIdentifiers/0/Id"), "{paths:?}");
        assert!(paths.contains(&"/Workflow/Status"), "{paths:?}");
        assert!(paths.contains(&"/Confidence"), "{paths:?}");
        assert!(paths.contains(&""), "{paths:?}");
        assert!(err
            .to_string()
            .starts_with("invalid BatchUpdateFindings request: "));
    }
}
