//! Video memory for an emulated display card.
//!
//! VRAM is an anonymous memfd. The server maps it once for its own reads (scanout capture,
//! trapped BAR accesses) and hands the same fd to QEMU in the BAR's GET_REGION_INFO reply with
//! a sparse-mmap area covering the whole BAR, so the guest's framebuffer writes land directly in
//! this memory and never trap into the server.
//!
//! Invariant: every access is bounds-checked against [`Vram::size`]; offsets and lengths come from
//! the guest (through QEMU) and may be anything.

use std::fs::File;
use std::io::BufWriter;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;

use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, VolatileMemory};

mod scanout;
pub use scanout::{Frame, PixelFormat, Scanout};

/// Errors of VRAM set-up and capture.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("VRAM size {0:#x} is not a power of two of at least 64 KiB")]
    BadSize(u64),
    #[error("memfd_create failed: {0}")]
    Memfd(std::io::Error),
    #[error("sizing the VRAM memfd failed: {0}")]
    Truncate(std::io::Error),
    #[error("mapping VRAM failed: {0}")]
    Mmap(vm_memory::mmap::MmapRegionError),
    #[error("scanout {0} does not fit in {1:#x} bytes of VRAM")]
    ScanoutOutOfRange(Scanout, u64),
    #[error("writing {path}: {source}")]
    Png {
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The card's video memory: one shared memfd, mapped into this process.
pub struct Vram {
    file: File,
    map: MmapRegion,
}

impl Vram {
    /// Creates zeroed VRAM of `size` bytes (a power of two, as a PCI BAR must be).
    pub fn new(size: u64) -> Result<Vram> {
        if !size.is_power_of_two() || size < 0x10000 {
            return Err(Error::BadSize(size));
        }
        // SAFETY: the name is a valid NUL-terminated string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"vanish-vram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Memfd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(Error::Truncate)?;
        let clone = file.try_clone().map_err(Error::Memfd)?;
        let map =
            MmapRegion::from_file(FileOffset::new(clone, 0), size as usize).map_err(Error::Mmap)?;
        Ok(Vram { file, map })
    }

    /// Size in bytes (the BAR size).
    pub fn size(&self) -> u64 {
        self.map.size() as u64
    }

    /// The memfd to hand to QEMU; it stays owned by this `Vram`.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads `data.len()` bytes at `offset`. Bytes outside VRAM read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(len) = self.clamp(offset, data.len()) else {
            return;
        };
        if let Ok(slice) = self.map.get_slice(offset as usize, len) {
            slice.copy_to(&mut data[..len]);
        }
    }

    /// Writes `data` at `offset`. Bytes outside VRAM are dropped.
    pub fn write(&self, offset: u64, data: &[u8]) {
        let Some(len) = self.clamp(offset, data.len()) else {
            return;
        };
        if let Ok(slice) = self.map.get_slice(offset as usize, len) {
            slice.copy_from(&data[..len]);
        }
    }

    /// Zeroes all of VRAM.
    pub fn clear(&self) {
        if let Ok(slice) = self.map.get_slice(0, self.map.size()) {
            // VolatileSlice::write_bytes is per-byte volatile; one bulk copy of zeros is faster.
            let zeros = vec![0u8; 1 << 20];
            for chunk in 0..self.map.size().div_ceil(zeros.len()) {
                let start = chunk * zeros.len();
                let len = zeros.len().min(self.map.size() - start);
                if let Ok(part) = slice.subslice(start, len) {
                    part.copy_from(&zeros[..len]);
                }
            }
        }
    }

    /// The part of `[offset, offset+len)` that lies inside VRAM, as a length from `offset`.
    fn clamp(&self, offset: u64, len: usize) -> Option<usize> {
        let size = self.size();
        if offset >= size {
            return None;
        }
        Some(len.min((size - offset) as usize))
    }

    /// Converts what `scanout` describes into an RGB frame.
    pub fn capture(&self, scanout: &Scanout) -> Result<Frame> {
        let bytes = scanout
            .byte_len()
            .filter(|&len| {
                scanout
                    .offset
                    .checked_add(len)
                    .is_some_and(|end| end <= self.size())
            })
            .ok_or(Error::ScanoutOutOfRange(*scanout, self.size()))?;
        let mut raw = vec![0u8; bytes as usize];
        self.read(scanout.offset, &mut raw);
        Ok(scanout.decode(&raw))
    }

    /// Captures `scanout` and writes it to `path` as an 8-bit RGB PNG.
    pub fn screenshot(&self, scanout: &Scanout, path: &Path) -> Result<Frame> {
        let frame = self.capture(scanout)?;
        frame.write_png(path)?;
        Ok(frame)
    }
}

