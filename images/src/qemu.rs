//! A QEMU with the vfio-user-pci client: from PATH, or a private Debian trixie root.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::apt::{AptRepo, MIRROR};
use crate::error::{at, Error, IoContext, Result};
use crate::util::{self, Step};
use crate::{Arch, Cache};

/// How to run QEMU: `program` plus `prefix_args` go before the user's args (for a private root:
/// its dynamic loader with `--library-path`, then the binary, then `-L` firmware directories),
/// with `env` added to the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qemu {
    pub program: PathBuf,
    pub prefix_args: Vec<OsString>,
    /// QEMU's version, e.g. "11.1.3".
    pub version: String,
    /// Extra environment (`QEMU_MODULE_DIR` for a private root, whose modules QEMU cannot find
    /// on its own because `/proc/self/exe` is the loader).
    pub env: Vec<(OsString, OsString)>,
}

impl Qemu {
    /// A `Command` ready for the caller's QEMU arguments.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.prefix_args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

/// The suite the private root takes QEMU from.
const QEMU_SUITE: &str = "trixie-backports";

/// Find or build a QEMU for `arch` guests that has `vfio-user-pci`.
///
/// First the `qemu-system-<arch>` binaries on `PATH` (the first whose `-device help` lists
/// vfio-user-pci wins); else a private Debian trixie root with QEMU from trixie-backports, built
/// once with `mmdebstrap` (installed with apt-get when missing and running as root) under
/// `<cache>/qemu/<host debarch>/trixie-backports-<version>/root`, and run through the root's own
/// dynamic loader (no chroot).
pub fn provision_qemu(cache: &Cache, arch: Arch) -> Result<Qemu> {
    if let Some(q) = qemu_on_path(arch) {
        return Ok(q);
    }
    let root = private_root(cache)?;
    let q = qemu_from_root(&root, arch)?;
    let version = qemu_version(&q)?;
    Ok(Qemu { version, ..q })
}

fn qemu_on_path(arch: Arch) -> Option<Qemu> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let bin = dir.join(arch.qemu_system());
        if !util::is_executable(&bin) {
            continue;
        }
        let q = Qemu {
            program: bin,
            prefix_args: Vec::new(),
            version: String::new(),
            env: Vec::new(),
        };
        if has_vfio_user(&q) {
            if let Ok(version) = qemu_version(&q) {
                return Some(Qemu { version, ..q });
            }
        }
    }
    None
}

fn has_vfio_user(q: &Qemu) -> bool {
    let mut c = q.command();
    c.args(["-nodefaults", "-machine", "none", "-device", "help"]);
    util::run_status(&mut c)
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("\"vfio-user-pci\"")
        })
        .unwrap_or(false)
}

/// `QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1~bpo13+1)` -> `11.1.3`.
pub(crate) fn parse_qemu_version(text: &str) -> Option<String> {
    let rest = text.split("QEMU emulator version ").nth(1)?;
    let v = rest.split_whitespace().next()?;
    v.chars().next()?.is_ascii_digit().then(|| v.to_string())
}

fn qemu_version(q: &Qemu) -> Result<String> {
    let mut c = q.command();
    c.arg("-version");
    let out = util::run(
        &mut c,
        "the QEMU binary does not run; delete the qemu directory in the vanish cache to rebuild it",
    )?;
    parse_qemu_version(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        Error::invalid(
            format!("cannot parse `{} -version` output", q.program.display()),
            "check the QEMU installation",
        )
    })
}

/// The private root: the newest QEMU in trixie-backports, or an existing root when the package
/// lists cannot be fetched.
fn private_root(cache: &Cache) -> Result<PathBuf> {
    let host = Arch::host();
    let base = cache.root.join("qemu").join(host.debian());
    let wanted = AptRepo::open(cache, QEMU_SUITE, host.debian())
        .and_then(|repo| repo.show_required("qemu-system-x86"))
        .map(|st| st.get("Version").unwrap_or_default().to_string());
    let version = match wanted {
        Ok(v) => v,
        Err(e) => {
            if let Some(existing) = newest_existing_root(&base) {
                util::note(format!(
                    "warning: cannot check for a newer QEMU ({e}); using {}",
                    existing.display()
                ));
                return Ok(existing);
            }
            return Err(e);
        }
    };
    let entry = base.join(format!("{QEMU_SUITE}-{}", util::sanitize(&version)));
    if entry.to_string_lossy().contains(':') {
        return Err(Error::invalid(
            format!("cache path {} contains `:`", entry.display()),
            "set VANISH_CACHE to a path without `:` (it is used in a library search path)",
        ));
    }
    util::ensure_entry(&entry, |tmp| build_root(tmp, &version))?;
    Ok(entry.join("root"))
}

