//! Confine: what a member may call among the operations routed `forward`. Re-signed, a
//! forwarded call runs as hubgate's AWS role, and in the Security Hub administrator account that
//! role reads every member account's findings, members and settings: a member key would read
//! through hubgate what its own credentials cannot. So a member may call `GetFindings` only
//! with a filter that confines it to the member's own account, and the other forwarded
//! operations only when `policy.members_may_call` lists them (by default
//! `config::DEFAULT_MEMBERS_MAY_CALL`). Administrators are not confined, and neither is
//! passthrough, where each caller signs with its own credentials.

use serde_json::Value;

use crate::identity::{Principal, Role};
use crate::routes::OperationSpec;

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
        "a member's GetFindings must be confined to its own account: {why}. Filter on it alone, \
         e.g. \"Filters\": {{\"AwsAccountId\": [{{\"Value\": \"{account}\", \"Comparison\": \
         \"EQUALS\"}}]}}"
    )]
    NotConfined { why: String, account: String },
}

/// Refuses a member's forwarded call that could read beyond the member's account. `listed`:
/// `policy.members_may_call` names the operation. `Ok(true)`: the call is a member's GetFindings
/// that this confined by its body, which the caller must then forward as the body alone says
/// (`confined_head`).
pub fn confine(
    spec: &OperationSpec,
    principal: &Principal,
    body: &[u8],
    listed: bool,
) -> Result<bool, ReadError> {
    if principal.role != Role::Member || listed {
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
fn confined(body: &[u8], account: &str) -> Result<(), String> {
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
            "{key:?} is not a GetFindings member ({})",
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
        return Err(format!("Filters.{key} is not spelt AwsAccountId"));
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
            return Err(format!("{at} has {key:?}, not only Value and Comparison"));
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
        "{at}: {inner} (Filters must hold the API model's filter attributes only)"
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

    #[test]
    fn other_forwarded_operations_are_for_members_only_when_listed() {
        let member = principal(Role::Member);
        assert!(matches!(
            confine(spec("GetFindingsV2"), &member, b"{}", false),
            Err(ReadError::NotForMembers {
                operation: "GetFindingsV2"
            })
        ));
        assert!(confine(spec("GetFindingsV2"), &member, b"{}", true).is_ok());
        assert!(confine(spec("ListMembers"), &member, b"", false).is_err());
        // Listing GetFindings lets members read it unconfined (a hubgate whose role sees the
        // member's account only).
        assert!(confine(spec("GetFindings"), &member, b"{}", true).is_ok());
        let admin = principal(Role::Administrator);
        for name in ["GetFindings", "GetFindingsV2", "ListMembers"] {
            assert!(confine(spec(name), &admin, b"{}", false).is_ok(), "{name}");
        }
    }
}
