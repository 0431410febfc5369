//! The VM document (placeholder types; the schema engineer replaces this file).
#![warn(missing_docs)]
use serde::{Deserialize, Serialize};

/// An HCS v2 ComputeSystem document (LCOW subset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ComputeSystem {
    /// Owner of the VM.
    #[serde(default)]
    pub owner: String,
}
