//! Pure model of a PCI type-0 configuration space, with no I/O.
//!
//! Every byte of the standard space carries three things: its current value,
//! a write mask (bits an ordinary write may change) and a write-1-to-clear
//! mask. Writes go through those masks, so read-only fields, BAR size masks
//! and W1C status bits all fall out of one rule instead of per-register code.
//! A fourth array holds the power-on image that [`ConfigSpace::reset`]
//! restores; only construction (`new`, `set_bar`, `add_capability`) writes it.
//!
//! The 4 KiB PCIe extended space holds no capabilities here, so only the
//! first 256 bytes are stored: the rest reads as 0 (an extended capability
//! header of 0 ends the list) and ignores writes, exactly like bytes past
//! [`CONFIG_SPACE_SIZE`].
//!
//! Accesses come from the guest via the vfio-user client, so `read` and
//! `write` accept any offset and length and never panic.

pub mod regs;

use regs::{command, exp, msi, pm, status};

/// Size of a PCIe configuration space, extended space included.
pub const CONFIG_SPACE_SIZE: usize = 4096;

/// Bytes actually modelled; everything above is the (empty) extended space.
const STD: usize = regs::STANDARD_SPACE_SIZE;

/// Smallest memory BAR: bits 3:0 hold the flags, so bit 4 is the lowest
/// address bit a memory BAR can decode.
const MIN_BAR_SIZE: u64 = 16;

/// Read-only identification fields of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIdentity {
    pub vendor_id: u16,
    pub device_id: u16,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// 24-bit: base class << 16 | subclass << 8 | prog-if
    pub class_code: u32,
    pub revision: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarType {
    Memory32,
    Memory64,
}

impl BarType {
    /// BAR registers (dwords) the BAR occupies.
    fn slots(self) -> usize {
        match self {
            BarType::Memory32 => 1,
            BarType::Memory64 => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    pub size: u64,
    pub bar_type: BarType,
    pub prefetchable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// MSI with `vectors` (power of two, 1..=32) requestable vectors.
    Msi {
        vectors: u8,
        addr64: bool,
        per_vector_mask: bool,
    },
    /// PCI Express capability (version 2) of an endpoint (device/port type 0), with link cap/status reporting x1 2.5GT/s.
    PciExpressEndpoint,
    PowerManagement,
}

impl Capability {
    fn id(self) -> u8 {
        match self {
            Capability::Msi { .. } => regs::CAP_ID_MSI,
            Capability::PciExpressEndpoint => regs::CAP_ID_EXP,
            Capability::PowerManagement => regs::CAP_ID_PM,
        }
    }

    /// Bytes the capability occupies, header included.
    fn size(self) -> usize {
        match self {
            Capability::Msi {
                addr64,
                per_vector_mask,
                ..
            } => {
                let data = msi_data_offset(addr64);
                // Mask and pending dwords follow the data word's padding.
                if per_vector_mask {
                    data + 12
                } else {
                    data + 2
                }
            }
            Capability::PciExpressEndpoint => exp::LEN,
            Capability::PowerManagement => pm::LEN,
        }
    }
}

/// Message data sits after the address, which is one or two dwords.
fn msi_data_offset(addr64: bool) -> usize {
    if addr64 {
        msi::DATA_64
    } else {
        msi::DATA_32
    }
}

/// MSI state as programmed by the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiState {
    pub enabled: bool,
    /// log2 of vectors the OS enabled (Multiple Message Enable)
    pub multiple_message_enable: u8,
    pub address: u64,
    pub data: u16,
    pub mask_bits: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("BAR size is not a power of two")]
    BarSizeNotPowerOfTwo,
    #[error("BAR size is below the 16-byte minimum of a memory BAR")]
    BarSizeTooSmall,
    #[error("BAR size exceeds what the BAR's address width can decode")]
    BarSizeTooLarge,
    #[error("BAR index out of range (a 64-bit BAR also uses index + 1)")]
    BarIndexInvalid,
    #[error("BAR slot is the upper half of a 64-bit BAR")]
    BarOverlapsMemory64Upper,
    #[error("BAR slot is already configured")]
    BarInUse,
    #[error("MSI vector count must be a power of two in 1..=32")]
    InvalidMsiVectors,
    #[error("capability is already present")]
    DuplicateCapability,
    #[error("no room left in the standard configuration space for the capability")]
    NoRoomForCapability,
}

