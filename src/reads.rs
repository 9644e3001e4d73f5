//! Confine: what a member may call among the operations routed `forward`. Re-signed, a
//! forwarded call runs as hubgate's AWS role, and in the Security Hub administrator account that
//! role reads every member account's findings, members and settings: a member key would read
//! through hubgate what its own credentials cannot. So a member may call `GetFindings` only
//! with a filter that confines it to the member's own account, and the other forwarded
//! operations only when `policy.members_may_call` lists them (by default
//! `config::DEFAULT_MEMBERS_MAY_CALL`). Administrators are not confined. In passthrough each
//! caller signs with its own credentials, so a member's reads are its own (AWS decides them);
//! an operation that is not a read (a write an `[operations]` override routes `forward`) is the
//! administrators' and the listed members' in every mode: it changes Security Hub unjudged.

use std::fmt;

use serde_json::Value;

use crate::identity::{Principal, Role};
use crate::quoted::{bounded, quoted};
use crate::routes::{Class, OperationSpec};
use crate::validate::Violation;

/// The top-level members of a GetFindings request (botocore's model). Anything else, a
/// case variant above all, is a member hubgate would not have read the way AWS may.
const GET_FINDINGS_MEMBERS: &[&str] = &["Filters", "SortCriteria", "NextToken", "MaxResults"];

/// Why a member's forwarded call is refused. Both are 403s: retrying changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "members may not call {operation} through hubgate: it runs as hubgate's AWS role, which \
         sees other accounts' data; policy.members_may_call lists the forwarded operations \
         members may call"
    )]
    NotForMembers { operation: &'static str },
    #[error(
        "members may not call {operation} through hubgate: it is not a read, and routed \
         \"forward\" it changes Security Hub without the policies; policy.members_may_call lists \
         the forwarded operations members may call"
    )]
    Unjudged { operation: &'static str },
    #[error(
        "a member's GetFindings must be confined to its own account: {why}. Filter on it alone, \
         e.g. \"Filters\": {{\"AwsAccountId\": [{{\"Value\": \"{account}\", \"Comparison\": \
         \"EQUALS\"}}]}}"
    )]
    NotConfined { why: Why, account: String },
}

/// Why a member's GetFindings is not confined, bounded when it is made. It quotes the body (a
/// key, a comparison, serde's words on a filter), and the refusal goes into the envelope twice
/// and into the decision record (several times into its OCSF event): quoted whole, a 600 KB
/// key of `"` came back as 2.4 MB and put 2.4 MB on the audit disk, per request of a member
/// key, and a full audit disk stops every forward. No other way to make one than `Why::new`.
#[derive(Debug)]
pub struct Why(String);

impl Why {
    fn new(text: impl Into<String>) -> Why {
        Why(bounded(text.into(), Violation::MESSAGE_CHARS))
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Refuses a member's forwarded call that could read beyond the member's account, or change
/// what the policies would judge. `listed`: `policy.members_may_call` names the operation.
/// `own_signature`: the caller's own signature goes upstream (passthrough). `Ok(true)`: the
/// call is a member's GetFindings that this confined by its body, which the caller must then
/// forward as the body alone says (`confined_head`).
pub fn confine(
    spec: &OperationSpec,
    principal: &Principal,
    body: &[u8],
    listed: bool,
    own_signature: bool,
) -> Result<bool, ReadError> {
    if principal.role != Role::Member || listed {
        return Ok(false);
    }
    // A write routed "forward" (an `[operations]` override: `BatchUpdateFindings`,
    // `CreateInsight`, ...) is not judged, whoever signs it. In passthrough it used to go
    // through for every member, unlisted: the member's own credentials sign it, but with
    // those principals' writes limited to the path through hubgate (README: Passthrough),
    // hubgate is where a member's change is judged, and a member suppressing its own finding
    // (which AWS allows and the policies refuse) went up unjudged.
    if spec.class != Class::ReadOnly {
        return Err(ReadError::Unjudged {
            operation: spec.name,
        });
    }
    // A read signed by the member itself reads what AWS lets that member read.
    if own_signature {
        return Ok(false);
    }
    if spec.name != "GetFindings" {
        return Err(ReadError::NotForMembers {
            operation: spec.name,
        });
    }
    let account = principal.account_id.as_str();
    confined(body, account).map_err(|why| ReadError::NotConfined {
        why,
        account: account.to_string(),
    })?;
    Ok(true)
}

/// What the request line and head of a confined GetFindings may carry besides its body: the
/// confinement read the body as JSON, so the body must be sent as JSON, and nothing in a query
/// string (which hubgate does not read and would forward under its own role) may add to it.
pub fn confined_head(parts: &http::request::Parts) -> Result<(), HeadError> {
    if parts.uri.query().is_some() {
        return Err(HeadError::Query(crate::validate::ValidationErrors::whole(
            "GetFindings",
            "GetFindings takes no query string: a member's GetFindings is confined by its body \
             alone"
                .to_string(),
        )));
    }
    crate::validate::check_content_type(parts.headers.get(http::header::CONTENT_TYPE))
        .map_err(HeadError::ContentType)
}

/// What a confined GetFindings' head may not carry (`confined_head`): the envelope answers them
/// as any operation's bad query string (400) or content type (415).
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error(transparent)]
    Query(crate::validate::ValidationErrors),
    #[error(transparent)]
    ContentType(crate::validate::ContentTypeError),
}

