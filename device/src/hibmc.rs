//! Huawei HiSilicon BMC display (Hi1710, `19e5:1711`), VGA variant, as `hibmc-drm` drives it.
//!
//! BAR0 is VRAM; BAR1 is 2 MiB of registers laid out like Silicon Motion's SM750: power mode and
//! clock gates at the bottom, the CRT controller at 0x80200, interrupt status/enable, two GPIO
//! bits that bit-bang the monitor's DDC bus, and the PLL. One MSI vector carries vblank.
//!
//! Register names and fields follow `drivers/gpu/drm/hisilicon/hibmc/hibmc_drm_regs.h` (the same
//! in 6.1, 6.12 and 7.x). The whole BAR is the table [`REGISTERS`]: everything the driver only
//! writes is plain storage; the registers with behaviour are the current-gate mirror, the W1C
//! interrupt status, the DDC GPIOs and the 7.x DP probe register, which must read 0 so that 7.x
//! does not look for a DisplayPort block. The driver only does aligned 32-bit `readl`/`writel`;
//! other sizes and alignments are served by the shared adapter in [`crate::regs`].

use std::time::Duration;

use pci_config::{Capability, PciIdentity};
use vram_bar::{PixelFormat, Scanout};

use crate::i2c::{BusStats, Eeprom, I2cBus};
use crate::regs::{self, Register, Registers, Written};
use crate::{
    CardCore, CardSpec, DataPath, Interrupts, ModelError, ModelInfo, ModelKind, RegisterCard,
};

pub const VENDOR_ID: u16 = 0x19e5;
pub const DEVICE_ID: u16 = 0x1711;
/// What real cards have; the driver uses whatever BAR0 size it finds.
pub const DEFAULT_VRAM_SIZE: u64 = 32 << 20;

/// BAR0: VRAM. It must be a 32-bit BAR: the driver maps MMIO from resource 1, which a 64-bit
/// BAR0 would occupy.
pub const VRAM_BAR: usize = 0;
pub const MMIO_BAR: usize = 1;
/// 7.x reads 0x1f001c unconditionally, so the BAR must reach past it.
pub const MMIO_SIZE: u64 = 2 << 20;
/// One vector (vblank). 7.x asks for 1..=2 (the second is DP hot-plug) and fails probe with none.
pub const MSI_VECTORS: u32 = 1;

pub static INFO: ModelInfo = ModelInfo {
    kind: ModelKind::Hibmc,
    name: "hibmc",
    linux_driver: "hibmc-drm",
    linux_module: "hibmc-drm",
    // Its probe ends by setting up the fbdev client (drm_fbdev_generic/ttm_setup, drm_client_setup).
    emulates_fbdev: true,
    identity: PciIdentity {
        vendor_id: VENDOR_ID,
        device_id: DEVICE_ID,
        // The driver matches any subsystem; what real cards carry is not known, so repeat the
        // IDs.
        subsystem_vendor_id: VENDOR_ID,
        subsystem_id: DEVICE_ID,
        // VGA-compatible display controller, as real cards report.
        class_code: 0x03_00_00,
        // "Hi1710 ... (rev 01)" on real hardware; the driver never reads it.
        revision: 1,
    },
    default_vram_size: DEFAULT_VRAM_SIZE,
    // What the CLI always allowed; hibmc-drm itself wants room for its console framebuffer.
    min_vram_size: 1 << 20,
    vram_bar: VRAM_BAR,
    register_bar: MMIO_BAR,
    msi_vectors: MSI_VECTORS,
};

// BAR1 register map (hibmc_drm_regs.h).
/// Bit 6 (LOCALMEM_RESET) is pulsed 0 -> 1 at probe. Storage.
pub const MISC_CTRL: u64 = 0x00_0004;
/// Read-only mirror of the gate register of the current power mode (see [`Hibmc::current_gate`]).
pub const CURRENT_GATE: u64 = 0x00_0040;
/// Clock gates for power mode 0 (and sleep): bit 1 LOCALMEM, bit 2 DISPLAY. Storage.
pub const MODE0_GATE: u64 = 0x00_0044;
/// Clock gates for power mode 1. Storage.
pub const MODE1_GATE: u64 = 0x00_0048;
/// [1:0] power mode (0, 1, 2 = sleep), bit 3 OSC_INPUT. Storage that reads back as written.
pub const POWER_MODE_CTRL: u64 = 0x00_004c;
pub const PANEL_PLL_CTRL: u64 = 0x00_005c;
/// Written with 0x00020000 (POWER) on every modeset. Storage.
pub const CRT_PLL_CTRL: u64 = 0x00_0060;
/// CRT display control, see the `DISP_CTL_*` fields.
pub const CRT_DISP_CTL: u64 = 0x08_0200;
/// Byte offset of the scanout buffer inside VRAM.
pub const CRT_FB_ADDRESS: u64 = 0x08_0204;
/// [29:16] line length in bytes, [13:0] pitch in bytes.
pub const CRT_FB_WIDTH: u64 = 0x08_0208;
/// [27:16] htotal - 1, [11:0] hdisplay - 1.
pub const CRT_HORZ_TOTAL: u64 = 0x08_020c;
/// [23:16] hsync width, [11:0] hsync start - 1.
pub const CRT_HORZ_SYNC: u64 = 0x08_0210;
/// [30:16] vtotal - 1, [10:0] vdisplay - 1.
pub const CRT_VERT_TOTAL: u64 = 0x08_0214;
/// [21:16] vsync height, [10:0] vsync start - 1.
pub const CRT_VERT_SYNC: u64 = 0x08_0218;
pub const CRT_AUTO_CENTERING_TL: u64 = 0x08_0280;
pub const CRT_AUTO_CENTERING_BR: u64 = 0x08_0284;
/// Panel output enables (FPVDDEN, PANELDATE, FPEN, VBIASEN in bits 0..3). Storage.
pub const DISPLAY_CONTROL_HISILE: u64 = 0x08_0288;
/// Raw interrupt status, write-1-to-clear; bit 2 = vblank.
pub const RAW_INTERRUPT: u64 = 0x08_0290;
/// Interrupt enable; bit 2 = vblank. `enable_vblank` writes 4, `disable_vblank` writes 0.
pub const RAW_INTERRUPT_EN: u64 = 0x08_0298;
/// GPIO levels: bit 0 = DDC SCL, bit 1 = DDC SDA (hibmc_drm_i2c.c).
pub const GPIO_DATA: u64 = 0x08_02a0;
/// GPIO direction, 1 = output. The driver drives a line low with DATA = 0, DIR = 1 and lets it
/// go with DIR = 0, i.e. open drain.
pub const GPIO_DATA_DIRECTION: u64 = 0x08_02a4;
/// CRT pixel PLL, low word; the last value written selects the pixel clock.
pub const CRT_PLL1_HS: u64 = 0x08_02a8;
/// CRT pixel PLL, high word.
pub const CRT_PLL2_HS: u64 = 0x08_02ac;
/// 256 entries of `r << 16 | g << 8 | b`, only written by the legacy gamma ioctl. Storage.
pub const CRT_PALETTE: u64 = 0x08_0c00;
pub const PALETTE_ENTRIES: usize = 256;
/// DP serdes lane-1 PMA register ("HIBMC_DP_HOST_SERDES_CTRL"). 7.x reads it at probe and sets up
/// its DisplayPort block if it is non-zero, so the VGA-only card reads 0 here and ignores writes.
pub const DP_HOST_SERDES_CTRL: u64 = 0x1f_001c;

