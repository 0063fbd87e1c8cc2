//! The vfio-user wire format: the 16-byte header and every command's payload, parsed from and
//! encoded into byte slices. Pure functions, no I/O, no allocation driven by a length read off
//! the wire (callers hand in a buffer that already holds the whole message).
//!
//! Layouts follow docs/vfio-user.rst (all fields little-endian, offsets relative to the end of
//! the header) and, where they differ, what QEMU's `vfio-user-pci` client actually sends.

/// Bytes in every message header.
pub const HEADER_SIZE: usize = 16;
/// Largest `count` of a REGION_READ/WRITE we accept, advertised as `max_data_xfer_size`.
pub const MAX_DATA_XFER: u32 = 1 << 20;
/// Largest message we take: a REGION_WRITE of [`MAX_DATA_XFER`] bytes with its two headers.
/// A header declaring more means the framing cannot be trusted: the client is dropped.
pub const MAX_MESSAGE: u32 = HEADER_SIZE as u32 + 16 + MAX_DATA_XFER;
/// File descriptors we accept in one message, advertised as `max_msg_fds`.
pub const MAX_MSG_FDS: usize = 16;
/// The VERSION reply's capabilities: no `write_multiple`, no migration, no twin socket.
pub const CAPABILITIES_JSON: &str =
    r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576}}"#;

pub mod cmd {
    pub const VERSION: u16 = 1;
    pub const DMA_MAP: u16 = 2;
    pub const DMA_UNMAP: u16 = 3;
    pub const DEVICE_GET_INFO: u16 = 4;
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    pub const DEVICE_SET_IRQS: u16 = 8;
    pub const REGION_READ: u16 = 9;
    pub const REGION_WRITE: u16 = 10;
    pub const DMA_READ: u16 = 11;
    pub const DMA_WRITE: u16 = 12;
    pub const DEVICE_RESET: u16 = 13;
    pub const DIRTY_PAGES: u16 = 14;
    pub const REGION_WRITE_MULTI: u16 = 15;
    pub const DEVICE_FEATURE: u16 = 16;
    pub const MIG_DATA_READ: u16 = 17;
    pub const MIG_DATA_WRITE: u16 = 18;
}

/// Header flag bits.
pub mod flags {
    pub const TYPE_MASK: u32 = 0xf;
    pub const TYPE_COMMAND: u32 = 0;
    pub const TYPE_REPLY: u32 = 1;
    pub const NO_REPLY: u32 = 0x10;
    pub const ERROR: u32 = 0x20;
}

/// SET_IRQS flag bits (linux/vfio.h `VFIO_IRQ_SET_*`).
pub mod irq_set {
    pub const DATA_NONE: u32 = 1;
    pub const DATA_BOOL: u32 = 2;
    pub const DATA_EVENTFD: u32 = 4;
    pub const DATA_MASK: u32 = 7;
    pub const ACTION_MASK: u32 = 8;
    pub const ACTION_UNMASK: u32 = 16;
    pub const ACTION_TRIGGER: u32 = 32;
    pub const ACTION_TYPE_MASK: u32 = 56;
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut v = [0; 2];
    v.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(v)
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// A message header. `size` counts the whole message, header included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub command: u16,
    pub size: u32,
    pub flags: u32,
    pub error: u32,
}

