//! The crate server's known failures, as regression tests against the real server on a real
//! unix socket. Each ends with a healthy VERSION + config read on a new connection.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{hex, Raw, Running};
use device::transport::wire::{self, cmd, flags, irq_set};
use device::ModelKind;

const HIBMC_MMIO: u32 = device::hibmc::MMIO_BAR as u32;

fn is_error(h: &wire::Header, errno: i32) -> bool {
    h.flags == flags::TYPE_REPLY | flags::ERROR && h.error == errno as u32 && h.size == 16
}

fn config_read(c: &mut Raw, id: u16, offset: u64, count: u32) -> Vec<u8> {
    let (h, body) = c.call(
        id,
        cmd::REGION_READ,
        0,
        &wire::region_access(offset, 7, count, &[]),
    );
    assert_eq!(h.flags, flags::TYPE_REPLY, "{h:?}");
    assert_eq!(h.size, 32 + count);
    body[32..].to_vec()
}

#[test]
fn version_shorter_than_its_fixed_part() {
    let srv = Running::start(ModelKind::Hibmc);
    let mut c = srv.connect();
    c.send(&hex("0100010010000000000000000000000000000000"));
    let (h, _) = c.expect_reply(1);
    assert!(is_error(&h, libc::EINVAL), "{h:?}");
    // The 4 trailing bytes start a header that never completes; the client then leaves.
    drop(c);
    srv.assert_healthy();
}

#[test]
fn version_without_json() {
    let srv = Running::start(ModelKind::Hibmc);
    // No version data at all: the spec makes it optional, so this is a valid VERSION.
    let mut c = srv.connect();
    c.send(&hex("0100010014000000000000000000000000000000"));
    let (h, body) = c.expect_reply(1);
    assert_eq!(h.flags, flags::TYPE_REPLY);
    assert_eq!(body.last(), Some(&0));
    drop(c);
    // Version data that is not NUL-terminated, or not a JSON object: refused, still in step.
    let mut c = srv.connect();
    c.send(&wire::request(2, cmd::VERSION, 0, b"\0\0\0\0{}"));
    assert!(is_error(&c.expect_reply(2).0, libc::EINVAL));
    c.send(&wire::request(3, cmd::VERSION, 0, b"\0\0\0\0[1]\0"));
    assert!(is_error(&c.expect_reply(3).0, libc::EINVAL));
    c.handshake();
    config_read(&mut c, 4, 0, 4);
    drop(c);
    srv.assert_healthy();
}

#[test]
fn rejected_region_write_consumes_its_payload() {
    let srv = Running::start(ModelKind::Hibmc);
    let mut c = srv.connect();
    c.handshake();
    for region in [9u32, 10, 100, u32::MAX] {
        let (h, _) = c.call(
            7,
            cmd::REGION_WRITE,
            0,
            &wire::region_access(0, region, 8, &[0xee; 8]),
        );
        assert!(is_error(&h, libc::EINVAL), "{h:?}");
        assert_eq!(config_read(&mut c, 8, 0, 2), vec![0xe5, 0x19]);
    }
    // Out of the region's bounds, too.
    let (h, _) = c.call(
        9,
        cmd::REGION_WRITE,
        0,
        &wire::region_access(4095, 7, 2, &[1, 2]),
    );
    assert!(is_error(&h, libc::EINVAL));
    drop(c);
    srv.assert_healthy();
}

#[test]
fn unknown_and_rejected_commands_stay_in_step() {
    let srv = Running::start(ModelKind::Hibmc);
    let mut c = srv.connect();
    c.handshake();
    let payload: Vec<u8> = (0..37).collect();
    for (i, command) in [0u16, 6, 11, 12, 14, 15, 16, 50, 100, 0x7fff, 0xffff]
        .into_iter()
        .enumerate()
    {
        let id = 100 + i as u16;
        let (h, _) = c.call(id, command, 0, &payload);
        assert_eq!(
            h.flags & flags::ERROR,
            flags::ERROR,
            "command {command}: {h:?}"
        );
        assert_ne!(h.error, 0);
        assert_eq!(config_read(&mut c, id + 1000, 0, 2), vec![0xe5, 0x19]);
    }
    // NO_REPLY: a posted config write gets no reply, and neither does a rejected posted command.
    c.send(&wire::request(
        200,
        cmd::REGION_WRITE,
        flags::NO_REPLY,
        &wire::region_access(0x3c, 7, 1, &[0x5a]),
    ));
    c.send(&wire::request(201, 0x7777, flags::NO_REPLY, &payload));
    c.send(&wire::request(
        202,
        cmd::REGION_WRITE,
        flags::NO_REPLY,
        &wire::region_access(0, 99, 1, &[1]),
    ));
    assert_eq!(config_read(&mut c, 203, 0x3c, 1), vec![0x5a]);
    // SET_IRQS with DATA_BOOL (QEMU never sends it; the spec allows it).
    let mut p = Vec::new();
    for v in [21u32, irq_set::DATA_BOOL | irq_set::ACTION_TRIGGER, 1, 0, 1] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.push(1);
    let (h, _) = c.call(204, cmd::DEVICE_SET_IRQS, 0, &p);
    assert_eq!(h.flags, flags::TYPE_REPLY, "{h:?}");
    // DEVICE_RESET with a payload is malformed; without one it works.
    let (h, _) = c.call(205, cmd::DEVICE_RESET, 0, &[1, 2, 3, 4]);
    assert!(is_error(&h, libc::EINVAL));
    let (h, _) = c.call(206, cmd::DEVICE_RESET, 0, &[]);
    assert_eq!((h.flags, h.size), (flags::TYPE_REPLY, 16));
    // A header split across two writes, then its payload in a third.
    let m = wire::request(207, cmd::REGION_READ, 0, &wire::region_access(0, 7, 4, &[]));
    c.send(&m[..7]);
    std::thread::sleep(Duration::from_millis(30));
    c.send(&m[7..20]);
    std::thread::sleep(Duration::from_millis(30));
    c.send(&m[20..]);
    let (h, body) = c.expect_reply(207);
    assert_eq!((h.size, &body[32..34]), (36, &[0xe5, 0x19][..]));
    // A message whose declared size cannot be framed: the client is dropped.
    c.send(
        &wire::Header {
            id: 208,
            command: cmd::REGION_WRITE,
            size: u32::MAX,
            flags: 0,
            error: 0,
        }
        .encode(),
    );
    c.assert_dropped();
    srv.assert_healthy();
}

