//! The few DRM KMS ioctls a dumb-buffer client needs, written from the kernel UAPI headers
//! `include/uapi/drm/drm.h` (ioctl numbers, `DRM_IOCTL_BASE` 'd') and
//! `include/uapi/drm/drm_mode.h` (argument structs). The `_IOC` encoding of
//! `include/uapi/asm-generic/ioctl.h` is the same on x86_64 and arm64.

use std::mem::size_of;
use std::os::fd::RawFd;

// include/uapi/asm-generic/ioctl.h: nr bits 0..8, type bits 8..16, size bits 16..30, dir bits 30..32.
pub const IOC_WRITE: u32 = 1;
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `_IOWR(type, nr, T)`.
pub const fn iowr<T>(ty: u8, nr: u8) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size_of::<T>())
}

/// drm.h: `#define DRM_IOCTL_BASE 'd'`.
pub const DRM_IOCTL_BASE: u8 = b'd';

/// drm.h: `DRM_IOWR(0xA0, struct drm_mode_card_res)`.
pub const DRM_IOCTL_MODE_GETRESOURCES: u32 = iowr::<DrmModeCardRes>(DRM_IOCTL_BASE, 0xA0);
/// drm.h: `DRM_IOWR(0xA1, struct drm_mode_crtc)`.
pub const DRM_IOCTL_MODE_GETCRTC: u32 = iowr::<DrmModeCrtc>(DRM_IOCTL_BASE, 0xA1);
/// drm.h: `DRM_IOWR(0xA2, struct drm_mode_crtc)`.
pub const DRM_IOCTL_MODE_SETCRTC: u32 = iowr::<DrmModeCrtc>(DRM_IOCTL_BASE, 0xA2);
/// drm.h: `DRM_IOWR(0xA6, struct drm_mode_get_encoder)`.
pub const DRM_IOCTL_MODE_GETENCODER: u32 = iowr::<DrmModeGetEncoder>(DRM_IOCTL_BASE, 0xA6);
/// drm.h: `DRM_IOWR(0xA7, struct drm_mode_get_connector)`.
pub const DRM_IOCTL_MODE_GETCONNECTOR: u32 = iowr::<DrmModeGetConnector>(DRM_IOCTL_BASE, 0xA7);
/// drm.h: `DRM_IOWR(0xAE, struct drm_mode_fb_cmd)`.
pub const DRM_IOCTL_MODE_ADDFB: u32 = iowr::<DrmModeFbCmd>(DRM_IOCTL_BASE, 0xAE);
/// drm.h: `DRM_IOWR(0xB1, struct drm_mode_fb_dirty_cmd)`.
pub const DRM_IOCTL_MODE_DIRTYFB: u32 = iowr::<DrmModeFbDirtyCmd>(DRM_IOCTL_BASE, 0xB1);
/// drm.h: `DRM_IOWR(0xB2, struct drm_mode_create_dumb)`.
pub const DRM_IOCTL_MODE_CREATE_DUMB: u32 = iowr::<DrmModeCreateDumb>(DRM_IOCTL_BASE, 0xB2);
/// drm.h: `DRM_IOWR(0xB3, struct drm_mode_map_dumb)`.
pub const DRM_IOCTL_MODE_MAP_DUMB: u32 = iowr::<DrmModeMapDumb>(DRM_IOCTL_BASE, 0xB3);

/// drm_mode.h: `DRM_MODE_CONNECTED` (`enum drm_connector_status` value 1).
pub const DRM_MODE_CONNECTED: u32 = 1;
/// drm_mode.h: `DRM_MODE_TYPE_PREFERRED`.
pub const DRM_MODE_TYPE_PREFERRED: u32 = 1 << 3;
/// drm_mode.h: `DRM_DISPLAY_MODE_LEN`.
pub const DRM_DISPLAY_MODE_LEN: usize = 32;

/// drm_mode.h: `struct drm_mode_modeinfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrmModeModeinfo {
    pub clock: u32,
    pub hdisplay: u16,
    pub hsync_start: u16,
    pub hsync_end: u16,
    pub htotal: u16,
    pub hskew: u16,
    pub vdisplay: u16,
    pub vsync_start: u16,
    pub vsync_end: u16,
    pub vtotal: u16,
    pub vscan: u16,
    pub vrefresh: u32,
    pub flags: u32,
    pub type_: u32,
    pub name: [u8; DRM_DISPLAY_MODE_LEN],
}

