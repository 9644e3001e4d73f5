//! Enrichment: the current state of the findings a request targets, read with GetFindings
//! (at most 20 ids per call, as the API allows) and cached for `enrichment.cache_ttl_ms`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use crate::upstream::{Upstream, UpstreamError};

/// GetFindings accepts at most 20 values per filter attribute.
pub const IDS_PER_LOOKUP: usize = 20;
/// A runaway NextToken chain must not hold a request forever.
const MAX_PAGES_PER_LOOKUP: usize = 20;
/// The cache never grows past this many findings.
const MAX_CACHE_ENTRIES: usize = 50_000;

/// A finding's current state, already in the shape the policy input needs: converting it
/// once here, not on every request that targets it, is what keeps decisions cheap.
#[derive(Debug, Clone)]
pub struct CurrentFinding {
    pub entry: regorus::Value,
    pub account_id: Option<String>,
    pub severity_rank: Option<u64>,
}

impl CurrentFinding {
    pub fn new(id: &str, product_arn: &str, finding: &Value) -> CurrentFinding {
        use crate::policy::input::{effective_label, finding_entry, label_rank};
        CurrentFinding {
            entry: finding_entry(id, product_arn, Some(finding)),
            account_id: finding
                .get("AwsAccountId")
                .and_then(Value::as_str)
                .map(str::to_string),
            severity_rank: finding
                .get("Severity")
                .and_then(effective_label)
                .and_then(label_rank),
        }
    }
}

pub type FindingKey = (String, String);

impl crate::policy::judge::FindingState for Enricher {
    async fn lookup(
        &self,
        keys: &[FindingKey],
    ) -> Result<Option<crate::policy::judge::Lookup>, UpstreamError> {
        let (current, stats) = Enricher::lookup(self, keys).await?;
        Ok(Some(crate::policy::judge::Lookup { current, stats }))
    }
}

pub struct Enricher {
    upstream: Arc<Upstream>,
    ttl: Duration,
    cache: Mutex<HashMap<FindingKey, (Instant, Arc<CurrentFinding>)>>,
}

/// What one lookup did, for the audit record's metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct LookupStats {
    pub cache_hits: usize,
    /// Distinct findings that had to be looked up.
    pub misses: usize,
    pub calls: usize,
}

impl Enricher {
    pub fn new(upstream: Arc<Upstream>, ttl: Duration) -> Enricher {
        Enricher {
            upstream,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Current state of each (Id, ProductArn); a key missing from the result was not found.
    pub async fn lookup(
        &self,
        keys: &[FindingKey],
    ) -> Result<(HashMap<FindingKey, Arc<CurrentFinding>>, LookupStats), UpstreamError> {
        let mut found = HashMap::with_capacity(keys.len());
        let mut missing: Vec<FindingKey> = Vec::new();
        let mut stats = LookupStats::default();
        if !self.ttl.is_zero() {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            for key in keys {
                match cache.get(key) {
                    Some((at, f)) if now.duration_since(*at) < self.ttl => {
                        stats.cache_hits += 1;
                        found.insert(key.clone(), f.clone());
                    }
                    _ => missing.push(key.clone()),
                }
            }
        } else {
            missing = keys.to_vec();
        }
        missing.sort();
        missing.dedup();
        stats.misses = keys.len() - stats.cache_hits;

        let mut calls = tokio::task::JoinSet::new();
        for chunk in missing.chunks(IDS_PER_LOOKUP) {
            let upstream = self.upstream.clone();
            let chunk = chunk.to_vec();
            calls.spawn(async move { fetch_chunk(&upstream, &chunk).await });
        }
        let mut fetched = Vec::new();
        while let Some(joined) = calls.join_next().await {
            let (findings, pages) = joined
                .map_err(|e| UpstreamError::Unreachable(format!("lookup task failed: {e}")))??;
            stats.calls += pages;
            fetched.extend(findings);
        }

        let wanted: std::collections::HashSet<&FindingKey> = missing.iter().collect();
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() + fetched.len() > MAX_CACHE_ENTRIES {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            if cache.len() + fetched.len() > MAX_CACHE_ENTRIES {
                cache.clear();
            }
        }
        for finding in fetched {
            let key = match (
                finding.get("Id").and_then(Value::as_str),
                finding.get("ProductArn").and_then(Value::as_str),
            ) {
                (Some(id), Some(arn)) => (id.to_string(), arn.to_string()),
                _ => continue,
            };
            // The filter ORs ids and product ARNs, so pairs that were not asked for can come back.
            if !wanted.contains(&key) {
                continue;
            }
            let current = Arc::new(CurrentFinding::new(&key.0, &key.1, &finding));
            if !self.ttl.is_zero() {
                cache.insert(key.clone(), (now, current.clone()));
            }
            found.insert(key, current);
        }
        Ok((found, stats))
    }

    /// Forgets the cached state of findings an update was just forwarded for, so the next
    /// decision about them does not judge against the value from before the update.
    pub fn invalidate(&self, keys: &[FindingKey]) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            cache.remove(key);
        }
    }
}

/// The GetFindings request body for one chunk of at most 20 findings.
pub fn lookup_body(chunk: &[FindingKey], next_token: Option<&str>) -> Value {
    let mut arns: Vec<&str> = chunk.iter().map(|(_, arn)| arn.as_str()).collect();
    arns.sort_unstable();
    arns.dedup();
    let mut body = json!({
        "Filters": {
            "Id": chunk.iter().map(|(id, _)| json!({"Value": id, "Comparison": "EQUALS"})).collect::<Vec<_>>(),
            "ProductArn": arns.iter().map(|arn| json!({"Value": arn, "Comparison": "EQUALS"})).collect::<Vec<_>>(),
        },
        "MaxResults": 100,
    });
    if let Some(token) = next_token {
        body["NextToken"] = json!(token);
    }
    body
}

async fn fetch_chunk(
    upstream: &Upstream,
    chunk: &[FindingKey],
) -> Result<(Vec<Value>, usize), UpstreamError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    for page in 1..=MAX_PAGES_PER_LOOKUP {
        let body = lookup_body(chunk, token.as_deref());
        let response = upstream
            .call_json("GetFindings", Method::POST, "/findings", &body)
            .await?;
        let findings = response
            .get("Findings")
            .and_then(Value::as_array)
            .ok_or_else(|| UpstreamError::BadResponse {
                operation: "GetFindings",
                detail: "the response has no Findings list".into(),
            })?;
        out.extend(findings.iter().cloned());
        token = response
            .get("NextToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            return Ok((out, page));
        }
    }
    Err(UpstreamError::BadResponse {
        operation: "GetFindings",
        detail: format!(
            "more than {MAX_PAGES_PER_LOOKUP} pages for {} findings",
            chunk.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_body_filters_ids_and_distinct_arns() {
        let chunk = vec![
            ("a".to_string(), "arn:1".to_string()),
            ("b".to_string(), "arn:1".to_string()),
            ("c".to_string(), "arn:2".to_string()),
        ];
        let body = lookup_body(&chunk, Some("tok"));
        assert_eq!(body["Filters"]["Id"].as_array().unwrap().len(), 3);
        assert_eq!(body["Filters"]["ProductArn"].as_array().unwrap().len(), 2);
        assert_eq!(body["Filters"]["Id"][0]["Comparison"], "EQUALS");
        assert_eq!(body["NextToken"], "tok");
        assert_eq!(body["MaxResults"], 100);
        assert!(lookup_body(&chunk, None).get("NextToken").is_none());
    }
}
