//! Real provisioning: downloads Debian kernels and busybox, finds or builds QEMU with
//! vfio-user-pci, builds initramfs images and boots them under TCG. Needs network access to the
//! Debian mirror (first run) and takes a while; it fails, never skips, when something is missing.
//!
//! Uses `Cache::from_env()`, so `VANISH_CACHE` selects the cache (default `~/.cache/vanish`).
//! `VANISH_TEST_KERNEL` picks the Debian kernel version to test (default `6.12`; e.g. `6.1`,
//! `7.2`, or an exact ABI).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use images::{Arch, Cache, GuestKernel, Initramfs, InitramfsSpec, Qemu};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const MARKER: &str = "VANISH-INIT-OK";

/// Kills and reaps QEMU whatever happens (timeout, panic).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_module_file(dir: &Path, stem: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            find_module_file(&p, stem)
        } else {
            p.file_name()
                .map(|n| n.to_string_lossy().starts_with(&format!("{stem}.ko")))
                .unwrap_or(false)
        }
    })
}

fn init_script(load_order: &[String]) -> String {
    let names: Vec<String> = load_order
        .iter()
        .map(|p| {
            let f = p.rsplit('/').next().unwrap_or(p);
            f.trim_end_matches(".ko").replace('-', "_")
        })
        .collect();
    let names = names.join(" ");
    format!(
        "#!/bin/sh\n\
         export PATH=/bin:/sbin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         for m in {names}; do modprobe $m || echo \"VANISH-MODPROBE-FAILED $m\"; done\n\
         for m in {names}; do [ -d /sys/module/$m ] || echo \"VANISH-MODULE-ABSENT $m\"; done\n\
         echo \"VANISH-FILE $(cat /etc/vanish/extra.txt)\"\n\
         echo \"{MARKER} $(uname -r)\"\n\
         poweroff -f\n"
    )
}

/// Boot `kernel` + `initrd` under TCG and return the serial output up to the marker line.
fn boot(qemu: &Qemu, kernel: &GuestKernel, initrd: &Initramfs) -> String {
    let mut cmd = qemu.command();
    cmd.args([
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
    ])
    .args(["-no-reboot", "-m", "512"]);
    match kernel.arch {
        Arch::X86_64 => cmd.args(["-machine", "q35"]),
        Arch::Aarch64 => cmd.args(["-machine", "virt", "-cpu", "max"]),
    };
    cmd.arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&initrd.path)
        .arg("-append")
        .arg(format!("console={} panic=-1", kernel.arch.console()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().expect("cannot start QEMU"));
    let stdout = child.0.stdout.take().expect("stdout");
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx2.send(format!("[qemu stderr] {line}")).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = start + BOOT_TIMEOUT;
    loop {
        let now = Instant::now();
        if now >= deadline {
            panic!(
                "no `{MARKER}` line from the {} guest within {BOOT_TIMEOUT:?}; output:\n{log}",
                kernel.arch
            );
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains(MARKER) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait();
                panic!(
                    "QEMU exited ({status:?}) before `{MARKER}` for the {} guest; output:\n{log}",
                    kernel.arch
                );
            }
        }
    }
    // poweroff -f should end QEMU promptly; give it a moment, then the guard kills it.
    let grace = Instant::now() + Duration::from_secs(10);
    while Instant::now() < grace {
        if let Ok(Some(_)) = child.0.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{} guest reached the marker in {:.1}s",
        kernel.arch,
        start.elapsed().as_secs_f64()
    );
    log
}

