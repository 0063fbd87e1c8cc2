//! `vanish kconfig`: the kernel configuration a vanish guest needs, as a fragment to read or
//! applied to a build directory.
//!
//! `--base minimal` starts from `allnoconfig` and adds only what the rig uses: the serial console,
//! an initramfs (gzip) with busybox and the static guest agent, virtio-serial for the agent, PCIe
//! with native hotplug and MSI behind the machine's host bridge (arm64 `virt`: generic ECAM; x86
//! `q35`: ACPI + MMCONFIG), DRM with fbdev emulation, `/dev/fb0` and fbcon, and the card's driver.
//! `--base defconfig` starts from the architecture's defconfig and adds the same.
//!
//! With `--apply BUILD_DIR` the base config is generated there (an `O=` build directory, or the
//! source tree itself for an in-tree build), the fragment merged over it (a later value wins, as
//! in `scripts/kconfig/merge_config.sh`), `olddefconfig` run, and every option checked: one that
//! did not survive is named with the `depends on` clause (from the tree's Kconfig files) that
//! dropped it, and the exit code is 3. `make` output goes to a log file.
//!
//! Exit codes: 0 configured (or fragment printed), 1 `make` failed, 2 usage (not a kernel tree,
//! a dirty tree for an `O=` build), 3 an option the rig needs did not survive.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use images::Arch;

/// Exit code: an option the rig needs did not survive `olddefconfig`.
pub const EXIT_LOST: i32 = 3;
/// Exit code: `make` failed.
pub const EXIT_MAKE: i32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CardSel {
    Hibmc,
    Bochs,
    /// Both drivers where they build (hibmc is arm64-only).
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Base {
    /// allnoconfig plus only what the rig needs (fast to build).
    Minimal,
    /// The architecture's defconfig plus what the rig needs.
    Defconfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum DebugOpt {
    /// KASAN (generic): use-after-free and out-of-bounds reports.
    Kasan,
    /// KFENCE: sampled use-after-free detection, cheap.
    Kfence,
    /// PROVE_LOCKING (lockdep) and DEBUG_ATOMIC_SLEEP.
    Lockdep,
    /// DEBUG_OBJECTS for freed memory, timers and work items.
    DebugObjects,
    /// DEBUG_LIST: list corruption checks.
    DebugList,
    /// UBSAN: undefined behaviour checks.
    Ubsan,
    /// DEBUG_TEST_DRIVER_REMOVE: every probe is followed by remove and probe again.
    TestDriverRemove,
}

#[derive(clap::Args, Debug, Clone)]
pub struct KconfigArgs {
    /// Guest architecture: aarch64 (virt) or x86_64 (q35).
    #[arg(long, default_value = "aarch64", value_parser = crate::arch_value_parser(), ignore_case = true)]
    pub arch: Arch,
    /// Card driver(s) to build: hibmc, bochs or all. Default: hibmc on aarch64, bochs on x86_64.
    #[arg(long)]
    pub card: Option<CardSel>,
    /// Debug options, comma-separated: kasan, kfence, lockdep, debug-objects, debug-list, ubsan,
    /// test-driver-remove.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub debug: Vec<DebugOpt>,
    /// What to start from: minimal (allnoconfig + the rig's needs) or defconfig.
    #[arg(long, value_enum, default_value = "minimal")]
    pub base: Base,
    /// Build the card drivers as modules (=m; turns on CONFIG_MODULES) instead of built in.
    #[arg(long)]
    pub modules: bool,
    /// Configure this build directory (`make O=BUILD_DIR`; the source tree itself for an in-tree
    /// build) instead of printing the fragment.
    #[arg(long, value_name = "BUILD_DIR")]
    pub apply: Option<PathBuf>,
    /// The kernel source tree (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub src: Option<PathBuf>,
    /// Cross toolchain prefix (default: $CROSS_COMPILE, else aarch64-linux-gnu- /
    /// x86_64-linux-gnu- when the host is the other architecture). LLVM=1 in the environment is
    /// passed on to make.
    #[arg(long, value_name = "PREFIX")]
    pub cross_compile: Option<String>,
    /// Where make's output goes (appended). Default: BUILD_DIR/vanish-kconfig.log.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

/// The value an option must end up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Val {
    /// Built in.
    Y,
    /// A module (built in is accepted too).
    M,
}

/// One option of the fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// The symbol without `CONFIG_`.
    pub sym: &'static str,
    pub val: Val,
    /// A lost required option fails the configuration (exit 3); a lost optional one is a
    /// warning.
    pub required: bool,
    /// Why vanish wants it (a comment in the fragment).
    pub why: &'static str,
}

/// What to configure: the parsed options, free of paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub arch: Arch,
    pub card: CardSel,
    pub debug: Vec<DebugOpt>,
    pub base: Base,
    pub modules: bool,
}

impl Spec {
    pub fn from_args(a: &KconfigArgs) -> Spec {
        let mut debug = a.debug.clone();
        debug.sort();
        debug.dedup();
        Spec {
            arch: a.arch,
            card: a.card.unwrap_or(default_card(a.arch)),
            debug,
            base: a.base,
            modules: a.modules,
        }
    }
}

/// hibmc on aarch64 (its driver is arm64-only before COMPILE_TEST), bochs on x86_64.
pub fn default_card(arch: Arch) -> CardSel {
    match arch {
        Arch::Aarch64 => CardSel::Hibmc,
        Arch::X86_64 => CardSel::Bochs,
    }
}

