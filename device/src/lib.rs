//! vanish's emulated PCI display cards and the vfio-user server glue.
//!
//! A card is one file (`bochs.rs`, `hibmc.rs`): its identity as data ([`ModelInfo`]), its
//! register table ([`regs::Register`]s with their behaviour hooks), a [`RegisterCard`] impl (its
//! [`CardCore`], scanout and own state) from which its [`DataPath`] follows (config space, BARs
//! through the shared adapter, reset, counters), and its [`Interrupts`] (vblank timing and which
//! MSI to raise). [`DeviceModel`] is both traits together. Models know nothing about sockets or
//! QEMU, so unit tests drive them directly; [`transport`] serves any model to QEMU over
//! vfio-user and [`Card`] holds the state both sides share (the model, the "dead" switch used
//! for surprise removal, and the interrupt eventfds QEMU handed over).

pub mod bochs;
pub mod edid;
pub mod hibmc;
pub mod i2c;
pub mod regs;
pub mod server;
pub mod spec;
pub mod transport;

use std::time::Duration;

use pci_config::{BarSpec, BarType, ConfigSpace, PciIdentity};
use vram_bar::{Scanout, Vram};

pub use regs::{RegisterCount, RegisterStats};
pub use server::{Card, CardStats, Server, ServerError, StopHandle, MAX_BUSY_POLL};
pub use spec::{CardSpec, Monitor, SpecError};

/// Which card to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// QEMU's bochs display (`1234:1111`), driven by `bochs-drm`.
    Bochs,
    /// Huawei HiSilicon BMC display (`19e5:1711`), driven by `hibmc-drm`.
    Hibmc,
}

impl ModelKind {
    /// What the card is; each model declares its own in its file.
    pub fn info(self) -> &'static ModelInfo {
        match self {
            ModelKind::Bochs => &bochs::INFO,
            ModelKind::Hibmc => &hibmc::INFO,
        }
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The Linux driver that binds to this card (its name under /sys/bus/pci/drivers).
    pub fn linux_driver(self) -> &'static str {
        self.info().linux_driver
    }

    /// The module to load for that driver.
    pub fn linux_module(self) -> &'static str {
        self.info().linux_module
    }

    /// Whether the driver provides an fbdev node (see [`ModelInfo::emulates_fbdev`]).
    pub fn emulates_fbdev(self) -> bool {
        self.info().emulates_fbdev
    }

    /// `vendor:device` as lspci prints it.
    pub fn pci_id(self) -> (u16, u16) {
        self.info().pci_id()
    }

    pub fn default_vram_size(self) -> u64 {
        self.info().default_vram_size
    }
}

/// What a card is, fixed when it is built: the server and the transport read it without
/// locking the model, and the runner uses it to find the driver in the guest.
///
/// Invariant: it agrees with the model's config space (`vram_bar` and `register_bar` are
/// memory BARs there; `msi_vectors` is what its MSI capability offers, 0 without one).
#[derive(Debug, PartialEq, Eq)]
pub struct ModelInfo {
    pub kind: ModelKind,
    /// `bochs` or `hibmc`, as the CLI and reports spell it.
    pub name: &'static str,
    /// The Linux driver that binds to this card (its name under /sys/bus/pci/drivers).
    pub linux_driver: &'static str,
    /// The module to load for that driver.
    pub linux_module: &'static str,
    /// The driver sets up DRM's fbdev emulation, so a bound card gets an fb node (on a kernel
    /// built with CONFIG_DRM_FBDEV_EMULATION), a little after its DRM node.
    pub emulates_fbdev: bool,
    /// Vendor, device, subsystem, class and revision, as config space shows them.
    pub identity: PciIdentity,
    pub default_vram_size: u64,
    /// The least VRAM its Linux driver accepts (a [`CardSpec`] rule).
    pub min_vram_size: u64,
    /// The BAR that is VRAM, exported to QEMU for mmap.
    pub vram_bar: usize,
    /// The BAR of the register block, whose accesses trap.
    pub register_bar: usize,
    /// MSI vectors the card offers (0: no interrupts).
    pub msi_vectors: u32,
}

impl std::str::FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bochs" => Ok(ModelKind::Bochs),
            "hibmc" => Ok(ModelKind::Hibmc),
            _ => Err(format!(
                "unknown card model '{s}' (expected bochs or hibmc)"
            )),
        }
    }
}

impl ModelInfo {
    /// (vendor, device) as lspci prints them.
    pub fn pci_id(&self) -> (u16, u16) {
        (self.identity.vendor_id, self.identity.device_id)
    }
}

/// A built card: what it is and what it does.
pub struct Model {
    pub info: &'static ModelInfo,
    pub device: Box<dyn DeviceModel>,
}

/// Builds the card `spec` describes.
pub fn build_model(spec: &CardSpec) -> Result<Model, ModelError> {
    let device: Box<dyn DeviceModel> = match spec.model() {
        ModelKind::Bochs => Box::new(bochs::Bochs::new(spec)?),
        ModelKind::Hibmc => Box::new(hibmc::Hibmc::new(spec)?),
    };
    Ok(Model {
        info: spec.model().info(),
        device,
    })
}

