//! One client connection: [`Session`] is the protocol state machine over a [`Card`] (pure
//! message in, reply bytes out), [`Connection`] adds the socket I/O around it.
//!
//! Framing rules, each for a known failure of the crate server this replaces:
//! - a message is handled only once all `size` bytes declared by its header are buffered, so a
//!   rejected message's payload is always consumed with it and the stream stays in step;
//! - a header whose size is below 16 or above [`wire::MAX_MESSAGE`] drops the client: nothing
//!   past it can be framed;
//! - counts are checked against [`wire::MAX_DATA_XFER`] before any buffer is sized from them;
//! - commands other than VERSION are refused until VERSION succeeded;
//! - received fds are owned (`OwnedFd`), bounded in number, and closed when no message uses them.

use std::collections::VecDeque;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{debug, info, warn};

use super::wire::{self, irq_set, Header, RegionInfo, Reject, Request, HEADER_SIZE};
use crate::server::Card;

/// Regions QEMU is told about: BAR0-5, ROM, config, VGA.
pub const NUM_REGIONS: u32 = 9;
pub const CONFIG_REGION: u32 = 7;
/// IRQ indexes: INTx, MSI, MSI-X. ERR (3) is left out so QEMU does not arm an error notifier.
pub const NUM_IRQS: u32 = 3;
const MSI_INDEX: u32 = 1;
const VFIO_DEVICE_FLAGS_RESET: u32 = 1;
const VFIO_DEVICE_FLAGS_PCI: u32 = 2;
const IRQ_INFO_EVENTFD: u32 = 1;
const IRQ_INFO_NORESIZE: u32 = 8;
const REGION_READ_WRITE: u32 = 1 | 2;
const REGION_MMAP: u32 = 4;

/// The protocol state of one client over a card.
///
/// Invariant: `negotiated` is false until a VERSION succeeded; until then every other command
/// gets an error reply and touches nothing.
pub struct Session {
    card: Arc<Card>,
    negotiated: bool,
    regions: [RegionInfo; NUM_REGIONS as usize],
    vram_region: u32,
    vram_fd: RawFd,
}

impl Session {
    pub fn new(card: Arc<Card>) -> Session {
        let (regions, vram_region, vram_fd) = {
            let model = card.model();
            let vram_bar = card.info().vram_bar;
            let mut regions = [RegionInfo::default(); NUM_REGIONS as usize];
            for (index, info) in regions.iter_mut().enumerate() {
                if index == CONFIG_REGION as usize {
                    info.flags = REGION_READ_WRITE;
                    info.size = pci_config::CONFIG_SPACE_SIZE as u64;
                } else if let Some(bar) = model.config().bar(index) {
                    info.flags = REGION_READ_WRITE;
                    info.size = bar.size;
                    if index == vram_bar {
                        // One sparse area covering the whole BAR, as the crate server sent:
                        // the layout QEMU 11.1.3 was verified to mmap.
                        info.flags |= REGION_MMAP;
                        info.sparse = Some((0, bar.size));
                    }
                }
            }
            (regions, vram_bar as u32, model.vram().raw_fd())
        };
        Session {
            card,
            negotiated: false,
            regions,
            vram_region,
            vram_fd,
        }
    }

    /// Handles one whole message (`payload` is `message[16..size]`), appending its reply (if
    /// it gets one) to `out`. Returns the fd to attach to that reply. `fds` arrived with the
    /// message; whatever is not kept is closed on return.
    pub fn handle(
        &mut self,
        header: &Header,
        payload: &[u8],
        fds: Vec<OwnedFd>,
        out: &mut Vec<u8>,
    ) -> Option<RawFd> {
        if !header.is_command() {
            // The client sends no replies to us (we issue no requests): drop it silently.
            debug!("vfio-user: ignoring non-command message {header:?}");
            return None;
        }
        let mark = out.len();
        let at = wire::begin_reply(out, header);
        let result = match wire::parse_request(header.command, payload) {
            Ok(request) if self.negotiated || matches!(request, Request::Version { .. }) => {
                self.execute(request, fds, out)
            }
            Ok(_) => Err(Reject::Invalid),
            Err(reject) => Err(reject),
        };
        match result {
            Ok(fd) if header.wants_reply() => {
                wire::finish_reply(out, at);
                fd
            }
            Ok(_) => {
                out.truncate(mark);
                None
            }
            Err(reject) => {
                self.card.counters.rejected.fetch_add(1, Ordering::Relaxed);
                debug!(
                    "vfio-user: command {} (id {}) rejected: {reject:?}",
                    header.command, header.id
                );
                out.truncate(mark);
                if header.wants_reply() {
                    wire::error_reply(out, header, reject.errno());
                }
                None
            }
        }
    }

