//! Executing scenario steps against a booted session.
//!
//! Each step either holds or not. A step that did not hold because of the kernel (a driver
//! that never came back, a hung unbind, an expectation) fails the scenario; a step that broke
//! the rig (QEMU gone, the server would not start) is an error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use device::ModelKind;
use serde_json::{json, Value};

use crate::control::Request;
use crate::qemu::{CARD_ID, ROOT_PORT_ID};
use crate::report::CardPhase;
use crate::runner::{CardServer, ScenarioRun, Session};
use crate::scenario::{ClientKind, Condition, Exec, MappingState, Removal, Step};

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
/// pciehp waits 5 s after the attention button before powering the slot off or on.
const PCIEHP_WAIT: Duration = Duration::from_secs(30);

impl Session {
    fn bdf(&self) -> Result<String> {
        self.pci_address.clone().ok_or_else(|| {
            anyhow!("the card's PCI address is not known yet (no wait-bound before?)")
        })
    }

    /// Runs a guest command that the kernel must complete in time; a timeout is a kernel
    /// failure (a hung sysfs write), other errors are the rig's.
    async fn guest(&mut self, what: &str, command: &str, wait: Duration) -> StepResult {
        match self.agent.run(command, wait).await {
            Ok(out) if out.success() => Ok(()),
            Ok(out) => fail(format!(
                "{what} failed (exit {}): {}",
                out.status,
                out.stdout.trim()
            )),
            Err(e) if e.to_string().contains("did not finish") => {
                self.agent_stuck = true;
                fail(format!(
                    "{what} did not return within {wait:?}: the guest is stuck in the kernel"
                ))
            }
            Err(e) => Err(StepError::Rig(format!("{what}: {e:#}"))),
        }
    }

    async fn unbind(&mut self) -> StepResult {
        let bdf = self.bdf()?;
        let driver = self.cfg.model.linux_driver();
        self.guest(
            "unbind",
            &format!("echo {bdf} > /sys/bus/pci/drivers/{driver}/unbind"),
            SYSFS_WAIT,
        )
        .await
    }

    async fn bind(&mut self) -> StepResult {
        let bdf = self.bdf()?;
        let driver = self.cfg.model.linux_driver();
        // No Bus Master Enable here, unlike at boot: unbind ran pci_disable_device(), which
        // cleared it, and a driver that wants MSIs must set it again itself (hibmc does only
        // from 7.x on; see images/guest/init.sh).
        self.guest(
            "bind",
            &format!("echo {bdf} > /sys/bus/pci/drivers/{driver}/bind"),
            SYSFS_WAIT,
        )
        .await
    }

    async fn rescan(&mut self) -> StepResult {
        self.guest("rescan", "echo 1 > /sys/bus/pci/rescan", SYSFS_WAIT)
            .await
    }

