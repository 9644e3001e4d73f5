//! Tamper evidence: every record carries its sequence number, the hash of the record before it
//! and its own hash (SHA-256, or HMAC-SHA-256 with a key), so that `hubgate audit verify`
//! finds the first modified, deleted, reordered or truncated record, across rotated files.
//! Each replica keeps its own chain and names itself in every record (`chain.instance`, covered
//! by the hash), so one `verify` call can take several replicas' files and check each chain.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How `check` begins the reason of a line that is not a JSON record.
const NOT_JSON: &str = "not a complete JSON record (truncated or altered)";

/// The largest record the chain's readers look for (a restart's head, a file's first record):
/// bounds what a file of garbage costs them.
const LARGEST_RECORD: u64 = 512 * 1024 * 1024;

/// The `prev` of the first record a log ever holds.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where a chain stands: the last record's sequence number and hash, and the chain's id.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    /// The chain's id (`chain.id`), sealed into every record from the start that chose it on:
    /// None for a chain begun before ids were written, until a start gives it one.
    pub id: Option<String>,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            seq: 0,
            hash: GENESIS.to_string(),
            id: None,
        }
    }
}

/// A new chain id: 16 random bytes in hex. `verify` tells chains apart by it (several
/// replicas' files in one call), not by the instance a file's first record names: an instance
/// changes at every restart of a Deployment's pod, so two files of one chain named different
/// instances, and a file deleted between them (or a file's tail cut back to a restart) read as
/// two replicas' chains, each intact, exit 0. Records of one chain share its id, so the gap
/// shows. None if the operating system has no random bytes: the records then carry no id and
/// are told apart by instance, as before ids.
pub fn new_chain_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

/// Whether `id` is one `new_chain_id` makes. Hashed between the sequence number and the
/// instance, an id holding a newline could be read as part of either.
fn is_chain_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A line's `chain` object. Its members are in the order serde_json writes a parsed object's
/// keys (sorted), which is the order every log so far was written in.
#[derive(serde::Serialize)]
struct Link<'a> {
    hash: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    prev: &'a str,
    seq: u64,
}

#[derive(Clone)]
pub struct Chain {
    key: Option<Vec<u8>>,
    /// Verification only: the keys that took over from `key`, in the order they were used
    /// (a key changed at a restart continues the chain under the new key).
    later_keys: Vec<Vec<u8>>,
    /// The replica that writes this chain.
    instance: Option<String>,
}

/// This replica's name: HUBGATE_INSTANCE_ID, else the host name (a Kubernetes pod's name).
pub fn instance_id() -> Option<String> {
    std::env::var("HUBGATE_INSTANCE_ID")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl Chain {
    pub fn new(key: Option<Vec<u8>>) -> Chain {
        Chain {
            key,
            later_keys: Vec::new(),
            instance: None,
        }
    }

    /// Verification only: records may also be sealed with these keys, each taking over from
    /// the one before it for good (a record sealed with a key is never followed by one sealed
    /// with an earlier key: an old key, perhaps the leaked one a rotation retired, cannot
    /// seal records after the new one took over).
    pub fn then_keys(mut self, keys: Vec<Vec<u8>>) -> Chain {
        self.later_keys = keys;
        self
    }

    /// Names the replica in every record this chain seals.
    pub fn with_instance(mut self, instance: Option<String>) -> Chain {
        self.instance = instance;
        self
    }

    fn digest(&self, head: &Head, seq: u64, body: &[u8]) -> String {
        let link = Sealed {
            prev: &head.hash,
            seq,
            id: head.id.as_deref(),
            instance: self.instance.as_deref(),
        };
        digest_under(self.key.as_deref(), &link, body)
    }

    /// Seals `record` as the successor of `head` and returns its line (without newline).
    /// The hash covers the previous hash, the sequence number and the record as serialised
    /// without `chain`; the `chain` object is then written as the line's first member, so a
    /// verifier finds the hashed bytes in the line itself (`sealed_body`).
    pub fn seal(&self, mut record: Value, head: &mut Head) -> Vec<u8> {
        if let Some(obj) = record.as_object_mut() {
            obj.remove("chain");
        }
        self.seal_body(to_line_vec(&record).unwrap_or_default(), head)
    }

    /// Seals a record already serialised as `seal` would serialise it: an object, keys sorted
    /// at every level, no `chain` member.
    pub fn seal_body(&self, body: Vec<u8>, head: &mut Head) -> Vec<u8> {
        // Only an edited log ends at u64::MAX (head_of read it); the record after it must still
        // be written, not panic the writer, and `verify` reports the wrap as a break.
        let seq = head.seq.wrapping_add(1);
        let hash = self.digest(head, seq, &body);
        let chain = Link {
            hash: &hash,
            id: head.id.as_deref(),
            instance: self.instance.as_deref(),
            prev: &head.hash,
            seq,
        };
        let mut line = Vec::with_capacity(body.len() + 200);
        line.extend_from_slice(b"{\"chain\":");
        // Strings and a number: serialising cannot fail.
        let _ = to_line_writer(&mut line, &chain);
        // body is an object: "{}" or "{...}"
        if body.len() > 2 {
            line.push(b',');
        }
        line.extend_from_slice(&body[1..]);
        head.seq = seq;
        head.hash = hash;
        line
    }

    /// Checks one line against the head before it; returns the new head and the record's
    /// instance.
    /// `key_at`: the key the records before were sealed with (0: `key`, then `later_keys`),
    /// moved on when this record was sealed with a later one.
    fn check(
        &self,
        line: &str,
        head: Option<&Head>,
        key_at: &mut usize,
    ) -> Result<(Head, Option<String>), String> {
        // Read as JSON means it (hubgate's strict reader), not with serde_json's Value: with the
        // raw_value feature that replaces an object whose first key is
        // "$serde_json::private::RawValue" by the JSON its string holds, and records hold keys
        // callers chose (UserDefinedFields): an honest record with such a key re-serialised to
        // other bytes and failed its hash. And a member written twice hashes as its last value
        // (serde_json keeps the last), while a reader that takes the first one would read the
        // value an editor slipped in before it. Every sealed record has each member once.
        let mut record: Value = crate::validate::parse_strict(line.as_bytes()).map_err(|v| {
            if v.message().starts_with("duplicate key") {
                format!("a member is written twice ({}): it was modified", v.path())
            } else {
                format!("{NOT_JSON}: {}", v.message())
            }
        })?;
        let chain = record
            .as_object_mut()
            .and_then(|o| o.remove("chain"))
            .ok_or("the record has no chain")?;
        // The hash covers the record without `chain`, so a member added to `chain` is covered
        // by nothing: `"chain":{…,"approved":true}` verified as intact, with a key too. A
        // sealed chain holds these members only.
        let Value::Object(members) = &chain else {
            return Err("chain is not an object".into());
        };
        if let Some(extra) = members
            .keys()
            .find(|k| !matches!(k.as_str(), "hash" | "id" | "instance" | "prev" | "seq"))
        {
            return Err(format!(
                "chain has a member hubgate never writes ({extra:?}), which no hash covers: \
                 it was modified"
            ));
        }
        let hash = chain
            .get("hash")
            .and_then(Value::as_str)
            .ok_or("the record has no chain.hash")?
            .to_string();
        let seq = chain
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or("the record has no chain.seq")?;
        let prev = chain
            .get("prev")
            .and_then(Value::as_str)
            .ok_or("the record has no chain.prev")?
            .to_string();
        let instance = match chain.get("instance") {
            None => None,
            Some(Value::String(i)) => Some(i.clone()),
            Some(_) => return Err("chain.instance is not a string".into()),
        };
        let id = match chain.get("id") {
            None => None,
            Some(Value::String(i)) if is_chain_id(i) => Some(i.clone()),
            Some(_) => {
                return Err("chain.id is not a chain id hubgate writes: it was modified".into())
            }
        };
        if let Some(head) = head {
            // checked: a record at u64::MAX (an edited log) has no successor.
            if head.seq.checked_add(1) != Some(seq) {
                return Err(format!(
                    "sequence number {seq} follows {}: records were deleted or reordered",
                    head.seq
                ));
            }
            if prev != head.hash {
                return Err("chain.prev is not the hash of the record before it".into());
            }
        }
        let link = Sealed {
            prev: &prev,
            seq,
            id: id.as_deref(),
            instance: instance.as_deref(),
        };
        let body = sealed_body(line.as_bytes(), &hash, &link)?;
        let keys = std::iter::once(self.key.as_deref())
            .chain(self.later_keys.iter().map(|k| Some(k.as_slice())));
        let sealed_with = keys
            .enumerate()
            .skip(*key_at)
            .find(|(_, key)| digest_under(*key, &link, &body) == hash);
        match sealed_with {
            Some((at, _)) => *key_at = at,
            None if self.later_keys.is_empty() => {
                return Err("the record's content does not match its hash: it was modified".into())
            }
            None => {
                return Err(format!(
                    "the record's content does not match its hash under key {} or a later one: \
                     it was modified",
                    *key_at + 1
                ))
            }
        }
        Ok((Head { seq, hash, id }, instance))
    }
}

/// The bytes a line's hash covers: the line without its `chain` member, as written. They are
/// taken from the line itself, not re-serialised from its parsed JSON: re-serialised, a line
/// with spaces added, members reordered, a character written as a `\u` escape, a number
/// respelled (`-0.0` as `-0.00`) or a space appended verified as intact, though its bytes were
/// not the ones sealed, and a reader searching the text (grep, a SIEM's raw search) finds an
/// edited line no longer, e.g. a principal's id spelled `\u006dember`. `seal_body` writes
/// `{"chain":` + the link + `,` + the body without its `{`, so anything else is an edit.
fn sealed_body<'l>(
    line: &'l [u8],
    hash: &str,
    link: &Sealed<'_>,
) -> Result<std::borrow::Cow<'l, [u8]>, String> {
    let mut sealed = b"{\"chain\":".to_vec();
    // Strings and a number: serialising cannot fail.
    let _ = to_line_writer(
        &mut sealed,
        &Link {
            hash,
            id: link.id,
            instance: link.instance,
            prev: link.prev,
            seq: link.seq,
        },
    );
    let not_as_sealed = || {
        "the line is not written as hubgate writes a record (chain first, no spaces, as \
         sealed): it was modified"
            .to_string()
    };
    match line
        .strip_prefix(sealed.as_slice())
        .ok_or_else(not_as_sealed)?
    {
        b"}" => Ok(std::borrow::Cow::Borrowed(b"{}")),
        [b',', rest @ ..] => Ok(std::borrow::Cow::Owned([b"{".as_slice(), rest].concat())),
        _ => Err(not_as_sealed()),
    }
}

