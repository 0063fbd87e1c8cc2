//! `vanish`: an out-of-process PCI display card for QEMU that disappears on cue.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use device::{CardSpec, ModelKind};
use hotplug_ctl::accel::{self, AccelChoice};
use hotplug_ctl::exit;
use hotplug_ctl::fingerprint::JudgePattern;
use hotplug_ctl::output::KcidbMeta;
use hotplug_ctl::runner::{self, KernelChoice, RunConfig};
use hotplug_ctl::scenario::{self, Removal, Scenario};
use hotplug_ctl::serve::{self, ServeConfig};
use hotplug_ctl::verdict::{self, Baseline, Policy};
use images::Arch;

#[derive(Parser)]
#[command(
    name = "vanish",
    version,
    about = "Boot a kernel with an emulated display card, then make the card vanish"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a guest kernel with the card and run scenarios against its driver.
    Run(Box<RunArgs>),
    /// Serve one card on a vfio-user socket for a QEMU you start yourself.
    Serve(ServeArgs),
    /// List the built-in scenarios.
    List,
    /// Speed figures, each as a ratio against a baseline measured in the same run.
    Bench(hotplug_ctl::bench::BenchArgs),
    /// Write a baseline from a run's report.json: DIR/MODEL-ARCH-fails.txt (drm-ci format) and
    /// DIR/MODEL-ARCH.toml (every fingerprint that failed a scenario, pinned to it).
    Baseline {
        /// A report.json written by `vanish run`.
        report: PathBuf,
        /// Directory to write the baseline into (created).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the kernel config fragment a vanish guest needs, or apply it to a build directory.
    Kconfig(hotplug_ctl::kconfig::KconfigArgs),
    /// List the Debian kernel series vanish knows, the newest version of each, and which are
    /// cached.
    Kernels {
        /// Guest architecture.
        #[arg(long, default_value = "aarch64", value_parser = hotplug_ctl::arch_value_parser(), ignore_case = true)]
        arch: Arch,
        /// Do not look the newest versions up (no network): only the series and the cache.
        #[arg(long)]
        offline: bool,
    },
    /// Control a running card: status, dead, alive, screenshot PATH, crash; with --qmp also
    /// unplug hot-unplug|surprise|server-crash and replug --socket PATH.
    Ctl {
        /// The server's control socket (`vanish serve --control`).
        #[arg(long)]
        control: Option<PathBuf>,
        /// QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`), for slot verbs.
        #[arg(long)]
        qmp: Option<PathBuf>,
        /// QEMU id of the card device.
        #[arg(long, default_value = hotplug_ctl::slot::CARD_ID)]
        device_id: String,
        /// QEMU id of the root port the card sits on.
        #[arg(long, default_value = hotplug_ctl::slot::ROOT_PORT_ID)]
        bus: String,
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        verb: Vec<String>,
    },
}

#[derive(clap::Args)]
struct CardArgs {
    /// Card to emulate: hibmc (19e5:1711, hibmc-drm) or bochs (1234:1111, bochs-drm).
    #[arg(long, default_value = "hibmc")]
    model: ModelKind,
    /// VRAM (BAR0) size in bytes; a power of two. Default: 32 MiB for hibmc, 16 MiB for bochs.
    #[arg(long, value_parser = parse_size)]
    vram_size: Option<u64>,
    /// Serve this EDID (128 or 256 bytes) instead of the default 1024x768 monitor.
    #[arg(long, conflicts_with = "no_monitor")]
    edid: Option<PathBuf>,
    /// No monitor attached: the card serves no EDID.
    #[arg(long)]
    no_monitor: bool,
}

