//! `vanish-agent client KIND --device DEV --status FILE`: a display client that keeps the card
//! open (and, for kms and fbdev, mapped and drawn into) until SIGTERM, surviving the card going
//! away underneath it, and reporting what it saw in a JSON status file.
//!
//! A vanished device may make the mapping raise SIGBUS (the correct behaviour) or SIGSEGV. The
//! fault handler counts the signal, notes the first faulting address, and maps anonymous memory
//! over the faulting page so the interrupted store completes; the draw loop then stops touching
//! the mapping. Ioctl failures are counted by errno name and never end the client.

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use guest_protocol::ClientKind;
use serde::Serialize;

use crate::drm::{self, IoctlError};
use crate::fb;
use crate::mmap::Mapping;
use crate::pattern::{self, Surface};
use crate::sys::{errno, errno_name, errno_text, open_rw};

/// Time between frames.
pub const FRAME: Duration = Duration::from_millis(50);
/// The status file is rewritten at least this often.
pub const STATUS_PERIOD: Duration = Duration::from_secs(1);

// Shared with the signal handlers: atomics only.
static STOP: AtomicBool = AtomicBool::new(false);
static SIGBUS_COUNT: AtomicU64 = AtomicU64::new(0);
static SIGSEGV_COUNT: AtomicU64 = AtomicU64::new(0);
static FIRST_SIGNAL_SEEN: AtomicBool = AtomicBool::new(false);
static FIRST_SIGNAL_ADDR: AtomicUsize = AtomicUsize::new(0);
/// Set once the mapping has faulted; from then on nobody touches it.
static MAPPING_LOST: AtomicBool = AtomicBool::new(false);
/// The device mapping the fault handler may patch: [base, base + len).
static MAP_BASE: AtomicUsize = AtomicUsize::new(0);
static MAP_LEN: AtomicUsize = AtomicUsize::new(0);
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

extern "C" fn on_stop(_sig: libc::c_int) {
    STOP.store(true, SeqCst);
}

/// SIGBUS/SIGSEGV: record, then put anonymous memory under the faulting page of our mapping so
/// the faulting store can complete. A fault outside our mapping is a real bug: restore the
/// default action and return, so the re-executed access kills us with the original signal.
extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if sig == libc::SIGBUS {
        SIGBUS_COUNT.fetch_add(1, SeqCst);
    } else {
        SIGSEGV_COUNT.fetch_add(1, SeqCst);
    }
    if !FIRST_SIGNAL_SEEN.swap(true, SeqCst) {
        FIRST_SIGNAL_ADDR.store(addr, SeqCst);
    }
    let (base, len) = (MAP_BASE.load(SeqCst), MAP_LEN.load(SeqCst));
    if base != 0 && addr >= base && addr < base + len {
        MAPPING_LOST.store(true, SeqCst);
        let page_size = PAGE_SIZE.load(SeqCst);
        let page = addr & !(page_size - 1);
        // SAFETY: mmap is a plain syscall (async-signal-safe in practice); MAP_FIXED replaces
        // only a page inside our own mapping.
        let r = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if r != libc::MAP_FAILED {
            return;
        }
    }
    // SAFETY: resetting a disposition to SIG_DFL is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Installs the stop and fault handlers.
