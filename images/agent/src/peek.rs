//! `vanish-agent peek`: one 32-bit read of a PCI memory BAR, as the CPU sees it.
//!
//! Maps `/sys/bus/pci/devices/BDF/resourceN` (sysfs allows mmap of memory BARs even when a
//! driver has claimed them, unlike /dev/mem under STRICT_DEVMEM) and reads one dword. Used to
//! check that a dead card answers all-ones.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

/// Parses decimal or 0x-hex.
pub fn parse_number(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("bad number {s:?}"))
}

/// Opens memory BAR `bar` of PCI function `bdf` (its sysfs `resourceN` file) for a dword
/// access at `offset`, checking the target first: a plain function name, BAR 0-5, a
/// dword-aligned offset inside the BAR.
pub fn open_bar(bdf: &str, bar: u8, offset: u64) -> Result<std::fs::File, String> {
    if bdf.is_empty() || bdf.contains('/') || bar > 5 || !offset.is_multiple_of(4) {
        return Err(format!(
            "bad peek target {bdf} BAR{bar} +{offset:#x} (dword-aligned offsets only)"
        ));
    }
    let path = format!("/sys/bus/pci/devices/{bdf}/resource{bar}");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    if offset.checked_add(4).is_none_or(|end| end > len) {
        return Err(format!(
            "offset {offset:#x} is outside BAR{bar} ({len:#x} bytes)"
        ));
    }
    Ok(file)
}

/// One dword of a memory BAR, mapped through its sysfs resource file (the page around it).
pub struct BarDword {
    map: crate::mmap::Mapping,
    /// Where the dword is inside the mapping.
    at: usize,
}

impl BarDword {
    /// Maps the dword at `offset` of memory BAR `bar` of PCI function `bdf`.
    pub fn map(bdf: &str, bar: u8, offset: u64) -> Result<BarDword, String> {
        if !offset.is_multiple_of(4) {
            return Err(format!("offset {offset:#x} is not a dword offset"));
        }
        let file = open_bar(bdf, bar, offset)?;
        let page = offset & !0xfff;
        let at = (offset - page) as usize;
        let map = crate::mmap::Mapping::shared(file.as_raw_fd(), at + 4, page)
            .map_err(|e| format!("{bdf} BAR{bar}: {e}"))?;
        Ok(BarDword { map, at })
    }

    /// One volatile read of the dword (a trapped access on an emulated card).
    pub fn read(&self) -> u32 {
        // SAFETY: `at + 4` lies inside the mapping (map() mapped exactly that much), which lives
        // as long as self; `at` is a dword offset into a page-aligned mapping, so the read is
        // aligned.
        unsafe { std::ptr::read_volatile(self.map.ptr().add(self.at).cast::<u32>()) }
    }
}

/// Reads the dword at `offset` of memory BAR `bar` of PCI function `bdf`.
pub fn read_u32(bdf: &str, bar: u8, offset: u64) -> Result<u32, String> {
    Ok(BarDword::map(bdf, bar, offset)?.read())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_targets_are_checked() {
        assert_eq!(parse_number("0x10"), Ok(16));
        assert_eq!(parse_number("12"), Ok(12));
        assert!(parse_number("zz").is_err());
        assert!(read_u32("../x", 0, 0).is_err());
        assert!(read_u32("0000:01:00.0", 6, 0).is_err());
        assert!(read_u32("0000:01:00.0", 1, 2).is_err());
    }
}
