//! The test picture: 8 vertical colour bars over the full width, and along the bottom a 16-row
//! black track in which a grey block moves right by [`STRIPE_STEP`] pixels every frame (wrapping
//! around), so a screenshot shows both that our buffer is scanned out and that it is live.

use std::ops::Range;

/// XRGB8888 bar colours, left to right.
pub const BARS: [u32; 8] = [
    0xffffff, 0xffff00, 0x00ffff, 0x00ff00, 0xff00ff, 0xff0000, 0x0000ff, 0x000000,
];
/// Height of the bottom track holding the moving block.
pub const STRIPE_HEIGHT: u32 = 16;
/// Colour of the moving block.
pub const STRIPE_GREY: u32 = 0x808080;
/// Colour of the rest of the track.
pub const TRACK: u32 = 0x000000;
/// How far the block moves each frame, in pixels.
pub const STRIPE_STEP: u32 = 8;

/// The bar colour at column `x` of a `width`-pixel picture.
pub fn bar_color(x: u32, width: u32) -> u32 {
    BARS[((u64::from(x) * 8) / u64::from(width.max(1))).min(7) as usize]
}

/// Where the moving block starts in `frame`, and its width.
pub fn stripe_span(frame: u64, width: u32) -> (u32, u32) {
    let width = width.max(1);
    let len = (width / 16).max(16).min(width);
    (
        ((frame * u64::from(STRIPE_STEP)) % u64::from(width)) as u32,
        len,
    )
}

/// First row of the track.
pub fn track_top(height: u32) -> u32 {
    height.saturating_sub(STRIPE_HEIGHT)
}

/// The colour of pixel (`x`, `y`) in `frame`.
pub fn pixel(x: u32, y: u32, width: u32, height: u32, frame: u64) -> u32 {
    if y < track_top(height) {
        return bar_color(x, width);
    }
    let (start, len) = stripe_span(frame, width);
    // The block wraps around the right edge.
    let rel = (x + width - start) % width.max(1);
    if rel < len {
        STRIPE_GREY
    } else {
        TRACK
    }
}

/// One row of the picture, packed by `pack`.
pub fn row(y: u32, width: u32, height: u32, frame: u64, pack: &dyn Fn(u32) -> u32) -> Vec<u32> {
    (0..width)
        .map(|x| pack(pixel(x, y, width, height, frame)))
        .collect()
}

/// A linear framebuffer in memory we may lose at any moment (a device mapping).
pub struct Surface {
    pub ptr: *mut u8,
    pub len: usize,
    pub pitch: usize,
    pub width: u32,
    pub height: u32,
    /// 2, 3 or 4.
    pub bytes_per_pixel: usize,
}

impl Surface {
    /// Draws `rows` of `frame`; checks `stop` before each row and returns false if it said stop.
    pub fn draw(
        &self,
        rows: Range<u32>,
        frame: u64,
        pack: &dyn Fn(u32) -> u32,
        stop: &dyn Fn() -> bool,
    ) -> bool {
        let bpp = self.bytes_per_pixel;
        let row_bytes = (self.width as usize * bpp).min(self.pitch);
        // Every bar row is alike, and so is every track row: pack each once.
        let top = track_top(self.height);
        let packed = |y: u32| -> Vec<u8> {
            let mut bytes = vec![0u8; row_bytes];
            for (x, px) in row(y, self.width, self.height, frame, pack)
                .into_iter()
                .enumerate()
            {
                if let Some(dst) = bytes.get_mut(x * bpp..(x + 1) * bpp) {
                    dst.copy_from_slice(&px.to_le_bytes()[..bpp]);
                }
            }
            bytes
        };
        let bars = if rows.start < top {
            packed(0)
        } else {
            Vec::new()
        };
        let track = if rows.end > top {
            packed(top)
        } else {
            Vec::new()
        };
        for y in rows.start..rows.end.min(self.height) {
            if stop() {
                return false;
            }
            let off = y as usize * self.pitch;
            if off + row_bytes > self.len {
                break;
            }
            let src = if y < top { &bars } else { &track };
            // SAFETY: off + row_bytes <= len, and ptr..ptr+len is our mapping (possibly already
            // replaced by anonymous memory after a fault, which is just as writable).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), row_bytes) };
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bars_across_the_width() {
        let w = 1024;
        let got: Vec<u32> = (0..8).map(|i| bar_color(i * 128 + 64, w)).collect();
        assert_eq!(got, BARS);
        assert_eq!(bar_color(0, w), 0xffffff);
        assert_eq!(bar_color(127, w), 0xffffff);
        assert_eq!(bar_color(128, w), 0xffff00);
        assert_eq!(bar_color(1023, w), 0x000000);
        // Widths that do not divide by 8 still give 8 bars and never index past the end.
        assert_eq!(bar_color(799, 800), 0x000000);
        assert_eq!(bar_color(0, 1), 0xffffff);
    }

    #[test]
    fn stripe_moves_and_wraps() {
        let (w, h) = (1024, 768);
        assert_eq!(stripe_span(0, w), (0, 64));
        assert_eq!(stripe_span(1, w), (8, 64));
        assert_eq!(stripe_span(128, w), (0, 64));
        assert_eq!(pixel(0, h - 1, w, h, 0), STRIPE_GREY);
        assert_eq!(pixel(63, h - 16, w, h, 0), STRIPE_GREY);
        assert_eq!(pixel(64, h - 1, w, h, 0), TRACK);
        assert_eq!(pixel(0, h - 17, w, h, 0), 0xffffff);
        // Frame 126 starts at 1008: the block wraps to columns 0..48.
        assert_eq!(pixel(1010, h - 1, w, h, 126), STRIPE_GREY);
        assert_eq!(pixel(47, h - 1, w, h, 126), STRIPE_GREY);
        assert_eq!(pixel(48, h - 1, w, h, 126), TRACK);
    }

    #[test]
    fn draws_into_memory_with_pitch() {
        let (w, h, pitch) = (64u32, 20u32, 64 * 4 + 16);
        let mut mem = vec![0xAAu8; pitch * h as usize];
        let s = Surface {
            ptr: mem.as_mut_ptr(),
            len: mem.len(),
            pitch,
            width: w,
            height: h,
            bytes_per_pixel: 4,
        };
        assert!(s.draw(0..h, 1, &|c| c, &|| false));
        let px = |x: usize, y: usize| {
            u32::from_le_bytes(
                mem[y * pitch + x * 4..y * pitch + x * 4 + 4]
                    .try_into()
                    .unwrap(),
            )
        };
        assert_eq!(px(0, 0), 0xffffff);
        assert_eq!(px(8, 3), 0xffff00);
        assert_eq!(px(63, 3), 0x000000);
        assert_eq!(px(7, 19), TRACK);
        assert_eq!(px(8, 19), STRIPE_GREY);
        assert_eq!(px(23, 4), STRIPE_GREY);
        assert_eq!(px(24, 4), TRACK);
        // Padding past the visible width is untouched.
        assert_eq!(mem[pitch - 1], 0xAA);
    }

    #[test]
    fn draw_stops_when_asked() {
        let mut mem = vec![0u8; 16 * 4 * 4];
        let s = Surface {
            ptr: mem.as_mut_ptr(),
            len: mem.len(),
            pitch: 64,
            width: 16,
            height: 4,
            bytes_per_pixel: 4,
        };
        assert!(!s.draw(0..4, 0, &|c| c, &|| true));
        assert!(mem.iter().all(|&b| b == 0));
    }
}
