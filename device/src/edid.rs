//! The EDID both cards serve for their default monitor, and EDID sanity checks.
//!
//! The monitor is chosen for hibmc-drm, the pickier of the two drivers: `hibmc_crtc_mode_valid`
//! keeps a mode only if its refresh rounds to 59..=61 Hz and its resolution is in the driver's
//! PLL table, and 6.12+ (`hibmc_get_best_clock_idx`) also wants the mode's clock within 1 % of the
//! table clock. If an EDID is served, DRM uses only the EDID's modes, so a mode the driver rejects
//! is merely dropped, but an EDID with no acceptable mode leaves fbcon with nothing to light. So
//! every timing below is a VESA DMT mode at 60 Hz that passes that check in 6.1, 6.12 and 7.x:
//!
//! | mode | DMT clock | PLL table clock (6.12+) |
//! | --- | --- | --- |
//! | 1024x768 (preferred, DTD) | 65.000 MHz | 65.000 |
//! | 640x480, 800x600, 1024x768 (established) | 25.175 / 40.000 / 65.000 | 25.000 / 40.000 / 65.000 |
//! | 1280x1024, 1280x960 | 108.000 | 108.000 |
//! | 1280x720 | 74.250 | 74.375 |
//! | 1440x900 | 106.500 | 105.952 |
//! | 1600x1200 | 162.000 | 162.500 |
//! | 1920x1080 | 148.500 | 148.750 |
//! | 1920x1200 | 193.250 | 193.750 |
//!
//! Left out on purpose: 1152x864 (DMT has it only at 75 Hz), 1280x768 (5:3, which a standard
//! timing cannot express), 1600x900 (DMT has it only with reduced blanking, which DRM does not pick
//! for an analog EDID 1.3 monitor, and the GTF fallback's clock misses the table).
//! The "continuous frequency / GTF" feature bit stays clear, so DRM infers no further modes from
//! the range limits. bochs-drm accepts all of these modes too.

/// EDID block size.
pub const BLOCK_SIZE: usize = 128;
/// Every EDID starts with this.
pub const HEADER: [u8; 8] = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];
/// Offset of the extension-block count in block 0.
const EXTENSION_COUNT: usize = 126;
/// Offsets of the four 18-byte descriptors in block 0; the first is the preferred timing.
const DESCRIPTORS: [usize; 4] = [54, 72, 90, 108];

/// Display-descriptor tags (EDID 1.3 section 3.10.3).
const TAG_MONITOR_NAME: u8 = 0xfc;
const TAG_RANGE_LIMITS: u8 = 0xfd;
const TAG_DUMMY: u8 = 0x10;

/// The name the monitor reports (at most 13 bytes).
pub const MONITOR_NAME: &str = "vanish";

/// A detailed timing, as VESA DMT gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetailedTiming {
    /// Pixel clock in kHz (stored in units of 10 kHz).
    pub clock_khz: u32,
    pub hdisplay: u16,
    pub hsync_start: u16,
    pub hsync_end: u16,
    pub htotal: u16,
    pub vdisplay: u16,
    pub vsync_start: u16,
    pub vsync_end: u16,
    pub vtotal: u16,
    pub hsync_positive: bool,
    pub vsync_positive: bool,
}

/// DMT ID 10h: 1024x768 at 60 Hz, 65.000 MHz, negative syncs.
pub const DMT_1024X768_60: DetailedTiming = DetailedTiming {
    clock_khz: 65_000,
    hdisplay: 1024,
    hsync_start: 1048,
    hsync_end: 1184,
    htotal: 1344,
    vdisplay: 768,
    vsync_start: 771,
    vsync_end: 777,
    vtotal: 806,
    hsync_positive: false,
    vsync_positive: false,
};

/// Standard timings (hdisplay, aspect code, refresh). Aspect codes for EDID 1.3+:
/// 0 = 16:10, 1 = 4:3, 2 = 5:4, 3 = 16:9.
const STANDARD_TIMINGS: [(u16, u8, u8); 7] = [
    (1280, 2, 60), // 1280x1024
    (1280, 1, 60), // 1280x960
    (1280, 3, 60), // 1280x720
    (1440, 0, 60), // 1440x900
    (1600, 1, 60), // 1600x1200
    (1920, 3, 60), // 1920x1080
    (1920, 0, 60), // 1920x1200
];

/// Established timings I and II: bit 5 of byte 0x23 = 640x480@60, bit 0 = 800x600@60; bit 3 of
/// byte 0x24 = 1024x768@60. Nothing from the manufacturer's byte 0x25.
const ESTABLISHED_TIMINGS: [u8; 3] = [0x21, 0x08, 0x00];