// CRT_DISP_CTL fields.
pub const DISP_CTL_DPMS_MASK: u32 = 3 << 30;
pub const DISP_CTL_CRTSELECT: u32 = 1 << 25;
pub const DISP_CTL_TIMING: u32 = 1 << 8;
pub const DISP_CTL_GAMMA: u32 = 1 << 3;
pub const DISP_CTL_PLANE: u32 = 1 << 2;
pub const DISP_CTL_FORMAT_MASK: u32 = 3;
/// FORMAT is `cpp * 8 / 16`: 1 for 16 bpp, 2 for 32 bpp.
pub const FORMAT_RGB565: u32 = 1;
pub const FORMAT_XRGB8888: u32 = 2;

pub const FB_WIDTH_PITCH_MASK: u32 = 0x3fff;

pub const POWER_MODE_MASK: u32 = 3;
pub const POWER_MODE_1: u32 = 1;
pub const GATE_LOCALMEM: u32 = 1 << 1;
pub const GATE_DISPLAY: u32 = 1 << 2;

pub const INT_VBLANK: u32 = 1 << 2;

pub const GPIO_SCL: u32 = 1 << 0;
pub const GPIO_SDA: u32 = 1 << 1;

/// CRT_PLL1_HS bits `set_vclock_hisilicon` toggles around the real value: it writes the table
/// value, then clears POWERON (24) and INTER_BYPASS (29) and sets OUTER_BYPASS (30).
const PLL1_SEQUENCE_BITS: u32 = 1 << 24 | 1 << 29 | 1 << 30;

/// CRT_PLL1_HS values of hibmc_drm_regs.h and the pixel clock (kHz) the 6.12+ PLL table lists for
/// them. Only used to time vblank; a value not listed falls back to 60 Hz.
const PLL1_CLOCKS_KHZ: [(u32, u64); 11] = [
    (0x23d4_0f02, 25_000),
    (0x2394_0801, 40_000),
    (0x2394_0d01, 65_000),
    (0x2354_0fc2, 78_750),
    (0x2394_1001, 80_000),
    (0x2394_1dc2, 74_375),
    (0x23b4_1b01, 108_000),
    (0x237c_1641, 105_952),
    (0x2348_0681, 162_500),
    (0x2354_1dc2, 148_750),
    (0x2348_07c1, 193_750),
];

/// Vblank period before a mode is programmed, or when the programmed one makes no sense.
pub const DEFAULT_FRAME_PERIOD: Duration = Duration::from_nanos(1_000_000_000 / 60);
/// Programmed timings outside 20..=240 Hz are taken as half-written and ignored.
const MIN_FRAME_NS: u64 = 1_000_000_000 / 240;
const MAX_FRAME_NS: u64 = 1_000_000_000 / 20;

/// BAR1, every register once. Power-on values are 0 ("a reasonable reset state: everything
/// zero", the register spec); registers without hooks are plain read-write storage.
pub static REGISTERS: [Register<Hibmc>; 25] = [
    Register::storage("MISC_CTRL", MISC_CTRL, 4),
    // Read-only; the driver never writes it.
    Register::read_only("CURRENT_GATE", CURRENT_GATE, 4, 0)
        .on_read(|card: &Hibmc, _, _| u64::from(card.current_gate())),
    Register::storage("MODE0_GATE", MODE0_GATE, 4),
    Register::storage("MODE1_GATE", MODE1_GATE, 4),
    Register::storage("POWER_MODE_CTRL", POWER_MODE_CTRL, 4),
    Register::storage("PANEL_PLL_CTRL", PANEL_PLL_CTRL, 4),
    Register::storage("CRT_PLL_CTRL", CRT_PLL_CTRL, 4),
    Register::storage("CRT_DISP_CTL", CRT_DISP_CTL, 4),
    Register::storage("CRT_FB_ADDRESS", CRT_FB_ADDRESS, 4),
    Register::storage("CRT_FB_WIDTH", CRT_FB_WIDTH, 4),
    Register::storage("CRT_HORZ_TOTAL", CRT_HORZ_TOTAL, 4),
    Register::storage("CRT_HORZ_SYNC", CRT_HORZ_SYNC, 4),
    Register::storage("CRT_VERT_TOTAL", CRT_VERT_TOTAL, 4),
    Register::storage("CRT_VERT_SYNC", CRT_VERT_SYNC, 4),
    Register::storage("CRT_AUTO_CENTERING_TL", CRT_AUTO_CENTERING_TL, 4),
    Register::storage("CRT_AUTO_CENTERING_BR", CRT_AUTO_CENTERING_BR, 4),
    Register::storage("DISPLAY_CONTROL_HISILE", DISPLAY_CONTROL_HISILE, 4),
    // Status bits are cleared by writing 1; `hibmc_interrupt` writes BIT(2). [`Hibmc::vblank`]
    // latches bit 2.
    Register::w1c("RAW_INTERRUPT", RAW_INTERRUPT, 4, 0xffff_ffff),
    Register::storage("RAW_INTERRUPT_EN", RAW_INTERRUPT_EN, 4),
    // Pins read the line levels, whoever drives them; the other bits are the data latch.
    Register::storage("GPIO_DATA", GPIO_DATA, 4)
        .on_read(|card: &Hibmc, _, latch| u64::from(card.gpio_levels(latch as u32)))
        .on_write(Hibmc::drive_ddc),
    Register::storage("GPIO_DATA_DIRECTION", GPIO_DATA_DIRECTION, 4).on_write(Hibmc::drive_ddc),
    Register::storage("CRT_PLL1_HS", CRT_PLL1_HS, 4),
    Register::storage("CRT_PLL2_HS", CRT_PLL2_HS, 4),
    Register::storage("CRT_PALETTE", CRT_PALETTE, 4).array(PALETTE_ENTRIES as u32),
    Register::read_only("DP_HOST_SERDES_CTRL", DP_HOST_SERDES_CTRL, 4, 0),
];

// The DDC EEPROM holds 256 bytes; serving more would need the E-DDC segment pointer at 0x30.
const _: () = assert!(crate::spec::MAX_EDID <= 256);

/// The HIBMC display model.
///
/// Invariant: the DDC bus's master side always reflects the GPIO registers (every write to them
/// re-drives it, and reset idles both).
pub struct Hibmc {
    core: CardCore<Hibmc>,
    ddc: I2cBus<Eeprom>,
}

impl Hibmc {
    pub fn new(spec: &CardSpec) -> Result<Hibmc, ModelError> {
        let (vram, mut config) = crate::display_card(&INFO, spec, MMIO_SIZE)?;
        config.add_capability(Capability::PowerManagement)?;
        config.add_capability(Capability::Msi {
            vectors: MSI_VECTORS as u8,
            addr64: true,
            per_vector_mask: false,
        })?;
        config.add_capability(Capability::PciExpressEndpoint)?;

        // The spec holds at most spec::MAX_EDID bytes: they fit the EEPROM (checked above).
        let eeprom = spec.monitor().edid().map(|blob| Eeprom::new(&blob));
        let mut card = Hibmc {
            core: CardCore {
                config,
                vram,
                // Unimplemented offsets are tallied per 32-bit register, the driver's access size.
                regs: Registers::new(&REGISTERS, INFO.register_bar, MMIO_SIZE, 4)?,
            },
            ddc: I2cBus::new(eeprom),
        };
        card.reset();
        Ok(card)
    }

