//! QEMU's bochs display (`hw/display/bochs-display.c`), as `bochs-drm` drives it.
//!
//! BAR0 is VRAM; BAR2 is 4 KiB of registers: the EDID blob, a VGA ioport window, the DISPI
//! (VBE) registers and QEMU's extension block. No interrupts: every bochs-drm version either
//! fakes vblank (6.1, 6.12) or runs a software vblank timer (7.x).

use pci_config::{Capability, ConfigSpace, PciIdentity};
use vram_bar::{PixelFormat, Scanout, Vram};

use crate::{CardOptions, DeviceModel, ModelError, ModelKind};

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x1111;
/// bochs-drm maps subsystem `1af4:1100` to "QEMU stdvga".
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
pub const SUBSYSTEM_ID: u16 = 0x1100;
/// Revision 2 makes bochs-drm use the QEMU extension registers at 0x600.
pub const REVISION: u8 = 2;
/// Display controller, "other" (as QEMU's bochs-display), so vgaarb never picks it as boot VGA.
pub const CLASS_CODE: u32 = 0x03_80_00;
pub const DEFAULT_VRAM_SIZE: u64 = 16 << 20;
/// bochs-drm 6.1/6.12 ignore a card with less.
pub const MIN_VRAM_SIZE: u64 = 4 << 20;

pub const VRAM_BAR: usize = 0;
pub const MMIO_BAR: usize = 2;
pub const MMIO_SIZE: u64 = 0x1000;

// BAR2 layout.
/// EDID blob, read with readb, 0x000..0x400.
pub const EDID_BASE: u64 = 0x000;
pub const EDID_SIZE: u64 = 0x400;
/// VGA ioports 0x3c0..0x3e0 at 0x400..0x420; only the blanking code touches them.
pub const VGA_BASE: u64 = 0x400;
pub const VGA_SIZE: u64 = 0x20;
/// DISPI registers, 16 bits each, at 0x500 + 2 * index.
pub const DISPI_BASE: u64 = 0x500;
/// QEMU extension block: size at 0x600, framebuffer byte order at 0x604.
pub const QEXT_SIZE_REG: u64 = 0x600;
pub const QEXT_BYTEORDER_REG: u64 = 0x604;
/// What 0x600 reports: the extension block holds two 32-bit registers.
pub const QEXT_SIZE: u32 = 8;
pub const BYTEORDER_LE: u32 = 0x1e1e_1e1e;
pub const BYTEORDER_BE: u32 = 0xbebe_bebe;

// DISPI register indexes (QEMU include/hw/display/bochs-vbe.h).
pub const DISPI_ID: usize = 0x0;
pub const DISPI_XRES: usize = 0x1;
pub const DISPI_YRES: usize = 0x2;
pub const DISPI_BPP: usize = 0x3;
pub const DISPI_ENABLE: usize = 0x4;
pub const DISPI_BANK: usize = 0x5;
pub const DISPI_VIRT_WIDTH: usize = 0x6;
pub const DISPI_VIRT_HEIGHT: usize = 0x7;
pub const DISPI_X_OFFSET: usize = 0x8;
pub const DISPI_Y_OFFSET: usize = 0x9;
pub const DISPI_VIDEO_MEMORY_64K: usize = 0xa;
pub const DISPI_COUNT: usize = 0xb;
/// The ID the card reports; bochs-drm accepts 0xB0C0..=0xB0CF.
pub const DISPI_ID_VALUE: u16 = 0xb0c5;
pub const ENABLE_ENABLED: u16 = 0x01;

/// The bochs display model.
pub struct Bochs {
    config: ConfigSpace,
    vram: Vram,
    edid: [u8; EDID_SIZE as usize],
    dispi: [u16; DISPI_COUNT],
    vga: [u8; VGA_SIZE as usize],
    byteorder: u32,
    unimplemented: u64,
}

