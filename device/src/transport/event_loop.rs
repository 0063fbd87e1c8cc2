//! The server's one thread: an `event-manager` loop with two subscribers.
//!
//! - [`Endpoint`]: the listening socket (when serving a path), the one client connection and
//!   the stop eventfd. While a client is connected the listener is not polled, so a second
//!   client waits in the backlog until the first leaves (a re-plug), as before.
//! - [`Vblank`]: a timerfd running at the model's vblank period, and the card's wake eventfd
//!   through which register writes, resets and `set_dead` ask it to re-evaluate that period.
//!
//! Everything is non-blocking; the loop wakes at least every [`TICK_MS`] to check the caller's
//! stop flag.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::conn::{Closed, Connection};
use crate::server::{Card, ServerError};

/// Longest the loop sleeps before looking at the stop flag.
pub const TICK_MS: i32 = 100;

const LISTENER: u32 = 1;
const CONN: u32 = 2;
const STOP: u32 = 3;
const WATCHDOG: u32 = 4;

/// What the subscribers tell the loop.
#[derive(Default)]
struct Shared {
    stop: Cell<bool>,
    error: Cell<Option<std::io::Error>>,
}

struct Endpoint<'a> {
    card: Arc<Card>,
    listener: Option<&'a UnixListener>,
    conn: Option<Connection>,
    /// Serving a single pre-connected stream: its end ends the loop.
    single: bool,
    /// That stream, attached in `init`.
    initial: Option<UnixStream>,
    stop_fd: &'a EventFd,
    shared: Rc<Shared>,
    /// Every TICK_MS: finish whatever the connection has buffered or queued. The seeded fuzz
    /// test showed rare stalls (replies owed, nothing polled) under load that this repairs;
    /// their root cause is not found yet.
    watchdog: TimerFd,
    streak: Streak,
}

/// When the last request was answered, and how many requests in a row came within the
/// busy-poll window of the reply before: the loop spins only once that reaches
/// [`BUSY_POLL_STREAK`].
struct Streak {
    last_reply: Instant,
    count: u32,
}

impl Streak {
    fn new(now: Instant) -> Streak {
        Streak {
            last_reply: now,
            count: 0,
        }
    }

    /// A request arrived at `now`: whether to busy-poll after answering it.
    fn on_request(&mut self, now: Instant, window: Duration) -> bool {
        if now.duration_since(self.last_reply) <= window {
            self.count = self.count.saturating_add(1);
        } else {
            self.count = 0;
        }
        self.count >= BUSY_POLL_STREAK
    }

    fn replied(&mut self, now: Instant) {
        self.last_reply = now;
    }
}

/// Requests in a row, each within the window of the previous reply, before the loop starts
/// busy-polling: hibmc's DDC makes thousands in a row; its vblank handler (read and clear the
/// status, 60 times a second) makes two, which must not cost a spin each (that alone would
/// be ~1.5% of a core at 60 Hz with a 200 us window).
const BUSY_POLL_STREAK: u32 = 8;

fn conn_events(conn: &Connection) -> Events {
    let set = if conn.wants_write() {
        EventSet::OUT
    } else {
        EventSet::IN | EventSet::READ_HANG_UP
    };
    Events::with_data(conn.stream(), CONN, set)
}

impl Endpoint<'_> {
    fn attach(&mut self, stream: UnixStream, ops: &mut EventOps) {
        let conn = match Connection::new(stream, Arc::clone(&self.card)) {
            Ok(c) => c,
            Err(e) => return warn!("vfio-user: cannot set up the connection: {e}"),
        };
        if let Err(e) = ops.add(conn_events(&conn)) {
            return warn!("vfio-user: cannot poll the connection: {e:?}");
        }
        self.card.counters.clients.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = self.listener {
            // One client at a time: stop polling the listener until this one leaves.
            let _ = ops.modify(Events::with_data(l, LISTENER, EventSet::empty()));
        }
        self.conn = Some(conn);
    }

    fn detach(&mut self, why: Closed, ops: &mut EventOps) {
        if let Some(conn) = self.conn.take() {
            let _ = ops.remove(Events::with_data(conn.stream(), CONN, EventSet::empty()));
        }
        match why {
            Closed::Eof => info!("vfio-user client disconnected"),
            other => warn!("vfio-user client dropped: {other:?}"),
        }
        // The client is gone: its eventfds with it (the spec: close the old client's IRQ fds).
        self.card.msi_lock().clear();
        self.card.kick();
        match self.listener {
            Some(l) => {
                let _ = ops.modify(Events::with_data(l, LISTENER, EventSet::IN));
            }
            None if self.single => self.shared.stop.set(true),
            None => {}
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let Some(listener) = self.listener else {
            return;
        };
        if self.conn.is_some() {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => self.attach(stream, ops),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            Err(e) => {
                self.shared.error.set(Some(e));
                self.shared.stop.set(true);
            }
        }
    }
}

