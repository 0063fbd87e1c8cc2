//! Executing scenario steps against a booted session.
//!
//! Each step either holds or not. A step that did not hold because of the kernel (a driver
//! that never came back, a hung unbind, an expectation) fails the scenario; a step that broke
//! the rig (QEMU gone, the server would not start) is an error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use device::ModelKind;
use guest_protocol::{
    CardStatus, ClientReport, GuestError, Reply as GuestReply, Request as GuestRequest,
};
use serde_json::Value;

use super::{Running, ScenarioRun, Session, AGENT_WAIT};
use crate::agent::AgentError;
use crate::report::CardPhase;
use crate::report::ScenarioReport;
use crate::scenario::{
    CardBreak, ClientKind, Condition, Exec, MappingState, Removal, Scenario, Step, DEAD_CARD_GRACE,
};
use crate::slot::{Slot, UnplugError, PCIEHP_WAIT};

/// Why a step did not hold.
pub enum StepError {
    /// The kernel misbehaved: the scenario fails.
    Fail(String),
    /// The rig broke: the scenario is an error.
    Rig(String),
}

impl From<anyhow::Error> for StepError {
    fn from(e: anyhow::Error) -> Self {
        StepError::Rig(format!("{e:#}"))
    }
}

type StepResult = std::result::Result<(), StepError>;

fn fail<T>(msg: impl Into<String>) -> std::result::Result<T, StepError> {
    Err(StepError::Fail(msg.into()))
}

/// How long the guest gets for a sysfs write (unbind, remove, bind): longer means hung.
const SYSFS_WAIT: Duration = Duration::from_secs(30);

impl Session {
    fn bdf(&self) -> Result<String> {
        self.pci_address.clone().ok_or_else(|| {
            anyhow!("the card's PCI address is not known yet (no wait-bound before?)")
        })
    }

