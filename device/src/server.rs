//! The card as the vfio-user server and the control plane share it ([`Card`]), and the
//! listening server that exposes it to QEMU's `vfio-user-pci` ([`Server`]).
//!
//! The protocol itself lives in [`crate::transport`]: one thread runs an `event-manager` loop
//! with the listening socket, the client connection and the vblank timer. Other threads (the
//! control socket) only touch [`Card`]: its model lock, the "dead" switch and the counters.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use log::debug;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vram_bar::{Frame, Scanout};

use crate::{DeviceModel, Model, ModelInfo};

/// The longest busy-poll window [`Card::set_busy_poll`] takes: longer than the gap between
/// two bit-banged accesses under TCG (~60-90 us), short enough that an idle card stops
/// spinning within a millisecond.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(1);

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("vfio-user socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("vfio-user: {0}")]
    Io(#[from] std::io::Error),
    #[error("vfio-user event loop: {0}")]
    EventLoop(String),
    #[error("the card shows nothing: the display is off")]
    DisplayOff,
    #[error(transparent)]
    Vram(#[from] vram_bar::Error),
}

/// Counters for reports and the control socket.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CardStats {
    /// `bochs` or `hibmc`.
    pub model: String,
    /// Client sessions served or being served (a re-plug starts a new one).
    pub clients: u64,
    pub dead: bool,
    pub config_reads: u64,
    pub config_writes: u64,
    pub bar_reads: u64,
    pub bar_writes: u64,
    pub resets: u64,
    pub msi_sent: u64,
    /// MSIs not delivered because the eventfd would have blocked (or failed).
    #[serde(default)]
    pub msi_dropped: u64,
    pub msi_vectors_armed: u32,
    /// Requests answered with an error reply (or dropped, for NO_REPLY ones).
    #[serde(default)]
    pub rejected_requests: u64,
    pub unimplemented_accesses: u64,
    pub scanout: Option<String>,
    /// Register offset (hex) -> [reads, writes], for the registers the driver touched (an array
    /// such as hibmc's palette or bochs's EDID counts at its first element's offset).
    #[serde(default)]
    pub registers: std::collections::BTreeMap<String, [u64; 2]>,
    /// Register offset (hex) -> register name, for the offsets in `registers`.
    #[serde(default)]
    pub register_names: std::collections::BTreeMap<String, String>,
    /// Unimplemented offset (hex, rounded down to the card's register width) -> accesses, for
    /// the first few thousand distinct offsets touched.
    #[serde(default)]
    pub unimplemented_offsets: std::collections::BTreeMap<String, u64>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) clients: AtomicU64,
    pub(crate) config_reads: AtomicU64,
    pub(crate) config_writes: AtomicU64,
    pub(crate) bar_reads: AtomicU64,
    pub(crate) bar_writes: AtomicU64,
    pub(crate) resets: AtomicU64,
    pub(crate) msi_sent: AtomicU64,
    pub(crate) msi_dropped: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// A card as both the vfio-user loop and the control plane see it.
///
/// Invariants: MSI eventfds in `msi` are non-blocking (set when SET_IRQS hands them over), so
/// [`Card::signal`] never waits while holding the lock; `vblank_armed_ns` is the period the
/// event loop's timer runs at (0: stopped), and whoever changes what the period should be calls
/// [`Card::refresh_vblank`] so the loop is woken only when it differs.
pub struct Card {
    /// What the card is; read without the model lock.
    info: &'static ModelInfo,
    model: Mutex<Box<dyn DeviceModel>>,
    /// Surprise removal: config and BAR reads return all-ones, writes are dropped, no interrupts.
    dead: AtomicBool,
    /// MSI eventfds by vector, from SET_IRQS.
    msi: Mutex<Vec<Option<OwnedFd>>>,
    pub(crate) counters: Counters,
    /// Wakes the event loop (vblank re-evaluation) from other threads. None only if the kernel
    /// refused an eventfd: the loop then still re-evaluates on its 100 ms tick.
    pub(crate) wake: Option<EventFd>,
    pub(crate) vblank_armed_ns: AtomicU64,
    /// How long the event loop keeps polling the socket after a reply before it sleeps in
    /// epoll again (0: never). See [`Card::set_busy_poll`].
    busy_poll_ns: AtomicU64,
}

impl Card {
    pub fn new(model: Model) -> Arc<Card> {
        Arc::new(Card {
            info: model.info,
            model: Mutex::new(model.device),
            dead: AtomicBool::new(false),
            msi: Mutex::new(Vec::new()),
            counters: Counters::default(),
            wake: EventFd::new(EFD_NONBLOCK).ok(),
            vblank_armed_ns: AtomicU64::new(0),
            busy_poll_ns: AtomicU64::new(0),
        })
    }

    /// After answering a request, keep polling the socket for the next one for up to `window`
    /// (capped at [`MAX_BUSY_POLL`]) instead of sleeping in epoll: a trapped access then skips
    /// the server's wake-up. Worth it for drivers that bit-bang (hibmc's DDC makes ~15,000
    /// accesses per EDID read, tens of microseconds apart); it costs CPU while they run.
    pub fn set_busy_poll(&self, window: Duration) {
        let ns = window.min(MAX_BUSY_POLL).as_nanos() as u64;
        self.busy_poll_ns.store(ns, Ordering::Relaxed);
    }

    /// The busy-poll window now.
    pub fn busy_poll(&self) -> Duration {
        Duration::from_nanos(self.busy_poll_ns.load(Ordering::Relaxed))
    }

    pub fn info(&self) -> &'static ModelInfo {
        self.info
    }

    /// The model, locked. A poisoned lock (a panic elsewhere) still yields the model: the
    /// registers are plain data and stay consistent enough to keep answering the guest.
    pub fn model(&self) -> MutexGuard<'_, Box<dyn DeviceModel>> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_dead(&self, dead: bool) {
        self.dead.store(dead, Ordering::SeqCst);
        self.kick();
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    pub fn scanout(&self) -> Option<Scanout> {
        self.model().scanout()
    }

    /// Captures what the card shows now.
    pub fn capture(&self) -> Result<(Scanout, Frame), ServerError> {
        let model = self.model();
        let scanout = model.scanout().ok_or(ServerError::DisplayOff)?;
        Ok((scanout, model.vram().capture(&scanout)?))
    }

    pub fn stats(&self) -> CardStats {
        let c = &self.counters;
        let model = self.model();
        let registers = model.register_stats();
        let hex = |offset: u64| format!("{offset:#07x}");
        CardStats {
            model: self.info.name.to_string(),
            clients: c.clients.load(Ordering::Relaxed),
            dead: self.is_dead(),
            config_reads: c.config_reads.load(Ordering::Relaxed),
            config_writes: c.config_writes.load(Ordering::Relaxed),
            bar_reads: c.bar_reads.load(Ordering::Relaxed),
            bar_writes: c.bar_writes.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            msi_sent: c.msi_sent.load(Ordering::Relaxed),
            msi_dropped: c.msi_dropped.load(Ordering::Relaxed),
            msi_vectors_armed: self.msi_lock().iter().filter(|f| f.is_some()).count() as u32,
            rejected_requests: c.rejected.load(Ordering::Relaxed),
            unimplemented_accesses: registers.unimplemented,
            scanout: model.scanout().map(|s| s.to_string()),
            registers: registers
                .registers
                .iter()
                .map(|r| (hex(r.offset), [r.reads, r.writes]))
                .collect(),
            register_names: registers
                .registers
                .iter()
                .map(|r| (hex(r.offset), r.name.to_string()))
                .collect(),
            unimplemented_offsets: registers
                .unimplemented_offsets
                .iter()
                .map(|&(offset, n)| (hex(offset), n))
                .collect(),
        }
    }

    pub(crate) fn msi_lock(&self) -> MutexGuard<'_, Vec<Option<OwnedFd>>> {
        self.msi.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signals MSI `vector` through QEMU's eventfd; false when QEMU has not armed it or the
    /// write would block (a full counter, or something that is not an eventfd): that MSI is
    /// counted as dropped rather than waited for.
    pub(crate) fn signal(&self, vector: u32) -> bool {
        let msi = self.msi_lock();
        let Some(Some(fd)) = msi.get(vector as usize) else {
            return false;
        };
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to an fd we own; O_NONBLOCK is set.
        let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if n == one.len() as isize {
            self.counters.msi_sent.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.counters.msi_dropped.fetch_add(1, Ordering::Relaxed);
            debug!(
                "MSI {vector}: eventfd write dropped: {}",
                std::io::Error::last_os_error()
            );
            false
        }
    }

    /// The vblank period the timer should run at now (None: stopped).
    pub(crate) fn wanted_vblank(&self, model: &dyn DeviceModel) -> Option<Duration> {
        if self.is_dead() {
            None
        } else {
            model.vblank_period()
        }
    }

    /// Wakes the event loop if the vblank period it runs at is no longer the one wanted.
    /// Cheap when nothing changed (one atomic load), so it is called after every register write.
    pub(crate) fn refresh_vblank(&self, model: &dyn DeviceModel) {
        let want = self.wanted_vblank(model).map_or(0, |d| d.as_nanos() as u64);
        if want != self.vblank_armed_ns.load(Ordering::Relaxed) {
            self.kick();
        }
    }

    pub(crate) fn kick(&self) {
        if let Some(wake) = &self.wake {
            // EAGAIN means the counter is already non-zero: the loop is woken anyway.
            let _ = wake.write(1);
        }
    }
}

