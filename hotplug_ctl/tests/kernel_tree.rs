//! Issue 10: a kernel developer's own tree. Debian's linux-source-6.12 is configured with
//! `vanish kconfig` (minimal, hibmc, arm64) through ci/build-kernel.sh, built, booted with
//! `vanish run --kernel`, and bisected with ci/bisect.sh to the commit that adds hibmc's missing
//! `pci_set_master()`.
//!
//! Build directories live under CARGO_TARGET_TMPDIR so a second run is incremental.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// The minimal hibmc arm64 kernel (driver as a module), built (or brought up to date) in a
/// persistent build dir.
fn minimal_hibmc_build() -> (PathBuf, PathBuf) {
    let src = kernel_source("6.12");
    let out = tmp("kernel-tree/arm64-minimal-hibmc-m");
    // hibmc as a module: a built-in hibmc probes during kernel init, before the init sets Bus
    // Master Enable as firmware would, and 6.12's hibmc (no pci_set_master) then logs vblank
    // WARNs at boot, a real finding that fails `--scenario boot`.
    let (image, took) = build_kernel(
        "aarch64",
        "hibmc",
        &[
            ("SRC", src.as_path()),
            ("OUT", out.as_path()),
            ("MODULES", Path::new("1")),
        ],
    );
    eprintln!(
        "minimal hibmc arm64 build of linux-source-6.12: {:.0} s (includes configuring; incremental if the build dir was warm)",
        took.as_secs_f64()
    );
    assert!(
        out.join("dist/mods/lib/modules")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "dist/mods/lib/modules/RELEASE missing"
    );
    (out, image)
}

fn check_hibmc_boot(run: &Run) {
    assert_eq!(run.code, 0, "{}", run.summary());
    let s = run.assert_pass("boot");
    assert_eq!(s["observations"]["drm"], "card0", "{}", run.summary());
    assert_console_screenshot(&run.path("screenshot.png"));
}

#[test]
fn minimal_kernel_boots_from_its_image() {
    let (out, image) = minimal_hibmc_build();
    let mods = out.join("dist/mods");
    let run = vanish(&[
        "run",
        "--kernel",
        &image.to_string_lossy(),
        "--modules",
        &mods.to_string_lossy(),
        "--scenario",
        "boot",
    ]);
    check_hibmc_boot(&run);
}

/// `vanish run --kernel BUILD_DIR`: resolved with images::kernel_tree (modules gathered from the
/// build dir's modules.order).
#[test]
fn minimal_kernel_boots_from_its_build_dir() {
    let (out, _) = minimal_hibmc_build();
    let run = vanish(&[
        "run",
        "--kernel",
        &out.to_string_lossy(),
        "--scenario",
        "boot",
    ]);
    check_hibmc_boot(&run);
}

/// A throwaway git repository for the script's checks that need no kernel.
fn tiny_repo(name: &str) -> PathBuf {
    let d = tmp(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("Makefile"), "all:\n").expect("write");
    git(&d, &["init", "-q"]);
    git(&d, &["add", "."]);
    git(&d, &["commit", "-q", "-m", "one"]);
    d
}

#[test]
fn bisect_aborts_on_a_mistyped_scenario_before_building() {
    let repo = tiny_repo("bisect-usage");
    let start = Instant::now();
    let out = Command::new(repo_root().join("ci/bisect.sh"))
        .args(["--scenario", "unbind-rebnd"])
        .current_dir(&repo)
        .env("VANISH", env!("CARGO_BIN_EXE_vanish"))
        .output()
        .expect("bisect.sh");
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(stderr.contains("unbind-rebnd"), "{stderr}");
    assert!(
        !repo.join(".vanish-build").exists(),
        "bisect.sh started a build: {stderr}"
    );
}

