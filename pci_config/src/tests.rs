use super::*;
use regs::*;

const ID: PciIdentity = PciIdentity {
    vendor_id: 0x1234,
    device_id: 0x5678,
    subsystem_vendor_id: 0x9abc,
    subsystem_id: 0xdef0,
    class_code: 0x03_00_01,
    revision: 0x42,
};

const MIB: u64 = 1 << 20;

fn bar(size: u64, bar_type: BarType, prefetchable: bool) -> BarSpec {
    BarSpec {
        size,
        bar_type,
        prefetchable,
    }
}

fn w16(cs: &mut ConfigSpace, off: usize, v: u16) {
    cs.write(off as u64, &v.to_le_bytes());
}

fn w32(cs: &mut ConfigSpace, off: usize, v: u32) {
    cs.write(off as u64, &v.to_le_bytes());
}

/// Sizing probe as an OS does it: all-ones, read back, restore.
fn probe_bar(cs: &mut ConfigSpace, index: usize) -> u32 {
    let off = BAR0 + 4 * index;
    let old = cs.read_u32(off);
    w32(cs, off, u32::MAX);
    let probed = cs.read_u32(off);
    w32(cs, off, old);
    probed
}

/// Sets a status register bit the way the device (not the guest) would.
fn raise(cs: &mut ConfigSpace, off: usize, bits: u16) {
    let v = cs.read_u16(off) | bits;
    cs.regs[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// MSI (64-bit, masked, 4 vectors) -> PCIe -> PM, as the display card uses.
fn full_device() -> ConfigSpace {
    let mut cs = ConfigSpace::new(ID);
    cs.set_bar(0, bar(32 * MIB, BarType::Memory32, true))
        .unwrap();
    cs.set_bar(2, bar(8 << 30, BarType::Memory64, true))
        .unwrap();
    let msi = Capability::Msi {
        vectors: 4,
        addr64: true,
        per_vector_mask: true,
    };
    assert_eq!(cs.add_capability(msi), Ok(0x40));
    assert_eq!(cs.add_capability(Capability::PciExpressEndpoint), Ok(0x58));
    assert_eq!(cs.add_capability(Capability::PowerManagement), Ok(0x94));
    cs
}

#[test]
fn identity_bytes_at_offsets() {
    let cs = ConfigSpace::new(ID);
    let mut hdr = [0u8; 0x40];
    cs.read(0, &mut hdr);
    assert_eq!(hdr[VENDOR_ID..VENDOR_ID + 2], [0x34, 0x12]);
    assert_eq!(hdr[DEVICE_ID..DEVICE_ID + 2], [0x78, 0x56]);
    assert_eq!(hdr[REVISION_ID], 0x42);
    assert_eq!(hdr[CLASS_PROG..CLASS_PROG + 3], [0x01, 0x00, 0x03]);
    assert_eq!(hdr[HEADER_TYPE], 0);
    assert_eq!(
        hdr[SUBSYSTEM_VENDOR_ID..SUBSYSTEM_VENDOR_ID + 2],
        [0xbc, 0x9a]
    );
    assert_eq!(hdr[SUBSYSTEM_ID..SUBSYSTEM_ID + 2], [0xf0, 0xde]);
    assert_eq!(hdr[INTERRUPT_PIN], 0);
    assert_eq!(cs.read_u16(STATUS) & status::CAP_LIST, 0);
    assert_eq!(cs.identity(), ID);
}

#[test]
fn class_code_is_truncated_to_24_bits() {
    let cs = ConfigSpace::new(PciIdentity {
        class_code: 0xff03_0000,
        ..ID
    });
    assert_eq!(cs.identity().class_code, 0x03_0000);
    assert_eq!(cs.read_u8(HEADER_TYPE), 0);
}

#[test]
fn read_only_header_ignores_writes() {
    let mut cs = ConfigSpace::new(ID);
    let before = cs.read_u32(0x3c) & 0xffff_ff00;
    for off in [
        VENDOR_ID,
        REVISION_ID,
        0x0c,
        SUBSYSTEM_VENDOR_ID,
        CAPABILITY_LIST,
    ] {
        w32(&mut cs, off, u32::MAX);
    }
    w32(&mut cs, ROM_ADDRESS, u32::MAX);
    cs.write(INTERRUPT_PIN as u64, &[0x01]);
    assert_eq!(cs.identity(), ID);
    assert_eq!(cs.read_u8(HEADER_TYPE), 0);
    assert_eq!(cs.read_u8(LATENCY_TIMER), 0);
    assert_eq!(
        cs.read_u8(CACHE_LINE_SIZE),
        0xff,
        "cache line size is storage"
    );
    assert_eq!(cs.read_u32(ROM_ADDRESS), 0);
    assert_eq!(cs.read_u8(CAPABILITY_LIST), 0);
    assert_eq!(cs.read_u32(0x3c) & 0xffff_ff00, before);
}

#[test]
fn interrupt_line_is_storage() {
    let mut cs = ConfigSpace::new(ID);
    cs.write(INTERRUPT_LINE as u64, &[0x0b]);
    assert_eq!(cs.read_u8(INTERRUPT_LINE), 0x0b);
    assert_eq!(cs.read_u8(INTERRUPT_PIN), 0);
}

#[test]
fn bar_sizing_32bit() {
    let mut cs = ConfigSpace::new(ID);
    cs.set_bar(0, bar(32 * MIB, BarType::Memory32, true))
        .unwrap();
    cs.set_bar(1, bar(2 * MIB, BarType::Memory32, false))
        .unwrap();
    cs.set_bar(4, bar(4096, BarType::Memory32, false)).unwrap();
    assert_eq!(probe_bar(&mut cs, 0), 0xfe00_0008);
    assert_eq!(probe_bar(&mut cs, 1), 0xffe0_0000);
    assert_eq!(probe_bar(&mut cs, 4), 0xffff_f000);
    // Unimplemented BARs read 0 even after the probe.
    assert_eq!(probe_bar(&mut cs, 3), 0);
    assert_eq!(cs.bar(0), Some(bar(32 * MIB, BarType::Memory32, true)));
    assert_eq!(cs.bar(3), None);
    assert_eq!(cs.bar(17), None);
}

#[test]
fn bar_sizing_64bit() {
    let mut cs = ConfigSpace::new(ID);
    cs.set_bar(0, bar(16 * MIB, BarType::Memory64, false))
        .unwrap();
    cs.set_bar(2, bar(8 << 30, BarType::Memory64, true))
        .unwrap();
    assert_eq!(probe_bar(&mut cs, 0), 0xff00_0004);
    assert_eq!(probe_bar(&mut cs, 1), 0xffff_ffff);
    assert_eq!(probe_bar(&mut cs, 2), 0x0000_000c);
    assert_eq!(probe_bar(&mut cs, 3), 0xffff_fffe);
    // The upper slot is not a BAR of its own.
    assert_eq!(cs.bar(1), None);
    assert_eq!(cs.bar_address(1), 0);
}

#[test]
fn bar_validation() {
    let mut cs = ConfigSpace::new(ID);
    let m32 = |size| bar(size, BarType::Memory32, false);
    let m64 = |size| bar(size, BarType::Memory64, false);
    assert_eq!(
        cs.set_bar(0, m32(3 * MIB)),
        Err(Error::BarSizeNotPowerOfTwo)
    );
    assert_eq!(cs.set_bar(0, m32(0)), Err(Error::BarSizeNotPowerOfTwo));
    assert_eq!(cs.set_bar(0, m32(8)), Err(Error::BarSizeTooSmall));
    assert_eq!(cs.set_bar(0, m32(4 << 30)), Err(Error::BarSizeTooLarge));
    assert_eq!(cs.set_bar(6, m32(4096)), Err(Error::BarIndexInvalid));
    assert_eq!(
        cs.set_bar(usize::MAX, m64(4096)),
        Err(Error::BarIndexInvalid)
    );
    assert_eq!(cs.set_bar(5, m64(4096)), Err(Error::BarIndexInvalid));

    cs.set_bar(0, m64(4 << 30)).unwrap();
    assert_eq!(
        cs.set_bar(1, m32(4096)),
        Err(Error::BarOverlapsMemory64Upper)
    );
    assert_eq!(
        cs.set_bar(1, m64(4096)),
        Err(Error::BarOverlapsMemory64Upper)
    );
    assert_eq!(cs.set_bar(0, m32(4096)), Err(Error::BarInUse));
    cs.set_bar(3, m32(4096)).unwrap();
    assert_eq!(cs.set_bar(2, m64(4096)), Err(Error::BarInUse));
    // Failed calls left nothing behind.
    assert_eq!(cs.bar(2), None);
    assert_eq!(cs.read_u32(BAR0 + 8), 0);
}

#[test]
fn bar_address_round_trip() {
    let mut cs = full_device();
    w32(&mut cs, BAR0, 0xc000_0000);
    assert_eq!(cs.bar_address(0), 0xc000_0000);
    assert_eq!(cs.read_u32(BAR0), 0xc000_0008, "flags survive");
    // Low bits below the size are dropped, as hardware would.
    w32(&mut cs, BAR0, 0xc123_4567);
    assert_eq!(cs.bar_address(0), 0xc000_0000);

    // One 8-byte write programs both halves of a 64-bit BAR.
    cs.write((BAR0 + 8) as u64, &0x0000_0080_0000_0000u64.to_le_bytes());
    assert_eq!(cs.bar_address(2), 0x80_0000_0000);
    // And so do two dword writes, with sub-size bits dropped.
    w32(&mut cs, BAR0 + 8, 0xffff_fff0);
    w32(&mut cs, BAR0 + 12, 0x0000_0041);
    assert_eq!(cs.bar_address(2), 0x40_0000_0000);
    assert_eq!(cs.bar_address(5), 0);
}

#[test]
fn command_mask() {
    let mut cs = ConfigSpace::new(ID);
    assert!(!cs.memory_space_enabled() && !cs.bus_master_enabled());
    w16(&mut cs, COMMAND, 0xffff);
    assert_eq!(cs.command(), 0x0547);
    assert_eq!(cs.command(), command::WRITABLE);
    assert!(cs.memory_space_enabled() && cs.bus_master_enabled());
    w16(&mut cs, COMMAND, command::MEMORY);
    assert!(cs.memory_space_enabled() && !cs.bus_master_enabled());
    // A byte write reaches only its own byte.
    cs.write((COMMAND + 1) as u64, &[0x04]);
    assert_eq!(cs.command(), command::MEMORY | command::INTX_DISABLE);
}

#[test]
fn status_error_bits_are_w1c() {
    let mut cs = full_device();
    raise(&mut cs, STATUS, status::W1C);
    let all = status::W1C | status::CAP_LIST;
    assert_eq!(cs.read_u16(STATUS), all);
    // Writing zeros (e.g. a dword write to COMMAND) must not clear anything.
    w32(&mut cs, COMMAND, u32::from(command::MEMORY));
    assert_eq!(cs.read_u16(STATUS), all);
    w16(&mut cs, STATUS, status::REC_MASTER_ABORT | status::CAP_LIST);
    assert_eq!(cs.read_u16(STATUS), all & !status::REC_MASTER_ABORT);
    w16(&mut cs, STATUS, 0xffff);
    assert_eq!(cs.read_u16(STATUS), status::CAP_LIST);
}

#[test]
fn capability_chain() {
    let cs = full_device();
    assert_ne!(cs.read_u16(STATUS) & status::CAP_LIST, 0);
    let mut chain = Vec::new();
    let mut ptr = usize::from(cs.read_u8(CAPABILITY_LIST));
    while ptr != 0 {
        assert_eq!(ptr % 4, 0);
        assert!(ptr >= CAPABILITY_START);
        chain.push((ptr, cs.read_u8(ptr + CAP_ID)));
        ptr = usize::from(cs.read_u8(ptr + CAP_NEXT));
    }
    let expected = [(0x40, CAP_ID_MSI), (0x58, CAP_ID_EXP), (0x94, CAP_ID_PM)];
    assert_eq!(chain, expected);
    // No extended capabilities: the header at 0x100 is 0.
    assert_eq!(cs.read_u32(STANDARD_SPACE_SIZE), 0);
}

#[test]
fn capability_validation() {
    let mut cs = full_device();
    assert_eq!(
        cs.add_capability(Capability::PowerManagement),
        Err(Error::DuplicateCapability)
    );
    let mut cs = ConfigSpace::new(ID);
    for vectors in [0, 3, 64] {
        let msi = Capability::Msi {
            vectors,
            addr64: false,
            per_vector_mask: false,
        };
        assert_eq!(cs.add_capability(msi), Err(Error::InvalidMsiVectors));
    }
    // The current capability set always fits; fake a crowded list.
    cs.caps.push((0xe0, Capability::PowerManagement));
    assert_eq!(
        cs.add_capability(Capability::PciExpressEndpoint),
        Err(Error::NoRoomForCapability)
    );
}

#[test]
fn msi_64bit_masked_via_config_writes() {
    let mut cs = full_device();
    let off = 0x40;
    assert_eq!(cs.msi(), Some(MsiState::default()));
    let control = cs.read_u16(off + msi::CONTROL);
    assert_eq!(
        control,
        2 << 1 | msi::CTRL_ADDR64 | msi::CTRL_PER_VECTOR_MASK
    );

    w32(&mut cs, off + msi::ADDRESS_LO, 0xfee0_1003);
    w32(&mut cs, off + msi::ADDRESS_HI, 0x1);
    w16(&mut cs, off + msi::DATA_64, 0x4041);
    w32(&mut cs, off + msi::DATA_64 + 4, u32::MAX);
    w16(
        &mut cs,
        off + msi::CONTROL,
        msi::CTRL_ENABLE | 2 << msi::CTRL_MME_SHIFT,
    );
    assert_eq!(
        cs.msi(),
        Some(MsiState {
            enabled: true,
            multiple_message_enable: 2,
            address: 0x1_fee0_1000,
            data: 0x4041,
            mask_bits: 0xf,
        })
    );
    // Capability bits in the control word are read-only.
    w16(&mut cs, off + msi::CONTROL, 0xffff);
    assert_eq!(cs.read_u16(off + msi::CONTROL), control | 0x0071);
    // Pending bits are read-only.
    w32(&mut cs, off + msi::DATA_64 + 8, u32::MAX);
    assert_eq!(cs.read_u32(off + msi::DATA_64 + 8), 0);

    // MME beyond MMC (7 > 2 here) is clamped.
    assert_eq!(cs.msi().unwrap().multiple_message_enable, 2);
    w16(&mut cs, off + msi::CONTROL, 0);
    assert!(!cs.msi().unwrap().enabled);
}

#[test]
fn msi_32bit_layout() {
    let mut cs = ConfigSpace::new(ID);
    let msi = Capability::Msi {
        vectors: 1,
        addr64: false,
        per_vector_mask: false,
    };
    assert_eq!(cs.msi(), None);
    let off = usize::from(cs.add_capability(msi).unwrap());
    assert_eq!(cs.add_capability(Capability::PowerManagement), Ok(0x4c));
    w32(&mut cs, off + msi::ADDRESS_LO, 0xfee0_0000);
    w16(&mut cs, off + msi::DATA_32, 0x0031);
    cs.write((off + msi::CONTROL) as u64, &[0x01]);
    let state = cs.msi().unwrap();
    assert_eq!(
        (state.address, state.data, state.enabled),
        (0xfee0_0000, 0x31, true)
    );
    assert_eq!((state.multiple_message_enable, state.mask_bits), (0, 0));
    // The 2 bytes after the data word are padding, not storage.
    w16(&mut cs, off + msi::DATA_32 + 2, 0xffff);
    assert_eq!(cs.read_u16(off + msi::DATA_32 + 2), 0);
}

#[test]
fn power_management() {
    let mut cs = full_device();
    let off = 0x94;
    let pmcsr = off + pm::PMCSR;
    assert_eq!(cs.read_u16(off + pm::PMC), pm::PMC_VERSION_1_2);
    assert_eq!(cs.read_u16(pmcsr), pm::PMCSR_NO_SOFT_RESET);
    w16(&mut cs, off + pm::PMC, 0xffff);
    assert_eq!(cs.read_u16(off + pm::PMC), pm::PMC_VERSION_1_2);

    w16(&mut cs, pmcsr, pm::PMCSR_D3HOT);
    assert_eq!(cs.read_u16(pmcsr) & 3, pm::PMCSR_D3HOT);
    assert_ne!(cs.read_u16(pmcsr) & pm::PMCSR_NO_SOFT_RESET, 0);
    // Unsupported D1/D2: the write completes, the state does not change.
    for state in [pm::PMCSR_D1, pm::PMCSR_D2] {
        w16(&mut cs, pmcsr, state);
        assert_eq!(cs.read_u16(pmcsr) & 3, pm::PMCSR_D3HOT);
    }
    w16(&mut cs, pmcsr, 0xfffc);
    assert_eq!(cs.read_u16(pmcsr), pm::PMCSR_NO_SOFT_RESET);
}

#[test]
fn pci_express_endpoint() {
    let mut cs = full_device();
    let off = 0x58;
    let ro = [
        (exp::FLAGS, 0x0002),
        (exp::LNKCAP, 0x0011),
        (exp::LNKSTA, 0x0011),
        (exp::LNKCTL2, 0x0001),
    ];
    for (reg, value) in ro {
        w16(&mut cs, off + reg, 0xffff);
        assert_eq!(cs.read_u16(off + reg), value, "reg {reg:#x}");
    }
    w32(&mut cs, off + exp::DEVCAP, u32::MAX);
    assert_eq!(cs.read_u32(off + exp::DEVCAP), exp::DEVCAP_RBER);

    assert_eq!(cs.read_u16(off + exp::DEVCTL), exp::DEVCTL_DEFAULT);
    w16(&mut cs, off + exp::DEVCTL, 0xffff);
    assert_eq!(cs.read_u16(off + exp::DEVCTL), exp::DEVCTL_WRITABLE);
    w16(&mut cs, off + exp::LNKCTL, 0xffff);
    assert_eq!(cs.read_u16(off + exp::LNKCTL), exp::LNKCTL_WRITABLE);

    raise(&mut cs, off + exp::DEVSTA, 0x000f);
    w16(&mut cs, off + exp::DEVSTA, 0x0001);
    assert_eq!(cs.read_u16(off + exp::DEVSTA), 0x000e);

    // Slot/root registers of the v2 layout exist but are zero for an endpoint.
    for reg in (0x14..exp::LEN)
        .step_by(4)
        .filter(|r| ![0x24, 0x28, 0x2c, 0x30].contains(r))
    {
        w32(&mut cs, off + reg, u32::MAX);
        assert_eq!(cs.read_u32(off + reg), 0, "reg {reg:#x}");
    }
}

#[test]
fn extended_space_reads_zero_and_ignores_writes() {
    let mut cs = full_device();
    for off in [0x100, 0x104, 0xffc] {
        w32(&mut cs, off, u32::MAX);
        assert_eq!(cs.read_u32(off), 0);
    }
}

#[test]
fn arbitrary_accesses_never_panic() {
    let mut cs = full_device();
    let offsets = (0..0x110u64).chain(4088..4104).chain([
        u64::MAX - 8,
        u64::MAX - 1,
        u64::MAX,
        usize::MAX as u64,
        1 << 40,
    ]);
    for offset in offsets {
        for len in [0, 1, 2, 3, 4, 5, 7, 8, 300] {
            let mut buf = vec![0xaa; len];
            cs.read(offset, &mut buf);
            if offset >= STANDARD_SPACE_SIZE as u64 {
                assert!(buf.iter().all(|&b| b == 0), "read {len} at {offset:#x}");
            }
            cs.write(offset, &vec![0xff; len]);
        }
    }
    let mut buf = [0xaa; 8];
    cs.read(4094, &mut buf);
    assert_eq!(buf, [0; 8]);
    cs.read(u64::MAX, &mut buf);
    assert_eq!(buf, [0; 8]);
    // A read straddling the end of the modelled space keeps the low part.
    let mut buf = [0xaa; 8];
    cs.read(0xfc, &mut buf);
    assert_eq!(buf[4..], [0; 4]);
    // Typed helpers are just as tolerant.
    assert_eq!(cs.read_u32(usize::MAX), 0);
    assert_eq!(cs.read_u16(CONFIG_SPACE_SIZE - 1), 0);
    assert_eq!(cs.identity(), ID);
}

#[test]
fn unaligned_access_spans_registers() {
    let mut cs = full_device();
    // A 3-byte write at 0x03 covers device-id high (RO), command low and high.
    cs.write(0x03, &[0xff, 0x06, 0x00]);
    assert_eq!(cs.command(), command::MEMORY | command::MASTER);
    assert_eq!(cs.identity(), ID);
    let mut buf = [0u8; 3];
    cs.read(0x01, &mut buf);
    assert_eq!(buf, [0x12, 0x78, 0x56]);
}

#[test]
fn reset_restores_power_on_state() {
    let mut cs = full_device();
    let fresh = full_device();
    w16(&mut cs, COMMAND, 0xffff);
    w32(&mut cs, BAR0, 0xc000_0000);
    w32(&mut cs, BAR0 + 12, 0x80);
    w16(&mut cs, 0x40 + msi::CONTROL, 0x0021);
    w32(&mut cs, 0x40 + msi::ADDRESS_LO, 0xfee0_0000);
    w16(&mut cs, 0x94 + pm::PMCSR, pm::PMCSR_D3HOT);
    w16(&mut cs, 0x58 + exp::DEVCTL, 0);
    cs.write(INTERRUPT_LINE as u64, &[0x0b]);
    raise(&mut cs, STATUS, status::W1C);

    cs.reset();
    assert_eq!(cs.command(), 0);
    assert_eq!((cs.bar_address(0), cs.bar_address(2)), (0, 0));
    assert_eq!(cs.msi(), Some(MsiState::default()));
    assert_eq!(cs.read_u16(0x94 + pm::PMCSR) & 3, pm::PMCSR_D0);
    assert_eq!(cs.read_u16(STATUS), status::CAP_LIST);
    assert_eq!(cs.identity(), ID);
    assert_eq!(cs.caps, fresh.caps);
    assert_eq!(cs.bars, fresh.bars);
    assert_eq!(cs.regs, fresh.regs);
    // Masks survive, so sizing still works.
    assert_eq!(probe_bar(&mut cs, 0), 0xfe00_0008);
}
