//! Judging one request body: strict parse and schema, the typed reading, the normalised update,
//! then the policy passes (the request alone, then with the findings' state). The proxy,
//! `hubgate eval` and the benchmark all call `judge`, so eval shows what serving does.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::finding::{FindingKey, KeyMap};
use crate::identity::{CallerId, Role};
use crate::policy::input::{self, Enrichment, RequestFacts, Update};
use crate::policy::state::CurrentFinding;
use crate::policy::{Decision, PolicyError, PolicySet};
use crate::quota::QuotaExhausted;
use crate::request::Judged;
use crate::upstream::UpstreamError;
use crate::validate::ValidationErrors;

/// What one lookup did, for the audit record's metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct LookupStats {
    pub cache_hits: usize,
    /// Distinct findings that had to be looked up.
    pub misses: usize,
    /// GetFindings calls made for this request's findings (shared calls count once per
    /// request that waited on them), failed ones included.
    pub calls: usize,
    /// Security Hub throttled at least one of those calls.
    pub throttled: bool,
}

/// The findings' current state, as one lookup found it.
pub struct Lookup {
    pub current: KeyMap<Arc<CurrentFinding>>,
    /// The states as Security Hub reported them, when `current` has writes hubgate forwarded
    /// laid over them that Security Hub may not have applied yet (or that another writer may
    /// have overwritten since): the decision must hold on both.
    pub unsettled: Option<KeyMap<Arc<CurrentFinding>>>,
    pub stats: LookupStats,
    /// When each state was read, for sources that others write to.
    pub reads: Option<Box<dyn Reads>>,
}

/// When the state a decision read was read, kept until the request is forwarded: a write
/// forwarded in between may have changed what the decision was made on.
pub trait Reads: Send + Sync {
    /// What writes forwarded since the state of `keys` was read (with no keys: the state of
    /// any finding) did to `read`, the states read then (and to `unsettled`, the states as
    /// Security Hub reported them, when they differ).
    fn changed(
        &self,
        keys: &[FindingKey],
        read: &KeyMap<Arc<CurrentFinding>>,
        unsettled: Option<&KeyMap<Arc<CurrentFinding>>>,
    ) -> Changed;
}

/// The finding state a decision was made on, and when it was read.
pub struct StateRead {
    pub when: Box<dyn Reads>,
    pub states: KeyMap<Arc<CurrentFinding>>,
    pub unsettled: Option<KeyMap<Arc<CurrentFinding>>>,
}

impl StateRead {
    pub fn changed(self, keys: &[FindingKey]) -> Changed {
        self.when
            .changed(keys, &self.states, self.unsettled.as_ref())
    }
}

pub enum Changed {
    /// Nothing was written to them since.
    No,
    /// Every write since is one hubgate can lay over the state it read.
    Patched(Replay),
    /// A write since had an effect hubgate cannot tell: the state must be read again.
    Unknown,
}

/// The state a decision read with the writes since laid over it: a source that needs no
/// lookup, for deciding again.
pub struct Replay {
    pub current: KeyMap<Arc<CurrentFinding>>,
    pub unsettled: Option<KeyMap<Arc<CurrentFinding>>>,
    /// When this state is from (the moment the writes were laid over it); taken by the lookup.
    pub reads: std::sync::Mutex<Option<Box<dyn Reads>>>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replay({} findings)", self.current.len())
    }
}

impl FindingState for Replay {
    fn lookup(
        &self,
        keys: &[FindingKey],
        _caller: CallerId<'_>,
        _deadline: Instant,
    ) -> impl Future<Output = Result<Option<Lookup>, LookupFailure>> + Send {
        let reads = self.reads.lock().unwrap_or_else(|p| p.into_inner()).take();
        let of = |states: &KeyMap<Arc<CurrentFinding>>| -> KeyMap<Arc<CurrentFinding>> {
            keys.iter()
                .filter_map(|k| states.get(k).map(|f| (k.clone(), f.clone())))
                .collect()
        };
        std::future::ready(Ok(Some(Lookup {
            current: of(&self.current),
            unsettled: self.unsettled.as_ref().map(of),
            stats: LookupStats {
                cache_hits: keys.len(),
                ..Default::default()
            },
            reads,
        })))
    }
}

