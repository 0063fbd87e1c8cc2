//! `vanish bench`'s guests: one boot with the vanish card or with QEMU's in-process
//! bochs-display on the same root port, same kernel, initramfs and agent, and the measurements
//! made on it through the agent (`vanish-agent bench ...` in the guest) and QMP.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use device::{CardStats, ModelKind};
use serde_json::{json, Value};

use crate::agent::Guest as Agent;
use crate::card::Card as CardServer;
use crate::control::Request;
use crate::qemu::{Console, InProcessCard, Vm};
use crate::qmp::Qmp;
use crate::runner::{Rig, RunConfig};
use crate::session::start_card;
use crate::slot::Slot;
use guest_protocol::{Reply as GuestReply, Request as GuestRequest};

use super::stats;

/// Which card sits in the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Card {
    /// vanish's card server (the model is `RunConfig::model`).
    Vanish,
    /// QEMU's own bochs-display.
    InProcess(InProcessCard),
}

impl std::fmt::Display for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Card::Vanish => f.write_str("vanish"),
            Card::InProcess(InProcessCard::BochsDisplay { .. }) => {
                f.write_str("in-process bochs-display")
            }
        }
    }
}

/// Wall-clock points of one boot, in seconds from QEMU's start.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BootTimes {
    /// The first console line (firmware done, kernel console up).
    pub first_line: f64,
    /// The initramfs' /init started (kernel boot and PCI enumeration done).
    pub init: f64,
    /// DRM's "Initialized" line for the card's driver.
    pub bound: f64,
    /// fbdev's "frame buffer device" line after it: the first connector probe (for hibmc the
    /// first EDID read over bit-banged DDC) is done and fbcon can draw.
    pub fb_up: f64,
    /// The bound point by the guest's own clock (printk), if the line carried one.
    pub printk_bound: Option<f64>,
}

/// How long a guest command may take unless it says otherwise.
const AGENT_WAIT: Duration = Duration::from_secs(60);
/// The pciehp attention-button delay plus slack (session/steps.rs waits as long).
const PCIEHP_WAIT: Duration = Duration::from_secs(30);

/// A booted bench guest.
pub struct Guest {
    pub card: Card,
    cfg: RunConfig,
    vm: Vm,
    qmp: Qmp,
    pub agent: Agent,
    pub server: Option<CardServer>,
    dir: tempfile::TempDir,
    generation: u32,
    /// The card's PCI address in the guest.
    pub bdf: String,
    pub times: BootTimes,
    /// The server's counters once fbdev was up (vanish only).
    pub stats_at_fb: Option<CardStats>,
}

/// How often [`wait_line`] looks at the console: fine enough for boot points measured in
/// seconds.
const CONSOLE_POLL: Duration = Duration::from_millis(10);

/// Waits until a console line from `from` on contains `needle`; returns its index. Polls (the
/// console has no change notification; the runner never needs one) every [`CONSOLE_POLL`].
async fn wait_line(console: &Console, from: usize, needle: &str, wait: Duration) -> Option<usize> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(i) = console
            .text_since(from)
            .lines()
            .position(|l| l.contains(needle))
        {
            return Some(from + i);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(CONSOLE_POLL).await;
    }
}

/// The DRM driver name its "Initialized NAME" line carries.
fn drm_name(model: ModelKind) -> &'static str {
    match model {
        ModelKind::Bochs => "bochs-drm",
        ModelKind::Hibmc => "hibmc",
    }
}

/// The model the guest's driver sees: an in-process bochs-display is a bochs card.
fn guest_model(cfg: &RunConfig, card: Card) -> ModelKind {
    match card {
        Card::Vanish => cfg.model(),
        Card::InProcess(InProcessCard::BochsDisplay { .. }) => ModelKind::Bochs,
    }
}