impl Header {
    /// Parses the first 16 bytes of `b`; None when fewer are there.
    pub fn parse(b: &[u8]) -> Option<Header> {
        let b = b.get(..HEADER_SIZE)?;
        Some(Header {
            id: u16_at(b, 0),
            command: u16_at(b, 2),
            size: u32_at(b, 4),
            flags: u32_at(b, 8),
            error: u32_at(b, 12),
        })
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    /// A size the framing can follow: at least a header, at most [`MAX_MESSAGE`].
    pub fn size_is_sane(&self) -> bool {
        (HEADER_SIZE as u32..=MAX_MESSAGE).contains(&self.size)
    }

    pub fn is_command(&self) -> bool {
        self.flags & flags::TYPE_MASK == flags::TYPE_COMMAND
    }

    pub fn no_reply(&self) -> bool {
        self.flags & flags::NO_REPLY != 0
    }

    /// Whether the server owes this message a reply: commands without NO_REPLY. Anything else
    /// (a "reply" from the client, an unknown type) is dropped without one.
    pub fn wants_reply(&self) -> bool {
        self.is_command() && !self.no_reply()
    }
}

/// One parsed request. Slices borrow from the message buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `caps` is the JSON text without its NUL; None when the client sent none (the spec makes
    /// the version data optional).
    Version {
        major: u16,
        minor: u16,
        caps: Option<&'a str>,
    },
    DmaMap {
        flags: u32,
        offset: u64,
        address: u64,
        size: u64,
    },
    DmaUnmap {
        argsz: u32,
        flags: u32,
        address: u64,
        size: u64,
    },
    GetInfo {
        argsz: u32,
    },
    GetRegionInfo {
        argsz: u32,
        index: u32,
    },
    GetIrqInfo {
        argsz: u32,
        index: u32,
    },
    /// `data` is the DATA_BOOL array (empty for NONE and EVENTFD).
    SetIrqs {
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &'a [u8],
    },
    RegionRead {
        offset: u64,
        region: u32,
        count: u32,
    },
    RegionWrite {
        offset: u64,
        region: u32,
        data: &'a [u8],
    },
    Reset,
    /// `writes` is `wr_cnt` validated 24-byte entries; iterate with [`write_multi_entries`].
    WriteMulti {
        writes: &'a [u8],
    },
}

/// Why a request was refused; each maps to the errno of the error reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Malformed payload or out-of-range field.
    Invalid,
    /// A command this server does not implement (defined by the spec but unused by QEMU).
    Unsupported,
    /// Not a command number the spec defines (or one the client must never send).
    Unknown,
    /// A transfer larger than `max_data_xfer_size`.
    TooBig,
}

impl Reject {
    pub fn errno(self) -> u32 {
        (match self {
            Reject::Invalid => libc::EINVAL,
            Reject::Unsupported => libc::ENOTSUP,
            Reject::Unknown => libc::ENOSYS,
            Reject::TooBig => libc::E2BIG,
        }) as u32
    }
}

fn exact(payload: &[u8], len: usize) -> Result<&[u8], Reject> {
    if payload.len() == len {
        Ok(payload)
    } else {
        Err(Reject::Invalid)
    }
}