/// Where finding state comes from: Security Hub through enrichment when serving, a file for
/// `hubgate eval`, a fixed map in the benchmark.
pub trait FindingState {
    /// The state of each finding (a key missing from the map was not found), or None when
    /// this source cannot look findings up at all. Sources that call Security Hub share its
    /// quota between accounts in turn, and between an account's callers in turn (`caller`).
    fn lookup(
        &self,
        keys: &[FindingKey],
        caller: CallerId<'_>,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<Lookup>, LookupFailure>> + Send;

    /// `lookup` for a member's request, `member_of` its account. A source that refuses
    /// findings whose state is settling (503 STATE_SETTLING) refuses them only for the
    /// member's own found ones: another account's finding reaches the member's
    /// policy input as one not found (`Document::withheld`), so its state changes no rule's
    /// judgement, and a refusal naming it told the member that an administrator had just
    /// changed a finding its own credentials cannot read, how long ago, and that it cannot be
    /// modelled. Sources without such refusals need not tell the two apart.
    fn lookup_for_member(
        &self,
        keys: &[FindingKey],
        caller: CallerId<'_>,
        member_of: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<Lookup>, LookupFailure>> + Send {
        let _ = member_of;
        self.lookup(keys, caller, deadline)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Lookup(#[from] UpstreamError),
    #[error(transparent)]
    Quota(#[from] QuotaExhausted),
    #[error(transparent)]
    Unsettled(#[from] Unsettled),
}

/// Why finding state could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Quota(#[from] QuotaExhausted),
    #[error(transparent)]
    Unsettled(#[from] Unsettled),
}

/// A write hubgate forwarded changed a finding in a way hubgate cannot lay over what Security
/// Hub reports, and Security Hub may not have applied it yet: the write is not answered yet, or
/// was less than `enrichment.settle_ms` ago. The finding's state cannot be known until then.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{subject} {when} in a way hubgate cannot model, and Security Hub may still be applying \
     it; changes that depend on its state are refused {until}: retry in {retry_after_s} s",
    subject = unsettled_subject(.finding),
    when = unsettled_when(*.in_flight, .operation, *.since_ms),
    until = if *.in_flight { "until Security Hub answers it" } else {
        "for enrichment.settle_ms after such a write"
    }
)]
pub struct Unsettled {
    /// None: the write may have changed any finding.
    pub finding: Option<FindingKey>,
    pub operation: String,
    pub since_ms: u64,
    pub retry_after_s: u64,
    /// The write is sent and not answered yet.
    pub in_flight: bool,
}

fn unsettled_when(in_flight: bool, operation: &str, since_ms: u64) -> String {
    match in_flight {
        true => format!(
            "is being changed through hubgate by {operation}, sent {since_ms} ms ago and not \
             answered yet,"
        ),
        false => format!("was changed through hubgate by {operation} {since_ms} ms ago"),
    }
}

fn unsettled_subject(finding: &Option<FindingKey>) -> String {
    match finding {
        Some(k) => format!("finding {:?} of {:?}", k.id, k.product_arn),
        None => "any finding".to_string(),
    }
}

/// A failed lookup, with what it cost: lookup calls are counted even when they fail.
#[derive(Debug)]
pub struct LookupFailure {
    pub error: LookupError,
    pub stats: LookupStats,
}

impl From<LookupError> for JudgeError {
    fn from(e: LookupError) -> JudgeError {
        match e {
            LookupError::Upstream(e) => JudgeError::Lookup(e),
            LookupError::Quota(e) => JudgeError::Quota(e),
            LookupError::Unsettled(e) => JudgeError::Unsettled(e),
        }
    }
}

/// One evaluation of the policies, with the input document it saw.
pub struct Pass {
    pub enrichment: Enrichment,
    pub decision: Decision,
    pub input: regorus::Value,
}

/// What judging found: the passes evaluated (the last one decides) and what forwarding and the
/// audit record need from the request.
pub struct Judgement {
    pub passes: Vec<Pass>,
    /// The findings the request names, de-duplicated.
    pub keys: Vec<FindingKey>,
    /// The account each of `keys` belongs to by the request's own say (V2, imports).
    pub claimed_accounts: Vec<Option<String>>,
    pub update: Update,
    /// `update` as the input document (and the audit record) hold it.
    pub update_json: Value,
    /// The checked body without the members that became input.findings.
    pub body: Value,
    /// BatchUpdateFindings' FindingIdentifiers as sent, for per-finding forwarding.
    pub identifiers: Option<Value>,
    /// False when finding state was needed but the source could not look it up (eval only).
    pub complete: bool,
    /// The lookup that failed: the request cannot be judged, and is refused with this error.
    pub failed: Option<LookupError>,
    pub stats: LookupStats,
    /// The state the decision read and when, if it came from a lookup.
    pub reads: Option<StateRead>,
    /// The findings whose state had hubgate's own recent writes laid over it: judged on that
    /// state and on the state as read.
    pub overlaid: Vec<FindingKey>,
    /// The findings found in another account than the member's (or in none), which its policy
    /// input held as not found (`Document::withheld`): for the record, which tells the
    /// operator what the member's answer does not.
    pub withheld: Vec<FindingKey>,
    pub policy_ns: u64,
    pub enrich_ns: u64,
}

impl Judgement {
    /// The deciding pass's verdict.
    pub fn decision(&self) -> Option<&Decision> {
        self.passes.last().map(|p| &p.decision)
    }

    /// Takes the deciding pass out: its decision and input document.
    pub fn into_last_pass(mut self) -> Option<Pass> {
        self.passes.pop()
    }
}

/// The denied findings with their reasons, when a denial may be cut down to them
/// (`on_partial_deny = "forward-allowed"`): every violation names a finding of the request, and
/// the deciding pass (of `enrichment`) judged every finding it lets through. None: the request
/// is refused whole.
pub fn denied_one_by_one(
    enrichment: Enrichment,
    decision: &Decision,
    keys: &[FindingKey],
) -> Option<KeyMap<Vec<String>>> {
    // A first pass that denies ends the request before any lookup, so the findings it did not
    // deny were never judged on their state: when the policies need that state, none of them
    // may be forwarded.
    if enrichment == Enrichment::Pending && decision.needs_state {
        return None;
    }
    let mut denied: KeyMap<Vec<String>> = KeyMap::default();
    for v in &decision.deny {
        let f = v.finding.as_ref()?;
        let key = FindingKey::new(f.get("Id")?.as_str()?, f.get("ProductArn")?.as_str()?);
        if !keys.contains(&key) {
            // A policy naming a finding the request does not target is a policy bug.
            return None;
        }
        let reasons = denied.entry(key).or_default();
        if !reasons.contains(&v.msg) {
            reasons.push(v.msg.clone());
        }
    }
    Some(denied)
}

/// Folds the last pass's denials and warnings into the pass before it, which then decides.
fn merge_last_two(passes: &mut Vec<Pass>) {
    let Some(second) = passes.pop() else {
        return;
    };
    let Some(first) = passes.last_mut() else {
        passes.push(second);
        return;
    };
    let decision = &mut first.decision;
    for v in second.decision.deny {
        if !decision.deny.contains(&v) {
            decision.deny.push(v);
        }
    }
    for v in second.decision.warn {
        if !decision.warn.contains(&v) {
            decision.warn.push(v);
        }
    }
}

fn invalid(operation: Judged, v: crate::validate::Violation) -> ValidationErrors {
    ValidationErrors {
        operation: operation.name(),
        errors: vec![v],
    }
}

/// Judges one request. With `state` None (enrichment disabled) rules that need finding state
/// see `input.enrichment == "disabled"`. Outside dry-run, a denial in the first pass ends
/// judging before any lookup, and so does a first pass whose `needs_state` is false. A failed
/// lookup is returned in `Judgement::failed`, with what it cost, for the audit record.
pub async fn judge<S: FindingState>(
    policy: &PolicySet,
    operation: Judged,
    raw: &[u8],
    facts: &RequestFacts<'_>,
    state: Option<&S>,
    dry_run: bool,
    deadline: Instant,
) -> Result<Judgement, JudgeError> {
    let mut body = policy.schemas.check(operation.name(), raw)?;
    let typed = operation.read(&body).map_err(|v| invalid(operation, v))?;
    let normalised = input::normalise(&typed).map_err(|v| invalid(operation, v))?;
    drop(typed);
    // The identifiers travel once, as input.findings, not twice.
    let mut identifiers = None;
    if let Some(obj) = body.as_object_mut() {
        for member in normalised.strip {
            let removed = obj.remove(*member);
            if *member == "FindingIdentifiers" && operation == Judged::BatchUpdateFindings {
                identifiers = removed;
            }
        }
    }
    let mut judgement = Judgement {
        passes: Vec::with_capacity(2),
        keys: normalised.keys,
        update_json: normalised.update.to_value(),
        update: normalised.update,
        body,
        identifiers,
        complete: true,
        failed: None,
        stats: LookupStats::default(),
        reads: None,
        overlaid: Vec::new(),
        withheld: Vec::new(),
        claimed_accounts: Vec::new(),
        policy_ns: 0,
        enrich_ns: 0,
    };
    let claims = normalised.claimed_accounts;
    let document = input::Document::new(facts, &judgement.body, &judgement.update_json);
    let evaluate = |j: &mut Judgement,
                    current: Option<&KeyMap<Arc<CurrentFinding>>>,
                    enrichment: Enrichment|
     -> Result<bool, PolicyError> {
        let t = Instant::now();
        let doc = document.pass(&j.keys, &claims, current, enrichment);
        let decision = policy.evaluate(doc.clone());
        j.policy_ns += t.elapsed().as_nanos() as u64;
        let decision = decision?;
        let allowed = decision.allowed();
        j.passes.push(Pass {
            enrichment,
            decision,
            input: doc,
        });
        Ok(allowed)
    };
    match (normalised.enrichable, state) {
        (false, _) => {
            evaluate(&mut judgement, None, Enrichment::NotApplicable)?;
        }
        (true, None) => {
            evaluate(&mut judgement, None, Enrichment::Disabled)?;
        }
        (true, Some(state)) => {
            // A request that no finding state could make acceptable is refused without any
            // upstream call, and one the policies can judge without state makes none either.
            let early = evaluate(&mut judgement, None, Enrichment::Pending)?;
            let needs_state = judgement
                .passes
                .last()
                .is_some_and(|p| p.decision.needs_state);
            if (early || dry_run) && needs_state {
                let t = Instant::now();
                let keys = &judgement.keys;
                let account = &facts.principal.account_id;
                let caller = facts.principal.caller();
                let found = match facts.principal.role {
                    Role::Member => {
                        state
                            .lookup_for_member(keys, caller, account, deadline)
                            .await
                    }
                    Role::Administrator => state.lookup(keys, caller, deadline).await,
                };
                judgement.enrich_ns = t.elapsed().as_nanos() as u64;
                match found {
                    Ok(Some(Lookup {
                        current,
                        unsettled,
                        stats,
                        reads,
                    })) => {
                        judgement.stats = stats;
                        judgement.withheld = document.withheld_of(&judgement.keys, &current);
                        evaluate(&mut judgement, Some(&current), Enrichment::Complete)?;
                        // Security Hub may not have applied hubgate's own recent writes, or
                        // another writer may have changed what they set since: the request
                        // must be acceptable whichever state the findings are in. Every
                        // finding either pass denies is denied (a partial forward included),
                        // and the record keeps what both passes said.
                        if let Some(reported) = &unsettled {
                            evaluate(&mut judgement, Some(reported), Enrichment::Complete)?;
                            merge_last_two(&mut judgement.passes);
                            judgement.overlaid = judgement
                                .keys
                                .iter()
                                .filter(|k| match (current.get(*k), reported.get(*k)) {
                                    (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                                    _ => false,
                                })
                                .cloned()
                                .collect();
                        }
                        judgement.reads = reads.map(|when| StateRead {
                            when,
                            states: current,
                            unsettled,
                        });
                    }
                    Ok(None) => judgement.complete = false,
                    Err(e) => {
                        judgement.stats = e.stats;
                        judgement.failed = Some(e.error);
                    }
                }
            }
        }
    }
    judgement.claimed_accounts = claims;
    Ok(judgement)
}
