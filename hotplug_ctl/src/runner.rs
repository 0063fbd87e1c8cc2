//! `vanish run`: provision, start the card server and QEMU, drive scenarios, judge them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use device::ModelKind;
use images::{Arch, Cache, GuestKernel, InitramfsSpec, Qemu};

use crate::accel::{self, Accel, AccelChoice};
use crate::agent::{AgentError, Guest};
use crate::card::Card;
use crate::control::Request;
use crate::fingerprint;
use crate::qemu::{Vm, VmConfig};
use crate::qmp::Qmp;
use crate::report::{CardPhase, FoundSplat, Report, ScenarioReport, SplatStatus, Verdict};
use crate::scenario::{ClientKind, Removal, Scenario};
use crate::splat;
use crate::splat::SplatKind;
use crate::steps::StepError;
use guest_protocol::{CardStatus, ClientReport, Reply as GuestReply, Request as GuestRequest};

/// Which kernel to boot.
#[derive(Clone, Debug)]
pub enum KernelChoice {
    /// A Debian kernel package: "6.1", "6.12", "7.2" or an exact ABI.
    Debian(String),
    /// The user's own image, with an optional INSTALL_MOD_PATH tree.
    User {
        image: PathBuf,
        modules: Option<PathBuf>,
    },
    /// A kernel already found (a build directory resolved by `images::kernel_tree`).
    Resolved(GuestKernel),
}

/// Everything `vanish run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub model: ModelKind,
    pub arch: Arch,
    pub kernel: KernelChoice,
    pub out: PathBuf,
    pub vram_size: Option<u64>,
    pub edid: Option<PathBuf>,
    pub no_monitor: bool,
    /// Longest wait from QEMU start to the agent answering.
    pub boot_timeout: Duration,
    /// Longest wait for the driver to bind to the card.
    pub bind_timeout: Duration,
    /// Extra kernel command line (e.g. `drm.debug=0x4`).
    pub append: String,
    /// Scenarios to run after the boot checks, in one boot (a scenario that does not pass
    /// gets a fresh boot before the next one).
    pub scenarios: Vec<Scenario>,
    /// `--accel`: KVM, TCG, or KVM where it works.
    pub accel: AccelChoice,
    pub cpus: u32,
    pub memory_mib: u32,
    /// `--qemu-opt` arguments, appended to QEMU's command line as given.
    pub qemu_opts: Vec<String>,
    /// `--console`: stream the guest console to stderr.
    pub stream_console: bool,
    /// Set Bus Master Enable on a HIBMC card before its driver loads, as a UEFI that drove the
    /// console leaves it (`--no-firmware-bme` turns it off: firmware that never touched it).
    pub firmware_bme: bool,
    /// `--guest-file`/`--guest-dir` (with what dynamic ELF files need), for the initramfs.
    pub guest_files: Vec<images::GuestFile>,
    /// `--shell`: after boot, the guest's shell on this terminal instead of the scenarios.
    pub shell: bool,
}

/// What every boot of a run uses: provisioned once, the accelerator possibly downgraded once.
pub struct Rig {
    pub qemu: Qemu,
    pub kernel: GuestKernel,
    pub initrd: PathBuf,
    pub accel: Accel,
}

/// KVM could not run the guest (QEMU stopped with an internal error, or exited at once).
#[derive(Debug)]
struct KvmFailure(String);

impl std::fmt::Display for KvmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KVM could not run the guest: {}", self.0)
    }
}

impl std::error::Error for KvmFailure {}

/// The `vanish serve` arguments for `cfg`'s card on these sockets.
pub fn serve_args(cfg: &RunConfig, socket: &Path, control: &Path) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--model".into(),
        cfg.model.name().into(),
        "--socket".into(),
        socket.into(),
        "--control".into(),
        control.into(),
    ];
    if let Some(size) = cfg.vram_size {
        a.extend(["--vram-size".into(), size.to_string().into()]);
    }
    if let Some(edid) = &cfg.edid {
        a.extend(["--edid".into(), edid.into()]);
    }
    if cfg.no_monitor {
        a.push("--no-monitor".into());
    }
    a
}

/// Starts the card server for generation `generation` of `cfg`'s card, sockets in `dir`.
pub async fn start_card(cfg: &RunConfig, dir: &Path, generation: u32, log: &Path) -> Result<Card> {
    let socket = dir.join(format!("card{generation}.sock"));
    let control = dir.join(format!("card{generation}.ctl"));
    Card::start(serve_args(cfg, &socket, &control), socket, control, log).await
}

