//! Finding identity, the bottom of the module graph: what names one finding across every
//! stage (request model, enrichment cache, shared cache, policy input, audit). It imports
//! nothing from the crate, so any module may use it.

use serde::Serialize;

/// One finding, as Security Hub names it: its `Id` and the `ProductArn` of the product that
/// reported it (ids are only unique per product).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FindingKey {
    pub id: String,
    pub product_arn: String,
}

impl FindingKey {
    pub fn new(id: impl Into<String>, product_arn: impl Into<String>) -> FindingKey {
        FindingKey {
            id: id.into(),
            product_arn: product_arn.into(),
        }
    }
}