/// Physical size: a 4:3 panel of 320 x 240 mm.
const WIDTH_MM: u16 = 320;
const HEIGHT_MM: u16 = 240;

/// The default monitor: EDID 1.3, analog input, preferred mode 1024x768@60 (see the module docs).
pub fn default_edid() -> Vec<u8> {
    let mut e = vec![0u8; BLOCK_SIZE];
    e[0..8].copy_from_slice(&HEADER);
    // Manufacturer "VNS": three 5-bit letters ('A' = 1), big-endian.
    let pnp = |c: u8| u16::from(c - b'A' + 1);
    let id = pnp(b'V') << 10 | pnp(b'N') << 5 | pnp(b'S');
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&0x1711u16.to_le_bytes()); // product code
    e[12..16].copy_from_slice(&1u32.to_le_bytes()); // serial number
    e[16] = 1; // week of manufacture
    e[17] = (2025 - 1990) as u8; // year of manufacture, counted from 1990
    e[18] = 1; // EDID version 1.3
    e[19] = 3;
    // Analog input, 0.7 V / 0.3 V levels, separate syncs: what a VGA connector carries.
    e[20] = 0x08;
    e[21] = (WIDTH_MM / 10) as u8;
    e[22] = (HEIGHT_MM / 10) as u8;
    e[23] = 120; // gamma 2.2, stored as 100 * gamma - 100
                 // DPMS active-off, RGB colour, sRGB default colour space, preferred timing in the first
                 // descriptor; bit 0 (GTF / continuous frequency) clear so DRM infers no extra modes.
    e[24] = 0x20 | 0x08 | 0x04 | 0x02;
    e[25..35].copy_from_slice(&chromaticity());
    e[35..38].copy_from_slice(&ESTABLISHED_TIMINGS);
    for (i, slot) in e[38..54].chunks_exact_mut(2).enumerate() {
        slot.copy_from_slice(&match STANDARD_TIMINGS.get(i) {
            Some(&(h, aspect, refresh)) => [(h / 8 - 31) as u8, aspect << 6 | (refresh - 60)],
            None => [0x01, 0x01], // unused slot
        });
    }
    e[54..72].copy_from_slice(&detailed_timing(&DMT_1024X768_60));
    e[72..90].copy_from_slice(&monitor_name(MONITOR_NAME));
    e[90..108].copy_from_slice(&range_limits());
    e[108..126].copy_from_slice(&display_descriptor(TAG_DUMMY, [0; 13]));
    e[EXTENSION_COUNT] = 0;
    e[127] = checksum_byte(&e[..127]);
    e
}

/// sRGB primaries and D65 white, as 10-bit binary fractions (EDID section 3.7).
fn chromaticity() -> [u8; 10] {
    let q = |v: f64| (v * 1024.0).round() as u16;
    let [rx, ry, gx, gy, bx, by, wx, wy] =
        [0.640, 0.330, 0.300, 0.600, 0.150, 0.060, 0.3127, 0.3290].map(q);
    let lo = |a: u16, b: u16, c: u16, d: u16| {
        ((a & 3) << 6 | (b & 3) << 4 | (c & 3) << 2 | (d & 3)) as u8
    };
    [
        lo(rx, ry, gx, gy),
        lo(bx, by, wx, wy),
        (rx >> 2) as u8,
        (ry >> 2) as u8,
        (gx >> 2) as u8,
        (gy >> 2) as u8,
        (bx >> 2) as u8,
        (by >> 2) as u8,
        (wx >> 2) as u8,
        (wy >> 2) as u8,
    ]
}

/// An 18-byte detailed timing descriptor (EDID section 3.10.2).
fn detailed_timing(t: &DetailedTiming) -> [u8; 18] {
    let hblank = t.htotal - t.hdisplay;
    let vblank = t.vtotal - t.vdisplay;
    let hso = t.hsync_start - t.hdisplay;
    let hsw = t.hsync_end - t.hsync_start;
    let vso = t.vsync_start - t.vdisplay;
    let vsw = t.vsync_end - t.vsync_start;
    let clock = (t.clock_khz / 10) as u16;
    let low = |v: u16| (v & 0xff) as u8;
    let high_nibbles = |a: u16, b: u16| ((a >> 8 & 0xf) << 4 | (b >> 8 & 0xf)) as u8;
    // Digital separate sync (bits 4:3 = 11), then the two polarities.
    let flags = 0x18 | u8::from(t.vsync_positive) << 2 | u8::from(t.hsync_positive) << 1;
    [
        low(clock),
        (clock >> 8) as u8,
        low(t.hdisplay),
        low(hblank),
        high_nibbles(t.hdisplay, hblank),
        low(t.vdisplay),
        low(vblank),
        high_nibbles(t.vdisplay, vblank),
        low(hso),
        low(hsw),
        ((vso & 0xf) << 4 | (vsw & 0xf)) as u8,
        ((hso >> 8 & 3) << 6 | (hsw >> 8 & 3) << 4 | (vso >> 4 & 3) << 2 | (vsw >> 4 & 3)) as u8,
        low(WIDTH_MM),
        low(HEIGHT_MM),
        high_nibbles(WIDTH_MM, HEIGHT_MM),
        0, // no borders
        0,
        flags,
    ]
}

