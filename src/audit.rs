//! Audit: one decision record per request, written as NDJSON by a dedicated writer thread:
//! masked, formatted (hubgate or OCSF), hash-chained, fsynced by policy, rotated by size.
//! A forwarded request first reserves room for its record, so nothing is forwarded unrecorded.
//! Those reservations come from a pool of their own (`server.max_in_flight` places), never from
//! the room of records waiting for the writer (`audit.queue_capacity`).

pub mod chain;
pub mod ocsf;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::{AuditConfig, AuditFormat, AuditSink, Fsync};
use crate::identity::Role;
use crate::metrics::AuditMetrics;
use chain::{Chain, Head};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log cannot be opened: {0}")]
    Open(String),
    #[error("the audit sink is not accepting records: {0}")]
    Unavailable(String),
}

/// The decision record, version 2: one per request, whatever its outcome. README's "The
/// decision record" table documents these fields (a test keeps the two equal); the writer adds
/// `chain`, and `erased` when `audit.mask` erased something.
///
/// On disk the keys of every object are sorted (the chain's hash covers the record as
/// `serde_json::Value` writes it, so that a verifier reproduces the bytes from the parsed
/// line). The fields here, and in every struct a record holds, are declared in that order, so
/// the writer serialises a record as is, without building a `Value` of it first; a test and a
/// debug assertion on every record written hold the two ways equal.
///
/// It also deserialises, so that a record `audit.mask` erased parts of reads back as a record:
/// every member has a default, and an erased array element reads as its element's default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    pub decision_id: String,
    pub dry_run: bool,
    pub error: Option<RecordError>,
    #[serde(deserialize_with = "erasable")]
    pub findings: Vec<ProductFindings>,
    pub forwarded: bool,
    /// The policy input of the deciding pass (see `proxy::audited_input`), as the regorus value
    /// the policy saw, serialised with the record (no JSON tree of it is built unless the
    /// record is masked or OCSF). Absent when no policy ran. Not read back: a masked record's
    /// input is handled apart.
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub input: Option<regorus::Value>,
    pub method: String,
    pub metrics: RecordMetrics,
    pub operation: Option<Cow<'static, str>>,
    /// The request was sent to Security Hub and no answer came (a timeout, a connection lost,
    /// an unreadable answer): Security Hub may have applied it. Absent when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub outcome_unknown: bool,
    pub partial: Option<Partial>,
    /// The decision entrypoint, as OPA's decision logs name it.
    pub path: Cow<'static, str>,
    pub principal: Option<RecordPrincipal>,
    pub record_version: u32,
    pub request_path: String,
    pub result: Verdict,
    pub revision: String,
    /// Places (as in `result.violations`) of the findings the deciding state had hubgate's own
    /// recent writes laid over (the settle journal, while Security Hub may not have applied
    /// them): each was judged on that state and on the state as read, and denied if either
    /// denied it. Absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settling: Option<Vec<usize>>,
    pub source_ip: String,
    pub status: u16,
    pub throttled: bool,
    pub timestamp: String,
    /// Read back (a masked record) by JSON meaning: it holds keys callers chose.
    #[serde(deserialize_with = "plain_optional")]
    pub update: Option<Value>,
    pub upstream_request_id: Option<String>,
    pub upstream_status: Option<u16>,
    /// Places (as in `result.violations`) of the findings Security Hub holds in another
    /// account than the member's (or in none): the member's policy input held them as not
    /// found, and its answer says only that they are not its findings; the record says which.
    /// Absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withheld: Option<Vec<usize>>,
}

/// The caller, without attributes (those are in `input.principal`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordPrincipal {
    pub account_id: String,
    pub id: String,
    /// Always present in a record as written; None only once `audit.mask` erased it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// The findings a request names, grouped by product and by the account the request names for
/// them: a 100-finding batch of one product lists its ARN once, so the record stays smaller
/// than the request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProductFindings {
    /// The account the request names for these findings (`claimed_account_id`: a V2
    /// `CloudAccountUid`, an import's `AwsAccountId`), absent when it names none
    /// (BatchUpdateFindings, V2 `MetadataUids`). A V2 finding is the triple
    /// (CloudAccountUid, FindingInfoUid, MetadataProductUid), and the policies judged the
    /// account: without it a record could not say whose finding was changed, or which account
    /// a member was refused for, and V2's body keeps no copy of it (its identifiers become
    /// `findings`). Declared first: a record's members are in key order.
    #[serde(rename = "AccountId", skip_serializing_if = "Option::is_none")]
    pub account_id: Option<std::sync::Arc<str>>,
    /// Shared with the request's finding keys, not copied.
    #[serde(rename = "Ids", deserialize_with = "erasable")]
    pub ids: Vec<std::sync::Arc<str>>,
    #[serde(rename = "ProductArn")]
    pub product_arn: std::sync::Arc<str>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Verdict {
    pub allow: bool,
    #[serde(deserialize_with = "erasable")]
    pub violations: Vec<RecordViolation>,
    #[serde(deserialize_with = "erasable")]
    pub warnings: Vec<RecordViolation>,
}

/// One message of the policy's violations (or warnings) and the findings it names. Grouped by
/// message and naming findings by their place in the record's `findings`, so a lowering refused
/// on 100 findings is one entry of 100 small numbers, and the record stays no larger than the
/// request whatever the identifiers' length.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordViolation {
    /// Places, counted from 0 across the Ids of every group of the record's `findings` in
    /// order, of the findings the message names; null for a whole-request violation.
    #[serde(deserialize_with = "places")]
    pub findings: Option<Vec<usize>>,
    pub msg: String,
    /// Findings the policy named that the request does not, `{"Id", "ProductArn"}` as the policy
    /// gave them; absent when there are none (the shipped policies never name one).
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "erasable")]
    pub unlisted: Vec<Value>,
}

/// Groups a verdict's `(msg, finding)` pairs by message, in order of first appearance, naming
/// each finding by its place in `findings`. A message that is both a whole-request violation
/// and a per-finding one gets an entry for each, so null keeps meaning "the whole request".
pub fn group_violations(
    violations: impl IntoIterator<Item = (String, Option<Value>)>,
    findings: &[ProductFindings],
) -> Vec<RecordViolation> {
    let mut places: Option<HashMap<(&str, &str), usize>> = None;
    let mut out: Vec<RecordViolation> = Vec::new();
    for (msg, finding) in violations {
        let whole = finding.is_none();
        let at = match out
            .iter()
            .position(|v| v.msg == msg && v.findings.is_none() == whole)
        {
            Some(at) => at,
            None => {
                out.push(RecordViolation {
                    msg,
                    findings: (!whole).then(Vec::new),
                    unlisted: Vec::new(),
                });
                out.len() - 1
            }
        };
        let Some(finding) = finding else { continue };
        let places = places.get_or_insert_with(|| finding_places(findings));
        let key = finding
            .get("Id")
            .and_then(Value::as_str)
            .zip(finding.get("ProductArn").and_then(Value::as_str));
        let entry = &mut out[at];
        match key.and_then(|(id, arn)| places.get(&(id, arn))) {
            Some(&place) => entry.findings.get_or_insert_with(Vec::new).push(place),
            None => entry.unlisted.push(finding),
        }
    }
    for entry in &mut out {
        if let Some(places) = &mut entry.findings {
            places.sort_unstable();
            places.dedup();
        }
    }
    out
}

/// The places in `findings` of `keys` (Id, ProductArn), in order; keys not there are left out.
pub fn places_of<'k>(
    keys: impl IntoIterator<Item = (&'k str, &'k str)>,
    findings: &[ProductFindings],
) -> Vec<usize> {
    let places = finding_places(findings);
    let mut out: Vec<usize> = keys
        .into_iter()
        .filter_map(|k| places.get(&k).copied())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Each finding's place in the record's `findings`, as `group_violations` names it.
fn finding_places(findings: &[ProductFindings]) -> HashMap<(&str, &str), usize> {
    findings
        .iter()
        .flat_map(|g| g.ids.iter().map(move |id| (&**id, &*g.product_arn)))
        .enumerate()
        .map(|(place, key)| (key, place))
        .collect()
}

/// The envelope hubgate answered with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordError {
    pub code: Cow<'static, str>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Partial {
    pub denied: usize,
    pub forwarded: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordMetrics {
    pub counter_cache_hits: usize,
    pub counter_lookup_calls: usize,
    pub timer_enrich_ns: u64,
    pub timer_policy_ns: u64,
    pub timer_total_ns: u64,
    pub timer_upstream_ns: u64,
}

/// A masked place reads as absent, not as 0, which would name another finding.
/// An optional JSON member read by its JSON meaning (`validate::plain_json`), null as None.
/// serde_json's own Value reads an object whose first key is its raw-value marker as raw JSON
/// text, and a record's update holds UserDefinedFields keys callers chose: with `audit.mask`
/// set, such a key made the masked record unreadable, and it was written as an empty record.
fn plain_optional<'de, D>(deserializer: D) -> Result<Option<Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(match crate::validate::plain_json(deserializer)? {
        Value::Null => None,
        v => Some(v),
    })
}

fn places<'de, D>(deserializer: D) -> Result<Option<Vec<usize>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<Vec<Option<usize>>>::deserialize(deserializer)?
        .map(|places| places.into_iter().flatten().collect()))
}

/// Masking turns an array element into `null`; read back, that element is its type's default
/// (an empty identifier, a violation without a message), which the OCSF mapping leaves out.
fn erasable<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Vec::<Option<T>>::deserialize(deserializer)?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}

impl Record {
    /// The record as the writer takes it.
    pub fn to_json(&self) -> Value {
        // Every map in a Record has string keys, the one way serialising to a Value can fail;
        // should it ever, the record still goes out, naming the failure, rather than vanish.
        serde_json::to_value(self).unwrap_or_else(|e| {
            serde_json::json!({
                "record_version": self.record_version,
                "decision_id": self.decision_id,
                "status": self.status,
                "forwarded": self.forwarded,
                "record_error": e.to_string(),
            })
        })
    }
}

