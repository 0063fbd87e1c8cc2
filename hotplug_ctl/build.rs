//! Builds the guest agent (images/agent) as static musl binaries for both guest architectures
//! and hands their paths to the crate, which embeds them: `vanish` then carries everything a
//! guest needs. Installs the musl targets with rustup when they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGETS: [(&str, &str); 2] = [
    ("x86_64-unknown-linux-musl", "VANISH_AGENT_X86_64"),
    ("aarch64-unknown-linux-musl", "VANISH_AGENT_AARCH64"),
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("workspace root").to_path_buf();
    let agent = workspace.join("images/agent");
    for p in ["src", "Cargo.toml", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", agent.join(p).display());
    }
    // The agent speaks the protocol crate: a change there is a change of the agent.
    for p in ["src", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join("guest_protocol").join(p).display()
        );
    }
    // One target dir for every profile of the outer build (debug, release, clippy), outside
    // the outer build's own directories so the nested cargo never waits on its lock.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("vanish-agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (target, var) in TARGETS {
        ensure_target(target);
        let mut cmd = Command::new(&cargo);
        // The outer build's settings (its rustflags, clippy wrapper, jobserver, profile) are not
        // the agent's.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            let keep = k == "CARGO_HOME" || k == "CARGO_NET_OFFLINE";
            if (k.starts_with("CARGO_") && !keep)
                || k.starts_with("RUSTC")
                || k.starts_with("RUSTFLAGS")
                || k == "RUSTDOCFLAGS"
            {
                cmd.env_remove(&k);
            }
        }
        cmd.current_dir(&workspace)
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(agent.join("Cargo.toml"))
            .arg("--config")
            .arg(agent.join(".cargo/config.toml"))
            .args(["--target", target, "--target-dir"])
            .arg(&target_dir);
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("running {cargo} for the guest agent: {e}"));
        assert!(
            status.success(),
            "building the guest agent for {target} failed"
        );
        let bin = target_dir.join(target).join("release/vanish-agent");
        assert!(bin.is_file(), "{} was not built", bin.display());
        println!("cargo:rustc-env={var}={}", bin.display());
    }
}

/// Installs the rust standard library for `target` with rustup if it is missing.
fn ensure_target(target: &str) {
    let libdir = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "target-libdir", "--target", target])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir
        .as_deref()
        .is_some_and(|d| Path::new(d).join("libstd.rlib").exists() || has_std(d))
    {
        return;
    }
    println!("cargo:warning=installing the Rust target {target} for the guest agent (rustup target add {target})");
    let ok = Command::new("rustup")
        .args(["target", "add", target])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the guest agent needs the Rust target {target}: run `rustup target add {target}`"
    );
}

fn has_std(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
        .unwrap_or(false)
}