/// The kernel's name for the architecture (`ARCH=`, `arch/<karch>`).
pub fn karch(arch: Arch) -> &'static str {
    match arch {
        Arch::Aarch64 => "arm64",
        Arch::X86_64 => "x86",
    }
}

/// The boot image, relative to the build directory, and its make target.
pub fn image_target(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Aarch64 => ("arch/arm64/boot/Image", "Image"),
        Arch::X86_64 => ("arch/x86/boot/bzImage", "bzImage"),
    }
}

const fn req(sym: &'static str, why: &'static str) -> Want {
    Want {
        sym,
        val: Val::Y,
        required: true,
        why,
    }
}

const fn opt(sym: &'static str, why: &'static str) -> Want {
    Want {
        sym,
        val: Val::Y,
        required: false,
        why,
    }
}

/// What every vanish guest uses, whatever the architecture.
const COMMON: &[Want] = &[
    req("64BIT", "a 64-bit kernel (x86 allnoconfig is i386)"),
    req("PRINTK", "the console log vanish reads"),
    req(
        "PRINTK_TIME",
        "timestamps: the splat parser tells kernel lines from noise by them",
    ),
    req("BUG", "BUG()/WARN() reports"),
    req("DEBUG_BUGVERBOSE", "WARN()s name file:line"),
    req("KALLSYMS", "symbolic call traces in splats"),
    req(
        "MULTIUSER",
        "busybox and the agent call setuid-family syscalls",
    ),
    req("FUTEX", "the static musl agent's threads"),
    req("EPOLL", "the agent's event loop"),
    req("EVENTFD", "musl/agent helpers"),
    req("SIGNALFD", "musl/agent helpers"),
    req("TIMERFD", "musl/agent helpers"),
    req("POSIX_TIMERS", "sleep/timeouts in busybox and the agent"),
    req("SHMEM", "tmpfs"),
    req("TMPFS", "the init mounts /tmp"),
    req("PROC_FS", "/proc/interrupts, /proc/cmdline"),
    req("PROC_SYSCTL", "/proc/sys"),
    req(
        "SYSFS",
        "/sys/bus/pci: bind/unbind, remove/rescan, config, resourceN",
    ),
    req("DEVTMPFS", "/dev/fb0, /dev/dri/*, /dev/vport*"),
    req("DEVTMPFS_MOUNT", "/dev in the initramfs"),
    req("BLK_DEV_INITRD", "vanish boots a busybox initramfs"),
    req("RD_GZIP", "the initramfs is gzip-compressed"),
    req("BINFMT_ELF", "static busybox and the agent"),
    req("BINFMT_SCRIPT", "/init is a `#!/bin/busybox sh` script"),
    req("TTY", "consoles"),
    req("VT", "/dev/tty1 and fbcon"),
    req("VT_CONSOLE", "console=tty0"),
    req("PCI", "the card is a PCI device"),
    req(
        "PCI_MSI",
        "hibmc's vblank interrupt is an MSI; pciehp's too",
    ),
    req("PCIEPORTBUS", "the card sits behind a pcie-root-port"),
    req("HOTPLUG_PCI", "hot-unplug and hot-add"),
    req("HOTPLUG_PCI_PCIE", "native pciehp on the root port"),
    req("VIRTIO_MENU", "virtio drivers"),
    req("VIRTIO_PCI", "the agent's virtio-serial port"),
    req("VIRTIO_CONSOLE", "the agent's virtio-serial port"),
    req("DRM", "the card's DRM driver"),
    req(
        "DRM_FBDEV_EMULATION",
        "fbcon and /dev/fb0 on the DRM driver",
    ),
    req("FB", "fbdev core"),
    req("FB_DEVICE", "/dev/fb0 for the fbdev client"),
    req(
        "FRAMEBUFFER_CONSOLE",
        "fbcon draws the console vanish screenshots",
    ),
    opt("IKCONFIG", "the config inside the image"),
    opt(
        "IKCONFIG_PROC",
        "/proc/config.gz: which options a guest has",
    ),
    opt("DEBUG_FS", "the init mounts /sys/kernel/debug"),
    opt("DEVMEM", "busybox devmem, the BAR peek fallback"),
];

const AARCH64: &[Want] = &[
    req("SERIAL_AMBA_PL011", "virt's UART"),
    req("SERIAL_AMBA_PL011_CONSOLE", "console=ttyAMA0"),
    req(
        "PCI_HOST_GENERIC",
        "virt's ECAM host bridge (selects PCI_HOST_COMMON, PCI_ECAM)",
    ),
];

const X86_64: &[Want] = &[
    req("SMP", "vanish gives the guest 2 CPUs"),
    req(
        "ACPI",
        "q35 describes MMCONFIG (MCFG) and the root ports in ACPI",
    ),
    req("PCI_MMCONFIG", "PCIe extended config space on q35"),
    req("SERIAL_8250", "q35's UART"),
    req("SERIAL_8250_CONSOLE", "console=ttyS0"),
];

const MODULES: &[Want] = &[
    req("MODULES", "--modules: the card drivers are modules"),
    req("MODULE_UNLOAD", "--modules: rmmod"),
];

