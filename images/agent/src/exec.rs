//! The user's own commands (requests `exec-start`, `exec-run`): `sh -c CMD` in its own process
//! group, stdout and stderr captured (the first [`CAP`] bytes of each, the rest counted and
//! dropped).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{Map, Value};

/// How much of each stream is kept.
pub const CAP: usize = 64 * 1024;

/// One captured stream.
#[derive(Debug, Default)]
pub struct Capture {
    pub data: Vec<u8>,
    pub total: u64,
    pub eof: bool,
}

pub type Shared = Arc<Mutex<Capture>>;

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Capture> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads `from` until end-of-file into a capture, on its own thread.
fn capture(mut from: impl Read + Send + 'static) -> Shared {
    let shared: Shared = Arc::default();
    let c = Arc::clone(&shared);
    thread::spawn(move || {
        let mut buf = vec![0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let mut g = lock(&c);
                    let room = CAP.saturating_sub(g.data.len()).min(n);
                    g.data.extend_from_slice(&buf[..room]);
                    g.total += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        lock(&c).eof = true;
    });
    shared
}

/// A running (or finished) user command.
#[derive(Debug)]
pub struct Exec {
    pub cmd: String,
    pub stdout: Shared,
    pub stderr: Shared,
}

impl Exec {
    /// Starts `SHELL -c CMD` with stdin /dev/null, in a new process group.
    pub fn spawn(shell: &std::path::Path, cmd: &str) -> std::io::Result<(Child, Exec)> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(shell)
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let stdout = child.stdout.take().map(capture).unwrap_or_default();
        let stderr = child.stderr.take().map(capture).unwrap_or_default();
        Ok((
            child,
            Exec {
                cmd: cmd.to_string(),
                stdout,
                stderr,
            },
        ))
    }

    /// Both streams reached end-of-file.
    pub fn drained(&self) -> bool {
        lock(&self.stdout).eof && lock(&self.stderr).eof
    }

    /// Adds `stdout`, `stderr`, `*_bytes` and `*_truncated` to a report's details.
    pub fn output_into(&self, details: &mut Map<String, Value>) {
        for (key, c) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let g = lock(c);
            let text = String::from_utf8_lossy(&g.data).into_owned();
            details.insert(key.to_string(), Value::from(text));
            details.insert(format!("{key}_bytes"), Value::from(g.total));
            details.insert(
                format!("{key}_truncated"),
                Value::from(g.total > g.data.len() as u64),
            );
        }
    }
}

/// Live (non-zombie) processes of process group `pgid`, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) STATE PPID PGRP ..."
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] != "Z" && f[0] != "X" && f[2].parse() == Ok(pgid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// Signals every process of group `pgid`.
pub fn kill_group(pgid: i32, sig: i32) {
    // SAFETY: plain kill(2) on a process group we created.
    unsafe { libc::kill(-pgid, sig) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn captures_and_caps_output() {
        let (mut child, e) = Exec::spawn(
            std::path::Path::new("/bin/sh"),
            "echo out; echo err >&2; head -c 100000 /dev/zero",
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
        let t = Instant::now();
        while !e.drained() && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(10));
        }
        let mut o = Map::new();
        e.output_into(&mut o);
        assert_eq!(o["stdout_bytes"], 100004);
        assert_eq!(o["stdout_truncated"], true);
        assert_eq!(o["stderr"], "err\n");
        assert_eq!(o["stderr_truncated"], false);
        assert_eq!(lock(&e.stdout).data.len(), CAP);
    }

    #[test]
    fn finds_a_process_group() {
        let (mut child, _e) =
            Exec::spawn(std::path::Path::new("/bin/sh"), "sleep 30 & sleep 30; :").unwrap();
        let pid = child.id() as i32;
        let t = Instant::now();
        while group_members(pid).len() < 3 && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(group_members(pid).len(), 3, "sh and two sleeps");
        kill_group(pid, libc::SIGKILL);
        child.wait().unwrap();
    }
}