/// Told to the request once its record is in the sink (or, the sink having failed, in the
/// operational log), so that its answer never goes out ahead of its record.
type Ack = oneshot::Sender<()>;

/// A record's place from its send until the writer takes it: a permit of the room
/// (`audit.queue_capacity`) or, for a forward's record that found the room full, of the
/// forwards' pool it reserved from. Counted in `AuditLog::waiting` while it lives: dropped when the writer takes the record (or
/// with the channel), never counted before it was sent.
struct Queued {
    _place: OwnedSemaphorePermit,
    waiting: Arc<AtomicUsize>,
}

impl Queued {
    fn new(place: OwnedSemaphorePermit, waiting: Arc<AtomicUsize>) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        Queued {
            _place: place,
            waiting,
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What travels to the writer thread.
enum Msg {
    Record(Box<Record>, Ack, Queued),
    /// A record already serialised as the chain hashes it (hubgate format, no mask). The
    /// request's thread serialises and frees the record while it is still in that core's
    /// cache: read and freed on the writer's thread instead, a 100-finding record cost more CPU
    /// in cache misses and cross-thread frees than in serialising.
    Body(Vec<u8>, Ack, Queued),
    /// Shutdown: write what is queued, flush, fsync and stop, even while handles to the log
    /// (say, an idle admin connection's) still exist.
    Close,
}

/// Where a slot's place comes from.
enum Place {
    /// A permit of the room for records waiting for the writer (`audit.queue_capacity`):
    /// taken by a record about to be sent, the answer it records already decided.
    Room(OwnedSemaphorePermit),
    /// A permit of the forwards' pool (`server.max_in_flight`): taken before a forward and held
    /// while Security Hub answers it. Held in the room instead, these places left no room for
    /// the record of a request refused meanwhile (a keyless 404, a 503 OVERLOADED, a denial):
    /// with `queue_capacity` forwards waiting on a slow Security Hub, its record went to the
    /// operational log only, not to the audit file and its chain.
    Forward(OwnedSemaphorePermit),
}

/// A reserved place in the queue: sending through it cannot fail or wait.
pub struct Slot {
    place: Place,
    /// The channel's own place, which the writer waits for before it ends (a record of a
    /// request forwarded during a stop, or after the sink failed, still reaches it).
    permit: mpsc::OwnedPermit<Msg>,
    /// `AuditLog::room`: a forward's record moves into it when it can (see `write`).
    room: Arc<Semaphore>,
    as_is: bool,
    failure: Arc<Failure>,
    /// `AuditLog::waiting`: counted once the record is sent, not while only reserved.
    waiting: Arc<AtomicUsize>,
}

impl Slot {
    /// Whether the sink still takes records. It may have failed since the place was reserved
    /// (a request waits for quota after reserving it); a request forwarded then would have its
    /// record only on stderr, so it is refused as one that found the sink failed.
    pub fn usable(&self) -> Result<(), AuditError> {
        match self.failure.why() {
            Some(why) => Err(AuditError::Unavailable(why)),
            None => Ok(()),
        }
    }

    /// Queues the record; the returned `Written` resolves once the writer has it in the sink.
    pub fn write(self, record: Record) -> Written {
        let (ack, written) = oneshot::channel();
        // A forward's record takes a place in the room when there is one and frees its
        // reservation, so that records waiting count against `queue_capacity` whoever sent
        // them (a stalled sink fills the room and refuses forwards, as it always did); when the
        // room is full it keeps its reserved place, so its send never waits.
        let place = match self.place {
            Place::Room(permit) => permit,
            Place::Forward(reserved) => self.room.try_acquire_owned().unwrap_or(reserved),
        };
        // Counted before the send: the writer uncounts what it takes, never before.
        let queued = Queued::new(place, self.waiting);
        if self.as_is {
            // Writing fails only for a map key serde_json cannot write as text, which neither
            // a record nor regorus produces; were one to, the writer's long way still writes it.
            if let Ok(body) = chain::to_line_vec(&record) {
                debug_assert_eq!(
                    String::from_utf8_lossy(&body),
                    String::from_utf8_lossy(&canonical(&record)),
                    "a record struct's fields are not declared in key order"
                );
                self.permit.send(Msg::Body(body, ack, queued));
                return Written(written);
            }
        }
        self.permit.send(Msg::Record(Box::new(record), ack, queued));
        Written(written)
    }
}

/// A queued record, until the writer says it reached the sink: written to the file or stdout
/// and flushed out of hubgate's buffer (a process killed after that loses nothing the kernel
/// holds), and fsynced too with `fsync = "always"`.
#[must_use = "a request's answer waits for its record"]
pub struct Written(oneshot::Receiver<()>);

#[derive(Clone)]
pub struct AuditLog {
    /// Room for `queue_capacity + max_in_flight` messages: a slot takes one of its places only
    /// once it holds a place of `room` or `forwards`, so it never waits for one.
    tx: mpsc::Sender<Msg>,
    /// `audit.queue_capacity` places for records waiting for the writer: a record about to be
    /// sent waits for one (`reserve`), and a forward waits until one is free (`reserve_forward`).
    room: Arc<Semaphore>,
    /// `server.max_in_flight` places, one for each forward's record while Security Hub answers
    /// (each request in flight holds at most one). Never taken by a record of a request already
    /// answered, so forwards waiting on Security Hub never starve one.
    forwards: Arc<Semaphore>,
    /// Set by the writer while its sink has failed: no request is forwarded then.
    failure: Arc<Failure>,
    /// Set when a request found no room in the queue within `enqueue_timeout_ms` (refused
    /// 503 AUDIT_UNAVAILABLE), cleared when one finds room. A stalled sink (a FIFO whose
    /// reader stopped reading, a hung disk) never fails a write: without this, /readyz said
    /// the audit check passed while every forwarded request was refused, and a load balancer
    /// kept sending traffic to a replica that could forward nothing.
    full: Arc<AtomicBool>,
    /// Records sent to the writer and not yet taken by it (the `Queued` alive). Places
    /// reserved are not that: a forwarded request holds one from before its forward until its
    /// answer, so counting them filled `hubgate_audit_queue_depth` (and the stall check of
    /// /readyz) with places of requests still waiting on a slow Security Hub, the writer idle.
    waiting: Arc<AtomicUsize>,
    wait: Duration,
    /// `audit.write_timeout_ms`: how long an answer waits for its record.
    write_wait: Duration,
    /// Records go out as serialised (hubgate format, no mask), so the sender serialises them.
    as_is: bool,
    /// `audit.mask`, for a record that reaches the operational log instead (`unqueued`).
    mask: std::sync::Arc<[String]>,
}

/// Joins the writer thread once every sender is gone, after it flushed and fsynced.
pub struct AuditWriter(std::thread::JoinHandle<Result<(), SinkLost>>);

impl AuditWriter {
    /// Whether the audit log holds every record the writer was given: not when its sink had
    /// failed (and had not recovered) by the stop, its records since then having gone to the
    /// operational log only.
    pub fn finish(self) -> Result<(), SinkLost> {
        self.0.join().unwrap_or_else(|_| {
            Err(SinkLost {
                why: "the audit writer panicked".into(),
                logged: 0,
            })
        })
    }
}

/// The stop found the sink failed: the records since its failure are only on stderr. A stop
/// that said nothing of it exited 0, as if the log were whole, so a supervisor (or whoever
/// reads the pod's last state) could not tell it from a clean stop.
#[derive(Debug, thiserror::Error)]
#[error(
    "the audit sink had failed and took no writes again before the stop ({why}): the records \
     since its failure are only in the operational log (stderr), {logged} of them from the \
     writer's queue"
)]
pub struct SinkLost {
    pub why: String,
    pub logged: usize,
}

/// The hash-chain key from the configuration, if any.
pub fn chain_key(config: &AuditConfig) -> Result<Option<Vec<u8>>, AuditError> {
    if let Some(var) = &config.hmac_key_env {
        let key = std::env::var(var).map_err(|_| {
            AuditError::Open(format!(
                "audit.hmac_key_env names {}, which is not set",
                crate::config::shown_env_name(var)
            ))
        })?;
        if key.is_empty() {
            return Err(AuditError::Open(format!(
                "audit.hmac_key_env names {}, which is empty",
                crate::config::shown_env_name(var)
            )));
        }
        return Ok(Some(key.into_bytes()));
    }
    if let Some(file) = &config.hmac_key_file {
        let key = std::fs::read(file).map_err(|e| {
            AuditError::Open(format!(
                "audit.hmac_key_file {}: {e}",
                crate::files::shown_secret_path(file)
            ))
        })?;
        if key.is_empty() {
            return Err(AuditError::Open(format!("{} is empty", file.display())));
        }
        return Ok(Some(key));
    }
    Ok(None)
}

/// What a valid key setting may do that its writer did not mean. A key file is used byte for
/// byte (changing that would change the hashes of logs already written), unlike a callers
/// file's `secret_file`, whose trailing newlines are trimmed; a key written with `echo` ends in
/// a newline that `audit verify --key-env` with the same key typed in would not have.
pub fn key_cautions(config: &AuditConfig) -> Vec<String> {
    let Some(file) = &config.hmac_key_file else {
        return Vec::new();
    };
    match std::fs::read(file) {
        Ok(key) if key.ends_with(b"\n") => vec![format!(
            "audit.hmac_key_file {} ends with a newline, which is part of the key (unlike a \
             callers file's secret_file, nothing is trimmed): verify with `hubgate audit verify \
             --key-file` on this file, as `--key-env` with the key typed without it reads every \
             record as modified; or write the file without it (printf '%s') before the first record",
            file.display()
        )],
        _ => Vec::new(),
    }
}

