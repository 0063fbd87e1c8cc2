//! Provisions everything a vanish guest boot needs, cached under `$VANISH_CACHE` (or
//! `~/.cache/vanish`):
//!
//! - a QEMU with the `vfio-user-pci` client ([`provision_qemu`]): the first suitable
//!   `qemu-system-*` on `PATH`, else a private Debian trixie root built with `mmdebstrap` from
//!   trixie-backports and run through its own dynamic loader;
//! - Debian guest kernels of either architecture ([`provision_debian_kernel`]), downloaded with the
//!   host's apt using a private configuration per suite and architecture, or a user's own kernel
//!   ([`user_kernel`]);
//! - busybox initramfs images holding the requested modules and their dependencies
//!   ([`build_initramfs`]).
//!
//! Every cache entry is keyed by version (or by a hash of its inputs), built in a temp dir and
//! renamed into place, under a per-entry lock file, so two runs at once are safe. Progress lines
//! go to stderr, prefixed `vanish: `.
//!
//! Cache layout:
//!
//! ```text
//! <cache>/apt/<suite>-<debarch>/            private apt config, lists, status
//! <cache>/qemu/<host debarch>/trixie-backports-<qemu version>/root
//! <cache>/kernels/<debarch>/<image package>_<version>/{root,kernel.json}
//! <cache>/busybox/<debarch>/<version>/busybox
//! <cache>/initramfs/<input hash>/{initramfs.cpio.gz,initramfs.json}
//! <cache>/kernel-source/linux-source-<series>_<version>/linux-source-<series>/
//! ```

mod apt;
mod cpio;
mod error;
mod guest_files;
mod initramfs;
mod kernel;
mod modinfo;
mod qemu;
mod source;
mod util;

pub mod kernel_tree;

use std::path::PathBuf;

pub use error::{Error, Result};
pub use guest_files::{elf_needs, resolve_guest_files, ElfNeeds, GuestFile};
pub use initramfs::{build_initramfs, provision_busybox, Busybox, Initramfs, InitramfsSpec};
pub use kernel::{
    cached_kernels, check_kernel_version, image_contains, kernel_release_from_image, known_series,
    provision_debian_kernel, resolve_debian_kernel, user_kernel, DebianKernelPackage, GuestKernel,
    SERIES,
};
pub use qemu::{provision_qemu, Qemu};
pub use source::{provision_kernel_source, KernelSource};

/// A guest (or host) CPU architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// Debian's name for the architecture: `amd64` or `arm64`.
    pub fn debian(&self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The QEMU system emulator binary name.
    pub fn qemu_system(&self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The guest serial console device (`console=` kernel argument) on the machines vanish uses
    /// (q35, virt).
    pub fn console(&self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// The architecture this program runs on.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The GNU multiarch triplet (`x86_64-linux-gnu`, `aarch64-linux-gnu`).
    pub(crate) fn triplet(&self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Arch> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x86-64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            other => Err(Error::invalid(
                format!("unknown architecture `{other}`"),
                "use x86_64 (amd64) or aarch64 (arm64)",
            )),
        }
    }
}

/// The root of vanish's download/build cache.
#[derive(Clone, Debug)]
pub struct Cache {
    pub root: PathBuf,
}

impl Cache {
    /// `$VANISH_CACHE` if set and non-empty, else `~/.cache/vanish`; created if missing.
    pub fn from_env() -> Result<Cache> {
        let root = match std::env::var_os("VANISH_CACHE").filter(|v| !v.is_empty()) {
            Some(v) => PathBuf::from(v),
            None => {
                let home = std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        Error::invalid(
                            "neither VANISH_CACHE nor HOME is set",
                            "set VANISH_CACHE to a directory for vanish's downloads",
                        )
                    })?;
                PathBuf::from(home).join(".cache").join("vanish")
            }
        };
        Cache::new(root)
    }

    /// A cache at an explicit directory (created if missing; made absolute).
    pub fn new(root: impl Into<PathBuf>) -> Result<Cache> {
        let root = root.into();
        util::create_dir_all(&root)?;
        let root = std::path::absolute(&root).map_err(|e| {
            Error::io(
                format!("cannot resolve cache directory {}", root.display()),
                e,
            )
        })?;
        Ok(Cache { root })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        for (s, a) in [
            ("x86_64", Arch::X86_64),
            ("amd64", Arch::X86_64),
            ("aarch64", Arch::Aarch64),
            ("arm64", Arch::Aarch64),
        ] {
            assert_eq!(s.parse::<Arch>().unwrap(), a);
        }
        assert!("riscv64".parse::<Arch>().is_err());
        assert_eq!(Arch::Aarch64.debian(), "arm64");
        assert_eq!(Arch::X86_64.qemu_system(), "qemu-system-x86_64");
        assert_eq!(Arch::Aarch64.console(), "ttyAMA0");
        assert_eq!(
            Arch::host().to_string().parse::<Arch>().unwrap(),
            Arch::host()
        );
    }
}
