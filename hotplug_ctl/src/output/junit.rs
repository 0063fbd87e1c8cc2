//! JUnit XML, what GitHub/GitLab test reporters and drm-ci's tooling read (written with
//! quick-junit).
//!
//! One `<testsuite name="vanish.MODEL.ARCH">` with the kernel, QEMU and vanish versions as
//! properties; one `<testcase>` per scenario (classname `vanish.MODEL.ARCH`); a failed scenario
//! carries a `<failure>`, a rig error an `<error>`, each with every problem and splat (call trace
//! included) as text; the scenario's kernel log is its `<system-out>`. A rig failure outside any
//! scenario becomes a testcase named `rig` with an `<error>`.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};

use super::text::{file_name, first_line_of, headline, seconds};
use crate::report::{Report, ScenarioReport, SplatStatus, Verdict};
use crate::verdict::ScenarioResult;

/// At most this many kernel log lines go into a testcase's `<system-out>`: the first and last
/// halves, with a marker in between. `console.log` has everything.
pub const JUNIT_LOG_LINES: usize = 2000;

/// The report as JUnit XML.
pub fn junit(report: &Report) -> Result<String> {
    let kernel = if report.kernel.is_empty() {
        "unknown"
    } else {
        report.kernel.as_str()
    };
    let arch = report.arch_name();
    let mut suite = TestSuite::new(format!("vanish.{}.{arch}", report.model));
    suite.add_properties([
        Property::new("kernel", kernel),
        Property::new("kernel_release", kernel),
        Property::new("kernel_image", file_name(&report.kernel_image)),
        Property::new("accel", &report.accel),
        Property::new("qemu_version", &report.qemu_version),
        Property::new("vanish_version", &report.vanish_version),
        Property::new("model", &report.model),
        Property::new("arch", &arch),
        Property::new("verdict", report.verdict().as_str()),
    ]);
    if let Some(t) = seconds(report.duration_s) {
        suite.set_time(t);
    }
    // Stable across kernel builds (the release is a suite property): CI test history keys on
    // classname + name, and a release in it would start a new history at every build.
    let classname = format!("vanish.{}.{arch}", report.model);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::output::fixtures::*;

    #[test]
    fn junit_has_one_case_per_scenario_with_failure_and_error() {
        let xml = junit(&sample()).expect("junit");
        let parsed = quick_junit::Report::deserialize_from_str(&xml).expect("the XML parses back");
        assert_eq!((parsed.tests, parsed.failures, parsed.errors), (3, 1, 1));
        assert_eq!(parsed.test_suites.len(), 1);
        let suite = &parsed.test_suites[0];
        assert_eq!(suite.name.as_str(), "vanish.hibmc.aarch64");
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
                Some("vanish.hibmc.aarch64")
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
        assert_eq!(suite.name.as_str(), "vanish.bochs.x86_64");
        let case = &suite.test_cases[0];
        assert_eq!(case.name.as_str(), "rig");
        assert_eq!(
            case.classname.as_ref().map(|s| s.as_str()),
            Some("vanish.bochs.x86_64")
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
}
