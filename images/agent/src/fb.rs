//! The fbdev ioctls a mapping client needs, from the kernel UAPI header `include/uapi/linux/fb.h`.

use std::os::fd::RawFd;

use crate::drm::IoctlError;

/// fb.h: `#define FBIOGET_VSCREENINFO 0x4600` (a pre-`_IOC` number, no size encoded).
pub const FBIOGET_VSCREENINFO: u32 = 0x4600;
/// fb.h: `#define FBIOGET_FSCREENINFO 0x4602`.
pub const FBIOGET_FSCREENINFO: u32 = 0x4602;

/// fb.h: `struct fb_bitfield`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FbBitfield {
    pub offset: u32,
    pub length: u32,
    pub msb_right: u32,
}

/// fb.h: `struct fb_var_screeninfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FbVarScreeninfo {
    pub xres: u32,
    pub yres: u32,
    pub xres_virtual: u32,
    pub yres_virtual: u32,
    pub xoffset: u32,
    pub yoffset: u32,
    pub bits_per_pixel: u32,
    pub grayscale: u32,
    pub red: FbBitfield,
    pub green: FbBitfield,
    pub blue: FbBitfield,
    pub transp: FbBitfield,
    pub nonstd: u32,
    pub activate: u32,
    pub height: u32,
    pub width: u32,
    pub accel_flags: u32,
    pub pixclock: u32,
    pub left_margin: u32,
    pub right_margin: u32,
    pub upper_margin: u32,
    pub lower_margin: u32,
    pub hsync_len: u32,
    pub vsync_len: u32,
    pub sync: u32,
    pub vmode: u32,
    pub rotate: u32,
    pub colorspace: u32,
    pub reserved: [u32; 4],
}

/// fb.h: `struct fb_fix_screeninfo` (`unsigned long` fields follow the target's word size).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FbFixScreeninfo {
    pub id: [u8; 16],
    pub smem_start: libc::c_ulong,
    pub smem_len: u32,
    pub type_: u32,
    pub type_aux: u32,
    pub visual: u32,
    pub xpanstep: u16,
    pub ypanstep: u16,
    pub ywrapstep: u16,
    pub line_length: u32,
    pub mmio_start: libc::c_ulong,
    pub mmio_len: u32,
    pub accel: u32,
    pub capabilities: u16,
    pub reserved: [u16; 2],
}

pub fn get_vscreeninfo(fd: RawFd) -> Result<FbVarScreeninfo, IoctlError> {
    let mut v = FbVarScreeninfo::default();
    unsafe { crate::drm::named_ioctl!(fd, FBIOGET_VSCREENINFO, &mut v)? };
    Ok(v)
}

pub fn get_fscreeninfo(fd: RawFd) -> Result<FbFixScreeninfo, IoctlError> {
    let mut f = FbFixScreeninfo::default();
    unsafe { crate::drm::named_ioctl!(fd, FBIOGET_FSCREENINFO, &mut f)? };
    Ok(f)
}

/// Packs a 0xRRGGBB colour into this mode's pixel layout.
pub fn pack(var: &FbVarScreeninfo, rgb: u32) -> u32 {
    let chan = |v: u32, f: &FbBitfield| -> u32 {
        if f.length == 0 || f.length > 8 {
            return 0;
        }
        (v >> (8 - f.length)) << f.offset
    };
    chan((rgb >> 16) & 0xff, &var.red)
        | chan((rgb >> 8) & 0xff, &var.green)
        | chan(rgb & 0xff, &var.blue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn struct_sizes_match_the_uapi() {
        assert_eq!(size_of::<FbVarScreeninfo>(), 160);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(size_of::<FbFixScreeninfo>(), 80);
    }

    #[test]
    fn packs_xrgb8888_and_rgb565() {
        let bf = |offset, length| FbBitfield {
            offset,
            length,
            msb_right: 0,
        };
        let xrgb = FbVarScreeninfo {
            bits_per_pixel: 32,
            red: bf(16, 8),
            green: bf(8, 8),
            blue: bf(0, 8),
            ..Default::default()
        };
        assert_eq!(pack(&xrgb, 0x12_34_56), 0x12_34_56);
        let rgb565 = FbVarScreeninfo {
            bits_per_pixel: 16,
            red: bf(11, 5),
            green: bf(5, 6),
            blue: bf(0, 5),
            ..Default::default()
        };
        assert_eq!(pack(&rgb565, 0xff_ff_ff), 0xffff);
        assert_eq!(pack(&rgb565, 0xff_00_00), 0xf800);
        assert_eq!(pack(&rgb565, 0x00_00_ff), 0x001f);
    }
}
