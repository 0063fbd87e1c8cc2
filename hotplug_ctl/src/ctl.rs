//! `vanish ctl`: removal modes against a guest someone else runs.
//!
//! The card-only verbs (status, dead, alive, screenshot, crash) go to the card server's
//! control socket. The slot verbs need QEMU's QMP socket too: `unplug hot-unplug|surprise|
//! server-crash` empties the slot (after making the card dead or killing its server) and waits
//! for the guest's pciehp; `replug --socket PATH` plugs a card served on PATH into the slot.
//! `unbind` and `remove-rescan` happen inside the guest, so ctl prints what to run there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::control::{self, Request};
use crate::qmp::Qmp;
use crate::scenario::{CardBreak, Removal, DEAD_CARD_GRACE};
use crate::slot::{Slot, PCIEHP_WAIT};

/// Where the card and its slot are.
pub struct Target {
    pub control: Option<PathBuf>,
    pub qmp: Option<PathBuf>,
    /// QEMU id of the card device.
    pub device_id: String,
    /// QEMU id of the root port it sits on.
    pub bus: String,
}

impl Target {
    fn slot(&self) -> Slot {
        Slot::new(&self.device_id, &self.bus)
    }
}

fn need<'a>(path: &'a Option<PathBuf>, flag: &str, verb: &str) -> Result<&'a Path> {
    path.as_deref()
        .with_context(|| format!("'{verb}' needs {flag}"))
}

async fn card(target: &Target, verb: &str, request: &Request) -> Result<Value> {
    let path = need(&target.control, "--control", verb)?;
    if *request == Request::Crash {
        // The server dies before it can answer; a closed connection is the expected reply.
        let _ = control::request(path, request).await;
        return Ok(json!({ "ok": true, "crashed": true }));
    }
    let reply = control::request(path, request).await?;
    if !reply.ok {
        bail!(
            "{}",
            reply
                .error
                .unwrap_or_else(|| "the card server refused".into())
        );
    }
    Ok(serde_json::to_value(reply)?)
}

/// Runs one `vanish ctl` command; returns what to print.
pub async fn run(target: &Target, words: &[String]) -> Result<Value> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["unplug", mode] => {
            let mode: Removal = mode.parse().map_err(anyhow::Error::msg)?;
            if !mode.leaves_vm() {
                bail!(
                    "'{}' runs inside the guest: {}",
                    mode.name(),
                    if mode == Removal::Unbind {
                        "echo BDF > /sys/bus/pci/devices/BDF/driver/unbind"
                    } else {
                        "echo 1 > /sys/bus/pci/devices/BDF/remove"
                    }
                );
            }
            let qmp_path = need(&target.qmp, "--qmp", "unplug")?;
            let mut qmp = Qmp::connect(qmp_path, Duration::from_secs(5)).await?;
            let verb = format!("unplug {}", mode.name());
            if let Some(how) = mode.breaks_card_first() {
                let request = match how {
                    CardBreak::Dead => Request::Dead,
                    CardBreak::ServerKilled => Request::Crash,
                };
                card(target, &verb, &request).await?;
                tokio::time::sleep(DEAD_CARD_GRACE).await;
            }
            target.slot().unplug(&mut qmp, PCIEHP_WAIT).await?;
            Ok(json!({ "ok": true, "unplugged": mode.name(), "device": target.device_id }))
        }
        ["replug", "--socket", socket] => {
            let qmp_path = need(&target.qmp, "--qmp", "replug")?;
            let mut qmp = Qmp::connect(qmp_path, Duration::from_secs(5)).await?;
            target.slot().plug(&mut qmp, Path::new(socket)).await?;
            Ok(json!({ "ok": true, "replugged": target.device_id, "socket": socket }))
        }
        _ => {
            let request = Request::from_words(words).map_err(|e| {
                anyhow::anyhow!("{e}; with --qmp also: unplug hot-unplug|surprise|server-crash, replug --socket PATH")
            })?;
            card(
                target,
                words.first().map(String::as_str).unwrap_or(""),
                &request,
            )
            .await
        }
    }
}