impl CardArgs {
    /// The card these flags describe, checked once (see `device::CardSpec::new`).
    fn spec(&self) -> Result<CardSpec, serve::UsageError> {
        serve::card_spec(
            self.model,
            self.vram_size,
            self.edid.as_deref(),
            self.no_monitor,
        )
    }
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    card: CardArgs,
    /// Guest architecture: aarch64 (virt) or x86_64 (q35). Default: a --kernel tree's own
    /// architecture, else aarch64.
    #[arg(long, value_parser = hotplug_ctl::arch_value_parser(), ignore_case = true)]
    arch: Option<Arch>,
    /// Your kernel: an image (arch/arm64/boot/Image, arch/x86/boot/bzImage), or a kernel build
    /// directory / built source tree (in-tree or O=), whose image, modules, release and git
    /// commit vanish finds itself.
    #[arg(long, conflicts_with = "debian_kernel")]
    kernel: Option<PathBuf>,
    /// Modules for --kernel: an INSTALL_MOD_PATH tree (holding lib/modules/RELEASE).
    #[arg(long, requires = "kernel")]
    modules: Option<PathBuf>,
    /// A Debian kernel: 5.10 (bullseye), 6.1 (bookworm), 6.12 (trixie), 7.2 (sid), 7.3
    /// (trixie-backports), or an exact ABI like 6.12.57+deb13 (see `vanish kernels`).
    #[arg(long, default_value = "6.12")]
    debian_kernel: String,
    /// Accelerator: kvm where /dev/kvm works and the guest is the host's architecture (auto),
    /// always kvm (fail otherwise), or always tcg.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    accel: AccelChoice,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// Guest memory, e.g. 1G or 2048M.
    #[arg(long, default_value = "1G", value_parser = parse_memory)]
    memory: u32,
    /// An extra QEMU argument, appended as given (repeatable: --qemu-opt=-s --qemu-opt=-S).
    #[arg(long = "qemu-opt", value_name = "ARG", allow_hyphen_values = true)]
    qemu_opts: Vec<String>,
    /// Print the exact QEMU and card-server command lines; start nothing.
    #[arg(long)]
    dry_run: bool,
    /// Stream the guest's console to stderr while it runs.
    #[arg(long)]
    console: bool,
    /// Judge against a baseline: a drm-ci style *-fails.txt / *-flakes.txt / *-skips.txt, a
    /// vanish expectations *.toml, or a directory of them. Known failures exit 0.
    #[arg(long, value_name = "DIR|FILE")]
    baseline: Option<PathBuf>,
    /// Only splats with this fingerprint (or matching this regex) make the verdict bad; the
    /// rest are still reported. Repeatable.
    #[arg(long = "judge-by", value_name = "FINGERPRINT|REGEX")]
    judge_by: Vec<JudgePattern>,
    /// A scenario the baseline expects to fail that passed makes the run fail too.
    #[arg(long)]
    fail_on_fixed: bool,
    /// Boot and run everything N times; report per scenario how often it failed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Do not set Bus Master Enable before the driver loads (as firmware that never drove the
    /// card): a driver that does not set it itself loses its MSIs from the first probe on.
    #[arg(long)]
    no_firmware_bme: bool,
    /// KCIDB origin (default: vanish).
    #[arg(long, default_value = "vanish")]
    kcidb_origin: String,
    /// KCIDB checkout: the kernel's git commit (default: from --kernel's tree, if any).
    #[arg(long)]
    git_commit: Option<String>,
    /// KCIDB checkout: the kernel tree's repository URL.
    #[arg(long)]
    git_url: Option<String>,
    /// KCIDB checkout: the tree's name (e.g. mainline, drm-misc).
    #[arg(long)]
    tree_name: Option<String>,
    /// Where to write report.json, console.log, screenshot.png.
    #[arg(long, default_value = "vanish-out")]
    out: PathBuf,
    /// Extra guest kernel command line, e.g. "drm.debug=0x4 slub_debug=FZP".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    append: String,
    /// Seconds to wait for the guest to boot.
    #[arg(long, default_value_t = 180)]
    boot_timeout: u64,
    /// Scenario to run after the boot checks: a built-in name (see `vanish list`), a TOML file,
    /// or `boot` for the boot checks alone. Repeatable. Default: the whole built-in set.
    #[arg(long = "scenario", value_name = "NAME|FILE", conflicts_with = "unplug")]
    scenarios: Vec<String>,
    /// Remove the card in this way and bring it back: unbind, remove-rescan, hot-unplug,
    /// surprise, server-crash.
    #[arg(long, value_name = "MODE")]
    unplug: Option<Removal>,
    /// Cycles of --unplug in one boot.
    #[arg(long, default_value_t = 1, requires = "unplug", value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
    /// Also write the results as JUnit XML (one testcase per scenario).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write the results as KernelCI KCIDB v4 JSON.
    #[arg(long, value_name = "FILE")]
    kcidb: Option<PathBuf>,
    /// Copy a file into the guest with its mode: HOST[:GUEST] (default GUEST
    /// /usr/local/bin/NAME, on the guest's PATH). Repeatable. A dynamically linked ELF needs
    /// --guest-sysroot.
    #[arg(long = "guest-file", value_name = "HOST[:GUEST]")]
    guest_files: Vec<String>,
    /// Copy a directory tree into the guest: HOST[:GUEST] (default GUEST /opt/NAME). Repeatable.
    #[arg(long = "guest-dir", value_name = "HOST[:GUEST]")]
    guest_dirs: Vec<String>,
    /// Where the interpreter and libraries of dynamically linked --guest-file programs come
    /// from (resolved like ldd in DIR's lib directories, copied to the same paths).
    #[arg(long, value_name = "DIR")]
    guest_sysroot: Option<PathBuf>,
    /// Boot the card, then give this terminal the guest's shell (no scenarios); card verbs
    /// work from another terminal with the printed `vanish ctl` line. Exit the shell to end.
    #[arg(long, conflicts_with_all = ["scenarios", "unplug", "runs"])]
    shell: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    card: CardArgs,
    /// The whole card as JSON (what `vanish run` hands the servers it starts; the card flags
    /// are for people). Checked by the same rules.
    #[arg(long, hide = true, conflicts_with_all = ["vram_size", "edid", "no_monitor"])]
    spec_json: Option<String>,
    /// vfio-user socket to listen on (must not exist).
    #[arg(long)]
    socket: PathBuf,
    /// Control socket for `vanish ctl` (created mode 0600).
    #[arg(long)]
    control: Option<PathBuf>,
    /// After a reply inside a streak of quick requests, keep polling the socket this long for
    /// the next one (0: always sleep in epoll; at most 1000).
    #[arg(long, value_name = "US", default_value_t = serve::DEFAULT_BUSY_POLL_US,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    busy_poll_us: u64,
}

