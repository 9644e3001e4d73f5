//! GetFindings answers as enrichment reads them (src/enrich.rs `read_page`): Security Hub's
//! bytes are input hubgate did not write, so reading them must never panic, and what it reads
//! must be what the JSON path (`CurrentFinding::new`, used by `hubgate eval`) reads from the
//! same finding: the same entry, account and severity rank, whichever parser built it.
#![no_main]

use hubgate::enrich::read_page;
use hubgate::policy::state::CurrentFinding;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(page) = read_page(data, &[]) else {
        return;
    };
    let found = page.findings;
    // Read again against its own keys, as enrichment reads the answer to a lookup of them
    // (in order, and in reverse, where only some or none are at the place asked): the same.
    let keys: Vec<_> = found.iter().map(|(key, _)| key.clone()).collect();
    let reversed: Vec<_> = keys.iter().rev().cloned().collect();
    for asked in [&keys, &reversed] {
        let again = read_page(data, asked).expect("the bytes read once");
        assert_eq!(again.findings.len(), found.len());
        for ((k1, s1), (k2, s2)) in found.iter().zip(&again.findings) {
            assert_eq!(k1, k2);
            assert_eq!(s1.entry, s2.entry);
            assert_eq!(s1.account_id, s2.account_id);
            assert_eq!(s1.severity_rank, s2.severity_rank);
        }
    }
    // What the JSON path sees: every finding object that names a string Id and ProductArn.
    // Members read_page skips are skipped without checking their strings' UTF-8 (serde_json's
    // IgnoredAny), so it may accept bytes the JSON path refuses; nothing of those is read.
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let findings: Vec<&Value> = doc["Findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|f| f["Id"].is_string() && f["ProductArn"].is_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(found.len(), findings.len(), "findings with a key");
    for ((key, got), f) in found.iter().zip(findings) {
        assert_eq!(f["Id"].as_str(), Some(&*key.id));
        assert_eq!(f["ProductArn"].as_str(), Some(&*key.product_arn));
        let expected = CurrentFinding::new(&key.id, &key.product_arn, f);
        assert_eq!(got.entry, expected.entry);
        assert_eq!(got.account_id, expected.account_id);
        assert_eq!(got.severity_rank, expected.severity_rank);
    }
});