impl MutEventSubscriber for Endpoint<'_> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Some(l) = self.listener {
            if let Err(e) = ops.add(Events::with_data(l, LISTENER, EventSet::IN)) {
                warn!("vfio-user: cannot poll the listener: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::with_data(self.stop_fd, STOP, EventSet::IN)) {
            warn!("vfio-user: cannot poll the stop eventfd: {e:?}");
        }
        let tick = std::time::Duration::from_millis(TICK_MS as u64);
        if self.watchdog.reset(tick, Some(tick)).is_ok() {
            if let Err(e) = ops.add(Events::with_data(&self.watchdog, WATCHDOG, EventSet::IN)) {
                warn!("vfio-user: cannot poll the watchdog timer: {e:?}");
            }
        }
        if let Some(stream) = self.initial.take() {
            self.attach(stream, ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            LISTENER => self.accept(ops),
            STOP => {
                let _ = self.stop_fd.read();
                self.shared.stop.set(true);
            }
            WATCHDOG => {
                let _ = self.watchdog.wait();
                if let Some(conn) = self.conn.as_mut() {
                    match conn.on_writable() {
                        Ok(()) => {
                            let _ = ops.modify(conn_events(conn));
                        }
                        Err(why) => self.detach(why, ops),
                    }
                }
            }
            CONN => {
                let Some(conn) = self.conn.as_mut() else {
                    return;
                };
                let set = events.event_set();
                let before = conn.wants_write();
                let result = if set.contains(EventSet::OUT) {
                    conn.on_writable()
                } else if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP)
                {
                    conn.on_readable()
                } else {
                    Err(Closed::Io(std::io::Error::other("socket error")))
                };
                let window = self.card.busy_poll();
                let result = if window.is_zero() {
                    result
                } else {
                    // Spin only inside a streak of requests that each came within the window
                    // of the reply before: a bit-banging driver, not the two accesses of a
                    // vblank interrupt handler 16 ms apart.
                    let spin = self.streak.on_request(Instant::now(), window);
                    let result = match result {
                        Ok(()) if spin => busy_poll(conn, window),
                        other => other,
                    };
                    self.streak.replied(Instant::now());
                    result
                };
                match result {
                    Ok(()) if conn.wants_write() != before => {
                        let _ = ops.modify(conn_events(conn));
                    }
                    Ok(()) => {}
                    Err(why) => self.detach(why, ops),
                }
            }
            _ => {}
        }
    }
}

/// Longest one busy-poll burst runs before the loop goes back to epoll, however many requests
/// keep coming: the vblank timer, the stop eventfd and the watchdog are serviced there, so this
/// bounds their delay (a vblank period is 16.7 ms).
const MAX_BUSY_BURST: Duration = Duration::from_millis(2);

