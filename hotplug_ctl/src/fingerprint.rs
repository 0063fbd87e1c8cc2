//! Stable names for splats: the same bug gets the same fingerprint across kernel versions,
//! builds and runs, different bugs different ones; and which code each one points at.
//!
//! A fingerprint is `KIND:FILE:FRAME<FRAME<FRAME`:
//! - `KIND` is the splat kind (`warning`, `oops`, `list-corruption`, ...);
//! - `FILE` is the source file the headline names (`WARNING: ... at drivers/gpu/drm/x.c:1710`,
//!   `kernel BUG at lib/list_debug.c:59!`), without the line number, which moves between
//!   versions (the vblank WARN is `drm_atomic_helper.c:1531` on 5.10, `:1710` on 6.x);
//! - the frames are the first meaningful function names of the call trace, without
//!   `+0x../0x..` offsets, `[module]` tags and compiler suffixes (`.part.0`, `.isra.0`,
//!   `.constprop.0`, `.cold`), skipping unreliable `? ` frames and the machinery that prints
//!   the report (`dump_stack_lvl`, `__warn`, `report_bug`, `die`, `kasan_report`, lockdep's
//!   `print_circular_bug`, `__list_del_entry_valid`, ...).
//!
//! A lockdep report is named by its banner and its two locks instead
//! (`lockdep:circular:pci_rescan_remove_lock>&ctrl->reset_lock`): its stack is only where the
//! cycle closed, the locks are the bug.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::splat::{Splat, SplatKind};

/// How many frames name a splat. Two for a splat whose headline names a file (the file and
/// the WARN site pin it down; callers vary with the path that hit it, e.g. a rebind's fbcon
/// modeset vs a client's commit), three otherwise.
const FRAMES_WITH_FILE: usize = 2;
const FRAMES_WITHOUT_FILE: usize = 3;

/// Which code a splat points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subsystem {
    /// The card's own DRM driver (hibmc-drm, bochs-drm).
    Driver,
    /// DRM core and helpers, TTM, fbdev emulation.
    Drm,
    /// PCI core and hotplug (pciehp).
    Pci,
    /// Anything else (mm, RCU, scheduler, ...).
    Other,
}

impl Subsystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Subsystem::Driver => "driver",
            Subsystem::Drm => "drm",
            Subsystem::Pci => "pci",
            Subsystem::Other => "other",
        }
    }
}

/// Functions that print or route a report rather than cause it.
const MACHINERY: &[&str] = &[
    "dump_backtrace",
    "show_stack",
    "dump_stack",
    "dump_stack_lvl",
    "__dump_stack",
    "show_regs",
    "__show_regs",
    "__warn",
    "warn_slowpath_fmt",
    "__warn_printk",
    "report_bug",
    "bug_handler",
    "call_break_hook",
    "brk_handler",
    "early_brk64",
    "do_debug_exception",
    "el1_dbg",
    "el1_brk64",
    "el1h_64_sync_handler",
    "el1h_64_sync",
    "el0t_64_sync_handler",
    "el0t_64_sync",
    "handle_bug",
    "exc_invalid_op",
    "asm_exc_invalid_op",
    "die",
    "__die",
    "die_kernel_fault",
    "__do_kernel_fault",
    "do_page_fault",
    "do_translation_fault",
    "do_mem_abort",
    "do_bad_area",
    "el1_abort",
    "el1_da",
    "bug_brk_handler",
    "page_fault_oops",
    "kernelmode_fixup_or_oops",
    "__bad_area_nosemaphore",
    "bad_area_nosemaphore",
    "do_user_addr_fault",
    "exc_page_fault",
    "asm_exc_page_fault",
    "exc_general_protection",
    "asm_exc_general_protection",
    "panic",
    "kasan_report",
    "__kasan_report",
    "print_report",
    "print_address_description",
    "kasan_check_range",
    "check_memory_region",
    "kasan_save_stack",
    "kasan_save_track",
    "kasan_set_track",
    "kasan_save_free_info",
    "kasan_save_alloc_info",
    "__kasan_slab_free",
    "__kasan_kmalloc",
    "kasan_slab_free",
    "print_circular_bug",
    "check_noncircular",
    "check_prev_add",
    "check_prevs_add",
    "validate_chain",
    "__lock_acquire",
    "lock_acquire",
    "lock_release",
    "print_usage_bug",
    "mark_lock",
    "__list_del_entry_valid",
    "__list_del_entry_valid_or_report",
    "__list_add_valid",
    "__list_add_valid_or_report",
    "list_del",
    "refcount_warn_saturate",
    "ubsan_epilogue",
    "__ubsan_handle_out_of_bounds",
    "__ubsan_handle_shift_out_of_bounds",
    "__ubsan_handle_load_invalid_value",
    // Locking primitives: where a report's stack passes through them, the caller is the story.
    "__mutex_lock",
    "mutex_lock_nested",
    "__mutex_lock_slowpath",
    "mutex_lock",
    "_raw_spin_lock",
    "_raw_spin_lock_irqsave",
    "_raw_spin_lock_irq",
    "down_write",
    "down_read",
    "stack_trace_save",
    "arch_stack_walk",
];

