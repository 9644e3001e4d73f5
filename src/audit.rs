//! Audit: one decision record per request, written as NDJSON by a dedicated writer thread.
//! A forwarded request first reserves room for its record, so nothing is forwarded unrecorded.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::{AuditConfig, AuditSink};

/// Records waiting for the writer; past this, requests wait (back-pressure, never drops).
const QUEUE_CAPACITY: usize = 4096;
/// How long a request waits for room in the queue before it is refused with 503.
pub const ENQUEUE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log cannot be opened: {0}")]
    Open(String),
    #[error("the audit sink is not accepting records: {0}")]
    Unavailable(String),
}

/// A reserved place in the queue: sending through it cannot fail or wait.
pub struct Slot(mpsc::OwnedPermit<Value>);

impl Slot {
    pub fn write(self, record: Value) {
        self.0.send(record);
    }
}

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Value>,
    healthy: Arc<AtomicBool>,
}

/// Joins the writer thread once every sender is gone, flushing what is queued.
pub struct AuditWriter(std::thread::JoinHandle<()>);

impl AuditWriter {
    pub fn finish(self) {
        let _ = self.0.join();
    }
}

fn open(config: &AuditConfig) -> Result<Box<dyn Write + Send>, AuditError> {
    match config.sink {
        AuditSink::Stdout => Ok(Box::new(std::io::stdout())),
        AuditSink::File => {
            if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| AuditError::Open(format!("{}: {e}", parent.display())))?;
            }
            let file = open_append(&config.path)?;
            Ok(Box::new(file))
        }
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, AuditError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| AuditError::Open(format!("{}: {e}", path.display())))
}

impl AuditLog {
    pub fn start(config: &AuditConfig) -> Result<(AuditLog, AuditWriter), AuditError> {
        let mut out = std::io::BufWriter::new(open(config)?);
        let (tx, mut rx) = mpsc::channel::<Value>(QUEUE_CAPACITY);
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        let handle = std::thread::Builder::new()
            .name("hubgate-audit".into())
            .spawn(move || {
                while let Some(record) = rx.blocking_recv() {
                    let mut result = serde_json::to_writer(&mut out, &record)
                        .map_err(std::io::Error::other)
                        .and_then(|_| out.write_all(b"\n"));
                    // Flush whenever the queue is empty: batches under load, prompt when idle.
                    if result.is_ok() && rx.is_empty() {
                        result = out.flush();
                    }
                    if let Err(e) = result {
                        tracing::error!(error = %e, "audit sink failed; refusing requests until restarted");
                        flag.store(false, Ordering::SeqCst);
                        rx.close();
                    }
                }
                let _ = out.flush();
            })
            .map_err(|e| AuditError::Open(e.to_string()))?;
        Ok((AuditLog { tx, healthy }, AuditWriter(handle)))
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst) && !self.tx.is_closed()
    }

    /// Reserves room for one record, waiting at most `ENQUEUE_WAIT`.
    pub async fn reserve(&self) -> Result<Slot, AuditError> {
        match tokio::time::timeout(ENQUEUE_WAIT, self.tx.clone().reserve_owned()).await {
            Ok(Ok(permit)) => Ok(Slot(permit)),
            Ok(Err(_)) => Err(AuditError::Unavailable("the writer has stopped".into())),
            Err(_) => Err(AuditError::Unavailable(format!(
                "the queue stayed full for {} ms",
                ENQUEUE_WAIT.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn records_reach_the_file_in_order_and_are_flushed_on_finish() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            sink: AuditSink::File,
            path: dir.path().join("sub/audit.ndjson"),
            format: crate::config::AuditFormat::Hubgate,
        };
        let (log, writer) = AuditLog::start(&config).unwrap();
        for i in 0..100 {
            log.reserve().await.unwrap().write(json!({"n": i}));
        }
        drop(log);
        writer.finish();
        let text = std::fs::read_to_string(&config.path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[99]["n"], 99);

        // a restart appends instead of truncating
        let (log, writer) = AuditLog::start(&config).unwrap();
        log.reserve().await.unwrap().write(json!({"n": "again"}));
        drop(log);
        writer.finish();
        assert_eq!(
            std::fs::read_to_string(&config.path)
                .unwrap()
                .lines()
                .count(),
            101
        );
    }
}
