//! Policy: loads the Rego policy set (rules, data.json, schemas), computes its revision, and
//! evaluates the decision entrypoint `data.hubgate.deny` (and `warn`) over the input document.

pub mod input;
pub mod lint;
pub mod settings;
pub mod state;
pub mod testing;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::routes::{self, Class};
use crate::validate::{SchemaLoadError, Schemas};

pub const DENY_RULE: &str = "data.hubgate.deny";
pub const WARN_RULE: &str = "data.hubgate.warn";
/// Whether the request needs the findings' state: only `false` skips the lookup, and a policy
/// set without it always looks up.
pub const NEEDS_STATE_RULE: &str = "data.hubgate.needs_state";

#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("{dir}: cannot read the policy directory: {reason}")]
    Dir { dir: PathBuf, reason: String },
    #[error("{dir}: no .rego files")]
    Empty { dir: PathBuf },
    #[error("{file}: {reason}")]
    File { file: PathBuf, reason: String },
    #[error(transparent)]
    Schema(#[from] SchemaLoadError),
    #[error("the policy set does not evaluate: {0}")]
    Smoke(String),
    #[error(transparent)]
    Settings(#[from] settings::BadSettings),
    #[error("{0}")]
    Lint(lint::Lints),
    #[error(
        "{dir}: the policy files kept changing while they were read ({attempts} times); the \
         previous set stays until a reload reads them unchanged"
    )]
    Changing { dir: PathBuf, attempts: usize },
}

/// Evaluation failures: always fail closed as POLICY_ERROR.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    #[error("policy returned a malformed decision: {0}")]
    BadDecision(String),
}

/// One reason a request (or one finding of it) is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub msg: String,
    /// `{"Id", "ProductArn"}`, or None for a whole-request violation.
    pub finding: Option<Value>,
}

impl Violation {
    pub fn to_json(&self) -> Value {
        json!({"msg": self.msg, "finding": self.finding})
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub deny: Vec<Violation>,
    pub warn: Vec<Violation>,
    /// `data.hubgate.needs_state` for this input: false only when the set answers `false`.
    pub needs_state: bool,
}

impl Default for Decision {
    fn default() -> Decision {
        Decision {
            deny: Vec::new(),
            warn: Vec::new(),
            needs_state: true,
        }
    }
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.deny.is_empty()
    }

    /// The distinct messages in order, joined for the envelope's one-line message.
    pub fn message(&self) -> String {
        let mut seen: Vec<&str> = Vec::new();
        for v in &self.deny {
            if !seen.contains(&v.msg.as_str()) {
                seen.push(&v.msg);
            }
        }
        seen.join("; ")
    }
}

/// How long the evaluations at load may run when `policy.eval_timeout_ms` is shorter. The
/// first evaluation prepares the engine, which a decision never pays for, and a load runs
/// where a node may be busy (a reload under load, a start beside other pods): held to the
/// 100 ms a decision gets, it failed loads of sets that would serve. A rule that never ends
/// still fails the load, after this long.
const LOAD_EVAL_LIMIT: Duration = Duration::from_secs(2);

/// A compiled, immutable policy set. Swapped whole; requests clone the prepared engine.
pub struct PolicySet {
    engine: regorus::Engine,
    program: std::sync::Arc<regorus::rvm::program::Program>,
    data: regorus::Value,
    eval_timeout: Duration,
    has_warn: bool,
    /// The set defines `data.hubgate.needs_state`; without it every request looks up state.
    has_needs_state: bool,
    /// Tells this set's VMs from another set's (see `VM`); unique per load.
    id: u64,
    pub revision: String,
    pub schemas: Schemas,
    pub files: Vec<PathBuf>,
}

static NEXT_SET_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// The VM this thread last evaluated with, and the set it was loaded for. Making a VM
    /// costs a walk of the rule tree against the data (regorus's conflict check) and a few
    /// hundred allocations; kept, a pass costs only its run. A reloaded set has a new id, so
    /// its first evaluation on each thread loads a new VM.
    static VM: std::cell::RefCell<Option<(u64, regorus::rvm::RegoVM)>> =
        const { std::cell::RefCell::new(None) };
}

/// The files of a policy directory, sorted so the revision is stable.
pub struct PolicyFiles {
    pub rego: Vec<PathBuf>,
    pub data: Vec<PathBuf>,
}

