//! Deterministic, seeded fuzzing of the real server over a socketpair: >= 1,000,000 mutated
//! messages (the classes of the known failures plus random config/BAR/VRAM accesses), checking
//! after every batch that the server is alive, in step (every reply carries the id it owes)
//! and bounded in memory. Prints its figures; fails on any death, desync or a large RSS.

mod common;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use device::transport::wire::{self, cmd, flags, irq_set, Header};
use device::{Card, ModelKind, Server};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MESSAGES: u64 = 1_000_000;
const BATCH: usize = 2_000;
const SEED: u64 = 0x7661_6e69_7368;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One generated message: bytes, fds to send with it, the reply it is owed (if any).
struct Msg {
    bytes: Vec<u8>,
    fds: Vec<RawFd>,
    expect: Option<Expect>,
}

#[derive(Clone, Copy)]
struct Expect {
    id: u16,
    /// A health probe: config read of the vendor ID, which must come back right.
    vendor: Option<u16>,
}

struct Gen {
    rng: Rng,
    id: u16,
    mmio: u32,
    mmio_size: u64,
    vram_size: u64,
    eventfds: Vec<EventFd>,
}

impl Gen {
    fn region_msg(&mut self, command: u16) -> (u16, Vec<u8>) {
        let r = &mut self.rng;
        let (region, offset, count) = match r.below(10) {
            0..=4 => {
                let odd = r.below(300) as u32;
                (7, r.below(4200), r.pick(&[1, 2, 4, 8, 1, 2, 4, odd]))
            }
            5..=7 => (
                self.mmio,
                r.below(self.mmio_size + 16) & !3,
                r.pick(&[1, 2, 4, 8]),
            ),
            8 => (0, r.below(self.vram_size + 64), r.below(64) as u32),
            _ => (
                r.below(12) as u32,
                r.next() >> r.below(64),
                r.below(16) as u32,
            ),
        };
        let data = if command == cmd::REGION_WRITE {
            r.bytes(count as usize)
        } else {
            Vec::new()
        };
        (command, wire::region_access(offset, region, count, &data))
    }

    fn set_irqs(&mut self) -> (Vec<u8>, Vec<RawFd>) {
        let r = &mut self.rng;
        let data_type = r.pick(&[
            irq_set::DATA_NONE,
            irq_set::DATA_BOOL,
            irq_set::DATA_EVENTFD,
            3,
            0,
        ]);
        let action = r.pick(&[
            irq_set::ACTION_TRIGGER,
            irq_set::ACTION_MASK,
            irq_set::ACTION_UNMASK,
            0,
        ]);
        let index = r.pick(&[1, 1, 1, 0, 2, 3, 4]);
        let (start, count) = (r.below(3) as u32, r.below(3) as u32);
        let data = if data_type == irq_set::DATA_BOOL {
            let n = (count as usize + r.below(2) as usize) % 4;
            r.bytes(n)
        } else {
            Vec::new()
        };
        let mut p = Vec::new();
        for v in [
            20 + data.len() as u32,
            data_type | action,
            index,
            start,
            count,
        ] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p.extend_from_slice(&data);
        let fds = if data_type == irq_set::DATA_EVENTFD && r.below(2) == 0 {
            let n = (count as usize + r.below(2) as usize).min(self.eventfds.len());
            self.eventfds[..n].iter().map(|e| e.as_raw_fd()).collect()
        } else {
            Vec::new()
        };
        (p, fds)
    }

