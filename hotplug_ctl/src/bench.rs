//! `vanish bench`: speed figures as ratios against a baseline measured in the same run, never
//! asserted by a test (the machine may be shared; the figures are for reading).
//!
//! Host side: one trapped register access through the real card server, as QEMU does it (a
//! vfio-user REGION_READ over a unix socket), against a bare socket ping-pong of the same
//! message sizes written with libc send/recv, in the same process.
//!
//! Guest side (`guest.rs`, unless `--host-only`): for each architecture and card, the same
//! kernel, initramfs and agent booted alternately with the vanish card and with QEMU's
//! in-process `bochs-display` on the same root port (the nearest built-in card for hibmc too):
//! boot to driver bound (with where the time goes and the server's access counts), frame fill
//! through the fbdev mapping and a KMS dumb buffer, trapped BAR reads, unbind+bind and
//! remove+rescan cycles (timed in the guest by `vanish-agent bench cycle`, so the agent's own
//! round trips stay out), hot-unplug+replug and surprise+replug cycles (timed from the host,
//! which drives the slot; against the pciehp attention-button floor), and the card server's
//! footprint. `--builtin-set` also times `vanish run`'s built-in set per card. Guests run one
//! at a time, never two.

mod guest;
pub mod stats;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use device::ModelKind;
use images::Arch;
use serde::Serialize;

use crate::accel::Accel;
use crate::qemu::InProcessCard;
use guest::{Card, Guest};
use stats::Spread;

/// `vanish bench` options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A short run for CI: fewer repetitions, shorter fills, x86_64 bochs only, no slot cycles
    /// (it proves the bench works, not a speed).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of each measurement (default 5, 2 with --quick; slot cycles at most 3).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: Option<u32>,
    /// Also write the figures as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Guest architecture(s) (repeatable). Default: x86_64 and aarch64 (x86_64 with --quick).
    #[arg(long)]
    pub arch: Vec<Arch>,
    /// Card(s) to measure (repeatable). Default: bochs, and hibmc on aarch64 (Debian's amd64
    /// kernels have no hibmc driver).
    #[arg(long = "model")]
    pub models: Vec<ModelKind>,
    /// The Debian kernel the guests boot.
    #[arg(long, default_value = "6.12")]
    pub debian_kernel: String,
    /// Only the host-side figure (no guest is booted).
    #[arg(long)]
    pub host_only: bool,
    /// Also time `vanish run`'s built-in set per architecture and card (minutes each).
    #[arg(long)]
    pub builtin_set: bool,
    /// Also measure the CI matrix: the built-in set for each of these Debian kernels (comma
    /// separated) x the three cards, `--jobs` sets at a time (tens of minutes).
    #[arg(long, value_name = "KERNELS", value_delimiter = ',')]
    pub matrix: Vec<String>,
    /// Sets the matrix runs at once (each is one TCG guest and its card server).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub jobs: u32,
    /// Where the guests' console, QEMU and server logs go.
    #[arg(long, default_value = "vanish-bench-out")]
    pub out: PathBuf,
}

/// What a figure should be.
#[derive(Clone, Copy, Debug)]
enum Goal {
    None,
    /// median / baseline median at least this.
    RatioAtLeast(f64),
    /// median / baseline median at most this.
    RatioAtMost(f64),
    /// median at least this (in the figure's unit).
    AtLeast(f64),
    /// median at most this.
    AtMost(f64),
}

impl Goal {
    fn text(self, unit: &str) -> String {
        match self {
            Goal::None => "-".into(),
            Goal::RatioAtLeast(r) => format!(">= {r}x"),
            Goal::RatioAtMost(r) => format!("<= {r}x"),
            Goal::AtLeast(v) => format!(">= {v} {unit}"),
            Goal::AtMost(v) => format!("<= {v} {unit}"),
        }
    }

