//! The user's own files for the guest (`vanish run --guest-file/--guest-dir`): where each goes,
//! its mode, and for a dynamically linked ELF the interpreter and every library it needs
//! (transitively, like ldd) from a sysroot, or a one-line refusal naming what is missing.
//!
//! - `--guest-file HOST[:GUEST]`: GUEST defaults to `/usr/local/bin/NAME` (on the guest's
//!   PATH); a GUEST ending in `/` is a directory that gets NAME.
//! - `--guest-dir HOST[:GUEST]`: the tree under HOST; GUEST defaults to `/opt/NAME`.
//! - A library found at `SYSROOT/usr/lib/x86_64-linux-gnu/libc.so.6` goes to the same path in
//!   the guest; the interpreter to its PT_INTERP path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::{Endianness, FileKind};

use crate::Arch;

/// One file for the initramfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path in the guest.
    pub guest: String,
    /// The host file (symlinks followed).
    pub host: PathBuf,
    pub mode: u32,
}

/// What an ELF file needs at run time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfNeeds {
    pub machine: u16,
    /// PT_INTERP, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<String>,
    /// DT_NEEDED sonames.
    pub needed: Vec<String>,
    /// DT_RUNPATH and DT_RPATH entries.
    pub runpath: Vec<String>,
}

impl ElfNeeds {
    pub fn is_dynamic(&self) -> bool {
        self.interpreter.is_some() || !self.needed.is_empty()
    }
}

/// `None` if `data` is not an ELF file; an error if it is a broken one.
pub fn elf_needs(data: &[u8]) -> Result<Option<ElfNeeds>, String> {
    if !data.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    match FileKind::parse(data).map_err(|e| e.to_string())? {
        FileKind::Elf64 => parse::<elf::FileHeader64<Endianness>>(data).map(Some),
        FileKind::Elf32 => parse::<elf::FileHeader32<Endianness>>(data).map(Some),
        _ => Err("not an ELF file object can read".into()),
    }
}

fn parse<H: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<ElfNeeds, String> {
    let err = |e: object::Error| format!("bad ELF: {e}");
    let h = H::parse(data).map_err(err)?;
    let e = h.endian().map_err(err)?;
    let mut needs = ElfNeeds {
        machine: h.e_machine(e),
        ..ElfNeeds::default()
    };
    for ph in h.program_headers(e, data).map_err(err)? {
        if let Some(interp) = ph.interpreter(e, data).map_err(err)? {
            needs.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let sections = h.sections(e, data).map_err(err)?;
    if let Some((dyns, strtab)) = sections.dynamic(e, data).map_err(err)? {
        let strings = sections.strings(e, data, strtab).map_err(err)?;
        for d in dyns {
            let tag = d.tag32(e).unwrap_or(0);
            let text = || {
                d.string(e, strings)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .map_err(err)
            };
            match tag {
                elf::DT_NEEDED => needs.needed.push(text()?),
                elf::DT_RUNPATH | elf::DT_RPATH => {
                    needs.runpath.extend(text()?.split(':').map(str::to_string))
                }
                _ => {}
            }
        }
    } else if needs.interpreter.is_some() {
        // Stripped of section headers: the needs are unknown, but the loader is still required.
    }
    Ok(needs)
}

fn arch_of_machine(m: u16) -> Option<Arch> {
    match m {
        elf::EM_X86_64 => Some(Arch::X86_64),
        elf::EM_AARCH64 => Some(Arch::Aarch64),
        _ => None,
    }
}

/// The library directories of a sysroot, in search order.
fn lib_dirs(sysroot: &Path, runpath: &[String]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = runpath
        .iter()
        .filter(|r| r.starts_with('/'))
        .map(|r| sysroot.join(r.trim_start_matches('/')))
        .collect();
    for base in ["lib", "usr/lib", "lib64", "usr/lib64", "usr/local/lib"] {
        let d = sysroot.join(base);
        // Multiarch directories first (lib/x86_64-linux-gnu), as Debian's loader searches.
        if let Ok(rd) = std::fs::read_dir(&d) {
            let mut multi: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.contains("-linux-"))
                })
                .collect();
            multi.sort();
            dirs.extend(multi);
        }
        dirs.push(d);
    }
    dirs
}

/// The path inside the sysroot, as an absolute guest path.
fn guest_path_in(sysroot: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(sysroot).unwrap_or(p);
    format!("/{}", rel.display())
}

