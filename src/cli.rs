//! Command line: `hubgate serve`, `check`, `test`, `eval` and `audit verify`.

/// `println!` for the commands' output, without its panic when stdout is gone: once the reader
/// has closed the pipe (`hubgate test policies | head`), the rest of the output is dropped and
/// the command finishes with its own exit status. Any other write error (a full disk) is
/// reported on stderr and exits with status 1.
macro_rules! outln {
    () => {
        $crate::cli::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))
    };
}

/// `eprintln!` for what `serve` and the panic hook say, without `eprintln!`'s panic when
/// stderr cannot be written (its reader gone: a log pipe whose consumer exited, journald
/// restarted under a systemd service). There, `eprintln!` in the panic hook panicked again
/// and the process aborted. What cannot be written is dropped: stderr is where it would have
/// said so.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod eval;
mod lint;
mod log_fields;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::audit::chain;
use crate::config::{Config, LogFormat, DEFAULT_CONFIG};
use crate::identity::Identity;
use crate::policy::{testing, PolicySet};
use crate::routes::Routing;

/// Set once stdout's reader has gone away (EPIPE): nothing more is written to it.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// One line of a command's output on stdout; see `outln!`.
pub(crate) fn write_line(line: std::fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
        }
        Err(e) => {
            drop(out);
            eprintln!("hubgate: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

#[derive(Parser)]
#[command(
    name = "hubgate",
    version,
    about = "Policy-enforcing reverse proxy for the AWS Security Hub API"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = "HUBGATE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy and admin listeners.
    Serve(ConfigArg),
    /// Validate the configuration, callers file, policies and schemas, then exit.
    Check(ConfigArg),
    /// Run the `test_` rules of a policy directory (default: the configured policy.dir).
    Test {
        dir: Option<PathBuf>,
        /// Print line coverage per policy file.
        #[arg(long)]
        coverage: bool,
        /// Fail when total line coverage of the policy files is below this percentage.
        #[arg(long, value_name = "PCT", value_parser = percent)]
        threshold: Option<f64>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Evaluate one request body against the policies, exactly as the proxy would, and print
    /// the decision with every violation and the rule that produced it.
    Eval(EvalArgs),
    /// Issue caller keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Work with audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// A coverage threshold: a number from 0 to 100. NaN compared below nothing, so
/// `--threshold nan` passed every run whatever its coverage.
fn percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a percentage from 0 to 100")),
    }
}

#[derive(Args)]
struct EvalArgs {
    /// The request body (JSON), e.g. what `aws ... --generate-cli-skeleton` fills in.
    #[arg(long)]
    request: PathBuf,
    /// The caller, by id in the callers file.
    #[arg(long, conflicts_with = "as_")]
    principal: Option<String>,
    /// The caller as ROLE:ACCOUNT, e.g. member:222222222222.
    #[arg(long = "as", value_name = "ROLE:ACCOUNT")]
    as_: Option<String>,
    /// Current state of the findings: a GetFindings response or a JSON list of findings.
    /// Without it only the first pass (before enrichment) is evaluated.
    #[arg(long)]
    current: Option<PathBuf>,
    /// The operation the body is for.
    #[arg(long, default_value = "BatchUpdateFindings")]
    operation: String,
    /// Print the input document(s) too.
    #[arg(long)]
    input: bool,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new access key id and secret, and the callers-file entry that grants them.
    New {
        /// The caller's id (appears in audit records as principal.id).
        #[arg(long)]
        id: String,
        /// The caller's 12-digit AWS account id.
        #[arg(long)]
        account: String,
        /// member or administrator.
        #[arg(long, value_parser = ["member", "administrator"])]
        role: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit files (e.g. audit.ndjson*: each chain's files are checked
    /// in the order of their records, whatever the order given); reports the first modified,
    /// deleted, reordered or truncated record.
    /// Files of several replicas may be given at once: each replica's chain is checked and
    /// reported on its own line.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Environment variable holding the HMAC key the log was written with. Repeat it,
        /// oldest first, for a log whose key was changed at a restart.
        #[arg(long, conflicts_with = "key_file")]
        key_env: Vec<String>,
        /// File holding the HMAC key the log was written with (repeatable, as --key-env).
        #[arg(long)]
        key_file: Vec<PathBuf>,
        /// The chain had reached at least record SEQ (hubgate_audit_chain_seq, scraped from
        /// /metrics): a log ending before it had records cut from its end. With several
        /// chains, name each by its id (the metric's `chain` label): CHAIN=SEQ, repeatable.
        #[arg(long, value_name = "[CHAIN=]SEQ", value_parser = min_seq)]
        min_seq: Vec<MinSeq>,
    },
}

/// A `--min-seq`: the chain (by id; None: the only chain given) and the record it reached.
#[derive(Clone, Debug)]
struct MinSeq {
    chain: Option<String>,
    seq: u64,
}

fn min_seq(text: &str) -> Result<MinSeq, String> {
    let (chain, seq) = match text.rsplit_once('=') {
        Some(("", _)) => return Err("the chain id before '=' is empty".into()),
        Some((chain, seq)) => (Some(chain.to_string()), seq),
        None => (None, text),
    };
    let seq = seq
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{seq:?} is not a record's sequence number (1 or more)"))?;
    Ok(MinSeq { chain, seq })
}

fn load_config(arg: &ConfigArg) -> Result<Config, ExitCode> {
    Config::load(&arg.config).map_err(|e| {
        eprintln!("hubgate: {e}");
        if !arg.config.exists() {
            eprintln!(
                "hint: name the configuration file with --config PATH or HUBGATE_CONFIG=PATH \
                 (the default, {DEFAULT_CONFIG}, is relative to the current directory: the \
                 repository root); `bash config/demo/run.sh` starts a demo without one"
            );
        }
        ExitCode::from(2)
    })
}

/// The shipped demo keys are public: refused unless the upstream is this machine.
fn refuse_demo_keys(config: &Config) -> Result<(), ExitCode> {
    crate::identity::refuse_demo_keys(&config.identity.callers, &config.upstream_uri).map_err(|e| {
        eprintln!("hubgate: {e}");
        ExitCode::from(2)
    })
}

/// The AWS SDK warns, with multi-line debug dumps, about every credential source that has
/// nothing; hubgate's own message names them all, so the SDK's are kept for RUST_LOG=debug.
const DEFAULT_LOG_FILTER: &str = "info,aws_config=error";

/// Operational logs go to stderr (stdout may carry the audit log), levels from RUST_LOG.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // A log line stderr did not take (its reader gone) is dropped. tracing-subscriber's own
    // report of it went to the same stderr with `eprintln!`, which panicked; the panic hook's
    // report of that panic did the same, and the process aborted (SIGABRT) at the first log
    // line after the reader left: no drain, a request forwarded then never recorded.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    let never_secret = tracing_subscriber::filter::filter_fn(|meta| !never_logged(meta.target()));
    match format {
        // Control characters in a value (a newline in Security Hub's error message) are
        // escaped, so one event stays one line; the JSON format escapes them itself.
        LogFormat::Text => builder
            .fmt_fields(log_fields::EscapedFields)
            .finish()
            .with(never_secret)
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .finish()
            .with(never_secret)
            .init(),
    }
    // The default hook wrote a panic as a bare line on stderr: outside the JSON log format
    // (a shipper parsing it dropped or choked on the line) and with a formatted message that
    // may quote whatever value the code held (a request's text, a header).
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = panic_message(info.payload());
        // A RUST_LOG that names other targets only would drop the event: a panic is never lost.
        if tracing::enabled!(target: "hubgate::panic", tracing::Level::ERROR) {
            tracing::error!(target: "hubgate::panic", %location, message, "a thread panicked");
        } else {
            errln!("hubgate: a thread panicked location={location} message={message:?}");
        }
    }));
}