/// Guest memory in MiB: 128 MiB to 64 GiB.
fn parse_memory(s: &str) -> Result<u32, String> {
    let bytes = parse_size(s)?;
    let mib = bytes >> 20;
    if bytes % (1 << 20) != 0 || !(128..=65536).contains(&mib) {
        return Err(format!(
            "'{s}' is not a whole number of MiB from 128M to 64G"
        ));
    }
    Ok(mib as u32)
}

/// Sizes like 33554432, 0x2000000, 32M, 32MiB, 1G.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t
        .trim_end_matches("iB")
        .trim_end_matches('B')
        .char_indices()
        .last()
    {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n = match num.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => num.parse(),
    }
    .map_err(|_| format!("'{s}' is not a size (try 32M or 33554432)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vanish: cannot start the async runtime: {e}");
            return ExitCode::from(exit::SKIP as u8);
        }
    };
    let code = runtime.block_on(async {
        // SIGTERM (timeout, systemd, CI cancellation) and SIGHUP end a run like Ctrl-C: the
        // children are stopped, the sockets and temp dirs removed, a partial report written.
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("vanish: cannot install signal handlers");
            return exit::SKIP;
        };
        let stopped = |name: &str, code: i32| {
            eprintln!("vanish: {name}; stopping QEMU and the card server");
            if let Some(path) = runner::write_interrupted_report(name) {
                eprintln!("vanish: partial report in {}", path.display());
            }
            code
        };
        // `vanish serve` stops on SIGTERM/SIGINT by itself (sockets removed, exit 0).
        if matches!(cli.command, Cmd::Serve(_)) {
            return dispatch(cli).await;
        }
        tokio::select! {
            code = dispatch(cli) => code,
            _ = int.recv() => stopped("SIGINT", 130),
            _ = term.recv() => stopped("SIGTERM", 143),
            _ = hup.recv() => stopped("SIGHUP", 129),
        }
    });
    // Dropping the runtime drops every task: QEMU and server children are killed on drop,
    // temp dirs removed.
    runtime.shutdown_timeout(Duration::from_secs(5));
    ExitCode::from(code as u8)
}

async fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Cmd::Run(args) => cmd_run(*args).await,
        Cmd::Kconfig(args) => hotplug_ctl::kconfig::run(args),
        Cmd::List => {
            println!("{:<26} DESCRIPTION", "SCENARIO");
            let boot = scenario::boot();
            println!("{:<26} {}", boot.name, boot.description);
            for s in scenario::builtin() {
                println!("{:<26} {}", s.name, s.description);
            }
            exit::PASS
        }
        Cmd::Kernels { arch, offline } => cmd_kernels(arch, offline).await,
        Cmd::Bench(args) => hotplug_ctl::bench::run(args).await,
        Cmd::Baseline { report, out } => cmd_baseline(&report, &out),
        Cmd::Serve(args) => {
            let card = match &args.spec_json {
                Some(json) => CardSpec::from_json(json).map_err(serve::UsageError),
                None => args.card.spec(),
            };
            let card = match card {
                Ok(card) => card,
                Err(e) => {
                    eprintln!("vanish serve: {e}");
                    return exit::USAGE;
                }
            };
            let cfg = ServeConfig {
                card,
                socket: args.socket,
                control: args.control,
                busy_poll: std::time::Duration::from_micros(args.busy_poll_us),
            };
            match serve::serve(cfg).await {
                Ok(()) => exit::PASS,
                Err(e) if e.downcast_ref::<serve::UsageError>().is_some() => {
                    eprintln!("vanish serve: {e}");
                    exit::USAGE
                }
                Err(e) => {
                    eprintln!("vanish serve: {e:#}");
                    exit::SKIP
                }
            }
        }
        Cmd::Ctl {
            control,
            qmp,
            device_id,
            bus,
            verb,
        } => {
            let target = hotplug_ctl::ctl::Target {
                control,
                qmp,
                device_id,
                bus,
            };
            match hotplug_ctl::ctl::run(&target, &verb).await {
                Ok(reply) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&reply).unwrap_or_default()
                    );
                    exit::PASS
                }
                Err(e) => {
                    eprintln!("vanish ctl: {e:#}");
                    exit::USAGE
                }
            }
        }
    }
}

/// `vanish baseline REPORT --out DIR`.
fn cmd_baseline(report: &std::path::Path, out: &std::path::Path) -> i32 {
    let text = match std::fs::read_to_string(report) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vanish baseline: {}: {e}", report.display());
            return exit::USAGE;
        }
    };
    let mut parsed: hotplug_ctl::report::Report = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "vanish baseline: {}: not a vanish report: {e}",
                report.display()
            );
            return exit::USAGE;
        }
    };
    // Judge without a baseline, so that what failed (and what was dead-hardware noise) is
    // decided as `vanish run` decides it.
    verdict::judge(&mut parsed, &Policy::default());
    let (fails, toml) = verdict::baseline_from(&parsed);
    let stem = format!("{}-{}", parsed.model, parsed.arch_name());
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join(format!("{stem}-fails.txt")), fails)?;
        std::fs::write(out.join(format!("{stem}.toml")), toml)
    };
    match write() {
        Ok(()) => {
            println!("{}", out.join(format!("{stem}-fails.txt")).display());
            println!("{}", out.join(format!("{stem}.toml")).display());
            exit::PASS
        }
        Err(e) => {
            eprintln!("vanish baseline: {}: {e}", out.display());
            exit::USAGE
        }
    }
}

