//! busybox initramfs images carrying a kernel's modules.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apt::{self, AptRepo};
use crate::cpio::CpioWriter;
use crate::error::{at, Error, IoContext, Result};
use crate::kernel::GuestKernel;
use crate::util::{self, Step};
use crate::{Arch, Cache};

/// What to put in an initramfs.
pub struct InitramfsSpec<'a> {
    pub kernel: &'a GuestKernel,
    /// Module names to include with all their dependencies (from modules.dep); `-` and `_` are
    /// interchangeable. Names missing from the kernel are skipped and returned.
    pub modules: &'a [&'a str],
    /// The /init script (a busybox sh script; start it with `#!/bin/sh`).
    pub init: &'a str,
    /// Extra files: (path inside guest, host file, mode).
    pub files: &'a [(&'a str, &'a Path, u32)],
}

/// A built (cached) initramfs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Initramfs {
    /// The gzip'd newc cpio archive, for QEMU's `-initrd`.
    pub path: PathBuf,
    /// Requested modules the kernel does not have (neither built-in per modules.builtin nor as a
    /// .ko).
    pub missing_modules: Vec<String>,
    /// Modules included as .ko, in load order (deps first), as paths relative to
    /// /lib/modules/<release>, e.g. `kernel/drivers/gpu/drm/tiny/bochs.ko`.
    pub load_order: Vec<String>,
    /// Requested modules that are built into the kernel (nothing to load).
    pub builtin_modules: Vec<String>,
}

/// A static busybox for a guest architecture, from Debian's `busybox-static`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Busybox {
    pub path: PathBuf,
    /// Debian package version.
    pub version: String,
}

/// Bump when the initramfs layout changes, to invalidate cached images.
const FORMAT: &str = "vanish-initramfs-2";

/// Suite busybox-static comes from (it is static, so any suite works for any guest).
const BUSYBOX_SUITE: &str = "trixie";

/// The module name the kernel uses for a file or user-given name: no directory, no `.ko[.xz]`,
/// `-` replaced by `_`.
pub(crate) fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = strip_compression(base);
    let base = base.strip_suffix(".ko").unwrap_or(base);
    base.replace('-', "_")
}

fn strip_compression(p: &str) -> &str {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(s) = p.strip_suffix(ext) {
            if s.ends_with(".ko") {
                return s;
            }
        }
    }
    p
}

/// What is known of one kernel's modules: their files by name, their dependencies (from
/// `modules.dep` when the tree has one, else read from each module's own `.modinfo` as the closure
/// needs it) and the built-in ones (`modules.builtin`).
#[derive(Debug, Default)]
pub(crate) struct ModIndex {
    /// Module path (as in modules.dep, maybe `.ko.xz`) -> its dependencies' paths. Empty when
    /// the tree has no modules.dep.
    deps: BTreeMap<String, Vec<String>>,
    /// Module name -> path.
    by_name: HashMap<String, String>,
    /// Names of built-in modules.
    builtin: HashSet<String>,
    /// The `lib/modules/<release>` directory, to read modules from when `deps` lacks them.
    dir: Option<PathBuf>,
}

/// The modules to include for a request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Closure {
    /// Source paths (as in modules.dep), dependencies first, no duplicates.
    pub load_order: Vec<String>,
    /// Each module's direct dependencies (source paths).
    pub deps: BTreeMap<String, Vec<String>>,
    pub missing: Vec<String>,
    pub builtin: Vec<String>,
}

impl Closure {
    /// `modules.dep` for the modules of the closure, with paths mapped by `guest`: one line per
    /// module, its whole dependency closure in depmod's order (modprobe loads from the end).
    pub(crate) fn modules_dep(&self, guest: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for m in &self.load_order {
            let mut order = Vec::new();
            let mut done = HashSet::new();
            for d in self.deps.get(m).into_iter().flatten() {
                self.post_order(d, &mut done, &mut order);
            }
            order.reverse();
            let deps: Vec<String> = order.iter().map(|d| guest(d)).collect();
            out += &format!("{}: {}\n", guest(m), deps.join(" "));
        }
        out
    }