/// A panic's message when it is text fixed at compile time (`panic!("…")`, `expect("…")`, a
/// bounds or unwrap failure's own words); a message formatted at run time may hold data.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &'static str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("(a formatted message, not shown: it may quote the data it was about)")
}

/// Targets whose events never reach the log, whatever RUST_LOG asks for: the AWS SDK's crates
/// (aws_*). aws_sigv4 traces every request it signs with all its headers: verifying a caller's
/// signature, that is every header the caller signed (a Cookie, an API key of another system,
/// a token), as the caller sent it. aws_config's credential chain logs, at WARN, what each
/// source answered: a credential_process's stderr, an STS error echoing the web identity token
/// (review 55b). hubgate logs what it needs of them in its own words.
fn never_logged(target: &str) -> bool {
    target.starts_with("aws_")
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(arg) => {
            if let Err(e) = crate::server::catch_early_signals() {
                errln!("hubgate: cannot catch SIGHUP, SIGTERM, SIGINT and SIGQUIT: {e}");
                return ExitCode::FAILURE;
            }
            let config = match load_config(&arg) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Err(code) = refuse_demo_keys(&config) {
                return code;
            }
            init_logging(config.log.format);
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = config.server.worker_threads {
                builder.worker_threads(n);
            }
            let runtime = match builder.enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    errln!("hubgate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = match runtime.block_on(crate::server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    errln!("hubgate: {e}");
                    ExitCode::FAILURE
                }
            };
            // Dropping the runtime waits for its blocking tasks, one of which may be joining
            // an audit writer stuck on a sink that takes no writes: serve already said so.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            code
        }
        Command::Check(arg) => check(&arg),
        Command::Keys {
            command: KeysCommand::New { id, account, role },
        } => new_key(&id, &account, &role),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    key_env,
                    key_file,
                    min_seq,
                },
        } => verify(&files, key_env, key_file, &min_seq),
        Command::Test {
            dir,
            coverage,
            threshold,
            config,
        } => {
            let dir = match dir {
                Some(d) => d,
                None => match configured_policy_dir(&config) {
                    Ok(d) => d,
                    Err(code) => return code,
                },
            };
            run_tests(&dir, coverage || threshold.is_some(), threshold)
        }
        Command::Eval(args) => crate::cli::eval::run(&args),
    }
}