/// Whether a GetFindings body reads `account`'s findings only: its `Filters.AwsAccountId` is a
/// non-empty list of `EQUALS account`. Security Hub ANDs the filter's attributes and ORs the
/// EQUALS values of one attribute, so every other filter can only narrow that.
fn confined(body: &[u8], account: &str) -> Result<(), Why> {
    confined_text(body, account).map_err(Why::new)
}

/// `confined`, with its reason unbounded (`Why` bounds it). Keys are `quoted` so that what
/// follows one in the message is still there.
fn confined_text(body: &[u8], account: &str) -> Result<(), String> {
    // The strict reader refuses duplicate keys: AWS must not read another filter than this.
    let doc = crate::validate::parse_strict(body).map_err(|v| match v.path().is_empty() {
        true => v.message().to_string(),
        false => format!("{}: {}", v.path(), v.message()),
    })?;
    let Value::Object(doc) = doc else {
        return Err("the body is not a JSON object".into());
    };
    if let Some(key) = doc
        .keys()
        .find(|k| !GET_FINDINGS_MEMBERS.contains(&k.as_str()))
    {
        return Err(format!(
            "{:?} is not a GetFindings member ({})",
            quoted(key),
            GET_FINDINGS_MEMBERS.join(", ")
        ));
    }
    let Some(filters_value) = doc.get("Filters") else {
        return Err("it has no Filters".into());
    };
    let Value::Object(filters) = filters_value else {
        return Err("Filters is not an object".into());
    };
    if let Some(key) = filters
        .keys()
        .find(|k| k.eq_ignore_ascii_case("AwsAccountId") && *k != "AwsAccountId")
    {
        return Err(format!("Filters.{} is not spelt AwsAccountId", quoted(key)));
    }
    let entries = match filters.get("AwsAccountId") {
        None => return Err("Filters has no AwsAccountId".into()),
        Some(Value::Array(entries)) if !entries.is_empty() => entries,
        Some(_) => return Err("Filters.AwsAccountId is not a non-empty list".into()),
    };
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("Filters.AwsAccountId[{i}]");
        let Value::Object(entry) = entry else {
            return Err(format!("{at} is not an object"));
        };
        if let Some(key) = entry
            .keys()
            .find(|k| !matches!(k.as_str(), "Value" | "Comparison"))
        {
            return Err(format!(
                "{at} has {:?}, not only Value and Comparison",
                quoted(key)
            ));
        }
        if entry.get("Comparison") != Some(&Value::from("EQUALS")) {
            return Err(format!("{at}.Comparison is not \"EQUALS\""));
        }
        if entry.get("Value") != Some(&Value::from(account)) {
            return Err(format!("{at}.Value is not the caller's account"));
        }
    }
    model_filters(filters_value)
}