    fn post_order<'a>(&'a self, m: &'a str, done: &mut HashSet<&'a str>, out: &mut Vec<&'a str>) {
        if !done.insert(m) {
            return;
        }
        for d in self.deps.get(m).into_iter().flatten() {
            self.post_order(d, done, out);
        }
        out.push(m);
    }
}

impl ModIndex {
    pub(crate) fn parse(modules_dep: &str, modules_builtin: &str) -> ModIndex {
        let mut idx = ModIndex::default();
        for line in modules_dep.lines() {
            let Some((m, rest)) = line.split_once(':') else {
                continue;
            };
            let m = m.trim();
            if m.is_empty() || m.starts_with('#') {
                continue;
            }
            let deps = rest.split_whitespace().map(str::to_string).collect();
            idx.by_name
                .entry(module_name(m))
                .or_insert_with(|| m.to_string());
            idx.deps.insert(m.to_string(), deps);
        }
        idx.builtin = parse_builtin(modules_builtin);
        idx
    }

    /// An index of the module files under `dir` (a `lib/modules/<release>` directory without
    /// `modules.dep`): dependencies are read from the modules themselves when needed.
    pub(crate) fn from_files(dir: &Path, modules_builtin: &str) -> ModIndex {
        let mut idx = ModIndex {
            builtin: parse_builtin(modules_builtin),
            dir: Some(dir.to_path_buf()),
            ..ModIndex::default()
        };
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            let mut entries: Vec<_> = rd.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(p);
                } else if strip_compression(&e.file_name().to_string_lossy()).ends_with(".ko") {
                    if let Ok(rel) = p.strip_prefix(dir) {
                        let rel = rel.to_string_lossy().into_owned();
                        idx.by_name.entry(module_name(&rel)).or_insert(rel);
                    }
                }
            }
        }
        idx
    }

    /// Direct dependencies of module `path`: from modules.dep, or from its `.modinfo`.
    fn deps_of(&self, path: &str) -> Result<Vec<String>> {
        if let Some(d) = self.deps.get(path) {
            return Ok(d.clone());
        }
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        let file = dir.join(path);
        let names = crate::modinfo::modinfo_depends(&read_module(&file)?).ok_or_else(|| {
            Error::invalid(
                format!("{} is not a kernel module (no .modinfo)", file.display()),
                "check the modules tree (make modules_install)",
            )
        })?;
        // A dependency that is neither a file nor built in cannot be loaded: modprobe will
        // report it in the guest, where the log shows it.
        Ok(names
            .iter()
            .filter_map(|n| self.by_name.get(n).cloned())
            .collect())
    }

    /// The requested modules and everything they depend on, dependencies first.
    pub(crate) fn closure(&self, requested: &[&str]) -> Result<Closure> {
        let mut c = Closure::default();
        for req in requested {
            let name = module_name(req);
            if let Some(path) = self.by_name.get(&name) {
                self.visit(path, &mut Vec::new(), &mut c)?;
            } else if self.builtin.contains(&name) {
                if !c.builtin.contains(&req.to_string()) {
                    c.builtin.push(req.to_string());
                }
            } else if !c.missing.contains(&req.to_string()) {
                c.missing.push(req.to_string());
            }
        }
        Ok(c)
    }

    fn visit(&self, path: &str, stack: &mut Vec<String>, c: &mut Closure) -> Result<()> {
        if c.deps.contains_key(path) || stack.iter().any(|s| s == path) {
            return Ok(());
        }
        stack.push(path.to_string());
        let deps = self.deps_of(path)?;
        // modules.dep lists the full transitive set; depmod/modprobe load it from the end, so
        // walk it backwards to keep modprobe's order where it is free to choose.
        for d in deps.iter().rev() {
            self.visit(d, stack, c)?;
        }
        stack.pop();
        c.deps.insert(path.to_string(), deps);
        c.load_order.push(path.to_string());
        Ok(())
    }
}

