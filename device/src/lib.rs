//! vanish's emulated PCI display cards and the vfio-user server glue.
//!
//! A card implements [`DeviceModel`]: its config space, its BARs and what happens when they are
//! read and written, its interrupts and its reset. The model knows nothing about sockets or
//! QEMU, so unit tests drive it directly; [`transport`] serves any model to QEMU over vfio-user
//! and [`Card`] holds the state both sides share (the model, the "dead" switch
//! used for surprise removal, and the interrupt eventfds QEMU handed over).

pub mod bochs;
pub mod edid;
pub mod hibmc;
pub mod i2c;
pub mod server;
pub mod transport;

use std::time::Duration;

use pci_config::{BarSpec, BarType, ConfigSpace, PciIdentity};
use vram_bar::{Scanout, Vram};

pub use server::{Card, CardStats, Server, ServerError, StopHandle};

/// Which card to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// QEMU's bochs display (`1234:1111`), driven by `bochs-drm`.
    Bochs,
    /// Huawei HiSilicon BMC display (`19e5:1711`), driven by `hibmc-drm`.
    Hibmc,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Bochs => "bochs",
            ModelKind::Hibmc => "hibmc",
        }
    }

    /// The Linux driver that binds to this card (its name under /sys/bus/pci/drivers).
    pub fn linux_driver(self) -> &'static str {
        match self {
            ModelKind::Bochs => "bochs-drm",
            ModelKind::Hibmc => "hibmc-drm",
        }
    }

    /// The module to load for that driver.
    pub fn linux_module(self) -> &'static str {
        match self {
            ModelKind::Bochs => "bochs",
            ModelKind::Hibmc => "hibmc-drm",
        }
    }

    /// `vendor:device` as lspci prints it.
    pub fn pci_id(self) -> (u16, u16) {
        match self {
            ModelKind::Bochs => (bochs::VENDOR_ID, bochs::DEVICE_ID),
            ModelKind::Hibmc => (hibmc::VENDOR_ID, hibmc::DEVICE_ID),
        }
    }

    pub fn default_vram_size(self) -> u64 {
        match self {
            ModelKind::Bochs => bochs::DEFAULT_VRAM_SIZE,
            ModelKind::Hibmc => hibmc::DEFAULT_VRAM_SIZE,
        }
    }
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

/// Options common to both cards.
#[derive(Clone, Debug)]
pub struct CardOptions {
    pub vram_size: u64,
    /// EDID to serve; `None` uses the card's default monitor.
    pub edid: Option<Vec<u8>>,
    /// No monitor attached: no EDID at all.
    pub no_monitor: bool,
}

/// Builds the model of `kind`.
pub fn build_model(
    kind: ModelKind,
    options: &CardOptions,
) -> Result<Box<dyn DeviceModel>, ModelError> {
    Ok(match kind {
        ModelKind::Bochs => Box::new(bochs::Bochs::new(options)?),
        ModelKind::Hibmc => Box::new(hibmc::Hibmc::new(options)?),
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
}

/// Config space shared by both cards: identity, VRAM as a 32-bit prefetchable memory BAR and
/// the registers as a 32-bit non-prefetchable one. 32-bit on purpose: hibmc maps its registers
/// from resource 1, which a 64-bit BAR0 would occupy.
pub(crate) fn display_config(
    identity: PciIdentity,
    vram: &Vram,
    vram_bar: usize,
    mmio_bar: usize,
    mmio_size: u64,
) -> Result<ConfigSpace, ModelError> {
    let mut config = ConfigSpace::new(identity);
    let bar = |size, prefetchable| BarSpec {
        size,
        bar_type: BarType::Memory32,
        prefetchable,
    };
    config.set_bar(vram_bar, bar(vram.size(), true))?;
    config.set_bar(mmio_bar, bar(mmio_size, false))?;
    Ok(config)
}

/// An emulated PCI function.
///
/// Invariants every implementation keeps:
/// - `bar_read`/`bar_write` accept any BAR index, offset and length (they come from the guest via
///   QEMU) and never panic: unknown BARs and offsets read as zero and drop writes;
/// - the VRAM returned by [`DeviceModel::vram`] backs BAR [`DeviceModel::vram_bar`] and is
///   exported to QEMU for mmap, so most guest accesses to it never reach `bar_read`/`bar_write`.
pub trait DeviceModel: Send {
    fn kind(&self) -> ModelKind;
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// Index of the BAR that is VRAM.
    fn vram_bar(&self) -> usize;
    fn vram(&self) -> &Vram;
    /// Trapped access to a register BAR (the VRAM BAR is served by the caller from [`Self::vram`]).
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Device reset (vfio-user DEVICE_RESET, e.g. on hot-add or guest reboot): registers to
    /// power-on values. VRAM content is kept, as on real cards.
    fn reset(&mut self);
    /// What is on screen now, or None while the display is off.
    fn scanout(&self) -> Option<Scanout>;
    /// Number of MSI vectors the card's MSI capability offers (0: no interrupts).
    fn msi_vectors(&self) -> u32 {
        0
    }
    /// Time between vblank interrupts while the card generates them, None while it does not.
    fn vblank_period(&self) -> Option<Duration> {
        None
    }
    /// One vblank has passed: latch status and return the MSI vector to signal, if any.
    fn vblank(&mut self) -> Option<u32> {
        None
    }
    /// (register offset, [reads, writes]) for every implemented register the guest touched.
    fn register_accesses(&self) -> Vec<(u64, [u64; 2])> {
        Vec::new()
    }
    /// Accesses to offsets the model does not implement (reads return 0), for reports.
    fn unimplemented_accesses(&self) -> u64 {
        0
    }
}
