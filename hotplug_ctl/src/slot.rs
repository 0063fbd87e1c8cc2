//! The card's slot: one QEMU device on one pcie-root-port, plugged and emptied over QMP. Used by
//! the runner's `unplug`/`replug` steps and by `vanish ctl`, so the device JSON, `device_del`
//! and the wait for the guest's pciehp exist once.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::qmp::Qmp;

/// The QEMU id of the card `vanish run` boots with, and of the hotplug-capable root port it
/// sits on.
pub const CARD_ID: &str = "gpu0";
pub const ROOT_PORT_ID: &str = "rp1";

/// pciehp waits 5 s after the attention button before powering the slot off or on; a slot
/// that has not changed 30 s later will not.
pub const PCIEHP_WAIT: Duration = Duration::from_secs(30);

/// One device id on one root port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// QEMU id of the card device.
    pub device_id: String,
    /// QEMU id of the root port it sits on.
    pub port_id: String,
}

/// Why the slot did not empty.
#[derive(Debug)]
pub enum UnplugError {
    /// QEMU refused `device_del` (or QMP broke): the rig's problem.
    Qmp(anyhow::Error),
    /// QEMU pressed the button but the guest never released the slot: the kernel's problem.
    NotReleased(Duration),
}

impl std::fmt::Display for UnplugError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnplugError::Qmp(e) => write!(f, "device_del: {e:#}"),
            UnplugError::NotReleased(wait) => write!(
                f,
                "the guest's pciehp did not release the slot within {} s (no DEVICE_DELETED)",
                wait.as_secs()
            ),
        }
    }
}

impl std::error::Error for UnplugError {}

impl Default for Slot {
    /// The slot `vanish run` boots the card in.
    fn default() -> Slot {
        Slot::new(CARD_ID, ROOT_PORT_ID)
    }
}

impl Slot {
    pub fn new(device_id: &str, port_id: &str) -> Slot {
        Slot {
            device_id: device_id.to_string(),
            port_id: port_id.to_string(),
        }
    }

    /// QEMU's description of a card served on `socket` in this slot, for `-device` at boot and
    /// `device_add` at a replug.
    pub fn device_json(&self, socket: &Path) -> Value {
        json!({
            "driver": "vfio-user-pci",
            "id": self.device_id,
            "bus": self.port_id,
            "socket": { "type": "unix", "path": socket },
        })
    }

    /// Plugs a card served on `socket` in (the guest's pciehp powers the slot on ~5 s later).
    pub async fn plug(&self, qmp: &mut Qmp, socket: &Path) -> anyhow::Result<()> {
        qmp.execute("device_add", self.device_json(socket)).await?;
        Ok(())
    }

    /// Presses the slot's attention button (`device_del`) and waits up to `wait` until the
    /// guest has released it and QEMU dropped the device (`DEVICE_DELETED`).
    pub async fn unplug(&self, qmp: &mut Qmp, wait: Duration) -> Result<(), UnplugError> {
        // pciehp refuses the button while it is still finishing the previous hot-add
        // (QEMU: "guest is busy (power indicator blinking)"): a quick unplug after a replug
        // meets that on a slow guest. QMP gives only a GenericError with that text, so the
        // text is what tells it apart; other errors are the rig's.
        let busy_until = tokio::time::Instant::now() + wait.min(Duration::from_secs(20));
        loop {
            match qmp
                .execute("device_del", json!({ "id": self.device_id }))
                .await
            {
                Ok(_) => break,
                Err(e)
                    if format!("{e:#}").contains("guest is busy")
                        && tokio::time::Instant::now() < busy_until =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(UnplugError::Qmp(e)),
            }
        }
        let id = self.device_id.as_str();
        qmp.wait_event("DEVICE_DELETED", wait, |d| {
            d.get("device").and_then(Value::as_str) == Some(id)
        })
        .await
        .map(|_| ())
        .map_err(|e| {
            // Only a wait that ran out is the guest's doing; QEMU closing the socket (it died)
            // or a bad message is the rig's.
            if e.downcast_ref::<crate::qmp::NoEvent>().is_some() {
                UnplugError::NotReleased(wait)
            } else {
                UnplugError::Qmp(e)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_json_names_the_slot_and_the_socket() {
        let slot = Slot::default();
        let v = slot.device_json(Path::new("/tmp/card0.sock"));
        assert_eq!(v["driver"], "vfio-user-pci");
        assert_eq!(v["id"], CARD_ID);
        assert_eq!(v["bus"], ROOT_PORT_ID);
        assert_eq!(v["socket"]["path"], "/tmp/card0.sock");
        assert_eq!(v["socket"]["type"], "unix");
        let other = Slot::new("gpu9", "rp7").device_json(Path::new("/s"));
        assert_eq!(
            (other["id"].as_str(), other["bus"].as_str()),
            (Some("gpu9"), Some("rp7"))
        );
    }
}