fn debug_wants(d: DebugOpt) -> &'static [Want] {
    const KASAN: &[Want] = &[
        req("DEBUG_KERNEL", "debug options"),
        req("KASAN", "--debug kasan"),
        req("KASAN_GENERIC", "--debug kasan"),
        req("STACKTRACE", "KASAN's allocation/free traces"),
    ];
    const KFENCE: &[Want] = &[req("KFENCE", "--debug kfence")];
    const LOCKDEP: &[Want] = &[
        req("DEBUG_KERNEL", "debug options"),
        req("PROVE_LOCKING", "--debug lockdep"),
        req(
            "DEBUG_ATOMIC_SLEEP",
            "--debug lockdep: sleeping in atomic context",
        ),
    ];
    const OBJECTS: &[Want] = &[
        req("DEBUG_KERNEL", "debug options"),
        req("DEBUG_OBJECTS", "--debug debug-objects"),
        req("DEBUG_OBJECTS_FREE", "--debug debug-objects"),
        req("DEBUG_OBJECTS_TIMERS", "--debug debug-objects"),
        req("DEBUG_OBJECTS_WORK", "--debug debug-objects"),
    ];
    const LIST: &[Want] = &[
        req("DEBUG_KERNEL", "debug options"),
        req("DEBUG_LIST", "--debug debug-list"),
    ];
    const UBSAN: &[Want] = &[req("UBSAN", "--debug ubsan")];
    const REMOVE: &[Want] = &[
        req("DEBUG_KERNEL", "debug options"),
        req(
            "DEBUG_TEST_DRIVER_REMOVE",
            "--debug test-driver-remove: probe, remove, probe",
        ),
    ];
    match d {
        DebugOpt::Kasan => KASAN,
        DebugOpt::Kfence => KFENCE,
        DebugOpt::Lockdep => LOCKDEP,
        DebugOpt::DebugObjects => OBJECTS,
        DebugOpt::DebugList => LIST,
        DebugOpt::Ubsan => UBSAN,
        DebugOpt::TestDriverRemove => REMOVE,
    }
}

/// Every option `spec` needs, each once, in fragment order.
pub fn wants(spec: &Spec) -> Vec<Want> {
    let mut out: Vec<Want> = Vec::new();
    let mut push = |w: Want| {
        if let Some(old) = out.iter_mut().find(|o| o.sym == w.sym) {
            old.required |= w.required;
            if w.val == Val::Y {
                old.val = Val::Y;
            }
        } else {
            out.push(w);
        }
    };
    for w in COMMON {
        push(w.clone());
    }
    let arch = match spec.arch {
        Arch::Aarch64 => AARCH64,
        Arch::X86_64 => X86_64,
    };
    for w in arch {
        push(w.clone());
    }
    if spec.modules {
        for w in MODULES {
            push(w.clone());
        }
    }
    let val = if spec.modules { Val::M } else { Val::Y };
    let hibmc = Want {
        sym: "DRM_HISI_HIBMC",
        val,
        // hibmc depends on ARM64 || COMPILE_TEST: with `all` on x86 it is a bonus, not a need.
        required: spec.card == CardSel::Hibmc || spec.arch == Arch::Aarch64,
        why: "the HIBMC card (19e5:1711)",
    };
    let bochs = Want {
        sym: "DRM_BOCHS",
        val,
        required: true,
        why: "the bochs card (1234:1111)",
    };
    match spec.card {
        CardSel::Hibmc => push(hibmc),
        CardSel::Bochs => push(bochs),
        CardSel::All => {
            push(hibmc);
            push(bochs);
        }
    }
    for d in &spec.debug {
        for w in debug_wants(*d) {
            push(w.clone());
        }
    }
    out
}

/// The fragment as a config file (`CONFIG_X=y` lines with why-comments).
pub fn render(spec: &Spec) -> String {
    let mut s = format!(
        "# vanish kconfig --arch {} --card {} --base {}{}{}\n# Merge over {} and run olddefconfig.\n",
        spec.arch,
        card_name(spec.card),
        base_name(spec.base),
        if spec.modules { " --modules" } else { "" },
        if spec.debug.is_empty() {
            String::new()
        } else {
            format!(
                " --debug {}",
                spec.debug
                    .iter()
                    .map(|d| debug_name(*d))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        },
        match spec.base {
            Base::Minimal => "allnoconfig",
            Base::Defconfig => "defconfig",
        }
    );
    for w in wants(spec) {
        let v = match w.val {
            Val::Y => "y",
            Val::M => "m",
        };
        let _ = writeln!(
            s,
            "# {}{}\nCONFIG_{}={v}",
            if w.required { "" } else { "(optional) " },
            w.why,
            w.sym,
        );
    }
    s
}

fn card_name(c: CardSel) -> &'static str {
    match c {
        CardSel::Hibmc => "hibmc",
        CardSel::Bochs => "bochs",
        CardSel::All => "all",
    }
}

fn base_name(b: Base) -> &'static str {
    match b {
        Base::Minimal => "minimal",
        Base::Defconfig => "defconfig",
    }
}

fn debug_name(d: DebugOpt) -> &'static str {
    match d {
        DebugOpt::Kasan => "kasan",
        DebugOpt::Kfence => "kfence",
        DebugOpt::Lockdep => "lockdep",
        DebugOpt::DebugObjects => "debug-objects",
        DebugOpt::DebugList => "debug-list",
        DebugOpt::Ubsan => "ubsan",
        DebugOpt::TestDriverRemove => "test-driver-remove",
    }
}

// ---------------------------------------------------------------------------------------------
// .config files

/// A parsed `.config`: symbol (without `CONFIG_`) to raw value (`y`, `m`, `"str"`, `123`);
/// `# CONFIG_X is not set` is `n`.
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(sym) = rest.strip_suffix(" is not set") {
                m.insert(sym.to_string(), "n".to_string());
            }
        } else if let Some(rest) = line.strip_prefix("CONFIG_") {
            if let Some((k, v)) = rest.split_once('=') {
                m.insert(k.to_string(), v.to_string());
            }
        }
    }
    m
}

