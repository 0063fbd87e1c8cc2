//! QEMU's bochs display (`hw/display/bochs-display.c`), as `bochs-drm` drives it.
//!
//! BAR0 is VRAM; BAR2 is 4 KiB of registers: the EDID blob, a VGA ioport window, the DISPI
//! (VBE) registers and QEMU's extension block. No interrupts: every bochs-drm version either
//! fakes vblank (6.1, 6.12) or runs a software vblank timer (7.x).
//!
//! The BAR is the table [`REGISTERS`], with the widths bochs-drm uses: `readb` for the EDID,
//! `readb`/`writeb` for the VGA window, `readw`/`writew` for DISPI and `readl`/`writel` for the
//! extension block. Other sizes and alignments are served by the shared adapter in
//! [`crate::regs`] (QEMU accepts 1..=4-byte DISPI accesses and only 4-byte qext ones).

use pci_config::{Capability, PciIdentity};
use vram_bar::{PixelFormat, Scanout};

use crate::regs::{self, Register, Registers, Written};
use crate::{
    CardCore, CardSpec, DataPath, Interrupts, ModelError, ModelInfo, ModelKind, RegisterCard,
};

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x1111;
pub const DEFAULT_VRAM_SIZE: u64 = 16 << 20;
/// bochs-drm 6.1/6.12 ignore a card with less.
pub const MIN_VRAM_SIZE: u64 = 4 << 20;

pub const VRAM_BAR: usize = 0;
pub const MMIO_BAR: usize = 2;
pub const MMIO_SIZE: u64 = 0x1000;

pub static INFO: ModelInfo = ModelInfo {
    kind: ModelKind::Bochs,
    name: "bochs",
    linux_driver: "bochs-drm",
    linux_module: "bochs",
    // Its probe ends by setting up the fbdev client (drm_fbdev_generic/ttm_setup, drm_client_setup).
    emulates_fbdev: true,
    identity: PciIdentity {
        vendor_id: VENDOR_ID,
        device_id: DEVICE_ID,
        // bochs-drm maps subsystem 1af4:1100 to "QEMU stdvga".
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
        // Display controller, "other" (as QEMU's bochs-display), so vgaarb never picks it as
        // boot VGA.
        class_code: 0x03_80_00,
        // Revision 2 makes bochs-drm use the QEMU extension registers at 0x600.
        revision: 2,
    },
    default_vram_size: DEFAULT_VRAM_SIZE,
    min_vram_size: MIN_VRAM_SIZE,
    vram_bar: VRAM_BAR,
    register_bar: MMIO_BAR,
    msi_vectors: 0,
};

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

/// Offset of DISPI register `index` in BAR2.
pub const fn dispi_offset(index: usize) -> u64 {
    DISPI_BASE + 2 * index as u64
}

/// BAR2, every register once; the gaps between the blocks are unimplemented, as in QEMU.
pub static REGISTERS: [Register<Bochs>; 15] = [
    // The blob given at construction; no write reaches it.
    Register::read_only("EDID", EDID_BASE, 1, 0)
        .array(EDID_SIZE as u32)
        .on_read(|card: &Bochs, i, _| u64::from(card.edid[i])),
    // Blanking writes (attribute controller 0x3c0, misc output 0x3c2): kept, no effect on the
    // scanout, as in QEMU's bochs-display which has no VGA core at all.
    Register::storage("VGA", VGA_BASE, 1).array(VGA_SIZE as u32),
    Register::read_only("DISPI_ID", dispi_offset(DISPI_ID), 2, DISPI_ID_VALUE as u64),
    Register::storage("DISPI_XRES", dispi_offset(DISPI_XRES), 2),
    Register::storage("DISPI_YRES", dispi_offset(DISPI_YRES), 2),
    Register::storage("DISPI_BPP", dispi_offset(DISPI_BPP), 2),
    Register::storage("DISPI_ENABLE", dispi_offset(DISPI_ENABLE), 2),
    Register::storage("DISPI_BANK", dispi_offset(DISPI_BANK), 2),
    Register::storage("DISPI_VIRT_WIDTH", dispi_offset(DISPI_VIRT_WIDTH), 2),
    Register::storage("DISPI_VIRT_HEIGHT", dispi_offset(DISPI_VIRT_HEIGHT), 2),
    Register::storage("DISPI_X_OFFSET", dispi_offset(DISPI_X_OFFSET), 2),
    Register::storage("DISPI_Y_OFFSET", dispi_offset(DISPI_Y_OFFSET), 2),
    // VRAM size in 64 KiB units, read-only.
    Register::read_only(
        "DISPI_VIDEO_MEMORY_64K",
        dispi_offset(DISPI_VIDEO_MEMORY_64K),
        2,
        0,
    )
    .on_read(|card: &Bochs, _, _| (card.core.vram.size() / 0x10000).min(u64::from(u16::MAX))),
    Register::read_only("QEXT_SIZE", QEXT_SIZE_REG, 4, QEXT_SIZE as u64),
    // Only the two byte-order values are taken, as QEMU's `bochs_display_qext_write` does; any
    // other value (including a half-written one from a narrow write) leaves it as it was.
    Register::storage("QEXT_BYTEORDER", QEXT_BYTEORDER_REG, 4)
        .reset(BYTEORDER_LE as u64)
        .on_write(Bochs::keep_known_byteorder),
];

