//! Finding identity and vocabulary, the bottom of the module graph: what names one finding
//! across every stage (request model, enrichment cache, shared cache, policy input, audit), and
//! the severity scale every stage compares on (labels, ranks, the mappings from
//! `Severity.Normalized` and from OCSF's `severity_id`). It imports nothing from the crate, so
//! any module may use it.

use std::sync::Arc;

use serde::Serialize;

/// One finding, as Security Hub names it: its `Id` and the `ProductArn` of the product that
/// reported it (ids are only unique per product). The texts are shared, not owned: a key is
/// cloned into the lookup queue, the in-flight and waiting maps, the cache and the audit
/// record, and its texts become the policy input's `id` and `product_arn` as they are.
///
/// A key is hashed once, when it is made: a finding passes through about ten maps on its way
/// (request de-duplication, cache, in-flight, written, lookup results, write-through), and
/// hashing its two texts in each was 4–7% of a request's instructions. The hash is SipHash
/// with this process's random keys, as every std map uses, so caller-chosen identifiers cannot
/// be picked to collide; `Hash` feeds the maps that one number.
///
/// The key is one shared allocation, so each of those clones (and drops) is one reference
/// count, not one per text: a cold 100-finding update clones keys about two thousand times.
#[derive(Debug, Clone)]
pub struct FindingKey(Arc<KeyTexts>);

/// What a key names; reached through the key (`key.id`, `key.product_arn`).
#[derive(Debug)]
pub struct KeyTexts {
    /// Read, never assigned: `hash` was made from the texts `new` was given.
    pub id: Arc<str>,
    pub product_arn: Arc<str>,
    hash: u64,
}

impl std::ops::Deref for FindingKey {
    type Target = KeyTexts;
    fn deref(&self) -> &KeyTexts {
        &self.0
    }
}

impl Serialize for FindingKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("FindingKey", 2)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("product_arn", &self.product_arn)?;
        st.end()
    }
}

/// The keyed hasher of every FindingKey in this process (one draw of std's random keys).
fn key_hasher() -> &'static std::collections::hash_map::RandomState {
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default)
}

impl FindingKey {
    pub fn new(id: impl Into<Arc<str>>, product_arn: impl Into<Arc<str>>) -> FindingKey {
        let (id, product_arn): (Arc<str>, Arc<str>) = (id.into(), product_arn.into());
        // ProductArn first, as `KeyMaker` hashes it once for a run of one product's ids.
        let hash = std::hash::BuildHasher::hash_one(key_hasher(), (&*product_arn, &*id));
        FindingKey(Arc::new(KeyTexts {
            id,
            product_arn,
            hash,
        }))
    }
}

/// Makes the keys of a list of findings, such as a request's identifiers. Consecutive findings
/// of one product (the usual case: a 100-finding update names one ProductArn 100 times) share
/// one copy of its text, and its part of the hash is computed once; every key equals, and
/// hashes as, the one `FindingKey::new` makes from the same texts.
#[derive(Default)]
pub struct KeyMaker {
    product: Option<(Arc<str>, std::hash::DefaultHasher)>,
}

impl KeyMaker {
    pub fn key(&mut self, id: &str, product_arn: &str) -> FindingKey {
        use std::hash::{BuildHasher, Hash, Hasher};
        let (arn, prefix) = match &mut self.product {
            Some((arn, prefix)) if **arn == *product_arn => (arn, prefix),
            slot => {
                let mut prefix = key_hasher().build_hasher();
                product_arn.hash(&mut prefix);
                let (arn, prefix) = slot.insert((Arc::from(product_arn), prefix));
                (&mut *arn, prefix)
            }
        };
        let mut hasher = prefix.clone();
        id.hash(&mut hasher);
        FindingKey(Arc::new(KeyTexts {
            id: Arc::from(id),
            product_arn: arn.clone(),
            hash: hasher.finish(),
        }))
    }
}

impl PartialEq for FindingKey {
    fn eq(&self, other: &FindingKey) -> bool {
        // Keys of one request or one answer share their texts: comparing the pointers first
        // spares reading two strings from memory that is often cold (the journal's keys).
        Arc::ptr_eq(&self.0, &other.0)
            || (self.hash == other.hash
                && (Arc::ptr_eq(&self.id, &other.id) || self.id == other.id)
                && (Arc::ptr_eq(&self.product_arn, &other.product_arn)
                    || self.product_arn == other.product_arn))
    }
}

impl Eq for FindingKey {}

impl std::hash::Hash for FindingKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for FindingKey {
    fn partial_cmp(&self, other: &FindingKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// By Id, then ProductArn: the order of the texts, whatever the hashes.
impl Ord for FindingKey {
    fn cmp(&self, other: &FindingKey) -> std::cmp::Ordering {
        (&self.id, &self.product_arn).cmp(&(&other.id, &other.product_arn))
    }
}

/// The hasher of maps keyed by FindingKey: the key's own hash, as is. (A map hashing that
/// number again with SipHash would pay a second keyed hash per operation for nothing.)
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // FindingKey writes one u64; this is for completeness, never for strings of a caller.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type KeyHash = std::hash::BuildHasherDefault<KeyHasher>;
/// A map keyed by finding.
pub type KeyMap<V> = std::collections::HashMap<FindingKey, V, KeyHash>;
/// A set of findings.
pub type KeySet = std::collections::HashSet<FindingKey, KeyHash>;

/// Severity labels in rank order; the rank is what "lower" means.
pub const SEVERITY_LABELS: [&str; 5] = ["INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"];

/// Whether `text` is an AWS account id as AWS writes one: exactly 12 ASCII digits.
pub fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())
}

