//! `vanish-agent bench`: the guest-side programs of `vanish bench`.
//!
//! ```text
//! vanish-agent bench fill fbdev|kms SECONDS [DEVICE]
//! vanish-agent bench reads BDF BAR OFFSET COUNT
//! vanish-agent bench vblank SECONDS [DEVICE]
//! vanish-agent bench cycle unbind-bind|remove-rescan VENDOR DEVICE DRIVER
//! ```
//!
//! Each prints one line of `key=value` words for the host to parse (`vanish bench` reads them
//! with its own parser; the figures are computed on the host so both sides agree on units).
//!
//! `fill` writes whole frames into the mapped framebuffer (the fbdev mapping of `/dev/fb0`, or
//! a KMS dumb buffer set as the CRTC's scanout so it lives in VRAM) for SECONDS and reports the
//! bytes and frames written. `reads` maps BAR `BAR` of `BDF` through sysfs `resourceN` and does
//! COUNT volatile 32-bit reads at OFFSET, reporting the elapsed nanoseconds: with an emulated
//! card every read traps into QEMU (and, for vanish, goes over the vfio-user socket).
//! `cycle` takes the card with these PCI IDs away from DRIVER and gives it back (sysfs unbind
//! and bind, or remove and bus rescan), timed in the guest from the first write until the
//! driver has finished probing again (its fbdev node exists). Timing it here rather than from
//! the host keeps the rig's own agent round trips (a shell and a few processes per poll, tens
//! of ms each under TCG) out of the figure.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use guest_protocol::ClientKind;

use crate::drm::{self, IoctlError};
use crate::fb;
use crate::inspect::Root;
use crate::mmap::Mapping;
use crate::sys::open_rw;

/// What a fill run wrote.
#[derive(Debug, PartialEq)]
pub struct FillResult {
    pub width: u32,
    pub height: u32,
    pub frame_bytes: usize,
    pub frames: u64,
    pub elapsed: Duration,
}

impl FillResult {
    pub fn line(&self) -> String {
        format!(
            "mode={}x{} frame_bytes={} frames={} bytes={} ns={}",
            self.width,
            self.height,
            self.frame_bytes,
            self.frames,
            self.frames * self.frame_bytes as u64,
            self.elapsed.as_nanos()
        )
    }
}

/// Writes whole frames (`height` rows of `row_bytes` at `pitch`) into `base` for `secs`.
///
/// Each row is copied from a prepared row of the frame's colour, as a software renderer
/// blitting a finished line would: the cost measured is the stores into the mapping.
///
/// # Safety
/// `base` must be valid for writes of `pitch * (height - 1) + row_bytes` bytes.
unsafe fn fill_frames(
    base: *mut u8,
    pitch: usize,
    row_bytes: usize,
    height: usize,
    secs: Duration,
) -> (u64, Duration) {
    let started = Instant::now();
    let mut frames = 0u64;
    let mut row = vec![0u8; row_bytes];
    while started.elapsed() < secs {
        let colour = (frames as u32).wrapping_mul(0x0001_0307) | 0xff00_0000;
        for px in row.chunks_exact_mut(4) {
            px.copy_from_slice(&colour.to_le_bytes());
        }
        for y in 0..height {
            // SAFETY: row y lies inside the mapping (the caller's contract).
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), base.add(y * pitch), row_bytes) };
        }
        frames += 1;
    }
    (frames, started.elapsed())
}

fn fill_fbdev(fd: RawFd, secs: Duration) -> Result<FillResult, String> {
    let e = |e: IoctlError| e.to_string();
    let var = fb::get_vscreeninfo(fd).map_err(e)?;
    let fix = fb::get_fscreeninfo(fd).map_err(e)?;
    let row_bytes = (var.xres * var.bits_per_pixel / 8) as usize;
    let pitch = fix.line_length as usize;
    let height = var.yres as usize;
    if row_bytes == 0 || height == 0 || pitch < row_bytes || pitch * height > fix.smem_len as usize
    {
        return Err(format!(
            "fbdev mode {}x{} pitch {pitch} does not fit its {} bytes",
            var.xres, var.yres, fix.smem_len
        ));
    }
    let map = Mapping::shared(fd, pitch * height, 0)?;
    // SAFETY: pitch * height bytes are mapped.
    let (frames, elapsed) = unsafe { fill_frames(map.ptr(), pitch, row_bytes, height, secs) };
    Ok(FillResult {
        width: var.xres,
        height: var.yres,
        frame_bytes: row_bytes * height,
        frames,
        elapsed,
    })
}