fn parse_builtin(modules_builtin: &str) -> HashSet<String> {
    modules_builtin
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(module_name)
        .collect()
}

/// Read the kernel's module index: modules.dep when the tree has one (`make modules_install`
/// writes it), else the module files themselves, and modules.builtin.
fn load_index(kernel: &GuestKernel) -> Result<ModIndex> {
    let dir = kernel.modules_dir();
    if kernel.modules_root.as_os_str().is_empty() || !dir.is_dir() {
        return Ok(ModIndex::default());
    }
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let dep_path = dir.join("modules.dep");
    if dep_path.is_file() {
        let dep = fs::read_to_string(&dep_path).ctx(at("cannot read", &dep_path))?;
        return Ok(ModIndex::parse(&dep, &builtin));
    }
    Ok(ModIndex::from_files(&dir, &builtin))
}

/// Decompress a module file according to its suffix.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let file = File::open(path).ctx(at("cannot open module", path))?;
    let mut r = BufReader::new(file);
    let mut out = Vec::new();
    let bad = |e: String| {
        Error::invalid(
            format!("cannot decompress {}: {e}", path.display()),
            "the kernel package or module tree is corrupt; delete its cache entry and retry",
        )
    };
    if name.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut r, &mut out).map_err(|e| bad(format!("{e:?}")))?;
    } else if name.ends_with(".zst") {
        ruzstd::decoding::StreamingDecoder::new(&mut r)
            .map_err(|e| bad(e.to_string()))?
            .read_to_end(&mut out)
            .map_err(|e| bad(e.to_string()))?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(r)
            .read_to_end(&mut out)
            .map_err(|e| bad(e.to_string()))?;
    } else {
        r.read_to_end(&mut out)
            .ctx(at("cannot read module", path))?;
    }
    Ok(out)
}

/// Download (once) Debian's static busybox for `arch`.
pub fn provision_busybox(cache: &Cache, arch: Arch) -> Result<Busybox> {
    let repo = AptRepo::open(cache, BUSYBOX_SUITE, arch.debian())?;
    let st = repo.show_required("busybox-static")?;
    let version = st.get("Version").unwrap_or_default().to_string();
    let entry = cache
        .root
        .join("busybox")
        .join(arch.debian())
        .join(util::sanitize(&version));
    util::ensure_entry(&entry, |tmp| {
        let step = Step::start(format!(
            "downloading busybox-static {version} ({})",
            arch.debian()
        ));
        let debs = repo.download(
            &[("busybox-static".into(), version.clone())],
            &tmp.join("debs"),
        )?;
        let x = tmp.join("x");
        for d in &debs {
            apt::extract_deb(d, &x)?;
        }
        let bin = ["usr/bin/busybox", "bin/busybox"]
            .iter()
            .map(|p| x.join(p))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::not_found(
                    "busybox-static contains no usr/bin/busybox",
                    "report this: the Debian package layout changed",
                )
            })?;
        fs::rename(&bin, tmp.join("busybox")).ctx(at("cannot move", &bin))?;
        fs::remove_dir_all(&x).ctx(at("cannot remove", &x))?;
        fs::remove_dir_all(tmp.join("debs")).ctx(at("cannot remove", &tmp.join("debs")))?;
        step.done();
        Ok(())
    })?;
    Ok(Busybox {
        path: entry.join("busybox"),
        version,
    })
}

/// The applet names compiled into a busybox binary (its packed `applet_names` table, which
/// starts `[\0[[\0`), so links can be made without running a foreign-architecture binary.
pub(crate) fn busybox_applets(bin: &[u8]) -> Vec<String> {
    const START: &[u8] = b"[\0[[\0";
    let Some(pos) = bin.windows(START.len()).position(|w| w == START) else {
        return FALLBACK_APPLETS.iter().map(|s| s.to_string()).collect();
    };
    let mut out = Vec::new();
    for name in bin[pos..].split(|&b| b == 0) {
        if name.is_empty()
            || name.len() > 32
            || !name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"[_.-".contains(b))
        {
            break;
        }
        out.push(String::from_utf8_lossy(name).into_owned());
    }
    out
}

