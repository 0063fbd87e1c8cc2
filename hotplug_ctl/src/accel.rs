//! Which QEMU accelerator a guest runs under: KVM where the host can, TCG otherwise.
//!
//! The decision is a pure function of the user's choice, the host and guest architectures and
//! what `/dev/kvm` answered ([`decide`]), so it is unit-tested without a VM. A KVM that opens but
//! cannot run a guest (nested virtualisation on the project's own machines: the guest dies with
//! "KVM internal error ... emulation failure") is only found out at boot: the runner watches QEMU's
//! run state and, under `auto` only, boots again under TCG.

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::Path;

use images::Arch;

/// What the user asked for with `--accel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when `/dev/kvm` works and the guest is the host's architecture, else TCG.
    #[default]
    Auto,
    /// KVM or nothing: a run that cannot use it is a rig error (exit 125).
    Kvm,
    /// Software emulation, always available.
    Tcg,
}

/// The accelerator QEMU is started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// QEMU's name (`-accel kvm`).
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `/dev/kvm` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmState {
    /// No such device (no KVM module, or a container without it).
    Absent,
    /// It exists but cannot be used: permission, an API version we do not know, no VM.
    Unusable(String),
    /// It opens, speaks API 12 and creates a VM.
    Usable,
}

/// The decision and, when it is not what the user might expect, one line saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub why: Option<String>,
}

/// Picks the accelerator. `Err` is one line for `--accel kvm` that cannot be honoured.
pub fn decide(
    choice: AccelChoice,
    host: Arch,
    guest: Arch,
    kvm: &KvmState,
) -> Result<AccelDecision, String> {
    let tcg = |why: Option<String>| {
        Ok(AccelDecision {
            accel: Accel::Tcg,
            why,
        })
    };
    let obstacle = if host != guest {
        Some(format!(
            "the guest is {guest} and the host {host}: KVM runs only same-architecture guests"
        ))
    } else {
        match kvm {
            KvmState::Absent => Some("/dev/kvm does not exist".to_string()),
            KvmState::Unusable(why) => Some(format!("/dev/kvm is not usable: {why}")),
            KvmState::Usable => None,
        }
    };
    match (choice, obstacle) {
        (AccelChoice::Tcg, _) => tcg(None),
        (AccelChoice::Auto, Some(why)) => tcg(Some(format!("TCG (no KVM: {why})"))),
        (AccelChoice::Kvm, Some(why)) => Err(format!("--accel kvm: {why}")),
        (AccelChoice::Auto | AccelChoice::Kvm, None) => Ok(AccelDecision {
            accel: Accel::Kvm,
            why: None,
        }),
    }
}

/// `KVM_GET_API_VERSION` and `KVM_CREATE_VM` (`_IO(0xAE, 0x00)` and `_IO(0xAE, 0x01)`).
const KVM_GET_API_VERSION: libc::c_ulong = 0xae00;
const KVM_CREATE_VM: libc::c_ulong = 0xae01;
/// The only KVM API version there has ever been.
const KVM_API_VERSION: libc::c_int = 12;

/// Asks `path` (normally `/dev/kvm`) whether it can create a VM. Two ioctls, not the
/// `kvm-ioctls` crate: this is all vanish asks of KVM itself (QEMU does the rest).
pub fn probe_kvm(path: &Path) -> KvmState {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return KvmState::Absent,
        Err(e) => return KvmState::Unusable(e.to_string()),
    };
    // SAFETY: plain ioctls on an fd we own; neither takes a pointer argument.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != KVM_API_VERSION {
        return KvmState::Unusable(format!("KVM API version {version}, expected 12"));
    }
    // SAFETY: as above; the returned fd is closed at once.
    let vm = unsafe { libc::ioctl(file.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    if vm < 0 {
        return KvmState::Unusable(format!(
            "KVM_CREATE_VM failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: vm is a fresh fd returned by the kernel and owned by nobody else.
    unsafe { libc::close(vm) };
    KvmState::Usable
}

/// QEMU arguments for the accelerator and the CPU model that goes with it.
pub fn qemu_args(accel: Accel, arch: Arch) -> Vec<String> {
    let mut a = vec!["-accel".to_string(), accel.name().to_string()];
    match (accel, arch) {
        (Accel::Kvm, _) => a.extend(["-cpu".into(), "host".into()]),
        // pauth-impdef: the architected pointer-auth algorithm is very slow under TCG.
        (Accel::Tcg, Arch::Aarch64) => a.extend(["-cpu".into(), "max,pauth-impdef=on".into()]),
        (Accel::Tcg, Arch::X86_64) => {}
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: Arch = Arch::X86_64;
    const ARM: Arch = Arch::Aarch64;

    #[test]
    fn auto_uses_kvm_only_for_a_same_arch_guest_with_a_usable_dev_kvm() {
        let d = decide(AccelChoice::Auto, X86, X86, &KvmState::Usable).unwrap();
        assert_eq!(
            d,
            AccelDecision {
                accel: Accel::Kvm,
                why: None
            }
        );
        let d = decide(AccelChoice::Auto, X86, ARM, &KvmState::Usable).unwrap();
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.why.unwrap().contains("aarch64"));
        let d = decide(AccelChoice::Auto, ARM, ARM, &KvmState::Absent).unwrap();
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.why.unwrap().contains("/dev/kvm does not exist"));
        let d = decide(
            AccelChoice::Auto,
            X86,
            X86,
            &KvmState::Unusable("Permission denied".into()),
        )
        .unwrap();
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.why.unwrap().contains("Permission denied"));
    }

    #[test]
    fn explicit_choices() {
        for kvm in [KvmState::Usable, KvmState::Absent] {
            let d = decide(AccelChoice::Tcg, X86, X86, &kvm).unwrap();
            assert_eq!(
                d,
                AccelDecision {
                    accel: Accel::Tcg,
                    why: None
                }
            );
        }
        assert_eq!(
            decide(AccelChoice::Kvm, ARM, ARM, &KvmState::Usable)
                .unwrap()
                .accel,
            Accel::Kvm
        );
        let e = decide(AccelChoice::Kvm, X86, X86, &KvmState::Absent).unwrap_err();
        assert!(e.starts_with("--accel kvm: ") && !e.contains('\n'), "{e}");
        let e = decide(AccelChoice::Kvm, X86, ARM, &KvmState::Usable).unwrap_err();
        assert!(e.contains("same-architecture"), "{e}");
    }

    #[test]
    fn probe_of_a_missing_or_wrong_device() {
        assert_eq!(probe_kvm(Path::new("/nonexistent/kvm")), KvmState::Absent);
        // /dev/null opens but answers the ioctl with an error, not API 12.
        assert!(matches!(
            probe_kvm(Path::new("/dev/null")),
            KvmState::Unusable(_)
        ));
    }

    #[test]
    fn cpu_model_follows_the_accelerator() {
        assert_eq!(
            qemu_args(Accel::Kvm, X86),
            ["-accel", "kvm", "-cpu", "host"]
        );
        assert_eq!(qemu_args(Accel::Tcg, X86), ["-accel", "tcg"]);
        assert_eq!(
            qemu_args(Accel::Tcg, ARM),
            ["-accel", "tcg", "-cpu", "max,pauth-impdef=on"]
        );
    }
}
