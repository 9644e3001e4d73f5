//! Metrics: Prometheus counters and histograms of requests, decisions, policy and upstream
//! latency, enrichment, the audit queue and policy reloads, served on the admin listener.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `decision` label of `hubgate_requests_total`: every value the proxy emits, and the
/// list README's metrics table documents (a test keeps the two equal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionLabel {
    Allow,
    Deny,
    /// Denied, and forwarded because of dry-run.
    DryRunDeny,
    /// Denied in part; the allowed findings were forwarded.
    Partial,
    /// Refused before a policy decision.
    Rejected,
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 5] = [
        DecisionLabel::Allow,
        DecisionLabel::Deny,
        DecisionLabel::DryRunDeny,
        DecisionLabel::Partial,
        DecisionLabel::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionLabel::Allow => "allow",
            DecisionLabel::Deny => "deny",
            DecisionLabel::DryRunDeny => "dry_run_deny",
            DecisionLabel::Partial => "partial",
            DecisionLabel::Rejected => "rejected",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: String,
    /// `DecisionLabel::as_str`
    pub decision: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Which loaded certificate: `serving` or `client_ca`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub certificate: &'static str,
}

/// What ended or refused a connection on the proxy listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub revision: String,
}

/// An audit chain, by its id (`chain.id` in its records; empty for a chain begun before ids).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChainLabels {
    pub chain: String,
}

/// What the audit writer thread reports; clones share the same series.
#[derive(Clone)]
pub struct AuditMetrics {
    pub records: Counter,
    pub errors: Counter,
    pub write_seconds: Histogram,
    pub unconfirmed: Counter,
    /// The last record in the sink, by chain: kept outside the log (a scrape), it shows
    /// records cut from the log's end, which the chain cannot show by itself.
    pub chain_seq: Family<ChainLabels, Gauge>,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        AuditMetrics {
            records: Counter::default(),
            errors: Counter::default(),
            write_seconds: Histogram::new(exponential_buckets(0.000_002, 3.0, 14)),
            unconfirmed: Counter::default(),
            chain_seq: Family::default(),
        }
    }
}

