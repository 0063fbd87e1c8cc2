//! KCIDB v4.3 JSON, what `kcidb-submit` sends to KernelCI's common results database. The
//! document is typed ([`Document`] down to [`SplatMisc`]): what vanish writes is what these structs
//! declare, an optional field is an `Option` that is left out when `None`, and every string is a
//! [`Text`], which cannot hold a NUL character. So the schema's "no `null`, no NUL" holds by
//! construction (checked against `kernelci/kcidb-io`; CI runs its validator on real runs).
//!
//! - one checkout, keyed by the kernel release (`uname -r`),
//! - one build (`architecture` aarch64 or x86_64, `config_name` `debian` for Debian's kernels,
//!   `user` otherwise, `valid: true`: v4 builds have `valid`, not a status; v5 turns it into
//!   `status: PASS` when it upgrades the data),
//! - a `boot` test, PASS when the driver bound in some scenario,
//! - one test per scenario, path `vanish.MODEL.SCENARIO`.
//!
//! Test paths also satisfy v5's stricter path rule (non-empty `[A-Za-z0-9_-]` segments), so
//! KCIDB can upgrade the data to v5 without refusing it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::text::{file_name, headline, sanitize, seconds};
use crate::report::{Report, ScenarioReport, Verdict};

/// The KCIDB I/O schema version written.
pub const KCIDB_VERSION: (u32, u32) = (4, 3);

/// KCIDB's `maxLength` for every `log_excerpt`, in characters.
pub const KCIDB_LOG_EXCERPT_MAX: usize = 16384;

/// What KCIDB's checkout says beyond the kernel release: who submits (`origin`) and which
/// tree and commit the kernel was built from, when known.
#[derive(Clone, Debug)]
pub struct KcidbMeta {
    pub origin: String,
    pub git_commit: Option<String>,
    pub git_url: Option<String>,
    pub tree_name: Option<String>,
}

impl Default for KcidbMeta {
    fn default() -> Self {
        KcidbMeta {
            origin: "vanish".into(),
            git_commit: None,
            git_url: None,
            tree_name: None,
        }
    }
}

/// A KCIDB string: the schema forbids NUL characters anywhere, so making one drops them.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(s.replace('\0', ""))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        if s.contains('\0') {
            Text(s.replace('\0', ""))
        } else {
            Text(s)
        }
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text::from(s.as_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        String::deserialize(d).map(Text::from)
    }
}

/// A whole KCIDB submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub version: Version,
    pub checkouts: Vec<Checkout>,
    pub builds: Vec<Build>,
    pub tests: Vec<Test>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

/// The kernel source: one per kernel release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkout {
    pub id: Text,
    pub origin: Text,
    pub comment: Text,
    pub valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit_hash: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_repository_url: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_name: Option<Text>,
    pub misc: CheckoutMisc,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutMisc {
    pub kernel_release: Text,
}

/// The kernel binary: one per release, architecture and config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub id: Text,
    pub origin: Text,
    pub checkout_id: Text,
    pub architecture: Text,
    pub config_name: Text,
    pub comment: Text,
    pub valid: bool,
    pub misc: BuildMisc,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildMisc {
    pub kernel_image: Text,
    pub kernel_release: Text,
}

/// One test run: the boot, or one scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Test {
    pub id: Text,
    pub origin: Text,
    pub build_id: Text,
    pub path: Text,
    /// RFC 3339 in UTC, microseconds (`2026-06-12T03:15:00.123456+00:00`).
    pub start_time: Text,
    pub environment: Environment,
    pub status: Status,
    pub comment: Text,
    /// Seconds; left out when the report's duration is not a finite, non-negative number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// At most [`KCIDB_LOG_EXCERPT_MAX`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_excerpt: Option<Text>,
    pub misc: TestMisc,
}

/// A test's outcome: the three of KCIDB's six statuses a vanish verdict maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Fail,
    Error,
}

impl From<Verdict> for Status {
    fn from(v: Verdict) -> Status {
        match v {
            Verdict::Pass => Status::Pass,
            Verdict::Fail => Status::Fail,
            Verdict::Error => Status::Error,
        }
    }
}

/// Where the tests ran: QEMU and vanish's card.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    pub comment: Text,
    pub misc: EnvironmentMisc,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentMisc {
    pub qemu_version: Text,
    pub vanish_version: Text,
    pub model: Text,
    pub guest_arch: Text,
}