/// What the file sink's opening (`FileSink::open`) would refuse, found without creating or
/// writing anything: `hubgate check` passed a configuration whose `serve` then stopped at
/// start on an audit path that is a directory, below a file, or not writable.
/// Only what can be known without creating a folder is checked: a folder to be created in a
/// directory this process may not write to is still found by `serve`.
pub fn check_sink(config: &AuditConfig) -> Result<(), AuditError> {
    if config.sink != AuditSink::File {
        return Ok(());
    }
    let path = &config.path;
    let open =
        |p: &Path, e: &dyn std::fmt::Display| AuditError::Open(format!("{}: {e}", p.display()));
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(open(path, &"is a directory")),
        // Opened for appending and closed: nothing is created or written. A FIFO or a
        // device is not opened here, where opening one could wait for a reader.
        Ok(meta) if meta.is_file() => {
            return std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map(drop)
                .map_err(|e| open(path, &e))
        }
        Ok(_) => return Ok(()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(open(path, &e)),
        Err(_) => {}
    }
    // The file is created at start, and its missing folders with it: the nearest folder that
    // exists must be a folder.
    let mut ancestor = path.parent();
    while let Some(dir) = ancestor.filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(open(
                    dir,
                    &format!("is not a folder, so {} cannot be created", path.display()),
                ))
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(open(dir, &e)),
            Err(_) => ancestor = dir.parent(),
        }
    }
    Ok(())
}

/// Where records go: stdout, or a file that rotates.
enum Sink {
    Stdout(std::io::BufWriter<File>),
    File(FileSink),
}

struct FileSink {
    path: PathBuf,
    out: std::io::BufWriter<File>,
    size: u64,
    /// The file's length at the last good flush: every byte below it is a complete line.
    good: u64,
    /// A regular file, not a FIFO (a pipe to a shipper) or a device: only it can be fsynced
    /// (a FIFO answers EINVAL, which closed the sink at the first fsync) or cut back.
    regular: bool,
    max_bytes: u64,
    max_files: u32,
}

/// Standard output as a plain file: `std::io::stdout()` flushes at every newline, which would
/// cost one write per record; the writer batches and flushes itself.
fn stdout_file() -> Result<File, AuditError> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| AuditError::Open(format!("stdout: {e}")))?;
    Ok(File::from(fd))
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| AuditError::Open(format!("{}: {e}", path.display())))?;
    // Two writers of one file each continue the chain from the head they read at start: their
    // records interleave with clashing sequence numbers, and an honest log verifies as broken.
    // The lock is the file's own (flock), so it goes with the process, a SIGKILL included.
    // A device or a FIFO (/dev/full, a pipe to a shipper) has no chain to read back: not locked.
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(file);
    }
    file.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => AuditError::Open(format!(
            "{} is in use by another hubgate (it holds the file's lock): give each its own \
             audit.path",
            path.display()
        )),
        std::fs::TryLockError::Error(e) => {
            AuditError::Open(format!("{}: cannot lock it: {e}", path.display()))
        }
    })?;
    Ok(file)
}

fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Whether a non-empty file's last byte is a newline.
fn ends_with_newline(path: &Path) -> Result<bool, AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> std::io::Result<bool> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::End(-1))?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        Ok(last[0] == b'\n')
    };
    read().map_err(|e| AuditError::Open(format!("{}: {e}", path.display())))
}

/// The smallest probe of a failed sink's disk: one page.
const PAGE: u64 = 4096;
/// The largest: a failed batch of imports with their inputs can hold tens of megabytes, and
/// the probe is written every second while the disk stays full.
const PROBE_MOST: u64 = 16 * 1024 * 1024;

/// Where a failed file sink's disk is probed: `.NAME.probe` beside the file `path` names,
/// a symlink followed (it may point to another disk).
fn probe_path(path: &Path) -> PathBuf {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut name = std::ffi::OsString::from(".");
    name.push(real.file_name().unwrap_or_default());
    name.push(".probe");
    real.with_file_name(name)
}

/// Writes `len` zero bytes to a new file at `path` and fsyncs it.
fn write_probe(path: &Path, len: u64) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let chunk = [0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_data()
}

/// `path.N` for the Nth most recent rotated file.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl FileSink {
    fn open(config: &AuditConfig) -> Result<FileSink, AuditError> {
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| AuditError::Open(format!("{}: {e}", parent.display())))?;
        }
        let mut file = open_append(&config.path)?;
        // A probe a kill left behind (see `recover`) holds up to PROBE_MOST of the disk that
        // failed; with the file's lock held, it is no other hubgate's.
        if is_regular(&config.path) {
            let _ = std::fs::remove_file(probe_path(&config.path));
        }
        let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // A killed writer can leave the last record without its newline (a record of the
        // buffer's size or more is written ahead of it). The next record must start a line of
        // its own: glued to the last one, both would be unreadable and the chain broken.
        if size > 0 && !ends_with_newline(&config.path)? {
            file.write_all(b"\n")
                .map_err(|e| AuditError::Open(format!("{}: {e}", config.path.display())))?;
            size += 1;
        }
        Ok(FileSink {
            path: config.path.clone(),
            out: std::io::BufWriter::new(file),
            size,
            good: size,
            regular: is_regular(&config.path),
            max_bytes: config.max_bytes,
            max_files: config.max_files,
        })
    }

    /// Before a batch (nothing buffered): keeps writing to the file at `path`. logrotate
    /// (without copytruncate) or an operator may move or delete the live file; written on into
    /// the old one, records went under the rotated name for good, or into a deleted file
    /// nobody could read. A file emptied in place (copytruncate) restarts the size count.
    fn follow_path(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let ours = self.out.get_ref().metadata()?;
        let same = match std::fs::metadata(&self.path) {
            Ok(now) => now.dev() == ours.dev() && now.ino() == ours.ino(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if same {
            self.size = ours.len();
            self.good = self.size;
            return Ok(());
        }
        tracing::warn!(
            path = %self.path.display(),
            "the audit file was moved or deleted under hubgate; the chain continues in a new \
             audit file at the configured path"
        );
        self.sync()?;
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = open_append(&self.path).map_err(std::io::Error::other)?;
        let mut size = file.metadata()?.len();
        self.out = std::io::BufWriter::new(file);
        if size > 0 && !ends_with_newline(&self.path).map_err(std::io::Error::other)? {
            self.out.write_all(b"\n")?;
            self.out.flush()?;
            size += 1;
        }
        self.size = size;
        self.good = size;
        self.regular = is_regular(&self.path);
        Ok(())
    }

    /// After a failed write: drops what is buffered and cuts the file back to its last good
    /// flush. Those lines are on stderr in full (the writer logs them); left in the file, a
    /// line half-written when the disk filled up was a break `audit verify` stopped at for
    /// good, and the rest of the buffer would be written by the drop at exit, after it.
    fn abandon(&mut self) {
        discard_buffered(&mut self.out);
        if !self.regular {
            return;
        }
        if let Err(e) = self.out.get_ref().set_len(self.good) {
            tracing::error!(
                error = %e,
                path = %self.path.display(),
                "could not cut the audit file back to its last complete record"
            );
        }
        self.size = self.good;
    }

    /// After a failure, with nothing buffered: whether the file's disk takes `room` bytes
    /// again. The probe is a file of its own beside the log (`.NAME.probe`, hidden from
    /// `NAME*` globs and from the policy watcher), written, fsynced and deleted. It was written
    /// at the log's end and cut off again: a kill in between left a line of spaces that
    /// `audit verify` reads as an empty line, a break it stops at for good, and a shipper
    /// tailing the log saw it shrink. `room` is what the failure could not write: a probe of
    /// one page passed on a disk with a page free, forwarding resumed, and the next record
    /// failed the same way, so a forwarded request's record reached only stderr every second.
    fn recover(&mut self, room: u64) -> std::io::Result<()> {
        self.follow_path()?;
        let probe = probe_path(&self.path);
        let tried = write_probe(&probe, room.clamp(PAGE, PROBE_MOST));
        let gone = match std::fs::remove_file(&probe) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        tried.and(gone)
    }

    /// Moves the current file to `.1` (older ones one up, the oldest beyond `max_files`
    /// deleted) and starts a new one. The chain simply continues into it.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.sync()?;
        if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(rotated(&self.path, self.max_files));
            for n in (1..self.max_files).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        let file = open_append(&self.path).map_err(std::io::Error::other)?;
        self.out = std::io::BufWriter::new(file);
        self.size = 0;
        self.good = 0;
        self.regular = is_regular(&self.path);
        Ok(())
    }

    fn sync(&self) -> std::io::Result<()> {
        if self.regular {
            self.out.get_ref().sync_data()?;
        }
        Ok(())
    }
}

impl Sink {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => {
                out.write_all(line)?;
                out.write_all(b"\n")
            }
            Sink::File(f) => {
                if f.max_bytes > 0 && f.size > 0 && f.size + line.len() as u64 + 1 > f.max_bytes {
                    f.rotate()?;
                }
                f.out.write_all(line)?;
                f.out.write_all(b"\n")?;
                f.size += line.len() as u64 + 1;
                Ok(())
            }
        }
    }

    fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(f) => {
                f.out.flush()?;
                if sync {
                    f.sync()?;
                }
                f.good = f.size;
                Ok(())
            }
        }
    }

    /// See `FileSink::follow_path`; called with nothing buffered.
    fn follow_path(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(_) => Ok(()),
            Sink::File(f) => f.follow_path(),
        }
    }

    /// Whether a failed sink can be tried again: a regular file can (a disk that filled up
    /// may be freed); stdout, a FIFO or a device whose reader left cannot.
    fn can_recover(&self) -> bool {
        matches!(self, Sink::File(f) if f.regular)
    }

    /// The chain's head as the files hold it: the last complete record of the live file, or
    /// of `.1` when the live file has none (just rotated).
    fn head_on_disk(&self) -> Option<Head> {
        match self {
            Sink::File(f) => head_on_disk(&f.path),
            Sink::Stdout(_) => None,
        }
    }

    /// See `FileSink::recover`.
    fn recover(&mut self, room: u64) -> std::io::Result<()> {
        match self {
            Sink::File(f) if f.regular => f.recover(room),
            _ => Err(std::io::Error::other("this sink cannot be tried again")),
        }
    }

    /// See `FileSink::abandon`.
    fn abandon(&mut self) {
        match self {
            // Nothing to cut back; the buffer is dropped so that the exit does not write it.
            Sink::Stdout(out) => discard_buffered(out),
            Sink::File(f) => f.abandon(),
        }
    }
}