impl AuditMetrics {
    /// The last record the sink holds is record `seq` of the chain `id`.
    pub fn in_sink(&self, id: Option<&str>, seq: u64) {
        let chain = id.unwrap_or_default().to_string();
        self.chain_seq
            .get_or_create(&ChainLabels { chain })
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Histogram,
    pub policy_seconds: Histogram,
    pub upstream_seconds: Histogram,
    pub enrichment_hits: Counter,
    pub enrichment_misses: Counter,
    pub audit_queue_depth: Gauge,
    pub audit: AuditMetrics,
    pub policy_revision: Family<RevisionLabels, Gauge>,
    pub tls_handshake_failures: Family<ReasonLabels, Counter>,
    /// Unix time the loaded certificates expire, by `certificate` (serving, client_ca).
    pub tls_not_after: Family<CertificateLabels, Gauge<i64, AtomicI64>>,
    pub connection_errors: Family<KindLabels, Counter>,
    pub connections_refused: Family<KindLabels, Counter>,
    pub connections_open: Gauge,
    pub requests_in_flight: Gauge,
    /// Threads that run requests (`server.worker_threads`, or one per CPU).
    pub runtime_workers: Gauge,
    /// Time requests waited for hubgate's own pacing of the account quota, waits that ran out
    /// included.
    pub quota_wait_seconds: Histogram,
    /// Requests answered 429 because hubgate's own pacing had no room for them within
    /// `quota.max_wait_ms`, by the operation whose quota ran out.
    pub quota_exhausted: Family<OperationLabels, Counter>,
    /// The share of its full rate an operation is paced at, for the operations Security Hub
    /// has throttled since start (1 once recovered).
    pub quota_pace: Family<OperationLabels, Gauge<f64, AtomicU64>>,
    /// Decisions voided because the findings they read changed before the forward, by what
    /// followed: `replayed`, `reread` or `refused`.
    pub decisions_voided: Family<KindLabels, Counter>,
    /// The enrichment cache's size, and upstream throttles by operation.
    pub enrich: EnrichMetrics,
    /// Replicas sharing quota and cache through Redis, and the fallback when it is away.
    pub coordination: CoordinationMetrics,
    pub reload_success_time: Gauge<i64, AtomicI64>,
    pub reload_failure_time: Gauge<i64, AtomicI64>,
    /// 1 while the configuration file on disk has settings other than those in force.
    pub config_restart_needed: Gauge<i64, AtomicI64>,
    current_revision: Mutex<String>,
}

/// What enrichment reports to /metrics.
#[derive(Clone, Default)]
pub struct EnrichMetrics {
    pub entries: Gauge,
    pub bytes: Gauge,
    /// Findings with a write hubgate forwarded within enrichment.settle_ms.
    pub settling: Gauge,
    /// Seconds left during which a write that may have changed any finding leaves every
    /// finding's state unknown.
    pub settling_all: Gauge,
    /// Writes sent to Security Hub whose answers are not applied yet.
    pub writes_in_flight: Gauge,
    /// Lookups whose states had hubgate's recent writes laid over them.
    pub settle_overlaid: Counter,
    /// Lookups refused because a recent write left a finding's state unknown.
    pub settle_refused: Counter,
    /// Upstream throttles by operation (shared with the forwarding path).
    pub throttled: Family<OperationLabels, Counter>,
    /// GetFindings calls made, each once however many requests shared it (the sum of the
    /// requests' `counter_lookup_calls` counts a shared call once per request).
    pub lookups: Counter,
    /// Entries in the lookup queue (a finding queued for two callers counts twice).
    pub queued: Gauge,
    /// Callers (principals) with findings in the lookup queue.
    pub queued_callers: Gauge,
}

/// Redis operations, by what they were for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

/// What coordination reports to /metrics; clones share the same series.
#[derive(Clone, Default)]
pub struct CoordinationMetrics {
    /// 1 while this replica shares quota and cache through Redis, 0 while it is on its own.
    pub up: Gauge,
    /// Times this replica fell back to local pacing and its local cache.
    pub fallbacks: Counter,
    /// Redis calls that failed or timed out, by what they were for.
    pub errors: Family<OpLabels, Counter>,
    /// Findings answered from the shared cache (state looked up or written by any replica).
    pub shared_hits: Counter,
    /// Findings another replica was already looking up, that this one waited for.
    pub coalesced: Counter,
}

/// Buckets from 50 µs to about 26 s: a decision is sub-millisecond, an upstream call is not.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.5, 15))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hubgate");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: latency(),
            policy_seconds: latency(),
            upstream_seconds: latency(),
            enrichment_hits: Counter::default(),
            enrichment_misses: Counter::default(),
            audit_queue_depth: Gauge::default(),
            audit: AuditMetrics::default(),
            policy_revision: Family::default(),
            tls_handshake_failures: Family::default(),
            tls_not_after: Family::default(),
            connection_errors: Family::default(),
            connections_refused: Family::default(),
            connections_open: Gauge::default(),
            requests_in_flight: Gauge::default(),
            runtime_workers: Gauge::default(),
            quota_wait_seconds: latency(),
            quota_exhausted: Family::default(),
            quota_pace: Family::default(),
            decisions_voided: Family::default(),
            enrich: Default::default(),
            coordination: Default::default(),
            reload_success_time: Gauge::default(),
            reload_failure_time: Gauge::default(),
            config_restart_needed: Gauge::default(),
            current_revision: Mutex::new(String::new()),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests by operation, policy decision and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, including upstream calls",
            m.request_seconds.clone(),
        );
        registry.register(
            "policy_duration_seconds",
            "Time spent building the input and evaluating policies per request",
            m.policy_seconds.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time until Security Hub answered a forwarded request",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "enrichment_cache_hits",
            "Findings whose state came from the enrichment cache",
            m.enrichment_hits.clone(),
        );
        registry.register(
            "enrichment_cache_misses",
            "Findings whose state had to be looked up",
            m.enrichment_misses.clone(),
        );
        registry.register(
            "enrichment_lookups",
            "GetFindings calls made for enrichment",
            m.enrich.lookups.clone(),
        );
        registry.register(
            "coordination_up",
            "1 while this replica shares quota pacing and finding state through Redis; 0 while \
             it paces to coordination.fallback_share and uses its local cache (degraded)",
            m.coordination.up.clone(),
        );
        registry.register(
            "coordination_fallbacks",
            "Times this replica lost Redis and fell back to local pacing and cache",
            m.coordination.fallbacks.clone(),
        );
        registry.register(
            "coordination_errors",
            "Redis calls that failed or timed out, by purpose",
            m.coordination.errors.clone(),
        );
        registry.register(
            "coordination_shared_cache_hits",
            "Findings answered from the cache shared by the replicas",
            m.coordination.shared_hits.clone(),
        );
        registry.register(
            "coordination_coalesced_lookups",
            "Findings another replica was looking up, that this replica waited for",
            m.coordination.coalesced.clone(),
        );
        registry.register(
            "audit_queue_depth",
            "Audit records waiting for the writer",
            m.audit_queue_depth.clone(),
        );
        registry.register(
            "audit_records",
            "Audit records written",
            m.audit.records.clone(),
        );
        registry.register(
            "audit_write_errors",
            "Audit writes that failed",
            m.audit.errors.clone(),
        );
        registry.register(
            "audit_unconfirmed",
            "Answers sent before their audit record was written: the writer took longer than audit.write_timeout_ms",
            m.audit.unconfirmed.clone(),
        );
        registry.register(
            "audit_chain_seq",
            "The sequence number of the last audit record in the sink, by chain id: a log whose \
             newest record is older had records cut from its end (hubgate audit verify --min-seq)",
            m.audit.chain_seq.clone(),
        );
        registry.register(
            "audit_write_seconds",
            "The audit writer's time for one record: seal and write (flushes and fsyncs included), and format it when masked or OCSF",
            m.audit.write_seconds.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the proxy port that failed, by reason",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_certificate_not_after_timestamp_seconds",
            "Unix time the loaded TLS certificates expire: certificate=\"serving\" (the served \
             chain's earliest), certificate=\"client_ca\" (the earliest client_ca CA's)",
            m.tls_not_after.clone(),
        );
        registry.register(
            "connection_errors",
            "Proxy connections that ended badly, by kind: header_timeout, idle_timeout, \
             send_timeout, bad_request (hyper answered 400), header_too_large (431), uri_too_long (414), \
             incomplete, io, other",
            m.connection_errors.clone(),
        );
        registry.register(
            "connections_refused",
            "Proxy connections over server.max_connections: overloaded (answered 503) or \
             closed (closed at accept)",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_open",
            "Open connections on the proxy listener",
            m.connections_open.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Proxy requests being handled (sampled at scrape time)",
            m.requests_in_flight.clone(),
        );
        registry.register(
            "runtime_workers",
            "Threads that run requests (server.worker_threads, or one per CPU)",
            m.runtime_workers.clone(),
        );
        registry.register(
            "upstream_throttled",
            "Calls Security Hub answered with a throttle, by operation",
            m.enrich.throttled.clone(),
        );
        registry.register(
            "quota_wait_seconds",
            "Time a request waited for hubgate's pacing of the account's Security Hub quota \
             before it was forwarded, or answered 429 when the wait ran out",
            m.quota_wait_seconds.clone(),
        );
        registry.register(
            "quota_exhausted",
            "Requests answered 429 because hubgate's own pacing had no room within \
             quota.max_wait_ms, by operation",
            m.quota_exhausted.clone(),
        );
        registry.register(
            "quota_pace",
            "The share of its quota rate hubgate paces an operation at, after Security Hub \
             throttled it (halved per throttle, recovering by 0.05 a second); only operations \
             throttled since start",
            m.quota_pace.clone(),
        );
        registry.register(
            "decisions_voided",
            "Decisions voided because a write changed the findings they read before the \
             request was forwarded, by what followed (replayed, reread, refused)",
            m.decisions_voided.clone(),
        );
        registry.register(
            "enrichment_cache_entries",
            "Findings (found or not found) held in the enrichment cache",
            m.enrich.entries.clone(),
        );
        registry.register(
            "enrichment_cache_bytes",
            "Approximate memory held by the enrichment cache's entries, finding state and \
             identifiers (enrichment.max_cache_bytes bounds it)",
            m.enrich.bytes.clone(),
        );
        registry.register(
            "enrichment_queued_findings",
            "Findings waiting in the lookup queue for a GetFindings call (one queued for two \
             callers' requests counts in each caller's turn)",
            m.enrich.queued.clone(),
        );
        registry.register(
            "enrichment_queued_callers",
            "Callers (principals) with findings waiting in the lookup queue (served in turn)",
            m.enrich.queued_callers.clone(),
        );
        registry.register(
            "enrichment_settling_findings",
            "Findings with a write hubgate forwarded within enrichment.settle_ms",
            m.enrich.settling.clone(),
        );
        registry.register(
            "enrichment_settling_all_seconds",
            "Seconds left during which a write hubgate forwarded that may have changed any \
             finding leaves every finding's state unknown (0: none)",
            m.enrich.settling_all.clone(),
        );
        registry.register(
            "enrichment_writes_in_flight",
            "Writes hubgate has sent to Security Hub and not yet applied the answers of: \
             decisions on their findings meanwhile hold whether they land or not",
            m.enrich.writes_in_flight.clone(),
        );
        registry.register(
            "enrichment_settle_overlaid",
            "Lookups whose finding states had writes hubgate forwarded within \
             enrichment.settle_ms laid over them",
            m.enrich.settle_overlaid.clone(),
        );
        registry.register(
            "enrichment_settle_refused",
            "Lookups refused because a write hubgate could not model, within \
             enrichment.settle_ms, left a finding's state unknown",
            m.enrich.settle_refused.clone(),
        );
        registry.register(
            "policy_revision_info",
            "The loaded policy revision (value 1)",
            m.policy_revision.clone(),
        );
        registry.register(
            "policy_last_reload_success_timestamp_seconds",
            "Unix time of the last load in which every part loaded (policies, callers, TLS)",
            m.reload_success_time.clone(),
        );
        registry.register(
            "policy_last_reload_failure_timestamp_seconds",
            "Unix time of the last failed policy reload (0: none)",
            m.reload_failure_time.clone(),
        );
        registry.register(
            "config_restart_needed",
            "1 while the configuration file has settings a reload does not apply (restart)",
            m.config_restart_needed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records which policy revision is loaded, keeping exactly one revision series at 1.
    pub fn set_revision(&self, revision: &str) {
        let mut current = self
            .current_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !current.is_empty() {
            self.policy_revision.remove(&RevisionLabels {
                revision: current.clone(),
            });
        }
        self.policy_revision
            .get_or_create(&RevisionLabels {
                revision: revision.to_string(),
            })
            .set(1);
        *current = revision.to_string();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_documents_exactly_the_decision_labels_emitted() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let row = readme
            .lines()
            .find(|l| l.starts_with("| `hubgate_requests_total` |"))
            .expect("README's metrics table has a hubgate_requests_total row");
        let listed = row
            .split_once("`decision` is ")
            .expect("the row lists the decision labels")
            .1;
        // The list ends at the first `;`; the settings and codes it quotes along the way are
        // not label-shaped.
        let listed = listed.split(';').next().unwrap_or_default();
        let mut documented: Vec<&str> = listed
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        documented.sort_unstable();
        documented.dedup();
        let mut emitted: Vec<&str> = DecisionLabel::ALL.iter().map(|l| l.as_str()).collect();
        emitted.sort_unstable();
        assert_eq!(documented, emitted);
    }

    #[test]
    fn requests_and_revision_render_as_prometheus_text() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                operation: "BatchUpdateFindings".into(),
                decision: "deny".into(),
                status: "403".into(),
            })
            .inc();
        m.request_seconds.observe(0.002);
        m.set_revision("sha256:a");
        m.set_revision("sha256:b");
        m.reload_success_time.set(200);
        let text = m.render();
        assert!(
            text.contains(r#"hubgate_requests_total{operation="BatchUpdateFindings",decision="deny",status="403"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hubgate_policy_revision_info{revision="sha256:b"} 1"#),
            "{text}"
        );
        assert!(!text.contains("sha256:a"), "{text}");
        assert!(
            text.contains("hubgate_request_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("hubgate_policy_last_reload_success_timestamp_seconds 200"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