/// A test's `misc`: the scenario's findings (the boot test has none when no boot scenario
/// ran) and, on the boot test, the run's duration and rig error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestMisc {
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<ScenarioMisc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rig_error: Option<Text>,
}

/// What report.json says of a scenario, minus its kernel log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioMisc {
    pub scenario: Text,
    pub verdict: Text,
    pub result: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_runs: Option<Text>,
    pub driver_bound: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<Text>,
    pub problems: Vec<Text>,
    pub splats: Vec<SplatMisc>,
    /// What the guest and the card reported: free-form JSON, the one untyped part, so its
    /// `null`s and NULs are dropped when it is made ([`free_form`]).
    pub observations: BTreeMap<Text, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<Text>,
}

/// One unique splat of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplatMisc {
    pub fingerprint: Text,
    pub kind: Text,
    pub status: Text,
    pub subsystem: Text,
    pub phases: Vec<Text>,
    pub count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_in_runs: Option<u32>,
    pub step: Text,
    pub first_line: Text,
    pub call_trace: Vec<Text>,
    pub console_log_line: usize,
}

/// KCIDB's character set for origins and architectures: `[a-z0-9_]`.
fn kcidb_word(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// Whether `origin` is a valid KCIDB origin (`^[a-z0-9_]+$`).
pub fn valid_origin(origin: &str) -> bool {
    !origin.is_empty() && origin.chars().all(kcidb_word)
}

/// The report as a KCIDB v4.3 document. An invalid `origin` is made valid (lowercased, other
/// characters replaced by `_`); [`super::write_outputs`] refuses one instead. Every call makes new
/// test ids (they carry the current time), so a nightly re-run of the same kernel adds test runs
/// under the same checkout and build rather than overwriting the last night's.
pub fn kcidb(report: &Report, meta: &KcidbMeta) -> Document {
    kcidb_at(report, meta, SystemTime::now())
}

/// [`kcidb`] as if written at `now`.
fn kcidb_at(report: &Report, meta: &KcidbMeta, now: SystemTime) -> Document {
    let version = Version {
        major: KCIDB_VERSION.0,
        minor: KCIDB_VERSION.1,
    };
    if report.kernel.is_empty() {
        // No kernel was identified (the run stopped before boot): nothing to say about any
        // checkout, and a made-up one would pollute the database.
        return Document {
            version,
            checkouts: Vec::new(),
            builds: Vec::new(),
            tests: Vec::new(),
        };
    }
    let origin = Text::from(sanitize(
        &meta.origin.to_ascii_lowercase(),
        kcidb_word,
        "vanish",
    ));
    let release = report.kernel.as_str();
    let arch = sanitize(&report.arch_name().to_ascii_lowercase(), kcidb_word, "");
    let config = if is_debian_release(release) {
        "debian"
    } else {
        "user"
    };
    let model = path_segment(&report.model);
    let kernel_image = file_name(&report.kernel_image);

    // The part of an id after `origin:`: printable, no whitespace.
    let release_id = sanitize(release, |c| !c.is_control() && !c.is_whitespace(), "");
    let checkout_id = format!("{origin}:{release_id}", origin = origin.as_str());
    let build_id = format!("{checkout_id}:{arch}:{config}");
    // Before 1970 or past 9999 only on a machine whose clock is broken; the epoch then.
    let now = Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH);
    let run_key = format!("{build_id}:{model}:{}", compact_utc(now));
    let ran_for = seconds(report.duration_s)
        .and_then(|d| SignedDuration::try_from(d).ok())
        .unwrap_or(SignedDuration::ZERO);
    let started = rfc3339_utc(now.checked_sub(ran_for).unwrap_or(now));

    let checkout = Checkout {
        id: Text::from(&checkout_id),
        origin: origin.clone(),
        comment: Text::from(format!("Linux {release}")),
        valid: true,
        git_commit_hash: meta.git_commit.as_deref().map(Text::from),
        git_repository_url: meta.git_url.as_deref().map(Text::from),
        tree_name: meta.tree_name.as_deref().map(Text::from),
        misc: CheckoutMisc {
            kernel_release: Text::from(release),
        },
    };
    let build = Build {
        id: Text::from(&build_id),
        origin: origin.clone(),
        checkout_id: Text::from(&checkout_id),
        architecture: Text::from(&arch),
        config_name: Text::from(config),
        comment: Text::from(format!(
            "Linux {release} {arch} ({config} kernel {kernel_image})"
        )),
        valid: true,
        misc: BuildMisc {
            kernel_image: Text::from(&kernel_image),
            kernel_release: Text::from(release),
        },
    };
    let environment = Environment {
        comment: Text::from(format!(
            "QEMU {} ({}) with vanish {}'s emulated {} card",
            report.qemu_version, arch, report.vanish_version, report.model
        )),
        misc: EnvironmentMisc {
            qemu_version: Text::from(&report.qemu_version),
            vanish_version: Text::from(&report.vanish_version),
            model: Text::from(&report.model),
            guest_arch: Text::from(&arch),
        },
    };
    let test = |id: String, path: String, status: Status, comment: String| Test {
        id: Text::from(id),
        origin: origin.clone(),
        build_id: Text::from(&build_id),
        path: Text::from(path),
        start_time: Text::from(&started),
        environment: environment.clone(),
        status,
        comment: Text::from(comment),
        duration: None,
        log_excerpt: None,
        misc: TestMisc {
            scenario: None,
            duration_s: None,
            rig_error: None,
        },
    };

    let mut tests = Vec::new();
    // One boot test: the boot scenario's own outcome (or the rig's, if it never got there).
    let boot_scenario = report.scenarios.iter().find(|s| s.name == "boot");
    let (boot_status, boot_excerpt) = match boot_scenario {
        // A first probe that splatted and never bound failed the boot; the rig did not.
        Some(s) if s.verdict == Verdict::Error && !s.driver_bound && !s.splats.is_empty() => {
            (Status::Fail, scenario_excerpt(s))
        }
        Some(s) => (Status::from(s.verdict), scenario_excerpt(s)),
        None => boot_outcome(report),
    };
    let mut boot = test(
        format!("{run_key}:boot"),
        "boot".to_string(),
        boot_status,
        format!("{release} boots and {} binds to the card", report.model),
    );
    boot.log_excerpt = boot_excerpt.map(|e| excerpt(&e));
    boot.misc = TestMisc {
        scenario: boot_scenario.map(scenario_misc),
        duration_s: Some(report.duration_s).filter(|d| d.is_finite()),
        rig_error: report.error.as_deref().map(Text::from),
    };
    tests.push(boot);

    for (i, s) in report
        .scenarios
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name != "boot")
    {
        let seg = path_segment(&s.name);
        let comment = match headline(s) {
            Some(h) => format!("{}: {h}", s.name),
            None => format!("{}: {}", s.name, s.verdict.as_str()),
        };
        let mut t = test(
            format!("{run_key}:{i}:{seg}"),
            format!("vanish.{model}.{seg}"),
            Status::from(s.verdict),
            comment,
        );
        t.duration = seconds(s.duration_s).map(|d| d.as_secs_f64());
        t.log_excerpt = scenario_excerpt(s).map(|e| excerpt(&e));
        t.misc.scenario = Some(scenario_misc(s));
        tests.push(t);
    }

    Document {
        version,
        checkouts: vec![checkout],
        builds: vec![build],
        tests,
    }
}

