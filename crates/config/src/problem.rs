//! One problem found in the configuration, with where it is.

use std::fmt;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Accepted, but the user should know (an ignored field, an extension in use).
    Warning,
    /// The configuration is refused.
    Error,
}

/// A problem in the configuration: `FILE: KIND/NAME: spec.path.to.field: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// The file the resource came from, or `-` when not from a file.
    pub file: String,
    /// `VirtualNode`, `Route`, ... or `-` when the resource kind is unknown.
    pub kind: String,
    /// The resource name, or `-`.
    pub name: String,
    /// Field path inside the resource, e.g. `spec.httpRoute.action.weightedTargets[1].weight`.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}/{}: {}: ",
            self.file, self.kind, self.name, self.path
        )?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.reason)
    }
}

impl Problem {
    /// An error about `path` in resource `kind/name` of `file`.
    pub fn error(
        file: impl Into<String>,
        kind: impl Into<String>,
        name: impl Into<String>,
        path: impl Into<String>,
        reason: impl Into<String>,
    ) -> Problem {
        Problem {
            severity: Severity::Error,
            file: file.into(),
            kind: kind.into(),
            name: name.into(),
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A warning about `path` in resource `kind/name` of `file`.
    pub fn warning(
        file: impl Into<String>,
        kind: impl Into<String>,
        name: impl Into<String>,
        path: impl Into<String>,
        reason: impl Into<String>,
    ) -> Problem {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(file, kind, name, path, reason)
        }
    }

    /// True for [`Severity::Error`].
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}
