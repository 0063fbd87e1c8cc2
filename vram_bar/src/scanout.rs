//! What a card scans out of VRAM, and decoding it into RGB.

use std::fmt;

/// Pixel layouts the emulated cards can scan out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// 32 bpp, little-endian XRGB (bytes B, G, R, X): DRM_FORMAT_XRGB8888.
    Xrgb8888,
    /// 32 bpp, big-endian order (bytes X, R, G, B): bochs' BGRX8888 with the qext byte-order switch.
    Bgrx8888,
    /// 16 bpp RGB565, little-endian.
    Rgb565,
}

impl PixelFormat {
    pub fn bytes_per_pixel(self) -> u32 {
        match self {
            PixelFormat::Xrgb8888 | PixelFormat::Bgrx8888 => 4,
            PixelFormat::Rgb565 => 2,
        }
    }
}

/// A rectangle of VRAM that the card's registers say is on screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scanout {
    /// Byte offset of the first pixel inside VRAM.
    pub offset: u64,
    pub width: u32,
    pub height: u32,
    /// Bytes from one line to the next; at least `width * bytes_per_pixel`.
    pub stride: u32,
    pub format: PixelFormat,
}

impl fmt::Display for Scanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{} {:?} at {:#x} stride {}",
            self.width, self.height, self.format, self.offset, self.stride
        )
    }
}

impl Scanout {
    /// Bytes of VRAM the scanout covers, or None when the registers describe nonsense
    /// (zero size, a stride shorter than a line, or arithmetic overflow).
    pub fn byte_len(&self) -> Option<u64> {
        let line = u64::from(self.width) * u64::from(self.format.bytes_per_pixel());
        if self.width == 0 || self.height == 0 || u64::from(self.stride) < line {
            return None;
        }
        u64::from(self.stride)
            .checked_mul(u64::from(self.height - 1))?
            .checked_add(line)
    }

    /// Decodes `raw` (exactly `byte_len()` bytes starting at the first pixel) into RGB.
    pub(crate) fn decode(&self, raw: &[u8]) -> Frame {
        let bpp = self.format.bytes_per_pixel() as usize;
        let mut rgb = Vec::with_capacity(self.width as usize * self.height as usize * 3);
        for y in 0..self.height as usize {
            let start = y * self.stride as usize;
            let line = &raw[start..start + self.width as usize * bpp];
            for px in line.chunks_exact(bpp) {
                rgb.extend_from_slice(&match self.format {
                    PixelFormat::Xrgb8888 => [px[2], px[1], px[0]],
                    PixelFormat::Bgrx8888 => [px[1], px[2], px[3]],
                    PixelFormat::Rgb565 => {
                        let v = u16::from_le_bytes([px[0], px[1]]);
                        let (r, g, b) = ((v >> 11) & 0x1f, (v >> 5) & 0x3f, v & 0x1f);
                        [
                            (r << 3 | r >> 2) as u8,
                            (g << 2 | g >> 4) as u8,
                            (b << 3 | b >> 2) as u8,
                        ]
                    }
                });
            }
        }
        Frame {
            width: self.width,
            height: self.height,
            rgb,
        }
    }
}

/// A captured screen: packed 8-bit RGB, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Frame {
    /// Number of distinct colours (capped at `limit`): 1 means a blank screen, a text console
    /// shows at least its background and foreground.
    pub fn distinct_colors(&self, limit: usize) -> usize {
        let mut seen = std::collections::HashSet::new();
        for px in self.rgb.chunks_exact(3) {
            seen.insert([px[0], px[1], px[2]]);
            if seen.len() >= limit {
                break;
            }
        }
        seen.len()
    }

    /// Fraction of pixels that differ from the most common colour (0.0 for a blank screen).
    pub fn ink_ratio(&self) -> f64 {
        let mut counts = std::collections::HashMap::new();
        for px in self.rgb.chunks_exact(3) {
            *counts.entry([px[0], px[1], px[2]]).or_insert(0usize) += 1;
        }
        let total = self.rgb.len() / 3;
        let background = counts.values().copied().max().unwrap_or(0);
        if total == 0 {
            0.0
        } else {
            (total - background) as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_len_rejects_nonsense() {
        let s = |w, h, stride| Scanout {
            offset: 0,
            width: w,
            height: h,
            stride,
            format: PixelFormat::Xrgb8888,
        };
        assert_eq!(s(1024, 768, 4096).byte_len(), Some(4096 * 768));
        assert_eq!(s(1024, 768, 4000).byte_len(), None);
        assert_eq!(s(0, 768, 4096).byte_len(), None);
        assert_eq!(s(2, 2, 16).byte_len(), Some(24));
    }

    #[test]
    fn decodes_rgb565_to_full_range() {
        let s = Scanout {
            offset: 0,
            width: 2,
            height: 1,
            stride: 4,
            format: PixelFormat::Rgb565,
        };
        let f = s.decode(&[0x00, 0xf8, 0xff, 0xff]);
        assert_eq!(f.rgb, vec![255, 0, 0, 255, 255, 255]);
        assert_eq!(f.distinct_colors(10), 2);
        assert!((f.ink_ratio() - 0.5).abs() < 1e-9);
    }
}