impl Bochs {
    pub fn new(options: &CardOptions) -> Result<Bochs, ModelError> {
        let vram = Vram::new(options.vram_size.max(MIN_VRAM_SIZE))?;
        let identity = PciIdentity {
            vendor_id: VENDOR_ID,
            device_id: DEVICE_ID,
            subsystem_vendor_id: SUBSYSTEM_VENDOR_ID,
            subsystem_id: SUBSYSTEM_ID,
            class_code: CLASS_CODE,
            revision: REVISION,
        };
        let mut config = crate::display_config(identity, &vram, VRAM_BAR, MMIO_BAR, MMIO_SIZE)?;
        config.add_capability(Capability::PciExpressEndpoint)?;
        config.add_capability(Capability::PowerManagement)?;

        let mut edid = [0u8; EDID_SIZE as usize];
        if !options.no_monitor {
            let blob = match &options.edid {
                Some(blob) => blob.clone(),
                None => crate::edid::default_edid(),
            };
            let len = blob.len().min(edid.len());
            edid[..len].copy_from_slice(&blob[..len]);
        }
        let mut card = Bochs {
            config,
            vram,
            edid,
            dispi: [0; DISPI_COUNT],
            vga: [0; VGA_SIZE as usize],
            byteorder: BYTEORDER_LE,
            unimplemented: 0,
        };
        card.reset();
        Ok(card)
    }

    /// Current value of DISPI register `index` as the driver reads it.
    pub fn dispi(&self, index: usize) -> u16 {
        match index {
            DISPI_ID => DISPI_ID_VALUE,
            DISPI_VIDEO_MEMORY_64K => (self.vram.size() / 0x10000).min(u64::from(u16::MAX)) as u16,
            _ => self.dispi.get(index).copied().unwrap_or(0),
        }
    }

    fn dispi_write(&mut self, index: usize, value: u16) {
        match index {
            // Read-only: identity and memory size.
            DISPI_ID | DISPI_VIDEO_MEMORY_64K => {}
            _ => {
                if let Some(reg) = self.dispi.get_mut(index) {
                    *reg = value;
                }
            }
        }
    }

    /// One byte of BAR2 as the driver would read it.
    fn mmio_byte(&mut self, offset: u64) -> u8 {
        match offset {
            o if o < EDID_BASE + EDID_SIZE => self.edid[o as usize],
            o if (VGA_BASE..VGA_BASE + VGA_SIZE).contains(&o) => self.vga[(o - VGA_BASE) as usize],
            o if (DISPI_BASE..DISPI_BASE + 2 * DISPI_COUNT as u64).contains(&o) => {
                let rel = o - DISPI_BASE;
                self.dispi((rel / 2) as usize).to_le_bytes()[(rel % 2) as usize]
            }
            o if (QEXT_SIZE_REG..QEXT_SIZE_REG + 4).contains(&o) => {
                QEXT_SIZE.to_le_bytes()[(o - QEXT_SIZE_REG) as usize]
            }
            o if (QEXT_BYTEORDER_REG..QEXT_BYTEORDER_REG + 4).contains(&o) => {
                self.byteorder.to_le_bytes()[(o - QEXT_BYTEORDER_REG) as usize]
            }
            _ => {
                self.unimplemented += 1;
                0
            }
        }
    }
}

