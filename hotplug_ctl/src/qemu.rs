//! Starting QEMU with the card, and capturing its serial console.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use images::{Arch, Qemu};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::accel::{self, Accel};
use crate::guest::AGENT_PORT;
use crate::slot::Slot;

/// A display card QEMU emulates in its own process: the baseline vanish is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InProcessCard {
    /// `-device bochs-display` (1234:1111, driven by bochs-drm) with this much VRAM.
    BochsDisplay { vram_mib: u32 },
}

impl InProcessCard {
    /// QEMU's description of this card in `slot`, for `-device` at boot and `device_add`.
    pub fn device_json(self, slot: &Slot) -> serde_json::Value {
        match self {
            InProcessCard::BochsDisplay { vram_mib } => serde_json::json!({
                "driver": "bochs-display",
                "id": slot.device_id,
                "bus": slot.port_id,
                "vgamem": u64::from(vram_mib) << 20,
            }),
        }
    }
}

/// How to build the VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub arch: Arch,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel command line.
    pub append: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub qmp_socket: PathBuf,
    pub agent_socket: PathBuf,
    /// The card's vfio-user socket, cold-plugged at boot; None boots with an empty slot.
    pub card_socket: Option<PathBuf>,
    /// A card QEMU emulates itself, in the slot instead of the vfio-user card (`vanish bench`'s
    /// baseline; `card_socket` is then None).
    pub in_process_card: Option<InProcessCard>,
    pub accel: Accel,
    /// The user's `--qemu-opt` arguments, appended as given.
    pub extra_args: Vec<String>,
    /// Copy every console line to stderr as it arrives (`--console`).
    pub stream_console: bool,
}

/// QEMU's command line (after the program and its prefix arguments).
pub fn args(cfg: &VmConfig) -> Vec<String> {
    let slot = Slot::default();
    let mem = format!("{}M", cfg.memory_mib);
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let console = cfg.arch.console();
    match cfg.arch {
        Arch::X86_64 => push(&[
            "-machine",
            "q35,memory-backend=mem",
            // Native pciehp on the root port (as on real PCIe and on aarch64 virt) instead of
            // ACPI hotplug, so device_del goes through the attention-button sequence.
            "-global",
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
        ]),
        Arch::Aarch64 => push(&[
            "-machine",
            match cfg.accel {
                Accel::Tcg => "virt,gic-version=3,memory-backend=mem",
                // Under KVM the GIC must be the host's own version.
                Accel::Kvm => "virt,gic-version=host,memory-backend=mem",
            },
        ]),
    }
    a.extend(accel::qemu_args(cfg.accel, cfg.arch));
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-m", &mem, "-smp", &cfg.cpus.to_string()]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
    ]);
    // -nodefaults: no QEMU std VGA (itself a 1234:1111 that bochs-drm would grab instead).
    push(&[
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
    ]);
    // Reserve windows so a hot-added card's BARs fit (firmware reads these; arm64 without
    // firmware gets the pci=hpmem* parameters below instead).
    push(&[
        "-device",
        &format!(
            "pcie-root-port,id={},bus=pcie.0,chassis=1,slot=1,mem-reserve=8M,pref32-reserve=64M",
            slot.port_id
        ),
    ]);
    if let Some(socket) = &cfg.card_socket {
        push(&["-device", &slot.device_json(socket).to_string()]);
    }
    if let Some(card) = cfg.in_process_card {
        push(&["-device", &card.device_json(&slot).to_string()]);
    }
    push(&[
        "-device",
        "virtio-serial-pci,id=vser0",
        "-chardev",
        &format!(
            "socket,id=agent,path={},server=on,wait=off",
            cfg.agent_socket.display()
        ),
        "-device",
        &format!("virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT}"),
        "-qmp",
        &format!("unix:{},server=on,wait=off", cfg.qmp_socket.display()),
    ]);
    // iomem=relaxed: Debian's IO_STRICT_DEVMEM forbids mapping BARs a driver has claimed
    // (bochs claims BAR2); the harness reads the dead card's registers through sysfs.
    // kasan_multi_shot: KASAN otherwise reports only its first bug and then stays silent, and
    // the scenarios after it would pass unchecked (a kernel without KASAN ignores it).
    let mut append = format!(
        "console=tty0 console={console} panic=-1 loglevel=7 iomem=relaxed kasan_multi_shot"
    );
    if cfg.arch == Arch::Aarch64 {
        append.push_str(" pci=hpmmiosize=8M,hpmmioprefsize=64M");
    }
    // pcie_port_pm=off: from 7.3 on, arm64 guests runtime-suspend an empty hotplug root port
    // to D3hot and wait for a PME to wake it on hot-add; QEMU's pcie-root-port sends none, so a
    // card added a few seconds after a removal is never seen (measured: bochs arm64 7.3,
    // hot-unplug + 12 s + replug fails without it, passes with it). Real ports wake on PME.
    append.push_str(" pcie_port_pm=off");
    if !cfg.append.is_empty() {
        append.push(' ');
        append.push_str(&cfg.append);
    }
    push(&[
        "-kernel",
        &cfg.kernel.display().to_string(),
        "-initrd",
        &cfg.initrd.display().to_string(),
        "-append",
        &append,
    ]);
    a.extend(cfg.extra_args.iter().cloned());
    a
}