static OFFSET: LazyLock<Regex> = LazyLock::new(|| re(r"\+0x[0-9a-f]+/0x[0-9a-f]+"));
static SUFFIX: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?:\.(?:part|isra|constprop|cold|llvm|lto_priv)(?:\.\d+)?)+$"));
/// The function a WARN headline names: `... at drivers/x.c:12 f+0x1/0x2` up to 7.2,
/// `... :12 at f+0x1/0x2, CPU#0: ...` since 7.3.
static WARN_SITE: LazyLock<Regex> =
    LazyLock::new(|| re(r"^WARNING: .*\.[chS]:\d+(?: at)? ([\w.]+\+0x[0-9a-f]+/0x[0-9a-f]+)"));

static SOURCE_FILE: LazyLock<Regex> = LazyLock::new(|| {
    // `WARNING: CPU: 0 PID: 1 at drivers/x.c:12 f+0x1/0x2` up to 7.2; since 7.3
    // `WARNING: drivers/x.c:12 at f+0x1/0x2, CPU#0: comm/pid`.
    re(r"(?:^WARNING: |\bat |\bin )((?:[\w.+-]+/)*[\w.+-]+\.[chS]):\d+")
});
static LOCKDEP_BANNER: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"possible (circular|recursive) locking|(inconsistent) lock state|(irq lock inversion)|(suspicious RCU usage)|(bad unlock balance)|(held lock freed)|(Invalid wait context)|-(safe -> \S+-unsafe)",
    )
});

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad fingerprint pattern {pattern:?}: {e}"))
}

/// A frame's function name alone: `drm_atomic_helper_wait_for_vblanks.part.0+0x288/0x2b0
/// [drm_kms_helper]` -> `drm_atomic_helper_wait_for_vblanks`. `None` for an unreliable `? `
/// frame or a bare address.
pub fn function(frame: &str) -> Option<String> {
    if frame.starts_with("? ") {
        return None;
    }
    let name = frame.split_whitespace().next()?;
    let name = OFFSET.replace(name, "");
    let name = SUFFIX.replace(&name, "");
    (!name.is_empty() && !name.starts_with("0x")).then(|| name.into_owned())
}

/// Whether `function` (as [`function`] returns it) is report machinery.
pub fn is_machinery(function: &str) -> bool {
    MACHINERY.contains(&function)
}

/// The frames worth showing: unreliable and machinery frames dropped, offsets kept.
pub fn display_frames(frames: &[String]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| function(f).is_some_and(|n| !is_machinery(&n)))
        .cloned()
        .collect()
}

/// The source file the headline names, without its line number.
pub fn source_file(first_line: &str) -> Option<String> {
    SOURCE_FILE.captures(first_line).map(|c| c[1].to_string())
}

/// lockdep's report type, as a short word: `circular`, `recursive`, `inconsistent`, ...
fn lockdep_banner(first_line: &str) -> String {
    LOCKDEP_BANNER
        .captures(first_line)
        .and_then(|c| {
            c.iter()
                .skip(1)
                .flatten()
                .next()
                .map(|m| m.as_str().to_string())
        })
        .unwrap_or_else(|| "report".into())
        .replace(' ', "-")
        .to_lowercase()
}

