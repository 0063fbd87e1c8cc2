//! Recognising the kms client's test pattern in a screenshot.
//!
//! The guest agent's `kms` client fills its own dumb buffer with eight vertical colour bars
//! (white, yellow, cyan, green, magenta, red, blue, black). Seeing them on the card proves the
//! client's modeset took effect with its buffer, not fbcon's.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context, Result};

/// The bars, left to right, as RGB.
pub const BARS: [[u8; 3]; 8] = [
    [255, 255, 255],
    [255, 255, 0],
    [0, 255, 255],
    [0, 255, 0],
    [255, 0, 255],
    [255, 0, 0],
    [0, 0, 255],
    [0, 0, 0],
];

/// Whether `rgb` (width × height, packed RGB) shows the bars on its middle line.
pub fn has_colour_bars(width: usize, height: usize, rgb: &[u8]) -> bool {
    if width < 8 || height == 0 || rgb.len() < width * height * 3 {
        return false;
    }
    let y = height / 2;
    BARS.iter().enumerate().all(|(i, want)| {
        let x = (2 * i + 1) * width / 16;
        let px = &rgb[(y * width + x) * 3..][..3];
        px.iter().zip(want).all(|(a, b)| a.abs_diff(*b) < 48)
    })
}

/// Reads a PNG screenshot and looks for the bars.
pub fn shows_colour_bars(path: &Path) -> Result<bool> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = png::Decoder::new(BufReader::new(file)).read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        return Ok(false);
    }
    Ok(has_colour_bars(
        info.width as usize,
        info.height as usize,
        &buf[..info.buffer_size()],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars(w: usize, h: usize) -> Vec<u8> {
        let mut rgb = Vec::with_capacity(w * h * 3);
        for _ in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&BARS[x * 8 / w]);
            }
        }
        rgb
    }

    #[test]
    fn recognises_bars_and_rejects_a_console() {
        assert!(has_colour_bars(1024, 768, &bars(1024, 768)));
        let mut console = vec![0u8; 64 * 8 * 3];
        console[..3].copy_from_slice(&[170, 170, 170]);
        assert!(!has_colour_bars(64, 8, &console));
        assert!(!has_colour_bars(4, 1, &[0; 12]));
    }
}