    /// A register as the driver would read it (no side effects), or None if not implemented.
    pub fn register(&self, offset: u64) -> Option<u32> {
        regs::peek(self, offset).map(|v| v as u32)
    }

    /// The stored value of one of the registers above.
    fn reg(&self, offset: u64) -> u32 {
        self.core.regs.get(offset) as u32
    }

    /// What CURRENT_GATE shows: `hibmc_set_current_gate` writes MODE1_GATE in power mode 1 and
    /// MODE0_GATE otherwise (mode 0, sleep, and the undefined 3), so the mirror follows suit.
    pub fn current_gate(&self) -> u32 {
        if self.reg(POWER_MODE_CTRL) & POWER_MODE_MASK == POWER_MODE_1 {
            self.reg(MODE1_GATE)
        } else {
            self.reg(MODE0_GATE)
        }
    }

    /// GPIO_DATA as read: the latch with the SCL/SDA bits replaced by the line levels.
    fn gpio_levels(&self, latch: u32) -> u32 {
        let scl = if self.ddc.scl() { GPIO_SCL } else { 0 };
        let sda = if self.ddc.sda() { GPIO_SDA } else { 0 };
        (latch & !(GPIO_SCL | GPIO_SDA)) | scl | sda
    }

    /// DDC traffic so far.
    pub fn ddc_stats(&self) -> BusStats {
        self.ddc.stats()
    }

    /// (register offset, accesses) of every unimplemented BAR1 register touched, for reports.
    pub fn unimplemented_offsets(&self) -> Vec<(u64, u64)> {
        self.core.regs.stats().unimplemented_offsets
    }

    /// Accesses to offsets the model does not implement (reads return 0).
    pub fn unimplemented_accesses(&self) -> u64 {
        self.core.regs.unimplemented()
    }

    /// Time from one vblank to the next in the programmed mode: htotal * vtotal pixels at the
    /// clock the last PLL value selects.
    pub fn frame_period(&self) -> Duration {
        let htotal = u64::from(self.reg(CRT_HORZ_TOTAL) >> 16 & 0xfff) + 1;
        let vtotal = u64::from(self.reg(CRT_VERT_TOTAL) >> 16 & 0x7fff) + 1;
        let pll1 = self.reg(CRT_PLL1_HS) & !PLL1_SEQUENCE_BITS;
        let clock = PLL1_CLOCKS_KHZ
            .iter()
            .find(|(v, _)| v & !PLL1_SEQUENCE_BITS == pll1);
        match clock {
            Some(&(_, khz)) => {
                let ns = htotal * vtotal * 1_000_000 / khz;
                if (MIN_FRAME_NS..=MAX_FRAME_NS).contains(&ns) {
                    Duration::from_nanos(ns)
                } else {
                    DEFAULT_FRAME_PERIOD
                }
            }
            None => DEFAULT_FRAME_PERIOD,
        }
    }

    /// Vblank MSIs go out while the driver has vblank enabled and MSI is on. Bus Master Enable is
    /// deliberately not required: 6.1 and 6.12 never set it, and still expect their vblanks.
    fn vblank_enabled(&self) -> bool {
        self.reg(RAW_INTERRUPT_EN) & INT_VBLANK != 0
            && self.core.config.msi().is_some_and(|m| m.enabled)
    }

    /// Write hook of both GPIO registers: the card pulls a DDC line low where it is an output
    /// with data 0; elsewhere it lets go.
    fn drive_ddc(&mut self, _: Written) {
        let pulls_low = self.reg(GPIO_DATA_DIRECTION) & !self.reg(GPIO_DATA);
        self.ddc
            .set_master(pulls_low & GPIO_SCL != 0, pulls_low & GPIO_SDA != 0);
    }
}

impl RegisterCard for Hibmc {
    fn core(&self) -> &CardCore<Hibmc> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut CardCore<Hibmc> {
        &mut self.core
    }

    /// The DDC bus idles with the GPIO registers (both lines released).
    fn reset_own_state(&mut self) {
        self.ddc.reset();
    }

    /// On screen iff TIMING and PLANE are set and DPMS is on (0): `mode_set_nofb` writes
    /// TIMING|PLANE, `hibmc_crtc_dpms` sets DPMS and clears TIMING when the CRTC goes off.
    fn current_scanout(&self) -> Option<Scanout> {
        let ctl = self.reg(CRT_DISP_CTL);
        if ctl & DISP_CTL_TIMING == 0 || ctl & DISP_CTL_PLANE == 0 || ctl & DISP_CTL_DPMS_MASK != 0
        {
            return None;
        }
        let format = match ctl & DISP_CTL_FORMAT_MASK {
            FORMAT_RGB565 => PixelFormat::Rgb565,
            FORMAT_XRGB8888 => PixelFormat::Xrgb8888,
            _ => return None,
        };
        let scanout = Scanout {
            offset: u64::from(self.reg(CRT_FB_ADDRESS)),
            width: (self.reg(CRT_HORZ_TOTAL) & 0xfff) + 1,
            height: (self.reg(CRT_VERT_TOTAL) & 0x7ff) + 1,
            stride: self.reg(CRT_FB_WIDTH) & FB_WIDTH_PITCH_MASK,
            format,
        };
        let fits = scanout
            .byte_len()
            .and_then(|len| scanout.offset.checked_add(len))
            .is_some_and(|end| end <= self.core.vram.size());
        fits.then_some(scanout)
    }
}

impl Interrupts for Hibmc {
    fn vblank_period(&self) -> Option<Duration> {
        self.vblank_enabled().then(|| self.frame_period())
    }