    fn execute(
        &mut self,
        request: Request<'_>,
        fds: Vec<OwnedFd>,
        out: &mut Vec<u8>,
    ) -> Result<Option<RawFd>, Reject> {
        let card = &*self.card;
        match request {
            Request::Version { major, caps, .. } => {
                if self.negotiated || major != 0 {
                    return Err(Reject::Invalid);
                }
                if let Some(caps) = caps {
                    // The spec's version data is a JSON object; its values do not change what
                    // we send (one fd at most, transfers within QEMU's 1 MiB default).
                    match serde_json::from_str::<serde_json::Value>(caps) {
                        Ok(serde_json::Value::Object(_)) => {}
                        _ => return Err(Reject::Invalid),
                    }
                }
                self.negotiated = true;
                wire::encode_version(out);
            }
            Request::DmaMap { .. } | Request::DmaUnmap { .. } => {
                // Display cards do no DMA: maps are accepted and their fds (guest RAM) closed.
                if let Request::DmaUnmap {
                    argsz,
                    flags,
                    address,
                    size,
                } = request
                {
                    wire::encode_dma_unmap(out, argsz, flags, address, size);
                }
            }
            Request::GetInfo { argsz } => {
                if argsz < 16 {
                    return Err(Reject::Invalid);
                }
                wire::encode_device_info(
                    out,
                    VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
                    NUM_REGIONS,
                    NUM_IRQS,
                );
            }
            Request::GetRegionInfo { argsz, index } => {
                let info = self.regions.get(index as usize).ok_or(Reject::Invalid)?;
                if argsz < 32 {
                    return Err(Reject::Invalid);
                }
                wire::encode_region_info(out, index, info, argsz);
                if index == self.vram_region {
                    return Ok(Some(self.vram_fd));
                }
            }
            Request::GetIrqInfo { argsz, index } => {
                if argsz < 16 || index >= NUM_IRQS {
                    return Err(Reject::Invalid);
                }
                // INTx has no vectors (pin 0: under TCG the first INTx would disable the BAR
                // mmaps for good); no MSI-X (QEMU's MSI-X unplug teardown is buggy).
                let (flags, count) = match index {
                    MSI_INDEX => (
                        IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE,
                        card.info().msi_vectors,
                    ),
                    _ => (IRQ_INFO_EVENTFD, 0),
                };
                wire::encode_irq_info(out, flags, index, count);
            }
            Request::SetIrqs {
                flags,
                index,
                start,
                count,
                data,
            } => self.set_irqs(flags, index, start, count, data, fds)?,
            Request::RegionRead {
                offset,
                region,
                count,
            } => {
                self.check_range(region, offset, count as usize)?;
                wire::encode_region_access(out, offset, region, count);
                let from = out.len();
                // `count` is at most MAX_DATA_XFER (checked by the parser).
                out.resize(from + count as usize, 0);
                self.read(region, offset, &mut out[from..]);
            }
            Request::RegionWrite {
                offset,
                region,
                data,
            } => {
                self.check_range(region, offset, data.len())?;
                self.write(region, offset, data);
                // The spec's reply: {offset, region, count}, no data. QEMU takes 16 or 32 bytes,
                // the rust-vmm client reads exactly 32.
                wire::encode_region_access(out, offset, region, data.len() as u32);
            }
            Request::Reset => {
                card.counters.resets.fetch_add(1, Ordering::Relaxed);
                let mut model = card.model();
                model.reset();
                card.refresh_vblank(&**model);
            }
            Request::WriteMulti { writes } => {
                let mut done = 0u64;
                for (offset, region, data) in wire::write_multi_entries(writes) {
                    if self.check_range(region, offset, data.len()).is_ok() {
                        self.write(region, offset, data);
                        done += 1;
                    }
                }
                out.extend_from_slice(&done.to_le_bytes());
            }
        }
        Ok(None)
    }

    fn check_range(&self, region: u32, offset: u64, count: usize) -> Result<(), Reject> {
        let info = self.regions.get(region as usize).ok_or(Reject::Invalid)?;
        match offset.checked_add(count as u64) {
            Some(end) if info.size > 0 && end <= info.size => Ok(()),
            _ => Err(Reject::Invalid),
        }
    }