    /// QMP device_del and the guest's pciehp acknowledging it.
    async fn device_del(&mut self) -> StepResult {
        let bdf = self
            .pci_address
            .clone()
            .unwrap_or_else(|| "the card".into());
        self.qmp
            .execute("device_del", json!({ "id": CARD_ID }))
            .await
            .map_err(|e| StepError::Rig(format!("device_del: {e:#}")))?;
        let deleted = self
            .qmp
            .wait_event("DEVICE_DELETED", PCIEHP_WAIT, |d| {
                d.get("device").and_then(Value::as_str) == Some(CARD_ID)
            })
            .await;
        if deleted.is_err() {
            return fail(format!(
                "pciehp did not remove {bdf} within {}s (no DEVICE_DELETED)",
                PCIEHP_WAIT.as_secs()
            ));
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
        let server = CardServer::start(
            &self.cfg,
            self.dir.path(),
            self.server_generation,
            &self.cfg.out.join("server.log"),
        )
        .await
        .map_err(|e| StepError::Rig(format!("{e:#}")))?;
        let args = json!({
            "driver": "vfio-user-pci",
            "id": CARD_ID,
            "bus": ROOT_PORT_ID,
            "socket": { "type": "unix", "path": server.socket },
        });
        self.server = Some(server);
        self.qmp
            .execute("device_add", args)
            .await
            .map_err(|e| StepError::Rig(format!("device_add: {e:#}")))?;
        // pciehp powers the slot on 5 s after the button press; then the bus is scanned.
        let deadline = Instant::now() + PCIEHP_WAIT;
        loop {
            let status = self.card_status().await?;
            if status.present() {
                self.pci_address = status.get("pci_address").map(str::to_string);
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
        let reply = server
            .request(if dead {
                &Request::Dead
            } else {
                &Request::Alive
            })
            .await?;
        if !reply.ok {
            return Err(StepError::Rig(reply.error.unwrap_or_default()));
        }
        Ok(())
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
                self.guest(
                    "remove",
                    &format!("echo 1 > /sys/bus/pci/devices/{bdf}/remove"),
                    SYSFS_WAIT,
                )
                .await?
            }
            Removal::HotUnplug => self.device_del().await?,
            Removal::Surprise => {
                self.set_dead(true).await?;
                // Let the driver meet the dead card (vblank, fbcon, clients) before the slot
                // reports the removal, as on real hardware where the link drops first.
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.device_del().await?
            }
            Removal::ServerCrash => {
                if let Some(server) = self.server.as_mut() {
                    server.kill().await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                // What the guest sees of a card whose server is gone (QEMU answers trapped
                // accesses with all-ones and logs an error for each).
                let seen = self
                    .read_mmio_bar()
                    .await
                    .map(|v| format!("{v:#010x}"))
                    .unwrap_or_else(|e| format!("{e:#}"));
                run.observe("bar_read_after_crash", seen);
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
        let bar = match self.cfg.model {
            ModelKind::Hibmc => device::hibmc::MMIO_BAR,
            ModelKind::Bochs => device::bochs::MMIO_BAR,
        };
        let out = self
            .agent
            .check(
                &format!(". /etc/vanish/lib.sh; read_bar {bdf} {bar} 0"),
                Duration::from_secs(20),
            )
            .await?;
        let v = out.trim();
        u32::from_str_radix(v.trim_start_matches("0x").trim_start_matches("0X"), 16)
            .with_context(|| format!("bad BAR read result {v:?}"))
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
            ClientKind::Kms | ClientKind::IdleOpen | ClientKind::Exec => {
                format!("/dev/dri/{}", self.drm_node.as_deref().unwrap_or("card0"))
            }
        };
        let nowait = if wait { "" } else { " nowait" };
        let cmd = format!("@client start {name} {} {device}{nowait}", kind.name());
        let out = self.agent.run(&cmd, Duration::from_secs(30)).await?;
        run.observe(&format!("client_{name}_start"), out.stdout.trim());
        if !out.success() {
            return fail(format!(
                "client {name} ({}) did not start: {}",
                kind.name(),
                out.stdout.trim()
            ));
        }
        self.clients.insert(name.to_string(), kind);
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
            let out = self
                .agent
                .run(
                    &format!("@exec run {name} {ms} -- {}", e.command),
                    e.timeout + Duration::from_secs(30),
                )
                .await?;
            let status = parse_json_line(&out.stdout)?;
            run.observe(&format!("exec_{name}"), status.clone());
            self.client_final.insert(name.clone(), status.clone());
            let printed = || {
                let text = |k: &str| {
                    status
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .trim_end()
                        .to_string()
                };
                format!("stdout: {:?}; stderr: {:?}", text("stdout"), text("stderr"))
            };
            if status.get("state").and_then(Value::as_str) == Some("hung") {
                return fail(format!(
                    "exec {name} did not finish within {}s and is hung after SIGKILL ({}); {}; stack: {}",
                    e.timeout.as_secs_f64(),
                    status.get("proc_state").and_then(Value::as_str).unwrap_or("?"),
                    printed(),
                    status.get("group_stacks").and_then(Value::as_str).unwrap_or("")
                ));
            }
            if status.get("timed_out") == Some(&Value::Bool(true)) {
                return fail(format!(
                    "exec {name} did not finish within {}s (killed); {}",
                    e.timeout.as_secs_f64(),
                    printed()
                ));
            }
            return Ok(());
        }
        let out = self
            .agent
            .run(
                &format!("@exec start {name} -- {}", e.command),
                Duration::from_secs(30),
            )
            .await?;
        run.observe(&format!("exec_{name}_start"), out.stdout.trim());
        if !out.success() {
            return fail(format!("exec {name} did not start: {}", out.stdout.trim()));
        }
        self.client_final.remove(name);
        self.clients.insert(name.clone(), ClientKind::Exec);
        Ok(())
    }

    /// Whether client `name` is an `exec` command (its report says kind "exec").
    async fn is_exec(&mut self, name: &str) -> Result<bool> {
        if self.clients.get(name) == Some(&ClientKind::Exec) {
            return Ok(true);
        }
        let r = self.client_report(name).await?;
        Ok(r.get("kind").and_then(Value::as_str) == Some("exec"))
    }

    /// A client's status as the agent reports it.
    async fn client_report(&mut self, name: &str) -> Result<Value> {
        if let Some(v) = self.client_final.get(name) {
            return Ok(v.clone());
        }
        let out = self
            .agent
            .check(&format!("@client report {name}"), Duration::from_secs(10))
            .await?;
        parse_json_line(&out)
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
        let out = self
            .agent
            .run(
                &format!("@client stop {name} 10000"),
                Duration::from_secs(30),
            )
            .await?;
        let status = parse_json_line(&out.stdout)?;
        run.observe(&format!("client_{name}"), status.clone());
        self.client_final.insert(name.to_string(), status.clone());
        self.clients.remove(name);
        if status.get("exited") != Some(&Value::Bool(true)) {
            return fail(format!(
                "client {name} did not exit after close: {}",
                status.get("state").unwrap_or(&Value::Null)
            ));
        }
        Ok(())
    }

    async fn check(&mut self, run: &mut ScenarioRun, cond: &Condition) -> StepResult {
        match cond {
            Condition::Bound => {
                let s = self.card_status().await?;
                if s.get("driver") != Some(self.cfg.model.linux_driver()) || s.get("drm").is_none()
                {
                    return fail(format!(
                        "expected {} bound with a DRM device, found driver {:?}",
                        self.cfg.model.linux_driver(),
                        s.get("driver")
                    ));
                }
            }
            Condition::Unbound => {
                let s = self.card_status().await?;
                let (node, node_gone) = self.node_left(&s);
                if !s.present() || s.get("driver").is_some() || !node_gone {
                    return fail(format!(
                        "expected the card on the bus with no driver and /dev/dri/{node} gone; present={} driver={:?} /dev/dri: {}",
                        s.present(),
                        s.get("driver"),
                        s.get("dri_nodes").unwrap_or("")
                    ));
                }
            }
            Condition::Gone => {
                let s = self.card_status().await?;
                let (node, node_gone) = self.node_left(&s);
                if s.present() || !node_gone {
                    return fail(format!(
                        "expected the card gone from /sys/bus/pci/devices and /dev/dri/{node} gone; present={} /dev/dri: {}",
                        s.present(),
                        s.get("dri_nodes").unwrap_or("")
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
            Condition::Vblank => {
                let name = self
                    .cfg
                    .model
                    .linux_driver()
                    .trim_end_matches("-drm")
                    .to_string();
                let a = self.irq_count(&name).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let b = self.irq_count(&name).await?;
                run.observe("vblank_irqs_per_s", b.saturating_sub(a));
                if b <= a {
                    return fail(format!(
                        "no vblank interrupts: /proc/interrupts count stayed at {a}"
                    ));
                }
            }
            Condition::FirstMode(mode) => {
                let s = self.card_status().await?;
                let modes = s.all("modes").first().cloned().unwrap_or_default();
                let first = modes.split_whitespace().nth(1).unwrap_or("");
                let connected = s.all("connector").iter().any(|c| c.ends_with(" connected"));
                run.observe("modes", modes.clone());
                if !connected || first != mode {
                    return fail(format!(
                        "expected a connected connector with first mode {mode}; got '{modes}'"
                    ));
                }
            }
            Condition::ClientSignal(name, sig) if self.is_exec(name).await? => {
                let r = self.client_report(name).await?;
                if r.get("exit_signal").and_then(Value::as_str) != Some(sig.as_str()) {
                    return fail(format!(
                        "command {name} was not killed by {sig} (state {}, exit code {}, signal {})",
                        r.get("state").unwrap_or(&Value::Null),
                        r.get("exit_code").unwrap_or(&Value::Null),
                        r.get("exit_signal").unwrap_or(&Value::Null)
                    ));
                }
            }
            Condition::ClientStatus(name, want) => {
                let r = self.client_report(name).await?;
                if r.get("exit_code").and_then(Value::as_i64) != Some(i64::from(*want)) {
                    return fail(format!(
                        "client {name} did not exit with status {want} (state {}, exit code {}, signal {})",
                        r.get("state").unwrap_or(&Value::Null),
                        r.get("exit_code").unwrap_or(&Value::Null),
                        r.get("exit_signal").unwrap_or(&Value::Null)
                    ));
                }
            }
            Condition::ClientSignal(name, sig) => {
                let r = self.client_report(name).await?;
                let n = r
                    .pointer(&format!("/signals/{sig}"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if n == 0 {
                    return fail(format!(
                        "client {name} got no {sig} (signals: {})",
                        r.get("signals").unwrap_or(&Value::Null)
                    ));
                }
            }
            Condition::ClientIoctlError(name, errno) => {
                let r = self.client_report(name).await?;
                let n = r
                    .pointer(&format!("/ioctl_errors/{errno}"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if n == 0 {
                    return fail(format!(
                        "client {name} saw no {errno} (ioctl errors: {})",
                        r.get("ioctl_errors").unwrap_or(&Value::Null)
                    ));
                }
            }
            Condition::ClientExited(name) => {
                let r = self.client_report(name).await?;
                let closed_ok = r
                    .get("close")
                    .and_then(Value::as_str)
                    .is_none_or(|c| c == "ok");
                if r.get("exited") != Some(&Value::Bool(true)) || !closed_ok {
                    return fail(format!("client {name} did not close and exit cleanly: {r}"));
                }
            }
            Condition::ClientMapping(name, want) => {
                let r = self.client_report(name).await?;
                let signals = r
                    .get("signals")
                    .and_then(Value::as_object)
                    .is_some_and(|m| !m.is_empty());
                let replaced = r.get("mapping").and_then(Value::as_str) == Some("replaced");
                let readback = r.get("readback").and_then(Value::as_str).unwrap_or("none");
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
                        r.get("signals").unwrap_or(&Value::Null)
                    ));
                }
            }
            Condition::ClientAlive(name) => {
                let r = self.client_report(name).await?;
                let state = r.get("state").and_then(Value::as_str).unwrap_or("");
                if !matches!(state, "ready" | "running") {
                    return fail(format!("client {name} is not running: {r}"));
                }
            }
        }
        Ok(())
    }

    /// The card's DRM node and whether it is gone from /dev/dri.
    fn node_left(&self, status: &crate::runner::CardStatus) -> (String, bool) {
        let node = self.drm_node.clone().unwrap_or_else(|| "card0".into());
        let gone = !status
            .get("dri_nodes")
            .unwrap_or("")
            .split_whitespace()
            .any(|n| n == node);
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
                    self.pci_address = status.get("pci_address").map(str::to_string);
                    self.drm_node = status.get("drm").map(str::to_string);
                    self.fb_node = status.get("fb").map(str::to_string);
                    run.pci_address.clone_from(&self.pci_address);
                    run.driver_bound = true;
                    self.ever_bound = true;
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

/// The last line of agent output that parses as JSON.
fn parse_json_line(text: &str) -> Result<Value> {
    text.lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l.trim())
                .ok()
                .filter(Value::is_object)
        })
        .ok_or_else(|| anyhow!("no JSON status in agent output: {}", text.trim()))
}