/// The bochs display model.
///
/// Invariant: every register lives in `core.regs` (the EDID blob, which reset keeps, is `edid`).
pub struct Bochs {
    core: CardCore<Bochs>,
    edid: [u8; EDID_SIZE as usize],
}

impl Bochs {
    pub fn new(spec: &CardSpec) -> Result<Bochs, ModelError> {
        let (vram, mut config) = crate::display_card(&INFO, spec, MMIO_SIZE)?;
        config.add_capability(Capability::PciExpressEndpoint)?;
        config.add_capability(Capability::PowerManagement)?;

        let mut edid = [0u8; EDID_SIZE as usize];
        if let Some(blob) = spec.monitor().edid() {
            let len = blob.len().min(edid.len());
            edid[..len].copy_from_slice(&blob[..len]);
        }
        let mut card = Bochs {
            core: CardCore {
                config,
                vram,
                // Gaps are tallied per 16-bit register, the DISPI width.
                regs: Registers::new(&REGISTERS, INFO.register_bar, MMIO_SIZE, 2)?,
            },
            edid,
        };
        card.reset();
        Ok(card)
    }

    /// Current value of DISPI register `index` as the driver reads it.
    pub fn dispi(&self, index: usize) -> u16 {
        if index >= DISPI_COUNT {
            return 0;
        }
        regs::peek(self, dispi_offset(index)).map_or(0, |v| v as u16)
    }

    /// The stored value of DISPI register `index` (< DISPI_COUNT).
    fn dispi_reg(&self, index: usize) -> u16 {
        self.core.regs.get(dispi_offset(index)) as u16
    }

    fn keep_known_byteorder(&mut self, write: Written) {
        let known = [BYTEORDER_LE, BYTEORDER_BE].map(u64::from);
        if !known.contains(&write.new) {
            self.core.regs.set(write.offset, write.old);
        }
    }

    /// Accesses to offsets the model does not implement (reads return 0).
    pub fn unimplemented_accesses(&self) -> u64 {
        self.core.regs.unimplemented()
    }
}

impl RegisterCard for Bochs {
    fn core(&self) -> &CardCore<Bochs> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut CardCore<Bochs> {
        &mut self.core
    }

    fn current_scanout(&self) -> Option<Scanout> {
        let dispi = |index| self.dispi_reg(index);
        if dispi(DISPI_ENABLE) & ENABLE_ENABLED == 0 {
            return None;
        }
        let byteorder = self.core.regs.get(QEXT_BYTEORDER_REG) as u32;
        let format = match (dispi(DISPI_BPP), byteorder) {
            (32, BYTEORDER_BE) => PixelFormat::Bgrx8888,
            (32, _) => PixelFormat::Xrgb8888,
            (16, _) => PixelFormat::Rgb565,
            _ => return None,
        };
        let bytepp = u64::from(format.bytes_per_pixel());
        let width = u32::from(dispi(DISPI_XRES));
        let stride = u64::from(dispi(DISPI_VIRT_WIDTH).max(dispi(DISPI_XRES))) * bytepp;
        let offset =
            u64::from(dispi(DISPI_X_OFFSET)) * bytepp + u64::from(dispi(DISPI_Y_OFFSET)) * stride;
        let scanout = Scanout {
            offset,
            width,
            height: u32::from(dispi(DISPI_YRES)),
            stride: stride as u32,
            format,
        };
        let fits = scanout
            .byte_len()
            .is_some_and(|len| offset + len <= self.core.vram.size());
        fits.then_some(scanout)
    }
}