    fn read(&self, region: u32, offset: u64, data: &mut [u8]) {
        let card = &*self.card;
        if card.is_dead() {
            // A card that left the bus: the root complex completes reads with all-ones.
            data.fill(0xff);
            return;
        }
        let mut model = card.model();
        if region == CONFIG_REGION {
            card.counters.config_reads.fetch_add(1, Ordering::Relaxed);
            model.config().read(offset, data);
        } else if region == self.vram_region {
            model.vram().read(offset, data);
        } else {
            card.counters.bar_reads.fetch_add(1, Ordering::Relaxed);
            model.bar_read(region as usize, offset, data);
        }
    }

    fn write(&self, region: u32, offset: u64, data: &[u8]) {
        let card = &*self.card;
        if card.is_dead() {
            return;
        }
        let mut model = card.model();
        if region == CONFIG_REGION {
            card.counters.config_writes.fetch_add(1, Ordering::Relaxed);
            model.config_mut().write(offset, data);
        } else if region == self.vram_region {
            model.vram().write(offset, data);
            return;
        } else {
            card.counters.bar_writes.fetch_add(1, Ordering::Relaxed);
            model.bar_write(region as usize, offset, data);
        }
        // A register write may have switched vblank interrupts on or off.
        card.refresh_vblank(&**model);
    }

    fn set_irqs(
        &self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), Reject> {
        let card = &*self.card;
        if index >= NUM_IRQS {
            return Err(Reject::Invalid);
        }
        let data_type = flags & irq_set::DATA_MASK;
        if data_type != irq_set::DATA_EVENTFD && !fds.is_empty() {
            return Err(Reject::Invalid);
        }
        let vectors = if index == MSI_INDEX {
            card.info().msi_vectors
        } else {
            0
        };
        let disable_all = data_type == irq_set::DATA_NONE && count == 0;
        let in_range = start.checked_add(count).is_some_and(|end| end <= vectors);
        if !in_range && !disable_all {
            // INTx and MSI-X have no vectors, so only "disable" reaches them (QEMU sends it at
            // every reset).
            return Err(Reject::Invalid);
        }
        if flags & irq_set::ACTION_TRIGGER == 0 {
            // MSI without per-vector masks: MASK/UNMASK are accepted and ignored.
            return Ok(());
        }
        match data_type {
            irq_set::DATA_EVENTFD => {
                if !fds.is_empty() && fds.len() != count as usize {
                    return Err(Reject::Invalid);
                }
                let mut msi = card.msi_lock();
                msi.resize_with(vectors as usize, || None);
                let mut fds = fds.into_iter();
                for vector in start..start + count {
                    // No fds at all de-assigns the range (the spec, and QEMU's -1 entries).
                    msi[vector as usize] = fds.next().inspect(|fd| set_nonblocking(fd.as_raw_fd()));
                }
                info!(
                    "MSI: {} of {vectors} vectors armed",
                    msi.iter().filter(|f| f.is_some()).count()
                );
            }
            irq_set::DATA_NONE if disable_all => {
                if index == MSI_INDEX {
                    card.msi_lock().clear();
                    info!("MSI: disarmed");
                }
            }
            irq_set::DATA_NONE => (start..start + count).for_each(|v| {
                card.signal(v);
            }),
            _ => {
                // DATA_BOOL: trigger the vectors whose byte is non-zero.
                for (v, &b) in (start..).zip(data) {
                    if b != 0 {
                        card.signal(v);
                    }
                }
            }
        }
        Ok(())
    }
}

/// An MSI eventfd must never block the loop (a full counter, or a pipe posing as an eventfd).
/// O_NONBLOCK is set on the open file description QEMU shares; QEMU's own event notifiers
/// are non-blocking already.
fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own; failure only leaves the flag unset.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

/// Fds from one recvmsg, with the stream byte range `[lo, hi)` that recvmsg returned. The
/// kernel ends a read right after the data an fd set came with, so the fds belong to the last
/// message that starts inside `[lo, hi)`.
struct FdBatch {
    lo: u64,
    hi: u64,
    fds: Vec<OwnedFd>,
}

/// At most this many received fds wait for their message; more are closed at once.
const MAX_PENDING_FDS: usize = 4 * wire::MAX_MSG_FDS;
/// Replies are flushed once this much is queued, even mid-batch.
const TX_FLUSH: usize = 64 << 10;

