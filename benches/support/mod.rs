//! What the decision benches share: a BatchUpdateFindings body, finding state held in memory
//! (the decision path without the network) and the request facts the proxy would pass.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use hubgate::decide::{FindingState, Lookup, LookupFailure};
use hubgate::enrich::{read_page, CurrentFinding, FindingKey};
use hubgate::finding::KeyMap;
use hubgate::identity::{CallerId, Principal, Role};
use hubgate::policy::input::RequestFacts;
use hubgate::policy::PolicySet;

const ARN: &str = "arn:aws:securityhub:us-east-1::product/aws/securityhub";

pub fn body(n: usize) -> Vec<u8> {
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

/// The keys of a GetFindings answer's findings, in its order: what a lookup of them asks for,
/// so reading the answer against them is what enrichment does.
pub fn page_keys(page: &[u8]) -> Vec<FindingKey> {
    read_page(page, &[])
        .expect("the fixture reads")
        .findings
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

pub fn current(keys: &[FindingKey]) -> KeyMap<Arc<CurrentFinding>> {
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
pub struct MapState(pub KeyMap<Arc<CurrentFinding>>);

impl FindingState for MapState {
    fn lookup(
        &self,
        keys: &[FindingKey],
        _caller: CallerId<'_>,
        _deadline: std::time::Instant,
    ) -> impl std::future::Future<Output = Result<Option<Lookup>, LookupFailure>> + Send {
        let current = keys
            .iter()
            .filter_map(|k| self.0.get(k).map(|f| (k.clone(), f.clone())))
            .collect();
        std::future::ready(Ok(Some(Lookup {
            current,
            unsettled: None,
            stats: Default::default(),
            reads: None,
        })))
    }
}

/// What the proxy knows about the request besides its body.
pub fn facts_for(principal: &Principal) -> RequestFacts<'_> {
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

/// The shipped policy set, as `hubgate serve` loads it by default.
pub fn shipped() -> PolicySet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    PolicySet::load(&dir, Duration::from_secs(1)).expect("shipped policies load")
}

/// The member caller every bench decides for.
pub fn member() -> Principal {
    Principal {
        id: "soar-runner".into(),
        account_id: "222222222222".into(),
        role: Role::Member,
        attributes: Default::default(),
    }
}
