//! Issues 10 and 15: a kernel developer's own tree. Debian's linux-source-6.12 becomes a git tree
//! of three commits (as Debian ships it; + `pci_set_master()` in hibmc's probe; an unrelated
//! README change), configured with `vanish kconfig` (minimal, hibmc built in, arm64) through
//! ci/build-kernel.sh and built ONCE; the same build directory then serves the boot checks, the
//! rebind finding and, incrementally, `git bisect run ci/bisect.sh` in the find-the-fix direction.
//! One test, in order, so that CI builds one kernel, not three.
//!
//! Build directories live under CARGO_TARGET_TMPDIR so a second run is incremental.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// hibmc's lost-MSI vblank WARN: the fingerprint the bisect follows.
const VBLANK: &str = "warning:drivers/gpu/drm/drm_atomic_helper.c:drm_atomic_helper_wait_for_vblanks<drm_atomic_helper_commit_tail";

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn fingerprints(run: &Run, scenario: &str) -> Vec<(String, Vec<String>)> {
    run.scenario(scenario)["fingerprints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let phases = f["phases"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect();
            (f["fingerprint"].as_str().unwrap_or("").to_string(), phases)
        })
        .collect()
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
    let out = Command::new(repo_root().join("ci/bisect.sh"))
        .args(["--scenario", "unbind-rebnd"])
        .current_dir(&repo)
        .env("VANISH", env!("CARGO_BIN_EXE_vanish"))
        .output()
        .expect("bisect.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128), "{stderr}");
    assert!(stderr.contains("unbind-rebnd"), "{stderr}");
    assert!(
        !repo.join(".vanish-build").exists(),
        "bisect.sh started a build: {stderr}"
    );
}

/// Builds commit 1 with hibmc built in and judges it, bisects to the fix, boots the fix.
/// A fake build directory: a `.config`, and with `built` an image and a kernel.release.
fn fake_tree(dir: &Path, config: &str, built: bool) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("include/config")).expect("mkdir");
    std::fs::write(dir.join(".config"), config).expect(".config");
    if built {
        std::fs::create_dir_all(dir.join("arch/arm64/boot")).expect("mkdir");
        std::fs::write(dir.join("arch/arm64/boot/Image"), b"not a kernel").expect("Image");
        std::fs::write(dir.join("include/config/kernel.release"), "6.12.117\n").expect("release");
    }
}

/// `--kernel` on trees that cannot be booted, through the CLI: one line each, before any QEMU
/// starts, with docs/bisect.md's codes (2: the command line is wrong; 125: this commit cannot be
/// judged, so a bisect skips it).
#[test]
fn kernel_trees_that_cannot_boot_are_one_line_errors() {
    let unbuilt = tmp("trees/unbuilt");
    fake_tree(&unbuilt, "CONFIG_ARM64=y\nCONFIG_DRM_HISI_HIBMC=y\n", false);
    let arm = tmp("trees/arm64");
    fake_tree(&arm, "CONFIG_ARM64=y\nCONFIG_DRM_HISI_HIBMC=y\n", true);
    let nodrv = tmp("trees/no-driver");
    fake_tree(
        &nodrv,
        "CONFIG_ARM64=y\n# CONFIG_DRM_HISI_HIBMC is not set\n",
        true,
    );
    let cases: [(&[&str], i32, &str); 4] = [
        (&["--kernel", &unbuilt.to_string_lossy()], 2, "never built"),
        (
            &["--kernel", &arm.to_string_lossy(), "--arch", "x86_64"],
            2,
            "kernel tree for aarch64, not x86_64",
        ),
        (
            &["--kernel", &nodrv.to_string_lossy()],
            125,
            "CONFIG_DRM_HISI_HIBMC is not set",
        ),
        (
            &["--kernel", &arm.to_string_lossy(), "--model", "bochs"],
            125,
            "CONFIG_DRM_BOCHS is not set",
        ),
    ];
    for (args, code, says) in cases {
        let out_dir = tmp("trees/out");
        let out = Command::new(env!("CARGO_BIN_EXE_vanish"))
            .arg("run")
            .args(args)
            .args(["--scenario", "boot", "--out", &out_dir.to_string_lossy()])
            .output()
            .expect("vanish");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            !out_dir.join("qemu.log").exists(),
            "{args:?}: QEMU was started"
        );
    }
}

