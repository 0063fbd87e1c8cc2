//! Provision things by hand:
//!
//! ```text
//! cargo run -p images --example provision -- resolve            # names for 6.1/6.12/7.2 x amd64/arm64
//! cargo run -p images --example provision -- kernel arm64 6.12  # download + unpack
//! cargo run -p images --example provision -- qemu x86_64        # find or build QEMU
//! cargo run -p images --example provision -- initramfs arm64 6.12 hibmc-drm bochs
//! ```

use std::process::ExitCode;
use std::time::Instant;

use images::{Arch, Cache, InitramfsSpec};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> images::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cache = Cache::from_env()?;
    let arch = |i: usize| -> images::Result<Arch> {
        args.get(i).map(String::as_str).unwrap_or("x86_64").parse()
    };
    let version = |i: usize| args.get(i).cloned().unwrap_or_default();
    let t = Instant::now();
    match args.first().map(String::as_str) {
        Some("resolve") => {
            for v in ["6.1", "6.12", "7.2"] {
                for a in [Arch::X86_64, Arch::Aarch64] {
                    match images::resolve_debian_kernel(&cache, a, v) {
                        Ok(p) => println!("{v} {a}: {} -> {:?}", p.suite, p.packages),
                        Err(e) => println!("{v} {a}: error: {e}"),
                    }
                }
            }
        }
        Some("kernel") => {
            let k = images::provision_debian_kernel(&cache, arch(1)?, &version(2))?;
            println!("{k:#?}");
        }
        Some("qemu") => {
            let q = images::provision_qemu(&cache, arch(1)?)?;
            println!("{q:#?}");
        }
        Some("initramfs") => {
            let k = images::provision_debian_kernel(&cache, arch(1)?, &version(2))?;
            let mods: Vec<&str> = args.iter().skip(3).map(String::as_str).collect();
            let init = "#!/bin/sh\necho hello\npoweroff -f\n";
            let i = images::build_initramfs(
                &cache,
                &InitramfsSpec {
                    kernel: &k,
                    modules: &mods,
                    init,
                    files: &[],
                },
            )?;
            println!("{k:#?}\n{i:#?}");
        }
        _ => {
            eprintln!("usage: provision resolve | kernel ARCH VERSION | qemu ARCH | initramfs ARCH VERSION MODULES...");
            return Ok(());
        }
    }
    eprintln!("took {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}