fn check(arg: &ConfigArg) -> ExitCode {
    let config = match load_config(arg) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for caution in config
        .cautions()
        .into_iter()
        .chain(crate::audit::key_cautions(&config.audit))
    {
        eprintln!("hubgate: caution: {caution}");
    }
    let mut ok = true;
    // Printed only when everything passed: with exit 1 a script reading stdout would take a
    // summary line for the part that loaded as a sign that the whole would serve.
    let mut summary: Vec<String> = Vec::new();
    match Identity::load(
        &config.identity,
        &config.upstream.region,
        config.passthrough(),
    ) {
        Ok(identity) => summary.push(format!(
            "callers: {} ({} keyed callers)",
            config.identity.callers.display(),
            identity.caller_count()
        )),
        Err(e) => {
            eprintln!("hubgate: {e}");
            ok = false;
        }
    }
    if refuse_demo_keys(&config).is_err() {
        ok = false;
    }
    // What serve reads at start and refuses to start without: the listener's certificate and
    // key, the audit chain's key and file, and the Redis password. A check that passed without them promised a start that
    // fails.
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        if let Err(e) = crate::server::tls::Tls::load(cert, key, config.server.client_ca.as_deref())
        {
            eprintln!("hubgate: {e}");
            ok = false;
        }
    }
    if let Err(e) = crate::audit::chain_key(&config.audit) {
        eprintln!("hubgate: {e}");
        ok = false;
    }
    if let Err(e) = crate::audit::check_sink(&config.audit) {
        eprintln!("hubgate: {e}");
        ok = false;
    }
    if let Err(e) = crate::coordination::client(&config.coordination) {
        eprintln!("hubgate: {e}");
        ok = false;
    }
    for (pointer, known) in lint::unmatchable_mask_pointers(&config.audit.mask) {
        eprintln!(
            "hubgate: audit.mask {pointer:?} names nothing a record has, so it erases nothing (known there: {})",
            known.join(", ")
        );
        ok = false;
    }
    match PolicySet::load(
        &config.policy.dir,
        Duration::from_millis(config.policy.eval_timeout_ms),
    )
    .and_then(|p| p.covers(&config).map(|()| p))
    {
        Ok(policy) => {
            let rego: Vec<(PathBuf, String)> = policy
                .files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "rego"))
                .filter_map(|f| Some((f.clone(), std::fs::read_to_string(f).ok()?)))
                .collect();
            for read in crate::policy::lint::body_reads(&rego) {
                eprintln!("hubgate: caution: {read}");
            }
            summary.push(format!(
                "policies: {} ({} files, revision {})",
                config.policy.dir.display(),
                policy.files.len(),
                policy.revision
            ));
        }
        // Each finding on a line of its own, as check always printed them.
        Err(crate::policy::PolicyLoadError::Lint(lints)) => {
            for line in lints.lines() {
                eprintln!("hubgate: {line}");
            }
            ok = false;
        }
        Err(e) => {
            eprintln!("hubgate: {e}");
            ok = false;
        }
    }
    if !ok {
        // The summary lines describe a configuration that would serve; this one won't.
        return ExitCode::FAILURE;
    }
    for line in &summary {
        outln!("{line}");
    }
    let ops = crate::routes::operations();
    let count = |r| ops.iter().filter(|o| config.routing(o) == r).count();
    let judged: Vec<&str> = ops
        .iter()
        .filter(|o| config.routing(o) == Routing::Policy)
        .map(|o| o.name)
        .collect();
    outln!(
        "routes: {} operations: {} under policy ({}), {} forwarded, {} refused",
        ops.len(),
        count(Routing::Policy),
        judged.join(", "),
        count(Routing::Forward),
        count(Routing::Deny),
    );
    outln!("config: {} is valid", config.file.display());
    ExitCode::SUCCESS
}

