//! The first byte picks the judged operation (`Judged::ALL[byte % 4]`; the seeds use `0`
//! BatchUpdateFindings, `1` V2, `2` UpdateFindings, `3` BatchImportFindings), the rest is its
//! body: strict parse and schema, typed read and normalise. A body that gets through must
//! satisfy the typed-input invariant (tests/typed_input/invariant.rs): no member silently
//! becomes a null or missing policy fact, no integer member was written as `3.0`, `1e1`, `-0`.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use hubgate::policy::PolicySet;
use hubgate::request::Judged;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/typed_input/invariant.rs"]
mod invariant;

fn policies() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        PolicySet::load(&dir, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("cannot load {}: {e}", dir.display()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let op = Judged::ALL[selector as usize % Judged::ALL.len()];
    invariant::judge_front(&policies().schemas, op, body);
});
