//! Typed requests: the judged operations as an exhaustive enum, and the one typed reading of
//! each one's body (types generated from the AWS model) that the policy input derives from.

mod model;

pub use model::*;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::validate::Violation;

/// The operations hubgate can judge. Matching on it has no fallback arm anywhere, so an
/// operation added here without a typed model and a normaliser does not compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Judged {
    BatchUpdateFindings,
    BatchUpdateFindingsV2,
    UpdateFindings,
    BatchImportFindings,
}

impl Judged {
    pub const ALL: [Judged; 4] = [
        Judged::BatchUpdateFindings,
        Judged::BatchUpdateFindingsV2,
        Judged::UpdateFindings,
        Judged::BatchImportFindings,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Judged::BatchUpdateFindings => "BatchUpdateFindings",
            Judged::BatchUpdateFindingsV2 => "BatchUpdateFindingsV2",
            Judged::UpdateFindings => "UpdateFindings",
            Judged::BatchImportFindings => "BatchImportFindings",
        }
    }

    pub fn from_name(name: &str) -> Option<Judged> {
        Judged::ALL.into_iter().find(|j| j.name() == name)
    }

    /// Reads a parsed (and schema-checked) body as this operation's typed request. A member
    /// the type cannot hold (a fraction or exponent where an integer belongs, `-0`, `null`, an
    /// unknown member or enum value) is an error located by JSON pointer, never a missing value.
    pub fn read(self, body: &Value) -> Result<Typed, Violation> {
        fn typed<'a, T: Deserialize<'a>>(body: &'a Value) -> Result<T, Violation> {
            // Tracking the path costs on every member; only a failed read needs it, so the
            // read runs again with tracking to say where.
            if let Ok(t) = T::deserialize(body) {
                return Ok(t);
            }
            serde_path_to_error::deserialize(body).map_err(|e| {
                let path = pointer(e.path());
                let inner = e.into_inner().to_string();
                let message = if inner.contains("floating point") {
                    format!("{inner}: integers are written without a fraction, an exponent or a minus sign on zero")
                } else {
                    inner
                };
                Violation::new(path, message)
            })
        }
        Ok(match self {
            Judged::BatchUpdateFindings => Typed::BatchUpdateFindings(typed(body)?),
            Judged::BatchUpdateFindingsV2 => Typed::BatchUpdateFindingsV2(typed(body)?),
            Judged::UpdateFindings => Typed::UpdateFindings(typed(body)?),
            Judged::BatchImportFindings => Typed::BatchImportFindings(typed(body)?),
        })
    }
}

/// A judged operation's body, read into its model type.
#[derive(Debug, Clone)]
pub enum Typed {
    BatchUpdateFindings(BatchUpdateFindingsRequest),
    BatchUpdateFindingsV2(BatchUpdateFindingsV2Request),
    UpdateFindings(Box<UpdateFindingsRequest>),
    BatchImportFindings(BatchImportFindingsRequest),
}

/// A member hubgate does not model (deep ASFF content of an import): present and not null; its
/// shape is the JSON Schema's business.
#[derive(Debug, Clone, PartialEq)]
pub struct Opaque(pub Value);

impl<'de> Deserialize<'de> for Opaque {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Opaque, D::Error> {
        match crate::validate::plain_json(d)? {
            Value::Null => Err(serde::de::Error::custom(
                "null is not a value for this member",
            )),
            v => Ok(Opaque(v)),
        }
    }
}