fn fill_kms(fd: RawFd, secs: Duration) -> Result<FillResult, String> {
    let e = |e: IoctlError| e.to_string();
    let out = drm::Output::pick(fd)?;
    let (w, h) = (out.width, out.height);
    let fb = out.dumb_fb(fd).map_err(e)?;
    // Scan it out first: the VRAM helpers pin a scanout buffer in VRAM, so the mapping made
    // next is the card's memory (an unpinned buffer may sit in system RAM).
    out.scan_out(fd, &fb).map_err(e)?;
    let offset = drm::map_dumb(fd, fb.dumb.handle).map_err(e)?;
    let pitch = fb.dumb.pitch as usize;
    let map = Mapping::shared(fd, fb.dumb.size as usize, offset)?;
    if pitch * h as usize > map.len() {
        return Err(format!(
            "dumb buffer of {} bytes is smaller than {w}x{h}",
            map.len()
        ));
    }
    // SAFETY: pitch * h bytes are mapped (checked above).
    let (frames, elapsed) =
        unsafe { fill_frames(map.ptr(), pitch, w as usize * 4, h as usize, secs) };
    Ok(FillResult {
        width: w,
        height: h,
        frame_bytes: w as usize * 4 * h as usize,
        frames,
        elapsed,
    })
}

/// A bench duration: seconds, more than 0 and at most 600.
fn parse_secs(secs: &str) -> Result<Duration, String> {
    secs.parse()
        .ok()
        .filter(|s: &f64| *s > 0.0 && *s <= 600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("bad duration {secs:?} (seconds, 0-600)"))
}

/// A fill routine: fbdev or KMS.
type FillFn = fn(RawFd, Duration) -> Result<FillResult, String>;

/// `bench fill`: runs and prints one result line.
pub fn fill(kind: &str, secs: &str, device: Option<&str>) -> Result<String, String> {
    let secs = parse_secs(secs)?;
    let (default, run): (&str, FillFn) = match kind {
        "fbdev" => (ClientKind::Fbdev.default_device(), fill_fbdev),
        "kms" => (ClientKind::Kms.default_device(), fill_kms),
        other => return Err(format!("unknown fill target {other:?} (fbdev or kms)")),
    };
    let fd = open_rw(device.unwrap_or(default))?;
    let result = run(fd, secs);
    // SAFETY: fd is ours; closing it releases the dumb buffer and the CRTC's master.
    unsafe { libc::close(fd) };
    result.map(|r| r.line())
}

/// drm.h: `union drm_wait_vblank` (the reply view: type, sequence, tval_sec, tval_usec; the
/// request view's `unsigned long signal` overlays the two longs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DrmWaitVblank {
    type_: u32,
    sequence: u32,
    tval_sec: libc::c_long,
    tval_usec: libc::c_long,
}

/// drm.h: `DRM_IOWR(0x3a, union drm_wait_vblank)`.
const DRM_IOCTL_WAIT_VBLANK: u32 = drm::iowr::<DrmWaitVblank>(drm::DRM_IOCTL_BASE, 0x3a);
/// drm.h: `_DRM_VBLANK_RELATIVE`.
const DRM_VBLANK_RELATIVE: u32 = 0x1;

