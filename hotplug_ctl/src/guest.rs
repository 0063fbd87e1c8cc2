//! What runs inside the guest: the initramfs `/init` and the shell functions it uses. Both are busybox sh; they are shipped verbatim in the initramfs.

/// `/init`: mounts, loads the modules (the card's driver last), then serves the agent.
pub const INIT: &str = include_str!("../../images/guest/init.sh");

/// `/etc/vanish/lib.sh`: the functions /init uses (finding the card, Bus Master Enable).
pub const LIB: &str = include_str!("../../images/guest/lib.sh");

/// Name of the virtio-serial port the agent listens on.
pub const AGENT_PORT: &str = "vanish.agent";

/// The static guest agent (images/agent) for `arch`, built by build.rs.
pub fn agent_binary(arch: images::Arch) -> &'static [u8] {
    match arch {
        images::Arch::X86_64 => include_bytes!(env!("VANISH_AGENT_X86_64")),
        images::Arch::Aarch64 => include_bytes!(env!("VANISH_AGENT_AARCH64")),
    }
}
