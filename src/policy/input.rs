//! The policy input document (version 1): facts computed once in Rust so that rules compare
//! values instead of calling builtins. Documented in policies/README.md.

use serde::Serialize;
use serde_json::{Map, Value};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use regorus::value::Object;
use regorus::Value as RValue;

use super::state::CurrentFinding;
use crate::finding::{FindingKey, KeyMaker, KeyMap, KeySet};
use crate::identity::Principal;
use crate::quoted::quoted;
use crate::request::*;
use crate::validate::Violation;

pub const INPUT_VERSION: u64 = 1;

// The severity vocabulary lives in `finding`; re-exported where rules' tests look for it.
pub use crate::finding::{label_for_normalized, label_rank, SEVERITY_LABELS};

/// The label Security Hub derives from `Severity.Normalized` when no label is given, typed.
pub fn severity_for_normalized(n: i64) -> Option<SeverityLabel> {
    Some(match label_for_normalized(n)? {
        "INFORMATIONAL" => SeverityLabel::Informational,
        "LOW" => SeverityLabel::Low,
        "MEDIUM" => SeverityLabel::Medium,
        "HIGH" => SeverityLabel::High,
        "CRITICAL" => SeverityLabel::Critical,
        _ => return None,
    })
}

/// The rank that "lower" compares.
pub fn severity_rank(label: SeverityLabel) -> u64 {
    match label {
        SeverityLabel::Informational => 0,
        SeverityLabel::Low => 1,
        SeverityLabel::Medium => 2,
        SeverityLabel::High => 3,
        SeverityLabel::Critical => 4,
    }
}

/// The effective label of a severity object: `Label`, else derived from `Normalized`.
pub fn effective_label(severity: &Value) -> Option<&'static str> {
    if let Some(label) = severity.get("Label").and_then(Value::as_str) {
        return label_rank(label).map(|r| SEVERITY_LABELS[r as usize]);
    }
    severity
        .get("Normalized")
        .and_then(Value::as_i64)
        .and_then(label_for_normalized)
}

/// Where the findings' current state stands when the policy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrichment {
    /// First pass, before any upstream lookup: `current` and `account_id` are null.
    Pending,
    /// Lookups done: `current` is the finding, or null when Security Hub does not have it.
    Complete,
    /// `enrichment.enabled = false`: state is never looked up.
    Disabled,
    /// The operation names no findings GetFindings can look up (V2 identifiers, filters,
    /// imports): `claimed_account_id` is what the request says, nothing more.
    NotApplicable,
}

impl Enrichment {
    pub fn as_str(self) -> &'static str {
        match self {
            Enrichment::Pending => "pending",
            Enrichment::Complete => "complete",
            Enrichment::Disabled => "disabled",
            Enrichment::NotApplicable => "none",
        }
    }
}

/// Request facts that do not change between the two evaluation passes.
pub struct RequestFacts<'a> {
    pub operation: &'static str,
    pub principal: &'a Principal,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Map<String, Value>,
    pub source_ip: String,
    pub request_id: &'a str,
    pub time: String,
}

