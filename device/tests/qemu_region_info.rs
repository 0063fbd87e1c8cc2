//! The exact DEVICE_GET_REGION_INFO exchange QEMU's vfio-user client (10.1 … 11.1.3) does for
//! each region at realize, checked the way QEMU checks it:
//!
//! - `hw/vfio/device.c: vfio_device_get_region_info` asks with `argsz = 32`; if the reply's
//!   `argsz` is larger it closes the fd it got, re-asks with that `argsz` and keeps the second
//!   reply and its fd.
//! - `hw/vfio-user/device.c: vfio_user_get_region_info` sends a 48-byte message (header + the
//!   32-byte struct, whatever `argsz` says) and receives into a `16 + argsz` buffer, accepting
//!   at most one fd (`VFIOUserFDs {0, 1, fd}`).
//! - `vfio_user_device_io_get_region_info` then refuses (EINVAL) any reply with CAPS set whose
//!   `cap_offset` is not within `[32, argsz]`: the check the cut first reply once failed, as
//!   "failed to get region 0 info: Invalid argument" at realize.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use common::{Raw, Running};
use device::transport::wire::{self, cmd, flags, Header};
use device::ModelKind;

const FLAG_READ: u32 = 1;
const FLAG_WRITE: u32 = 2;
const FLAG_MMAP: u32 = 4;
const FLAG_CAPS: u32 = 8;
const CAP_SPARSE_MMAP: u16 = 1;
const INFO_SIZE: u32 = 32;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Receives one reply as QEMU's `vfio_user_recv_one` does: the 16-byte header with one recvmsg
/// that collects any fds (room for 16, QEMU's limit), then the body; fails if the reply is
/// larger than `rsize`, QEMU's receive buffer.
fn recv_like_qemu(c: &Raw, rsize: usize) -> (Header, Vec<u8>, Vec<OwnedFd>) {
    let mut head = [0u8; 16];
    let mut cmsg = [0u64; 16]; // 128 bytes: CMSG_SPACE(16 * 4) is 80
    let mut iov = libc::iovec {
        iov_base: head.as_mut_ptr().cast(),
        iov_len: head.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the buffers outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
    // SAFETY: recvmsg into the buffers above; MSG_WAITALL so the header comes whole.
    let n = unsafe { libc::recvmsg(c.fd(), &mut msg, libc::MSG_WAITALL | libc::MSG_CMSG_CLOEXEC) };
    assert_eq!(n, 16, "header recvmsg: {}", std::io::Error::last_os_error());
    assert_eq!(
        msg.msg_flags & libc::MSG_CTRUNC,
        0,
        "control data truncated"
    );
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel just filled, per cmsg(3).
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(&msg);
        while !cm.is_null() {
            if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cm) as *const RawFd;
                let count = ((*cm).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cm = libc::CMSG_NXTHDR(&msg, cm);
        }
    }
    let h = Header::parse(&head).expect("header");
    assert!(
        h.size as usize <= rsize,
        "reply larger than recv buffer: {} > {rsize}",
        h.size
    );
    let mut all = head.to_vec();
    all.resize(h.size as usize, 0);
    let mut stream = &c.stream;
    std::io::Read::read_exact(&mut stream, &mut all[16..]).expect("reply body");
    (h, all, fds)
}

/// One GET_REGION_INFO as QEMU sends it: a 48-byte message whatever `argsz` is.
fn get_region_info(
    c: &mut Raw,
    id: u16,
    index: u32,
    argsz: u32,
) -> (Header, Vec<u8>, Vec<OwnedFd>) {
    let mut p = vec![0u8; INFO_SIZE as usize];
    p[0..4].copy_from_slice(&argsz.to_le_bytes());
    p[8..12].copy_from_slice(&index.to_le_bytes());
    c.send(&wire::request(id, cmd::DEVICE_GET_REGION_INFO, 0, &p));
    let r = recv_like_qemu(c, 16 + argsz as usize);
    assert_eq!(r.0.id, id, "reply out of step: {:?}", r.0);
    assert_eq!(r.0.flags, flags::TYPE_REPLY, "error reply: {:?}", r.0);
    r
}

/// What `vfio_user_device_io_get_region_info` checks after copying `argsz` bytes of the reply.
fn qemu_accepts(info: &[u8]) -> bool {
    let (argsz, fl, cap_offset) = (u32_at(info, 0), u32_at(info, 4), u32_at(info, 12));
    fl & FLAG_CAPS == 0 || (INFO_SIZE..=argsz).contains(&cap_offset)
}

