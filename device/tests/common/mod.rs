//! Helpers shared by the transport tests: a server on a temp socket, a raw client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use device::transport::wire::{self, cmd, Header};
use device::{build_model, Card, CardSpec, ModelKind, Monitor, Server};

pub const QEMU_CAPS: &str = r#"{"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": 1048576, "pgsizes": 4096, "max_dma_maps": 65535, "migration": {"pgsize": 4096, "max_bitmap_size": 268435456}}}"#;

pub fn card(kind: ModelKind) -> Arc<Card> {
    // The least VRAM each model takes: small BARs keep the tests' mmaps cheap.
    let spec =
        CardSpec::new(kind, Some(kind.info().min_vram_size), Monitor::Default).expect("spec");
    Card::new(build_model(&spec).expect("model"))
}

/// A server listening on a fresh path; stopped and joined on drop.
pub struct Running {
    pub path: PathBuf,
    pub card: Arc<Card>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), device::ServerError>>>,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "vanish-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Running {
    pub fn start(kind: ModelKind) -> Running {
        let dir = TempDir::new("srv");
        let path = dir.0.join("gpu.sock");
        let card = card(kind);
        let server = Server::bind(&path, Arc::clone(&card)).expect("bind");
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || server.serve(&s));
        Running {
            path,
            card,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn connect(&self) -> Raw {
        Raw::connect(&self.path)
    }

    /// A new connection does VERSION and reads the vendor ID from config space.
    pub fn assert_healthy(&self) {
        let mut c = self.connect();
        c.handshake();
        let (h, body) = c.call(
            0x4242,
            cmd::REGION_READ,
            0,
            &wire::region_access(0, 7, 4, &[]),
        );
        assert_eq!(h.flags & wire::flags::ERROR, 0, "config read failed: {h:?}");
        let vendor = u16::from_le_bytes([body[32], body[33]]);
        let (want, _) = self.card.info().pci_id();
        assert_eq!(vendor, want);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let r = t.join().expect("server thread panicked");
            if !std::thread::panicking() {
                r.expect("serve failed");
            }
        }
    }
}

/// A blocking raw client with a read timeout, so a hung server fails the test.
pub struct Raw {
    pub stream: UnixStream,
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        Raw::from_stream(UnixStream::connect(path).expect("connect"))
    }

    pub fn from_stream(stream: UnixStream) -> Raw {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Raw { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn send_with_fds(&mut self, bytes: &[u8], fds: &[RawFd]) {
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        let n = self.stream.send_with_fds(&[bytes], fds).expect("sendmsg");
        assert_eq!(n, bytes.len());
    }

    /// One whole reply (header + payload), or None at EOF.
    pub fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let mut head = [0u8; 16];
        match self.stream.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading a reply: {e}"),
        }
        let h = Header::parse(&head).expect("header");
        assert!(
            h.size >= 16 && h.size <= wire::MAX_MESSAGE,
            "reply size {h:?}"
        );
        assert_eq!(h.flags & wire::flags::TYPE_MASK, 1, "reply type {h:?}");
        if h.flags & wire::flags::ERROR != 0 {
            assert_ne!(h.error, 0, "error reply without errno {h:?}");
            assert_eq!(h.size, 16, "error replies are header-only");
        }
        let mut all = head.to_vec();
        all.resize(h.size as usize, 0);
        self.stream.read_exact(&mut all[16..]).expect("reply body");
        Some((h, all))
    }

    pub fn expect_reply(&mut self, id: u16) -> (Header, Vec<u8>) {
        let r = self.recv().expect("server closed the connection");
        assert_eq!(r.0.id, id, "reply out of step: {:?}", r.0);
        r
    }

    pub fn call(&mut self, id: u16, command: u16, flags: u32, payload: &[u8]) -> (Header, Vec<u8>) {
        self.send(&wire::request(id, command, flags, payload));
        self.expect_reply(id)
    }

    pub fn handshake(&mut self) {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(QEMU_CAPS.as_bytes());
        p.push(0);
        let (h, body) = self.call(1, cmd::VERSION, 0, &p);
        assert_eq!(h.flags, wire::flags::TYPE_REPLY, "VERSION refused: {h:?}");
        assert_eq!(&body[16..20], &[0, 0, 0, 0]);
        assert_eq!(body.last(), Some(&0));
    }

    /// The connection reaches EOF (the server dropped us) within the read timeout.
    pub fn assert_dropped(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("expected the server to drop us: {e}"),
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// Peak resident set of this process, in KiB (VmHWM).
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn hex(s: &str) -> Vec<u8> {
    let digits: String = s
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars())
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    (0..digits.len() / 2)
        .map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}
