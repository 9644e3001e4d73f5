//! Routing: the exact (method, path) of a Security Hub REST operation, from the AWS API model.
//! Anything that is not a verbatim operation path is rejected, never normalised.

use std::sync::OnceLock;

use http::Method;
use serde::Deserialize;

mod operations;

/// What hubgate does with an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Checked against the policies before it is forwarded.
    Guarded,
    /// Authenticated, then forwarded unchanged.
    ReadOnly,
    /// Known to the API but never let through.
    Blocked,
}

#[derive(Debug)]
pub struct OperationSpec {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub class: Class,
    pub changes_findings: bool,
}

enum Segment {
    Literal(&'static str),
    /// `{Name}`: exactly one non-empty segment.
    Label,
    /// `{Name+}`: one or more segments up to the end of the path.
    Greedy,
}

struct Template {
    spec: &'static OperationSpec,
    segments: Vec<Segment>,
    literals: usize,
}

fn templates() -> &'static [Template] {
    static TEMPLATES: OnceLock<Vec<Template>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        operations::OPERATIONS
            .iter()
            .map(|spec| {
                let segments: Vec<Segment> = spec
                    .path
                    .trim_start_matches('/')
                    .split('/')
                    .map(|s| {
                        if s.starts_with('{') && s.ends_with("+}") {
                            Segment::Greedy
                        } else if s.starts_with('{') && s.ends_with('}') {
                            Segment::Label
                        } else {
                            Segment::Literal(s)
                        }
                    })
                    .collect();
                let literals = segments
                    .iter()
                    .filter(|s| matches!(s, Segment::Literal(_)))
                    .count();
                Template {
                    spec,
                    segments,
                    literals,
                }
            })
            .collect()
    })
}

/// Every operation hubgate knows, for documentation and `hubgate check`.
pub fn operations() -> &'static [OperationSpec] {
    operations::OPERATIONS
}

/// A segment that is, or decodes to, `.` or `..`, or holds a malformed escape.
///
/// A label's value is one raw segment, but once decoded it may hold `/` (or `\`, which some
/// servers read as `/`): `..%2F..%2Fautomationrulesv2%2Fr` decodes to three segments, two of
/// them `..`. A front end that decodes before it normalises would route that to another
/// operation than the one hubgate matched (a forwarded `UpdateInsight` reaching
/// `UpdateAutomationRuleV2`), so every piece of the decoded value is checked, and so is the
/// part before a `;` (`..;` is `..` to servers that strip path parameters). No Security Hub
/// identifier (an ARN, a rule or job id) has such a piece, nor a control character.
fn is_suspicious(segment: &str) -> bool {
    let decoded = match percent_encoding::percent_decode_str(segment).decode_utf8() {
        Ok(d) => d,
        Err(_) => return true,
    };
    let dot_segment = |piece: &str| {
        let piece = piece.split(';').next().unwrap_or(piece);
        piece == "." || piece == ".."
    };
    if decoded.split(['/', '\\']).any(dot_segment) || decoded.chars().any(char::is_control) {
        return true;
    }
    // A '%' not followed by two hex digits is not an escape any server agrees on. An escaped
    // letter or digit is one no SDK sends (they escape only what must be), and in a label it
    // could spell a literal of another route that hubgate's router does not see:
    // `/automationrulesv2/%6Cist` is GetAutomationRuleV2 here and, decoded,
    // ListAutomationRulesV2 to a server that decodes before it routes.
    let bytes = segment.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        if *b != b'%' {
            return false;
        }
        let hex = |j: usize| bytes.get(j).and_then(|h| (*h as char).to_digit(16));
        match (hex(i + 1), hex(i + 2)) {
            (Some(hi), Some(lo)) => {
                u8::try_from(hi * 16 + lo).is_ok_and(|c| c.is_ascii_alphanumeric())
            }
            _ => true,
        }
    })
}

fn matches(template: &Template, segments: &[&str]) -> bool {
    let mut i = 0;
    for seg in &template.segments {
        match seg {
            Segment::Literal(lit) => {
                if segments.get(i) != Some(lit) {
                    return false;
                }
                i += 1;
            }
            Segment::Label => {
                if segments.get(i).is_none_or(|s| s.is_empty()) {
                    return false;
                }
                i += 1;
            }
            Segment::Greedy => return i < segments.len(),
        }
    }
    i == segments.len()
}

/// What hubgate does with a routed operation (config `[operations]` overrides the default:
/// operations hubgate can judge: policy; read-only operations: forward; everything else: deny).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    Deny,
    Policy,
    Forward,
}

impl OperationSpec {
    /// The routing an operation gets when the configuration does not name it.
    pub fn default_routing(&self) -> Routing {
        if crate::request::Judged::from_name(self.name).is_some() {
            return Routing::Policy;
        }
        match self.class {
            Class::Guarded => Routing::Policy,
            Class::ReadOnly => Routing::Forward,
            Class::Blocked => Routing::Deny,
        }
    }
}

/// No Security Hub operation has this exact request line; the envelope answers it as the API
/// answers an unknown path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no Security Hub operation is served at {method} {path}")]
pub struct NotRouted {
    pub method: String,
    pub path: String,
}

/// The longest request path a decision record keeps whole. Security Hub's paths, an ARN in
/// them included, are far shorter; a client without keys could otherwise make every record
/// (and its OCSF event, which quotes the path in several places) as large as hyper's URI limit,
/// several times the bytes it sent, and fill the audit disk, after which nothing is forwarded.
pub const RECORDED_PATH_CHARS: usize = 2048;

