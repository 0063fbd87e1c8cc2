//! Issue: scenarios with verdicts. The built-in set on bochs/x86-64 and HIBMC/arm64 (Debian
//! 6.12) with their real verdicts, a deliberately failing scenario, JUnit/KCIDB output and the
//! `git bisect run` exit codes.

mod common;
use common::*;
use std::path::Path;

const BUILTIN: [&str; 13] = [
    "unbind-rebind",
    "unplug-rescan",
    "hotunbind-rebind",
    "hotunplug-rescan",
    "hotrebind",
    "hotreplug",
    "hotrebind-lateclose",
    "hotreplug-lateclose",
    "surprise-with-mmap",
    "server-crash",
    "surprise-during-modeset",
    "hotunplug-fbdev-write",
    "surprise-fbdev-write",
];

fn junit_and_kcidb(run: &Run) -> (String, serde_json::Value) {
    let junit = std::fs::read_to_string(run.path("junit.xml")).expect("junit.xml");
    let kcidb: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.path("kcidb.json")).expect("kcidb.json"))
            .expect("kcidb json");
    assert_eq!(kcidb["version"]["major"], 4);
    (junit, kcidb)
}

fn run_set(model: &str, arch: &str) -> Run {
    // vanish writes --junit/--kcidb where it is told; collect them into the run's out dir.
    let out = tempfile::Builder::new()
        .prefix("vanish-set-")
        .tempdir()
        .expect("tmp");
    let junit = out.path().join("junit.xml");
    let kcidb = out.path().join("kcidb.json");
    let run = vanish(&[
        "run",
        "--model",
        model,
        "--arch",
        arch,
        "--junit",
        junit.to_str().unwrap_or_default(),
        "--kcidb",
        kcidb.to_str().unwrap_or_default(),
    ]);
    for f in ["junit.xml", "kcidb.json"] {
        std::fs::copy(out.path().join(f), run.path(f)).expect("outputs written");
    }
    run
}

#[test]
fn builtin_set_passes_on_bochs_x86_64() {
    let run = run_set("bochs", "x86_64");
    assert_eq!(run.code, 0, "{}", run.summary());
    run.assert_pass("boot");
    for name in BUILTIN {
        run.assert_pass(name);
    }
    assert_clean_log(&run);
    // The kms client set a mode with its own dumb buffer: its colour bars were on our card.
    let shot = std::fs::read_dir(run.out.path())
        .expect("out dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.to_string_lossy().contains("surprise-with-mmap")
                && p.to_string_lossy().ends_with("pattern.png")
        })
        .expect("a pattern screenshot");
    assert!(
        hotplug_ctl::pattern::shows_colour_bars(&shot).expect("png"),
        "{}",
        shot.display()
    );
    // After the surprise removal, the client could close its fd and exit.
    let client = &run.scenario("surprise-with-mmap")["observations"]["client_kms"];
    assert_eq!(client["exited"], true);
    assert_eq!(client["close"], "ok");
    assert_eq!(
        run.scenario("surprise-with-mmap")["observations"]["bar_read_dead"],
        "0xffffffff"
    );

    let (junit, kcidb) = junit_and_kcidb(&run);
    assert_eq!(junit.matches("<testcase").count(), 14, "{junit}");
    assert!(!junit.contains("<failure"), "{junit}");
    let tests = kcidb["tests"].as_array().expect("tests");
    assert!(
        tests
            .iter()
            .any(|t| t["path"] == "vanish.bochs.surprise-with-mmap" && t["status"] == "PASS"),
        "{kcidb}"
    );
}