/// The policy directory `hubgate test` runs without a folder argument: the configured
/// `policy.dir`. A configuration that is there but does not load is an error, never a reason
/// to test another folder: `./policies` would be tested instead, and its tests' PASS read as
/// the configured policies'. Only the default file, absent, falls back to `./policies`.
fn configured_policy_dir(arg: &ConfigArg) -> Result<PathBuf, ExitCode> {
    if arg.config.as_os_str() == DEFAULT_CONFIG && !arg.config.exists() {
        return Ok(PathBuf::from("policies"));
    }
    load_config(arg).map(|c| c.policy.dir)
}

fn run_tests(dir: &std::path::Path, coverage: bool, threshold: Option<f64>) -> ExitCode {
    let summary = match testing::run(dir, coverage) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hubgate: {e}");
            return ExitCode::from(2);
        }
    };
    for r in &summary.results {
        match &r.outcome {
            testing::Outcome::Pass => outln!("PASS {}:{} {}", r.file.display(), r.line, r.rule),
            testing::Outcome::Fail(why) => {
                outln!("FAIL {}:{} {}: {why}", r.file.display(), r.line, r.rule)
            }
        }
    }
    let mut below = false;
    if let (Some(files), Some(total)) = (&summary.coverage, summary.total_coverage()) {
        outln!("coverage:");
        for f in files {
            let missed: Vec<String> = f.not_covered.iter().map(|l| l.to_string()).collect();
            outln!(
                "  {:6.2}%  {}{}",
                f.percent(),
                f.file,
                if missed.is_empty() {
                    String::new()
                } else {
                    format!("  (not covered: lines {})", missed.join(", "))
                }
            );
        }
        outln!("  {total:6.2}%  total");
        if let Some(min) = threshold {
            if total < min {
                outln!("coverage {total:.2}% is below the threshold {min:.2}%");
                below = true;
            }
        }
    }
    outln!("{} passed, {} failed", summary.passed(), summary.failed());
    if below {
        return ExitCode::FAILURE;
    }
    if summary.failed() > 0 || summary.results.is_empty() {
        if summary.results.is_empty() {
            eprintln!("hubgate: no test_ rules found in {}", dir.display());
        }
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One `--key-env` or `--key-file` key, as serve reads it (audit.hmac_key_env,
/// audit.hmac_key_file).
fn verify_key(source: KeySource<'_>) -> Result<Vec<u8>, String> {
    // A key pasted where its variable's name or file's path belongs is never repeated: the
    // output of `audit verify` lands in CI logs and tickets.
    let (key, named) = match source {
        KeySource::Env(var) => {
            let shown = crate::config::shown_env_name(var);
            match std::env::var(var) {
                Ok(k) => (k.into_bytes(), format!("--key-env {shown}")),
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!("--key-env {shown} is not set"))
                }
                // serve reads audit.hmac_key_env the same way and refuses to start with it.
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!(
                        "--key-env {shown} is not UTF-8, so no hubgate wrote a log with it"
                    ))
                }
            }
        }
        KeySource::File(file) => {
            let shown = crate::files::shown_secret_path(file);
            match std::fs::read(file) {
                Ok(k) => (k, format!("--key-file {shown}")),
                Err(e) => return Err(format!("--key-file {shown}: {e}")),
            }
        }
    };
    // serve refuses an empty key (audit.hmac_key_env, audit.hmac_key_file), so no log was
    // written with one: an empty variable is a mistake (set to "" by a template, a file
    // truncated), and checking with it read every record of a keyed log, or of an unkeyed
    // one, as "modified".
    if key.is_empty() {
        return Err(format!(
            "the key is empty ({named}): hubgate never writes a log with an empty key; give \
             the key the log was written with, or neither --key-env nor --key-file for a log \
             written without one"
        ));
    }
    Ok(key)
}

