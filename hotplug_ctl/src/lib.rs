//! vanish's orchestration: the card server process (`vanish serve`), its control socket, QEMU
//! and QMP, the guest agent, the scenario runner, splat detection and reports.

pub mod accel;
pub mod agent;
pub mod bench;
pub mod card;
pub mod config;
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
pub mod session;
pub mod shell;
pub mod slot;
pub mod splat;

pub mod verdict;

/// `--arch`'s values: one name per architecture (`aarch64`, `x86_64`), with Debian's names
/// (`arm64`, `amd64`) and `x86-64` taken as aliases so that older command lines keep working.
/// Use with `ignore_case = true`: the names were case-insensitive before.
pub fn arch_value_parser() -> impl clap::builder::TypedValueParser<Value = images::Arch> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new("aarch64").alias("arm64"),
        PossibleValue::new("x86_64").aliases(["amd64", "x86-64"]),
    ])
    .try_map(|name| name.parse::<images::Arch>())
}

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

/// One line of progress on stderr, for the steps of a long run.
pub(crate) fn say(msg: &str) {
    eprintln!("vanish: {msg}");
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use images::Arch;

    #[derive(Parser)]
    struct Args {
        #[arg(long, value_parser = super::arch_value_parser(), ignore_case = true)]
        arch: Arch,
    }

    #[test]
    fn arch_takes_the_one_name_and_debians_as_aliases() {
        let arch = |v: &str| Args::try_parse_from(["t", "--arch", v]).map(|a| a.arch);
        for (given, want) in [
            ("aarch64", Arch::Aarch64),
            ("arm64", Arch::Aarch64),
            ("AArch64", Arch::Aarch64),
            ("x86_64", Arch::X86_64),
            ("amd64", Arch::X86_64),
            ("x86-64", Arch::X86_64),
        ] {
            assert_eq!(arch(given).ok(), Some(want), "{given}");
        }
        let e = arch("riscv64")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        // The error lists the one names only, not the aliases.
        assert!(e.contains("[possible values: aarch64, x86_64]"), "{e}");
    }
}