/// Parses the payload (`message[16..size]`) of command `command`. Never panics: every index is
/// checked against the payload's real length before it is read.
pub fn parse_request(command: u16, payload: &[u8]) -> Result<Request<'_>, Reject> {
    let p = payload;
    Ok(match command {
        cmd::VERSION => {
            if p.len() < 4 {
                return Err(Reject::Invalid);
            }
            let caps = match &p[4..] {
                [] => None,
                [text @ .., 0] => {
                    // One NUL, at the end: the JSON itself must not contain one.
                    if text.contains(&0) {
                        return Err(Reject::Invalid);
                    }
                    Some(std::str::from_utf8(text).map_err(|_| Reject::Invalid)?)
                }
                _ => return Err(Reject::Invalid),
            };
            Request::Version {
                major: u16_at(p, 0),
                minor: u16_at(p, 2),
                caps,
            }
        }
        cmd::DMA_MAP => {
            let p = exact(p, 32)?;
            Request::DmaMap {
                flags: u32_at(p, 4),
                offset: u64_at(p, 8),
                address: u64_at(p, 16),
                size: u64_at(p, 24),
            }
        }
        cmd::DMA_UNMAP => {
            let p = exact(p, 24)?;
            Request::DmaUnmap {
                argsz: u32_at(p, 0),
                flags: u32_at(p, 4),
                address: u64_at(p, 8),
                size: u64_at(p, 16),
            }
        }
        cmd::DEVICE_GET_INFO => Request::GetInfo {
            argsz: u32_at(exact(p, 16)?, 0),
        },
        cmd::DEVICE_GET_REGION_INFO => {
            let p = exact(p, 32)?;
            Request::GetRegionInfo {
                argsz: u32_at(p, 0),
                index: u32_at(p, 8),
            }
        }
        cmd::DEVICE_GET_IRQ_INFO => {
            let p = exact(p, 16)?;
            Request::GetIrqInfo {
                argsz: u32_at(p, 0),
                index: u32_at(p, 8),
            }
        }
        cmd::DEVICE_SET_IRQS => {
            if p.len() < 20 {
                return Err(Reject::Invalid);
            }
            let flags = u32_at(p, 4);
            let count = u32_at(p, 16);
            let data = &p[20..];
            // Exactly one data type and one action, as vfio.h requires.
            let data_type = flags & irq_set::DATA_MASK;
            let action = flags & irq_set::ACTION_TYPE_MASK;
            if !data_type.is_power_of_two()
                || !action.is_power_of_two()
                || flags & !(irq_set::DATA_MASK | irq_set::ACTION_TYPE_MASK) != 0
            {
                return Err(Reject::Invalid);
            }
            let data_ok = if data_type == irq_set::DATA_BOOL {
                data.len() as u64 == u64::from(count)
            } else {
                data.is_empty()
            };
            if !data_ok {
                return Err(Reject::Invalid);
            }
            Request::SetIrqs {
                flags,
                index: u32_at(p, 8),
                start: u32_at(p, 12),
                count,
                data,
            }
        }
        cmd::REGION_READ => {
            let p = exact(p, 16)?;
            let count = u32_at(p, 12);
            if count > MAX_DATA_XFER {
                return Err(Reject::TooBig);
            }
            Request::RegionRead {
                offset: u64_at(p, 0),
                region: u32_at(p, 8),
                count,
            }
        }
        cmd::REGION_WRITE => {
            if p.len() < 16 {
                return Err(Reject::Invalid);
            }
            let count = u32_at(p, 12);
            if count > MAX_DATA_XFER {
                return Err(Reject::TooBig);
            }
            if (p.len() - 16) as u64 != u64::from(count) {
                return Err(Reject::Invalid);
            }
            Request::RegionWrite {
                offset: u64_at(p, 0),
                region: u32_at(p, 8),
                data: &p[16..],
            }
        }
        cmd::DEVICE_RESET => {
            exact(p, 0)?;
            Request::Reset
        }
        cmd::REGION_WRITE_MULTI => {
            if p.len() < 8 {
                return Err(Reject::Invalid);
            }
            let writes = &p[8..];
            let count = u64_at(p, 0);
            if count.checked_mul(24) != Some(writes.len() as u64) {
                return Err(Reject::Invalid);
            }
            if writes.chunks_exact(24).any(|w| u32_at(w, 12) > 8) {
                return Err(Reject::Invalid);
            }
            Request::WriteMulti { writes }
        }
        cmd::DEVICE_GET_REGION_IO_FDS
        | cmd::DIRTY_PAGES
        | cmd::DEVICE_FEATURE
        | cmd::MIG_DATA_READ
        | cmd::MIG_DATA_WRITE => return Err(Reject::Unsupported),
        // DMA_READ/WRITE go server -> client only; anything else is not in the spec.
        _ => return Err(Reject::Unknown),
    })
}

/// The `(offset, region, data)` entries of a validated REGION_WRITE_MULTI.
pub fn write_multi_entries(writes: &[u8]) -> impl Iterator<Item = (u64, u32, &[u8])> {
    writes.chunks_exact(24).map(|w| {
        let count = (u32_at(w, 12) as usize).min(8);
        (u64_at(w, 0), u32_at(w, 8), &w[16..16 + count])
    })
}

/// Starts a reply to `request` in `out` (which may already hold earlier replies); the size is
/// patched by [`finish_reply`].
pub fn begin_reply(out: &mut Vec<u8>, request: &Header) -> usize {
    let at = out.len();
    let header = Header {
        id: request.id,
        command: request.command,
        size: 0,
        flags: flags::TYPE_REPLY,
        error: 0,
    };
    out.extend_from_slice(&header.encode());
    at
}

/// Patches the size of the reply begun at `at`.
pub fn finish_reply(out: &mut [u8], at: usize) {
    let size = (out.len() - at) as u32;
    out[at + 4..at + 8].copy_from_slice(&size.to_le_bytes());
}