impl Frame {
    /// Writes the frame as an 8-bit RGB PNG.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Png {
            path: path.display().to_string(),
            source,
        };
        let file = File::create(path).map_err(|e| err(e.into()))?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| err(e.into()))?;
        writer
            .write_image_data(&self.rgb)
            .map_err(|e| err(e.into()))?;
        writer.finish().map_err(|e| err(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_sizes_a_bar_cannot_have() {
        assert!(matches!(Vram::new(3 << 20), Err(Error::BadSize(_))));
        assert!(matches!(Vram::new(4096), Err(Error::BadSize(_))));
    }

    #[test]
    fn reads_and_writes_are_clamped_to_vram() {
        let vram = Vram::new(1 << 16).unwrap();
        vram.write(0xfffe, &[1, 2, 3, 4]);
        let mut buf = [0xaa; 4];
        vram.read(0xfffe, &mut buf);
        assert_eq!(buf, [1, 2, 0, 0]);
        vram.read(u64::MAX, &mut buf);
        assert_eq!(buf, [0; 4]);
        vram.write(u64::MAX - 1, &[9; 8]);
    }

    #[test]
    fn memfd_is_shared_with_other_mappings() {
        let vram = Vram::new(1 << 16).unwrap();
        // What QEMU does with the fd: map it shared and write through that mapping.
        let file = vram.file.try_clone().unwrap();
        let other = MmapRegion::<()>::from_file(FileOffset::new(file, 0), 1 << 16).unwrap();
        other.get_slice(100, 4).unwrap().copy_from(&[7u8, 7, 7, 7]);
        let mut buf = [0; 4];
        vram.read(100, &mut buf);
        assert_eq!(buf, [7; 4]);
        vram.clear();
        vram.read(100, &mut buf);
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn capture_rejects_scanout_past_the_end() {
        let vram = Vram::new(1 << 16).unwrap();
        let s = Scanout {
            offset: 0,
            width: 1024,
            height: 768,
            stride: 4096,
            format: PixelFormat::Xrgb8888,
        };
        assert!(matches!(
            vram.capture(&s),
            Err(Error::ScanoutOutOfRange(..))
        ));
    }

    #[test]
    fn screenshot_round_trips_through_png() {
        let vram = Vram::new(1 << 16).unwrap();
        // 2x2 XRGB8888: red, green / blue, white, stride 16 (padding after each row).
        let px: [[u8; 4]; 4] = [[0, 0, 255, 0], [0, 255, 0, 0], [255, 0, 0, 0], [255; 4]];
        vram.write(0, &[px[0], px[1]].concat());
        vram.write(16, &[px[2], px[3]].concat());
        let s = Scanout {
            offset: 0,
            width: 2,
            height: 2,
            stride: 16,
            format: PixelFormat::Xrgb8888,
        };
        let dir = std::env::temp_dir().join(format!("vram-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.png");
        let frame = vram.screenshot(&s, &path).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((info.width, info.height), (2, 2));
        assert_eq!(&buf[..12], &frame.rgb);
        assert_eq!(
            &buf[..12],
            &[255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]
        );
    }
}