/// Errors building a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Vram(#[from] vram_bar::Error),
    #[error(transparent)]
    Config(#[from] pci_config::Error),
    #[error("EDID: {0}")]
    Edid(String),
    #[error(transparent)]
    Registers(#[from] regs::TableError),
}

/// The VRAM and config space both cards share: identity, the spec's VRAM as a 32-bit
/// prefetchable memory BAR and the registers as a 32-bit non-prefetchable one. 32-bit on
/// purpose: hibmc maps its registers from resource 1, which a 64-bit BAR0 would occupy.
pub(crate) fn display_card(
    info: &ModelInfo,
    spec: &CardSpec,
    mmio_size: u64,
) -> Result<(Vram, ConfigSpace), ModelError> {
    let vram = Vram::new(spec.vram_size())?;
    let mut config = ConfigSpace::new(info.identity);
    let bar = |size, prefetchable| BarSpec {
        size,
        bar_type: BarType::Memory32,
        prefetchable,
    };
    // From the card's INFO, so that it and the config space agree by construction.
    config.set_bar(info.vram_bar, bar(vram.size(), true))?;
    config.set_bar(info.register_bar, bar(mmio_size, false))?;
    Ok((vram, config))
}

/// The data path of an emulated PCI function: what the guest reaches through QEMU.
///
/// Invariants every implementation keeps:
/// - `bar_read`/`bar_write` accept any BAR index, offset and length (they come from the guest via
///   QEMU) and never panic: unknown BARs and offsets read as zero and drop writes (the shared
///   adapter [`regs::read()`]/[`regs::write()`] does this, and counts them, for every card);
/// - the VRAM returned by [`DataPath::vram`] backs BAR [`ModelInfo::vram_bar`] and is exported to
///   QEMU for mmap, so most guest accesses to it never reach `bar_read`/`bar_write`;
/// - `reset` returns registers and config space to power-on values but keeps VRAM content (as
///   real cards do) and the access counters (they describe the guest, not the device).
pub trait DataPath: Send {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    fn vram(&self) -> &Vram;
    /// Trapped access to a register BAR (the VRAM BAR is served by the caller from [`Self::vram`]).
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Device reset (vfio-user DEVICE_RESET, e.g. on hot-add or guest reboot).
    fn reset(&mut self);
    /// What is on screen now, or None while the display is off.
    fn scanout(&self) -> Option<Scanout>;
    /// Per-register access counts and unimplemented accesses, kept by the register adapter.
    fn register_stats(&self) -> RegisterStats;
}

/// What every register-table card holds: config space, VRAM and its register block.
pub struct CardCore<M: 'static> {
    pub config: ConfigSpace,
    pub vram: Vram,
    pub regs: regs::Registers<M>,
}

/// A card built on [`CardCore`]: its file gives the table, the behaviour hooks, the scanout and
/// any state of its own to reset; the [`DataPath`] (BAR accesses through the shared adapter,
/// config space, reset, counters) follows for every such card from the impl below.
pub trait RegisterCard: Sized + Send + 'static {
    fn core(&self) -> &CardCore<Self>;
    fn core_mut(&mut self) -> &mut CardCore<Self>;
    /// What is on screen now, or None while the display is off ([`DataPath::scanout`]).
    fn current_scanout(&self) -> Option<Scanout>;
    /// Device state outside the registers and config space back to power-on (default: none).
    fn reset_own_state(&mut self) {}
}

impl<T: RegisterCard> regs::RegisterMapped for T {
    fn registers(&self) -> &regs::Registers<T> {
        &self.core().regs
    }
    fn registers_mut(&mut self) -> &mut regs::Registers<T> {
        &mut self.core_mut().regs
    }
}

impl<T: RegisterCard> DataPath for T {
    fn config(&self) -> &ConfigSpace {
        &self.core().config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.core_mut().config
    }
    fn vram(&self) -> &Vram {
        &self.core().vram
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        regs::read(self, bar, offset, data);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        regs::write(self, bar, offset, data);
    }
    fn reset(&mut self) {
        let core = self.core_mut();
        core.config.reset();
        core.regs.reset();
        self.reset_own_state();
    }
    fn scanout(&self) -> Option<Scanout> {
        self.current_scanout()
    }
    fn register_stats(&self) -> RegisterStats {
        self.core().regs.stats()
    }
}

/// The interrupt and timing part of an emulated PCI function: the server's vblank timer asks
/// for the period and reports each vblank; the card says which MSI vector, if any, to raise.
///
/// Invariant: `vblank_period` is `Some` only while `vblank` can return a vector, and it may
/// change after any register or config write (the server re-reads it after each). Cards with
/// no interrupts keep the defaults.
pub trait Interrupts {
    /// Time between vblank interrupts while the card generates them, None while it does not.
    fn vblank_period(&self) -> Option<Duration> {
        None
    }
    /// One vblank has passed: latch status and return the MSI vector to signal, if any.
    fn vblank(&mut self) -> Option<u32> {
        None
    }
}

/// An emulated PCI function: its data path and its interrupts. Implemented for every type that
/// has both; the server holds one as `Box<dyn DeviceModel>` beside its [`ModelInfo`].
pub trait DeviceModel: DataPath + Interrupts {}

impl<T: DataPath + Interrupts> DeviceModel for T {}