/// `vanish kernels`: the known series, the newest Debian version of each, what is cached.
async fn cmd_kernels(arch: Arch, offline: bool) -> i32 {
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<[String; 4]>> {
        let cache = images::Cache::from_env()?;
        let cached = images::cached_kernels(&cache, arch);
        let mut rows = Vec::new();
        for (series, suite) in images::SERIES {
            let newest = if offline {
                "-".to_string()
            } else {
                match images::resolve_debian_kernel(&cache, arch, series) {
                    Ok(p) => format!("{} ({})", p.abi, p.version),
                    Err(e) => format!("unavailable: {e}"),
                }
            };
            let here: Vec<&str> = cached
                .iter()
                .filter(|release| release.starts_with(&format!("{series}.")))
                .map(String::as_str)
                .collect();
            rows.push([
                series.to_string(),
                suite.to_string(),
                newest,
                if here.is_empty() {
                    "-".into()
                } else {
                    here.join(", ")
                },
            ]);
        }
        Ok(rows)
    })
    .await;
    match rows {
        Ok(Ok(rows)) => {
            println!(
                "{:<6} {:<17} {:<36} CACHED ({})",
                "SERIES", "SUITE", "NEWEST", arch
            );
            for [a, b, c, d] in rows {
                println!("{a:<6} {b:<17} {c:<36} {d}");
            }
            exit::PASS
        }
        Ok(Err(e)) => {
            eprintln!("vanish kernels: {e:#}");
            exit::SKIP
        }
        Err(e) => {
            eprintln!("vanish kernels: {e}");
            exit::SKIP
        }
    }
}

