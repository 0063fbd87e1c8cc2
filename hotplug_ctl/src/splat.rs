//! Kernel splat detection: turns a full guest console log into the list of kernel problem reports
//! ("splats") it contains, one per incident, with the kind, the line naming the problem, the call
//! trace and the position in the log.
//!
//! The formats recognised are the ones the kernel prints (checked against its source):
//!
//! | kind | headline (message text after the printk prefix) | printed by |
//! | --- | --- | --- |
//! | [`Warning`](SplatKind::Warning) | `WARNING: CPU: 0 PID: 1 at file.c:12 func+0x8c/0x98` (`WARNING: at …` on old kernels), after `------------[ cut here ]------------` | `__warn()`, kernel/panic.c |
//! | [`Bug`](SplatKind::Bug) | `kernel BUG at mm/slub.c:123!`, `BUG: scheduling while atomic: …`, `BUG: Bad page state …`, `BUG kmalloc-64 (Not tainted): …` (SLUB), `watchdog: BUG: soft lockup - …` | lib/bug.c, kernel/sched, mm, kernel/watchdog.c |
//! | [`Oops`](SplatKind::Oops) | x86 `BUG: kernel NULL pointer dereference, address: …` / `BUG: unable to handle page fault …` then `Oops: Oops: 0000 [#1] …`; arm64 `Unable to handle kernel … at virtual address …` then `Internal error: Oops: 0000000096000005 [#1] …`; or a bare die header such as `Oops: general protection fault, …: 0000 [#1] …` | arch/*/mm/fault.c, arch/*/kernel/traps.c, dumpstack.c |
//! | [`Kasan`](SplatKind::Kasan) | `BUG: KASAN: slab-use-after-free in …` (also `BUG: KFENCE:`, `BUG: KMSAN:`) | mm/kasan/report.c |
//! | [`Ubsan`](SplatKind::Ubsan) | `UBSAN: array-index-out-of-bounds in file.c:1:2` | lib/ubsan.c |
//! | [`Refcount`](SplatKind::Refcount) | `refcount_t: underflow; use-after-free.` inside a WARN block | lib/refcount.c |
//! | [`ListCorruption`](SplatKind::ListCorruption) | `list_add corruption. …` / `list_del corruption, …` / `list_add double add: …`, inside a WARN block or just before `kernel BUG at lib/list_debug.c` | lib/list_debug.c |
//! | [`Lockdep`](SplatKind::Lockdep) | `WARNING: possible circular locking dependency detected` and the other lockdep banners, `[ BUG: Invalid wait context ]`, `WARNING: suspicious RCU usage`, `DEBUG_LOCKS_WARN_ON(…)` inside a WARN block | kernel/locking/lockdep.c |
//! | [`DoubleFreeIrq`](SplatKind::DoubleFreeIrq) | `Trying to free already-free IRQ 11` inside a WARN block | kernel/irq/manage.c |
//! | [`HungTask`](SplatKind::HungTask) | `INFO: task sh:245 blocked for more than 120 seconds.` | kernel/hung_task.c |
//! | [`RcuStall`](SplatKind::RcuStall) | `rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:`, `rcu: INFO: rcu_sched self-detected stall on CPU` | kernel/rcu/tree_stall.h |
//! | [`Panic`](SplatKind::Panic) | `Kernel panic - not syncing: …` up to `---[ end Kernel panic - not syncing: … ]---` | kernel/panic.c |
//!
//! Decisions:
//! - One incident, one splat. A `cut here` line opens an incident that the next headline names.
//!   A WARN whose message identifies the problem (refcount, list corruption, double free_irq,
//!   `DEBUG_LOCKS_WARN_ON`) gets that kind and `first_line` is the message line, not the
//!   `WARNING:` line. The message may come before the `WARNING:` line (kernels since 4.19) or
//!   after it (older ones); both are handled.
//! - A page fault Oops is kind [`Oops`](SplatKind::Oops) with `first_line` the fault line (`BUG:
//!   kernel NULL pointer dereference, …` / `Unable to handle kernel …`); its die header (`Oops: …
//!   [#1]` / `Internal error: Oops: … [#1]`) belongs to the same splat. `kernel BUG at …!` followed
//!   by its die header is one [`Bug`](SplatKind::Bug). The `Kernel panic - not syncing:` that may
//!   follow is always a separate [`Panic`](SplatKind::Panic).
//! - A `cut here` line with no headline after it (log cut right there) is not reported: there
//!   is nothing to name it by.
//! - Only kernel formats count: `WARNING:` must be the `WARNING: CPU: … at` form or a lockdep
//!   banner, `BUG` must start the message (`BUG: `, `kernel BUG at`), except the watchdog's
//!   `watchdog: BUG: soft lockup` which carries a `pr_fmt` prefix.
//! - Console prefixes (`[   12.345678]`, with or without a caller ID such as `[    T1]` /
//!   `[  C0]`, syslog `<4>`, anything in front of the timestamp such as `kernel:`) are stripped.
//!   If a quarter or more of the log's lines carry a prefix, lines without one are taken for
//!   user-space or serial noise and ignored.
//! - With caller IDs, lines of another task or CPU never enter a splat's call trace; without
//!   them, unrelated lines between trace lines are skipped (up to a gap).
//! - `call_trace` is the first call trace after the headline (for lockdep: the one after `stack
//!   backtrace:`, not the dependency chain; for KASAN: the access trace, not the allocation and
//!   free traces). arm64's unwinder annotations (` (P)`, ` (L)`, …) are dropped.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What kind of kernel problem a splat reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplatKind {
    /// `WARNING: CPU: … at …` (WARN_ON and friends).
    Warning,
    /// `kernel BUG at …!` and `BUG: …` reports that are not one of the kinds below.
    Bug,
    /// A kernel fault or die(): NULL dereference, bad paging request, general protection fault.
    Oops,
    /// A memory sanitizer report: KASAN (also KFENCE and KMSAN).
    Kasan,
    /// An undefined behaviour sanitizer report.
    Ubsan,
    /// refcount_t saturation: underflow, addition on 0, …
    Refcount,
    /// CONFIG_DEBUG_LIST: `list_add corruption` / `list_del corruption`.
    ListCorruption,
    /// A lockdep or RCU-lockdep report.
    Lockdep,
    /// `Trying to free already-free IRQ`.
    DoubleFreeIrq,
    /// `INFO: task … blocked for more than … seconds.`
    HungTask,
    /// An RCU CPU stall warning.
    RcuStall,
    /// `Kernel panic - not syncing: …`
    Panic,
}

impl SplatKind {
    /// Every kind, in declaration order.
    pub const ALL: [SplatKind; 12] = [
        SplatKind::Warning,
        SplatKind::Bug,
        SplatKind::Oops,
        SplatKind::Kasan,
        SplatKind::Ubsan,
        SplatKind::Refcount,
        SplatKind::ListCorruption,
        SplatKind::Lockdep,
        SplatKind::DoubleFreeIrq,
        SplatKind::HungTask,
        SplatKind::RcuStall,
        SplatKind::Panic,
    ];