    /// Writes `value` to a sysfs file; the kernel must return in time. A timeout is a kernel
    /// failure (a hung sysfs write), as is an error the write returned; other errors are the
    /// rig's.
    async fn sysfs(&mut self, what: &str, path: String, value: String) -> StepResult {
        let request = GuestRequest::SysfsWrite {
            path,
            value,
            timeout_ms: SYSFS_WAIT.as_millis() as u64,
        };
        // The agent gives up at SYSFS_WAIT and says so; the margin is for its answer.
        match self
            .ask(&request, SYSFS_WAIT + Duration::from_secs(5))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_timeout() => {
                self.agent_stuck = true;
                fail(format!(
                    "{what} did not return within {SYSFS_WAIT:?}: the guest is stuck in the kernel"
                ))
            }
            Err(AgentError::Guest(GuestError::Failed { message })) => {
                fail(format!("{what} failed: {message}"))
            }
            Err(e) => Err(StepError::Rig(format!("{what}: {e}"))),
        }
    }

    async fn unbind(&mut self) -> StepResult {
        let bdf = self.bdf()?;
        let driver = self.cfg.model().linux_driver();
        self.sysfs(
            "unbind",
            format!("/sys/bus/pci/drivers/{driver}/unbind"),
            bdf,
        )
        .await
    }

    async fn bind(&mut self) -> StepResult {
        let bdf = self.bdf()?;
        let driver = self.cfg.model().linux_driver();
        // No Bus Master Enable here, unlike at boot: unbind ran pci_disable_device(), which
        // cleared it, and a driver that wants MSIs must set it again itself (hibmc does only
        // from 7.x on; see images/guest/init.sh).
        self.sysfs("bind", format!("/sys/bus/pci/drivers/{driver}/bind"), bdf)
            .await
    }

    async fn rescan(&mut self) -> StepResult {
        self.sysfs("rescan", "/sys/bus/pci/rescan".into(), "1".into())
            .await
    }

    /// QMP device_del and the guest's pciehp acknowledging it.
    async fn device_del(&mut self) -> StepResult {
        let bdf = self
            .pci_address
            .clone()
            .unwrap_or_else(|| "the card".into());
        match Slot::default().unplug(&mut self.qmp, PCIEHP_WAIT).await {
            Ok(()) => {}
            Err(e @ UnplugError::Qmp(_)) => return Err(StepError::Rig(e.to_string())),
            Err(UnplugError::NotReleased(_)) => {
                return fail(format!(
                    "pciehp did not remove {bdf} within {}s (no DEVICE_DELETED)",
                    PCIEHP_WAIT.as_secs()
                ))
            }
        }
        // QEMU has dropped the device; its server sees the disconnect. Stop it cleanly unless
        // it was killed already.
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        Ok(())
    }

    /// A fresh card server and QMP device_add on the same root port.
    async fn device_add(&mut self) -> StepResult {
        if let Some(old) = self.server.take() {
            old.stop().await;
        }
        self.server_generation += 1;
        let server = super::start_card(
            &self.cfg,
            self.dir.path(),
            self.server_generation,
            &self.cfg.out.join("server.log"),
        )
        .await
        .map_err(|e| StepError::Rig(format!("{e:#}")))?;
        let socket = server.socket.clone();
        self.server = Some(server);
        Slot::default()
            .plug(&mut self.qmp, &socket)
            .await
            .map_err(|e| StepError::Rig(format!("device_add: {e:#}")))?;
        // pciehp powers the slot on 5 s after the button press; then the bus is scanned.
        let deadline = Instant::now() + PCIEHP_WAIT;
        loop {
            let status = self.card_status().await?;
            if status.present {
                self.pci_address = status.pci_address;
                break;
            }
            if Instant::now() > deadline {
                return fail(format!(
                    "pciehp did not add the new card within {}s",
                    PCIEHP_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }

    async fn set_dead(&mut self, dead: bool) -> StepResult {
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| anyhow!("no card server is running"))?;
        server
            .set_dead(dead)
            .await
            .map_err(|e| StepError::Rig(format!("{e:#}")))
    }

    async fn unplug(&mut self, run: &mut ScenarioRun, mode: Removal) -> StepResult {
        let started = Instant::now();
        // The card dies first in a surprise removal or a server crash; an orderly removal
        // starts taking it away at once.
        run.phase(
            self,
            match mode {
                Removal::Surprise | Removal::ServerCrash => CardPhase::Dead,
                _ => CardPhase::Removed,
            },
        );
        match mode {
            Removal::Unbind => self.unbind().await?,
            Removal::RemoveRescan => {
                let bdf = self.bdf()?;
                self.sysfs(
                    "remove",
                    format!("/sys/bus/pci/devices/{bdf}/remove"),
                    "1".into(),
                )
                .await?
            }
            Removal::HotUnplug | Removal::Surprise | Removal::ServerCrash => {
                match mode.breaks_card_first() {
                    None => {}
                    Some(CardBreak::Dead) => {
                        self.set_dead(true).await?;
                        tokio::time::sleep(DEAD_CARD_GRACE).await;
                    }
                    Some(CardBreak::ServerKilled) => {
                        if let Some(server) = self.server.as_mut() {
                            server.kill().await;
                        }
                        tokio::time::sleep(DEAD_CARD_GRACE).await;
                        // What the guest sees of a card whose server is gone (QEMU answers
                        // trapped accesses with all-ones and logs an error for each).
                        let seen = self
                            .read_mmio_bar()
                            .await
                            .map(|v| format!("{v:#010x}"))
                            .unwrap_or_else(|e| format!("{e:#}"));
                        run.observe("bar_read_after_crash", seen);
                    }
                }
                self.device_del().await?
            }
        }
        run.observe(
            &format!("{}_s", mode.name()),
            started.elapsed().as_secs_f64(),
        );
        run.phase(self, CardPhase::Removed);
        self.last_removal = Some(mode);
        Ok(())
    }

    async fn replug(&mut self, run: &mut ScenarioRun) -> StepResult {
        let started = Instant::now();
        run.phase(self, CardPhase::ReAdded);
        match self.last_removal.take() {
            None => bail_step("replug: the card was not removed")?,
            Some(Removal::Unbind) => self.bind().await?,
            Some(Removal::RemoveRescan) => self.rescan().await?,
            Some(_) => self.device_add().await?,
        }
        run.observe("replug_s", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Reads the first register of the card's MMIO BAR from inside the guest.
    pub async fn read_mmio_bar(&mut self) -> Result<u32> {
        let bdf = self.bdf()?;
        let bar = match self.cfg.model() {
            ModelKind::Hibmc => device::hibmc::MMIO_BAR,
            ModelKind::Bochs => device::bochs::MMIO_BAR,
        };
        let request = GuestRequest::Peek {
            bdf,
            bar: bar as u8,
            offset: 0,
        };
        match self.ask(&request, Duration::from_secs(20)).await? {
            GuestReply::Peek(v) => Ok(v),
            other => bail!("agent: peek answered {other:?}"),
        }
    }

    async fn client_start(
        &mut self,
        run: &mut ScenarioRun,
        kind: ClientKind,
        name: &str,
        wait: bool,
    ) -> StepResult {
        // The card's own nodes: after a rebind with a stale fd open, the new DRM device is
        // card1, not card0.
        let device = match kind {
            ClientKind::Fbdev => format!("/dev/{}", self.fb_node.as_deref().unwrap_or("fb0")),
            ClientKind::Kms | ClientKind::IdleOpen => {
                format!("/dev/dri/{}", self.drm_node.as_deref().unwrap_or("card0"))
            }
        };
        let request = GuestRequest::ClientStart {
            id: name.to_string(),
            kind,
            device,
            wait,
        };
        match self.ask(&request, Duration::from_secs(30)).await {
            Ok(GuestReply::Started { id, pid, report }) => {
                run.observe(
                    &format!("client_{name}_start"),
                    started_text(&id, pid, &report),
                );
            }
            Err(AgentError::Guest(GuestError::ClientFailed { message, report })) => {
                let mut text = report.as_ref().map_or_else(String::new, |r| {
                    format!("{}\n", started_text(&r.id, r.pid, &Some((**r).clone())))
                });
                text.push_str(&format!("error: {message}"));
                run.observe(&format!("client_{name}_start"), text.clone());
                return fail(format!(
                    "client {name} ({}) did not start: {text}",
                    kind.name()
                ));
            }
            Ok(other) => return bail_step(&format!("agent: client-start answered {other:?}")),
            Err(e) => return Err(StepError::Rig(format!("client {name}: {e}"))),
        }
        self.clients.insert(name.to_string(), Running::Client(kind));
        Ok(())
    }

    /// `exec`: a foreground command runs to its end (or its timeout: a failure); a background
    /// one becomes a client that `close`, `expect client` work on.
    async fn exec(&mut self, run: &mut ScenarioRun, e: &Exec) -> StepResult {
        let name = &e.name;
        if !e.background {
            let ms = e.timeout.as_millis();
            // The agent stops a command past its timeout itself (SIGTERM, SIGKILL, up to 5 s
            // for it to go) and answers; the margin is for the agent.
            let request = GuestRequest::ExecRun {
                id: name.clone(),
                timeout_ms: ms as u64,
                cmd: e.command.clone(),
            };
            let status = self
                .client_reply(&request, e.timeout + Duration::from_secs(30))
                .await?;
            run.observe(&format!("exec_{name}"), status.to_value());
            self.client_final.insert(name.clone(), status.clone());
            let printed = || {
                let text = |k: &str| status.detail_str(k).unwrap_or("").trim_end().to_string();
                format!("stdout: {:?}; stderr: {:?}", text("stdout"), text("stderr"))
            };
            if status.state.as_deref() == Some("hung") {
                return fail(format!(
                    "exec {name} did not finish within {}s and is hung after SIGKILL ({}); {}; stack: {}",
                    e.timeout.as_secs_f64(),
                    status.detail_str("proc_state").unwrap_or("?"),
                    printed(),
                    status.detail_str("group_stacks").unwrap_or("")
                ));
            }
            if status.details.get("timed_out") == Some(&Value::Bool(true)) {
                return fail(format!(
                    "exec {name} did not finish within {}s (killed); {}",
                    e.timeout.as_secs_f64(),
                    printed()
                ));
            }
            return Ok(());
        }
        let request = GuestRequest::ExecStart {
            id: name.clone(),
            cmd: e.command.clone(),
        };
        match self.ask(&request, Duration::from_secs(30)).await {
            Ok(GuestReply::Started { id, pid, report }) => {
                run.observe(
                    &format!("exec_{name}_start"),
                    started_text(&id, pid, &report),
                );
            }
            Err(AgentError::Guest(
                e @ (GuestError::Failed { .. } | GuestError::BadRequest { .. }),
            )) => {
                run.observe(&format!("exec_{name}_start"), format!("error: {e}"));
                return fail(format!("exec {name} did not start: error: {e}"));
            }
            Ok(other) => return bail_step(&format!("agent: exec-start answered {other:?}")),
            Err(e) => return Err(StepError::Rig(format!("exec {name}: {e}"))),
        }
        self.client_final.remove(name);
        self.clients.insert(name.clone(), Running::Exec);
        Ok(())
    }

    /// Sends a request answered by a client report.
    async fn client_reply(
        &mut self,
        request: &GuestRequest,
        wait: Duration,
    ) -> Result<ClientReport> {
        match self.ask(request, wait).await? {
            GuestReply::Client(r) => Ok(r),
            other => bail!("agent: answered {other:?} instead of a client report"),
        }
    }

    /// Whether client `name` is an `exec` command (its report says kind "exec").
    async fn is_exec(&mut self, name: &str) -> Result<bool> {
        if self.clients.get(name) == Some(&Running::Exec) {
            return Ok(true);
        }
        let r = self.client_report(name).await?;
        Ok(r.kind.as_deref() == Some("exec"))
    }

    /// A client's status as the agent reports it.
    async fn client_report(&mut self, name: &str) -> Result<ClientReport> {
        if let Some(v) = self.client_final.get(name) {
            return Ok(v.clone());
        }
        let request = GuestRequest::ClientReport {
            id: name.to_string(),
        };
        self.client_reply(&request, Duration::from_secs(10)).await
    }

    async fn client_close(&mut self, run: &mut ScenarioRun, name: &str) -> StepResult {
        // A close after the card left (or came back as a new device) is the late close that
        // frees what the removal left behind.
        let before = self.phase;
        let late = matches!(
            before,
            CardPhase::Removed | CardPhase::ReAdded | CardPhase::Dead
        );
        if late {
            run.phase(self, CardPhase::LateClose);
        }
        let r = self.client_close_inner(run, name).await;
        if late {
            run.phase(self, before);
        }
        r
    }

    async fn client_close_inner(&mut self, run: &mut ScenarioRun, name: &str) -> StepResult {
        let request = GuestRequest::ClientStop {
            id: name.to_string(),
            timeout_ms: 10_000,
        };
        let status = self.client_reply(&request, Duration::from_secs(30)).await?;
        run.observe(&format!("client_{name}"), status.to_value());
        self.client_final.insert(name.to_string(), status.clone());
        self.clients.remove(name);
        if !status.exited {
            return fail(format!(
                "client {name} did not exit after close: {}",
                status
                    .state
                    .as_ref()
                    .map_or(Value::Null, |s| Value::from(s.as_str()))
            ));
        }
        Ok(())
    }

    async fn check(&mut self, run: &mut ScenarioRun, cond: &Condition) -> StepResult {
        match cond {
            Condition::Bound => {
                let s = self.card_status().await?;
                if s.driver.as_deref() != Some(self.cfg.model().linux_driver()) || s.drm.is_empty()
                {
                    return fail(format!(
                        "expected {} bound with a DRM device, found driver {:?}",
                        self.cfg.model().linux_driver(),
                        s.driver.as_deref()
                    ));
                }
            }
            Condition::Unbound => {
                let s = self.card_status().await?;
                let (node, node_gone) = self.node_left(&s);
                if !s.present || s.driver.is_some() || !node_gone {
                    return fail(format!(
                        "expected the card on the bus with no driver and /dev/dri/{node} gone; present={} driver={:?} /dev/dri: {}",
                        u8::from(s.present),
                        s.driver.as_deref(),
                        s.dri_nodes.join(" ")
                    ));
                }
            }
            Condition::Gone => {
                let s = self.card_status().await?;
                let (node, node_gone) = self.node_left(&s);
                if s.present || !node_gone {
                    return fail(format!(
                        "expected the card gone from /sys/bus/pci/devices and /dev/dri/{node} gone; present={} /dev/dri: {}",
                        u8::from(s.present),
                        s.dri_nodes.join(" ")
                    ));
                }
            }
            Condition::Drawing => {
                let path = self.next_screenshot(&run.name, "drawing");
                match self.screenshot(&path, Duration::from_secs(30)).await {
                    Ok(ink) => {
                        run.observe("screenshot_ink", ink);
                        run.screenshot = Some(path);
                    }
                    Err(e) => return fail(format!("{e:#}")),
                }
            }
            Condition::Pattern => {
                let path = self.next_screenshot(&run.name, "pattern");
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let shot = self.screenshot(&path, Duration::from_secs(20)).await;
                    let bars =
                        shot.is_ok() && crate::pattern::shows_colour_bars(&path).unwrap_or(false);
                    if bars {
                        run.screenshot = Some(path);
                        break;
                    }
                    if Instant::now() > deadline {
                        return fail("the card does not show the kms client's colour bars");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Condition::BarReadsOnes => {
                let v = self.read_mmio_bar().await?;
                run.observe("bar_read_dead", format!("{v:#010x}"));
                if v != 0xffff_ffff {
                    return fail(format!(
                        "a read of the dead card's register BAR returned {v:#010x}, not 0xffffffff"
                    ));
                }
            }
            Condition::CardNodes => {
                let s = self.card_status().await?;
                let mut missing = Vec::new();
                if !s.fb0 {
                    missing.push("/dev/fb0 does not exist: no fbdev emulation on our card");
                }
                if !s.dri_card0 {
                    missing.push("/dev/dri/card0 does not exist");
                }
                if !missing.is_empty() {
                    return fail(missing.join("; "));
                }
            }
            Condition::BehindRootPort => {
                // QEMU's pcie-root-port is 1b36:000c.
                let s = self.card_status().await?;
                if s.parent_id.as_deref() != Some("0x1b36:0x000c") {
                    return fail(format!(
                        "the card is not behind the pcie-root-port (parent {:?})",
                        s.parent_id.as_deref()
                    ));
                }
            }
            Condition::ConsoleDrawn => {
                let shot = self.cfg.out.join("screenshot.png");
                // A rig error, not a failure: a kernel without fbcon on the card (or a card
                // server that cannot scan out) leaves nothing to judge on the screen.
                let ink = self.screenshot(&shot, Duration::from_secs(30)).await?;
                run.observe("screenshot_ink", ink);
                run.screenshot = Some(shot);
                if let Some(server) = &self.server {
                    if let Ok(Some(st)) = server.stats().await {
                        run.observe("scanout", st.scanout.clone().unwrap_or_default());
                        run.observe("unimplemented_accesses", st.unimplemented_accesses);
                        run.observe(
                            "registers",
                            serde_json::to_value(&st.registers).unwrap_or_default(),
                        );
                    }
                }
            }
            Condition::VblankSinceBoot if self.cfg.model().info().msi_vectors == 0 => {}
            Condition::VblankSinceBoot => {
                let (a, b) = self.vblank_probe().await?;
                run.observe("vblank_irqs_per_s", b.saturating_sub(a));
                run.observe("vblank_irqs_total", b);
                // Vblank IRQs flow only while something waits for vblank (fbcon's modeset
                // did); after it they may stop (drm_vblank_off), so the total since boot is
                // what is judged: none at all means the driver's MSIs never arrived.
                if b == 0 {
                    return fail("no vblank interrupt arrived while fbcon set its mode (the card's MSIs are lost: is Bus Master Enable set?)");
                }
            }
            Condition::Vblank => {
                let (a, b) = self.vblank_probe().await?;
                run.observe("vblank_irqs_per_s", b.saturating_sub(a));
                if b <= a {
                    return fail(format!(
                        "no vblank interrupts: /proc/interrupts count stayed at {a}"
                    ));
                }
            }
            Condition::FirstMode(mode) => {
                let s = self.card_status().await?;
                let modes = s
                    .connectors
                    .first()
                    .map(guest_protocol::Connector::modes_line)
                    .unwrap_or_default();
                let first = modes.split_whitespace().nth(1).unwrap_or("");
                let connected = s.connectors.iter().any(|c| c.status == "connected");
                run.observe("modes", modes.clone());
                if !connected || first != mode {
                    return fail(format!(
                        "expected a connected connector with first mode {mode}; got '{modes}'"
                    ));
                }
            }
            Condition::ClientSignal(name, sig) if self.is_exec(name).await? => {
                let r = self.client_report(name).await?;
                if r.exit_signal.as_deref() != Some(sig.as_str()) {
                    return fail(format!(
                        "command {name} was not killed by {sig} ({})",
                        ended(&r)
                    ));
                }
            }
            Condition::ClientStatus(name, want) => {
                let r = self.client_report(name).await?;
                if r.exit_code.map(i64::from) != Some(i64::from(*want)) {
                    return fail(format!(
                        "client {name} did not exit with status {want} ({})",
                        ended(&r)
                    ));
                }
            }
            Condition::ClientSignal(name, sig) => {
                let r = self.client_report(name).await?;
                if r.counter("signals", sig) == 0 {
                    return fail(format!(
                        "client {name} got no {sig} (signals: {})",
                        r.details.get("signals").unwrap_or(&Value::Null)
                    ));
                }
            }
            Condition::ClientIoctlError(name, errno) => {
                let r = self.client_report(name).await?;
                if r.counter("ioctl_errors", errno) == 0 {
                    return fail(format!(
                        "client {name} saw no {errno} (ioctl errors: {})",
                        r.details.get("ioctl_errors").unwrap_or(&Value::Null)
                    ));
                }
            }
            Condition::ClientExited(name) => {
                let r = self.client_report(name).await?;
                let closed_ok = r.detail_str("close").is_none_or(|c| c == "ok");
                if !r.exited || !closed_ok {
                    return fail(format!(
                        "client {name} did not close and exit cleanly: {}",
                        r.to_value()
                    ));
                }
            }
            Condition::ClientMapping(name, want) => {
                let r = self.client_report(name).await?;
                let signals = r
                    .details
                    .get("signals")
                    .and_then(Value::as_object)
                    .is_some_and(|m| !m.is_empty());
                let replaced = r.detail_str("mapping") == Some("replaced");
                let readback = r.detail_str("readback").unwrap_or("none");
                let seen = if signals || replaced {
                    MappingState::Faulted
                } else if readback == "zero" {
                    MappingState::Zeroed
                } else if readback == "echo" {
                    MappingState::Stale
                } else {
                    return fail(format!(
                        "client {name} has no mapping to judge (readback {readback})"
                    ));
                };
                run.observe(&format!("client_{name}_mapping"), seen.name());
                if seen != *want {
                    return fail(format!(
                        "client {name}'s mapping is {}, not {} (readback {readback}, signals {})",
                        seen.name(),
                        want.name(),
                        r.details.get("signals").unwrap_or(&Value::Null)
                    ));
                }
            }
            Condition::ClientAlive(name) => {
                let r = self.client_report(name).await?;
                let state = r.state.as_deref().unwrap_or("");
                if !matches!(state, "ready" | "running") {
                    return fail(format!("client {name} is not running: {}", r.to_value()));
                }
            }
        }
        Ok(())
    }

    /// Records the guest's view of the card and what its connectors report.
    async fn observe_card(&mut self, run: &mut ScenarioRun) -> StepResult {
        let status = self.card_status().await?;
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
        let (vendor, device) = self.cfg.model().pci_id();
        let probed = match self
            .ask(&GuestRequest::ProbeModes { vendor, device }, AGENT_WAIT)
            .await
            .map_err(|e| StepError::Rig(format!("probe-modes: {e}")))?
        {
            GuestReply::Connectors(c) => c,
            other => return bail_step(&format!("agent: probe-modes answered {other:?}")),
        };
        let lines = |f: fn(&guest_protocol::Connector) -> String| -> Vec<String> {
            probed.iter().map(f).collect()
        };
        run.observe("connectors", lines(guest_protocol::Connector::status_line));
        run.observe("modes", lines(guest_protocol::Connector::modes_line));
        run.observe("fb0", status.fb0);
        run.observe("dri_card0", status.dri_card0);
        Ok(())
    }

    /// The card's DRM node and whether it is gone from /dev/dri.
    fn node_left(&self, status: &CardStatus) -> (String, bool) {
        let node = self.drm_node.clone().unwrap_or_else(|| "card0".into());
        let gone = !status.dri_nodes.contains(&node);
        (node, gone)
    }

    fn next_screenshot(&mut self, scenario: &str, what: &str) -> PathBuf {
        self.screenshots += 1;
        let safe: String = scenario
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.cfg
            .out
            .join(format!("{safe}-{:02}-{what}.png", self.screenshots))
    }

    /// Runs one step (recursively for repeats), recording it on `run`.
    pub async fn run_step(&mut self, run: &mut ScenarioRun, step: &Step) -> StepResult {
        if !matches!(step, Step::Repeat(..)) {
            run.step(self, &step.to_string());
        }
        match step {
            Step::WaitBound(wait) => match self.wait_bound(*wait).await {
                Ok(status) => {
                    if !self.ever_bound {
                        crate::say(&format!(
                            "{} bound to {}",
                            self.cfg.model().linux_driver(),
                            status.pci_address.as_deref().unwrap_or("?")
                        ));
                    }
                    self.record_bound(&status);
                    run.pci_address.clone_from(&status.pci_address);
                    run.driver_bound = true;
                }
                Err(e) if self.ever_bound => return fail(format!("{e:#}")),
                Err(e) => {
                    return Err(StepError::Rig(format!(
                        "{e:#} (the driver never bound: the kernel was not judged)"
                    )))
                }
            },
            Step::Client {
                kind,
                name,
                wait_ready,
            } => self.client_start(run, *kind, name, *wait_ready).await?,
            Step::Close(name) => self.client_close(run, name).await?,
            Step::Exec(e) => self.exec(run, e).await?,
            Step::Unplug(mode) => self.unplug(run, *mode).await?,
            Step::Replug => self.replug(run).await?,
            Step::Bind => {
                run.phase(self, CardPhase::ReAdded);
                self.bind().await?
            }
            Step::Unbind => {
                run.phase(self, CardPhase::Removed);
                self.unbind().await?;
                self.last_removal = Some(Removal::Unbind);
            }
            Step::Rescan => {
                run.phase(self, CardPhase::ReAdded);
                self.rescan().await?;
                self.last_removal = None;
            }
            Step::Dead => {
                run.phase(self, CardPhase::Dead);
                self.set_dead(true).await?
            }
            Step::Alive => {
                self.set_dead(false).await?;
                run.phase(self, CardPhase::Present);
            }
            Step::Sleep(d) => tokio::time::sleep(*d).await,
            Step::Screenshot(name) => {
                let path = self.next_screenshot(&run.name, name);
                let ink = self
                    .screenshot(&path, Duration::from_secs(10))
                    .await
                    .map_err(|e| StepError::Fail(format!("{e:#}")))?;
                run.observe(&format!("screenshot_{name}_ink"), ink);
                run.screenshot = Some(path);
            }
            Step::ObserveCard => self.observe_card(run).await?,
            Step::Expect(cond) => self.check(run, cond).await?,
            Step::Repeat(n, steps) => {
                for i in 1..=*n {
                    run.step(self, &format!("repeat {i}/{n}"));
                    for s in steps {
                        Box::pin(self.run_step(run, s)).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn bail_step(msg: &str) -> StepResult {
    Err(StepError::Rig(msg.to_string()))
}

/// How a client or command ended, for failure messages.
fn ended(r: &ClientReport) -> String {
    let text = |v: &Option<String>| v.as_deref().map_or("null".into(), |s| format!("{s:?}"));
    format!(
        "state {}, exit code {}, signal {}",
        text(&r.state),
        r.exit_code.map_or("null".into(), |c| c.to_string()),
        text(&r.exit_signal)
    )
}

/// What a start reply showed in reports before the protocol was typed: `started ID pid=N`,
/// then the client's report as JSON if it waited for the client.
fn started_text(id: &str, pid: i32, report: &Option<ClientReport>) -> String {
    match report {
        Some(r) => format!("started {id} pid={pid}\n{}", r.to_value()),
        None => format!("started {id} pid={pid}"),
    }
}

/// Runs one scenario's steps; the first step that does not hold ends it.
pub async fn run_scenario(session: &mut Session, scenario: &Scenario) -> ScenarioReport {
    crate::say(&format!("scenario {}", scenario.name));
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