/// Why a connection ended.
#[derive(Debug)]
pub enum Closed {
    Eof,
    /// The header declared a size the framing cannot follow.
    Framing(Header),
    Io(io::Error),
}

/// A client connection: the socket, a receive buffer holding at most one whole message beyond
/// what was already handled, and the replies not yet sent.
///
/// Invariants: `rx[start..end]` is received and unhandled, `stream_pos` is the stream offset of
/// `rx[start]`; `rx.len()` is `MAX_MESSAGE` rounded up, so any sane message fits once
/// compacted; while a send is `blocked` nothing more is received or handled (backpressure: a
/// client that does not read its replies stops being read), so `tx` holds at most the replies
/// of one receive; at most one reply in `tx` carries an fd (`tx_fd`), sent with its first byte.
pub struct Connection {
    stream: UnixStream,
    session: Session,
    rx: Vec<u8>,
    start: usize,
    end: usize,
    stream_pos: u64,
    batches: VecDeque<FdBatch>,
    pending_fds: usize,
    tx: Vec<u8>,
    tx_off: usize,
    /// An fd to send with the byte at this offset of `tx`.
    tx_fd: Option<(usize, RawFd)>,
    /// The last send hit EAGAIN: wait for EPOLLOUT before handling more.
    blocked: bool,
}

const RX_SIZE: usize = wire::MAX_MESSAGE as usize + 4096;

impl Connection {
    pub fn new(stream: UnixStream, card: Arc<Card>) -> io::Result<Connection> {
        stream.set_nonblocking(true)?;
        Ok(Connection {
            stream,
            session: Session::new(card),
            // Zeroed by calloc: pages are touched only as data arrives.
            rx: vec![0; RX_SIZE],
            start: 0,
            end: 0,
            stream_pos: 0,
            batches: VecDeque::new(),
            pending_fds: 0,
            tx: Vec::with_capacity(4096),
            tx_off: 0,
            tx_fd: None,
            blocked: false,
        })
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Replies are waiting for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        self.blocked
    }

    /// The socket is readable: receive and handle what is there.
    pub fn on_readable(&mut self) -> Result<(), Closed> {
        if self.wants_write() {
            return Ok(());
        }
        loop {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.rx.len() - self.end < 64 << 10 {
                self.compact();
            }
            let space = self.rx.len() - self.end;
            let n = match self.recv() {
                Ok(0) => return Err(Closed::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Closed::Io(e)),
            };
            self.handle_buffered()?;
            // A short read drained the socket: back to epoll (level-triggered) rather than
            // paying a recvmsg that returns EAGAIN on every trapped access.
            if n < space || self.wants_write() {
                return Ok(());
            }
        }
    }

