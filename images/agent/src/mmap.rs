//! Shared read-write mappings of a device (a framebuffer, a dumb buffer, a BAR): the one mmap
//! wrapper of the clients and the bench programs.

use std::os::fd::RawFd;

use crate::sys::{errno, errno_text};

/// A `MAP_SHARED` read-write mapping, unmapped on drop (or by [`Mapping::unmap`], which
/// reports how munmap went).
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset`, at an address the kernel picks.
    pub fn shared(fd: RawFd, len: usize, offset: u64) -> Result<Mapping, String> {
        // SAFETY: a fresh shared mapping at a kernel-chosen address; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap {len} bytes at offset {offset:#x}: {}",
                errno_text(errno())
            ));
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// munmap now; `Err` carries the errno text (a client reports it).
    pub fn unmap(self) -> Result<(), String> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: ptr..ptr+len is the mapping made in `shared` (parts of it may since have been
        // replaced by anonymous pages, which munmap removes the same way); ManuallyDrop keeps
        // Drop from unmapping it a second time.
        if unsafe { libc::munmap(this.ptr.cast(), this.len) } == 0 {
            Ok(())
        } else {
            Err(errno_text(errno()))
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr..ptr+len is the mapping made in `shared`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A fresh read-write temp file of `len` bytes to map in tests (the caller removes it).
#[cfg(test)]
pub fn scratch_file(name: &str, len: u64) -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!("vanish-agent-{name}-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(len).unwrap();
    (path, file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn maps_a_file_shared_and_unmaps_it() {
        let (path, file) = scratch_file("mmap", 8192);
        let m = Mapping::shared(file.as_raw_fd(), 8192, 0).unwrap();
        assert_eq!(m.len(), 8192);
        // SAFETY: inside the mapping.
        unsafe { m.ptr().add(4097).write_volatile(0x5a) };
        assert_eq!(m.unmap(), Ok(()));
        // Shared: the write reached the file.
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data[4097], 0x5a);
        let bad = Mapping::shared(file.as_raw_fd(), 4096, 123).unwrap_err();
        assert!(
            bad.starts_with("mmap 4096 bytes at offset 0x7b: EINVAL"),
            "{bad}"
        );
        drop(file);
        std::fs::remove_file(&path).unwrap();
    }
}
