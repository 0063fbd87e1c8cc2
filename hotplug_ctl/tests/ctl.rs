//! `vanish serve` and `vanish ctl` without QEMU: the control socket's verbs, its permissions,
//! and that the server cleans up after itself.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn vanish() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vanish"))
}

fn ctl(control: &std::path::Path, verb: &[&str]) -> (i32, serde_json::Value) {
    let out = vanish()
        .arg("ctl")
        .arg("--control")
        .arg(control)
        .args(verb)
        .output()
        .expect("vanish ctl");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn control_verbs_flip_the_card_and_the_server_cleans_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("gpu.sock");
    let control = dir.path().join("gpu.ctl");
    let mut server = vanish()
        .args(["serve", "--model", "hibmc", "--socket"])
        .arg(&socket)
        .arg("--control")
        .arg(&control)
        .stdout(Stdio::piped())
        .spawn()
        .expect("vanish serve");
    wait_for(&control);
    wait_for(&socket);
    let mode = std::fs::metadata(&control)
        .expect("control")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket must be owner-only");

    let (code, st) = ctl(&control, &["status"]);
    assert_eq!(code, 0);
    assert_eq!(st["status"]["model"], "hibmc");
    assert_eq!(st["status"]["dead"], false);
    assert_eq!(ctl(&control, &["dead"]).1["status"]["dead"], true);
    assert_eq!(ctl(&control, &["alive"]).1["status"]["dead"], false);
    // No guest has set a mode: there is nothing to show, and ctl says so.
    let (code, _) = ctl(
        &control,
        &[
            "screenshot",
            dir.path().join("s.png").to_str().unwrap_or_default(),
        ],
    );
    assert_ne!(code, 0);
    let (code, _) = ctl(&control, &["explode"]);
    assert_eq!(code, 2);

    // SIGTERM: the server removes both sockets.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let status = server.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!socket.exists() && !control.exists(), "sockets left behind");
}

#[test]
fn crash_kills_the_server_like_sigkill() {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("gpu.sock");
    let control = dir.path().join("gpu.ctl");
    let mut server = vanish()
        .args(["serve", "--model", "bochs", "--socket"])
        .arg(&socket)
        .arg("--control")
        .arg(&control)
        .stdout(Stdio::null())
        .spawn()
        .expect("vanish serve");
    wait_for(&control);
    let (code, reply) = ctl(&control, &["crash"]);
    assert_eq!(code, 0, "{reply}");
    let status = server.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn serve_refuses_bad_input_with_one_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = vanish()
        .args(["serve", "--model", "hibmc", "--vram-size", "3M", "--socket"])
        .arg(dir.path().join("s"))
        .output()
        .expect("serve");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("power of two"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