/// Writes JSON as serde_json does, except that U+0085, U+2028 and U+2029 are written as
/// `\u` escapes. JSON allows them raw in a string, but many NDJSON readers split lines at
/// them (Python's `str.splitlines`, Unicode-aware line readers): a note text holding one cut
/// a member's record in two halves that are not JSON, so such a reader dropped (or failed
/// on) exactly the record of the request that carried it, while `audit verify` said intact.
/// serde_json already escapes every other character such readers break lines at (below
/// U+0020). Every audit line is written through this.
pub fn to_line_writer<W: std::io::Write, T: serde::Serialize + ?Sized>(
    out: W,
    value: &T,
) -> serde_json::Result<()> {
    value.serialize(&mut serde_json::Serializer::with_formatter(out, LineSafe))
}

/// `to_line_writer` into a new vector.
pub fn to_line_vec<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    to_line_writer(&mut out, value)?;
    Ok(out)
}

/// serde_json's compact formatter, with the line separators escaped (see `to_line_writer`).
struct LineSafe;

impl serde_json::ser::Formatter for LineSafe {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let bytes = fragment.as_bytes();
        // Nearly every fragment is ASCII, which std checks a word at a time.
        if fragment.is_ascii() {
            return writer.write_all(bytes);
        }
        let mut start = 0;
        // A byte scan, not a walk over chars: every string of every record passes here. Their
        // UTF-8 encodings begin with 0xC2 or 0xE2, which most text has neither of.
        let mut at = 0;
        while let Some(found) = bytes[at..].iter().position(|b| matches!(b, 0xC2 | 0xE2)) {
            let i = at + found;
            let (escaped, len): (&[u8], usize) = match &bytes[i..] {
                [0xC2, 0x85, ..] => (b"\\u0085", 2),
                [0xE2, 0x80, 0xA8, ..] => (b"\\u2028", 3),
                [0xE2, 0x80, 0xA9, ..] => (b"\\u2029", 3),
                _ => {
                    at = i + 1;
                    continue;
                }
            };
            writer.write_all(&bytes[start..i])?;
            writer.write_all(escaped)?;
            start = i + len;
            at = start;
        }
        writer.write_all(&bytes[start..])
    }
}

/// What a record's hash covers besides its body: its link and the names of its chain.
struct Sealed<'a> {
    prev: &'a str,
    seq: u64,
    id: Option<&'a str>,
    instance: Option<&'a str>,
}

