//! What a run's [`Report`] becomes besides report.json: the table printed at the end
//! ([`table`]), JUnit XML for CI test reporters ([`junit`]) and KCIDB JSON for KernelCI's common
//! results database ([`kcidb`]). Each format lives in its own file; this one writes the files;
//! [`text`] holds what the formats share (the scenario headline, the name sanitiser, small
//! conversions).

pub mod junit;
pub mod kcidb;
pub mod table;
pub mod text;

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::report::Report;

pub use junit::{junit, JUNIT_LOG_LINES};
pub use kcidb::{kcidb, valid_origin, KcidbMeta, KCIDB_LOG_EXCERPT_MAX, KCIDB_VERSION};
pub use table::table;
pub use text::sanitize;

/// Writes the JUnit XML and/or KCIDB JSON for `report`. `meta.origin` names the submitting CI
/// system in KCIDB ids (`origin:id`); it must match `^[a-z0-9_]+$`.
pub fn write_outputs(
    report: &Report,
    junit_path: Option<&Path>,
    kcidb_path: Option<&Path>,
    meta: &KcidbMeta,
) -> Result<()> {
    if let Some(path) = junit_path {
        let xml = junit(report)?;
        std::fs::write(path, xml)
            .with_context(|| format!("writing JUnit XML to {}", path.display()))?;
    }
    if let Some(path) = kcidb_path {
        let origin = meta.origin.as_str();
        if !valid_origin(origin) {
            bail!("KCIDB origin '{origin}' is invalid: use lowercase letters, digits and '_' (e.g. 'vanish' or 'my_lab')");
        }
        let json = serde_json::to_string_pretty(&kcidb(report, meta))?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing KCIDB JSON to {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::text::headline;
    use super::*;
    use fixtures::*;

    #[test]
    fn sanitize_replaces_what_the_rule_rejects_and_fills_empty_names() {
        let path_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        assert_eq!(
            sanitize("unbind-rebind#2", path_char, "_"),
            "unbind-rebind_2"
        );
        assert_eq!(sanitize("a.b c#3/x", path_char, "_"), "a_b_c_3_x");
        // One `_` per character, not per byte: é is two bytes.
        assert_eq!(sanitize("é", path_char, "_"), "_");
        assert_eq!(sanitize("", path_char, "_"), "_");
        assert_eq!(sanitize("", path_char, ""), "");
        assert_eq!(sanitize("ok", |_| false, "x"), "__");
    }

    #[test]
    fn headline_is_the_first_splat_else_the_first_problems_first_line() {
        let r = sample();
        assert_eq!(
            headline(&r.scenarios[1]).as_deref(),
            Some(format!("warning during 'unbind': {WARN}").as_str())
        );
        let mut s = r.scenarios[1].clone();
        s.splats.clear();
        s.problems = vec!["first line\nsecond line".to_string()];
        assert_eq!(headline(&s).as_deref(), Some("first line"));
        assert_eq!(headline(&r.scenarios[0]), None);
    }

    #[test]
    fn debians_arch_names_in_older_reports_come_out_as_the_one_name() {
        let mut r = sample();
        r.arch = "arm64".into();
        assert_eq!(r.arch_name(), "aarch64");
        let xml = junit(&r).expect("junit");
        assert!(xml.contains("name=\"vanish.hibmc.aarch64\""), "{xml}");
        assert!(table(&r)
            .lines()
            .next()
            .is_some_and(|l| l.contains("(aarch64)")));
        let doc = serde_json::to_value(kcidb(&r, &meta("vanish"))).expect("JSON");
        assert_eq!(doc["builds"][0]["architecture"], "aarch64");
        assert_eq!(
            doc["tests"][0]["environment"]["misc"]["guest_arch"],
            "aarch64"
        );
        r.arch = "amd64".into();
        assert_eq!(r.arch_name(), "x86_64");
        // One vanish does not know is kept as it is.
        r.arch = "riscv64".into();
        assert_eq!(r.arch_name(), "riscv64");
    }

    #[test]
    fn write_outputs_writes_both_files_and_refuses_bad_origins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, k) = (dir.path().join("junit.xml"), dir.path().join("kcidb.json"));
        write_outputs(&sample(), Some(&j), Some(&k), &meta("vanish")).expect("write");
        let xml = std::fs::read_to_string(&j).expect("junit.xml");
        assert!(quick_junit::Report::deserialize_from_str(&xml).is_ok());
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&k).expect("kcidb.json")).expect("JSON");
        kcidb::tests::validate_kcidb(&doc);

        let err =
            write_outputs(&sample(), None, Some(&k), &meta("My Lab")).expect_err("bad origin");
        assert!(err.to_string().contains("origin"));
        let missing = dir.path().join("no/such/dir/junit.xml");
        assert!(write_outputs(&sample(), Some(&missing), None, &meta("vanish")).is_err());
        write_outputs(&sample(), None, None, &meta("")).expect("nothing to write is fine");
    }
}

/// The reports the output tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde_json::{json, Value};

    use super::KcidbMeta;
    use crate::report::{FoundSplat, Report, ScenarioReport, Verdict};
    use crate::splat::{Splat, SplatKind};

    pub const WARN: &str =
        "WARNING: CPU: 0 PID: 245 at drivers/gpu/drm/drm_gem_vram_helper.c:564 bo_driver_move_notify+0x8c/0x98 [drm_vram_helper]";

    pub fn scenario(name: &str, verdict: Verdict) -> ScenarioReport {
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

    pub fn meta(origin: &str) -> KcidbMeta {
        KcidbMeta {
            origin: origin.into(),
            ..KcidbMeta::default()
        }
    }

    pub fn sample() -> Report {
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
            arch: "aarch64".to_string(),
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

    pub fn rig_failure() -> Report {
        let mut r = sample();
        r.scenarios.clear();
        r.kernel = String::new();
        r.arch = "x86_64".to_string();
        r.model = "bochs".to_string();
        r.error = Some("QEMU exited before the guest booted: status 1\nsecond line".to_string());
        r
    }

    pub fn now() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_781_234_567, 123_456_789)
    }
}