    fn met(self, median: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Goal::None => None,
            Goal::RatioAtLeast(r) => ratio.map(|x| x >= r),
            Goal::RatioAtMost(r) => ratio.map(|x| x <= r),
            Goal::AtLeast(v) => Some(median >= v),
            Goal::AtMost(v) => Some(median <= v),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// Architecture, kernel and card, or "host".
    pub group: String,
    pub name: String,
    pub unit: String,
    pub value: Spread,
    /// What the value is compared with ("" for none).
    pub baseline: String,
    pub baseline_value: Option<Spread>,
    /// value median / baseline median.
    pub ratio: Option<f64>,
    pub goal: String,
    /// Whether the goal is met (None: no goal, or nothing to compare).
    pub met: Option<bool>,
}

fn figure(
    group: &str,
    name: &str,
    unit: &str,
    value: Spread,
    baseline: Option<(&str, Spread)>,
    goal: Goal,
) -> Figure {
    let ratio = baseline.and_then(|(_, b)| stats::ratio(value.median, b.median));
    Figure {
        group: group.to_string(),
        name: name.to_string(),
        unit: unit.to_string(),
        value,
        baseline: baseline.map(|(n, _)| n.to_string()).unwrap_or_default(),
        baseline_value: baseline.map(|(_, b)| b),
        ratio,
        goal: goal.text(unit),
        met: goal.met(value.median, ratio),
    }
}

/// Kernels in the CI matrix the issue sizes (6.1, 6.12, 7.2, 7.3).
const MATRIX_KERNELS: u32 = 4;

/// A baseline that is a fixed number (a floor or a budget), as a spread of one.
fn constant(v: f64) -> Spread {
    Spread::of(&[v])
}

#[derive(Serialize)]
pub struct BenchReport {
    pub host: String,
    pub cpu: String,
    pub quick: bool,
    pub repetitions: u32,
    pub figures: Vec<Figure>,
    /// Measurements that could not be made, with why.
    pub errors: Vec<String>,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the bench; returns the exit code: 2 for a bad `--out`/`--json`, 1 if a measurement
/// could not be made (each is reported and the rest still run, so CI sees what broke), else 0.
/// No speed figure ever changes the exit code.
pub async fn run(args: BenchArgs) -> i32 {
    let reps = args.repeat.unwrap_or(if args.quick { 2 } else { 5 });
    let mut report = BenchReport {
        host: format!(
            "{} cores, {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::env::consts::ARCH
        ),
        cpu: cpu_model(),
        quick: args.quick,
        repetitions: reps,
        figures: Vec::new(),
        errors: Vec::new(),
    };
    let iterations = if args.quick { 5_000 } else { 50_000 };
    match tokio::task::spawn_blocking(move || host_figure(reps, iterations)).await {
        Ok(Ok(f)) => report.figures.push(f),
        Ok(Err(e)) => report.errors.push(format!("host: {e}")),
        Err(e) => report.errors.push(format!("host: {e}")),
    }
    if !args.host_only {
        if let Err(e) = std::fs::create_dir_all(&args.out) {
            eprintln!("vanish bench: --out {}: {e}", args.out.display());
            return crate::exit::USAGE;
        }
        let arches = if !args.arch.is_empty() {
            args.arch.clone()
        } else if args.quick {
            vec![Arch::X86_64]
        } else {
            vec![Arch::X86_64, Arch::Aarch64]
        };
        for arch in arches {
            let models = if !args.models.is_empty() {
                args.models.clone()
            } else if args.quick || arch == Arch::X86_64 {
                vec![ModelKind::Bochs]
            } else {
                vec![ModelKind::Bochs, ModelKind::Hibmc]
            };
            for model in models {
                let group = format!("{arch} {} {}", args.debian_kernel, model.name());
                eprintln!("vanish bench: {group}");
                if let Err(e) = guest_figures(&args, arch, model, reps, &group, &mut report).await {
                    report.errors.push(format!("{group}: {e:#}"));
                }
                if args.builtin_set {
                    match builtin_set(&args, arch, model).await {
                        Ok(s) => report.figures.push(figure(
                            &group,
                            "built-in set wall time (vanish run, boot + 13 scenarios)",
                            "s",
                            constant(s),
                            Some(("budget: 3 min per kernel and card", constant(180.0))),
                            Goal::RatioAtMost(1.0),
                        )),
                        Err(e) => report.errors.push(format!("{group}: built-in set: {e:#}")),
                    }
                }
            }
        }
    }
    if !args.matrix.is_empty() {
        if let Err(e) = std::fs::create_dir_all(&args.out) {
            eprintln!("vanish bench: --out {}: {e}", args.out.display());
            return crate::exit::USAGE;
        }
        matrix(&args, &args.matrix, args.jobs as usize, &mut report).await;
    }
    let sets: Vec<f64> = report
        .figures
        .iter()
        .filter(|f| f.name.starts_with("built-in set wall time"))
        .map(|f| f.value.median)
        .collect();
    if !sets.is_empty() && args.matrix.is_empty() {
        // Derived, and labelled so: this run timed one kernel; a matrix cell of another kernel
        // is assumed to take as long as this kernel's cell for the same card. Cells run one
        // guest at a time (2 cores: a TCG guest and its server fill them).
        let matrix = sets.iter().sum::<f64>() * MATRIX_KERNELS as f64;
        report.figures.push(figure(
            "matrix (derived)",
            &format!(
                "CI matrix {MATRIX_KERNELS} kernels x {} cards, one guest at a time (derived from this run's sets)",
                sets.len()
            ),
            "s",
            constant(matrix),
            Some(("budget: 12 min", constant(720.0))),
            Goal::RatioAtMost(1.0),
        ));
    }
    print_report(&report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("vanish bench: --json {}: {e}", path.display());
            return crate::exit::USAGE;
        }
    }
    if report.errors.is_empty() {
        crate::exit::PASS
    } else {
        crate::exit::FAIL
    }
}

fn host_figure(reps: u32, iterations: usize) -> Result<Figure> {
    let (mut trapped, mut floor) = (Vec::new(), Vec::new());
    for i in 1..=reps {
        let r = device::transport::bench::trapped_read_vs_echo(iterations)?;
        eprintln!(
            "vanish bench: {iterations} trapped reads ({i}/{reps}): median {} ns vs echo floor {} ns",
            r.trapped_read.median_ns, r.echo_floor.median_ns
        );
        trapped.push(r.trapped_read.median_ns as f64 / 1000.0);
        floor.push(r.echo_floor.median_ns as f64 / 1000.0);
    }
    Ok(figure(
        "host",
        "trapped 4-byte register read (vfio-user REGION_READ round trip)",
        "us",
        Spread::of(&trapped),
        Some((
            "bare unix-socket ping-pong, same sizes (libc send/recv)",
            Spread::of(&floor),
        )),
        Goal::RatioAtMost(1.5),
    ))
}

/// A way to take the card away and bring it back.
#[derive(Clone, Copy, Debug)]
enum Cycle {
    UnbindBind,
    RemoveRescan,
    HotUnplug,
    Surprise,
}

impl Cycle {
    fn name(self) -> &'static str {
        match self {
            Cycle::UnbindBind => "unbind+bind",
            Cycle::RemoveRescan => "remove+rescan",
            Cycle::HotUnplug => "hot-unplug+replug",
            Cycle::Surprise => "surprise+replug",
        }
    }
}

