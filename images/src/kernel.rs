//! Guest kernels: Debian packages for either architecture, or a user's own build.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::apt::{self, AptRepo};
use crate::error::{at, Error, IoContext, Result};
use crate::util::{self, Step};
use crate::{Arch, Cache};

/// A kernel ready to boot: an image for `-kernel` and its modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestKernel {
    pub arch: Arch,
    /// `uname -r` of the guest, e.g. `6.12.57+deb13-arm64`.
    pub release: String,
    /// The kernel image for QEMU's `-kernel`.
    pub image: PathBuf,
    /// The directory holding `lib/modules/<release>` (an `INSTALL_MOD_PATH`-style root). For a
    /// user kernel without modules this is an empty path.
    pub modules_root: PathBuf,
    /// The Debian package version (e.g. `6.12.57-1`), or `local` for a user's kernel.
    pub package_version: String,
}

impl GuestKernel {
    /// `<modules_root>/lib/modules/<release>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.modules_root.join("lib/modules").join(&self.release)
    }
}

/// Which Debian packages make up a kernel version (result of resolving a version string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebianKernelPackage {
    pub arch: Arch,
    /// The Debian suite it comes from (`bookworm`, `trixie`, `sid`, ...).
    pub suite: String,
    /// The kernel ABI, e.g. `6.12.57+deb13` or `6.1.0-28`; the release is `<abi>-<debarch>`.
    pub abi: String,
    /// The package holding the kernel (`linux-image-<abi>-<debarch>[-unsigned]`).
    pub image_package: String,
    /// The Debian version of `image_package`.
    pub version: String,
    /// Everything to download, `(name, version)`, image package first (7.x kernels are split into
    /// `linux-image-*`, `linux-binary-*`, `linux-modules-*`).
    pub packages: Vec<(String, String)>,
}

/// A parsed `version` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum VersionSpec {
    /// "6.12": the newest kernel of that series, looked up through `linux-image-<debarch>`.
    Series {
        series: String,
        suites: Vec<&'static str>,
    },
    /// "6.12.57+deb13": exactly that ABI.
    Exact {
        abi: String,
        suites: Vec<&'static str>,
    },
}

/// The kernel series vanish knows and the Debian suite that ships each (its
/// `linux-image-<debarch>` metapackage points at that series). bullseye keeps its modules under
/// `lib/modules` and is the nearest shipped kernel to the 2019 hibmc report; trixie-backports
/// carries the newest stable series.
pub const SERIES: &[(&str, &str)] = &[
    ("5.10", "bullseye"),
    ("6.1", "bookworm"),
    ("6.12", "trixie"),
    ("7.2", "sid"),
    ("7.3", "trixie-backports"),
];