/// A booted guest with the card, and everything needed to drive it.
pub struct Session {
    pub cfg: RunConfig,
    pub vm: Vm,
    pub qmp: Qmp,
    /// The guest agent: what the runner asks the guest.
    pub guest: Guest,
    pub server: Option<Card>,
    pub kernel_release: String,
    pub dir: tempfile::TempDir,
    pub server_generation: u32,
    /// The card's address in the guest, as of the last wait-bound or re-plug.
    pub pci_address: Option<String>,
    /// How the card last left, so `replug` knows how to bring it back.
    pub last_removal: Option<Removal>,
    /// Clients started and not yet closed.
    pub clients: BTreeMap<String, ClientKind>,
    /// Final reports of closed clients.
    pub client_final: BTreeMap<String, ClientReport>,
    /// The driver bound at least once in this boot (later bind failures are the kernel's).
    pub ever_bound: bool,
    /// A guest command timed out: the agent may be blocked in the kernel; reboot before more.
    pub agent_stuck: bool,
    pub screenshots: u32,
    /// The card's DRM node (`card0`, or `card1` while a stale fd keeps the old one alive)
    /// and fbdev node, as of the last wait-bound.
    pub drm_node: Option<String>,
    pub fb_node: Option<String>,
    /// The card's state, for attributing splats to a phase.
    pub phase: CardPhase,
    /// Nothing ran since this boot came up: the next scenario counts the boot's own lines.
    pub fresh: bool,
}

const AGENT_WAIT: Duration = Duration::from_secs(30);
/// How long after the driver bound (and its DRM node appeared) an fbdev-emulating card's fb node
/// may take to show: the fbdev client is set up at the end of probe. A kernel without fbdev
/// emulation never shows one, so the wait then carries on without it.
const FB_NODE_GRACE: Duration = Duration::from_secs(5);

impl Session {
    /// Sends one request to the guest agent; an error reply or a timeout is `AgentError`.
    pub async fn ask(
        &mut self,
        request: &GuestRequest,
        wait: Duration,
    ) -> std::result::Result<GuestReply, AgentError> {
        self.guest.request(request, wait).await
    }

    /// The guest's view of the card.
    pub async fn card_status(&mut self) -> Result<CardStatus> {
        let (vendor, device) = self.cfg.model.pci_id();
        match self
            .ask(&GuestRequest::CardStatus { vendor, device }, AGENT_WAIT)
            .await?
        {
            GuestReply::Card(status) => Ok(status),
            other => bail!("agent: card-status answered {other:?}"),
        }
    }