/// `n` cycles' times in seconds; the first failure ends them (and is noted).
async fn cycles(g: &mut Guest, cycle: Cycle, n: u32, errors: &mut Vec<String>) -> Vec<f64> {
    let mut v = Vec::new();
    for _ in 0..n {
        let r = match cycle {
            Cycle::UnbindBind => g.unbind_bind().await,
            Cycle::RemoveRescan => g.remove_rescan().await,
            Cycle::HotUnplug => g.unplug_replug(false).await,
            Cycle::Surprise => g.unplug_replug(true).await,
        };
        match r {
            Ok(s) => v.push(s),
            Err(e) => {
                errors.push(format!("{} {}: {e:#}", g.card, cycle.name()));
                break;
            }
        }
    }
    v
}

/// Everything measured on one boot (the first of each side).
#[derive(Default)]
struct Work {
    fbdev_mbs: Vec<f64>,
    fbdev_fps: Vec<f64>,
    kms_mbs: Vec<f64>,
    kms_fps: Vec<f64>,
    read_us: Vec<f64>,
    unbind_bind: Vec<f64>,
    remove_rescan: Vec<f64>,
    hot_unplug: Vec<f64>,
    surprise: Vec<f64>,
    /// Trapped accesses (config + BAR, server count) per unbind+bind, vanish only.
    accesses_per_bind: Option<f64>,
    /// "vblank wait timed out" console lines per unbind+bind.
    vblank_timeouts_per_bind: Option<f64>,
    /// vanish only, alternating with the figures above (the server's default busy poll) in
    /// the same boot: the same reads and unbind+bind with busy polling off.
    read_us_unpolled: Vec<f64>,
    unbind_bind_unpolled: Vec<f64>,
    footprint: Option<guest::Footprint>,
}