async fn cmd_run(mut args: RunArgs) -> i32 {
    // A kernel tree: resolved first, since its .config says the architecture. The tree (and
    // the temporary modules root it owns) lives until the run is over.
    let tree = match args.kernel.as_deref().filter(|k| k.is_dir()) {
        Some(dir) => {
            let driver = match args.card.model {
                ModelKind::Hibmc => "DRM_HISI_HIBMC",
                ModelKind::Bochs => "DRM_BOCHS",
            };
            match images::kernel_tree::resolve(dir, args.arch, Some(driver)) {
                Ok(t) => Some(t),
                Err(e) => {
                    // A tree without the card's driver cannot be judged (a bisect skips it);
                    // anything else is the wrong directory or a tree never built.
                    let code = if e.to_string().contains(driver) {
                        exit::SKIP
                    } else {
                        exit::USAGE
                    };
                    eprintln!("vanish: --kernel: {e}");
                    return code;
                }
            }
        }
        None => None,
    };
    let arch = args
        .arch
        .or(tree.as_ref().map(|t| t.arch))
        .unwrap_or(Arch::Aarch64);
    if let Some(git) = tree.as_ref().and_then(|t| t.git.as_ref()) {
        args.git_commit.get_or_insert_with(|| git.commit.clone());
        if let Some(url) = &git.remote {
            args.git_url.get_or_insert_with(|| url.clone());
        }
    }
    let card = match args.card.spec() {
        Ok(card) => card,
        Err(e) => {
            eprintln!("vanish: {e}");
            return exit::USAGE;
        }
    };
    if let Err(e) = check_outputs(&args) {
        eprintln!("vanish: {e}");
        return exit::USAGE;
    }
    if !hotplug_ctl::output::valid_origin(&args.kcidb_origin) {
        eprintln!(
            "vanish: --kcidb-origin '{}' is invalid: use lowercase letters, digits and '_'",
            args.kcidb_origin
        );
        return exit::USAGE;
    }
    let baseline = match &args.baseline {
        Some(path) => {
            match Baseline::load_for(path, Some(&format!("{}-{arch}", args.card.model.name()))) {
                Ok(b) => Some(b),
                Err(e) => {
                    eprintln!("vanish: --baseline: {e}");
                    return exit::USAGE;
                }
            }
        }
        None => None,
    };
    if args.kernel.is_none() {
        if let Err(e) = images::check_kernel_version(&args.debian_kernel, arch) {
            eprintln!("vanish: --debian-kernel: {e}");
            return exit::USAGE;
        }
    }
    let kernel = match args.kernel {
        Some(_) if tree.is_some() => match &tree {
            Some(t) => KernelChoice::Resolved(t.guest_kernel()),
            None => return exit::SKIP,
        },
        Some(image) => {
            if !image.is_file() {
                eprintln!("vanish: kernel image {} does not exist", image.display());
                return exit::SKIP;
            }
            if let Some(m) = args.modules.as_ref().filter(|m| !m.is_dir()) {
                eprintln!("vanish: modules directory {} does not exist", m.display());
                return exit::SKIP;
            }
            KernelChoice::User {
                image,
                modules: args.modules,
            }
        }
        None => KernelChoice::Debian(args.debian_kernel),
    };
    let scenarios = if let Some(mode) = args.unplug {
        (1..=args.repeat)
            .map(|i| {
                let mut s = Scenario::cycle(mode);
                if args.repeat > 1 {
                    s.name = format!("{}#{i}", s.name);
                }
                s
            })
            .collect()
    } else if args.scenarios.is_empty() {
        scenario::builtin()
    } else {
        let mut list = Vec::new();
        for name in args.scenarios.iter().filter(|n| n.as_str() != "boot") {
            match Scenario::resolve(name) {
                Ok(s) => list.push(s),
                Err(e) => {
                    eprintln!("vanish: {e}");
                    return exit::USAGE;
                }
            }
        }
        list
    };
    let scenarios: Vec<Scenario> = match &baseline {
        Some(b) => scenarios
            .into_iter()
            .filter(|s| {
                let skip = b.skips(&s.name);
                if skip {
                    eprintln!("vanish: {}: skipped (the baseline's skips list it)", s.name);
                }
                !skip
            })
            .collect(),
        None => scenarios,
    };
    let guest_files = match images::resolve_guest_files(
        &args.guest_files,
        &args.guest_dirs,
        args.guest_sysroot.as_deref(),
        arch,
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vanish: {e}");
            return exit::USAGE;
        }
    };
    let cfg = RunConfig {
        card,
        arch,
        kernel,
        out: args.out,
        boot_timeout: Duration::from_secs(args.boot_timeout),
        bind_timeout: Duration::from_secs(60),
        append: args.append,
        scenarios,
        accel: args.accel,
        cpus: args.cpus,
        memory_mib: args.memory,
        qemu_opts: args.qemu_opts,
        stream_console: args.console,
        firmware_bme: !args.no_firmware_bme,
        guest_files,
        shell: args.shell,
    };
    if args.dry_run {
        return dry_run(&cfg);
    }
    let policy = Policy {
        baseline,
        judge_by: args.judge_by,
        fail_on_fixed: args.fail_on_fixed,
    };
    let meta = KcidbMeta {
        origin: args.kcidb_origin,
        git_commit: args.git_commit,
        git_url: args.git_url,
        tree_name: args.tree_name,
    };
    if cfg.shell {
        return match runner::run(cfg).await {
            Ok(r) if r.error.is_none() => exit::PASS,
            Ok(r) => {
                let e = r.error.unwrap_or_default();
                eprintln!(
                    "vanish: rig error: {}",
                    e.lines().next().unwrap_or_default()
                );
                exit::SKIP
            }
            Err(e) => {
                eprintln!("vanish: {e:#}");
                exit::SKIP
            }
        };
    }
    let mut reports = Vec::new();
    for i in 1..=args.runs {
        let mut run_cfg = cfg.clone();
        if args.runs > 1 {
            eprintln!("vanish: run {i} of {}", args.runs);
            run_cfg.out = cfg.out.join(format!("run{i}"));
            if let Err(e) = std::fs::create_dir_all(&run_cfg.out) {
                eprintln!(
                    "vanish: --out: cannot create {}: {e}",
                    run_cfg.out.display()
                );
                return exit::USAGE;
            }
        }
        let mut report = match runner::run(run_cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("vanish: {e:#}");
                return exit::SKIP;
            }
        };
        for note in verdict::judge(&mut report, &policy) {
            eprintln!("vanish: {note}");
        }
        reports.push(report);
    }
    let report = verdict::merge_runs(reports);
    let code = verdict::exit_code(&report, &policy);
    print!("{}", hotplug_ctl::output::table(&report));
    if let Some(e) = &report.error {
        // The table on stdout has it too; stderr gets the one line a script shows.
        eprintln!(
            "vanish: rig error: {}",
            e.lines().next().unwrap_or_default()
        );
    }
    // The outputs were checked before boot; a late write error is said, but never turns a
    // judged kernel into "skip".
    let mut write_failed = false;
    if let Err(e) = report.write_json(&cfg.out.join("report.json")) {
        eprintln!("vanish: {e:#}");
        write_failed = true;
    }
    if let Err(e) = hotplug_ctl::output::write_outputs(
        &report,
        args.junit.as_deref(),
        args.kcidb.as_deref(),
        &meta,
    ) {
        eprintln!("vanish: {e:#}");
        write_failed = true;
    }
    if write_failed && code == exit::PASS {
        return exit::SKIP;
    }
    code
}

