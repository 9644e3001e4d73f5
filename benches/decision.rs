//! The decision path of one BatchUpdateFindings request, as the proxy runs it after
//! authentication: strict parse + schema, the normalised update, the input document with
//! every finding's current state, and evaluation of the shipped policies.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::{json, Value};

use hubgate::decide::{judge, FindingState, Lookup, LookupFailure};
use hubgate::enrich::{CurrentFinding, FindingKey};
use hubgate::identity::{Principal, Role};
use hubgate::policy::input::{self, Enrichment, RequestFacts};
use hubgate::policy::PolicySet;
use hubgate::request::Judged;

const ARN: &str = "arn:aws:securityhub:us-east-1::product/aws/securityhub";

fn body(n: usize) -> Vec<u8> {
    let ids: Vec<Value> = (0..n)
        .map(|i| json!({"Id": format!("arn:aws:securityhub:us-east-1:222222222222:subscription/aws-foundational-security-best-practices/v/1.0.0/EC2.{i}/finding/0b7d6f3e-2f0a-4a6e-9a5b-{i:012}"), "ProductArn": ARN}))
        .collect();
    serde_json::to_vec(&json!({
        "FindingIdentifiers": ids,
        "Severity": {"Label": "CRITICAL"},
        "Note": {"Text": "raised after triage, see SEC-1234", "UpdatedBy": "soar-runner"},
    }))
    .unwrap()
}

fn current(keys: &[FindingKey]) -> HashMap<FindingKey, Arc<CurrentFinding>> {
    keys.iter()
        .map(|k| {
            let finding = json!({
                "SchemaVersion": "2018-10-08", "Id": k.id, "ProductArn": k.product_arn,
                "GeneratorId": "aws-foundational-security-best-practices/v/1.0.0/EC2.1",
                "AwsAccountId": "222222222222", "Types": ["Software and Configuration Checks/Industry and Regulatory Standards"],
                "Severity": {"Label": "HIGH", "Normalized": 70, "Original": "HIGH"},
                "Title": "EC2 instances should not have a public IPv4 address",
                "Description": "This control checks whether EC2 instances have a public IP address.",
                "Resources": [{"Type": "AwsEc2Instance", "Id": "arn:aws:ec2:us-east-1:222222222222:instance/i-0123456789abcdef0", "Region": "us-east-1"}],
                "Workflow": {"Status": "NEW"}, "RecordState": "ACTIVE",
                "Compliance": {"Status": "FAILED"},
            });
            (k.clone(), Arc::new(CurrentFinding::new(&k.id, &k.product_arn, &finding)))
        })
        .collect()
}

/// Finding state from memory: the decision path without the network.
struct MapState(HashMap<FindingKey, Arc<CurrentFinding>>);

impl FindingState for MapState {
    fn lookup(
        &self,
        keys: &[FindingKey],
        _deadline: std::time::Instant,
    ) -> impl std::future::Future<Output = Result<Option<Lookup>, LookupFailure>> + Send {
        let current = keys
            .iter()
            .filter_map(|k| self.0.get(k).map(|f| (k.clone(), f.clone())))
            .collect();
        std::future::ready(Ok(Some(Lookup {
            current,
            stats: Default::default(),
        })))
    }
}

/// What the proxy knows about the request besides its body.
fn facts_for(principal: &Principal) -> RequestFacts<'_> {
    RequestFacts {
        operation: "BatchUpdateFindings",
        principal,
        method: "PATCH",
        path: "/findings/batchupdate",
        headers: Default::default(),
        source_ip: "127.0.0.1".into(),
        request_id: "bench",
        time: "2026-11-24T00:00:00Z".into(),
    }
}

fn decision(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let policy = PolicySet::load(&dir, Duration::from_secs(1)).expect("shipped policies load");
    let principal = Principal {
        id: "soar-runner".into(),
        account_id: "222222222222".into(),
        role: Role::Member,
        attributes: Default::default(),
    };
    let mut group = c.benchmark_group("decision");
    for n in [1usize, 100] {
        let raw = body(n);
        let parsed = policy.schemas.check("BatchUpdateFindings", &raw).unwrap();
        let keys: Vec<FindingKey> = parsed["FindingIdentifiers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| FindingKey::new(f["Id"].as_str().unwrap(), f["ProductArn"].as_str().unwrap()))
            .collect();
        let state = current(&keys);
        let source = MapState(state.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        group.bench_with_input(BenchmarkId::new("full", n), &raw, |b, raw| {
            b.iter(|| {
                // exactly what proxy::run does after authentication
                let facts = facts_for(&principal);
                let j = runtime
                    .block_on(judge(
                        &policy,
                        Judged::BatchUpdateFindings,
                        black_box(raw),
                        &facts,
                        Some(&source),
                        false,
                        std::time::Instant::now() + Duration::from_secs(10),
                    ))
                    .unwrap();
                assert_eq!(j.passes.len(), 2);
                assert!(j.decision().unwrap().allowed());
            })
        });
        group.bench_with_input(BenchmarkId::new("parse_validate", n), &raw, |b, raw| {
            b.iter(|| {
                policy
                    .schemas
                    .check("BatchUpdateFindings", black_box(raw))
                    .unwrap()
            })
        });
        let mut stripped = parsed.clone();
        stripped
            .as_object_mut()
            .unwrap()
            .remove("FindingIdentifiers");
        let update = input::update_for(Judged::BatchUpdateFindings, &parsed)
            .unwrap()
            .to_value();
        let facts = facts_for(&principal);
        let enriched = || {
            input::document(
                &facts,
                &stripped,
                &update,
                &keys,
                Some(&state),
                Enrichment::Complete,
            )
        };
        group.bench_with_input(BenchmarkId::new("build_input", n), &n, |b, _| {
            b.iter(enriched)
        });
        let doc = enriched();
        let pending = input::document(&facts, &stripped, &update, &keys, None, Enrichment::Pending);
        group.bench_with_input(BenchmarkId::new("build_pending", n), &n, |b, _| {
            b.iter(|| input::document(&facts, &stripped, &update, &keys, None, Enrichment::Pending))
        });
        group.bench_with_input(BenchmarkId::new("evaluate_pending", n), &n, |b, _| {
            b.iter(|| policy.evaluate(black_box(pending.clone())).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("evaluate_enriched", n), &n, |b, _| {
            b.iter(|| policy.evaluate(black_box(doc.clone())).unwrap())
        });
    }
    group.finish();
}

/// Reading one GetFindings answer of 20 findings, as the load bench's stub sends it (about
/// 3 KB a finding): what a cold 100-finding update does five times.
fn lookup_page(c: &mut Criterion) {
    let page: &[u8] = include_bytes!("fixtures/get_findings_20.json");
    let mut group = c.benchmark_group("lookup_page");
    group.bench_function("read_page", |b| {
        b.iter(|| {
            let page = hubgate::enrich::read_page(black_box(page)).unwrap();
            assert_eq!(page.findings.len(), 20);
            page
        })
    });
    // the floor: validating and skipping the same bytes, building nothing
    group.bench_function("skip_only", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(page)).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = decision, lookup_page
}
criterion_main!(benches);