#[derive(Clone, Copy)]
enum KeySource<'a> {
    Env(&'a str),
    File(&'a std::path::Path),
}

fn verify(
    files: &[PathBuf],
    key_env: Vec<String>,
    key_file: Vec<PathBuf>,
    min_seq: &[MinSeq],
) -> ExitCode {
    let sources: Vec<KeySource<'_>> = key_env
        .iter()
        .map(|v| KeySource::Env(v))
        .chain(key_file.iter().map(|f| KeySource::File(f)))
        .collect();
    let mut keys = Vec::with_capacity(sources.len());
    for source in sources {
        match verify_key(source) {
            Ok(k) => keys.push(k),
            Err(e) => {
                eprintln!("hubgate: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // Several keys: a log whose key was changed at a restart continues its chain under the
    // new key, and verified under neither key alone.
    let mut keys = keys.into_iter();
    let chain = chain::Chain::new(keys.next()).then_keys(keys.collect());
    let checked = match chain::verify_chains(&chain, files) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("hubgate: {e}");
            return ExitCode::from(2);
        }
    };
    let reached = match reached(min_seq, &checked) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hubgate: {e}");
            return ExitCode::from(2);
        }
    };
    let chain_ids: Vec<String> = checked.iter().filter_map(|c| c.id.clone()).collect();
    // One replica's files read as before; several are reported one replica per line.
    let several = checked.len() > 1;
    let mut intact = true;
    for (
        chain::Checked {
            instance, verdict, ..
        },
        reached,
    ) in checked.into_iter().zip(reached)
    {
        let who = match (several, &instance) {
            (false, _) => String::new(),
            (true, Some(i)) => format!("replica {i}: "),
            (true, None) => "records without an instance: ".to_string(),
        };
        let mut verdict = verdict;
        // A tear is reported as a break (a record may be lost in it), then the verdict on
        // the records around it, which are still checked.
        while let chain::Verdict::Torn { tears, then } = verdict {
            intact = false;
            for (file, line, reason) in tears {
                outln!(
                    "{who}BROKEN: {}:{line}: a torn record, not a complete one ({reason}): a \
                     write was cut short (a crash, a full disk); the chain continues around \
                     it, and the records after it are checked",
                    file.display()
                );
            }
            verdict = *then;
        }
        match verdict {
            chain::Verdict::Torn { .. } => {}
            chain::Verdict::Intact { last_seq, .. } if reached.is_some_and(|n| last_seq < n) => {
                intact = false;
                outln!(
                    "{who}BROKEN: the newest record is number {last_seq}, but the chain had \
                     reached record {} (--min-seq): records were cut from the end of the \
                     newest file (or the newest files were left out)",
                    reached.unwrap_or_default()
                );
            }
            // Not "intact": a file emptied is no history kept, and a --min-seq chain no file
            // holds is said BROKEN below (review 57a).
            chain::Verdict::Intact { records: 0, .. } => {
                outln!("{who}0 records: the files given hold none, so nothing was verified");
            }
            chain::Verdict::Intact {
                records,
                first_seq,
                last_seq,
                key_changes,
            } => {
                outln!("{who}intact: {records} records, sequence {first_seq} to {last_seq}");
                for (seq, key) in key_changes {
                    outln!(
                        "{who}note: from record {seq} on, the records are sealed with key {key}"
                    );
                }
                if first_seq > 1 {
                    outln!("{who}note: the chain starts at record {first_seq}; older records are in files not given (or rotated away)");
                }
            }
            chain::Verdict::Broken { file, line, reason } => {
                intact = false;
                outln!("{who}BROKEN: {}:{line}: {reason}", file.display());
            }
        }
    }
    // A chain --min-seq names that no file given holds: all its files are missing.
    for m in min_seq {
        if let Some(id) = m.chain.as_ref().filter(|id| !chain_ids.contains(id)) {
            intact = false;
            outln!(
                "chain {id}: BROKEN: no file given holds a record of this chain, but it had \
                 reached record {} (--min-seq): its files were left out or deleted",
                m.seq
            );
        }
    }
    if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// For each chain checked, the record `--min-seq` says it reached, if any. A `--min-seq`
/// without a chain id is taken only when the files hold one chain: with several, which one
/// it meant cannot be told, and guessing could pass a log cut short.
fn reached(min_seq: &[MinSeq], checked: &[chain::Checked]) -> Result<Vec<Option<u64>>, String> {
    let unnamed: Vec<u64> = min_seq
        .iter()
        .filter(|m| m.chain.is_none())
        .map(|m| m.seq)
        .collect();
    if unnamed.len() > 1 {
        return Err("--min-seq without a chain id is given more than once".into());
    }
    if let (Some(seq), true) = (unnamed.first(), checked.len() > 1) {
        let ids: Vec<&str> = checked.iter().filter_map(|c| c.id.as_deref()).collect();
        return Err(format!(
            "--min-seq {seq} names no chain, and the files hold {} chains: give \
             --min-seq CHAIN={seq} with the chain's id (hubgate_audit_chain_seq's `chain` \
             label; here: {})",
            checked.len(),
            ids.join(", ")
        ));
    }
    Ok(checked
        .iter()
        .map(|c| {
            min_seq
                .iter()
                .filter(|m| m.chain.is_none() || m.chain == c.id)
                .map(|m| m.seq)
                .max()
        })
        .collect())
}

/// Random bytes from the operating system's generator.
fn random_bytes(n: usize) -> Result<Vec<u8>, getrandom::Error> {
    let mut out = vec![0u8; n];
    getrandom::fill(&mut out)?;
    Ok(out)
}

fn new_key(id: &str, account: &str, role: &str) -> ExitCode {
    // The entry is printed as a TOML basic string: a quote, a backslash or a control
    // character other than tab would print an entry the callers file cannot parse.
    if id.trim().is_empty()
        || id.contains(['"', '\\'])
        || id.chars().any(|c| c.is_control() && c != '\t')
    {
        eprintln!("hubgate: --id must be a non-empty name without quotes, backslashes or control characters");
        return ExitCode::from(2);
    }
    let (Ok(key_bytes), Ok(secret_bytes)) = (random_bytes(18), random_bytes(40)) else {
        eprintln!("hubgate: the operating system's random generator failed");
        return ExitCode::FAILURE;
    };
    if !crate::finding::is_account_id(account) {
        eprintln!("hubgate: --account {account:?} is not a 12-digit AWS account id");
        return ExitCode::from(2);
    }
    // Key ids look like AWS's (20 upper-case characters) but start with HG, so nobody mistakes
    // one for an AWS key, and secrets are 40 characters as AWS's are.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let key_id: String = std::iter::once("HG".to_string())
        .chain(
            key_bytes
                .iter()
                .map(|b| (ALPHABET[(*b & 31) as usize] as char).to_string()),
        )
        .collect();
    const SECRET_ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let secret: String = secret_bytes
        .iter()
        .map(|b| SECRET_ALPHABET[(*b & 63) as usize] as char)
        .collect();
    outln!("access_key_id     = {key_id}");
    outln!("secret_access_key = {secret}");
    outln!();
    outln!(
        "# callers-file entry (keep the secret out of the file with secret_env or secret_file):"
    );
    outln!("[[caller]]");
    outln!("id = \"{id}\"");
    outln!("account_id = \"{account}\"");
    outln!("role = \"{role}\"");
    outln!("access_key_id = \"{key_id}\"");
    outln!("secret_access_key = \"{secret}\"");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::never_logged;

    #[test]
    fn a_panics_formatted_message_is_not_shown_and_a_fixed_one_is() {
        let fixed = std::panic::catch_unwind(|| panic!("the queue is empty")).unwrap_err();
        assert_eq!(super::panic_message(fixed.as_ref()), "the queue is empty");
        let secret = "AKIAEXAMPLE/secret";
        let formatted = std::panic::catch_unwind(|| panic!("bad key {secret}")).unwrap_err();
        assert!(!super::panic_message(formatted.as_ref()).contains("AKIA"));
    }

    #[test]
    fn min_seq_names_its_chain_whenever_there_are_several() {
        use crate::audit::chain::{Checked, Verdict};
        let chain = |id: &str| Checked {
            instance: None,
            id: Some(id.into()),
            verdict: Verdict::Intact {
                records: 1,
                first_seq: 1,
                last_seq: 1,
                key_changes: vec![],
            },
        };
        let m = |text: &str| super::min_seq(text).unwrap();
        let one = [chain("a")];
        assert_eq!(super::reached(&[m("7")], &one).unwrap(), [Some(7)]);
        assert_eq!(super::reached(&[], &one).unwrap(), [None]);
        assert_eq!(
            super::reached(&[m("a=3"), m("9")], &one).unwrap(),
            [Some(9)]
        );
        let two = [chain("a"), chain("b")];
        let err = super::reached(&[m("7")], &two).unwrap_err();
        assert!(
            err.contains("give --min-seq CHAIN=7") && err.contains("a, b"),
            "{err}"
        );
        assert_eq!(super::reached(&[m("b=7")], &two).unwrap(), [None, Some(7)]);
        assert!(super::reached(&[m("7"), m("8")], &one).is_err());
        for bad in ["0", "x", "=4", "a=", "a=-1"] {
            assert!(super::min_seq(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_aws_crates_logs_never_reach_the_log() {
        assert!(never_logged("aws_sigv4"));
        assert!(never_logged("aws_sigv4::http_request::sign"));
        assert!(never_logged("aws_config::meta::credentials::chain"));
        assert!(never_logged("aws_smithy_runtime::client::orchestrator"));
        assert!(!never_logged("hubgate::proxy"));
        assert!(!never_logged("hyper_util::client"));
    }
}