/// No interrupts: bochs-drm never asks for one.
impl Interrupts for Bochs {}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> Bochs {
        Bochs::new(&CardSpec::of(ModelKind::Bochs)).unwrap()
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
        let spec = CardSpec::new(ModelKind::Bochs, None, crate::Monitor::Absent).unwrap();
        let mut c = Bochs::new(&spec).unwrap();
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

    /// A 1 KiB EDID blob with no zero run, so EDID bytes are told apart from gaps.
    /// The default EDID with one CTA extension block (patterned bytes), checksums fixed.
    fn two_block_edid() -> Vec<u8> {
        let mut blob = crate::edid::default_edid()[..128].to_vec();
        blob[126] = 1;
        let mut ext: Vec<u8> = (0..128u32)
            .map(|i| (i as u8).wrapping_mul(7) ^ 0x99)
            .collect();
        ext[0] = 0x02;
        ext[1] = 0x03;
        ext[2] = 0x04;
        for block in [&mut blob, &mut ext] {
            block[127] = block[..127]
                .iter()
                .fold(0u8, |a, b| a.wrapping_add(*b))
                .wrapping_neg();
        }
        blob.extend_from_slice(&ext);
        blob
    }

    /// Every width at every alignment across each block's edges, against the BAR2 layout of
    /// QEMU's bochs-display and bochs-vbe.h.
    #[test]
    fn every_width_at_every_alignment_follows_the_register_map() {
        use crate::regs::conformance::{check, Byte};
        // A valid EDID with an extension block fills 256 bytes of the 1 KiB window; the rest
        // reads as zero.
        let edid = two_block_edid();
        let make = || -> Box<dyn crate::DeviceModel> {
            Box::new(
                Bochs::new(
                    &CardSpec::new(
                        ModelKind::Bochs,
                        None,
                        crate::Monitor::Edid(two_block_edid()),
                    )
                    .unwrap(),
                )
                .unwrap(),
            )
        };
        let dispi = DISPI_BASE..DISPI_BASE + 2 * DISPI_COUNT as u64;
        let memory_64k = (DEFAULT_VRAM_SIZE / 0x10000) as u16;
        let map = |o: u64| match o {
            o if o < EDID_BASE + EDID_SIZE => {
                Byte::Fixed(edid.get(o as usize).copied().unwrap_or(0))
            }
            o if (VGA_BASE..VGA_BASE + VGA_SIZE).contains(&o) => Byte::Storage,
            o if (DISPI_BASE..DISPI_BASE + 2).contains(&o) => {
                Byte::Fixed(DISPI_ID_VALUE.to_le_bytes()[(o & 1) as usize])
            }
            o if o >= dispi.end - 2 && o < dispi.end => {
                Byte::Fixed(memory_64k.to_le_bytes()[(o & 1) as usize])
            }
            o if dispi.contains(&o) => Byte::Storage,
            o if (QEXT_SIZE_REG..QEXT_SIZE_REG + 4).contains(&o) => {
                Byte::Fixed(QEXT_SIZE.to_le_bytes()[(o - QEXT_SIZE_REG) as usize])
            }
            // The checker's data never forms a valid byte order, so it stays little-endian
            // (the valid values are `byteorder_takes_only_the_two_known_values`).
            o if (QEXT_BYTEORDER_REG..QEXT_BYTEORDER_REG + 4).contains(&o) => Byte::Fixed(0x1e),
            _ => Byte::Gap,
        };
        for window in [
            0..0x10,
            EDID_SIZE - 12..VGA_BASE + 12,
            VGA_BASE + VGA_SIZE - 12..VGA_BASE + VGA_SIZE + 12,
            DISPI_BASE - 8..dispi.end + 10,
            QEXT_SIZE_REG - 8..QEXT_BYTEORDER_REG + 12,
            MMIO_SIZE - 12..MMIO_SIZE + 12,
        ] {
            check(&make, MMIO_BAR, window, &map);
        }
    }