/// Debian 6.12's hibmc never calls pci_set_master(): every scenario that re-probes the driver
/// (rebind, rescan, re-plug) loses vblank interrupts and logs "vblank wait timed out". The
/// steps themselves all hold; the splats make each scenario fail, and they are reported with
/// their call traces, not hidden.
#[test]
fn builtin_set_finds_hibmc_6_12_vblank_warns() {
    let run = run_set("hibmc", "aarch64");
    assert_eq!(run.code, 1, "{}", run.summary());
    run.assert_pass("boot");
    for name in BUILTIN {
        let s = run.scenario(name);
        assert_eq!(s["verdict"], "fail", "{name}");
        assert!(
            s["problems"].as_array().is_none_or(Vec::is_empty),
            "{name}: a step did not hold: {}",
            s["problems"]
        );
        let splats = s["splats"].as_array().cloned().unwrap_or_default();
        assert!(!splats.is_empty(), "{name}");
        for sp in splats {
            assert_eq!(sp["kind"], "warning", "{name}");
            assert!(
                sp["first_line"]
                    .as_str()
                    .unwrap_or("")
                    .contains("drm_atomic_helper_wait_for_vblanks"),
                "{name}"
            );
            assert!(
                sp["call_trace"].as_array().is_some_and(|t| t.len() > 3),
                "{name}: no call trace"
            );
        }
    }
    let (junit, kcidb) = junit_and_kcidb(&run);
    assert_eq!(junit.matches("<failure").count(), 13, "{junit}");
    assert!(
        junit.contains("drm_atomic_helper_wait_for_vblanks"),
        "the trace is in the JUnit failure text"
    );
    let tests = kcidb["tests"].as_array().expect("tests");
    assert_eq!(
        tests.iter().filter(|t| t["status"] == "FAIL").count(),
        13,
        "{kcidb}"
    );
}

#[test]
fn a_scenario_whose_expectation_cannot_hold_fails_with_exit_1() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("impossible.toml");
    std::fs::write(
        &file,
        "name = \"impossible\"\ndescription = \"the card cannot be gone while bound\"\nsteps = [\"wait-bound\", \"expect gone\"]\n",
    )
    .expect("write");
    let junit = dir.path().join("junit.xml");
    let run = vanish(&[
        "run",
        "--model",
        "bochs",
        "--arch",
        "x86_64",
        "--scenario",
        file.to_str().unwrap_or_default(),
        "--junit",
        junit.to_str().unwrap_or_default(),
    ]);
    assert_eq!(run.code, 1, "{}", run.summary());
    let s = run.scenario("impossible");
    assert_eq!(s["verdict"], "fail");
    assert!(
        s["problems"][0]
            .as_str()
            .unwrap_or("")
            .starts_with("expect gone:"),
        "{}",
        s["problems"]
    );
    let junit = std::fs::read_to_string(&junit).expect("junit");
    assert_eq!(junit.matches("<failure").count(), 1, "{junit}");
    assert!(junit.contains("expect gone"), "{junit}");
}

#[test]
fn a_missing_kernel_is_exit_125_with_one_line() {
    let run = vanish(&["run", "--kernel", "/nonexistent/Image"]);
    assert_eq!(run.code, 125);
    let line = run.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("/nonexistent/Image"), "{line}");
}

#[test]
fn a_kernel_without_the_driver_is_exit_125_not_a_hang() {
    // Debian's amd64 kernels have no hibmc-drm.
    let run = vanish(&[
        "run",
        "--model",
        "hibmc",
        "--arch",
        "x86_64",
        "--scenario",
        "boot",
    ]);
    assert_eq!(run.code, 125, "{}", run.summary());
    assert!(
        run.stdout.contains("has no hibmc-drm driver"),
        "{}",
        run.summary()
    );
}

#[test]
fn bad_flags_and_bad_scenario_files_are_exit_2() {
    let run = vanish(&["run", "--model", "voodoo"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("voodoo"));

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "name = \"bad\"\nsteps = [\n  \"wait-bound\",\n  \"unplug sideways\",\n]\n",
    )
    .expect("write");
    let run = vanish(&["run", "--scenario", file.to_str().unwrap_or_default()]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("bad.toml:4: unknown removal mode 'sideways'"),
        "{}",
        run.stderr
    );
}

#[test]
fn list_shows_the_builtin_set() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vanish"))
        .arg("list")
        .output()
        .expect("vanish list");
    let text = String::from_utf8_lossy(&out.stdout);
    for name in BUILTIN {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{text}"
        );
    }
    assert!(Path::new(env!("CARGO_BIN_EXE_vanish")).exists());
}