#[test]
fn huge_region_reads_are_refused_without_allocating() {
    let srv = Running::start(ModelKind::Hibmc);
    let mut c = srv.connect();
    c.handshake();
    let before = common::peak_rss_kib();
    for (id, count) in [
        (10u16, 0x7fff_ffffu32),
        (11, 0xffff_ffe0),
        (12, wire::MAX_DATA_XFER + 1),
    ] {
        for region in [7, 0, HIBMC_MMIO] {
            let (h, _) = c.call(
                id,
                cmd::REGION_READ,
                0,
                &wire::region_access(0, region, count, &[]),
            );
            assert!(is_error(&h, libc::E2BIG), "{h:?}");
        }
    }
    assert!(common::peak_rss_kib() < before + 8 * 1024, "RSS grew");
    // The largest allowed read of VRAM works.
    let (h, _) = c.call(
        13,
        cmd::REGION_READ,
        0,
        &wire::region_access(0, 0, wire::MAX_DATA_XFER, &[]),
    );
    assert_eq!(h.size, 32 + wire::MAX_DATA_XFER);
    drop(c);
    srv.assert_healthy();
}

fn set_irqs(flags: u32, start: u32, count: u32) -> Vec<u8> {
    let mut p = Vec::new();
    for v in [20u32, flags, 1, start, count] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}

#[test]
fn msi_into_a_full_pipe_is_dropped_not_waited_for() {
    let srv = Running::start(ModelKind::Hibmc);
    let mut c = srv.connect();
    c.handshake();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) },
        0
    );
    // SAFETY: just created, owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let junk = [0u8; 4096];
    // SAFETY: writes from a live buffer until the pipe is full.
    while unsafe { libc::write(wr.as_raw_fd(), junk.as_ptr().cast(), junk.len()) } > 0 {}
    c.send_with_fds(
        &wire::request(
            20,
            cmd::DEVICE_SET_IRQS,
            0,
            &set_irqs(irq_set::DATA_EVENTFD | irq_set::ACTION_TRIGGER, 0, 1),
        ),
        &[wr.as_raw_fd()],
    );
    assert_eq!(c.expect_reply(20).0.flags, flags::TYPE_REPLY);
    assert_eq!(srv.card.stats().msi_vectors_armed, 1);
    let t = Instant::now();
    for id in 21..31 {
        let (h, _) = c.call(
            id,
            cmd::DEVICE_SET_IRQS,
            0,
            &set_irqs(irq_set::DATA_NONE | irq_set::ACTION_TRIGGER, 0, 1),
        );
        assert_eq!(h.flags, flags::TYPE_REPLY);
    }
    let stats = srv.card.stats();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(stats.msi_sent, 0);
    assert!(stats.msi_dropped >= 10, "{stats:?}");
    drop((rd, c));
    srv.assert_healthy();
}

