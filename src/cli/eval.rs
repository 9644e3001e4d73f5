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
use crate::identity::{self, Principal, Role};
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

/// Where a violation's message is written in the policy source: `file:line`. Each string
/// literal of the sources is read as a pattern, its sprintf verbs (`%s`, `%v`, `%d`) standing
/// for any text; of the literals the message fits, the one with the most fixed text wins (so
/// `may not set Workflow.Status to %s` over `may not set %s`). Literals with less than 8
/// characters of fixed text are not patterns: `"%s"` would fit anything.
fn rule_of(msg: &str, files: &[(String, String)]) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for (file, text) in files {
        for (i, line) in text.lines().enumerate() {
            for literal in string_literals(line) {
                let Some(fixed) = fits(&literal, msg) else {
                    continue;
                };
                if fixed >= 8 && best.as_ref().is_none_or(|(b, _)| fixed > *b) {
                    best = Some((fixed, format!("{file}:{}", i + 1)));
                }
            }
        }
    }
    best.map(|(_, at)| at)
}

/// The contents of the double-quoted string literals on a line of Rego (escapes kept as
/// written but for `\"`), outside comments.
fn string_literals(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' => break,
            '"' => {
                let mut literal = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(next) = chars.next() {
                                if next != '"' {
                                    literal.push('\\');
                                }
                                literal.push(next);
                            }
                        }
                        '"' => break,
                        c => literal.push(c),
                    }
                }
                out.push(literal);
            }
            _ => {}
        }
    }
    out
}

/// Whether `msg` is what `pattern` gives with some text for each of its sprintf verbs; then
/// how many characters of `pattern` are fixed text.
fn fits(pattern: &str, msg: &str) -> Option<usize> {
    let mut parts = vec![String::new()];
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('%', Some('s' | 'v' | 'd')) => {
                chars.next();
                parts.push(String::new());
            }
            (c, _) => parts.last_mut()?.push(c),
        }
    }
    let fixed = parts.iter().map(String::len).sum();
    let (first, last) = (parts.first()?, parts.last()?);
    if parts.len() == 1 {
        return (msg == first).then_some(fixed);
    }
    let mut at = msg.strip_prefix(first.as_str())?;
    for middle in &parts[1..parts.len() - 1] {
        let found = at.find(middle.as_str())?;
        at = &at[found + middle.len()..];
    }
    at.ends_with(last.as_str()).then_some(fixed)
}

fn print_decision(pass: &str, d: &Decision, sources: &[(String, String)]) {
    let verdict = if d.allowed() { "ALLOW" } else { "DENY" };
    outln!("{pass}: {verdict}");
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
            outln!("  {label}: {} [{finding}] ({rule})", v.msg);
        }
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
        _account: &str,
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
            let resign = config.upstream.auth == crate::config::UpstreamAuth::Resign;
            let listed = config.policy.member_may_call(spec.name);
            let confined = match resign {
                true => crate::reads::confine(spec, &principal, &body, listed).map(|_| ()),
                false => Ok(()),
            };
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
    let sources: Vec<(String, String)> = policy
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rego"))
        .filter_map(|f| Some((f.display().to_string(), std::fs::read_to_string(f).ok()?)))
        .collect();
    outln!("policy revision {}", policy.revision);
    for pass in &judgement.passes {
        let name = pass_name(pass.enrichment);
        if args.input {
            outln!(
                "input ({name}):\n{}",
                serde_json::to_string_pretty(&pass.input).unwrap_or_default()
            );
        }
        print_decision(name, &pass.decision, &sources);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<(String, String)> {
        let text = r#"package hubgate
# "member accounts may not set %s" in a comment is no rule
a := sprintf("member accounts may not set %s", [field])
b := sprintf("member accounts may not set Workflow.Status to %s", [status])
c := {"msg": "administrators only: a fixed message", "finding": null}
d := sprintf("severity (%v to %v)", [x, y])
e := sprintf("%s", [x])
f := "say \"hi\" to %s"
"#;
        vec![("p.rego".to_string(), text.to_string())]
    }

    #[test]
    fn a_message_is_found_by_the_literal_it_fits_with_the_most_fixed_text() {
        let src = sources();
        let at = |msg: &str| rule_of(msg, &src);
        assert_eq!(
            at("member accounts may not set Types").as_deref(),
            Some("p.rego:3")
        );
        assert_eq!(
            at("member accounts may not set Workflow.Status to SUPPRESSED").as_deref(),
            Some("p.rego:4")
        );
        assert_eq!(
            at("administrators only: a fixed message").as_deref(),
            Some("p.rego:5")
        );
        assert_eq!(at("severity (HIGH to LOW)").as_deref(), Some("p.rego:6"));
        assert_eq!(at("say \"hi\" to you").as_deref(), Some("p.rego:8"));
        // "%s" alone, or a message no literal gives, is not located
        assert_eq!(at("anything at all"), None);
        assert_eq!(at("administrators only: a fixed message, and more"), None);
    }
}
