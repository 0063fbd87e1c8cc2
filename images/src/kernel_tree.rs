//! A kernel developer's own tree for `vanish run --kernel DIR`: a build directory (`make O=DIR`),
//! a source tree built in-tree, a source tree whose `ci/build-kernel.sh` build sits in
//! `.vanish-build/<arch>`, or the `dist/` directory build-kernel.sh writes.
//!
//! [`resolve`] reads the tree's `.config` for the architecture and the card's driver, finds the
//! boot image and the release (`include/config/kernel.release`), gathers the built modules into a
//! temporary `INSTALL_MOD_PATH`-style root (what `make modules_install` would install, copied
//! without running make: make with another toolchain environment than the build's would re-run
//! Kconfig and change the tree's `.config`), or, without modules, a root holding only
//! `modules.builtin*` so the initramfs knows what is built in; and reads the tree's git commit,
//! `git describe` and remote URL.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{at, Error, IoContext, Result};
use crate::kernel::GuestKernel;
use crate::Arch;

/// Where a tree's commit came from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GitInfo {
    /// Full commit hash of HEAD.
    pub commit: String,
    /// `git describe --always --dirty --tags`, e.g. `v6.12-rc1-5-gabcdef-dirty`.
    pub describe: String,
    /// The URL of the `origin` remote (else the first remote), if any.
    pub remote: Option<String>,
}

/// A resolved kernel tree, ready to boot. Keep it alive while the kernel is in use: it owns the
/// temporary modules root.
#[derive(Debug)]
pub struct KernelTree {
    /// The directory holding `.config` (the `O=` directory, or the source tree itself).
    pub build_dir: PathBuf,
    /// The source tree (equal to `build_dir` for in-tree builds; None for a bare `dist/`).
    pub src_dir: Option<PathBuf>,
    pub arch: Arch,
    /// `include/config/kernel.release`, e.g. `6.12.117`.
    pub release: String,
    /// `arch/arm64/boot/Image` or `arch/x86/boot/bzImage`.
    pub image: PathBuf,
    /// The tree's `.config`.
    pub config_path: PathBuf,
    /// Symbol (without `CONFIG_`) to value (`y`, `m`, `n`, strings with their quotes).
    pub config: BTreeMap<String, String>,
    /// How many modules were gathered (0 when the kernel has none or they are all built in).
    pub module_count: usize,
    /// The `INSTALL_MOD_PATH`-style root, holding `lib/modules/<release>`.
    pub modules_root: PathBuf,
    /// The tree's git state, when the source tree is the top of a git work tree.
    pub git: Option<GitInfo>,
    _tmp: Option<tempfile::TempDir>,
}

impl KernelTree {
    /// The kernel in the form the runner boots (`package_version` is `git describe`, else
    /// `local`).
    pub fn guest_kernel(&self) -> GuestKernel {
        GuestKernel {
            arch: self.arch,
            release: self.release.clone(),
            image: self.image.clone(),
            modules_root: self.modules_root.clone(),
            package_version: self
                .git
                .as_ref()
                .map(|g| g.describe.clone())
                .unwrap_or_else(|| "local".into()),
        }
    }

    /// `CONFIG_<sym>` is `y` or `m`.
    pub fn has(&self, sym: &str) -> bool {
        matches!(
            self.config.get(sym).map(String::as_str),
            Some("y") | Some("m")
        )
    }
}

/// The image path for an architecture, relative to the build directory.
pub fn image_path(arch: Arch) -> &'static str {
    match arch {
        Arch::Aarch64 => "arch/arm64/boot/Image",
        Arch::X86_64 => "arch/x86/boot/bzImage",
    }
}

fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(sym) = line
            .strip_prefix("# CONFIG_")
            .and_then(|r| r.strip_suffix(" is not set"))
        {
            m.insert(sym.to_string(), "n".to_string());
        } else if let Some((k, v)) = line.strip_prefix("CONFIG_").and_then(|r| r.split_once('=')) {
            m.insert(k.to_string(), v.to_string());
        }
    }
    m
}

/// The architecture a `.config` is for.
fn config_arch(cfg: &BTreeMap<String, String>) -> Option<std::result::Result<Arch, &'static str>> {
    let on = |s: &str| cfg.get(s).is_some_and(|v| v == "y");
    if on("ARM64") {
        Some(Ok(Arch::Aarch64))
    } else if on("X86_64") {
        Some(Ok(Arch::X86_64))
    } else if on("X86") {
        Some(Err("32-bit x86 (CONFIG_X86_64 is not set)"))
    } else if on("ARM") {
        Some(Err("32-bit arm"))
    } else if on("RISCV") {
        Some(Err("riscv"))
    } else {
        None
    }
}