    /// The status bit is raw: it latches whether or not the interrupt is enabled; only the MSI
    /// depends on the enable.
    fn vblank(&mut self) -> Option<u32> {
        let status = self.core.regs.get(RAW_INTERRUPT);
        self.core
            .regs
            .set(RAW_INTERRUPT, status | u64::from(INT_VBLANK));
        self.vblank_enabled().then_some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edid::default_edid;
    use pci_config::{BarType, ConfigSpace};

    fn options() -> CardSpec {
        CardSpec::of(ModelKind::Hibmc)
    }

    fn with(vram_size: Option<u64>, monitor: crate::Monitor) -> CardSpec {
        CardSpec::new(ModelKind::Hibmc, vram_size, monitor).expect("a valid spec")
    }

    fn card() -> Hibmc {
        Hibmc::new(&options()).unwrap()
    }

    fn readl(c: &mut Hibmc, off: u64) -> u32 {
        let mut b = [0; 4];
        c.bar_read(MMIO_BAR, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn writel(c: &mut Hibmc, off: u64, v: u32) {
        c.bar_write(MMIO_BAR, off, &v.to_le_bytes());
    }

    fn cap_offset(cfg: &ConfigSpace, id: u8) -> Option<usize> {
        let mut p = usize::from(cfg.read_u8(0x34));
        for _ in 0..48 {
            if p == 0 {
                return None;
            }
            if cfg.read_u8(p) == id {
                return Some(p);
            }
            p = usize::from(cfg.read_u8(p + 1));
        }
        None
    }

    /// What `pci_enable_msi` leaves in the capability: address, data, enable.
    fn set_msi(c: &mut Hibmc, on: bool) {
        let off = cap_offset(c.config(), 0x05).unwrap();
        c.config_mut()
            .write((off + 4) as u64, &0xfee0_0000u32.to_le_bytes());
        let ctl = c.config().read_u16(off + 2);
        let ctl = if on { ctl | 1 } else { ctl & !1 };
        c.config_mut().write((off + 2) as u64, &ctl.to_le_bytes());
    }

    #[test]
    fn identity_and_bars_match_what_hibmc_drm_probes() {
        let c = card();
        let cfg = c.config();
        assert_eq!((cfg.read_u16(0), cfg.read_u16(2)), (0x19e5, 0x1711));
        assert_eq!((cfg.read_u16(0x2c), cfg.read_u16(0x2e)), (0x19e5, 0x1711));
        assert_eq!(cfg.read_u32(8) >> 8, 0x03_00_00);
        assert_eq!(cfg.read_u8(8), 1);
        assert_eq!(cfg.read_u8(0x3d), 0, "no INTx pin");
        let bar0 = cfg.bar(0).unwrap();
        assert_eq!(
            (bar0.size, bar0.bar_type, bar0.prefetchable),
            (32 << 20, BarType::Memory32, true)
        );
        let bar1 = cfg.bar(1).unwrap();
        assert_eq!(
            (bar1.size, bar1.bar_type, bar1.prefetchable),
            (2 << 20, BarType::Memory32, false)
        );
        assert!(cap_offset(cfg, 0x01).is_some(), "power management");
        assert!(cap_offset(cfg, 0x10).is_some(), "PCI Express");
        assert!(
            cap_offset(cfg, 0x11).is_none(),
            "no MSI-X: 7.x asks for PCI_IRQ_MSI only"
        );
        let msi = cap_offset(cfg, 0x05).unwrap();
        let ctl = cfg.read_u16(msi + 2);
        assert_eq!(ctl >> 1 & 7, 0, "one vector");
        assert_ne!(ctl & 1 << 7, 0, "64-bit address");
        assert_eq!(ctl & 1 << 8, 0, "no per-vector masking");
        assert_eq!(INFO.msi_vectors, 1);
        assert_eq!(INFO.kind, ModelKind::Hibmc);
        assert_eq!(INFO.vram_bar, 0);
        assert_eq!(c.vram().size(), 32 << 20);
    }

    #[test]
    fn vram_size_follows_the_options_and_must_be_a_power_of_two() {
        let small = Hibmc::new(&with(Some(16 << 20), crate::Monitor::Default)).unwrap();
        assert_eq!(small.config().bar(0).map(|b| b.size), Some(16 << 20));
        // The spec refuses what the model could not build.
        assert!(matches!(
            CardSpec::new(ModelKind::Hibmc, Some(24 << 20), crate::Monitor::Default),
            Err(crate::SpecError::VramSize { .. })
        ));
    }

    /// `hibmc_hw_config` (all versions) then `hibmc_display_ctrl` (6.12/7.x), access by access.
    #[test]
    fn probe_sequence_power_mode_then_gate() {
        let mut c = card();
        // hibmc_set_power_mode(MODE0): RMW of 0x4C, mode 0 and OSC_INPUT.
        let v = readl(&mut c, POWER_MODE_CTRL) & !(POWER_MODE_MASK | 1 << 3) | 1 << 3;
        writel(&mut c, POWER_MODE_CTRL, v);
        assert_eq!(readl(&mut c, POWER_MODE_CTRL), 0x8);
        // Gate enable: CURRENT_GATE as the source, then hibmc_set_current_gate picks by mode.
        let gate = readl(&mut c, CURRENT_GATE) & !(GATE_DISPLAY | GATE_LOCALMEM)
            | GATE_DISPLAY
            | GATE_LOCALMEM;
        let target = if readl(&mut c, POWER_MODE_CTRL) & 3 == 1 {
            MODE1_GATE
        } else {
            MODE0_GATE
        };
        assert_eq!(target, MODE0_GATE);
        writel(&mut c, target, gate);
        assert_eq!(readl(&mut c, MODE0_GATE), 0x6);
        assert_eq!(readl(&mut c, CURRENT_GATE), 0x6);
        assert_eq!(readl(&mut c, MODE1_GATE), 0);
        // Local-memory reset pulse.
        let misc = readl(&mut c, MISC_CTRL) & !(1 << 6);
        writel(&mut c, MISC_CTRL, misc);
        writel(&mut c, MISC_CTRL, misc | 1 << 6);
        assert_eq!(readl(&mut c, MISC_CTRL), 0x40);
        // hibmc_display_ctrl: PANELDATE.
        let d = readl(&mut c, DISPLAY_CONTROL_HISILE) | 1 << 1;
        writel(&mut c, DISPLAY_CONTROL_HISILE, d);
        assert_eq!(readl(&mut c, DISPLAY_CONTROL_HISILE), 0x2);

        // Mode 1 switches the mirror to MODE1_GATE, which the next gate write then fills.
        writel(&mut c, POWER_MODE_CTRL, 0x8 | 1);
        assert_eq!(readl(&mut c, CURRENT_GATE), 0);
        let gate = readl(&mut c, CURRENT_GATE) | GATE_DISPLAY;
        writel(&mut c, MODE1_GATE, gate);
        assert_eq!(readl(&mut c, CURRENT_GATE), GATE_DISPLAY);
        assert_eq!(readl(&mut c, MODE0_GATE), 0x6);
        // Sleep (2) and the undefined 3 use MODE0_GATE again.
        for mode in [2, 3] {
            writel(&mut c, POWER_MODE_CTRL, mode);
            assert_eq!(
                readl(&mut c, POWER_MODE_CTRL) & 3,
                mode,
                "mode bits read back"
            );
            assert_eq!(readl(&mut c, CURRENT_GATE), 0x6);
        }
        // CURRENT_GATE itself is read-only.
        writel(&mut c, CURRENT_GATE, 0xffff_ffff);
        assert_eq!(readl(&mut c, CURRENT_GATE), 0x6);
        assert_eq!(c.unimplemented_accesses(), 0);
    }

    /// The register writes of one modeset to 1024x768@60 XRGB8888 with the BO at `fb`
    /// (`mode_set_nofb`, `atomic_begin`, plane `atomic_update`, `atomic_enable`, vblank on).
    fn modeset_1024x768(c: &mut Hibmc, fb: u32, format: u32, pitch: u32) {
        writel(c, CRT_PLL_CTRL, 0x0002_0000);
        writel(c, CRT_HORZ_TOTAL, (1344 - 1) << 16 | (1024 - 1));
        writel(c, CRT_HORZ_SYNC, (1184 - 1048) << 16 | (1048 - 1));
        writel(c, CRT_VERT_TOTAL, (806 - 1) << 16 | (768 - 1));
        writel(c, CRT_VERT_SYNC, (777 - 771) << 16 | (771 - 1));
        writel(c, CRT_PLL2_HS, 0x4000_0000);
        // set_vclock_hisilicon with the 65 MHz value.
        let v = readl(c, CRT_PLL1_HS) & !(1 << 30);
        writel(c, CRT_PLL1_HS, v);
        writel(c, CRT_PLL1_HS, 1 << 29 | 1 << 24);
        writel(c, CRT_PLL1_HS, 0x2394_0d01);
        let v = 0x2394_0d01 & !(1 << 24);
        writel(c, CRT_PLL1_HS, v);
        let v = v & !(1 << 29);
        writel(c, CRT_PLL1_HS, v);
        writel(c, CRT_PLL1_HS, v | 1 << 30);
        writel(c, CRT_AUTO_CENTERING_TL, 0);
        writel(c, CRT_AUTO_CENTERING_BR, (768 - 1) << 16 | (1024 - 1));
        writel(
            c,
            CRT_DISP_CTL,
            DISP_CTL_CRTSELECT | DISP_CTL_TIMING | DISP_CTL_PLANE,
        );
        // atomic_begin: power mode 0, gates on.
        let mode = readl(c, POWER_MODE_CTRL) & !0xb | 0x8;
        writel(c, POWER_MODE_CTRL, mode);
        let gate = readl(c, CURRENT_GATE) | 0x6;
        writel(c, MODE0_GATE, gate);
        // Plane update.
        let cpp = if format == FORMAT_XRGB8888 { 4 } else { 2 };
        writel(c, CRT_FB_ADDRESS, fb);
        writel(c, CRT_FB_WIDTH, (1024 * cpp) << 16 | pitch);
        let ctl = readl(c, CRT_DISP_CTL) & !DISP_CTL_FORMAT_MASK | format;
        writel(c, CRT_DISP_CTL, ctl);
        // atomic_enable: hibmc_crtc_dpms(ON), then drm_crtc_vblank_on + the vblank wait.
        let ctl =
            readl(c, CRT_DISP_CTL) & !(DISP_CTL_DPMS_MASK | DISP_CTL_TIMING) | DISP_CTL_TIMING;
        writel(c, CRT_DISP_CTL, ctl);
        writel(c, RAW_INTERRUPT_EN, INT_VBLANK);
    }

    /// `atomic_disable`: DPMS off (TIMING cleared), vblank off, sleep, gates off.
    fn disable(c: &mut Hibmc) {
        let ctl =
            readl(c, CRT_DISP_CTL) & !(DISP_CTL_DPMS_MASK | DISP_CTL_TIMING) | DISP_CTL_DPMS_MASK;
        writel(c, CRT_DISP_CTL, ctl);
        writel(c, RAW_INTERRUPT_EN, 0);
        let mode = readl(c, POWER_MODE_CTRL) & !0xb | 2;
        writel(c, POWER_MODE_CTRL, mode);
        let gate = readl(c, CURRENT_GATE) & !0x6;
        writel(c, MODE0_GATE, gate);
    }

    #[test]
    fn modeset_produces_the_scanout_the_driver_programmed() {
        let mut c = card();
        assert_eq!(c.scanout(), None);
        let fb = 3 << 20;
        modeset_1024x768(&mut c, fb, FORMAT_XRGB8888, 4096);
        // The values of the register spec's worked example.
        assert_eq!(readl(&mut c, CRT_HORZ_TOTAL), 0x053f_03ff);
        assert_eq!(readl(&mut c, CRT_HORZ_SYNC), 0x0088_0417);
        assert_eq!(readl(&mut c, CRT_VERT_TOTAL), 0x0325_02ff);
        assert_eq!(readl(&mut c, CRT_VERT_SYNC), 0x0006_0302);
        assert_eq!(readl(&mut c, CRT_PLL1_HS), 0x4294_0d01);
        assert_eq!(readl(&mut c, CRT_AUTO_CENTERING_BR), 0x02ff_03ff);
        assert_eq!(readl(&mut c, CRT_FB_WIDTH), 0x1000_1000);
        assert_eq!(readl(&mut c, CRT_DISP_CTL), 0x0200_0106);
        let s = c.scanout().unwrap();
        assert_eq!(
            s,
            Scanout {
                offset: u64::from(fb),
                width: 1024,
                height: 768,
                stride: 4096,
                format: PixelFormat::Xrgb8888
            }
        );
        // 1344 * 806 pixels at 65 MHz.
        assert_eq!(c.frame_period(), Duration::from_nanos(16_665_600));
        disable(&mut c);
        assert_eq!(c.scanout(), None);
        assert_eq!(c.unimplemented_accesses(), 0);
    }

    #[test]
    fn rgb565_and_unknown_formats() {
        let mut c = card();
        modeset_1024x768(&mut c, 0, FORMAT_RGB565, 2048);
        let s = c.scanout().unwrap();
        assert_eq!(
            (s.format, s.stride, s.width, s.height),
            (PixelFormat::Rgb565, 2048, 1024, 768)
        );
        let ctl = readl(&mut c, CRT_DISP_CTL) & !DISP_CTL_FORMAT_MASK;
        writel(&mut c, CRT_DISP_CTL, ctl);
        assert_eq!(c.scanout(), None, "FORMAT 0 (8 bpp) is not supported");
    }

    #[test]
    fn scanout_needs_timing_plane_and_dpms_on() {
        let mut c = card();
        modeset_1024x768(&mut c, 0, FORMAT_XRGB8888, 4096);
        let on = readl(&mut c, CRT_DISP_CTL);
        for off in [
            on & !DISP_CTL_TIMING,
            on & !DISP_CTL_PLANE,
            on | 1 << 30,
            on | 3 << 30,
        ] {
            writel(&mut c, CRT_DISP_CTL, off);
            assert_eq!(c.scanout(), None, "{off:#x}");
        }
        writel(&mut c, CRT_DISP_CTL, on);
        assert!(c.scanout().is_some());
    }

    #[test]
    fn scanout_outside_vram_is_not_shown() {
        let mut c = card();
        modeset_1024x768(&mut c, (32 << 20) - 4096, FORMAT_XRGB8888, 4096);
        assert_eq!(c.scanout(), None);
        modeset_1024x768(&mut c, 0, FORMAT_XRGB8888, 1024);
        assert_eq!(c.scanout(), None, "pitch shorter than a line");
        modeset_1024x768(&mut c, u32::MAX, FORMAT_XRGB8888, 4096);
        assert_eq!(c.scanout(), None);
    }

    #[test]
    fn frame_period_follows_the_pll_and_falls_back_to_60_hz() {
        let mut c = card();
        assert_eq!(c.frame_period(), DEFAULT_FRAME_PERIOD);
        // 640x480: 800 x 525 at the table's 25 MHz (59.5 Hz, as the real card would run).
        writel(&mut c, CRT_HORZ_TOTAL, (800 - 1) << 16 | 639);
        writel(&mut c, CRT_VERT_TOTAL, (525 - 1) << 16 | 479);
        writel(
            &mut c,
            CRT_PLL1_HS,
            0x23d4_0f02 & !(1 << 24 | 1 << 29) | 1 << 30,
        );
        assert_eq!(c.frame_period(), Duration::from_nanos(16_800_000));
        // A PLL value the table does not know.
        writel(&mut c, CRT_PLL1_HS, 0x1234_5678);
        assert_eq!(c.frame_period(), DEFAULT_FRAME_PERIOD);
        // Half-programmed totals.
        writel(&mut c, CRT_PLL1_HS, 0x2394_0d01);
        writel(&mut c, CRT_HORZ_TOTAL, 0);
        assert_eq!(c.frame_period(), DEFAULT_FRAME_PERIOD);
    }

    #[test]
    fn interrupt_status_is_write_one_to_clear() {
        let mut c = card();
        assert_eq!(readl(&mut c, RAW_INTERRUPT), 0);
        assert_eq!(c.vblank(), None, "not enabled: no MSI");
        assert_eq!(
            readl(&mut c, RAW_INTERRUPT),
            INT_VBLANK,
            "raw status latches anyway"
        );
        writel(&mut c, RAW_INTERRUPT, 0);
        assert_eq!(
            readl(&mut c, RAW_INTERRUPT),
            INT_VBLANK,
            "writing 0 clears nothing"
        );
        writel(&mut c, RAW_INTERRUPT, !INT_VBLANK);
        assert_eq!(readl(&mut c, RAW_INTERRUPT), INT_VBLANK);
        // hibmc_interrupt: read, test bit 2, write BIT(2).
        writel(&mut c, RAW_INTERRUPT, INT_VBLANK);
        assert_eq!(readl(&mut c, RAW_INTERRUPT), 0);
        // A byte write reaches only its lane.
        c.vblank();
        c.bar_write(MMIO_BAR, RAW_INTERRUPT + 1, &[0xff]);
        assert_eq!(readl(&mut c, RAW_INTERRUPT), INT_VBLANK);
        c.bar_write(MMIO_BAR, RAW_INTERRUPT, &[INT_VBLANK as u8]);
        assert_eq!(readl(&mut c, RAW_INTERRUPT), 0);
    }

    #[test]
    fn vblank_runs_only_while_enabled_and_msi_is_on() {
        let mut c = card();
        assert_eq!(c.vblank_period(), None);
        writel(&mut c, RAW_INTERRUPT_EN, INT_VBLANK);
        assert_eq!(c.vblank_period(), None, "MSI still off");
        set_msi(&mut c, true);
        assert_eq!(c.vblank_period(), Some(DEFAULT_FRAME_PERIOD));
        assert_eq!(c.vblank(), Some(0));
        assert_eq!(readl(&mut c, RAW_INTERRUPT), INT_VBLANK);
        writel(&mut c, RAW_INTERRUPT, INT_VBLANK);

        // With a mode programmed the period is the mode's.
        modeset_1024x768(&mut c, 0, FORMAT_XRGB8888, 4096);
        assert_eq!(c.vblank_period(), Some(Duration::from_nanos(16_665_600)));

        // disable_vblank writes 0.
        writel(&mut c, RAW_INTERRUPT_EN, 0);
        assert_eq!(c.vblank_period(), None);
        assert_eq!(c.vblank(), None);
        writel(&mut c, RAW_INTERRUPT_EN, INT_VBLANK);
        set_msi(&mut c, false);
        assert_eq!(c.vblank_period(), None, "pci_disable_msi stops it too");

        set_msi(&mut c, true);
        assert!(c.vblank_period().is_some());
        c.reset();
        assert_eq!(c.vblank_period(), None, "reset: enable and MSI are off");
        assert_eq!(readl(&mut c, RAW_INTERRUPT_EN), 0);
        assert_eq!(c.scanout(), None);
    }

    #[test]
    fn dp_probe_register_reads_zero() {
        let mut c = card();
        assert_eq!(readl(&mut c, DP_HOST_SERDES_CTRL), 0);
        writel(&mut c, DP_HOST_SERDES_CTRL, 0xffff_ffff);
        assert_eq!(readl(&mut c, DP_HOST_SERDES_CTRL), 0);
        assert_eq!(c.unimplemented_accesses(), 0);
        // The rest of the DP block is not there: zero, and counted.
        assert_eq!(readl(&mut c, 0x1f_0010), 0);
        assert_eq!(c.unimplemented_offsets(), vec![(0x1f_0010, 1)]);
    }

    #[test]
    fn sub_word_and_wide_accesses_use_byte_lanes() {
        let mut c = card();
        writel(&mut c, CRT_DISP_CTL, 0x0200_0106);
        writel(&mut c, CRT_FB_ADDRESS, 0x0030_0000);
        let mut two = [0; 2];
        c.bar_read(MMIO_BAR, CRT_DISP_CTL + 2, &mut two);
        assert_eq!(u16::from_le_bytes(two), 0x0200);
        let mut eight = [0; 8];
        c.bar_read(MMIO_BAR, CRT_DISP_CTL, &mut eight);
        assert_eq!(u64::from_le_bytes(eight), 0x0030_0000_0200_0106);
        c.bar_write(
            MMIO_BAR,
            CRT_FB_WIDTH,
            &0x0000_0800_1000_1000u64.to_le_bytes(),
        );
        assert_eq!(readl(&mut c, CRT_FB_WIDTH), 0x1000_1000);
        assert_eq!(readl(&mut c, CRT_HORZ_TOTAL), 0x800);
        c.bar_write(MMIO_BAR, CRT_FB_ADDRESS + 1, &[0xaa]);
        assert_eq!(readl(&mut c, CRT_FB_ADDRESS), 0x0030_aa00);
        // Unaligned 4 bytes straddling two registers.
        c.bar_write(MMIO_BAR, CRT_FB_ADDRESS + 2, &[1, 2, 3, 4]);
        assert_eq!(readl(&mut c, CRT_FB_ADDRESS), 0x0201_aa00);
        assert_eq!(readl(&mut c, CRT_FB_WIDTH), 0x1000_0403);
        // Palette entries are storage.
        writel(&mut c, CRT_PALETTE + 4 * 255, 0x00ff_8000);
        assert_eq!(readl(&mut c, CRT_PALETTE + 4 * 255), 0x00ff_8000);
        assert_eq!(c.unimplemented_accesses(), 0);
        assert_eq!(readl(&mut c, CRT_PALETTE + 4 * 256), 0);
        assert_eq!(c.unimplemented_accesses(), 1);
    }

    /// Every width at every alignment across the interrupt registers and their gaps, the DP
    /// probe register, the palette's edges and the end of the BAR, against hibmc_drm_regs.h.
    #[test]
    fn every_width_at_every_alignment_follows_the_register_map() {
        use crate::regs::conformance::{check, Byte};
        let make = || -> Box<dyn crate::DeviceModel> {
            let mut c = card();
            // Latch the vblank status bit so that W1C has something to clear.
            c.vblank();
            Box::new(c)
        };
        let in_reg = |o: u64, reg: u64| (reg..reg + 4).contains(&o);
        check(&make, MMIO_BAR, 0x08_0278..0x08_02a0, &|o| {
            if in_reg(o, CRT_AUTO_CENTERING_TL)
                || in_reg(o, CRT_AUTO_CENTERING_BR)
                || in_reg(o, DISPLAY_CONTROL_HISILE)
                || in_reg(o, RAW_INTERRUPT_EN)
            {
                Byte::Storage
            } else if o == RAW_INTERRUPT {
                Byte::W1c(INT_VBLANK as u8)
            } else if in_reg(o, RAW_INTERRUPT) {
                Byte::W1c(0)
            } else {
                Byte::Gap
            }
        });
        check(&make, MMIO_BAR, 0x1f_0014..0x1f_0028, &|o| {
            if in_reg(o, DP_HOST_SERDES_CTRL) {
                Byte::Fixed(0)
            } else {
                Byte::Gap
            }
        });
        let palette = CRT_PALETTE..CRT_PALETTE + 4 * PALETTE_ENTRIES as u64;
        for window in [
            CRT_PALETTE - 12..CRT_PALETTE + 12,
            palette.end - 12..palette.end + 12,
        ] {
            check(&make, MMIO_BAR, window, &|o| {
                if palette.contains(&o) {
                    Byte::Storage
                } else {
                    Byte::Gap
                }
            });
        }
        check(&make, MMIO_BAR, MMIO_SIZE - 12..MMIO_SIZE + 12, &|_| {
            Byte::Gap
        });
    }

    #[test]
    fn every_register_resets_to_zero() {
        let mut c = card();
        for reg in REGISTERS.iter() {
            for e in 0..u64::from(reg.count) {
                writel(&mut c, reg.offset + 4 * e, 0xffff_ffff);
            }
        }
        c.vblank();
        writel(&mut c, POWER_MODE_CTRL, 1);
        writel(&mut c, MODE1_GATE, 0x6);
        c.reset();
        for reg in REGISTERS.iter() {
            for e in 0..u64::from(reg.count) {
                let at = reg.offset + 4 * e;
                let want = if at == GPIO_DATA { 3 } else { 0 };
                assert_eq!(readl(&mut c, at), want, "{} after reset", reg.name);
            }
        }
        assert_eq!(c.unimplemented_accesses(), 0);
    }

    #[test]
    fn register_counts_reach_the_stats_by_register() {
        let mut c = card();
        writel(&mut c, CRT_DISP_CTL, 1);
        readl(&mut c, CRT_DISP_CTL);
        readl(&mut c, CRT_DISP_CTL);
        writel(&mut c, CRT_PALETTE + 8, 1);
        readl(&mut c, 0x100);
        let s = c.register_stats();
        assert_eq!(
            s.counts(),
            [
                ("CRT_DISP_CTL", CRT_DISP_CTL, 2, 1),
                ("CRT_PALETTE", CRT_PALETTE, 0, 1)
            ]
        );
        assert_eq!(
            (s.unimplemented, s.unimplemented_offsets),
            (1, vec![(0x100, 1)])
        );
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let mut c = card();
        let mut big = [0xa5u8; 64];
        for off in [
            0,
            3,
            CRT_DISP_CTL + 3,
            GPIO_DATA + 1,
            CRT_PALETTE + 0x3fe,
            DP_HOST_SERDES_CTRL + 2,
            MMIO_SIZE - 3,
            MMIO_SIZE,
            u64::MAX - 3,
            u64::MAX,
        ] {
            for len in [0, 1, 2, 3, 4, 8, 64] {
                c.bar_read(MMIO_BAR, off, &mut big[..len]);
                c.bar_write(MMIO_BAR, off, &big[..len]);
                for bar in [0, 2, 5, 6, usize::MAX] {
                    c.bar_read(bar, off, &mut big[..len]);
                    c.bar_write(bar, off, &big[..len]);
                }
            }
        }
        assert!(c.unimplemented_accesses() > 0);
        let _ = c.scanout();
        let _ = c.vblank_period();
    }

    #[test]
    fn unimplemented_offsets_are_tallied_within_a_bound() {
        let mut c = card();
        readl(&mut c, 0x100);
        readl(&mut c, 0x100);
        writel(&mut c, 0x102, 1);
        assert_eq!(c.unimplemented_offsets(), vec![(0x100, 3)]);
        // A scan of the whole BAR is counted in full but remembered only up to the bound.
        for off in (0..MMIO_SIZE).step_by(4) {
            readl(&mut c, off);
        }
        assert_eq!(c.unimplemented_offsets().len(), regs::MAX_TALLIED_OFFSETS);
        // 19 storage registers, the palette, and CURRENT_GATE, RAW_INTERRUPT, the two GPIO
        // registers and DP_HOST_SERDES_CTRL.
        let implemented = 19 + PALETTE_ENTRIES + 5;
        assert_eq!(
            c.unimplemented_accesses(),
            3 + (MMIO_SIZE / 4) - implemented as u64
        );
    }

    // DDC: i2c-algo-bit on top of hibmc_drm_i2c.c, register access by register access.

    #[derive(Debug, PartialEq, Eq)]
    enum XferError {
        /// Address not acknowledged (what DRM's EDID reader stops retrying on).
        Nxio,
        /// Data byte not acknowledged.
        Io,
        /// SCL did not come back high.
        TimedOut,
    }

    struct Msg {
        addr: u8,
        read: bool,
        buf: Vec<u8>,
    }

    /// The bit-banging of i2c-algo-bit.c (`udelay` and jiffies left out: the model has no time),
    /// through the callbacks of hibmc_drm_i2c.c.
    struct AlgoBit<'a> {
        card: &'a mut Hibmc,
        accesses: u64,
    }

    impl AlgoBit<'_> {
        fn new(card: &mut Hibmc) -> AlgoBit<'_> {
            AlgoBit { card, accesses: 0 }
        }
        fn readl(&mut self, off: u64) -> u32 {
            self.accesses += 1;
            readl(self.card, off)
        }
        fn writel(&mut self, off: u64, v: u32) {
            self.accesses += 1;
            writel(self.card, off, v)
        }
        /// hibmc_set_i2c_signal
        fn set(&mut self, mask: u32, value: bool) {
            let dir = self.readl(GPIO_DATA_DIRECTION);
            if value {
                self.writel(GPIO_DATA_DIRECTION, dir & !mask);
            } else {
                let data = self.readl(GPIO_DATA);
                self.writel(GPIO_DATA, data & !mask);
                self.writel(GPIO_DATA_DIRECTION, dir | mask);
            }
        }
        /// hibmc_get_i2c_signal
        fn get(&mut self, mask: u32) -> bool {
            let dir = self.readl(GPIO_DATA_DIRECTION);
            if dir & mask != mask {
                self.writel(GPIO_DATA_DIRECTION, dir & !mask);
            }
            self.readl(GPIO_DATA) & mask != 0
        }
        fn setsda(&mut self, v: bool) {
            self.set(GPIO_SDA, v)
        }
        fn setscl(&mut self, v: bool) {
            self.set(GPIO_SCL, v)
        }
        fn getsda(&mut self) -> bool {
            self.get(GPIO_SDA)
        }
        fn getscl(&mut self) -> bool {
            self.get(GPIO_SCL)
        }
        fn sclhi(&mut self) -> Result<(), XferError> {
            self.setscl(true);
            // The real loop polls for `timeout` jiffies; the model must answer on the first poll.
            if self.getscl() {
                Ok(())
            } else {
                Err(XferError::TimedOut)
            }
        }
        fn i2c_start(&mut self) {
            self.setsda(false);
            self.setscl(false);
        }
        fn i2c_repstart(&mut self) -> Result<(), XferError> {
            self.setsda(true);
            self.sclhi()?;
            self.setsda(false);
            self.setscl(false);
            Ok(())
        }
        fn i2c_stop(&mut self) {
            self.setsda(false);
            let _ = self.sclhi();
            self.setsda(true);
        }
        fn i2c_outb(&mut self, c: u8) -> Result<bool, XferError> {
            for i in (0..8).rev() {
                self.setsda(c >> i & 1 == 1);
                self.sclhi()?;
                self.setscl(false);
            }
            self.setsda(true);
            self.sclhi()?;
            let ack = !self.getsda();
            self.setscl(false);
            Ok(ack)
        }
        fn i2c_inb(&mut self) -> Result<u8, XferError> {
            self.setsda(true);
            let mut indata = 0u8;
            for _ in 0..8 {
                self.sclhi()?;
                indata = indata << 1 | u8::from(self.getsda());
                self.setscl(false);
            }
            Ok(indata)
        }
        fn acknak(&mut self, is_ack: bool) -> Result<(), XferError> {
            if is_ack {
                self.setsda(false);
            }
            self.sclhi()?;
            self.setscl(false);
            Ok(())
        }
        /// try_address with the adapter's 3 retries.
        fn try_address(&mut self, addr: u8) -> Result<bool, XferError> {
            let retries = 3;
            for i in 0..=retries {
                let ack = self.i2c_outb(addr)?;
                if ack || i == retries {
                    return Ok(ack);
                }
                self.i2c_stop();
                self.i2c_start();
            }
            Ok(false)
        }
        fn messages(&mut self, msgs: &mut [Msg]) -> Result<usize, XferError> {
            for (i, m) in msgs.iter_mut().enumerate() {
                if i > 0 {
                    self.i2c_repstart()?;
                }
                if !self.try_address(m.addr << 1 | u8::from(m.read))? {
                    return Err(XferError::Nxio);
                }
                if m.read {
                    let len = m.buf.len();
                    for j in 0..len {
                        m.buf[j] = self.i2c_inb()?;
                        self.acknak(j + 1 < len)?;
                    }
                } else {
                    for &b in &m.buf {
                        if !self.i2c_outb(b)? {
                            return Err(XferError::Io);
                        }
                    }
                }
            }
            Ok(msgs.len())
        }
        /// bit_xfer: START, the messages with repeated STARTs between them, STOP.
        fn xfer(&mut self, msgs: &mut [Msg]) -> Result<usize, XferError> {
            self.i2c_start();
            let result = self.messages(msgs);
            self.i2c_stop();
            result
        }
        /// drm_do_probe_ddc_edid for one block without a segment: `[W 0x50 offset] [Sr] [R len]`.
        fn read_edid(&mut self, offset: u8, len: usize) -> Result<Vec<u8>, XferError> {
            let mut msgs = [
                Msg {
                    addr: 0x50,
                    read: false,
                    buf: vec![offset],
                },
                Msg {
                    addr: 0x50,
                    read: true,
                    buf: vec![0; len],
                },
            ];
            self.xfer(&mut msgs)?;
            let [_, read] = msgs;
            Ok(read.buf)
        }
    }