fn vram_bar_exchange(kind: ModelKind) {
    let srv = Running::start(kind);
    let (bar, vram_size) = {
        let m = srv.card.model();
        (srv.card.info().vram_bar as u32, m.vram().size())
    };
    let mut c = srv.connect();
    c.handshake();

    // 1. argsz 32: the struct only, CAPS set, argsz = what the sparse cap needs.
    let (h, body, fds) = get_region_info(&mut c, 10, bar, INFO_SIZE);
    assert_eq!(h.size, 16 + INFO_SIZE, "first reply is header + 32");
    let info = &body[16..];
    let full = u32_at(info, 0);
    assert_eq!(
        full,
        INFO_SIZE + 32,
        "argsz: struct + sparse cap with one area"
    );
    assert_eq!(
        u32_at(info, 4),
        FLAG_READ | FLAG_WRITE | FLAG_MMAP | FLAG_CAPS
    );
    assert_eq!(u32_at(info, 8), bar);
    assert_eq!(
        u32_at(info, 12),
        INFO_SIZE,
        "cap_offset must be 32 even when cut"
    );
    assert_eq!(u64_at(info, 16), vram_size);
    assert_eq!(u64_at(info, 24), 0, "mmap offset");
    assert!(
        qemu_accepts(info),
        "QEMU would refuse this reply with EINVAL"
    );
    assert_eq!(fds.len(), 1, "the fd comes with every reply for the region");
    drop(fds); // QEMU closes it before the retry

    // 2. The retry with the full argsz: struct + SPARSE_MMAP cap, and the fd QEMU keeps.
    let (h, body, mut fds) = get_region_info(&mut c, 11, bar, full);
    assert_eq!(h.size, 16 + full);
    let info = &body[16..];
    assert_eq!(u32_at(info, 0), full, "same argsz: QEMU stops retrying");
    assert_eq!(
        u32_at(info, 4),
        FLAG_READ | FLAG_WRITE | FLAG_MMAP | FLAG_CAPS
    );
    assert_eq!(u32_at(info, 8), bar);
    assert_eq!(u32_at(info, 12), INFO_SIZE);
    assert_eq!(u64_at(info, 16), vram_size);
    assert_eq!(u64_at(info, 24), 0);
    assert!(qemu_accepts(info));
    // Cap chain: one SPARSE_MMAP v1 header ending the chain, one area covering the BAR.
    let cap = &info[INFO_SIZE as usize..];
    assert_eq!(u16_at(cap, 0), CAP_SPARSE_MMAP);
    assert_eq!(u16_at(cap, 2), 1, "version");
    assert_eq!(u32_at(cap, 4), 0, "next: end of chain");
    assert_eq!(u32_at(cap, 8), 1, "nr_areas");
    assert_eq!(u32_at(cap, 12), 0, "reserved");
    assert_eq!((u64_at(cap, 16), u64_at(cap, 24)), (0, vram_size), "area");
    assert_eq!(fds.len(), 1, "exactly one fd with the kept reply");
    let fd = fds.pop().unwrap();

    // The fd is the VRAM: QEMU's mmap(MAP_SHARED, offset 0, size) sees what the card holds.
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    assert!(st.st_size as u64 >= vram_size);
    // SAFETY: a fresh shared mapping of the fd, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            vram_size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    // SAFETY: within the mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(
            [0xa5u8, 0x5a, 0xc3, 0x3c].as_ptr(),
            p.cast::<u8>().add(4096),
            4,
        )
    };
    let mut seen = [0u8; 4];
    srv.card.model().vram().read(4096, &mut seen);
    assert_eq!(
        seen,
        [0xa5, 0x5a, 0xc3, 0x3c],
        "the fd is not the card's VRAM"
    );
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(p, vram_size as usize) };

    // The other regions QEMU asks for at realize (0-5, then 7): no caps, argsz 32, no fds.
    for index in (0..6).chain([7]).filter(|&i| i != bar) {
        let (h, body, fds) = get_region_info(&mut c, 20 + index as u16, index, INFO_SIZE);
        let info = &body[16..];
        assert_eq!(
            (h.size, u32_at(info, 0)),
            (16 + INFO_SIZE, INFO_SIZE),
            "region {index}"
        );
        assert_eq!(
            u32_at(info, 4) & (FLAG_CAPS | FLAG_MMAP),
            0,
            "region {index}"
        );
        assert!(fds.is_empty(), "region {index} sent an fd");
    }
    drop(c);
    srv.assert_healthy();
}

#[test]
fn qemu_region_info_exchange_hibmc() {
    vram_bar_exchange(ModelKind::Hibmc);
}

#[test]
fn qemu_region_info_exchange_bochs() {
    vram_bar_exchange(ModelKind::Bochs);
}