pub fn label_rank(label: &str) -> Option<u64> {
    SEVERITY_LABELS
        .iter()
        .position(|l| *l == label)
        .map(|p| p as u64)
}

/// The label Security Hub derives from `Severity.Normalized` (0-100) when no label is given.
pub fn label_for_normalized(n: i64) -> Option<&'static str> {
    Some(match n {
        0 => "INFORMATIONAL",
        1..=39 => "LOW",
        40..=69 => "MEDIUM",
        70..=89 => "HIGH",
        90..=100 => "CRITICAL",
        _ => return None,
    })
}

/// OCSF `severity_id` (BatchUpdateFindingsV2) as a label and rank, or None for an id OCSF
/// does not define. Fatal counts as CRITICAL; Unknown and Other rank lowest, so setting them
/// is never a raise.
pub fn v2_severity(id: i64) -> Option<(&'static str, u64)> {
    Some(match id {
        0 => ("UNKNOWN", 0),
        1 => ("INFORMATIONAL", 0),
        2 => ("LOW", 1),
        3 => ("MEDIUM", 2),
        4 => ("HIGH", 3),
        5 | 6 => ("CRITICAL", 4),
        99 => ("OTHER", 0),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash made once stands for the texts: equal texts make equal keys whatever shared
    /// them, a shifted boundary between Id and ProductArn makes another key, and order is the
    /// texts' order, not the hashes'.
    #[test]
    fn a_key_is_its_texts() {
        let a = FindingKey::new("ab", "c");
        let same = FindingKey::new(String::from("ab"), Arc::<str>::from("c"));
        let shifted = FindingKey::new("a", "bc");
        assert_eq!(a, same);
        assert_eq!(a.hash, same.hash);
        assert_ne!(a, shifted);
        assert_ne!(a.hash, shifted.hash);
        let mut set = KeySet::default();
        assert!(set.insert(a.clone()));
        assert!(!set.insert(same));
        assert!(set.insert(shifted.clone()));
        assert_eq!(set.len(), 2);
        let mut keys = [FindingKey::new("b", "a"), a.clone(), shifted.clone()];
        keys.sort();
        let texts: Vec<(&str, &str)> = keys.iter().map(|k| (&*k.id, &*k.product_arn)).collect();
        assert_eq!(texts, [("a", "bc"), ("ab", "c"), ("b", "a")]);
    }

    /// A key from the maker is the key `new` makes from the same texts, however the products
    /// alternate; consecutive findings of one product share its text.
    #[test]
    fn made_keys_are_new_keys() {
        let texts = [
            ("a", "p"),
            ("b", "p"),
            ("a", "q"),
            ("ab", "c"),
            ("a", "bc"),
            ("", "p"),
            ("c", "p"),
        ];
        let mut maker = KeyMaker::default();
        let made: Vec<FindingKey> = texts.iter().map(|(id, arn)| maker.key(id, arn)).collect();
        for (key, (id, arn)) in made.iter().zip(texts) {
            let new = FindingKey::new(id, arn);
            assert_eq!(*key, new);
            assert_eq!(key.hash, new.hash, "{id:?} {arn:?}");
        }
        assert!(Arc::ptr_eq(&made[0].product_arn, &made[1].product_arn));
        assert!(!Arc::ptr_eq(&made[1].product_arn, &made[6].product_arn));
        assert_ne!(made[3].hash, made[4].hash);
    }

    proptest::proptest! {
        #[test]
        fn made_keys_hash_as_new_keys(texts in proptest::collection::vec(
            ("[a-c]{0,3}", "[p-q]{0,2}"), 0..12)) {
            let mut maker = KeyMaker::default();
            for (id, arn) in &texts {
                let (made, new) = (maker.key(id, arn), FindingKey::new(id.as_str(), arn.as_str()));
                proptest::prop_assert_eq!(made.hash, new.hash);
                proptest::prop_assert_eq!(made, new);
            }
        }
    }

    #[test]
    fn the_mappings_land_on_the_scale() {
        for n in 0..=100 {
            let label = label_for_normalized(n).expect("0-100 all have a label");
            assert!(label_rank(label).is_some(), "{n} -> {label}");
        }
        assert_eq!(label_for_normalized(101), None);
        assert_eq!(label_for_normalized(-1), None);
        for id in [1, 2, 3, 4, 5, 6] {
            let (label, rank) = v2_severity(id).expect("a defined severity_id");
            assert_eq!(label_rank(label), Some(rank), "severity_id {id}");
        }
        assert_eq!(v2_severity(0), Some(("UNKNOWN", 0)));
        assert_eq!(v2_severity(99), Some(("OTHER", 0)));
        assert_eq!(v2_severity(7), None);
    }
}
