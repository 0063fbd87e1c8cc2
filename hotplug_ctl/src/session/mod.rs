//! A booted guest with the card: the handles the rig drives ([`Card`], [`Slot`], [`Guest`]) and
//! the state a run keeps about them, private to this module so that it stays consistent (the
//! card's address and nodes are recorded in one place, [`Session::record_bound`]).
//!
//! [`steps`] interprets scenario steps over a session; [`ScenarioRun`] turns one scenario's
//! outcome and kernel log into a report entry. The runner (`crate::runner`) only boots and
//! sequences: it sees a session through its methods.
//!
//! [`Slot`]: crate::slot::Slot

pub mod steps;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use guest_protocol::{CardStatus, ClientReport, Reply as GuestReply, Request as GuestRequest};

use crate::agent::{AgentError, Guest};
use crate::card::Card;
use crate::config::RunConfig;
use crate::fingerprint;
use crate::qemu::Vm;
use crate::qmp::Qmp;
use crate::report::{CardPhase, FoundSplat, ScenarioReport, SplatStatus, Verdict};
use crate::scenario::{ClientKind, Removal};

/// What runs in the guest under a name a scenario gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Running {
    /// A `client` step's client.
    Client(ClientKind),
    /// An `exec ... background` command.
    Exec,
}
use crate::splat;
use crate::splat::SplatKind;

/// The `vanish serve` arguments for `cfg`'s card on these sockets: the card goes whole, as
/// its spec's JSON.
pub fn serve_args(cfg: &RunConfig, socket: &Path, control: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "serve".into(),
        "--spec-json".into(),
        cfg.card.to_json().into(),
        "--socket".into(),
        socket.into(),
        "--control".into(),
        control.into(),
    ]
}

/// Starts the card server for generation `generation` of `cfg`'s card, sockets in `dir`.
pub async fn start_card(cfg: &RunConfig, dir: &Path, generation: u32, log: &Path) -> Result<Card> {
    let socket = dir.join(format!("card{generation}.sock"));
    let control = dir.join(format!("card{generation}.ctl"));
    Card::start(serve_args(cfg, &socket, &control), socket, control, log).await
}

/// A booted guest with the card, and everything needed to drive it.
pub struct Session {
    cfg: RunConfig,
    vm: Vm,
    qmp: Qmp,
    /// The guest agent: what the runner asks the guest.
    guest: Guest,
    server: Option<Card>,
    kernel_release: String,
    dir: tempfile::TempDir,
    server_generation: u32,
    /// The card's address in the guest, as of the last wait-bound or re-plug.
    pci_address: Option<String>,
    /// How the card last left, so `replug` knows how to bring it back.
    last_removal: Option<Removal>,
    /// Clients started and not yet closed.
    clients: BTreeMap<String, Running>,
    /// Final reports of closed clients.
    client_final: BTreeMap<String, ClientReport>,
    /// The driver bound at least once in this boot (later bind failures are the kernel's).
    ever_bound: bool,
    /// A guest command timed out: the agent may be blocked in the kernel; reboot before more.
    agent_stuck: bool,
    screenshots: u32,
    /// The card's DRM node (`card0`, or `card1` while a stale fd keeps the old one alive)
    /// and fbdev node, as of the last wait-bound.
    drm_node: Option<String>,
    fb_node: Option<String>,
    /// The card's state, for attributing splats to a phase.
    phase: CardPhase,
    /// Nothing ran since this boot came up: the next scenario counts the boot's own lines.
    fresh: bool,
}

const AGENT_WAIT: Duration = Duration::from_secs(30);
/// How long after the driver bound (and its DRM node appeared) an fbdev-emulating card's fb node
/// may take to show: the fbdev client is set up at the end of probe. A kernel without fbdev
/// emulation never shows one, so the wait then carries on without it.
const FB_NODE_GRACE: Duration = Duration::from_secs(5);

impl Session {
    /// A session on a guest that has just come up (its agent answered) with the card cold-plugged.
    pub fn new(
        cfg: RunConfig,
        vm: Vm,
        qmp: Qmp,
        guest: Guest,
        server: Card,
        kernel_release: String,
        dir: tempfile::TempDir,
    ) -> Session {
        Session {
            cfg,
            vm,
            qmp,
            guest,
            server: Some(server),
            kernel_release,
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
        }
    }

    /// The release the guest's kernel reports (`uname -r`).
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    /// A guest request timed out: the agent may be blocked in the kernel, so the next
    /// scenario needs a fresh boot.
    pub fn agent_stuck(&self) -> bool {
        self.agent_stuck
    }

    /// QEMU's QMP socket, for `vanish ctl` from another terminal.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    /// The running card server's control socket, if one runs.
    pub fn card_control(&self) -> Option<&Path> {
        self.server.as_ref().map(|s| s.control.as_path())
    }

    /// The guest agent, for a shell on this terminal.
    pub fn guest(&mut self) -> &mut Guest {
        &mut self.guest
    }

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
        let (vendor, device) = self.cfg.model().pci_id();
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
        let driver = self.cfg.model().linux_driver();
        let wants_fb = self.cfg.model().emulates_fbdev();
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
            .model()
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
        let module = session.cfg.model().linux_module().replace('-', "_");
        let mut splats: Vec<FoundSplat> = splat::find_splats(&log)
            .into_iter()
            .map(|mut s| {
                let at = self.log_mark + s.line.saturating_sub(1);
                let (step, phase) = splat::step_of(&self.steps, |(m, _, _)| *m, at)
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

impl Session {
    /// Whether QEMU has died of SIGABRT (an assertion in QEMU itself), as a short description.
    /// A QMP socket that broke may be a second ahead of the process's exit: wait for it briefly.
    pub async fn qemu_aborted(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + Duration::from_secs(3);
        let status = loop {
            if let Some(status) = self.vm.exited() {
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
    pub async fn shutdown(mut self) {
        let console = &self.vm.console;
        drain_console(console, console.mark().saturating_sub(DRAIN_LINES)).await;
        let _ = self.qmp.execute("quit", serde_json::json!({})).await;
        self.vm.stop(Duration::from_secs(5)).await;
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
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
        let log = include_str!("../../tests/fixtures/splats/lockdep_circular.txt");
        let why = checker_turned_off(log, &found(log)).unwrap_or_default();
        assert!(why.starts_with("lockdep is off after its report"), "{why}");
        let clean = include_str!("../../tests/fixtures/splats/clean_boot.txt");
        assert_eq!(checker_turned_off(clean, &found(clean)), None);
    }
}