/// drm_mode.h: `struct drm_mode_card_res`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrmModeCardRes {
    pub fb_id_ptr: u64,
    pub crtc_id_ptr: u64,
    pub connector_id_ptr: u64,
    pub encoder_id_ptr: u64,
    pub count_fbs: u32,
    pub count_crtcs: u32,
    pub count_connectors: u32,
    pub count_encoders: u32,
    pub min_width: u32,
    pub max_width: u32,
    pub min_height: u32,
    pub max_height: u32,
}

/// drm_mode.h: `struct drm_mode_crtc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrmModeCrtc {
    pub set_connectors_ptr: u64,
    pub count_connectors: u32,
    pub crtc_id: u32,
    pub fb_id: u32,
    pub x: u32,
    pub y: u32,
    pub gamma_size: u32,
    pub mode_valid: u32,
    pub mode: DrmModeModeinfo,
}

/// drm_mode.h: `struct drm_mode_get_encoder`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrmModeGetEncoder {
    pub encoder_id: u32,
    pub encoder_type: u32,
    pub crtc_id: u32,
    pub possible_crtcs: u32,
    pub possible_clones: u32,
}

/// drm_mode.h: `struct drm_mode_get_connector`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrmModeGetConnector {
    pub encoders_ptr: u64,
    pub modes_ptr: u64,
    pub props_ptr: u64,
    pub prop_values_ptr: u64,
    pub count_modes: u32,
    pub count_props: u32,
    pub count_encoders: u32,
    pub encoder_id: u32,
    pub connector_id: u32,
    pub connector_type: u32,
    pub connector_type_id: u32,
    pub connection: u32,
    pub mm_width: u32,
    pub mm_height: u32,
    pub subpixel: u32,
    pub pad: u32,
}

/// drm_mode.h: `struct drm_mode_fb_cmd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrmModeFbCmd {
    pub fb_id: u32,
    pub width: u32,
    pub height: u32,
    pub pitch: u32,
    pub bpp: u32,
    pub depth: u32,
    pub handle: u32,
}

/// drm_mode.h: `struct drm_mode_fb_dirty_cmd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrmModeFbDirtyCmd {
    pub fb_id: u32,
    pub flags: u32,
    pub color: u32,
    pub num_clips: u32,
    pub clips_ptr: u64,
}

/// drm_mode.h: `struct drm_mode_create_dumb`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrmModeCreateDumb {
    pub height: u32,
    pub width: u32,
    pub bpp: u32,
    pub flags: u32,
    pub handle: u32,
    pub pitch: u32,
    pub size: u64,
}

/// drm_mode.h: `struct drm_mode_map_dumb`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrmModeMapDumb {
    pub handle: u32,
    pub pad: u32,
    pub offset: u64,
}

/// A failed ioctl: which one and its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoctlError {
    pub name: &'static str,
    pub errno: i32,
}

impl std::fmt::Display for IoctlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, crate::sys::errno_text(self.errno))
    }
}

/// `ioctl(fd, request, arg)`, retried on EINTR/EAGAIN like libdrm's drmIoctl.
///
/// # Safety
/// `T` must be the argument struct the kernel expects for `request`, and any pointers inside it
/// must point at buffers of the sizes its counts claim.
pub unsafe fn ioctl<T>(
    fd: RawFd,
    name: &'static str,
    request: u32,
    arg: &mut T,
) -> Result<(), IoctlError> {
    loop {
        // The request parameter is c_ulong on glibc and c_int on musl.
        let r = unsafe { libc::ioctl(fd, request as _, arg as *mut T) };
        if r >= 0 {
            return Ok(());
        }
        match crate::sys::errno() {
            libc::EINTR | libc::EAGAIN => continue,
            errno => return Err(IoctlError { name, errno }),
        }
    }
}

/// [`ioctl`] with the request constant's own name for errors: `named_ioctl!(fd, REQUEST, &mut
/// arg)`. Unsafe like [`ioctl`]; the call site's `unsafe` block covers it.
macro_rules! named_ioctl {
    ($fd:expr, $request:ident, $arg:expr) => {
        $crate::drm::ioctl($fd, stringify!($request), $request, $arg)
    };
}
pub(crate) use named_ioctl;

/// The object ids of GETRESOURCES.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub crtcs: Vec<u32>,
    pub connectors: Vec<u32>,
    pub encoders: Vec<u32>,
}