const FALLBACK_APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "ls", "mount", "umount", "mkdir", "modprobe", "insmod", "rmmod",
    "lsmod", "poweroff", "reboot", "halt", "sleep", "uname", "dmesg", "grep", "sed", "setpci",
    "lspci", "mdev", "ln", "rm", "cp", "mv", "test", "[", "true", "false", "printf", "head",
    "tail", "wc", "find", "xargs", "chmod", "mknod", "hexdump", "devmem", "cut", "tr", "awk",
];

/// A guest path for an extra file: relative, normal components only.
fn guest_path(p: &str) -> Result<String> {
    let path = Path::new(p.trim_start_matches('/'));
    let ok = !p.trim_start_matches('/').is_empty()
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(Error::invalid(
            format!("bad guest path `{p}` for an initramfs file"),
            "use an absolute path without `..`, e.g. /usr/bin/tool",
        ));
    }
    Ok(path.to_string_lossy().into_owned())
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Build (or reuse) an initramfs: busybox (with applet links in /bin), /init, the requested
/// modules and their dependencies decompressed under /lib/modules/<release> with a
/// `modules.dep` written from the closure, and the extra files. Cached by a hash of the inputs.
pub fn build_initramfs(cache: &Cache, spec: &InitramfsSpec) -> Result<Initramfs> {
    let kernel = spec.kernel;
    let index = load_index(kernel)?;
    let closure = index.closure(spec.modules)?;
    let busybox = provision_busybox(cache, kernel.arch)?;
    let src_dir = kernel.modules_dir();

    let mut files = Vec::new();
    for (guest, host, mode) in spec.files {
        let g = guest_path(guest)?;
        let data = fs::read(host).ctx(at("cannot read initramfs file", host))?;
        files.push((g, data, *mode));
    }

    let mut h = Sha256::new();
    let mut feed = |s: &[u8]| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s);
    };
    feed(FORMAT.as_bytes());
    feed(kernel.arch.debian().as_bytes());
    feed(kernel.release.as_bytes());
    feed(busybox.version.as_bytes());
    for m in spec.modules {
        feed(m.as_bytes());
    }
    feed(b"--");
    for m in closure
        .load_order
        .iter()
        .chain(["modules.builtin".to_string()].iter())
    {
        let p = src_dir.join(m);
        let (size, secs, nsecs) = fs::metadata(&p)
            .map(|md| (md.size(), md.mtime(), md.mtime_nsec()))
            .unwrap_or((0, 0, 0));
        feed(p.to_string_lossy().as_bytes());
        feed(&size.to_le_bytes());
        feed(&secs.to_le_bytes());
        feed(&nsecs.to_le_bytes());
    }
    feed(spec.init.as_bytes());
    for (g, data, mode) in &files {
        feed(g.as_bytes());
        feed(&Sha256::digest(data));
        feed(&mode.to_le_bytes());
    }
    let key = hex(&h.finalize())[..32].to_string();
    let entry = cache.root.join("initramfs").join(&key);
    let guest_order: Vec<String> = closure
        .load_order
        .iter()
        .map(|m| strip_compression(m).to_string())
        .collect();

    util::ensure_entry(&entry, |tmp| {
        let step = Step::start(format!(
            "building initramfs for {} ({} modules)",
            kernel.release,
            closure.load_order.len()
        ));
        // Stage the decompressed modules with a modules.dep of our own (no host depmod).
        let staging = tmp.join("staging");
        let mod_dir = staging.join("lib/modules").join(&kernel.release);
        util::create_dir_all(&mod_dir)?;
        for (src_rel, guest_rel) in closure.load_order.iter().zip(&guest_order) {
            let data = read_module(&src_dir.join(src_rel))?;
            let dst = mod_dir.join(guest_rel);
            if let Some(parent) = dst.parent() {
                util::create_dir_all(parent)?;
            }
            fs::write(&dst, data).ctx(at("cannot write", &dst))?;
        }
        for f in [
            "modules.builtin",
            "modules.builtin.modinfo",
            "modules.order",
        ] {
            let s = src_dir.join(f);
            if s.is_file() {
                fs::copy(&s, mod_dir.join(f)).ctx(at("cannot copy", &s))?;
            }
        }
        let dep = closure.modules_dep(|m| strip_compression(m).to_string());
        let dep_path = mod_dir.join("modules.dep");
        fs::write(&dep_path, dep).ctx(at("cannot write", &dep_path))?;

        let bb = fs::read(&busybox.path).ctx(at("cannot read", &busybox.path))?;
        let out_path = tmp.join("initramfs.cpio.gz");
        let out = File::create(&out_path).ctx(at("cannot create", &out_path))?;
        let gz = flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::default());
        let mut w = CpioWriter::new(gz);
        let werr = |e: std::io::Error| Error::io(format!("cannot write {}", out_path.display()), e);
        for d in [
            "bin", "sbin", "dev", "etc", "lib", "mnt", "proc", "root", "run", "sys", "tmp",
            "usr/bin", "usr/sbin",
        ] {
            w.dir_all(d).map_err(werr)?;
        }
        w.char_dev("dev/console", 0o600, 5, 1).map_err(werr)?;
        w.char_dev("dev/null", 0o666, 1, 3).map_err(werr)?;
        w.file("bin/busybox", 0o755, &bb).map_err(werr)?;
        for applet in busybox_applets(&bb) {
            if applet != "busybox" {
                w.symlink(&format!("bin/{applet}"), "busybox")
                    .map_err(werr)?;
            }
        }
        // Where the kernel's request_module() and habit look for these.
        for (link, target) in [
            ("sbin/modprobe", "../bin/busybox"),
            ("sbin/init", "../bin/busybox"),
            ("sbin/mdev", "../bin/busybox"),
        ] {
            w.symlink(link, target).map_err(werr)?;
        }
        w.file("init", 0o755, spec.init.as_bytes()).map_err(werr)?;
        add_tree(&mut w, &staging, &staging.join("lib")).map_err(werr)?;
        for (g, data, mode) in &files {
            if let Some(parent) = Path::new(g).parent() {
                w.dir_all(&parent.to_string_lossy()).map_err(werr)?;
            }
            w.file(g, *mode, data).map_err(werr)?;
        }
        let gz = w.finish().map_err(werr)?;
        let mut buf = gz.finish().map_err(werr)?;
        buf.flush().map_err(werr)?;
        drop(buf);
        fs::remove_dir_all(&staging).ctx(at("cannot remove", &staging))?;

        let meta = Initramfs {
            path: PathBuf::from("initramfs.cpio.gz"),
            missing_modules: closure.missing.clone(),
            load_order: guest_order.clone(),
            builtin_modules: closure.builtin.clone(),
        };
        let meta_path = tmp.join("initramfs.json");
        fs::write(
            &meta_path,
            serde_json::to_string_pretty(&meta).unwrap_or_default(),
        )
        .ctx(at("cannot write", &meta_path))?;
        step.done();
        Ok(())
    })?;
    Ok(Initramfs {
        path: entry.join("initramfs.cpio.gz"),
        missing_modules: closure.missing,
        load_order: guest_order,
        builtin_modules: closure.builtin,
    })
}