/// An optional member that, when present, must hold a value: `"Confidence": null` is an error,
/// not an absent Confidence (serde would otherwise read both as None).
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// serde's path as a JSON pointer, the form every other validation error uses.
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
            Segment::Map { key } => {
                out.push('/');
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_strict;
    use serde_json::json;

    fn read(op: Judged, body: &str) -> Result<Typed, Violation> {
        op.read(&parse_strict(body.as_bytes()).expect("valid JSON"))
    }

    const IDS: &str = r#""FindingIdentifiers": [{"Id": "f", "ProductArn": "p"}]"#;

    /// Deep ASFF content is read as JSON means it: a map key spelled like serde_json's
    /// raw-value marker (callers choose keys there) is an ordinary key, not a 400.
    #[test]
    fn opaque_members_keep_every_key_as_a_key() {
        for inner in [json!("not json"), json!("{\"x\": 1}"), json!(5)] {
            let member = json!({"$serde_json::private::RawValue": inner.clone(), "k": "v"});
            let Opaque(read) = serde_json::from_value(member.clone()).unwrap();
            assert_eq!(read, member);
            let alone = json!({"$serde_json::private::RawValue": inner});
            let Opaque(read) = serde_json::from_value(alone.clone()).unwrap();
            assert_eq!(read, alone);
        }
        assert!(serde_json::from_value::<Opaque>(Value::Null).is_err());
    }

    #[test]
    fn integer_members_take_only_integer_literals() {
        for literal in ["-0", "0.0", "10.0", "1e1", "1E1", "1.5", "-0.0"] {
            let body = format!(r#"{{{IDS}, "Severity": {{"Normalized": {literal}}}}}"#);
            let err = read(Judged::BatchUpdateFindings, &body).unwrap_err();
            assert_eq!(err.path(), "/Severity/Normalized", "{literal}");
            assert!(
                err.message().contains("integer"),
                "{literal}: {}",
                err.message()
            );
        }
        for literal in ["3.0", "3E0", "-0"] {
            let body = format!(r#"{{"MetadataUids": ["m"], "StatusId": {literal}}}"#);
            let err = read(Judged::BatchUpdateFindingsV2, &body).unwrap_err();
            assert_eq!(err.path(), "/StatusId", "{literal}");
        }
        let body = format!(r#"{{{IDS}, "Severity": {{"Normalized": 10}}, "Confidence": 0}}"#);
        let Typed::BatchUpdateFindings(r) = read(Judged::BatchUpdateFindings, &body).unwrap()
        else {
            panic!("wrong operation")
        };
        assert_eq!(r.severity.and_then(|s| s.normalized), Some(10));
        assert_eq!(r.confidence, Some(0));
    }

    #[test]
    fn null_is_never_an_absent_member() {
        for member in [
            r#""Confidence": null"#,
            r#""Workflow": null"#,
            r#""Workflow": {"Status": null}"#,
        ] {
            let body = format!(r#"{{{IDS}, {member}}}"#);
            assert!(
                read(Judged::BatchUpdateFindings, &body).is_err(),
                "{member}"
            );
        }
    }

    #[test]
    fn unknown_members_and_enum_values_are_errors() {
        let err = read(
            Judged::BatchUpdateFindings,
            &format!(r#"{{{IDS}, "Workflow": {{"Status": "CLOSED"}}}}"#),
        )
        .unwrap_err();
        assert_eq!(err.path(), "/Workflow/Status");
        let err = read(
            Judged::BatchUpdateFindings,
            &format!(r#"{{{IDS}, "Extra": 1}}"#),
        )
        .unwrap_err();
        assert!(err.message().contains("Extra"), "{}", err.message());
    }

    #[test]
    fn members_set_lists_what_the_body_sets() {
        let body = format!(r#"{{{IDS}, "Note": {{"Text": "t", "UpdatedBy": "u"}}}}"#);
        let Typed::BatchUpdateFindings(r) = read(Judged::BatchUpdateFindings, &body).unwrap()
        else {
            panic!("wrong operation")
        };
        assert_eq!(r.members_set(), ["FindingIdentifiers", "Note"]);
    }

    #[test]
    fn names_round_trip() {
        for op in Judged::ALL {
            assert_eq!(Judged::from_name(op.name()), Some(op));
        }
        assert_eq!(Judged::from_name("GetFindings"), None);
    }
}
