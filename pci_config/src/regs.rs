//! Register offsets, bit definitions and capability IDs.
//!
//! Offsets of the type-0 header are absolute; offsets inside a capability
//! are relative to the capability's own offset.

/// Vendor ID (u16, read-only).
pub const VENDOR_ID: usize = 0x00;
/// Device ID (u16, read-only).
pub const DEVICE_ID: usize = 0x02;
/// Command register (u16); see [`command`].
pub const COMMAND: usize = 0x04;
/// Status register (u16); see [`status`].
pub const STATUS: usize = 0x06;
/// Revision ID (u8, read-only).
pub const REVISION_ID: usize = 0x08;
/// Programming interface, the low byte of the 24-bit class code; subclass
/// and base class follow at 0x0a and 0x0b.
pub const CLASS_PROG: usize = 0x09;
/// Cache line size (u8). PCIe ignores it but keeps it read-write for legacy
/// software, which writes it and may read it back.
pub const CACHE_LINE_SIZE: usize = 0x0c;
/// Latency timer (u8); hardwired to 0 on PCIe.
pub const LATENCY_TIMER: usize = 0x0d;
/// Header type (u8); 0 = type-0 endpoint header, single function.
pub const HEADER_TYPE: usize = 0x0e;
/// First of the six 32-bit base address registers.
pub const BAR0: usize = 0x10;
/// Number of base address registers in a type-0 header.
pub const NUM_BARS: usize = 6;
/// Subsystem vendor ID (u16, read-only).
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem ID (u16, read-only).
pub const SUBSYSTEM_ID: usize = 0x2e;
/// Expansion ROM base address (u32); this device has no ROM, so it reads 0.
pub const ROM_ADDRESS: usize = 0x30;
/// Offset of the first capability (u8), valid when `status::CAP_LIST` is set.
pub const CAPABILITY_LIST: usize = 0x34;
/// Interrupt line (u8): firmware/OS scratch storage, read-write.
pub const INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin (u8, read-only); 0 = no INTx.
pub const INTERRUPT_PIN: usize = 0x3d;

/// Size of the standard (non-extended) configuration space.
pub const STANDARD_SPACE_SIZE: usize = 0x100;
/// Where standard capabilities start: just past the type-0 header.
pub const CAPABILITY_START: usize = 0x40;

/// Power management capability ID.
pub const CAP_ID_PM: u8 = 0x01;
/// MSI capability ID.
pub const CAP_ID_MSI: u8 = 0x05;
/// PCI Express capability ID.
pub const CAP_ID_EXP: u8 = 0x10;

/// Offsets common to every standard capability.
pub const CAP_ID: usize = 0x00;
pub const CAP_NEXT: usize = 0x01;

/// Command register bits.
pub mod command {
    pub const IO: u16 = 1 << 0;
    pub const MEMORY: u16 = 1 << 1;
    pub const MASTER: u16 = 1 << 2;
    pub const PARITY: u16 = 1 << 6;
    pub const SERR: u16 = 1 << 8;
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// Every bit the guest may change; all others read as 0.
    pub const WRITABLE: u16 = IO | MEMORY | MASTER | PARITY | SERR | INTX_DISABLE;
}

/// Status register bits.
pub mod status {
    pub const CAP_LIST: u16 = 1 << 4;
    pub const MASTER_DATA_PARITY: u16 = 1 << 8;
    pub const SIG_TARGET_ABORT: u16 = 1 << 11;
    pub const REC_TARGET_ABORT: u16 = 1 << 12;
    pub const REC_MASTER_ABORT: u16 = 1 << 13;
    pub const SIG_SYSTEM_ERROR: u16 = 1 << 14;
    pub const DETECTED_PARITY: u16 = 1 << 15;
    /// Error bits: set by the device, cleared by software writing 1.
    pub const W1C: u16 = MASTER_DATA_PARITY
        | SIG_TARGET_ABORT
        | REC_TARGET_ABORT
        | REC_MASTER_ABORT
        | SIG_SYSTEM_ERROR
        | DETECTED_PARITY;
}

/// Low, read-only flag bits of a memory BAR.
pub mod bar {
    /// Bits 3:0 hold the flags; the address starts at bit 4.
    pub const FLAGS_MASK: u32 = 0xf;
    pub const TYPE_64: u32 = 0b10 << 1;
    pub const PREFETCHABLE: u32 = 1 << 3;
}

