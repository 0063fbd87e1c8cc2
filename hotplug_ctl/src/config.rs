//! What `vanish run` was asked to do: the kernel, the card, the scenarios, the VM's size.

use std::path::PathBuf;
use std::time::Duration;

use device::{CardSpec, ModelKind};
use images::{Arch, GuestKernel};

use crate::accel::AccelChoice;
use crate::scenario::Scenario;

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
    /// The card: model, VRAM, monitor (checked).
    pub card: CardSpec,
    pub arch: Arch,
    pub kernel: KernelChoice,
    pub out: PathBuf,
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

impl RunConfig {
    /// Which card model the run emulates.
    pub fn model(&self) -> ModelKind {
        self.card.model()
    }
}