/// The known series, for messages: `5.10 (bullseye), 6.1 (bookworm), ...`.
pub fn known_series() -> String {
    SERIES
        .iter()
        .map(|(s, suite)| format!("{s} ({suite})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a `--debian-kernel` argument without looking anything up: a known series or a
/// well-formed exact ABI. The error is one line naming the known series.
pub fn check_kernel_version(version: &str, arch: Arch) -> Result<()> {
    parse_version(version, arch).map(|_| ())
}

/// Default `version` when the caller passes an empty string or `default`.
pub(crate) const DEFAULT_SERIES: &str = "6.12";

fn is_numeric_dotted(s: &str, parts: usize) -> bool {
    let v: Vec<&str> = s.split('.').collect();
    v.len() == parts
        && v.iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Turn a user's version string into what to look up where.
pub(crate) fn parse_version(version: &str, arch: Arch) -> Result<VersionSpec> {
    let mut v = version.trim();
    if v.is_empty() || v == "default" {
        v = DEFAULT_SERIES;
    }
    // Be lenient about full package names / releases.
    v = v.strip_prefix("linux-image-").unwrap_or(v);
    v = v.strip_suffix("-unsigned").unwrap_or(v);
    for a in [Arch::X86_64, Arch::Aarch64] {
        if let Some(rest) = v.strip_suffix(&format!("-{}", a.debian())) {
            if a != arch {
                return Err(Error::invalid(
                    format!("kernel version `{version}` is for {a}, not {arch}"),
                    "drop the architecture suffix or pick the matching --arch",
                ));
            }
            v = rest;
        }
    }
    let bad = || {
        Error::invalid(
            format!("unsupported kernel version `{version}`"),
            format!(
                "use a series: {}; or an exact Debian ABI such as 6.12.57+deb13 or 6.1.0-28",
                known_series()
            ),
        )
    };
    if is_numeric_dotted(v, 2) {
        let Some((_, suite)) = SERIES.iter().find(|(s, _)| *s == v) else {
            return Err(Error::invalid(
                format!("unknown kernel series `{v}`"),
                format!(
                    "known series: {}; or an exact Debian ABI such as 6.12.57+deb13",
                    known_series()
                ),
            ));
        };
        let suites = vec![*suite];
        return Ok(VersionSpec::Series {
            series: v.to_string(),
            suites,
        });
    }
    let upstream = v.split(['+', '-']).next().unwrap_or("");
    if !is_numeric_dotted(upstream, 3) {
        return Err(bad());
    }
    let suites = if let Some((_, tag)) = v.split_once('+') {
        let digits: String = tag.chars().filter(|c| c.is_ascii_digit()).collect();
        match (
            tag.trim_end_matches(|c: char| c.is_ascii_digit()),
            digits.as_str(),
        ) {
            ("deb", "11") => vec!["bullseye"],
            ("deb", "12") => vec!["bookworm", "bookworm-backports"],
            ("deb", "13") => vec!["trixie", "trixie-backports"],
            ("deb", "14") => vec!["sid", "forky"],
            ("bpo", "12") => vec!["bookworm-backports"],
            ("bpo", "13") => vec!["trixie-backports"],
            _ => return Err(bad()),
        }
    } else {
        // Old-style ABI (bookworm's 6.1.0-28, bullseye's 5.10.0-32).
        if v.starts_with("5.10.") {
            vec!["bullseye"]
        } else {
            vec!["bookworm", "trixie", "sid"]
        }
    };
    Ok(VersionSpec::Exact {
        abi: v.to_string(),
        suites,
    })
}

/// Pick the versioned image package out of a `linux-image-<debarch>` metapackage's dependencies,
/// returning the ABI (`linux-image-6.12.57+deb13-amd64` -> `6.12.57+deb13`).
pub(crate) fn abi_from_metapackage_depends(deps: &[Vec<String>], arch: Arch) -> Option<String> {
    let suffix = format!("-{}", arch.debian());
    deps.iter().flatten().find_map(|name| {
        let abi = name.strip_prefix("linux-image-")?.strip_suffix(&suffix)?;
        let first = abi.chars().next()?;
        first.is_ascii_digit().then(|| abi.to_string())
    })
}

/// The packages a kernel image package needs downloaded with it: its dependencies that carry the
/// same ABI and flavour (`linux-binary-*`, `linux-modules-*`, `linux-base-*` on 7.x).
pub(crate) fn companion_packages(
    image_package: &str,
    deps: &[Vec<String>],
    abi: &str,
    arch: Arch,
) -> Vec<String> {
    let tag = format!("{abi}-{}", arch.debian());
    let mut out: Vec<String> = Vec::new();
    for name in deps.iter().flatten() {
        if name != image_package
            && name.starts_with("linux-")
            && name.contains(&tag)
            && !out.contains(name)
        {
            out.push(name.clone());
        }
    }
    out
}

/// The ABI of the kernel a suite's `linux-image-<debarch>` metapackage points at.
fn metapackage_abi(repo: &AptRepo, arch: Arch) -> Result<String> {
    let meta_name = format!("linux-image-{}", arch.debian());
    let meta = repo.show_required(&meta_name)?;
    abi_from_metapackage_depends(&meta.depends(), arch).ok_or_else(|| {
        Error::not_found(
            format!(
                "{meta_name} in Debian {} depends on no versioned kernel image",
                repo.suite
            ),
            "pass an exact kernel ABI such as 6.12.57+deb13",
        )
    })
}

/// The packages for exactly `abi` in `repo`'s suite.
fn resolve_abi(repo: &AptRepo, abi: &str, arch: Arch) -> Result<DebianKernelPackage> {
    let abi = abi.to_string();
    let base = format!("linux-image-{abi}-{}", arch.debian());
    let unsigned = format!("{base}-unsigned");
    let (image_package, stanza) = match repo.show(&unsigned)? {
        Some(s) => (unsigned, s),
        None => {
            let s = repo.show(&base)?.ok_or_else(|| {
                Error::not_found(
                    format!(
                        "no package {base} (or -unsigned) in Debian {} ({})",
                        repo.suite,
                        arch.debian()
                    ),
                    "ask for a series (see `vanish kernels`) to get the current kernel; old ABIs disappear from the mirror after point releases",
                )
            })?;
            (base, s)
        }
    };
    let version = stanza.get("Version").unwrap_or_default().to_string();
    let mut packages = vec![(image_package.clone(), version.clone())];
    for name in companion_packages(&image_package, &stanza.depends(), &abi, arch) {
        let st = repo.show_required(&name)?;
        packages.push((name, st.get("Version").unwrap_or_default().to_string()));
    }
    Ok(DebianKernelPackage {
        arch,
        suite: repo.suite.clone(),
        abi,
        image_package,
        version,
        packages,
    })
}

/// Resolve a version string (see [`provision_debian_kernel`]) to Debian package names and
/// versions, refreshing the package lists if they are more than a day old. Downloads no kernel.
pub fn resolve_debian_kernel(
    cache: &Cache,
    arch: Arch,
    version: &str,
) -> Result<DebianKernelPackage> {
    match parse_version(version, arch)? {
        VersionSpec::Exact { abi, suites } => {
            let mut first_err = None;
            for suite in &suites {
                let repo = AptRepo::open(cache, suite, arch.debian())?;
                match resolve_abi(&repo, &abi, arch) {
                    Ok(p) => return Ok(p),
                    Err(e @ Error::NotFound { .. }) => {
                        first_err.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(first_err.unwrap_or_else(|| {
                Error::not_found(
                    format!("kernel {abi} not found"),
                    "ask for a series instead (see `vanish kernels`)",
                )
            }))
        }
        VersionSpec::Series { series, suites } => {
            let mut seen = Vec::new();
            for suite in &suites {
                let repo = AptRepo::open(cache, suite, arch.debian())?;
                let abi = match metapackage_abi(&repo, arch) {
                    Ok(abi) => abi,
                    Err(e @ Error::NotFound { .. }) => {
                        seen.push(format!("{suite}: none ({e})"));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if abi.starts_with(&format!("{series}.")) {
                    return resolve_abi(&repo, &abi, arch);
                }
                seen.push(format!("{suite}: {abi}"));
            }
            Err(Error::not_found(
                format!(
                    "no kernel {series} for {} in Debian {} (found {})",
                    arch.debian(),
                    suites.join("/"),
                    seen.join(", ")
                ),
                "ask for one of the series found, or an exact ABI such as 6.12.57+deb13",
            ))
        }
    }
}

/// What the kernel cache entry records about its contents (paths relative to the entry).
#[derive(Serialize, Deserialize)]
struct KernelMeta {
    release: String,
    image: PathBuf,
    modules_root: PathBuf,
    package_version: String,
    packages: Vec<(String, String)>,
    suite: String,
}

/// Download (once) and unpack a Debian kernel for `arch`.
///
/// `version`: "6.1" (bookworm), "6.12" (trixie, default; also for ""), "7.2" (sid), or an exact
/// Debian kernel ABI such as "6.12.57+deb13" (bookworm: "6.1.0-28"). The `-unsigned` image
/// package is preferred. The result is cached per exact package version. No `modules.dep` is
/// generated: the initramfs builder reads dependencies from the modules (see `modinfo`).
pub fn provision_debian_kernel(cache: &Cache, arch: Arch, version: &str) -> Result<GuestKernel> {
    let pkg = resolve_debian_kernel(cache, arch, version)?;
    let entry = cache.root.join("kernels").join(arch.debian()).join(format!(
        "{}_{}",
        util::sanitize(&pkg.image_package),
        util::sanitize(&pkg.version)
    ));
    util::ensure_entry(&entry, |tmp| build_kernel_entry(cache, &pkg, tmp))?;
    let meta_path = entry.join("kernel.json");
    let text = fs::read_to_string(&meta_path).ctx(at("cannot read", &meta_path))?;
    let meta: KernelMeta = serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            format!("corrupt {}: {e}", meta_path.display()),
            format!("delete {} and retry", entry.display()),
        )
    })?;
    let kernel = GuestKernel {
        arch,
        release: meta.release,
        image: entry.join(meta.image),
        modules_root: entry.join(meta.modules_root),
        package_version: meta.package_version,
    };
    if !kernel.image.is_file() || !kernel.modules_dir().is_dir() {
        return Err(Error::not_found(
            format!("kernel cache entry {} is incomplete", entry.display()),
            format!("delete {} and retry", entry.display()),
        ));
    }
    Ok(kernel)
}

/// Releases (`uname -r`) of the Debian kernels for `arch` already in the cache.
pub fn cached_kernels(cache: &Cache, arch: Arch) -> Vec<String> {
    let dir = cache.root.join("kernels").join(arch.debian());
    let Ok(rd) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let text = fs::read_to_string(e.path().join("kernel.json")).ok()?;
            Some(serde_json::from_str::<KernelMeta>(&text).ok()?.release)
        })
        .collect();
    out.sort();
    out
}

fn build_kernel_entry(cache: &Cache, pkg: &DebianKernelPackage, tmp: &Path) -> Result<()> {
    let repo = AptRepo::open(cache, &pkg.suite, pkg.arch.debian())?;
    let names: Vec<&str> = pkg.packages.iter().map(|(n, _)| n.as_str()).collect();
    let step = Step::start(format!(
        "downloading {} {} ({})",
        names.join(" "),
        pkg.version,
        pkg.arch.debian()
    ));
    let debs = repo.download(&pkg.packages, &tmp.join("debs"))?;
    step.done();
    let step = Step::start(format!("unpacking {}", names.join(" ")));
    let root = tmp.join("root");
    for deb in &debs {
        apt::extract_deb(deb, &root)?;
    }
    fs::remove_dir_all(tmp.join("debs")).ctx(at("cannot remove", &tmp.join("debs")))?;
    step.done();
    let trees = module_trees(&root);
    let (modules_root, release) = match trees.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(Error::not_found(
                format!("no lib/modules/<release> in {}", names.join(" ")),
                "report this: the Debian package layout changed",
            ))
        }
        many => {
            let want = format!("{}-{}", pkg.abi, pkg.arch.debian());
            many.iter()
                .find(|(_, r)| *r == want)
                .cloned()
                .ok_or_else(|| {
                    Error::not_found(
                        format!("several module trees in {}", names.join(" ")),
                        "report this: the Debian package layout changed",
                    )
                })?
        }
    };
    let image = find_image(&root, &modules_root, &release).ok_or_else(|| {
        Error::not_found(
            format!(
                "no kernel image (boot/vmlinuz-{release} or lib/modules/{release}/vmlinuz) in {}",
                names.join(" ")
            ),
            "report this: the Debian package layout changed",
        )
    })?;
    let rel = |p: &Path| {
        p.strip_prefix(tmp)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    let meta = KernelMeta {
        release,
        image: rel(&image),
        modules_root: rel(&modules_root),
        package_version: pkg.version.clone(),
        packages: pkg.packages.clone(),
        suite: pkg.suite.clone(),
    };
    let json = serde_json::to_string_pretty(&meta).unwrap_or_default();
    let meta_path = tmp.join("kernel.json");
    fs::write(&meta_path, json).ctx(at("cannot write", &meta_path))
}

/// `(modules_root, release)` for every `lib/modules/<release>` under `root` or `root/usr`.
pub(crate) fn module_trees(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    let mut seen = Vec::new();
    for base in [root.to_path_buf(), root.join("usr")] {
        let dir = base.join("lib/modules");
        let Ok(canon) = fs::canonicalize(&dir) else {
            continue;
        };
        if seen.contains(&canon) {
            continue;
        }
        seen.push(canon);
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        let mut rels: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        rels.sort();
        out.extend(rels.into_iter().map(|r| (base.clone(), r)));
    }
    out
}

fn find_image(root: &Path, modules_root: &Path, release: &str) -> Option<PathBuf> {
    [
        root.join(format!("boot/vmlinuz-{release}")),
        root.join(format!("boot/vmlinux-{release}")),
        modules_root.join(format!("lib/modules/{release}/vmlinuz")),
        root.join(format!("usr/lib/modules/{release}/vmlinuz")),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Use a kernel you built yourself.
///
/// `image`: a bzImage (x86) or Image/Image.gz (arm64). `modules`: an `INSTALL_MOD_PATH` root
/// holding `lib/modules/<release>` (a `lib/modules/<release>` directory itself is accepted too).
/// The release is taken from the image (the x86 setup header's version string, or the
/// `Linux version ` banner in an arm64 Image, decompressing gzip/zstd/EFI zboot images) and
/// matched against the modules directory; a single modules directory wins if the image says
/// nothing.
pub fn user_kernel(arch: Arch, image: &Path, modules: Option<&Path>) -> Result<GuestKernel> {
    let meta = fs::metadata(image).ctx(at("cannot read kernel image", image))?;
    if !meta.is_file() {
        return Err(Error::invalid(
            format!("kernel image {} is not a file", image.display()),
            "pass the bzImage / Image file",
        ));
    }
    let image = std::path::absolute(image).ctx(at("cannot resolve", image))?;
    let data = fs::read(&image).ctx(at("cannot read kernel image", &image))?;
    if let Some(found) = image_arch(&data) {
        if found != arch {
            return Err(Error::invalid(
                format!("{} is a {found} kernel, not {arch}", image.display()),
                format!("pass --arch {found} or the right image"),
            ));
        }
    }
    let from_image = kernel_release_from_image(&data);
    let Some(modules) = modules else {
        let release = from_image.ok_or_else(|| {
            Error::invalid(
                format!("cannot find the kernel release in {}", image.display()),
                "pass the modules directory too, so the release can be read from it",
            )
        })?;
        return Ok(GuestKernel {
            arch,
            release,
            image,
            modules_root: PathBuf::new(),
            package_version: "local".into(),
        });
    };
    let modules = std::path::absolute(modules).ctx(at("cannot resolve", modules))?;
    if !modules.is_dir() {
        return Err(Error::invalid(
            format!("modules directory {} does not exist", modules.display()),
            "pass the INSTALL_MOD_PATH directory of `make modules_install`",
        ));
    }
    let trees = if modules.join("modules.order").is_file() || modules.join("kernel").is_dir() {
        // A lib/modules/<release> directory itself.
        let release = modules
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = modules
            .parent()
            .filter(|p| p.ends_with("lib/modules"))
            .and_then(|p| p.parent())
            .and_then(|p| p.parent());
        match root {
            Some(r) => vec![(r.to_path_buf(), release)],
            None => {
                return Err(Error::invalid(
                    format!(
                        "{} is not inside a lib/modules directory",
                        modules.display()
                    ),
                    "pass the INSTALL_MOD_PATH directory of `make modules_install`",
                ))
            }
        }
    } else if modules.ends_with("lib/modules") {
        module_trees(modules.parent().and_then(Path::parent).unwrap_or(&modules))
    } else {
        module_trees(&modules)
    };
    let chosen = match (&from_image, trees.as_slice()) {
        (_, []) => {
            return Err(Error::not_found(
                format!("no lib/modules/<release> under {}", modules.display()),
                "pass the INSTALL_MOD_PATH directory of `make modules_install`",
            ))
        }
        (Some(rel), ts) if ts.iter().any(|(_, r)| r == rel) => {
            ts.iter().find(|(_, r)| r == rel).cloned()
        }
        (Some(rel), [one]) => {
            util::note(format!(
                "warning: {} says release {rel} but the modules are for {}; using the modules' release",
                image.display(),
                one.1
            ));
            Some(one.clone())
        }
        (None, [one]) => Some(one.clone()),
        (_, _) => None,
    };
    let (modules_root, release) = chosen.ok_or_else(|| {
        Error::invalid(
            format!(
                "cannot tell which of several module trees under {} belongs to {}",
                modules.display(),
                image.display()
            ),
            "pass the lib/modules/<release> directory itself",
        )
    })?;
    Ok(GuestKernel {
        arch,
        release,
        image,
        modules_root,
        package_version: "local".into(),
    })
}

/// Whether a kernel image (decompressed if need be) contains `needle`: a built-in driver's
/// name (`hibmc-drm\0`, its `struct pci_driver` name) is in the image's read-only data, which
/// tells a kernel without a modules tree that has the driver built in from one that lacks it.
pub fn image_contains(image: &Path, needle: &[u8]) -> Result<bool> {
    let data = fs::read(image).ctx(at("cannot read kernel image", image))?;
    let dec = decompress_image(&data);
    let d = dec.as_deref().unwrap_or(&data);
    Ok(!needle.is_empty() && d.windows(needle.len()).any(|w| w == needle))
}

/// Largest decompressed kernel image we accept.
const MAX_IMAGE: u64 = 512 << 20;

/// The architecture a kernel image is for, when it says so: an x86 bzImage setup header or an
/// arm64 Image header (possibly compressed).
pub(crate) fn image_arch(data: &[u8]) -> Option<Arch> {
    if data.get(0x202..0x206) == Some(b"HdrS") {
        return Some(Arch::X86_64);
    }
    let dec = decompress_image(data);
    let d = dec.as_deref().unwrap_or(data);
    (d.get(0x38..0x3c) == Some(b"ARM\x64")).then_some(Arch::Aarch64)
}

/// Decompress a gzip, zstd or EFI zboot (`MZ....zimg`) kernel image; `None` if it is not one.
pub(crate) fn decompress_image(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(data)
            .take(MAX_IMAGE)
            .read_to_end(&mut out)
            .ok()?;
        return Some(out);
    }
    if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ruzstd::decoding::StreamingDecoder::new(data)
            .ok()?
            .take(MAX_IMAGE)
            .read_to_end(&mut out)
            .ok()?;
        return Some(out);
    }
    if data.starts_with(b"MZ") && data.get(4..8) == Some(b"zimg") {
        let u32_at = |o: usize| -> Option<usize> {
            let b: [u8; 4] = data.get(o..o + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(b) as usize)
        };
        let off = u32_at(8)?;
        let len = u32_at(12)?;
        let payload = data.get(off..off.checked_add(len)?)?;
        return decompress_image(payload);
    }
    None
}

/// The kernel release (`uname -r`) recorded in a kernel image: the x86 setup header's version
/// string, else the `Linux version <release> ` banner (after decompressing gzip, zstd or EFI
/// zboot images).
pub fn kernel_release_from_image(data: &[u8]) -> Option<String> {
    if let Some(r) = bzimage_release(data) {
        return Some(r);
    }
    let dec = decompress_image(data);
    scan_linux_version(dec.as_deref().unwrap_or(data))
}

fn bzimage_release(d: &[u8]) -> Option<String> {
    if d.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let off = u16::from_le_bytes([*d.get(0x20e)?, *d.get(0x20f)?]) as usize;
    if off == 0 {
        return None;
    }
    let start = 0x200 + off;
    let s = d.get(start..(start + 256).min(d.len()))?;
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    release_token(&s[..end])
}

fn release_token(s: &[u8]) -> Option<String> {
    let tok: Vec<u8> = s
        .iter()
        .copied()
        .take_while(|b| b.is_ascii_graphic())
        .collect();
    (tok.first()?.is_ascii_digit() && tok.len() < 200)
        .then(|| String::from_utf8_lossy(&tok).into_owned())
}

fn scan_linux_version(d: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut i = 0;
    while i + NEEDLE.len() < d.len() {
        let pos = d[i..].windows(NEEDLE.len()).position(|w| w == NEEDLE)? + i;
        let after = &d[pos + NEEDLE.len()..];
        if let Some(r) = release_token(after) {
            // The banner is "Linux version <release> (<builder>) ..."; a printf format like
            // "Linux version %s" does not start with a digit and is skipped.
            if after.get(r.len()) == Some(&b' ') {
                return Some(r);
            }
        }
        i = pos + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn series_map_to_suites() {
        let s = |v: &str| parse_version(v, Arch::X86_64).unwrap();
        assert_eq!(
            s("6.12"),
            VersionSpec::Series {
                series: "6.12".into(),
                suites: vec!["trixie"]
            }
        );
        assert_eq!(
            s(""),
            VersionSpec::Series {
                series: "6.12".into(),
                suites: vec!["trixie"]
            }
        );
        assert_eq!(
            s("6.1"),
            VersionSpec::Series {
                series: "6.1".into(),
                suites: vec!["bookworm"]
            }
        );
        assert_eq!(
            s("7.2"),
            VersionSpec::Series {
                series: "7.2".into(),
                suites: vec!["sid"]
            }
        );
        assert!(
            matches!(s("7.3"), VersionSpec::Series { suites, .. } if suites == ["trixie-backports"])
        );
        assert!(matches!(s("5.10"), VersionSpec::Series { suites, .. } if suites == ["bullseye"]));
        let e = parse_version("4.19", Arch::Aarch64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown kernel series `4.19`"), "{e}");
        assert!(
            e.contains("5.10 (bullseye)") && e.contains("7.3 (trixie-backports)"),
            "{e}"
        );
        assert!(
            matches!(s("5.10.0-32"), VersionSpec::Exact { suites, .. } if suites == ["bullseye"])
        );
    }

    #[test]
    fn exact_abis_map_to_suites() {
        let s = |v: &str| parse_version(v, Arch::Aarch64).unwrap();
        assert_eq!(
            s("6.12.57+deb13"),
            VersionSpec::Exact {
                abi: "6.12.57+deb13".into(),
                suites: vec!["trixie", "trixie-backports"]
            }
        );
        assert_eq!(
            s("6.12.57+deb13-arm64"),
            VersionSpec::Exact {
                abi: "6.12.57+deb13".into(),
                suites: vec!["trixie", "trixie-backports"]
            }
        );
        assert_eq!(
            s("linux-image-7.2.13+deb14-arm64-unsigned"),
            VersionSpec::Exact {
                abi: "7.2.13+deb14".into(),
                suites: vec!["sid", "forky"]
            }
        );
        assert!(
            matches!(s("7.3.4+bpo13"), VersionSpec::Exact { suites, .. } if suites == ["trixie-backports"])
        );
        assert!(
            matches!(s("6.1.0-28"), VersionSpec::Exact { abi, suites } if abi == "6.1.0-28" && suites[0] == "bookworm")
        );
        assert!(parse_version("6.12.57+deb13-amd64", Arch::Aarch64).is_err());
        assert!(parse_version("latest", Arch::Aarch64).is_err());
        assert!(parse_version("6.x", Arch::Aarch64).is_err());
    }

    #[test]
    fn metapackage_and_companions() {
        let deps = crate::apt::parse_relations(
            "linux-base-arm64 (= 7.2.13-1), linux-image-7.2.13+deb14-arm64 (= 7.2.13-1)",
        );
        assert_eq!(
            abi_from_metapackage_depends(&deps, Arch::Aarch64).as_deref(),
            Some("7.2.13+deb14")
        );
        assert_eq!(abi_from_metapackage_depends(&deps, Arch::X86_64), None);
        let deps = crate::apt::parse_relations(
            "dracut | initramfs-tools | linux-initramfs-tool, linux-base-7.2.13+deb14-arm64 (= 7.2.13-1), \
             linux-binary-7.2.13+deb14-arm64 (= 7.2.13-1), linux-modules-7.2.13+deb14-arm64 (= 7.2.13-1)",
        );
        assert_eq!(
            companion_packages(
                "linux-image-7.2.13+deb14-arm64",
                &deps,
                "7.2.13+deb14",
                Arch::Aarch64
            ),
            [
                "linux-base-7.2.13+deb14-arm64",
                "linux-binary-7.2.13+deb14-arm64",
                "linux-modules-7.2.13+deb14-arm64"
            ]
        );
        let deps = crate::apt::parse_relations(
            "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool",
        );
        assert!(companion_packages(
            "linux-image-6.12.57+deb13-amd64-unsigned",
            &deps,
            "6.12.57+deb13",
            Arch::X86_64
        )
        .is_empty());
    }

    fn synthetic_bzimage(version: &str) -> Vec<u8> {
        let mut d = vec![0u8; 0x1000];
        d[0x202..0x206].copy_from_slice(b"HdrS");
        let off: u16 = 0x600;
        d[0x20e..0x210].copy_from_slice(&off.to_le_bytes());
        let s = format!("{version} (debian-kernel@lists.debian.org) #1 SMP\0");
        d[0x800..0x800 + s.len()].copy_from_slice(s.as_bytes());
        d
    }

    fn synthetic_arm64_image(version: &str) -> Vec<u8> {
        let mut d = vec![0u8; 0x2000];
        d[0x38..0x3c].copy_from_slice(b"ARM\x64");
        let fmt = b"Linux version %s (%s) %s\0";
        d[0x400..0x400 + fmt.len()].copy_from_slice(fmt);
        let s =
            format!("Linux version {version} (debian-kernel@lists.debian.org) (gcc) #1 SMP\n\0");
        d[0x1000..0x1000 + s.len()].copy_from_slice(s.as_bytes());
        d
    }

    #[test]
    fn release_from_x86_bzimage_header() {
        let d = synthetic_bzimage("6.12.57+deb13-amd64");
        assert_eq!(
            kernel_release_from_image(&d).as_deref(),
            Some("6.12.57+deb13-amd64")
        );
        assert_eq!(image_arch(&d), Some(Arch::X86_64));
    }

    #[test]
    fn release_from_arm64_image_plain_and_gzipped() {
        let d = synthetic_arm64_image("6.12.57+deb13-arm64");
        assert_eq!(
            kernel_release_from_image(&d).as_deref(),
            Some("6.12.57+deb13-arm64")
        );
        assert_eq!(image_arch(&d), Some(Arch::Aarch64));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&d).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            kernel_release_from_image(&gz).as_deref(),
            Some("6.12.57+deb13-arm64")
        );
        assert_eq!(image_arch(&gz), Some(Arch::Aarch64));
        // EFI zboot wrapper around the gzip payload.
        let mut z = vec![0u8; 0x100];
        z[0..2].copy_from_slice(b"MZ");
        z[4..8].copy_from_slice(b"zimg");
        z[8..12].copy_from_slice(&0x100u32.to_le_bytes());
        z[12..16].copy_from_slice(&(gz.len() as u32).to_le_bytes());
        z[24..28].copy_from_slice(b"gzip");
        z.extend_from_slice(&gz);
        assert_eq!(
            kernel_release_from_image(&z).as_deref(),
            Some("6.12.57+deb13-arm64")
        );
        assert_eq!(kernel_release_from_image(&[0u8; 100]), None);
    }

    #[test]
    fn release_from_modules_dir() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("mods/lib/modules/6.12.0-vanish");
        fs::create_dir_all(m.join("kernel")).unwrap();
        let img = dir.path().join("Image");
        fs::write(&img, synthetic_arm64_image("6.12.0-vanish")).unwrap();
        let k = user_kernel(Arch::Aarch64, &img, Some(&dir.path().join("mods"))).unwrap();
        assert_eq!(k.release, "6.12.0-vanish");
        assert_eq!(k.modules_root, dir.path().join("mods"));
        assert_eq!(k.modules_dir(), m);
        // The release directory itself is accepted too, and wins when the image says nothing.
        let blank = dir.path().join("blank");
        fs::write(&blank, [0u8; 64]).unwrap();
        let k = user_kernel(Arch::Aarch64, &blank, Some(&m)).unwrap();
        assert_eq!(k.release, "6.12.0-vanish");
        assert_eq!(k.modules_root, dir.path().join("mods"));
        // Wrong architecture and missing files are one-line errors.
        let bz = dir.path().join("bzImage");
        fs::write(&bz, synthetic_bzimage("6.12.0")).unwrap();
        let e = user_kernel(Arch::Aarch64, &bz, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x86_64"), "{e}");
        assert!(user_kernel(Arch::X86_64, &dir.path().join("nope"), None).is_err());
        assert!(image_contains(&img, b"6.12.0-vanish (").unwrap());
        assert!(!image_contains(&img, b"hibmc-drm\0").unwrap());
        let k = user_kernel(Arch::X86_64, &bz, None).unwrap();
        assert_eq!(k.release, "6.12.0");
        assert_eq!(k.modules_root, PathBuf::new());
    }
}
