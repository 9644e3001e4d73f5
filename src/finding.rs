//! Finding identity and vocabulary, the bottom of the module graph: what names one finding
//! across every stage (request model, enrichment cache, shared cache, policy input, audit), and
//! the severity scale every stage compares on (labels, ranks, the mappings from
//! `Severity.Normalized` and from OCSF's `severity_id`). It imports nothing from the crate, so
//! any module may use it.

use std::sync::Arc;

use serde::Serialize;

/// One finding, as Security Hub names it: its `Id` and the `ProductArn` of the product that
/// reported it (ids are only unique per product). The texts are shared, not owned: a key is
/// cloned into the lookup queue, the in-flight and waiting maps, the cache and the audit
/// record, and its texts become the policy input's `id` and `product_arn` as they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FindingKey {
    pub id: Arc<str>,
    pub product_arn: Arc<str>,
}

impl FindingKey {
    pub fn new(id: impl Into<Arc<str>>, product_arn: impl Into<Arc<str>>) -> FindingKey {
        FindingKey {
            id: id.into(),
            product_arn: product_arn.into(),
        }
    }
}

/// Severity labels in rank order; the rank is what "lower" means.
pub const SEVERITY_LABELS: [&str; 5] = ["INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"];

pub fn label_rank(label: &str) -> Option<u64> {
    SEVERITY_LABELS
        .iter()
        .position(|l| *l == label)
        .map(|p| p as u64)
}

/// The label Security Hub derives from `Severity.Normalized` (0-100) when no label is given.
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

/// OCSF `severity_id` (BatchUpdateFindingsV2) as a label and rank, or None for an id OCSF
/// does not define. Fatal counts as CRITICAL; Unknown and Other rank lowest, so setting them
/// is never a raise.
pub fn v2_severity(id: i64) -> Option<(&'static str, u64)> {
    Some(match id {
        0 => ("UNKNOWN", 0),
        1 => ("INFORMATIONAL", 0),
        2 => ("LOW", 1),
        3 => ("MEDIUM", 2),
        4 => ("HIGH", 3),
        5 | 6 => ("CRITICAL", 4),
        99 => ("OTHER", 0),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mappings_land_on_the_scale() {
        for n in 0..=100 {
            let label = label_for_normalized(n).expect("0-100 all have a label");
            assert!(label_rank(label).is_some(), "{n} -> {label}");
        }
        assert_eq!(label_for_normalized(101), None);
        assert_eq!(label_for_normalized(-1), None);
        for id in [1, 2, 3, 4, 5, 6] {
            let (label, rank) = v2_severity(id).expect("a defined severity_id");
            assert_eq!(label_rank(label), Some(rank), "severity_id {id}");
        }
        assert_eq!(v2_severity(0), Some(("UNKNOWN", 0)));
        assert_eq!(v2_severity(99), Some(("OTHER", 0)));
        assert_eq!(v2_severity(7), None);
    }
}
