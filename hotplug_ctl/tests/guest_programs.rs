//! Issue 14: users' own guest programs. `exec` steps (foreground with a timeout, background as
//! a client), `--guest-file`/`--guest-dir` (a dynamic ELF without its libraries is refused),
//! `--shell` on a pty, and the fbdev-write scenarios with the real kernels' verdicts.

mod common;
use common::*;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const VBLANK: &str = "warning:drivers/gpu/drm/drm_atomic_helper.c:drm_atomic_helper_wait_for_vblanks<drm_atomic_helper_commit_tail";
const FBDEV_WRITE: [&str; 2] = ["hotunplug-fbdev-write", "surprise-fbdev-write"];

/// The writer ended by itself once /dev/fb0 went away (the loop's last pass failed: exit 1),
/// before `close` had to signal it, and never hung.
fn assert_writer_ended(run: &Run, name: &str) {
    let s = run.scenario(name);
    let w = &s["observations"]["client_writer"];
    assert_eq!(w["kind"], "exec", "{name}: {w}");
    assert_eq!(w["exited"], true, "{name}: {w}");
    assert_eq!(w["state"], "exited", "{name}: {w}");
    assert_eq!(w["exit_code"], 1, "{name}: {w}");
    assert_eq!(w["sigkilled"], false, "{name}: {w}");
    assert!(
        s["problems"].as_array().is_none_or(Vec::is_empty),
        "{name}: a step did not hold: {}",
        s["problems"]
    );
}

/// bochs on Debian 6.12 amd64: writing to /dev/fb0 across a hot-unplug or a surprise removal
/// ends the writer with an I/O error and leaves no splat.
#[test]
fn fbdev_write_across_removal_passes_on_bochs_x86_64() {
    let run = vanish(&[
        "run",
        "--model",
        "bochs",
        "--arch",
        "x86_64",
        "--scenario",
        FBDEV_WRITE[0],
        "--scenario",
        FBDEV_WRITE[1],
    ]);
    assert_eq!(run.code, 0, "{}", run.summary());
    for name in FBDEV_WRITE {
        run.assert_pass(name);
        assert_writer_ended(&run, name);
    }
    assert_clean_log(&run);
}

/// hibmc on Debian 6.12 arm64: the writer ends as on bochs, but the re-plugged card never gets
/// Bus Master Enable (hibmc before 6.14 never calls pci_set_master()), so its first modeset
/// times out waiting for vblank: the scenario fails on that WARNING alone, in phase re-added.
#[test]
fn fbdev_write_across_removal_on_hibmc_6_12_fails_only_on_the_bme_warning() {
    let run = vanish(&[
        "run",
        "--scenario",
        FBDEV_WRITE[0],
        "--scenario",
        FBDEV_WRITE[1],
    ]);
    assert_eq!(run.code, 1, "{}", run.summary());
    run.assert_pass("boot");
    for name in FBDEV_WRITE {
        let s = run.scenario(name);
        assert_eq!(s["verdict"], "fail", "{name}");
        assert_writer_ended(&run, name);
        let fps = s["fingerprints"].as_array().cloned().unwrap_or_default();
        assert!(!fps.is_empty(), "{name}");
        for fp in fps {
            assert_eq!(fp["fingerprint"], VBLANK, "{name}");
            assert!(
                fp["phases"].as_array().is_some_and(|p| p == &["re-added"]),
                "{name}: {fp}"
            );
        }
    }
}

/// A static program, a script and a dynamic ELF with its sysroot shipped with
/// --guest-file/--guest-dir, run by `exec` in the foreground and the background; a foreground
/// command past its timeout fails the scenario with what it printed.
#[test]
fn exec_runs_programs_shipped_with_guest_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let script = dir.path().join("exit3.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"args: $*\"\necho oops >&2\nexit 3\n",
    )
    .expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("data")).expect("mkdir");
    std::fs::write(tree.join("data/hello.txt"), "hello from the host\n").expect("write");
    // A static musl binary: the guest agent build.rs built for x86_64.
    let agent = env!("VANISH_AGENT_X86_64");
    let ok = dir.path().join("programs.toml");
    std::fs::write(
        &ok,
        r#"name = "programs"
description = "user programs"
steps = [
  "wait-bound",
  'exec "exit3.sh one two" as script',
  "expect client script status 3",
  'exec "/opt/bin/agent2 --version" as static',
  "expect client static status 0",
  'exec "cat /opt/tree/data/hello.txt"',
  'exec "ls /opt/tree/data" as ls',
  "expect client ls status 0",
  'exec "sleep 60" as bg background',
  "expect client bg alive",
  "close bg",
  "expect client bg exited",
  "expect client bg signal SIGTERM",
  "expect drawing",
]
"#,
    )
    .expect("write");
    let slow = dir.path().join("slow.toml");
    std::fs::write(
        &slow,
        "name = \"slow\"\ndescription = \"times out\"\nsteps = [\n  \"wait-bound\",\n  'exec \"echo started; sleep 30\" as slow timeout 2',\n]\n",
    )
    .expect("write");
    let file_arg = script.display().to_string();
    let agent_arg = format!("{agent}:/opt/bin/agent2");
    let tree_arg = format!("{}:/opt/tree", tree.display());
    let run = vanish(&[
        "run",
        "--model",
        "bochs",
        "--arch",
        "x86_64",
        "--guest-file",
        &file_arg,
        "--guest-file",
        &agent_arg,
        "--guest-dir",
        &tree_arg,
        // The host's dynamic ls with its loader and libraries from the host's own root.
        "--guest-file",
        "/bin/ls",
        "--guest-sysroot",
        "/",
        "--scenario",
        ok.to_str().unwrap_or_default(),
        "--scenario",
        slow.to_str().unwrap_or_default(),
    ]);
    assert_eq!(run.code, 1, "{}", run.summary());
    let s = run.assert_pass("programs");
    let o = &s["observations"];
    assert_eq!(o["exec_script"]["stdout"], "args: one two\n", "{o}");
    assert_eq!(o["exec_script"]["stderr"], "oops\n", "{o}");
    assert!(
        o["exec_static"]["stdout"]
            .as_str()
            .is_some_and(|t| t.starts_with("vanish-agent ")),
        "{o}"
    );
    assert_eq!(o["exec_static"]["exit_code"], 0);
    assert_eq!(o["exec_exec1"]["stdout"], "hello from the host\n", "{o}");
    assert_eq!(o["client_bg"]["exit_signal"], "SIGTERM", "{o}");
    // /usr/local/bin comes first on the guest's PATH: this is the host's ls, not busybox's.
    assert_eq!(o["exec_ls"]["stdout"], "hello.txt\n", "{o}");
    assert!(
        o["exec_ls"]["cmd"].is_string() && o["exec_ls"]["stderr"] == "",
        "{o}"
    );

    let s = run.scenario("slow");
    assert_eq!(s["verdict"], "fail", "{}", run.summary());
    let problems = s["problems"].to_string();
    assert!(
        problems.contains("did not finish within 2s") && problems.contains("started"),
        "{problems}"
    );
    assert_eq!(s["observations"]["exec_slow"]["timed_out"], true);
}

