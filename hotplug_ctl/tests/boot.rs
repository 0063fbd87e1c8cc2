//! Issue: a real driver binds to our card (bochs on x86-64 and arm64) and the HIBMC card on
//! arm64 6.1, 6.12 and 7.2: EDID modes, vblank interrupts, fbcon in our VRAM.

mod common;
use common::*;

fn check_boot(run: &Run, model: &str, arch: &str, kernel_prefix: &str) -> serde_json::Value {
    assert_eq!(run.code, 0, "{}", run.summary());
    let r = run.report();
    assert_eq!(r["model"], model);
    assert_eq!(r["arch"], arch);
    assert!(
        r["kernel"]
            .as_str()
            .unwrap_or("")
            .starts_with(kernel_prefix),
        "kernel {}",
        r["kernel"]
    );
    assert!(
        r["qemu_version"].as_str().unwrap_or("").starts_with("11."),
        "qemu {}",
        r["qemu_version"]
    );
    assert!(r["vanish_version"].is_string());
    let boot = run.assert_pass("boot").clone();
    let obs = &boot["observations"];
    // Our device, behind the hotplug-capable pcie-root-port (1b36:000c), seen from the guest.
    assert_eq!(boot["pci_address"], "0000:01:00.0");
    assert_eq!(obs["parent_id"], "0x1b36:0x000c");
    assert_eq!(obs["fb0"], true, "/dev/fb0");
    assert_eq!(obs["dri_card0"], true, "/dev/dri/card0");
    assert_console_screenshot(&run.path("screenshot.png"));
    assert_clean_log(run);
    boot
}

#[test]
fn bochs_binds_on_x86_64_debian_6_12() {
    let run = vanish(&[
        "run",
        "--model",
        "bochs",
        "--arch",
        "x86_64",
        "--scenario",
        "boot",
    ]);
    let boot = check_boot(&run, "bochs", "x86_64", "6.12");
    assert!(run.console().contains("[drm] Initialized bochs-drm"));
    // The guest read our ID through BAR2 and the EDID we serve (1024x768 preferred).
    let modes = boot["observations"]["modes"][0].as_str().unwrap_or("");
    assert!(modes.contains(" 1024x768 "), "modes {modes}");
}

#[test]
fn bochs_binds_on_aarch64_debian_6_12() {
    let run = vanish(&[
        "run",
        "--model",
        "bochs",
        "--arch",
        "aarch64",
        "--scenario",
        "boot",
    ]);
    check_boot(&run, "bochs", "aarch64", "6.12");
}

/// What a HIBMC boot must show on every kernel: EDID modes (1024x768 first), vblank IRQs.
fn check_hibmc(version: &str) {
    let run = vanish(&[
        "run",
        "--model",
        "hibmc",
        "--arch",
        "aarch64",
        "--debian-kernel",
        version,
        "--scenario",
        "boot",
    ]);
    let boot = check_boot(&run, "hibmc", "aarch64", version);
    let obs = &boot["observations"];
    assert_eq!(obs["connectors"][0], "card0-VGA-1 connected");
    let modes: Vec<&str> = obs["modes"][0]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .collect();
    // The default EDID's modes that hibmc's PLL table accepts, preferred first.
    assert_eq!(modes.first(), Some(&"1024x768"), "modes {modes:?}");
    for m in ["800x600", "640x480", "1280x1024", "1920x1080"] {
        assert!(modes.contains(&m), "{m} missing from {modes:?}");
    }
    // Only what the EDID offers: the driver's no-EDID fallback would add these.
    for m in ["1600x900", "1280x768"] {
        assert!(
            !modes.contains(&m),
            "{m} is not in our EDID but listed: {modes:?}"
        );
    }
    let irqs = obs["vblank_irqs_per_s"].as_u64().unwrap_or(0);
    assert!(irqs >= 20, "vblank interrupts per second: {irqs}");
    assert!(run.console().contains("hibmc"), "hibmc did not log");
}

#[test]
fn hibmc_on_arm64_debian_6_1() {
    check_hibmc("6.1");
}

#[test]
fn hibmc_on_arm64_debian_6_12() {
    check_hibmc("6.12");
}

#[test]
fn hibmc_on_arm64_debian_7_2() {
    check_hibmc("7.2");
}

#[test]
fn hibmc_without_a_monitor_offers_the_drivers_fallback_modes() {
    let run = vanish(&[
        "run",
        "--model",
        "hibmc",
        "--arch",
        "aarch64",
        "--no-monitor",
        "--scenario",
        "boot",
    ]);
    let boot = check_boot(&run, "hibmc", "aarch64", "6.12");
    let modes: Vec<&str> = boot["observations"]["modes"][0]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .collect();
    // No EDID: drm_add_modes_noedid's DMT list filtered by the PLL table, 1024x768 preferred.
    // It has 1600x900 and 1280x768, which our default monitor's EDID does not offer.
    assert_eq!(modes.first(), Some(&"1024x768"), "{modes:?}");
    for m in ["1600x900", "1280x768"] {
        assert!(
            modes.contains(&m),
            "{m} missing from the fallback list {modes:?}"
        );
    }
}

/// A user's kernel: an image plus an INSTALL_MOD_PATH tree (here Debian's, unpacked).
#[test]
fn a_users_kernel_with_a_modules_tree_boots_with_the_card() {
    let debian = vanish(&[
        "run",
        "--model",
        "bochs",
        "--arch",
        "x86_64",
        "--scenario",
        "boot",
    ]);
    assert_eq!(debian.code, 0, "{}", debian.summary());
    let image = std::path::PathBuf::from(
        debian.report()["kernel_image"]
            .as_str()
            .expect("kernel_image"),
    );
    // .../root/boot/vmlinuz-RELEASE: the package root holds lib/modules/RELEASE.
    let root = image
        .parent()
        .and_then(|p| p.parent())
        .expect("package root");
    let modules = if root.join("lib/modules").is_dir() {
        root.to_path_buf()
    } else {
        root.join("usr")
    };
    assert!(
        modules.join("lib/modules").is_dir(),
        "no modules under {}",
        modules.display()
    );
    let run = vanish(&[
        "run",
        "--model",
        "bochs",
        "--arch",
        "x86_64",
        "--kernel",
        image.to_str().unwrap_or_default(),
        "--modules",
        modules.to_str().unwrap_or_default(),
        "--scenario",
        "boot",
    ]);
    check_boot(&run, "bochs", "x86_64", "6.12");
}
