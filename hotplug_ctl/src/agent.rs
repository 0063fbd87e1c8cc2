//! The guest handle: the host side of the guest agent, typed requests over a virtio-serial
//! port.
//!
//! What the guest can be asked is the crate `guest_protocol` (one `Request` per line, one
//! `Reply` line back). QEMU exposes the port as a Unix socket (`-chardev
//! socket,server=on,wait=off`). Until the guest opens its end, QEMU leaves our bytes in the
//! socket, so the first request simply waits for boot.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use guest_protocol::{GuestError, Reply, Request, REPLY_MARK};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;

/// Why a request got no useful reply.
#[derive(Debug)]
pub enum AgentError {
    /// No reply within the host's wait: the agent is blocked (in the kernel, most likely).
    Timeout { waited: Duration, what: String },
    /// The agent answered with an error; its own `Timeout` is a hung kernel call.
    Guest(GuestError),
    /// The port closed, a write failed or the reply did not decode: the rig is broken.
    Broken(String),
}

impl AgentError {
    /// The guest did not finish in time (the host gave up, or the agent did).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            AgentError::Timeout { .. } | AgentError::Guest(GuestError::Timeout { .. })
        )
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Timeout { waited, what } => {
                write!(f, "the guest did not answer {what} within {waited:?}")
            }
            AgentError::Guest(e) => write!(f, "{e}"),
            AgentError::Broken(why) => write!(f, "agent: {why}"),
        }
    }
}

impl std::error::Error for AgentError {}

/// A connected guest agent.
pub struct Guest {
    reader: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Guest {
    /// Connects to the chardev socket QEMU listens on.
    pub async fn connect(path: &Path, wait: Duration) -> Result<Guest> {
        let stream = crate::connect_unix(path, wait, "agent socket").await?;
        let (read, writer) = stream.into_split();
        Ok(Guest {
            reader: BufReader::new(read).lines(),
            writer,
        })
    }

    /// Sends `request` and waits up to `wait` for its reply; an error reply is `Err`.
    pub async fn request(
        &mut self,
        request: &Request,
        wait: Duration,
    ) -> std::result::Result<Reply, AgentError> {
        let line = guest_protocol::encode_request(request);
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| AgentError::Broken(format!("write failed: {e}")))?;
        let read = async {
            loop {
                let line = self
                    .reader
                    .next_line()
                    .await
                    .map_err(|e| AgentError::Broken(format!("read failed: {e}")))?
                    .ok_or_else(|| AgentError::Broken("the guest closed the port".into()))?;
                // Other lines are output of background jobs of earlier commands, unframed.
                if line.starts_with(REPLY_MARK) {
                    return guest_protocol::decode_reply(&line)
                        .map_err(|e| AgentError::Broken(e.to_string()));
                }
            }
        };
        match timeout(wait, read).await {
            Err(_) => Err(AgentError::Timeout {
                waited: wait,
                what: line,
            }),
            Ok(Ok(Reply::Error(e))) => Err(AgentError::Guest(e)),
            Ok(r) => r,
        }
    }

    /// `vanish run --shell`: the guest's `sh -i` on a pty (the agent's `@shell`), relayed raw
    /// to this process's stdin and stdout until the shell exits; end-of-file on stdin sends
    /// ^D, and hangs the shell up if it is still there 10 s later. Returns the shell's status
    /// (None: it did not end). With a terminal on stdin, that terminal is raw meanwhile.
    pub async fn shell(&mut self) -> Result<Option<i32>> {
        const MARKER: &[u8] = b"\x1evanish-shell-exit ";
        let (rows, cols) = terminal_size();
        let _raw = RawTerminal::new();
        self.writer
            .write_all(format!("@shell {rows} {cols}\n").as_bytes())
            .await
            .context("agent: write failed")?;
        // A thread of its own: a blocked read of stdin must not hold the runtime at exit.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        // The user's terminal: small blocking writes.
        let mut stdout = std::io::stdout();
        let reader = self.reader.get_mut();
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16384];
        let mut stdin_open = true;
        let mut hangup: Option<tokio::time::Instant> = None;
        let status = loop {
            let deadline =
                hangup.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                n = reader.read(&mut buf) => {
                    let n = n.context("agent: read failed")?;
                    if n == 0 {
                        bail!("agent: the guest closed the port");
                    }
                    pending.extend_from_slice(&buf[..n]);
                    if let Some(at) = find(&pending, MARKER) {
                        let rest = &pending[at + MARKER.len()..];
                        if let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                            std::io::Write::write_all(&mut stdout, &pending[..at])?;
                            std::io::Write::flush(&mut stdout)?;
                            break String::from_utf8_lossy(&rest[..nl]).trim().parse().ok();
                        }
                        continue;
                    }
                    // Keep what could be the start of the marker.
                    let keep = (1..MARKER.len())
                        .rev()
                        .find(|k| pending.ends_with(&MARKER[..*k]))
                        .unwrap_or(0);
                    let out = pending.len() - keep;
                    std::io::Write::write_all(&mut stdout, &pending[..out])?;
                    std::io::Write::flush(&mut stdout)?;
                    pending.drain(..out);
                }
                data = rx.recv(), if stdin_open => match data {
                    Some(d) => self.writer.write_all(&d).await.context("agent: write failed")?,
                    None => {
                        stdin_open = false;
                        self.writer.write_all(b"\x04").await.context("agent: write failed")?;
                        hangup = Some(tokio::time::Instant::now() + Duration::from_secs(10));
                    }
                },
                _ = tokio::time::sleep_until(deadline), if hangup.is_some() => break None,
            }
        };
        // The agent drops one line after the relay, then serves lines again.
        let _ = self.writer.write_all(b"\n").await;
        Ok(status)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The terminal's size on stdout (24x80 without one).
fn terminal_size() -> (u16, u16) {
    // SAFETY: TIOCGWINSZ fills a winsize.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        (ws.ws_row, ws.ws_col)
    } else {
        (24, 80)
    }
}

/// stdin's terminal in raw mode (the guest's pty does the echo and line editing) until drop.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn new() -> RawTerminal {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a valid termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawTerminal(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in new().
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}