/// GETRESOURCES, twice: once for the counts, once for the ids (retried if the counts change).
pub fn get_resources(fd: RawFd) -> Result<Resources, IoctlError> {
    let name = "DRM_IOCTL_MODE_GETRESOURCES";
    for _ in 0..5 {
        let mut res = DrmModeCardRes::default();
        unsafe { ioctl(fd, name, DRM_IOCTL_MODE_GETRESOURCES, &mut res)? };
        let mut fbs = vec![0u32; res.count_fbs as usize];
        let mut out = Resources {
            crtcs: vec![0; res.count_crtcs as usize],
            connectors: vec![0; res.count_connectors as usize],
            encoders: vec![0; res.count_encoders as usize],
        };
        let mut again = res;
        again.fb_id_ptr = fbs.as_mut_ptr() as u64;
        again.crtc_id_ptr = out.crtcs.as_mut_ptr() as u64;
        again.connector_id_ptr = out.connectors.as_mut_ptr() as u64;
        again.encoder_id_ptr = out.encoders.as_mut_ptr() as u64;
        unsafe { ioctl(fd, name, DRM_IOCTL_MODE_GETRESOURCES, &mut again)? };
        if (
            again.count_fbs,
            again.count_crtcs,
            again.count_connectors,
            again.count_encoders,
        ) == (
            res.count_fbs,
            res.count_crtcs,
            res.count_connectors,
            res.count_encoders,
        ) {
            return Ok(out);
        }
    }
    Err(IoctlError {
        name,
        errno: libc::EAGAIN,
    })
}

/// What GETCONNECTOR says about one connector.
#[derive(Clone, Debug, Default)]
pub struct Connector {
    pub id: u32,
    pub connection: u32,
    pub encoder_id: u32,
    pub modes: Vec<DrmModeModeinfo>,
    pub encoders: Vec<u32>,
}

/// GETCONNECTOR; the first call (count_modes 0) makes the kernel probe the connector.
pub fn get_connector(fd: RawFd, id: u32) -> Result<Connector, IoctlError> {
    let name = "DRM_IOCTL_MODE_GETCONNECTOR";
    for _ in 0..5 {
        let mut c = DrmModeGetConnector {
            connector_id: id,
            ..Default::default()
        };
        unsafe { ioctl(fd, name, DRM_IOCTL_MODE_GETCONNECTOR, &mut c)? };
        let mut modes = vec![DrmModeModeinfo::default(); c.count_modes as usize];
        let mut encoders = vec![0u32; c.count_encoders as usize];
        let mut props = vec![0u32; c.count_props as usize];
        let mut values = vec![0u64; c.count_props as usize];
        let mut again = DrmModeGetConnector {
            connector_id: id,
            count_modes: c.count_modes,
            count_encoders: c.count_encoders,
            count_props: c.count_props,
            modes_ptr: modes.as_mut_ptr() as u64,
            encoders_ptr: encoders.as_mut_ptr() as u64,
            props_ptr: props.as_mut_ptr() as u64,
            prop_values_ptr: values.as_mut_ptr() as u64,
            ..Default::default()
        };
        unsafe { ioctl(fd, name, DRM_IOCTL_MODE_GETCONNECTOR, &mut again)? };
        if (again.count_modes, again.count_encoders, again.count_props)
            == (c.count_modes, c.count_encoders, c.count_props)
        {
            return Ok(Connector {
                id,
                connection: again.connection,
                encoder_id: again.encoder_id,
                modes,
                encoders,
            });
        }
    }
    Err(IoctlError {
        name,
        errno: libc::EAGAIN,
    })
}

pub fn get_encoder(fd: RawFd, id: u32) -> Result<DrmModeGetEncoder, IoctlError> {
    let mut e = DrmModeGetEncoder {
        encoder_id: id,
        ..Default::default()
    };
    unsafe { named_ioctl!(fd, DRM_IOCTL_MODE_GETENCODER, &mut e)? };
    Ok(e)
}

pub fn get_crtc(fd: RawFd, id: u32) -> Result<DrmModeCrtc, IoctlError> {
    let mut c = DrmModeCrtc {
        crtc_id: id,
        ..Default::default()
    };
    unsafe { named_ioctl!(fd, DRM_IOCTL_MODE_GETCRTC, &mut c)? };
    Ok(c)
}