/// Rego text with comments and string literals blanked out (lines kept), so that neither is
/// read as a reference (`hubgate check`'s lints, `hubgate test`'s reading of test files).
pub fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                out.push(' ');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => {
                            out.push(if c == '\n' { '\n' } else { ' ' });
                            break;
                        }
                        _ => {}
                    }
                }
            }
            '`' => {
                out.push(' ');
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    } else if c == '`' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

pub fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with("_test.rego"))
}

pub fn list_files(dir: &Path) -> Result<PolicyFiles, PolicyLoadError> {
    fn walk(dir: &Path, out: &mut PolicyFiles) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            // Hidden entries are not policies: a Kubernetes ConfigMap volume holds each file
            // three times (`x.rego`, `..data/x.rego` and `..<timestamp>/x.rego`, the last two
            // both during a swap), which loaded the rules of two versions at once and gave the
            // set a revision over timestamped paths no checkout reproduces; and an editor's
            // lock file (`.#x.rego`, a dangling link) failed every reload while it was open.
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "rego") {
                out.rego.push(path);
            } else if path.file_name().is_some_and(|n| n == "data.json") {
                out.data.push(path);
            }
        }
        Ok(())
    }
    let mut files = PolicyFiles {
        rego: Vec::new(),
        data: Vec::new(),
    };
    walk(dir, &mut files).map_err(|e| PolicyLoadError::Dir {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    files.rego.sort();
    files.data.sort();
    if files.rego.is_empty() {
        return Err(PolicyLoadError::Empty {
            dir: dir.to_path_buf(),
        });
    }
    Ok(files)
}

/// The text of each file, read once. A set is compiled from these texts and its revision is
/// their hash: reading the files again for the hash gave a set whose files changed during
/// its compile (an editor saving, a deploy copying files one by one) the revision of files it
/// was not compiled from.
pub type FileTexts = Vec<(PathBuf, String)>;

fn read_texts(files: &[PathBuf]) -> Result<FileTexts, PolicyLoadError> {
    files
        .iter()
        .map(|file| {
            std::fs::read_to_string(file)
                .map(|text| (file.clone(), text))
                .map_err(|e| PolicyLoadError::File {
                    file: file.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Builds an engine from the given files. Shared by serving and `hubgate test`.
pub fn engine_from(rego: &[PathBuf], data: &[PathBuf]) -> Result<regorus::Engine, PolicyLoadError> {
    engine_from_texts(&read_texts(rego)?, &read_texts(data)?)
}

fn engine_from_texts(
    rego: &FileTexts,
    data: &FileTexts,
) -> Result<regorus::Engine, PolicyLoadError> {
    let mut engine = regorus::Engine::new();
    for (file, text) in rego {
        engine
            .add_policy(file.display().to_string(), text.clone())
            .map_err(|e| PolicyLoadError::File {
                file: file.clone(),
                reason: e.to_string(),
            })?;
    }
    for (file, text) in data {
        engine
            .add_data_json(text)
            .map_err(|e| PolicyLoadError::File {
                file: file.clone(),
                reason: format!("not a JSON data document: {e}"),
            })?;
    }
    Ok(engine)
}

fn revision_of<'a>(dir: &Path, files: impl IntoIterator<Item = &'a (PathBuf, String)>) -> String {
    let mut hash = Sha256::new();
    for (file, text) in files {
        let rel = file.strip_prefix(dir).unwrap_or(file);
        hash.update(rel.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update((text.len() as u64).to_be_bytes());
        hash.update(text.as_bytes());
    }
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// The operations whose schema must exist (guarded by default), and those whose schema is
/// loaded when present so the configuration can put them under policy.
fn schema_operations(dir: &Path) -> Vec<&'static str> {
    routes::operations()
        .iter()
        .filter(|op| {
            op.class == Class::Guarded
                || (crate::request::Judged::from_name(op.name).is_some()
                    && dir.join(format!("{}.json", op.name)).exists())
        })
        .map(|op| op.name)
        .collect()
}

/// The texts a set is compiled from, all of one version of the directory.
struct Texts {
    schema_ops: Vec<&'static str>,
    schema_texts: FileTexts,
    rego: FileTexts,
    data: FileTexts,
}

/// How many times a load reads a directory that changed while it was read before giving up.
const READ_ATTEMPTS: usize = 4;

impl Texts {
    /// Reads the directory until a read sees it unchanged from start to end. A Kubernetes
    /// ConfigMap update swaps `..data` to a new version in one rename; a reload running across
    /// the swap read its first files from the old version and the rest from the new, and
    /// compiled a set no one wrote: a rule the update moved from a later file to an earlier one
    /// was in neither half, and what it forbids was forwarded until the next reload. An
    /// editor or a deploy writing the files one by one is caught the same way.
    fn read(dir: &Path) -> Result<Texts, PolicyLoadError> {
        for _ in 0..READ_ATTEMPTS {
            let before = Self::seen(dir);
            let read = Self::read_once(dir);
            // A file's identity (inode, change time) never comes back to an earlier value, so
            // equal before and after means nothing was replaced or written in between.
            if Self::seen(dir) == before {
                return read;
            }
        }
        Err(PolicyLoadError::Changing {
            dir: dir.to_path_buf(),
            attempts: READ_ATTEMPTS,
        })
    }

    /// The files a read takes (listing errors included, as text) and what each is now.
    fn seen(dir: &Path) -> Result<crate::files::Seen, String> {
        let listed = list_files(dir).map_err(|e| e.to_string())?;
        let schema_dir = dir.join("schemas");
        let schemas = schema_operations(&schema_dir)
            .into_iter()
            .map(|op| schema_dir.join(format!("{op}.json")));
        Ok(crate::files::seen(
            listed.rego.into_iter().chain(listed.data).chain(schemas),
        ))
    }

    fn read_once(dir: &Path) -> Result<Texts, PolicyLoadError> {
        let files = list_files(dir)?;
        let rego: Vec<PathBuf> = files
            .rego
            .iter()
            .filter(|p| !is_test_file(p))
            .cloned()
            .collect();
        let schema_dir = dir.join("schemas");
        let schema_ops = schema_operations(&schema_dir);
        let schema_texts = read_texts(
            &schema_ops
                .iter()
                .map(|op| schema_dir.join(format!("{op}.json")))
                .collect::<Vec<_>>(),
        )?;
        Ok(Texts {
            schema_ops,
            schema_texts,
            rego: read_texts(&rego)?,
            data: read_texts(&files.data)?,
        })
    }
}

impl PolicySet {
    /// Loads, compiles and smoke-tests a policy directory. Test files are left out of serving.
    pub fn load(dir: &Path, eval_timeout: Duration) -> Result<PolicySet, PolicyLoadError> {
        let Texts {
            schema_ops,
            schema_texts,
            rego,
            data: data_texts,
        } = Texts::read(dir)?;
        let schemas = Schemas::compile(schema_ops.iter().copied().zip(&schema_texts))?;
        let bad = settings::bad_settings(
            &data_texts,
            schema_ops
                .iter()
                .copied()
                .zip(schema_texts.iter().map(|(_, text)| text.as_str())),
        );
        if !bad.is_empty() {
            return Err(settings::BadSettings(bad).into());
        }
        let lints = lint::Lints::of(&rego, &data_texts);
        if !lints.is_empty() {
            return Err(PolicyLoadError::Lint(lints));
        }
        let mut engine = engine_from_texts(&rego, &data_texts)?;
        let limit = |limit| regorus::utils::limits::ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        };
        engine.set_execution_timer_config(limit(eval_timeout.max(LOAD_EVAL_LIMIT)));

        // Evaluate once now: it prepares the engine (so per-request clones skip that work) and
        // proves the entrypoint exists before the set can serve.
        engine.set_input(regorus::Value::from(json!({
            "version": input::INPUT_VERSION, "operation": "BatchUpdateFindings",
            "enrichment": "pending", "principal": null, "request": {}, "findings": [], "update": {},
        })));
        let deny = engine
            .eval_rule(DENY_RULE.to_string())
            .map_err(|e| PolicyLoadError::Smoke(format!("{DENY_RULE}: {e}")))?;
        if deny.as_set().is_err() {
            return Err(PolicyLoadError::Smoke(format!(
                "{DENY_RULE} must be a set of {{msg, finding}} objects (declare it with `deny contains v if ...`)"
            )));
        }
        let has_warn =
            matches!(engine.eval_rule(WARN_RULE.to_string()), Ok(v) if v.as_set().is_ok());
        let compiled = engine
            .compile_with_entrypoint(&DENY_RULE.into())
            .map_err(|e| PolicyLoadError::Smoke(format!("{DENY_RULE}: {e}")))?;
        // A rule path that no rule defines is an error; one that is defined is at worst
        // undefined for this input. A set (`needs_state contains ...`) or another value is not
        // an answer: refused now rather than read as "no state needed" for every request.
        let has_needs_state = match engine.eval_rule(NEEDS_STATE_RULE.to_string()) {
            Ok(value) => {
                needs_state_of(&value).map_err(|e| PolicyLoadError::Smoke(e.to_string()))?;
                true
            }
            Err(_) => false,
        };
        let mut entry_points = vec![DENY_RULE];
        if has_warn {
            entry_points.push(WARN_RULE);
        }
        if has_needs_state {
            entry_points.push(NEEDS_STATE_RULE);
        }
        let program = regorus::languages::rego::compiler::Compiler::compile_from_policy(
            &compiled,
            &entry_points,
        )
        .map_err(|e| PolicyLoadError::Smoke(format!("compiling to bytecode: {e}")))?;
        let data = engine.get_data();
        engine.set_execution_timer_config(limit(eval_timeout));

        let revision = revision_of(dir, rego.iter().chain(&data_texts).chain(&schema_texts));
        let all: Vec<PathBuf> = rego
            .into_iter()
            .chain(data_texts)
            .chain(schema_texts)
            .map(|(file, _)| file)
            .collect();
        Ok(PolicySet {
            engine,
            program,
            data,
            eval_timeout,
            has_warn,
            has_needs_state,
            id: NEXT_SET_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            revision,
            schemas,
            files: all,
        })
    }

    /// Every operation the configuration puts under policy needs its schema in this set.
    pub fn covers(&self, config: &crate::config::Config) -> Result<(), PolicyLoadError> {
        for op in routes::operations() {
            if config.routing(op) == routes::Routing::Policy && !self.schemas.has(op.name) {
                return Err(PolicyLoadError::Smoke(format!(
                    "operations.{} = \"policy\" needs schemas/{}.json in the policy directory",
                    op.name, op.name
                )));
            }
        }
        Ok(())
    }

    /// Evaluates the decision for one input document.
    pub fn evaluate(&self, input: regorus::Value) -> Result<Decision, PolicyError> {
        VM.with(|slot| match slot.try_borrow_mut() {
            Ok(mut slot) => {
                let vm = match &mut *slot {
                    Some((id, vm)) if *id == self.id => vm,
                    stale => &mut stale.insert((self.id, self.new_vm()?)).1,
                };
                // A builtin that panics (regorus 0.14.1 has some: `strings.count(s, "")`,
                // `units.parse("1e999")`) would leave this thread's VM in mid-run, to be used
                // for the next request: the panic is a failed evaluation, and the VM goes.
                let decision =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(vm, input)))
                        .unwrap_or_else(|_| {
                            Err(PolicyError::Eval(
                                "the policy engine failed (a builtin panicked)".into(),
                            ))
                        });
                if decision.is_err() {
                    // A failed run (a timeout, a bad rule) leaves no VM behind to reason about.
                    *slot = None;
                } else {
                    // The input is the request's: released now, not when this thread next
                    // evaluates (values the run left in its registers go then).
                    vm.set_input(regorus::Value::Null);
                }
                decision
            }
            // Not reached today (evaluation does not nest); a fresh VM is always correct.
            Err(_) => self.run(&mut self.new_vm()?, input),
        })
    }

    /// A VM loaded with this set's program and data.
    fn new_vm(&self) -> Result<regorus::rvm::RegoVM, PolicyError> {
        let mut vm = regorus::rvm::RegoVM::new();
        // Fail closed: an error in any rule body ends the evaluation (500 POLICY_ERROR), as it
        // does under `hubgate test`'s interpreter, instead of leaving a deny rule unfired.
        vm.set_abort_on_errors(true);
        vm.load_program(self.program.clone());
        vm.set_execution_timer_config(Some(regorus::utils::limits::ExecutionTimerConfig {
            limit: self.eval_timeout,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        }));
        vm.set_data(self.data.clone())
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        Ok(vm)
    }

    /// One decision on `vm`. Each entry point's run starts from a clean VM state (regorus
    /// resets its registers, rule cache and evaluated values), so a reused VM answers as a
    /// new one would.
    fn run(
        &self,
        vm: &mut regorus::rvm::RegoVM,
        input: regorus::Value,
    ) -> Result<Decision, PolicyError> {
        vm.set_input(input);
        let deny = vm
            .execute_entry_point_by_name(DENY_RULE)
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        let deny = violations(&deny, DENY_RULE)?;
        let warn = if self.has_warn {
            let w = vm
                .execute_entry_point_by_name(WARN_RULE)
                .map_err(|e| PolicyError::Eval(e.to_string()))?;
            violations(&w, WARN_RULE)?
        } else {
            Vec::new()
        };
        // Only an explicit `false` skips the lookup (see `needs_state_of`). A pass with a
        // whole-request violation does not ask: outside dry-run that denial ends judging, and
        // dry-run looks up to record the whole decision. One whose violations all name
        // findings asks: with on_partial_deny = "forward-allowed" the findings it did not deny
        // may be forwarded on its decision, which is sound only if they need no state (the
        // proxy refuses the whole request otherwise).
        let needs_state = !self.has_needs_state
            || deny.iter().any(|v| v.finding.is_none())
            || needs_state_of(
                &vm.execute_entry_point_by_name(NEEDS_STATE_RULE)
                    .map_err(|e| PolicyError::Eval(e.to_string()))?,
            )?;
        Ok(Decision {
            deny,
            warn,
            needs_state,
        })
    }

    /// The tree-walking interpreter's answer, kept to cross-check the bytecode VM.
    pub fn evaluate_interpreted(&self, input: regorus::Value) -> Result<Decision, PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let deny = engine
            .eval_rule(DENY_RULE.to_string())
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        let deny = violations(&deny, DENY_RULE)?;
        let warn = if self.has_warn {
            let w = engine
                .eval_rule(WARN_RULE.to_string())
                .map_err(|e| PolicyError::Eval(e.to_string()))?;
            violations(&w, WARN_RULE)?
        } else {
            Vec::new()
        };
        Ok(Decision {
            deny,
            warn,
            needs_state: true,
        })
    }
}

/// Where a rule (or function) is defined: `data.<package>.<name>`, file, line of the head.
pub struct Head {
    pub rule: String,
    pub file: String,
    pub line: u32,
}

/// Every rule and function definition of `engine`'s modules, read from the parsed modules
/// (nothing is evaluated).
pub fn heads(engine: &mut regorus::Engine) -> Vec<Head> {
    use regorus::unstable::{Rule, RuleHead};
    let mut out = Vec::new();
    for module in engine.get_modules().clone() {
        let Ok(package) = regorus::utils::get_path_string(&module.package.refr, Some("data"))
        else {
            continue;
        };
        for rule in &module.policy {
            let (refr, span) = match &**rule {
                Rule::Spec {
                    head:
                        RuleHead::Compr { refr, .. }
                        | RuleHead::Set { refr, .. }
                        | RuleHead::Func { refr, .. },
                    span,
                    ..
                } => (refr, span),
                Rule::Default { refr, span, .. } => (refr, span),
            };
            if let Ok(name) = regorus::utils::get_path_string(refr, None) {
                out.push(Head {
                    rule: format!("{package}.{name}"),
                    file: span.source.get_path().clone(),
                    line: span.line,
                });
            }
        }
    }
    out
}

/// One definition of a rule (a rule may be defined by several `name contains ... if` or
/// `name if` blocks, in several files), with what it gives on its own.
pub struct Definition {
    /// `data.<package>.<name>`.
    pub rule: String,
    /// `file:line` of the definition's head.
    pub at: String,
    /// What this definition alone gives (the other definitions of the rule left out); rules it
    /// reads are evaluated whole. Err: the definition failed to evaluate.
    pub value: Result<regorus::Value, String>,
}

/// Each definition of the rules `wanted` selects (by rule path and file), evaluated on its own
/// with `engine`'s input. Rego joins the definitions of a rule (a union for `contains`, an "or" for
/// `name if`), so the rule's value cannot say which definition gave what; this can.
pub fn definitions(
    engine: &mut regorus::Engine,
    wanted: impl Fn(&str, &str) -> bool,
) -> Vec<Definition> {
    use regorus::unstable::{Rule, RuleHead};
    let modules = engine.get_modules().clone();
    let mut out = Vec::new();
    for module in &modules {
        let Ok(package) = regorus::utils::get_path_string(&module.package.refr, Some("data"))
        else {
            continue;
        };
        for rule in &module.policy {
            let Rule::Spec { head, span, .. } = &**rule else {
                continue;
            };
            let refr = match head {
                RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => refr,
                RuleHead::Func { .. } => continue,
            };
            let Ok(name) = regorus::utils::get_path_string(refr, None) else {
                continue;
            };
            let path = format!("{package}.{name}");
            if !wanted(&path, span.source.get_path()) {
                continue;
            }
            let value = engine
                .eval_rule_in_module(module, rule, false)
                .map(|data| {
                    path.split('.')
                        .skip(1)
                        .fold(data, |at, part| at[part].clone())
                })
                .map_err(|e| e.to_string());
            out.push(Definition {
                rule: path,
                at: format!("{}:{}", span.source.get_path(), span.line),
                value,
            });
        }
    }
    out
}

impl PolicySet {
    /// The definitions of this set's rules that give each of `found` (a decision's
    /// violations) for `input`: where a violation comes from, by rule and not by its message
    /// (two rules in two files may say the same thing). Per violation, the definitions whose
    /// own value holds it, the rule that builds it first (`state_violations`, say) and the
    /// `deny` or `warn` definition that passes it on after.
    pub fn origins(
        &self,
        input: &regorus::Value,
        found: &[&Violation],
    ) -> Vec<Vec<(String, String)>> {
        let mut engine = self.engine.clone();
        engine.set_input(input.clone());
        let defs = definitions(&mut engine, |_, _| true);
        let given: Vec<(&Definition, Vec<Violation>)> = defs
            .iter()
            .filter_map(|d| {
                let value = d.value.as_ref().ok()?;
                value.as_set().ok()?;
                Some((d, violations(value, &d.rule).ok()?))
            })
            .collect();
        found
            .iter()
            .map(|v| {
                let mut at: Vec<(String, String)> = given
                    .iter()
                    .filter(|(_, vs)| vs.contains(v))
                    .map(|(d, _)| (d.rule.clone(), d.at.clone()))
                    .collect();
                // The rule that builds the violation before the entry point that reads it.
                at.sort_by_key(|(rule, _)| rule == DENY_RULE || rule == WARN_RULE);
                at
            })
            .collect()
    }
}

/// What `data.hubgate.needs_state` answers. Skipping the lookup decides on the request alone,
/// so only `false` skips it: undefined looks up, because a body that does not hold for a typo
/// (or a body that errs, were the VM not set to abort on errors) gives undefined. Read as "not
/// needed", it let a request through with every rule on finding state unevaluated. Any other
/// value is a malformed decision.
fn needs_state_of(value: &regorus::Value) -> Result<bool, PolicyError> {
    match value {
        regorus::Value::Bool(needed) => Ok(*needed),
        regorus::Value::Undefined => Ok(true),
        other => Err(PolicyError::BadDecision(format!(
            "{NEEDS_STATE_RULE} must be true or false, got {}",
            serde_json::to_string(other).unwrap_or_else(|_| "a value that is not JSON".into())
        ))),
    }
}

fn violations(value: &regorus::Value, rule: &str) -> Result<Vec<Violation>, PolicyError> {
    if *value == regorus::Value::Undefined {
        return Ok(Vec::new());
    }
    let set = value
        .as_set()
        .map_err(|_| PolicyError::BadDecision(format!("{rule} is not a set")))?;
    let mut out = Vec::with_capacity(set.len());
    for item in set.iter() {
        let json: Value = serde_json::to_value(item)
            .map_err(|e| PolicyError::BadDecision(format!("{rule}: {e}")))?;
        let msg = json
            .get("msg")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                PolicyError::BadDecision(format!("{rule} holds {json}, which has no string msg"))
            })?
            .to_string();
        let finding = match json.get("finding") {
            None | Some(Value::Null) => None,
            Some(f @ Value::Object(o)) if o.contains_key("Id") && o.contains_key("ProductArn") => {
                Some(json!({"Id": f["Id"], "ProductArn": f["ProductArn"]}))
            }
            Some(other) => {
                return Err(PolicyError::BadDecision(format!(
                    "{rule}: finding must be null or {{Id, ProductArn}}, got {other}"
                )))
            }
        };
        out.push(Violation { msg, finding });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
