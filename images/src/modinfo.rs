//! Module dependencies read from the modules themselves, so that no host `depmod` is needed.
//!
//! Every `.ko` carries a `.modinfo` ELF section of NUL-separated `key=value` strings; modpost
//! writes `depends=a,b` there with the names of the modules it needs symbols from. That is exactly
//! what `depmod` turns into `modules.dep` (depmod adds the transitive closure and the paths), so
//! the initramfs builder can compute the closure itself and write the guest's `modules.dep`.
//! A fresh Debian 12 has no `kmod` package (platform.md §0), so this removes a host dependency.

use object::{Object, ObjectSection};

/// The `depends=` list of a module's `.modinfo` section: module names as the kernel spells them
/// (`drm_kms_helper`), in the order modpost wrote them. `None` if `elf` is not a readable ELF
/// file or has no `.modinfo`; an empty list for a module that depends on nothing.
pub(crate) fn modinfo_depends(elf: &[u8]) -> Option<Vec<String>> {
    // The `object` crate rather than a hand-rolled reader: it bounds-checks every header and
    // handles ELF32/64 and both endiannesses (a module tree may be for either guest).
    let file = object::File::parse(elf).ok()?;
    let data = file.section_by_name(".modinfo")?.data().ok()?;
    let mut deps = Vec::new();
    for entry in data.split(|&b| b == 0) {
        if let Some(list) = entry.strip_prefix(b"depends=") {
            let list = String::from_utf8_lossy(list);
            deps.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.replace('-', "_")),
            );
        }
    }
    Some(deps)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal little-endian ELF64 relocatable file with one `.modinfo` section holding
    /// `modinfo` and a `.shstrtab`.
    pub(crate) fn synthetic_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let modinfo_off = 64usize;
        let shstr_off = modinfo_off + modinfo.len();
        let sh_off = (shstr_off + shstrtab.len()).next_multiple_of(8);
        let mut d = vec![0u8; sh_off + 3 * 64];
        d[0..4].copy_from_slice(b"\x7fELF");
        d[4] = 2; // ELFCLASS64
        d[5] = 1; // little endian
        d[6] = 1; // EV_CURRENT
        d[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        d[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        d[20..24].copy_from_slice(&1u32.to_le_bytes());
        d[40..48].copy_from_slice(&(sh_off as u64).to_le_bytes()); // e_shoff
        d[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        d[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        d[60..62].copy_from_slice(&3u16.to_le_bytes()); // e_shnum
        d[62..64].copy_from_slice(&2u16.to_le_bytes()); // e_shstrndx
        d[modinfo_off..shstr_off].copy_from_slice(modinfo);
        d[shstr_off..shstr_off + shstrtab.len()].copy_from_slice(shstrtab);
        let mut section = |i: usize, name: u32, kind: u32, off: usize, size: usize| {
            let s = sh_off + i * 64;
            d[s..s + 4].copy_from_slice(&name.to_le_bytes());
            d[s + 4..s + 8].copy_from_slice(&kind.to_le_bytes());
            d[s + 24..s + 32].copy_from_slice(&(off as u64).to_le_bytes());
            d[s + 32..s + 40].copy_from_slice(&(size as u64).to_le_bytes());
            d[s + 48..s + 56].copy_from_slice(&1u64.to_le_bytes());
        };
        section(1, 1, 1, modinfo_off, modinfo.len()); // .modinfo, SHT_PROGBITS
        section(2, 10, 3, shstr_off, shstrtab.len()); // .shstrtab, SHT_STRTAB
        d
    }

    #[test]
    fn depends_come_from_modinfo() {
        let m = synthetic_module(
            b"license=GPL\0depends=drm_kms_helper,drm,i2c-algo-bit\0name=hibmc_drm\0",
        );
        assert_eq!(
            modinfo_depends(&m).unwrap(),
            ["drm_kms_helper", "drm", "i2c_algo_bit"]
        );
        let m = synthetic_module(b"depends=\0name=drm\0");
        assert_eq!(modinfo_depends(&m).unwrap(), Vec::<String>::new());
        assert_eq!(modinfo_depends(b"not an elf file"), None);
        let truncated = &synthetic_module(b"depends=a\0")[..70];
        assert_eq!(modinfo_depends(truncated), None);
    }
}