async fn workloads(g: &mut Guest, args: &BenchArgs, reps: u32, errors: &mut Vec<String>) -> Work {
    let mut w = Work::default();
    let secs = if args.quick { 1.0 } else { 3.0 };
    let reads = if args.quick { 2_000 } else { 20_000 };
    let side = match g.card {
        Card::Vanish => "vanish",
        Card::InProcess(_) => "in-process",
    };
    let mut note = |what: &str, e: anyhow::Error| errors.push(format!("{side} {what}: {e:#}"));
    for _ in 0..reps {
        match g.fill("fbdev", secs).await {
            Ok((mbs, fps)) => {
                w.fbdev_mbs.push(mbs);
                w.fbdev_fps.push(fps);
            }
            Err(e) => {
                note("fbdev fill", e);
                break;
            }
        }
    }
    for _ in 0..reps {
        match g.fill("kms", secs).await {
            Ok((mbs, fps)) => {
                w.kms_mbs.push(mbs);
                w.kms_fps.push(fps);
            }
            Err(e) => {
                note("kms fill", e);
                break;
            }
        }
    }
    let vanish = g.card == Card::Vanish;
    // Alternating (vanish): the read with busy polling off, then at the default.
    'reads: for _ in 0..reps {
        for unpolled in [true, false] {
            if unpolled && !vanish {
                continue;
            }
            if vanish {
                if let Err(e) = g
                    .set_busy_poll(if unpolled { 0 } else { BUSY_POLL_US })
                    .await
                {
                    note("busy-poll", e);
                    break 'reads;
                }
            }
            match g.reads(reads).await {
                Ok(ns) if unpolled => w.read_us_unpolled.push(ns / 1000.0),
                Ok(ns) => w.read_us.push(ns / 1000.0),
                Err(e) => {
                    note("register reads", e);
                    break 'reads;
                }
            }
        }
    }

    if g.card == Card::Vanish {
        match g.footprint(if args.quick { 2.0 } else { 10.0 }).await {
            Ok(f) => w.footprint = Some(f),
            Err(e) => note("footprint", e),
        }
    }
    let before = g.server_stats().await;
    let timeouts_before = g.console_count(VBLANK_TIMEOUT);
    w.unbind_bind = cycles(g, Cycle::UnbindBind, reps, errors).await;
    let total =
        |s: &device::CardStats| s.config_reads + s.config_writes + s.bar_reads + s.bar_writes;
    if !w.unbind_bind.is_empty() {
        let n = w.unbind_bind.len() as f64;
        w.vblank_timeouts_per_bind =
            Some((g.console_count(VBLANK_TIMEOUT) - timeouts_before) as f64 / n);
        if let (Some(a), Some(b)) = (before, g.server_stats().await) {
            w.accesses_per_bind = Some(total(&b).saturating_sub(total(&a)) as f64 / n);
        }
    }
    if vanish && !w.unbind_bind.is_empty() {
        match g.set_busy_poll(0).await {
            Ok(()) => w.unbind_bind_unpolled = cycles(g, Cycle::UnbindBind, reps, errors).await,
            Err(e) => errors.push(format!("vanish busy-poll: {e:#}")),
        }
        if let Err(e) = g.set_busy_poll(BUSY_POLL_US).await {
            errors.push(format!("vanish busy-poll: {e:#}"));
        }
    }
    w.remove_rescan = cycles(g, Cycle::RemoveRescan, reps, errors).await;
    if !args.quick {
        let slot_reps = reps.min(3);
        w.hot_unplug = cycles(g, Cycle::HotUnplug, slot_reps, errors).await;
        if g.card == Card::Vanish {
            w.surprise = cycles(g, Cycle::Surprise, slot_reps, errors).await;
        }
    }
    w
}

/// The busy-poll window the bench compares against none (`vanish ctl busy-poll`): the
/// server's default, which every other vanish figure runs with.
const BUSY_POLL_US: u64 = crate::serve::DEFAULT_BUSY_POLL_US;

/// What drm_atomic_helper_wait_for_vblanks logs when a vblank never came.
const VBLANK_TIMEOUT: &str = "vblank wait timed out";

/// pciehp's attention-button delay: `device_del` presses the button and pciehp waits 5 s
/// (the abort window) before powering the slot off; QEMU's hot-add sets presence without a
/// button press, so the replug adds no second delay. (The kernel's own 1 s settle after power
/// off, pciehp's remove_board, is part of what is measured, not of the floor.)
const BUTTON_DELAY: f64 = 5.0;
const SLOT_FLOOR: f64 = BUTTON_DELAY;

