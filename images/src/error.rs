//! The crate's error type: every variant renders as one line saying what failed and what to do.

use std::io;
use std::path::Path;

/// Everything that can go wrong while provisioning. `Display` is a single line: what failed,
/// then (after `; `) what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A host tool the crate needs is not installed.
    #[error("host tool `{tool}` not found; {hint}")]
    MissingTool { tool: String, hint: String },
    /// A host command ran but failed.
    #[error("`{command}` failed: {detail}; {hint}")]
    Command {
        command: String,
        detail: String,
        hint: String,
    },
    /// Something could not be found or resolved (a kernel version, a package, a file in a package).
    #[error("{what}; {hint}")]
    NotFound { what: String, hint: String },
    /// An input (path, version string, kernel image) is not what it should be.
    #[error("{what}; {hint}")]
    Invalid { what: String, hint: String },
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn not_found(what: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::NotFound {
            what: what.into(),
            hint: hint.into(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            hint: hint.into(),
        }
    }
}

/// Attach a description to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

/// Shorthand for the common "verb path" context.
pub(crate) fn at(verb: &str, path: &Path) -> impl FnOnce() -> String {
    let s = format!("{verb} {}", path.display());
    move || s
}