/// The stable name of a splat (see the module documentation).
pub fn fingerprint(splat: &Splat) -> String {
    let kind = splat.kind.as_str();
    if splat.kind == SplatKind::Lockdep && !splat.locks.is_empty() {
        let locks: Vec<&str> = splat.locks.iter().take(2).map(String::as_str).collect();
        return format!(
            "{kind}:{}:{}",
            lockdep_banner(&splat.first_line),
            locks.join(">")
        );
    }
    let file = source_file(&splat.first_line);
    let want = if file.is_some() {
        FRAMES_WITH_FILE
    } else {
        FRAMES_WITHOUT_FILE
    };
    let mut frames: Vec<String> = Vec::new();
    for f in &splat.call_trace {
        let Some(name) = function(f) else { continue };
        if is_machinery(&name) || frames.last() == Some(&name) {
            continue;
        }
        frames.push(name);
        if frames.len() == want {
            break;
        }
    }
    if frames.is_empty() {
        // A WARN whose trace was cut off (the log ended mid-report) still names the function
        // that warned in its headline: that is the first frame the full trace would give, so
        // the truncated report gets the full one's prefix, not a name of its own.
        if let Some(site) = WARN_SITE
            .captures(&splat.first_line)
            .and_then(|c| function(&c[1]))
        {
            frames.push(site);
        }
    }
    if frames.is_empty() {
        // No trace (a hung task's, a truncated log): the headline without numbers names it.
        let words: Vec<&str> = splat
            .first_line
            .split_whitespace()
            .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
            .take(8)
            .collect();
        frames.push(words.join("_"));
    }
    match file {
        Some(file) => format!("{kind}:{file}:{}", frames.join("<")),
        None => format!("{kind}:{}", frames.join("<")),
    }
}

/// Which code a splat points at: the file its headline names, else its first meaningful frame
/// that belongs to a known part. `driver_module` is the card's module (`hibmc_drm`, `bochs`).
pub fn attribute(splat: &Splat, driver_module: &str) -> Subsystem {
    let driver_prefix = match driver_module {
        "bochs" => "bochs_",
        _ => "hibmc_",
    };
    let tag = format!("[{driver_module}]");
    if let Some(file) = source_file(&splat.first_line) {
        if file.contains("/hisilicon/") || file.contains("/tiny/bochs") {
            return Subsystem::Driver;
        }
        if file.starts_with("drivers/gpu/drm/") || file.starts_with("drivers/video/") {
            return Subsystem::Drm;
        }
        if file.starts_with("drivers/pci/") {
            return Subsystem::Pci;
        }
    }
    let lock_frames = splat.stacks.iter().flat_map(|s| s.frames.iter());
    for f in splat.call_trace.iter().chain(lock_frames) {
        let Some(name) = function(f) else { continue };
        if is_machinery(&name) {
            continue;
        }
        if f.contains(&tag) || name.starts_with(driver_prefix) {
            return Subsystem::Driver;
        }
        if ["drm_", "ttm_", "__drm_", "fbcon_", "drm_fb", "fb_"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            return Subsystem::Drm;
        }
        if ["pci_", "pcie", "pciehp_", "__pci_"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            return Subsystem::Pci;
        }
    }
    Subsystem::Other
}

/// Whether a fingerprint matches a `--judge-by` pattern: equal, or the pattern is a regex that
/// matches it (a plain fingerprint is a valid regex only by accident, so equality comes first).
///
/// A WARN whose trace was cut off is named `KIND:FILE:SITE` (one frame; a complete trace always
/// has the site's caller too): it matches a pattern naming the same site with its callers, so a
/// known failure whose report the log cut short stays known.
pub fn matches(pattern: &JudgePattern, fingerprint: &str) -> bool {
    pattern.text == fingerprint
        || pattern
            .regex
            .as_ref()
            .is_some_and(|r| r.is_match(fingerprint))
        || (is_cut_warn(fingerprint)
            && pattern
                .text
                .strip_prefix(fingerprint)
                .is_some_and(|rest| rest.starts_with('<')))
}

/// `warning:FILE:SITE` with no caller: what [`fingerprint`] gives a WARN cut before its trace.
fn is_cut_warn(fingerprint: &str) -> bool {
    fingerprint.starts_with("warning:")
        && fingerprint.matches(':').count() == 2
        && !fingerprint.contains('<')
}

/// A `--judge-by` argument: a fingerprint, or a regular expression over fingerprints.
#[derive(Clone, Debug)]
pub struct JudgePattern {
    pub text: String,
    regex: Option<Regex>,
}