#[test]
fn errnos_write_replies_and_version_first() {
    let srv = Running::start(ModelKind::Hibmc);
    let mut c = srv.connect();
    // Before VERSION everything else is refused with an errno, and nothing happens.
    c.send(&wire::request(
        1,
        cmd::REGION_WRITE,
        0,
        &wire::region_access(0x3c, 7, 1, &[0x77]),
    ));
    assert!(is_error(&c.expect_reply(1).0, libc::EINVAL));
    c.send(&wire::request(
        2,
        cmd::DEVICE_GET_INFO,
        0,
        &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ));
    assert!(is_error(&c.expect_reply(2).0, libc::EINVAL));
    c.handshake();
    // A second VERSION is refused.
    c.send(&wire::request(3, cmd::VERSION, 0, b"\0\0\0\0{}\0"));
    assert!(is_error(&c.expect_reply(3).0, libc::EINVAL));
    assert_ne!(config_read(&mut c, 4, 0x3c, 1), vec![0x77]);
    // REGION_WRITE's reply is {offset, region, count} with no data.
    let (h, body) = c.call(
        5,
        cmd::REGION_WRITE,
        0,
        &wire::region_access(0x3c, 7, 1, &[0x66]),
    );
    assert_eq!((h.flags, h.size), (flags::TYPE_REPLY, 32));
    assert_eq!(&body[16..32], &wire::region_access(0x3c, 7, 1, &[])[..]);
    assert_eq!(config_read(&mut c, 6, 0x3c, 1), vec![0x66]);
    // GET_IRQ_INFO(ERR) is EINVAL (QEMU then skips the error notifier).
    let mut p = [0u8; 16];
    p[0] = 16;
    p[8] = 3;
    assert!(is_error(
        &c.call(7, cmd::DEVICE_GET_IRQ_INFO, 0, &p).0,
        libc::EINVAL
    ));
    drop(c);
    srv.assert_healthy();
}

#[test]
fn corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 7, "corpus has {} files", files.len());
    let srv = Running::start(ModelKind::Hibmc);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("corpus file");
        let bytes = hex(&text);
        let mut c = srv.connect();
        c.send(&bytes);
        c.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        // Every reply is well framed (Raw::recv checks type, size, errno) up to EOF.
        let mut replies = 0;
        while c.recv().is_some() {
            replies += 1;
        }
        assert!(replies > 0, "{}: no reply", file.display());
        srv.assert_healthy();
    }
}

fn region_write(c: &mut Raw, id: u16, region: u32, offset: u64, data: &[u8]) {
    let (h, _) = c.call(
        id,
        cmd::REGION_WRITE,
        0,
        &wire::region_access(offset, region, data.len() as u32, data),
    );
    assert_eq!(h.flags, flags::TYPE_REPLY, "{h:?}");
}

/// Busy polling must not starve the loop's timers: with the longest window and a client that
/// never pauses, vblank MSIs still go out at about the frame rate (the burst is capped, then the
/// loop goes back to epoll), and every reply is still right.
#[test]
fn busy_poll_under_a_request_stream_keeps_vblank_running() {
    let srv = Running::start(ModelKind::Hibmc);
    let mut c = srv.connect();
    c.handshake();
    // MSI on in config space (the capability list from the pointer at 0x34).
    let mut cap = config_read(&mut c, 2, 0x34, 1)[0] as u64;
    while config_read(&mut c, 3, cap, 1)[0] != 0x05 {
        cap = config_read(&mut c, 4, cap + 1, 1)[0] as u64;
        assert_ne!(cap, 0, "no MSI capability");
    }
    region_write(&mut c, 5, 7, cap + 4, &0xfee0_0000u32.to_le_bytes());
    let ctl = u16::from_le_bytes(config_read(&mut c, 6, cap + 2, 2)[..2].try_into().unwrap());
    region_write(&mut c, 7, 7, cap + 2, &(ctl | 1).to_le_bytes());
    // SAFETY: eventfd returns a new fd we own.
    let efd = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_NONBLOCK)) };
    c.send_with_fds(
        &wire::request(
            8,
            cmd::DEVICE_SET_IRQS,
            0,
            &set_irqs(irq_set::DATA_EVENTFD | irq_set::ACTION_TRIGGER, 0, 1),
        ),
        &[efd.as_raw_fd()],
    );
    assert_eq!(c.expect_reply(8).0.flags, flags::TYPE_REPLY);
    let int_en = device::hibmc::RAW_INTERRUPT_EN;
    region_write(
        &mut c,
        9,
        HIBMC_MMIO,
        int_en,
        &device::hibmc::INT_VBLANK.to_le_bytes(),
    );

    srv.card.set_busy_poll(device::MAX_BUSY_POLL);
    assert_eq!(srv.card.busy_poll(), device::MAX_BUSY_POLL);
    let t = Instant::now();
    let mut id = 10u16;
    while t.elapsed() < Duration::from_millis(500) {
        id = id.wrapping_add(1).max(10);
        let (h, body) = c.call(
            id,
            cmd::REGION_READ,
            0,
            &wire::region_access(int_en, HIBMC_MMIO, 4, &[]),
        );
        assert_eq!(h.flags, flags::TYPE_REPLY, "{h:?}");
        assert_eq!(body[32..36], device::hibmc::INT_VBLANK.to_le_bytes());
    }
    let mut count = [0u8; 8];
    // SAFETY: reads 8 bytes into a live buffer from the eventfd we own.
    let n = unsafe { libc::read(efd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    let vblanks = if n == 8 { u64::from_ne_bytes(count) } else { 0 };
    // 60 Hz for 0.5 s is 30; a loaded machine skips some, a starved loop sends none.
    assert!(
        vblanks >= 10,
        "{vblanks} vblank MSIs in 0.5 s of busy polling"
    );
    srv.card.set_busy_poll(Duration::ZERO);
    drop(c);
    srv.assert_healthy();
}
