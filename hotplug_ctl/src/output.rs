//! Machine-readable results for CI, made from a [`Report`]: JUnit XML (what GitHub/GitLab test
//! reporters and drm-ci's tooling read) and KCIDB v4.3 JSON (what `kcidb-submit` sends to
//! KernelCI's common results database).
//!
//! JUnit: one `<testsuite name="vanish.MODEL.ARCH">` with the kernel, QEMU and vanish versions as
//! properties; one `<testcase>` per scenario (classname `vanish.MODEL.KERNEL`); a failed scenario
//! carries a `<failure>`, a rig error an `<error>`, each with every problem and splat (call trace
//! included) as text; the scenario's kernel log is its `<system-out>`. A rig failure outside any
//! scenario becomes a testcase named `rig` with an `<error>`.
//!
//! KCIDB (schema v4.3, checked against `kernelci/kcidb-io`):
//! - one checkout, keyed by the kernel release (`uname -r`),
//! - one build (`architecture` arm64 or x86_64, `config_name` `debian` for Debian's kernels,
//!   `user` otherwise, `valid: true`: v4 builds have `valid`, not a status; v5 turns it into
//!   `status: PASS` when it upgrades the data),
//! - a `boot` test, PASS when the driver bound in some scenario,
//! - one test per scenario, path `vanish.MODEL.SCENARIO`.
//!
//! Test paths also satisfy v5's stricter path rule (non-empty `[A-Za-z0-9_-]` segments), so
//! KCIDB can upgrade the data to v5 without refusing it. No value is `null` (the schema forbids
//! it) and no string holds a NUL character.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};
use serde_json::{json, Map, Value};

use crate::report::{Report, ScenarioReport, SplatStatus, Verdict};
use crate::verdict::ScenarioResult;

/// At most this many kernel log lines go into a testcase's `<system-out>`: the first and last
/// halves, with a marker in between. `console.log` has everything.
pub const JUNIT_LOG_LINES: usize = 2000;

/// The KCIDB I/O schema version written.
pub const KCIDB_VERSION: (u64, u64) = (4, 3);

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