fn kernel_version() -> String {
    std::env::var("VANISH_TEST_KERNEL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "6.12".to_string())
}

fn provision_and_boot(arch: Arch, modules: &[&str]) -> (GuestKernel, Initramfs, String) {
    let cache = Cache::from_env().expect("cache");
    let t = Instant::now();
    let version = kernel_version();
    let kernel = images::provision_debian_kernel(&cache, arch, &version)
        .unwrap_or_else(|e| panic!("provisioning the {version} {arch} kernel: {e}"));
    let r = &kernel.release;
    assert!(
        (r.starts_with(&format!("{version}.")) || r.starts_with(&format!("{version}-")))
            && r.ends_with(&format!("-{}", arch.debian())),
        "unexpected release {r} for version {version}"
    );
    assert!(kernel.image.is_file(), "{}", kernel.image.display());
    // The package's own module lists; no modules.dep (there is no host depmod: the
    // initramfs builder reads each module's .modinfo, and this test's boot proves it).
    for listed in ["modules.order", "modules.builtin"] {
        let path = kernel.modules_dir().join(listed);
        assert!(path.is_file(), "{}", path.display());
    }
    assert!(kernel.modules_dir().join("kernel/drivers").is_dir());
    // The same files used as a "user" kernel: the release must be read back from the image.
    let user = images::user_kernel(arch, &kernel.image, Some(&kernel.modules_root))
        .unwrap_or_else(|e| panic!("user_kernel on the Debian kernel: {e}"));
    assert_eq!(user.release, kernel.release);
    assert_eq!(user.modules_root, kernel.modules_root);
    let image = std::fs::read(&kernel.image).expect("read image");
    assert_eq!(
        images::kernel_release_from_image(&image).as_deref(),
        Some(kernel.release.as_str())
    );
    let init_modules = modules;
    // First build with a throwaway init to learn the load order, then the real one.
    let probe = images::build_initramfs(
        &cache,
        &InitramfsSpec {
            kernel: &kernel,
            modules: init_modules,
            init: "#!/bin/sh\npoweroff -f\n",
            files: &[],
        },
    )
    .unwrap_or_else(|e| panic!("building the {arch} initramfs: {e}"));
    let init = init_script(&probe.load_order);
    let extra = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(extra.path(), "hello-from-host\n").expect("write temp file");
    let initrd = images::build_initramfs(
        &cache,
        &InitramfsSpec {
            kernel: &kernel,
            modules: init_modules,
            init: &init,
            files: &[("/etc/vanish/extra.txt", extra.path(), 0o644)],
        },
    )
    .unwrap_or_else(|e| panic!("building the {arch} initramfs: {e}"));
    assert_eq!(initrd.load_order, probe.load_order);
    let qemu =
        images::provision_qemu(&cache, arch).unwrap_or_else(|e| panic!("provisioning QEMU: {e}"));
    eprintln!(
        "{arch}: provisioned {} ({}) and QEMU {} in {:.1}s; load order {:?}; built-in {:?}",
        kernel.release,
        kernel.package_version,
        qemu.version,
        t.elapsed().as_secs_f64(),
        initrd.load_order,
        initrd.builtin_modules
    );
    let log = boot(&qemu, &kernel, &initrd);
    let marker = log.lines().find(|l| l.contains(MARKER)).unwrap_or_default();
    assert!(
        marker.contains(&format!("{MARKER} {}", kernel.release)),
        "marker line `{marker}` does not name release {}",
        kernel.release
    );
    assert!(
        log.contains("VANISH-FILE hello-from-host"),
        "extra file missing in the guest:\n{log}"
    );
    assert!(
        !log.contains("VANISH-MODPROBE-FAILED") && !log.contains("VANISH-MODULE-ABSENT"),
        "module loading failed:\n{log}"
    );
    (kernel, initrd, log)
}

#[test]
fn amd64_kernel_provisions_and_boots() {
    let (kernel, initrd, _) =
        provision_and_boot(Arch::X86_64, &["bochs", "virtio_pci", "virtio_console"]);
    assert!(
        initrd.missing_modules.is_empty(),
        "{:?}",
        initrd.missing_modules
    );
    assert!(initrd.load_order.iter().any(|m| m.ends_with("/bochs.ko")));
    assert!(
        !find_module_file(&kernel.modules_dir(), "hibmc-drm"),
        "amd64 kernel unexpectedly ships hibmc-drm"
    );
    let cache = Cache::from_env().unwrap();
    let with_hibmc = images::build_initramfs(
        &cache,
        &InitramfsSpec {
            kernel: &kernel,
            modules: &["hibmc-drm", "bochs"],
            init: "#!/bin/sh\npoweroff -f\n",
            files: &[],
        },
    )
    .unwrap();
    assert_eq!(with_hibmc.missing_modules, ["hibmc-drm"]);
}

#[test]
fn arm64_kernel_provisions_and_boots() {
    let (kernel, initrd, _) = provision_and_boot(
        Arch::Aarch64,
        &["hibmc-drm", "bochs", "virtio_pci", "virtio_console"],
    );
    assert!(
        initrd.missing_modules.is_empty(),
        "{:?}",
        initrd.missing_modules
    );
    assert!(initrd
        .load_order
        .iter()
        .any(|m| m.ends_with("/hibmc-drm.ko")));
    assert!(initrd.load_order.iter().any(|m| m.ends_with("/bochs.ko")));
    assert!(find_module_file(&kernel.modules_dir(), "hibmc-drm"));
}
