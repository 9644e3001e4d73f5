//! `hubgate check`'s reading of `audit.mask`: a pointer that names nothing a record has
//! erases nothing. (The policy set's own lints are `policy::lint`, run by every load.)

use serde_json::Value;

use crate::identity::Role;
use crate::policy::input::Update;
use crate::policy::lint::{shape, unknown_member};

/// The decision record's shape, as the writer serialises it, with the input document and the
/// normalised update in place: what an `audit.mask` pointer can name.
fn record_shape() -> Value {
    use crate::audit::{Partial, Record, RecordError, RecordPrincipal};
    let record = Record {
        error: Some(RecordError {
            code: "".into(),
            message: String::new(),
        }),
        partial: Some(Partial::default()),
        principal: Some(RecordPrincipal {
            role: Some(Role::Member),
            ..RecordPrincipal::default()
        }),
        update: Some(Update::default().to_value()),
        settling: Some(Vec::new()),
        withheld: Some(Vec::new()),
        ..Record::default()
    };
    let mut record = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(members) = &mut record {
        members.insert("input".into(), shape());
    }
    record
}

/// The `audit.mask` pointers that name a member the record cannot have (`/update/notes/text`):
/// such a pointer erases nothing, silently, and what it was meant to keep out of the log stays.
/// Each is returned with the members known where it goes wrong. Below a member whose content
/// depends on the request (the body, headers, attributes, lists) nothing is checked.
pub fn unmatchable_mask_pointers(mask: &[String]) -> Vec<(String, Vec<String>)> {
    let shape = record_shape();
    mask.iter()
        .filter_map(|pointer| {
            let path: Vec<String> = pointer
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            unknown_member(&shape, &path).map(|(_, known)| (pointer.clone(), known))
        })
        .collect()
}
