use super::*;

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

#[test]
fn header_round_trips_and_rejects_truncation() {
    let h = Header {
        id: 0xbeef,
        command: cmd::REGION_READ,
        size: 32,
        flags: flags::NO_REPLY,
        error: 7,
    };
    assert_eq!(Header::parse(&h.encode()), Some(h));
    for len in 0..HEADER_SIZE {
        assert_eq!(Header::parse(&h.encode()[..len]), None);
    }
    assert!(h.is_command() && h.no_reply() && !h.wants_reply());
    let reply = Header { flags: 1, ..h };
    assert!(!reply.is_command() && !reply.wants_reply());
}

#[test]
fn header_size_bounds() {
    let sane = |size| {
        Header {
            size,
            ..Default::default()
        }
        .size_is_sane()
    };
    assert!(!sane(0) && !sane(15) && sane(16) && sane(MAX_MESSAGE));
    assert!(!sane(MAX_MESSAGE + 1) && !sane(u32::MAX));
}

#[test]
fn version_with_and_without_caps() {
    let mut p = vec![0, 0, 1, 0];
    assert_eq!(
        parse_request(cmd::VERSION, &p),
        Ok(Request::Version {
            major: 0,
            minor: 1,
            caps: None
        })
    );
    p.extend_from_slice(b"{}\0");
    assert_eq!(
        parse_request(cmd::VERSION, &p),
        Ok(Request::Version {
            major: 0,
            minor: 1,
            caps: Some("{}")
        })
    );
    // No NUL, a NUL inside, not UTF-8, truncated.
    for bad in [
        &b"\0\0\0\0{}"[..],
        b"\0\0\0\0{\0}\0",
        b"\0\0\0\0\xff\0",
        b"\0\0\0",
        b"",
    ] {
        assert_eq!(
            parse_request(cmd::VERSION, bad),
            Err(Reject::Invalid),
            "{bad:?}"
        );
    }
}

#[test]
fn fixed_size_payloads_must_be_exact() {
    for (command, len) in [
        (cmd::DMA_MAP, 32),
        (cmd::DMA_UNMAP, 24),
        (cmd::DEVICE_GET_INFO, 16),
        (cmd::DEVICE_GET_REGION_INFO, 32),
        (cmd::DEVICE_GET_IRQ_INFO, 16),
        (cmd::REGION_READ, 16),
        (cmd::DEVICE_RESET, 0),
    ] {
        let p = vec![0u8; len + 8];
        assert!(parse_request(command, &p[..len]).is_ok(), "{command}");
        assert_eq!(parse_request(command, &p[..len + 1]), Err(Reject::Invalid));
        if len > 0 {
            assert_eq!(parse_request(command, &p[..len - 1]), Err(Reject::Invalid));
        }
    }
}

#[test]
fn fields_decode() {
    let mut p = Vec::new();
    for v in [32u32, 3] {
        p.extend_from_slice(&le32(v));
    }
    for v in [0x1000u64, 0x2000, 0x3000] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(
        parse_request(cmd::DMA_MAP, &p),
        Ok(Request::DmaMap {
            flags: 3,
            offset: 0x1000,
            address: 0x2000,
            size: 0x3000
        })
    );
    let mut p = vec![0u8; 32];
    p[0..4].copy_from_slice(&le32(48));
    p[8..12].copy_from_slice(&le32(7));
    assert_eq!(
        parse_request(cmd::DEVICE_GET_REGION_INFO, &p),
        Ok(Request::GetRegionInfo {
            argsz: 48,
            index: 7
        })
    );
    let p = region_access(0x10, 1, 4, &[]);
    assert_eq!(
        parse_request(cmd::REGION_READ, &p),
        Ok(Request::RegionRead {
            offset: 0x10,
            region: 1,
            count: 4
        })
    );
    let p = region_access(0x10, 1, 2, &[9, 8]);
    assert_eq!(
        parse_request(cmd::REGION_WRITE, &p),
        Ok(Request::RegionWrite {
            offset: 0x10,
            region: 1,
            data: &[9, 8]
        })
    );
}

#[test]
fn region_counts_are_capped_and_must_match() {
    for count in [MAX_DATA_XFER + 1, 0x7fff_ffff, 0xffff_ffe0, u32::MAX] {
        let p = region_access(0, 7, count, &[]);
        assert_eq!(parse_request(cmd::REGION_READ, &p), Err(Reject::TooBig));
        assert_eq!(parse_request(cmd::REGION_WRITE, &p), Err(Reject::TooBig));
    }
    assert!(parse_request(cmd::REGION_READ, &region_access(0, 7, MAX_DATA_XFER, &[])).is_ok());
    // Declared count and carried data disagree.
    assert_eq!(
        parse_request(cmd::REGION_WRITE, &region_access(0, 7, 4, &[1, 2])),
        Err(Reject::Invalid)
    );
    assert_eq!(
        parse_request(cmd::REGION_WRITE, &[0; 15]),
        Err(Reject::Invalid)
    );
}

fn set_irqs(flags: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    for v in [20 + data.len() as u32, flags, 1, 0, count] {
        p.extend_from_slice(&le32(v));
    }
    p.extend_from_slice(data);
    p
}