/// The hash of a record: HMAC-SHA-256 under `key`, or SHA-256 without one.
fn digest_under(key: Option<&[u8]>, link: &Sealed<'_>, body: &[u8]) -> String {
    let mut seq_text = itoa::Buffer::new();
    // prev \n seq [\n chain:<id>] [\n instance:<name>] \n body. Records without an id or an
    // instance (older logs) hash as they always did.
    let id = link.id.map(|i| [b"\nchain:".as_slice(), i.as_bytes()]);
    let instance = link
        .instance
        .map(|i| [b"\ninstance:".as_slice(), i.as_bytes()]);
    let parts = [
        link.prev.as_bytes(),
        b"\n",
        seq_text.format(link.seq).as_bytes(),
    ]
    .into_iter()
    .chain(id.into_iter().flatten())
    .chain(instance.into_iter().flatten())
    .chain([b"\n".as_slice(), body]);
    match key {
        Some(key) => {
            // HMAC accepts keys of any length, so this cannot fail.
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
            parts.for_each(|p| mac.update(p));
            hex::encode(mac.finalize().into_bytes())
        }
        None => {
            let mut h = Sha256::new();
            parts.for_each(|p| h.update(p));
            hex::encode(h.finalize())
        }
    }
}

/// The result of verifying a set of files.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Intact {
        records: u64,
        first_seq: u64,
        last_seq: u64,
        /// With several keys: `(seq, n)`, the record from which on key n (1: the first given)
        /// sealed the chain.
        key_changes: Vec<(u64, usize)>,
    },
    Broken {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    /// Lines that are not records (a write cut short: a crash, a full disk) around which the
    /// chain continues: the record after each links to the record before it, as a restart
    /// writes it. Each is reported; `then` is the verdict on every record, those after
    /// them included.
    Torn {
        tears: Vec<(PathBuf, usize, String)>,
        then: Box<Verdict>,
    },
}

/// Verifies files in order (oldest first). The first record read anchors the chain; if it is
/// not the log's first ever (seq 1), older files were rotated away, which is reported as such.
pub fn verify(chain: &Chain, files: &[PathBuf]) -> Result<Verdict, String> {
    let mut tears = Vec::new();
    let verdict = verify_around_tears(chain, files, &mut tears)?;
    Ok(if tears.is_empty() {
        verdict
    } else {
        Verdict::Torn {
            tears,
            then: Box::new(verdict),
        }
    })
}

/// `verify`, the torn lines it stepped over put in `tears`. A restart continues the chain from
/// the last complete record, on a line of its own: verification stopped at the torn line, so
/// one crash left every later record unchecked for good, and a record edited after it unseen.
fn verify_around_tears(
    chain: &Chain,
    files: &[PathBuf],
    tears: &mut Vec<(PathBuf, usize, String)>,
) -> Result<Verdict, String> {
    // Lines that are not records, held until the next record shows whether the chain
    // continues around them (tears) or through them (altered records: the break is there).
    let mut pending: Vec<(PathBuf, usize, String)> = Vec::new();
    let mut head: Option<Head> = None;
    let mut first_seq = 0;
    let mut records = 0;
    let mut key_at = 0;
    let mut key_changes = Vec::new();
    for file in files {
        let reader = std::io::BufReader::new(
            std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?,
        );
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| format!("{}: {e}", file.display()))?;
            let broken = |reason: String| Verdict::Broken {
                file: file.clone(),
                line: i + 1,
                reason,
            };
            // A write cut short can end inside a character.
            let Ok(text) = std::str::from_utf8(&line) else {
                pending.push((file.clone(), i + 1, "not UTF-8".into()));
                continue;
            };
            // A CRLF line end (a copy through Windows tools or a shipper) ends the line; only
            // what is before it was sealed.
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.trim().is_empty() {
                return Ok(broken("an empty line where a record should be".into()));
            }
            // A record's instance may differ from the one before it: a restarted pod has a
            // new name (and a log written before instances were recorded has none) yet
            // continues the chain of the file it appends to. What makes a record part of a
            // chain is its seq and prev, which `check` requires to follow the record before;
            // a record of another replica's chain cannot link, and its instance is sealed.
            let key_before = key_at;
            let next = match chain.check(text, head.as_ref(), &mut key_at) {
                Err(reason) if reason.starts_with(NOT_JSON) => {
                    pending.push((file.clone(), i + 1, reason));
                    continue;
                }
                Err(reason) => {
                    // Through a line that is not a record, the break is that line.
                    return Ok(match pending.into_iter().next() {
                        Some((file, line, reason)) => Verdict::Broken { file, line, reason },
                        None => broken(reason),
                    });
                }
                Ok((next, _instance)) => next,
            };
            if !pending.is_empty() {
                // Before the first record, nothing shows what such a line was.
                if head.is_none() {
                    let (file, line, reason) = pending.swap_remove(0);
                    return Ok(Verdict::Broken { file, line, reason });
                }
                tears.append(&mut pending);
            }
            if key_at != key_before {
                key_changes.push((next.seq, key_at + 1));
            }
            if head.is_none() {
                first_seq = next.seq;
            }
            records += 1;
            head = Some(next);
        }
    }
    // A last line that is not a record: nothing after it shows the chain went on around it.
    if let Some((file, line, reason)) = pending.into_iter().next() {
        return Ok(Verdict::Broken { file, line, reason });
    }
    Ok(Verdict::Intact {
        records,
        first_seq,
        last_seq: head.map_or(0, |h| h.seq),
        key_changes,
    })
}

/// A file's first record: which chain the file belongs to (its `chain.id`, else, in logs
/// begun before ids, the instance it names, None for older logs without one) and its link,
/// `(seq, prev)`. None for a file whose first record cannot be read (the chain it is verified
/// in then reports it).
fn first_record(file: &Path) -> Option<(ChainName, u64, String)> {
    let f = std::fs::File::open(file).ok()?;
    let mut first = Vec::new();
    std::io::BufReader::new(f)
        // As large as a record `head_of` finds: an import's record can pass 16 MiB (the bound
        // this had), and its file, its first record unread, was put apart from its chain, so an
        // honest log read as records deleted (BROKEN).
        .take(LARGEST_RECORD)
        .read_until(b'\n', &mut first)
        .ok()?;
    // The strict reader, as `check`: a record's keys are not serde_json's markers.
    let record: Value = crate::validate::parse_strict(&first).ok()?;
    let chain = record.get("chain")?;
    let instance = chain
        .get("instance")
        .and_then(Value::as_str)
        .map(str::to_string);
    let id = chain.get("id").and_then(Value::as_str).map(str::to_string);
    let seq = chain.get("seq")?.as_u64()?;
    let prev = chain.get("prev")?.as_str()?.to_string();
    Some((ChainName { id, instance }, seq, prev))
}

/// What tells a file's chain from other replicas' chains: the chain's id, or in a log begun
/// before ids, the instance its first record names.
#[derive(Default, PartialEq)]
struct ChainName {
    id: Option<String>,
    instance: Option<String>,
}

impl ChainName {
    fn same_chain(&self, other: &ChainName) -> bool {
        match (&self.id, &other.id) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.instance == other.instance,
            _ => false,
        }
    }
}

