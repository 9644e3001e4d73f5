//! `hubgate eval`: one request body through the same validation, input document and policy
//! passes as the proxy, printed with every violation and the rule that produced it.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::EvalArgs;
use crate::config::{Config, PartialDeny, PolicyMode};
use crate::decide::{judge, FindingState, JudgeError, Lookup, LookupFailure};
use crate::finding::{FindingKey, KeyMap};
use crate::identity::{self, CallerId, Principal, Role};
use crate::policy::input::{Enrichment, RequestFacts};
use crate::policy::state::CurrentFinding;
use crate::policy::{Decision, PolicySet};
use crate::request::Judged;
use crate::routes;
use crate::routes::Routing;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("hubgate: {msg}");
    ExitCode::from(2)
}

/// The request body `--request` names and the principal it is judged as.
fn request_of(args: &EvalArgs, config: &Config) -> Result<(Vec<u8>, Principal), String> {
    let body =
        std::fs::read(&args.request).map_err(|e| format!("{}: {e}", args.request.display()))?;
    Ok((body, principal(args, config)?))
}

fn principal(args: &EvalArgs, config: &Config) -> Result<Principal, String> {
    if let Some(spec) = &args.as_ {
        let (role, account) = spec
            .split_once(':')
            .ok_or_else(|| format!("--as {spec:?}: expected ROLE:ACCOUNT"))?;
        let role = match role {
            "member" => Role::Member,
            "administrator" => Role::Administrator,
            other => {
                return Err(format!(
                    "--as: role {other:?} is not member or administrator"
                ))
            }
        };
        if !crate::finding::is_account_id(account) {
            return Err(format!("--as: {account:?} is not a 12-digit account id"));
        }
        return Ok(Principal {
            id: format!("eval-{}", spec.replace(':', "-")),
            account_id: account.to_string(),
            role,
            attributes: Default::default(),
        });
    }
    let id = args
        .principal
        .as_deref()
        .ok_or("give --principal ID (from the callers file) or --as ROLE:ACCOUNT")?;
    identity::principals(&config.identity.callers)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| format!("no caller {id:?} in {}", config.identity.callers.display()))
}

fn current_findings(path: &Path) -> Result<KeyMap<Arc<CurrentFinding>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Read as serve reads GetFindings answers: by JSON meaning, so that a finding whose map
    // keys are spelled like serde_json's markers is judged here as it is there.
    let value: Value = crate::validate::parse_strict(text.as_bytes())
        .map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    let list = match &value {
        Value::Array(items) => items.clone(),
        Value::Object(o) => match o.get("Findings") {
            Some(Value::Array(items)) => items.clone(),
            _ => {
                return Err(format!(
                    "{}: expected a list of findings or a GetFindings response",
                    path.display()
                ))
            }
        },
        _ => {
            return Err(format!(
                "{}: expected a list of findings or a GetFindings response",
                path.display()
            ))
        }
    };
    let mut out = KeyMap::default();
    for f in list {
        let (Some(id), Some(arn)) = (
            f.get("Id").and_then(Value::as_str),
            f.get("ProductArn").and_then(Value::as_str),
        ) else {
            return Err(format!(
                "{}: every finding needs Id and ProductArn",
                path.display()
            ));
        };
        out.insert(
            FindingKey::new(id, arn),
            Arc::new(CurrentFinding::new(id, arn, &f)),
        );
    }
    Ok(out)
}

