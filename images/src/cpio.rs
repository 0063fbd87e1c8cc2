//! A minimal writer for the "newc" cpio format the kernel unpacks as an initramfs.
//!
//! Entries get fixed owners (root), mtime 0 and sequential inode numbers, so archives are
//! reproducible. Parent directories are not implied: callers add them first.

use std::collections::HashSet;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

pub(crate) struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
    dirs: HashSet<String>,
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            written: 0,
            dirs: HashSet::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NUL in cpio name",
            ));
        }
        let ino = self.ino;
        self.ino += 1;
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            maj = 0,
            min = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            namesize = name.len() + 1,
            check = 0,
        );
        self.put(hdr.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    /// A directory (added once; repeated calls are ignored).
    pub(crate) fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        let key = name
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        if key.is_empty() || !self.dirs.insert(key.clone()) {
            return Ok(());
        }
        self.header(&key, S_IFDIR | (perm & 0o7777), 2, 0, (0, 0))
    }

    /// A directory and all its parents.
    pub(crate) fn dir_all(&mut self, name: &str) -> io::Result<()> {
        let name = name.trim_start_matches('/').trim_end_matches('/');
        let mut acc = String::new();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.dir(&acc.clone(), 0o755)?;
        }
        Ok(())
    }

    /// A regular file.
    pub(crate) fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large for cpio"))?;
        self.header(name, S_IFREG | (perm & 0o7777), 1, size, (0, 0))?;
        self.put(data)?;
        self.pad()
    }

    /// A symbolic link.
    pub(crate) fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.header(name, S_IFLNK | 0o777, 1, target.len() as u32, (0, 0))?;
        self.put(target.as_bytes())?;
        self.pad()
    }

    /// A character device node.
    pub(crate) fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.header(name, S_IFCHR | (perm & 0o7777), 1, 0, (major, minor))
    }

    /// Write the trailer and return the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 1, 0, (0, 0))?;
        Ok(self.out)
    }
}

/// One parsed entry: (name, mode, data, rdev).
#[cfg(test)]
type Entry = (String, u32, Vec<u8>, (u32, u32));

/// Parse a newc archive back (tests only).
#[cfg(test)]
pub(crate) fn parse(mut d: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut off = 0usize;
    let align = |x: usize| (x + 3) & !3;
    loop {
        assert_eq!(&d[..6], b"070701", "bad magic at {off}");
        let field = |i: usize| {
            u32::from_str_radix(std::str::from_utf8(&d[6 + i * 8..14 + i * 8]).unwrap(), 16)
                .unwrap()
        };
        let mode = field(1);
        let size = field(6) as usize;
        let rdev = (field(9), field(10));
        let namesize = field(11) as usize;
        let name = std::str::from_utf8(&d[110..110 + namesize - 1])
            .unwrap()
            .to_string();
        let data_start = align(off + 110 + namesize) - off;
        let data = d[data_start..data_start + size].to_vec();
        let next = align(off + data_start + size) - off;
        if name == "TRAILER!!!" {
            return out;
        }
        out.push((name, mode, data, rdev));
        d = &d[next..];
        off += next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_round_trip() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir_all("/lib/modules/6.12").unwrap();
        w.dir("lib", 0o755).unwrap(); // duplicate: ignored
        w.file("/init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("lib/modules/6.12/a.ko", 0o644, b"12345").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/modules",
                "lib/modules/6.12",
                "init",
                "lib/modules/6.12/a.ko",
                "bin/sh",
                "dev/console"
            ]
        );
        assert_eq!(entries[3].1, 0o100755);
        assert_eq!(entries[3].2, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[4].2, b"12345");
        assert_eq!(entries[5].1, 0o120777);
        assert_eq!(entries[5].2, b"busybox");
        assert_eq!(entries[6].1, 0o020600);
        assert_eq!(entries[6].3, (5, 1));
        assert_eq!(entries[0].1, 0o040755);
    }
}