pub fn install_handlers() {
    // SAFETY: sysconf and sigaction with valid arguments; the handlers only touch atomics and
    // make raw syscalls.
    unsafe {
        let ps = libc::sysconf(libc::_SC_PAGESIZE);
        if ps > 0 {
            PAGE_SIZE.store(ps as usize, SeqCst);
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_fault as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn stopping() -> bool {
    STOP.load(SeqCst)
}

fn mapping_lost() -> bool {
    MAPPING_LOST.load(SeqCst)
}

fn signal_counts() -> (u64, u64) {
    (SIGBUS_COUNT.load(SeqCst), SIGSEGV_COUNT.load(SeqCst))
}

/// A shared mapping of the device, known to the fault handler while it exists.
struct WatchedMapping(Option<Mapping>);

impl WatchedMapping {
    fn new(fd: RawFd, len: usize, offset: u64) -> Result<WatchedMapping, String> {
        let m = Mapping::shared(fd, len, offset)?;
        MAP_LEN.store(m.len(), SeqCst);
        MAP_BASE.store(m.ptr() as usize, SeqCst);
        Ok(WatchedMapping(Some(m)))
    }

    fn ptr(&self) -> *mut u8 {
        self.0.as_ref().map_or(std::ptr::null_mut(), Mapping::ptr)
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, Mapping::len)
    }

    /// munmap; returns "ok" or the errno text (the status file's `munmap`).
    fn unmap(mut self) -> String {
        self.forget();
        match self.0.take().map(Mapping::unmap) {
            Some(Err(e)) => e,
            Some(Ok(())) | None => "ok".to_string(),
        }
    }

    /// The fault handler stops patching this range (before it is unmapped).
    fn forget(&self) {
        MAP_BASE.store(0, SeqCst);
        MAP_LEN.store(0, SeqCst);
    }
}

impl Drop for WatchedMapping {
    fn drop(&mut self) {
        self.forget();
    }
}

/// Everything the status file says.
pub struct Status {
    pub kind: ClientKind,
    pub device: String,
    pub pid: u32,
    pub state: &'static str,
    pub mode: Option<String>,
    pub frames: u64,
    pub ioctl_errors: BTreeMap<String, u64>,
    /// DIRTYFB's "not supported" answers (EOPNOTSUPP/ENOSYS), by errno name: not errors.
    pub ignored_errors: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    pub close: Option<String>,
    pub munmap: Option<String>,
    /// "none", "device", "replaced" (faulted, anonymous pages patched in) or "unmapped".
    pub mapping: &'static str,
    /// What the last read-back of a word just written to the mapping returned: "echo" (the
    /// write landed: the device or its stale pages are still behind the mapping), "zero" (a
    /// zeroed dummy page, as TTM maps after drm_dev_unplug()), "other", or "none" (no mapping).
    pub readback: &'static str,
    /// Read-backs by outcome.
    pub readbacks: BTreeMap<String, u64>,
    pub exited: bool,
    path: PathBuf,
    started: Instant,
    last_write: Option<Instant>,
}

impl Status {
    pub fn new(kind: ClientKind, device: &str, path: &Path) -> Status {
        Status {
            kind,
            device: device.to_string(),
            pid: std::process::id(),
            state: "starting",
            mode: None,
            frames: 0,
            ioctl_errors: BTreeMap::new(),
            ignored_errors: BTreeMap::new(),
            last_error: None,
            close: None,
            munmap: None,
            mapping: "none",
            readback: "none",
            readbacks: BTreeMap::new(),
            exited: false,
            path: path.to_path_buf(),
            started: Instant::now(),
            last_write: None,
        }
    }

    /// The status file's contents as they are now.
    fn file(&self) -> StatusFile<'_> {
        let (bus, segv) = signal_counts();
        let signals = [("SIGBUS", bus), ("SIGSEGV", segv)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        let first_signal_addr = FIRST_SIGNAL_SEEN
            .load(SeqCst)
            .then(|| format!("{:#x}", FIRST_SIGNAL_ADDR.load(SeqCst)));
        StatusFile {
            kind: self.kind,
            device: &self.device,
            pid: self.pid,
            state: self.state,
            mode: self.mode.as_deref(),
            frames: self.frames,
            signals,
            first_signal_addr,
            ioctl_errors: &self.ioctl_errors,
            ignored_errors: &self.ignored_errors,
            last_error: self.last_error.as_deref(),
            close: self.close.as_deref(),
            munmap: self.munmap.as_deref(),
            mapping: self.mapping,
            readback: self.readback,
            readbacks: &self.readbacks,
            exited: self.exited,
            t_ms: self.started.elapsed().as_millis(),
        }
    }

    /// Writes the status file atomically (temp file + rename).
    pub fn write(&mut self) {
        self.last_write = Some(Instant::now());
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        // A struct of strings, numbers and string-keyed maps: serialising cannot fail.
        let text = serde_json::to_string(&self.file()).unwrap_or_default() + "\n";
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &self.path)) {
            eprintln!(
                "vanish-agent client: cannot write {}: {e}",
                self.path.display()
            );
        }
    }

    pub fn set_state(&mut self, state: &'static str) {
        self.state = state;
        self.write();
    }

    /// Counts a failed ioctl by errno name.
    pub fn ioctl_error(&mut self, e: IoctlError) {
        *self.ioctl_errors.entry(errno_name(e.errno)).or_default() += 1;
        self.last_error = Some(e.to_string());
    }

    fn due(&self) -> bool {
        self.last_write.is_none_or(|t| t.elapsed() >= STATUS_PERIOD)
    }
}