/// A display descriptor: three zero bytes, the tag, a zero, then 13 bytes of payload.
fn display_descriptor(tag: u8, payload: [u8; 13]) -> [u8; 18] {
    let mut d = [0u8; 18];
    d[3] = tag;
    d[5..].copy_from_slice(&payload);
    d
}

/// Text payload: up to 13 bytes, ended by a line feed and padded with spaces.
fn monitor_name(name: &str) -> [u8; 18] {
    let mut text = [b' '; 13];
    let bytes = &name.as_bytes()[..name.len().min(13)];
    text[..bytes.len()].copy_from_slice(bytes);
    if let Some(lf) = text.get_mut(bytes.len()) {
        *lf = b'\n';
    }
    display_descriptor(TAG_MONITOR_NAME, text)
}

/// Range limits that cover every mode above: 50-75 Hz, 30-80 kHz, 200 MHz; no secondary GTF.
fn range_limits() -> [u8; 18] {
    let mut p = [b' '; 13];
    p[..6].copy_from_slice(&[50, 75, 30, 80, 200 / 10, 0x00]);
    p[6] = b'\n';
    display_descriptor(TAG_RANGE_LIMITS, p)
}

/// The byte that makes `bytes` plus it sum to 0 mod 256.
fn checksum_byte(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Checks what DRM's `drm_edid_block_valid` cares about: 128 bytes per block, as many blocks as
/// block 0 announces, the fixed header, version 1, and every block summing to 0 mod 256.
pub fn validate(blob: &[u8]) -> Result<(), String> {
    if blob.len() < BLOCK_SIZE {
        return Err(format!(
            "length {} is shorter than one {BLOCK_SIZE}-byte block",
            blob.len()
        ));
    }
    if blob[..8] != HEADER {
        return Err(format!("bad header {:02x?}", &blob[..8]));
    }
    if blob[18] != 1 {
        return Err(format!("EDID version {} (only 1.x exists)", blob[18]));
    }
    let blocks = 1 + usize::from(blob[EXTENSION_COUNT]);
    if blob.len() != blocks * BLOCK_SIZE {
        return Err(format!(
            "block 0 announces {} extension block(s), so {} bytes, but the blob has {}",
            blocks - 1,
            blocks * BLOCK_SIZE,
            blob.len()
        ));
    }
    for (i, block) in blob.chunks_exact(BLOCK_SIZE).enumerate() {
        let sum = block.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
        if sum != 0 {
            return Err(format!("block {i} checksum is off by {sum:#04x}"));
        }
    }
    Ok(())
}

/// Width and height of the first detailed timing (the preferred mode), if there is one.
pub fn preferred_mode(blob: &[u8]) -> Option<(u16, u16)> {
    detailed_timings(blob)
        .into_iter()
        .next()
        .map(|t| (t.hdisplay, t.vdisplay))
}

/// Decodes the detailed timings in block 0, in order (display descriptors are skipped).
pub fn detailed_timings(blob: &[u8]) -> Vec<DetailedTiming> {
    let mut out = Vec::new();
    for &at in &DESCRIPTORS {
        let Some(d) = blob.get(at..at + 18) else {
            break;
        };
        let clock = u16::from_le_bytes([d[0], d[1]]);
        if clock == 0 {
            continue; // a display descriptor
        }
        let hi = |byte: u8, shift: u8| u16::from(byte >> shift & 0xf) << 8;
        let hdisplay = u16::from(d[2]) | hi(d[4], 4);
        let hblank = u16::from(d[3]) | hi(d[4], 0);
        let vdisplay = u16::from(d[5]) | hi(d[7], 4);
        let vblank = u16::from(d[6]) | hi(d[7], 0);
        let hso = u16::from(d[8]) | u16::from(d[11] >> 6 & 3) << 8;
        let hsw = u16::from(d[9]) | u16::from(d[11] >> 4 & 3) << 8;
        let vso = u16::from(d[10] >> 4) | u16::from(d[11] >> 2 & 3) << 4;
        let vsw = u16::from(d[10] & 0xf) | u16::from(d[11] & 3) << 4;
        out.push(DetailedTiming {
            clock_khz: u32::from(clock) * 10,
            hdisplay,
            hsync_start: hdisplay + hso,
            hsync_end: hdisplay + hso + hsw,
            htotal: hdisplay + hblank,
            vdisplay,
            vsync_start: vdisplay + vso,
            vsync_end: vdisplay + vso + vsw,
            vtotal: vdisplay + vblank,
            hsync_positive: d[17] & 0x02 != 0,
            vsync_positive: d[17] & 0x04 != 0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hibmc_pll_table` of 6.12+/7.x: (hdisplay, vdisplay, table clock in kHz).
    const HIBMC_PLL_TABLE: [(u16, u16, u32); 13] = [
        (640, 480, 25_000),
        (800, 600, 40_000),
        (1024, 768, 65_000),
        (1152, 864, 78_750),
        (1280, 768, 80_000),
        (1280, 720, 74_375),
        (1280, 960, 108_000),
        (1280, 1024, 108_000),
        (1440, 900, 105_952),
        (1600, 900, 108_000),
        (1600, 1200, 162_500),
        (1920, 1080, 148_750),
        (1920, 1200, 193_750),
    ];

    /// The DMT modes the EDID names: (w, h, refresh, clock kHz, htotal, vtotal).
    const DMT: [(u16, u16, u32, u32, u32, u32); 10] = [
        (640, 480, 60, 25_175, 800, 525),
        (800, 600, 60, 40_000, 1056, 628),
        (1024, 768, 60, 65_000, 1344, 806),
        (1280, 1024, 60, 108_000, 1688, 1066),
        (1280, 960, 60, 108_000, 1800, 1000),
        (1280, 720, 60, 74_250, 1650, 750),
        (1440, 900, 60, 106_500, 1904, 934),
        (1600, 1200, 60, 162_000, 2160, 1250),
        (1920, 1080, 60, 148_500, 2200, 1125),
        (1920, 1200, 60, 193_250, 2592, 1245),
    ];

    /// `hibmc_crtc_mode_valid` as in 6.12+: refresh 59..=61 and a table entry within 1 %.
    fn hibmc_accepts(w: u16, h: u16, clock_khz: u32, htotal: u32, vtotal: u32) -> bool {
        // drm_mode_vrefresh: DIV_ROUND_CLOSEST(clock * 1000, htotal * vtotal)
        let total = htotal * vtotal;
        let vrefresh = (clock_khz * 1000 + total / 2) / total;
        (59..=61).contains(&vrefresh)
            && HIBMC_PLL_TABLE
                .iter()
                .any(|&(tw, th, tc)| tw == w && th == h && clock_khz.abs_diff(tc) < clock_khz / 100)
    }

    fn dmt(w: u16, h: u16, refresh: u32) -> (u32, u32, u32) {
        let m = DMT.iter().find(|m| (m.0, m.1, m.2) == (w, h, refresh));
        let m = m.unwrap_or_else(|| panic!("{w}x{h}@{refresh} is not a mode this test knows"));
        (m.3, m.4, m.5)
    }

    /// Established and standard timings of block 0 as (w, h, refresh).
    fn listed_modes(e: &[u8]) -> Vec<(u16, u16, u32)> {
        let mut modes = Vec::new();
        let est = [
            (0x23, 5, (640, 480, 60)),
            (0x23, 0, (800, 600, 60)),
            (0x24, 3, (1024, 768, 60)),
        ];
        for (byte, bit, mode) in est {
            if e[byte] >> bit & 1 == 1 {
                modes.push(mode);
            }
        }
        // Any other established bit is a mode this EDID must not list.
        let known: u32 = 1 << 5 | 1 << 0 | 1 << 11;
        let all = u32::from(e[0x23]) | u32::from(e[0x24]) << 8 | u32::from(e[0x25]) << 16;
        assert_eq!(
            all & !known,
            0,
            "unexpected established timing bits {all:#x}"
        );
        for s in e[38..54].chunks_exact(2) {
            if s == [1, 1] {
                continue;
            }
            let w = (u16::from(s[0]) + 31) * 8;
            let h = match s[1] >> 6 {
                0 => w * 10 / 16,
                1 => w * 3 / 4,
                2 => w * 4 / 5,
                _ => w * 9 / 16,
            };
            modes.push((w, h, u32::from(s[1] & 0x3f) + 60));
        }
        modes
    }

    #[test]
    fn default_edid_is_a_valid_edid_1_3() {
        let e = default_edid();
        assert_eq!(e.len(), 128);
        assert_eq!(validate(&e), Ok(()));
        assert_eq!((e[18], e[19]), (1, 3));
        assert_eq!(e[126], 0, "no extensions");
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }

    #[test]
    fn preferred_mode_is_dmt_1024x768_at_65_mhz() {
        let e = default_edid();
        assert_eq!(preferred_mode(&e), Some((1024, 768)));
        assert_eq!(detailed_timings(&e), vec![DMT_1024X768_60]);
        // The bytes the reference EDID in the register spec has for the same mode, sizes aside.
        assert_eq!(
            &e[54..66],
            &[0x64, 0x19, 0x00, 0x40, 0x41, 0x00, 0x26, 0x30, 0x18, 0x88, 0x36, 0x00]
        );
        assert_eq!(e[24] & 0x02, 0x02, "first DTD is the preferred mode");
        assert_eq!(
            e[24] & 0x01,
            0x00,
            "no GTF: DRM must not infer modes from the range limits"
        );
    }

    #[test]
    fn every_listed_mode_passes_hibmc_mode_valid() {
        let e = default_edid();
        let modes = listed_modes(&e);
        assert_eq!(modes.len(), 10);
        for (w, h, refresh) in modes {
            let (clock, htotal, vtotal) = dmt(w, h, refresh);
            assert!(
                hibmc_accepts(w, h, clock, htotal, vtotal),
                "{w}x{h}@{refresh} would be rejected"
            );
        }
        let t = DMT_1024X768_60;
        assert!(hibmc_accepts(
            t.hdisplay,
            t.vdisplay,
            t.clock_khz,
            t.htotal.into(),
            t.vtotal.into()
        ));
    }

    #[test]
    fn modes_hibmc_rejects_are_recognised_as_such() {
        // The check itself must be able to fail: 1152x864 exists in DMT only at 75 Hz, and the
        // reduced-blanking 1280x768 (68.25 MHz) misses the 80 MHz table clock.
        assert!(!hibmc_accepts(1152, 864, 108_000, 1600, 900));
        assert!(!hibmc_accepts(1280, 768, 68_250, 1440, 790));
        assert!(!hibmc_accepts(1366, 768, 85_500, 1792, 798));
    }

    #[test]
    fn name_and_range_limits_are_there() {
        let e = default_edid();
        let name = &e[72..90];
        assert_eq!(name[3], TAG_MONITOR_NAME);
        assert_eq!(&name[5..12], b"vanish\n");
        let range = &e[90..108];
        assert_eq!(range[3], TAG_RANGE_LIMITS);
        assert_eq!(&range[5..10], &[50, 75, 30, 80, 20]);
        // 1920x1200@60 (74.6 kHz, 193.25 MHz) is inside the limits.
        assert!(74 < range[8] && 193 < u32::from(range[9]) * 10);
    }

    #[test]
    fn corrupted_byte_fails_the_checksum() {
        let mut e = default_edid();
        e[60] ^= 0x01;
        assert!(validate(&e).unwrap_err().contains("checksum"));
    }

    #[test]
    fn bad_header_and_bad_lengths_fail() {
        let e = default_edid();
        let mut bad = e.clone();
        bad[0] = 0xff;
        assert!(validate(&bad).is_err());
        assert!(validate(&e[..127]).is_err());
        assert!(validate(&[]).is_err());
        let mut long = e.clone();
        long.extend_from_slice(&[0; 128]);
        assert!(validate(&long)
            .unwrap_err()
            .contains("announces 0 extension"));
    }

    /// A CTA-861 extension block with no data blocks and no DTDs.
    fn cta_block() -> Vec<u8> {
        let mut b = vec![0u8; 128];
        b[0] = 0x02; // CTA extension tag
        b[1] = 0x03; // revision 3
        b[2] = 0x04; // DTDs would start at 4: no data block collection
        b[127] = checksum_byte(&b[..127]);
        b
    }

    #[test]
    fn two_block_edid_is_checked_block_by_block() {
        let mut e = default_edid();
        e[126] = 1;
        e[127] = checksum_byte(&e[..127]);
        let mut two = e.clone();
        two.extend_from_slice(&cta_block());
        assert_eq!(validate(&two), Ok(()));
        assert!(validate(&e).unwrap_err().contains("announces 1 extension"));
        two[200] ^= 0x80;
        assert!(validate(&two).unwrap_err().contains("block 1"));
    }
}
