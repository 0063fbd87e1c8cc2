//! vanish's orchestration: the card server process (`vanish serve`), its control socket, QEMU
//! and QMP, the guest agent, the scenario runner, splat detection and reports.

pub mod accel;
pub mod agent;
pub mod bench;
pub mod card;
pub mod control;
pub mod ctl;
pub mod fingerprint;
pub mod guest;
pub mod kconfig;
pub mod output;
pub mod pattern;
pub mod qemu;
pub mod qmp;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod serve;
pub mod shell;
pub mod slot;
pub mod splat;
pub mod steps;
pub mod verdict;

/// Exit codes, chosen for `git bisect run`.
pub mod exit {
    /// Every scenario passed: the kernel is good.
    pub const PASS: i32 = 0;
    /// A scenario failed: the kernel is bad.
    pub const FAIL: i32 = 1;
    /// Bad command line.
    pub const USAGE: i32 = 2;
    /// The rig could not judge (QEMU did not start, a download failed, the driver never bound):
    /// `git bisect run` skips this commit.
    pub const SKIP: i32 = 125;
}

/// Makes a spawned child die with us: nothing is left running if vanish is killed, even with
/// SIGKILL, which no destructor would see.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Connects to a Unix socket that another process (QEMU) creates a moment after it starts,
/// retrying until `wait` runs out.
pub async fn connect_unix(
    path: &std::path::Path,
    wait: std::time::Duration,
    what: &str,
) -> anyhow::Result<tokio::net::UnixStream> {
    use anyhow::Context;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!("{what} {} did not open within {wait:?}", path.display())
                })
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}