    #[test]
    fn byteorder_takes_only_the_two_known_values() {
        let mut c = card();
        let byteorder = |c: &mut Bochs| {
            let mut v = [0; 4];
            c.bar_read(MMIO_BAR, QEXT_BYTEORDER_REG, &mut v);
            u32::from_le_bytes(v)
        };
        c.bar_write(MMIO_BAR, QEXT_BYTEORDER_REG, &0x1234_5678u32.to_le_bytes());
        assert_eq!(byteorder(&mut c), BYTEORDER_LE);
        // Half by half, each half-written value is refused.
        for half in [0, 2] {
            c.bar_write(MMIO_BAR, QEXT_BYTEORDER_REG + half, &[0xbe, 0xbe]);
        }
        assert_eq!(byteorder(&mut c), BYTEORDER_LE);
        c.bar_write(MMIO_BAR, QEXT_BYTEORDER_REG, &BYTEORDER_BE.to_le_bytes());
        assert_eq!(byteorder(&mut c), BYTEORDER_BE);
        // An 8-byte write over the extension block reaches the byte order too (QEXT_SIZE is
        // read-only).
        let both = u64::from(BYTEORDER_LE) << 32 | 0xffff_ffff;
        c.bar_write(MMIO_BAR, QEXT_SIZE_REG, &both.to_le_bytes());
        assert_eq!(byteorder(&mut c), BYTEORDER_LE);
        let mut size = [0; 4];
        c.bar_read(MMIO_BAR, QEXT_SIZE_REG, &mut size);
        assert_eq!(u32::from_le_bytes(size), QEXT_SIZE);
    }

    #[test]
    fn reset_restores_power_on_values_and_keeps_the_edid() {
        let mut c = card();
        let mut edid = [0; 8];
        c.bar_read(MMIO_BAR, EDID_BASE, &mut edid);
        for o in (0..MMIO_SIZE).step_by(4) {
            c.bar_write(MMIO_BAR, o, &u32::MAX.to_le_bytes());
        }
        c.bar_write(MMIO_BAR, QEXT_BYTEORDER_REG, &BYTEORDER_BE.to_le_bytes());
        c.reset();
        let mut after = [0; 8];
        c.bar_read(MMIO_BAR, EDID_BASE, &mut after);
        assert_eq!(after, edid);
        let mut vga = [0xaa; VGA_SIZE as usize];
        c.bar_read(MMIO_BAR, VGA_BASE, &mut vga);
        assert_eq!(vga, [0; VGA_SIZE as usize]);
        for index in 0..DISPI_COUNT {
            let want = match index {
                DISPI_ID => DISPI_ID_VALUE,
                DISPI_VIDEO_MEMORY_64K => 256,
                _ => 0,
            };
            assert_eq!(c.dispi(index), want, "DISPI {index:#x}");
            assert_eq!(read16(&mut c, dispi_offset(index)), want);
        }
        let mut qext = [0; 8];
        c.bar_read(MMIO_BAR, QEXT_SIZE_REG, &mut qext);
        assert_eq!(qext, [8, 0, 0, 0, 0x1e, 0x1e, 0x1e, 0x1e]);
    }

    #[test]
    fn register_counts_cover_bochs_too() {
        let mut c = card();
        let mut edid = [0; 128];
        for (i, b) in edid.iter_mut().enumerate() {
            let mut one = [0];
            c.bar_read(MMIO_BAR, i as u64, &mut one);
            *b = one[0];
        }
        write16(&mut c, DISPI_ENABLE, 0x41);
        read16(&mut c, DISPI_BASE);
        let s = c.register_stats();
        assert_eq!(
            s.counts(),
            [
                ("EDID", EDID_BASE, 128, 0),
                ("DISPI_ID", DISPI_BASE, 1, 0),
                ("DISPI_ENABLE", dispi_offset(DISPI_ENABLE), 0, 1)
            ]
        );
        assert_eq!(s.unimplemented, 0);
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