    /// Waits until the card's driver is bound and its DRM device exists.
    pub async fn wait_bound(&mut self, wait: Duration) -> Result<CardStatus> {
        let deadline = Instant::now() + wait;
        let driver = self.cfg.model.linux_driver();
        let wants_fb = self.cfg.model.emulates_fbdev();
        // When the driver and DRM node were first seen: the fb node gets FB_NODE_GRACE from then.
        let mut bound_at: Option<Instant> = None;
        loop {
            let status = self.card_status().await?;
            let bound = status.driver.as_deref() == Some(driver) && !status.drm.is_empty();
            if bound {
                let since = *bound_at.get_or_insert_with(Instant::now);
                let waited = since.elapsed();
                if !wants_fb || !status.fb.is_empty() || waited >= FB_NODE_GRACE {
                    if wants_fb && status.fb.is_empty() {
                        log::debug!("{driver} bound; no fb node within {FB_NODE_GRACE:?}");
                    }
                    return Ok(status);
                }
                if Instant::now() > deadline {
                    // The driver is bound: a missing fb node is not this wait's failure.
                    return Ok(status);
                }
            } else if Instant::now() > deadline {
                let what = match (status.present, status.driver.as_deref()) {
                    (false, _) => "the card is not on the guest's PCI bus".to_string(),
                    (true, None) => format!(
                        "{driver} did not bind to {}",
                        status.pci_address.as_deref().unwrap_or("?")
                    ),
                    (true, Some(d)) if d != driver => format!("{d} bound instead of {driver}"),
                    _ => format!("{driver} bound but created no DRM device"),
                };
                bail!("{what} within {wait:?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits for the driver after a fresh boot and records where the card is.
    pub async fn adopt_card(&mut self, wait: Duration) -> Result<()> {
        let status = self.wait_bound(wait).await?;
        self.record_bound(&status);
        Ok(())
    }

    /// The card is bound: records where it is and its DRM and fbdev nodes, the one place
    /// that bookkeeping is done (after a boot, the boot scenario and a wait-bound step).
    pub fn record_bound(&mut self, status: &CardStatus) {
        self.pci_address.clone_from(&status.pci_address);
        self.drm_node = status.drm.first().cloned();
        self.fb_node = status.fb.first().cloned();
        self.ever_bound = true;
    }

    /// Counts the card's vblank interrupts over one second: (count before, count after).
    pub async fn vblank_probe(&mut self) -> Result<(u64, u64)> {
        // A DRM driver requests its IRQ under its drm_driver name, which is the PCI driver's
        // name without the "-drm" suffix ("hibmc" for hibmc-drm).
        let name = self
            .cfg
            .model
            .linux_driver()
            .trim_end_matches("-drm")
            .to_string();
        let before = self.irq_count(&name).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = self.irq_count(&name).await?;
        Ok((before, after))
    }

    /// Saves what the card shows to `path` once fbcon has drawn something; returns the ink
    /// ratio (fraction of non-background pixels).
    pub async fn screenshot(&self, path: &Path, wait: Duration) -> Result<f64> {
        self.server
            .as_ref()
            .ok_or_else(|| anyhow!("no card server is running"))?
            .screenshot(path, wait)
            .await
    }

    /// Interrupts counted by the guest on the card's IRQ lines.
    pub async fn irq_count(&mut self, name: &str) -> Result<u64> {
        let request = GuestRequest::IrqCount {
            name: name.to_string(),
        };
        match self.ask(&request, AGENT_WAIT).await? {
            GuestReply::IrqCount(n) => Ok(n),
            other => bail!("agent: irq-count answered {other:?}"),
        }
    }
}

/// Runs a scenario body and turns its outcome and the kernel log into a report entry.
pub struct ScenarioRun {
    pub name: String,
    start: Instant,
    log_mark: usize,
    pub driver_bound: bool,
    pub pci_address: Option<String>,
    pub screenshot: Option<PathBuf>,
    pub problems: Vec<String>,
    pub observations: BTreeMap<String, serde_json::Value>,
    /// (first console line, step name, card phase) for splat attribution.
    steps: Vec<(usize, String, CardPhase)>,
    rig_error: Option<String>,
}

impl ScenarioRun {
    /// Starts a scenario at the current console line, or with `from_boot` at the first line of
    /// this boot: a fresh boot's own splats (and the driver's first probe) are counted then, in
    /// phase `boot`.
    pub fn begin(name: &str, session: &Session, from_boot: bool) -> ScenarioRun {
        let mark = if from_boot {
            0
        } else {
            session.vm.console.mark()
        };
        let phase = if from_boot {
            CardPhase::Boot
        } else {
            session.phase
        };
        ScenarioRun {
            name: name.to_string(),
            start: Instant::now(),
            log_mark: mark,
            driver_bound: false,
            pci_address: None,
            screenshot: None,
            problems: Vec::new(),
            observations: BTreeMap::new(),
            steps: vec![(mark, "boot".into(), phase)],
            rig_error: None,
        }
    }

    /// Marks the start of a step (for attributing splats).
    pub fn step(&mut self, session: &Session, name: &str) {
        self.steps
            .push((session.vm.console.mark(), name.to_string(), session.phase));
    }

    /// The card changed state within the current step.
    pub fn phase(&mut self, session: &mut Session, phase: CardPhase) {
        session.phase = phase;
        let step = self.steps.last().map(|s| s.1.clone()).unwrap_or_default();
        self.steps.push((session.vm.console.mark(), step, phase));
    }

    pub fn observe(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.observations.insert(key.to_string(), value.into());
    }

    /// An expectation about the kernel did not hold.
    pub fn fail(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    /// The rig broke: the verdict is error, not fail.
    pub fn rig_error(&mut self, problem: impl Into<String>) {
        let p = problem.into();
        self.problems.push(p.clone());
        self.rig_error = Some(p);
    }

    /// Waits until the kernel has finished printing a report this scenario's log ends in, so
    /// that `finish` (and the reboot or stop after it) does not cut its trace.
    pub async fn drain_console(&self, session: &Session) {
        drain_console(&session.vm.console, self.log_mark).await;
    }

    pub fn finish(self, session: &Session) -> ScenarioReport {
        let log = session.vm.console.text_since(self.log_mark);
        let module = session.cfg.model.linux_module().replace('-', "_");
        let mut splats: Vec<FoundSplat> = splat::find_splats(&log)
            .into_iter()
            .map(|mut s| {
                let at = self.log_mark + s.line.saturating_sub(1);
                let (step, phase) = self
                    .steps
                    .iter()
                    .rev()
                    .find(|(m, _, _)| *m <= at)
                    .map(|(_, n, p)| (n.clone(), *p))
                    .unwrap_or_default();
                s.line = at + 1;
                FoundSplat {
                    fingerprint: fingerprint::fingerprint(&s),
                    subsystem: fingerprint::attribute(&s, &module),
                    splat: s,
                    step,
                    phase,
                    count: 0,
                    status: SplatStatus::New,
                }
            })
            .collect();
        let counts: BTreeMap<String, usize> = splats.iter().fold(BTreeMap::new(), |mut m, f| {
            *m.entry(f.fingerprint.clone()).or_default() += 1;
            m
        });
        for f in &mut splats {
            f.count = counts.get(&f.fingerprint).copied().unwrap_or(1);
        }
        let checker_off = checker_turned_off(&log, &splats);
        let verdict = if self.rig_error.is_some() {
            Verdict::Error
        } else if !self.problems.is_empty() || !splats.is_empty() {
            Verdict::Fail
        } else {
            Verdict::Pass
        };
        let problems = self.problems;
        let mut report = ScenarioReport {
            name: self.name,
            verdict,
            result: Default::default(),
            flake_listed: false,
            fingerprints: Vec::new(),
            runs: None,
            checker_off,
            driver_bound: self.driver_bound,
            pci_address: self.pci_address,
            splats,
            screenshot: self.screenshot,
            duration_s: self.start.elapsed().as_secs_f64(),
            problems,
            observations: self.observations,
            kernel_log: log.lines().map(str::to_string).collect(),
        };
        report.fingerprints = crate::verdict::summarize(&report);
        report
    }
}

/// The console is taken as quiet (the kernel done printing) after this long without a line.
const CONSOLE_QUIET: Duration = Duration::from_secs(2);
/// The longest a drain waits for a report to end (a kernel spewing without end must not hang
/// the run).
const DRAIN_MAX: Duration = Duration::from_secs(15);
/// How many of the console's last lines a drain before stopping the guest looks at.
const DRAIN_LINES: usize = 400;

/// Waits while the console's lines from `from` end in a report that has begun but not ended
/// ([`splat::report_still_open`]), until it ends, the console is quiet for [`CONSOLE_QUIET`],
/// or [`DRAIN_MAX`] has passed.
async fn drain_console(console: &crate::qemu::Console, from: usize) {
    let started = Instant::now();
    let mut lines = console.mark();
    let mut last_line_at = Instant::now();
    while splat::report_still_open(&console.text_since(from)) {
        if last_line_at.elapsed() >= CONSOLE_QUIET || started.elapsed() >= DRAIN_MAX {
            log::debug!(
                "console: a report is still open after {:?}; going on",
                started.elapsed()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = console.mark();
        if now != lines {
            lines = now;
            last_line_at = Instant::now();
        }
    }
}

/// Whether a debug checker switched itself off in `log`: lockdep does after its first report
/// (and says "turning off the locking correctness validator" for some), and after any taint that
/// makes it unreliable (an Oops: "Disabling lock debugging due to kernel taint").
fn checker_turned_off(log: &str, splats: &[FoundSplat]) -> Option<String> {
    if let Some(l) = splats.iter().find(|f| f.splat.kind == SplatKind::Lockdep) {
        return Some(format!(
            "lockdep is off after its report ({})",
            l.splat.first_line
        ));
    }
    for needle in [
        "turning off the locking correctness validator",
        "Disabling lock debugging due to kernel taint",
    ] {
        if log.contains(needle) {
            return Some(format!("lockdep is off: \"{needle}\""));
        }
    }
    None
}

fn print_step(msg: &str) {
    eprintln!("vanish: {msg}");
}

/// Provisions QEMU, the kernel and the initramfs for `cfg` (blocking work, off the runtime).
pub async fn provision(cfg: &RunConfig, dir: &Path, accel: Accel) -> Result<Rig> {
    let cfg = cfg.clone();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<_> {
        let cache = Cache::from_env()?;
        let qemu = images::provision_qemu(&cache, cfg.arch)?;
        let kernel = match &cfg.kernel {
            KernelChoice::Debian(v) => images::provision_debian_kernel(&cache, cfg.arch, v)?,
            KernelChoice::User { image, modules } => images::user_kernel(cfg.arch, image, modules.as_deref())?,
            KernelChoice::Resolved(k) => k.clone(),
        };
        let driver = cfg.model.linux_module();
        let support = ["virtio_pci", "virtio_console"];
        let write = |name: &str, body: String| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, body)?;
            Ok(p)
        };
        let lib = write("lib.sh", crate::guest::LIB.to_string())?;
        // The guest modprobes the support modules, sets up the card (bme-ids), then modprobes
        // the driver: busybox modprobe resolves dependencies from the initramfs' modules.dep.
        let modules = write("modules", support.join("\n") + "\n")?;
        let driver_modules = write("driver-modules", format!("{driver}\n"))?;
        let (v, d) = cfg.model.pci_id();
        let bme = write(
            "bme-ids",
            if cfg.model == ModelKind::Hibmc && cfg.firmware_bme { format!("{v:#06x} {d:#06x}\n") } else { String::new() },
        )?;
        let agent = dir.join("vanish-agent");
        std::fs::write(&agent, crate::guest::agent_binary(cfg.arch))?;
        let mut files = vec![
            ("/bin/vanish-agent", agent.as_path(), 0o755),
            ("/etc/vanish/lib.sh", lib.as_path(), 0o644),
            ("/etc/vanish/modules", modules.as_path(), 0o644),
            ("/etc/vanish/driver-modules", driver_modules.as_path(), 0o644),
            ("/etc/vanish/bme-ids", bme.as_path(), 0o644),
        ];
        files.extend(cfg.guest_files.iter().map(|f| (f.guest.as_str(), f.host.as_path(), f.mode)));
        let wanted = [support[0], support[1], driver];
        let initramfs = images::build_initramfs(
            &cache,
            &InitramfsSpec { kernel: &kernel, modules: &wanted, init: crate::guest::INIT, files: &files },
        )?;
        // No modules tree (a kernel built with the drivers in): the image itself says whether
        // the driver is there; with a tree, modules.builtin and the modules have said it.
        let in_image = || {
            let name = format!("{}\0", cfg.model.linux_driver());
            images::image_contains(&kernel.image, name.as_bytes()).unwrap_or(false)
        };
        let no_tree = kernel.modules_root.as_os_str().is_empty();
        if initramfs.missing_modules.iter().any(|m| m == driver) && !(no_tree && in_image()) {
            bail!(
                "kernel {} has no {} driver (neither built in nor as a module): it cannot drive a {} card",
                kernel.release,
                cfg.model.linux_driver(),
                cfg.model.name()
            );
        }
        Ok(Rig { qemu, kernel, initrd: initramfs.path, accel })
    })
    .await?
}

/// The VM configuration of one boot in `dir`.
fn vm_config(
    cfg: &RunConfig,
    rig_paths: (&Path, &Path),
    accel: Accel,
    dir: &Path,
    card_socket: PathBuf,
) -> VmConfig {
    VmConfig {
        arch: cfg.arch,
        kernel: rig_paths.0.to_path_buf(),
        initrd: rig_paths.1.to_path_buf(),
        append: cfg.append.clone(),
        memory_mib: cfg.memory_mib,
        cpus: cfg.cpus,
        qmp_socket: dir.join("qmp.sock"),
        agent_socket: dir.join("agent.sock"),
        card_socket: Some(card_socket),
        in_process_card: None,
        accel,
        extra_args: cfg.qemu_opts.clone(),
        stream_console: cfg.stream_console,
    }
}

/// The exact command lines a run would start, for `--dry-run`: nothing is provisioned or
/// started. `qemu`, `kernel` and `initrd` name what provisioning would supply.
pub fn dry_run(cfg: &RunConfig, accel: Accel, qemu: &str, kernel: &Path, initrd: &Path) -> String {
    let dir = std::env::temp_dir().join("vanish-XXXXXX");
    let socket = dir.join("card0.sock");
    let control = dir.join("card0.ctl");
    let server = std::iter::once(std::ffi::OsString::from("vanish"))
        .chain(serve_args(cfg, &socket, &control));
    let vm = vm_config(cfg, (kernel, initrd), accel, &dir, socket.clone());
    let qemu_line = std::iter::once(std::ffi::OsString::from(qemu))
        .chain(crate::qemu::args(&vm).into_iter().map(Into::into));
    format!(
        "card server: {}\nqemu: {}\n",
        shell_line(server),
        shell_line(qemu_line)
    )
}

/// A command line as a shell would need it typed.
fn shell_line(words: impl Iterator<Item = std::ffi::OsString>) -> String {
    words
        .map(|w| {
            let w = w.to_string_lossy().into_owned();
            // shlex's quoting rather than our own: it knows every character a POSIX shell
            // treats specially.
            shlex::try_quote(&w).map(|q| q.into_owned()).unwrap_or(w)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Boots the guest, falling back from KVM to TCG once under `--accel auto`.
async fn boot_rig(cfg: &RunConfig, rig: &mut Rig) -> Result<Session> {
    match boot(cfg, rig).await {
        Err(e) if rig.accel == Accel::Kvm && e.downcast_ref::<KvmFailure>().is_some() => {
            if cfg.accel != AccelChoice::Auto {
                return Err(e);
            }
            print_step(&format!("{e}; falling back to TCG"));
            rig.accel = Accel::Tcg;
            boot(cfg, rig).await
        }
        other => other,
    }
}

/// Boots the guest with a cold-plugged card; returns once the agent answers.
async fn boot(cfg: &RunConfig, rig: &Rig) -> Result<Session> {
    let dir = tempfile::Builder::new()
        .prefix("vanish-")
        .tempdir()
        .context("creating a temp dir")?;
    let server = start_card(cfg, dir.path(), 0, &cfg.out.join("server.log")).await?;
    let vm_cfg = vm_config(
        cfg,
        (&rig.kernel.image, &rig.initrd),
        rig.accel,
        dir.path(),
        server.socket.clone(),
    );
    let kernel = &rig.kernel;
    print_step(&format!(
        "booting {} ({}, {}) with a {} card",
        kernel.release,
        cfg.arch,
        rig.accel,
        cfg.model.name()
    ));
    let mut vm = Vm::start(
        &rig.qemu,
        &vm_cfg,
        &cfg.out.join("console.log"),
        &cfg.out.join("qemu.log"),
    )
    .await?;
    let qemu_log = || std::fs::read_to_string(cfg.out.join("qemu.log")).unwrap_or_default();
    let qmp = Qmp::connect(&vm_cfg.qmp_socket, Duration::from_secs(20)).await;
    let mut qmp = match qmp {
        Ok(q) => q,
        Err(e) if rig.accel == Accel::Kvm => {
            return Err(KvmFailure(format!(
                "QEMU did not come up ({e:#}): {}",
                qemu_log().trim()
            ))
            .into())
        }
        Err(e) => {
            bail!("QEMU did not come up: {e:#}\n{}", qemu_log().trim_end());
        }
    };
    let mut guest = Guest::connect(&vm_cfg.agent_socket, Duration::from_secs(10)).await?;
    let started = Instant::now();
    let kvm = rig.accel == Accel::Kvm;
    let ready = tokio::select! {
        r = guest.request(&GuestRequest::Status, cfg.boot_timeout) => match r {
            Ok(GuestReply::Status { kernel_release }) => Ok(kernel_release),
            Ok(other) => Err(anyhow!("agent: status answered {other:?}")),
            Err(e) => Err(e.into()),
        },
        e = watch_boot(&mut vm, &mut qmp, kvm) => Err(e),
    };
    let release = match ready {
        Ok(release) => release,
        Err(e) if e.downcast_ref::<KvmFailure>().is_some() => return Err(e),
        Err(e) => bail!(
            "the guest did not come up: {e:#}; last console lines:\n{}",
            vm.console.tail(15)
        ),
    };
    print_step(&format!(
        "guest up in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(Session {
        cfg: cfg.clone(),
        vm,
        qmp,
        guest,
        server: Some(server),
        kernel_release: release,
        dir,
        server_generation: 0,
        pci_address: None,
        last_removal: None,
        clients: BTreeMap::new(),
        client_final: BTreeMap::new(),
        ever_bound: false,
        agent_stuck: false,
        screenshots: 0,
        drm_node: None,
        fb_node: None,
        phase: CardPhase::Present,
        fresh: true,
    })
}

/// Resolves only when the boot cannot succeed: QEMU exited, or (under KVM) QEMU stopped the
/// guest with an internal error, as KVM does when it cannot emulate an instruction.
async fn watch_boot(vm: &mut Vm, qmp: &mut Qmp, kvm: bool) -> anyhow::Error {
    loop {
        if let Some(status) = vm.exited() {
            if kvm {
                return KvmFailure(format!("QEMU exited during boot ({status})")).into();
            }
            return anyhow!("QEMU exited during boot ({status})");
        }
        if kvm {
            if let Ok(state) = qmp.execute("query-status", serde_json::json!({})).await {
                let status = state.get("status").and_then(|s| s.as_str()).unwrap_or("");
                if matches!(status, "internal-error" | "guest-panicked" | "shutdown") {
                    let tail = vm.console.tail(3);
                    return KvmFailure(format!("QEMU stopped the guest ({status}); {tail}")).into();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The `boot` scenario: the driver binds to our card, draws fbcon, (hibmc) takes vblank IRQs.
pub async fn scenario_boot(session: &mut Session) -> ScenarioReport {
    let mut run = ScenarioRun::begin("boot", session, true);
    session.fresh = false;
    if let Err(e) = boot_checks(session, &mut run).await {
        run.rig_error(format!("{e:#}"));
    }
    run.drain_console(session).await;
    run.finish(session)
}

async fn boot_checks(session: &mut Session, run: &mut ScenarioRun) -> Result<()> {
    run.step(session, "wait-bound");
    let bind_timeout = session.cfg.bind_timeout;
    let status = session.wait_bound(bind_timeout).await?;
    session.record_bound(&status);
    run.driver_bound = true;
    run.pci_address.clone_from(&status.pci_address);
    print_step(&format!(
        "{} bound to {}",
        session.cfg.model.linux_driver(),
        run.pci_address.as_deref().unwrap_or("?")
    ));
    for (key, value) in [
        ("pci_address", &status.pci_address),
        ("parent", &status.parent),
        ("parent_id", &status.parent_id),
        ("parent_class", &status.parent_class),
        ("command", &status.command),
        ("drm", &status.drm.first().cloned()),
        ("fb0_size", &status.fb0_size),
        ("irq", &status.irq),
    ] {
        if let Some(v) = value {
            run.observe(key, v.as_str());
        }
    }
    let (vendor, device) = session.cfg.model.pci_id();
    let probed = match session
        .ask(&GuestRequest::ProbeModes { vendor, device }, AGENT_WAIT)
        .await?
    {
        GuestReply::Connectors(c) => c,
        other => bail!("agent: probe-modes answered {other:?}"),
    };
    let lines = |f: fn(&guest_protocol::Connector) -> String| -> Vec<String> {
        probed.iter().map(f).collect()
    };
    run.observe("connectors", lines(guest_protocol::Connector::status_line));
    run.observe("modes", lines(guest_protocol::Connector::modes_line));
    run.observe("fb0", status.fb0);
    run.observe("dri_card0", status.dri_card0);
    if !status.fb0 {
        run.fail("/dev/fb0 does not exist: no fbdev emulation on our card");
    }
    if !status.dri_card0 {
        run.fail("/dev/dri/card0 does not exist");
    }
    // The card sits behind the hotplug root port (QEMU's pcie-root-port is 1b36:000c).
    if status.parent_id.as_deref() != Some("0x1b36:0x000c") {
        run.fail(format!(
            "the card is not behind the pcie-root-port (parent {:?})",
            status.parent_id.as_deref()
        ));
    }

    run.step(session, "screenshot");
    let shot = session.cfg.out.join("screenshot.png");
    let ink = session.screenshot(&shot, Duration::from_secs(30)).await?;
    run.observe("screenshot_ink", ink);
    run.screenshot = Some(shot);
    if let Some(server) = &session.server {
        if let Ok(reply) = server.request(&Request::Status).await {
            if let Some(st) = reply.status {
                run.observe("scanout", st.scanout.clone().unwrap_or_default());
                run.observe("unimplemented_accesses", st.unimplemented_accesses);
                run.observe(
                    "registers",
                    serde_json::to_value(&st.registers).unwrap_or_default(),
                );
            }
        }
    }

    if session.cfg.model == ModelKind::Hibmc {
        run.step(session, "vblank");
        let (a, b) = session.vblank_probe().await?;
        run.observe("vblank_irqs_per_s", b.saturating_sub(a));
        run.observe("vblank_irqs_total", b);
        // Vblank IRQs flow only while something waits for vblank (fbcon's modeset did); after
        // it they may stop (drm_vblank_off), so the total since boot is what is judged: none
        // at all means the driver's MSIs never arrived (Bus Master Enable off).
        if b == 0 {
            run.fail("no vblank interrupt arrived while fbcon set its mode (the card's MSIs are lost: is Bus Master Enable set?)");
        }
    }
    Ok(())
}

/// Runs one scenario's steps; the first step that does not hold ends it.
pub async fn run_scenario(session: &mut Session, scenario: &Scenario) -> ScenarioReport {
    print_step(&format!("scenario {}", scenario.name));
    progress(|p| p.current = Some(scenario.name.clone()));
    let mut run = ScenarioRun::begin(&scenario.name, session, session.fresh);
    session.fresh = false;
    session.phase = CardPhase::Present;
    run.driver_bound = session.ever_bound;
    run.pci_address.clone_from(&session.pci_address);
    for step in &scenario.steps {
        match session.run_step(&mut run, step).await {
            Ok(()) => {}
            Err(StepError::Fail(m)) => {
                run.fail(format!("{step}: {m}"));
                break;
            }
            Err(StepError::Rig(m)) => {
                run.rig_error(format!("{step}: {m}"));
                break;
            }
        }
    }
    // Clients the scenario left running are closed so the next scenario starts clean.
    let leftover: Vec<String> = session.clients.keys().cloned().collect();
    for name in leftover {
        let stop = GuestRequest::ClientStop {
            id: name.clone(),
            timeout_ms: 5000,
        };
        let _ = session.ask(&stop, Duration::from_secs(15)).await;
        session.clients.remove(&name);
    }
    session.client_final.clear();
    run.drain_console(session).await;
    run.finish(session)
}

/// What a run has done so far, for the report a signal leaves behind.
#[derive(Default)]
pub struct Progress {
    pub out: Option<PathBuf>,
    pub report: Option<Report>,
    /// The scenario running now.
    pub current: Option<String>,
}

static PROGRESS: std::sync::Mutex<Progress> = std::sync::Mutex::new(Progress {
    out: None,
    report: None,
    current: None,
});

fn progress(f: impl FnOnce(&mut Progress)) {
    f(&mut PROGRESS.lock().unwrap_or_else(|e| e.into_inner()));
}

/// After SIGINT/SIGTERM/SIGHUP: writes `report.json` with what finished, the interrupted
/// scenario marked `error`. Returns where it was written.
pub fn write_interrupted_report(signal: &str) -> Option<PathBuf> {
    let p = PROGRESS.lock().unwrap_or_else(|e| e.into_inner());
    let out = p.out.clone()?;
    let mut report = p
        .report
        .clone()
        .unwrap_or_else(|| Report::new("", "", out.join("console.log")));
    let what = p.current.clone().unwrap_or_else(|| "boot".into());
    let mut interrupted = ScenarioReport::new(&what, Verdict::Error);
    interrupted.result = crate::verdict::ScenarioResult::Error;
    interrupted.problems = vec![format!("interrupted by {signal}")];
    report.scenarios.push(interrupted);
    report.error = Some(format!("interrupted by {signal} during {what}"));
    let path = out.join("report.json");
    report.write_json(&path).ok().map(|_| path)
}

/// `vanish run`: everything, from provisioning to the report. Never returns Err for rig
/// problems: those become a report with an error and exit code 125.
pub async fn run(cfg: RunConfig) -> Result<Report> {
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    for stale in [
        "console.log",
        "qemu.log",
        "server.log",
        "report.json",
        "screenshot.png",
    ] {
        let _ = std::fs::remove_file(cfg.out.join(stale));
    }
    let started = Instant::now();
    progress(|p| {
        *p = Progress {
            out: Some(cfg.out.clone()),
            report: None,
            current: None,
        }
    });
    let mut report = Report::new(
        cfg.model.name(),
        &cfg.arch.to_string(),
        cfg.out.join("console.log"),
    );
    let work = tempfile::Builder::new()
        .prefix("vanish-initrd-")
        .tempdir()?;
    let result: Result<()> = async {
        let decision = accel::decide(
            cfg.accel,
            Arch::host(),
            cfg.arch,
            &accel::probe_kvm(Path::new("/dev/kvm")),
        )
        .map_err(|e| anyhow!(e))?;
        if let Some(why) = &decision.why {
            print_step(why);
        }
        let mut rig = provision(&cfg, work.path(), decision.accel).await?;
        report.qemu_version = rig.qemu.version.clone();
        report.kernel = rig.kernel.release.clone();
        report.kernel_image = rig.kernel.image.clone();
        let mut session = boot_rig(&cfg, &mut rig).await?;
        report.accel = rig.accel.to_string();
        report.kernel = session.kernel_release.clone();
        if cfg.shell {
            let r = crate::shell::interact(&mut session).await;
            shutdown(session).await;
            return r;
        }
        let boot_report = scenario_boot(&mut session).await;
        // Splats alone do not call for a fresh boot (a tainted kernel still runs the next
        // scenario, and --repeat cycles stay in one boot); a step that did not hold does.
        let settled = |r: &ScenarioReport| {
            r.problems.is_empty() && r.verdict != Verdict::Error && r.checker_off.is_none()
        };
        let mut healthy = settled(&boot_report);
        let boot_error = boot_report.verdict == Verdict::Error;
        report.scenarios.push(boot_report);
        progress(|p| p.report = Some(report.clone()));
        if boot_error {
            shutdown(session).await;
            return Ok(());
        }
        for scenario in &cfg.scenarios {
            if !healthy || session.agent_stuck {
                print_step("fresh boot after a scenario that did not pass");
                shutdown(session).await;
                session = boot_rig(&cfg, &mut rig).await?;
                session.adopt_card(cfg.bind_timeout).await?;
            }
            let mut result = run_scenario(&mut session, scenario).await;
            // QEMU 11.1's vfio-user client sometimes aborts (`error_setv: Assertion '*errp ==
            // NULL'`) while it tears down a card whose server was killed: seen in about 1 of 10
            // hibmc server-crash runs, root cause inside QEMU not found. The kernel was not
            // judged then, so the scenario runs once more on a fresh boot; a second abort is
            // the rig error it is.
            if result.verdict == Verdict::Error {
                if let Some(abort) = qemu_aborted(&mut session).await {
                    print_step(&format!(
                        "QEMU aborted ({abort}) during {}: running it again on a fresh boot",
                        result.name
                    ));
                    shutdown(session).await;
                    session = boot_rig(&cfg, &mut rig).await?;
                    session.adopt_card(cfg.bind_timeout).await?;
                    let first = result.problems.join("; ");
                    result = run_scenario(&mut session, scenario).await;
                    result.observations.insert(
                        "rig_retry".into(),
                        serde_json::json!(format!(
                            "QEMU aborted ({abort}) on the first attempt: {first}"
                        )),
                    );
                }
            }
            print_step(&format!("{}: {}", result.name, result.verdict.as_str()));
            healthy = settled(&result);
            report.scenarios.push(result);
            progress(|p| {
                p.report = Some(report.clone());
                p.current = None;
            });
        }
        shutdown(session).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        report.error = Some(format!("{e:#}"));
    }
    report.duration_s = started.elapsed().as_secs_f64();
    report.write_json(&cfg.out.join("report.json"))?;
    Ok(report)
}

/// Whether QEMU has died of SIGABRT (an assertion in QEMU itself), as a short description.
/// A QMP socket that broke may be a second ahead of the process's exit: wait for it briefly.
async fn qemu_aborted(session: &mut Session) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        if let Some(status) = session.vm.exited() {
            break status;
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (status.signal() == Some(libc::SIGABRT)).then(|| "SIGABRT".to_string())
}

/// Powers the guest off and stops everything.
pub async fn shutdown(mut session: Session) {
    let console = &session.vm.console;
    drain_console(console, console.mark().saturating_sub(DRAIN_LINES)).await;
    let _ = session.qmp.execute("quit", serde_json::json!({})).await;
    session.vm.stop(Duration::from_secs(5)).await;
    if let Some(server) = session.server.take() {
        server.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(log: &str) -> Vec<FoundSplat> {
        splat::find_splats(log)
            .into_iter()
            .map(|s| FoundSplat {
                fingerprint: fingerprint::fingerprint(&s),
                subsystem: fingerprint::Subsystem::Other,
                splat: s,
                step: String::new(),
                phase: CardPhase::Present,
                count: 1,
                status: SplatStatus::New,
            })
            .collect()
    }

    /// A checker that switched itself off ends the boot: the next scenario boots afresh.
    #[test]
    fn a_checker_that_turned_itself_off_is_noticed() {
        let off = "[   12.000000] INFO: lockdep is turned off.\n[   12.000001] turning off the locking correctness validator.\n";
        assert!(checker_turned_off(off, &[]).is_some_and(|w| w.contains("turning off")));
        let taint = "[    9.0] Disabling lock debugging due to kernel taint\n";
        assert!(checker_turned_off(taint, &[]).is_some());
        let log = include_str!("../tests/fixtures/splats/lockdep_circular.txt");
        let why = checker_turned_off(log, &found(log)).unwrap_or_default();
        assert!(why.starts_with("lockdep is off after its report"), "{why}");
        let clean = include_str!("../tests/fixtures/splats/clean_boot.txt");
        assert_eq!(checker_turned_off(clean, &found(clean)), None);
    }
}