/// `bench vblank`: waits for the next vblank over and over for SECONDS, keeping the driver's
/// vblank interrupt on (DRM turns it off 5 s after the last waiter), as a compositor would.
pub fn vblank(secs: &str, device: Option<&str>) -> Result<String, String> {
    let secs = parse_secs(secs)?;
    let fd = open_rw(device.unwrap_or(ClientKind::Kms.default_device()))?;
    let started = Instant::now();
    let mut waits = 0u64;
    let mut error = None;
    while started.elapsed() < secs {
        let mut w = DrmWaitVblank {
            type_: DRM_VBLANK_RELATIVE,
            sequence: 1,
            ..Default::default()
        };
        // SAFETY: the argument is drm_wait_vblank's layout (size checked by a test).
        if let Err(e) = unsafe { drm::named_ioctl!(fd, DRM_IOCTL_WAIT_VBLANK, &mut w) } {
            error = Some(e.to_string());
            break;
        }
        waits += 1;
    }
    let ns = started.elapsed().as_nanos();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok(match error {
        Some(e) => format!("waits={waits} ns={ns} error={}", e.replace(' ', "_")),
        None => format!("waits={waits} ns={ns}"),
    })
}

/// `bench reads`: COUNT 32-bit reads of BAR `bar` at `offset`; prints the elapsed time.
pub fn reads(bdf: &str, bar: &str, offset: &str, count: &str) -> Result<String, String> {
    let bar: u8 = bar.parse().map_err(|_| format!("bad BAR index {bar:?}"))?;
    let offset = crate::peek::parse_number(offset)?;
    let count: u64 = count
        .parse()
        .ok()
        .filter(|n| (1..=100_000_000).contains(n))
        .ok_or_else(|| format!("bad read count {count:?}"))?;
    let dword = crate::peek::BarDword::map(bdf, bar, offset)?;
    let started = Instant::now();
    let mut last = 0u32;
    for _ in 0..count {
        last = dword.read();
    }
    let ns = started.elapsed().as_nanos();
    Ok(format!("reads={count} ns={ns} value={last:#010x}"))
}

/// How the card is taken away and given back by `bench cycle`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CycleKind {
    UnbindBind,
    RemoveRescan,
}

/// How long `bench cycle` waits for the driver to finish probing the card again.
const CYCLE_WAIT: Duration = Duration::from_secs(30);

/// `bench cycle`: one unbind+bind or remove+rescan; prints the card's (new) address and the
/// times.
pub fn cycle(kind: &str, vendor: &str, device: &str, driver: &str) -> Result<String, String> {
    cycle_in(&Root::default(), kind, vendor, device, driver, CYCLE_WAIT)
}