/// One fact of `input.update`, set together with the field it comes from: `Update`'s only
/// writers, so a listed field can never carry a null fact.
#[derive(Debug, Default, Serialize)]
pub struct Update {
    /// Every ASFF path the request sets, sorted; what "the request touches X" means.
    fields: BTreeSet<String>,
    workflow_status: Option<&'static str>,
    severity_label: Option<&'static str>,
    severity_rank: Option<u64>,
    severity_normalized: Option<i64>,
    severity_product: Option<f64>,
    note: Option<NoteFact>,
    verification_state: Option<&'static str>,
    confidence: Option<i64>,
    criticality: Option<i64>,
    types: Option<Vec<FactText>>,
    user_defined_fields: Option<BTreeMap<FactText, FactText>>,
    related_findings: Option<Vec<RelatedFact>>,
    record_state: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct NoteFact {
    text: FactText,
    updated_by: Option<FactText>,
}

#[derive(Debug, Serialize)]
struct RelatedFact {
    #[serde(rename = "Id")]
    id: FactText,
    #[serde(rename = "ProductArn")]
    product_arn: FactText,
}

/// A caller's text that becomes a fact of `input.update`, at most `max` characters: made only
/// by `FactText::new`, so `Update` cannot hold a longer one. Each such text is written three
/// times into the decision record (`update`, `input.update`, `input.request.body`) and is
/// forwarded: with no bound, one 1 MiB request setting `Note.UpdatedBy` or `Types` made a
/// 3 MiB record (and three times its hashing and formatting), allowed or refused. The limits
/// are Security Hub's own where it documents one (`FACT_LIMITS`); a longer text is a 400,
/// never a clipped fact that the policy would judge instead of what is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct FactText(String);

impl FactText {
    fn new(
        pointer: impl FnOnce() -> String,
        text: &str,
        max: usize,
    ) -> Result<FactText, Violation> {
        // Bytes bound characters from above: the count is needed only past `max` bytes.
        if text.len() > max && text.chars().count() > max {
            return Err(Violation::new(
                pointer(),
                format!("{} is longer than {max} characters", quoted(text)),
            ));
        }
        Ok(FactText(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The most characters each caller text of `input.update` may have (`FactText`).
pub mod fact_limits {
    /// `Note.Text` (the finding's Note: "Maximum of 512"), and V2's `Comment` (1–512).
    pub const NOTE_TEXT: usize = 512;
    /// `Note.UpdatedBy`: 512 in Security Hub's NoteUpdate (CloudFormation's
    /// AWS::SecurityHub::AutomationRule NoteUpdate; the API model states no limit).
    pub const NOTE_UPDATED_BY: usize = 512;
    /// One entry of `Types` ("namespace/category/classifier"): Security Hub documents no
    /// limit; hubgate's choice, several times the longest type AWS's own products write.
    pub const TYPE: usize = 512;
    /// `RelatedFindings[].Id` and `.ProductArn`: a finding's Id and ProductArn (512, 2048).
    pub const RELATED_ID: usize = 512;
    pub const RELATED_PRODUCT_ARN: usize = 2048;
    /// `UserDefinedFields`: "the key can contain up to 128 characters", "the value … 1024".
    pub const UDF_KEY: usize = 128;
    pub const UDF_VALUE: usize = 1024;
}

/// Which fact each field of `input.update.fields` sets: a field listed here is never null in
/// the input. Import fields name content, not an update, and have no fact.
pub const FIELD_FACTS: [(&str, &str); 14] = [
    ("Workflow.Status", "workflow_status"),
    ("Severity.Label", "severity_label"),
    ("Severity.Label", "severity_rank"),
    ("Severity.Normalized", "severity_normalized"),
    ("Severity.Normalized", "severity_rank"),
    ("Severity.Product", "severity_product"),
    ("Note.Text", "note"),
    ("VerificationState", "verification_state"),
    ("Confidence", "confidence"),
    ("Criticality", "criticality"),
    ("Types", "types"),
    ("UserDefinedFields", "user_defined_fields"),
    ("RelatedFindings", "related_findings"),
    ("RecordState", "record_state"),
];

impl Update {
    fn touch(&mut self, field: &str) {
        self.fields.insert(field.to_string());
    }
    fn workflow_status(&mut self, status: &'static str) {
        self.touch("Workflow.Status");
        self.workflow_status = Some(status);
    }
    /// `field` is Severity.Label or Severity.Normalized, whichever the request spelled.
    fn severity(&mut self, field: &str, label: &'static str, rank: u64) {
        self.touch(field);
        if self.severity_label.is_none() {
            self.severity_label = Some(label);
            self.severity_rank = Some(rank);
        }
    }
    /// `text_at` is where the text is in the body (`/Note/Text`, V2's `/Comment`).
    fn note(
        &mut self,
        text_at: &str,
        text: &str,
        updated_by: Option<&str>,
    ) -> Result<(), Violation> {
        let text = FactText::new(|| text_at.to_owned(), text, fact_limits::NOTE_TEXT)?;
        let updated_by = updated_by
            .map(|by| {
                FactText::new(
                    || "/Note/UpdatedBy".to_owned(),
                    by,
                    fact_limits::NOTE_UPDATED_BY,
                )
            })
            .transpose()?;
        self.touch("Note.Text");
        if updated_by.is_some() {
            self.touch("Note.UpdatedBy");
        }
        self.note = Some(NoteFact { text, updated_by });
        Ok(())
    }

    /// This change as Security Hub will apply it to a stored finding, ready to lay over cached
    /// state. None when it sets a member whose effect hubgate does not model (Types and
    /// UserDefinedFields merge, RelatedFindings, Severity.Product, V2 and import fields): the
    /// cached entry must then be evicted, not guessed.
    pub fn patch(&self) -> Option<Patch> {
        const MODELLED: [&str; 8] = [
            "Workflow.Status",
            "Severity.Label",
            "Severity.Normalized",
            "Note.Text",
            "Note.UpdatedBy",
            "VerificationState",
            "Confidence",
            "Criticality",
        ];
        if !self.fields.iter().all(|f| MODELLED.contains(&f.as_str())) {
            return None;
        }
        let mut set: Vec<(&'static str, Option<&'static str>, RValue)> = Vec::new();
        if let Some(status) = self.workflow_status {
            set.push(("Workflow", Some("Status"), RValue::from(status)));
        }
        if let Some(label) = self.severity_label {
            set.push(("Severity", Some("Label"), RValue::from(label)));
            // A stored Normalized of another band would disagree with the new label.
            set.push((
                "Severity",
                Some("Normalized"),
                self.severity_normalized
                    .map_or(RValue::Undefined, RValue::from),
            ));
        }
        if let Some(note) = &self.note {
            let mut n = BTreeMap::new();
            n.insert(RValue::from("Text"), RValue::from(note.text.as_str()));
            if let Some(by) = &note.updated_by {
                n.insert(RValue::from("UpdatedBy"), RValue::from(by.as_str()));
            }
            set.push(("Note", None, RValue::from(n)));
        }
        if let Some(v) = self.verification_state {
            set.push(("VerificationState", None, RValue::from(v)));
        }
        if let Some(c) = self.confidence {
            set.push(("Confidence", None, RValue::from(c)));
        }
        if let Some(c) = self.criticality {
            set.push(("Criticality", None, RValue::from(c)));
        }
        Some(Patch::new(
            self.workflow_status,
            self.severity_label.zip(self.severity_rank),
            set,
        ))
    }

    /// Whether the change sets nothing but the note (`Note.Text`, `Note.UpdatedBy`, V2's
    /// `Comment`): none of the facts a finding's decisions are judged on (its account,
    /// severity and workflow status) can change by it.
    pub fn sets_only_note(&self) -> bool {
        self.fields
            .iter()
            .all(|f| matches!(f.as_str(), "Note.Text" | "Note.UpdatedBy"))
    }

    /// The fields, sorted, for the audit record.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(String::as_str)
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Every value `input.update.workflow_status` can take: BatchUpdateFindings' four and the
/// rest of V2's `StatusId` (`v2_status`). Settings that list statuses (`member_workflow_statuses`,
/// `ticket_required_for`) are read against it when a set loads: an entry outside it matches no
/// request, so its rule would refuse (or require a ticket for) nothing it names.
pub const WORKFLOW_STATUSES: [&str; 8] = [
    "NEW",
    "NOTIFIED",
    "RESOLVED",
    "SUPPRESSED",
    "UNKNOWN",
    "ARCHIVED",
    "DELETED",
    "OTHER",
];

/// OCSF `status_id` of BatchUpdateFindingsV2 as the workflow status one rule covers. Every value
/// the model documents maps (0 and 99 included), and any other is refused.
fn v2_status(id: i64) -> Result<&'static str, Violation> {
    Ok(match id {
        0 => "UNKNOWN",
        1 => "NEW",
        2 => "NOTIFIED",
        3 => "SUPPRESSED",
        4 => "RESOLVED",
        5 => "ARCHIVED",
        6 => "DELETED",
        99 => "OTHER",
        _ => {
            return Err(Violation::new(
                "/StatusId",
                format!("StatusId {id} is not one of 0-6 or 99"),
            ))
        }
    })
}

/// OCSF `severity_id` as a label and rank (`finding::v2_severity`), or a 400.
fn v2_severity(id: i64) -> Result<(&'static str, u64), Violation> {
    crate::finding::v2_severity(id).ok_or_else(|| {
        Violation::new(
            "/SeverityId",
            format!("SeverityId {id} is not one of 0-6 or 99"),
        )
    })
}

/// What the policy input needs from a request, whatever operation it is.
pub struct Normalised {
    /// The findings the request names, de-duplicated in first-seen order.
    pub keys: Vec<FindingKey>,
    /// The account each finding belongs to by the request's own say (V2, imports).
    pub claimed_accounts: Vec<Option<String>>,
    pub update: Update,
    /// GetFindings can look these findings up (BatchUpdateFindings only).
    pub enrichable: bool,
    /// Body members moved to input.findings, so they are not in the input twice.
    pub strip: &'static [&'static str],
}

/// A request's finding keys as they are made (see KeyMaker), and the set of those pushed so far
/// (hashed once each, when made): a search of the key list instead made a 100-finding request
/// cost 4,950 string comparisons.
#[derive(Default)]
struct Seen {
    maker: KeyMaker,
    keys: KeySet,
}

/// Adds a finding once; a repeated identifier names the same finding. One named again for
/// another account is refused (`list` is where the identifiers are): the decision would see
/// only the first account, while Security Hub receives both.
fn push_key(
    seen: &mut Seen,
    keys: &mut Vec<FindingKey>,
    claims: &mut Vec<Option<String>>,
    (id, product_arn): (&str, &str),
    claim: Option<String>,
    list: &str,
) -> Result<(), Violation> {
    let key = seen.maker.key(id, product_arn);
    if seen.keys.insert(key.clone()) {
        keys.push(key);
        claims.push(claim);
        return Ok(());
    }
    let first = keys
        .iter()
        .position(|k| *k == key)
        .and_then(|i| claims.get(i));
    match first {
        // Each text quoted by its start: they are the caller's, up to the body's size.
        Some(first) if *first != claim => Err(Violation::new(
            list,
            format!(
                "names the finding {:?} of {:?} twice, for different accounts ({} and {})",
                quoted(id),
                quoted(product_arn),
                quoted(first.as_deref().unwrap_or("none")),
                quoted(claim.as_deref().unwrap_or("none")),
            ),
        )),
        _ => Ok(()),
    }
}

/// Normalises a typed request, so that "members may not suppress" is one rule whether the
/// request said `Workflow.Status`, `StatusId` or anything else. Every member is destructured:
/// a member added to the model does not compile until it is mapped here.
pub fn normalise(request: &Typed) -> Result<Normalised, Violation> {
    let mut u = Update::default();
    let mut keys = Vec::new();
    let mut claims = Vec::new();
    let mut seen = Seen::default();
    match request {
        Typed::BatchUpdateFindings(BatchUpdateFindingsRequest {
            finding_identifiers,
            note,
            severity,
            verification_state,
            confidence,
            criticality,
            types,
            user_defined_fields,
            workflow,
            related_findings,
        }) => {
            // Sized once, rather than rehashed as a 100-finding request fills them.
            seen.keys.reserve(finding_identifiers.len());
            keys.reserve(finding_identifiers.len());
            claims.reserve(finding_identifiers.len());
            for AwsSecurityFindingIdentifier { id, product_arn } in finding_identifiers {
                push_key(
                    &mut seen,
                    &mut keys,
                    &mut claims,
                    (id.as_str(), product_arn.as_str()),
                    None,
                    "/FindingIdentifiers",
                )?;
            }
            if let Some(NoteUpdate { text, updated_by }) = note {
                u.note("/Note/Text", text, Some(updated_by))?;
            }
            if let Some(SeverityUpdate {
                normalized,
                product,
                label,
            }) = severity
            {
                if let Some(label) = *label {
                    u.severity("Severity.Label", label.as_str(), severity_rank(label));
                }
                if let Some(n) = *normalized {
                    let derived = severity_for_normalized(n).ok_or_else(|| {
                        Violation::new(
                            "/Severity/Normalized",
                            format!("Severity.Normalized {n} is outside 0-100"),
                        )
                    })?;
                    // The API does not say which wins when they disagree; a policy must not
                    // judge one while AWS applies the other.
                    if let Some(label) = label.filter(|l| *l != derived) {
                        return Err(Violation::new(
                            "/Severity",
                            format!(
                                "Severity.Label {} disagrees with Severity.Normalized, which means {}",
                                label.as_str(),
                                derived.as_str()
                            ),
                        ));
                    }
                    u.severity(
                        "Severity.Normalized",
                        derived.as_str(),
                        severity_rank(derived),
                    );
                    u.severity_normalized = Some(n);
                }
                if let Some(p) = *product {
                    u.touch("Severity.Product");
                    u.severity_product = Some(p);
                }
            }
            if let Some(v) = verification_state {
                u.touch("VerificationState");
                u.verification_state = Some(v.as_str());
            }
            if let Some(c) = *confidence {
                u.touch("Confidence");
                u.confidence = Some(c);
            }
            if let Some(c) = *criticality {
                u.touch("Criticality");
                u.criticality = Some(c);
            }
            if let Some(t) = types {
                let t = t
                    .iter()
                    .enumerate()
                    .map(|(i, t)| FactText::new(|| format!("/Types/{i}"), t, fact_limits::TYPE))
                    .collect::<Result<_, _>>()?;
                u.touch("Types");
                u.types = Some(t);
            }
            if let Some(m) = user_defined_fields {
                let mut fields = BTreeMap::new();
                for (k, v) in m {
                    let at = || "/UserDefinedFields".to_owned();
                    fields.insert(
                        FactText::new(at, k, fact_limits::UDF_KEY)?,
                        FactText::new(at, v, fact_limits::UDF_VALUE)?,
                    );
                }
                u.touch("UserDefinedFields");
                u.user_defined_fields = Some(fields);
            }
            if let Some(WorkflowUpdate { status: Some(s) }) = workflow {
                u.workflow_status(s.as_str());
            }
            if let Some(list) = related_findings {
                u.touch("RelatedFindings");
                u.related_findings = Some(
                    list.iter()
                        .enumerate()
                        .map(|(i, RelatedFinding { product_arn, id })| {
                            Ok(RelatedFact {
                                id: FactText::new(
                                    || format!("/RelatedFindings/{i}/Id"),
                                    id,
                                    fact_limits::RELATED_ID,
                                )?,
                                product_arn: FactText::new(
                                    || format!("/RelatedFindings/{i}/ProductArn"),
                                    product_arn,
                                    fact_limits::RELATED_PRODUCT_ARN,
                                )?,
                            })
                        })
                        .collect::<Result<_, Violation>>()?,
                );
            }
            Ok(Normalised {
                keys,
                claimed_accounts: claims,
                update: u,
                enrichable: true,
                strip: &["FindingIdentifiers"],
            })
        }
        Typed::BatchUpdateFindingsV2(BatchUpdateFindingsV2Request {
            metadata_uids,
            finding_identifiers,
            comment,
            severity_id,
            status_id,
        }) => {
            for OcsfFindingIdentifier {
                cloud_account_uid,
                finding_info_uid,
                metadata_product_uid,
            } in finding_identifiers.iter().flatten()
            {
                push_key(
                    &mut seen,
                    &mut keys,
                    &mut claims,
                    (finding_info_uid.as_str(), metadata_product_uid.as_str()),
                    Some(cloud_account_uid.clone()),
                    "/FindingIdentifiers",
                )?;
            }
            for uid in metadata_uids.iter().flatten() {
                push_key(
                    &mut seen,
                    &mut keys,
                    &mut claims,
                    (uid.as_str(), ""),
                    None,
                    "/MetadataUids",
                )?;
            }
            // The model requires neither member (its documentation only forbids both, which
            // the schema refuses), but a request that names no finding has nothing to judge;
            // refused as BatchUpdateFindings refuses an empty FindingIdentifiers.
            match (finding_identifiers, metadata_uids) {
                (None, None) => {
                    return Err(Violation::new(
                        "",
                        "BatchUpdateFindingsV2 needs FindingIdentifiers or MetadataUids: \
                         the request names no finding to update",
                    ))
                }
                (Some(list), _) if list.is_empty() => {
                    return Err(Violation::new(
                        "/FindingIdentifiers",
                        "FindingIdentifiers is empty: the request names no finding to update",
                    ))
                }
                (_, Some(list)) if list.is_empty() => {
                    return Err(Violation::new(
                        "/MetadataUids",
                        "MetadataUids is empty: the request names no finding to update",
                    ))
                }
                _ => {}
            }
            if let Some(c) = comment {
                u.note("/Comment", c, None)?;
            }
            if let Some(id) = *severity_id {
                let (label, rank) = v2_severity(id)?;
                u.severity("Severity.Label", label, rank);
            }
            if let Some(id) = *status_id {
                u.workflow_status(v2_status(id)?);
            }
            Ok(Normalised {
                keys,
                claimed_accounts: claims,
                update: u,
                enrichable: false,
                strip: &["FindingIdentifiers", "MetadataUids"],
            })
        }
        Typed::UpdateFindings(update) => {
            let UpdateFindingsRequest {
                // Which findings, not what changes: policies read it from request.body.
                filters: _,
                note,
                record_state,
            } = update.as_ref();
            if let Some(NoteUpdate { text, updated_by }) = note {
                u.note("/Note/Text", text, Some(updated_by))?;
            }
            if let Some(r) = record_state {
                u.touch("RecordState");
                u.record_state = Some(r.as_str());
            }
            Ok(Normalised {
                keys,
                claimed_accounts: claims,
                update: u,
                enrichable: false,
                strip: &[],
            })
        }
        Typed::BatchImportFindings(BatchImportFindingsRequest { findings }) => {
            // An import's content is judged as content (request.body.Findings); the fields say
            // which members any imported finding sets, structured ones one level down.
            for f in findings {
                push_key(
                    &mut seen,
                    &mut keys,
                    &mut claims,
                    (f.id.as_str(), f.product_arn.as_str()),
                    Some(f.aws_account_id.clone()),
                    "/Findings",
                )?;
                for member in f.members_set() {
                    let subs = match member {
                        "Severity" => f.severity.as_ref().map(Severity::members_set),
                        "Workflow" => f.workflow.as_ref().map(Workflow::members_set),
                        "Note" => f.note.as_ref().map(Note::members_set),
                        "FindingProviderFields" => f
                            .finding_provider_fields
                            .as_ref()
                            .map(FindingProviderFields::members_set),
                        _ => None,
                    };
                    match subs {
                        Some(subs) if !subs.is_empty() => {
                            for sub in subs {
                                u.touch(&format!("{member}.{sub}"));
                            }
                        }
                        _ => u.touch(member),
                    }
                }
            }
            Ok(Normalised {
                keys,
                claimed_accounts: claims,
                update: u,
                enrichable: false,
                strip: &[],
            })
        }
    }
}

/// `input.update` for a body, as judging builds it (tests and benchmarks).
pub fn update_for(operation: Judged, body: &Value) -> Result<Update, Violation> {
    normalise(&operation.read(body)?).map(|n| n.update)
}

/// The fields of a stored finding that policies see as `current`; the rest (resources,
/// descriptions) stays out of the input to keep evaluation cheap. In key order, the order of
/// the policy object they make, so that a looked-up finding's object is built without sorting.
pub const CURRENT_FIELDS: [&str; 15] = [
    "AwsAccountId",
    "CompanyName",
    "Compliance",
    "Confidence",
    "Criticality",
    "GeneratorId",
    "Note",
    "ProductArn",
    "ProductName",
    "RecordState",
    "Severity",
    "Types",
    "UserDefinedFields",
    "VerificationState",
    "Workflow",
];

/// Object keys of the finding entries, made once: a regorus string is reference counted, so
/// cloning a key is cheaper than allocating it for every finding of every request.
struct EntryKeys {
    id: RValue,
    product_arn: RValue,
    account_id: RValue,
    severity_label: RValue,
    severity_rank: RValue,
    workflow_status: RValue,
    current: RValue,
}

fn keys() -> &'static EntryKeys {
    static KEYS: OnceLock<EntryKeys> = OnceLock::new();
    KEYS.get_or_init(|| EntryKeys {
        id: RValue::from("Id"),
        product_arn: RValue::from("ProductArn"),
        account_id: RValue::from("account_id"),
        severity_label: RValue::from("severity_label"),
        severity_rank: RValue::from("severity_rank"),
        workflow_status: RValue::from("workflow_status"),
        current: RValue::from("current"),
    })
}

/// A first-pass entry with no claimed account: `{"Id": id, "ProductArn": product_arn}`, copied
/// from one made once, with both values set in place, rather than built and sorted per finding.
fn bare_entry(id: RValue, product_arn: RValue) -> RValue {
    static BARE: OnceLock<Option<EntryTemplate>> = OnceLock::new();
    let k = keys();
    let template = BARE.get_or_init(|| {
        EntryTemplate::new(RValue::from(BTreeMap::from([
            (k.id.clone(), RValue::Null),
            (k.product_arn.clone(), RValue::Null),
        ])))
    });
    let pairs = [(&k.id, id), (&k.product_arn, product_arn)];
    match template {
        Some(template) => template.with(pairs),
        None => RValue::from(BTreeMap::from(pairs.map(|(key, v)| (key.clone(), v)))),
    }
}

fn opt_str(v: Option<&str>) -> RValue {
    v.map_or(RValue::Null, RValue::from)
}

/// One finding targeted by the request, as policies see it. Built once per finding state and
/// cached with it by enrichment; only findings with no known state are built per request. Not
/// found (`None`): every fact and `current` are null, from the same builder as a found one.
pub fn finding_entry(key: &FindingKey, current: Option<&Map<String, Value>>) -> RValue {
    let (id, product_arn) = (
        RValue::String(key.id.clone()),
        RValue::String(key.product_arn.clone()),
    );
    match current {
        None => StateFacts::default().entry(id, product_arn, RValue::Null),
        Some(f) => {
            StateFacts::read(f).entry(id, product_arn, rego_value(&Value::Object(f.clone())))
        }
    }
}

/// The facts of a finding entry, read from the stored finding's JSON members (AwsAccountId,
/// Severity, Workflow): whichever way the rest of the state was converted, the facts rules
/// compare mean the same.
#[derive(Default)]
pub struct StateFacts {
    pub account_id: Option<String>,
    pub severity_label: Option<&'static str>,
    pub workflow_status: Option<String>,
}

impl StateFacts {
    /// The members of a stored finding the facts come from.
    pub const MEMBERS: [&'static str; 3] = ["AwsAccountId", "Severity", "Workflow"];

    /// The facts of a stored finding (or its projection).
    pub fn read(finding: &Map<String, Value>) -> StateFacts {
        let mut facts = StateFacts::default();
        for member in Self::MEMBERS {
            if let Some(value) = finding.get(member) {
                facts.read_member(member, value);
            }
        }
        facts
    }

    /// Takes the fact one member of the stored finding gives, if it is one of `MEMBERS`; a
    /// member seen again replaces what it gave, as in the JSON.
    pub fn read_member(&mut self, field: &str, value: &Value) {
        match field {
            "AwsAccountId" => self.account_id = value.as_str().map(str::to_string),
            "Severity" => self.severity_label = effective_label(value),
            "Workflow" => {
                self.workflow_status = value
                    .get("Status")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }
            _ => {}
        }
    }

    pub fn severity_rank(&self) -> Option<u64> {
        self.severity_label.and_then(label_rank)
    }

    /// The finding entry (see `finding_entry`) with `current`, the projected fields as the
    /// policy input holds them.
    pub fn entry(&self, id: RValue, product_arn: RValue, current: RValue) -> RValue {
        let k = keys();
        let mut entry = BTreeMap::new();
        entry.insert(k.id.clone(), id);
        entry.insert(k.product_arn.clone(), product_arn);
        entry.insert(k.account_id.clone(), opt_str(self.account_id.as_deref()));
        entry.insert(k.severity_label.clone(), opt_str(self.severity_label));
        entry.insert(
            k.severity_rank.clone(),
            self.severity_rank().map_or(RValue::Null, RValue::from),
        );
        entry.insert(
            k.workflow_status.clone(),
            opt_str(self.workflow_status.as_deref()),
        );
        entry.insert(k.current.clone(), current);
        RValue::from(entry)
    }

    /// The entry of every finding with these facts, `product_arn` and `current`, but its Id.
    pub fn template(&self, product_arn: RValue, current: RValue) -> Option<EntryTemplate> {
        EntryTemplate::new(self.entry(RValue::Null, product_arn, current))
    }
}

/// A finding entry without its Id (see `StateFacts::template`). Findings that share their
/// facts, ProductArn and `current` copy it and set their Id in place, instead of each building
/// and sorting an object of their own.
#[derive(Clone)]
pub struct EntryTemplate(regorus::Rc<regorus::value::Object>);

impl EntryTemplate {
    /// `entry` as a template; None only if it is not an object.
    fn new(entry: RValue) -> Option<EntryTemplate> {
        match entry {
            RValue::Object(object) => Some(EntryTemplate(object)),
            _ => None,
        }
    }

    /// A copy with `values` set. Keys the template has only change their values, so the copy
    /// stays compact.
    fn with<const N: usize>(&self, values: [(&RValue, RValue); N]) -> RValue {
        let mut object = regorus::value::Object::clone(&self.0);
        for (key, value) in values {
            object.insert(key.clone(), value);
        }
        object.into_value()
    }

    /// The entry of the finding `id`: as `StateFacts::entry` makes it from the template's facts.
    pub fn entry(&self, id: RValue) -> RValue {
        self.with([(&keys().id, id)])
    }
}

/// The fields of a stored finding that policies see (CURRENT_FIELDS); the rest is dropped
/// as soon as it is read.
pub fn project(finding: &Value) -> Map<String, Value> {
    CURRENT_FIELDS
        .iter()
        .filter_map(|field| Some((field.to_string(), finding.get(*field)?.clone())))
        .collect()
}

/// A processed update, converted once and laid over each cached finding it applied to.
pub struct Patch {
    /// (entry key, value) for the entry's own facts.
    facts: Vec<(RValue, RValue)>,
    severity_rank: Option<u64>,
    /// (member of `current`, sub-member, value); Undefined removes the sub-member. Keys are
    /// made once per update, not once per finding.
    set: Vec<(RValue, Option<RValue>, RValue)>,
    /// A later write composed into this one (`then`) set a value an earlier one had set
    /// differently: a state that shows this patch may show none of the writes applied yet.
    overwrote: bool,
    /// What this patch found of each distinct `current` object it was laid over, by the
    /// object's address. Looked-up findings of one control share one `current` object (see
    /// enrich's page memo), so an update to a batch of them checks and patches that object
    /// once, not once per finding, and they go on sharing the result.
    /// Keyed by an address hubgate chose, not by anything a caller sends: hashed with foldhash
    /// rather than SipHash, as it is once per finding a patch is laid over.
    currents: std::sync::Mutex<HashMap<usize, SeenCurrent, foldhash::fast::RandomState>>,
}

impl Patch {
    fn new(
        workflow_status: Option<&'static str>,
        severity: Option<(&'static str, u64)>,
        set: Vec<(&'static str, Option<&'static str>, RValue)>,
    ) -> Patch {
        let k = keys();
        let mut facts = Vec::new();
        if let Some(status) = workflow_status {
            facts.push((k.workflow_status.clone(), RValue::from(status)));
        }
        if let Some((label, rank)) = severity {
            facts.push((k.severity_label.clone(), RValue::from(label)));
            facts.push((k.severity_rank.clone(), RValue::from(rank)));
        }
        Patch {
            facts,
            severity_rank: severity.map(|(_, rank)| rank),
            set: set
                .into_iter()
                .map(|(member, sub, value)| (RValue::from(member), sub.map(RValue::from), value))
                .collect(),
            overwrote: false,
            currents: Default::default(),
        }
    }

    /// The same change with nothing memoised: a patch kept for minutes must not hold every
    /// state it was ever laid over.
    pub fn fresh(&self) -> Patch {
        Patch {
            facts: self.facts.clone(),
            severity_rank: self.severity_rank,
            set: self.set.clone(),
            overwrote: self.overwrote,
            currents: Default::default(),
        }
    }

    /// Whether this change and `other` leave the same facts whichever is applied last: the
    /// severity label and rank and the workflow status (`facts`), what the shipped rules judge a
    /// finding's state by. Two writes that set only other members to different values (two
    /// notes) leave those members as the last one Security Hub applied, which hubgate takes to
    /// be the last one sent; refusing decisions on every finding two notes overlapped on made
    /// concurrent triage notes lock members out for the settle window.
    pub fn facts_commute_with(&self, other: &Patch) -> bool {
        let facts_agree = self
            .facts
            .iter()
            .all(|(k, v)| other.facts.iter().all(|(l, w)| k != l || v == w));
        let ranks_agree = match (self.severity_rank, other.severity_rank) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        facts_agree && ranks_agree
    }

    /// Whether `other` makes the same change.
    pub fn same_change(&self, other: &Patch) -> bool {
        self.facts == other.facts
            && self.severity_rank == other.severity_rank
            && self.set == other.set
    }

    /// This change and then `later`, as one: what `later` sets replaces what this one set
    /// there, so a finding written to again and again keeps one change, not a growing list.
    pub fn then(&self, later: &Patch) -> Patch {
        let facts = self
            .facts
            .iter()
            .filter(|(k, _)| !later.facts.iter().any(|(l, _)| l == k))
            .chain(&later.facts)
            .cloned()
            .collect();
        // Setting a whole member replaces every earlier change inside it.
        let replaced = |(member, sub, _): &&(RValue, Option<RValue>, RValue)| {
            later
                .set
                .iter()
                .any(|(m, s, _)| m == member && (s.is_none() || s == sub))
        };
        let overwrote = self.overwrote
            || later.overwrote
            || self
                .facts
                .iter()
                .any(|(k, v)| later.facts.iter().any(|(l, w)| l == k && w != v))
            || self.set.iter().any(|(member, sub, v)| {
                later.set.iter().any(|(m, s, w)| {
                    m == member && (s.is_none() || s == sub) && (s != sub || w != v)
                })
            });
        let set = self
            .set
            .iter()
            .filter(|x| !replaced(x))
            .chain(&later.set)
            .cloned()
            .collect();
        Patch {
            facts,
            severity_rank: later.severity_rank.or(self.severity_rank),
            set,
            overwrote,
            currents: Default::default(),
        }
    }

    /// This change as items for the replicas' shared journal, one per value set: `path\tjson`,
    /// the path `f/<fact>`, `r` (the severity rank) or `s/<member>[/<sub>]`, and an empty JSON
    /// text for a member removed. A later item replaces an earlier one with the same path, and
    /// a later `s/<member>` every earlier `s/<member>/…`: `then`, as Redis composes it.
    pub fn items(&self) -> Option<Vec<String>> {
        let text = |v: &RValue| match v {
            RValue::Undefined => Some(String::new()),
            v => serde_json::to_string(v).ok(),
        };
        let values = self
            .facts
            .iter()
            .map(|(_, v)| text(v))
            .chain(self.severity_rank.map(|r| Some(r.to_string())))
            .chain(self.set.iter().map(|(_, _, v)| text(v)));
        self.paths()?
            .into_iter()
            .zip(values)
            .map(|(path, v)| Some(format!("{path}\t{}", v?)))
            .collect()
    }

    /// The path of each value this change sets (see `items`), in the order of `items`.
    pub fn paths(&self) -> Option<Vec<String>> {
        let name = |v: &RValue| v.as_string().ok().map(|s| s.to_string());
        let mut out = Vec::with_capacity(self.facts.len() + self.set.len() + 1);
        for (k, _) in &self.facts {
            out.push(format!("f/{}", name(k)?));
        }
        if self.severity_rank.is_some() {
            out.push("r".to_string());
        }
        for (member, sub, _) in &self.set {
            out.push(match sub {
                None => format!("s/{}", name(member)?),
                Some(sub) => format!("s/{}/{}", name(member)?, name(sub)?),
            });
        }
        Some(out)
    }

    /// This change without the values at `dropped` paths (see `paths`).
    pub fn without(&self, dropped: &[String]) -> Patch {
        let paths = self.paths().unwrap_or_default();
        let gone = |i: usize| paths.get(i).is_some_and(|p| dropped.contains(p));
        let (nf, has_rank) = (self.facts.len(), self.severity_rank.is_some());
        let rank_at = nf;
        let set_from = nf + usize::from(has_rank);
        Patch {
            facts: (0..nf)
                .filter(|i| !gone(*i))
                .map(|i| self.facts[i].clone())
                .collect(),
            severity_rank: self.severity_rank.filter(|_| !gone(rank_at)),
            set: self
                .set
                .iter()
                .enumerate()
                .filter(|(i, _)| !gone(set_from + i))
                .map(|(_, x)| x.clone())
                .collect(),
            overwrote: self.overwrote,
            currents: Default::default(),
        }
    }

    /// Whether this change sets nothing.
    pub fn is_empty(&self) -> bool {
        self.facts.is_empty() && self.severity_rank.is_none() && self.set.is_empty()
    }

    /// The change `items` (see `items`) describe; None when one cannot be read.
    pub fn from_items<S: AsRef<str>>(items: &[S]) -> Option<Patch> {
        let value = |json: &str| match json {
            "" => Some(RValue::Undefined),
            // By JSON meaning (PlainValue): a written UserDefinedFields holds keys callers chose.
            json => serde_json::from_str::<PlainValue>(json).ok().map(|p| p.0),
        };
        // Composed in Redis from writes this replica did not see: whether one overwrote
        // another is not known.
        let mut patch = Patch {
            facts: Vec::new(),
            severity_rank: None,
            set: Vec::new(),
            overwrote: true,
            currents: Default::default(),
        };
        for item in items {
            let (path, json) = item.as_ref().split_once('\t')?;
            let mut parts = path.split('/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("f"), Some(fact), None, None) => {
                    patch.facts.push((RValue::from(fact), value(json)?))
                }
                (Some("r"), None, None, None) => patch.severity_rank = Some(json.parse().ok()?),
                (Some("s"), Some(member), sub, None) => {
                    patch
                        .set
                        .push((RValue::from(member), sub.map(RValue::from), value(json)?))
                }
                _ => return None,
            }
        }
        Some(patch)
    }

    /// The new severity rank, when the update sets one.
    pub fn severity_rank(&self) -> Option<u64> {
        self.severity_rank
    }

    /// True when `entry` (see `finding_entry`) already holds every value this update sets:
    /// an update applied again (a retried or re-run playbook) changes nothing.
    pub fn holds(&self, entry: &RValue) -> bool {
        let Ok(e) = entry.as_object() else {
            return false;
        };
        self.facts.iter().all(|(k, v)| e.get(k) == Some(v))
            && match e.get(&keys().current) {
                Some(RValue::Object(current)) => self.seen(current, |seen| {
                    *seen
                        .holds
                        .get_or_insert_with(|| self.current_holds(&seen.source))
                }),
                // Nothing to compare with: only an update that sets nothing there holds.
                _ => self.set.is_empty(),
            }
    }

    /// Whether a state that shows this change shows it applied: not when it was composed from
    /// writes one of which set a value an earlier one had set differently (after a lowering
    /// and its revert, the state from before both shows their composition).
    pub fn settles_when_shown(&self) -> bool {
        !self.overwrote
    }

    /// True when `entry`, as Security Hub reported it, shows every value the update set
    /// explicitly. Unlike `holds`, what hubgate only infers is not compared: a member it
    /// removes (a label-only update drops `Severity.Normalized`, which Security Hub may
    /// recompute), and members Security Hub adds beside the ones set (`Note.UpdatedAt`).
    pub fn shown_by(&self, entry: &RValue) -> bool {
        let Ok(e) = entry.as_object() else {
            return false;
        };
        self.facts.iter().all(|(k, v)| e.get(k) == Some(v))
            && match e.get(&keys().current) {
                // Findings read from one page share their `current` object: compared once.
                Some(RValue::Object(current)) => self.seen(current, |seen| {
                    *seen
                        .shown
                        .get_or_insert_with(|| self.current_shows(Some(&*seen.source)))
                }),
                _ => self.current_shows(None),
            }
    }

    fn current_shows(&self, current: Option<&Object>) -> bool {
        let shows = |value: &RValue, found: Option<&RValue>| match (value, found) {
            (RValue::Undefined, _) => true,
            (RValue::Object(want), Some(RValue::Object(got))) => {
                want.iter().all(|(k, v)| got.get(k) == Some(v))
            }
            (want, got) => got == Some(want),
        };
        self.set.iter().all(|(member, sub, value)| {
            let m = current.and_then(|c| c.get(member));
            match sub {
                None => shows(value, m),
                Some(sub) => shows(value, m.and_then(|m| m.as_object().ok()?.get(sub))),
            }
        })
    }

    fn current_holds(&self, current: &Object) -> bool {
        self.set
            .iter()
            .all(|(member, sub, value)| match (sub, current.get(member)) {
                (None, Some(m)) => m == value,
                (Some(sub), Some(m)) => match m.as_object().ok().and_then(|o| o.get(sub)) {
                    Some(v) => v == value,
                    None => *value == RValue::Undefined,
                },
                (_, None) => false,
            })
    }

    /// A finding entry (see `finding_entry`) with this change applied. Only the maps that
    /// change are copied; the rest is shared with the old entry. The copies are made compact
    /// again (`into_value`): a map left in its mutable form costs more to copy and to read
    /// on every later decision and write-through.
    pub fn apply(&self, entry: &RValue) -> RValue {
        let RValue::Object(old) = entry else {
            return entry.clone();
        };
        let mut e = Object::clone(old);
        for (key, value) in &self.facts {
            e.insert(key.clone(), value.clone());
        }
        if let Some(slot) = e.get_mut(&keys().current) {
            if let RValue::Object(current) = slot {
                let patched = self.seen(current, |seen| {
                    seen.patched
                        .get_or_insert_with(|| self.patched_current(&seen.source))
                        .clone()
                });
                *slot = patched;
            }
        }
        e.into_value()
    }

    fn patched_current(&self, current: &Object) -> RValue {
        let mut c = current.clone();
        for (member, sub, value) in &self.set {
            let Some(sub) = sub else {
                c.insert(member.clone(), value.clone());
                continue;
            };
            let mut m = match c.get(member) {
                Some(RValue::Object(o)) => Object::clone(o),
                _ => Object::new(),
            };
            if *value == RValue::Undefined {
                m.remove(sub);
            } else {
                m.insert(sub.clone(), value.clone());
            }
            c.insert(member.clone(), m.into_value());
        }
        c.into_value()
    }

    /// Runs `f` on what this patch found of `current` so far (see `currents`).
    fn seen<R>(&self, current: &regorus::Rc<Object>, f: impl FnOnce(&mut SeenCurrent) -> R) -> R {
        let fresh = || SeenCurrent {
            source: current.clone(),
            holds: None,
            shown: None,
            patched: None,
        };
        match self.currents.lock() {
            Ok(mut memo) => {
                let at = regorus::Rc::as_ptr(current) as usize;
                f(memo.entry(at).or_insert_with(fresh))
            }
            // A poisoned memo only loses the sharing: work from scratch.
            Err(_) => f(&mut fresh()),
        }
    }
}

/// Whether a value set at path `later` (see `Patch::paths`) replaces one set earlier at
/// `earlier`: the same path, or a whole member over a part of it (`Patch::then`).
pub fn path_replaces(later: &str, earlier: &str) -> bool {
    earlier == later
        || (later.starts_with("s/")
            && !later[2..].contains('/')
            && earlier.len() > later.len()
            && earlier.starts_with(later)
            && earlier.as_bytes()[later.len()] == b'/')
}

/// What a patch found of one `current` object. It holds the object, so that the address it is
/// remembered by cannot be reused by another object while the patch lives.
struct SeenCurrent {
    source: regorus::Rc<Object>,
    holds: Option<bool>,
    shown: Option<bool>,
    patched: Option<RValue>,
}

/// Facts over all targeted findings, so that rules can rule a request in with a few
/// comparisons and iterate over the findings only to name the ones that violate.
#[derive(Default)]
struct Summary {
    /// The owners' texts as the states share them (see CurrentFinding::account_id).
    accounts: BTreeSet<Arc<str>>,
    unowned: bool,
    max_severity_rank: Option<u64>,
    missing: u64,
    /// Found findings whose current severity has no rank.
    unranked: u64,
}

impl Summary {
    fn add(&mut self, f: &CurrentFinding) {
        match &f.account_id {
            Some(a) if !self.accounts.contains(a) => {
                self.accounts.insert(a.clone());
            }
            Some(_) => {}
            // A finding whose owner hubgate cannot read must not vanish from the ownership
            // check: it shows as a null account, which no member owns.
            None => self.unowned = true,
        }
        self.max_severity_rank = self.max_severity_rank.max(f.severity_rank);
        if f.severity_rank.is_none() {
            self.unranked += 1;
        }
    }

    fn into_value(self, enrichment: Enrichment) -> RValue {
        let mut out = BTreeMap::new();
        if enrichment == Enrichment::Complete {
            let mut accounts: Vec<RValue> = self.accounts.into_iter().map(RValue::String).collect();
            if self.unowned {
                accounts.push(RValue::Null);
            }
            out.insert(RValue::from("accounts"), RValue::from(accounts));
            out.insert(
                RValue::from("max_severity_rank"),
                self.max_severity_rank.map_or(RValue::Null, RValue::from),
            );
            out.insert(RValue::from("missing"), RValue::from(self.missing));
            out.insert(RValue::from("unranked"), RValue::from(self.unranked));
        }
        RValue::from(out)
    }
}

/// The input document for one evaluation pass. `current` holds what enrichment found.
pub fn document(
    facts: &RequestFacts<'_>,
    body_without_ids: &Value,
    update: &Value,
    keys: &[FindingKey],
    current: Option<&KeyMap<Arc<CurrentFinding>>>,
    enrichment: Enrichment,
) -> RValue {
    Document::new(facts, body_without_ids, update).pass(keys, &[], current, enrichment)
}

/// A JSON value as a policy value, read in place, by its JSON meaning only (see `PlainValue`).
/// It cannot fail for a value serde_json parsed (its numbers are finite); Undefined is there
/// only so that no panic is possible.
pub fn rego_value(v: &Value) -> RValue {
    use serde::Deserialize;
    PlainValue::deserialize(v).map_or(RValue::Undefined, |p| p.0)
}

/// A policy value deserialised from JSON as JSON means it. regorus's own `Deserialize` for its
/// `Value` reads an object whose first key is serde_json's private marker
/// `$serde_json::private::Number` as a number, and fails on the whole document when that
/// member's value is not one (or the object has other members). Map keys are caller-chosen
/// (UserDefinedFields, an import's ProductFields, resource tags): one such key turned the
/// request body into Undefined, so that every rule reading `input.request.body` stayed silent
/// and the request was forwarded, and a finding stored with it made its GetFindings pages
/// unreadable (502 for every lookup of it). Here every object is an object.
pub struct PlainValue(pub RValue);

impl<'de> serde::Deserialize<'de> for PlainValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PlainValue, D::Error> {
        d.deserialize_any(PlainVisitor).map(PlainValue)
    }
}

struct PlainVisitor;

impl<'de> serde::de::Visitor<'de> for PlainVisitor {
    type Value = RValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<RValue, E> {
        Ok(RValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RValue, E> {
        Ok(RValue::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<RValue, E> {
        Ok(RValue::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RValue, E> {
        // As regorus: a non-finite number has no JSON form and breaks its ordered sets.
        if !v.is_finite() {
            return Err(E::custom(format_args!("non-finite number {v}")));
        }
        Ok(RValue::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<RValue, E> {
        Ok(RValue::from(v))
    }
    fn visit_unit<E>(self) -> Result<RValue, E> {
        Ok(RValue::Null)
    }
    fn visit_none<E>(self) -> Result<RValue, E> {
        Ok(RValue::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<RValue, D::Error> {
        d.deserialize_any(PlainVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RValue, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(PlainValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(RValue::from(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RValue, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(PlainKey(key)) = map.next_key()? {
            let PlainValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(RValue::from(out))
    }
}

/// An object key as a policy string, made from the text as read (no owned String between).
struct PlainKey(RValue);

impl<'de> serde::Deserialize<'de> for PlainKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PlainKey, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = RValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, v: &str) -> Result<RValue, E> {
                Ok(RValue::from(v))
            }
        }
        d.deserialize_str(KeyVisitor).map(PlainKey)
    }
}

/// The members of the input document that do not change between passes, converted once per
/// request: a second pass shares them (regorus values are reference-counted) instead of
/// converting the request body and the update again.
pub struct Document {
    fixed: BTreeMap<RValue, RValue>,
    /// The caller's account when it is a member: its entries for another account's findings
    /// withhold their state (`Document::pass`).
    member_account: Option<String>,
}

impl Document {
    pub fn new(facts: &RequestFacts<'_>, body_without_ids: &Value, update: &Value) -> Document {
        let mut fixed = BTreeMap::new();
        let mut put = |k: &str, v: RValue| {
            fixed.insert(RValue::from(k), v);
        };
        put("version", RValue::from(INPUT_VERSION));
        put("operation", RValue::from(facts.operation));
        put(
            "principal",
            RValue::from(serde_json::to_value(facts.principal).unwrap_or(Value::Null)),
        );
        // Converted from the request's own values by reference: building a JSON object of
        // them first would copy the body and the update only to convert the copy.
        let mut request = BTreeMap::new();
        let mut field = |k: &str, v: RValue| {
            request.insert(RValue::from(k), v);
        };
        field("method", RValue::from(facts.method));
        field("path", RValue::from(facts.path));
        let headers: BTreeMap<RValue, RValue> = facts
            .headers
            .iter()
            .map(|(k, v)| (RValue::from(k.as_str()), rego_value(v)))
            .collect();
        field("headers", RValue::from(headers));
        field("body", rego_value(body_without_ids));
        field("source_ip", RValue::from(facts.source_ip.as_str()));
        field("request_id", RValue::from(facts.request_id));
        field("time", RValue::from(facts.time.as_str()));
        put("request", RValue::from(request));
        put("update", rego_value(update));
        let member_account = (facts.principal.role == crate::identity::Role::Member)
            .then(|| facts.principal.account_id.clone());
        Document {
            fixed,
            member_account,
        }
    }

    /// Whether `state` is of another account than the member's (or of none it can read): the
    /// lookup read it with hubgate's role, which sees what the member's own credentials cannot,
    /// and whatever a policy puts in its answer to the member, a message quoting a severity or
    /// a status included, reaches the member. Even that it exists is what the member's own
    /// credentials cannot tell: a member's input holds such a finding exactly as one not
    /// found (null facts, null `current`, counted in `summary.missing`), so no rule, shipped or
    /// an operator's, can answer the two differently. The audit record keeps which it was.
    fn withheld(&self, state: &CurrentFinding) -> bool {
        self.member_account
            .as_deref()
            .is_some_and(|member| state.account_id.as_deref() != Some(member))
    }

    /// The keys whose found state `withheld` keeps from the member's input, in `keys`' order.
    pub fn withheld_of(
        &self,
        keys: &[FindingKey],
        current: &KeyMap<Arc<CurrentFinding>>,
    ) -> Vec<FindingKey> {
        // An administrator is withheld nothing: no lookup per finding to find that out.
        if self.member_account.is_none() {
            return Vec::new();
        }
        keys.iter()
            .filter(|k| current.get(*k).is_some_and(|s| self.withheld(s)))
            .cloned()
            .collect()
    }

    /// The whole document for one pass, with the accounts the request itself claims for its
    /// findings (`claimed_accounts`, by position in `keys`).
    pub fn pass(
        &self,
        keys: &[FindingKey],
        claimed_accounts: &[Option<String>],
        current: Option<&KeyMap<Arc<CurrentFinding>>>,
        enrichment: Enrichment,
    ) -> RValue {
        let mut summary = Summary::default();
        let findings: Vec<RValue> = match (enrichment, current) {
            (Enrichment::Complete, Some(current)) => keys
                .iter()
                .map(|key| match current.get(key) {
                    Some(state) if !self.withheld(state) => {
                        summary.add(state);
                        state.entry.clone()
                    }
                    // Not found, or withheld: one entry and one count, so that no rule can
                    // tell the member which it was.
                    _ => {
                        summary.missing += 1;
                        finding_entry(key, None)
                    }
                })
                .collect(),
            // Before enrichment (or without it) only the identifiers are known; state fields
            // are absent, so a rule that reads them stays undefined instead of seeing a false
            // null.
            _ => {
                let k = self::keys();
                let claimed_key = RValue::from("claimed_account_id");
                keys.iter()
                    .enumerate()
                    .map(|(i, key)| {
                        let (id, product_arn) = (
                            RValue::String(key.id.clone()),
                            RValue::String(key.product_arn.clone()),
                        );
                        let Some(Some(account)) = claimed_accounts.get(i) else {
                            return bare_entry(id, product_arn);
                        };
                        // the key's own texts: a policy string is the same shared str
                        let mut entry = BTreeMap::new();
                        entry.insert(k.id.clone(), id);
                        entry.insert(k.product_arn.clone(), product_arn);
                        entry.insert(claimed_key.clone(), RValue::from(account.as_str()));
                        RValue::from(entry)
                    })
                    .collect()
            }
        };
        let mut doc = self.fixed.clone();
        doc.insert(
            RValue::from("enrichment"),
            RValue::from(enrichment.as_str()),
        );
        doc.insert(RValue::from("findings"), RValue::from(findings));
        doc.insert(RValue::from("summary"), summary.into_value(enrichment));
        RValue::from(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Before enrichment each finding's entry holds its identifiers and, where the request
    /// claims one, its account; copied from a template or built, entries are the plain objects.
    #[test]
    fn first_pass_entries_are_the_identifiers_and_any_claimed_account() {
        let principal = Principal {
            id: "p".into(),
            account_id: "222222222222".into(),
            role: crate::identity::Role::Member,
            attributes: Default::default(),
        };
        let facts = RequestFacts {
            operation: "BatchImportFindings",
            principal: &principal,
            method: "POST",
            path: "/findings/import",
            headers: Map::new(),
            source_ip: "127.0.0.1".into(),
            request_id: "r",
            time: "t".into(),
        };
        let keys = [
            FindingKey::new("a", "p1"),
            FindingKey::new("b", "p2"),
            FindingKey::new("c", "p1"),
        ];
        let claimed = [None, Some("333333333333".to_string())];
        let doc = Document::new(&facts, &json!({}), &json!({}));
        let got = doc.pass(&keys, &claimed, None, Enrichment::Pending);
        let expected = [
            json!({"Id": "a", "ProductArn": "p1"}),
            json!({"Id": "b", "ProductArn": "p2", "claimed_account_id": "333333333333"}),
            json!({"Id": "c", "ProductArn": "p1"}),
        ];
        let findings = got["findings"].as_array().unwrap();
        assert_eq!(findings.len(), 3);
        for (entry, expected) in findings.iter().zip(expected) {
            assert_eq!(*entry, RValue::from(expected));
        }
    }

    /// The request and the update are read into the document in place; the result is what
    /// regorus's own conversion makes of the same JSON, numbers and nesting included.
    #[test]
    fn the_document_converts_the_request_as_regorus_does() {
        let principal = Principal {
            id: "p".into(),
            account_id: "222222222222".into(),
            role: crate::identity::Role::Member,
            attributes: serde_json::from_value(json!({"team": ["a", 1]})).unwrap(),
        };
        let headers: Map<String, Value> =
            serde_json::from_value(json!({"x-amz-target": "t", "x-n": [1, 2.5, null]})).unwrap();
        let facts = RequestFacts {
            operation: "BatchUpdateFindings",
            principal: &principal,
            method: "PATCH",
            path: "/findings/batchupdate",
            headers: headers.clone(),
            source_ip: "127.0.0.1".into(),
            request_id: "r-1",
            time: "2026-12-03T00:00:00Z".into(),
        };
        let body = json!({"Note": {"Text": "é\u{1}", "UpdatedBy": "u"}, "Confidence": 0,
            "Severity": {"Normalized": 40, "Product": 4.5}, "Big": 18446744073709551615u64,
            "Neg": -7, "Empty": {}, "List": [[], [true, false]]});
        let update = json!({"fields": ["Note.Text"], "severity_rank": null, "confidence": 0});
        let doc = Document::new(&facts, &body, &update);
        let expected_request = RValue::from(json!({
            "method": "PATCH", "path": "/findings/batchupdate", "headers": headers,
            "body": body, "source_ip": "127.0.0.1", "request_id": "r-1",
            "time": "2026-12-03T00:00:00Z",
        }));
        assert_eq!(doc.fixed[&RValue::from("request")], expected_request);
        assert_eq!(doc.fixed[&RValue::from("update")], RValue::from(update));
        assert_eq!(
            doc.fixed[&RValue::from("principal")],
            RValue::from(serde_json::to_value(&principal).unwrap())
        );
    }

    /// A map key spelled like serde_json's private number marker is an ordinary key: the body
    /// stays an object (regorus's own conversion made it a number, or Undefined), from a value
    /// and from text alike.
    #[test]
    fn a_number_marker_key_is_an_ordinary_key() {
        const MARKER: &str = "$serde_json::private::Number";
        for value in ["5", "not-a-number"] {
            for body in [json!({MARKER: value}), json!({MARKER: value, "owner": "x"})] {
                let converted = rego_value(&body);
                assert_eq!(converted[MARKER], RValue::from(value), "{body}");
                let from_text: PlainValue = serde_json::from_str(&body.to_string()).unwrap();
                assert_eq!(from_text.0, converted, "{body}");
                // What regorus itself makes of it, which the policies must never see.
                assert_ne!(RValue::from(body.clone()), converted, "{body}");
            }
        }
    }

    /// A change composed in Redis reads back whatever keys a caller's UserDefinedFields had:
    /// one spelled like serde_json's number marker made the whole change unreadable.
    #[test]
    fn a_composed_change_reads_back_a_callers_marker_key() {
        let udf = r#"{"$serde_json::private::Number":"x","k":"v"}"#;
        let patch = Patch::from_items(&[format!("s/UserDefinedFields\t{udf}")]).unwrap();
        let (member, sub, value) = &patch.set[0];
        assert_eq!((member, sub), (&RValue::from("UserDefinedFields"), &None));
        assert_eq!(value["$serde_json::private::Number"], RValue::from("x"));
        assert_eq!(
            Patch::from_items(&patch.items().unwrap()).unwrap().set,
            patch.set
        );
    }

    /// Looked-up findings are built in this order without sorting (see CURRENT_FIELDS).
    #[test]
    fn current_fields_are_in_the_policy_object_key_order() {
        let keys = CURRENT_FIELDS.map(RValue::from);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{CURRENT_FIELDS:?}");
    }

    #[test]
    fn normalized_maps_to_labels_at_the_documented_edges() {
        for (n, l) in [
            (0, "INFORMATIONAL"),
            (1, "LOW"),
            (39, "LOW"),
            (40, "MEDIUM"),
            (69, "MEDIUM"),
            (70, "HIGH"),
            (89, "HIGH"),
            (90, "CRITICAL"),
            (100, "CRITICAL"),
        ] {
            assert_eq!(label_for_normalized(n), Some(l), "{n}");
        }
        assert_eq!(label_for_normalized(101), None);
        assert_eq!(label_for_normalized(-1), None);
    }

    fn update(op: Judged, body: Value) -> Result<Value, Violation> {
        update_for(op, &body).map(|u| u.to_value())
    }

    fn buf(extra: Value) -> Value {
        let mut body = json!({"FindingIdentifiers": [{"Id": "f", "ProductArn": "p"}]});
        if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
            b.extend(extra);
        }
        body
    }

    #[test]
    fn update_counts_normalized_as_its_label() {
        let u = update(
            Judged::BatchUpdateFindings,
            buf(json!({"Severity": {"Normalized": 10}})),
        )
        .unwrap();
        assert_eq!(u["severity_label"], "LOW");
        assert_eq!(u["severity_rank"], 1);
        assert_eq!(u["severity_normalized"], 10);
        assert_eq!(u["fields"], json!(["Severity.Normalized"]));
        let u = update(
            Judged::BatchUpdateFindings,
            buf(json!({"Severity": {"Label": "HIGH"}, "Workflow": {"Status": "SUPPRESSED"}})),
        )
        .unwrap();
        assert_eq!(u["severity_rank"], 3);
        assert_eq!(u["workflow_status"], "SUPPRESSED");
        assert_eq!(u["fields"], json!(["Severity.Label", "Workflow.Status"]));
        let u = update(
            Judged::BatchUpdateFindings,
            buf(json!({"Note": {"Text": "t", "UpdatedBy": "u"}})),
        )
        .unwrap();
        assert_eq!(u["severity_rank"], Value::Null);
        assert_eq!(u["note"]["text"], "t");
        assert_eq!(u["fields"], json!(["Note.Text", "Note.UpdatedBy"]));
    }

    #[test]
    fn label_and_normalized_must_agree() {
        let agree = buf(json!({"Severity": {"Label": "HIGH", "Normalized": 75}}));
        let u = update(Judged::BatchUpdateFindings, agree).unwrap();
        assert_eq!(
            u["fields"],
            json!(["Severity.Label", "Severity.Normalized"])
        );
        let disagree = buf(json!({"Severity": {"Label": "CRITICAL", "Normalized": 10}}));
        let err = update(Judged::BatchUpdateFindings, disagree).unwrap_err();
        assert_eq!(err.path(), "/Severity");
        assert!(err.message().contains("LOW"), "{}", err.message());
    }

    #[test]
    fn every_v2_enum_value_is_a_fact() {
        for (id, label, rank) in [
            (0, "UNKNOWN", 0),
            (1, "INFORMATIONAL", 0),
            (2, "LOW", 1),
            (3, "MEDIUM", 2),
            (4, "HIGH", 3),
            (5, "CRITICAL", 4),
            (6, "CRITICAL", 4),
            (99, "OTHER", 0),
        ] {
            let u = update(
                Judged::BatchUpdateFindingsV2,
                json!({"MetadataUids": ["m"], "SeverityId": id}),
            )
            .unwrap();
            assert_eq!(u["severity_label"], label, "{id}");
            assert_eq!(u["severity_rank"], rank, "{id}");
            assert_eq!(u["fields"], json!(["Severity.Label"]), "{id}");
        }
        for (id, status) in [
            (0, "UNKNOWN"),
            (1, "NEW"),
            (2, "NOTIFIED"),
            (3, "SUPPRESSED"),
            (4, "RESOLVED"),
            (5, "ARCHIVED"),
            (6, "DELETED"),
            (99, "OTHER"),
        ] {
            let u = update(
                Judged::BatchUpdateFindingsV2,
                json!({"MetadataUids": ["m"], "StatusId": id}),
            )
            .unwrap();
            assert_eq!(u["workflow_status"], status, "{id}");
        }
        // The vocabulary settings are read against holds every status either operation sets.
        for id in [0, 1, 2, 3, 4, 5, 6, 99] {
            assert!(WORKFLOW_STATUSES.contains(&v2_status(id).unwrap()), "{id}");
        }
        for s in [
            WorkflowStatus::New,
            WorkflowStatus::Notified,
            WorkflowStatus::Resolved,
            WorkflowStatus::Suppressed,
        ] {
            assert!(WORKFLOW_STATUSES.contains(&s.as_str()), "{s:?}");
        }
        for field in ["SeverityId", "StatusId"] {
            for id in [7, 98, 100, -1] {
                let err = update(
                    Judged::BatchUpdateFindingsV2,
                    json!({"MetadataUids": ["m"], field: id}),
                )
                .unwrap_err();
                assert_eq!(err.path(), format!("/{field}"));
            }
        }
    }

    #[test]
    fn a_v2_update_must_name_its_findings() {
        let fi = json!([{"CloudAccountUid": "222222222222", "FindingInfoUid": "f",
                         "MetadataProductUid": "p"}]);
        for (body, path) in [
            (json!({"StatusId": 4}), ""),
            (json!({"Comment": "c"}), ""),
            (
                json!({"FindingIdentifiers": [], "StatusId": 4}),
                "/FindingIdentifiers",
            ),
            (json!({"MetadataUids": [], "StatusId": 4}), "/MetadataUids"),
        ] {
            let err = update(Judged::BatchUpdateFindingsV2, body.clone()).unwrap_err();
            assert_eq!(err.path(), path, "{body}");
            assert!(
                err.message().contains("names no finding"),
                "{}",
                err.message()
            );
        }
        // Either one alone is enough.
        for body in [
            json!({"FindingIdentifiers": fi, "StatusId": 4}),
            json!({"MetadataUids": ["m"], "StatusId": 4}),
        ] {
            assert!(
                update(Judged::BatchUpdateFindingsV2, body.clone()).is_ok(),
                "{body}"
            );
        }
    }

    /// A write of findings hubgate cannot name leaves them unknown for the settle window
    /// unless it sets their note only (`enrich::Reach`): a status, a severity or a record
    /// state beside the note is not a note.
    #[test]
    fn only_a_note_is_a_note() {
        let m = json!(["m"]);
        let filters = json!({"Id": [{"Value": "f", "Comparison": "EQUALS"}]});
        let note = json!({"Text": "t", "UpdatedBy": "u"});
        for (op, body, only_note) in [
            (
                Judged::BatchUpdateFindingsV2,
                json!({"MetadataUids": m, "Comment": "c"}),
                true,
            ),
            (
                Judged::BatchUpdateFindingsV2,
                json!({"MetadataUids": m, "Comment": "c", "StatusId": 4}),
                false,
            ),
            (
                Judged::BatchUpdateFindingsV2,
                json!({"MetadataUids": m, "SeverityId": 0}),
                false,
            ),
            (
                Judged::UpdateFindings,
                json!({"Filters": filters, "Note": note}),
                true,
            ),
            (
                Judged::UpdateFindings,
                json!({"Filters": filters, "Note": note, "RecordState": "ACTIVE"}),
                false,
            ),
            (
                Judged::BatchUpdateFindings,
                buf(json!({"Note": note})),
                true,
            ),
            (
                Judged::BatchUpdateFindings,
                buf(json!({"Note": note, "Confidence": 5})),
                false,
            ),
        ] {
            let u = update_for(op, &body).unwrap();
            assert_eq!(u.sets_only_note(), only_note, "{body}");
        }
    }

    #[test]
    fn a_finding_named_again_for_another_account_is_refused() {
        let id = |account: &str| json!({"CloudAccountUid": account, "FindingInfoUid": "x", "MetadataProductUid": "p"});
        let read = |ids: Value| {
            normalise(
                &Judged::BatchUpdateFindingsV2
                    .read(&json!({"FindingIdentifiers": ids, "Comment": "c"}))
                    .unwrap(),
            )
        };
        let Err(err) = read(json!([id("222222222222"), id("333333333333")])) else {
            panic!("refused");
        };
        assert_eq!(err.path(), "/FindingIdentifiers");
        assert!(
            err.message().contains("222222222222 and 333333333333"),
            "{}",
            err.message()
        );
        // the same account twice is the same finding, named once
        let n = read(json!([id("222222222222"), id("222222222222")])).unwrap();
        assert_eq!(n.claimed_accounts, [Some("222222222222".to_string())]);
    }

    #[test]
    fn imports_list_every_member_they_set() {
        let finding = json!({
            "SchemaVersion": "2018-10-08", "Id": "f", "ProductArn": "p", "GeneratorId": "g",
            "AwsAccountId": "222222222222", "CreatedAt": "2026-01-01T00:00:00Z",
            "UpdatedAt": "2026-01-01T00:00:00Z", "Title": "t", "Description": "d",
            "Resources": [{"Type": "Other", "Id": "r"}],
            "Severity": {"Label": "LOW"}, "Workflow": {"Status": "SUPPRESSED"},
            "FindingProviderFields": {"Severity": {"Label": "LOW"}},
        });
        let n = normalise(
            &Judged::BatchImportFindings
                .read(&json!({"Findings": [finding.clone(), finding]}))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(n.keys, [FindingKey::new("f", "p")]);
        assert_eq!(n.claimed_accounts, [Some("222222222222".to_string())]);
        let fields: Vec<&str> = n.update.fields().collect();
        for f in [
            "Severity.Label",
            "Workflow.Status",
            "FindingProviderFields.Severity",
            "Title",
        ] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
        assert!(!fields.contains(&"Severity"), "{fields:?}");
    }

    #[test]
    fn a_processed_update_is_laid_over_cached_state() {
        let f = json!({"AwsAccountId": "222222222222", "Severity": {"Label": "HIGH", "Normalized": 70, "Original": "7"},
                       "Workflow": {"Status": "NEW"}, "Note": {"Text": "old", "UpdatedBy": "a"}});
        let entry = finding_entry(&FindingKey::new("f", "p"), Some(&project(&f)));
        let u = update_for(
            Judged::BatchUpdateFindings,
            &buf(
                json!({"Severity": {"Label": "CRITICAL"}, "Workflow": {"Status": "RESOLVED"},
                        "Note": {"Text": "new", "UpdatedBy": "b"}}),
            ),
        )
        .unwrap();
        let patch = u.patch().expect("a modelled change");
        assert_eq!(patch.severity_rank(), Some(4));
        let e: Value = serde_json::to_value(patch.apply(&entry)).unwrap();
        assert_eq!(e["severity_label"], "CRITICAL");
        assert_eq!(e["severity_rank"], 4);
        assert_eq!(e["workflow_status"], "RESOLVED");
        assert_eq!(e["account_id"], "222222222222");
        assert_eq!(
            e["current"]["Severity"],
            json!({"Label": "CRITICAL", "Original": "7"})
        );
        assert_eq!(
            e["current"]["Note"],
            json!({"Text": "new", "UpdatedBy": "b"})
        );
        // the old entry is untouched (shared state is copied on write)
        let old: Value = serde_json::to_value(&entry).unwrap();
        assert_eq!(old["severity_label"], "HIGH");
        // a change hubgate does not model is not guessed
        let types = update_for(
            Judged::BatchUpdateFindings,
            &buf(json!({"Types": ["a/b/c"]})),
        )
        .unwrap();
        assert!(types.patch().is_none());
    }

    #[test]
    fn findings_that_shared_their_state_share_it_patched_and_no_others_do() {
        let stored = |label: &str| {
            let f = json!({"AwsAccountId": "222222222222", "Severity": {"Label": label},
                           "Note": {"Text": "old", "UpdatedBy": "a"}});
            let projected = project(&f);
            (
                StateFacts::read(&projected),
                RValue::from(Value::Object(projected)),
            )
        };
        let (facts, shared) = stored("HIGH");
        let (other_facts, other) = stored("LOW");
        let entry = |id: &str, facts: &StateFacts, current: &RValue| {
            facts.entry(RValue::from(id), RValue::from("p"), current.clone())
        };
        let (a, b) = (entry("a", &facts, &shared), entry("b", &facts, &shared));
        let c = entry("c", &other_facts, &other);
        let patch = update_for(
            Judged::BatchUpdateFindings,
            &buf(json!({"Note": {"Text": "new", "UpdatedBy": "b"}})),
        )
        .unwrap()
        .patch()
        .unwrap();
        let current_of = |e: &RValue| match e.as_object().unwrap().get(&keys().current) {
            Some(RValue::Object(o)) => o.clone(),
            other => panic!("current is not an object: {other:?}"),
        };
        // A finding whose state already holds the note, checked between the two that do not.
        let done = {
            let f = json!({"AwsAccountId": "222222222222", "Severity": {"Label": "HIGH"},
                           "Note": {"Text": "new", "UpdatedBy": "b"}});
            finding_entry(&FindingKey::new("d", "p"), Some(&project(&f)))
        };
        assert!(!patch.holds(&a));
        assert!(patch.holds(&done));
        assert!(!patch.holds(&b));
        // shown_by answers per shared object too, and apart from holds
        assert!(!patch.shown_by(&b));
        assert!(patch.shown_by(&done));
        assert!(!patch.shown_by(&a));
        assert!(!patch.shown_by(&c));
        let (pa, pb, pc) = (patch.apply(&a), patch.apply(&b), patch.apply(&c));
        assert!(regorus::Rc::ptr_eq(&current_of(&pa), &current_of(&pb)));
        assert!(!regorus::Rc::ptr_eq(&current_of(&pa), &current_of(&pc)));
        for (patched, id, label) in [(&pa, "a", "HIGH"), (&pb, "b", "HIGH"), (&pc, "c", "LOW")] {
            let e: Value = serde_json::to_value(patched).unwrap();
            assert_eq!(e["Id"], id);
            assert_eq!(
                e["current"]["Note"],
                json!({"Text": "new", "UpdatedBy": "b"})
            );
            assert_eq!(e["current"]["Severity"], json!({"Label": label}));
            assert!(patch.holds(patched));
            assert!(patch.shown_by(patched));
        }
        // the state the findings shared before is untouched
        let old: Value = serde_json::to_value(&shared).unwrap();
        assert_eq!(old["Note"]["Text"], "old");
    }

    #[test]
    fn an_update_already_held_is_recognised_and_any_difference_is_not() {
        let f = json!({"AwsAccountId": "222222222222", "Severity": {"Label": "HIGH", "Normalized": 70},
                       "Workflow": {"Status": "NEW"}, "Note": {"Text": "old", "UpdatedBy": "a"}});
        let entry = finding_entry(&FindingKey::new("f", "p"), Some(&project(&f)));
        let patch = |extra: Value| {
            update_for(Judged::BatchUpdateFindings, &buf(extra))
                .unwrap()
                .patch()
                .unwrap()
        };
        let change =
            json!({"Severity": {"Label": "CRITICAL"}, "Note": {"Text": "new", "UpdatedBy": "b"}});
        let p = patch(change.clone());
        assert!(!p.holds(&entry), "HIGH and 'old' differ from the update");
        let applied = p.apply(&entry);
        assert!(p.holds(&applied), "applied once, it holds");
        assert!(!patch(
            json!({"Severity": {"Label": "CRITICAL"}, "Note": {"Text": "other", "UpdatedBy": "b"}})
        )
        .holds(&applied));
        assert!(!patch(json!({"Workflow": {"Status": "RESOLVED"}})).holds(&applied));
        assert!(patch(json!({"Workflow": {"Status": "NEW"}})).holds(&applied));
        // Normalized 70 stayed with HIGH: setting the label without it must remove it
        assert!(!patch(json!({"Severity": {"Label": "HIGH"}})).holds(&entry));
        // a finding with no known state never holds an update
        assert!(!p.holds(&finding_entry(&FindingKey::new("f", "p"), None)));
    }
    #[test]
    fn repeated_identifiers_name_one_finding() {
        let body = json!({"FindingIdentifiers": [
            {"Id": "a", "ProductArn": "p"}, {"Id": "b", "ProductArn": "p"}, {"Id": "a", "ProductArn": "p"}]});
        let n = normalise(&Judged::BatchUpdateFindings.read(&body).unwrap()).unwrap();
        assert_eq!(n.keys.len(), 2);
    }

    #[test]
    fn current_state_is_projected_and_ranked() {
        let f = json!({"AwsAccountId": "222222222222", "Severity": {"Normalized": 75},
                       "Workflow": {"Status": "NEW"}, "Resources": [{"Id": "big"}]});
        let e: Value = serde_json::to_value(finding_entry(
            &FindingKey::new("f", "p"),
            Some(&project(&f)),
        ))
        .unwrap();
        assert_eq!(e["Id"], "f");
        assert_eq!(e["account_id"], "222222222222");
        assert_eq!(e["severity_label"], "HIGH");
        assert_eq!(e["severity_rank"], 3);
        assert_eq!(e["workflow_status"], "NEW");
        assert!(e["current"].get("Resources").is_none());
        assert_eq!(e["current"]["Severity"]["Normalized"], 75);
        let e: Value =
            serde_json::to_value(finding_entry(&FindingKey::new("f", "p"), None)).unwrap();
        assert_eq!(e["current"], Value::Null);
        assert_eq!(e["severity_rank"], Value::Null);
    }

    #[test]
    fn a_caller_text_longer_than_its_limit_is_no_fact() {
        let ids = json!([{"Id": "f", "ProductArn": "arn:aws:securityhub:::product/x"}]);
        let long = |n: usize| "é".repeat(n);
        let cases = [
            (
                Judged::BatchUpdateFindings,
                json!({"FindingIdentifiers": ids, "Note": {"Text": "t", "UpdatedBy": long(513)}}),
                "/Note/UpdatedBy",
            ),
            (
                Judged::UpdateFindings,
                json!({"Filters": {}, "Note": {"Text": long(513), "UpdatedBy": "u"}}),
                "/Note/Text",
            ),
            (
                Judged::BatchUpdateFindings,
                json!({"FindingIdentifiers": ids, "Types": ["TTPs", format!("TTPs/{}", long(508))]}),
                "/Types/1",
            ),
            (
                Judged::BatchUpdateFindings,
                json!({"FindingIdentifiers": ids, "RelatedFindings": [{"Id": long(513), "ProductArn": "p"}]}),
                "/RelatedFindings/0/Id",
            ),
            (
                Judged::BatchUpdateFindings,
                json!({"FindingIdentifiers": ids, "UserDefinedFields": {"k": long(1025)}}),
                "/UserDefinedFields",
            ),
        ];
        for (op, body, at) in cases {
            let err = update_for(op, &body).expect_err(at);
            assert_eq!(err.path(), at);
            assert!(err.message().contains("characters"), "{}", err.message());
            assert!(err.message().len() < 2 * Violation::MESSAGE_CHARS, "{at}");
        }
        // At the limit, counted in characters (a 2-byte character is one).
        let at_limit = json!({"FindingIdentifiers": ids, "Note": {"Text": long(512), "UpdatedBy": long(512)},
            "Types": [format!("TTPs/{}", long(507))], "UserDefinedFields": {long(128): long(1024)}});
        let u = update_for(Judged::BatchUpdateFindings, &at_limit).unwrap();
        assert_eq!(u.to_value()["note"]["updated_by"], json!(long(512)));
    }
}
