//! A native stand-in for Security Hub, for load tests (benches/load/cpu.py): cheap enough that
//! the proxy in front of it, not the upstream, is what gets measured.
//!
//!     cargo build --release --example stub_upstream
//!     target/release/examples/stub_upstream 8443 [--account 222222222222] [--threads 1]
//!
//! Listens on 127.0.0.1:<port>, plain HTTP/1.1, TCP_NODELAY. Signatures are not checked.
//! Every finding asked for exists; all that is kept is what BatchUpdateFindings wrote.
//!
//! - `POST /findings` (GetFindings): one finding per (Id, ProductArn) of the request's
//!   `Filters.Id` x `Filters.ProductArn` EQUALS values (ProductArn defaults to Security Hub's
//!   own), synthesised on the fly: realistic ASFF of about 2.8 KB, AwsAccountId = `--account`,
//!   Severity HIGH / Normalized 70, Workflow NEW, no Note, with the writes applied. No
//!   pagination (no NextToken).
//! - `PATCH /findings/batchupdate` (BatchUpdateFindings): every FindingIdentifiers entry back
//!   in `ProcessedFindings`, `UnprocessedFindings` empty. Its `Severity.Label`,
//!   `Workflow.Status` and `Note` are applied at once to each finding (Security Hub applies
//!   them within seconds), except to findings whose Id starts with `lagging-`: those never
//!   show a write, like a Security Hub whose lag outlasts the run.
//! - `GET /_stats`: calls per operation since start, as JSON.
//! - anything else: 404 (counted as `other`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const DEFAULT_PRODUCT_ARN: &str = "arn:aws:securityhub:us-east-1::product/aws/securityhub";
const ID_MARK: &str = "@@STUB-ID@@";
const ARN_MARK: &str = "@@STUB-ARN@@";
const SEVERITY_MARK: &str = "@@STUB-SEVERITY@@";
const WORKFLOW_MARK: &str = "@@STUB-WORKFLOW@@";
const NOTE_MARK: &str = "@@STUB-NOTE@@";
/// Findings with this Id prefix never show a write.
const LAGGING: &str = "lagging-";

#[derive(Default)]
struct Stats {
    get_findings: AtomicU64,
    batch_update_findings: AtomicU64,
    stats: AtomicU64,
    other: AtomicU64,
    findings_returned: AtomicU64,
    identifiers_updated: AtomicU64,
    bad_requests: AtomicU64,
}

struct Stub {
    stats: Stats,
    /// The serialized finding, split around the Id and ProductArn placeholders: the pieces
    /// between them are copied as they are, the values are JSON-escaped into the gaps.
    template: Vec<Piece>,
    request_ids: AtomicU64,
    /// What BatchUpdateFindings wrote, by Id and then ProductArn (looked up without a copy).
    written: Mutex<HashMap<String, HashMap<String, Written>>>,
}

enum Piece {
    Text(String),
    Id,
    Arn,
    Severity,
    Workflow,
    /// The whole `"Note":{...},` member: absent until a write sets one.
    Note,
}

