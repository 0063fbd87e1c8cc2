//! vanish-agent: the guest side of vanish.
//!
//! ```text
//! vanish-agent serve --port /dev/vportNpM [--status-dir /tmp]
//! vanish-agent client kms|fbdev|idle-open [--device PATH] [--status FILE]
//! ```
//!
//! `serve` is exec'd by the guest's /init: as PID 1 it reaps orphans and powers the guest off when
//! the port closes, as the shell loop it replaces did.

mod bench;
mod client;
mod drm;
mod exec;
mod fb;
mod inspect;
mod mmap;
mod pattern;
mod peek;
mod serve;
mod shell;
mod sys;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  vanish-agent serve --port PATH [--status-dir DIR]
  vanish-agent client kms|fbdev|idle-open [--device PATH] [--status FILE]
  vanish-agent peek BDF BAR OFFSET
  vanish-agent bench fill fbdev|kms SECONDS [DEVICE]
  vanish-agent bench reads BDF BAR OFFSET COUNT
  vanish-agent bench vblank SECONDS [DEVICE]
  vanish-agent bench cycle unbind-bind|remove-rescan VENDOR DEVICE DRIVER";

/// `--name value` options after the positional words.
fn options(args: &[String], allowed: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !allowed.contains(&a.as_str()) {
            return Err(format!("unexpected argument {a:?}"));
        }
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        out.push((a.clone(), v.clone()));
    }
    Ok(out)
}

fn opt<'a>(opts: &'a [(String, String)], name: &str) -> Option<&'a str> {
    opts.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vanish-agent: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    match args.first().map(String::as_str) {
        Some("serve") => {
            let opts = options(&args[1..], &["--port", "--status-dir"])?;
            let port = opt(&opts, "--port").ok_or("serve needs --port PATH")?;
            let mut cfg = serve::Config::default();
            if let Some(d) = opt(&opts, "--status-dir") {
                cfg.status_dir = PathBuf::from(d);
            }
            let pid1 = std::process::id() == 1;
            cfg.reap_orphans = pid1;
            let result = serve::serve_port(port, cfg);
            match &result {
                Ok(()) => println!("vanish: agent port closed"),
                Err(e) => println!("vanish: agent port {port}: {e}"),
            }
            if pid1 {
                serve::power_off();
            }
            Ok(if result.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Some("client") => {
            let kind: guest_protocol::ClientKind =
                args.get(1).ok_or("client needs a kind")?.parse()?;
            let opts = options(&args[2..], &["--device", "--status"])?;
            let device = opt(&opts, "--device").unwrap_or(kind.default_device());
            let status = opt(&opts, "--status").map_or_else(
                || PathBuf::from(format!("/tmp/vanish-client-{}.json", std::process::id())),
                PathBuf::from,
            );
            Ok(ExitCode::from(client::run(kind, device, &status) as u8))
        }
        Some("peek") => {
            let [bdf, bar, offset] = &args[1..] else {
                return Err("peek needs BDF BAR OFFSET".into());
            };
            let bar: u8 = bar.parse().map_err(|_| format!("bad BAR index {bar:?}"))?;
            let offset = peek::parse_number(offset)?;
            let value = peek::read_u32(bdf, bar, offset)?;
            println!("{value:#010x}");
            Ok(ExitCode::SUCCESS)
        }
        Some("bench") => {
            let words: Vec<&str> = args[1..].iter().map(String::as_str).collect();
            let line = match words.as_slice() {
                ["fill", kind, secs] => bench::fill(kind, secs, None)?,
                ["fill", kind, secs, device] => bench::fill(kind, secs, Some(device))?,
                ["reads", bdf, bar, offset, count] => bench::reads(bdf, bar, offset, count)?,
                ["vblank", secs] => bench::vblank(secs, None)?,
                ["vblank", secs, device] => bench::vblank(secs, Some(device))?,
                ["cycle", kind, vendor, device, driver] => {
                    bench::cycle(kind, vendor, device, driver)?
                }
                _ => return Err("bench needs fill KIND SECONDS [DEVICE], reads BDF BAR OFFSET COUNT, vblank SECONDS [DEVICE] or cycle KIND VENDOR DEVICE DRIVER".into()),
            };
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Some("--version") => {
            println!("vanish-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Some("--help" | "-h") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("no command".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_options() {
        let o = options(
            &s(&["--device", "/dev/fb0", "--status", "/tmp/x"]),
            &["--device", "--status"],
        )
        .unwrap();
        assert_eq!(opt(&o, "--device"), Some("/dev/fb0"));
        assert_eq!(opt(&o, "--status"), Some("/tmp/x"));
        assert!(options(&s(&["--device"]), &["--device"]).is_err());
        assert!(options(&s(&["--bogus", "1"]), &["--device"]).is_err());
        assert!(run(&s(&["serve"])).is_err());
        assert!(run(&s(&["client", "gl"])).is_err());
        assert!(run(&s(&[])).is_err());
    }
}
