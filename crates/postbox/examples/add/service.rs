//! The `Add` service both programs are built from: the textbook RPC example.

use serde::{Deserialize, Serialize};

/// Why an addition failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum AddError {
    /// The sum does not fit an `i64`.
    Overflow,
}

/// Adds numbers, in another process.
#[postbox::service]
pub(crate) trait Add {
    /// `a + b`, or `Overflow`.
    fn add(&self, a: i64, b: i64) -> Result<i64, AddError>;
    /// The sum of all of them, after `delay_ms` (to show a server dying mid-call).
    fn sum(&self, numbers: Vec<i64>, delay_ms: u64) -> i64;
}

/// The port the server serves `Add` on.
pub(crate) const NAME: &str = "examples/add";