/// Verifies the files of several replicas: groups them by the instance their records name,
/// puts each replica's files in the order of their records, and verifies each chain.
/// A group whose first record continues another group's last one is the same chain under a
/// new name (a replica restarted with another host name, or a log begun before instances were
/// recorded) and is verified as part of it.
pub fn verify_chains(chain: &Chain, files: &[PathBuf]) -> Result<Vec<Checked>, String> {
    let mut groups: Vec<Group> = Vec::new();
    // A file named twice (`audit.ndjson*` beside `audit.ndjson`, or a link to it) is one file:
    // read twice, its records followed themselves and an honest log read as BROKEN.
    let mut seen = std::collections::HashSet::new();
    for file in files {
        // Each file is read more than once (its first record orders the files, its last joins
        // chains, then every record is checked). A pipe (`<(zcat audit.ndjson.1.gz)`,
        // `/dev/stdin`) gives its lines to the first read only: the check then read nothing
        // and said `intact: 0 records`, exit 0, whatever the pipe held, a tampered log too.
        let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "{}: not a regular file: verify reads each file more than once, which a pipe \
                 or a device cannot be; write it to a file first (e.g. zcat audit.ndjson.1.gz \
                 > audit.ndjson.1)",
                file.display()
            ));
        }
        if !seen.insert(std::fs::canonicalize(file).unwrap_or_else(|_| file.clone())) {
            continue;
        }
        let (name, link) = match first_record(file) {
            Some((name, seq, prev)) => (name, Some((seq, prev))),
            None => (ChainName::default(), None),
        };
        match groups.iter_mut().find(|g| g.name.same_chain(&name)) {
            Some(g) => g.files.push((file.clone(), link)),
            None => groups.push(Group {
                name,
                files: vec![(file.clone(), link)],
                last: None,
            }),
        }
    }
    // Each chain's files in the order of their first records' sequence numbers, whatever the
    // order given: the shell expands `audit.ndjson*` newest first, and an honest log given so
    // read as BROKEN. The order of the records is still checked link by link, within and
    // across files, so sorting hides no deletion or reordering; a file whose first record
    // cannot be read keeps its place before the others, where the chain reports it.
    for g in &mut groups {
        g.files
            .sort_by_key(|(_, link)| link.as_ref().map(|(seq, _)| *seq));
        g.last = g.files.last().and_then(|(f, _)| head_of(f));
    }
    // Join continued chains: a group's first link (seq, prev) that follows another group's
    // last record. Each join removes a group, so this ends.
    while let Some((i, j)) = continued(&groups) {
        let tail = groups.remove(j);
        let i = if i > j { i - 1 } else { i };
        groups[i].files.extend(tail.files);
        groups[i].last = tail.last;
        // A log begun before ids got one at a later start: the chain goes by it now (its
        // `audit_chain_seq` series is labelled with it).
        if tail.name.id.is_some() {
            groups[i].name.id = tail.name.id;
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let files: Vec<PathBuf> = g.files.into_iter().map(|(f, _)| f).collect();
            Ok(Checked {
                verdict: verify(chain, &files)?,
                instance: g.name.instance,
                id: g.name.id,
            })
        })
        .collect()
}

/// One chain's verdict, with the names it goes by.
#[derive(Debug)]
pub struct Checked {
    /// The instance its first record names (how the output names a replica's chain).
    pub instance: Option<String>,
    /// Its id (`chain.id`); None for a log begun before ids.
    pub id: Option<String>,
    pub verdict: Verdict,
}

#[cfg(test)]
fn verify_replicas(
    chain: &Chain,
    files: &[PathBuf],
) -> Result<Vec<(Option<String>, Verdict)>, String> {
    Ok(verify_chains(chain, files)?
        .into_iter()
        .map(|c| (c.instance, c.verdict))
        .collect())
}

/// One instance's files, each with its first record's link `(seq, prev)`, and the head of the
/// last one: what joining chains reads, read once per file.
struct Group {
    /// The chain's name in its first file (an output names the chain by its instance).
    name: ChainName,
    files: Vec<(PathBuf, Option<(u64, String)>)>,
    last: Option<Head>,
}

/// `(i, j)`: group j's first record follows group i's last one.
fn continued(groups: &[Group]) -> Option<(usize, usize)> {
    groups.iter().enumerate().find_map(|(j, g)| {
        let (seq, prev) = g.files.first().and_then(|(_, link)| link.as_ref())?;
        let i = groups.iter().enumerate().position(|(i, other)| {
            i != j
                && other
                    .last
                    .as_ref()
                    .is_some_and(|h| h.seq.checked_add(1) == Some(*seq) && h.hash == *prev)
        })?;
        Some((i, j))
    })
}