fn cycle_in(
    root: &Root,
    kind: &str,
    vendor: &str,
    device: &str,
    driver: &str,
    wait: Duration,
) -> Result<String, String> {
    let kind = match kind {
        "unbind-bind" => CycleKind::UnbindBind,
        "remove-rescan" => CycleKind::RemoveRescan,
        other => {
            return Err(format!(
                "unknown cycle {other:?} (unbind-bind or remove-rescan)"
            ))
        }
    };
    let id = |s: &str| {
        crate::peek::parse_number(s)
            .ok()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| format!("bad PCI ID {s:?}"))
    };
    let (vendor, device) = (id(vendor)?, id(device)?);
    if driver.is_empty() || driver.contains('/') || driver.starts_with('.') {
        return Err(format!("bad driver name {driver:?}"));
    }
    let find = || root.find_card(vendor, device).into_iter().next();
    let bdf = find().ok_or_else(|| format!("no PCI function {vendor:04x}:{device:04x}"))?;
    let write = |path: std::path::PathBuf, value: &str| {
        std::fs::write(&path, value)
            .map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
    };
    // What takes the card away and what gives it back: (file, value) each.
    let (away_to, back_to) = match kind {
        CycleKind::UnbindBind => {
            let drv = root.path("/sys/bus/pci/drivers").join(driver);
            (
                (drv.join("unbind"), bdf.as_str()),
                (drv.join("bind"), bdf.as_str()),
            )
        }
        CycleKind::RemoveRescan => (
            (
                root.path("/sys/bus/pci/devices").join(&bdf).join("remove"),
                "1",
            ),
            (root.path("/sys/bus/pci/rescan"), "1"),
        ),
    };
    let started = Instant::now();
    write(away_to.0, away_to.1)?;
    let away = started.elapsed();
    // bind and rescan probe synchronously; the wait below is for drivers that finish later.
    write(back_to.0, back_to.1)?;
    // A rescan may give the card another address; a rebind keeps it (and the poll below
    // stays two sysfs reads, not a walk of every PCI function each millisecond).
    let current = || match kind {
        CycleKind::UnbindBind => Some(bdf.clone()),
        CycleKind::RemoveRescan => find(),
    };
    loop {
        if let Some(now) = current().filter(|b| root.bound_with_fb(b, driver)) {
            return Ok(format!(
                "bdf={now} away_ns={} ns={}",
                away.as_nanos(),
                started.elapsed().as_nanos()
            ));
        }
        if started.elapsed() > wait {
            return Err(format!(
                "{driver} did not finish probing {vendor:04x}:{device:04x} within {wait:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_row_and_only_the_rows() {
        let (pitch, row, height) = (64usize, 40usize, 8usize);
        let mut buf = vec![0u8; pitch * height];
        let (frames, _) = unsafe {
            fill_frames(
                buf.as_mut_ptr(),
                pitch,
                row,
                height,
                Duration::from_millis(5),
            )
        };
        assert!(frames >= 1);
        for y in 0..height {
            assert!(buf[y * pitch..y * pitch + row].iter().any(|&b| b != 0));
            assert!(buf[y * pitch + row..(y + 1) * pitch]
                .iter()
                .all(|&b| b == 0));
        }
    }

    #[test]
    fn wait_vblank_matches_the_uapi() {
        // union drm_wait_vblank is 24 bytes on LP64; libdrm's DRM_IOCTL_WAIT_VBLANK there.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(DRM_IOCTL_WAIT_VBLANK, 0xc018_643a);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(vblank("0", None).is_err());
        assert!(fill("gl", "1", None).is_err());
        assert!(fill("fbdev", "0", None).is_err());
        assert!(fill("fbdev", "x", None).is_err());
        assert!(reads("../x", "0", "0", "1").is_err());
        assert!(reads("0000:01:00.0", "0", "2", "1").is_err());
        assert!(reads("0000:01:00.0", "0", "0", "0").is_err());
    }

    #[test]
    fn a_cycle_writes_sysfs_and_waits_for_the_probe() {
        let root = crate::inspect::tests::tree("cycle");
        let line = cycle_in(
            &root,
            "unbind-bind",
            "0x1234",
            "0x1111",
            "bochs-drm",
            CYCLE_WAIT,
        )
        .unwrap();
        assert!(line.starts_with("bdf=0000:01:00.0 away_ns="), "{line}");
        assert!(line.contains(" ns="), "{line}");
        let drv = root.0.join("sys/bus/pci/drivers/bochs-drm");
        assert_eq!(
            std::fs::read_to_string(drv.join("unbind")).unwrap(),
            "0000:01:00.0"
        );
        assert_eq!(
            std::fs::read_to_string(drv.join("bind")).unwrap(),
            "0000:01:00.0"
        );
        // Bound to another driver: the cycle waits for the one asked for, then says so.
        let err = cycle_in(
            &root,
            "remove-rescan",
            "0x1234",
            "0x1111",
            "hibmc-drm",
            Duration::from_millis(20),
        )
        .unwrap_err();
        assert!(err.contains("did not finish probing 1234:1111"), "{err}");
        assert_eq!(
            std::fs::read_to_string(root.0.join("sys/bus/pci/rescan")).unwrap(),
            "1"
        );
        for bad in [
            ("reset", "0x1234", "0x1111", "bochs-drm"),
            ("unbind-bind", "0x12345", "0x1111", "bochs-drm"),
            ("unbind-bind", "0x1234", "0x1111", "../x"),
            ("unbind-bind", "0x19e5", "0x1711", "hibmc-drm"),
        ] {
            assert!(
                cycle_in(&root, bad.0, bad.1, bad.2, bad.3, CYCLE_WAIT).is_err(),
                "{bad:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&root.0);
    }

    #[test]
    fn result_line_has_the_words_the_host_parses() {
        let r = FillResult {
            width: 2,
            height: 3,
            frame_bytes: 24,
            frames: 10,
            elapsed: Duration::from_millis(1),
        };
        assert_eq!(
            r.line(),
            "mode=2x3 frame_bytes=24 frames=10 bytes=240 ns=1000000"
        );
    }
}
