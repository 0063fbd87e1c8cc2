//! `vanish bench`: speed figures as ratios against a baseline measured in the same run, never
//! asserted by a test (the machine may be shared; the figures are for reading).
//!
//! Measured today: one trapped register access through the real card server, as QEMU does it
//! (a vfio-user REGION_READ over a unix socket), against a bare socket ping-pong of the same
//! message sizes written with libc send/recv (the "C-level echo floor"), in the same process.
//! Not yet measured (tracker issue 11): guest framebuffer fill against QEMU's in-process
//! bochs-display, boot-to-bound and hotplug cycle rates against their floors, footprint.

use std::path::PathBuf;

use serde::Serialize;

/// `vanish bench` options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A short run for CI: fewer repetitions (it proves the bench works, not a speed).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of each measurement (default 5, 2 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: Option<u32>,
    /// Also write the figures as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Figure {
    name: String,
    unit: &'static str,
    min: f64,
    median: f64,
    max: f64,
    baseline: String,
    baseline_median: f64,
    /// median / baseline median.
    ratio: f64,
    goal: String,
}

#[derive(Serialize)]
struct BenchReport {
    host: String,
    repetitions: u32,
    figures: Vec<Figure>,
}

fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    (at(0), at(v.len() / 2), at(v.len().saturating_sub(1)))
}

/// Runs the bench; returns the exit code.
pub fn run(args: &BenchArgs) -> i32 {
    let reps = args.repeat.unwrap_or(if args.quick { 2 } else { 5 });
    let iterations = if args.quick { 5_000 } else { 50_000 };
    let (mut trapped, mut floor) = (Vec::new(), Vec::new());
    for i in 1..=reps {
        match device::transport::bench::trapped_read_vs_echo(iterations) {
            Ok(r) => {
                eprintln!(
                    "vanish bench: {} trapped reads ({i}/{reps}): median {} ns vs echo floor {} ns",
                    iterations, r.trapped_read.median_ns, r.echo_floor.median_ns
                );
                trapped.push(r.trapped_read.median_ns as f64 / 1000.0);
                floor.push(r.echo_floor.median_ns as f64 / 1000.0);
            }
            Err(e) => {
                eprintln!("vanish bench: {e}");
                return crate::exit::SKIP;
            }
        }
    }
    let (tmin, tmed, tmax) = spread(trapped);
    let (_, fmed, _) = spread(floor);
    let report = BenchReport {
        host: format!(
            "{} cores, {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::env::consts::ARCH
        ),
        repetitions: reps,
        figures: vec![Figure {
            name: "trapped 4-byte register read (vfio-user REGION_READ round trip)".into(),
            unit: "us",
            min: tmin,
            median: tmed,
            max: tmax,
            baseline: "bare unix-socket ping-pong, same message sizes (libc send/recv)".into(),
            baseline_median: fmed,
            ratio: if fmed > 0.0 { tmed / fmed } else { 0.0 },
            goal: "<= 1.2x".into(),
        }],
    };
    println!("vanish bench · {} · {} repetitions", report.host, reps);
    println!(
        "{:<66} {:>8} {:>8} {:>8} {:>10} {:>6}",
        "FIGURE", "MIN", "MEDIAN", "MAX", "BASELINE", "RATIO"
    );
    for f in &report.figures {
        println!(
            "{:<66} {:>6.2}{} {:>6.2}{} {:>6.2}{} {:>8.2}{} {:>5.2}x  (goal {})",
            f.name,
            f.min,
            f.unit,
            f.median,
            f.unit,
            f.max,
            f.unit,
            f.baseline_median,
            f.unit,
            f.ratio,
            f.goal
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("vanish bench: --json {}: {e}", path.display());
            return crate::exit::USAGE;
        }
    }
    crate::exit::PASS
}