    /// The kind's name as serialized (kebab-case), e.g. `"list-corruption"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SplatKind::Warning => "warning",
            SplatKind::Bug => "bug",
            SplatKind::Oops => "oops",
            SplatKind::Kasan => "kasan",
            SplatKind::Ubsan => "ubsan",
            SplatKind::Refcount => "refcount",
            SplatKind::ListCorruption => "list-corruption",
            SplatKind::Lockdep => "lockdep",
            SplatKind::DoubleFreeIrq => "double-free-irq",
            SplatKind::HungTask => "hung-task",
            SplatKind::RcuStall => "rcu-stall",
            SplatKind::Panic => "panic",
        }
    }
}

impl std::fmt::Display for SplatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One kernel problem report found in a console log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Splat {
    pub kind: SplatKind,
    /// The line that names the problem, timestamp stripped, e.g. "WARNING: CPU: 0 PID: 1 at
    /// drivers/gpu/drm/drm_gem_vram_helper.c:564 bo_driver_move_notify+0x8c/0x98"
    pub first_line: String,
    /// Function frames of the call trace in order, e.g. ["bo_driver_move_notify+0x8c/0x98",
    /// "ttm_bo_cleanup_memtype_use+0x54/0x100", ...] ("? " unreliable frames keep their "? "
    /// prefix; module suffixes like " [hibmc_drm]" kept; <TASK>/</TASK>/<IRQ> markers dropped)
    pub call_trace: Vec<String>,
    /// 1-based line number in the log where the splat starts (the cut-here line if any; for
    /// reports framed by a `=====` line, such as KASAN and lockdep, that line)
    pub line: usize,
    /// printk timestamp in seconds if present
    pub time: Option<f64>,
    /// lockdep: the locks the report names, in its order (the lock being acquired first, then
    /// the one already held), e.g. `["pci_rescan_remove_lock", "&ctrl->reset_lock"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<String>,
    /// The report's other stacks: lockdep's dependency chain entries (`-> #1 (&helper->lock)`),
    /// KASAN's `Allocated by task 1` / `Freed by task 1`, each with its frames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<Stack>,
}

/// One titled stack of a report besides its call trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    pub title: String,
    pub frames: Vec<String>,
}

/// Most frames one extra stack keeps, and most extra stacks per splat (bounds on guest input).
const STACK_FRAMES: usize = 64;
const STACKS: usize = 8;

/// All splats in a full console log, in order of their first line. See the module documentation
/// for the formats and the decisions taken.
pub fn find_splats(log: &str) -> Vec<Splat> {
    parse(log).finish()
}

/// Whether the last report in `log` has begun but not ended: its call trace is not complete yet
/// (no `---[ end trace`, no `</TASK>`, not enough lines after its frames), so the kernel may
/// still be printing it. The rig waits on this before it judges a scenario or stops the guest,
/// so that a slow kernel's trace is not cut.
pub fn report_still_open(log: &str) -> bool {
    parse(log).open.iter().any(|o| o.phase != Phase::Done)
}

/// Feeds every line of `log` to a parser, leaving the incidents still open in it.
fn parse(log: &str) -> Parser {
    let lines: Vec<&str> = log.split('\n').collect();
    let prefixed = lines.iter().filter(|l| has_prefix(l)).count();
    let nonblank = lines.iter().filter(|l| !l.trim().is_empty()).count();
    let strict = prefixed > 0 && prefixed * 4 >= nonblank;
    let mut parser = Parser::default();
    for (i, raw) in lines.iter().enumerate() {
        let clean = strip_controls(raw);
        let line = split_prefix(&clean);
        if strict && !line.prefixed {
            continue;
        }
        parser.feed_line(i + 1, &line);
    }
    parser
}

/// The step a splat that began at console line `line` belongs to: the last of `steps` (in the
/// order they began, `began` giving each one's first console line) that began at or before
/// it. A splat belongs to the step during which it began, however far its report runs on.
pub fn step_of<T>(steps: &[T], began: impl Fn(&T) -> usize, line: usize) -> Option<&T> {
    steps.iter().rev().find(|s| began(s) <= line)
}

/// How far (in lines) after an incident's start a die header or WARNING line may still join it.
const MERGE_SPAN: usize = 64;
/// How far after the headline a `Call Trace:` line may still be the incident's trace.
const HEADER_SPAN: usize = 400;
/// How many consecutive non-frame lines a call trace tolerates (register dumps of exception
/// frames, interleaved messages) before it is taken as finished.
const TRACE_GAP: usize = 24;

static TIMESTAMP: LazyLock<Regex> =
    LazyLock::new(|| re(r"\[\s*(\d{1,10}\.\d{1,9})\](?:\[\s*([TC]\d+)\])?"));
static CALLER_ONLY: LazyLock<Regex> = LazyLock::new(|| re(r"^(?:<\d{1,3}>)?\[\s*([TC]\d+)\]"));
static SYSLOG_LEVEL: LazyLock<Regex> = LazyLock::new(|| re(r"^<\d{1,3}>"));
static ANSI: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?:\x1b|\\x1b|\\e|\\033)(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
});
static CUT_HERE: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(?:-+\[ cut here \]-+|8<-+ cut here -+)$"));
static WARN_HEAD: LazyLock<Regex> =
    LazyLock::new(|| re(r"^WARNING: (?:CPU: \d+ PID: \d+ at \S|at \S|\S+:\d+ at \S)"));
static LOCKDEP_HEAD: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"^(?:WARNING: (?:possible (?:circular locking|recursive locking|irq lock inversion) ",
        r"|inconsistent lock state|\S+-safe -> \S+-unsafe lock order detected",
        r"|bad (?:unlock balance|contention) detected|held lock freed|lock held ",
        r"|.+ still has locks held|suspicious RCU usage|Nested lock was not taken",
        r"|chain_key collision)",
        r"|\[ (?:BUG|INFO): .+ \]$|BUG: MAX_\w+ too low|INFO: trying to register non-static key)"
    ))
});
static FAULT_HEAD: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"^(?:BUG: (?:unable to handle |kernel NULL pointer dereference|\w* ?stack guard page was hit)",
        r"|Unable to handle kernel .* at virtual address )"
    ))
});
static SANITIZER_HEAD: LazyLock<Regex> = LazyLock::new(|| re(r"^BUG: K(?:ASAN|FENCE|MSAN): "));
static SLUB_HEAD: LazyLock<Regex> =
    LazyLock::new(|| re(r"^BUG \S+ \((?:Not tainted|Tainted:[^)]*)\): "));
static DIE_HEAD: LazyLock<Regex> =
    LazyLock::new(|| re(r"^.{1,200}?: [0-9a-f]{4,16}(?: ilc:\d)? \[#\d+\]"));
static HUNG_TASK_HEAD: LazyLock<Regex> =
    LazyLock::new(|| re(r"^INFO: task .+:\d+ blocked for more than \d+ seconds"));
static RCU_STALL_HEAD: LazyLock<Regex> = LazyLock::new(|| {
    re(r"^(?:rcu: )?INFO: \S+ (?:detected (?:expedited )?stalls on|self-detected stall on CPU)")
});
static LOCKUP_HEAD: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(?:NMI )?watchdog: (?:BUG: soft lockup|Watchdog detected hard LOCKUP)"));
static LIST_MSG: LazyLock<Regex> =
    LazyLock::new(|| re(r"^list_(?:add|del)[ :.,]+(?:corruption|double add)"));