/// A type-0 configuration space. See the crate documentation for the model.
#[derive(Clone)]
pub struct ConfigSpace {
    regs: [u8; STD],
    power_on: [u8; STD],
    wmask: [u8; STD],
    w1cmask: [u8; STD],
    /// `Some` only at a BAR's first index; the upper slot of a 64-bit BAR
    /// stays `None` and is recognised through its lower neighbour.
    bars: [Option<BarSpec>; regs::NUM_BARS],
    /// (offset, capability) in list order.
    caps: Vec<(usize, Capability)>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("identity", &self.identity())
            .field("command", &self.command())
            .field("bars", &self.bars)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// Interrupt pin 0 (no INTx: under TCG QEMU's vfio-user client turns BAR mmaps off for good on the first INTx), header type 0, status bit CAP_LIST set once a capability exists.
    pub fn new(identity: PciIdentity) -> Self {
        let mut cs = Self {
            regs: [0; STD],
            power_on: [0; STD],
            wmask: [0; STD],
            w1cmask: [0; STD],
            bars: [None; regs::NUM_BARS],
            caps: Vec::new(),
        };
        cs.init(regs::VENDOR_ID, 2, identity.vendor_id.into(), 0, 0);
        cs.init(regs::DEVICE_ID, 2, identity.device_id.into(), 0, 0);
        cs.init(regs::COMMAND, 2, 0, command::WRITABLE.into(), 0);
        cs.init(regs::STATUS, 2, 0, 0, status::W1C.into());
        cs.init(regs::REVISION_ID, 1, identity.revision.into(), 0, 0);
        cs.init(regs::CLASS_PROG, 3, identity.class_code, 0, 0);
        cs.init(regs::CACHE_LINE_SIZE, 1, 0, 0xff, 0);
        cs.init(
            regs::SUBSYSTEM_VENDOR_ID,
            2,
            identity.subsystem_vendor_id.into(),
            0,
            0,
        );
        cs.init(regs::SUBSYSTEM_ID, 2, identity.subsystem_id.into(), 0, 0);
        cs.init(regs::INTERRUPT_LINE, 1, 0, 0xff, 0);
        // Header type, latency timer, ROM BAR, capability pointer and
        // interrupt pin stay read-only zero until something sets them.
        cs
    }

    /// The identity as stored in the header (class code truncated to 24 bits).
    pub fn identity(&self) -> PciIdentity {
        PciIdentity {
            vendor_id: self.read_u16(regs::VENDOR_ID),
            device_id: self.read_u16(regs::DEVICE_ID),
            subsystem_vendor_id: self.read_u16(regs::SUBSYSTEM_VENDOR_ID),
            subsystem_id: self.read_u16(regs::SUBSYSTEM_ID),
            class_code: self.read_u32(regs::REVISION_ID) >> 8,
            revision: self.read_u8(regs::REVISION_ID),
        }
    }