impl Guest {
    /// Boots `rig` with `card` and waits until the driver has bound; `cfg.model()` must match
    /// what `rig`'s initramfs loads (bochs for the in-process card).
    pub async fn boot(cfg: &RunConfig, rig: &Rig, card: Card) -> Result<Guest> {
        let dir = tempfile::Builder::new()
            .prefix("vanish-bench-")
            .tempdir()
            .context("creating a temp dir")?;
        let server = match card {
            Card::Vanish => {
                Some(start_card(cfg, dir.path(), 0, &cfg.out.join("server.log")).await?)
            }
            Card::InProcess(_) => None,
        };
        // The runner's VM, with the in-process card in the slot when that is the baseline
        // (the bench's RunConfig has no --qemu-opt).
        let mut vm_cfg = crate::runner::vm_config(
            cfg,
            (&rig.kernel.image, &rig.initrd),
            rig.accel,
            dir.path(),
            server.as_ref().map(|s| s.socket.clone()),
        );
        if let Card::InProcess(c) = card {
            vm_cfg.in_process_card = Some(c);
        }
        let started = Instant::now();
        let mut vm = Vm::start(&rig.qemu, &vm_cfg, &cfg.out).await?;
        let qmp = Qmp::connect(&vm_cfg.qmp_socket, Duration::from_secs(20))
            .await
            .context("QEMU did not come up")?;
        let agent = Agent::connect(&vm_cfg.agent_socket, Duration::from_secs(10)).await?;
        let console = std::sync::Arc::clone(&vm.console);
        let model = guest_model(cfg, card);
        let bound_line = format!("Initialized {} ", drm_name(model));
        let timeline = async {
            let wait = cfg.boot_timeout;
            let at = |what: &str| anyhow!("no {what} within {wait:?}");
            wait_line(&console, 0, "", wait)
                .await
                .ok_or_else(|| at("console line"))?;
            let first_line = started.elapsed().as_secs_f64();
            wait_line(&console, 0, "vanish: init on", wait)
                .await
                .ok_or_else(|| at("/init"))?;
            let init = started.elapsed().as_secs_f64();
            let line = wait_line(&console, 0, &bound_line, cfg.bind_timeout)
                .await
                .ok_or_else(|| at(&format!("{bound_line:?} line")))?;
            let bound = started.elapsed().as_secs_f64();
            let printk_bound = stats::printk_seconds(&console.text_since(line));
            wait_line(&console, line, " frame buffer device", cfg.bind_timeout)
                .await
                .ok_or_else(|| at("fbdev line"))?;
            let fb_up = started.elapsed().as_secs_f64();
            Ok::<_, anyhow::Error>(BootTimes {
                first_line,
                init,
                bound,
                fb_up,
                printk_bound,
            })
        };
        let times = tokio::select! {
            t = timeline => t,
            status = async {
                loop {
                    if let Some(s) = vm.exited() { return s; }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            } => Err(anyhow!("QEMU exited during boot ({status})")),
        }
        .with_context(|| {
            format!(
                "booting the bench guest; see {}",
                cfg.out.join("console.log").display()
            )
        })?;
        let stats_at_fb = match &server {
            Some(s) => s.stats().await.ok().flatten(),
            None => None,
        };
        let mut guest = Guest {
            card,
            cfg: cfg.clone(),
            vm,
            qmp,
            agent,
            server,
            dir,
            generation: 0,
            bdf: String::new(),
            times,
            stats_at_fb,
        };
        guest.bdf = guest.find_card().await?;
        Ok(guest)
    }

    fn model(&self) -> ModelKind {
        guest_model(&self.cfg, self.card)
    }

    async fn find_card(&mut self) -> Result<String> {
        let (v, d) = self.model().pci_id();
        let out = shell_check(
            &mut self.agent,
            &format!(". /etc/vanish/lib.sh; find_card {v:#06x} {d:#06x} | head -n 1"),
            AGENT_WAIT,
        )
        .await?;
        let bdf = out.trim().to_string();
        if bdf.is_empty() {
            bail!("the card is not on the guest's PCI bus");
        }
        Ok(bdf)
    }

    /// Runs a guest command and returns its last output line, failing on a non-zero exit.
    pub async fn last_line(&mut self, command: &str, wait: Duration) -> Result<String> {
        let out = shell_check(&mut self.agent, command, wait).await?;
        Ok(out.lines().last().unwrap_or_default().to_string())
    }

    /// `vanish-agent bench fill`: (MB/s, frames/s).
    pub async fn fill(&mut self, target: &str, secs: f64) -> Result<(f64, f64)> {
        let line = self
            .last_line(
                &format!("vanish-agent bench fill {target} {secs}"),
                Duration::from_secs_f64(secs) + AGENT_WAIT,
            )
            .await?;
        stats::fill_rates(&line).map_err(|e| anyhow!("{target} fill: {e}: {line:?}"))
    }

    /// The register `reads` reads: (BAR, offset) of a harmless 32-bit register.
    fn harmless_register(&self) -> (usize, u64) {
        match self.model() {
            // The QEMU extended-registers size word: read-only, no side effect.
            ModelKind::Bochs => (device::bochs::MMIO_BAR, device::bochs::QEXT_SIZE_REG),
            // Offset 0 of the MMIO BAR, as the host-side figure reads.
            ModelKind::Hibmc => (device::hibmc::MMIO_BAR, 0),
        }
    }

    /// `vanish-agent bench reads`: nanoseconds per trapped 32-bit read.
    pub async fn reads(&mut self, count: u64) -> Result<f64> {
        let (bar, offset) = self.harmless_register();
        let line = self
            .last_line(
                &format!(
                    "vanish-agent bench reads {} {bar} {offset:#x} {count}",
                    self.bdf
                ),
                AGENT_WAIT * 5,
            )
            .await?;
        stats::ns_per_read(&line).map_err(|e| anyhow!("register reads: {e}: {line:?}"))
    }

    /// Whether the card's driver has bound and finished probing. The `driver` link alone is
    /// not enough: the driver core creates it before probe() runs, and hibmc's probe then
    /// spends seconds reading EDID; the fbdev node under the device comes at probe's end (and
    /// pciehp stops blinking the slot's power indicator only after that).
    async fn bound(&mut self) -> Result<bool> {
        let driver = self.model().linux_driver();
        let d = format!("/sys/bus/pci/devices/{}", self.bdf);
        let out = shell_run(&mut self.agent,
                &format!(
                    "readlink {d}/driver 2>/dev/null | grep -q '/{driver}$' && ls -d {d}/graphics/fb* >/dev/null 2>&1"
                ),
                AGENT_WAIT,
            )
            .await?;
        Ok(out.success())
    }

    async fn wait_bound(&mut self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            if self.bound().await? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not bind to {} within {wait:?}",
                    self.model().linux_driver(),
                    self.bdf
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One unbind + bind through sysfs; seconds, timed in the guest (`vanish-agent bench
    /// cycle`) from the unbind until the driver has finished probing again.
    pub async fn unbind_bind(&mut self) -> Result<f64> {
        self.guest_cycle("unbind-bind").await
    }

    /// One sysfs remove + bus rescan (the rescan probes the driver); seconds, as above.
    pub async fn remove_rescan(&mut self) -> Result<f64> {
        self.guest_cycle("remove-rescan").await
    }

    async fn guest_cycle(&mut self, kind: &str) -> Result<f64> {
        let (v, d) = self.model().pci_id();
        let driver = self.model().linux_driver();
        let line = self
            .last_line(
                &format!("vanish-agent bench cycle {kind} {v:#06x} {d:#06x} {driver}"),
                AGENT_WAIT,
            )
            .await?;
        let (bdf, secs) =
            stats::cycle_result(&line).map_err(|e| anyhow!("{kind}: {e}: {line:?}"))?;
        self.bdf = bdf;
        Ok(secs)
    }

    /// One removal through the slot (surprise: the card goes dead 0.5 s before, as the
    /// `unplug surprise` step does) and a replug on the same port; seconds until the driver
    /// bound the new card.
    pub async fn unplug_replug(&mut self, surprise: bool) -> Result<f64> {
        let t = Instant::now();
        if surprise {
            let server = self
                .server
                .as_ref()
                .ok_or_else(|| anyhow!("surprise removal needs the vanish card"))?;
            server.request(&Request::Dead).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Slot::unplug retries the button while pciehp still finishes the last hot-add (the
        // wait counts in this cycle's time).
        let slot = Slot::default();
        slot.unplug(&mut self.qmp, PCIEHP_WAIT).await?;
        let args = match self.card {
            Card::Vanish => {
                if let Some(old) = self.server.take() {
                    old.stop().await;
                }
                self.generation += 1;
                let server = start_card(
                    &self.cfg,
                    self.dir.path(),
                    self.generation,
                    &self.cfg.out.join("server.log"),
                )
                .await?;
                let args = slot.device_json(&server.socket);
                self.server = Some(server);
                args
            }
            Card::InProcess(card) => card.device_json(&slot),
        };
        self.qmp.execute("device_add", args).await?;
        let deadline = Instant::now() + PCIEHP_WAIT;
        loop {
            if let Ok(bdf) = self.find_card().await {
                self.bdf = bdf;
                break;
            }
            if Instant::now() > deadline {
                bail!("pciehp did not add the new card within {PCIEHP_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_bound(PCIEHP_WAIT).await?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// The card server's RSS (KiB) and its CPU use (% of one core) over `secs` while the
    /// guest sits idle on fbcon, a `bench vblank` waiter keeping the vblank interrupt on where
    /// the driver has one; also the MSIs the server sent per second meanwhile.
    pub async fn footprint(&mut self, secs: f64) -> Result<Footprint> {
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| anyhow!("footprint needs the vanish card"))?;
        let pid = server
            .pid()
            .ok_or_else(|| anyhow!("the card server has exited"))?;
        let read = |what: &str| std::fs::read_to_string(format!("/proc/{pid}/{what}"));
        let msi = |r: Option<CardStats>| r.map_or(0, |s| s.msi_sent);
        // The waiter runs a little longer than the window so the vblank stays on throughout.
        shell_start(
            &mut self.agent,
            &format!(
                "vanish-agent bench vblank {} > /tmp/vblank.txt 2>&1",
                secs + 2.0
            ),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let server = self.server.as_ref().ok_or_else(|| anyhow!("no server"))?;
        let msi0 = msi(server.stats().await?);
        let cpu0 = process_cpu_ns(pid)?;
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let cpu1 = process_cpu_ns(pid)?;
        let elapsed = t.elapsed().as_secs_f64();
        let msi1 = msi(server.stats().await?);
        let rss_kib = stats::rss_kib(&read("status")?).ok_or_else(|| anyhow!("no VmRSS"))?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let vblank = shell_run(&mut self.agent, "cat /tmp/vblank.txt", AGENT_WAIT)
            .await
            .map(|o| o.stdout.trim().to_string())
            .unwrap_or_default();
        Ok(Footprint {
            rss_kib,
            cpu_percent: cpu1.saturating_sub(cpu0) as f64 / 1e9 / elapsed * 100.0,
            msi_per_second: (msi1.saturating_sub(msi0)) as f64 / elapsed,
            vblank_waiter: vblank,
        })
    }

    /// Sets the card server's busy-poll window (vanish only; the in-process card has none).
    pub async fn set_busy_poll(&self, us: u64) -> Result<()> {
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| anyhow!("busy-poll needs the vanish card"))?;
        let reply = server.request(&Request::BusyPoll { us }).await?;
        if !reply.ok {
            bail!("busy-poll {us}: {}", reply.error.unwrap_or_default());
        }
        Ok(())
    }

    /// Console lines so far that contain `needle` (the guest's own account of a cycle: hibmc
    /// before 6.14 logs a vblank timeout for every commit after a rebind).
    pub fn console_count(&self, needle: &str) -> usize {
        self.vm
            .console
            .text_since(0)
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The card server's counters now (vanish only).
    pub async fn server_stats(&self) -> Option<CardStats> {
        self.server.as_ref()?.stats().await.ok().flatten()
    }

    /// Powers the guest off and stops everything.
    pub async fn shutdown(mut self) {
        let _ = self.qmp.execute("quit", json!({})).await;
        self.vm.stop(Duration::from_secs(5)).await;
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }
}

/// What [`Guest::footprint`] measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Footprint {
    pub rss_kib: u64,
    pub cpu_percent: f64,
    pub msi_per_second: f64,
    /// The guest waiter's own line (`waits=N ns=T`, or its error).
    pub vblank_waiter: String,
}

/// CPU time (ns) of every thread of process `pid` so far: the sum of their schedstat run
/// times, which are exact, where utime+stime come in 10 ms ticks (0.1% of a core over 10 s,
/// as much as the goal's margin). Falls back to the ticks if schedstat is not there
/// (CONFIG_SCHED_INFO off).
fn process_cpu_ns(pid: u32) -> Result<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let Some(ns) = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|t| stats::schedstat_ns(&t))
        else {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let ticks = stats::cpu_ticks(&stat).ok_or_else(|| anyhow!("bad /proc stat"))?;
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            return Ok(ticks * 1_000_000_000 / hz);
        };
        total += ns;
    }
    Ok(total)
}

/// The RunConfig a bench guest uses: the runner's defaults, 1 vCPU (the bench shares the
/// machine; one vCPU thread keeps TCG off the second core the server and QEMU's I/O need).
pub fn run_config(arch: images::Arch, model: ModelKind, kernel: &str, out: &Path) -> RunConfig {
    RunConfig {
        card: device::CardSpec::of(model),
        arch,
        kernel: crate::runner::KernelChoice::Debian(kernel.to_string()),
        out: out.to_path_buf(),
        boot_timeout: Duration::from_secs(180),
        bind_timeout: Duration::from_secs(120),
        append: String::new(),
        scenarios: Vec::new(),
        accel: crate::accel::AccelChoice::Tcg,
        cpus: 1,
        memory_mib: 1024,
        qemu_opts: Vec::new(),
        stream_console: false,
        firmware_bme: true,
        guest_files: Vec::new(),
        shell: false,
    }
}

/// What a guest command printed and how it ended.
pub struct ShellOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
}

impl ShellOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Runs `sh -c command` in the guest to its end (the agent stops it after `wait`).
pub async fn shell_run(agent: &mut Agent, command: &str, wait: Duration) -> Result<ShellOutput> {
    let request = GuestRequest::ExecRun {
        id: "bench".into(),
        timeout_ms: wait.as_millis() as u64,
        cmd: command.into(),
    };
    // The agent's own stop (SIGTERM, then SIGKILL after up to 5 s) comes first; the margin is
    // for it.
    match agent
        .request(&request, wait + Duration::from_secs(10))
        .await
    {
        Ok(GuestReply::Client(r)) => {
            if r.details.get("timed_out") == Some(&Value::Bool(true)) {
                bail!("guest command `{command}` did not finish within {wait:?}");
            }
            Ok(ShellOutput {
                stdout: r.detail_str("stdout").unwrap_or_default().to_string(),
                stderr: r.detail_str("stderr").unwrap_or_default().to_string(),
                exit_code: r.exit_code,
            })
        }
        Ok(other) => bail!("guest command `{command}`: unexpected reply {other:?}"),
        Err(e) => bail!("guest command `{command}`: {e}"),
    }
}

/// As [`shell_run`], failing unless the command exits 0; its stdout.
pub async fn shell_check(agent: &mut Agent, command: &str, wait: Duration) -> Result<String> {
    let out = shell_run(agent, command, wait).await?;
    if !out.success() {
        bail!(
            "guest command `{command}` exited {:?}: {}",
            out.exit_code,
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

/// Starts `sh -c command` in the guest in the background (a client the agent keeps).
pub async fn shell_start(agent: &mut Agent, command: &str) -> Result<()> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let request = GuestRequest::ExecStart {
        id: format!("bench-bg-{n}"),
        cmd: command.into(),
    };
    agent
        .request(&request, AGENT_WAIT)
        .await
        .map(drop)
        .map_err(|e| anyhow!("guest command `{command}`: {e}"))
}