/// Reads `master` on a thread into a channel.
fn pump(master: std::fs::File) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let mut m = master;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = m.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut Vec<u8>, what: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    while !String::from_utf8_lossy(seen).contains(what) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(d) => seen.extend_from_slice(&d),
            Err(_) => panic!(
                "no {what:?} within {wait:?}; the terminal showed:\n{}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// `vanish run --shell` on a pty: the guest's shell answers, `exit` ends the run, and nothing
/// of it (QEMU, the card server, their sockets) is left.
#[test]
fn shell_on_a_pty() {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty with valid out-pointers.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fds from openpty.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let out = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vanish"))
        .args([
            "run", "--model", "bochs", "--arch", "x86_64", "--shell", "--out",
        ])
        .arg(out.path())
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("vanish run --shell");
    let mut writer = std::fs::File::from(master.try_clone().expect("dup"));
    let rx = pump(std::fs::File::from(master));
    let mut seen = Vec::new();
    wait_for(&rx, &mut seen, "vanish# ", Duration::from_secs(300));
    let text = String::from_utf8_lossy(&seen).into_owned();
    let control = text
        .split_whitespace()
        .skip_while(|w| *w != "--control")
        .nth(1)
        .expect("the printed vanish ctl --control line")
        .to_string();
    let rig_dir = Path::new(&control)
        .parent()
        .expect("socket dir")
        .to_path_buf();
    assert!(rig_dir.is_dir(), "{}", rig_dir.display());
    // The card answers from another "terminal" while the shell runs.
    let status = Command::new(env!("CARGO_BIN_EXE_vanish"))
        .args(["ctl", "--control", &control, "status"])
        .output()
        .expect("vanish ctl");
    assert!(status.status.success(), "{status:?}");

    writer
        .write_all(b"echo hello-$((6*7))\r")
        .expect("write to the pty");
    wait_for(&rx, &mut seen, "hello-42", Duration::from_secs(60));
    writer.write_all(b"exit\r").expect("write to the pty");
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        assert!(
            Instant::now() < deadline,
            "vanish did not end after exit:\n{}",
            String::from_utf8_lossy(&seen)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    while let Ok(d) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.extend_from_slice(&d);
    }
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&seen));
    assert!(
        String::from_utf8_lossy(&seen).contains("guest shell exited (0)"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert!(!rig_dir.exists(), "{} is left", rig_dir.display());
    let left = processes_mentioning(&rig_dir.display().to_string());
    assert!(left.is_empty(), "left running: {left:?}");
}

fn assert_one_line_usage_error(run: &Run, needle: &str) {
    assert_eq!(run.code, 2, "{}", run.summary());
    let err = run.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err}");
}

#[test]
fn bad_guest_files_and_exec_quotes_are_one_line_usage_errors() {
    let run = vanish(&["run", "--guest-file", "/no/such/program"]);
    assert_one_line_usage_error(&run, "--guest-file /no/such/program: ");

    // Host binaries are x86_64 here: a dynamic one needs its libraries.
    let run = vanish(&[
        "run",
        "--model",
        "bochs",
        "--arch",
        "x86_64",
        "--guest-file",
        "/bin/ls",
    ]);
    assert_one_line_usage_error(&run, "libc.so.6");
    assert!(run.stderr.contains("dynamically linked"), "{}", run.stderr);
    let empty = tempfile::tempdir().expect("tmp");
    let root = empty.path().display().to_string();
    let run = vanish(&[
        "run",
        "--model",
        "bochs",
        "--arch",
        "x86_64",
        "--guest-file",
        "/bin/ls",
        "--guest-sysroot",
        &root,
    ]);
    assert_one_line_usage_error(&run, "lacks");

    let bad = empty.path().join("quote.toml");
    std::fs::write(
        &bad,
        "name = \"quote\"\nsteps = [\n  \"wait-bound\",\n  'exec \"cat /dev/urandom > /dev/fb0 as w',\n]\n",
    )
    .expect("write");
    let run = vanish(&["run", "--scenario", bad.to_str().unwrap_or_default()]);
    assert_one_line_usage_error(&run, &format!("{}:4: unterminated quote", bad.display()));
}
