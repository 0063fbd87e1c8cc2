//! Issue: nothing is left running after SIGTERM (what timeout, systemd and CI cancellation
//! send) or after SIGKILL of vanish itself; SIGTERM leaves a report.json behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(format!("{name}: {cmd}"));
            }
        }
    }
    out
}

/// vanish's temp dirs (`vanish-XXXX`, `vanish-initrd-XXXX`) under `tmp`.
fn temp_dirs(tmp: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(tmp)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vanish-"))
        })
        .collect();
    v.sort();
    v
}

/// Who gets the signal.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Vanish,
    /// The QEMU this run started (found by its TMPDIR on its command line).
    Qemu,
}

/// Starts `vanish run` with its own TMPDIR, waits for a stderr line containing `when`, then
/// sends `signal` to vanish. Returns (exit status, TMPDIR, out dir, stderr).
fn interrupt(
    when: &str,
    signal: i32,
    args: &[&str],
) -> (Option<i32>, tempfile::TempDir, tempfile::TempDir, String) {
    interrupt_target(when, signal, Target::Vanish, args)
}

fn interrupt_target(
    when: &str,
    signal: i32,
    target: Target,
    args: &[&str],
) -> (Option<i32>, tempfile::TempDir, tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vanish"))
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(out.path())
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vanish");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                seen += &line;
                seen.push('\n');
                if line.contains(when) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => {
                let _ = child.kill();
                panic!("never saw {when:?}:\n{seen}");
            }
        }
    }
    // Let the step get under way.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = match target {
        Target::Vanish => child.id() as i32,
        Target::Qemu => {
            let qemu: Vec<String> = processes_with(&tmp.path().display().to_string())
                .into_iter()
                .filter(|p| p.contains("qemu-system"))
                .collect();
            assert_eq!(qemu.len(), 1, "this run's QEMU: {qemu:#?}\n{seen}");
            qemu[0]
                .split(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("pid")
        }
    };
    // SAFETY: signalling our own child, or the QEMU it started.
    unsafe { libc::kill(pid, signal) };
    // After a QEMU abort vanish boots again and reruns the scenario.
    let deadline = Instant::now()
        + Duration::from_secs(match target {
            Target::Vanish => 30,
            Target::Qemu => 240,
        });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "vanish did not exit after signal {signal}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        seen += &line;
        seen.push('\n');
    }
    // Children that die with their parent need a moment.
    std::thread::sleep(Duration::from_secs(2));
    (status.code(), tmp, out, seen)
}

fn assert_nothing_left(tmp: &Path, stderr: &str) {
    let left = processes_with(&tmp.display().to_string());
    assert!(left.is_empty(), "processes left: {left:#?}\n{stderr}");
    let dirs = temp_dirs(tmp);
    assert!(dirs.is_empty(), "temp dirs left: {dirs:?}\n{stderr}");
}

#[test]
fn sigterm_during_boot_leaves_nothing_and_a_report() {
    let (code, tmp, out, stderr) = interrupt(
        "booting",
        libc::SIGTERM,
        &["--model", "bochs", "--arch", "x86_64"],
    );
    assert_eq!(code, Some(143), "{stderr}");
    assert_nothing_left(tmp.path(), &stderr);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("json");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("interrupted by SIGTERM")),
        "{report}"
    );
}

#[test]
fn sigterm_mid_scenario_marks_it_error() {
    // A scenario that is surely still running when the signal comes (bochs rebinds take
    // well under a second): a client holds the card while the scenario sleeps.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("slow.toml");
    std::fs::write(
        &file,
        "name = \"slow\"\nsteps = [\"wait-bound\", \"client idle-open\", \"sleep 60\"]\n",
    )
    .expect("write");
    let (code, tmp, out, stderr) = interrupt(
        "scenario slow",
        libc::SIGTERM,
        &[
            "--model",
            "bochs",
            "--arch",
            "x86_64",
            "--scenario",
            "unbind-rebind",
            "--scenario",
            file.to_str().unwrap_or_default(),
        ],
    );
    assert_eq!(code, Some(143), "{stderr}");
    assert_nothing_left(tmp.path(), &stderr);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("json");
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios[0]["name"], "boot", "{report}");
    assert_eq!(scenarios[1]["name"], "unbind-rebind", "{report}");
    assert_eq!(scenarios[1]["verdict"], "pass", "{report}");
    let last = scenarios.last().expect("a scenario");
    assert_eq!(last["name"], "slow", "{report}");
    assert_eq!(last["verdict"], "error", "{report}");
}

#[test]
fn sigkill_of_vanish_leaves_no_process() {
    let (code, tmp, _out, stderr) = interrupt(
        "booting",
        libc::SIGKILL,
        &["--model", "bochs", "--arch", "x86_64"],
    );
    assert_eq!(code, None, "killed by a signal: {stderr}");
    let left = processes_with(&tmp.path().display().to_string());
    assert!(left.is_empty(), "processes left: {left:#?}");
}

/// QEMU 11.1's vfio-user client sometimes aborts (an assertion) while a card whose server was
/// killed is torn down. A QEMU that dies mid-scenario is the rig's failure, not the kernel's:
/// the scenario runs again on a fresh boot, and the report says why.
#[test]
fn a_qemu_abort_mid_scenario_is_retried_on_a_fresh_boot() {
    let (code, tmp, out, stderr) = interrupt_target(
        "scenario hot-unplug",
        libc::SIGABRT,
        Target::Qemu,
        &[
            "--model",
            "bochs",
            "--arch",
            "x86_64",
            "--accel",
            "tcg",
            "--unplug",
            "hot-unplug",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("QEMU aborted"), "{stderr}");
    assert_nothing_left(tmp.path(), &stderr);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("json");
    let s = &report["scenarios"][1];
    assert_eq!(s["name"], "hot-unplug", "{report}");
    assert_eq!(s["result"], "pass", "{report}");
    assert!(
        s["observations"]["rig_retry"]
            .as_str()
            .is_some_and(|r| r.contains("SIGABRT")),
        "{report}"
    );
}