/// SETCRTC: scan out `fb_id` on `crtc_id` through `connector_id` in `mode`.
pub fn set_crtc(
    fd: RawFd,
    crtc_id: u32,
    fb_id: u32,
    connector_id: u32,
    mode: &DrmModeModeinfo,
) -> Result<(), IoctlError> {
    let mut connectors = [connector_id];
    let mut c = DrmModeCrtc {
        set_connectors_ptr: connectors.as_mut_ptr() as u64,
        count_connectors: 1,
        crtc_id,
        fb_id,
        mode_valid: 1,
        mode: *mode,
        ..Default::default()
    };
    unsafe { named_ioctl!(fd, DRM_IOCTL_MODE_SETCRTC, &mut c) }
}

/// MAP_DUMB: the fake mmap offset of a dumb buffer.
pub fn map_dumb(fd: RawFd, handle: u32) -> Result<u64, IoctlError> {
    let mut m = DrmModeMapDumb {
        handle,
        ..Default::default()
    };
    unsafe { named_ioctl!(fd, DRM_IOCTL_MODE_MAP_DUMB, &mut m)? };
    Ok(m.offset)
}

/// DIRTYFB with no clips: the whole framebuffer changed.
pub fn dirty_fb(fd: RawFd, fb_id: u32) -> Result<(), IoctlError> {
    let mut d = DrmModeFbDirtyCmd {
        fb_id,
        ..Default::default()
    };
    unsafe { named_ioctl!(fd, DRM_IOCTL_MODE_DIRTYFB, &mut d) }
}

/// The preferred mode, else the first.
pub fn pick_mode(modes: &[DrmModeModeinfo]) -> Option<DrmModeModeinfo> {
    modes
        .iter()
        .find(|m| m.type_ & DRM_MODE_TYPE_PREFERRED != 0)
        .or(modes.first())
        .copied()
}

/// A CRTC for `conn`: its current encoder's CRTC if it has one, else the first CRTC that one of
/// its encoders can drive (`possible_crtcs` is a bitmask over GETRESOURCES' crtc order).
pub fn pick_crtc(fd: RawFd, res: &Resources, conn: &Connector) -> Result<Option<u32>, IoctlError> {
    if conn.encoder_id != 0 {
        let e = get_encoder(fd, conn.encoder_id)?;
        if e.crtc_id != 0 {
            return Ok(Some(e.crtc_id));
        }
    }
    for &enc in &conn.encoders {
        let e = get_encoder(fd, enc)?;
        if let Some(&crtc) = res
            .crtcs
            .iter()
            .enumerate()
            .find(|(i, _)| *i < 32 && e.possible_crtcs & (1 << i) != 0)
            .map(|(_, c)| c)
        {
            return Ok(Some(crtc));
        }
    }
    Ok(None)
}

/// Where a client scans out: the first connected connector with modes, its preferred mode,
/// and a CRTC that can drive it.
pub struct Output {
    pub connector_id: u32,
    pub crtc_id: u32,
    pub mode: DrmModeModeinfo,
    pub width: u32,
    pub height: u32,
}

/// An XRGB8888 dumb buffer of an [`Output`]'s mode size and its framebuffer.
pub struct DumbFb {
    pub dumb: DrmModeCreateDumb,
    pub fb_id: u32,
}

impl Output {
    /// Picks the output of the card behind `fd` (probing its connectors).
    pub fn pick(fd: RawFd) -> Result<Output, String> {
        let e = |e: IoctlError| e.to_string();
        let res = get_resources(fd).map_err(e)?;
        let mut chosen = None;
        for &id in &res.connectors {
            let c = get_connector(fd, id).map_err(e)?;
            if c.connection == DRM_MODE_CONNECTED && !c.modes.is_empty() {
                chosen = Some(c);
                break;
            }
        }
        let connector = chosen.ok_or_else(|| {
            format!(
                "no connected connector with modes among {:?}",
                res.connectors
            )
        })?;
        let mode = pick_mode(&connector.modes).ok_or("connector has no modes")?;
        let crtc_id = pick_crtc(fd, &res, &connector)
            .map_err(e)?
            .ok_or_else(|| format!("no CRTC can drive connector {}", connector.id))?;
        Ok(Output {
            connector_id: connector.id,
            crtc_id,
            mode,
            width: u32::from(mode.hdisplay),
            height: u32::from(mode.vdisplay),
        })
    }