impl std::str::FromStr for JudgePattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("a --judge-by pattern cannot be empty".into());
        }
        Ok(JudgePattern {
            text: s.to_string(),
            regex: Regex::new(s).ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::splat::find_splats;

    fn only(log: &str) -> Splat {
        let s = find_splats(log);
        assert_eq!(s.len(), 1, "{s:#?}");
        s.into_iter().next().unwrap()
    }

    #[test]
    fn frames_lose_offsets_tags_and_suffixes() {
        assert_eq!(
            function("drm_atomic_helper_wait_for_vblanks.part.0+0x288/0x2b0 [drm_kms_helper]")
                .as_deref(),
            Some("drm_atomic_helper_wait_for_vblanks")
        );
        assert_eq!(
            function("do_bind_con_driver.isra.0+0x1cc/0x3a0").as_deref(),
            Some("do_bind_con_driver")
        );
        assert_eq!(function("? drm_foo+0x1/0x2"), None);
        assert_eq!(function("0xffffffffc0123456"), None);
        assert_eq!(
            source_file(
                "WARNING: CPU: 0 PID: 59 at drivers/gpu/drm/drm_atomic_helper.c:1531 x+0x1/0x2"
            ),
            Some("drivers/gpu/drm/drm_atomic_helper.c".into())
        );
        assert_eq!(
            source_file("kernel BUG at lib/list_debug.c:59!"),
            Some("lib/list_debug.c".into())
        );
        assert_eq!(
            source_file("Unable to handle kernel paging request at virtual address ffff8000"),
            None
        );
        assert_eq!(
            source_file("WARNING: drivers/gpu/drm/drm_atomic_helper.c:1927 at drm_atomic_helper_wait_for_vblanks.part.0+0x24c/0x2c0 [drm_kms_helper], CPU#0: vanish-agent/426"),
            Some("drivers/gpu/drm/drm_atomic_helper.c".into())
        );
    }

    /// A WARN cut off before its trace (seen on a KASAN kernel whose guest was stopped while
    /// it printed) gets the prefix of the full trace's fingerprint, from the headline's site.
    #[test]
    fn a_warn_cut_before_its_trace_is_named_by_its_site() {
        let cut = "[   38.334616] ------------[ cut here ]------------\n\
                   [   38.334788] [CRTC:34:crtc-0] vblank wait timed out\n\
                   [   38.334980] WARNING: CPU: 0 PID: 42 at drivers/gpu/drm/drm_atomic_helper.c:1710 drm_atomic_helper_wait_for_vblanks.part.0+0x4d8/0x674\n\
                   [   38.337627] Modules linked in: hibmc_drm drm_vram_helper\n\
                   [   38.338803] Call trace:\n";
        assert_eq!(
            fingerprint(&only(cut)),
            "warning:drivers/gpu/drm/drm_atomic_helper.c:drm_atomic_helper_wait_for_vblanks"
        );
        let cut_7_3 = "[   12.000000] WARNING: drivers/gpu/drm/drm_atomic_helper.c:1927 at drm_atomic_helper_wait_for_vblanks.part.0+0x24c/0x2c0 [drm_kms_helper], CPU#0: kworker/0:1/42\n";
        assert_eq!(
            fingerprint(&only(cut_7_3)),
            "warning:drivers/gpu/drm/drm_atomic_helper.c:drm_atomic_helper_wait_for_vblanks"
        );
        let known: JudgePattern = "warning:drivers/gpu/drm/drm_atomic_helper.c:drm_atomic_helper_wait_for_vblanks<drm_atomic_helper_commit_tail".parse().unwrap();
        assert!(matches(&known, &fingerprint(&only(cut))));
        let other: JudgePattern =
            "warning:drivers/gpu/drm/drm_atomic_helper.c:drm_atomic_helper_wait_for_vblanks_x<y"
                .parse()
                .unwrap();
        assert!(!matches(&other, &fingerprint(&only(cut))));
    }

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/splats/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    const VBLANK: &str = "warning:drivers/gpu/drm/drm_atomic_helper.c:drm_atomic_helper_wait_for_vblanks<drm_atomic_helper_commit_tail";

    /// The vblank WARN as Debian's kernels print it: drm_atomic_helper.c:1531 on 5.10, :1710 on
    /// 6.1/6.12, :1927 on 7.2/7.3 (with 7.3's new WARNING format), from a rebind (fbcon's
    /// modeset) and from a client's commit on a dead card: one fingerprint.
    #[test]
    fn the_vblank_warn_is_one_bug_across_versions() {
        for f in [
            "vblank_5.10.txt",
            "vblank_6.1.txt",
            "vblank_6.12.txt",
            "vblank_7.3.txt",
        ] {
            let log = fixture(f);
            let s = &find_splats(&log)[0];
            assert_eq!(fingerprint(s), VBLANK, "{f}");
            assert_eq!(attribute(s, "hibmc_drm"), Subsystem::Drm, "{f}");
        }
        // 7.2's dead-card modeset adds a second WARN site (drm_vblank.c): another fingerprint.
        let splats = find_splats(&fixture("vblank_7.2.txt"));
        assert_eq!(splats.len(), 2);
        assert_eq!(
            fingerprint(&splats[0]),
            "warning:drivers/gpu/drm/drm_vblank.c:drm_crtc_wait_one_vblank<drm_client_modeset_wait_for_vblank"
        );
        assert_eq!(fingerprint(&splats[1]), VBLANK);
    }

    /// 7.2's and 7.3's connector-poll Oops after removal: one fingerprint, the driver's.
    #[test]
    fn the_ddc_poll_oops_is_one_bug_and_the_drivers() {
        let a = only(&fixture("ddc_oops_7.2.txt"));
        let b = only(&fixture("ddc_oops_7.3.txt"));
        assert_eq!(
            fingerprint(&a),
            "oops:hibmc_ddc_setsda<bit_xfer<__i2c_transfer"
        );
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_eq!(attribute(&a, "hibmc_drm"), Subsystem::Driver);
        assert_ne!(fingerprint(&a), VBLANK);
    }

    /// 5.10's late close after a surprise removal: list_del corruption in TTM (a freed
    /// drm_device's BO on the LRU), machinery frames skipped.
    #[test]
    fn list_corruption_of_5_10() {
        let s = only(&fixture("list_del_5.10.txt"));
        assert_eq!(s.kind, SplatKind::ListCorruption);
        assert_eq!(
            fingerprint(&s),
            "list-corruption:ttm_bo_del_from_lru<ttm_bo_release<ttm_bo_put"
        );
        assert_eq!(attribute(&s, "hibmc_drm"), Subsystem::Drm);
    }

    #[test]
    fn different_bugs_differ_and_lockdep_is_named_by_its_locks() {
        let seed = find_splats(&fixture("seed_hibmc_warn.txt"));
        let lockdep = only(&fixture("lockdep_circular.txt"));
        assert_eq!(lockdep.locks, ["&dev->mode_config.mutex", "&helper->lock"]);
        assert_eq!(
            fingerprint(&lockdep),
            "lockdep:circular:&dev->mode_config.mutex>&helper->lock"
        );
        let titles: Vec<&str> = lockdep.stacks.iter().map(|s| s.title.as_str()).collect();
        assert_eq!(
            titles,
            ["-> (&helper->lock)", "-> (&dev->mode_config.mutex)"]
        );
        assert_eq!(lockdep.stacks[0].frames[0], "__mutex_lock+0x9a/0xa60");
        // The printed trace without machinery starts where the cycle closed.
        let shown = display_frames(&lockdep.call_trace);
        assert!(
            shown[0].starts_with("drm_fb_helper_hotplug_event"),
            "{shown:?}"
        );
        assert!(!shown
            .iter()
            .any(|f| f.contains("print_circular_bug") || f.contains("dump_stack")));
        let mut all: Vec<String> = seed.iter().map(fingerprint).collect();
        all.push(fingerprint(&lockdep));
        all.push(VBLANK.to_string());
        all.push(fingerprint(&only(&fixture("ddc_oops_7.2.txt"))));
        all.push(fingerprint(&only(&fixture("list_del_5.10.txt"))));
        all.push(fingerprint(&only(&fixture("kasan.txt"))));
        let unique: std::collections::BTreeSet<&String> = all.iter().collect();
        // The seed thread's two WARNs are the same WARN site reached twice.
        assert!(unique.len() > all.len() - seed.len(), "{all:#?}");
    }

    #[test]
    fn kasan_keeps_its_alloc_and_free_stacks() {
        let s = only(&fixture("kasan.txt"));
        let titles: Vec<&str> = s.stacks.iter().map(|s| s.title.as_str()).collect();
        assert_eq!(
            titles,
            ["Allocated by task 1", "Freed by task 87"],
            "{s:#?}"
        );
        assert!(s.stacks.iter().all(|st| !st.frames.is_empty()));
    }
}
