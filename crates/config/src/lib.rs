//! App Mesh resources read offline: serde types, loading, validation with every problem at once,
//! and compilation into the immutable [`Snapshot`] one proxy runs.

// `Problem` is the error of config-time functions only, never of the request path, and the API
// hands it out by value; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod compile;
mod import;
mod load;
pub mod model;
mod problem;
pub mod snapshot;
mod summary;
mod validate;

use std::path::PathBuf;

pub use compile::{RESOURCE_ARN_ENV, Selector, compile};
pub use load::{Kind, Loaded, Resource, Resources, Spec, load, load_str};
pub use problem::{Problem, Severity};
pub use snapshot::*;
pub use validate::{
    HEALTH_INTERVAL_MS, HEALTH_THRESHOLD, HEALTH_TIMEOUT_MS, MAX_HEADER_MATCHES, MAX_PATH_LEN,
    MAX_PRIORITY, MAX_QUERY_PARAMETERS, MAX_WEIGHT, MAX_WEIGHTED_TARGETS, UNSUPPORTED, validate,
};

/// A compiled snapshot and the warnings met on the way.
#[derive(Debug, Clone)]
pub struct Built {
    pub snapshot: Snapshot,
    /// Fields accepted but not honoured, extensions in use.
    pub warnings: Vec<Problem>,
}

/// Loads, validates and compiles in one call. `Err` holds every error (no warnings), sorted by
/// file and then in the order found.
pub fn build(paths: &[PathBuf], sel: &Selector) -> Result<Built, Vec<Problem>> {
    finish(load(paths), sel)
}

/// [`build`] for a spec held in memory (the `demo` command's embedded YAML). `name` stands for
/// the file name in problems; its extension picks JSON or YAML.
pub fn build_from_str(name: &str, text: &str, sel: &Selector) -> Result<Built, Vec<Problem>> {
    finish(load_str(name, text), sel)
}

fn finish(loaded: Loaded, sel: &Selector) -> Result<Built, Vec<Problem>> {
    let mut problems = loaded.problems;
    problems.extend(validate(&loaded.resources));
    let (mut errors, warnings): (Vec<Problem>, Vec<Problem>) =
        problems.into_iter().partition(Problem::is_error);
    if !errors.is_empty() {
        // Stable: within one file, the order found is kept.
        errors.sort_by(|a, b| a.file.cmp(&b.file));
        return Err(errors);
    }
    let snapshot = compile(&loaded.resources, sel)?;
    Ok(Built { snapshot, warnings })
}
