//! Shared plumbing: progress lines, running host tools, and atomic, locked cache entries.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::error::{at, Error, IoContext, Result};

/// Print one progress line to stderr.
pub(crate) fn note(msg: impl AsRef<str>) {
    eprintln!("vanish: {}", msg.as_ref());
}

/// A long-running step: prints `vanish: <msg>...` when it starts and the duration when done (or
/// failed, if dropped without [`Step::done`]). Uses an `indicatif` spinner only on a TTY.
pub(crate) struct Step {
    msg: String,
    start: Instant,
    bar: Option<indicatif::ProgressBar>,
    finished: bool,
}

impl Step {
    pub(crate) fn start(msg: impl Into<String>) -> Step {
        let msg = msg.into();
        let bar = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            {
                bar.set_style(style);
            }
            bar.set_message(format!("vanish: {msg}..."));
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            note(format!("{msg}..."));
            None
        };
        Step {
            msg,
            start: Instant::now(),
            bar,
            finished: false,
        }
    }

    fn finish(&mut self, outcome: &str) {
        self.finished = true;
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        note(format!(
            "{}: {outcome} in {:.1}s",
            self.msg,
            self.start.elapsed().as_secs_f64()
        ));
    }

    pub(crate) fn done(mut self) {
        self.finish("done");
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished {
            self.finish("failed");
        }
    }
}

/// Find an executable on `$PATH`, then in the sbin directories (depmod lives in /usr/sbin, which a
/// non-root PATH often lacks).
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Like [`find_tool`] but failing with an install hint naming the Debian package.
pub(crate) fn require_tool(name: &str, package: &str) -> Result<PathBuf> {
    find_tool(name).ok_or_else(|| Error::MissingTool {
        tool: name.to_string(),
        hint: format!("install the `{package}` package (apt-get install -y {package})"),
    })
}

/// Render a command line for messages.
pub(crate) fn show_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// The last `n` non-empty lines of a process's output, joined with ` | ` to keep errors one line.
pub(crate) fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join(" | ")
}

/// Run a command to completion, capturing output; non-zero exit is an error with `hint`.
pub(crate) fn run(cmd: &mut Command, hint: &str) -> Result<Output> {
    let out = run_status(cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(command_failed(cmd, &out, hint))
    }
}

/// Run a command to completion, capturing output, returning it whatever the exit status.
pub(crate) fn run_status(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null());
    cmd.output().map_err(|e| Error::Command {
        command: show_command(cmd),
        detail: format!("could not start it: {e}"),
        hint: "check that it is installed".into(),
    })
}

pub(crate) fn command_failed(cmd: &Command, out: &Output, hint: &str) -> Error {
    let mut detail = tail_lines(&out.stderr, 4);
    if detail.is_empty() {
        detail = tail_lines(&out.stdout, 4);
    }
    Error::Command {
        command: show_command(cmd),
        detail: format!("{} ({})", detail, out.status),
        hint: hint.to_string(),
    }
}

/// Make a string safe as one path component (and free of `:` so it can sit in a search path).
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '+' | '-' | '~' | '_' => c,
            _ => '_',
        })
        .collect()
}

pub(crate) fn create_dir_all(p: &Path) -> Result<()> {
    fs::create_dir_all(p).ctx(at("cannot create directory", p))
}

fn path_with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// An exclusive lock on `<path>.lock`, held until dropped.
pub(crate) struct EntryLock {
    _file: File,
}

impl EntryLock {
    /// Lock the cache entry at `entry` (the lock file is `<entry>.lock`), exclusively or shared.
    pub(crate) fn acquire(entry: &Path, exclusive: bool) -> Result<EntryLock> {
        let lock_path = path_with_suffix(entry, ".lock");
        if let Some(parent) = lock_path.parent() {
            create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .ctx(at("cannot open lock file", &lock_path))?;
        let attempt = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match attempt {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                note(format!(
                    "waiting for another vanish process ({} is locked)",
                    lock_path.display()
                ));
                let r = if exclusive {
                    file.lock()
                } else {
                    file.lock_shared()
                };
                r.ctx(at("cannot lock", &lock_path))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}", lock_path.display()), e))
            }
        }
        Ok(EntryLock { _file: file })
    }
}

/// Mount points at or below `dir` (a build that bind-mounted /dev or /proc into a temp dir and
/// died). Removing such a directory recursively would walk into the host's filesystems.
pub(crate) fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Remove a temp dir unless something is still mounted in it (then leave it and say so).
fn remove_temp(dir: &Path) {
    let mounts = mounts_below(dir);
    if mounts.is_empty() {
        let _ = fs::remove_dir_all(dir);
    } else {
        note(format!(
            "not removing {}: {} is still mounted there (umount it, then delete the directory)",
            dir.display(),
            mounts[0].display()
        ));
    }
}

/// Ensure the cache entry directory `entry` exists, building it if needed.
///
/// Complete entries are only ever created by an atomic rename, so existence means complete. If it
/// is missing, take the entry's lock (`<entry>.lock`), check again, clear stale temp dirs left by
/// killed runs, call `build` on a fresh temp dir next to `entry`, and rename it into place.
pub(crate) fn ensure_entry(entry: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if entry.is_dir() {
        return Ok(());
    }
    let parent = entry.parent().ok_or_else(|| {
        Error::invalid(
            format!("bad cache path {}", entry.display()),
            "set VANISH_CACHE to a directory",
        )
    })?;
    let name = entry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _lock = EntryLock::acquire(entry, true)?;
    if entry.is_dir() {
        return Ok(());
    }
    let prefix = format!(".tmp-{name}-");
    if let Ok(rd) = fs::read_dir(parent) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                remove_temp(&e.path());
            }
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(parent)
        .ctx(at("cannot create a temp dir in", parent))?;
    let tmp_path = tmp.keep();
    let result = build(&tmp_path).and_then(|()| {
        fs::rename(&tmp_path, entry).ctx(|| {
            format!(
                "cannot move {} into place at {}",
                tmp_path.display(),
                entry.display()
            )
        })
    });
    if result.is_err() {
        remove_temp(&tmp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_versions() {
        assert_eq!(sanitize("1:11.1.3+ds-1~bpo13+1"), "1_11.1.3+ds-1~bpo13+1");
        assert_eq!(sanitize("a/b c"), "a_b_c");
    }

    #[test]
    fn tail_is_one_line() {
        assert_eq!(tail_lines(b"a\n\nb\nc\n d \n", 2), "c | d");
    }

    #[test]
    fn entry_is_built_once_and_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("thing");
        let mut calls = 0;
        ensure_entry(&entry, |tmp| {
            calls += 1;
            fs::write(tmp.join("f"), b"x").ctx(|| "write".into())
        })
        .unwrap();
        ensure_entry(&entry, |_| panic!("must not rebuild")).unwrap();
        assert_eq!(calls, 1);
        assert_eq!(fs::read(entry.join("f")).unwrap(), b"x");
        // A failed build leaves nothing behind but the lock file.
        let failed = dir.path().join("bad");
        let err = ensure_entry(&failed, |_| Err(Error::invalid("boom", "nothing"))).unwrap_err();
        assert!(err.to_string().contains("boom"));
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["bad.lock", "thing", "thing.lock"]);
    }
}