/// The head of an existing log file, so a restart continues its chain instead of starting a
/// new one. A torn last line (a crash mid-write) is left for `verify` to report; the chain
/// continues from the last complete record.
pub fn head_of(path: &Path) -> Option<Head> {
    use std::io::{Read, Seek, SeekFrom};
    // Only a regular file has a last record; a device such as /dev/full reads forever. Asked
    // before opening: opening a FIFO (a pipe to a log shipper) to read waits for a writer,
    // and its only writer is this hubgate, which then never started.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    // The last records are at the end. A window of the file's end is read, and widened while
    // it holds no complete record: a record larger than the window (an import's input can be
    // megabytes) would otherwise read as no record at all, and the chain restart at seq 1 in
    // the middle of the log. The widest window bounds what a file of garbage costs.
    const FIRST: u64 = 8 * 1024 * 1024;
    const WIDEST: u64 = LARGEST_RECORD;
    let mut window = FIRST;
    loop {
        let start = meta.len().saturating_sub(window);
        file.seek(SeekFrom::Start(start)).ok()?;
        let mut text = Vec::new();
        (&mut file).take(window).read_to_end(&mut text).ok()?;
        let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        if start > 0 {
            // The window's first line begins before it: not a complete line.
            lines.remove(0);
        }
        for line in lines.into_iter().rev() {
            // The strict reader, as `check`: with serde_json's Value, a last record holding a
            // caller's key spelled like its raw-value marker did not read, and the chain
            // resumed from the record before it, which `audit verify` then reported as a break.
            let Ok(record) = crate::validate::parse_strict(line) else {
                continue;
            };
            let chain = record.get("chain")?;
            return Some(Head {
                seq: chain.get("seq")?.as_u64()?,
                hash: chain.get("hash")?.as_str()?.to_string(),
                id: chain.get("id").and_then(Value::as_str).map(str::to_string),
            });
        }
        if start == 0 || window >= WIDEST {
            return None;
        }
        window = (window * 4).min(WIDEST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, lines: &[Vec<u8>]) -> PathBuf {
        let p = dir.join(name);
        let mut text = Vec::new();
        for l in lines {
            text.extend_from_slice(l);
            text.push(b'\n');
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    fn log(chain: &Chain, n: u64) -> Vec<Vec<u8>> {
        let mut head = Head::default();
        (0..n)
            .map(|i| {
                chain.seal(
                    json!({"decision_id": format!("d{i}"), "result": {"allow": i % 2 == 0}}),
                    &mut head,
                )
            })
            .collect()
    }

    /// Lines sealed by the code that wrote the logs already on disk: the bytes a chain hashes
    /// and writes are a format those logs depend on, so they may not change.
    #[test]
    fn sealed_lines_are_byte_for_byte_the_format_on_disk() {
        let cases = [
            (
                Chain::new(None),
                [
                    r#"{"chain":{"hash":"70e2a5289964eec5898ecb9bbfe9702d560a6d4bc5e7cfbdecc54bc7d19789a2","prev":"851c24980f33b3c46b1d192b22c80919371772e062bd8aa018eb7814d78f73fe","seq":2},"decision_id":"d1","x":"\u00e9"}"#,
                    r#"{"chain":{"hash":"b4b6df35d83bf4e76e6a19784c976049a3f78a48259b10ba2791fbdcde4f3429","prev":"70e2a5289964eec5898ecb9bbfe9702d560a6d4bc5e7cfbdecc54bc7d19789a2","seq":3}}"#,
                ],
            ),
            (
                Chain::new(Some(b"audit-key".to_vec())),
                [
                    r#"{"chain":{"hash":"3ff1738dc8f72eab52747f46c1dc27e9096fa515b74e2eeef687bcf104b6e2e2","prev":"d10ffaacdf4d5de0476fa24b1632f935e460ca1360c368d7fc23c65811aae3be","seq":2},"decision_id":"d1","x":"\u00e9"}"#,
                    r#"{"chain":{"hash":"785163262041ee36481cd51c1b117a13131dacb489d8c33a70f30863c5727f36","prev":"3ff1738dc8f72eab52747f46c1dc27e9096fa515b74e2eeef687bcf104b6e2e2","seq":3}}"#,
                ],
            ),
            (
                Chain::new(None).with_instance(Some("replica-1".into())),
                [
                    r#"{"chain":{"hash":"1ac1146b4178a134bab0fa0358bbdf2df8d13d2fdea228947fdeaaffc159510d","instance":"replica-1","prev":"c8bcbd588bcafe7d0b0480ffcc69a67d014d814cde3f0e47ec5a2367adedf142","seq":2},"decision_id":"d1","x":"\u00e9"}"#,
                    r#"{"chain":{"hash":"3edde18ac2eb81c1e759e154c4042fd13a62dcb4ea931b4676eb8eb4b21a18f7","instance":"replica-1","prev":"1ac1146b4178a134bab0fa0358bbdf2df8d13d2fdea228947fdeaaffc159510d","seq":3}}"#,
                ],
            ),
            (
                Chain::new(Some(b"audit-key".to_vec())).with_instance(Some("replica-1".into())),
                [
                    r#"{"chain":{"hash":"47573609a34c24fa14842cd7fbe6f6c49b5b19f693e9e87509ea4be6896ffade","instance":"replica-1","prev":"eb0bed1e2a5d053a93d0028a3978b6fc7b3bd246a26abcb58177776760c5388e","seq":2},"decision_id":"d1","x":"\u00e9"}"#,
                    r#"{"chain":{"hash":"e61893f9741b3dd8dbd398995117a0c8fbcaf586c4569d8f72dd65986a0a0a97","instance":"replica-1","prev":"47573609a34c24fa14842cd7fbe6f6c49b5b19f693e9e87509ea4be6896ffade","seq":3}}"#,
                ],
            ),
        ];
        for (chain, expected) in cases {
            let mut head = Head::default();
            chain.seal_body(br#"{"decision_id":"d0"}"#.to_vec(), &mut head);
            let bodies: [&[u8]; 2] = [br#"{"decision_id":"d1","x":"\u00e9"}"#, b"{}"];
            for (body, expected) in bodies.into_iter().zip(expected) {
                let line = chain.seal_body(body.to_vec(), &mut head);
                assert_eq!(String::from_utf8(line).unwrap(), expected);
            }
        }
    }

    /// Keys a caller chose are ordinary keys to the verifier, serde_json's raw-value marker
    /// included; a record with a repeated key (never written) does not verify.
    /// One sealed record per key, each with `{key: text}` as its update's UserDefinedFields.
    fn with_keys(chain: &Chain, head: &mut Head, keys: &[&str], text: &str) -> Vec<Vec<u8>> {
        keys.iter()
            .map(|k| chain.seal(json!({"update": {"user_defined_fields": {*k: text}}}), head))
            .collect()
    }

    #[test]
    fn a_record_with_serde_json_marker_keys_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(None);
        let mut head = Head::default();
        let lines = with_keys(
            &chain,
            &mut head,
            &[
                "$serde_json::private::RawValue",
                "$serde_json::private::Number",
            ],
            "{\"x\": 1}",
        );
        let file = write(dir.path(), "a", &lines);
        assert!(
            matches!(
                verify(&chain, &[file]).unwrap(),
                Verdict::Intact { records: 2, .. }
            ),
            "{:?}",
            String::from_utf8_lossy(&lines[0])
        );
        let mut doubled = lines[0].clone();
        doubled.truncate(doubled.len() - 1);
        doubled.extend_from_slice(br#","update":{}}"#);
        let file = write(dir.path(), "b", &[doubled]);
        assert!(matches!(
            verify(&chain, &[file]).unwrap(),
            Verdict::Broken { reason, .. } if reason.contains("written twice")
        ));
    }

    /// A key changed at a restart: the chain continues under the new key, which verifies
    /// with both keys in order; the old key cannot seal a record after the new one.
    #[test]
    fn a_chain_continued_under_a_new_key_verifies_with_both_keys_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (b"old".to_vec(), b"new".to_vec());
        let mut head = Head::default();
        let mut lines: Vec<Vec<u8>> = (0..2)
            .map(|i| Chain::new(Some(old.clone())).seal(json!({"i": i}), &mut head))
            .collect();
        lines
            .extend((2..4).map(|i| Chain::new(Some(new.clone())).seal(json!({"i": i}), &mut head)));
        let file = write(dir.path(), "a", &lines);
        let both = Chain::new(Some(old.clone())).then_keys(vec![new.clone()]);
        assert_eq!(
            verify(&both, std::slice::from_ref(&file)).unwrap(),
            Verdict::Intact {
                records: 4,
                first_seq: 1,
                last_seq: 4,
                key_changes: vec![(3, 2)],
            }
        );
        for alone in [old.clone(), new.clone()] {
            assert!(matches!(
                verify(&Chain::new(Some(alone)), std::slice::from_ref(&file)).unwrap(),
                Verdict::Broken { .. }
            ));
        }
        lines.push(Chain::new(Some(old.clone())).seal(json!({"i": 4}), &mut head));
        let file = write(dir.path(), "b", &lines);
        assert!(matches!(
            verify(&both, &[file]).unwrap(),
            Verdict::Broken { line: 5, reason, .. } if reason.contains("under key 2 or a later one")
        ));
    }

    /// The hash covers the bytes written: an edit that a JSON parser reads as the same record
    /// (spaces, member order, a `\u` escape, a number respelled) is still an edit; a CRLF line
    /// end is a line end.
    #[test]
    fn a_line_respelled_but_equal_as_json_is_a_modification() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(Some(b"k".to_vec()));
        let mut head = Head::default();
        let line =
            String::from_utf8(chain.seal(json!({"a": -0.0, "id": "member", "z": true}), &mut head))
                .unwrap();
        for (name, ok) in [("ok", line.clone()), ("crlf", format!("{line}\r"))] {
            let file = write(dir.path(), name, &[ok.into_bytes()]);
            assert!(matches!(
                verify(&chain, &[file]).unwrap(),
                Verdict::Intact { records: 1, .. }
            ));
        }
        let edits = [
            line.replace("\"z\":", "\"z\": "),
            line.replace("\"member\"", "\"\\u006dember\""),
            line.replace("-0.0", "-0.00"),
            line.replace(
                ",\"a\":-0.0,\"id\":\"member\"",
                ",\"id\":\"member\",\"a\":-0.0",
            ),
            line.replace("{\"chain\":", "{ \"chain\":"),
            format!("{line} "),
            format!("{line}\r\r"),
        ];
        for (i, edited) in edits.into_iter().enumerate() {
            assert_ne!(edited, line);
            let file = write(dir.path(), &format!("e{i}"), &[edited.clone().into_bytes()]);
            assert!(
                matches!(
                    verify(&chain, &[file]).unwrap(),
                    Verdict::Broken { line: 1, ref reason, .. } if reason.contains("modified")
                ),
                "{edited}"
            );
        }
    }

    /// No character a line-splitting reader breaks lines at is written raw, and the escaped
    /// line verifies; a line written raw (as before) verifies too, its bytes being the sealed
    /// ones.
    #[test]
    fn line_separators_are_escaped_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(None);
        let mut head = Head::default();
        let text = "a\u{2028}b\u{2029}c\u{85}d\u{2027}é\u{1F600}\u{a0}";
        let line = chain.seal(json!({"note": text, text: 1}), &mut head);
        let as_text = String::from_utf8(line.clone()).unwrap();
        assert_eq!(as_text.lines().count(), 1);
        assert_eq!(
            as_text.split(['\u{85}', '\u{2028}', '\u{2029}']).count(),
            1,
            "{as_text}"
        );
        // Only those three: any other character is written as serde_json writes it.
        assert!(as_text.contains(r"a\u2028b\u2029c\u0085d"), "{as_text}");
        assert!(as_text.contains("d\u{2027}é\u{1F600}\u{a0}"), "{as_text}");
        let back: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(back["note"], text);
        let raw = Chain::new(None).seal_body(
            serde_json::to_vec(&json!({"note": text})).unwrap(),
            &mut Head::default(),
        );
        for (name, l) in [("escaped", line), ("raw", raw)] {
            let file = write(dir.path(), name, &[l]);
            assert!(matches!(
                verify(&chain, &[file]).unwrap(),
                Verdict::Intact { records: 1, .. }
            ));
        }
    }

    /// Chains are told apart by id, not by the instance a file's first record names: a file of
    /// one chain left out between two files that begin under other instances (a pod renamed
    /// at each restart) is a gap, while another replica's chain is verified on its own.
    #[test]
    fn a_file_left_out_between_restarts_under_new_names_is_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let id = new_chain_id();
        assert!(id.as_deref().is_some_and(is_chain_id));
        let mut head = Head {
            id,
            ..Head::default()
        };
        let files: Vec<PathBuf> = ["pod-a", "pod-b", "pod-c"]
            .into_iter()
            .map(|pod| {
                let chain = Chain::new(None).with_instance(Some(pod.into()));
                let lines = [0, 1].map(|i| chain.seal(json!({ "i": i }), &mut head));
                write(dir.path(), pod, &lines)
            })
            .collect();
        let mut other = Head {
            id: new_chain_id(),
            ..Head::default()
        };
        let replica = Chain::new(None).with_instance(Some("replica-2".into()));
        let lines = [0, 1].map(|i| replica.seal(json!({ "i": i }), &mut other));
        let replica_file = write(dir.path(), "replica-2", &lines);
        let mut all = files.clone();
        all.push(replica_file.clone());
        let verdicts = verify_replicas(&Chain::new(None), &all).unwrap();
        assert_eq!(verdicts.len(), 2);
        assert!(verdicts
            .iter()
            .all(|(_, v)| matches!(v, Verdict::Intact { first_seq: 1, .. })));
        let gap = [files[0].clone(), files[2].clone(), replica_file];
        let verdicts = verify_replicas(&Chain::new(None), &gap).unwrap();
        assert!(
            verdicts.iter().any(|(_, v)| matches!(
                v,
                Verdict::Broken { reason, .. } if reason.contains("sequence number 5 follows 2")
            )),
            "{verdicts:?}"
        );
    }

    /// A pipe is refused, not read as an empty log: its lines went to the first read.
    #[test]
    fn a_file_that_is_not_regular_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "a", &log(&Chain::new(None), 2));
        for other in [Path::new("/dev/null"), dir.path()] {
            let files = [file.clone(), other.to_path_buf()];
            let err = verify_replicas(&Chain::new(None), &files).unwrap_err();
            assert!(err.contains("not a regular file"), "{err}");
        }
        assert!(verify_replicas(&Chain::new(None), &[file]).is_ok());
    }

    /// Only the record without `chain` is hashed: a member added to `chain` would be covered
    /// by nothing, so a chain with any member hubgate does not write is a modification.
    #[test]
    fn a_member_added_to_chain_is_a_modification() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(Some(b"k".to_vec()));
        let lines = log(&chain, 2);
        let mut edited: Value = serde_json::from_slice(&lines[0]).unwrap();
        edited["chain"]["approved"] = json!(true);
        let file = write(
            dir.path(),
            "a",
            &[serde_json::to_vec(&edited).unwrap(), lines[1].clone()],
        );
        assert!(matches!(
            verify(&chain, &[file]).unwrap(),
            Verdict::Broken { line: 1, reason, .. } if reason.contains("\"approved\"")
        ));
        let file = write(dir.path(), "b", &lines);
        assert!(matches!(
            verify(&chain, &[file]).unwrap(),
            Verdict::Intact { records: 2, .. }
        ));
    }

    /// A record torn by a crash (cut inside a character, too) and the chain continued around
    /// it, as a restart writes it: each tear is reported and every record after it checked.
    /// A line that is not a record which the chain runs through, or which ends the log, is
    /// the break, as before.
    #[test]
    fn a_tear_the_chain_continues_around_is_reported_and_the_rest_checked() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(None);
        let mut head = Head::default();
        let sealed = |i: u64, head: &mut Head| {
            chain.seal(
                json!({"decision_id": format!("d{i}"), "x": "\u{e9}t\u{e9}"}),
                head,
            )
        };
        let (r1, r2) = (sealed(1, &mut head), sealed(2, &mut head));
        let before_tear = head.clone();
        let torn = sealed(3, &mut head);
        let cut_in_a_character = {
            let at = torn.iter().position(|b| *b >= 0x80).unwrap() + 1;
            torn[..at].to_vec()
        };
        let mut head = before_tear;
        let (r3, r4) = (sealed(3, &mut head), sealed(4, &mut head));
        let half = torn[..torn.len() / 2].to_vec();
        let lines = [
            r1.clone(),
            r2.clone(),
            half.clone(),
            cut_in_a_character,
            r3.clone(),
            r4,
        ];
        let file = write(dir.path(), "torn", &lines);
        match verify(&chain, std::slice::from_ref(&file)).unwrap() {
            Verdict::Torn { tears, then } => {
                let at: Vec<usize> = tears.iter().map(|t| t.1).collect();
                assert_eq!(at, vec![3, 4]);
                assert_eq!(
                    *then,
                    Verdict::Intact {
                        records: 4,
                        first_seq: 1,
                        last_seq: 4,
                        key_changes: vec![],
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // a record after the tear edited: found
        let mut edited = lines.to_vec();
        edited[5] = String::from_utf8(edited[5].clone())
            .unwrap()
            .replace("d4", "d5")
            .into_bytes();
        let file = write(dir.path(), "edited", &edited);
        assert!(matches!(
            verify(&chain, &[file]).unwrap(),
            Verdict::Torn { then, .. } if matches!(*then, Verdict::Broken { line: 6, .. })
        ));
        // a record altered into a line that is not one, the next linking to it: the break is
        // that line
        let r2_cut = r2[..r2.len() - 3].to_vec();
        let through = write(dir.path(), "through", &[r1.clone(), r2_cut, torn.clone()]);
        assert!(matches!(
            verify(&chain, &[through]).unwrap(),
            Verdict::Broken { line: 2, .. }
        ));
        // a tear as the last line, and a tear before the first record
        for (name, lines, line) in [
            ("last", vec![r1.clone(), r2.clone(), half.clone()], 3),
            ("first", vec![half, r3], 1),
        ] {
            let file = write(dir.path(), name, &lines);
            assert!(
                matches!(
                    verify(&chain, &[file]).unwrap(),
                    Verdict::Broken { line: l, .. } if l == line
                ),
                "{name}"
            );
        }
    }

    /// An edited log that ends at the largest sequence number: the writer seals the next
    /// record (wrapping to 0) without panicking, and verify reports the break.
    #[test]
    fn a_sequence_at_its_limit_is_a_break_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(None);
        let mut head = Head {
            seq: u64::MAX - 1,
            ..Head::default()
        };
        let lines = vec![
            chain.seal(json!({"decision_id": "a"}), &mut head),
            chain.seal(json!({"decision_id": "b"}), &mut head),
        ];
        assert_eq!(head.seq, 0);
        let file = write(dir.path(), "a", &lines);
        assert!(matches!(
            verify(&chain, &[file]).unwrap(),
            Verdict::Broken { line: 2, reason, .. } if reason.contains("records were deleted or reordered")
        ));
    }

    #[test]
    fn an_untouched_log_verifies_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(None);
        let lines = log(&chain, 6);
        let a = write(dir.path(), "a", &lines[..3]);
        let b = write(dir.path(), "b", &lines[3..]);
        assert_eq!(
            verify(&chain, &[a.clone(), b.clone()]).unwrap(),
            Verdict::Intact {
                records: 6,
                first_seq: 1,
                last_seq: 6,
                key_changes: vec![],
            }
        );
        // the newer file alone verifies as a chain that starts mid-way
        assert_eq!(
            verify(&chain, &[b]).unwrap(),
            Verdict::Intact {
                records: 3,
                first_seq: 4,
                last_seq: 6,
                key_changes: vec![],
            }
        );
    }

    #[test]
    fn replicas_are_verified_chain_by_chain_and_the_instance_is_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let a = Chain::new(None).with_instance(Some("hubgate-a".into()));
        let b = Chain::new(None).with_instance(Some("hubgate-b".into()));
        let la = log(&a, 4);
        let lb = log(&b, 4);
        let a1 = write(dir.path(), "a.1", &la[..2]);
        let a0 = write(dir.path(), "a", &la[2..]);
        let b0 = write(dir.path(), "b", &lb);
        // files interleaved on the command line still form two chains
        let verdicts =
            verify_replicas(&Chain::new(None), &[a1.clone(), b0.clone(), a0.clone()]).unwrap();
        let intact = |n| Verdict::Intact {
            records: n,
            first_seq: 1,
            last_seq: n,
            key_changes: vec![],
        };
        assert_eq!(
            verdicts,
            vec![
                (Some("hubgate-a".to_string()), intact(4)),
                (Some("hubgate-b".to_string()), intact(4)),
            ]
        );
        // a record deleted from one replica's file breaks that chain only
        let b_cut = write(
            dir.path(),
            "b-cut",
            &[lb[0].clone(), lb[2].clone(), lb[3].clone()],
        );
        let verdicts = verify_replicas(&Chain::new(None), &[a1, a0, b_cut]).unwrap();
        assert_eq!(verdicts[0].1, intact(4));
        let (line, reason) = broken_at(verdicts.into_iter().nth(1).unwrap().1);
        assert_eq!(line, 2);
        assert!(reason.contains("deleted"), "{reason}");
        // renaming the instance is a modification
        let renamed = String::from_utf8(la[0].clone())
            .unwrap()
            .replace("hubgate-a", "hubgate-x");
        let f = write(dir.path(), "renamed", &[renamed.into_bytes()]);
        let (_, reason) = broken_at(verify(&Chain::new(None), &[f]).unwrap());
        assert!(reason.contains("modified"), "{reason}");
        // and a record of another replica inside a chain is found
        let mixed = write(dir.path(), "mixed", &[la[0].clone(), lb[1].clone()]);
        let (line, _) = broken_at(verify(&Chain::new(None), &[mixed]).unwrap());
        assert_eq!(line, 2);
    }

    /// Files given newest first (as a shell expands `audit.ndjson*`) are checked oldest first;
    /// a record deleted between them is still found.
    #[test]
    fn files_are_checked_in_the_order_of_their_records_whatever_the_order_given() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(None);
        let lines = log(&chain, 6);
        let oldest = write(dir.path(), "a.2", &lines[..2]);
        let older = write(dir.path(), "a.1", &lines[2..4]);
        let newest = write(dir.path(), "a", &lines[4..]);
        let given = [newest.clone(), older.clone(), oldest.clone()];
        assert_eq!(
            verify_replicas(&chain, &given).unwrap(),
            vec![(
                None,
                Verdict::Intact {
                    records: 6,
                    first_seq: 1,
                    last_seq: 6,
                    key_changes: vec![],
                }
            )]
        );
        let gap = write(dir.path(), "gap", &lines[3..4]);
        let verdicts = verify_replicas(&chain, &[newest, gap, oldest]).unwrap();
        assert!(
            matches!(&verdicts[..], [(None, Verdict::Broken { .. })]),
            "{verdicts:?}"
        );
    }

    #[test]
    fn a_chain_continued_under_another_instance_name_verifies() {
        let dir = tempfile::tempdir().unwrap();
        // a log begun before instances were recorded, continued by a replica named "pod-1",
        // restarted as "pod-2" (a new pod name), which rotated into a file of its own
        let mut head = Head::default();
        let mut lines = Vec::new();
        for (i, name) in [
            None,
            None,
            Some("pod-1"),
            Some("pod-1"),
            Some("pod-2"),
            Some("pod-2"),
        ]
        .into_iter()
        .enumerate()
        {
            let chain = Chain::new(Some(b"k".to_vec())).with_instance(name.map(String::from));
            lines.push(chain.seal(json!({"decision_id": format!("d{i}")}), &mut head));
        }
        let old = write(dir.path(), "a.1", &lines[..5]);
        let new = write(dir.path(), "a", &lines[5..]);
        let keyed = Chain::new(Some(b"k".to_vec()));
        let verdicts = verify_replicas(&keyed, &[old.clone(), new.clone()]).unwrap();
        assert_eq!(
            verdicts,
            vec![(
                None,
                Verdict::Intact {
                    records: 6,
                    first_seq: 1,
                    last_seq: 6,
                    key_changes: vec![],
                }
            )]
        );
        // leaving out the older file still reads as a chain that starts mid-way, and a record
        // deleted at the rename is found
        let cut = write(dir.path(), "cut", &[lines[3].clone(), lines[5].clone()]);
        let (line, _) = broken_at(verify(&keyed, &[cut]).unwrap());
        assert_eq!(line, 2);
    }

    fn broken_at(v: Verdict) -> (usize, String) {
        match v {
            Verdict::Broken { line, reason, .. } => (line, reason),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn each_kind_of_tampering_is_found_at_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(None);
        let lines = log(&chain, 5);

        let mut modified = lines.clone();
        modified[2] = String::from_utf8(modified[2].clone())
            .unwrap()
            .replace("\"allow\":true", "\"allow\":false")
            .into_bytes();
        let (line, reason) =
            broken_at(verify(&chain, &[write(dir.path(), "m", &modified)]).unwrap());
        assert_eq!(line, 3);
        assert!(reason.contains("modified"), "{reason}");

        let mut deleted = lines.clone();
        deleted.remove(1);
        let (line, reason) =
            broken_at(verify(&chain, &[write(dir.path(), "d", &deleted)]).unwrap());
        assert_eq!(line, 2);
        assert!(reason.contains("deleted or reordered"), "{reason}");

        let mut reordered = lines.clone();
        reordered.swap(3, 4);
        let (line, _) = broken_at(verify(&chain, &[write(dir.path(), "r", &reordered)]).unwrap());
        assert_eq!(line, 4);

        let mut truncated = lines.clone();
        let last = truncated.last_mut().unwrap();
        last.truncate(last.len() / 2);
        let (line, reason) =
            broken_at(verify(&chain, &[write(dir.path(), "t", &truncated)]).unwrap());
        assert_eq!(line, 5);
        assert!(reason.contains("truncated"), "{reason}");
    }

    #[test]
    fn a_keyed_chain_needs_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let keyed = Chain::new(Some(b"k".to_vec()));
        let file = write(dir.path(), "k", &log(&keyed, 3));
        assert!(matches!(
            verify(&keyed, std::slice::from_ref(&file)).unwrap(),
            Verdict::Intact { .. }
        ));
        // without the key (or with another) the same log does not verify: a forger who
        // rewrites the file cannot recompute the hashes
        assert!(matches!(
            verify(&Chain::new(None), std::slice::from_ref(&file)).unwrap(),
            Verdict::Broken { .. }
        ));
        assert!(matches!(
            verify(&Chain::new(Some(b"x".to_vec())), &[file]).unwrap(),
            Verdict::Broken { .. }
        ));
    }

    #[test]
    fn the_head_is_found_behind_a_last_record_larger_than_the_first_window() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(None);
        let mut head = Head::default();
        let small = chain.seal(json!({"decision_id": "d0"}), &mut head);
        let big = chain.seal(
            json!({"decision_id": "d1", "input": "x".repeat(9 * 1024 * 1024)}),
            &mut head,
        );
        let file = write(dir.path(), "big", &[small, big]);
        let found = head_of(&file).unwrap();
        assert_eq!(found, head);
        assert_eq!(found.seq, 2);
    }

    #[test]
    fn devices_have_no_head() {
        assert_eq!(head_of(Path::new("/dev/zero")), None);
    }

    /// The head is the last record's, whatever keys a caller put in it: one spelled like
    /// serde_json's raw-value marker (its text not JSON) made the record before it the head.
    #[test]
    fn the_head_is_the_last_record_whatever_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(None);
        let mut head = Head::default();
        let lines = with_keys(
            &chain,
            &mut head,
            &["a", "$serde_json::private::RawValue"],
            "not json",
        );
        let file = write(dir.path(), "m", &lines);
        let found = head_of(&file).unwrap();
        assert_eq!((found.seq, &found.hash), (head.seq, &head.hash));
        assert_eq!(found.seq, 2);
    }

    #[test]
    fn the_head_survives_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(None);
        let mut lines = log(&chain, 3);
        let expected: Value = serde_json::from_slice(&lines[2]).unwrap();
        lines.push(b"{\"decision_id\":\"torn".to_vec());
        let file = write(dir.path(), "h", &lines);
        let head = head_of(&file).unwrap();
        assert_eq!(head.seq, 3);
        assert_eq!(head.hash, expected["chain"]["hash"].as_str().unwrap());
    }
}
