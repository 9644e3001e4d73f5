//! The decision path of one BatchUpdateFindings request, as the proxy runs it after
//! authentication: strict parse + schema, the normalised update, the input document with
//! every finding's current state, and evaluation of the shipped policies.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use hubgate::decide::judge;
use hubgate::enrich::FindingKey;
use hubgate::policy::input::{self, Enrichment};
use hubgate::request::Judged;

mod support;
use support::{body, current, facts_for, member, page_keys, shipped, MapState};

fn decision(c: &mut Criterion) {
    let (policy, principal) = (shipped(), member());
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
        // The tree-walking interpreter, which stops on an evaluation error where the VM
        // serving requests treats the rule body as not holding: what judging with it (or
        // cross-checking the VM's allowed decisions with it) would cost.
        group.bench_with_input(
            BenchmarkId::new("evaluate_enriched_interpreted", n),
            &n,
            |b, _| b.iter(|| policy.evaluate_interpreted(black_box(doc.clone())).unwrap()),
        );
    }
    group.finish();
}

/// Reading one GetFindings answer of 20 findings, as the load bench's stub sends it (about
/// 3 KB a finding): what a cold 100-finding update does five times.
fn lookup_page(c: &mut Criterion) {
    let page: &[u8] = include_bytes!("fixtures/get_findings_20.json");
    let mut group = c.benchmark_group("lookup_page");
    let keys = page_keys(page);
    group.bench_function("read_page", |b| {
        b.iter(|| {
            let page = hubgate::enrich::read_page(black_box(page), &keys).unwrap();
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