/// Where a violation comes from, as `rule at file:line`: the definitions that gave it for this
/// input, each evaluated on its own, the rule that builds it first. Found by the message's
/// text, a violation two rules word alike was put on the first file's rule: a member's V2
/// update of another account's finding was blamed on hubgate.rego's lookup-based ownership
/// rule, which did not fire, instead of operations.rego's.
fn located(at: &[(String, String)]) -> String {
    if at.is_empty() {
        return "rule not located".into();
    }
    at.iter()
        .enumerate()
        .map(|(i, (rule, at))| match i {
            0 => format!("{rule} at {at}"),
            _ => format!("via {rule} at {at}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_decision(pass: &str, d: &Decision, policy: &PolicySet, input: &regorus::Value) {
    let verdict = if d.allowed() { "ALLOW" } else { "DENY" };
    outln!("{pass}: {verdict}");
    let all: Vec<&crate::policy::Violation> = d.deny.iter().chain(&d.warn).collect();
    let origins = policy.origins(input, &all);
    let labels = d
        .deny
        .iter()
        .map(|_| "deny")
        .chain(d.warn.iter().map(|_| "warn"));
    for ((label, v), at) in labels.zip(&all).zip(&origins) {
        let finding = match &v.finding {
            Some(f) => format!(
                "finding {} ({})",
                f["Id"].as_str().unwrap_or("?"),
                f["ProductArn"].as_str().unwrap_or("?")
            ),
            None => "whole request".to_string(),
        };
        outln!("  {label}: {} [{finding}] ({})", v.msg, located(at));
    }
}

/// The proxy refuses a body larger than `server.max_body_bytes` (413) before it reads it: eval
/// judged such a body and could print ALLOW for a request the proxy never forwards.
fn too_large(config: &Config, body: &[u8]) -> Option<ExitCode> {
    let limit = config.server.max_body_bytes;
    (body.len() as u64 > limit).then(|| {
        let refused = crate::envelope::Rejection::PayloadTooLarge { limit };
        outln!("{}: {refused}; the proxy would answer 413", refused.code());
        ExitCode::FAILURE
    })
}

/// Finding state for eval: the `--current` file, or none (then judging stops after the
/// first pass, which is all that can be known without state).
struct FileState(Option<KeyMap<Arc<CurrentFinding>>>);

impl FindingState for FileState {
    fn lookup(
        &self,
        keys: &[FindingKey],
        _caller: CallerId<'_>,
        _deadline: std::time::Instant,
    ) -> impl std::future::Future<Output = Result<Option<Lookup>, LookupFailure>> + Send {
        let found = self.0.as_ref().map(|all| Lookup {
            current: keys
                .iter()
                .filter_map(|k| all.get(k).map(|f| (k.clone(), f.clone())))
                .collect(),
            unsettled: None,
            stats: Default::default(),
            reads: None,
        });
        std::future::ready(Ok(found))
    }
}

fn pass_name(enrichment: Enrichment) -> &'static str {
    match enrichment {
        Enrichment::Pending => "first pass (request only)",
        Enrichment::Complete => "second pass (with finding state)",
        Enrichment::Disabled => "single pass (enrichment disabled)",
        Enrichment::NotApplicable => "single pass (no finding state for this operation)",
    }
}

/// What the proxy does with a denied request when that is not simply "refuse it" (403
/// `POLICY_DENIED`): in dry-run it forwards it, and with `on_partial_deny = "forward-allowed"`
/// it forwards the findings not denied. Without this line eval printed DENY for a request the
/// proxy forwards, whole or in part. The exit status stays the policies' verdict.
fn proxy_outcome(
    config: &Config,
    operation: Judged,
    last: &crate::decide::Pass,
    keys: &[FindingKey],
) -> Option<String> {
    if last.decision.allowed() {
        return None;
    }
    if config.policy.mode == PolicyMode::DryRun {
        return Some(
            "proxy: forwards it anyway: policy.mode = \"dry-run\" records the denial \
             (\"dry_run\": true) and refuses nothing"
                .into(),
        );
    }
    if config.policy.on_partial_deny != PartialDeny::ForwardAllowed {
        return None;
    }
    let denied = (operation == Judged::BatchUpdateFindings)
        .then(|| crate::decide::denied_one_by_one(last.enrichment, &last.decision, keys))
        .flatten()
        .filter(|denied| denied.len() < keys.len());
    Some(match denied {
        Some(denied) => {
            let allowed: Vec<&str> = keys
                .iter()
                .filter(|k| !denied.contains_key(*k))
                .map(|k| &*k.id)
                .collect();
            format!(
                "proxy: on_partial_deny = \"forward-allowed\": forwards {} finding(s) ({}) and \
                 answers the {} denied in UnprocessedFindings (ErrorCode PolicyDenied)",
                allowed.len(),
                allowed.join(", "),
                denied.len()
            )
        }
        None => {
            "proxy: refuses it whole (403 POLICY_DENIED): on_partial_deny = \"forward-allowed\" \
                  cuts BatchUpdateFindings batches only, when every violation names a finding \
                  the decision judged on its state, and some finding is left"
                .into()
        }
    })
}

pub fn run(args: &EvalArgs) -> ExitCode {
    let config = match super::load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // As serve loads it: a set that does not cover the configuration (a policy-routed
    // operation without its schema) stops serve, so eval does not judge with it either.
    let policy = match PolicySet::load(
        &config.policy.dir,
        Duration::from_millis(config.policy.eval_timeout_ms),
    )
    .and_then(|p| p.covers(&config).map(|()| p))
    {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let Some(spec) = routes::operations()
        .iter()
        .find(|o| o.name == args.operation)
    else {
        return fail(format!(
            "{} is not a Security Hub operation",
            args.operation
        ));
    };
    // The routing table decides first, as it does when serving.
    let operation = match (config.routing(spec), Judged::from_name(spec.name)) {
        (Routing::Deny, _) => {
            outln!(
                "OPERATION_NOT_ALLOWED: {} is routed \"deny\"; the proxy would answer 403",
                spec.name
            );
            return ExitCode::FAILURE;
        }
        (Routing::Forward, _) => {
            let (body, principal) = match request_of(args, &config) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            if let Some(code) = too_large(&config, &body) {
                return code;
            }
            let own_signature = config.passthrough();
            let listed = config.policy.member_may_call(spec.name);
            let confined =
                crate::reads::confine(spec, &principal, &body, listed, own_signature).map(|_| ());
            if let Err(e) = confined {
                let refused = crate::envelope::Rejection::from(e);
                outln!("{}: {refused}; the proxy would answer 403", refused.code());
                return ExitCode::FAILURE;
            }
            outln!(
                "FORWARD: {} is routed \"forward\"; the proxy forwards it after authentication, without policy",
                spec.name
            );
            return ExitCode::SUCCESS;
        }
        (Routing::Policy, Some(op)) => op,
        (Routing::Policy, None) => {
            return fail(format!("{} is not an operation hubgate judges", spec.name))
        }
    };
    let (body, principal) = match request_of(args, &config) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if let Some(code) = too_large(&config, &body) {
        return code;
    }
    let current = match args.current.as_deref().map(current_findings).transpose() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let facts = RequestFacts {
        operation: spec.name,
        principal: &principal,
        method: spec.method,
        path: spec.path,
        headers: Default::default(),
        source_ip: "127.0.0.1".into(),
        request_id: "eval",
        time: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    let state = FileState(current);
    let dry_run = config.policy.mode == PolicyMode::DryRun;
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start a runtime: {e}")),
    };
    let judged = runtime.block_on(judge(
        &policy,
        operation,
        &body,
        &facts,
        config.enrichment.enabled.then_some(&state),
        dry_run,
        std::time::Instant::now() + Duration::from_millis(config.quota.max_wait_ms),
    ));
    let judgement = match judged {
        Ok(j) => j,
        Err(JudgeError::Invalid(errors)) => {
            outln!("VALIDATION_ERROR: the proxy would answer 400");
            for e in &errors.errors {
                let at = if e.path().is_empty() {
                    "(body)"
                } else {
                    e.path()
                };
                outln!("  {at}: {}", e.message());
            }
            return ExitCode::FAILURE;
        }
        Err(e) => {
            outln!("POLICY_ERROR: {e}");
            return ExitCode::from(2);
        }
    };
    outln!("policy revision {}", policy.revision);
    for pass in &judgement.passes {
        let name = pass_name(pass.enrichment);
        if args.input {
            outln!(
                "input ({name}):\n{}",
                serde_json::to_string_pretty(&pass.input).unwrap_or_default()
            );
        }
        print_decision(name, &pass.decision, &policy, &pass.input);
    }
    if let Some(last) = judgement.passes.last() {
        if let Some(outcome) = proxy_outcome(&config, operation, last, &judgement.keys) {
            outln!("{outcome}");
        }
    }
    match judgement.decision() {
        Some(d) if d.allowed() => {
            if !judgement.complete {
                outln!("note: give --current FINDINGS.json to evaluate the rules that need finding state");
            }
            ExitCode::SUCCESS
        }
        _ => ExitCode::FAILURE,
    }
}