    /// BAR index 0..=5; a 64-bit BAR uses index and index+1. Size must be a power of two and >= 16 bytes (memory BARs).
    ///
    /// A 32-bit BAR can be at most 2 GiB. A slot can be configured once.
    pub fn set_bar(&mut self, index: usize, spec: BarSpec) -> Result<(), Error> {
        let slots = spec.bar_type.slots();
        if index
            .checked_add(slots)
            .is_none_or(|end| end > regs::NUM_BARS)
        {
            return Err(Error::BarIndexInvalid);
        }
        if !spec.size.is_power_of_two() {
            return Err(Error::BarSizeNotPowerOfTwo);
        }
        if spec.size < MIN_BAR_SIZE {
            return Err(Error::BarSizeTooSmall);
        }
        if spec.bar_type == BarType::Memory32 && spec.size > 1 << 31 {
            return Err(Error::BarSizeTooLarge);
        }
        for slot in index..index + slots {
            if self.is_memory64_upper(slot) {
                return Err(Error::BarOverlapsMemory64Upper);
            }
            if self.bars[slot].is_some() {
                return Err(Error::BarInUse);
            }
        }

        // Address bits below the size are hardwired to 0; that is what makes
        // the all-ones sizing probe read back the size. Since size >= 16 the
        // mask also leaves the flag bits read-only.
        let size_mask = !(spec.size - 1);
        let mut flags = 0;
        if spec.bar_type == BarType::Memory64 {
            flags |= regs::bar::TYPE_64;
        }
        if spec.prefetchable {
            flags |= regs::bar::PREFETCHABLE;
        }
        let off = regs::BAR0 + 4 * index;
        self.init(off, 4, flags, size_mask as u32, 0);
        if spec.bar_type == BarType::Memory64 {
            self.init(off + 4, 4, 0, (size_mask >> 32) as u32, 0);
        }
        self.bars[index] = Some(spec);
        Ok(())
    }

    /// The BAR configured at `index`; `None` for unused slots, the upper
    /// half of a 64-bit BAR and out-of-range indices.
    pub fn bar(&self, index: usize) -> Option<BarSpec> {
        self.bars.get(index).copied().flatten()
    }

    /// The address currently programmed into a BAR (both halves for 64-bit), with flag bits masked.
    ///
    /// 0 for indices where [`bar`](Self::bar) returns `None`.
    pub fn bar_address(&self, index: usize) -> u64 {
        let Some(spec) = self.bar(index) else {
            return 0;
        };
        let off = regs::BAR0 + 4 * index;
        let lo = u64::from(self.read_u32(off) & !regs::bar::FLAGS_MASK);
        let hi = match spec.bar_type {
            BarType::Memory32 => 0,
            BarType::Memory64 => u64::from(self.read_u32(off + 4)),
        };
        hi << 32 | lo
    }

    fn is_memory64_upper(&self, index: usize) -> bool {
        index
            .checked_sub(1)
            .and_then(|lower| self.bar(lower))
            .is_some_and(|b| b.bar_type == BarType::Memory64)
    }

    /// Appends to the capability list (standard caps at 0x40.., each 4-byte aligned, linked via next pointers); returns the capability's offset.
    ///
    /// Each capability type may appear once.
    pub fn add_capability(&mut self, cap: Capability) -> Result<u8, Error> {
        if self.caps.iter().any(|&(_, c)| c.id() == cap.id()) {
            return Err(Error::DuplicateCapability);
        }
        if let Capability::Msi { vectors, .. } = cap {
            if !vectors.is_power_of_two() || vectors > 32 {
                return Err(Error::InvalidMsiVectors);
            }
        }
        let off = self.caps.last().map_or(regs::CAPABILITY_START, |&(o, c)| {
            (o + c.size()).next_multiple_of(4)
        });
        if off + cap.size() > STD {
            return Err(Error::NoRoomForCapability);
        }
        let off_u8 = u8::try_from(off).map_err(|_| Error::NoRoomForCapability)?;

        self.init(off + regs::CAP_ID, 1, cap.id().into(), 0, 0);
        match cap {
            Capability::Msi {
                vectors,
                addr64,
                per_vector_mask,
            } => self.init_msi(off, vectors, addr64, per_vector_mask),
            Capability::PciExpressEndpoint => self.init_exp(off),
            Capability::PowerManagement => self.init_pm(off),
        }

        match self.caps.last() {
            Some(&(prev, _)) => self.init(prev + regs::CAP_NEXT, 1, off_u8.into(), 0, 0),
            None => {
                self.init(regs::CAPABILITY_LIST, 1, off_u8.into(), 0, 0);
                let w1c = status::W1C.into();
                self.init(regs::STATUS, 2, status::CAP_LIST.into(), 0, w1c);
            }
        }
        self.caps.push((off, cap));
        Ok(off_u8)
    }