    fn next(&mut self) -> Msg {
        self.id = self.id.wrapping_add(1);
        let id = self.id;
        let mut fds = Vec::new();
        let (command, mut payload) = match self.rng.below(100) {
            0..=34 => self.region_msg(cmd::REGION_READ),
            35..=54 => self.region_msg(cmd::REGION_WRITE),
            55..=57 => {
                let r = &mut self.rng;
                let mut p = vec![0u8; 32];
                p[0..4].copy_from_slice(&r.pick(&[0u32, 16, 32, 64, 1000]).to_le_bytes());
                p[8..12].copy_from_slice(&(r.below(12) as u32).to_le_bytes());
                match r.below(3) {
                    0 => (cmd::DEVICE_GET_INFO, p[..16].to_vec()),
                    1 => (cmd::DEVICE_GET_REGION_INFO, p),
                    _ => (cmd::DEVICE_GET_IRQ_INFO, p[..16].to_vec()),
                }
            }
            58..=62 => {
                let (p, f) = self.set_irqs();
                fds = f;
                (cmd::DEVICE_SET_IRQS, p)
            }
            63..=64 => {
                let r = &mut self.rng;
                if r.below(2) == 0 {
                    if r.below(2) == 0 {
                        fds = vec![self.eventfds[0].as_raw_fd()];
                    }
                    (cmd::DMA_MAP, r.bytes(32))
                } else {
                    (cmd::DMA_UNMAP, r.bytes(24))
                }
            }
            65..=66 => {
                let n = if self.rng.below(2) == 0 {
                    0
                } else {
                    self.rng.below(16) as usize
                };
                (cmd::DEVICE_RESET, self.rng.bytes(n))
            }
            67..=76 => {
                let r = &mut self.rng;
                let any = r.next() as u16;
                let c = r.pick(&[
                    0u16, 6, 11, 12, 14, 16, 17, 18, 19, 50, 100, 0x7fff, 0xffff, any,
                ]);
                let n = r.below(256) as usize;
                (c, r.bytes(n))
            }
            77..=79 => {
                let r = &mut self.rng;
                let count = r.pick(&[
                    0x7fff_ffffu32,
                    0xffff_ffe0,
                    wire::MAX_DATA_XFER + 1,
                    u32::MAX,
                ]);
                let c = r.pick(&[cmd::REGION_READ, cmd::REGION_WRITE]);
                let extra = r.below(32) as usize;
                (
                    c,
                    wire::region_access(0, r.below(10) as u32, count, &r.bytes(extra)),
                )
            }
            80..=84 => {
                let r = &mut self.rng;
                let n = r.below(4);
                let mut p = (n + r.below(2)).to_le_bytes().to_vec();
                for _ in 0..n {
                    let count = r.pick(&[1u32, 2, 4, 8, 9]);
                    p.extend_from_slice(&wire::region_access(
                        r.below(0x100),
                        r.pick(&[7, self.mmio]),
                        count,
                        &r.bytes(8),
                    ));
                }
                (cmd::REGION_WRITE_MULTI, p)
            }
            85..=86 => (cmd::VERSION, b"\0\0\0\0{}\0".to_vec()),
            _ => {
                // A valid access with random bytes of its payload flipped.
                let which = if self.rng.below(2) == 0 {
                    cmd::REGION_READ
                } else {
                    cmd::REGION_WRITE
                };
                let (c, mut p) = self.region_msg(which);
                for _ in 0..1 + self.rng.below(3) {
                    let at = self.rng.below(p.len() as u64) as usize;
                    p[at] ^= 1 << self.rng.below(8);
                }
                (c, p)
            }
        };
        // A flipped count can make a read enormous; the server caps it, we only keep frames sane.
        payload.truncate(wire::MAX_MESSAGE as usize - 16);
        let fl = match self.rng.below(100) {
            0..=7 => flags::NO_REPLY,
            8..=9 => self.rng.below(16) as u32 | (self.rng.below(2) as u32) << 4,
            _ => 0,
        };
        let bytes = wire::request(id, command, fl, &payload);
        let h = Header::parse(&bytes).unwrap_or_default();
        Msg {
            bytes,
            fds,
            expect: h.wants_reply().then_some(Expect { id, vendor: None }),
        }
    }

    fn probe(&mut self, vendor: u16) -> Msg {
        self.id = self.id.wrapping_add(1);
        Msg {
            bytes: wire::request(
                self.id,
                cmd::REGION_READ,
                0,
                &wire::region_access(0, 7, 2, &[]),
            ),
            fds: Vec::new(),
            expect: Some(Expect {
                id: self.id,
                vendor: Some(vendor),
            }),
        }
    }
}

#[allow(dead_code)] // the strings are read through Debug
#[derive(Debug)]
enum Failure {
    Death(String),
    Desync(String),
}

struct Session {
    stream: UnixStream,
    thread: std::thread::JoinHandle<Result<(), device::ServerError>>,
}