/// Commit 1: Debian's 6.12 as is (hibmc never calls pci_set_master: rebind loses vblank).
/// Commit 2: adds pci_set_master() after pcim_enable_device(). Commit 3: a README change.
/// FIND_FIX=1 git bisect run ci/bisect.sh --scenario unbind-rebind must name commit 2.
#[test]
fn bisect_finds_the_commit_that_fixes_hibmc_rebind() {
    let src = kernel_source("6.12");
    let tree = tmp("bisect-linux");
    let _ = std::fs::remove_dir_all(&tree);
    // The build directory outside the tree (bisect.sh passes OUT on to build-kernel.sh), so a
    // second run of this test builds incrementally.
    let build = tmp("bisect-build");
    let start = Instant::now();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&tree)
        .status()
        .expect("cp");
    assert!(ok.success());
    // Debian's tarball ends its .gitignore with `/*` (ignore the whole top level): without
    // removing that, `git add -A` would commit nothing.
    let gi = tree.join(".gitignore");
    let text = std::fs::read_to_string(&gi).unwrap_or_default();
    let kept: String = match text.find("# Debian packaging") {
        Some(i) => text[..i].to_string(),
        None => text
            .lines()
            .filter(|l| l.trim() != "/*" && l.trim() != "!/debian/")
            .map(|l| format!("{l}\n"))
            .collect(),
    };
    std::fs::write(&gi, kept).expect("write .gitignore");
    git(&tree, &["init", "-q"]);
    git(&tree, &["add", "-A"]);
    git(
        &tree,
        &["commit", "-q", "-m", "linux-source-6.12 as Debian ships it"],
    );
    let c1 = git(&tree, &["rev-parse", "HEAD"]).trim().to_string();
    let n: usize = git(&tree, &["ls-files"]).lines().count();
    assert!(n > 50_000, "only {n} files committed: the .gitignore trap");

    let drv = tree.join("drivers/gpu/drm/hisilicon/hibmc/hibmc_drm_drv.c");
    let code = std::fs::read_to_string(&drv).expect("hibmc_drm_drv.c");
    let anchor = "ret = pcim_enable_device(pdev);";
    let at = code
        .find(anchor)
        .expect("pcim_enable_device in hibmc probe");
    // After the `if (ret) { ... }` that follows the call.
    let rest = &code[at..];
    let close = rest
        .find("\t}\n")
        .expect("error branch after pcim_enable_device")
        + 3;
    let fixed = format!(
        "{}\n\tpci_set_master(pdev);\n{}",
        &code[..at + close],
        &code[at + close..]
    );
    std::fs::write(&drv, fixed).expect("write hibmc_drm_drv.c");
    git(
        &tree,
        &[
            "commit",
            "-q",
            "-a",
            "-m",
            "drm/hisilicon/hibmc: set bus mastering in probe",
        ],
    );
    let c2 = git(&tree, &["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(tree.join("README"), "Linux kernel, bisect test\n").expect("README");
    git(&tree, &["commit", "-q", "-a", "-m", "README: unrelated"]);
    let c3 = git(&tree, &["rev-parse", "HEAD"]).trim().to_string();
    eprintln!(
        "tree copied and committed in {:.0} s",
        start.elapsed().as_secs_f64()
    );

    git(
        &tree,
        &["bisect", "start", "--term-old=broken", "--term-new=fixed"],
    );
    git(&tree, &["bisect", "fixed", &c3]);
    git(&tree, &["bisect", "broken", &c1]);
    let start = Instant::now();
    let out = Command::new("git")
        .arg("-C")
        .arg(&tree)
        .args(["bisect", "run"])
        .arg(repo_root().join("ci/bisect.sh"))
        .args(["--scenario", "unbind-rebind"])
        .env("FIND_FIX", "1")
        .env("OUT", &build)
        .env("VANISH", env!("CARGO_BIN_EXE_vanish"))
        .env("JOBS", std::env::var("JOBS").unwrap_or_else(|_| "2".into()))
        .output()
        .expect("git bisect run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "git bisect run took {:.0} s\n{stdout}\n{stderr}",
        start.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "git bisect run failed");
    assert!(
        stdout.contains(&format!("{c2} is the first fixed commit")),
        "bisect did not name {c2}"
    );
    git(&tree, &["bisect", "reset"]);
}