/// Where the `.config` of what the user pointed at lives, and its layout.
enum Layout {
    /// A build directory (O= or in-tree) with `.config`.
    Build(PathBuf),
    /// build-kernel.sh's `dist/`: `config`, `Image`/`bzImage`, `mods/`.
    Dist(PathBuf),
}

fn find_layout(path: &Path, arch: Option<Arch>) -> Result<Layout> {
    if path.join(".config").is_file() {
        return Ok(Layout::Build(path.to_path_buf()));
    }
    if path.join("config").is_file()
        && (path.join("Image").is_file() || path.join("bzImage").is_file())
    {
        return Ok(Layout::Dist(path.to_path_buf()));
    }
    // A source tree with build-kernel.sh's default build directory.
    let candidates: Vec<Arch> = match arch {
        Some(a) => vec![a],
        None => vec![Arch::Aarch64, Arch::X86_64],
    };
    for a in candidates {
        let b = path.join(".vanish-build").join(a.to_string());
        if b.join(".config").is_file() {
            return Ok(Layout::Build(b));
        }
    }
    if path.join("Makefile").is_file() && path.join("Kconfig").is_file() {
        return Err(Error::invalid(
            format!(
                "{} is a kernel source tree that was never configured (no .config)",
                path.display()
            ),
            "build it first: ci/build-kernel.sh ARCH (or vanish kconfig --apply DIR and make), or pass its O= build directory",
        ));
    }
    Err(Error::invalid(
        format!(
            "{} is neither a kernel build directory (no .config) nor a kernel image",
            path.display()
        ),
        "pass the O= build directory, the built source tree, or the image itself",
    ))
}