/// Finds the operation for a request line, or says why there is none.
pub fn route(method: &Method, path: &str) -> Result<&'static OperationSpec, NotRouted> {
    let not_found = || NotRouted {
        method: method.to_string(),
        path: crate::quoted::quoted(path),
    };
    let rest = path.strip_prefix('/').ok_or_else(not_found)?;
    if rest.is_empty() {
        return Err(not_found());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    // Empty segments are `//` or a trailing slash; AWS's normalisation of them is unknown, so
    // hubgate does not guess.
    if segments.iter().any(|s| s.is_empty() || is_suspicious(s)) {
        return Err(not_found());
    }
    templates()
        .iter()
        .filter(|t| t.spec.method == method.as_str() && matches(t, &segments))
        .max_by_key(|t| t.literals)
        .map(|t| t.spec)
        .ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_path_is_quoted_by_its_start_and_length() {
        let long = format!("/{}", "a".repeat(60_000));
        let err = route(&Method::GET, &long).expect_err("no operation");
        assert!(err.to_string().len() < 300, "{err}");
        assert!(err.to_string().ends_with("(60001 bytes in all)"), "{err}");
    }

    fn name(method: &str, path: &str) -> Option<&'static str> {
        route(&method.parse().unwrap(), path).ok().map(|s| s.name)
    }

    #[test]
    fn exact_operations_route() {
        assert_eq!(
            name("PATCH", "/findings/batchupdate"),
            Some("BatchUpdateFindings")
        );
        assert_eq!(name("POST", "/findings"), Some("GetFindings"));
        assert_eq!(name("PATCH", "/findings"), Some("UpdateFindings"));
        assert_eq!(name("GET", "/accounts"), Some("DescribeHub"));
        assert_eq!(
            route(&Method::PATCH, "/findings/batchupdate")
                .unwrap()
                .class,
            Class::Guarded
        );
        assert_eq!(
            route(&Method::POST, "/findings").unwrap().class,
            Class::ReadOnly
        );
        assert_eq!(
            route(&Method::PATCH, "/findings").unwrap().class,
            Class::Blocked
        );
    }

    #[test]
    fn literal_routes_beat_labels() {
        assert_eq!(
            name("GET", "/automationrulesv2/list"),
            Some("ListAutomationRulesV2")
        );
        assert_eq!(
            name("GET", "/automationrulesv2/rule-1"),
            Some("GetAutomationRuleV2")
        );
        assert_eq!(name("GET", "/connectors"), Some("ListConnectors"));
        assert_eq!(
            name("GET", "/insights/results/arn%3Aaws%3Asecurityhub/x"),
            Some("GetInsightResults")
        );
    }

    #[test]
    fn variants_are_not_normalised() {
        for path in [
            "/findings/batchupdate/",
            "//findings/batchupdate",
            "/findings//batchupdate",
            "/findings/./batchupdate",
            "/findings/../findings/batchupdate",
            "/findings/%2e%2e/findings/batchupdate",
            "/findings%2Fbatchupdate",
            "/%66indings/batchupdate",
            "/FINDINGS/batchupdate",
            "/findings/batchupdate%",
            "/findings/..;/findings/batchupdate",
            "findings/batchupdate",
            "/",
            "",
        ] {
            assert_eq!(name("PATCH", path), None, "{path}");
        }
        assert_eq!(name("GET", "/findings/batchupdate"), None);
        assert_eq!(name("DELETE", "/findings/batchupdate"), None);
    }

    #[test]
    fn label_values_that_decode_to_another_path_are_not_routed() {
        for path in [
            "/insights/..%2F..%2Fautomationrulesv2%2Frule-1",
            "/insights/x%2F..%2F..%2Fstandards%2Fcontrol%2Farn",
            "/insights/..%2f",
            "/insights/%2E%2E%5C%2E%2E%5Caccounts",
            "/insights/..;/automationrulesv2/rule-1",
            "/insights/.;x",
            "/insights/arn%00x",
            "/insights/arn%0Ax",
        ] {
            assert_eq!(name("PATCH", path), None, "{path}");
        }
        // Escaped letters and digits: the label spells another route's literal once decoded.
        for path in [
            "/automationrulesv2/%6Cist",
            "/automationrulesv2/%6cist",
            "/automationrulesv2/lis%74",
            "/tags/%61rn",
            "/tags/arn%3A%31",
        ] {
            assert_eq!(name("GET", path), None, "{path}");
        }
        // Real identifiers, encoded as the SDKs send them, still route.
        assert_eq!(
            name(
                "PATCH",
                "/insights/arn%3Aaws%3Asecurityhub%3Aus-east-1%3A111111111111%3Ainsight/111111111111/custom/a.b..c"
            ),
            Some("UpdateInsight")
        );
        assert_eq!(
            name(
                "GET",
                "/tags/arn%3Aaws%3Asecurityhub%3Aus-east-1%3A111111111111%3Ahub%2Fdefault"
            ),
            Some("ListTagsForResource")
        );
        assert_eq!(
            name("GET", "/automationrulesv2/rule%3Bv1..2"),
            Some("GetAutomationRuleV2")
        );
        assert_eq!(
            name("GET", "/automationrulesv2/list"),
            Some("ListAutomationRulesV2")
        );
    }

    #[test]
    fn labels_need_a_value() {
        assert_eq!(name("GET", "/automationrulesv2/"), None);
        assert_eq!(name("GET", "/standards/controls"), None);
        assert_eq!(
            name("GET", "/standards/controls/arn:aws:x/y/z"),
            Some("DescribeStandardsControls")
        );
    }
}