/// The status file, one JSON object in this field order (serde keeps a struct's order); the
/// agent reads it back and adds its own view (`serve.rs` `report`).
#[derive(Serialize)]
struct StatusFile<'a> {
    kind: ClientKind,
    device: &'a str,
    pid: u32,
    state: &'static str,
    mode: Option<&'a str>,
    frames: u64,
    /// Fault signals by name; only those that arrived.
    signals: BTreeMap<&'static str, u64>,
    first_signal_addr: Option<String>,
    ioctl_errors: &'a BTreeMap<String, u64>,
    ignored_errors: &'a BTreeMap<String, u64>,
    last_error: Option<&'a str>,
    close: Option<&'a str>,
    munmap: Option<&'a str>,
    mapping: &'static str,
    readback: &'static str,
    readbacks: &'a BTreeMap<String, u64>,
    exited: bool,
    t_ms: u128,
}

/// What the frame loop does besides drawing.
enum Poll {
    Kms { fb_id: u32, crtc_id: u32 },
    Fbdev,
    Idle,
}

/// An open, set-up client.
struct Session {
    mapping: Option<WatchedMapping>,
    surface: Option<Surface>,
    pack: Box<dyn Fn(u32) -> u32>,
    poll: Poll,
}

fn setup_kms(fd: RawFd, st: &mut Status) -> Result<Session, String> {
    let e = |e: IoctlError| e.to_string();
    let out = drm::Output::pick(fd)?;
    st.mode = Some(format!("{}x{}", out.width, out.height));
    let fb = out.dumb_fb(fd).map_err(e)?;
    let offset = drm::map_dumb(fd, fb.dumb.handle).map_err(e)?;
    let mapping = WatchedMapping::new(fd, fb.dumb.size as usize, offset)?;
    st.mapping = "device";
    let surface = Surface {
        ptr: mapping.ptr(),
        len: mapping.len(),
        pitch: fb.dumb.pitch as usize,
        width: out.width,
        height: out.height,
        bytes_per_pixel: 4,
    };
    let session = Session {
        mapping: Some(mapping),
        surface: Some(surface),
        pack: Box::new(|c| c),
        poll: Poll::Kms {
            fb_id: fb.fb_id,
            crtc_id: out.crtc_id,
        },
    };
    draw(&session, 0, false);
    out.scan_out(fd, &fb).map_err(e)?;
    Ok(session)
}

fn setup_fbdev(fd: RawFd, st: &mut Status) -> Result<Session, String> {
    let e = |e: IoctlError| e.to_string();
    let var = fb::get_vscreeninfo(fd).map_err(e)?;
    let fix = fb::get_fscreeninfo(fd).map_err(e)?;
    let bytes_per_pixel = (var.bits_per_pixel / 8) as usize;
    if !(2..=4).contains(&bytes_per_pixel) {
        return Err(format!(
            "unsupported fbdev depth {} bpp",
            var.bits_per_pixel
        ));
    }
    st.mode = Some(format!("{}x{}", var.xres, var.yres));
    let mapping = WatchedMapping::new(fd, fix.smem_len as usize, 0)?;
    st.mapping = "device";
    let pitch = fix.line_length as usize;
    let surface = Surface {
        ptr: mapping.ptr(),
        len: mapping.len(),
        pitch,
        width: var.xres,
        height: var.yres,
        bytes_per_pixel,
    };
    let session = Session {
        mapping: Some(mapping),
        surface: Some(surface),
        pack: Box::new(move |c| fb::pack(&var, c)),
        poll: Poll::Fbdev,
    };
    draw(&session, 0, false);
    Ok(session)
}