#[test]
fn own_tree_builds_is_judged_and_bisects_to_the_fix() {
    let src = kernel_source("6.12");
    let tree = tmp("bisect-linux");
    let _ = std::fs::remove_dir_all(&tree);
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

    // Commit 1 (6.12 as Debian ships it), hibmc built in, no modules at all.
    git(&tree, &["checkout", "-q", &c1]);
    let build = tmp("kernel-tree/build-arm64");
    let (image, took) = build_kernel(
        "aarch64",
        "hibmc",
        &[("SRC", tree.as_path()), ("OUT", build.as_path())],
    );
    record_timing(
        "minimal hibmc (built in) arm64 build of linux-source-6.12, configure included (incremental if the build dir was warm)",
        took,
    );
    assert!(image.is_file(), "{}", image.display());
    assert!(
        build.join("dist/mods").is_dir(),
        "build-kernel.sh writes dist/mods (modules.builtin) even without modules"
    );

    // A built-in driver, no --modules: judged, not skipped. 6.12's hibmc probes during kernel
    // init, before the init sets Bus Master Enable, and never sets it itself: the first probe's
    // vblank WARNs are counted in `boot` (phase boot), while the card is bound and drawn.
    let run = vanish(&[
        "run",
        "--kernel",
        &image.to_string_lossy(),
        "--scenario",
        "boot",
    ]);
    assert_eq!(run.code, 1, "a real verdict, not 125: {}", run.summary());
    let boot = run.scenario("boot");
    assert_eq!(boot["driver_bound"], true, "{}", run.summary());
    let fps = fingerprints(&run, "boot");
    assert!(
        fps.iter()
            .any(|(f, p)| f == VBLANK && p.iter().any(|x| x == "boot")),
        "{fps:?}"
    );
    assert_console_screenshot(&run.path("screenshot.png"));

    // The build directory itself, with a rebind: the WARNs come again.
    let run = vanish(&[
        "run",
        "--kernel",
        &build.to_string_lossy(),
        "--scenario",
        "unbind-rebind",
    ]);
    assert_eq!(run.code, 1, "{}", run.summary());
    assert!(
        fingerprints(&run, "unbind-rebind")
            .iter()
            .any(|(f, _)| f == VBLANK),
        "{}",
        run.summary()
    );
    assert!(
        run.report()["kernel"]
            .as_str()
            .is_some_and(|k| k.starts_with("6.12")),
        "{}",
        run.summary()
    );

    // Find the fix, following only that fingerprint, in the same (now warm) build directory.
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
        .args(["--judge-by", VBLANK, "--scenario", "unbind-rebind"])
        .env("FIND_FIX", "1")
        .env("OUT", &build)
        .env("VANISH", env!("CARGO_BIN_EXE_vanish"))
        .env("JOBS", std::env::var("JOBS").unwrap_or_else(|_| "2".into()))
        .output()
        .expect("git bisect run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    record_timing("git bisect run over 3 commits (FIND_FIX)", start.elapsed());
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "git bisect run failed");
    assert!(
        stdout.contains(&format!("{c2} is the first fixed commit")),
        "bisect did not name {c2}"
    );
    git(&tree, &["bisect", "reset"]);

    // The fix, booted from its build directory: bound, drawn, vblank judged, exit 0.
    git(&tree, &["checkout", "-q", &c2]);
    let (_, took) = build_kernel(
        "aarch64",
        "hibmc",
        &[("SRC", tree.as_path()), ("OUT", build.as_path())],
    );
    record_timing("incremental rebuild of the fix", took);
    let run = vanish(&[
        "run",
        "--kernel",
        &build.to_string_lossy(),
        "--scenario",
        "boot",
    ]);
    assert_eq!(run.code, 0, "{}", run.summary());
    run.assert_pass("boot");
    assert_console_screenshot(&run.path("screenshot.png"));
}