    /// CREATE_DUMB (a linear buffer of the mode's size; the kernel fills in handle, pitch and
    /// size), then ADDFB (legacy: depth 24, bpp 32 means XRGB8888) on it.
    pub fn dumb_fb(&self, fd: RawFd) -> Result<DumbFb, IoctlError> {
        let (width, height) = (self.width, self.height);
        let mut dumb = DrmModeCreateDumb {
            width,
            height,
            bpp: 32,
            ..Default::default()
        };
        unsafe { named_ioctl!(fd, DRM_IOCTL_MODE_CREATE_DUMB, &mut dumb)? };
        let mut f = DrmModeFbCmd {
            width,
            height,
            pitch: dumb.pitch,
            bpp: 32,
            depth: 24,
            handle: dumb.handle,
            ..Default::default()
        };
        unsafe { named_ioctl!(fd, DRM_IOCTL_MODE_ADDFB, &mut f)? };
        Ok(DumbFb {
            dumb,
            fb_id: f.fb_id,
        })
    }

    /// SETCRTC: scan `fb` out on this output.
    pub fn scan_out(&self, fd: RawFd, fb: &DumbFb) -> Result<(), IoctlError> {
        set_crtc(fd, self.crtc_id, fb.fb_id, self.connector_id, &self.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_uapi() {
        assert_eq!(size_of::<DrmModeModeinfo>(), 68);
        assert_eq!(size_of::<DrmModeCardRes>(), 64);
        assert_eq!(size_of::<DrmModeCrtc>(), 104);
        assert_eq!(size_of::<DrmModeGetEncoder>(), 20);
        assert_eq!(size_of::<DrmModeGetConnector>(), 80);
        assert_eq!(size_of::<DrmModeFbCmd>(), 28);
        assert_eq!(size_of::<DrmModeFbDirtyCmd>(), 24);
        assert_eq!(size_of::<DrmModeCreateDumb>(), 32);
        assert_eq!(size_of::<DrmModeMapDumb>(), 16);
    }

    #[test]
    fn ioctl_numbers_match_libdrm() {
        assert_eq!(DRM_IOCTL_MODE_GETRESOURCES, 0xC040_64A0);
        assert_eq!(DRM_IOCTL_MODE_GETCRTC, 0xC068_64A1);
        assert_eq!(DRM_IOCTL_MODE_SETCRTC, 0xC068_64A2);
        assert_eq!(DRM_IOCTL_MODE_GETENCODER, 0xC014_64A6);
        assert_eq!(DRM_IOCTL_MODE_GETCONNECTOR, 0xC050_64A7);
        assert_eq!(DRM_IOCTL_MODE_ADDFB, 0xC01C_64AE);
        // drm.h: DRM_IOCTL_MODE_RMFB is DRM_IOWR(0xAF, unsigned int).
        assert_eq!(iowr::<u32>(DRM_IOCTL_BASE, 0xAF), 0xC004_64AF);
        assert_eq!(DRM_IOCTL_MODE_DIRTYFB, 0xC018_64B1);
        assert_eq!(DRM_IOCTL_MODE_CREATE_DUMB, 0xC020_64B2);
        assert_eq!(DRM_IOCTL_MODE_MAP_DUMB, 0xC010_64B3);
    }

    #[test]
    fn picks_the_preferred_mode() {
        let mode = |w: u16, t: u32| DrmModeModeinfo {
            hdisplay: w,
            type_: t,
            ..Default::default()
        };
        assert_eq!(
            pick_mode(&[mode(800, 0), mode(1024, DRM_MODE_TYPE_PREFERRED)]).map(|m| m.hdisplay),
            Some(1024)
        );
        assert_eq!(
            pick_mode(&[mode(800, 0), mode(1024, 0)]).map(|m| m.hdisplay),
            Some(800)
        );
        assert!(pick_mode(&[]).is_none());
    }

    #[test]
    fn ioctl_on_a_non_drm_fd_reports_enotty() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let err = get_resources(std::os::fd::AsRawFd::as_raw_fd(&f)).unwrap_err();
        assert_eq!(err.errno, libc::ENOTTY);
        assert_eq!(
            err.to_string(),
            "DRM_IOCTL_MODE_GETRESOURCES: ENOTTY (Inappropriate ioctl for device)"
        );
    }
}
