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
    keep_outputs(args);
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

/// With `VANISH_E2E_ARTIFACTS` set (`.ci/run` sets it), the JUnit and KCIDB files a run wrote
/// are copied there, so CI can validate every one with kcidb-io and a JUnit parser.
pub fn keep_outputs(args: &[&str]) {
    let Some(dir) = std::env::var_os("VANISH_E2E_ARTIFACTS") else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    for pair in args.windows(2) {
        let ext = match pair[0] {
            "--junit" => "xml",
            "--kcidb" => "json",
            _ => continue,
        };
        let src = Path::new(pair[1]);
        if src.is_file() {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("{}-{n}.{ext}", std::process::id());
            let _ = std::fs::copy(src, Path::new(&dir).join(name));
        }
    }
}

/// With `VANISH_E2E_ARTIFACTS` set, appends one `what: seconds` line to `timings.txt` there;
/// `.ci/run` prints the file after the tests (cargo hides a passing test's stderr).
pub fn record_timing(what: &str, took: std::time::Duration) {
    use std::io::Write;
    eprintln!("{what}: {:.0} s", took.as_secs_f64());
    let Some(dir) = std::env::var_os("VANISH_E2E_ARTIFACTS") else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&dir).join("timings.txt"))
    {
        let _ = writeln!(f, "{what}: {:.0} s", took.as_secs_f64());
    }
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

/// The vanish checkout (for `ci/*.sh`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Debian's linux-source-SERIES, unpacked once into the vanish cache (read-only: build it with
/// O=, or copy it).
pub fn kernel_source(series: &str) -> PathBuf {
    let cache = images::Cache::from_env().expect("vanish cache");
    images::provision_kernel_source(&cache, series)
        .unwrap_or_else(|e| panic!("linux-source-{series}: {e}"))
        .dir
}

/// Runs `ci/build-kernel.sh ARCH CARD` with `env` (SRC, OUT, BASE, ...); returns the image path
/// it printed and how long it took. Panics with the script's stderr on failure.
pub fn build_kernel(
    arch: &str,
    card: &str,
    env: &[(&str, &Path)],
) -> (PathBuf, std::time::Duration) {
    let start = std::time::Instant::now();
    let mut cmd = Command::new(repo_root().join("ci/build-kernel.sh"));
    cmd.args([arch, card])
        .env("VANISH", env!("CARGO_BIN_EXE_vanish"))
        .env("JOBS", std::env::var("JOBS").unwrap_or_else(|_| "2".into()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running ci/build-kernel.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "build-kernel.sh failed ({}): {stderr}",
        out.status
    );
    let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (PathBuf::from(image), start.elapsed())
}

/// `git -C dir ARGS` with a fixed identity; panics on failure; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=vanish test",
            "-c",
            "user.email=vanish@example.org",
        ])
        .args(args)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