/// Draws frame `frame`: the whole picture, or only the track if `track_only`.
fn draw(s: &Session, frame: u64, track_only: bool) {
    let Some(surface) = &s.surface else { return };
    if mapping_lost() {
        return;
    }
    let rows = if track_only {
        pattern::track_top(surface.height)..surface.height
    } else {
        0..surface.height
    };
    surface.draw(rows, frame, &*s.pack, &mapping_lost);
}

/// Writes a frame-dependent word to the last pixel of the mapping and reads it back: after a
/// removal this tells a zeroed dummy page from stale pages that still take writes.
fn probe_mapping(s: &Session, st: &mut Status, frame: u64) {
    // A read-only idle client has no surface; a kms or fbdev client has one.
    let Some(surface) = &s.surface else { return };
    if mapping_lost() || surface.len < 4 {
        return;
    }
    let value = 0x0100_0000u32 | (frame as u32 & 0x00ff_ffff);
    let offset = (surface.len - 4) & !3;
    // SAFETY: offset + 4 <= len, inside our live shared mapping; volatile so the read is not
    // folded into the write. A fault here is caught by the SIGBUS/SIGSEGV handler, which patches
    // anonymous memory under the page and sets mapping_lost().
    let got = unsafe {
        let p = surface.ptr.add(offset) as *mut u32;
        std::ptr::write_volatile(p, value);
        std::ptr::read_volatile(p)
    };
    if mapping_lost() {
        return;
    }
    st.readback = match got {
        v if v == value => "echo",
        0 => "zero",
        _ => "other",
    };
    *st.readbacks.entry(st.readback.to_string()).or_default() += 1;
}

/// One frame's ioctls.
fn poll(fd: RawFd, s: &Session, st: &mut Status) {
    match s.poll {
        Poll::Kms { fb_id, crtc_id } => {
            match drm::dirty_fb(fd, fb_id) {
                Err(e) if e.errno == libc::EOPNOTSUPP || e.errno == libc::ENOSYS => {
                    *st.ignored_errors.entry(errno_name(e.errno)).or_default() += 1;
                }
                Err(e) => st.ioctl_error(e),
                Ok(()) => {}
            }
            if let Err(e) = drm::get_crtc(fd, crtc_id) {
                st.ioctl_error(e);
            }
        }
        Poll::Fbdev => {
            if let Err(e) = fb::get_vscreeninfo(fd) {
                st.ioctl_error(e);
            }
        }
        Poll::Idle => {}
    }
}

fn close_fd(fd: RawFd) -> String {
    // SAFETY: fd is ours and closed exactly once.
    if unsafe { libc::close(fd) } == 0 {
        "ok".to_string()
    } else {
        errno_text(errno())
    }
}