/// MSI capability (offsets relative to the capability).
pub mod msi {
    pub const CONTROL: usize = 0x02;
    pub const ADDRESS_LO: usize = 0x04;
    /// Upper address dword; only in the 64-bit layout.
    pub const ADDRESS_HI: usize = 0x08;
    pub const DATA_32: usize = 0x08;
    pub const DATA_64: usize = 0x0c;

    pub const CTRL_ENABLE: u16 = 1 << 0;
    /// Multiple Message Capable: log2 of vectors requested (read-only).
    pub const CTRL_MMC_SHIFT: u16 = 1;
    /// Multiple Message Enable: log2 of vectors granted (read-write).
    pub const CTRL_MME_SHIFT: u16 = 4;
    pub const CTRL_MME_MASK: u16 = 0b111 << CTRL_MME_SHIFT;
    pub const CTRL_ADDR64: u16 = 1 << 7;
    pub const CTRL_PER_VECTOR_MASK: u16 = 1 << 8;
}

/// Power management capability (offsets relative to the capability).
pub mod pm {
    /// Power Management Capabilities (u16, read-only).
    pub const PMC: usize = 0x02;
    /// Power Management Control/Status (u16).
    pub const PMCSR: usize = 0x04;
    pub const LEN: usize = 8;

    /// PMC: version 3 (PCI PM 1.2); no D1/D2, no PME.
    pub const PMC_VERSION_1_2: u16 = 3;
    pub const PMCSR_STATE_MASK: u16 = 0b11;
    pub const PMCSR_D0: u16 = 0;
    pub const PMCSR_D1: u16 = 1;
    pub const PMCSR_D2: u16 = 2;
    pub const PMCSR_D3HOT: u16 = 3;
    /// The device keeps its state across D3hot -> D0, so the OS need not
    /// reinitialise it (we have no internal reset to perform there).
    pub const PMCSR_NO_SOFT_RESET: u16 = 1 << 3;
}

/// PCI Express capability, version 2 (offsets relative to the capability).
pub mod exp {
    pub const FLAGS: usize = 0x02;
    pub const DEVCAP: usize = 0x04;
    pub const DEVCTL: usize = 0x08;
    pub const DEVSTA: usize = 0x0a;
    pub const LNKCAP: usize = 0x0c;
    pub const LNKCTL: usize = 0x10;
    pub const LNKSTA: usize = 0x12;
    pub const DEVCAP2: usize = 0x24;
    pub const DEVCTL2: usize = 0x28;
    pub const LNKCAP2: usize = 0x2c;
    pub const LNKCTL2: usize = 0x30;
    /// A version-2 capability always spans the slot/root registers too,
    /// even though an endpoint leaves them zero.
    pub const LEN: usize = 0x3c;

    /// Capability version 2, device/port type 0 (PCI Express endpoint).
    pub const FLAGS_V2_ENDPOINT: u16 = 0x0002;
    /// Role-based error reporting; mandatory since PCIe 1.1.
    pub const DEVCAP_RBER: u32 = 1 << 15;
    /// Error reporting enables, relaxed ordering, max payload, no snoop and
    /// max read request: the fields an OS actually programs on an endpoint.
    pub const DEVCTL_WRITABLE: u16 = 0x78ff;
    /// Spec defaults: relaxed ordering and no snoop enabled, 512-byte reads.
    pub const DEVCTL_DEFAULT: u16 = 0x2810;
    /// Correctable/non-fatal/fatal/unsupported-request detected.
    pub const DEVSTA_W1C: u16 = 0x000f;
    /// Link speed 2.5 GT/s (1) and width x1 (1 << 4); no ASPM.
    pub const LNK_X1_2_5GT: u16 = 0x0011;
    /// ASPM control, read completion boundary, common clock, extended synch.
    pub const LNKCTL_WRITABLE: u16 = 0x00cb;
    /// Completion timeout disable is supported (and writable in DEVCTL2).
    pub const DEVCAP2_CTO_DISABLE: u32 = 1 << 4;
    pub const DEVCTL2_WRITABLE: u16 = 1 << 4;
    /// Supported link speeds vector: 2.5 GT/s only.
    pub const LNKCAP2_SPEED_2_5GT: u32 = 1 << 1;
    /// Target link speed: 2.5 GT/s, the only speed we support.
    pub const LNKCTL2_TARGET_2_5GT: u16 = 0x0001;
}