static IRQ_MSG: LazyLock<Regex> = LazyLock::new(|| re(r"^Trying to free already-free IRQ \d+"));
static CALL_TRACE: LazyLock<Regex> = LazyLock::new(|| re(r"^(?:Call [Tt]race|Backtrace):"));
static MARKER: LazyLock<Regex> = LazyLock::new(|| re(r"^<(/?)([A-Z#][A-Z0-9_#]*)>$"));
static FRAME: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"^(?:\[<?[0-9a-f]+>?\]\s*)*(\?\s+)?",
        r"([A-Za-z_.$][\w.$]*\+0x[0-9a-f]+/0x[0-9a-f]+|0x[0-9a-f]{6,16})",
        r"(\s+\[[^\]\s]+(?:\s+[0-9a-f]+)?\])?(?:\s.*)?$"
    ))
});
/// A lock as lockdep prints it: `ffff888101c8e290 (&dev->mode_config.mutex){+.+.}-{3:3}, at: …`.
static LOCK_LINE: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(?:#\d+: )?[0-9a-f]{8,16} \((.+?)\)\{[^}]*\}"));
/// A lockdep dependency chain entry: `-> #1 (&helper->lock){+.+.}-{3:3}:`.
static CHAIN_HEAD: LazyLock<Regex> = LazyLock::new(|| re(r"^-> #\d+ \((.+?)\)\{[^}]*\}.*:$"));
/// KASAN's allocation and free stacks.
static KASAN_STACK: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^(?:Allocated|Freed|Last potentially related work creation|Second to last potentially related work creation) by task \d+|^(?:Allocated|Freed) by task",
    )
});
static TRACE_END: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(?:Modules linked in:|CR2: |Kernel Offset:)"));

/// Compiles one of the constant patterns above.
fn re(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad splat pattern {pattern:?}: {e}"))
}

/// A console line with its printk prefix taken apart.
struct Line<'a> {
    time: Option<f64>,
    caller: Option<&'a str>,
    /// The line carried a timestamp or caller ID, so the kernel printed it.
    prefixed: bool,
    /// The message, trimmed.
    msg: &'a str,
}

fn has_prefix(raw: &str) -> bool {
    TIMESTAMP.is_match(raw) || CALLER_ONLY.is_match(raw.trim_start())
}

/// Drops ANSI escape sequences (also when they arrive escaped as text, `\x1b[0m`) and control
/// characters (CR, NUL, serial garbage) except tabs.
fn strip_controls(raw: &str) -> Cow<'_, str> {
    let escaped = raw.contains("\\x1b") || raw.contains("\\e[") || raw.contains("\\033");
    if !escaped && !raw.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(raw);
    }
    let no_ansi = ANSI.replace_all(raw, "");
    Cow::Owned(
        no_ansi
            .chars()
            .filter(|&c| !c.is_control() || c == '\t')
            .collect(),
    )
}

fn split_prefix(clean: &str) -> Line<'_> {
    if let Some(caps) = TIMESTAMP.captures(clean) {
        let end = caps.get(0).map_or(0, |m| m.end());
        return Line {
            time: caps.get(1).and_then(|t| t.as_str().parse().ok()),
            caller: caps.get(2).map(|c| c.as_str()),
            prefixed: true,
            msg: clean[end..].trim(),
        };
    }
    let trimmed = clean.trim_start();
    if let Some(caps) = CALLER_ONLY.captures(trimmed) {
        let end = caps.get(0).map_or(0, |m| m.end());
        return Line {
            time: None,
            caller: caps.get(1).map(|c| c.as_str()),
            prefixed: true,
            msg: trimmed[end..].trim(),
        };
    }
    let msg = SYSLOG_LEVEL
        .find(trimmed)
        .map_or(trimmed, |m| &trimmed[m.end()..]);
    Line {
        time: None,
        caller: None,
        prefixed: false,
        msg: msg.trim(),
    }
}

/// A headline: a line that names (or helps name) an incident.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Head {
    /// `WARNING: CPU: … at …`
    Warn,
    /// `kernel BUG at …!`
    BugAt,
    /// A die() header: `Oops: … [#1]`, `Internal error: … [#1]`, `general protection fault …`.
    Die,
    /// The fault line printed before a die header: `BUG: kernel NULL pointer dereference`, …
    Fault,
    /// A headline that stands alone.
    Plain(SplatKind),
}

/// What a console line means to the parser.
#[derive(Debug, PartialEq)]
enum Event {
    Blank,
    CutHere,
    Separator,
    EndTrace,
    EndPanic,
    CallTrace,
    /// `<TASK>`, `</TASK>`, `<IRQ>`, …; the flag is set for `</TASK>`, which ends a trace.
    Marker(bool),
    Frame(String),
    Head(Head),
    /// A WARN message that says what the WARN is about.
    Refine(SplatKind),
    Other,
}

fn classify(msg: &str) -> Event {
    if msg.is_empty() {
        return Event::Blank;
    }
    if msg.len() >= 10 && msg.bytes().all(|b| b == b'=') {
        return Event::Separator;
    }
    if msg.starts_with("---[ end Kernel panic") {
        return Event::EndPanic;
    }
    if msg.starts_with("---[ end trace") {
        return Event::EndTrace;
    }
    if CUT_HERE.is_match(msg) {
        return Event::CutHere;
    }
    if let Some(head) = headline(msg) {
        return Event::Head(head);
    }
    if let Some(kind) = refinement(msg) {
        return Event::Refine(kind);
    }
    if CALL_TRACE.is_match(msg) {
        return Event::CallTrace;
    }
    if let Some(caps) = MARKER.captures(msg) {
        let end_task = caps.get(1).is_some_and(|m| !m.is_empty())
            && caps.get(2).is_some_and(|m| m.as_str() == "TASK");
        return Event::Marker(end_task);
    }
    if let Some(caps) = FRAME.captures(msg) {
        let mut frame = String::new();
        if caps.get(1).is_some() {
            frame.push_str("? ");
        }
        frame.push_str(caps.get(2).map_or("", |m| m.as_str()));
        if let Some(module) = caps.get(3) {
            frame.push(' ');
            frame.push_str(module.as_str().trim_start());
        }
        return Event::Frame(frame);
    }
    Event::Other
}