/// `base` with `CONFIG_<sym>` set as `wants` say (later values win, as merge_config.sh does).
pub fn merge(base: &str, wants: &[Want]) -> String {
    let val = |w: &Want| match w.val {
        Val::Y => "y",
        Val::M => "m",
    };
    let mut done = vec![false; wants.len()];
    let mut out = String::with_capacity(base.len() + wants.len() * 32);
    for line in base.lines() {
        let t = line.trim();
        let sym = t
            .strip_prefix("# CONFIG_")
            .and_then(|r| r.strip_suffix(" is not set"))
            .or_else(|| {
                t.strip_prefix("CONFIG_")
                    .and_then(|r| r.split_once('='))
                    .map(|(k, _)| k)
            });
        match sym.and_then(|s| wants.iter().position(|w| w.sym == s)) {
            Some(i) => {
                if !done[i] {
                    let _ = writeln!(out, "CONFIG_{}={}", wants[i].sym, val(&wants[i]));
                    done[i] = true;
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (i, w) in wants.iter().enumerate() {
        if !done[i] {
            let _ = writeln!(out, "CONFIG_{}={}", w.sym, val(w));
        }
    }
    out
}

/// Whether the final config holds the option as wanted.
fn kept(cfg: &BTreeMap<String, String>, w: &Want) -> bool {
    matches!(
        (w.val, cfg.get(w.sym).map(String::as_str)),
        (Val::Y, Some("y")) | (Val::M, Some("y" | "m"))
    )
}

// ---------------------------------------------------------------------------------------------
// Kconfig dependencies: why olddefconfig dropped an option

/// One definition of a symbol: where, and the dependencies in force there (enclosing `if` and
/// `menu` blocks, then its own `depends on` lines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymDef {
    pub file: String,
    pub depends: Vec<String>,
}

/// Every `config`/`menuconfig` definition reachable from the top `Kconfig`, following `source`
/// (with `$(SRCARCH)` = `karch`) and keeping `if`/`menu`/`choice` context.
pub fn kconfig_index(src: &Path, karch: &str) -> HashMap<String, Vec<SymDef>> {
    let mut idx = HashMap::new();
    let mut ctx = Vec::new();
    let mut seen = 0usize;
    parse_kconfig_file(src, "Kconfig", karch, &mut ctx, &mut idx, &mut seen);
    idx
}

#[derive(Debug)]
enum Frame {
    If(String),
    Menu(Vec<String>),
    Choice(Vec<String>),
}

fn frame_deps(ctx: &[Frame]) -> Vec<String> {
    let mut v = Vec::new();
    for f in ctx {
        match f {
            Frame::If(e) => v.push(e.clone()),
            Frame::Menu(d) | Frame::Choice(d) => v.extend(d.iter().cloned()),
        }
    }
    v
}

fn parse_kconfig_file(
    src: &Path,
    rel: &str,
    karch: &str,
    ctx: &mut Vec<Frame>,
    idx: &mut HashMap<String, Vec<SymDef>>,
    seen: &mut usize,
) {
    *seen += 1;
    if *seen > 5000 {
        return;
    }
    let Ok(text) = fs::read_to_string(src.join(rel)) else {
        return;
    };
    // Join continuation lines.
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for l in text.lines() {
        if let Some(s) = l.strip_suffix('\\') {
            cur.push_str(s);
            cur.push(' ');
        } else {
            cur.push_str(l);
            lines.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    // The entry being defined: (symbol, its own depends); or a menu/choice header that takes
    // the `depends on` lines that follow it.
    enum Cur {
        None,
        Sym(String, Vec<String>),
        Header,
        Ignore,
    }
    let mut current = Cur::None;
    let mut in_help = false;
    let mut help_indent = 0usize;
    let flush = |current: &mut Cur, ctx: &[Frame], idx: &mut HashMap<String, Vec<SymDef>>| {
        if let Cur::Sym(sym, own) = std::mem::replace(current, Cur::None) {
            let mut depends = frame_deps(ctx);
            depends.extend(own);
            idx.entry(sym).or_default().push(SymDef {
                file: rel.to_string(),
                depends,
            });
        }
    };
    for raw in &lines {
        let indent = raw.len() - raw.trim_start().len();
        let line = raw.trim();
        if in_help {
            if line.is_empty() || indent >= help_indent.max(1) {
                if help_indent == 0 && !line.is_empty() {
                    help_indent = indent;
                }
                continue;
            }
            in_help = false;
        }
        let line = strip_comment(line);
        if line.is_empty() {
            continue;
        }
        let (kw, rest) = line
            .split_once(char::is_whitespace)
            .map(|(k, r)| (k, r.trim()))
            .unwrap_or((line, ""));
        match kw {
            "config" | "menuconfig" => {
                flush(&mut current, ctx, idx);
                current = Cur::Sym(rest.to_string(), Vec::new());
            }
            "depends" => {
                let e = rest.strip_prefix("on").map(str::trim).unwrap_or(rest);
                match &mut current {
                    Cur::Sym(_, own) => own.push(e.to_string()),
                    Cur::Header => match ctx.last_mut() {
                        Some(Frame::Menu(d)) | Some(Frame::Choice(d)) => d.push(e.to_string()),
                        _ => {}
                    },
                    Cur::None | Cur::Ignore => {}
                }
            }
            "help" | "---help---" => {
                in_help = true;
                help_indent = 0;
            }
            "if" => {
                flush(&mut current, ctx, idx);
                ctx.push(Frame::If(rest.to_string()));
            }
            "endif" | "endmenu" | "endchoice" => {
                flush(&mut current, ctx, idx);
                ctx.pop();
            }
            "menu" => {
                flush(&mut current, ctx, idx);
                ctx.push(Frame::Menu(Vec::new()));
                current = Cur::Header;
            }
            "choice" => {
                flush(&mut current, ctx, idx);
                ctx.push(Frame::Choice(Vec::new()));
                current = Cur::Header;
            }
            "source" | "osource" | "rsource" | "orsource" => {
                flush(&mut current, ctx, idx);
                let path = rest.trim_matches('"').replace("$(SRCARCH)", karch);
                if path.contains("$(") {
                    continue;
                }
                let path = if kw.starts_with('r') || kw.starts_with("or") {
                    Path::new(rel)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(&path)
                        .to_string_lossy()
                        .into_owned()
                } else {
                    path
                };
                if path.contains('*') {
                    // Globs (`source "arch/*/Kconfig"`) are rare; skip them.
                    continue;
                }
                parse_kconfig_file(src, &path, karch, ctx, idx, seen);
            }
            "comment" | "mainmenu" => {
                // Their `depends on` lines gate nothing we track.
                flush(&mut current, ctx, idx);
                current = Cur::Ignore;
            }
            _ => {}
        }
    }
    flush(&mut current, ctx, idx);
}

fn strip_comment(line: &str) -> &str {
    let mut in_q = None;
    for (i, c) in line.char_indices() {
        match (c, in_q) {
            ('"' | '\'', None) => in_q = Some(c),
            (q, Some(open)) if q == open => in_q = None,
            ('#', None) => return line[..i].trim(),
            _ => {}
        }
    }
    line.trim()
}

/// A Kconfig expression token.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Sym(String),
    And,
    Or,
    Not,
    Eq,
    Ne,
    Cmp,
    Open,
    Close,
}

fn tokenize(e: &str) -> Vec<Tok> {
    let b: Vec<char> = e.chars().collect();
    let mut t = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            ' ' | '\t' => i += 1,
            '&' if b.get(i + 1) == Some(&'&') => {
                t.push(Tok::And);
                i += 2
            }
            '|' if b.get(i + 1) == Some(&'|') => {
                t.push(Tok::Or);
                i += 2
            }
            '!' if b.get(i + 1) == Some(&'=') => {
                t.push(Tok::Ne);
                i += 2
            }
            '!' => {
                t.push(Tok::Not);
                i += 1
            }
            '=' => {
                t.push(Tok::Eq);
                i += 1
            }
            '<' | '>' => {
                t.push(Tok::Cmp);
                i += if b.get(i + 1) == Some(&'=') { 2 } else { 1 };
            }
            '(' => {
                t.push(Tok::Open);
                i += 1
            }
            ')' => {
                t.push(Tok::Close);
                i += 1
            }
            '"' | '\'' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != c {
                    j += 1;
                }
                let s: String = b[i..(j + 1).min(b.len())].iter().collect();
                t.push(Tok::Sym(s));
                i = j + 1;
            }
            '$' => {
                // A macro such as $(cc-option,...): one opaque token.
                let mut depth = 0;
                let mut j = i + 1;
                while j < b.len() {
                    match b[j] {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                let s: String = b[i..(j + 1).min(b.len())].iter().collect();
                t.push(Tok::Sym(s));
                i = j + 1;
            }
            _ => {
                let mut j = i;
                while j < b.len() && (b[j].is_alphanumeric() || b[j] == '_' || b[j] == '-') {
                    j += 1;
                }
                if j == i {
                    i += 1;
                    continue;
                }
                t.push(Tok::Sym(b[i..j].iter().collect()));
                i = j;
            }
        }
    }
    t
}

/// Evaluates Kconfig expressions as tristates (0 = n, 1 = m, 2 = y) against a `.config`.
struct Eval<'a> {
    toks: Vec<Tok>,
    pos: usize,
    cfg: &'a BTreeMap<String, String>,
}

impl Eval<'_> {
    fn raw(&self, s: &str) -> String {
        if let Some(q) = s
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        {
            return q.to_string();
        }
        match s {
            "y" | "m" | "n" => s.to_string(),
            _ if s.starts_with('$') => "y".to_string(),
            _ if s.chars().all(|c| c.is_ascii_digit()) => s.to_string(),
            _ => self
                .cfg
                .get(s)
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_else(|| "n".to_string()),
        }
    }

    fn tri(v: &str) -> u8 {
        match v {
            "y" => 2,
            "m" => 1,
            _ => 0,
        }
    }

    fn or(&mut self) -> u8 {
        let mut v = self.and();
        while self.toks.get(self.pos) == Some(&Tok::Or) {
            self.pos += 1;
            v = v.max(self.and());
        }
        v
    }

    fn and(&mut self) -> u8 {
        let mut v = self.not();
        while self.toks.get(self.pos) == Some(&Tok::And) {
            self.pos += 1;
            v = v.min(self.not());
        }
        v
    }

    fn not(&mut self) -> u8 {
        if self.toks.get(self.pos) == Some(&Tok::Not) {
            self.pos += 1;
            return 2 - self.not();
        }
        self.atom()
    }

    fn atom(&mut self) -> u8 {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Open) => {
                self.pos += 1;
                let v = self.or();
                if self.toks.get(self.pos) == Some(&Tok::Close) {
                    self.pos += 1;
                }
                v
            }
            Some(Tok::Sym(s)) => {
                self.pos += 1;
                let op = self.toks.get(self.pos).cloned();
                match op {
                    Some(Tok::Eq) | Some(Tok::Ne) | Some(Tok::Cmp) => {
                        self.pos += 1;
                        let rhs = match self.toks.get(self.pos).cloned() {
                            Some(Tok::Sym(r)) => {
                                self.pos += 1;
                                r
                            }
                            _ => String::new(),
                        };
                        let (a, b) = (self.raw(&s), self.raw(&rhs));
                        match op {
                            Some(Tok::Eq) => 2 * u8::from(a == b),
                            Some(Tok::Ne) => 2 * u8::from(a != b),
                            // Numeric comparisons: do not blame them.
                            _ => 2,
                        }
                    }
                    _ => Self::tri(&self.raw(&s)),
                }
            }
            _ => {
                self.pos += 1;
                2
            }
        }
    }
}