/// Drops what `out` holds buffered, unwritten (`into_parts` does not flush), and keeps
/// writing to the same file.
fn discard_buffered(out: &mut std::io::BufWriter<File>) {
    if let Ok(file) = out.get_ref().try_clone() {
        let old = std::mem::replace(out, std::io::BufWriter::new(file));
        drop(old.into_parts());
    }
}

/// Erases the values at the configured JSON pointers and lists them under `erased`, as OPA's
/// decision logs do, so a reader knows something was there; returns the pointers that matched.
fn mask(record: &mut Value, pointers: &[String]) -> Vec<Value> {
    let mut erased = Vec::new();
    for pointer in pointers {
        let (parent, last) = match pointer.rfind('/') {
            Some(i) => (&pointer[..i], &pointer[i + 1..]),
            None => continue,
        };
        let key = last.replace("~1", "/").replace("~0", "~");
        // A null erases nothing: listed as erased, it would tell a reader that something was
        // there (an unauthenticated request's principal, say, read as a masked caller).
        let removed = match record.pointer_mut(parent) {
            Some(Value::Object(map)) => {
                map.get(&key).is_some_and(|v| !v.is_null()) && map.remove(&key).is_some()
            }
            Some(Value::Array(items)) => match key.parse::<usize>() {
                Ok(i) if i < items.len() && !items[i].is_null() => {
                    items[i] = Value::Null;
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if removed {
            erased.push(Value::from(pointer.as_str()));
        }
    }
    erased
}

/// The bytes the chain hashes for a record (and its input), as `serde_json::Value` writes them:
/// what writing the record as is must give.
fn canonical(record: &Record) -> Vec<u8> {
    let mut json = record.to_json();
    if let Some(input) = &record.input {
        json["input"] = serde_json::to_value(input).unwrap_or(Value::Null);
    }
    chain::to_line_vec(&json).unwrap_or_default()
}

/// The record and input with `audit.mask` applied, read back as a record for the formats
/// mapped from the type, and the pointers that were erased.
fn masked(
    record: Record,
    input: Option<Value>,
    pointers: &[String],
) -> (Record, Option<Value>, Vec<Value>) {
    let decision_id = record.decision_id.clone();
    let mut json = record.to_json();
    if let Some(input) = input {
        json["input"] = input;
    }
    let erased = mask(&mut json, pointers);
    let input = json.as_object_mut().and_then(|o| o.remove("input"));
    // Every member has a default and an erased element reads as its element's default, so
    // this does not fail; were it to, the event carries the id and nothing unmasked.
    let record = serde_json::from_value(json).unwrap_or_else(|_| Record {
        decision_id,
        ..Record::default()
    });
    (record, input, erased)
}

struct Writer {
    sink: Sink,
    chain: Chain,
    head: Head,
    format: AuditFormat,
    region: String,
    mask: Vec<String>,
    fsync: Fsync,
    fsync_every: Duration,
    last_sync: Instant,
}

impl Writer {
    /// A masked or OCSF record (or one its sender could not serialise as is) goes through a
    /// `serde_json::Value`, which the mask and the mapping work on.
    fn line(&mut self, mut record: Record) -> Vec<u8> {
        let input = record
            .input
            .take()
            .map(|i| serde_json::to_value(&i).unwrap_or(Value::Null));
        let formatted = match self.format {
            AuditFormat::Hubgate => {
                let mut json = record.to_json();
                if let Some(input) = input {
                    json["input"] = input;
                }
                let erased = mask(&mut json, &self.mask);
                if !erased.is_empty() {
                    json["erased"] = Value::Array(erased);
                }
                json
            }
            AuditFormat::Ocsf if self.mask.is_empty() => {
                ocsf::event(&record, input.as_ref(), &[], &self.region)
            }
            AuditFormat::Ocsf => {
                let (record, input, erased) = masked(record, input, &self.mask);
                ocsf::event(&record, input.as_ref(), &erased, &self.region)
            }
        };
        self.chain.seal(formatted, &mut self.head)
    }

    fn flush(&mut self, force_sync: bool) -> std::io::Result<()> {
        let sync = force_sync
            || match self.fsync {
                Fsync::Always => true,
                Fsync::Never => false,
                Fsync::Interval => self.last_sync.elapsed() >= self.fsync_every,
            };
        self.sink.flush(sync)?;
        if sync {
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}

/// The most lines the writer leaves unflushed under load: on a failed flush each of them is
/// written to the operational log, so this bounds that memory and that burst.
const MAX_UNFLUSHED: usize = 64;

/// How long the writer waits for more records, once its queue is empty, before it sleeps
/// until the next one. A sender whose record finds the writer asleep must wake its thread (a
/// futex call and two context switches: perf put them at about 13% of a denial's CPU); one
/// waiting out this pause is woken by no one. Under load the writer so takes a batch per
/// pause, and when idle it pays one pause per burst. What was written is flushed before it.
const LINGER: Duration = Duration::from_millis(1);

/// The writer's next message: at once if one is queued, else after `LINGER` if one came by
/// then, else whenever one comes. None once the queue is closed and empty.
fn next(rx: &mut mpsc::Receiver<Msg>) -> Option<Msg> {
    use mpsc::error::TryRecvError;
    let mut paused = false;
    loop {
        match rx.try_recv() {
            Ok(msg) => return Some(msg),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if paused => return rx.blocking_recv(),
            Err(TryRecvError::Empty) => {
                std::thread::sleep(LINGER);
                paused = true;
            }
        }
    }
}

/// Where the chain stands in the files at `path`: its last complete record, or that of `.1`.
fn head_on_disk(path: &Path) -> Option<Head> {
    chain::head_of(path).or_else(|| chain::head_of(&rotated(path, 1)))
}

/// Why the sink is failed, while it is: what `reserve` refuses forwarded requests with.
#[derive(Default)]
struct Failure {
    /// Read by every request; the text only while the sink is failed.
    failed: AtomicBool,
    why: Mutex<String>,
}

impl Failure {
    fn why(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        Some(self.why.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn set(&self, why: Option<String>) {
        let failed = why.is_some();
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why.unwrap_or_default();
        self.failed.store(failed, Ordering::Release);
    }
}

/// What a refusal tells its caller of why the sink failed: the operating system's reason, not
/// the error's own text, which can name the audit log's path (a rotation's rename, a reopened
/// file): where the server keeps its logs is nothing a caller needs to know. The operational
/// log has the whole error.
fn reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => e.kind().to_string(),
    }
}

/// Where the chain continues once a failed sink takes writes again: the later of the head the
/// files show (a rotation in the failed batch flushed its first records into `.1`, past the
/// last good flush) and the head at the last good flush. The files alone are not enough: a
/// live file moved away during the failure (logrotate, or an operator freeing the disk) leaves
/// `.1` an older file, and the chain continued from it took the moved file's sequence numbers
/// again, a fork `audit verify` reports as records deleted or reordered.
fn recovered_head(on_disk: Option<Head>, in_sink: &Head) -> Head {
    match on_disk {
        Some(head) if head.seq > in_sink.seq => head,
        _ => in_sink.clone(),
    }
}

/// A failed sink, in the writer.
struct Failed {
    /// When it failed or was last tried.
    tried: Instant,
    why: String,
    /// The bytes of the batch it failed to write: the room its disk must have again before
    /// forwarding resumes.
    room: u64,
}

/// How often a failed file sink is tried again (a disk that filled up may be freed).
const RETRY_SINK: Duration = Duration::from_secs(1);

/// The writer thread: seals, writes and flushes each queued record, confirms it to its request
/// once flushed, and, when the sink fails, logs what it lost, refuses forwarded requests and
/// tries a file sink again every `RETRY_SINK` until it takes writes.
fn write_records(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Msg>,
    metrics: AuditMetrics,
    failure: &Failure,
) -> Result<(), SinkLost> {
    // Lines written to the sink since its last good flush: a failing flush loses all of them
    // (they sit in the buffer, or half of one reached the file), not only the line in hand,
    // so all of them go to the operational log.
    let mut unflushed: Vec<Vec<u8>> = Vec::new();
    // The requests whose lines are in `unflushed`, told once those lines are out of hubgate's
    // hands: flushed to the sink, or written to the operational log.
    let mut waiting: Vec<Ack> = Vec::new();
    let confirm = |acks: &mut Vec<Ack>| {
        for ack in acks.drain(..) {
            // A request that stopped waiting (its caller left) has no one to tell.
            let _ = ack.send(());
        }
    };
    // Records sent to the operational log since the sink last took writes.
    let logged = std::cell::Cell::new(0usize);
    let log_failed = |e: &dyn std::fmt::Display, line: &[u8]| {
        logged.set(logged.get() + 1);
        tracing::error!(
            error = %e,
            record = %String::from_utf8_lossy(line),
            "audit sink failed; this record is not in it"
        );
    };
    // The chain at the sink's last good flush: a recovered sink continues from it (or from
    // later records a rotation flushed, see `recovered_head`); the records a failure lost,
    // on stderr, are not in it.
    let mut head_in_sink = writer.head.clone();
    metrics.in_sink(head_in_sink.id.as_deref(), head_in_sink.seq);
    // The sink's failure while it lasts; None while it works.
    let mut failed: Option<Failed> = None;
    let mut closing = false;
    loop {
        let msg = match &mut failed {
            Some(f) if !closing && writer.sink.can_recover() => {
                match next_until(&mut rx, f.tried + RETRY_SINK) {
                    Polled::Msg(msg) => msg,
                    Polled::Ended => break,
                    Polled::Due => {
                        if try_again(&mut writer, f, &mut head_in_sink) {
                            metrics.in_sink(head_in_sink.id.as_deref(), head_in_sink.seq);
                            failed = None;
                            failure.set(None);
                            logged.set(0);
                        }
                        continue;
                    }
                }
            }
            _ => match next(&mut rx) {
                Some(msg) => msg,
                None => break,
            },
        };
        let t = Instant::now();
        // Taken: its place in the queue is free again, and it is no longer counted waiting.
        let (line, ack) = match msg {
            Msg::Record(record, ack, taken) => {
                drop(taken);
                (writer.line(*record), ack)
            }
            Msg::Body(body, ack, taken) => {
                drop(taken);
                (writer.chain.seal_body(body, &mut writer.head), ack)
            }
            Msg::Close => {
                // No new records; the ones already queued are still received.
                rx.close();
                closing = true;
                continue;
            }
        };
        if let Some(f) = &failed {
            // Records of requests answered before the sink failed, still queued: the failed
            // sink would take them into its buffer and lose them.
            metrics.errors.inc();
            log_failed(&f.why, &line);
            let _ = ack.send(());
            continue;
        }
        // Nothing is buffered at a batch's start: the place to check the file.
        let mut result = if unflushed.is_empty() {
            writer.sink.follow_path()
        } else {
            Ok(())
        };
        if result.is_ok() {
            result = writer.sink.write_line(&line);
        }
        unflushed.push(line);
        waiting.push(ack);
        // Flush when the queue is empty: batches under load, prompt when idle; and every
        // MAX_UNFLUSHED lines, which bounds what a failure must log and how long a request
        // waits for its record to be confirmed.
        if result.is_ok() && (rx.is_empty() || unflushed.len() >= MAX_UNFLUSHED) {
            result = writer.flush(false);
            if result.is_ok() {
                // Counted once flushed: a line only in hubgate's buffer is lost with it when
                // the flush fails (it goes to the operational log), and counting it when it
                // entered the buffer showed a batch that never reached the sink as written.
                metrics.records.inc_by(unflushed.len() as u64);
                unflushed.clear();
                head_in_sink = writer.head.clone();
                metrics.in_sink(head_in_sink.id.as_deref(), head_in_sink.seq);
                confirm(&mut waiting);
            }
        }
        metrics.write_seconds.observe(t.elapsed().as_secs_f64());
        match result {
            Ok(()) => {}
            Err(e) => {
                metrics.errors.inc();
                // The records reach the operational log at least; forwarding stops until the
                // sink takes writes again, so no later request is forwarded unrecorded.
                let room = unflushed.iter().map(|l| l.len() as u64 + 1).sum();
                for line in unflushed.drain(..) {
                    log_failed(&e, &line);
                }
                confirm(&mut waiting);
                writer.sink.abandon();
                let why = if writer.sink.can_recover() {
                    format!(
                        "it failed ({}); hubgate tries it again every second",
                        reason(&e)
                    )
                } else {
                    // Stdout or a pipe whose reader left: nothing to try again.
                    rx.close();
                    format!("it failed ({}); a restart is needed", reason(&e))
                };
                tracing::error!(error = %e, "audit sink failed; forwarded requests are refused until it takes writes");
                failure.set(Some(why.clone()));
                failed = Some(Failed {
                    tried: Instant::now(),
                    why,
                    room,
                });
            }
        }
    }
    let lost = match failed {
        Some(f) => Some(f.why),
        None => match writer.flush(true) {
            Ok(()) => {
                metrics.records.inc_by(unflushed.len() as u64);
                metrics.in_sink(writer.head.id.as_deref(), writer.head.seq);
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "final audit flush failed");
                for line in unflushed.drain(..) {
                    log_failed(&e, &line);
                }
                writer.sink.abandon();
                Some(format!("the final flush failed: {}", reason(&e)))
            }
        },
    };
    confirm(&mut waiting);
    match lost {
        Some(why) => Err(SinkLost {
            why,
            logged: logged.get(),
        }),
        None => Ok(()),
    }
}

/// Tries a failed sink again (`Sink::recover`); true once it takes writes, the writer's head
/// then set where the chain continues.
fn try_again(writer: &mut Writer, failed: &mut Failed, head_in_sink: &mut Head) -> bool {
    match writer.sink.recover(failed.room) {
        Ok(()) => {
            writer.head = recovered_head(writer.sink.head_on_disk(), head_in_sink);
            *head_in_sink = writer.head.clone();
            tracing::warn!("the audit sink takes writes again; forwarding resumes");
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "the audit sink still fails");
            failed.tried = Instant::now();
            false
        }
    }
}

/// What the writer found waiting, when it must also wake at a deadline.
enum Polled {
    Msg(Msg),
    /// The deadline came first.
    Due,
    /// Every sender is gone and the queue is empty.
    Ended,
}

/// The next message, or `Due` at `until`. Only a failed sink waits this way (polling every
/// 50 ms), so the busy path keeps `next`'s single blocking wait.
fn next_until(rx: &mut mpsc::Receiver<Msg>, until: Instant) -> Polled {
    use mpsc::error::TryRecvError;
    loop {
        match rx.try_recv() {
            Ok(msg) => return Polled::Msg(msg),
            Err(TryRecvError::Disconnected) => return Polled::Ended,
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                if now >= until {
                    return Polled::Due;
                }
                std::thread::sleep((until - now).min(Duration::from_millis(50)));
            }
        }
    }
}

impl AuditLog {
    /// `forwards`: how many requests may hold a reserved place while they are forwarded
    /// (`server.max_in_flight`).
    pub fn start(
        config: &AuditConfig,
        forwards: usize,
        region: &str,
        metrics: AuditMetrics,
    ) -> Result<(AuditLog, AuditWriter), AuditError> {
        let chain = Chain::new(chain_key(config)?).with_instance(chain::instance_id());
        let (sink, mut head) = match config.sink {
            AuditSink::Stdout => (
                Sink::Stdout(std::io::BufWriter::new(stdout_file()?)),
                Head::default(),
            ),
            AuditSink::File => {
                let head = head_on_disk(&config.path).unwrap_or_default();
                (Sink::File(FileSink::open(config)?), head)
            }
        };
        // A new chain, or one begun before chain ids, gets its id here; a chain continued
        // from the file keeps the one its records carry (see `chain::new_chain_id`).
        if head.id.is_none() {
            head.id = chain::new_chain_id();
        }
        let writer = Writer {
            sink,
            chain,
            head,
            format: config.format,
            region: region.to_string(),
            mask: config.mask.clone(),
            fsync: config.fsync,
            fsync_every: Duration::from_millis(config.fsync_interval_ms),
            last_sync: Instant::now(),
        };
        let forwards = forwards.max(1);
        // One more for `Msg::Close`, which holds no place of the two pools.
        let (tx, rx) = mpsc::channel::<Msg>(config.queue_capacity + forwards + 1);
        let failure = Arc::new(Failure::default());
        let told = failure.clone();
        let handle = std::thread::Builder::new()
            .name("hubgate-audit".into())
            .spawn(move || write_records(writer, rx, metrics, &told))
            .map_err(|e| AuditError::Open(e.to_string()))?;
        Ok((
            AuditLog {
                tx,
                room: Arc::new(Semaphore::new(config.queue_capacity)),
                forwards: Arc::new(Semaphore::new(forwards)),
                failure,
                full: Arc::default(),
                waiting: Arc::default(),
                wait: Duration::from_millis(config.enqueue_timeout_ms),
                write_wait: Duration::from_millis(config.write_timeout_ms),
                as_is: matches!(config.format, AuditFormat::Hubgate) && config.mask.is_empty(),
                mask: config.mask.clone().into(),
            },
            AuditWriter(handle),
        ))
    }

    pub fn is_healthy(&self) -> bool {
        // The writer closes the channel at shutdown, and when a sink that cannot recover fails.
        // A queue found full for `enqueue_timeout_ms` and full still: the sink takes no
        // records, though none failed. It is healthy again once the writer makes room.
        // Full means the room full of records waiting; places forwards reserve while they
        // wait on Security Hub are not in it (an idle writer is not a stalled sink).
        let stalled = self.full.load(Ordering::Acquire)
            && self.room.available_permits() == 0
            && self.waiting.load(Ordering::Acquire) > 0;
        !self.tx.is_closed() && self.failure.why().is_none() && !stalled
    }

    /// Stops accepting records; the writer drains the queue, flushes, fsyncs and ends.
    pub async fn close(&self) {
        let _ = self.tx.send(Msg::Close).await;
    }

    /// Records waiting for the writer (sent, not only reserved).
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// A record that found no room in the queue, as text for the operational log: masked as
    /// the writer masks it, without `input` (a copy of the request, up to the body limit, that
    /// an outage would repeat into the log for every refusal). Only its id was logged: a
    /// refusal during a stalled sink (a member's denied attempt) left no trace of who asked
    /// for what.
    pub fn unqueued(&self, mut record: Record) -> String {
        record.input = None;
        let mut json = record.to_json();
        let erased = mask(&mut json, &self.mask);
        if !erased.is_empty() {
            json["erased"] = Value::Array(erased);
        }
        // Written as the sink writes it, so a line-splitting reader of the log reads it whole.
        chain::to_line_vec(&json)
            .ok()
            .and_then(|line| String::from_utf8(line).ok())
            .unwrap_or_else(|| json.to_string())
    }

    /// Waits, at most `audit.write_timeout_ms`, for a queued record to reach the sink.
    pub async fn written(&self, written: Written) -> Result<(), AuditError> {
        match tokio::time::timeout(self.write_wait, written.0).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(AuditError::Unavailable(
                "the writer stopped before writing the record".into(),
            )),
            Err(_) => Err(AuditError::Unavailable(format!(
                "the record was not written within {} ms",
                self.write_wait.as_millis()
            ))),
        }
    }

    /// Room for the record of a request already answered (refused, or never forwarded),
    /// waiting at most `audit.enqueue_timeout_ms`: only records waiting for the writer hold
    /// room, never a forward waiting on Security Hub.
    pub async fn reserve(&self) -> Result<Slot, AuditError> {
        let room = self.room.clone();
        self.slot(async move { room.acquire_owned().await.ok().map(Place::Room) })
            .await
    }

    /// A place for the record of a request about to be forwarded, held until its answer,
    /// waiting at most `audit.enqueue_timeout_ms`: for room in the queue (a sink that does not
    /// keep up refuses forwards, as the room stays full), then for a place of the forwards'
    /// own pool, which the room's records never take.
    pub async fn reserve_forward(&self) -> Result<Slot, AuditError> {
        let (room, forwards) = (self.room.clone(), self.forwards.clone());
        self.slot(async move {
            // Only to see room free: the place held while Security Hub answers is not in it.
            drop(room.acquire().await.ok()?);
            forwards.acquire_owned().await.ok().map(Place::Forward)
        })
        .await
    }

    async fn slot(
        &self,
        place: impl std::future::Future<Output = Option<Place>>,
    ) -> Result<Slot, AuditError> {
        if let Some(why) = self.failure.why() {
            return Err(AuditError::Unavailable(why));
        }
        let tx = self.tx.clone();
        let both = async move {
            let place = place.await?;
            // Never waits: the channel has room for every place of the two pools.
            let permit = tx.reserve_owned().await.ok()?;
            Some((place, permit))
        };
        match tokio::time::timeout(self.wait, both).await {
            Ok(Some((place, permit))) => {
                self.full.store(false, Ordering::Release);
                Ok(Slot {
                    place,
                    permit,
                    room: self.room.clone(),
                    as_is: self.as_is,
                    failure: self.failure.clone(),
                    waiting: self.waiting.clone(),
                })
            }
            // The channel is closed (the semaphores never are).
            Ok(None) => Err(AuditError::Unavailable("the writer has stopped".into())),
            Err(_) => {
                self.full.store(true, Ordering::Release);
                Err(AuditError::Unavailable(format!(
                    "the queue stayed full for {} ms",
                    self.wait.as_millis()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A failure's text can name the audit path; what callers are told cannot.
    #[test]
    fn a_failure_is_told_to_callers_without_its_path() {
        let os = std::io::Error::from_raw_os_error(28);
        assert_eq!(reason(&os), "No space left on device (os error 28)");
        let named = std::io::Error::other(AuditError::Open(
            "/var/log/hubgate/audit.log: Permission denied (os error 13)".into(),
        ));
        assert!(!reason(&named).contains("/var/log"), "{}", reason(&named));
    }

    #[test]
    fn the_writer_takes_queued_late_and_last_messages_and_stops_when_closed() {
        let (tx, mut rx) = mpsc::channel::<Msg>(4);
        let room = Arc::new(Semaphore::new(4));
        let waiting = Arc::new(AtomicUsize::new(0));
        let msg = |text: &[u8]| {
            let place = room.clone().try_acquire_owned().unwrap();
            Msg::Body(
                text.to_vec(),
                oneshot::channel().0,
                Queued::new(place, waiting.clone()),
            )
        };
        let body = |m: Option<Msg>| match m {
            Some(Msg::Body(b, _, _)) => b,
            _ => panic!("expected a body"),
        };
        tx.try_send(msg(b"queued")).unwrap();
        assert_eq!(body(next(&mut rx)), b"queued");
        // Sent long after the pause: the writer is asleep in blocking_recv by then.
        let late = tx.clone();
        let late_msg = msg(b"late");
        let sender = std::thread::spawn(move || {
            std::thread::sleep(LINGER * 50);
            late.blocking_send(late_msg).unwrap();
        });
        assert_eq!(body(next(&mut rx)), b"late");
        sender.join().unwrap();
        tx.try_send(msg(b"last")).unwrap();
        drop(tx);
        assert_eq!(body(next(&mut rx)), b"last", "queued before the close");
        assert!(next(&mut rx).is_none(), "closed and empty");
        // Each taken record gave its place back and was uncounted.
        assert_eq!(room.available_permits(), 4);
        assert_eq!(waiting.load(Ordering::Acquire), 0);
    }

    fn groups(products: &[(&str, &[&str])]) -> Vec<ProductFindings> {
        products
            .iter()
            .map(|(arn, ids)| ProductFindings {
                product_arn: (*arn).into(),
                ids: ids.iter().map(|id| (*id).into()).collect(),
                account_id: None,
            })
            .collect()
    }

    fn named(msg: &str, id: &str, arn: &str) -> (String, Option<Value>) {
        (msg.into(), Some(json!({"Id": id, "ProductArn": arn})))
    }

    #[test]
    fn violations_are_grouped_by_message_and_name_findings_by_place() {
        let findings = groups(&[("p1", &["a", "b"]), ("p2", &["a", "c"])]);
        let grouped = group_violations(
            vec![
                named("lower", "c", "p2"),
                ("suppress".to_string(), None),
                named("lower", "a", "p1"),
                named("lower", "a", "p2"),
                named("foreign", "b", "p1"),
                named("lower", "z", "p1"),
                ("lower".to_string(), None),
            ],
            &findings,
        );
        let json = serde_json::to_value(&grouped).unwrap();
        assert_eq!(
            json,
            json!([
                // the same Id under another product is another finding, another place
                {"msg": "lower", "findings": [0, 2, 3],
                 "unlisted": [{"Id": "z", "ProductArn": "p1"}]},
                {"msg": "suppress", "findings": null},
                {"msg": "foreign", "findings": [1]},
                // a whole-request violation keeps its own entry, with null findings
                {"msg": "lower", "findings": null},
            ])
        );
    }

    #[test]
    fn a_refusal_of_100_long_identifiers_costs_a_few_bytes_a_finding() {
        let arn = "arn:aws:securityhub:us-east-1::product/aws/securityhub";
        let ids: Vec<String> = (0..100)
            .map(|i| format!("arn:aws:securityhub:us-east-1:111122223333:subscription/aws-foundational-security-best-practices/v/1.0.0/S3.1/finding/{i:036}"))
            .collect();
        let findings = vec![ProductFindings {
            product_arn: arn.into(),
            ids: ids.iter().map(|id| id.as_str().into()).collect(),
            account_id: None,
        }];
        let msg = "member accounts may not lower a finding's severity (HIGH to LOW)";
        let grouped = group_violations(ids.iter().map(|id| named(msg, id, arn)), &findings);
        assert_eq!(grouped.len(), 1);
        assert_eq!(grouped[0].findings, Some((0..100).collect::<Vec<_>>()));
        let bytes = serde_json::to_vec(&grouped).unwrap().len();
        // one message and 100 places; each identifier alone is 150 bytes
        assert!(bytes < msg.len() + 100 * 4 + 40, "{bytes}");
    }

    #[test]
    fn a_masked_place_reads_as_absent_not_as_another_finding() {
        let back: RecordViolation =
            serde_json::from_value(json!({"msg": "m", "findings": [0, null, 2]})).unwrap();
        assert_eq!(back.findings, Some(vec![0, 2]));
        let whole: RecordViolation =
            serde_json::from_value(json!({"msg": "m", "findings": null})).unwrap();
        assert_eq!(whole.findings, None);
    }

    fn sample_record() -> Record {
        Record {
            record_version: 2,
            input: None,
            decision_id: "d".into(),
            timestamp: "2026-11-24T03:11:19Z".into(),
            path: "hubgate/deny".into(),
            operation: Some("BatchUpdateFindings".into()),
            principal: Some(RecordPrincipal {
                id: "member".into(),
                account_id: "222222222222".into(),
                role: Some(Role::Member),
            }),
            source_ip: "127.0.0.1".into(),
            method: "PATCH".into(),
            request_path: "/findings/batchupdate".into(),
            findings: vec![],
            update: None,
            result: Verdict {
                allow: true,
                violations: vec![],
                warnings: vec![],
            },
            error: None,
            dry_run: false,
            partial: Some(Partial {
                forwarded: 1,
                denied: 1,
            }),
            forwarded: true,
            throttled: false,
            status: 200,
            upstream_status: Some(200),
            upstream_request_id: Some("u".into()),
            revision: "sha256:x".into(),
            settling: Some(vec![0]),
            withheld: Some(vec![0]),
            outcome_unknown: true,
            metrics: RecordMetrics {
                timer_total_ns: 1,
                timer_policy_ns: 2,
                timer_enrich_ns: 3,
                timer_upstream_ns: 4,
                counter_lookup_calls: 5,
                counter_cache_hits: 6,
            },
        }
    }

    /// The writer serialises a record as is; the chain hashes (and a verifier reproduces) the
    /// record with every object's keys sorted. Every member that can appear is set here, so a
    /// field declared out of order, at any level, fails this.
    #[test]
    fn a_record_written_as_is_has_its_keys_sorted() {
        let mut record = sample_record();
        record.findings = vec![ProductFindings {
            ids: vec!["b".into(), "a\"quoted\"".into()],
            product_arn: "arn:p".into(),
            account_id: None,
        }];
        record.update = Some(json!({"workflow_status": "NEW", "note": {"text": "t", "by": "x"}}));
        record.error = Some(RecordError {
            code: "POLICY_DENIED".into(),
            message: "m".into(),
        });
        let violation = RecordViolation {
            findings: Some(vec![0, 1]),
            msg: "v".into(),
            unlisted: vec![json!({"ProductArn": "q", "Id": "z"})],
        };
        record.result = Verdict {
            allow: false,
            violations: vec![violation.clone()],
            warnings: vec![violation],
        };
        record.input = Some(regorus::Value::from(json!({
            "version": 1, "principal": {"role": "member", "id": "m", "attributes": {}},
            "update": {"z": null, "a": [1, 2.5, "x"]}, "summary": {},
        })));
        let direct = serde_json::to_vec(&record).unwrap();
        assert_eq!(
            String::from_utf8(direct).unwrap(),
            String::from_utf8(canonical(&record)).unwrap()
        );
    }

    /// The names in the first column of README's decision-record table, `a`, `b` rows split.
    fn documented_fields() -> Vec<String> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let start = readme
            .find("### The decision record (version ")
            .expect("README documents the decision record");
        let table = &readme[start..];
        let table = &table[table
            .find("| field | type | meaning |")
            .expect("the field table")..];
        let mut fields: Vec<String> = table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .flat_map(|l| {
                let first = l.split('|').nth(1).unwrap_or_default();
                first
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        fields.sort();
        fields
    }

    #[test]
    fn readme_documents_exactly_the_record_fields() {
        let Value::Object(serialised) = sample_record().to_json() else {
            panic!("a record is an object")
        };
        // The writer adds these: chain always, input and erased when they apply.
        let mut fields: Vec<String> = serialised
            .keys()
            .cloned()
            .chain(["chain", "input", "erased"].map(String::from))
            .collect();
        fields.sort();
        assert_eq!(documented_fields(), fields);
    }

    #[test]
    fn the_ocsf_event_reads_the_typed_record() {
        let record = sample_record();
        let e = ocsf::event(&record, None, &[], "us-east-1");
        assert_eq!(e["action_id"], 1, "{e}");
        assert_eq!(e["disposition_id"], 1, "{e}");
        assert_eq!(e["status_id"], 1, "{e}");
        assert_eq!(e["actor"]["user"]["uid"], "member", "{e}");
        assert_eq!(e["unmapped"]["partial"]["denied"], 1, "{e}");
        assert_eq!(e["metadata"]["correlation_uid"], "u", "{e}");
        let denied = Record {
            result: Verdict {
                allow: false,
                violations: vec![RecordViolation {
                    msg: "no".into(),
                    ..RecordViolation::default()
                }],
                warnings: vec![],
            },
            forwarded: false,
            outcome_unknown: false,
            status: 403,
            error: Some(RecordError {
                code: "POLICY_DENIED".into(),
                message: "no".into(),
            }),
            ..record
        };
        let e = ocsf::event(&denied, None, &[], "us-east-1");
        assert_eq!(e["action_id"], 2, "{e}");
        assert_eq!(e["disposition_id"], 2, "{e}");
        assert_eq!(e["api"]["response"]["error"], "POLICY_DENIED", "{e}");
    }

    /// A record in which every text is distinct, so that each can be looked for in an event.
    fn distinctive_record() -> (Record, Value) {
        let record = Record {
            findings: vec![ProductFindings {
                product_arn: "arn-of-the-product".into(),
                ids: vec!["finding-one".into(), "finding-two".into()],
                account_id: None,
            }],
            update: Some(
                json!({"note": {"text": "secret-note-text", "updated_by": "note-author"}}),
            ),
            result: Verdict {
                allow: false,
                violations: vec![RecordViolation {
                    msg: "violation-message".into(),
                    findings: Some(vec![1]),
                    unlisted: vec![json!({"Id": "violation-id", "ProductArn": "violation-arn"})],
                }],
                warnings: vec![RecordViolation {
                    msg: "warning-message".into(),
                    ..RecordViolation::default()
                }],
            },
            error: Some(RecordError {
                code: "ERROR_CODE".into(),
                message: "error-message".into(),
            }),
            principal: Some(RecordPrincipal {
                id: "principal-id".into(),
                account_id: "principal-account".into(),
                role: Some(Role::Member),
            }),
            source_ip: "192.0.2.77".into(),
            upstream_request_id: Some("upstream-request-id".into()),
            revision: "sha256:revision".into(),
            ..sample_record()
        };
        let input = json!({"request": {"body": {"Note": {"Text": "input-note-text"}}}});
        (record, input)
    }

    /// Every pointer to a text in `value`, with the text.
    fn texts(value: &Value, at: String, out: &mut Vec<(String, String)>) {
        match value {
            Value::String(s) => out.push((at, s.clone())),
            Value::Object(map) => map
                .iter()
                .for_each(|(k, v)| texts(v, format!("{at}/{k}"), out)),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, v)| texts(v, format!("{at}/{i}"), out)),
            _ => {}
        }
    }

    #[test]
    fn a_record_read_back_unmasked_gives_the_same_event() {
        let (record, input) = distinctive_record();
        let direct = ocsf::event(&record, Some(&input), &[], "us-east-1");
        let (back, back_input, erased) = masked(record, Some(input), &[]);
        assert!(erased.is_empty());
        assert_eq!(
            ocsf::event(&back, back_input.as_ref(), &[], "us-east-1"),
            direct
        );
    }

    #[test]
    fn every_masked_text_is_absent_from_the_ocsf_event() {
        let (record, input) = distinctive_record();
        let mut json = record.to_json();
        json["input"] = input.clone();
        let mut leaves = Vec::new();
        texts(&json, String::new(), &mut leaves);
        assert!(leaves.len() > 15, "{leaves:?}");
        for (pointer, text) in leaves {
            if pointer == "/decision_id" {
                continue; // refused by the configuration
            }
            let mask = vec![pointer.clone()];
            let (back, back_input, erased) = masked(record.clone(), Some(input.clone()), &mask);
            assert_eq!(erased, vec![Value::from(pointer.as_str())]);
            let event = ocsf::event(&back, back_input.as_ref(), &erased, "us-east-1");
            let line = event.to_string();
            assert!(
                !line.contains(text.as_str()),
                "{pointer} masked, yet {text:?} is in {line}"
            );
            assert_eq!(event["unmapped"]["erased"], json!([pointer]), "{line}");
        }
    }

    fn config(dir: &Path) -> AuditConfig {
        AuditConfig {
            sink: AuditSink::File,
            path: dir.join("sub/audit.ndjson"),
            fsync: Fsync::Always,
            ..AuditConfig::default()
        }
    }

    async fn write_n(config: &AuditConfig, from: u64, n: u64) {
        let (log, writer) =
            AuditLog::start(config, 256, "us-east-1", AuditMetrics::default()).unwrap();
        for i in from..from + n {
            let written = log.reserve().await.unwrap().write(Record {
                decision_id: format!("d-{i}"),
                update: Some(json!({"note": {"text": "secret ticket", "by": "x"}})),
                ..sample_record()
            });
            log.written(written).await.unwrap();
            let id = format!("\"decision_id\":\"d-{i}\"");
            let on_disk = std::fs::read_to_string(&config.path).unwrap();
            assert!(on_disk.contains(&id), "confirmed before it was in the file");
        }
        drop(log);
        writer.finish().expect("the sink took every record");
    }

    fn read(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_failed_sinks_probe_leaves_the_log_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        write_n(&config, 0, 2).await;
        let before = std::fs::read(&config.path).unwrap();
        let mut sink = FileSink::open(&config).unwrap();
        // A room beyond the largest probe is clamped to it, not refused.
        sink.recover(PROBE_MOST * 4).unwrap();
        assert_eq!(std::fs::read(&config.path).unwrap(), before);
        let probe = probe_path(&config.path);
        assert_eq!(probe.file_name().unwrap(), ".audit.ndjson.probe");
        assert_eq!(probe.parent(), config.path.canonicalize().unwrap().parent());
        assert!(!probe.exists(), "the probe file was left behind");
        // One left by a kill mid-probe is replaced, then removed; a start removes it too.
        std::fs::write(&probe, b"left over").unwrap();
        sink.recover(0).unwrap();
        assert!(!probe.exists());
        drop(sink);
        std::fs::write(&probe, b"left over").unwrap();
        let _sink = FileSink::open(&config).unwrap();
        assert!(!probe.exists());
    }

    #[test]
    fn a_recovered_chain_continues_from_the_later_head() {
        let head = |seq: u64| Head {
            seq,
            hash: format!("{seq:064}"),
            id: None,
        };
        // A rotation in the failed batch: `.1` holds records past the last good flush.
        assert_eq!(recovered_head(Some(head(9)), &head(7)).seq, 9);
        // The live file moved away during the failure: `.1` is older.
        assert_eq!(recovered_head(Some(head(4)), &head(7)).seq, 7);
        assert_eq!(recovered_head(None, &head(7)).seq, 7);
    }

    /// What the writer logs, from every thread (the writer has its own).
    #[derive(Clone)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_record_a_failed_flush_loses_reaches_the_log() {
        let captured = Captured(Default::default());
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        // The only test that installs a global subscriber; the writer logs from its thread.
        tracing::subscriber::set_global_default(subscriber).unwrap();
        let config = AuditConfig {
            path: PathBuf::from("/dev/full"),
            ..config(Path::new("/unused"))
        };
        let metrics = AuditMetrics::default();
        let (log, writer) = AuditLog::start(&config, 256, "us-east-1", metrics.clone()).unwrap();
        // Queued faster than the writer wakes (it lingers 1 ms): written as one batch into
        // its buffer, then one flush that fails.
        let mut slots = Vec::new();
        for _ in 0..20 {
            slots.push(log.reserve().await.unwrap());
        }
        let mut written = Vec::new();
        for (i, slot) in slots.into_iter().enumerate() {
            written.push(slot.write(Record {
                decision_id: format!("batched-{i:02}"),
                ..sample_record()
            }));
        }
        drop(log);
        // The stop says the log is not whole, and how many queued records reached stderr.
        let lost = writer
            .finish()
            .expect_err("a sink that failed was reported whole");
        assert_eq!(lost.logged, 20, "{lost}");
        // None reached the sink: none is counted written (the lines that entered the buffer
        // before the failed flush were).
        assert_eq!(metrics.records.get(), 0);
        assert!(lost.why.contains("No space left"), "{lost}");
        // Each request is told once its record is in the operational log, not left to wait
        // out its timeout with the answer held.
        for w in written {
            assert!(w.0.await.is_ok(), "a record's request was never told");
        }
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        let missing: Vec<String> = (0..20)
            .map(|i| format!("batched-{i:02}"))
            .filter(|id| !text.contains(id.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "lost without a trace: {missing:?}\n{text}"
        );
    }

    #[tokio::test]
    async fn records_are_chained_in_order_and_a_restart_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        write_n(&config, 0, 50).await;
        write_n(&config, 50, 1).await;
        let lines = read(&config.path);
        assert_eq!(lines.len(), 51);
        assert_eq!(lines[50]["decision_id"], "d-50");
        assert_eq!(lines[50]["chain"]["seq"], 51);
        assert_eq!(lines[50]["chain"]["prev"], lines[49]["chain"]["hash"]);
        let verdict = chain::verify(&Chain::new(None), std::slice::from_ref(&config.path)).unwrap();
        assert_eq!(
            verdict,
            chain::Verdict::Intact {
                records: 51,
                first_seq: 1,
                last_seq: 51,
                key_changes: vec![],
            }
        );
    }

    /// Records with a policy input are written as is and verify, escaped text and an object
    /// key that is not a string (regorus writes it as its text) included.
    #[tokio::test]
    async fn records_with_an_input_are_written_as_is_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let (log, writer) =
            AuditLog::start(&config, 256, "us-east-1", AuditMetrics::default()).unwrap();
        let good = regorus::Value::from(json!({"operation": "X", "request": {"b": [1, "é\""]}}));
        let mut odd = std::collections::BTreeMap::new();
        odd.insert(regorus::Value::from(1u64), regorus::Value::from("one"));
        for (id, input) in [("good", good), ("odd", regorus::Value::from(odd))] {
            let _ = log.reserve().await.unwrap().write(Record {
                decision_id: id.into(),
                input: Some(input),
                ..sample_record()
            });
        }
        drop(log);
        writer.finish().expect("the sink took every record");
        let lines = read(&config.path);
        assert_eq!(lines[0]["input"]["request"]["b"][1], "é\"");
        assert_eq!(lines[1]["decision_id"], "odd");
        assert_eq!(lines[1]["input"], json!({"1": "one"}));
        let verdict = chain::verify(&Chain::new(None), std::slice::from_ref(&config.path)).unwrap();
        assert!(
            matches!(verdict, chain::Verdict::Intact { records: 2, .. }),
            "{verdict:?}"
        );
    }

    #[tokio::test]
    async fn rotation_keeps_the_chain_and_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            max_bytes: 2_000,
            max_files: 3,
            ..config(dir.path())
        };
        write_n(&config, 0, 200).await;
        assert!(rotated(&config.path, 3).exists());
        assert!(
            !rotated(&config.path, 4).exists(),
            "retention keeps 3 rotated files"
        );
        for n in 1..=3 {
            assert!(std::fs::metadata(rotated(&config.path, n)).unwrap().len() <= 2_000);
        }
        let files = vec![
            rotated(&config.path, 3),
            rotated(&config.path, 2),
            rotated(&config.path, 1),
            config.path.clone(),
        ];
        match chain::verify(&Chain::new(None), &files).unwrap() {
            chain::Verdict::Intact {
                last_seq,
                first_seq,
                ..
            } => {
                assert_eq!(last_seq, 200);
                assert!(first_seq > 1, "the oldest records were rotated away");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A masked record reads back whole whatever keys a caller put in its update: one spelled
    /// like serde_json's raw-value marker made it unreadable, and an empty record was written.
    #[test]
    fn a_masked_record_keeps_a_callers_marker_key() {
        let udf = json!({"$serde_json::private::RawValue": "not json", "k": "v"});
        let record = Record {
            update: Some(json!({"user_defined_fields": udf, "note": {"text": "t"}})),
            ..sample_record()
        };
        let (read, _, erased) = masked(record, None, &["/update/note/text".to_string()]);
        assert_eq!(erased, vec![json!("/update/note/text")]);
        assert_eq!(read.operation.as_deref(), Some("BatchUpdateFindings"));
        assert_eq!(read.request_path, "/findings/batchupdate");
        assert_eq!(
            read.update,
            Some(json!({"user_defined_fields": udf, "note": {}}))
        );
    }

    #[tokio::test]
    async fn masked_fields_are_erased_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            mask: vec!["/update/note/text".into(), "/absent/field".into()],
            ..config(dir.path())
        };
        write_n(&config, 0, 1).await;
        let lines = read(&config.path);
        assert!(lines[0]["update"]["note"].get("text").is_none());
        assert_eq!(lines[0]["update"]["note"]["by"], "x");
        assert_eq!(lines[0]["erased"], json!(["/update/note/text"]));
        assert!(!std::fs::read_to_string(&config.path)
            .unwrap()
            .contains("secret ticket"));
    }

    #[test]
    fn a_secret_pasted_as_the_key_variable_is_not_quoted() {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let config = AuditConfig {
            hmac_key_env: Some(secret.into()),
            ..AuditConfig::default()
        };
        let e = chain_key(&config).err().unwrap().to_string();
        assert!(e.contains("audit.hmac_key_env names (not shown"), "{e}");
        assert!(!e.contains(secret), "{e}");
    }

    /// A queue with room for one record, whose requests wait 50 ms for room.
    fn one_place(dir: &Path) -> AuditConfig {
        AuditConfig {
            queue_capacity: 1,
            enqueue_timeout_ms: 50,
            ..config(dir)
        }
    }

    /// Forwards waiting on Security Hub hold places of their own pool, more of them than
    /// `queue_capacity`: a refused request's record still finds room at once. Room held by a
    /// record refuses a forward after the wait (a sink that does not keep up), and the
    /// forwards' records, sent while the room is full, go through their own places at once.
    #[tokio::test]
    async fn places_forwards_hold_leave_room_for_a_refused_request_s_record() {
        let dir = tempfile::tempdir().unwrap();
        let config = one_place(dir.path());
        let (log, writer) =
            AuditLog::start(&config, 3, "us-east-1", AuditMetrics::default()).unwrap();
        let mut forwards = Vec::new();
        for _ in 0..3 {
            forwards.push(log.reserve_forward().await.unwrap());
        }
        let err = log.reserve_forward().await.err().unwrap();
        assert!(err.to_string().contains("queue stayed full"), "{err}");
        assert_eq!(
            log.queue_depth(),
            0,
            "reserved places are not records waiting"
        );
        assert!(
            log.is_healthy(),
            "forwards waiting on Security Hub are not a stalled sink"
        );
        let refused = log.reserve().await.expect("starved by forwards' places");
        let refused = refused.write(Record {
            decision_id: "refused".into(),
            ..sample_record()
        });
        log.written(refused).await.unwrap();
        // A record about to be written holds the room: a forward waits, then is refused.
        let held = log.reserve().await.unwrap();
        let err = log.reserve_forward().await.err().unwrap();
        assert!(err.to_string().contains("queue stayed full"), "{err}");
        let mut written = Vec::new();
        for (i, slot) in forwards.into_iter().enumerate() {
            written.push(slot.write(Record {
                decision_id: format!("forward-{i}"),
                ..sample_record()
            }));
        }
        written.push(held.write(Record {
            decision_id: "held".into(),
            ..sample_record()
        }));
        for w in written {
            log.written(w).await.unwrap();
        }
        assert_eq!(log.queue_depth(), 0);
        // Every place is free again: a forward reserves at once.
        drop(log.reserve_forward().await.unwrap());
        drop(log);
        writer.finish().expect("the sink took every record");
        let ids: Vec<String> = read(&config.path)
            .iter()
            .map(|r| r["decision_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            ids,
            ["refused", "forward-0", "forward-1", "forward-2", "held"],
            "{ids:?}"
        );
    }

    /// A stop closes the queue while a forward still waits on Security Hub: its record, sent
    /// after the close through the place it reserved, still reaches the sink before the writer
    /// ends, and no new place is given.
    #[tokio::test]
    async fn a_place_reserved_before_the_stop_still_reaches_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let (log, writer) =
            AuditLog::start(&config, 2, "us-east-1", AuditMetrics::default()).unwrap();
        let forward = log.reserve_forward().await.unwrap();
        log.close().await;
        let written = forward.write(Record {
            decision_id: "sent-after-the-close".into(),
            ..sample_record()
        });
        log.written(written).await.unwrap();
        let err = log.reserve().await.err().unwrap();
        assert!(err.to_string().contains("writer has stopped"), "{err}");
        drop(log);
        writer.finish().expect("the sink took every record");
        assert_eq!(read(&config.path)[0]["decision_id"], "sent-after-the-close");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let config = one_place(dir.path());
        let (log, writer) =
            AuditLog::start(&config, 256, "us-east-1", AuditMetrics::default()).unwrap();
        // Hold both places: the writer cannot drain a reserved-but-unsent slot.
        let held = log.reserve().await.unwrap();
        let err = log.reserve().await.err().unwrap();
        assert!(err.to_string().contains("queue stayed full"), "{err}");
        let _ = held.write(sample_record());
        drop(log);
        writer.finish().expect("the sink took every record");
    }
}