impl DeviceModel for Bochs {
    fn kind(&self) -> ModelKind {
        ModelKind::Bochs
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn vram_bar(&self) -> usize {
        VRAM_BAR
    }

    fn vram(&self) -> &Vram {
        &self.vram
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != MMIO_BAR {
            data.fill(0);
            self.unimplemented += 1;
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match offset.checked_add(i as u64) {
                Some(o) if o < MMIO_SIZE => self.mmio_byte(o),
                _ => 0,
            };
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let end = offset.checked_add(data.len() as u64);
        if bar != MMIO_BAR || end.is_none_or(|end| end > MMIO_SIZE) {
            self.unimplemented += 1;
            return;
        }
        match offset {
            o if (VGA_BASE..VGA_BASE + VGA_SIZE).contains(&o) => {
                // Blanking writes (attribute controller 0x3c0, misc output 0x3c2): kept, no effect
                // on the scanout, as in QEMU's bochs-display which has no VGA core at all.
                for (i, b) in data.iter().enumerate() {
                    if let Some(slot) = self.vga.get_mut((o - VGA_BASE) as usize + i) {
                        *slot = *b;
                    }
                }
            }
            o if (DISPI_BASE..DISPI_BASE + 2 * DISPI_COUNT as u64).contains(&o) => {
                // DISPI registers are 16 bits wide; a byte write replaces one half.
                for (i, b) in data.iter().enumerate() {
                    let rel = o - DISPI_BASE + i as u64;
                    let index = (rel / 2) as usize;
                    let mut bytes = self.dispi(index).to_le_bytes();
                    bytes[(rel % 2) as usize] = *b;
                    self.dispi_write(index, u16::from_le_bytes(bytes));
                }
            }
            QEXT_BYTEORDER_REG if data.len() == 4 => {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                if value == BYTEORDER_LE || value == BYTEORDER_BE {
                    self.byteorder = value;
                }
            }
            _ => self.unimplemented += 1,
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        self.dispi = [0; DISPI_COUNT];
        self.vga = [0; VGA_SIZE as usize];
        self.byteorder = BYTEORDER_LE;
    }

    fn scanout(&self) -> Option<Scanout> {
        if self.dispi[DISPI_ENABLE] & ENABLE_ENABLED == 0 {
            return None;
        }
        let format = match (self.dispi[DISPI_BPP], self.byteorder) {
            (32, BYTEORDER_BE) => PixelFormat::Bgrx8888,
            (32, _) => PixelFormat::Xrgb8888,
            (16, _) => PixelFormat::Rgb565,
            _ => return None,
        };
        let bytepp = u64::from(format.bytes_per_pixel());
        let width = u32::from(self.dispi[DISPI_XRES]);
        let stride = u64::from(self.dispi[DISPI_VIRT_WIDTH].max(self.dispi[DISPI_XRES])) * bytepp;
        let offset = u64::from(self.dispi[DISPI_X_OFFSET]) * bytepp
            + u64::from(self.dispi[DISPI_Y_OFFSET]) * stride;
        let scanout = Scanout {
            offset,
            width,
            height: u32::from(self.dispi[DISPI_YRES]),
            stride: stride as u32,
            format,
        };
        let fits = scanout
            .byte_len()
            .is_some_and(|len| offset + len <= self.vram.size());
        fits.then_some(scanout)
    }

    fn unimplemented_accesses(&self) -> u64 {
        self.unimplemented
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> Bochs {
        Bochs::new(&CardOptions {
            vram_size: DEFAULT_VRAM_SIZE,
            edid: None,
            no_monitor: false,
        })
        .unwrap()
    }

    fn read16(c: &mut Bochs, off: u64) -> u16 {
        let mut b = [0; 2];
        c.bar_read(MMIO_BAR, off, &mut b);
        u16::from_le_bytes(b)
    }

    fn write16(c: &mut Bochs, index: usize, v: u16) {
        c.bar_write(MMIO_BAR, DISPI_BASE + 2 * index as u64, &v.to_le_bytes());
    }

    #[test]
    fn identity_matches_what_bochs_drm_probes() {
        let c = card();
        let cfg = c.config();
        assert_eq!((cfg.read_u16(0), cfg.read_u16(2)), (0x1234, 0x1111));
        assert_eq!((cfg.read_u16(0x2c), cfg.read_u16(0x2e)), (0x1af4, 0x1100));
        assert_eq!(cfg.read_u8(8), 2);
        assert_eq!(cfg.read_u8(0x3d), 0, "no INTx pin");
        assert_eq!(cfg.bar(0).map(|b| b.size), Some(16 << 20));
        assert_eq!(cfg.bar(2).map(|b| b.size), Some(0x1000));
    }

    #[test]
    fn dispi_id_and_memory_size_are_read_only() {
        let mut c = card();
        assert_eq!(read16(&mut c, DISPI_BASE), 0xb0c5);
        assert_eq!(
            read16(&mut c, DISPI_BASE + 2 * DISPI_VIDEO_MEMORY_64K as u64),
            256
        );
        write16(&mut c, DISPI_ID, 0xb0c0);
        write16(&mut c, DISPI_VIDEO_MEMORY_64K, 1);
        assert_eq!(read16(&mut c, DISPI_BASE), 0xb0c5);
        assert_eq!(
            read16(&mut c, DISPI_BASE + 2 * DISPI_VIDEO_MEMORY_64K as u64),
            256
        );
    }

    #[test]
    fn edid_and_qext_are_where_the_driver_looks() {
        let mut c = card();
        let mut hdr = [0; 8];
        c.bar_read(MMIO_BAR, 0, &mut hdr);
        assert_eq!(hdr, [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        let mut v = [0; 4];
        c.bar_read(MMIO_BAR, QEXT_SIZE_REG, &mut v);
        assert_eq!(u32::from_le_bytes(v), 8);
        c.bar_write(MMIO_BAR, QEXT_BYTEORDER_REG, &BYTEORDER_BE.to_le_bytes());
        c.bar_read(MMIO_BAR, QEXT_BYTEORDER_REG, &mut v);
        assert_eq!(u32::from_le_bytes(v), BYTEORDER_BE);
    }

    #[test]
    fn no_monitor_serves_no_edid() {
        let mut c = Bochs::new(&CardOptions {
            vram_size: DEFAULT_VRAM_SIZE,
            edid: None,
            no_monitor: true,
        })
        .unwrap();
        let mut hdr = [0xaa; 8];
        c.bar_read(MMIO_BAR, 0, &mut hdr);
        assert_eq!(hdr, [0; 8]);
    }

    /// The register sequence of `bochs_hw_setmode` + `bochs_hw_setbase` (6.12) for a BO at 3 MiB.
    #[test]
    fn modeset_produces_the_scanout_qemu_would_show() {
        let mut c = card();
        assert_eq!(c.scanout(), None);
        for (reg, val) in [
            (DISPI_ENABLE, 0),
            (DISPI_BPP, 32),
            (DISPI_XRES, 1024),
            (DISPI_YRES, 768),
            (DISPI_BANK, 0),
            (DISPI_VIRT_WIDTH, 1024),
            (DISPI_VIRT_HEIGHT, 4096),
            (DISPI_X_OFFSET, 0),
            (DISPI_Y_OFFSET, 0),
            (DISPI_ENABLE, 0x41),
        ] {
            write16(&mut c, reg, val);
        }
        let pitch = 4096u64;
        let addr = 3u64 << 20;
        write16(&mut c, DISPI_VIRT_WIDTH, (pitch / 4) as u16);
        write16(&mut c, DISPI_X_OFFSET, ((addr % pitch) / 4) as u16);
        write16(&mut c, DISPI_Y_OFFSET, (addr / pitch) as u16);
        let s = c.scanout().unwrap();
        assert_eq!(
            (s.width, s.height, s.stride, s.offset),
            (1024, 768, 4096, addr)
        );
        assert_eq!(s.format, PixelFormat::Xrgb8888);
        write16(&mut c, DISPI_ENABLE, 0);
        assert_eq!(c.scanout(), None);
    }

    #[test]
    fn scanout_outside_vram_is_not_shown() {
        let mut c = card();
        for (reg, val) in [
            (DISPI_BPP, 32),
            (DISPI_XRES, 1024),
            (DISPI_YRES, 768),
            (DISPI_Y_OFFSET, 0xffff),
            (DISPI_ENABLE, 1),
        ] {
            write16(&mut c, reg, val);
        }
        assert_eq!(c.scanout(), None);
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let mut c = card();
        let mut big = [0u8; 64];
        for off in [
            0,
            0x3ff,
            0x4ff,
            0x515,
            0x603,
            0xfff,
            0x1000,
            u64::MAX - 3,
            u64::MAX,
        ] {
            for len in [1, 2, 3, 4, 8, 64] {
                c.bar_read(MMIO_BAR, off, &mut big[..len]);
                c.bar_write(MMIO_BAR, off, &big[..len]);
                c.bar_read(5, off, &mut big[..len]);
                c.bar_write(7, off, &big[..len]);
            }
        }
        assert!(c.unimplemented_accesses() > 0);
    }

    #[test]
    fn reset_turns_the_display_off() {
        let mut c = card();
        write16(&mut c, DISPI_BPP, 32);
        write16(&mut c, DISPI_XRES, 640);
        write16(&mut c, DISPI_YRES, 480);
        write16(&mut c, DISPI_ENABLE, 0x41);
        assert!(c.scanout().is_some());
        c.reset();
        assert_eq!(c.scanout(), None);
    }
}