/// Stops a running [`Server::serve`] from any thread.
#[derive(Clone)]
pub struct StopHandle(Arc<EventFd>);

impl StopHandle {
    pub fn stop(&self) {
        let _ = self.0.write(1);
    }
}

/// A listening vfio-user server for one card. Serves one client at a time; the next
/// connection is accepted when the current one closes (a re-plug).
pub struct Server {
    card: Arc<Card>,
    listener: UnixListener,
    stop: Arc<EventFd>,
}

impl Server {
    /// Binds the socket at `path` (which must not exist) for `card`.
    pub fn bind(path: &Path, card: Arc<Card>) -> Result<Server, ServerError> {
        let socket_error = |source| ServerError::Socket {
            path: path.display().to_string(),
            source,
        };
        if path.exists() {
            return Err(socket_error(std::io::Error::from_raw_os_error(
                libc::EEXIST,
            )));
        }
        let listener = UnixListener::bind(path).map_err(socket_error)?;
        listener.set_nonblocking(true).map_err(socket_error)?;
        Ok(Server {
            card,
            listener,
            stop: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    pub fn card(&self) -> &Arc<Card> {
        &self.card
    }

    /// A handle whose `stop()` makes [`Server::serve`] return promptly.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop))
    }

    /// Serves clients one after the other until `stop` is set (checked at least every 100 ms)
    /// or [`StopHandle::stop`] is called. Returns an error when the listening socket fails.
    pub fn serve(&self, stop: &AtomicBool) -> Result<(), ServerError> {
        crate::transport::event_loop::run(&self.card, Some(&self.listener), None, &self.stop, stop)
    }

    /// Serves one already-connected client (e.g. one end of a socketpair) with the same loop,
    /// returning when it disconnects or a stop is requested. For tests and the bench.
    pub fn serve_connection(
        card: &Arc<Card>,
        stream: UnixStream,
        stop: &AtomicBool,
    ) -> Result<(), ServerError> {
        let stop_fd = EventFd::new(EFD_NONBLOCK)?;
        crate::transport::event_loop::run(card, None, Some(stream), &stop_fd, stop)
    }
}