fn headline(msg: &str) -> Option<Head> {
    if msg.starts_with("WARNING: ") {
        if LOCKDEP_HEAD.is_match(msg) {
            return Some(Head::Plain(SplatKind::Lockdep));
        }
        return WARN_HEAD.is_match(msg).then_some(Head::Warn);
    }
    if msg.starts_with("BUG: ") {
        if SANITIZER_HEAD.is_match(msg) {
            return Some(Head::Plain(SplatKind::Kasan));
        }
        if FAULT_HEAD.is_match(msg) {
            return Some(Head::Fault);
        }
        if LOCKDEP_HEAD.is_match(msg) {
            return Some(Head::Plain(SplatKind::Lockdep));
        }
        return Some(Head::Plain(SplatKind::Bug));
    }
    if msg.starts_with("kernel BUG at ") || msg.starts_with("Kernel BUG at ") {
        return Some(Head::BugAt);
    }
    if msg.starts_with("Kernel panic - not syncing") {
        return Some(Head::Plain(SplatKind::Panic));
    }
    if msg.starts_with("UBSAN: ") {
        return Some(Head::Plain(SplatKind::Ubsan));
    }
    if msg.starts_with("BUG ") && SLUB_HEAD.is_match(msg) {
        return Some(Head::Plain(SplatKind::Bug));
    }
    if msg.starts_with("Unable to handle kernel ") && FAULT_HEAD.is_match(msg) {
        return Some(Head::Fault);
    }
    if (msg.starts_with('[') || msg.starts_with("INFO: trying")) && LOCKDEP_HEAD.is_match(msg) {
        return Some(Head::Plain(SplatKind::Lockdep));
    }
    if HUNG_TASK_HEAD.is_match(msg) {
        return Some(Head::Plain(SplatKind::HungTask));
    }
    if RCU_STALL_HEAD.is_match(msg) {
        return Some(Head::Plain(SplatKind::RcuStall));
    }
    if LOCKUP_HEAD.is_match(msg) {
        return Some(Head::Plain(SplatKind::Bug));
    }
    if msg.contains(" [#") && DIE_HEAD.is_match(msg) {
        return Some(Head::Die);
    }
    None
}

fn refinement(msg: &str) -> Option<SplatKind> {
    if msg.starts_with("refcount_t: ") {
        Some(SplatKind::Refcount)
    } else if msg.starts_with("list_") && LIST_MSG.is_match(msg) {
        Some(SplatKind::ListCorruption)
    } else if IRQ_MSG.is_match(msg) {
        Some(SplatKind::DoubleFreeIrq)
    } else if msg.starts_with("DEBUG_LOCKS_WARN_ON(") {
        Some(SplatKind::Lockdep)
    } else {
        None
    }
}