/// The value of a Kconfig expression under `cfg`: 0 (n), 1 (m) or 2 (y).
pub fn eval_expr(expr: &str, cfg: &BTreeMap<String, String>) -> u8 {
    let mut e = Eval {
        toks: tokenize(expr),
        pos: 0,
        cfg,
    };
    e.or()
}

/// The symbols in an expression that are off (n or absent) under `cfg`.
fn unset_symbols(expr: &str, cfg: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for t in tokenize(expr) {
        if let Tok::Sym(s) = t {
            let is_sym = s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if is_sym
                && matches!(cfg.get(&s).map(String::as_str), None | Some("n"))
                && !out.contains(&s)
            {
                out.push(s);
            }
        }
    }
    out
}

/// One line saying why `CONFIG_<sym>` is not as wanted in `cfg`.
pub fn explain_lost(
    w: &Want,
    cfg: &BTreeMap<String, String>,
    idx: &HashMap<String, Vec<SymDef>>,
) -> String {
    let now = match cfg.get(w.sym).map(String::as_str) {
        None => "absent".to_string(),
        Some("n") => "not set".to_string(),
        Some(v) => format!("={v}"),
    };
    let Some(defs) = idx.get(w.sym) else {
        return format!(
            "CONFIG_{} ({}) is {now}: this tree has no such option",
            w.sym, w.why
        );
    };
    for d in defs {
        for e in &d.depends {
            let v = eval_expr(e, cfg);
            let need = if w.val == Val::Y { 2 } else { 1 };
            if v < need {
                let off = unset_symbols(e, cfg);
                let detail = if off.is_empty() {
                    if v == 1 && need == 2 {
                        " (it evaluates to m: only a module is possible)".to_string()
                    } else {
                        String::new()
                    }
                } else {
                    format!(
                        ", and {} {} not set",
                        off.iter()
                            .map(|s| format!("CONFIG_{s}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        if off.len() == 1 { "is" } else { "are" }
                    )
                };
                return format!(
                    "CONFIG_{} ({}) is {now}: it depends on `{e}` ({}){detail}",
                    w.sym, w.why, d.file
                );
            }
        }
    }
    format!(
        "CONFIG_{} ({}) is {now}: olddefconfig dropped it though its `depends on` hold ({}); \
         a choice, a `select` or a limit elsewhere decides it",
        w.sym,
        w.why,
        defs.iter()
            .map(|d| d.file.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

// ---------------------------------------------------------------------------------------------
// Applying

/// The toolchain prefix: explicit, else `$CROSS_COMPILE`, else the GNU cross prefix when the host
/// is the other architecture (empty when `LLVM` is set, which needs none).
pub fn cross_compile(arch: Arch, explicit: Option<&str>) -> String {
    if let Some(c) = explicit {
        return c.to_string();
    }
    if let Some(c) = std::env::var_os("CROSS_COMPILE") {
        return c.to_string_lossy().into_owned();
    }
    if arch == Arch::host() || std::env::var_os("LLVM").is_some_and(|v| !v.is_empty()) {
        return String::new();
    }
    match arch {
        Arch::Aarch64 => "aarch64-linux-gnu-".into(),
        Arch::X86_64 => "x86_64-linux-gnu-".into(),
    }
}

/// `make -C SRC [O=BUILD] ARCH=.. [CROSS_COMPILE=..]`, output appended to `log`.
pub struct Kmake {
    pub src: PathBuf,
    pub build: PathBuf,
    pub arch: Arch,
    pub cross: String,
    pub log: PathBuf,
}

impl Kmake {
    pub fn in_tree(&self) -> bool {
        match (fs::canonicalize(&self.src), fs::canonicalize(&self.build)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("make");
        c.arg("-C").arg(&self.src);
        if !self.in_tree() {
            c.arg(format!("O={}", self.build.display()));
        }
        c.arg(format!("ARCH={}", karch(self.arch)));
        if !self.cross.is_empty() {
            c.arg(format!("CROSS_COMPILE={}", self.cross));
        }
        c.args(args);
        c
    }

    /// Runs make; Err is one line naming the target and the log's last lines.
    pub fn run(&self, args: &[&str]) -> Result<(), String> {
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open log {}: {e}", self.log.display()))?;
        let mut cmd = self.command(args);
        let _ = writeln!(log, "==> {cmd:?}");
        let err_log = log
            .try_clone()
            .map_err(|e| format!("cannot open log {}: {e}", self.log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run make: {e} (apt-get install make)"))?;
        if status.success() {
            return Ok(());
        }
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "make {} failed ({status}): {} (full output in {})",
            args.join(" "),
            tail.join(" | "),
            self.log.display()
        ))
    }
}

/// The outcome of [`apply`].
#[derive(Debug)]
pub struct Applied {
    /// One line per lost required option.
    pub lost: Vec<String>,
    /// One line per lost optional option.
    pub lost_optional: Vec<String>,
    pub config: PathBuf,
}

/// Generates the base config in `k.build`, merges the fragment, runs olddefconfig and checks the
/// result. Err(code, message) for make failures (1) and bad trees (2).
pub fn apply(spec: &Spec, k: &Kmake) -> Result<Applied, (i32, String)> {
    let ka = karch(spec.arch);
    if !k.src.join("Makefile").is_file() || !k.src.join("arch").join(ka).is_dir() {
        return Err((
            2,
            format!(
                "{} is not a Linux source tree with arch/{ka} (pass --src)",
                k.src.display()
            ),
        ));
    }
    if !k.in_tree() && k.src.join(".config").exists() {
        return Err((
            2,
            format!(
                "{} has an in-tree .config, so kbuild refuses O= builds; run `make mrproper` there or build in-tree (--apply {})",
                k.src.display(),
                k.src.display()
            ),
        ));
    }
    let base = match spec.base {
        Base::Minimal => "allnoconfig",
        Base::Defconfig => "defconfig",
    };
    k.run(&[base]).map_err(|e| (EXIT_MAKE, e))?;
    let config = k.build.join(".config");
    let text = fs::read_to_string(&config).map_err(|e| {
        (
            EXIT_MAKE,
            format!("no {} after {base}: {e}", config.display()),
        )
    })?;
    let wants = wants(spec);
    let merged = merge(&text, &wants);
    fs::write(k.build.join("vanish.config"), render(spec))
        .and_then(|()| fs::write(&config, merged))
        .map_err(|e| (EXIT_MAKE, format!("cannot write {}: {e}", config.display())))?;
    k.run(&["olddefconfig"]).map_err(|e| (EXIT_MAKE, e))?;
    let text = fs::read_to_string(&config)
        .map_err(|e| (EXIT_MAKE, format!("cannot read {}: {e}", config.display())))?;
    let cfg = parse_config(&text);
    let lost: Vec<&Want> = wants.iter().filter(|w| !kept(&cfg, w)).collect();
    let mut out = Applied {
        lost: Vec::new(),
        lost_optional: Vec::new(),
        config,
    };
    if !lost.is_empty() {
        let idx = kconfig_index(&k.src, ka);
        for w in lost {
            let line = explain_lost(w, &cfg, &idx);
            if w.required {
                out.lost.push(line);
            } else {
                out.lost_optional.push(line);
            }
        }
    }
    Ok(out)
}

/// `vanish kconfig`: prints the fragment, or applies it with `--apply`. Returns the exit code.
pub fn run(args: KconfigArgs) -> i32 {
    let spec = Spec::from_args(&args);
    let Some(build) = args.apply.as_ref() else {
        print!("{}", render(&spec));
        return 0;
    };
    let src = match args.src.clone() {
        Some(s) => s,
        None => match std::env::current_dir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("vanish kconfig: cannot read the current directory: {e}");
                return 2;
            }
        },
    };
    let src = match std::path::absolute(&src) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vanish kconfig: {}: {e}", src.display());
            return 2;
        }
    };
    if let Err(e) = fs::create_dir_all(build) {
        eprintln!("vanish kconfig: cannot create {}: {e}", build.display());
        return 2;
    }
    let build = match std::path::absolute(build) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vanish kconfig: {}: {e}", build.display());
            return 2;
        }
    };
    let log = args
        .log
        .clone()
        .unwrap_or_else(|| build.join("vanish-kconfig.log"));
    let k = Kmake {
        src,
        build,
        arch: spec.arch,
        cross: cross_compile(spec.arch, args.cross_compile.as_deref()),
        log,
    };
    match apply(&spec, &k) {
        Err((code, msg)) => {
            eprintln!("vanish kconfig: {msg}");
            code
        }
        Ok(a) => {
            for l in &a.lost_optional {
                eprintln!("vanish kconfig: warning: {l}");
            }
            for l in &a.lost {
                eprintln!("vanish kconfig: {l}");
            }
            let n = wants(&spec).len();
            if a.lost.is_empty() {
                eprintln!(
                    "vanish kconfig: {}: {} + {n} options for {} ({}), all kept",
                    a.config.display(),
                    match spec.base {
                        Base::Minimal => "allnoconfig",
                        Base::Defconfig => "defconfig",
                    },
                    spec.arch,
                    card_name(spec.card)
                );
                0
            } else {
                eprintln!(
                    "vanish kconfig: {} of the options vanish needs did not survive olddefconfig in {}",
                    a.lost.len(),
                    a.config.display()
                );
                EXIT_LOST
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arch: Arch, card: CardSel) -> Spec {
        Spec {
            arch,
            card,
            debug: Vec::new(),
            base: Base::Minimal,
            modules: false,
        }
    }

    #[test]
    fn fragment_has_the_rigs_needs() {
        let s = render(&spec(Arch::Aarch64, CardSel::Hibmc));
        for line in [
            "CONFIG_DRM_HISI_HIBMC=y",
            "CONFIG_SERIAL_AMBA_PL011_CONSOLE=y",
            "CONFIG_PCI_HOST_GENERIC=y",
            "CONFIG_HOTPLUG_PCI_PCIE=y",
            "CONFIG_RD_GZIP=y",
            "CONFIG_BINFMT_SCRIPT=y",
            "CONFIG_FB_DEVICE=y",
        ] {
            assert!(s.contains(line), "{line} missing from\n{s}");
        }
        assert!(!s.contains("CONFIG_MODULES=y"));
        assert!(!s.contains("DRM_BOCHS"));
        let s = render(&Spec {
            modules: true,
            debug: vec![DebugOpt::Kasan, DebugOpt::Lockdep],
            ..spec(Arch::X86_64, CardSel::All)
        });
        for line in [
            "CONFIG_DRM_BOCHS=m",
            "CONFIG_DRM_HISI_HIBMC=m",
            "CONFIG_MODULES=y",
            "CONFIG_SERIAL_8250_CONSOLE=y",
            "CONFIG_ACPI=y",
            "CONFIG_KASAN_GENERIC=y",
            "CONFIG_PROVE_LOCKING=y",
        ] {
            assert!(s.contains(line), "{line} missing from\n{s}");
        }
        assert_eq!(s.matches("CONFIG_DEBUG_KERNEL=").count(), 1);
        // hibmc cannot build on x86 without COMPILE_TEST: with `all` it is not required there.
        let w = wants(&spec(Arch::X86_64, CardSel::All));
        assert!(!w.iter().any(|w| w.sym == "DRM_HISI_HIBMC" && w.required));
    }

    #[test]
    fn merge_replaces_and_appends() {
        let base = "CONFIG_A=y\n# CONFIG_PCI is not set\nCONFIG_DRM=m\n# comment\n";
        let w = [
            req("PCI", ""),
            req("DRM", ""),
            Want {
                sym: "NEW",
                val: Val::M,
                required: true,
                why: "",
            },
        ];
        let m = merge(base, &w);
        assert_eq!(
            m,
            "CONFIG_A=y\nCONFIG_PCI=y\nCONFIG_DRM=y\n# comment\nCONFIG_NEW=m\n"
        );
        let c = parse_config(&m);
        assert_eq!(c["PCI"], "y");
        assert_eq!(c["NEW"], "m");
        assert_eq!(parse_config(base)["PCI"], "n");
    }

    #[test]
    fn expressions_evaluate_as_tristates() {
        let cfg = parse_config("CONFIG_DRM=y\nCONFIG_PCI=y\nCONFIG_M=m\nCONFIG_S=\"abc\"\n");
        assert_eq!(eval_expr("DRM && PCI", &cfg), 2);
        assert_eq!(eval_expr("DRM && PCI && (ARM64 || COMPILE_TEST)", &cfg), 0);
        assert_eq!(eval_expr("DRM && M", &cfg), 1);
        assert_eq!(eval_expr("!ARM64", &cfg), 2);
        assert_eq!(eval_expr("S = \"abc\"", &cfg), 2);
        assert_eq!(eval_expr("S != \"abc\"", &cfg), 0);
        assert_eq!(eval_expr("$(cc-option,-foo) && DRM", &cfg), 2);
        assert_eq!(
            unset_symbols("DRM && PCI && (ARM64 || COMPILE_TEST)", &cfg),
            ["ARM64", "COMPILE_TEST"]
        );
    }

    #[test]
    fn lost_options_name_the_dependency() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path();
        fs::create_dir_all(src.join("drivers/gpu/drm/hisilicon")).unwrap();
        fs::create_dir_all(src.join("arch/x86")).unwrap();
        fs::write(
            src.join("Kconfig"),
            "mainmenu \"Linux\"\nsource \"arch/$(SRCARCH)/Kconfig\"\nsource \"drivers/gpu/drm/Kconfig\"\n",
        )
        .unwrap();
        fs::write(src.join("arch/x86/Kconfig"), "config X86\n\tdef_bool y\n").unwrap();
        fs::write(
            src.join("drivers/gpu/drm/Kconfig"),
            "menuconfig DRM\n\ttristate \"DRM\"\n\tdepends on PCI\n\thelp\n\t  Direct rendering; depends on nothing here\n\nif DRM\nsource \"drivers/gpu/drm/hisilicon/Kconfig\"\nendif # DRM\n",
        )
        .unwrap();
        fs::write(
            src.join("drivers/gpu/drm/hisilicon/Kconfig"),
            "config DRM_HISI_HIBMC\n\ttristate \"hibmc\" # a comment\n\tdepends on PCI && (ARM64 || COMPILE_TEST)\n\tdepends on MMU\n\tselect I2C\n",
        )
        .unwrap();
        let idx = kconfig_index(src, "x86");
        assert_eq!(idx["X86"][0].file, "arch/x86/Kconfig");
        assert_eq!(
            idx["DRM_HISI_HIBMC"][0].depends,
            ["DRM", "PCI && (ARM64 || COMPILE_TEST)", "MMU"]
        );
        let cfg = parse_config("CONFIG_DRM=y\nCONFIG_PCI=y\nCONFIG_MMU=y\n");
        let w = req("DRM_HISI_HIBMC", "the HIBMC card");
        let e = explain_lost(&w, &cfg, &idx);
        assert!(
            e.contains("depends on `PCI && (ARM64 || COMPILE_TEST)`")
                && e.contains("CONFIG_ARM64, CONFIG_COMPILE_TEST are not set")
                && e.contains("drivers/gpu/drm/hisilicon/Kconfig"),
            "{e}"
        );
        let cfg = parse_config("CONFIG_PCI=y\n");
        let e = explain_lost(&w, &cfg, &idx);
        assert!(
            e.contains("depends on `DRM`") && e.contains("CONFIG_DRM is not set"),
            "{e}"
        );
        let e = explain_lost(&req("NOPE", "x"), &cfg, &idx);
        assert!(e.contains("no such option"), "{e}");
    }

    #[test]
    fn cross_prefix() {
        assert_eq!(cross_compile(Arch::Aarch64, Some("foo-")), "foo-");
        if std::env::var_os("CROSS_COMPILE").is_none() && std::env::var_os("LLVM").is_none() {
            assert_eq!(cross_compile(Arch::host(), None), "");
        }
    }
}
