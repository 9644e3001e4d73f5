//! `hubgate eval`: one request body through the same validation, input document and policy
//! passes as the proxy, printed with every violation and the rule that produced it.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::EvalArgs;
use crate::config::Config;
use crate::enrich::{CurrentFinding, FindingKey};
use crate::identity::{self, Principal, Role};
use crate::policy::input::{self, Enrichment, RequestFacts};
use crate::policy::{Decision, PolicySet};
use crate::routes;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("hubgate: {msg}");
    ExitCode::from(2)
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
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
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

fn current_findings(path: &Path) -> Result<HashMap<FindingKey, Arc<CurrentFinding>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
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
    let mut out = HashMap::new();
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
            (id.to_string(), arn.to_string()),
            Arc::new(CurrentFinding::new(id, arn, &f)),
        );
    }
    Ok(out)
}

/// Where a violation's message is written in the policy source: `file:line`. Messages built
/// with sprintf are found by their text before the first placeholder.
fn rule_of(msg: &str, files: &[(String, String)]) -> Option<String> {
    let needle: String = msg.chars().take(40).collect();
    let candidates = [needle.clone(), {
        // a formatted message: the constant part before the first "(" or digit
        let cut = msg.find(['(', '%']).unwrap_or(msg.len());
        msg[..cut].trim_end().to_string()
    }];
    for candidate in candidates.iter().filter(|c| c.len() >= 8) {
        for (file, text) in files {
            for (i, line) in text.lines().enumerate() {
                if line.contains(&format!("\"{candidate}")) {
                    return Some(format!("{file}:{}", i + 1));
                }
            }
        }
    }
    None
}

fn print_decision(pass: &str, d: &Decision, sources: &[(String, String)]) {
    let verdict = if d.allowed() { "ALLOW" } else { "DENY" };
    println!("{pass}: {verdict}");
    for (label, list) in [("deny", &d.deny), ("warn", &d.warn)] {
        for v in list {
            let finding = match &v.finding {
                Some(f) => format!(
                    "finding {} ({})",
                    f["Id"].as_str().unwrap_or("?"),
                    f["ProductArn"].as_str().unwrap_or("?")
                ),
                None => "whole request".to_string(),
            };
            let rule = rule_of(&v.msg, sources).unwrap_or_else(|| "rule not located".into());
            println!("  {label}: {} [{finding}] ({rule})", v.msg);
        }
    }
}

pub fn run(args: &EvalArgs) -> ExitCode {
    let config = match Config::load(&args.config.config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let policy = match PolicySet::load(
        &config.policy.dir,
        Duration::from_millis(config.policy.eval_timeout_ms),
    ) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let Some(op) = routes::operations()
        .iter()
        .find(|o| o.name == args.operation && routes::POLICY_CAPABLE.contains(&o.name))
    else {
        return fail(format!(
            "{} is not an operation hubgate evaluates",
            args.operation
        ));
    };
    let body = match std::fs::read(&args.request) {
        Ok(b) => b,
        Err(e) => return fail(format!("{}: {e}", args.request.display())),
    };
    let principal = match principal(args, &config) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let current = match args.current.as_deref().map(current_findings).transpose() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut parsed = match policy.schemas.check(op.name, &body) {
        Ok(v) => v,
        Err(errors) => {
            println!("VALIDATION_ERROR: the proxy would answer 400");
            for e in &errors.errors {
                let at = if e.path.is_empty() {
                    "(body)"
                } else {
                    e.path.as_str()
                };
                println!("  {at}: {}", e.message);
            }
            return ExitCode::FAILURE;
        }
    };
    let normalised = input::normalise(op.name, &parsed);
    let keys: Vec<FindingKey> = normalised.keys;
    let claims = normalised.claimed_accounts;
    let update = normalised.update;
    if let Some(obj) = parsed.as_object_mut() {
        for member in normalised.strip {
            obj.remove(*member);
        }
    }
    let facts = RequestFacts {
        operation: op.name,
        principal: &principal,
        method: op.method,
        path: op.path,
        headers: Default::default(),
        source_ip: "127.0.0.1".into(),
        request_id: "eval",
        time: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    let sources: Vec<(String, String)> = policy
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rego"))
        .filter_map(|f| Some((f.display().to_string(), std::fs::read_to_string(f).ok()?)))
        .collect();
    println!("policy revision {}", policy.revision);

    let passes: Vec<(&str, Enrichment)> = if !normalised.enrichable {
        vec![(
            "single pass (no finding state for this operation)",
            Enrichment::NotApplicable,
        )]
    } else if !config.enrichment.enabled {
        vec![("single pass (enrichment disabled)", Enrichment::Disabled)]
    } else if current.is_some() {
        vec![
            ("first pass (request only)", Enrichment::Pending),
            ("second pass (with finding state)", Enrichment::Complete),
        ]
    } else {
        vec![("first pass (request only)", Enrichment::Pending)]
    };
    let mut last = None;
    for (name, phase) in passes {
        let doc = input::document_with_claims(
            &facts,
            &parsed,
            &update,
            &keys,
            &claims,
            current.as_ref(),
            phase,
        );
        if args.input {
            println!(
                "input ({name}):\n{}",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            );
        }
        let decision = match policy.evaluate(doc) {
            Ok(d) => d,
            Err(e) => {
                println!("POLICY_ERROR: {e}");
                return ExitCode::from(2);
            }
        };
        print_decision(name, &decision, &sources);
        let denied = !decision.allowed();
        last = Some(decision);
        if denied {
            break;
        }
    }
    match last {
        Some(d) if d.allowed() => {
            if normalised.enrichable && config.enrichment.enabled && current.is_none() {
                println!("note: give --current FINDINGS.json to evaluate the rules that need finding state");
            }
            ExitCode::SUCCESS
        }
        _ => ExitCode::FAILURE,
    }
}