/// Resolve `path` (a build directory, a built source tree, or build-kernel.sh's `dist/`) to a
/// bootable kernel.
///
/// `arch`: the architecture the caller wants (None: whatever the tree is). `driver`: the card
/// driver's Kconfig symbol that must be `y` or `m`, e.g. `DRM_HISI_HIBMC` or `DRM_BOCHS`.
/// Errors are one line each: a tree never configured or never built (no image), a tree for the
/// other architecture, a config without the driver, modules configured but not built.
pub fn resolve(path: &Path, arch: Option<Arch>, driver: Option<&str>) -> Result<KernelTree> {
    let path = std::path::absolute(path).ctx(at("cannot resolve", path))?;
    if !path.is_dir() {
        return Err(Error::invalid(
            format!("{} is not a directory", path.display()),
            "pass a kernel build directory (or the image file itself)",
        ));
    }
    let layout = find_layout(&path, arch)?;
    let (build_dir, config_path, dist) = match &layout {
        Layout::Build(b) => (b.clone(), b.join(".config"), false),
        Layout::Dist(d) => (d.clone(), d.join("config"), true),
    };
    let text = fs::read_to_string(&config_path).ctx(at("cannot read", &config_path))?;
    let config = parse_config(&text);
    let tree_arch = match config_arch(&config) {
        Some(Ok(a)) => a,
        Some(Err(what)) => {
            return Err(Error::invalid(
                format!(
                    "{} is configured for {what}; vanish boots aarch64 and x86_64",
                    config_path.display()
                ),
                "configure it with vanish kconfig --arch aarch64|x86_64 --apply DIR",
            ))
        }
        None => {
            return Err(Error::invalid(
                format!("{} names no architecture", config_path.display()),
                "is it a kernel .config? (re)configure the tree",
            ))
        }
    };
    if let Some(want) = arch {
        if want != tree_arch {
            return Err(Error::invalid(
                format!(
                    "{} is a kernel tree for {tree_arch}, not {want}",
                    build_dir.display()
                ),
                format!("pass --arch {tree_arch}, or build the tree for {want}"),
            ));
        }
    }
    let image = if dist {
        build_dir.join(match tree_arch {
            Arch::Aarch64 => "Image",
            Arch::X86_64 => "bzImage",
        })
    } else {
        build_dir.join(image_path(tree_arch))
    };
    if !image.is_file() {
        return Err(Error::invalid(
            format!(
                "{} is configured but was never built: no {}",
                build_dir.display(),
                image.display()
            ),
            format!(
                "run make {} there (or ci/build-kernel.sh {tree_arch})",
                image
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(sym) = driver {
        if !matches!(config.get(sym).map(String::as_str), Some("y") | Some("m")) {
            return Err(Error::invalid(
                format!(
                    "{} lacks the card's driver: CONFIG_{sym} is not set",
                    config_path.display()
                ),
                format!(
                    "enable it (vanish kconfig --arch {tree_arch} --apply {}), rebuild, or pick the other --model",
                    build_dir.display()
                ),
            ));
        }
    }
    let release = if dist {
        dist_release(&build_dir)
    } else {
        fs::read_to_string(build_dir.join("include/config/kernel.release"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let release = match release {
        Some(r) => r,
        None => {
            let data = fs::read(&image).ctx(at("cannot read", &image))?;
            crate::kernel::kernel_release_from_image(&data).ok_or_else(|| {
                Error::invalid(
                    format!(
                        "cannot tell the release of {}: no include/config/kernel.release",
                        build_dir.display()
                    ),
                    "rebuild the tree (make prepare writes kernel.release)",
                )
            })?
        }
    };
    let src_dir = if dist { None } else { source_dir(&build_dir) };
    let modules_on = config.get("MODULES").is_some_and(|v| v == "y");
    let (modules_root, module_count, tmp) = if dist {
        let mods = build_dir.join("mods");
        if mods.join("lib/modules").join(&release).is_dir() {
            let n = count_modules(&mods.join("lib/modules").join(&release));
            (mods, n, None)
        } else {
            (PathBuf::new(), 0, None)
        }
    } else {
        gather_modules(&build_dir, &release, modules_on, driver, &config)?
    };
    let git = src_dir.as_deref().and_then(git_info);
    Ok(KernelTree {
        build_dir,
        src_dir,
        arch: tree_arch,
        release,
        image,
        config_path,
        config,
        module_count,
        modules_root,
        git,
        _tmp: tmp,
    })
}

fn dist_release(dist: &Path) -> Option<String> {
    let rd = fs::read_dir(dist.join("mods/lib/modules")).ok()?;
    let rels: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match rels.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The source tree of a build directory: itself when in-tree, else kbuild's `source` symlink.
fn source_dir(build: &Path) -> Option<PathBuf> {
    if build.join("Kconfig").is_file() && build.join("Makefile").is_file() {
        return Some(build.to_path_buf());
    }
    let link = build.join("source");
    fs::canonicalize(link)
        .ok()
        .filter(|p| p.join("Kconfig").is_file())
}

fn count_modules(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(".ko") {
                n += 1;
            }
        }
    }
    n
}

/// A temporary `lib/modules/<release>` with the built modules (as listed in `modules.order`) and
/// `modules.builtin*`, the files `make modules_install` would install (unsigned, unstripped).
fn gather_modules(
    build: &Path,
    release: &str,
    modules_on: bool,
    driver: Option<&str>,
    config: &BTreeMap<String, String>,
) -> Result<(PathBuf, usize, Option<tempfile::TempDir>)> {
    let tmp = tempfile::Builder::new()
        .prefix("vanish-mods-")
        .tempdir()
        .ctx(|| "cannot create a temp dir for the modules".into())?;
    let dir = tmp.path().join("lib/modules").join(release);
    crate::util::create_dir_all(&dir)?;
    for f in ["modules.builtin", "modules.builtin.modinfo"] {
        let src = build.join(f);
        if src.is_file() {
            fs::copy(&src, dir.join(f)).ctx(at("cannot copy", &src))?;
        }
    }
    let mut count = 0;
    let mut order = String::new();
    let driver_is_module = driver.is_some_and(|d| config.get(d).is_some_and(|v| v == "m"));
    if modules_on {
        let order_path = build.join("modules.order");
        let listed = fs::read_to_string(&order_path).unwrap_or_default();
        let mut missing = Vec::new();
        for line in listed.lines().map(str::trim).filter(|l| !l.is_empty()) {
            // 6.2+ lists `dir/x.o`, older kernels `kernel/dir/x.ko` or `dir/x.ko`.
            let rel = line.strip_prefix("kernel/").unwrap_or(line);
            let rel = match rel.strip_suffix(".o") {
                Some(stem) => format!("{stem}.ko"),
                None => rel.to_string(),
            };
            let src = build.join(&rel);
            if !src.is_file() {
                missing.push(rel);
                continue;
            }
            let dst = dir.join("kernel").join(&rel);
            if let Some(p) = dst.parent() {
                crate::util::create_dir_all(p)?;
            }
            fs::copy(&src, &dst).ctx(at("cannot copy", &src))?;
            let _ = std::fmt::Write::write_fmt(&mut order, format_args!("kernel/{rel}\n"));
            count += 1;
        }
        if driver_is_module && (count == 0 || !missing.is_empty()) {
            return Err(Error::invalid(
                format!(
                    "{} has the card's driver as a module but its modules were not built ({})",
                    build.display(),
                    if count == 0 {
                        "no modules.order or no .ko files".to_string()
                    } else {
                        format!(
                            "{} listed in modules.order missing, e.g. {}",
                            missing.len(),
                            missing[0]
                        )
                    }
                ),
                "run make modules there (or ci/build-kernel.sh with MODULES=1)",
            ));
        }
    }
    let order_dst = dir.join("modules.order");
    fs::write(&order_dst, order).ctx(at("cannot write", &order_dst))?;
    Ok((tmp.path().to_path_buf(), count, Some(tmp)))
}

fn git_out(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// HEAD, `git describe` and the remote of `src`, when `src` is the top of a git work tree (a
/// tree unpacked inside some other repository is not attributed to it).
pub fn git_info(src: &Path) -> Option<GitInfo> {
    let top = git_out(src, &["rev-parse", "--show-toplevel"])?;
    let same = match (fs::canonicalize(&top), fs::canonicalize(src)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        return None;
    }
    let commit = git_out(src, &["rev-parse", "HEAD"])?;
    let describe = git_out(src, &["describe", "--always", "--dirty", "--tags"])
        .unwrap_or_else(|| commit.chars().take(12).collect());
    let remote = git_out(src, &["remote", "get-url", "origin"]).or_else(|| {
        let first = git_out(src, &["remote"])?.lines().next()?.to_string();
        git_out(src, &["remote", "get-url", &first])
    });
    Some(GitInfo {
        commit,
        describe,
        remote,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake O= build directory: .config, kernel.release, an arm64 image header, optionally a
    /// module.
    fn fake_build(dir: &Path, config: &str, image: bool) {
        fs::create_dir_all(dir.join("include/config")).unwrap();
        fs::write(dir.join(".config"), config).unwrap();
        fs::write(
            dir.join("include/config/kernel.release"),
            "6.12.117-vanish\n",
        )
        .unwrap();
        fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\n",
        )
        .unwrap();
        if image {
            let img = dir.join("arch/arm64/boot/Image");
            fs::create_dir_all(img.parent().unwrap()).unwrap();
            let mut d = vec![0u8; 0x100];
            d[0x38..0x3c].copy_from_slice(b"ARM\x64");
            fs::write(img, d).unwrap();
        }
    }

    const ARM64_HIBMC: &str =
        "CONFIG_ARM64=y\nCONFIG_64BIT=y\nCONFIG_DRM_HISI_HIBMC=y\n# CONFIG_MODULES is not set\n";

    #[test]
    fn build_dir_resolves() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("build");
        fake_build(&b, ARM64_HIBMC, true);
        let t = resolve(&b, Some(Arch::Aarch64), Some("DRM_HISI_HIBMC")).unwrap();
        assert_eq!(t.arch, Arch::Aarch64);
        assert_eq!(t.release, "6.12.117-vanish");
        assert_eq!(t.image, b.join("arch/arm64/boot/Image"));
        assert_eq!(t.module_count, 0);
        assert!(t.git.is_none());
        let k = t.guest_kernel();
        assert_eq!(k.package_version, "local");
        assert!(k.modules_dir().join("modules.builtin").is_file());
        assert!(k.modules_dir().join("modules.order").is_file());
        // The arch is taken from the tree when the caller does not say.
        assert_eq!(resolve(&b, None, None).unwrap().arch, Arch::Aarch64);
        // The source tree with build-kernel.sh's default build dir resolves too.
        let src = d.path().join("linux");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("Makefile"), "").unwrap();
        fs::write(src.join("Kconfig"), "").unwrap();
        let e = resolve(&src, Some(Arch::Aarch64), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("never configured"), "{e}");
        fake_build(&src.join(".vanish-build/aarch64"), ARM64_HIBMC, true);
        let t = resolve(&src, Some(Arch::Aarch64), None).unwrap();
        assert_eq!(t.build_dir, src.join(".vanish-build/aarch64"));
    }

    #[test]
    fn one_line_errors() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("unbuilt");
        fake_build(&b, ARM64_HIBMC, false);
        let e = resolve(&b, Some(Arch::Aarch64), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("never built") && !e.contains('\n'), "{e}");

        let b = d.path().join("x86");
        fake_build(
            &b,
            "CONFIG_X86=y\nCONFIG_X86_64=y\nCONFIG_DRM_BOCHS=y\n",
            true,
        );
        let e = resolve(&b, Some(Arch::Aarch64), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kernel tree for x86_64, not aarch64") && !e.contains('\n'),
            "{e}"
        );

        let b = d.path().join("i386");
        fake_build(&b, "CONFIG_X86=y\n# CONFIG_64BIT is not set\n", true);
        let e = resolve(&b, None, None).unwrap_err().to_string();
        assert!(e.contains("32-bit x86"), "{e}");

        let b = d.path().join("nodrv");
        fake_build(
            &b,
            "CONFIG_ARM64=y\n# CONFIG_DRM_HISI_HIBMC is not set\n",
            true,
        );
        let e = resolve(&b, Some(Arch::Aarch64), Some("DRM_HISI_HIBMC"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CONFIG_DRM_HISI_HIBMC is not set") && !e.contains('\n'),
            "{e}"
        );

        let e = resolve(&d.path().join("nope"), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        let e = resolve(d.path(), None, None).unwrap_err().to_string();
        assert!(e.contains("no .config"), "{e}");
    }

    #[test]
    fn modules_are_gathered_from_modules_order() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("build");
        fake_build(
            &b,
            "CONFIG_ARM64=y\nCONFIG_MODULES=y\nCONFIG_DRM_HISI_HIBMC=m\n",
            true,
        );
        // Configured as a module but never `make modules`: an error.
        let e = resolve(&b, None, Some("DRM_HISI_HIBMC"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("modules were not built"), "{e}");
        let ko = b.join("drivers/gpu/drm/hisilicon/hibmc/hibmc-drm.ko");
        fs::create_dir_all(ko.parent().unwrap()).unwrap();
        fs::write(&ko, b"\x7fELF").unwrap();
        fs::write(
            b.join("modules.order"),
            "drivers/gpu/drm/hisilicon/hibmc/hibmc-drm.o\n",
        )
        .unwrap();
        let t = resolve(&b, None, Some("DRM_HISI_HIBMC")).unwrap();
        assert_eq!(t.module_count, 1);
        let k = t.guest_kernel();
        assert!(k
            .modules_dir()
            .join("kernel/drivers/gpu/drm/hisilicon/hibmc/hibmc-drm.ko")
            .is_file());
        assert_eq!(
            fs::read_to_string(k.modules_dir().join("modules.order")).unwrap(),
            "kernel/drivers/gpu/drm/hisilicon/hibmc/hibmc-drm.ko\n"
        );
        // The temp root goes away with the tree.
        let root = t.modules_root.clone();
        drop(t);
        assert!(!root.exists());
    }

    #[test]
    fn dist_dir_resolves() {
        let d = tempfile::tempdir().unwrap();
        let dist = d.path().join("dist");
        fs::create_dir_all(dist.join("mods/lib/modules/6.12.117")).unwrap();
        fs::write(dist.join("config"), ARM64_HIBMC).unwrap();
        let mut img = vec![0u8; 0x100];
        img[0x38..0x3c].copy_from_slice(b"ARM\x64");
        fs::write(dist.join("Image"), img).unwrap();
        let t = resolve(&dist, Some(Arch::Aarch64), Some("DRM_HISI_HIBMC")).unwrap();
        assert_eq!(t.release, "6.12.117");
        assert_eq!(t.image, dist.join("Image"));
        assert_eq!(t.modules_root, dist.join("mods"));
        assert!(t.src_dir.is_none());
    }

    #[test]
    fn git_state_of_a_tree() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path();
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .arg("-C")
                .arg(src)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        fs::write(src.join("Makefile"), "").unwrap();
        fs::write(src.join("Kconfig"), "").unwrap();
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "one"]);
        git(&["tag", "v6.12"]);
        git(&["remote", "add", "origin", "https://example.org/linux.git"]);
        fake_build(src, ARM64_HIBMC, true);
        let t = resolve(src, None, None).unwrap();
        let g = t.git.clone().expect("git info");
        assert_eq!(g.commit.len(), 40);
        assert!(g.describe.starts_with("v6.12"), "{}", g.describe);
        assert_eq!(g.remote.as_deref(), Some("https://example.org/linux.git"));
        assert_eq!(t.guest_kernel().package_version, g.describe);
        // A subdirectory of a repository is not attributed to it.
        let sub = src.join("sub");
        fs::create_dir_all(&sub).unwrap();
        assert!(git_info(&sub).is_none());
    }
}