    fn init_msi(&mut self, off: usize, vectors: u8, addr64: bool, per_vector_mask: bool) {
        let mut control = (vectors.trailing_zeros() as u16) << msi::CTRL_MMC_SHIFT;
        if addr64 {
            control |= msi::CTRL_ADDR64;
        }
        if per_vector_mask {
            control |= msi::CTRL_PER_VECTOR_MASK;
        }
        let control_wmask = msi::CTRL_ENABLE | msi::CTRL_MME_MASK;
        self.init(
            off + msi::CONTROL,
            2,
            control.into(),
            control_wmask.into(),
            0,
        );
        // Messages are dword writes, so address bits 1:0 are reserved.
        self.init(off + msi::ADDRESS_LO, 4, 0, !0b11, 0);
        if addr64 {
            self.init(off + msi::ADDRESS_HI, 4, 0, u32::MAX, 0);
        }
        let data = off + msi_data_offset(addr64);
        self.init(data, 2, 0, 0xffff, 0);
        if per_vector_mask {
            // Only the mask bits of implemented vectors exist; the pending
            // dword after them is read-only and we never set it.
            let implemented = u32::MAX >> (32 - u32::from(vectors));
            self.init(data + 4, 4, 0, implemented, 0);
        }
    }

    fn init_exp(&mut self, off: usize) {
        self.init(off + exp::FLAGS, 2, exp::FLAGS_V2_ENDPOINT.into(), 0, 0);
        self.init(off + exp::DEVCAP, 4, exp::DEVCAP_RBER, 0, 0);
        let devctl = exp::DEVCTL_DEFAULT.into();
        self.init(off + exp::DEVCTL, 2, devctl, exp::DEVCTL_WRITABLE.into(), 0);
        self.init(off + exp::DEVSTA, 2, 0, 0, exp::DEVSTA_W1C.into());
        self.init(off + exp::LNKCAP, 4, exp::LNK_X1_2_5GT.into(), 0, 0);
        self.init(off + exp::LNKCTL, 2, 0, exp::LNKCTL_WRITABLE.into(), 0);
        self.init(off + exp::LNKSTA, 2, exp::LNK_X1_2_5GT.into(), 0, 0);
        self.init(off + exp::DEVCAP2, 4, exp::DEVCAP2_CTO_DISABLE, 0, 0);
        self.init(off + exp::DEVCTL2, 2, 0, exp::DEVCTL2_WRITABLE.into(), 0);
        self.init(off + exp::LNKCAP2, 4, exp::LNKCAP2_SPEED_2_5GT, 0, 0);
        // With a single supported speed there is nothing to retarget.
        self.init(
            off + exp::LNKCTL2,
            2,
            exp::LNKCTL2_TARGET_2_5GT.into(),
            0,
            0,
        );
    }

    fn init_pm(&mut self, off: usize) {
        self.init(off + pm::PMC, 2, pm::PMC_VERSION_1_2.into(), 0, 0);
        let pmcsr = pm::PMCSR_D0 | pm::PMCSR_NO_SOFT_RESET;
        self.init(
            off + pm::PMCSR,
            2,
            pmcsr.into(),
            pm::PMCSR_STATE_MASK.into(),
            0,
        );
    }

    /// Defines the `width` bytes at `off` (little endian): power-on value,
    /// plainly writable bits and write-1-to-clear bits. Offsets come from
    /// this crate, never from the guest.
    fn init(&mut self, off: usize, width: usize, value: u32, wmask: u32, w1c: u32) {
        for i in 0..width {
            let byte = |v: u32| (v >> (8 * i)) as u8;
            self.regs[off + i] = byte(value);
            self.power_on[off + i] = byte(value);
            self.wmask[off + i] = byte(wmask);
            self.w1cmask[off + i] = byte(w1c);
        }
    }

    /// The modelled bytes `[start, start + n)` that overlap an access of
    /// `len` bytes at `offset`, or `None` if it misses them entirely.
    fn overlap(offset: u64, len: usize) -> Option<(usize, usize)> {
        let start = usize::try_from(offset).ok().filter(|&s| s < STD)?;
        Some((start, len.min(STD - start)))
    }