/// Runs the client until SIGTERM; returns the process exit code (0, or 1 if setup failed).
pub fn run(kind: ClientKind, device: &str, status_path: &Path) -> i32 {
    install_handlers();
    let mut st = Status::new(kind, device, status_path);
    st.write();
    let fd = match open_rw(device) {
        Ok(fd) => fd,
        Err(e) => {
            st.last_error = Some(e);
            st.exited = true;
            st.set_state("failed");
            return 1;
        }
    };
    let setup = match kind {
        ClientKind::Kms => setup_kms(fd, &mut st),
        ClientKind::Fbdev => setup_fbdev(fd, &mut st),
        ClientKind::IdleOpen => Ok(Session {
            mapping: None,
            surface: None,
            pack: Box::new(|c| c),
            poll: Poll::Idle,
        }),
    };
    let mut session = match setup {
        Ok(s) => s,
        Err(e) => {
            st.last_error = Some(e);
            st.close = Some(close_fd(fd));
            st.exited = true;
            st.set_state("failed");
            return 1;
        }
    };
    st.set_state("ready");

    let mut seen = (signal_counts(), 0u64);
    while !stopping() {
        std::thread::sleep(FRAME);
        if stopping() {
            break;
        }
        if session.surface.is_some() {
            st.frames += 1;
            draw(&session, st.frames, true);
            let frame = st.frames;
            probe_mapping(&session, &mut st, frame);
        }
        poll(fd, &session, &mut st);
        if mapping_lost() && st.mapping == "device" {
            st.mapping = "replaced";
        }
        let now = (signal_counts(), st.ioctl_errors.values().sum());
        if st.state == "ready" {
            st.set_state("running");
        } else if now != seen || st.due() {
            st.write();
        }
        seen = now;
    }

    st.set_state("closing");
    if let Some(m) = session.mapping.take() {
        st.munmap = Some(m.unmap());
        st.mapping = "unmapped";
        session.surface = None;
    }
    st.close = Some(close_fd(fd));
    st.exited = true;
    st.set_state("exited");
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_has_every_field() {
        let dir = std::env::temp_dir().join(format!("vanish-agent-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        let mut st = Status::new(ClientKind::Kms, "/dev/dri/card0", &path);
        st.mode = Some("1024x768".into());
        st.frames = 7;
        st.ioctl_error(IoctlError {
            name: "DRM_IOCTL_MODE_GETCRTC",
            errno: libc::ENODEV,
        });
        st.ioctl_error(IoctlError {
            name: "DRM_IOCTL_MODE_GETCRTC",
            errno: libc::ENODEV,
        });
        st.ioctl_error(IoctlError {
            name: "DRM_IOCTL_MODE_DIRTYFB",
            errno: libc::EIO,
        });
        st.close = Some("ok".into());
        st.set_state("running");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1);
        let o: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(o["kind"], "kms");
        assert_eq!(o["device"], "/dev/dri/card0");
        assert_eq!(o["pid"], std::process::id());
        assert_eq!(o["state"], "running");
        assert_eq!(o["mode"], "1024x768");
        assert_eq!(o["frames"], 7);
        assert_eq!(
            o["ioctl_errors"],
            serde_json::json!({"EIO": 1, "ENODEV": 2})
        );
        assert_eq!(
            o["last_error"],
            "DRM_IOCTL_MODE_DIRTYFB: EIO (Input/output error)"
        );
        assert_eq!(o["close"], "ok");
        assert_eq!(o["exited"], false);
        assert_eq!(o["munmap"], serde_json::Value::Null);
        for key in [
            "signals",
            "first_signal_addr",
            "ignored_errors",
            "munmap",
            "mapping",
            "readback",
            "readbacks",
            "t_ms",
        ] {
            assert!(o.contains_key(key), "{key} missing");
        }
        // The fields in the order of the struct, the order humans read the file in.
        let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap_or(usize::MAX);
        let order = [
            "kind", "device", "pid", "state", "mode", "frames", "exited", "t_ms",
        ];
        assert!(order.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
        assert!(!dir.join("s.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A shared file mapping whose file shrinks raises SIGBUS, just like a vanished device's
    /// mapping: the handler must record it and let the store complete.
    #[test]
    fn sigbus_on_the_mapping_is_survived() {
        install_handlers();
        let page = PAGE_SIZE.load(SeqCst);
        let (path, file) = crate::mmap::scratch_file("sigbus", 2 * page as u64);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let m = WatchedMapping::new(fd, 2 * page, 0).unwrap();
        let p = m.ptr() as *mut u32;
        unsafe { p.write_volatile(1) };
        assert_eq!(signal_counts().0, 0);
        file.set_len(0).unwrap();
        unsafe { p.add(page / 4 + 1).write_volatile(0xdead_beef) };
        assert_eq!(signal_counts().0, 1);
        assert!(mapping_lost());
        assert_eq!(FIRST_SIGNAL_ADDR.load(SeqCst), m.ptr() as usize + page + 4);
        assert_eq!(unsafe { p.add(page / 4 + 1).read_volatile() }, 0xdead_beef);
        assert_eq!(m.unmap(), "ok");
        std::fs::remove_file(&path).unwrap();
    }
}