    #[test]
    fn ddc_lines_idle_high_and_read_back_what_the_driver_drives() {
        // i2c-algo-bit's test_bus sequence (bit_test=1).
        let mut c = card();
        let mut bus = AlgoBit::new(&mut c);
        assert!(bus.getsda() && bus.getscl(), "idle bus");
        bus.setsda(false);
        assert!(!bus.getsda() && bus.getscl());
        bus.setsda(true);
        assert!(bus.getsda() && bus.getscl());
        bus.setscl(false);
        assert!(!bus.getscl() && bus.getsda());
        bus.setscl(true);
        assert!(bus.getscl() && bus.getsda());
        // Bits other than SCL/SDA are kept in the data latch.
        writel(&mut c, GPIO_DATA, 0xf0);
        assert_eq!(readl(&mut c, GPIO_DATA), 0xf3);
    }

    #[test]
    fn full_edid_block_reads_over_ddc_like_drm_does() {
        let mut c = card();
        let mut bus = AlgoBit::new(&mut c);
        let block = bus.read_edid(0, 128).unwrap();
        assert_eq!(block, default_edid());
        // About 12 MMIO accesses per bit (131 bytes of 9 clocks): 14.6k for the block, not the
        // ~10k (8 per bit) the register spec estimates. Each costs a vfio-user round trip.
        let accesses = bus.accesses;
        assert!((12_000..16_000).contains(&accesses), "{accesses} accesses");
        let s = c.ddc_stats();
        assert_eq!(
            (
                s.starts,
                s.stops,
                s.address_acks,
                s.address_naks,
                s.bytes_read
            ),
            (2, 1, 2, 0, 128)
        );
        assert_eq!(c.unimplemented_accesses(), 0);
        // The bus is idle again: both lines released and high.
        assert_eq!(readl(&mut c, GPIO_DATA_DIRECTION) & 3, 0);
        assert_eq!(readl(&mut c, GPIO_DATA) & 3, 3);
    }