/// The boot test: PASS once the driver bound in any scenario; FAIL if it never bound and a
/// scenario failed (e.g. the probe splatted); otherwise ERROR (the rig could not tell).
fn boot_outcome(report: &Report) -> (Status, Option<String>) {
    if report.scenarios.iter().any(|s| s.driver_bound) {
        return (Status::Pass, None);
    }
    let mut excerpt = String::new();
    if let Some(e) = &report.error {
        let _ = writeln!(excerpt, "{e}");
    }
    for s in &report.scenarios {
        if let Some(e) = scenario_excerpt(s) {
            for line in e.lines() {
                let _ = writeln!(excerpt, "{}: {line}", s.name);
            }
        }
    }
    let failed = report
        .scenarios
        .iter()
        .any(|s| s.verdict == Verdict::Fail || !s.splats.is_empty());
    if excerpt.is_empty() {
        excerpt = "the driver never bound to the card".to_string();
    }
    (
        if failed { Status::Fail } else { Status::Error },
        Some(excerpt),
    )
}

/// The splats' first lines (kind and step too), then the problems.
fn scenario_excerpt(s: &ScenarioReport) -> Option<String> {
    let mut e = String::new();
    for f in &s.splats {
        let _ = writeln!(
            e,
            "[{} during '{}'] {}",
            f.splat.kind.as_str(),
            f.step,
            f.splat.first_line
        );
    }
    for p in &s.problems {
        let _ = writeln!(e, "{p}");
    }
    (!e.is_empty()).then_some(e)
}

