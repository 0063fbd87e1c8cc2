//! Shared helpers for the end-to-end tests: they run the real `vanish` binary, which boots real
//! Debian kernels in a real QEMU with our card. Missing prerequisites make them fail, not skip:
//! `vanish run` provisions what it needs and errors out loudly when it cannot.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub out: tempfile::TempDir,
    pub report: Option<Value>,
}

impl Run {
    pub fn report(&self) -> &Value {
        self.report.as_ref().unwrap_or_else(|| {
            panic!(
                "no report.json; stderr:\n{}\nstdout:\n{}",
                self.stderr, self.stdout
            )
        })
    }

    pub fn scenario(&self, name: &str) -> &Value {
        let scenarios = self.report()["scenarios"]
            .as_array()
            .expect("scenarios array");
        scenarios
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no scenario {name} in {}", self.summary()))
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.out.path().join(file)
    }

    /// The table vanish printed plus stderr, for assertion messages.
    pub fn summary(&self) -> String {
        format!("exit {}\n{}\n{}", self.code, self.stdout, self.stderr)
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.path("console.log")).unwrap_or_default()
    }

    /// Asserts the scenario passed with the driver bound and no splats.
    pub fn assert_pass(&self, name: &str) -> &Value {
        let s = self.scenario(name);
        assert_eq!(
            s["verdict"],
            "pass",
            "{name} did not pass: {}\n{}",
            s["problems"],
            self.summary()
        );
        assert_eq!(s["driver_bound"], true, "{name}");
        assert_eq!(
            s["splats"].as_array().map(Vec::len),
            Some(0),
            "{name} has splats"
        );
        s
    }
}

pub fn vanish(args: &[&str]) -> Run {
    let out = tempfile::Builder::new()
        .prefix("vanish-e2e-")
        .tempdir()
        .expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_vanish"))
        .args(args)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("running vanish");
    let report = std::fs::read_to_string(out.path().join("report.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into(),
        stderr: String::from_utf8_lossy(&output.stderr).into(),
        out,
        report,
    };
    eprintln!("{}", run.summary());
    run
}

/// Decodes a PNG into (width, height, rgb).
pub fn png(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Asserts a screenshot is a 1024x768 console with text on it (not one uniform colour).
pub fn assert_console_screenshot(path: &Path) {
    let (w, h, rgb) = png(path);
    assert_eq!((w, h), (1024, 768), "screenshot size");
    let background = &rgb[..3];
    let ink = rgb.chunks_exact(3).filter(|px| *px != background).count();
    let ratio = ink as f64 / (w * h) as f64;
    assert!(
        ratio > 0.005 && ratio < 0.6,
        "screenshot does not look like a text console (ink {ratio})"
    );
}

/// The kernel's log must have no splat of any kind; checked on the raw text too, so a parser
/// bug cannot hide one.
pub fn assert_clean_log(run: &Run) {
    let log = run.console();
    assert!(
        log.contains("Linux version"),
        "console.log is not a kernel log"
    );
    for bad in [
        "WARNING:",
        "BUG:",
        "Oops",
        "Kernel panic",
        "vblank wait timed out",
        "Call trace:",
        "Call Trace:",
    ] {
        assert!(!log.contains(bad), "kernel log contains {bad:?}");
    }
}
