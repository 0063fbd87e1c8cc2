//! Runs the real binary as `serve --port /dev/pts/N`, as the guest runs it on a virtio-serial port,
//! and drives the protocol from the pty's master side, including clients on /dev/null.

use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Agent {
    master: File,
    _slave: File,
    child: Child,
    dir: PathBuf,
    pending: Vec<u8>,
}

impl Agent {
    fn start(name: &str) -> Agent {
        // SAFETY: the usual posix_openpt/grantpt/unlockpt/ptsname_r sequence on fresh fds.
        let (master, slave_path) = unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(fd >= 0, "posix_openpt");
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            let mut buf = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()), 0);
            (
                File::from_raw_fd(fd),
                CStr::from_ptr(buf.as_ptr()).to_str().unwrap().to_string(),
            )
        };
        // Raw mode, so the line discipline neither echoes nor rewrites "\n".
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slave_path)
            .unwrap();
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
            libc::cfmakeraw(&mut t);
            assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
        }
        let dir =
            std::env::temp_dir().join(format!("vanish-agent-pty-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vanish-agent"))
            .args(["serve", "--port", &slave_path, "--status-dir"])
            .arg(&dir)
            .spawn()
            .unwrap();
        Agent {
            master,
            _slave: slave,
            child,
            dir,
            pending: Vec::new(),
        }
    }

    /// Sends one line; returns (output, status).
    fn run(&mut self, line: &str) -> (String, i32) {
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A reply ends with "\x1e<status>\n" at the start of a line.
            if let Some(start) = self.pending.iter().position(|&b| b == 0x1e) {
                if let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
                    let reply: Vec<u8> = self.pending.drain(..start + nl + 1).collect();
                    let out = String::from_utf8(reply[..start].to_vec()).unwrap();
                    let status = std::str::from_utf8(&reply[start + 1..start + nl])
                        .unwrap()
                        .parse()
                        .unwrap();
                    return (out, status);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no reply to {line:?}; got {:?}",
                String::from_utf8_lossy(&self.pending)
            );
            let mut p = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            if unsafe { libc::poll(&mut p, 1, 100) } > 0 {
                let mut buf = [0u8; 4096];
                let n = self.master.read(&mut buf).unwrap();
                self.pending.extend_from_slice(&buf[..n]);
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let start = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing from {json}"))
        + pat.len();
    let rest = &json[start..];
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"').map(|i| i + 2)
    } else {
        rest.find([',', '}'])
    };
    &rest[..end.unwrap()]
}

#[test]
fn serves_a_pty_port() {
    let mut a = Agent::start("basic");
    assert_eq!(a.run("@ping"), ("pong\n".into(), 0));
    assert_eq!(
        a.run("echo hello; echo oops >&2; exit 4"),
        ("hello\noops\n".into(), 4)
    );
    assert_eq!(a.run("printf no-newline"), ("no-newline\n".into(), 0));
    assert_eq!(a.run("@what"), ("error: unknown verb @what\n".into(), 2));
}

#[test]
fn runs_idle_open_clients() {
    let mut a = Agent::start("idle");
    let (out, st) = a.run("@client start c1 idle-open /dev/null");
    assert_eq!(st, 0, "{out}");
    let mut lines = out.lines();
    let first = lines.next().unwrap();
    assert!(first.starts_with("started c1 pid="), "{out}");
    let pid = first.trim_start_matches("started c1 pid=");
    let json = lines.next().unwrap();
    assert_eq!(field(json, "kind"), "\"idle-open\"");
    assert_eq!(field(json, "device"), "\"/dev/null\"");
    assert_eq!(field(json, "pid"), pid);
    assert!(
        matches!(field(json, "state"), "\"ready\"" | "\"running\""),
        "{json}"
    );
    assert_eq!(field(json, "alive"), "true");

    let (again, st) = a.run("@client start c1 idle-open /dev/null");
    assert_eq!(st, 1, "{again}");

    let (report, st) = a.run("@client report c1");
    assert_eq!(st, 0);
    assert_eq!(report.lines().count(), 1);
    assert_eq!(field(&report, "alive"), "true");
    assert_eq!(field(&report, "exited"), "false");

    let (stop, st) = a.run("@client stop c1 3000");
    assert_eq!(st, 0, "{stop}");
    assert_eq!(field(&stop, "exited"), "true");
    assert_eq!(field(&stop, "state"), "\"exited\"");
    assert_eq!(field(&stop, "close"), "\"ok\"");
    assert_eq!(field(&stop, "exit_code"), "0");
    assert_eq!(field(&stop, "alive"), "false");

    // The id can be reused once the client is gone.
    assert_eq!(a.run("@client start c1 idle-open /dev/null").1, 0);
    assert_eq!(a.run("@client stop c1").1, 0);
}

#[test]
fn reports_failed_clients() {
    let mut a = Agent::start("failed");
    for (kind, errno) in [("kms", "ENOTTY"), ("fbdev", "ENOTTY")] {
        let (out, st) = a.run(&format!("@client start f-{kind} {kind} /dev/null"));
        assert_eq!(st, 1, "{out}");
        assert!(out.contains(errno), "{out}");
        assert!(
            out.lines()
                .last()
                .unwrap()
                .starts_with(&format!("error: client f-{kind} failed: ")),
            "{out}"
        );
        let (report, _) = a.run(&format!("@client report f-{kind}"));
        assert_eq!(field(&report, "state"), "\"failed\"");
        assert_eq!(field(&report, "exit_code"), "1");
        assert_eq!(field(&report, "close"), "\"ok\"");
    }
    let (out, st) = a.run("@client start gone idle-open /nonexistent/card0");
    assert_eq!(st, 1);
    assert!(out.contains("ENOENT"), "{out}");
}

#[test]
fn reports_a_client_that_does_not_stop() {
    let mut a = Agent::start("hung");
    let (out, st) = a.run("@client start h idle-open /dev/null");
    assert_eq!(st, 0, "{out}");
    let pid = out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("started h pid=")
        .to_string();
    // A stopped process cannot act on SIGTERM: it stands in for one stuck in the kernel.
    assert_eq!(a.run(&format!("kill -STOP {pid}")).1, 0);
    let t = Instant::now();
    let (stop, st) = a.run("@client stop h 300");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(st, 1, "{stop}");
    assert_eq!(field(&stop, "state"), "\"hung\"");
    assert_eq!(field(&stop, "exited"), "false");
    assert!(field(&stop, "proc_state").starts_with("\"T "), "{stop}");
    assert!(stop.contains("\"wchan\":"), "{stop}");
    assert_eq!(a.run(&format!("kill -CONT {pid}")).1, 0);
    let (stop, st) = a.run("@client stop h 3000");
    assert_eq!(st, 0, "{stop}");
    assert_eq!(field(&stop, "state"), "\"exited\"");
}
