//! A finding's current state as the policy input holds it. Enrichment fetches it and the
//! caches keep it; converting once, here, is what keeps each decision cheap.

use std::sync::Arc;

use serde_json::Value;

use super::input::{EntryTemplate, Patch, StateFacts};
use crate::finding::FindingKey;

/// A finding's current state, already in the shape the policy input needs: converting it
/// once here, not on every request that targets it, is what keeps decisions cheap.
#[derive(Debug, Clone)]
pub struct CurrentFinding {
    pub entry: regorus::Value,
    /// Shared, not owned: the findings a lookup reads mostly belong to one account, and their
    /// states hold one copy of its number (see enrich's page memo).
    pub account_id: Option<Arc<str>>,
    pub severity_rank: Option<u64>,
    /// Rough size of the state's values, for the cache's memory bound and gauge (which count
    /// the key it is cached under apart: `enrich::held_bytes`).
    pub(crate) bytes: usize,
}

impl CurrentFinding {
    pub fn new(id: &str, product_arn: &str, finding: &Value) -> CurrentFinding {
        let projected = super::input::project(finding);
        let facts = StateFacts::read(&projected);
        // By JSON meaning: stored maps (UserDefinedFields) hold keys members choose.
        let current = super::input::rego_value(&Value::Object(projected));
        let bytes = approximate_size(&current);
        Self::from_facts(&FindingKey::new(id, product_arn), &facts, current, bytes)
    }

    /// The state of the finding `key` names; its entry shares the key's texts.
    pub(crate) fn from_facts(
        key: &FindingKey,
        facts: &StateFacts,
        current: regorus::Value,
        bytes: usize,
    ) -> CurrentFinding {
        CurrentFinding {
            entry: facts.entry(
                regorus::Value::String(key.id.clone()),
                regorus::Value::String(key.product_arn.clone()),
                current,
            ),
            account_id: facts.account_id.as_deref().map(Arc::from),
            severity_rank: facts.severity_rank(),
            bytes,
        }
    }

    /// The state of the finding `key` names, its entry made from `template`, which was made
    /// from the facts `account_id` and `severity_rank` come from.
    pub(crate) fn from_template(
        key: &FindingKey,
        template: &EntryTemplate,
        account_id: Option<Arc<str>>,
        severity_rank: Option<u64>,
        bytes: usize,
    ) -> CurrentFinding {
        CurrentFinding {
            entry: template.entry(regorus::Value::String(key.id.clone())),
            severity_rank,
            account_id,
            bytes,
        }
    }

    /// A state read back from the shared cache (`coordination::cache`).
    pub(crate) fn from_shared(
        entry: regorus::Value,
        account_id: Option<Arc<str>>,
        severity_rank: Option<u64>,
        bytes: usize,
    ) -> CurrentFinding {
        CurrentFinding {
            entry,
            account_id,
            severity_rank,
            bytes,
        }
    }

    /// The state after a processed update.
    pub(crate) fn patched(&self, patch: &Patch) -> CurrentFinding {
        CurrentFinding {
            entry: patch.apply(&self.entry),
            account_id: self.account_id.clone(),
            severity_rank: patch.severity_rank().or(self.severity_rank),
            bytes: self.bytes,
        }
    }
}

/// Rough heap size of a policy-input value, for the cache's memory gauge.
pub(crate) fn approximate_size(v: &regorus::Value) -> usize {
    use regorus::Value as R;
    match v {
        R::String(s) => s.len() + 24,
        R::Array(a) => 24 + a.iter().map(approximate_size).sum::<usize>(),
        R::Set(s) => 24 + s.iter().map(approximate_size).sum::<usize>(),
        R::Object(o) => {
            48 + o
                .iter()
                .map(|(k, v)| approximate_size(k) + approximate_size(v))
                .sum::<usize>()
        }
        _ => 16,
    }
}