/// Writes the JUnit XML and/or KCIDB JSON for `report`. `origin` names the submitting CI system
/// in KCIDB ids (`origin:id`); it must match `^[a-z0-9_]+$`.
pub fn write_outputs(
    report: &Report,
    junit_path: Option<&Path>,
    kcidb_path: Option<&Path>,
    meta: &KcidbMeta,
) -> Result<()> {
    let origin = meta.origin.as_str();
    if let Some(path) = junit_path {
        let xml = junit(report)?;
        std::fs::write(path, xml)
            .with_context(|| format!("writing JUnit XML to {}", path.display()))?;
    }
    if let Some(path) = kcidb_path {
        if !valid_origin(origin) {
            bail!("KCIDB origin '{origin}' is invalid: use lowercase letters, digits and '_' (e.g. 'vanish' or 'my_lab')");
        }
        let json = serde_json::to_string_pretty(&kcidb(report, meta))?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing KCIDB JSON to {}", path.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// JUnit

/// The report as JUnit XML.
pub fn junit(report: &Report) -> Result<String> {
    let kernel = if report.kernel.is_empty() {
        "unknown"
    } else {
        report.kernel.as_str()
    };
    let mut suite = TestSuite::new(format!("vanish.{}.{}", report.model, report.arch));
    suite.add_properties([
        Property::new("kernel", kernel),
        Property::new("kernel_release", kernel),
        Property::new("kernel_image", file_name(&report.kernel_image)),
        Property::new("accel", &report.accel),
        Property::new("qemu_version", &report.qemu_version),
        Property::new("vanish_version", &report.vanish_version),
        Property::new("model", &report.model),
        Property::new("arch", &report.arch),
        Property::new("verdict", report.verdict().as_str()),
    ]);
    if let Some(t) = seconds(report.duration_s) {
        suite.set_time(t);
    }
    // Stable across kernel builds (the release is a suite property): CI test history keys on
    // classname + name, and a release in it would start a new history at every build.
    let classname = format!("vanish.{}.{}", report.model, report.arch);
    for s in &report.scenarios {
        suite.add_test_case(junit_case(s, &classname));
    }
    if let Some(problem) = rig_problem(report) {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status.set_message(first_line_of(&problem));
        status.set_type("rig-error");
        status.set_description(format!(
            "the rig could not judge this kernel (exit code 125): {problem}\nfull kernel log: {}\n",
            report.console_log.display()
        ));
        let mut case = TestCase::new("rig", status);
        case.set_classname(&classname);
        suite.add_test_case(case);
    }
    let mut out = quick_junit::Report::new("vanish");
    if let Some(t) = seconds(report.duration_s) {
        out.set_time(t);
    }
    out.add_test_suite(suite);
    out.to_string().context("serializing JUnit XML")
}

fn junit_case(s: &ScenarioReport, classname: &str) -> TestCase {
    let failing = match s.result {
        ScenarioResult::Fail => Some(NonSuccessKind::Failure),
        ScenarioResult::Flake if !s.flake_listed => Some(NonSuccessKind::Failure),
        ScenarioResult::Error => Some(NonSuccessKind::Error),
        _ => None,
    };
    let status = match failing {
        None => TestCaseStatus::success(),
        Some(kind) => {
            let (fallback, ty) = if kind == NonSuccessKind::Failure {
                let ty = s
                    .splats
                    .iter()
                    .find(|f| f.status == SplatStatus::New)
                    .map_or("fail", |f| f.splat.kind.as_str());
                ("the kernel failed this scenario", ty)
            } else {
                ("the rig could not judge this scenario", "rig-error")
            };
            let mut status = TestCaseStatus::non_success(kind);
            status.set_message(headline(s).unwrap_or_else(|| fallback.to_string()));
            status.set_type(ty);
            status.set_description(problem_text(s));
            status
        }
    };
    let mut case = TestCase::new(&s.name, status);
    case.set_classname(classname);
    case.add_property(Property::new("result", s.result.as_str()));
    case.add_property(Property::new("verdict", s.verdict.as_str()));
    if let Some(r) = s.runs {
        case.add_property(Property::new(
            "failed_runs",
            format!("{}/{}", r.failed, r.of),
        ));
    }
    for f in &s.fingerprints {
        case.add_property(Property::new(
            format!("fingerprint.{}", f.status.as_str()),
            format!(
                "{} x{} ({}){}",
                f.fingerprint,
                f.count,
                f.phases
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                f.seen_in_runs
                    .map(|k| format!(" seen in {k} runs"))
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(t) = seconds(s.duration_s) {
        case.set_time(t);
    }
    if failing.is_none() && s.verdict == Verdict::Fail {
        case.set_system_err(format!(
            "{}: the kernel failed this scenario only in ways the baseline expects\n{}",
            s.result.as_str(),
            problem_text(s)
        ));
    }
    let mut out = String::new();
    if let Some(shot) = &s.screenshot {
        // GitLab and Jenkins show files named like this as attachments of the test case.
        let _ = writeln!(out, "[[ATTACHMENT|{}]]", shot.display());
    }
    if !s.kernel_log.is_empty() {
        out += &capped_log(&s.kernel_log, JUNIT_LOG_LINES);
    }
    if !out.is_empty() {
        case.set_system_out(out);
    }
    case
}

/// The last component of a path: reports carry no absolute local paths.
fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every problem, then every splat with its call trace.
fn problem_text(s: &ScenarioReport) -> String {
    let mut text = String::new();
    if !s.problems.is_empty() {
        text += "problems:\n";
        for p in &s.problems {
            let _ = writeln!(text, "  - {p}");
        }
    }
    for (i, f) in s.fingerprints.iter().enumerate() {
        let _ = write!(
            text,
            "\nsplat {} of {}: {} x{} ({}, {}, {}) during '{}'",
            i + 1,
            s.fingerprints.len(),
            f.kind.as_str(),
            f.count,
            f.status.as_str(),
            f.phases
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(","),
            f.subsystem.as_str(),
            f.step
        );
        let _ = write!(text, " (console.log line {}", f.first_log_line);
        if f.last_log_line != f.first_log_line {
            let _ = write!(text, " to {}", f.last_log_line);
        }
        if let Some(t) = f.time.filter(|t| t.is_finite()) {
            let _ = write!(text, ", {t:.6} s after boot");
        }
        let _ = writeln!(
            text,
            ")\n  fingerprint: {}\n  {}",
            f.fingerprint, f.headline
        );
        if !f.locks.is_empty() {
            let _ = writeln!(text, "  locks: {}", f.locks.join(" vs "));
        }
        if !f.frames.is_empty() {
            text += "  Call trace:\n";
            for frame in &f.frames {
                let _ = writeln!(text, "    {frame}");
            }
        }
    }
    text
}

/// The first and last `max / 2` lines, with a marker saying how many were left out.
fn capped_log(lines: &[String], max: usize) -> String {
    let mut out = String::new();
    if lines.len() <= max {
        for l in lines {
            out += l;
            out.push('\n');
        }
        return out;
    }
    let head = max / 2;
    let tail = max - head;
    for l in &lines[..head] {
        out += l;
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "[... vanish: {} lines left out; console.log has them ...]",
        lines.len() - head - tail
    );
    for l in &lines[lines.len() - tail..] {
        out += l;
        out.push('\n');
    }
    out
}

/// Why the whole run could not be judged outside any scenario, if it could not.
fn rig_problem(report: &Report) -> Option<String> {
    match (&report.error, report.scenarios.is_empty()) {
        (Some(e), _) => Some(e.clone()),
        (None, true) => Some("no scenario ran".to_string()),
        (None, false) => None,
    }
}

fn first_line_of(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// A duration from seconds that may come from a hand-edited report: None if negative, NaN or
/// too large (`Duration::from_secs_f64` would panic).
fn seconds(s: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(s).ok()
}

// ---------------------------------------------------------------------------------------------
// KCIDB

/// Whether `origin` is a valid KCIDB origin (`^[a-z0-9_]+$`).
pub fn valid_origin(origin: &str) -> bool {
    !origin.is_empty()
        && origin
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The report as KCIDB v4.3 JSON. An invalid `origin` is made valid (lowercased, other
/// characters replaced by `_`); [`write_outputs`] refuses one instead. Every call makes new test
/// ids (they carry the current time), so a nightly re-run of the same kernel adds test runs under
/// the same checkout and build rather than overwriting the last night's.
pub fn kcidb(report: &Report, meta: &KcidbMeta) -> Value {
    kcidb_at(report, meta, SystemTime::now())
}

/// [`kcidb`] as if written at `now`.
fn kcidb_at(report: &Report, meta: &KcidbMeta, now: SystemTime) -> Value {
    let origin = sanitize_origin(&meta.origin);
    if report.kernel.is_empty() {
        // No kernel was identified (the run stopped before boot): nothing to say about any
        // checkout, and a made-up one would pollute the database.
        return json!({
            "version": { "major": KCIDB_VERSION.0, "minor": KCIDB_VERSION.1 },
            "checkouts": [],
            "builds": [],
            "tests": [],
        });
    }
    let release = if report.kernel.is_empty() {
        "unknown"
    } else {
        report.kernel.as_str()
    };
    let arch = kcidb_arch(&report.arch);
    let config = if is_debian_release(&report.kernel) {
        "debian"
    } else {
        "user"
    };
    let model = path_segment(&report.model);

    let checkout_id = format!("{origin}:{}", id_part(release));
    let build_id = format!("{checkout_id}:{arch}:{config}");
    let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let run_key = format!("{build_id}:{model}:{}", compact_utc(now_s));
    let started = now_s.saturating_sub(seconds(report.duration_s).unwrap_or_default());

    let mut checkout = json!({
        "id": checkout_id,
        "origin": origin,
        "comment": format!("Linux {release}"),
        "valid": true,
        "misc": { "kernel_release": release },
    });
    if let Some(c) = &meta.git_commit {
        set(&mut checkout, "git_commit_hash", json!(c));
    }
    if let Some(u) = &meta.git_url {
        set(&mut checkout, "git_repository_url", json!(u));
    }
    if let Some(t) = &meta.tree_name {
        set(&mut checkout, "tree_name", json!(t));
    }
    let build = json!({
        "id": build_id,
        "origin": origin,
        "checkout_id": checkout_id,
        "architecture": arch,
        "config_name": config,
        "comment": format!("Linux {release} {arch} ({config} kernel {})", file_name(&report.kernel_image)),
        "valid": true,
        "misc": {
            "kernel_image": file_name(&report.kernel_image),
            "kernel_release": release,
        },
    });
    let environment = json!({
        "comment": format!(
            "QEMU {} ({}) with vanish {}'s emulated {} card",
            report.qemu_version, report.arch, report.vanish_version, report.model
        ),
        "misc": {
            "qemu_version": report.qemu_version,
            "vanish_version": report.vanish_version,
            "model": report.model,
            "guest_arch": report.arch,
        },
    });
    let common = |id: String, path: String| {
        json!({
            "id": id,
            "origin": origin,
            "build_id": build_id,
            "path": path,
            "start_time": rfc3339_utc(started),
            "environment": environment,
        })
    };

    let mut tests = Vec::new();
    // One boot test: the boot scenario's own outcome (or the rig's, if it never got there).
    let mut boot = common(format!("{run_key}:boot"), "boot".to_string());
    let boot_scenario = report.scenarios.iter().find(|s| s.name == "boot");
    let (boot_status, boot_excerpt) = match boot_scenario {
        // A first probe that splatted and never bound failed the boot; the rig did not.
        Some(s) if s.verdict == Verdict::Error && !s.driver_bound && !s.splats.is_empty() => {
            ("FAIL", scenario_excerpt(s))
        }
        Some(s) => (kcidb_status(s.verdict), scenario_excerpt(s)),
        None => boot_outcome(report),
    };
    set(&mut boot, "status", json!(boot_status));
    set(
        &mut boot,
        "comment",
        json!(format!(
            "{release} boots and {} binds to the card",
            report.model
        )),
    );
    if let Some(e) = boot_excerpt {
        set(
            &mut boot,
            "log_excerpt",
            json!(truncate_chars(&e, KCIDB_LOG_EXCERPT_MAX)),
        );
    }
    let mut boot_misc = match boot_scenario {
        Some(s) => scenario_misc(s),
        None => json!({}),
    };
    set(&mut boot_misc, "duration_s", json!(report.duration_s));
    if let Some(e) = &report.error {
        set(&mut boot_misc, "rig_error", json!(e));
    }
    set(&mut boot, "misc", boot_misc);
    tests.push(boot);

    for (i, s) in report
        .scenarios
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name != "boot")
    {
        let seg = path_segment(&s.name);
        let mut t = common(
            format!("{run_key}:{i}:{seg}"),
            format!("vanish.{model}.{seg}"),
        );
        set(&mut t, "status", json!(kcidb_status(s.verdict)));
        if let Some(d) = seconds(s.duration_s) {
            set(&mut t, "duration", json!(d.as_secs_f64()));
        }
        set(
            &mut t,
            "comment",
            json!(match headline(s) {
                Some(h) => format!("{}: {h}", s.name),
                None => format!("{}: {}", s.name, s.verdict.as_str()),
            }),
        );
        if let Some(e) = scenario_excerpt(s) {
            set(
                &mut t,
                "log_excerpt",
                json!(truncate_chars(&e, KCIDB_LOG_EXCERPT_MAX)),
            );
        }
        set(&mut t, "misc", scenario_misc(s));
        tests.push(t);
    }

    let doc = json!({
        "version": { "major": KCIDB_VERSION.0, "minor": KCIDB_VERSION.1 },
        "checkouts": [checkout],
        "builds": [build],
        "tests": tests,
    });
    clean(doc)
}

fn set(obj: &mut Value, key: &str, v: Value) {
    if let Value::Object(m) = obj {
        m.insert(key.to_string(), v);
    }
}

fn kcidb_status(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Error => "ERROR",
    }
}

/// The boot test: PASS once the driver bound in any scenario; FAIL if it never bound and a
/// scenario failed (e.g. the probe splatted); otherwise ERROR (the rig could not tell).
fn boot_outcome(report: &Report) -> (&'static str, Option<String>) {
    if report.scenarios.iter().any(|s| s.driver_bound) {
        return ("PASS", None);
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
    (if failed { "FAIL" } else { "ERROR" }, Some(excerpt))
}

/// What a failed or errored scenario's one-line summary says: its first splat (the kernel's own
/// evidence), else its first problem. Problems and splats are separate lists in the report.
fn headline(s: &ScenarioReport) -> Option<String> {
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

fn scenario_misc(s: &ScenarioReport) -> Value {
    let splats: Vec<Value> = s
        .fingerprints
        .iter()
        .map(|f| {
            json!({
                "fingerprint": f.fingerprint,
                "kind": f.kind.as_str(),
                "status": f.status.as_str(),
                "subsystem": f.subsystem.as_str(),
                "phases": f.phases.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                "count": f.count,
                "seen_in_runs": f.seen_in_runs,
                "step": f.step,
                "first_line": f.headline,
                "call_trace": f.frames,
                "console_log_line": f.first_log_line,
            })
        })
        .collect();
    json!({
        "scenario": s.name,
        "verdict": s.verdict.as_str(),
        "result": s.result.as_str(),
        "failed_runs": s.runs.map(|r| format!("{}/{}", r.failed, r.of)),
        "driver_bound": s.driver_bound,
        "pci_address": s.pci_address,
        "problems": s.problems,
        "splats": splats,
        "observations": s.observations,
        "screenshot": s.screenshot.as_deref().map(file_name),
    })
}

/// KCIDB's architecture names (the kernel's): arm64 and x86_64.
fn kcidb_arch(arch: &str) -> String {
    match arch {
        "arm64" | "aarch64" => "arm64".to_string(),
        "amd64" | "x86_64" | "x86-64" => "x86_64".to_string(),
        other => {
            let a: String = other
                .to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            a
        }
    }
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
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".to_string()
    } else {
        s
    }
}

/// The part of an id after `origin:`: printable, no whitespace.
fn id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn sanitize_origin(origin: &str) -> String {
    let o: String = origin
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if o.is_empty() {
        "vanish".to_string()
    } else {
        o
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => {
            const MARK: &str = "\n[...]";
            let keep = s[..cut]
                .char_indices()
                .nth(max - MARK.len())
                .map_or(cut, |(i, _)| i);
            format!("{}{MARK}", &s[..keep])
        }
    }
}

/// Drops `null`s (KCIDB allows none, not even in `misc`) and NUL characters.
fn clean(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.replace('\0', ""), clean(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(a) => {
            Value::Array(a.into_iter().filter(|v| !v.is_null()).map(clean).collect())
        }
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "")),
        other => other,
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn utc_parts(since_epoch: Duration) -> (i64, u32, u32, u64, u64, u64) {
    let secs = since_epoch.as_secs();
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (y, mo, d, rem / 3600, rem / 60 % 60, rem % 60)
}

/// `2026-06-12T03:15:00.123456+00:00`
fn rfc3339_utc(since_epoch: Duration) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(since_epoch);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}+00:00",
        since_epoch.subsec_micros()
    )
}

/// `20260612T031500.123456789Z`
fn compact_utc(since_epoch: Duration) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(since_epoch);
    format!(
        "{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{:09}Z",
        since_epoch.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::path::PathBuf;
    use std::sync::{LazyLock, Mutex};

    use regex::Regex;

    use super::*;
    use crate::report::FoundSplat;
    use crate::splat::{Splat, SplatKind};

    const WARN: &str =
        "WARNING: CPU: 0 PID: 245 at drivers/gpu/drm/drm_gem_vram_helper.c:564 bo_driver_move_notify+0x8c/0x98 [drm_vram_helper]";

    fn scenario(name: &str, verdict: Verdict) -> ScenarioReport {
        ScenarioReport {
            name: name.to_string(),
            verdict,
            result: Default::default(),
            flake_listed: false,
            fingerprints: Vec::new(),
            runs: None,
            checker_off: None,
            driver_bound: true,
            pci_address: Some("0000:01:00.0".to_string()),
            splats: Vec::new(),
            screenshot: None,
            duration_s: 12.5,
            problems: Vec::new(),
            observations: BTreeMap::new(),
            kernel_log: vec!["[    1.000000] hibmc-drm 0000:01:00.0: enabling device".to_string()],
        }
    }

    fn meta(origin: &str) -> KcidbMeta {
        KcidbMeta {
            origin: origin.into(),
            ..KcidbMeta::default()
        }
    }

    fn sample() -> Report {
        let boot = scenario("boot", Verdict::Pass);
        let mut fail = scenario("unbind-rebind#2", Verdict::Fail);
        fail.splats.push(FoundSplat {
            splat: Splat {
                kind: SplatKind::Warning,
                first_line: WARN.to_string(),
                call_trace: vec![
                    "bo_driver_move_notify+0x8c/0x98 [drm_vram_helper]".to_string(),
                    "ttm_bo_cleanup_memtype_use+0x54/0x100 [ttm]".to_string(),
                    "ttm_bo_put+0x1c4/0x2a0 [ttm]".to_string(),
                ],
                line: 1234,
                time: Some(42.123456),
                locks: Vec::new(),
                stacks: Vec::new(),
            },
            step: "unbind".to_string(),
            fingerprint: "warning:drivers/gpu/drm/drm_gem_vram_helper.c:bo_driver_move_notify<ttm_bo_cleanup_memtype_use".into(),
            subsystem: crate::fingerprint::Subsystem::Drm,
            phase: crate::report::CardPhase::Removed,
            count: 1,
            status: crate::report::SplatStatus::New,
        });
        // As the runner reports them: problems are the steps that did not hold; splats are
        // listed only in `splats`.
        fail.problems =
            vec!["client <fbtest> & friends: \"mmap\" read returned 'garbage'".to_string()];
        fail.observations
            .insert("vblank_irqs_per_s".to_string(), json!(60));
        fail.observations
            .insert("connector".to_string(), Value::Null);
        fail.kernel_log.push(format!("[   42.123456] {WARN}"));
        fail.kernel_log
            .push("[   42.123460] bad\u{0}byte \u{1b}[31mred\u{1b}[0m".to_string());
        let mut error = scenario("surprise-remove", Verdict::Error);
        error.problems = vec!["QMP device_del timed out after 30 s".to_string()];
        error.duration_s = f64::NAN;
        let mut r = Report {
            vanish_version: "0.1.0".to_string(),
            qemu_version: "11.1.3".to_string(),
            kernel: "6.12.57+deb13-arm64".to_string(),
            kernel_image: PathBuf::from(
                "/home/u/.cache/vanish/kernels/arm64/boot/vmlinuz-6.12.57+deb13-arm64",
            ),
            arch: "arm64".to_string(),
            model: "hibmc".to_string(),
            accel: "tcg".to_string(),
            console_log: PathBuf::from("vanish-out/console.log"),
            duration_s: 95.25,
            scenarios: vec![boot, fail, error],
            error: None,
            runs: 1,
        };
        crate::verdict::judge(&mut r, &crate::verdict::Policy::default());
        r
    }

    fn rig_failure() -> Report {
        let mut r = sample();
        r.scenarios.clear();
        r.kernel = String::new();
        r.arch = "amd64".to_string();
        r.model = "bochs".to_string();
        r.error = Some("QEMU exited before the guest booted: status 1\nsecond line".to_string());
        r
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_781_234_567, 123_456_789)
    }

    // --- JUnit ---------------------------------------------------------------------------------

    #[test]
    fn junit_has_one_case_per_scenario_with_failure_and_error() {
        let xml = junit(&sample()).expect("junit");
        let parsed = quick_junit::Report::deserialize_from_str(&xml).expect("the XML parses back");
        assert_eq!((parsed.tests, parsed.failures, parsed.errors), (3, 1, 1));
        assert_eq!(parsed.test_suites.len(), 1);
        let suite = &parsed.test_suites[0];
        assert_eq!(suite.name.as_str(), "vanish.hibmc.arm64");
        let prop = |n: &str| {
            suite
                .properties
                .iter()
                .find(|p| p.name.as_str() == n)
                .map(|p| p.value.as_str().to_string())
        };
        assert_eq!(prop("kernel").as_deref(), Some("6.12.57+deb13-arm64"));
        assert_eq!(prop("qemu_version").as_deref(), Some("11.1.3"));
        assert_eq!(prop("vanish_version").as_deref(), Some("0.1.0"));

        let names: Vec<&str> = suite.test_cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["boot", "unbind-rebind#2", "surprise-remove"]);
        for c in &suite.test_cases {
            assert_eq!(
                c.classname.as_ref().map(|s| s.as_str()),
                Some("vanish.hibmc.arm64")
            );
        }
        assert_eq!(
            suite.test_cases[0].time,
            Some(Duration::from_secs_f64(12.5))
        );
        assert!(matches!(
            suite.test_cases[0].status,
            TestCaseStatus::Success { .. }
        ));

        let TestCaseStatus::NonSuccess {
            kind,
            message,
            ty,
            description,
            ..
        } = &suite.test_cases[1].status
        else {
            panic!("the failed scenario has no failure element");
        };
        assert_eq!(*kind, NonSuccessKind::Failure);
        assert_eq!(
            message.as_ref().map(|m| m.as_str()),
            Some(format!("warning during 'unbind': {WARN}").as_str())
        );
        assert_eq!(ty.as_ref().map(|t| t.as_str()), Some("warning"));
        let text = description.as_ref().expect("failure text").as_str();
        assert!(
            text.contains("client <fbtest> & friends: \"mmap\" read returned 'garbage'"),
            "{text}"
        );
        assert!(text.contains("splat 1 of 1: warning x1 (new, removed, drm) during 'unbind' (console.log line 1234, 42.123456 s after boot)"), "{text}");
        for frame in [
            "bo_driver_move_notify+0x8c/0x98 [drm_vram_helper]",
            "ttm_bo_put+0x1c4/0x2a0 [ttm]",
        ] {
            assert!(text.contains(&format!("\n    {frame}")), "{text}");
        }
        let out = suite.test_cases[1]
            .system_out
            .as_ref()
            .expect("system-out")
            .as_str();
        assert!(out.contains(WARN));
        assert!(
            out.contains("badbyte red"),
            "control characters and ANSI escapes are stripped: {out}"
        );

        let TestCaseStatus::NonSuccess { kind, message, .. } = &suite.test_cases[2].status else {
            panic!("the errored scenario has no error element");
        };
        assert_eq!(*kind, NonSuccessKind::Error);
        assert_eq!(
            message.as_ref().map(|m| m.as_str()),
            Some("QMP device_del timed out after 30 s")
        );
        assert_eq!(suite.test_cases[2].time, None, "a NaN duration is left out");

        // Escaped in the raw XML, not mangled.
        assert!(xml.contains("&lt;fbtest&gt; &amp; friends"), "{xml}");
        assert_eq!(xml.matches("<failure").count(), 1);
        assert_eq!(xml.matches("<error").count(), 1);
        assert_eq!(xml.matches("<testcase").count(), 3);
    }

    #[test]
    fn junit_message_is_the_first_splat_else_the_first_problem() {
        let mut r = sample();
        r.scenarios[1].splats.clear();
        r.scenarios[1].problems.push("second".to_string());
        let parsed =
            quick_junit::Report::deserialize_from_str(&junit(&r).expect("junit")).expect("parses");
        let TestCaseStatus::NonSuccess { message, ty, .. } =
            &parsed.test_suites[0].test_cases[1].status
        else {
            panic!("no failure element");
        };
        assert_eq!(
            message.as_ref().map(|m| m.as_str()),
            Some("client <fbtest> & friends: \"mmap\" read returned 'garbage'")
        );
        assert_eq!(ty.as_ref().map(|t| t.as_str()), Some("fail"));
        r.scenarios[1].problems.clear();
        let xml = junit(&r).expect("junit");
        assert!(
            xml.contains("message=\"the kernel failed this scenario\""),
            "{xml}"
        );
    }

    #[test]
    fn junit_rig_error_is_one_rig_case() {
        let xml = junit(&rig_failure()).expect("junit");
        let parsed = quick_junit::Report::deserialize_from_str(&xml).expect("the XML parses back");
        assert_eq!((parsed.tests, parsed.failures, parsed.errors), (1, 0, 1));
        let suite = &parsed.test_suites[0];
        assert_eq!(suite.name.as_str(), "vanish.bochs.amd64");
        let case = &suite.test_cases[0];
        assert_eq!(case.name.as_str(), "rig");
        assert_eq!(
            case.classname.as_ref().map(|s| s.as_str()),
            Some("vanish.bochs.amd64")
        );
        let TestCaseStatus::NonSuccess {
            kind,
            message,
            description,
            ..
        } = &case.status
        else {
            panic!("no error element");
        };
        assert_eq!(*kind, NonSuccessKind::Error);
        assert_eq!(
            message.as_ref().map(|m| m.as_str()),
            Some("QEMU exited before the guest booted: status 1")
        );
        assert!(description
            .as_ref()
            .is_some_and(|d| d.as_str().contains("second line")));
    }

    #[test]
    fn junit_rig_error_after_scenarios_is_reported_too() {
        let mut r = sample();
        r.error = Some("QEMU did not stop".to_string());
        let parsed =
            quick_junit::Report::deserialize_from_str(&junit(&r).expect("junit")).expect("parses");
        assert_eq!((parsed.tests, parsed.failures, parsed.errors), (4, 1, 2));
        assert_eq!(parsed.test_suites[0].test_cases[3].name.as_str(), "rig");
    }

    #[test]
    fn junit_system_out_is_capped() {
        let mut r = sample();
        r.scenarios[0].kernel_log = (0..5000).map(|i| format!("line {i}")).collect();
        let parsed =
            quick_junit::Report::deserialize_from_str(&junit(&r).expect("junit")).expect("parses");
        let out = parsed.test_suites[0].test_cases[0]
            .system_out
            .as_ref()
            .expect("system-out")
            .as_str()
            .to_string();
        assert_eq!(out.lines().count(), JUNIT_LOG_LINES + 1);
        assert!(out.starts_with("line 0\n"));
        assert!(out.contains(
            "line 999\n[... vanish: 3000 lines left out; console.log has them ...]\nline 4000\n"
        ));
        assert!(out.ends_with("line 4999"), "the parser trims the text");
    }

    // --- KCIDB ---------------------------------------------------------------------------------

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
    fn validate_kcidb(doc: &Value) {
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
        let doc = kcidb_at(&sample(), &meta("vanish"), now());
        validate_kcidb(&doc);
        let checkout = &doc["checkouts"][0];
        assert_eq!(checkout["id"], "vanish:6.12.57+deb13-arm64");
        let build = &doc["builds"][0];
        assert_eq!(build["id"], "vanish:6.12.57+deb13-arm64:arm64:debian");
        assert_eq!(build["architecture"], "arm64");
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
            "vanish:6.12.57+deb13-arm64:arm64:debian:hibmc:20260612T032247.123456789Z:boot"
        );
        assert_eq!(tests[1]["id"], "vanish:6.12.57+deb13-arm64:arm64:debian:hibmc:20260612T032247.123456789Z:1:unbind-rebind_2");
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
        let doc = kcidb_at(&rig_failure(), &meta("my_lab"), now());
        validate_kcidb(&doc);
        assert_eq!(doc["checkouts"], json!([]), "{doc}");
        assert_eq!(doc["tests"], json!([]), "{doc}");
        // Known kernel, no scenario: one boot test, the rig's error.
        let mut r = rig_failure();
        r.kernel = "6.12.57+deb13-amd64".into();
        let doc = kcidb_at(&r, &meta("my_lab"), now());
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
        let doc = kcidb_at(&r, &meta("vanish"), now());
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
        let doc = kcidb_at(&r, &meta("My-Lab"), now());
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
        let a = kcidb_at(&sample(), &meta("vanish"), now());
        let b = kcidb_at(&sample(), &meta("vanish"), now() + Duration::from_nanos(1));
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

    #[test]
    fn utc_formatting() {
        assert_eq!(
            rfc3339_utc(Duration::ZERO),
            "1970-01-01T00:00:00.000000+00:00"
        );
        assert_eq!(
            rfc3339_utc(Duration::from_secs(1_000_000_000)),
            "2001-09-09T01:46:40.000000+00:00"
        );
        assert_eq!(
            rfc3339_utc(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000+00:00"
        );
        assert_eq!(
            compact_utc(Duration::new(1_709_251_199, 5)),
            "20240229T235959.000000005Z"
        );
    }

    #[test]
    fn write_outputs_writes_both_files_and_refuses_bad_origins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, k) = (dir.path().join("junit.xml"), dir.path().join("kcidb.json"));
        write_outputs(&sample(), Some(&j), Some(&k), &meta("vanish")).expect("write");
        let xml = std::fs::read_to_string(&j).expect("junit.xml");
        assert!(quick_junit::Report::deserialize_from_str(&xml).is_ok());
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&k).expect("kcidb.json")).expect("JSON");
        validate_kcidb(&doc);

        let err =
            write_outputs(&sample(), None, Some(&k), &meta("My Lab")).expect_err("bad origin");
        assert!(err.to_string().contains("origin"));
        let missing = dir.path().join("no/such/dir/junit.xml");
        assert!(write_outputs(&sample(), Some(&missing), None, &meta("vanish")).is_err());
        write_outputs(&sample(), None, None, &meta("")).expect("nothing to write is fine");
    }
}