    #[test]
    fn ddc_probe_and_repeated_start_at_an_offset() {
        let mut c = card();
        let edid = default_edid();
        let mut bus = AlgoBit::new(&mut c);
        // drm_probe_ddc: offset 0, one byte.
        assert_eq!(bus.read_edid(0, 1).unwrap(), [0x00]);
        // The offset write is honoured after the repeated START.
        assert_eq!(bus.read_edid(54, 18).unwrap(), edid[54..72]);
        assert_eq!(bus.read_edid(120, 8).unwrap(), edid[120..128]);
        // A bare read continues after the last byte sent.
        let mut msgs = [Msg {
            addr: 0x50,
            read: true,
            buf: vec![0; 2],
        }];
        assert_eq!(bus.xfer(&mut msgs), Ok(1));
        assert_eq!(
            msgs[0].buf,
            [0xff, 0xff],
            "past the 128-byte EDID the EEPROM is erased"
        );
    }

    #[test]
    fn ddc_wrong_address_is_nacked() {
        let mut c = card();
        let mut bus = AlgoBit::new(&mut c);
        // The E-DDC segment pointer and a neighbour of the EEPROM.
        for addr in [0x30, 0x51] {
            let mut msgs = [Msg {
                addr,
                read: false,
                buf: vec![0],
            }];
            assert_eq!(bus.xfer(&mut msgs), Err(XferError::Nxio));
        }
        // 1 try + 3 retries each.
        assert_eq!(c.ddc_stats().address_naks, 8);
        // The EEPROM is still fine afterwards.
        assert_eq!(
            AlgoBit::new(&mut c).read_edid(0, 8).unwrap(),
            default_edid()[..8]
        );
    }