/// Keeps receiving on `conn` while requests follow each other within `window`, for at most
/// [`MAX_BUSY_BURST`]; `sched_yield` between tries lets a QEMU thread that shares this core run.
fn busy_poll(conn: &mut Connection, window: Duration) -> Result<(), Closed> {
    if window.is_zero() {
        return Ok(());
    }
    let start = Instant::now();
    let mut last = start;
    while !conn.wants_write() {
        let now = Instant::now();
        if now.duration_since(last) > window || now.duration_since(start) > MAX_BUSY_BURST {
            break;
        }
        if conn.poll_once()? {
            last = Instant::now();
        } else {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
    Ok(())
}

/// Runs vblanks at the model's period while it has one.
struct Vblank {
    card: Arc<Card>,
    timer: TimerFd,
}

impl Vblank {
    /// Arms or stops the timer to match what the card wants now.
    fn rearm(&mut self) {
        let want = {
            let model = self.card.model();
            self.card.wanted_vblank(&**model)
        };
        let ns = want.map_or(0, |d| d.as_nanos() as u64);
        if ns == self.card.vblank_armed_ns.load(Ordering::Relaxed) {
            return;
        }
        let armed = match want {
            Some(period) if !period.is_zero() => self.timer.reset(period, Some(period)).is_ok(),
            _ => {
                let _ = self.timer.clear();
                false
            }
        };
        self.card
            .vblank_armed_ns
            .store(if armed { ns } else { 0 }, Ordering::Relaxed);
    }
}

impl MutEventSubscriber for Vblank {
    fn init(&mut self, ops: &mut EventOps) {
        set_nonblocking(self.timer.as_raw_fd());
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            warn!("vblank: cannot poll the timer: {e:?}");
        }
        if let Some(wake) = &self.card.wake {
            if let Err(e) = ops.add(Events::new(wake, EventSet::IN)) {
                warn!("vblank: cannot poll the wake eventfd: {e:?}");
            }
        }
        self.rearm();
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.timer.as_raw_fd() {
            // One vblank per expiry read, however many passed: a busy host skips frames
            // rather than bursting them.
            if self.timer.wait().is_ok() && !self.card.is_dead() {
                let vector = self.card.model().vblank();
                if let Some(vector) = vector {
                    self.card.signal(vector);
                }
            }
        } else if let Some(wake) = &self.card.wake {
            let _ = wake.read();
        }
        self.rearm();
    }
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on an fd owned by the caller; failure leaves it blocking, and it is only
    // read after epoll reported it readable.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

/// Runs the loop until `stop` is set, `stop_fd` is written, the listener fails, or (serving
/// the single `stream`) that client leaves.
pub fn run(
    card: &Arc<Card>,
    listener: Option<&UnixListener>,
    stream: Option<UnixStream>,
    stop_fd: &EventFd,
    stop: &AtomicBool,
) -> Result<(), ServerError> {
    let loop_error = |e: event_manager::Error| ServerError::EventLoop(format!("{e:?}"));
    let shared = Rc::new(Shared::default());
    let mut manager: EventManager<Box<dyn MutEventSubscriber + '_>> =
        EventManager::new().map_err(loop_error)?;
    let timer = TimerFd::new().map_err(|e| ServerError::Io(e.into()))?;
    manager.add_subscriber(Box::new(Vblank {
        card: Arc::clone(card),
        timer,
    }));
    manager.add_subscriber(Box::new(Endpoint {
        card: Arc::clone(card),
        listener,
        conn: None,
        single: stream.is_some(),
        initial: stream,
        stop_fd,
        shared: Rc::clone(&shared),
        watchdog: TimerFd::new().map_err(|e| ServerError::Io(e.into()))?,
        streak: Streak::new(Instant::now()),
    }));
    while !stop.load(Ordering::SeqCst) && !shared.stop.get() {
        match manager.run_with_timeout(TICK_MS) {
            Ok(_) => {}
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(loop_error(e)),
        }
    }
    // Whatever happens next (a new serve, another client), these eventfds belonged to this one.
    card.msi_lock().clear();
    card.vblank_armed_ns.store(0, Ordering::Relaxed);
    match shared.error.take() {
        Some(e) => Err(ServerError::Io(e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_poll_needs_a_streak_of_quick_requests() {
        let window = Duration::from_micros(200);
        let t0 = Instant::now();
        let mut s = Streak::new(t0);
        let at = |us: u64| t0 + Duration::from_micros(us);
        // A vblank handler: two accesses 16.7 ms apart from the next two, never a spin.
        for frame in 0..10u64 {
            let base = frame * 16_700 + 20_000;
            assert!(!s.on_request(at(base), window));
            s.replied(at(base + 10));
            assert!(!s.on_request(at(base + 30), window));
            s.replied(at(base + 40));
        }
        // Bit-banging: 60 us apart; spins from the BUSY_POLL_STREAK-th on.
        let start = 500_000;
        for i in 0..20u64 {
            let spin = s.on_request(at(start + i * 60), window);
            assert_eq!(spin, i >= u64::from(BUSY_POLL_STREAK), "request {i}");
            s.replied(at(start + i * 60 + 5));
        }
        // One long gap ends the streak.
        assert!(!s.on_request(at(start + 20 * 60 + 10_000), window));
    }
}
