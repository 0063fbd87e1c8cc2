//! Runs the real binary as `serve --port /dev/pts/N`, as the guest runs it on a virtio-serial port,
//! and drives the typed protocol from the pty's master side, including clients on /dev/null.

use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use guest_protocol::{ClientKind, ClientReport, GuestError, Reply, Request};

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

    /// Sends one typed request; returns the decoded reply.
    fn ask(&mut self, request: &Request) -> Reply {
        let line = guest_protocol::encode_request(request);
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A reply is one line starting with the record separator.
            if let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
                let reply: Vec<u8> = self.pending.drain(..nl + 1).collect();
                let text = String::from_utf8(reply).unwrap();
                return guest_protocol::decode_reply(&text)
                    .unwrap_or_else(|e| panic!("{line}: {e}"));
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

    fn start_client(&mut self, id: &str, kind: ClientKind, device: &str) -> Reply {
        self.ask(&Request::ClientStart {
            id: id.into(),
            kind,
            device: device.into(),
            wait: true,
        })
    }

    fn report(&mut self, id: &str) -> ClientReport {
        match self.ask(&Request::ClientReport { id: id.into() }) {
            Reply::Client(r) => r,
            other => panic!("report {id}: {other:?}"),
        }
    }

    fn stop(&mut self, id: &str, timeout_ms: u64) -> ClientReport {
        match self.ask(&Request::ClientStop {
            id: id.into(),
            timeout_ms,
        }) {
            Reply::Client(r) => r,
            other => panic!("stop {id}: {other:?}"),
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

#[test]
fn serves_a_pty_port() {
    let mut a = Agent::start("basic");
    assert!(
        matches!(a.ask(&Request::Status), Reply::Status { kernel_release } if !kernel_release.is_empty())
    );
    let r = match a.ask(&Request::ExecRun {
        id: "r".into(),
        timeout_ms: 5000,
        cmd: "echo hello; echo oops >&2; printf no-newline; exit 4".into(),
    }) {
        Reply::Client(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(r.exit_code, Some(4));
    assert_eq!(r.detail_str("stdout"), Some("hello\nno-newline"));
    assert_eq!(r.detail_str("stderr"), Some("oops\n"));
}

#[test]
fn runs_idle_open_clients() {
    let mut a = Agent::start("idle");
    let r = a.start_client("c1", ClientKind::IdleOpen, "/dev/null");
    let Reply::Started {
        id,
        pid,
        report: Some(ready),
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(id, "c1");
    assert_eq!(ready.kind.as_deref(), Some("idle-open"));
    assert_eq!(ready.detail_str("device"), Some("/dev/null"));
    assert_eq!(ready.pid, pid);
    assert!(
        matches!(ready.state.as_deref(), Some("ready" | "running")),
        "{ready:?}"
    );
    assert!(ready.alive);

    let again = a.start_client("c1", ClientKind::IdleOpen, "/dev/null");
    assert!(
        matches!(&again, Reply::Error(GuestError::ClientFailed { .. })),
        "{again:?}"
    );

    let report = a.report("c1");
    assert!(report.alive && !report.exited, "{report:?}");

    let stop = a.stop("c1", 3000);
    assert!(stop.exited && !stop.alive, "{stop:?}");
    assert_eq!(stop.state.as_deref(), Some("exited"));
    assert_eq!(stop.detail_str("close"), Some("ok"));
    assert_eq!(stop.exit_code, Some(0));

    // The id can be reused once the client is gone.
    assert!(matches!(
        a.start_client("c1", ClientKind::IdleOpen, "/dev/null"),
        Reply::Started { .. }
    ));
    assert_eq!(a.stop("c1", 5000).exit_code, Some(0));
}

#[test]
fn reports_failed_clients() {
    let mut a = Agent::start("failed");
    for kind in [ClientKind::Kms, ClientKind::Fbdev] {
        let id = format!("f-{kind}");
        let r = a.start_client(&id, kind, "/dev/null");
        let Reply::Error(GuestError::ClientFailed {
            message,
            report: Some(failed),
        }) = r
        else {
            panic!("{r:?}")
        };
        assert!(
            message.starts_with(&format!("client {id} failed: ")),
            "{message}"
        );
        assert!(message.contains("ENOTTY"), "{message}");
        assert_eq!(failed.state.as_deref(), Some("failed"));
        let report = a.report(&id);
        assert_eq!(report.state.as_deref(), Some("failed"));
        assert_eq!(report.exit_code, Some(1));
        assert_eq!(report.detail_str("close"), Some("ok"));
    }
    let r = a.start_client("gone", ClientKind::IdleOpen, "/nonexistent/card0");
    assert!(
        matches!(&r, Reply::Error(GuestError::ClientFailed { message, .. }) if message.contains("ENOENT")),
        "{r:?}"
    );
}

#[test]
fn reports_a_client_that_does_not_stop() {
    let mut a = Agent::start("hung");
    let r = a.start_client("h", ClientKind::IdleOpen, "/dev/null");
    let Reply::Started { pid, .. } = r else {
        panic!("{r:?}")
    };
    // A stopped process cannot act on SIGTERM: it stands in for one stuck in the kernel.
    // SAFETY: plain kill(2) of the agent's client.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let t = Instant::now();
    let stop = a.stop("h", 300);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(stop.state.as_deref(), Some("hung"), "{stop:?}");
    assert!(!stop.exited);
    assert!(
        stop.detail_str("proc_state")
            .is_some_and(|s| s.starts_with("T ")),
        "{stop:?}"
    );
    assert!(stop.details.contains_key("wchan"), "{stop:?}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let stop = a.stop("h", 3000);
    assert_eq!(stop.state.as_deref(), Some("exited"), "{stop:?}");
}
