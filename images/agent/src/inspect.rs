//! The guest's view of the card for the typed protocol: sysfs and /dev read directly (this
//! replaces the shell library's `card_status`, `probe_modes`, `irq_count` and `read_bar`), and
//! sysfs writes that may hang in the kernel.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use guest_protocol::{CardStatus, Connector, GuestError};

/// Where sysfs, /dev and /proc are; tests point it at a fake tree.
#[derive(Clone, Debug)]
pub struct Root(pub PathBuf);

impl Default for Root {
    fn default() -> Root {
        Root(PathBuf::from("/"))
    }
}

impl Root {
    pub(crate) fn path(&self, abs: &str) -> PathBuf {
        self.0.join(abs.trim_start_matches('/'))
    }

    /// A file's text without its trailing newline (`path` already under the root).
    fn read(&self, path: impl AsRef<Path>) -> Option<String> {
        fs::read_to_string(path)
            .ok()
            .map(|s| s.trim_end().to_string())
    }

    /// Sorted entry names of `dir` that start with `prefix`.
    fn names(&self, dir: &Path, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// PCI addresses of the functions with these IDs, sorted.
    pub fn find_card(&self, vendor: u16, device: u16) -> Vec<String> {
        let devices = self.path("/sys/bus/pci/devices");
        self.names(&devices, "")
            .into_iter()
            .filter(|bdf| {
                let d = devices.join(bdf);
                let id = |f: &str| self.read(d.join(f)).and_then(|s| parse_hex(&s));
                id("vendor") == Some(u32::from(vendor)) && id("device") == Some(u32::from(device))
            })
            .collect()
    }

    /// Whether `driver` is bound to `bdf` and has finished probing: the driver core makes the
    /// `driver` link before probe() runs; the fbdev node under the device comes at its end.
    pub fn bound_with_fb(&self, bdf: &str, driver: &str) -> bool {
        let d = self.path("/sys/bus/pci/devices").join(bdf);
        let linked = fs::read_link(d.join("driver"))
            .ok()
            .is_some_and(|l| l.file_name().is_some_and(|n| n == driver));
        linked && !self.names(&d.join("graphics"), "fb").is_empty()
    }

    /// The first function with these IDs as the guest sees it; only `present: false` if none.
    pub fn card_status(&self, vendor: u16, device: u16) -> CardStatus {
        let Some(bdf) = self.find_card(vendor, device).into_iter().next() else {
            // Nothing else, as the shell library answered: `expect gone` judges /dev/dri only
            // while the card is on the bus.
            return CardStatus::default();
        };
        let d = self.path("/sys/bus/pci/devices").join(&bdf);
        let real = fs::canonicalize(&d).unwrap_or_else(|_| d.clone());
        let parent = real
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned());
        let parent_dir = parent
            .as_ref()
            .map(|p| self.path("/sys/bus/pci/devices").join(p));
        let parent_id = parent_dir.as_ref().and_then(|p| {
            Some(format!(
                "{}:{}",
                self.read(p.join("vendor"))?,
                self.read(p.join("device"))?
            ))
        });
        let parent_class = parent_dir.as_ref().and_then(|p| self.read(p.join("class")));
        let driver = fs::read_link(d.join("driver"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
        let command = read_command(&d.join("config"));
        let drm_dir = d.join("drm");
        let drm = self.names(&drm_dir, "card");
        let connectors = drm
            .iter()
            .flat_map(|card| connectors(&drm_dir.join(card), false))
            .collect();
        let dev = self.path("/dev");
        CardStatus {
            present: true,
            pci_address: Some(bdf.clone()),
            sysfs_path: Some(real.to_string_lossy().into_owned()),
            parent,
            parent_id,
            parent_class,
            driver,
            command,
            drm,
            fb: self.names(&d.join("graphics"), "fb"),
            dri_nodes: self.names(&dev.join("dri"), ""),
            fb0: dev.join("fb0").exists(),
            dri_card0: dev.join("dri/card0").exists(),
            connectors,
            fb0_size: self.read(self.path("/sys/class/graphics/fb0/virtual_size")),
            irq: self.read(self.path("/proc/interrupts")).and_then(|t| {
                t.lines()
                    .find(|l| l.contains("hibmc") || l.contains("bochs"))
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            }),
        }
    }

    /// Re-probes every connector of the card (writes `detect` to its status) and lists them.
    pub fn probe_modes(&self, vendor: u16, device: u16) -> Vec<Connector> {
        let Some(bdf) = self.find_card(vendor, device).into_iter().next() else {
            return Vec::new();
        };
        let drm_dir = self.path("/sys/bus/pci/devices").join(bdf).join("drm");
        self.names(&drm_dir, "card")
            .iter()
            .flat_map(|card| connectors(&drm_dir.join(card), true))
            .collect()
    }

    /// Total interrupts (all CPUs) on the /proc/interrupts lines that mention `name`.
    pub fn irq_count(&self, name: &str) -> Result<u64, GuestError> {
        let text = self
            .read(self.path("/proc/interrupts"))
            .ok_or(GuestError::Failed {
                message: "cannot read /proc/interrupts".into(),
            })?;
        Ok(irq_total(&text, name))
    }
}

/// `cardN-*` connectors under a DRM card directory; with `detect`, each is re-probed first.
fn connectors(card: &Path, detect: bool) -> Vec<Connector> {
    let mut names: Vec<String> = fs::read_dir(card)
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("card") && n.contains('-'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let dir = card.join(&name);
            let status_file = dir.join("status");
            if detect {
                // A failed re-probe still leaves the last state to read.
                let _ = fs::write(&status_file, "detect");
            }
            let status = fs::read_to_string(&status_file).ok()?.trim().to_string();
            let modes = fs::read_to_string(dir.join("modes"))
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
                .collect();
            Some(Connector {
                name,
                status,
                modes,
            })
        })
        .collect()
}

/// The sum of the per-CPU counts (the numbers after `NN:`) of the lines mentioning `name`.
pub fn irq_total(interrupts: &str, name: &str) -> u64 {
    interrupts
        .lines()
        .filter(|l| l.contains(name))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map_while(|w| w.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The PCI command register (config offset 4) as four hex digits. Only these two bytes are
/// read: every config read of this card is a round trip to its server, and the whole 4 KiB
/// file would be a thousand of them per status poll.
fn read_command(config: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(config).ok()?;
    f.seek(SeekFrom::Start(4)).ok()?;
    let mut b = [0u8; 2];
    f.read_exact(&mut b).ok()?;
    Some(format!("{:04x}", u16::from_le_bytes(b)))
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// Writes `value` to the sysfs file `path`, giving the kernel `timeout` to return. The write
/// runs on a thread of its own so that a driver hung in its remove callback leaves the agent
/// able to answer; that thread stays blocked in the kernel (nothing can end it), which is why
/// the host reboots the guest after a timeout.
pub fn sysfs_write(path: &str, value: &str, timeout: Duration) -> Result<(), GuestError> {
    if !path.starts_with("/sys/") || path.contains("/../") {
        return Err(GuestError::BadRequest {
            message: format!("{path} is not a sysfs file"),
        });
    }
    let (tx, rx) = mpsc::channel();
    let (p, v) = (path.to_string(), value.to_string());
    thread::spawn(move || {
        let _ = tx.send(fs::write(&p, v.as_bytes()));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(GuestError::Failed {
            message: format!("write {value:?} to {path}: {e}"),
        }),
        Err(_) => Err(GuestError::Timeout {
            what: format!("write {value:?} to {path}"),
            waited_ms: timeout.as_millis() as u64,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const INTERRUPTS: &str = "           CPU0       CPU1
 10:        120         30     GICv3  27 Level     arch_timer
 45:         61          2  ITS-MSI 524288 Edge      hibmc
 46:          4          0  ITS-MSI 524289 Edge      hibmc-vblank
";

    #[test]
    fn counts_interrupts_like_the_shell_did() {
        assert_eq!(irq_total(INTERRUPTS, "hibmc"), 67);
        assert_eq!(irq_total(INTERRUPTS, "bochs"), 0);
        assert_eq!(irq_total(INTERRUPTS, "arch_timer"), 150);
    }

    /// A fake sysfs with a bochs card behind a root port.
    pub(crate) fn tree(name: &str) -> Root {
        let root =
            std::env::temp_dir().join(format!("vanish-inspect-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let devices = root.join("sys/devices/pci0000:00/0000:00:02.0");
        let card = devices.join("0000:01:00.0");
        for d in [
            card.join("drm/card0/card0-Virtual-1"),
            card.join("graphics/fb0"),
            root.join("sys/bus/pci/devices"),
            root.join("sys/bus/pci/drivers/bochs-drm"),
            root.join("sys/class/graphics/fb0"),
            root.join("dev/dri"),
            root.join("proc"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        let w = |p: PathBuf, s: &str| fs::write(p, s).unwrap();
        w(card.join("vendor"), "0x1234\n");
        w(card.join("device"), "0x1111\n");
        let mut config = vec![0u8; 64];
        config[4] = 0x07;
        w(card.join("config"), std::str::from_utf8(&config).unwrap());
        w(devices.join("vendor"), "0x1b36\n");
        w(devices.join("device"), "0x000c\n");
        w(devices.join("class"), "0x060400\n");
        let conn = card.join("drm/card0/card0-Virtual-1");
        w(conn.join("status"), "connected\n");
        w(conn.join("modes"), "1024x768\n800x600\n");
        w(
            root.join("sys/class/graphics/fb0/virtual_size"),
            "1024,768\n",
        );
        w(root.join("dev/dri/card0"), "");
        w(root.join("dev/dri/renderD128"), "");
        w(root.join("dev/fb0"), "");
        w(root.join("proc/interrupts"), INTERRUPTS);
        std::os::unix::fs::symlink(&card, root.join("sys/bus/pci/devices/0000:01:00.0")).unwrap();
        std::os::unix::fs::symlink(&devices, root.join("sys/bus/pci/devices/0000:00:02.0"))
            .unwrap();
        std::os::unix::fs::symlink(
            root.join("sys/bus/pci/drivers/bochs-drm"),
            card.join("driver"),
        )
        .unwrap();
        Root(root)
    }

    #[test]
    fn reads_the_card_from_sysfs() {
        let root = tree("status");
        let s = root.card_status(0x1234, 0x1111);
        assert!(s.present);
        assert_eq!(s.pci_address.as_deref(), Some("0000:01:00.0"));
        assert_eq!(s.parent.as_deref(), Some("0000:00:02.0"));
        assert_eq!(s.parent_id.as_deref(), Some("0x1b36:0x000c"));
        assert_eq!(s.parent_class.as_deref(), Some("0x060400"));
        assert_eq!(s.driver.as_deref(), Some("bochs-drm"));
        assert_eq!(s.command.as_deref(), Some("0007"));
        assert_eq!(s.drm, ["card0"]);
        assert_eq!(s.fb, ["fb0"]);
        assert_eq!(s.dri_nodes, ["card0", "renderD128"]);
        assert!(s.fb0 && s.dri_card0);
        assert_eq!(s.fb0_size.as_deref(), Some("1024,768"));
        assert_eq!(s.connectors.len(), 1);
        assert_eq!(
            s.connectors[0].modes_line(),
            "card0-Virtual-1 1024x768 800x600"
        );
        assert_eq!(s.connectors[0].status_line(), "card0-Virtual-1 connected");
        assert_eq!(s.irq.as_deref(), Some("45: 61 2 ITS-MSI 524288 Edge hibmc"));
        assert_eq!(root.card_status(0x19e5, 0x1711), CardStatus::default());
        assert_eq!(root.irq_count("hibmc").ok(), Some(67));
        // A plain file keeps what the re-probe wrote (real sysfs answers with the state).
        let probed = root.probe_modes(0x1234, 0x1111);
        assert_eq!(probed.len(), 1);
        assert_eq!(probed[0].modes, s.connectors[0].modes);
        assert_eq!(probed[0].status, "detect");
        let _ = fs::remove_dir_all(&root.0);
    }

    #[test]
    fn sysfs_writes_report_errors_and_refuse_other_paths() {
        assert!(matches!(
            sysfs_write("/etc/passwd", "x", Duration::from_secs(1)),
            Err(GuestError::BadRequest { .. })
        ));
        assert!(matches!(
            sysfs_write("/sys/../etc/x", "x", Duration::from_secs(1)),
            Err(GuestError::BadRequest { .. })
        ));
        assert!(matches!(
            sysfs_write("/sys/no/such/file", "1", Duration::from_secs(1)),
            Err(GuestError::Failed { .. })
        ));
    }
}