async fn guest_figures(
    args: &BenchArgs,
    arch: Arch,
    model: ModelKind,
    reps: u32,
    group: &str,
    report: &mut BenchReport,
) -> Result<()> {
    let out = args.out.join(format!("{arch}-{}", model.name()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let vcfg = guest::run_config(arch, model, &args.debian_kernel, &out.join("vanish"));
    let bcfg = guest::run_config(
        arch,
        ModelKind::Bochs,
        &args.debian_kernel,
        &out.join("in-process"),
    );
    for d in [&vcfg.out, &bcfg.out] {
        std::fs::create_dir_all(d)?;
    }
    // The initramfs files live here until both rigs are done.
    let files = tempfile::Builder::new().prefix("vanish-bench-").tempdir()?;
    let (vdir, bdir) = (files.path().join("vanish"), files.path().join("in-process"));
    std::fs::create_dir_all(&vdir)?;
    std::fs::create_dir_all(&bdir)?;
    let vrig = crate::runner::provision(&vcfg, &vdir, Accel::Tcg).await?;
    let brig = crate::runner::provision(&bcfg, &bdir, Accel::Tcg).await?;
    let vram_mib = (vcfg.card.vram_size() >> 20) as u32;
    let in_process = Card::InProcess(InProcessCard::BochsDisplay { vram_mib });
    let (mut vboot, mut bboot) = (Vec::new(), Vec::new());
    let (mut vwork, mut bwork) = (Work::default(), Work::default());
    let mut breakdown = Vec::new();
    // Boots alternate between the sides so host noise hits both alike.
    for rep in 0..reps {
        for (card, cfg, rig) in [(Card::Vanish, &vcfg, &vrig), (in_process, &bcfg, &brig)] {
            let mut g = match Guest::boot(cfg, rig, card).await {
                Ok(g) => g,
                Err(e) => {
                    report.errors.push(format!("{group}: {card} boot: {e:#}"));
                    continue;
                }
            };
            eprintln!(
                "vanish bench: {group} {card} boot {}/{reps}: bound at {:.2} s",
                rep + 1,
                g.times.bound
            );
            if card == Card::Vanish {
                vboot.push(g.times.clone());
                breakdown.push(g.stats_at_fb.clone());
            } else {
                bboot.push(g.times.clone());
            }
            if rep == 0 {
                let w = workloads(&mut g, args, reps, &mut report.errors).await;
                if card == Card::Vanish {
                    vwork = w;
                } else {
                    bwork = w;
                }
            }
            g.shutdown().await;
        }
    }
    let f = &mut report.figures;
    let base = "in-process bochs-display, same kernel";
    let sp = Spread::of;
    let pick = |v: &[guest::BootTimes], f: fn(&guest::BootTimes) -> f64| -> Vec<f64> {
        v.iter().map(f).collect()
    };
    let both = |n: &str, u: &str, a: &[f64], b: &[f64], goal: Goal| -> Option<Figure> {
        (!a.is_empty()).then(|| {
            figure(
                group,
                n,
                u,
                sp(a),
                (!b.is_empty()).then(|| (base, sp(b))),
                goal,
            )
        })
    };
    let per_min = |v: &[f64]| -> Vec<f64> { v.iter().map(|s| 60.0 / s).collect() };
    f.extend(
        [
            both(
                "boot: QEMU start to driver bound",
                "s",
                &pick(&vboot, |t| t.bound),
                &pick(&bboot, |t| t.bound),
                Goal::RatioAtMost(1.1),
            ),
            both(
                "  of which QEMU start to first console line",
                "s",
                &pick(&vboot, |t| t.first_line),
                &pick(&bboot, |t| t.first_line),
                Goal::None,
            ),
            both(
                "  of which first line to /init",
                "s",
                &pick(&vboot, |t| t.init - t.first_line),
                &pick(&bboot, |t| t.init - t.first_line),
                Goal::None,
            ),
            both(
                "  of which /init to bound (module load, probe)",
                "s",
                &pick(&vboot, |t| t.bound - t.init),
                &pick(&bboot, |t| t.bound - t.init),
                Goal::None,
            ),
            both(
                "boot: QEMU start to fbdev up (first connector probe: EDID)",
                "s",
                &pick(&vboot, |t| t.fb_up),
                &pick(&bboot, |t| t.fb_up),
                Goal::RatioAtMost(1.1),
            ),
            both(
                "  of which bound to fbdev up",
                "s",
                &pick(&vboot, |t| t.fb_up - t.bound),
                &pick(&bboot, |t| t.fb_up - t.bound),
                Goal::None,
            ),
            both(
                "fill /dev/fb0 mmap",
                "MB/s",
                &vwork.fbdev_mbs,
                &bwork.fbdev_mbs,
                Goal::RatioAtLeast(0.9),
            ),
            both(
                "fill /dev/fb0 mmap",
                "frames/s",
                &vwork.fbdev_fps,
                &bwork.fbdev_fps,
                Goal::None,
            ),
            both(
                "fill KMS dumb buffer (scanout)",
                "MB/s",
                &vwork.kms_mbs,
                &bwork.kms_mbs,
                Goal::RatioAtLeast(0.9),
            ),
            both(
                "fill KMS dumb buffer (scanout)",
                "frames/s",
                &vwork.kms_fps,
                &bwork.kms_fps,
                Goal::None,
            ),
            both(
                "guest 32-bit BAR read (sysfs resource mmap)",
                "us",
                &vwork.read_us,
                &bwork.read_us,
                Goal::None,
            ),
            both(
                "unbind+bind",
                "cycles/min",
                &per_min(&vwork.unbind_bind),
                &per_min(&bwork.unbind_bind),
                Goal::AtLeast(60.0),
            ),
            both(
                "remove+rescan",
                "cycles/min",
                &per_min(&vwork.remove_rescan),
                &per_min(&bwork.remove_rescan),
                Goal::None,
            ),
        ]
        .into_iter()
        .flatten(),
    );
    // The slot cycle against the built-in card's: pciehp's own waits (the 5 s button, then
    // 1 s after power-off in remove_board) are in both, so this ratio is what vanish adds.
    if !vwork.hot_unplug.is_empty() && !bwork.hot_unplug.is_empty() {
        f.push(figure(
            group,
            "hot-unplug+replug cycle, vanish vs the in-process card",
            "s",
            sp(&vwork.hot_unplug),
            Some((base, sp(&bwork.hot_unplug))),
            Goal::None,
        ));
    }
    // The busy-poll before/after, both sides from the same vanish boot, alternating.
    let unpolled = "vanish, busy poll off: epoll after every reply (same boot)";
    for (name, unit, busy, plain) in [
        (
            "guest 32-bit BAR read, server busy-polling",
            "us",
            vwork.read_us.clone(),
            vwork.read_us_unpolled.clone(),
        ),
        (
            "unbind+bind, server busy-polling",
            "cycles/min",
            per_min(&vwork.unbind_bind),
            per_min(&vwork.unbind_bind_unpolled),
        ),
    ] {
        if !busy.is_empty() && !plain.is_empty() {
            f.push(figure(
                group,
                &format!("{name} {BUSY_POLL_US} us"),
                unit,
                sp(&busy),
                Some((unpolled, sp(&plain))),
                Goal::None,
            ));
        }
    }
    if let Some(n) = vwork.vblank_timeouts_per_bind {
        f.push(figure(
            group,
            "\"vblank wait timed out\" per unbind+bind (vanish; guest console)",
            "lines",
            constant(n),
            bwork
                .vblank_timeouts_per_bind
                .map(|b| ("in-process bochs-display", constant(b))),
            Goal::None,
        ));
    }
    let floor = format!("floor: {BUTTON_DELAY} s attention-button delay");
    for (name, v) in [
        ("hot-unplug+replug cycle (vanish)", &vwork.hot_unplug),
        (
            "hot-unplug+replug cycle (in-process bochs-display)",
            &bwork.hot_unplug,
        ),
        ("surprise+replug cycle (vanish)", &vwork.surprise),
    ] {
        if !v.is_empty() {
            f.push(figure(
                group,
                name,
                "s",
                sp(v),
                Some((&floor, constant(SLOT_FLOOR))),
                Goal::RatioAtMost(1.2),
            ));
        }
    }
    // Where the boot's trapped accesses went: the server's counters when the driver had bound.
    let counts: Vec<_> = breakdown.into_iter().flatten().collect();
    if !counts.is_empty() {
        let c = |g: fn(&device::CardStats) -> u64| -> Spread {
            sp(&counts.iter().map(|s| g(s) as f64).collect::<Vec<_>>())
        };
        f.push(figure(
            group,
            "boot: config-space accesses to fbdev up (server count)",
            "accesses",
            c(|s| s.config_reads + s.config_writes),
            None,
            Goal::None,
        ));
        f.push(figure(
            group,
            "boot: BAR register accesses to fbdev up (server count)",
            "accesses",
            c(|s| s.bar_reads + s.bar_writes),
            None,
            Goal::None,
        ));
        if let Some(read) = (!vwork.read_us.is_empty()).then(|| sp(&vwork.read_us).median) {
            // An estimate, labelled as one: the accesses times this boot's measured guest read.
            f.push(figure(
                group,
                "boot: est. time in trapped accesses (count x guest read)",
                "s",
                c(|s| s.config_reads + s.config_writes + s.bar_reads + s.bar_writes)
                    .scaled(read / 1e6),
                None,
                Goal::None,
            ));
        }
    }
    if let Some(n) = vwork.accesses_per_bind {
        f.push(figure(
            group,
            "trapped accesses per unbind+bind (server count)",
            "accesses",
            constant(n),
            None,
            Goal::None,
        ));
        if let Some(host) = report_host_median(f) {
            // What the server and its socket can account for: the host-side round trip (the
            // same model, no QEMU, no guest) times the count, against the measured cycle.
            if let Some(cycle) =
                (!vwork.unbind_bind.is_empty()).then(|| sp(&vwork.unbind_bind).median)
            {
                let server_share = n * host / 1e6;
                f.push(figure(
                    group,
                    "  share of an unbind+bind the server round trips explain",
                    "s",
                    constant(server_share),
                    Some(("measured unbind+bind cycle", constant(cycle))),
                    Goal::None,
                ));
            }
        }
    }
    if let Some(fp) = &vwork.footprint {
        let budget = f64::from(vram_mib) + 16.0;
        f.push(figure(
            group,
            "card server RSS",
            "MiB",
            constant(fp.rss_kib as f64 / 1024.0),
            Some(("budget: VRAM + 16 MiB", constant(budget))),
            Goal::RatioAtMost(1.0),
        ));
        f.push(figure(
            group,
            &format!(
                "card server CPU, idle guest + vblank waiter ({})",
                fp.vblank_waiter
            ),
            "% core",
            constant(fp.cpu_percent),
            None,
            Goal::AtMost(1.0),
        ));
        f.push(figure(
            group,
            "MSIs sent by the server meanwhile",
            "per s",
            constant(fp.msi_per_second),
            None,
            Goal::None,
        ));
    }
    Ok(())
}

/// The host-side trapped read median (us), if it was measured in this run.
fn report_host_median(figures: &[Figure]) -> Option<f64> {
    figures
        .iter()
        .find(|f| f.group == "host")
        .map(|f| f.value.median)
}

impl Spread {
    /// Every statistic times `k`.
    pub fn scaled(self, k: f64) -> Spread {
        Spread {
            min: self.min * k,
            median: self.median * k,
            max: self.max * k,
            n: self.n,
        }
    }
}

/// `vanish run`'s built-in set for one card, as a child process; its wall time in seconds.
async fn builtin_set(args: &BenchArgs, arch: Arch, model: ModelKind) -> Result<f64> {
    let out = args.out.join(format!("{arch}-{}-set", model.name()));
    timed_set(&args.debian_kernel, arch, model, &out).await
}

/// One `vanish run` of the built-in set (a child process, as CI runs it); its wall time.
async fn timed_set(
    kernel: &str,
    arch: Arch,
    model: ModelKind,
    out: &std::path::Path,
) -> Result<f64> {
    let exe = std::env::current_exe().context("finding the vanish executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["run", "--arch", &arch.to_string(), "--model", model.name()])
        .args(["--debian-kernel", kernel, "--accel", "tcg", "--out"])
        .arg(out)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    crate::die_with_parent(&mut cmd);
    let t = Instant::now();
    let status = cmd.status().await?;
    let secs = t.elapsed().as_secs_f64();
    // 0 pass, 1 a scenario failed: both ran the whole set; anything else did not.
    match status.code() {
        Some(0 | 1) => Ok(secs),
        _ => anyhow::bail!("vanish run exited {status}; see {}", out.display()),
    }
}

/// The cards of a matrix row: Debian's amd64 kernels have no hibmc driver.
const MATRIX_CARDS: [(Arch, ModelKind); 3] = [
    (Arch::X86_64, ModelKind::Bochs),
    (Arch::Aarch64, ModelKind::Bochs),
    (Arch::Aarch64, ModelKind::Hibmc),
];

/// The measured CI matrix: the built-in set for every kernel x card, `jobs` at a time, after
/// provisioning every cell (downloads are not what a nightly run pays). Pushes each cell's time
/// and the whole matrix's wall time.
async fn matrix(args: &BenchArgs, kernels: &[String], jobs: usize, report: &mut BenchReport) {
    let cells: Vec<(String, Arch, ModelKind)> = kernels
        .iter()
        .flat_map(|k| MATRIX_CARDS.iter().map(move |&(a, m)| (k.clone(), a, m)))
        .collect();
    for (kernel, arch, model) in &cells {
        let cfg = guest::run_config(*arch, *model, kernel, &args.out.join("matrix-provision"));
        let dir = match tempfile::Builder::new().prefix("vanish-bench-").tempdir() {
            Ok(d) => d,
            Err(e) => return report.errors.push(format!("matrix: {e}")),
        };
        if let Err(e) = crate::runner::provision(&cfg, dir.path(), Accel::Tcg).await {
            return report.errors.push(format!(
                "matrix: provisioning {kernel} {arch} {}: {e:#}",
                model.name()
            ));
        }
    }
    eprintln!(
        "vanish bench: matrix of {} sets ({} kernels x {} cards), {jobs} at a time",
        cells.len(),
        kernels.len(),
        MATRIX_CARDS.len()
    );
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs));
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (kernel, arch, model) in cells {
        let gate = std::sync::Arc::clone(&gate);
        let out = args
            .out
            .join(format!("matrix-{kernel}-{arch}-{}", model.name()));
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let r = timed_set(&kernel, arch, model, &out).await;
            (kernel, arch, model, r)
        });
    }
    let mut ok = true;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((kernel, arch, model, Ok(secs))) => {
                eprintln!(
                    "vanish bench: matrix {kernel} {arch} {}: {secs:.0} s",
                    model.name()
                );
                report.figures.push(figure(
                    &format!("matrix {arch} {kernel} {}", model.name()),
                    &format!("built-in set wall time, {jobs} sets at a time"),
                    "s",
                    constant(secs),
                    Some(("budget: 3 min per kernel and card", constant(180.0))),
                    Goal::RatioAtMost(1.0),
                ));
            }
            Ok((kernel, arch, model, Err(e))) => {
                ok = false;
                report
                    .errors
                    .push(format!("matrix {kernel} {arch} {}: {e:#}", model.name()));
            }
            Err(e) => {
                ok = false;
                report.errors.push(format!("matrix: {e}"));
            }
        }
    }
    if ok {
        report.figures.push(figure(
            "matrix (measured)",
            &format!(
                "CI matrix {} kernels x {} cards, {jobs} at a time",
                kernels.len(),
                MATRIX_CARDS.len()
            ),
            "s",
            constant(started.elapsed().as_secs_f64()),
            Some(("budget: 12 min", constant(720.0))),
            Goal::RatioAtMost(1.0),
        ));
    }
}