    /// Offsets and lengths are guest/client controlled: any offset/len is accepted; bytes beyond 4096 read as 0 (never panic).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some((start, n)) = Self::overlap(offset, data.len()) {
            data[..n].copy_from_slice(&self.regs[start..start + n]);
        }
    }

    /// Per-byte write masks: read-only fields ignore writes; BAR writes honour size masks (so writing all-ones then reading returns the size mask with the flag bits — standard BAR sizing); status register error bits are write-1-to-clear; out-of-range bytes are ignored (never panic).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Some((start, n)) = Self::overlap(offset, data.len()) else {
            return;
        };
        let pmcsr = self.cap_offset(regs::CAP_ID_PM).map(|o| o + pm::PMCSR);
        let old_pmcsr = pmcsr.map(|o| self.regs[o]);

        for (i, &v) in data[..n].iter().enumerate() {
            let o = start + i;
            let (w, c) = (self.wmask[o], self.w1cmask[o]);
            self.regs[o] = ((self.regs[o] & !w) | (v & w)) & !(v & c);
        }

        // D1/D2 are unsupported: the PM spec has such a write complete but
        // leave the power state unchanged, which a mask cannot express.
        if let (Some(o), Some(old)) = (pmcsr, old_pmcsr) {
            let state_mask = pm::PMCSR_STATE_MASK as u8;
            let state = u16::from(self.regs[o] & state_mask);
            if state == pm::PMCSR_D1 || state == pm::PMCSR_D2 {
                self.regs[o] = (self.regs[o] & !state_mask) | (old & state_mask);
            }
        }
    }

    fn read_le<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut buf = [0; N];
        // usize -> u64 is lossless on every supported target; saturate anyway.
        self.read(u64::try_from(off).unwrap_or(u64::MAX), &mut buf);
        buf
    }

    pub fn read_u8(&self, off: usize) -> u8 {
        self.read_le::<1>(off)[0]
    }

    pub fn read_u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.read_le(off))
    }

    pub fn read_u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.read_le(off))
    }

    pub fn command(&self) -> u16 {
        self.read_u16(regs::COMMAND)
    }

    /// Whether the guest lets the device decode its memory BARs.
    pub fn memory_space_enabled(&self) -> bool {
        self.command() & command::MEMORY != 0
    }

    /// Whether the device may initiate DMA (and MSI writes).
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & command::MASTER != 0
    }

    fn cap_offset(&self, id: u8) -> Option<usize> {
        self.caps
            .iter()
            .find_map(|&(off, cap)| (cap.id() == id).then_some(off))
    }

    /// None when the device has no MSI capability.
    ///
    /// `multiple_message_enable` is capped at the capability's MMC: a larger
    /// value is a guest bug (undefined per spec) and must not grant vectors
    /// the device never asked for.
    pub fn msi(&self) -> Option<MsiState> {
        let (off, vectors, addr64, per_vector_mask) =
            self.caps.iter().find_map(|&(off, cap)| match cap {
                Capability::Msi {
                    vectors,
                    addr64,
                    per_vector_mask,
                } => Some((off, vectors, addr64, per_vector_mask)),
                _ => None,
            })?;
        let control = self.read_u16(off + msi::CONTROL);
        let mmc = vectors.trailing_zeros() as u8;
        let mme = ((control & msi::CTRL_MME_MASK) >> msi::CTRL_MME_SHIFT) as u8;
        let lo = u64::from(self.read_u32(off + msi::ADDRESS_LO));
        let hi = if addr64 {
            u64::from(self.read_u32(off + msi::ADDRESS_HI))
        } else {
            0
        };
        let data = off + msi_data_offset(addr64);
        Some(MsiState {
            enabled: control & msi::CTRL_ENABLE != 0,
            multiple_message_enable: mme.min(mmc),
            address: hi << 32 | lo,
            data: self.read_u16(data),
            mask_bits: if per_vector_mask {
                self.read_u32(data + 4)
            } else {
                0
            },
        })
    }

    /// Back to power-on state (command 0, BAR addresses 0, MSI disabled, PM D0), identity/caps kept.
    pub fn reset(&mut self) {
        self.regs = self.power_on;
    }
}

#[cfg(test)]
mod tests;