    #[test]
    fn no_monitor_nothing_acks() {
        let mut c = Hibmc::new(&with(None, crate::Monitor::Absent)).unwrap();
        let mut bus = AlgoBit::new(&mut c);
        assert_eq!(bus.read_edid(0, 1), Err(XferError::Nxio));
        assert_eq!(bus.read_edid(0, 128), Err(XferError::Nxio));
        assert_eq!(c.ddc_stats().address_acks, 0);
        assert_eq!(
            readl(&mut c, GPIO_DATA) & 3,
            3,
            "bus released after the failed transfers"
        );
    }

    #[test]
    fn custom_two_block_edid_is_served_and_oversized_is_refused() {
        let mut blob = default_edid();
        blob[126] = 1;
        blob[127] = blob[..127]
            .iter()
            .fold(0u8, |a, b| a.wrapping_add(*b))
            .wrapping_neg();
        let mut ext = vec![0u8; 128];
        ext[0] = 0x02;
        ext[1] = 0x03;
        ext[2] = 0x04;
        ext[127] = ext[..127]
            .iter()
            .fold(0u8, |a, b| a.wrapping_add(*b))
            .wrapping_neg();
        blob.extend_from_slice(&ext);
        assert_eq!(crate::edid::validate(&blob), Ok(()));
        let mut c = Hibmc::new(&with(None, crate::Monitor::Edid(blob.clone()))).unwrap();
        let mut bus = AlgoBit::new(&mut c);
        assert_eq!(bus.read_edid(0, 128).unwrap(), blob[..128]);
        assert_eq!(bus.read_edid(128, 128).unwrap(), blob[128..]);

        let mut three = blob.clone();
        three.extend_from_slice(&ext);
        assert!(matches!(
            CardSpec::new(ModelKind::Hibmc, None, crate::Monitor::Edid(three)),
            Err(crate::SpecError::Edid(_))
        ));
    }

    #[test]
    fn reset_mid_transfer_leaves_the_bus_idle() {
        let mut c = card();
        let mut bus = AlgoBit::new(&mut c);
        bus.i2c_start();
        assert_eq!(bus.i2c_outb(0xa1), Ok(true));
        c.reset();
        assert_eq!(readl(&mut c, GPIO_DATA) & 3, 3);
        assert_eq!(
            AlgoBit::new(&mut c).read_edid(0, 4).unwrap(),
            default_edid()[..4]
        );
    }
}