fn scenario_misc(s: &ScenarioReport) -> ScenarioMisc {
    let splats = s
        .fingerprints
        .iter()
        .map(|f| SplatMisc {
            fingerprint: Text::from(&f.fingerprint),
            kind: Text::from(f.kind.as_str()),
            status: Text::from(f.status.as_str()),
            subsystem: Text::from(f.subsystem.as_str()),
            phases: f.phases.iter().map(|p| Text::from(p.as_str())).collect(),
            count: f.count,
            seen_in_runs: f.seen_in_runs,
            step: Text::from(&f.step),
            first_line: Text::from(&f.headline),
            call_trace: f.frames.iter().map(Text::from).collect(),
            console_log_line: f.first_log_line,
        })
        .collect();
    ScenarioMisc {
        scenario: Text::from(&s.name),
        verdict: Text::from(s.verdict.as_str()),
        result: Text::from(s.result.as_str()),
        failed_runs: s.runs.map(|r| Text::from(format!("{}/{}", r.failed, r.of))),
        driver_bound: s.driver_bound,
        pci_address: s.pci_address.as_deref().map(Text::from),
        problems: s.problems.iter().map(Text::from).collect(),
        splats,
        observations: s
            .observations
            .iter()
            .filter_map(|(k, v)| Some((Text::from(k), free_form(v)?)))
            .collect(),
        screenshot: s.screenshot.as_deref().map(|p| Text::from(file_name(p))),
    }
}

/// Free-form JSON as KCIDB takes it: `None` for `null`, and within arrays and objects the
/// `null`s left out and NULs dropped from strings and keys (the schema allows neither, not even
/// in `misc`).
fn free_form(v: &Value) -> Option<Value> {
    Some(match v {
        Value::Null => return None,
        Value::String(s) => Value::String(s.replace('\0', "")),
        Value::Array(a) => Value::Array(a.iter().filter_map(free_form).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .filter_map(|(k, v)| Some((k.replace('\0', ""), free_form(v)?)))
                .collect(),
        ),
        other => other.clone(),
    })
}

/// Debian's kernel releases look like `6.1.0-40-arm64` (bookworm) or `6.12.57+deb13-arm64`
/// (trixie on).
fn is_debian_release(release: &str) -> bool {
    if release.contains("+deb") {
        return true;
    }
    let mut parts = release.splitn(3, '-');
    let (Some(version), Some(abi), Some(flavour)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    version.split('.').count() == 3
        && version
            .split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && !abi.is_empty()
        && abi.bytes().all(|b| b.is_ascii_digit())
        && [
            "arm64",
            "amd64",
            "cloud-arm64",
            "cloud-amd64",
            "rt-arm64",
            "rt-amd64",
        ]
        .contains(&flavour)
}

/// One segment of a test path: `[A-Za-z0-9_-]+` (`unbind-rebind#2` → `unbind-rebind_2`).
fn path_segment(name: &str) -> String {
    sanitize(
        name,
        |c| c.is_ascii_alphanumeric() || c == '-' || c == '_',
        "_",
    )
}

/// A log excerpt within KCIDB's length limit: cut with a `[...]` marker when longer.
fn excerpt(s: &str) -> Text {
    let max = KCIDB_LOG_EXCERPT_MAX;
    Text::from(match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => {
            const MARK: &str = "\n[...]";
            let keep = s[..cut]
                .char_indices()
                .nth(max - MARK.len())
                .map_or(cut, |(i, _)| i);
            format!("{}{MARK}", &s[..keep])
        }
    })
}

/// `2026-06-12T03:15:00.123456+00:00`: KCIDB's `start_time`, microseconds as before.
fn rfc3339_utc(t: Timestamp) -> String {
    format!("{:.6}", t.display_with_offset(Offset::UTC))
}

