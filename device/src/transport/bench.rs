//! `vanish bench`'s transport figures: a trapped 4-byte BAR read through the real server
//! against the floor a bare socket ping-pong of the same sizes sets.
//!
//! (a) is what QEMU does for every trapped register read: one REGION_READ request (32 bytes)
//! and its 36-byte reply over a unix stream socket, through [`Server::serve_connection`]'s
//! event loop and the hibmc model. (b) is a thread doing one blocking `recv` of 32 bytes and
//! one `send` of 36 with libc, nothing else: the C-level floor for the same exchange. Both run
//! in the same process, interleaved in blocks so host noise hits them alike.
//!
//! All three threads (client, server, echo) are pinned to the client's CPU. Left to the
//! scheduler, a wake-up lands on the same CPU (a few us) or on an idle one (an IPI and a
//! wake from idle: 30-70 us inside a VM, seen on this project's CI machines), so either side's
//! median swung tenfold between runs and the ratio said nothing about the server. On one CPU
//! both sides pay the same two context switches per round trip and the difference is the
//! work the server does.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::wire::{self, cmd};
use crate::server::Card;
use crate::{build_model, hibmc, CardSpec, ModelKind, Monitor, Server, ServerError};

/// Per-iteration round-trip times, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Spread {
    pub min_ns: u64,
    pub median_ns: u64,
    pub max_ns: u64,
}

impl Spread {
    fn of(mut ns: Vec<u64>) -> Spread {
        ns.sort_unstable();
        Spread {
            min_ns: ns.first().copied().unwrap_or(0),
            median_ns: ns.get(ns.len() / 2).copied().unwrap_or(0),
            max_ns: ns.last().copied().unwrap_or(0),
        }
    }
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct BenchResult {
    pub iterations: usize,
    /// (a) REGION_READ of a 4-byte BAR register through the real server.
    pub trapped_read: Spread,
    /// (b) bare recv/send ping-pong of the same sizes.
    pub echo_floor: Spread,
    /// median (a) / median (b).
    pub ratio: f64,
    /// min (a) / min (b): what is left of the ratio when the host is busy (the medians turn
    /// bimodal once other processes compete for the two threads' CPUs).
    pub ratio_min: f64,
}

const REQUEST: usize = 32;
const REPLY: usize = 36;

fn io_error() -> ServerError {
    ServerError::Io(std::io::Error::last_os_error())
}

fn send_all(fd: i32, buf: &[u8]) -> Result<(), ServerError> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: sends from a live slice.
        let n = unsafe { libc::send(fd, buf[off..].as_ptr().cast(), buf.len() - off, 0) };
        if n <= 0 {
            return Err(io_error());
        }
        off += n as usize;
    }
    Ok(())
}

fn recv_exact(fd: i32, buf: &mut [u8]) -> Result<(), ServerError> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: receives into a live slice.
        let n = unsafe { libc::recv(fd, buf[off..].as_mut_ptr().cast(), buf.len() - off, 0) };
        if n <= 0 {
            return Err(io_error());
        }
        off += n as usize;
    }
    Ok(())
}

/// Pins the calling thread to `cpu` (best effort: a failure leaves it unpinned, which only
/// makes the figure noisier).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity(0, ...) only
    // touch the set and this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The calling thread's CPU affinity before [`pin_to`], put back when this is dropped
/// (on every return path: the caller's thread must not stay pinned).
struct Unpin(Option<libc::cpu_set_t>);

impl Unpin {
    fn save() -> Unpin {
        // SAFETY: as above; sched_getaffinity fills the set.
        Unpin(unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
                .then_some(set)
        })
    }
}

impl Drop for Unpin {
    fn drop(&mut self) {
        if let Some(set) = &self.0 {
            // SAFETY: puts back the set read in save().
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
        }
    }
}

/// One timed round trip: send `request`, wait for the whole reply.
fn round_trip(fd: i32, request: &[u8], reply: &mut [u8]) -> Result<u64, ServerError> {
    let t = Instant::now();
    send_all(fd, request)?;
    recv_exact(fd, reply)?;
    Ok(t.elapsed().as_nanos() as u64)
}

/// Measures (a) and (b), `iterations` each. Errors only if sockets or the model cannot be
/// set up or the server misbehaves.
pub fn trapped_read_vs_echo(iterations: usize) -> Result<BenchResult, ServerError> {
    let spec = CardSpec::new(ModelKind::Hibmc, Some(1 << 20), Monitor::Default)
        .map_err(|e| ServerError::EventLoop(e.to_string()))?;
    let model = build_model(&spec).map_err(|e| ServerError::EventLoop(e.to_string()))?;
    let card = Card::new(model);
    let stop = Arc::new(AtomicBool::new(false));
    let _unpin = Unpin::save();
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0);
    pin_to(cpu);

    let (server_client, server_end) = UnixStream::pair()?;
    let server = {
        let card = Arc::clone(&card);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            pin_to(cpu);
            Server::serve_connection(&card, server_end, &stop)
        })
    };
    let (echo_client, echo_end) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        pin_to(cpu);
        let fd = echo_end.as_raw_fd();
        let mut req = [0u8; REQUEST];
        let reply = [0u8; REPLY];
        while recv_exact(fd, &mut req).is_ok() && send_all(fd, &reply).is_ok() {}
    });

    let sfd = server_client.as_raw_fd();
    let version = wire::request(0, cmd::VERSION, 0, b"\0\0\0\0{}\0");
    send_all(sfd, &version)?;
    let mut hdr = [0u8; 16];
    recv_exact(sfd, &mut hdr)?;
    let h = wire::Header::parse(&hdr).unwrap_or_default();
    let mut rest = vec![0u8; (h.size as usize).saturating_sub(16).min(4096)];
    recv_exact(sfd, &mut rest)?;
    if h.flags & wire::flags::ERROR != 0 {
        return Err(ServerError::EventLoop("VERSION refused".into()));
    }

    let read = wire::request(
        1,
        cmd::REGION_READ,
        0,
        &wire::region_access(0, hibmc::MMIO_BAR as u32, 4, &[]),
    );
    debug_assert_eq!(read.len(), REQUEST);
    let mut reply = [0u8; REPLY];
    let efd = echo_client.as_raw_fd();
    let (mut a, mut b) = (
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
    );
    // Warm-up, then blocks of 256 alternating between (a) and (b).
    for _ in 0..256.min(iterations) {
        round_trip(sfd, &read, &mut reply)?;
        round_trip(efd, &read, &mut reply)?;
    }
    while a.len() < iterations {
        let block = 256.min(iterations - a.len());
        for _ in 0..block {
            a.push(round_trip(sfd, &read, &mut reply)?);
        }
        if reply[4..8] != (REPLY as u32).to_le_bytes() || reply[8] & 0x20 != 0 {
            return Err(ServerError::EventLoop("REGION_READ failed".into()));
        }
        for _ in 0..block {
            b.push(round_trip(efd, &read, &mut reply)?);
        }
    }
    drop(server_client);
    drop(echo_client);
    let _ = server.join();
    let _ = echo.join();
    let (trapped_read, echo_floor) = (Spread::of(a), Spread::of(b));
    Ok(BenchResult {
        iterations,
        trapped_read,
        echo_floor,
        ratio: trapped_read.median_ns as f64 / echo_floor.median_ns.max(1) as f64,
        ratio_min: trapped_read.min_ns as f64 / echo_floor.min_ns.max(1) as f64,
    })
}