/// A header-only error reply carrying `errno` (never 0: QEMU and the spec read it as the cause).
pub fn error_reply(out: &mut Vec<u8>, request: &Header, errno: u32) {
    let header = Header {
        id: request.id,
        command: request.command,
        size: HEADER_SIZE as u32,
        flags: flags::TYPE_REPLY | flags::ERROR,
        error: if errno == 0 {
            libc::EINVAL as u32
        } else {
            errno
        },
    };
    out.extend_from_slice(&header.encode());
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// VERSION reply payload: major 0, minor 0 and our capabilities, NUL-terminated (QEMU indexes
/// the last byte without checking, so the JSON must be there).
pub fn encode_version(out: &mut Vec<u8>) {
    put_u16(out, 0);
    put_u16(out, 0);
    out.extend_from_slice(CAPABILITIES_JSON.as_bytes());
    out.push(0);
}

/// DEVICE_GET_INFO reply payload.
pub fn encode_device_info(out: &mut Vec<u8>, flags: u32, num_regions: u32, num_irqs: u32) {
    for v in [16, flags, num_regions, num_irqs] {
        put_u32(out, v);
    }
}

/// What a region looks like in DEVICE_GET_REGION_INFO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    pub flags: u32,
    pub size: u64,
    /// mmap offset into the region fd.
    pub offset: u64,
    /// One sparse-mmap area `(offset, size)`, sent as a SPARSE_MMAP capability.
    pub sparse: Option<(u64, u64)>,
}

pub const REGION_INFO_FLAG_CAPS: u32 = 8;
const REGION_INFO_SIZE: u32 = 32;
const SPARSE_CAP_SIZE: u32 = 8 + 8 + 16;

/// DEVICE_GET_REGION_INFO reply payload, cut to the client's `argsz`: when the capabilities do
/// not fit, `argsz` says how much is needed and only the 32-byte struct is sent.
///
/// Whenever CAPS is set, `cap_offset` is 32, even in the cut reply. The kernel's VFIO writes 0
/// there, but QEMU's vfio-user client (`vfio_user_device_io_get_region_info`) refuses a reply
/// with CAPS set and `cap_offset` outside `[32, argsz]` with EINVAL ("failed to get region 0
/// info: Invalid argument") before it looks at `argsz` to retry. The crate server did the same.
pub fn encode_region_info(out: &mut Vec<u8>, index: u32, info: &RegionInfo, argsz: u32) {
    let full = REGION_INFO_SIZE
        + if info.sparse.is_some() {
            SPARSE_CAP_SIZE
        } else {
            0
        };
    let caps_fit = info.sparse.is_some() && argsz >= full;
    let mut flags = info.flags;
    if info.sparse.is_some() {
        flags |= REGION_INFO_FLAG_CAPS;
    }
    put_u32(out, full);
    put_u32(out, flags);
    put_u32(out, index);
    let cap_offset = if info.sparse.is_some() {
        REGION_INFO_SIZE
    } else {
        0
    };
    put_u32(out, cap_offset);
    put_u64(out, info.size);
    put_u64(out, info.offset);
    if let (true, Some((offset, size))) = (caps_fit, info.sparse) {
        // vfio_info_cap_header {id SPARSE_MMAP = 1, version 1, next 0}, nr_areas 1, reserved.
        put_u16(out, 1);
        put_u16(out, 1);
        put_u32(out, 0);
        put_u32(out, 1);
        put_u32(out, 0);
        put_u64(out, offset);
        put_u64(out, size);
    }
}

/// DEVICE_GET_IRQ_INFO reply payload.
pub fn encode_irq_info(out: &mut Vec<u8>, flags: u32, index: u32, count: u32) {
    for v in [16, flags, index, count] {
        put_u32(out, v);
    }
}

/// The `{offset, region, count}` that REGION_READ and REGION_WRITE replies start with.
pub fn encode_region_access(out: &mut Vec<u8>, offset: u64, region: u32, count: u32) {
    put_u64(out, offset);
    put_u32(out, region);
    put_u32(out, count);
}

/// DMA_UNMAP reply payload: the request's entry echoed, as the spec asks.
pub fn encode_dma_unmap(out: &mut Vec<u8>, argsz: u32, flags: u32, address: u64, size: u64) {
    put_u32(out, argsz);
    put_u32(out, flags);
    put_u64(out, address);
    put_u64(out, size);
}

/// Builds a whole request message (header + payload): used by tests, the fuzzers and the bench.
pub fn request(id: u16, command: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        id,
        command,
        size: (HEADER_SIZE + payload.len()) as u32,
        flags,
        error: 0,
    };
    let mut m = header.encode().to_vec();
    m.extend_from_slice(payload);
    m
}

/// REGION_READ/WRITE request payload: `{offset, region, count}` then `data`.
pub fn region_access(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + data.len());
    encode_region_access(&mut p, offset, region, count);
    p.extend_from_slice(data);
    p
}

#[cfg(test)]
mod tests;