/// Checks a guest file and adds what it needs: nothing for a static ELF or a script; for a
/// dynamic ELF the interpreter and libraries from `sysroot`. Errors are one line.
fn add_needs(
    file: &GuestFile,
    arch: Arch,
    sysroot: Option<&Path>,
    extra: &mut BTreeMap<String, GuestFile>,
    label: &str,
) -> Result<(), String> {
    let data =
        std::fs::read(&file.host).map_err(|e| format!("{label} {}: {e}", file.host.display()))?;
    let Some(needs) =
        elf_needs(&data).map_err(|e| format!("{label} {}: {e}", file.host.display()))?
    else {
        return Ok(());
    };
    if let Some(a) = arch_of_machine(needs.machine) {
        if a != arch {
            return Err(format!(
                "{label} {} is an {a} ELF, but the guest is {arch}",
                file.host.display()
            ));
        }
    }
    if !needs.is_dynamic() {
        return Ok(());
    }
    let Some(root) = sysroot else {
        return Err(format!(
            "{label} {} is dynamically linked (interpreter {}; needs {}): give --guest-sysroot DIR with those libraries, or link it statically",
            file.host.display(),
            needs.interpreter.as_deref().unwrap_or("none"),
            if needs.needed.is_empty() { "no libraries".to_string() } else { needs.needed.join(", ") }
        ));
    };
    let mut missing = BTreeSet::new();
    if let Some(interp) = &needs.interpreter {
        let host = root.join(interp.trim_start_matches('/'));
        if host.is_file() {
            extra.entry(interp.clone()).or_insert(GuestFile {
                guest: interp.clone(),
                host,
                mode: 0o755,
            });
        } else {
            missing.insert(interp.clone());
        }
    }
    // Breadth first over DT_NEEDED, each soname once.
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<(String, Vec<String>)> = needs
        .needed
        .iter()
        .map(|n| (n.clone(), needs.runpath.clone()))
        .collect();
    while let Some((soname, runpath)) = queue.pop_front() {
        if !seen.insert(soname.clone()) {
            continue;
        }
        let found = if soname.contains('/') {
            let p = root.join(soname.trim_start_matches('/'));
            p.is_file().then_some(p)
        } else {
            lib_dirs(root, &runpath)
                .into_iter()
                .map(|d| d.join(&soname))
                .find(|p| p.is_file())
        };
        let Some(path) = found else {
            missing.insert(soname);
            continue;
        };
        let lib = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(Some(n)) = elf_needs(&lib) {
            queue.extend(n.needed.iter().map(|x| (x.clone(), n.runpath.clone())));
        }
        let guest = guest_path_in(root, &path);
        extra.entry(guest.clone()).or_insert(GuestFile {
            guest,
            host: path,
            mode: 0o755,
        });
    }
    if !missing.is_empty() {
        return Err(format!(
            "{label} {} is dynamically linked and --guest-sysroot {} lacks {}",
            file.host.display(),
            root.display(),
            missing.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// Splits `HOST[:GUEST]`; GUEST must be absolute.
fn split_spec(spec: &str, label: &str) -> Result<(PathBuf, Option<String>), String> {
    match spec.rsplit_once(':') {
        Some((host, guest)) if guest.starts_with('/') => {
            Ok((PathBuf::from(host), Some(guest.to_string())))
        }
        Some((_, guest)) if !guest.is_empty() && !Path::new(spec).exists() => Err(format!(
            "{label} {spec}: the guest path '{guest}' must be absolute"
        )),
        _ => Ok((PathBuf::from(spec), None)),
    }
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

/// Resolves `--guest-file` and `--guest-dir` specs into the files to add, with what dynamic
/// ELF files need from `sysroot`. Every error is one line.
pub fn resolve_guest_files(
    files: &[String],
    dirs: &[String],
    sysroot: Option<&Path>,
    arch: Arch,
) -> Result<Vec<GuestFile>, String> {
    if let Some(root) = sysroot {
        if !root.is_dir() {
            return Err(format!(
                "--guest-sysroot {}: not a directory",
                root.display()
            ));
        }
    }
    let mut out: Vec<(GuestFile, &str)> = Vec::new();
    for spec in files {
        let (host, guest) = split_spec(spec, "--guest-file")?;
        let meta = std::fs::metadata(&host)
            .map_err(|e| format!("--guest-file {}: {e}", host.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "--guest-file {}: not a regular file",
                host.display()
            ));
        }
        let name = host
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("--guest-file {}: no file name", host.display()))?;
        let guest = match guest {
            None => format!("/usr/local/bin/{name}"),
            Some(g) if g.ends_with('/') => format!("{g}{name}"),
            Some(g) => g,
        };
        out.push((
            GuestFile {
                guest,
                host,
                mode: mode_of(&meta),
            },
            "--guest-file",
        ));
    }
    for spec in dirs {
        let (host, guest) = split_spec(spec, "--guest-dir")?;
        if !host.is_dir() {
            return Err(format!("--guest-dir {}: not a directory", host.display()));
        }
        let base = match guest {
            Some(g) => g.trim_end_matches('/').to_string(),
            None => format!(
                "/opt/{}",
                host.canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "guest".into())
            ),
        };
        let mut stack = vec![host.clone()];
        while let Some(d) = stack.pop() {
            let rd =
                std::fs::read_dir(&d).map_err(|e| format!("--guest-dir {}: {e}", d.display()))?;
            for entry in rd.flatten() {
                let p = entry.path();
                let meta = std::fs::metadata(&p)
                    .map_err(|e| format!("--guest-dir {}: {e}", p.display()))?;
                if meta.is_dir() {
                    stack.push(p);
                } else if meta.is_file() {
                    let rel = p.strip_prefix(&host).unwrap_or(&p);
                    out.push((
                        GuestFile {
                            guest: format!("{base}/{}", rel.display()),
                            host: p.clone(),
                            mode: mode_of(&meta),
                        },
                        "--guest-dir file",
                    ));
                }
            }
        }
    }
    let mut extra = BTreeMap::new();
    for (f, label) in &out {
        add_needs(f, arch, sysroot, &mut extra, label)?;
    }
    let mut all: Vec<GuestFile> = out.into_iter().map(|(f, _)| f).collect();
    for (g, f) in extra {
        if !all.iter().any(|a| a.guest == g) {
            all.push(f);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_arch() -> Arch {
        Arch::host()
    }

    #[test]
    fn bin_ls_is_dynamic_and_a_script_is_not() {
        let ls = std::fs::read("/bin/ls").unwrap();
        let n = elf_needs(&ls).unwrap().unwrap();
        assert!(n.is_dynamic(), "{n:?}");
        assert!(n.needed.iter().any(|l| l.starts_with("libc.so")), "{n:?}");
        assert!(n.interpreter.as_deref().unwrap().contains("ld-"), "{n:?}");
        assert_eq!(elf_needs(b"#!/bin/sh\necho hi\n").unwrap(), None);
        assert!(elf_needs(b"\x7fELF\x02garbage").is_err());
    }

    #[test]
    fn a_static_musl_binary_is_static() {
        // The guest agent hotplug_ctl's build.rs builds (static musl); search the target dirs.
        let candidates = [
            std::env::var("CARGO_TARGET_DIR").unwrap_or_default(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_string(),
        ];
        let arch = match host_arch() {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        };
        let bin = candidates
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| {
                Path::new(c).join(format!(
                    "vanish-agent/{arch}-unknown-linux-musl/release/vanish-agent"
                ))
            })
            .find(|p| p.is_file())
            .expect("the static guest agent (build hotplug_ctl first)");
        let n = elf_needs(&std::fs::read(&bin).unwrap()).unwrap().unwrap();
        assert!(!n.is_dynamic(), "{n:?}");
        let files = resolve_guest_files(
            &[format!("{}:/bin/agent2", bin.display())],
            &[],
            None,
            host_arch(),
        )
        .unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].guest, "/bin/agent2");
        assert_eq!(files[0].mode & 0o111, 0o111);
    }

    #[test]
    fn dynamic_elves_need_a_sysroot_with_every_library() {
        let e = resolve_guest_files(&["/bin/ls".into()], &[], None, host_arch()).unwrap_err();
        assert!(
            e.starts_with("--guest-file /bin/ls is dynamically linked"),
            "{e}"
        );
        assert!(e.contains("libc.so.6") && !e.contains('\n'), "{e}");

        // The host's root is a sysroot with everything ls needs.
        let files =
            resolve_guest_files(&["/bin/ls".into()], &[], Some(Path::new("/")), host_arch())
                .unwrap();
        assert_eq!(files[0].guest, "/usr/local/bin/ls");
        assert!(
            files.iter().any(|f| f.guest.ends_with("/libc.so.6")),
            "{files:?}"
        );
        let interp = elf_needs(&std::fs::read("/bin/ls").unwrap())
            .unwrap()
            .unwrap()
            .interpreter
            .unwrap();
        assert!(files.iter().any(|f| f.guest == interp), "{files:?}");

        // An empty sysroot lacks all of them, named on one line.
        let empty = tempfile::tempdir().unwrap();
        let e = resolve_guest_files(&["/bin/ls".into()], &[], Some(empty.path()), host_arch())
            .unwrap_err();
        assert!(
            e.contains("lacks") && e.contains("libc.so.6") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn specs_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("t.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/data"), "x").unwrap();
        let s = script.display().to_string();
        let f = resolve_guest_files(std::slice::from_ref(&s), &[], None, host_arch()).unwrap();
        assert_eq!(f[0].guest, "/usr/local/bin/t.sh");
        let f = resolve_guest_files(&[format!("{s}:/root/")], &[], None, host_arch()).unwrap();
        assert_eq!(f[0].guest, "/root/t.sh");
        assert!(resolve_guest_files(&[format!("{s}:rel")], &[], None, host_arch()).is_err());
        let e = resolve_guest_files(&["/no/such/file".into()], &[], None, host_arch()).unwrap_err();
        assert!(e.starts_with("--guest-file /no/such/file: "), "{e}");
        let d = dir.path().display().to_string();
        let mut f = resolve_guest_files(&[], &[format!("{d}:/srv/t")], None, host_arch()).unwrap();
        f.sort_by(|a, b| a.guest.cmp(&b.guest));
        let names: Vec<&str> = f.iter().map(|g| g.guest.as_str()).collect();
        assert_eq!(names, ["/srv/t/sub/data", "/srv/t/t.sh"]);
    }
}