/// Add every directory and file under `dir` (sorted, for reproducibility), named relative to
/// `base`.
fn add_tree<W: Write>(w: &mut CpioWriter<W>, base: &Path, dir: &Path) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p
            .strip_prefix(base)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ft = e.file_type()?;
        if ft.is_dir() {
            w.dir(&rel, 0o755)?;
            add_tree(w, base, &p)?;
        } else if ft.is_file() {
            w.file(&rel, 0o644, &fs::read(&p)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/gpu/drm/tiny/bochs.ko.xz: kernel/drivers/gpu/drm/drm_vram_helper.ko.xz kernel/drivers/gpu/drm/drm_ttm_helper.ko.xz kernel/drivers/gpu/drm/ttm/ttm.ko.xz kernel/drivers/gpu/drm/drm_kms_helper.ko.xz kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/drm_vram_helper.ko.xz: kernel/drivers/gpu/drm/drm_ttm_helper.ko.xz kernel/drivers/gpu/drm/ttm/ttm.ko.xz kernel/drivers/gpu/drm/drm_kms_helper.ko.xz kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/drm_ttm_helper.ko.xz: kernel/drivers/gpu/drm/ttm/ttm.ko.xz kernel/drivers/gpu/drm/drm_kms_helper.ko.xz kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/ttm/ttm.ko.xz: kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/drm_kms_helper.ko.xz: kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/gpu/drm/drm.ko.xz:
kernel/drivers/gpu/drm/hisilicon/hibmc/hibmc-drm.ko.xz: kernel/drivers/gpu/drm/drm_vram_helper.ko.xz kernel/drivers/gpu/drm/drm_ttm_helper.ko.xz kernel/drivers/gpu/drm/ttm/ttm.ko.xz kernel/drivers/gpu/drm/drm_kms_helper.ko.xz kernel/drivers/i2c/algos/i2c-algo-bit.ko.xz kernel/drivers/gpu/drm/drm.ko.xz
kernel/drivers/i2c/algos/i2c-algo-bit.ko.xz:
kernel/drivers/char/virtio_console.ko.xz:
";
    const BUILTIN: &str = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n";

    fn pos(v: &[String], needle: &str) -> usize {
        v.iter()
            .position(|m| m.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in {v:?}"))
    }

    #[test]
    fn closure_orders_deps_first_without_duplicates() {
        let idx = ModIndex::parse(DEP, BUILTIN);
        let c = idx
            .closure(&[
                "hibmc_drm",
                "bochs",
                "virtio_pci",
                "virtio-console",
                "nope",
                "bochs",
            ])
            .unwrap();
        assert_eq!(c.missing, ["nope"]);
        assert_eq!(c.builtin, ["virtio_pci"]);
        let lo = &c.load_order;
        let uniq: HashSet<&String> = lo.iter().collect();
        assert_eq!(uniq.len(), lo.len(), "duplicates in {lo:?}");
        assert_eq!(lo.len(), 9);
        assert_eq!(pos(lo, "/drm.ko"), 0);
        assert!(pos(lo, "ttm.ko") < pos(lo, "drm_ttm_helper"));
        assert!(pos(lo, "drm_kms_helper") < pos(lo, "drm_ttm_helper"));
        assert!(pos(lo, "drm_ttm_helper") < pos(lo, "drm_vram_helper"));
        assert!(pos(lo, "drm_vram_helper") < pos(lo, "hibmc-drm"));
        assert!(pos(lo, "i2c-algo-bit") < pos(lo, "hibmc-drm"));
        assert!(pos(lo, "hibmc-drm") < pos(lo, "bochs"));
        assert!(lo.last().unwrap().contains("virtio_console"));
    }

    /// Without modules.dep (no host depmod), the closure comes from the modules' `.modinfo`, and
    /// the guest's modules.dep is written from it in depmod's order.
    #[test]
    fn closure_from_modinfo_without_modules_dep() {
        use crate::modinfo::tests::synthetic_module;
        let dir = tempfile::tempdir().unwrap();
        let m = |rel: &str, deps: &str| {
            let p = dir.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            let info = format!("license=GPL\0depends={deps}\0");
            let mut comp = Vec::new();
            lzma_rs::xz_compress(&mut &synthetic_module(info.as_bytes())[..], &mut comp).unwrap();
            fs::write(p, comp).unwrap();
        };
        m("kernel/drivers/gpu/drm/drm.ko.xz", "");
        m("kernel/drivers/gpu/drm/drm_kms_helper.ko.xz", "drm");
        m("kernel/drivers/i2c/algos/i2c-algo-bit.ko.xz", "");
        m(
            "kernel/drivers/gpu/drm/hisilicon/hibmc/hibmc-drm.ko.xz",
            "drm_kms_helper,drm,i2c-algo-bit,virtio_pci",
        );
        m("kernel/drivers/unrelated.ko.xz", "drm");
        let idx = ModIndex::from_files(dir.path(), BUILTIN);
        let c = idx.closure(&["hibmc-drm", "virtio_pci", "nope"]).unwrap();
        assert_eq!(c.missing, ["nope"]);
        assert_eq!(c.builtin, ["virtio_pci"]);
        assert_eq!(c.load_order.len(), 4, "{:?}", c.load_order);
        assert!(pos(&c.load_order, "/drm.ko") < pos(&c.load_order, "drm_kms_helper"));
        assert!(pos(&c.load_order, "drm_kms_helper") < pos(&c.load_order, "hibmc-drm"));
        assert!(pos(&c.load_order, "i2c-algo-bit") < pos(&c.load_order, "hibmc-drm"));
        let dep = c.modules_dep(|p| strip_compression(p).to_string());
        let hibmc = dep
            .lines()
            .find(|l| l.starts_with("kernel/drivers/gpu/drm/hisilicon/hibmc/hibmc-drm.ko:"))
            .unwrap();
        let deps: Vec<&str> = hibmc.split_once(": ").unwrap().1.split(' ').collect();
        assert_eq!(deps.len(), 3, "{hibmc}");
        // modprobe loads from the end: drm must come after drm_kms_helper in the line.
        let at = |n: &str| deps.iter().position(|d| d.contains(n)).unwrap();
        assert!(at("drm_kms_helper") < at("/drm.ko"), "{hibmc}");
        assert!(dep.contains("kernel/drivers/gpu/drm/drm.ko: \n"), "{dep}");
        assert!(!dep.contains("unrelated"));
        // An empty tree knows nothing.
        let none = ModIndex::from_files(&dir.path().join("none"), "");
        assert_eq!(none.closure(&["drm"]).unwrap().missing, ["drm"]);
    }

    #[test]
    fn module_names_normalise() {
        assert_eq!(
            module_name("kernel/drivers/gpu/drm/hisilicon/hibmc/hibmc-drm.ko.xz"),
            "hibmc_drm"
        );
        assert_eq!(module_name("hibmc-drm"), "hibmc_drm");
        assert_eq!(module_name("bochs.ko"), "bochs");
        assert_eq!(module_name("x.ko.zst"), "x");
        assert_eq!(strip_compression("a/b.ko.xz"), "a/b.ko");
        assert_eq!(strip_compression("a/b.ko"), "a/b.ko");
    }

    #[test]
    fn applets_from_binary_table() {
        let mut bin = b"\x7fELF junk [ not this".to_vec();
        bin.extend_from_slice(b"[\0[[\0acpid\0ash\0modprobe\0poweroff\0sh\0zcat\0\0\x01\x02");
        assert_eq!(
            busybox_applets(&bin),
            ["[", "[[", "acpid", "ash", "modprobe", "poweroff", "sh", "zcat"]
        );
        assert!(busybox_applets(b"nothing").contains(&"sh".to_string()));
    }

    #[test]
    fn guest_paths_are_checked() {
        assert_eq!(guest_path("/usr/bin/x").unwrap(), "usr/bin/x");
        assert!(guest_path("/../etc").is_err());
        assert!(guest_path("/").is_err());
    }

    #[test]
    fn modules_decompress_by_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let payload = b"\x7fELF module bytes".repeat(100);
        let xz = dir.path().join("m.ko.xz");
        let mut comp = Vec::new();
        lzma_rs::xz_compress(&mut &payload[..], &mut comp).unwrap();
        fs::write(&xz, comp).unwrap();
        assert_eq!(read_module(&xz).unwrap(), payload);
        let gz = dir.path().join("m.ko.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&payload).unwrap();
        fs::write(&gz, e.finish().unwrap()).unwrap();
        assert_eq!(read_module(&gz).unwrap(), payload);
        let plain = dir.path().join("m.ko");
        fs::write(&plain, &payload).unwrap();
        assert_eq!(read_module(&plain).unwrap(), payload);
    }
}