    /// One non-blocking receive for the busy poll: `Ok(true)` when bytes came (and every
    /// whole message among them was handled), `Ok(false)` when the socket had nothing.
    pub fn poll_once(&mut self) -> Result<bool, Closed> {
        if self.wants_write() {
            return Ok(false);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.rx.len() - self.end < 64 << 10 {
            self.compact();
        }
        match self.recv() {
            Ok(0) => Err(Closed::Eof),
            Ok(_) => self.handle_buffered().map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(Closed::Io(e)),
        }
    }

    /// The socket is writable again: send what is queued, then handle what was buffered.
    pub fn on_writable(&mut self) -> Result<(), Closed> {
        self.flush()?;
        if !self.wants_write() {
            self.handle_buffered()?;
        }
        Ok(())
    }

    fn compact(&mut self) {
        self.rx.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// One recvmsg into the free part of `rx`, keeping the fds it brought.
    fn recv(&mut self) -> io::Result<usize> {
        const CMSG_SPACE: usize = 128; // >= CMSG_SPACE(MAX_MSG_FDS * 4) = 80
        let mut cmsg = [0u64; CMSG_SPACE / 8];
        let mut iov = libc::iovec {
            iov_base: self.rx[self.end..].as_mut_ptr().cast(),
            iov_len: self.rx.len() - self.end,
        };
        // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_SPACE as _;
        // SAFETY: recvmsg writes at most iov_len bytes into rx and msg_controllen into cmsg.
        let n = unsafe {
            libc::recvmsg(
                self.stream.as_raw_fd(),
                &mut msg,
                libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let fds = received_fds(&msg);
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            warn!(
                "vfio-user: more fds than {} in one message; the rest were closed",
                wire::MAX_MSG_FDS
            );
        }
        let lo = self.stream_pos + (self.end - self.start) as u64;
        self.end += n;
        if !fds.is_empty() {
            if self.pending_fds + fds.len() > MAX_PENDING_FDS {
                warn!(
                    "vfio-user: {} unclaimed fds pending; closing {} more",
                    self.pending_fds,
                    fds.len()
                );
            } else {
                self.pending_fds += fds.len();
                self.batches.push_back(FdBatch {
                    lo,
                    hi: lo + n as u64,
                    fds,
                });
            }
        }
        Ok(n)
    }

    /// The fds that came with the message at stream range `[s, e)`; stale batches are closed.
    fn take_fds(&mut self, s: u64, e: u64) -> Vec<OwnedFd> {
        while let Some(front) = self.batches.front() {
            if front.hi <= s {
                self.drop_front_batch();
            } else {
                break;
            }
        }
        match self.batches.front() {
            Some(b) if b.lo <= s && e >= b.hi => {
                let b = self.batches.pop_front().map(|b| b.fds).unwrap_or_default();
                self.pending_fds -= b.len();
                b
            }
            _ => Vec::new(),
        }
    }

    fn drop_front_batch(&mut self) {
        if let Some(b) = self.batches.pop_front() {
            self.pending_fds -= b.fds.len();
        }
    }

    /// Handles every whole message in `rx`, queueing and sending replies.
    fn handle_buffered(&mut self) -> Result<(), Closed> {
        while !self.wants_write() {
            let Some(header) = Header::parse(&self.rx[self.start..self.end]) else {
                break;
            };
            if !header.size_is_sane() {
                // Nothing past this header can be framed; the replies before it still go out.
                let _ = self.flush();
                return Err(Closed::Framing(header));
            }
            let size = header.size as usize;
            if self.end - self.start < size {
                if self.start + size > self.rx.len() {
                    self.compact();
                }
                break;
            }
            let s = self.stream_pos;
            let fds = self.take_fds(s, s + size as u64);
            let had = self.tx.len();
            let payload = &self.rx[self.start + HEADER_SIZE..self.start + size];
            let fd = self.session.handle(&header, payload, fds, &mut self.tx);
            self.start += size;
            self.stream_pos += size as u64;
            if let Some(fd) = fd {
                // The fd rides on its reply's first byte; send it now so at most one is queued.
                self.tx_fd = Some((had, fd));
                self.flush()?;
            } else if self.tx.len() >= TX_FLUSH {
                self.flush()?;
            }
        }
        self.flush()
    }

    /// Sends queued replies, normally with one sendmsg; a reply carrying an fd starts a new
    /// sendmsg so the fd goes with that reply's first byte.
    fn flush(&mut self) -> Result<(), Closed> {
        self.blocked = false;
        while self.tx_off < self.tx.len() {
            let (limit, fd) = match self.tx_fd {
                Some((at, fd)) if at == self.tx_off => (self.tx.len(), Some(fd)),
                Some((at, _)) => (at, None),
                None => (self.tx.len(), None),
            };
            match send(&self.stream, &self.tx[self.tx_off..limit], fd) {
                Ok(n) => {
                    self.tx_off += n;
                    if fd.is_some() && n > 0 {
                        self.tx_fd = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Closed::Io(e)),
            }
        }
        self.tx.clear();
        self.tx_off = 0;
        if self.tx.capacity() > 4 * TX_FLUSH {
            // One 1 MiB read reply should not pin its buffer for the rest of the session.
            self.tx.shrink_to(TX_FLUSH);
        }
        Ok(())
    }
}

fn received_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: walks the control buffer recvmsg filled, with the libc CMSG helpers.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    if fd >= 0 {
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    fds
}

/// One sendmsg of `data`, with `fd` as SCM_RIGHTS when given. MSG_NOSIGNAL: a client gone
/// mid-reply is an EPIPE error, not a SIGPIPE.
pub(crate) fn send(stream: &UnixStream, data: &[u8], fd: Option<RawFd>) -> io::Result<usize> {
    let mut cmsg = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: the control buffer (32 bytes) holds CMSG_SPACE(4) = 24 bytes.
        unsafe {
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        }
    }
    // SAFETY: sendmsg reads iov_len bytes of `data` and the control buffer.
    let n = unsafe {
        libc::sendmsg(
            stream.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