#[derive(Default)]
struct Written {
    label: Option<String>,
    status: Option<String>,
    note: Option<NoteWrite>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StringFilter {
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Filters {
    id: Vec<StringFilter>,
    product_arn: Vec<StringFilter>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct GetFindings {
    filters: Filters,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct BatchUpdate {
    finding_identifiers: Vec<Value>,
    severity: Option<SeverityWrite>,
    workflow: Option<WorkflowWrite>,
    note: Option<NoteWrite>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct SeverityWrite {
    label: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct WorkflowWrite {
    status: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct NoteWrite {
    text: String,
    updated_by: String,
}

/// Security Hub's `Severity.Normalized` for a label set by BatchUpdateFindings.
fn normalized(label: &str) -> u32 {
    match label {
        "CRITICAL" => 90,
        "HIGH" => 70,
        "MEDIUM" => 40,
        "LOW" => 1,
        _ => 0,
    }
}

fn finding_template(account: &str) -> Value {
    let region = "us-east-1";
    let instance = "i-0a1b2c3d4e5f67890";
    json!({
        "SchemaVersion": "2018-10-08",
        "Id": ID_MARK,
        "ProductArn": ARN_MARK,
        "ProductName": "Security Hub",
        "CompanyName": "AWS",
        "Region": region,
        "GeneratorId": "security-control/EC2.8",
        "AwsAccountId": account,
        "Types": ["Software and Configuration Checks/Industry and Regulatory Standards"],
        "FirstObservedAt": "2024-01-01T00:00:00.000Z",
        "LastObservedAt": "2024-06-01T12:00:00.000Z",
        "CreatedAt": "2024-01-01T00:00:00.000Z",
        "UpdatedAt": "2024-06-01T12:00:00.000Z",
        "Severity": SEVERITY_MARK,
        "Title": "EC2 instances should use Instance Metadata Service Version 2 (IMDSv2)",
        "Description": "This control checks whether your Amazon Elastic Compute Cloud (Amazon EC2) \
            instance metadata version is configured with Instance Metadata Service Version 2 \
            (IMDSv2). The control passes if HttpTokens is set to required for IMDSv2. The \
            control fails if HttpTokens is set to optional. IMDSv2 uses session-oriented \
            requests and protects against several types of vulnerabilities that could be used \
            to try to access the instance metadata service.",
        "Remediation": {"Recommendation": {
            "Text": "For information on how to correct this issue, consult the AWS Security \
                Hub controls documentation.",
            "Url": "https://docs.aws.amazon.com/console/securityhub/EC2.8/remediation"}},
        "ProductFields": {
            "aws/securityhub/ProductName": "Security Hub",
            "aws/securityhub/CompanyName": "AWS",
            "Resources:0/Id": format!("arn:aws:ec2:{region}:{account}:instance/{instance}"),
            "aws/securityhub/FindingId": ID_MARK
        },
        "Resources": [{
            "Type": "AwsEc2Instance",
            "Id": format!("arn:aws:ec2:{region}:{account}:instance/{instance}"),
            "Partition": "aws",
            "Region": region,
            "Tags": {"Environment": "production", "Team": "platform"},
            "Details": {"AwsEc2Instance": {
                "Type": "m5.large",
                "ImageId": "ami-0abcdef1234567890",
                "IpV4Addresses": ["10.0.1.23"],
                "KeyName": "platform-prod",
                "IamInstanceProfileArn": format!("arn:aws:iam::{account}:instance-profile/platform-prod"),
                "VpcId": "vpc-0123456789abcdef0",
                "SubnetId": "subnet-0123456789abcdef0",
                "LaunchedAt": "2024-01-01T00:00:00.000Z",
                "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "optional",
                                    "HttpPutResponseHopLimit": 1}
            }}
        }],
        "Compliance": {
            "Status": "FAILED",
            "SecurityControlId": "EC2.8",
            "AssociatedStandards": [{"StandardsId": "standards/aws-foundational-security-best-practices/v/1.0.0"}],
            "RelatedRequirements": ["NIST.800-53.r5 AC-3", "NIST.800-53.r5 AC-3(15)",
                                    "NIST.800-53.r5 CM-2", "NIST.800-53.r5 SC-7"]
        },
        "WorkflowState": "NEW",
        "Workflow": WORKFLOW_MARK,
        "Note": NOTE_MARK,
        "RecordState": "ACTIVE",
        "FindingProviderFields": {
            "Severity": {"Label": "HIGH", "Original": "HIGH"},
            "Types": ["Software and Configuration Checks/Industry and Regulatory Standards"]
        },
        "ProcessedAt": "2024-06-01T12:00:05.000Z",
        "AwsAccountName": "platform-production"
    })
}

fn split_template(text: &str) -> Vec<Piece> {
    let q = |mark: &str| serde_json::to_string(mark).unwrap();
    // The Note member goes whole, its comma too: "Note" is never the object's last member.
    let marks = [
        (q(ID_MARK), 0),
        (q(ARN_MARK), 1),
        (q(SEVERITY_MARK), 2),
        (q(WORKFLOW_MARK), 3),
        (format!("\"Note\":{},", q(NOTE_MARK)), 4),
    ];
    let mut pieces = Vec::new();
    let mut rest = text;
    loop {
        let next = marks
            .iter()
            .filter_map(|(mark, kind)| rest.find(mark.as_str()).map(|a| (a, mark.len(), *kind)))
            .min();
        match next {
            None => {
                pieces.push(Piece::Text(rest.to_string()));
                return pieces;
            }
            Some((at, len, kind)) => {
                pieces.push(Piece::Text(rest[..at].to_string()));
                pieces.push(match kind {
                    0 => Piece::Id,
                    1 => Piece::Arn,
                    2 => Piece::Severity,
                    3 => Piece::Workflow,
                    _ => Piece::Note,
                });
                rest = &rest[at + len..];
            }
        }
    }
}

impl Stub {
    fn write_finding(&self, out: &mut Vec<u8>, id: &str, arn: &str, w: Option<&Written>) {
        let label = w.and_then(|w| w.label.as_deref()).unwrap_or("HIGH");
        let status = w.and_then(|w| w.status.as_deref()).unwrap_or("NEW");
        for piece in &self.template {
            match piece {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Id => serde_json::to_writer(&mut *out, id).unwrap(),
                Piece::Arn => serde_json::to_writer(&mut *out, arn).unwrap(),
                // Written in place, not through a `json!` map per finding: the stub shares the
                // machine with the proxy it measures.
                Piece::Severity => {
                    out.extend_from_slice(b"{\"Label\":");
                    serde_json::to_writer(&mut *out, label).unwrap();
                    let rest = format!(
                        ",\"Normalized\":{},\"Original\":\"HIGH\"}}",
                        normalized(label)
                    );
                    out.extend_from_slice(rest.as_bytes());
                }
                Piece::Workflow => {
                    out.extend_from_slice(b"{\"Status\":");
                    serde_json::to_writer(&mut *out, status).unwrap();
                    out.push(b'}');
                }
                Piece::Note => {
                    if let Some(n) = w.and_then(|w| w.note.as_ref()) {
                        out.extend_from_slice(b"\"Note\":{\"Text\":");
                        serde_json::to_writer(&mut *out, &n.text).unwrap();
                        out.extend_from_slice(
                            b",\"UpdatedAt\":\"2024-06-01T12:00:05.000Z\",\"UpdatedBy\":",
                        );
                        serde_json::to_writer(&mut *out, &n.updated_by).unwrap();
                        out.extend_from_slice(b"},");
                    }
                }
            }
        }
    }

    fn get_findings(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let req: GetFindings = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return self.bad_request(&e.to_string()),
        };
        self.stats.get_findings.fetch_add(1, Relaxed);
        let arns: Vec<&str> = if req.filters.product_arn.is_empty() {
            vec![DEFAULT_PRODUCT_ARN]
        } else {
            req.filters
                .product_arn
                .iter()
                .map(|f| f.value.as_str())
                .collect()
        };
        let mut out = Vec::with_capacity(64 + req.filters.id.len() * arns.len() * 3000);
        out.extend_from_slice(b"{\"Findings\":[");
        let mut n = 0u64;
        let written = self.written.lock().unwrap();
        for id in &req.filters.id {
            for arn in &arns {
                if n > 0 {
                    out.push(b',');
                }
                let w = written.get(&id.value).and_then(|by_arn| by_arn.get(*arn));
                self.write_finding(&mut out, &id.value, arn, w);
                n += 1;
            }
        }
        drop(written);
        out.extend_from_slice(b"]}");
        self.stats.findings_returned.fetch_add(n, Relaxed);
        self.json(StatusCode::OK, out)
    }

    fn batch_update(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let req: BatchUpdate = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return self.bad_request(&e.to_string()),
        };
        self.stats.batch_update_findings.fetch_add(1, Relaxed);
        self.stats
            .identifiers_updated
            .fetch_add(req.finding_identifiers.len() as u64, Relaxed);
        let label = req.severity.and_then(|s| s.label);
        let status = req.workflow.and_then(|w| w.status);
        if label.is_some() || status.is_some() || req.note.is_some() {
            let mut written = self.written.lock().unwrap();
            for fi in &req.finding_identifiers {
                let (Some(id), Some(arn)) = (fi["Id"].as_str(), fi["ProductArn"].as_str()) else {
                    continue;
                };
                if id.starts_with(LAGGING) {
                    continue;
                }
                let w = written
                    .entry(id.to_string())
                    .or_default()
                    .entry(arn.to_string())
                    .or_default();
                if label.is_some() {
                    w.label.clone_from(&label);
                }
                if status.is_some() {
                    w.status.clone_from(&status);
                }
                if req.note.is_some() {
                    w.note.clone_from(&req.note);
                }
            }
        }
        let out = serde_json::to_vec(&json!({
            "ProcessedFindings": req.finding_identifiers,
            "UnprocessedFindings": [],
        }))
        .unwrap();
        self.json(StatusCode::OK, out)
    }

    fn stats(&self) -> Response<Full<Bytes>> {
        self.stats.stats.fetch_add(1, Relaxed);
        let s = &self.stats;
        let out = serde_json::to_vec(&json!({
            "GetFindings": s.get_findings.load(Relaxed),
            "BatchUpdateFindings": s.batch_update_findings.load(Relaxed),
            "other": s.other.load(Relaxed),
            "bad_requests": s.bad_requests.load(Relaxed),
            "stats": s.stats.load(Relaxed),
            "findings_returned": s.findings_returned.load(Relaxed),
            "identifiers_updated": s.identifiers_updated.load(Relaxed),
        }))
        .unwrap();
        self.json(StatusCode::OK, out)
    }

    fn bad_request(&self, detail: &str) -> Response<Full<Bytes>> {
        self.stats.bad_requests.fetch_add(1, Relaxed);
        let out = serde_json::to_vec(&json!({"__type": "InvalidInputException",
                                             "message": detail}))
        .unwrap();
        self.json(StatusCode::BAD_REQUEST, out)
    }

    fn json(&self, status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
        let n = self.request_ids.fetch_add(1, Relaxed);
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header(
                "x-amzn-requestid",
                format!("00000000-0000-4000-8000-{n:012x}"),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return self.bad_request(&format!("reading the body: {e}")),
        };
        match (&parts.method, parts.uri.path()) {
            (&Method::POST, "/findings") => self.get_findings(&body),
            (&Method::PATCH, "/findings/batchupdate") => self.batch_update(&body),
            (&Method::GET, "/_stats") => self.stats(),
            _ => {
                self.stats.other.fetch_add(1, Relaxed);
                let out = serde_json::to_vec(&json!({"message": "stub_upstream: no such route"}))
                    .unwrap();
                self.json(StatusCode::NOT_FOUND, out)
            }
        }
    }
}

static STUB: OnceLock<Arc<Stub>> = OnceLock::new();

fn usage() -> ! {
    eprintln!("usage: stub_upstream <port> [--account 222222222222] [--threads N]");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut port: Option<u16> = None;
    let mut account = "222222222222".to_string();
    let mut threads = 1usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--account" => account = args.next().unwrap_or_else(|| usage()),
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ if port.is_none() => port = Some(a.parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    let port = port.unwrap_or_else(|| usage());

    let text = serde_json::to_string(&finding_template(&account)).unwrap();
    let stub = Arc::new(Stub {
        stats: Stats::default(),
        template: split_template(&text),
        request_ids: AtomicU64::new(0),
        written: Mutex::new(HashMap::new()),
    });
    let mut sample = Vec::new();
    stub.write_finding(&mut sample, "example-finding-id", DEFAULT_PRODUCT_ARN, None);
    let _ = STUB.set(stub);

    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    runtime.block_on(async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| {
            eprintln!("stub_upstream: cannot listen on {addr}: {e}");
            std::process::exit(1);
        });
        eprintln!(
            "stub_upstream: listening on {addr}, account {account}, {} bytes per finding, \
             {threads} thread(s)",
            sample.len()
        );
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("stub_upstream: accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req| async move {
                    let stub = STUB.get().unwrap();
                    Ok::<_, Infallible>(stub.handle(req).await)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