fn newest_existing_root(base: &Path) -> Option<PathBuf> {
    let mut roots: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(base)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(QEMU_SUITE))
        .map(|e| e.path().join("root"))
        .filter(|r| r.join("usr/bin/qemu-system-x86_64").is_file())
        .filter_map(|r| Some((fs::metadata(&r).ok()?.modified().ok()?, r)))
        .collect();
    roots.sort();
    roots.pop().map(|(_, r)| r)
}

fn is_root_user() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `mmdebstrap`, installing it with apt-get when we are root on a Debian-like host.
fn ensure_mmdebstrap() -> Result<PathBuf> {
    if let Some(p) = util::find_tool("mmdebstrap") {
        return Ok(p);
    }
    let hint = "install mmdebstrap (apt-get install -y mmdebstrap), or put a qemu-system-x86_64/qemu-system-aarch64 with vfio-user-pci (QEMU >= 10.1) on PATH";
    let debian_like = Path::new("/etc/debian_version").exists();
    let apt_get = util::find_tool("apt-get");
    let (true, true, Some(apt_get)) = (is_root_user(), debian_like, apt_get) else {
        return Err(Error::MissingTool {
            tool: "mmdebstrap".into(),
            hint: hint.into(),
        });
    };
    util::note("installing host package mmdebstrap (apt-get install -y mmdebstrap)");
    let install = || {
        let mut c = Command::new(&apt_get);
        c.args(["install", "-y", "--no-install-recommends", "mmdebstrap"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        util::run(&mut c, hint)
    };
    if install().is_err() {
        // Maybe the host's package lists are missing or stale.
        let mut c = Command::new(&apt_get);
        c.arg("update");
        util::run(&mut c, hint)?;
        install()?;
    }
    util::find_tool("mmdebstrap").ok_or_else(|| Error::MissingTool {
        tool: "mmdebstrap".into(),
        hint: hint.into(),
    })
}

fn build_root(tmp: &Path, version: &str) -> Result<()> {
    let mmdebstrap = ensure_mmdebstrap()?;
    let root = tmp.join("root");
    let log_path = tmp.join("mmdebstrap.log");
    let log = File::create(&log_path).ctx(at("cannot create", &log_path))?;
    let log2 = log.try_clone().ctx(at("cannot reopen", &log_path))?;
    let step = Step::start(format!(
        "building a private QEMU {version} root (Debian trixie + {QEMU_SUITE}) with mmdebstrap"
    ));
    let mut cmd = Command::new(mmdebstrap);
    cmd.arg("--variant=essential")
        .arg("--aptopt=APT::Install-Recommends \"false\"")
        .arg(format!("--aptopt=APT::Default-Release \"{QEMU_SUITE}\""))
        .arg("--include=qemu-system-x86,qemu-system-arm")
        .arg("trixie")
        .arg(&root)
        .arg(format!("deb {MIRROR} trixie main"))
        .arg(format!("deb {MIRROR} {QEMU_SUITE} main"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let status = cmd.status().map_err(|e| Error::Command {
        command: util::show_command(&cmd),
        detail: format!("could not start it: {e}"),
        hint: "check the mmdebstrap installation".into(),
    })?;
    let mounts = util::mounts_below(tmp);
    if let Some(m) = mounts.first() {
        return Err(Error::Command {
            command: util::show_command(&cmd),
            detail: format!("left {} mounted", m.display()),
            hint: format!("umount it and delete {}", tmp.display()),
        });
    }
    if !status.success() {
        let text = fs::read(&log_path).unwrap_or_default();
        return Err(Error::Command {
            command: util::show_command(&cmd),
            detail: format!("{} ({status})", util::tail_lines(&text, 3)),
            hint: format!(
                "check network access to {MIRROR}; full log in {}",
                log_path.display()
            ),
        });
    }
    step.done();
    // Only keep a root whose QEMU really runs and has the client.
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let q = qemu_from_root(&root, arch)?;
        qemu_version(&q)?;
        if !has_vfio_user(&q) {
            return Err(Error::not_found(
                format!(
                    "{} from {QEMU_SUITE} has no vfio-user-pci device",
                    arch.qemu_system()
                ),
                "put a QEMU >= 10.1 built with vfio-user on PATH",
            ));
        }
    }
    Ok(())
}

/// The dynamic loader of a root for the host architecture.
fn loader(root: &Path, host: Arch) -> PathBuf {
    let name = match host {
        Arch::X86_64 => "ld-linux-x86-64.so.2",
        Arch::Aarch64 => "ld-linux-aarch64.so.1",
    };
    root.join("usr/lib").join(host.triplet()).join(name)
}

/// Library directories of a root: its ld.so.conf.d entries (mapped into the root) and the
/// standard multiarch ones, existing and de-duplicated.
fn library_dirs(root: &Path, host: Arch) -> Vec<PathBuf> {
    let mut cands = vec![
        format!("/usr/lib/{}", host.triplet()),
        format!("/lib/{}", host.triplet()),
        "/usr/lib".to_string(),
        "/lib".to_string(),
    ];
    if let Ok(rd) = fs::read_dir(root.join("etc/ld.so.conf.d")) {
        let mut confs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        confs.sort();
        for c in confs {
            if let Ok(text) = fs::read_to_string(&c) {
                cands.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| l.starts_with('/'))
                        .map(str::to_string),
                );
            }
        }
    }
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen = Vec::new();
    for c in cands {
        let p = root.join(c.trim_start_matches('/'));
        // Resolve inside the root only: its symlinks (lib -> usr/lib) are relative.
        if let Ok(canon) = fs::canonicalize(&p) {
            if canon.starts_with(root) && canon.is_dir() && !seen.contains(&canon) {
                seen.push(canon);
                out.push(p);
            }
        }
    }
    out
}

/// How to run the root's QEMU for `arch` without chroot.
pub(crate) fn qemu_from_root(root: &Path, arch: Arch) -> Result<Qemu> {
    let host = Arch::host();
    let root = fs::canonicalize(root).ctx(at("cannot resolve QEMU root", root))?;
    let ld = loader(&root, host);
    let bin = root.join("usr/bin").join(arch.qemu_system());
    let broken = |what: &Path| {
        Error::not_found(
            format!("the private QEMU root lacks {}", what.display()),
            format!(
                "delete {} and retry to rebuild it",
                root.parent().unwrap_or(&root).display()
            ),
        )
    };
    if !ld.is_file() {
        return Err(broken(&ld));
    }
    if !bin.is_file() {
        return Err(broken(&bin));
    }
    let libs = std::env::join_paths(library_dirs(&root, host)).map_err(|_| {
        Error::invalid(
            format!("QEMU root path {} contains `:`", root.display()),
            "set VANISH_CACHE to a path without `:`",
        )
    })?;
    let mut prefix_args: Vec<OsString> = vec![
        "--inhibit-cache".into(),
        "--library-path".into(),
        libs,
        "--argv0".into(),
        arch.qemu_system().into(),
        bin.into_os_string(),
    ];
    for dir in [
        "usr/share/qemu",
        "usr/share/seabios",
        "usr/lib/ipxe/qemu",
        "usr/share/qemu-efi-aarch64",
        "usr/share/AAVMF",
        "usr/share/OVMF",
    ] {
        let d = root.join(dir);
        if d.is_dir() {
            prefix_args.push("-L".into());
            prefix_args.push(d.into_os_string());
        }
    }
    let env = vec![(
        OsString::from("QEMU_MODULE_DIR"),
        root.join("usr/lib")
            .join(host.triplet())
            .join("qemu")
            .into_os_string(),
    )];
    Ok(Qemu {
        program: ld,
        prefix_args,
        version: String::new(),
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parses() {
        let out = "QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1~bpo13+1)\nCopyright (c) 2003-2026 Fabrice Bellard and the QEMU Project developers\n";
        assert_eq!(parse_qemu_version(out).as_deref(), Some("11.1.3"));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.0\n").as_deref(),
            Some("7.2.0")
        );
        assert_eq!(parse_qemu_version("nope"), None);
    }

    #[test]
    fn command_puts_prefix_first() {
        let q = Qemu {
            program: "/r/ld.so".into(),
            prefix_args: vec!["--library-path".into(), "/r/lib".into(), "/r/qemu".into()],
            version: "11.1.3".into(),
            env: vec![("QEMU_MODULE_DIR".into(), "/r/mod".into())],
        };
        let mut c = q.command();
        c.arg("-version");
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["--library-path", "/r/lib", "/r/qemu", "-version"]);
        assert_eq!(c.get_program(), "/r/ld.so");
        assert!(c.get_envs().any(|(k, _)| k == "QEMU_MODULE_DIR"));
    }

    #[test]
    fn library_dirs_stay_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let t = Arch::host().triplet();
        fs::create_dir_all(root.join("usr/lib").join(t)).unwrap();
        fs::create_dir_all(root.join("etc/ld.so.conf.d")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        fs::write(
            root.join("etc/ld.so.conf.d/x.conf"),
            format!("# multiarch\n/lib/{t}\n/usr/local/lib\n"),
        )
        .unwrap();
        let dirs = library_dirs(root, Arch::host());
        assert_eq!(dirs, [root.join("usr/lib").join(t), root.join("usr/lib")]);
    }
}
