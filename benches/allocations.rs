//! Heap allocations per operation on the paths the load bench measures. CPU time on a shared
//! machine swings by 2x between runs; an allocation count does not, so a change to the page
//! reader or the decision path shows here first (`cargo bench --bench allocations`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hubgate::decide::judge;
use hubgate::enrich::{lookup_body, read_page, FindingKey};
use hubgate::policy::input::{self, Enrichment};
use hubgate::request::Judged;

mod support;
use support::{body, current, facts_for, member, page_keys, shipped, MapState};

/// The system allocator, counting: each allocation and reallocation, and the bytes asked for.
struct Counting;

static CALLS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations and bytes of one run of `f`, after one run to fill lazily built statics. The
/// result is dropped outside the count: freeing allocates nothing.
fn count<R>(mut f: impl FnMut() -> R) -> (u64, u64) {
    drop(f());
    let (calls, bytes) = (CALLS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    let kept = f();
    let counted = (
        CALLS.load(Ordering::Relaxed) - calls,
        BYTES.load(Ordering::Relaxed) - bytes,
    );
    drop(kept);
    counted
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to choose between
    let mut rows = Vec::new();

    let page: &[u8] = include_bytes!("fixtures/get_findings_20.json");
    let keys = page_keys(page);
    rows.push((
        "read one GetFindings page (20 findings, 60 KB)",
        count(|| read_page(page, &keys).expect("the fixture reads")),
    ));
    rows.push((
        "serialise one GetFindings request (20 ids)",
        count(|| serde_json::to_vec(&lookup_body(&keys, None)).expect("serialises")),
    ));

    let (policy, principal) = (shipped(), member());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    for (n, label) in [
        (1, "decide a 1-finding update, state cached (both passes)"),
        (
            100,
            "decide a 100-finding update, state cached (both passes)",
        ),
    ] {
        let raw = body(n);
        let parsed = policy
            .schemas
            .check("BatchUpdateFindings", &raw)
            .expect("the body is valid");
        let keys: Vec<FindingKey> = parsed["FindingIdentifiers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                Some(FindingKey::new(
                    f["Id"].as_str()?,
                    f["ProductArn"].as_str()?,
                ))
            })
            .collect();
        let state = current(&keys);
        let source = MapState(state.clone());
        if n == 100 {
            // the full path's parts, as `benches/decision.rs` times them
            rows.push((
                "  parse (strict) + JSON Schema, 100 findings",
                count(|| policy.schemas.check("BatchUpdateFindings", &raw)),
            ));
            let mut stripped = parsed.clone();
            if let Some(body) = stripped.as_object_mut() {
                body.remove("FindingIdentifiers");
            }
            let update = input::update_for(Judged::BatchUpdateFindings, &parsed)
                .expect("an update")
                .to_value();
            let facts = facts_for(&principal);
            let pending =
                || input::document(&facts, &stripped, &update, &keys, None, Enrichment::Pending);
            let enriched = || {
                let state = Some(&state);
                input::document(
                    &facts,
                    &stripped,
                    &update,
                    &keys,
                    state,
                    Enrichment::Complete,
                )
            };
            rows.push(("  build the first-pass input", count(pending)));
            let doc = pending();
            rows.push((
                "  evaluate the first pass",
                count(|| policy.evaluate(doc.clone())),
            ));
            rows.push(("  build the second-pass input", count(enriched)));
            let doc = enriched();
            rows.push((
                "  evaluate the second pass",
                count(|| policy.evaluate(doc.clone())),
            ));
        }
        rows.push((
            label,
            count(|| {
                let facts = facts_for(&principal);
                let judged = runtime
                    .block_on(judge(
                        &policy,
                        Judged::BatchUpdateFindings,
                        &raw,
                        &facts,
                        Some(&source),
                        false,
                        std::time::Instant::now() + Duration::from_secs(10),
                    ))
                    .expect("judged");
                assert!(judged.decision().expect("a decision").allowed());
                judged
            }),
        ));
    }

    println!("| operation | allocations | bytes allocated |");
    println!("|---|---:|---:|");
    for (label, (calls, bytes)) in rows {
        println!("| {label} | {calls} | {bytes} |");
    }
}