/// Every member of `Filters` is one of the API model's filter attributes, of its type. A name
/// that is none (`AwsAccountId\u0000`, `Aw\u017fAccountId`, which a case-folding reader takes for
/// `AwsAccountId`, an empty name) is a filter hubgate cannot say Security Hub ANDs with the
/// account: it is not forwarded under hubgate's role.
fn model_filters(filters: &Value) -> Result<(), String> {
    type Filters = crate::request::AwsSecurityFindingFilters;
    let Err(e) = serde_path_to_error::deserialize::<_, Filters>(filters) else {
        return Ok(());
    };
    let at = match e.path().to_string() {
        p if p == "." => "Filters".to_string(),
        p => format!("Filters.{p}"),
    };
    let inner = e.into_inner().to_string();
    // serde lists every attribute the model has after "expected one of": a hundred names.
    let inner = inner.split(", expected one of").next().unwrap_or(&inner);
    Err(format!(
        "{}: {} (Filters must hold the API model's filter attributes only)",
        quoted(&at),
        quoted(inner)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::operations;

    fn spec(name: &str) -> &'static OperationSpec {
        operations().iter().find(|o| o.name == name).unwrap()
    }

    fn principal(role: Role) -> Principal {
        Principal {
            id: "p".into(),
            account_id: "222222222222".into(),
            role,
            attributes: Default::default(),
        }
    }

    fn member_get(body: &str) -> Result<(), ReadError> {
        confine(
            spec("GetFindings"),
            &principal(Role::Member),
            body.as_bytes(),
            false,
            false,
        )
        .map(|confined| assert!(confined, "a member's GetFindings is confined"))
    }

    const OWN: &str = r#"{"Value": "222222222222", "Comparison": "EQUALS"}"#;

    #[test]
    fn a_member_reads_its_own_account_only() {
        for ok in [
            format!(r#"{{"Filters": {{"AwsAccountId": [{OWN}]}}}}"#),
            format!(r#"{{"Filters": {{"AwsAccountId": [{OWN}, {OWN}]}}}}"#),
            format!(
                r#"{{"Filters": {{"AwsAccountId": [{OWN}], "Id": [{{"Value": "x", "Comparison": "PREFIX"}}]}},
                   "MaxResults": 5, "NextToken": "t", "SortCriteria": []}}"#
            ),
        ] {
            member_get(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let other = r#"{"Value": "333333333333", "Comparison": "EQUALS"}"#;
        for (bad, why) in [
            ("{}", "no Filters"),
            ("", "not valid JSON"),
            ("[]", "not a JSON object"),
            (r#"{"Filters": {}}"#, "no AwsAccountId"),
            (r#"{"Filters": []}"#, "not an object"),
            (r#"{"Filters": {"AwsAccountId": []}}"#, "non-empty list"),
            (r#"{"Filters": {"AwsAccountId": {}}}"#, "non-empty list"),
            (
                &format!(r#"{{"Filters": {{"AwsAccountId": [{OWN}, {other}]}}}}"#),
                "[1].Value is not the caller's account",
            ),
            (
                r#"{"Filters": {"AwsAccountId": [{"Value": "222222222222", "Comparison": "PREFIX"}]}}"#,
                "Comparison is not",
            ),
            (
                r#"{"Filters": {"AwsAccountId": [{"Value": "2222", "Comparison": "EQUALS"}]}}"#,
                "not the caller's account",
            ),
            (
                r#"{"Filters": {"AwsAccountId": [{"Value": 222222222222, "Comparison": "EQUALS"}]}}"#,
                "not the caller's account",
            ),
            (
                r#"{"Filters": {"AwsAccountId": [{"Value": "222222222222", "Comparison": "NOT_EQUALS"}]}}"#,
                "Comparison is not",
            ),
            (
                r#"{"Filters": {"AwsAccountId": [{"Value": "222222222222", "Comparison": "EQUALS", "X": 1}]}}"#,
                "not only Value and Comparison",
            ),
            (
                &format!(
                    r#"{{"Filters": {{"AwsAccountId": [{OWN}], "awsAccountId": [{other}]}}}}"#
                ),
                "not spelt AwsAccountId",
            ),
            (
                &format!(r#"{{"Filters": {{"AwsAccountId": [{OWN}]}}, "filters": {{}}}}"#),
                "is not a GetFindings member",
            ),
            (
                &format!(
                    r#"{{"Filters": {{"AwsAccountId": [{OWN}]}}, "Filters": {{"AwsAccountId": [{other}]}}}}"#
                ),
                "duplicate key",
            ),
            (
                &format!(r#"{{"Filters": {{"AwsAccountId": [{OWN}]}}}} {{}}"#),
                "not valid JSON",
            ),
            // Names that are no filter attribute, some of which a reader may take for
            // AwsAccountId (a NUL-terminated string, Java's equalsIgnoreCase folding ſ to s
            // and İ to i): not forwarded.
            (
                &format!(
                    r#"{{"Filters": {{"AwsAccountId": [{OWN}], "AwsAccountId\u0000": [{other}]}}}}"#
                ),
                "unknown field `AwsAccountId\u{0}`",
            ),
            (
                &format!(
                    r#"{{"Filters": {{"AwsAccountId": [{OWN}], "Aw\u017fAccountId": [{other}]}}}}"#
                ),
                "unknown field `Aw\u{17f}AccountId`",
            ),
            (
                &format!(
                    r#"{{"Filters": {{"AwsAccountId": [{OWN}], "AwsAccount\u0130d": [{other}]}}}}"#
                ),
                "Filters.AwsAccount\u{130}d: unknown field",
            ),
            (
                &format!(r#"{{"Filters": {{"AwsAccountId": [{OWN}], "": [{other}]}}}}"#),
                "unknown field ``",
            ),
            (
                &format!(
                    r#"{{"Filters": {{"AwsAccountId": [{OWN}], "Id": [{{"Value": "x", "Comparison": "SOUNDS_LIKE"}}]}}}}"#
                ),
                "Filters.Id[0].Comparison: unknown variant `SOUNDS_LIKE`",
            ),
        ] {
            match member_get(bad) {
                Err(e @ ReadError::NotConfined { .. }) => {
                    assert!(e.to_string().contains(why), "{bad}: {e}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    /// The refusal quotes the body's keys and values bounded: whole, a member key made each
    /// refusal (in the envelope and the decision record) up to four times what it sent.
    #[test]
    fn a_refusal_quotes_the_body_bounded() {
        let long = "\"".repeat(300_000);
        let key = serde_json::to_string(&long).unwrap();
        for bad in [
            format!(r#"{{"Filters": {{"AwsAccountId": [{OWN}]}}, {key}: 1}}"#),
            format!(r#"{{"Filters": {{"AwsAccountId": [{OWN}], {key}: []}}}}"#),
            format!(
                r#"{{"Filters": {{"AwsAccountId": [{{"Value": "222222222222", "Comparison": "EQUALS", {key}: 1}}]}}}}"#
            ),
            format!(
                r#"{{"Filters": {{"AwsAccountId": [{OWN}], "Id": [{{"Value": "x", "Comparison": {key}}}]}}}}"#
            ),
            format!(r#"{{"Filters": {{"AwsAccountId": [{OWN}]}}, {key}: 1, {key}: 2}}"#),
        ] {
            match member_get(&bad) {
                Err(e @ ReadError::NotConfined { .. }) => {
                    let text = e.to_string();
                    assert!(text.len() < 3 * Violation::MESSAGE_CHARS, "{}", text.len());
                    assert!(text.contains("bytes in all"), "{text}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn other_forwarded_operations_are_for_members_only_when_listed() {
        let member = principal(Role::Member);
        assert!(matches!(
            confine(spec("GetFindingsV2"), &member, b"{}", false, false),
            Err(ReadError::NotForMembers {
                operation: "GetFindingsV2"
            })
        ));
        assert!(confine(spec("GetFindingsV2"), &member, b"{}", true, false).is_ok());
        assert!(confine(spec("ListMembers"), &member, b"", false, false).is_err());
        // Listing GetFindings lets members read it unconfined (a hubgate whose role sees the
        // member's account only).
        assert!(confine(spec("GetFindings"), &member, b"{}", true, false).is_ok());
        let admin = principal(Role::Administrator);
        for name in ["GetFindings", "GetFindingsV2", "ListMembers"] {
            assert!(
                confine(spec(name), &admin, b"{}", false, false).is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn a_write_routed_forward_is_for_members_only_when_listed_whoever_signs() {
        let member = principal(Role::Member);
        let admin = principal(Role::Administrator);
        for own_signature in [false, true] {
            for name in ["BatchUpdateFindings", "CreateInsight", "UpdateFindings"] {
                assert!(
                    matches!(
                        confine(spec(name), &member, b"{}", false, own_signature),
                        Err(ReadError::Unjudged { .. })
                    ),
                    "{name} {own_signature}"
                );
                assert!(confine(spec(name), &member, b"{}", true, own_signature).is_ok());
                assert!(confine(spec(name), &admin, b"{}", false, own_signature).is_ok());
            }
        }
        // A member's own signature reads what AWS lets it read: not confined by hubgate.
        for name in ["GetFindings", "GetFindingsV2", "ListMembers"] {
            assert!(
                confine(spec(name), &member, b"{}", false, true).is_ok(),
                "{name}"
            );
        }
    }
}
