//! What the output formats share: the scenario headline, the one name sanitiser, and small
//! conversions of report fields.

use std::path::Path;
use std::time::Duration;

use crate::report::ScenarioReport;

/// Makes `name` fit a format's character set: each character `allowed` rejects becomes `_`, and
/// an empty result becomes `if_empty`. The one sanitiser behind KCIDB's origins, ids, test path
/// segments and architecture names (each format passes its own rule).
pub fn sanitize(name: &str, allowed: impl Fn(char) -> bool, if_empty: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .collect();
    if s.is_empty() {
        if_empty.to_string()
    } else {
        s
    }
}

/// What a failed or errored scenario's one-line summary says: its first splat (the kernel's own
/// evidence), else its first problem. Problems and splats are separate lists in the report.
pub(crate) fn headline(s: &ScenarioReport) -> Option<String> {
    match (s.splats.first(), s.problems.first()) {
        (Some(f), _) => Some(format!(
            "{} during '{}': {}",
            f.splat.kind.as_str(),
            f.step,
            f.splat.first_line
        )),
        (None, Some(p)) => Some(first_line_of(p).to_string()),
        (None, None) => None,
    }
}

/// The last component of a path: reports carry no absolute local paths.
pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(crate) fn first_line_of(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// A duration from seconds that may come from a hand-edited report: None if negative, NaN or
/// too large (`Duration::from_secs_f64` would panic).
pub(crate) fn seconds(s: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(s).ok()
}