fn print_report(report: &BenchReport) {
    println!(
        "vanish bench · {} · {} · {} repetitions{}",
        report.host,
        report.cpu,
        report.repetitions,
        if report.quick { " (quick)" } else { "" }
    );
    println!(
        "{:<22} {:<62} {:>10} {:>10} {:>10} {:>10} {:>7}  GOAL",
        "GROUP", "FIGURE", "MIN", "MEDIAN", "MAX", "BASELINE", "RATIO"
    );
    for f in &report.figures {
        let base = f
            .baseline_value
            .map_or("-".to_string(), |b| format!("{:.2}", b.median));
        let ratio = f.ratio.map_or("-".to_string(), |r| format!("{r:.2}x"));
        let met = match f.met {
            Some(true) => " ok",
            Some(false) => " MISSED",
            None => "",
        };
        println!(
            "{:<22} {:<62} {:>10.2} {:>10.2} {:>10.2} {:>10} {:>7}  {}{} [{} n={}]",
            f.group,
            format!("{} ({})", f.name, f.unit),
            f.value.min,
            f.value.median,
            f.value.max,
            base,
            ratio,
            f.goal,
            met,
            if f.baseline.is_empty() {
                "no baseline"
            } else {
                &f.baseline
            },
            f.value.n
        );
    }
    for e in &report.errors {
        println!("not measured: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_judge_their_goals() {
        let v = Spread::of(&[9.0, 10.0, 11.0]);
        let b = Spread::of(&[20.0]);
        let f = figure("g", "n", "MB/s", v, Some(("b", b)), Goal::RatioAtLeast(0.9));
        assert_eq!(f.ratio, Some(0.5));
        assert_eq!(f.met, Some(false));
        let f = figure("g", "n", "s", v, Some(("b", b)), Goal::RatioAtMost(1.1));
        assert_eq!(f.met, Some(true));
        let f = figure("g", "n", "cycles/min", v, None, Goal::AtLeast(60.0));
        assert_eq!((f.ratio, f.met), (None, Some(false)));
        let f = figure("g", "n", "%", v, None, Goal::AtMost(10.0));
        assert_eq!(f.met, Some(true));
        // Nothing to compare with: no verdict on a ratio goal.
        let f = figure("g", "n", "s", v, None, Goal::RatioAtMost(1.1));
        assert_eq!(f.met, None);
        assert_eq!(Goal::AtLeast(60.0).text("cycles/min"), ">= 60 cycles/min");
    }

    #[test]
    fn scaled_spreads_keep_their_count() {
        let s = Spread::of(&[1.0, 2.0, 3.0]).scaled(2.0);
        assert_eq!((s.min, s.median, s.max, s.n), (2.0, 4.0, 6.0, 3));
    }

    #[test]
    fn the_in_process_card_sits_on_the_hotplug_port() {
        let card =
            InProcessCard::BochsDisplay { vram_mib: 16 }.device_json(&crate::slot::Slot::default());
        assert_eq!(
            card.to_string(),
            r#"{"bus":"rp1","driver":"bochs-display","id":"gpu0","vgamem":16777216}"#
        );
    }
}