/// `--out`, `--junit` and `--kcidb` are checked before anything is provisioned or booted: a
/// typo there must not cost a whole run and then turn its verdict into "skip".
fn check_outputs(args: &RunArgs) -> Result<(), String> {
    if args.out.exists() && !args.out.is_dir() {
        return Err(format!(
            "--out {} is a file, not a directory",
            args.out.display()
        ));
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("--out {}: cannot create it: {e}", args.out.display()))?;
    tempfile::tempfile_in(&args.out)
        .map_err(|e| format!("--out {}: not writable: {e}", args.out.display()))?;
    for (flag, path) in [("--junit", &args.junit), ("--kcidb", &args.kcidb)] {
        let Some(path) = path else { continue };
        if path.is_dir() {
            return Err(format!(
                "{flag} {} is a directory, not a file",
                path.display()
            ));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(format!(
                "{flag} {}: directory {} does not exist",
                path.display(),
                parent.display()
            ));
        }
        tempfile::tempfile_in(&parent)
            .map_err(|e| format!("{flag} {}: cannot write there: {e}", path.display()))?;
    }
    Ok(())
}

/// `--dry-run`: the command lines, with what provisioning would supply named in `<...>`.
fn dry_run(cfg: &RunConfig) -> i32 {
    let decision = match accel::decide(
        cfg.accel,
        Arch::host(),
        cfg.arch,
        &accel::probe_kvm(std::path::Path::new("/dev/kvm")),
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vanish: {e}");
            return exit::SKIP;
        }
    };
    if let Some(why) = &decision.why {
        eprintln!("vanish: {why}");
    }
    let kernel = match &cfg.kernel {
        KernelChoice::User { image, .. } => image.clone(),
        KernelChoice::Resolved(k) => k.image.clone(),
        KernelChoice::Debian(v) => PathBuf::from(format!("<Debian {v} kernel for {}>", cfg.arch)),
    };
    print!(
        "{}",
        runner::dry_run(
            cfg,
            decision.accel,
            cfg.arch.qemu_system(),
            &kernel,
            std::path::Path::new("<initramfs built at run time>"),
        )
    );
    exit::PASS
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("32M"), Ok(32 << 20));
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("0x1000000"), Ok(16 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }
}