#[test]
fn set_irqs_flags_and_data() {
    use irq_set::*;
    assert!(parse_request(
        cmd::DEVICE_SET_IRQS,
        &set_irqs(DATA_EVENTFD | ACTION_TRIGGER, 1, &[])
    )
    .is_ok());
    assert!(parse_request(
        cmd::DEVICE_SET_IRQS,
        &set_irqs(DATA_BOOL | ACTION_TRIGGER, 2, &[1, 0])
    )
    .is_ok());
    for bad in [
        set_irqs(DATA_BOOL | ACTION_TRIGGER, 2, &[1]),
        set_irqs(DATA_NONE | ACTION_TRIGGER, 0, &[1]),
        set_irqs(DATA_NONE | DATA_BOOL | ACTION_TRIGGER, 0, &[]),
        set_irqs(DATA_NONE | ACTION_MASK | ACTION_TRIGGER, 0, &[]),
        set_irqs(DATA_NONE, 0, &[]),
        set_irqs(DATA_NONE | ACTION_TRIGGER | 0x100, 0, &[]),
        vec![0; 19],
    ] {
        assert_eq!(
            parse_request(cmd::DEVICE_SET_IRQS, &bad),
            Err(Reject::Invalid)
        );
    }
}

#[test]
fn write_multi() {
    let mut p = 2u64.to_le_bytes().to_vec();
    for (offset, count) in [(0x10u64, 4u32), (0x20, 8)] {
        p.extend_from_slice(&region_access(offset, 1, count, &[0xaa; 8]));
    }
    let Ok(Request::WriteMulti { writes }) = parse_request(cmd::REGION_WRITE_MULTI, &p) else {
        panic!("valid WRITE_MULTI refused");
    };
    let entries: Vec<_> = write_multi_entries(writes).collect();
    assert_eq!(
        entries,
        vec![(0x10, 1, &[0xaa; 4][..]), (0x20, 1, &[0xaa; 8][..])]
    );
    p[0] = 3;
    assert_eq!(
        parse_request(cmd::REGION_WRITE_MULTI, &p),
        Err(Reject::Invalid)
    );
    p[0] = 2;
    p[8 + 12] = 9; // count 9 does not fit the 8-byte data field
    assert_eq!(
        parse_request(cmd::REGION_WRITE_MULTI, &p),
        Err(Reject::Invalid)
    );
}

#[test]
fn unknown_and_unsupported_commands() {
    for c in [0u16, 11, 12, 19, 50, 100, 0x7fff, 0xffff] {
        assert_eq!(parse_request(c, &[1, 2, 3]), Err(Reject::Unknown), "{c}");
    }
    for c in [6u16, 14, 16, 17, 18] {
        assert_eq!(parse_request(c, &[]), Err(Reject::Unsupported), "{c}");
    }
    for r in [
        Reject::Invalid,
        Reject::Unsupported,
        Reject::Unknown,
        Reject::TooBig,
    ] {
        assert_ne!(r.errno(), 0);
    }
}

#[test]
fn replies_encode() {
    let req = Header {
        id: 9,
        command: cmd::VERSION,
        size: 20,
        flags: 0,
        error: 0,
    };
    let mut out = Vec::new();
    let at = begin_reply(&mut out, &req);
    encode_version(&mut out);
    finish_reply(&mut out, at);
    let h = Header::parse(&out).unwrap();
    assert_eq!(
        (h.id, h.size as usize, h.flags),
        (9, out.len(), flags::TYPE_REPLY)
    );
    assert_eq!(out.last(), Some(&0));
    assert!(out.len() <= 214, "QEMU's VERSION receive buffer");
    let json = std::str::from_utf8(&out[20..out.len() - 1]).unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["capabilities"]["max_data_xfer_size"], MAX_DATA_XFER);

    let mut out = Vec::new();
    error_reply(&mut out, &req, 0);
    let h = Header::parse(&out).unwrap();
    assert_eq!((h.size, h.flags, h.error), (16, 0x21, libc::EINVAL as u32));
}

#[test]
fn region_info_follows_argsz() {
    let info = RegionInfo {
        flags: 7,
        size: 1 << 20,
        offset: 0,
        sparse: Some((0, 1 << 20)),
    };
    let mut short = Vec::new();
    encode_region_info(&mut short, 0, &info, 32);
    assert_eq!(short.len(), 32);
    assert_eq!(&short[0..4], &le32(64)); // argsz needed
    assert_eq!(&short[4..8], &le32(7 | REGION_INFO_FLAG_CAPS));
    // Caps not included, but cap_offset still 32: QEMU refuses CAPS with cap_offset < 32.
    assert_eq!(&short[12..16], &le32(32));
    let mut full = Vec::new();
    encode_region_info(&mut full, 0, &info, 64);
    assert_eq!(full.len(), 64);
    assert_eq!(&full[12..16], &le32(32));
    assert_eq!(&full[32..36], &[1, 0, 1, 0]); // SPARSE_MMAP v1
    let plain = RegionInfo {
        flags: 3,
        size: 4096,
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_region_info(&mut out, 7, &plain, 1000);
    assert_eq!((out.len(), &out[0..4]), (32, &le32(32)[..]));
}

#[test]
fn parse_never_panics_on_truncations() {
    let sample = [0x5au8; 64];
    for c in 0..=20u16 {
        for len in 0..sample.len() {
            let _ = parse_request(c, &sample[..len]);
        }
    }
}