/// The guest's serial console: every line, kept in memory and written to a file as it comes.
#[derive(Default)]
pub struct Console {
    lines: Mutex<Vec<String>>,
}

impl Console {
    /// Number of lines so far (a step's lines are those between two marks).
    pub fn mark(&self) -> usize {
        self.lock().len()
    }

    /// Lines `from..` as one string.
    pub fn text_since(&self, from: usize) -> String {
        let lines = self.lock();
        lines.get(from..).map(|l| l.join("\n")).unwrap_or_default()
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lock();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: String) {
        self.lock().push(line);
    }
}

/// A running QEMU. Dropping it kills QEMU.
pub struct Vm {
    child: Child,
    pub console: Arc<Console>,
    reader: tokio::task::JoinHandle<()>,
}

impl Vm {
    /// Starts QEMU with a run's logs in `out`: the console in `console.log`, QEMU's own
    /// messages in `qemu.log`.
    pub async fn start(qemu: &Qemu, cfg: &VmConfig, out: &Path) -> Result<Vm> {
        let console_log = &out.join("console.log");
        let qemu_log = &out.join("qemu.log");
        let mut cmd: Command = qemu.command().into();
        cmd.args(args(cfg));
        let stderr = std::fs::File::create(qemu_log)
            .with_context(|| format!("creating {}", qemu_log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        crate::die_with_parent(&mut cmd);
        log::debug!("starting {cmd:?}");
        let mut child = cmd.spawn().context("starting QEMU")?;
        let Some(stdout) = child.stdout.take() else {
            bail!("QEMU's stdout was not captured");
        };
        let console = Arc::new(Console::default());
        // Appended: a run that reboots keeps every boot's log in one file.
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(console_log)
            .await
            .with_context(|| format!("opening {}", console_log.display()))?;
        let sink = Arc::clone(&console);
        let stream = cfg.stream_console;
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).split(b'\n');
            while let Ok(Some(raw)) = lines.next_segment().await {
                let _ = file.write_all(&raw).await;
                let _ = file.write_all(b"\n").await;
                let line = String::from_utf8_lossy(&raw)
                    .trim_end_matches('\r')
                    .to_string();
                if stream {
                    eprintln!("{line}");
                }
                sink.push(line);
            }
            let _ = file.flush().await;
        });
        Ok(Vm {
            child,
            console,
            reader,
        })
    }

    /// Whether QEMU has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops QEMU: waits `grace` for it to exit on its own (after a guest poweroff or QMP
    /// quit), then kills it; flushes the console log.
    pub async fn stop(mut self, grace: Duration) {
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
    }
}