/// The kind a WARN gets from its location alone (when its message line is missing).
fn warn_kind(msg: &str) -> SplatKind {
    if msg.contains("lib/refcount.c") || msg.contains(" refcount_warn_saturate+") {
        SplatKind::Refcount
    } else if msg.contains("lib/list_debug.c") {
        SplatKind::ListCorruption
    } else {
        SplatKind::Warning
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between the start and the `Call Trace:` line.
    Header,
    /// Collecting frames.
    Trace,
    /// The first trace is complete; later lines are ignored.
    Done,
}

/// An incident being read.
#[derive(Debug)]
struct Open {
    /// None while only a `cut here` line was seen.
    kind: Option<SplatKind>,
    first_line: String,
    line: usize,
    time: Option<f64>,
    caller: Option<String>,
    /// The line that prints the headline was seen (not just a cut-here or a WARN message).
    anchored: bool,
    /// A WARN message set the kind.
    refined: bool,
    has_warn: bool,
    has_bug_at: bool,
    has_die: bool,
    fault: bool,
    /// Line number of the latest headline, for [`HEADER_SPAN`].
    head_line: usize,
    /// The incident's lines carry printk prefixes.
    prefixed: bool,
    phase: Phase,
    gap: usize,
    frames: Vec<String>,
    locks: Vec<String>,
    /// The last line said a lock follows (`is trying to acquire lock:`).
    lock_next: bool,
    stacks: Vec<Stack>,
    /// Frames go to the last entry of `stacks` (a chain entry or KASAN section is open).
    in_stack: bool,
}

impl Open {
    fn new(line: usize, time: Option<f64>, at: &Line<'_>, head_line: usize) -> Self {
        Open {
            kind: None,
            first_line: String::new(),
            line,
            time,
            caller: at.caller.map(str::to_owned),
            anchored: false,
            refined: false,
            has_warn: false,
            has_bug_at: false,
            has_die: false,
            fault: false,
            head_line,
            prefixed: at.prefixed,
            phase: Phase::Header,
            gap: 0,
            frames: Vec::new(),
            locks: Vec::new(),
            lock_next: false,
            stacks: Vec::new(),
            in_stack: false,
        }
    }

    /// The lockdep and KASAN parts around the call trace: lock names, chain entries, the
    /// allocation and free stacks. Returns true if the line was taken.
    fn extra(&mut self, event: &Event, line: &Line<'_>) -> bool {
        let lockdep = self.kind == Some(SplatKind::Lockdep) && self.phase == Phase::Header;
        let kasan = self.kind == Some(SplatKind::Kasan) && self.phase == Phase::Done;
        if !lockdep && !kasan {
            return false;
        }
        match event {
            Event::Frame(f) if self.in_stack => {
                if let Some(st) = self.stacks.last_mut() {
                    if st.frames.len() < STACK_FRAMES {
                        st.frames.push(f.clone());
                    }
                }
                true
            }
            Event::Other => {
                let msg = line.msg;
                if lockdep && msg.ends_with("lock:") {
                    self.lock_next = true;
                    self.in_stack = false;
                } else if let Some(c) = LOCK_LINE
                    .captures(msg)
                    .filter(|_| lockdep && self.lock_next)
                {
                    let name = c[1].to_string();
                    if !self.locks.contains(&name) {
                        self.locks.push(name);
                    }
                    self.lock_next = false;
                } else if let Some(c) = CHAIN_HEAD.captures(msg).filter(|_| lockdep) {
                    self.open_stack(format!("-> ({})", &c[1]));
                } else if kasan && KASAN_STACK.is_match(msg) {
                    self.open_stack(msg.trim_end_matches(':').to_string());
                } else {
                    self.in_stack = false;
                }
                true
            }
            Event::Blank => {
                self.in_stack = false;
                true
            }
            _ => false,
        }
    }

    fn open_stack(&mut self, title: String) {
        self.in_stack = self.stacks.len() < STACKS;
        if self.in_stack {
            self.stacks.push(Stack {
                title,
                frames: Vec::new(),
            });
        }
    }

    /// Whether headline `head` on line `no` continues this incident rather than starting one.
    fn absorbs(&self, head: Head, no: usize) -> bool {
        if self.phase != Phase::Header || no.saturating_sub(self.line) > MERGE_SPAN {
            return false;
        }
        match (self.kind, head) {
            (None, Head::Plain(kind)) => matches!(kind, SplatKind::Bug | SplatKind::Ubsan),
            (None, _) => true,
            (_, Head::Warn) => self.refined && !self.anchored,
            (kind, Head::BugAt) => {
                self.refined && !self.anchored && kind == Some(SplatKind::ListCorruption)
            }
            (_, Head::Die) => !self.has_die && (self.fault || self.has_bug_at),
            _ => false,
        }
    }

    fn apply(&mut self, head: Head, no: usize, msg: &str) {
        let kind = match head {
            Head::Warn => {
                self.has_warn = true;
                warn_kind(msg)
            }
            Head::BugAt => {
                self.has_bug_at = true;
                if msg.contains("lib/list_debug.c") {
                    SplatKind::ListCorruption
                } else {
                    SplatKind::Bug
                }
            }
            Head::Die => {
                self.has_die = true;
                SplatKind::Oops
            }
            Head::Fault => {
                self.fault = true;
                SplatKind::Oops
            }
            Head::Plain(kind) => kind,
        };
        if self.kind.is_none() {
            self.kind = Some(kind);
            self.first_line = msg.to_owned();
        }
        self.anchored = true;
        self.head_line = no;
    }

    /// Takes a line of the incident's body.
    fn body(&mut self, event: Event, no: usize, line: &Line<'_>) {
        if self.extra(&event, line) {
            return;
        }
        let framed = !self.frames.is_empty();
        match (self.phase, event) {
            (Phase::Header, Event::CallTrace)
                if no.saturating_sub(self.head_line) <= HEADER_SPAN =>
            {
                self.phase = Phase::Trace;
                self.gap = 0;
            }
            (Phase::Trace, Event::Frame(frame)) => {
                self.frames.push(frame);
                self.gap = 0;
            }
            // `</TASK>`, a second `Call Trace:`, or a blank kernel line (KASAN's sections) end
            // the trace; a blank line of noise only does when the log has no prefixes to tell
            // the two apart.
            (Phase::Trace, Event::Marker(true) | Event::CallTrace) if framed => {
                self.phase = Phase::Done;
            }
            (Phase::Trace, Event::Blank) if framed && (line.prefixed || !self.prefixed) => {
                self.phase = Phase::Done;
            }
            (Phase::Trace, Event::Other)
                if framed && (line.msg.ends_with(':') || TRACE_END.is_match(line.msg)) =>
            {
                self.phase = Phase::Done;
            }
            (Phase::Trace, Event::Other) => {
                self.gap += 1;
                if self.gap > TRACE_GAP {
                    self.phase = Phase::Done;
                }
            }
            _ => {}
        }
    }

    fn into_splat(self) -> Option<Splat> {
        let kind = self.kind.filter(|_| self.anchored)?;
        Some(Splat {
            kind,
            first_line: self.first_line,
            call_trace: self.frames,
            line: self.line,
            time: self.time,
            locks: self.locks,
            stacks: self.stacks,
        })
    }
}

/// A `=====` separator line, which starts the KASAN, lockdep and SLUB reports that follow it.
struct Separator {
    no: usize,
    time: Option<f64>,
    caller: Option<String>,
}

#[derive(Default)]
struct Parser {
    /// Incidents still being read, at most one per printk caller.
    open: Vec<Open>,
    done: Vec<Splat>,
    separator: Option<Separator>,
}

impl Parser {
    /// The open incident of the line's own caller.
    fn own(&self, caller: Option<&str>) -> Option<usize> {
        self.open
            .iter()
            .rposition(|o| o.caller.as_deref() == caller)
    }

    /// The open incident a body line belongs to: its caller's, or for a line without a caller
    /// the latest; an RCU stall also takes the NMI backtraces other CPUs print for it.
    fn owner(&self, caller: Option<&str>) -> Option<usize> {
        self.own(caller).or_else(|| match caller {
            None => self.open.len().checked_sub(1),
            Some(_) => self
                .open
                .iter()
                .rposition(|o| o.kind == Some(SplatKind::RcuStall)),
        })
    }

    fn close(&mut self, index: usize) {
        let open = self.open.remove(index);
        self.done.extend(open.into_splat());
    }

    fn feed_line(&mut self, no: usize, line: &Line<'_>) {
        let event = classify(line.msg);
        let separator = match event {
            Event::Separator => {
                self.separator = Some(Separator {
                    no,
                    time: line.time,
                    caller: line.caller.map(str::to_owned),
                });
                return;
            }
            Event::Blank => None,
            _ => self.separator.take(),
        };
        match event {
            Event::CutHere => {
                if let Some(i) = self.own(line.caller) {
                    let o = &self.open[i];
                    // CONFIG_BUG_ON_DATA_CORRUPTION: the list message, then BUG()'s cut-here.
                    let list_bug = o.kind == Some(SplatKind::ListCorruption)
                        && !o.anchored
                        && o.phase == Phase::Header
                        && no.saturating_sub(o.line) <= MERGE_SPAN;
                    if list_bug {
                        return;
                    }
                    self.close(i);
                }
                self.open.push(Open::new(no, line.time, line, no));
            }
            Event::Head(head) => {
                if let Some(i) = self.own(line.caller) {
                    if self.open[i].absorbs(head, no) {
                        self.open[i].apply(head, no, line.msg);
                        return;
                    }
                    self.close(i);
                }
                let (start, time) = match separator {
                    Some(s) if s.caller.as_deref() == line.caller => (s.no, s.time.or(line.time)),
                    _ => (no, line.time),
                };
                let mut open = Open::new(start, time, line, no);
                open.apply(head, no, line.msg);
                self.open.push(open);
            }
            Event::Refine(kind) => {
                if let Some(i) = self.own(line.caller) {
                    let o = &mut self.open[i];
                    let refinable = o.phase == Phase::Header
                        && !o.refined
                        && no.saturating_sub(o.line) <= MERGE_SPAN
                        && (o.kind.is_none() || o.has_warn);
                    if refinable {
                        o.kind = Some(kind);
                        o.first_line = line.msg.to_owned();
                        o.refined = true;
                        return;
                    }
                    self.close(i);
                }
                // A message that a WARNING or BUG line should follow; reported only if one does.
                let mut open = Open::new(no, line.time, line, no);
                open.kind = Some(kind);
                open.first_line = line.msg.to_owned();
                open.refined = true;
                self.open.push(open);
            }
            Event::EndTrace => {
                if let Some(i) = self.owner(line.caller) {
                    if self.open[i].kind != Some(SplatKind::Panic) {
                        self.close(i);
                    }
                }
            }
            Event::EndPanic => {
                if let Some(i) = self.owner(line.caller) {
                    self.close(i);
                }
            }
            event => {
                if let Some(i) = self.owner(line.caller) {
                    self.open[i].body(event, no, line);
                }
            }
        }
    }

    fn finish(mut self) -> Vec<Splat> {
        while !self.open.is_empty() {
            self.close(0);
        }
        self.done.sort_by_key(|s| s.line);
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a splat's kind, first line, first frames and line number.
    #[track_caller]
    fn check(s: &Splat, kind: SplatKind, first_line: &str, frames: &[&str], line: usize) {
        assert_eq!(s.kind, kind, "{s:#?}");
        assert_eq!(s.first_line, first_line, "{s:#?}");
        assert!(s.call_trace.len() >= frames.len(), "{s:#?}");
        assert_eq!(&s.call_trace[..frames.len()], frames, "{s:#?}");
        assert_eq!(s.line, line, "{s:#?}");
    }

    fn fixture_splats(text: &str, count: usize) -> Vec<Splat> {
        let splats = find_splats(text);
        assert_eq!(splats.len(), count, "{splats:#?}");
        splats
    }

    #[test]
    fn seed_thread_hibmc_warnings() {
        let splats = fixture_splats(
            include_str!("../tests/fixtures/splats/seed_hibmc_warn.txt"),
            2,
        );
        check(
            &splats[0],
            SplatKind::Warning,
            "WARNING: CPU: 24 PID: 1 at drivers/gpu/drm/drm_gem_vram_helper.c:564 \
             bo_driver_move_notify+0x8c/0x98",
            &[
                "bo_driver_move_notify+0x8c/0x98",
                "ttm_bo_cleanup_memtype_use+0x54/0x100",
                "ttm_bo_put+0x3a0/0x5d0",
            ],
            1,
        );
        assert_eq!(splats[0].time, Some(27.788806));
        assert_eq!(splats[0].call_trace.len(), 28);
        assert_eq!(
            splats[0].call_trace.last().map(String::as_str),
            Some("ret_from_fork+0x10/0x18")
        );
        check(
            &splats[1],
            SplatKind::Warning,
            "WARNING: CPU: 17 PID: 1178 at drivers/gpu/drm/drm_gem_vram_helper.c:40 \
             ttm_buffer_object_destroy+0x4c/0x80",
            &[
                "ttm_buffer_object_destroy+0x4c/0x80",
                "ttm_bo_release_list+0x184/0x220",
                "ttm_bo_put+0x410/0x5d0",
            ],
            59,
        );
        assert_eq!(splats[1].time, Some(116.074352));
        assert_eq!(splats[1].call_trace.len(), 28);
        // The log ends on a lone cut-here: nothing names it, so it is not reported.
    }

    #[test]
    fn x86_null_deref_oops_then_panic() {
        let splats = fixture_splats(
            include_str!("../tests/fixtures/splats/oops_x86_panic.txt"),
            2,
        );
        check(
            &splats[0],
            SplatKind::Oops,
            "BUG: kernel NULL pointer dereference, address: 0000000000000010",
            &[
                "? __die+0x23/0x70",
                "? page_fault_oops+0x17d/0x4c0",
                "? exc_page_fault+0x7f/0x180",
            ],
            5,
        );
        assert_eq!(splats[0].call_trace.len(), 35);
        assert_eq!(
            splats[0].call_trace[4],
            "? drm_gem_vram_vunmap+0x11/0x80 [drm_vram_helper]"
        );
        assert_eq!(
            splats[0].call_trace[16],
            "bochs_pci_remove+0x1a/0x40 [bochs]"
        );
        check(
            &splats[1],
            SplatKind::Panic,
            "Kernel panic - not syncing: Fatal exception",
            &[],
            75,
        );
        assert!(splats[1].call_trace.is_empty());
    }

    #[test]
    fn arm64_oops_drops_unwinder_annotations() {
        let splats = fixture_splats(include_str!("../tests/fixtures/splats/oops_arm64.txt"), 1);
        check(
            &splats[0],
            SplatKind::Oops,
            "Unable to handle kernel NULL pointer dereference at virtual address 0000000000000030",
            &[
                "hibmc_crtc_atomic_disable+0x2c/0x90 [hibmc_drm]",
                "drm_atomic_helper_commit_modeset_disables+0x1f8/0x4e0 [drm_kms_helper]",
                "drm_atomic_helper_commit_tail_rpm+0x28/0x90 [drm_kms_helper]",
            ],
            2,
        );
        assert_eq!(splats[0].call_trace.len(), 26);
    }

    #[test]
    fn kasan_report() {
        let splats = fixture_splats(include_str!("../tests/fixtures/splats/kasan.txt"), 1);
        check(
            &splats[0],
            SplatKind::Kasan,
            "BUG: KASAN: slab-use-after-free in drm_gem_object_release+0x9c/0xb0",
            &[
                "dump_stack_lvl+0x5d/0x80",
                "print_report+0xcb/0x620",
                "? __virt_addr_valid+0x1c7/0x2f0",
            ],
            2,
        );
        // The access trace only: the "Allocated by" and "Freed by" stacks are not part of it.
        assert_eq!(splats[0].call_trace.len(), 16);
        assert_eq!(splats[0].time, Some(63.412001));
    }

    #[test]
    fn ubsan_report() {
        let splats = fixture_splats(include_str!("../tests/fixtures/splats/ubsan.txt"), 1);
        check(
            &splats[0],
            SplatKind::Ubsan,
            "UBSAN: array-index-out-of-bounds in drivers/gpu/drm/tiny/bochs.c:212:23",
            &[
                "dump_stack_lvl+0x5d/0x80",
                "__ubsan_handle_out_of_bounds+0xa5/0xe0",
                "bochs_hw_setmode+0x3e1/0x420 [bochs]",
            ],
            2,
        );
        assert_eq!(splats[0].call_trace.len(), 38);
        // Before v6.6 UBSAN framed its report with '=' lines instead.
        let old = "[ 3.1] x\n[    3.000001] ================\n\
                   [    3.000002] UBSAN: shift-out-of-bounds in drivers/gpu/drm/a.c:10:5\n\
                   [    3.000003] Call Trace:\n[    3.000004]  dump_stack+0x5d/0x80\n\
                   [    3.000005] ================\n";
        let splats = fixture_splats(old, 1);
        check(
            &splats[0],
            SplatKind::Ubsan,
            "UBSAN: shift-out-of-bounds in drivers/gpu/drm/a.c:10:5",
            &["dump_stack+0x5d/0x80"],
            2,
        );
    }

    #[test]
    fn refcount_warn_block_is_one_refcount_splat() {
        let splats = fixture_splats(include_str!("../tests/fixtures/splats/refcount.txt"), 1);
        check(
            &splats[0],
            SplatKind::Refcount,
            "refcount_t: underflow; use-after-free.",
            &[
                "? __warn+0x89/0x130",
                "? refcount_warn_saturate+0xba/0x110",
                "? report_bug+0x17e/0x1b0",
            ],
            3,
        );
        assert_eq!(splats[0].call_trace[7], "ttm_bo_put+0x3c/0x50 [ttm]");
    }

    #[test]
    fn list_corruption_bug_and_warn_variants() {
        let splats = fixture_splats(
            include_str!("../tests/fixtures/splats/list_corruption.txt"),
            1,
        );
        check(
            &splats[0],
            SplatKind::ListCorruption,
            "list_del corruption, ffff888104a1c0d8->next is LIST_POISON1 (dead000000000100)",
            &[
                "? die+0x36/0x90",
                "? do_trap+0xed/0x110",
                "? __list_del_entry_valid_or_report+0x6f/0xc0",
            ],
            2,
        );
        assert_eq!(
            splats[0].call_trace[9],
            "drm_client_dev_unregister+0x9e/0xe0"
        );
        // Without CONFIG_BUG_ON_DATA_CORRUPTION it is a WARN.
        let warn = "[ 9.000001] ------------[ cut here ]------------\n\
                    [ 9.000002] list_add corruption. prev->next should be next (ffff888100a0b0c0), but was 0000000000000000. (prev=ffff888104a1c0d8).\n\
                    [ 9.000003] WARNING: CPU: 0 PID: 1 at lib/list_debug.c:32 __list_add_valid_or_report+0x9c/0xa0\n\
                    [ 9.000004] Call Trace:\n[ 9.000005]  drm_client_register+0x3f/0xd0\n\
                    [ 9.000006] ---[ end trace 0000000000000000 ]---\n";
        let splats = fixture_splats(warn, 1);
        assert_eq!(splats[0].kind, SplatKind::ListCorruption);
        assert!(splats[0]
            .first_line
            .starts_with("list_add corruption. prev->next"));
        assert_eq!(splats[0].call_trace, ["drm_client_register+0x3f/0xd0"]);
    }

    #[test]
    fn lockdep_circular_dependency() {
        let splats = fixture_splats(
            include_str!("../tests/fixtures/splats/lockdep_circular.txt"),
            1,
        );
        check(
            &splats[0],
            SplatKind::Lockdep,
            "WARNING: possible circular locking dependency detected",
            &[
                "dump_stack_lvl+0x82/0xd0",
                "print_circular_bug+0x26a/0x340",
                "check_noncircular+0x131/0x150",
            ],
            3,
        );
        // The trace after "stack backtrace:", not the dependency chain.
        assert_eq!(splats[0].call_trace.len(), 21);
    }

    #[test]
    fn other_lockdep_reports() {
        let log = "[ 1.000001] =============================\n\
                   [ 1.000002] [ BUG: Invalid wait context ]\n\
                   [ 1.000003] 6.12.0 #1 Not tainted\n\
                   [ 2.000001] =============================\n\
                   [ 2.000002] WARNING: suspicious RCU usage\n\
                   [ 3.000001] ------------[ cut here ]------------\n\
                   [ 3.000002] DEBUG_LOCKS_WARN_ON(lock->magic != lock)\n\
                   [ 3.000003] WARNING: CPU: 0 PID: 1 at kernel/locking/mutex.c:587 __mutex_lock+0x5f8/0xa60\n";
        let splats = fixture_splats(log, 3);
        assert!(
            splats.iter().all(|s| s.kind == SplatKind::Lockdep),
            "{splats:#?}"
        );
        assert_eq!(splats.iter().map(|s| s.line).collect::<Vec<_>>(), [1, 4, 6]);
        assert_eq!(
            splats[2].first_line,
            "DEBUG_LOCKS_WARN_ON(lock->magic != lock)"
        );
    }

    #[test]
    fn double_free_irq() {
        let splats = fixture_splats(
            include_str!("../tests/fixtures/splats/double_free_irq.txt"),
            1,
        );
        check(
            &splats[0],
            SplatKind::DoubleFreeIrq,
            "Trying to free already-free IRQ 11",
            &[
                "? __warn+0x89/0x130",
                "? free_irq+0x1f2/0x330",
                "? report_bug+0x17e/0x1b0",
            ],
            2,
        );
        assert_eq!(splats[0].call_trace[7], "drm_irq_uninstall+0x6e/0x90");
        // Before v4.19 the message followed the WARNING line, and there was no cut-here.
        let old =
            "[ 5.1] WARNING: CPU: 0 PID: 925 at kernel/irq/manage.c:1708 __free_irq+0xc8/0x2c4\n\
                   [ 5.2] Trying to free already-free IRQ 0\n\
                   [ 5.3] Modules linked in:\n";
        let splats = fixture_splats(old, 1);
        check(
            &splats[0],
            SplatKind::DoubleFreeIrq,
            "Trying to free already-free IRQ 0",
            &[],
            1,
        );
    }

    #[test]
    fn hung_task() {
        let splats = fixture_splats(include_str!("../tests/fixtures/splats/hung_task.txt"), 1);
        check(
            &splats[0],
            SplatKind::HungTask,
            "INFO: task sh:245 blocked for more than 122 seconds.",
            &[
                "__schedule+0x3e4/0xb70",
                "schedule+0x27/0xf0",
                "schedule_timeout+0x15d/0x170",
            ],
            2,
        );
        assert_eq!(splats[0].call_trace.len(), 23);
    }

    #[test]
    fn rcu_stall_takes_the_nmi_backtrace_of_the_stalled_cpu() {
        let splats = fixture_splats(include_str!("../tests/fixtures/splats/rcu_stall.txt"), 1);
        check(
            &splats[0],
            SplatKind::RcuStall,
            "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            &[
                "? nmi_cpu_backtrace+0xbf/0x140",
                "? nmi_cpu_backtrace_handler+0x11/0x20",
                "? nmi_handle+0x61/0x160",
            ],
            2,
        );
        assert_eq!(
            splats[0].call_trace[7],
            "bochs_pci_remove+0x22/0x40 [bochs]"
        );
        let self_detected = "[ 1.1] rcu: INFO: rcu_sched self-detected stall on CPU\n";
        assert_eq!(
            fixture_splats(self_detected, 1)[0].kind,
            SplatKind::RcuStall
        );
    }

    #[test]
    fn panic_with_its_own_trace() {
        let splats = fixture_splats(include_str!("../tests/fixtures/splats/panic.txt"), 1);
        check(
            &splats[0],
            SplatKind::Panic,
            "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
            &[
                "dump_stack_lvl+0x5d/0x80",
                "panic+0x118/0x2f0",
                "mount_root_generic+0x1d8/0x2a0",
            ],
            4,
        );
        assert_eq!(splats[0].call_trace.len(), 10);
    }

    #[test]
    fn kernel_bug_and_its_die_header_are_one_bug() {
        let splats = fixture_splats(include_str!("../tests/fixtures/splats/kernel_bug.txt"), 1);
        check(
            &splats[0],
            SplatKind::Bug,
            "kernel BUG at drivers/gpu/drm/ttm/ttm_bo.c:310!",
            &[
                "ttm_bo_release+0x2a8/0x2b0 [ttm]",
                "ttm_bo_put+0x3c/0x70 [ttm]",
                "drm_gem_vram_object_free+0x1c/0x30 [drm_vram_helper]",
            ],
            2,
        );
    }

    #[test]
    fn plain_bug_lines() {
        let log = "[ 1.1] BUG: scheduling while atomic: swapper/0/0/0x00000002\n\
                   [ 2.1] BUG: Bad page state in process sh  pfn:104c38\n\
                   [ 3.1] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:585\n\
                   [ 4.1] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [irq/24-pciehp:87]\n\
                   [ 5.1] =============================================================================\n\
                   [ 5.2] BUG kmalloc-1k (Not tainted): Object already free\n\
                   [ 6.1] Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN NOPTI\n\
                   [ 6.2] KASAN: null-ptr-deref in range [0x0000000000000008-0x000000000000000f]\n";
        let splats = fixture_splats(log, 6);
        let kinds: Vec<_> = splats.iter().map(|s| s.kind).collect();
        use SplatKind::*;
        assert_eq!(kinds, [Bug, Bug, Bug, Bug, Bug, Oops]);
        assert_eq!(splats[4].line, 5);
        assert_eq!(
            splats[4].first_line,
            "BUG kmalloc-1k (Not tainted): Object already free"
        );
    }

    #[test]
    fn clean_boot_with_noise_has_no_splats() {
        fixture_splats(include_str!("../tests/fixtures/splats/clean_boot.txt"), 0);
        // A lone cut-here and a dev_err about resources are not splats either.
        fixture_splats("[ 1.1] ------------[ cut here ]------------\n", 0);
    }

    #[test]
    fn interleaved_lines_stay_out_of_the_trace() {
        let splats = fixture_splats(include_str!("../tests/fixtures/splats/interleaved.txt"), 1);
        check(
            &splats[0],
            SplatKind::Warning,
            "WARNING: CPU: 0 PID: 245 at drivers/gpu/drm/drm_gem_vram_helper.c:393 \
             drm_gem_vram_vunmap+0x6c/0x80 [drm_vram_helper]",
            &[
                "? __warn+0x89/0x130",
                "? drm_gem_vram_vunmap+0x6c/0x80 [drm_vram_helper]",
                "? report_bug+0x17e/0x1b0",
            ],
            2,
        );
        assert_eq!(splats[0].call_trace.len(), 26);
        assert_eq!(splats[0].call_trace[7], "drm_gem_vunmap+0x3c/0x80");
        assert_eq!(
            splats[0].call_trace[25],
            "entry_SYSCALL_64_after_hwframe+0x76/0x7e"
        );
        // The same without prefixes at all (printk.time=0): unrelated lines are skipped.
        let bare = "------------[ cut here ]------------\n\
                    WARNING: CPU: 0 PID: 1 at drivers/a.c:1 f+0x1/0x2\n\
                    Call Trace:\n <TASK>\n f+0x1/0x2\n\
                    pciehp 0000:00:01.0:pcie004: Slot(1): Link Down\n g+0x3/0x4 [bochs]\n </TASK>\n\
                    ---[ end trace 0000000000000000 ]---\n";
        let splats = fixture_splats(bare, 1);
        check(
            &splats[0],
            SplatKind::Warning,
            "WARNING: CPU: 0 PID: 1 at drivers/a.c:1 f+0x1/0x2",
            &["f+0x1/0x2", "g+0x3/0x4 [bochs]"],
            1,
        );
        assert_eq!(splats[0].time, None);
    }

    /// The first `n` lines of `text`, as the console holds them while a report is printed.
    fn first_lines(text: &str, n: usize) -> String {
        text.split('\n').take(n).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_report_being_printed_is_still_open() {
        let arm64_warn = include_str!("../tests/fixtures/splats/seed_hibmc_warn.txt");
        // Cut right after `Call trace:` (line 24), as a slow KASAN kernel's WARN was.
        assert!(report_still_open(&first_lines(arm64_warn, 24)));
        // In the middle of its frames.
        assert!(report_still_open(&first_lines(arm64_warn, 40)));
        // A cut-here line alone: the WARNING line is yet to come.
        let cut = "[   79.501877] ------------[ cut here ]------------";
        assert!(report_still_open(cut));
        // The headline alone.
        assert!(report_still_open(&first_lines(arm64_warn, 1)));
        // Up to and with its `---[ end trace` line (53): ended.
        assert!(!report_still_open(&first_lines(arm64_warn, 53)));
        assert!(!report_still_open(&first_lines(arm64_warn, 108)));
        // The fixture ends on the next report's cut-here line.
        assert!(report_still_open(arm64_warn));
        // x86: the trace ends with `</TASK>` even before its end-trace line.
        let x86 = include_str!("../tests/fixtures/splats/truncated.txt");
        assert!(report_still_open(&first_lines(x86, 10)));
        assert!(!report_still_open(&first_lines(x86, 18)));
        assert!(!report_still_open(&first_lines(x86, 19)));
        // The next report's headline opens one again.
        assert!(report_still_open(&first_lines(x86, 20)));
        // The fixture's second report (an Oops) is cut in its trace.
        assert!(report_still_open(x86));
    }

    #[test]
    fn logs_without_an_unfinished_report_are_not_open() {
        assert!(!report_still_open(""));
        assert!(!report_still_open(include_str!(
            "../tests/fixtures/splats/clean_boot.txt"
        )));
        for text in [
            include_str!("../tests/fixtures/splats/kasan.txt"),
            include_str!("../tests/fixtures/splats/refcount.txt"),
            include_str!("../tests/fixtures/splats/oops_x86_panic.txt"),
        ] {
            assert!(!report_still_open(text), "{text}");
        }
    }

    #[test]
    fn truncated_log_keeps_the_partial_splat() {
        let splats = fixture_splats(include_str!("../tests/fixtures/splats/truncated.txt"), 2);
        check(
            &splats[0],
            SplatKind::Warning,
            "WARNING: CPU: 1 PID: 87 at drivers/gpu/drm/drm_mode_config.c:545 drm_mode_config_cleanup+0x25b/0x2b0",
            &["? __warn+0x89/0x130", "? drm_mode_config_cleanup+0x25b/0x2b0", "? report_bug+0x17e/0x1b0"],
            2,
        );
        assert_eq!(splats[0].call_trace.len(), 7);
        check(
            &splats[1],
            SplatKind::Oops,
            "BUG: unable to handle page fault for address: ffffc90000a00508",
            &[
                "? __die+0x23/0x70",
                "? page_fault_oops+0x17d/0x4c0",
                "? exc_page_fault+0x7f/0x180",
            ],
            20,
        );
        assert_eq!(splats[1].call_trace.len(), 6);
        assert_eq!(splats[1].time, Some(80.001122));
    }

    #[test]
    fn console_prefix_variants() {
        let log = "Jun 01 12:00:00 vm kernel: [   12.345678] BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 31s!\n\
                   <4>[   13.000000][    T1] ------------[ cut here ]------------\n\
                   <4>[   13.000001][    T1] WARNING: CPU: 0 PID: 1 at drivers/a.c:1 f+0x1/0x2\r\n\
                   \u{1b}[0m[   14.000000][  C0] kernel BUG at mm/slub.c:123!\r\n";
        let splats = fixture_splats(log, 3);
        assert_eq!(
            (splats[0].kind, splats[0].time),
            (SplatKind::Bug, Some(12.345678))
        );
        assert_eq!((splats[1].kind, splats[1].line), (SplatKind::Warning, 2));
        assert_eq!(
            splats[1].first_line,
            "WARNING: CPU: 0 PID: 1 at drivers/a.c:1 f+0x1/0x2"
        );
        assert_eq!(splats[2].first_line, "kernel BUG at mm/slub.c:123!");
        let escaped = "[   15.000000] \\x1b[1;31mkernel BUG at mm/slub.c:7!\\x1b[0m\n";
        assert_eq!(
            fixture_splats(escaped, 1)[0].first_line,
            "kernel BUG at mm/slub.c:7!"
        );
        let caller_only = "[    T1] WARNING: CPU: 0 PID: 1 at drivers/a.c:1 f+0x1/0x2\n";
        assert_eq!(fixture_splats(caller_only, 1)[0].time, None);
    }

    #[test]
    fn a_splat_belongs_to_the_step_it_began_in() {
        let splats = find_splats(include_str!("../tests/fixtures/splats/oops_x86_panic.txt"));
        // The Oops begins on line 5, the panic after it (before line 76).
        assert_eq!(splats.first().map(|s| s.line), Some(5));
        let steps = [(1, "boot"), (5, "unbind"), (6, "rescan"), (200, "later")];
        let of = |s: &Splat| step_of(&steps, |st| st.0, s.line).map(|st| st.1);
        let owners: Vec<_> = splats.iter().map(|s| (s.kind, of(s))).collect();
        assert_eq!(owners.first().map(|o| o.1), Some(Some("unbind")));
        assert_eq!(
            owners.iter().find(|o| o.0 == SplatKind::Panic).map(|o| o.1),
            Some(Some("rescan"))
        );
        // Nothing began before the first step.
        assert_eq!(step_of(&steps[1..], |st| st.0, 4), None);
    }

    #[test]
    fn kind_names_match_serde() {
        for kind in SplatKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<SplatKind>(&json).unwrap(), kind);
        }
        let splat = &find_splats(include_str!("../tests/fixtures/splats/refcount.txt"))[0];
        let json = serde_json::to_string(splat).unwrap();
        assert!(json.contains(r#""kind":"refcount""#), "{json}");
        assert_eq!(&serde_json::from_str::<Splat>(&json).unwrap(), splat);
    }
}
