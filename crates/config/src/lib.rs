//! App Mesh resources read offline: serde types, loading, validation with every problem at once,
//! and compilation into the immutable [`Snapshot`] one proxy runs.

mod problem;
pub mod snapshot;

pub use problem::{Problem, Severity};
pub use snapshot::*;