/// `20260612T031500.123456789Z`: the test ids' run key, nanoseconds so that two runs differ.
fn compact_utc(t: Timestamp) -> String {
    let d = Offset::UTC.to_datetime(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:09}Z",
        d.year(),
        d.month(),
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.subsec_nanosecond()
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::{LazyLock, Mutex};
    use std::time::Duration;

    use regex::Regex;
    use serde_json::json;

    use super::*;
    use crate::output::fixtures::*;
    use crate::splat::SplatKind;

    /// The document as the JSON written, for the schema checks below.
    fn doc_at(report: &Report, meta: &KcidbMeta, now: SystemTime) -> Value {
        serde_json::to_value(kcidb_at(report, meta, now)).expect("a KCIDB document serialises")
    }

    /// The keys KCIDB v4.3 allows on each object (`additionalProperties: false`) and those it
    /// requires.
    const CHECKOUT_KEYS: &[&str] = &[
        "id",
        "origin",
        "tree_name",
        "git_repository_url",
        "git_commit_hash",
        "git_commit_name",
        "git_repository_branch",
        "patchset_files",
        "patchset_hash",
        "message_id",
        "comment",
        "start_time",
        "contacts",
        "log_url",
        "log_excerpt",
        "valid",
        "misc",
    ];
    const BUILD_KEYS: &[&str] = &[
        "checkout_id",
        "id",
        "origin",
        "comment",
        "start_time",
        "duration",
        "architecture",
        "command",
        "compiler",
        "input_files",
        "output_files",
        "config_name",
        "config_url",
        "log_url",
        "log_excerpt",
        "valid",
        "misc",
    ];
    const TEST_KEYS: &[&str] = &[
        "build_id",
        "id",
        "origin",
        "environment",
        "path",
        "comment",
        "log_url",
        "log_excerpt",
        "status",
        "waived",
        "start_time",
        "duration",
        "output_files",
        "misc",
    ];
    const STATUSES: &[&str] = &["FAIL", "ERROR", "MISS", "PASS", "DONE", "SKIP"];

    /// A compiled regex, cached: the validator runs per object.
    fn re(pattern: &'static str) -> Regex {
        static CACHE: LazyLock<Mutex<HashMap<&'static str, Regex>>> =
            LazyLock::new(Default::default);
        let mut cache = CACHE.lock().expect("regex cache");
        cache
            .entry(pattern)
            .or_insert_with(|| Regex::new(pattern).expect("regex"))
            .clone()
    }

    fn no_nulls(v: &Value, at: &str) {
        match v {
            Value::Null => panic!("null at {at}"),
            Value::String(s) => assert!(!s.contains('\0'), "NUL character at {at}"),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, v)| no_nulls(v, &format!("{at}[{i}]"))),
            Value::Object(m) => m
                .iter()
                .for_each(|(k, v)| no_nulls(v, &format!("{at}.{k}"))),
            _ => {}
        }
    }

    fn check_object(o: &Value, allowed: &[&str], required: &[&str], what: &str) {
        let m = o
            .as_object()
            .unwrap_or_else(|| panic!("{what} is not an object"));
        for k in m.keys() {
            assert!(
                allowed.contains(&k.as_str()),
                "{what} has key '{k}' KCIDB v4.3 does not allow"
            );
        }
        for k in required {
            assert!(m.contains_key(*k), "{what} lacks required key '{k}'");
        }
        for k in ["id", "checkout_id", "build_id"] {
            if let Some(id) = m.get(k) {
                let id = id
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}.{k} is not a string"));
                assert!(
                    re(r"^[a-z0-9_]+:[^\x00\n]*$").is_match(id),
                    "{what}.{k} '{id}' is not origin:id"
                );
            }
        }
        if let Some(o) = m.get("origin") {
            assert!(
                valid_origin(o.as_str().expect("origin is a string")),
                "{what}.origin"
            );
        }
        if let Some(e) = m.get("log_excerpt") {
            assert!(
                e.as_str().expect("string").chars().count() <= KCIDB_LOG_EXCERPT_MAX,
                "{what}.log_excerpt too long"
            );
        }
        if let Some(t) = m.get("start_time") {
            assert!(
                re(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")
                    .is_match(t.as_str().expect("string")),
                "{what}.start_time {t}"
            );
        }
        if let Some(misc) = m.get("misc") {
            assert!(misc.is_object(), "{what}.misc must be an object");
        }
    }

    /// Checks `doc` against what KCIDB v4.3 requires (and v5's stricter test paths).
    pub(crate) fn validate_kcidb(doc: &Value) {
        no_nulls(doc, "$");
        let top = doc.as_object().expect("top level is an object");
        for k in top.keys() {
            assert!(
                [
                    "version",
                    "checkouts",
                    "builds",
                    "tests",
                    "issues",
                    "incidents"
                ]
                .contains(&k.as_str()),
                "top-level key {k}"
            );
        }
        assert_eq!(doc["version"], json!({"major": 4, "minor": 3}));
        let arr = |k: &str| {
            doc[k]
                .as_array()
                .unwrap_or_else(|| panic!("{k} is not an array"))
                .clone()
        };
        let (checkouts, builds, tests) = (arr("checkouts"), arr("builds"), arr("tests"));
        let mut ids = HashSet::new();
        let checkout_ids: HashSet<&str> =
            checkouts.iter().filter_map(|c| c["id"].as_str()).collect();
        for c in &checkouts {
            check_object(c, CHECKOUT_KEYS, &["id", "origin"], "checkout");
            assert!(ids.insert(c["id"].to_string()));
        }
        let build_ids: HashSet<&str> = builds.iter().filter_map(|b| b["id"].as_str()).collect();
        for b in &builds {
            check_object(b, BUILD_KEYS, &["checkout_id", "id", "origin"], "build");
            assert!(
                checkout_ids.contains(b["checkout_id"].as_str().expect("string")),
                "build links to no checkout"
            );
            let arch = b["architecture"].as_str().expect("architecture");
            assert!(re("^[a-z0-9_]*$").is_match(arch));
            assert!(b["valid"].is_boolean());
            assert!(ids.insert(b["id"].to_string()));
        }
        let path_re = re(r"^([a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*)?$");
        for t in &tests {
            check_object(t, TEST_KEYS, &["build_id", "id", "origin"], "test");
            assert!(
                build_ids.contains(t["build_id"].as_str().expect("string")),
                "test links to no build"
            );
            assert!(
                STATUSES.contains(&t["status"].as_str().expect("status")),
                "status {}",
                t["status"]
            );
            assert!(
                path_re.is_match(t["path"].as_str().expect("path")),
                "path {}",
                t["path"]
            );
            if let Some(d) = t.get("duration") {
                assert!(d.as_f64().is_some_and(|d| d >= 0.0));
            }
            if let Some(env) = t.get("environment") {
                for k in env.as_object().expect("environment object").keys() {
                    assert!(
                        ["comment", "misc"].contains(&k.as_str()),
                        "environment key {k}"
                    );
                }
            }
            assert!(ids.insert(t["id"].to_string()), "duplicate id {}", t["id"]);
        }
    }

    #[test]
    fn kcidb_matches_the_v4_3_schema() {
        let doc = doc_at(&sample(), &meta("vanish"), now());
        validate_kcidb(&doc);
        let checkout = &doc["checkouts"][0];
        assert_eq!(checkout["id"], "vanish:6.12.57+deb13-arm64");
        let build = &doc["builds"][0];
        assert_eq!(build["id"], "vanish:6.12.57+deb13-arm64:aarch64:debian");
        assert_eq!(build["architecture"], "aarch64");
        assert_eq!(build["config_name"], "debian");
        assert_eq!(build["valid"], true);

        let tests = doc["tests"].as_array().expect("tests");
        assert_eq!(tests.len(), 3);
        let summary: Vec<(&str, &str)> = tests
            .iter()
            .map(|t| {
                (
                    t["path"].as_str().unwrap_or(""),
                    t["status"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("boot", "PASS"),
                ("vanish.hibmc.unbind-rebind_2", "FAIL"),
                ("vanish.hibmc.surprise-remove", "ERROR")
            ]
        );
        assert_eq!(
            tests[0]["id"],
            "vanish:6.12.57+deb13-arm64:aarch64:debian:hibmc:20260612T032247.123456789Z:boot"
        );
        assert_eq!(tests[1]["id"], "vanish:6.12.57+deb13-arm64:aarch64:debian:hibmc:20260612T032247.123456789Z:1:unbind-rebind_2");
        // The run started duration_s (95.25 s) before now.
        assert_eq!(tests[1]["start_time"], "2026-06-12T03:21:11.873456+00:00");
        assert_eq!(tests[1]["duration"], 12.5);
        assert!(
            tests[2].get("duration").is_none(),
            "NaN durations are left out"
        );
        assert_eq!(
            tests[1]["log_excerpt"],
            format!(
                "[warning during 'unbind'] {WARN}\n\
                 client <fbtest> & friends: \"mmap\" read returned 'garbage'\n"
            )
        );
        assert_eq!(
            tests[1]["comment"],
            format!("unbind-rebind#2: warning during 'unbind': {WARN}")
        );
        assert_eq!(
            tests[2]["log_excerpt"],
            "QMP device_del timed out after 30 s\n"
        );
        assert!(tests[0].get("log_excerpt").is_none());

        let splat = &tests[1]["misc"]["splats"][0];
        assert_eq!(splat["kind"], "warning");
        assert_eq!(splat["step"], "unbind");
        assert_eq!(splat["console_log_line"], 1234);
        assert_eq!(
            splat["call_trace"][1],
            "ttm_bo_cleanup_memtype_use+0x54/0x100 [ttm]"
        );
        assert_eq!(
            tests[1]["misc"]["observations"],
            json!({"vblank_irqs_per_s": 60}),
            "nulls are dropped"
        );
        assert_eq!(tests[1]["misc"]["scenario"], "unbind-rebind#2");
        assert_eq!(tests[1]["misc"]["result"], "fail");
        assert_eq!(tests[1]["environment"]["misc"]["qemu_version"], "11.1.3");
        // No absolute local paths.
        assert_eq!(
            doc["builds"][0]["misc"]["kernel_image"],
            "vmlinuz-6.12.57+deb13-arm64"
        );
    }

    #[test]
    fn kcidb_rig_failure_is_a_boot_error() {
        // No kernel was identified: no made-up checkout, build or test.
        let doc = doc_at(&rig_failure(), &meta("my_lab"), now());
        validate_kcidb(&doc);
        assert_eq!(doc["checkouts"], json!([]), "{doc}");
        assert_eq!(doc["tests"], json!([]), "{doc}");
        // Known kernel, no scenario: one boot test, the rig's error.
        let mut r = rig_failure();
        r.kernel = "6.12.57+deb13-amd64".into();
        let doc = doc_at(&r, &meta("my_lab"), now());
        validate_kcidb(&doc);
        assert_eq!(doc["builds"][0]["architecture"], "x86_64");
        let tests = doc["tests"].as_array().expect("tests");
        assert_eq!(tests.len(), 1);
        assert_eq!(tests[0]["path"], "boot");
        assert_eq!(tests[0]["status"], "ERROR");
        assert!(tests[0]["log_excerpt"]
            .as_str()
            .is_some_and(|e| e.starts_with("QEMU exited before the guest booted")));
        assert!(tests[0]["misc"]["rig_error"].is_string());
    }

    #[test]
    fn kcidb_boot_fails_when_the_probe_splats() {
        let mut r = sample();
        r.kernel = "6.15.0-rc1-00042-gdeadbeef".to_string();
        r.scenarios.truncate(1);
        let s = &mut r.scenarios[0];
        s.driver_bound = false;
        s.verdict = Verdict::Error;
        s.problems = vec!["wait-bound: the driver did not bind within 60 s".to_string()];
        s.splats = sample().scenarios[1].splats.clone();
        s.splats[0].splat.kind = SplatKind::Oops;
        let doc = doc_at(&r, &meta("vanish"), now());
        validate_kcidb(&doc);
        assert_eq!(doc["builds"][0]["config_name"], "user");
        // One boot test, the boot scenario's own: it splatted and never bound.
        assert_eq!(doc["tests"][0]["status"], "FAIL");
        assert_eq!(doc["tests"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn kcidb_sanitizes_what_the_schema_forbids() {
        let mut r = sample();
        r.model = "hi.bmc".to_string();
        r.scenarios[1].name = "a.b c#3/x".to_string();
        r.scenarios[1].splats[0].splat.first_line = "é".repeat(20_000);
        r.scenarios[1].problems.push("nul\u{0}here".to_string());
        let doc = doc_at(&r, &meta("My-Lab"), now());
        validate_kcidb(&doc);
        assert_eq!(doc["checkouts"][0]["origin"], "my_lab");
        assert_eq!(doc["tests"][1]["path"], "vanish.hi_bmc.a_b_c_3_x");
        let excerpt = doc["tests"][1]["log_excerpt"].as_str().expect("excerpt");
        assert_eq!(excerpt.chars().count(), KCIDB_LOG_EXCERPT_MAX);
        assert!(excerpt.ends_with("\n[...]"));
        assert!(doc["tests"][1]["misc"]["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .any(|p| p == "nulhere"));
    }

    #[test]
    fn kcidb_ids_differ_between_runs_but_checkout_and_build_do_not() {
        let a = doc_at(&sample(), &meta("vanish"), now());
        let b = doc_at(&sample(), &meta("vanish"), now() + Duration::from_nanos(1));
        assert_eq!(a["checkouts"], b["checkouts"]);
        assert_eq!(a["builds"], b["builds"]);
        assert_ne!(a["tests"][1]["id"], b["tests"][1]["id"]);
    }

    #[test]
    fn debian_releases_are_recognised() {
        for r in [
            "6.1.0-40-arm64",
            "6.12.57+deb13-arm64",
            "7.2.3+deb14-amd64",
            "6.1.0-9-cloud-amd64",
        ] {
            assert!(is_debian_release(r), "{r}");
        }
        for r in [
            "",
            "6.15.0-rc1",
            "6.15.0-rc1-00042-gdeadbeef",
            "6.12.0",
            "6.12.0-1-custom",
        ] {
            assert!(!is_debian_release(r), "{r}");
        }
    }

    fn at(secs: i64, nanos: i32) -> Timestamp {
        Timestamp::new(secs, nanos).expect("a timestamp in jiff's range")
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(rfc3339_utc(at(0, 0)), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            rfc3339_utc(at(1_000_000_000, 0)),
            "2001-09-09T01:46:40.000000+00:00"
        );
        // A leap day, and microseconds cut, not rounded (as the ids' nanoseconds are).
        assert_eq!(
            rfc3339_utc(at(951_782_400, 999_999_999)),
            "2000-02-29T00:00:00.999999+00:00"
        );
        assert_eq!(
            compact_utc(at(1_709_251_199, 5)),
            "20240229T235959.000000005Z"
        );
        assert_eq!(compact_utc(at(0, 0)), "19700101T000000.000000000Z");
    }

    #[test]
    fn the_typed_document_round_trips_through_json() {
        for r in [sample(), rig_failure(), {
            let mut r = rig_failure();
            r.kernel = "6.12.57+deb13-amd64".into();
            r
        }] {
            let doc = kcidb_at(&r, &meta("vanish"), now());
            let text = serde_json::to_string(&doc).expect("serialise");
            let back: Document = serde_json::from_str(&text).expect("deserialise");
            assert_eq!(back, doc, "{text}");
        }
        // Nothing but the schema's fields: an unknown key is refused.
        let mut v = doc_at(&sample(), &meta("vanish"), now());
        v["builds"][0]["status"] = json!("PASS");
        assert!(serde_json::from_value::<Document>(v).is_err());
    }

    #[test]
    fn required_fields_are_there_and_nothing_is_null() {
        let mut r = sample();
        // Everything that may be missing is missing: no PCI address, screenshot, runs, durations.
        for s in &mut r.scenarios {
            s.pci_address = None;
            s.screenshot = None;
            s.duration_s = f64::NAN;
            s.observations
                .insert("nested".into(), json!({"a": null, "b": [null, "x\u{0}y"]}));
        }
        r.duration_s = f64::INFINITY;
        let v = doc_at(&r, &meta("vanish"), now());
        validate_kcidb(&v);
        let boot = &v["tests"][0];
        for k in [
            "id",
            "origin",
            "build_id",
            "path",
            "status",
            "start_time",
            "environment",
        ] {
            assert!(boot.get(k).is_some(), "boot test lacks {k}: {boot}");
        }
        assert!(boot["misc"].get("duration_s").is_none(), "{boot}");
        assert!(boot["misc"].get("pci_address").is_none(), "{boot}");
        assert_eq!(
            v["tests"][1]["misc"]["observations"]["nested"],
            json!({"b": ["xy"]})
        );
        // The start time is now when the run's duration is unknown.
        assert_eq!(boot["start_time"], "2026-06-12T03:22:47.123456+00:00");
        // Without a boot scenario the boot test's misc is the run's alone.
        let mut r = rig_failure();
        r.kernel = "6.12.57+deb13-amd64".into();
        let v = doc_at(&r, &meta("vanish"), now());
        let misc = v["tests"][0]["misc"].as_object().expect("misc");
        let keys: Vec<&str> = misc.keys().map(String::as_str).collect();
        assert_eq!(keys, ["duration_s", "rig_error"], "{misc:?}");
    }

    #[test]
    fn text_drops_nul_characters_however_it_is_made() {
        assert_eq!(Text::from("a\u{0}b").as_str(), "ab");
        assert_eq!(Text::from(String::from("\u{0}")).as_str(), "");
        let t: Text = serde_json::from_str("\"x\\u0000y\"").expect("JSON string");
        assert_eq!(t.as_str(), "xy");
    }
}