fn start_session(card: &Arc<Card>, stop: &Arc<AtomicBool>) -> Session {
    let (client, server) = UnixStream::pair().expect("socketpair");
    let (card, stop) = (Arc::clone(card), Arc::clone(stop));
    let thread = std::thread::spawn(move || Server::serve_connection(&card, server, &stop));
    client.set_nonblocking(true).expect("nonblocking");
    Session {
        stream: client,
        thread,
    }
}

fn send_some(fd: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    if fds.is_empty() {
        // SAFETY: sends from a live slice.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
        return if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        };
    }
    // SAFETY: borrows the fd for one call without taking ownership.
    let stream = std::mem::ManuallyDrop::new(unsafe {
        <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    stream
        .send_with_fds(&[data], fds)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Sends `msgs` (in random-sized chunks, so headers split across writes) while reading and
/// checking replies, until every owed reply has come.
fn run_batch(
    s: &Session,
    msgs: Vec<Msg>,
    rng: &mut Rng,
    rbuf: &mut Vec<u8>,
) -> Result<(), Failure> {
    let fd = s.stream.as_raw_fd();
    let mut expected: VecDeque<Expect> = msgs.iter().filter_map(|m| m.expect).collect();
    // Segments: runs of fd-less messages merged; a message with fds is its own segment.
    let mut segs: VecDeque<(Vec<u8>, Vec<RawFd>)> = VecDeque::new();
    for m in msgs {
        match segs.back_mut() {
            Some((b, f)) if f.is_empty() && m.fds.is_empty() => b.extend_from_slice(&m.bytes),
            _ => segs.push_back((m.bytes, m.fds)),
        }
    }
    let mut off = 0usize;
    rbuf.clear();
    while !segs.is_empty() || !expected.is_empty() {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        if !segs.is_empty() {
            pfd.events |= libc::POLLOUT;
        }
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        if n == 0 {
            return Err(Failure::Death(format!(
                "no progress for 5 s, {} replies owed",
                expected.len()
            )));
        }
        if pfd.revents & libc::POLLOUT != 0 {
            if let Some((bytes, fds)) = segs.front_mut() {
                let max = if rng.below(8) == 0 { 24 } else { 65536 };
                let chunk = (1 + rng.below(max) as usize).min(bytes.len() - off);
                match send_some(fd, &bytes[off..off + chunk], fds) {
                    Ok(n) => {
                        off += n;
                        fds.clear();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(Failure::Death(format!("send: {e}"))),
                }
                if off == bytes.len() {
                    segs.pop_front();
                    off = 0;
                }
            }
        }
        if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            let at = rbuf.len();
            rbuf.resize(at + 65536, 0);
            // SAFETY: receives into the slice just reserved; attached fds are discarded.
            let n = unsafe {
                libc::recv(
                    fd,
                    rbuf[at..].as_mut_ptr().cast(),
                    65536,
                    libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                return Err(Failure::Death("server closed the connection".into()));
            }
            rbuf.truncate(at + n.max(0) as usize);
            let mut pos = 0;
            while let Some(h) = Header::parse(&rbuf[pos..]) {
                if !h.size_is_sane() || h.flags & flags::TYPE_MASK != flags::TYPE_REPLY {
                    return Err(Failure::Desync(format!("bad reply header {h:?}")));
                }
                if rbuf.len() - pos < h.size as usize {
                    break;
                }
                let Some(e) = expected.pop_front() else {
                    return Err(Failure::Desync(format!("unowed reply {h:?}")));
                };
                if h.id != e.id {
                    return Err(Failure::Desync(format!(
                        "reply id {} where {} was owed",
                        h.id, e.id
                    )));
                }
                if h.flags & flags::ERROR != 0 && (h.error == 0 || h.size != 16) {
                    return Err(Failure::Desync(format!("bad error reply {h:?}")));
                }
                if let Some(v) = e.vendor {
                    let got = rbuf
                        .get(pos + 32..pos + 34)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]));
                    if got != Some(v) {
                        return Err(Failure::Death(format!("health probe read {got:?}")));
                    }
                }
                pos += h.size as usize;
            }
            rbuf.drain(..pos);
        }
    }
    Ok(())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn fuzz_the_real_server() {
    let card = common::card(ModelKind::Hibmc);
    let vendor = ModelKind::Hibmc.pci_id().0;
    let stop = Arc::new(AtomicBool::new(false));
    let (mmio_size, vram_size) = {
        let m = card.model();
        (
            m.config()
                .bar(device::hibmc::MMIO_BAR)
                .map_or(0, |b| b.size),
            m.vram().size(),
        )
    };
    let mut gen = Gen {
        rng: Rng(SEED),
        id: 0,
        mmio: device::hibmc::MMIO_BAR as u32,
        mmio_size,
        vram_size,
        eventfds: (0..4)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect(),
    };
    let mut chunk_rng = Rng(SEED ^ 1);
    let fds_before = open_fds();
    let (mut sent, mut deaths, mut desyncs, mut drops_ok, mut batches) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut first_failure = None;
    let mut rbuf = Vec::new();
    let t = Instant::now();
    let mut session: Option<Session> = None;
    while sent < MESSAGES {
        session.get_or_insert_with(|| start_session(&card, &stop));
        let mut msgs = Vec::with_capacity(BATCH + 2);
        // Each session starts with VERSION (the handshake is part of the stream).
        msgs.push(Msg {
            bytes: wire::request(
                0,
                cmd::VERSION,
                0,
                format!("\0\0\0\0{}\0", common::QEMU_CAPS).as_bytes(),
            ),
            fds: Vec::new(),
            expect: Some(Expect {
                id: 0,
                vendor: None,
            }),
        });
        for _ in 0..BATCH {
            msgs.push(gen.next());
        }
        msgs.push(gen.probe(vendor));
        sent += msgs.len() as u64;
        let s = session.as_ref().expect("session");
        let result = run_batch(s, msgs, &mut chunk_rng, &mut rbuf);
        batches += 1;
        // Every batch is its own session: a re-plug each time, like QEMU's device_add.
        let s = session.take().expect("session");
        drop(s.stream);
        let joined = s.thread.join();
        match (result, joined) {
            (Ok(()), Ok(Ok(()))) => {}
            (r, j) => {
                match &r {
                    Err(Failure::Desync(_)) => desyncs += 1,
                    _ => deaths += 1,
                }
                first_failure.get_or_insert(format!("batch {batches}: {r:?} / server {j:?}"));
            }
        }
        // Now and then: a header whose size cannot be framed must drop just that client.
        if batches % 25 == 0 {
            let s = start_session(&card, &stop);
            let size = gen
                .rng
                .pick(&[0u32, 1, 15, wire::MAX_MESSAGE + 1, u32::MAX]);
            let bad = Header {
                id: 9,
                command: cmd::REGION_WRITE,
                size,
                flags: 0,
                error: 0,
            }
            .encode();
            let mut m = wire::request(0, cmd::VERSION, 0, b"\0\0\0\0{}\0");
            m.extend_from_slice(&bad);
            s.stream.set_nonblocking(false).expect("blocking");
            s.stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut raw = common::Raw::from_stream(s.stream);
            raw.send(&m);
            let ok = raw.recv().is_some_and(|(h, _)| h.id == 0) && raw.recv().is_none();
            if ok {
                drops_ok += 1
            } else {
                desyncs += 1
            }
            drop(raw);
            let _ = s.thread.join();
            sent += 2;
        }
        if t.elapsed() > Duration::from_secs(150) {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let peak_mib = common::peak_rss_kib() as f64 / 1024.0;
    let fds_after = open_fds();
    let stats = card.stats();
    println!(
        "fuzz: {sent} messages in {batches} sessions, {secs:.1} s ({:.0} msg/s), deaths {deaths}, desyncs {desyncs}, \
         oversized-size drops {drops_ok}, peak RSS {peak_mib:.1} MiB, fds {fds_before} -> {fds_after}, \
         rejected {}, msi sent/dropped {}/{}",
        sent as f64 / secs,
        stats.rejected_requests,
        stats.msi_sent,
        stats.msi_dropped
    );
    if let Some(f) = &first_failure {
        println!("fuzz: first failure: {f}");
    }
    assert_eq!((deaths, desyncs), (0, 0), "{first_failure:?}");
    assert!(sent >= MESSAGES, "only {sent} messages in {secs:.0} s");
    assert!(secs < 120.0, "{secs:.0} s");
    assert!(peak_mib < 64.0, "peak RSS {peak_mib:.1} MiB");
    assert!(
        fds_after <= fds_before + 8,
        "fds leaked: {fds_before} -> {fds_after}"
    );
    assert!(stats.rejected_requests > 0);
}
